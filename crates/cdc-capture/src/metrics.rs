//! The capture's Prometheus metrics, in a registry per server (served at `/metrics`): our own
//! names, and those TiCDC's dashboards and alerts read (`cdc/owner/metrics.go`,
//! `pkg/orchestrator/metrics.go` and `pkg/p2p/metrics.go` in pingcap/tiflow), with the
//! process metrics (`process`). `docs/operations.md` lists them.

mod owner;
mod process;

use std::collections::HashMap;
use std::sync::Arc;

use cdc_orchestrator::{
    COMMIT_LATENCY_BOUNDS, ExponentialBuckets, HistogramSnapshot, TICK_DURATION, TXN_EXEC_DURATION,
    TXN_SIZE, WorkerMetrics, WorkerMetricsSnapshot,
};
use cdc_p2p::MetricsSnapshot;
use cdc_reactor::ChangefeedProgress;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use owner::{OwnerCollector, OwnerState};

/// The roles of the etcd workers, each with its own series.
pub const WORKER_ROLES: [&str; 3] = ["owner", "controller", "processor"];

/// The metrics of one capture server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The ownership counter, the owner-only gauges and the p2p totals.
    owner: Arc<OwnerState>,
    /// Owner changes seen by this capture.
    pub owner_changes: IntCounter,
    /// The counters of the etcd workers, one set per role (shared by every incarnation).
    workers: Vec<(&'static str, Arc<WorkerMetrics>)>,
    /// The p2p counters of the current incarnation, by side (`server`, `client`) and counter;
    /// they start again from zero with each incarnation.
    pub p2p: IntGaugeVec,
    /// Incarnations started after the first.
    pub restarts: IntCounter,
    /// Resigns that failed or timed out.
    pub resign_failures: IntCounter,
    /// p2p clients that stopped with an error (read from the router's error channel).
    pub p2p_client_errors: IntCounter,
    /// Reloads of the changed certificate files, by `result` (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let owner = Arc::new(OwnerState::default());
        let owner_changes = IntCounter::new("ticdc_capture_owner_changes_total", "owner changes")
            .expect("valid metric");
        let workers: Vec<(&'static str, Arc<WorkerMetrics>)> = WORKER_ROLES
            .iter()
            .map(|role| (*role, Arc::new(WorkerMetrics::new())))
            .collect();
        let p2p = IntGaugeVec::new(
            Opts::new(
                "ticdc_p2p_incarnation_messages",
                "p2p counters of the current incarnation",
            ),
            &["side", "counter"],
        )
        .expect("valid metric");
        let restarts = IntCounter::new("ticdc_capture_restarts_total", "capture restarts")
            .expect("valid metric");
        let resign_failures = IntCounter::new(
            "ticdc_capture_resign_failures_total",
            "owner resigns that failed or timed out",
        )
        .expect("valid metric");
        let p2p_client_errors = IntCounter::new(
            "ticdc_p2p_client_errors_total",
            "p2p clients that stopped with an error",
        )
        .expect("valid metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "ticdc_server_tls_reload_total",
                "reloads of the changed certificate files",
            ),
            &["result"],
        )
        .expect("valid metric");
        // Both series exist from the start, so `increase()` sees the first reload.
        for result in ["ok", "error"] {
            tls_reloads.with_label_values(&[result]);
        }
        for collector in [
            Box::new(OwnerCollector::new(Arc::clone(&owner))) as Box<dyn Collector>,
            Box::new(process::ProcessCollector::new()),
            Box::new(owner_changes.clone()),
            Box::new(WorkerCollector::new(workers.clone())),
            Box::new(p2p.clone()),
            Box::new(restarts.clone()),
            Box::new(resign_failures.clone()),
            Box::new(p2p_client_errors.clone()),
            Box::new(tls_reloads.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Metrics {
            registry,
            owner,
            owner_changes,
            workers,
            p2p,
            restarts,
            resign_failures,
            p2p_client_errors,
            tls_reloads,
        }
    }

    /// The counters the etcd workers of `role` (one of [`WORKER_ROLES`]) update.
    pub fn worker(&self, role: &str) -> Arc<WorkerMetrics> {
        self.workers
            .iter()
            .find(|(name, _)| *name == role)
            .map(|(_, metrics)| Arc::clone(metrics))
            .unwrap_or_else(|| panic!("unknown worker role {role}"))
    }

    /// The registry, for other components' metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// This capture's owner term started: the ownership counter runs.
    pub fn owner_term_started(&self) {
        self.owner.term_started();
    }

    /// This capture's owner term ended: the ownership counter stops and the owner-only gauges
    /// (captures, changefeeds) are cleared, so a former owner exports none of them.
    pub fn owner_term_ended(&self) {
        self.owner.term_ended();
    }

    /// Sets the owner-only gauges: the captures the owner knows and its running changefeeds'
    /// checkpoints, resolved revisions and checkpoint lags.
    pub fn set_owner_gauges(&self, n_captures: usize, changefeeds: Vec<ChangefeedProgress>) {
        self.owner.set_gauges(n_captures, changefeeds);
    }

    /// Clears the owner-only gauges (not an owner, or no longer).
    pub fn clear_owner_gauges(&self) {
        self.owner.clear_gauges();
    }

    /// Folds the p2p counters of incarnation `capture_id` into the totals that never reset
    /// (`ticdc_message_server_*`, `ticdc_message_client_*`): called at each scrape and once
    /// more when the incarnation ends, so its last messages are counted.
    pub fn fold_p2p(&self, capture_id: &str, server: &MetricsSnapshot, clients: &MetricsSnapshot) {
        self.owner.fold_p2p(capture_id, server, clients);
    }

    /// Sets the p2p gauges from the current incarnation's (server, clients) counters.
    pub fn set_p2p(&self, server: &MetricsSnapshot, clients: &MetricsSnapshot) {
        for (side, snapshot) in [("server", server), ("client", clients)] {
            for (counter, value) in [
                ("sent", snapshot.messages_sent),
                ("resent", snapshot.messages_resent),
                ("received", snapshot.messages_received),
                ("repeated", snapshot.messages_repeated),
                ("acked", snapshot.messages_acked),
                ("reconnects", snapshot.reconnects),
            ] {
                self.p2p
                    .with_label_values(&[side, counter])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to memory cannot fail");
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Renders the etcd workers' counters at each scrape: ticks, commits, conflicts, errors and
/// resyncs as counters, the commit latency as a histogram, each with a `role` label.
struct WorkerCollector {
    descs: Vec<Desc>,
    workers: Vec<(&'static str, Arc<WorkerMetrics>)>,
}

/// (name, help) of the worker counters, in the order `WorkerCollector::collect` renders them.
const WORKER_COUNTERS: [(&str, &str); 5] = [
    ("ticdc_etcd_worker_ticks_total", "etcd worker ticks"),
    (
        "ticdc_etcd_worker_commits_total",
        "etcd worker transactions committed",
    ),
    (
        "ticdc_etcd_worker_commit_conflicts_total",
        "etcd worker transactions refused by a failed compare",
    ),
    (
        "ticdc_etcd_worker_commit_errors_total",
        "etcd worker transactions that failed with a retryable etcd error and were retried",
    ),
    (
        "ticdc_etcd_worker_resyncs_total",
        "etcd worker resyncs after a compacted watch",
    ),
];
const COMMIT_LATENCY: (&str, &str) = (
    "ticdc_etcd_worker_commit_duration_seconds",
    "etcd worker transaction round-trip latency",
);
const WATCH_STALLED: (&str, &str) = (
    "ticdc_etcd_worker_watch_stalled_seconds",
    "how long the etcd worker's watch has heard nothing while stalled, 0 while it answers",
);
/// TiCDC's etcd worker histograms: (name, help, buckets, snapshot).
type HistogramOf = fn(&WorkerMetricsSnapshot) -> &HistogramSnapshot;
const WORKER_HISTOGRAMS: [(&str, &str, ExponentialBuckets, HistogramOf); 3] = [
    (
        "ticdc_etcd_worker_tick_reactor_duration",
        "Bucketed histogram of etcdWorker tick reactor time (s).",
        TICK_DURATION,
        |s| &s.tick_duration,
    ),
    (
        "ticdc_etcd_worker_etcd_txn_exec_duration",
        "Bucketed histogram of processing time (s) of a etcd txn.",
        TXN_EXEC_DURATION,
        |s| &s.txn_exec_duration,
    ),
    (
        "ticdc_etcd_worker_etcd_txn_size_bytes",
        "Bucketed histogram of a etcd txn size.",
        TXN_SIZE,
        |s| &s.txn_size,
    ),
];

impl WorkerCollector {
    fn new(workers: Vec<(&'static str, Arc<WorkerMetrics>)>) -> Self {
        let descs = WORKER_COUNTERS
            .iter()
            .copied()
            .chain([COMMIT_LATENCY, WATCH_STALLED])
            .chain(
                WORKER_HISTOGRAMS
                    .iter()
                    .map(|(name, help, _, _)| (*name, *help)),
            )
            .map(|(name, help)| {
                Desc::new(
                    name.to_owned(),
                    help.to_owned(),
                    vec!["role".to_owned()],
                    HashMap::new(),
                )
                .expect("valid metric")
            })
            .collect();
        WorkerCollector { descs, workers }
    }
}

fn role_label(role: &str) -> Vec<LabelPair> {
    let mut label = LabelPair::default();
    label.set_name("role".to_owned());
    label.set_value(role.to_owned());
    vec![label]
}

pub(crate) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

#[allow(
    clippy::cast_precision_loss,
    reason = "Prometheus samples are f64; counts beyond 2^53 lose precision by design"
)]
fn as_sample(value: u64) -> f64 {
    value as f64
}

impl Collector for WorkerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshots: Vec<(&str, WorkerMetricsSnapshot)> = self
            .workers
            .iter()
            .map(|(role, metrics)| (*role, metrics.snapshot()))
            .collect();
        let counter_values: [fn(&WorkerMetricsSnapshot) -> u64; 5] = [
            |s| s.ticks,
            |s| s.commits,
            |s| s.commit_conflicts,
            |s| s.commit_errors,
            |s| s.resyncs,
        ];
        let mut families: Vec<MetricFamily> = WORKER_COUNTERS
            .iter()
            .zip(counter_values)
            .map(|((name, help), value)| {
                let metrics = snapshots
                    .iter()
                    .map(|(role, snapshot)| {
                        let mut counter = Counter::default();
                        counter.set_value(as_sample(value(snapshot)));
                        let mut metric = Metric::default();
                        metric.set_label(role_label(role));
                        metric.set_counter(counter);
                        metric
                    })
                    .collect();
                family(name, help, MetricType::COUNTER, metrics)
            })
            .collect();
        let histograms = snapshots
            .iter()
            .map(|(role, snapshot)| {
                let latency = &snapshot.commit_latency;
                // The finite buckets; the encoder adds `+Inf` from the sample count.
                let buckets = COMMIT_LATENCY_BOUNDS
                    .iter()
                    .zip(latency.buckets)
                    .map(|(bound, count)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(*bound);
                        bucket.set_cumulative_count(count);
                        bucket
                    })
                    .collect();
                let mut histogram = Histogram::default();
                histogram.set_sample_count(latency.count);
                histogram.set_sample_sum(latency.sum.as_secs_f64());
                histogram.set_bucket(buckets);
                let mut metric = Metric::default();
                metric.set_label(role_label(role));
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let (name, help) = COMMIT_LATENCY;
        families.push(family(name, help, MetricType::HISTOGRAM, histograms));
        let stalls = snapshots
            .iter()
            .map(|(role, snapshot)| {
                let mut gauge = Gauge::default();
                gauge.set_value(snapshot.watch_stalled.as_secs_f64());
                let mut metric = Metric::default();
                metric.set_label(role_label(role));
                metric.set_gauge(gauge);
                metric
            })
            .collect();
        let (name, help) = WATCH_STALLED;
        families.push(family(name, help, MetricType::GAUGE, stalls));
        for (name, help, buckets, histogram_of) in WORKER_HISTOGRAMS {
            let metrics = snapshots
                .iter()
                .map(|(role, snapshot)| {
                    let mut metric = Metric::default();
                    metric.set_label(role_label(role));
                    metric.set_histogram(exponential_histogram(&buckets, histogram_of(snapshot)));
                    metric
                })
                .collect();
            families.push(family(name, help, MetricType::HISTOGRAM, metrics));
        }
        families
    }
}

/// `snapshot` in Prometheus' shape; the encoder adds `+Inf` from the sample count.
fn exponential_histogram(buckets: &ExponentialBuckets, snapshot: &HistogramSnapshot) -> Histogram {
    let finite = snapshot
        .buckets
        .iter()
        .take(buckets.n_buckets)
        .enumerate()
        .map(|(index, count)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(buckets.rendered_bound(index));
            bucket.set_cumulative_count(*count);
            bucket
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_sample_count(snapshot.count);
    #[allow(
        clippy::cast_precision_loss,
        reason = "Prometheus samples are f64; sums beyond 2^53 units lose precision by design"
    )]
    histogram.set_sample_sum(snapshot.sum as f64 / buckets.per_unit as f64);
    histogram.set_bucket(finite);
    histogram
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_metrics_render_per_role_with_a_latency_histogram() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for role in WORKER_ROLES {
            for (name, _) in WORKER_COUNTERS.iter().chain([&WATCH_STALLED]) {
                assert!(
                    text.contains(&format!("{name}{{role=\"{role}\"}} 0")),
                    "{text}"
                );
            }
            let histogram = COMMIT_LATENCY.0;
            for line in [
                format!("{histogram}_bucket{{role=\"{role}\",le=\"0.001\"}} 0"),
                format!("{histogram}_bucket{{role=\"{role}\",le=\"2.5\"}} 0"),
                format!("{histogram}_bucket{{role=\"{role}\",le=\"+Inf\"}} 0"),
                format!("{histogram}_sum{{role=\"{role}\"}} 0"),
                format!("{histogram}_count{{role=\"{role}\"}} 0"),
            ] {
                assert!(text.contains(&line), "{line} in {text}");
            }
        }
        assert!(text.contains(&format!("# TYPE {} histogram", COMMIT_LATENCY.0)));
        assert!(Arc::ptr_eq(
            &metrics.worker("owner"),
            &metrics.worker("owner")
        ));
    }
}
