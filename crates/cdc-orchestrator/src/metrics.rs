//! Counters of an etcd worker, for a capture's `/metrics`.
//!
//! [`WorkerMetrics`] is a set of relaxed atomics the worker bumps as it runs: a few atomic
//! additions per tick and per transaction, no lock and no allocation. Share one
//! `Arc<WorkerMetrics>` across the workers of a role (see [`crate::EtcdWorker::with_metrics`])
//! so that its counters keep growing across worker restarts, as Prometheus counters must.
//! [`WorkerMetrics::snapshot`] reads everything at once for rendering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds, in seconds, of the finite commit latency buckets; the `+Inf` bucket
/// follows them.
pub const COMMIT_LATENCY_BOUNDS: [f64; 11] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The same bounds in nanoseconds, compared against observations.
const BOUNDS_NANOS: [u64; 11] = [
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Live counters of one or more etcd workers.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    ticks: AtomicU64,
    commits: AtomicU64,
    commit_conflicts: AtomicU64,
    commit_errors: AtomicU64,
    resyncs: AtomicU64,
    snapshot_reads: AtomicU64,
    watch_stalled_millis: AtomicU64,
    latency_sum_nanos: AtomicU64,
    /// Observations per bucket, not cumulative: index `i < 11` counts latencies in
    /// `(bound[i-1], bound[i]]`, index 11 those above the last bound.
    latency_buckets: [AtomicU64; 12],
    /// TiCDC's `ticdc_etcd_worker_tick_reactor_duration`, in nanoseconds.
    tick_duration: ExponentialHistogram,
    /// TiCDC's `ticdc_etcd_worker_etcd_txn_exec_duration`, in nanoseconds.
    txn_exec_duration: ExponentialHistogram,
    /// TiCDC's `ticdc_etcd_worker_etcd_txn_size_bytes`, in bytes.
    txn_size: ExponentialHistogram,
}

/// The buckets of an exponential histogram: `n_buckets` finite upper bounds `start * 2^i`, in
/// the unit observations are counted in, rendered as `start * 2^i / per_unit` (seconds from
/// nanoseconds, or bytes as they are), then `+Inf`; TiCDC's `prometheus.ExponentialBuckets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExponentialBuckets {
    /// The first finite upper bound, in observation units.
    pub start: u64,
    /// How many finite bounds there are.
    pub n_buckets: usize,
    /// Observation units per rendered unit (1e9 for nanoseconds rendered as seconds).
    pub per_unit: u64,
}

impl ExponentialBuckets {
    /// The `i`-th finite upper bound in observation units.
    pub fn bound(&self, index: usize) -> u64 {
        self.start << index
    }

    /// The `i`-th finite upper bound as rendered.
    #[allow(
        clippy::cast_precision_loss,
        reason = "bounds are far below 2^53 units"
    )]
    pub fn rendered_bound(&self, index: usize) -> f64 {
        self.bound(index) as f64 / self.per_unit as f64
    }
}

/// The reactor tick duration's buckets: 10 ms doubling 18 times (TiCDC's).
pub const TICK_DURATION: ExponentialBuckets = ExponentialBuckets {
    start: 10_000_000,
    n_buckets: 18,
    per_unit: 1_000_000_000,
};
/// The transaction execution time's buckets: 2 ms doubling 18 times (TiCDC's).
pub const TXN_EXEC_DURATION: ExponentialBuckets = ExponentialBuckets {
    start: 2_000_000,
    n_buckets: 18,
    per_unit: 1_000_000_000,
};
/// The transaction size's buckets: 1 byte doubling 18 times (TiCDC's).
pub const TXN_SIZE: ExponentialBuckets = ExponentialBuckets {
    start: 1,
    n_buckets: 18,
    per_unit: 1,
};

/// The most finite bounds an [`ExponentialBuckets`] may have here.
const MAX_BUCKETS: usize = 18;

/// A histogram of relaxed atomics over exponential buckets, zeroed by `Default`.
#[derive(Debug, Default)]
struct ExponentialHistogram {
    sum: AtomicU64,
    /// Observations per bucket, not cumulative; the bucket after the last finite bound counts
    /// those above it.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
}

impl ExponentialHistogram {
    fn observe(&self, buckets: &ExponentialBuckets, value: u64) {
        self.sum.fetch_add(value, Ordering::Relaxed);
        let n_buckets = buckets.n_buckets.min(MAX_BUCKETS);
        let index = (0..n_buckets)
            .find(|index| value <= buckets.bound(*index))
            .unwrap_or(n_buckets);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, buckets: &ExponentialBuckets) -> HistogramSnapshot {
        let mut cumulative = 0u64;
        let buckets: Vec<u64> = self.buckets[..=buckets.n_buckets.min(MAX_BUCKETS)]
            .iter()
            .map(|bucket| {
                cumulative += bucket.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed),
            count: cumulative,
            buckets,
        }
    }
}

/// An exponential histogram at one moment, in observation units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The sum of all observations.
    pub sum: u64,
    /// The number of observations; equals the `+Inf` bucket.
    pub count: u64,
    /// Cumulative counts: one per finite bound, then the `+Inf` bucket.
    pub buckets: Vec<u64>,
}

impl WorkerMetrics {
    /// Zeroed counters.
    pub fn new() -> WorkerMetrics {
        WorkerMetrics::default()
    }

    /// Reactor ticks run.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Transactions committed (etcd answered `succeeded`).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Transactions etcd refused because a compare failed (another writer got there first,
    /// or the owner fence no longer holds).
    pub fn commit_conflicts(&self) -> u64 {
        self.commit_conflicts.load(Ordering::Relaxed)
    }

    /// Transactions (commits and delete-counter repairs) that failed with a retryable etcd
    /// error: no answer in time, or an error answer such as "database space exceeded". Each
    /// is retried after a backoff.
    pub fn commit_errors(&self) -> u64 {
        self.commit_errors.load(Ordering::Relaxed)
    }

    /// Full re-reads of the prefix after the watch was compacted.
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Attempts to read the whole prefix (the first snapshot, resyncs, and their retries).
    pub fn snapshot_reads(&self) -> u64 {
        self.snapshot_reads.load(Ordering::Relaxed)
    }

    /// How long the watch has been silent (no event, no progress notification) when it is
    /// stalled, zero while it answers: a gauge.
    pub fn watch_stalled(&self) -> Duration {
        Duration::from_millis(self.watch_stalled_millis.load(Ordering::Relaxed))
    }

    /// Everything at once. Each field is read atomically; fields bumped concurrently with
    /// the read may be one observation apart, but the histogram's count is always the sum of
    /// its buckets.
    pub fn snapshot(&self) -> WorkerMetricsSnapshot {
        let mut cumulative = 0u64;
        let buckets = std::array::from_fn(|index| {
            cumulative += self.latency_buckets[index].load(Ordering::Relaxed);
            cumulative
        });
        WorkerMetricsSnapshot {
            ticks: self.ticks(),
            commits: self.commits(),
            commit_conflicts: self.commit_conflicts(),
            commit_errors: self.commit_errors(),
            resyncs: self.resyncs(),
            snapshot_reads: self.snapshot_reads(),
            watch_stalled: self.watch_stalled(),
            commit_latency: LatencySnapshot {
                sum: Duration::from_nanos(self.latency_sum_nanos.load(Ordering::Relaxed)),
                count: cumulative,
                buckets,
            },
            tick_duration: self.tick_duration.snapshot(&TICK_DURATION),
            txn_exec_duration: self.txn_exec_duration.snapshot(&TXN_EXEC_DURATION),
            txn_size: self.txn_size.snapshot(&TXN_SIZE),
        }
    }

    pub(crate) fn record_tick_duration(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.tick_duration.observe(&TICK_DURATION, nanos);
    }

    /// The size of a transaction about to be sent: its keys and values, as TiCDC counts it.
    pub(crate) fn record_txn_size(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.txn_size.observe(&TXN_SIZE, bytes);
    }

    pub(crate) fn record_tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_commit_error(&self) {
        self.commit_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_snapshot_read(&self) {
        self.snapshot_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_watch_stalled(&self, silence: Duration) {
        let millis = u64::try_from(silence.as_millis()).unwrap_or(u64::MAX);
        self.watch_stalled_millis.store(millis, Ordering::Relaxed);
    }

    pub(crate) fn record_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// One transaction answered by etcd after `latency`; `succeeded` tells a commit from a
    /// conflict.
    pub(crate) fn record_txn(&self, succeeded: bool, latency: Duration) {
        if succeeded {
            self.commits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.commit_conflicts.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        let bucket = BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.txn_exec_duration.observe(&TXN_EXEC_DURATION, nanos);
    }
}

/// The counters of a [`WorkerMetrics`] at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerMetricsSnapshot {
    /// Reactor ticks run.
    pub ticks: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions refused by a failed compare.
    pub commit_conflicts: u64,
    /// Transactions that failed with a retryable etcd error.
    pub commit_errors: u64,
    /// Resyncs after a compacted watch.
    pub resyncs: u64,
    /// Attempts to read the whole prefix.
    pub snapshot_reads: u64,
    /// The silence of a stalled watch (`..._watch_stalled_seconds`), zero while it answers.
    pub watch_stalled: Duration,
    /// Round-trip latency of every transaction etcd answered, committed or refused.
    pub commit_latency: LatencySnapshot,
    /// How long the reactor's ticks took, in nanoseconds ([`TICK_DURATION`]).
    pub tick_duration: HistogramSnapshot,
    /// How long the transactions etcd answered took, in nanoseconds ([`TXN_EXEC_DURATION`]).
    pub txn_exec_duration: HistogramSnapshot,
    /// The size of the transactions sent, in bytes ([`TXN_SIZE`]).
    pub txn_size: HistogramSnapshot,
}

/// A latency histogram in Prometheus' shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// The sum of all observations (`_sum`, rendered in seconds).
    pub sum: Duration,
    /// The number of observations (`_count`); equals the `+Inf` bucket.
    pub count: u64,
    /// Cumulative counts (`_bucket`): index `i < 11` counts observations of at most
    /// [`COMMIT_LATENCY_BOUNDS`]`[i]` seconds, index 11 is the `+Inf` bucket.
    pub buckets: [u64; 12],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (seconds, nanos) in COMMIT_LATENCY_BOUNDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!(
                Duration::from_secs_f64(*seconds),
                Duration::from_nanos(nanos)
            );
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let metrics = WorkerMetrics::new();
        metrics.record_txn(true, Duration::from_micros(500));
        metrics.record_txn(true, Duration::from_millis(1));
        metrics.record_txn(false, Duration::from_millis(3));
        metrics.record_txn(true, Duration::from_secs(3));
        metrics.record_tick();
        metrics.record_resync();
        metrics.record_commit_error();
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.ticks, 1);
        assert_eq!(snapshot.commits, 3);
        assert_eq!(snapshot.commit_conflicts, 1);
        assert_eq!(snapshot.resyncs, 1);
        assert_eq!(snapshot.commit_errors, 1);
        let latency = snapshot.commit_latency;
        assert_eq!(latency.count, 4);
        assert_eq!(
            latency.sum,
            Duration::from_micros(500) + Duration::from_millis(4) + Duration::from_secs(3)
        );
        // <=1ms: 2 (1ms is inclusive); <=5ms: 3; above 2.5s only in +Inf.
        assert_eq!(latency.buckets, [2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4]);
        // TiCDC's execution histogram: 2 ms, 4 ms, ... The same four transactions.
        let exec = snapshot.txn_exec_duration;
        assert_eq!(exec.count, 4);
        assert_eq!(exec.buckets.len(), 19);
        assert_eq!(&exec.buckets[..3], &[2, 3, 3]);
        assert_eq!(exec.buckets[18], 4);
    }

    #[test]
    fn exponential_histograms_follow_ticdc_s_buckets() {
        assert_eq!(TICK_DURATION.rendered_bound(0), 0.01);
        assert_eq!(TICK_DURATION.rendered_bound(17), 0.01 * 131_072.0);
        assert_eq!(TXN_EXEC_DURATION.rendered_bound(1), 0.004);
        assert_eq!(TXN_SIZE.rendered_bound(17), 131_072.0);
        let metrics = WorkerMetrics::new();
        metrics.record_tick_duration(Duration::from_millis(10));
        metrics.record_tick_duration(Duration::from_millis(11));
        metrics.record_txn_size(1);
        metrics.record_txn_size(3);
        metrics.record_txn_size(1 << 20);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.tick_duration.count, 2);
        assert_eq!(&snapshot.tick_duration.buckets[..2], &[1, 2]);
        assert_eq!(snapshot.tick_duration.sum, 21_000_000);
        assert_eq!(&snapshot.txn_size.buckets[..3], &[1, 1, 2]);
        assert_eq!(snapshot.txn_size.buckets[17], 2);
        assert_eq!(snapshot.txn_size.buckets[18], 3);
        assert_eq!(snapshot.txn_size.sum, 4 + (1 << 20));
    }
}
