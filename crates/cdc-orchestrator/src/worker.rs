//! The etcd worker: the IO shell that keeps a consistent snapshot of a key prefix, ticks a
//! reactor over it and commits the reactor's patches as compare-and-swap transactions
//! (capture-spec §4.2–§4.4).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use cdc_etcd::retry::retry;
use cdc_etcd::watch::{EtcdWatchSource, ResilientWatch, WatchConfig, WatchSource};
use cdc_etcd::{
    Compare, CompareOp, EtcdClient, EventKind, GetOptions, RetryPolicy, Revision, Txn, TxnOp,
    TxnOpResponse, WatchResponse,
};
use cdc_model::ErrorReport;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::batch::{TxnLimits, next_batch};
use crate::error::{Error, Result};
use crate::key::normalize_prefix;
use crate::metrics::WorkerMetrics;
use crate::patch::{Key, PatchGroup, RawEntry, RawState, Value};
use crate::reactor::{NextTick, Reactor, ReactorState, TickPoke};

/// A tick or a transaction slower than this is logged.
const SLOW_WARN: Duration = Duration::from_secs(1);

/// The default heartbeat: an idle reactor (one that asked for no deadline, on an unchanged
/// snapshot, not poked) is still ticked this often, as a safety net for a forgotten poke. TiCDC
/// ticks every reactor at every flush interval (`pkg/orchestrator/etcd_worker.go`); ticking on
/// changes, pokes and deadlines instead keeps an idle capture nearly free.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// Silence of the watch (no event, no progress notification) after which the worker reports
/// it as stalled: its metric shows the silence and a warning is logged every
/// [`STALL_LOG_INTERVAL`]. The watch asks for progress after one second of silence, so a
/// healthy one is never this silent. Past the watch's own stall limit
/// ([`WatchConfig::stall_limit`]) the watch, and with it the worker, ends with the cause.
const STALL_REPORT_AFTER: Duration = Duration::from_secs(3);

/// How often a stalled watch is logged.
const STALL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The first pause after a transaction failed with an etcd error; it doubles with every
/// consecutive failure up to [`COMMIT_BACKOFF_MAX`].
const COMMIT_BACKOFF_BASE: Duration = Duration::from_millis(50);

/// The longest pause between transactions that fail with an etcd error.
const COMMIT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The retries of a snapshot read: as many tries as fit in the deadline of a retried etcd
/// call ([`RetryPolicy::default`]), with TiCDC's jittered backoff from 100 ms up to 2 s.
const SNAPSHOT_RETRY: RetryPolicy = RetryPolicy {
    max_tries: u32::MAX,
    deadline: Duration::from_secs(30),
    base_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(2),
};

/// The owner fence: every transaction of a fenced worker also requires that the owner key
/// still has the create revision of the campaign that won.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerFence {
    /// The owner key (`.../__cdc_meta__/owner/<lease hex>`).
    pub key: Vec<u8>,
    /// The create revision of the owner key when the campaign was won.
    pub create_revision: Revision,
}

/// Starts the worker's watch from a revision (inclusive) with a timing.
type OpenWatch = dyn Fn(Revision, WatchConfig, CancellationToken) -> ResilientWatch + Send + Sync;

/// How the worker opens its watch: a [`ResilientWatch`] over some [`WatchSource`].
struct WatchOpener(Box<OpenWatch>);

impl WatchOpener {
    fn new<S: WatchSource + Clone + Sync>(source: S) -> Self {
        WatchOpener(Box::new(move |start_revision, config, cancel| {
            ResilientWatch::with_source(source.clone(), start_revision, config, cancel)
        }))
    }

    fn open(
        &self,
        start_revision: Revision,
        config: WatchConfig,
        cancel: CancellationToken,
    ) -> ResilientWatch {
        (self.0)(start_revision, config, cancel)
    }
}

impl fmt::Debug for WatchOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchOpener")
    }
}

/// An etcd worker for one prefix; used for a single [`EtcdWorker::run`].
#[derive(Debug)]
pub struct EtcdWorker {
    client: EtcdClient,
    prefix: String,
    fence: Option<OwnerFence>,
    session_done: Option<CancellationToken>,
    watch_opener: WatchOpener,
    watch_config: WatchConfig,
    heartbeat: Duration,
    poke: TickPoke,
    metrics: Arc<WorkerMetrics>,
}

impl EtcdWorker {
    /// A worker for `prefix` (normalised: a leading `/`, no trailing `/`). It watches
    /// `prefix + "/"`, so that cluster `default` never sees the keys of cluster `default-2`.
    pub fn new(client: EtcdClient, prefix: impl AsRef<str>) -> Self {
        let prefix = normalize_prefix(prefix.as_ref());
        let source = EtcdWatchSource::new(client.clone(), watch_key(&prefix), true);
        EtcdWorker {
            client,
            prefix,
            fence: None,
            session_done: None,
            watch_opener: WatchOpener::new(source),
            watch_config: WatchConfig::default(),
            heartbeat: DEFAULT_HEARTBEAT,
            poke: TickPoke::new(),
            metrics: Arc::default(),
        }
    }

    /// Times the watch with `config` instead of [`WatchConfig::default`] (its stall limit
    /// bounds how long the worker outlives a watch that hears nothing).
    pub fn with_watch_config(mut self, config: WatchConfig) -> Self {
        self.watch_config = config;
        self
    }

    /// Ticks an idle reactor every `heartbeat` instead of every [`DEFAULT_HEARTBEAT`].
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The handle that asks this worker for a tick (the reactor gets the same one through
    /// [`Reactor::set_tick_poke`]).
    pub fn tick_poke(&self) -> TickPoke {
        self.poke.clone()
    }

    /// Watches through `source` instead of this worker's client (a seam for scripted watch
    /// streams). `source` must deliver the changes of every key under `prefix + "/"`; the
    /// worker wraps it in a [`ResilientWatch`] timed by its watch configuration.
    pub fn with_watch_source<S: WatchSource + Clone + Sync>(mut self, source: S) -> Self {
        self.watch_opener = WatchOpener::new(source);
        self
    }

    /// Runs as the owner: every transaction compares the owner key's create revision, and the
    /// deletion of the owner key or a refused fence ends the worker with [`Error::NotOwner`].
    pub fn with_owner_fence(mut self, fence: OwnerFence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Ends the worker with [`Error::SessionDone`] when `session_done` is cancelled.
    pub fn with_session_done(mut self, session_done: CancellationToken) -> Self {
        self.session_done = Some(session_done);
        self
    }

    /// Counts into `metrics` instead of counters of its own; pass the same `metrics` to every
    /// worker a role runs so that the counters survive worker restarts.
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this worker updates (clone the `Arc` before [`EtcdWorker::run`]).
    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    /// The normalised prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The delete-counter key of this worker's prefix, shared with TiCDC's workers.
    pub fn delete_counter_key(&self) -> String {
        cdc_etcd::key::delete_counter_key(&self.prefix)
    }

    /// Loads the prefix, then ticks `reactor` over `state` until the reactor finishes, an error
    /// occurs or `cancel` fires: once at the start, then whenever the snapshot changed, the
    /// worker was poked ([`EtcdWorker::tick_poke`]), the deadline the reactor asked for
    /// ([`NextTick`]) or the state's next pending change came, or the heartbeat passed; at most
    /// once per `interval` (burst 2), and never before the worker's own last commit is in the
    /// snapshot (read-your-writes). Patches queued by a tick are committed right after it.
    ///
    /// Returns the final state after [`Error::ReactorFinished`] once the final patches are
    /// committed; [`Error::Cancelled`] on cancellation; [`Error::SessionDone`] when the session
    /// ends; [`Error::NotOwner`] when a fenced worker lost its owner key; the watch's error
    /// (`cdc_etcd::Error::WatchRefused` or `WatchStalled`) when it cannot go on.
    ///
    /// Cancellation and the end of the session are noticed at once, also during a snapshot
    /// read, a tick or a transaction: the call in progress is dropped. A tick dropped at one of
    /// its awaits is not resumed. A transaction abandoned in flight may still commit: it is a
    /// compare-and-swap over the revisions this worker saw, so it either applied in full or not
    /// at all, and whoever works on the prefix next learns which from its snapshot and watch.
    pub async fn run<S, R>(
        self,
        reactor: &mut R,
        state: S,
        interval: Duration,
        cancel: &CancellationToken,
    ) -> Result<S>
    where
        S: ReactorState,
        R: Reactor<S>,
    {
        let counter_key = self.delete_counter_key().into_bytes();
        let watch_key = watch_key(&self.prefix);
        let limits = TxnLimits::for_worker(self.fence.is_some());
        reactor.set_tick_poke(self.poke.clone());
        let mut run = Run {
            client: self.client,
            fence: self.fence,
            watch_key,
            counter_key,
            limits,
            raw_state: RawState::new(),
            pending_updates: Vec::new(),
            revision: 0,
            barrier_revision: -1,
            delete_counter: 0,
            invalid_counter: None,
            watch_opener: self.watch_opener,
            watch_config: self.watch_config,
            watch: None,
            last_watch_item: Instant::now(),
            next_stall_log: None,
            metrics: self.metrics,
            backoff: CommitBackoff::default(),
        };
        let pacing = Pacing {
            interval: interval.max(Duration::from_millis(1)),
            heartbeat: self.heartbeat,
            poke: self.poke,
        };
        // Boxed: the loop's future is large and callers hold this one across awaits.
        let stop = Stop {
            cancel: cancel.clone(),
            session_done: self.session_done,
        };
        let result = Box::pin(run.main_loop(reactor, state, &pacing, &stop)).await;
        run.close_watch().await;
        result
    }
}

/// The key the worker watches and reads: `prefix + "/"`.
fn watch_key(prefix: &str) -> Vec<u8> {
    let mut key = prefix.as_bytes().to_vec();
    key.push(b'/');
    key
}

/// The snapshot of one prefix read.
struct Snapshot {
    raw_state: RawState,
    counter: CounterRead,
    revision: Revision,
}

/// The delete counter as read from etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CounterRead {
    /// The key does not exist.
    Absent,
    /// A positive decimal that can be incremented (below `i64::MAX`).
    Valid(i64),
    /// Anything else, written at this revision.
    Invalid(Revision),
}

struct Run {
    client: EtcdClient,
    fence: Option<OwnerFence>,
    watch_key: Vec<u8>,
    counter_key: Vec<u8>,
    limits: TxnLimits,
    raw_state: RawState,
    pending_updates: Vec<(Key, Option<Value>)>,
    revision: Revision,
    barrier_revision: Revision,
    /// The last valid delete counter seen (0: none).
    delete_counter: i64,
    /// The mod revision of an invalid counter value awaiting repair.
    invalid_counter: Option<Revision>,
    watch_opener: WatchOpener,
    watch_config: WatchConfig,
    watch: Option<ResilientWatch>,
    /// When the watch last delivered something (or was opened).
    last_watch_item: Instant,
    /// When a stalled watch is next logged (`None`: not stalled).
    next_stall_log: Option<Instant>,
    metrics: Arc<WorkerMetrics>,
    /// The pause after transactions that failed with an etcd error.
    backoff: CommitBackoff,
}

impl Run {
    async fn main_loop<S, R>(
        &mut self,
        reactor: &mut R,
        mut state: S,
        pacing: &Pacing,
        stop: &Stop,
    ) -> Result<S>
    where
        S: ReactorState,
        R: Reactor<S>,
    {
        // Initial sync.
        let snapshot = self.read_snapshot(stop).await?;
        self.check_fence(&snapshot.raw_state)?;
        for (key, entry) in &snapshot.raw_state {
            state.update(key, Some(&entry.value), true)?;
        }
        state.update_pending_change(Instant::now().into_std());
        self.install(snapshot);
        self.open_watch(&stop.cancel).await;

        let mut limiter = TickLimiter::new(pacing.interval, Instant::now());
        let mut pending_groups: VecDeque<PatchGroup> = VecDeque::new();
        let mut exiting = false;
        // What asks for the next tick: the first tick is due at once.
        let mut due = true;
        let mut requested: Option<Instant> = None;
        let mut last_tick = Instant::now();

        loop {
            let now = Instant::now();
            let mut wake_at = self.next_stall_check(now);
            if !pending_groups.is_empty() || self.invalid_counter.is_some() {
                // Retried at the worker's pace, or when the commit backoff is over.
                let retry_at = (now + pacing.interval).max(self.backoff.until.unwrap_or(now));
                wake_at = wake_at.min(retry_at);
            }
            // Before the barrier only the watch can unblock a tick.
            if pending_groups.is_empty() && self.revision >= self.barrier_revision {
                let mut tick_at = last_tick + pacing.heartbeat;
                if due || !self.pending_updates.is_empty() {
                    tick_at = now;
                }
                if let Some(at) = requested {
                    tick_at = tick_at.min(at);
                }
                if let Some(at) = state.next_pending_change() {
                    tick_at = tick_at.min(Instant::from_std(at));
                }
                wake_at = wake_at.min(tick_at.max(limiter.ready_at()));
            }
            let woke = tokio::select! {
                biased;
                err = stop.stopped() => return Err(err),
                item = next_watch_item(&mut self.watch) => Wake::Watch(item),
                () = pacing.poke.poked() => Wake::Poke,
                () = tokio::time::sleep_until(wake_at) => Wake::Timer,
            };
            match woke {
                Wake::Watch(item) => {
                    self.watch_item_received();
                    match item {
                        Some(Ok(response)) => self.handle_response(response)?,
                        Some(Err(cdc_etcd::Error::Compacted {
                            requested,
                            compacted,
                        })) => {
                            info!(
                                revision = self.revision,
                                requested, compacted, "etcd worker watch compacted, resyncing"
                            );
                            self.resync(stop).await?;
                            due = true;
                        }
                        // The watch cannot go on (refused for good, or silent past its limit).
                        Some(Err(err)) => return Err(err.into()),
                        None => {
                            // The wrapper's task ended without being cancelled by us.
                            warn!(
                                revision = self.revision,
                                "etcd worker watch ended, re-watching"
                            );
                            self.open_watch(&stop.cancel).await;
                        }
                    }
                }
                Wake::Poke => due = true,
                Wake::Timer => {}
            }
            self.report_stall(Instant::now());

            let mut retry = false;
            let may_commit = self.backoff.is_over(Instant::now());
            if !pending_groups.is_empty() && self.revision >= self.barrier_revision {
                // Pending groups are committed before the next tick, also while backing off.
                retry = true;
                if may_commit {
                    match stop.guard(self.try_commit(&mut pending_groups)).await {
                        Ok(n_committed) => retry = n_committed > 0,
                        Err(err) => self.commit_failed(err, "commit")?,
                    }
                }
            } else if self.invalid_counter.is_some() && may_commit {
                // Repaired even while idle: other workers sharing the prefix need it too.
                if let Err(err) = stop.guard(self.repair_counter()).await {
                    self.commit_failed(err, "delete counter repair")?;
                }
            }
            if exiting {
                if pending_groups.is_empty() {
                    return Ok(state);
                }
                continue;
            }
            if retry || self.revision < self.barrier_revision {
                continue;
            }
            let now = Instant::now();
            let tick_wanted = due
                || !self.pending_updates.is_empty()
                || requested.is_some_and(|at| now >= at)
                || self.pending_change_due(&state, now)
                || now >= last_tick + pacing.heartbeat;
            if !tick_wanted || !limiter.try_acquire(now) {
                continue;
            }
            due = false;
            for (key, value) in self.pending_updates.drain(..) {
                state.update(&key, value.as_deref(), false)?;
            }
            state.update_pending_change(now.into_std());
            last_tick = now;
            self.metrics.record_tick();
            match stop.guard(reactor.tick(&mut state)).await {
                Ok(NextTick::Idle) => requested = None,
                Ok(NextTick::After(delay)) => requested = Some(now + delay),
                Err(Error::ReactorFinished) => exiting = true,
                Err(err) => return Err(err),
            }
            if now.elapsed() > SLOW_WARN {
                warn!(duration = ?now.elapsed(), "etcd worker tick took too long");
            }
            pending_groups.extend(state.get_patches());
            if !pending_groups.is_empty()
                && self.backoff.is_over(Instant::now())
                && let Err(err) = stop.guard(self.try_commit(&mut pending_groups)).await
            {
                self.commit_failed(err, "commit")?;
            }
            if exiting && pending_groups.is_empty() {
                return Ok(state);
            }
        }
    }

    /// Whether the state's next time-driven change is due at `now`.
    #[allow(
        clippy::unused_self,
        reason = "kept beside the other wake-up decisions"
    )]
    fn pending_change_due<S: ReactorState>(&self, state: &S, now: Instant) -> bool {
        state
            .next_pending_change()
            .is_some_and(|at| now >= Instant::from_std(at))
    }

    /// The watch delivered something: it is not stalled (any more).
    fn watch_item_received(&mut self) {
        self.last_watch_item = Instant::now();
        if self.next_stall_log.take().is_some() {
            info!(revision = self.revision, "etcd worker watch resumed");
        }
        self.metrics.set_watch_stalled(Duration::ZERO);
    }

    /// When the stall report is next due: when the watch's silence reaches
    /// [`STALL_REPORT_AFTER`], then every second while it lasts (to keep the metric fresh).
    fn next_stall_check(&self, now: Instant) -> Instant {
        if self.watch.is_none() {
            return now + STALL_LOG_INTERVAL;
        }
        let report_at = self.last_watch_item + STALL_REPORT_AFTER;
        if now < report_at {
            report_at
        } else {
            now + Duration::from_secs(1)
        }
    }

    /// Shows a stalled watch in the metrics, and in the log once per [`STALL_LOG_INTERVAL`].
    fn report_stall(&mut self, now: Instant) {
        let silence = now.saturating_duration_since(self.last_watch_item);
        if self.watch.is_none() || silence < STALL_REPORT_AFTER {
            return;
        }
        self.metrics.set_watch_stalled(silence);
        if self.next_stall_log.is_none_or(|at| now >= at) {
            self.next_stall_log = Some(now + STALL_LOG_INTERVAL);
            warn!(
                ?silence,
                revision = self.revision,
                barrier_revision = self.barrier_revision,
                stall_limit = ?self.watch_config.stall_limit,
                "etcd worker watch stalled: no event or progress notification"
            );
        }
    }

    /// Reads the whole prefix. A transient failure is retried with backoff and jitter
    /// ([`SNAPSHOT_RETRY`]) until the read's deadline passes, which returns
    /// [`cdc_etcd::Error::DeadlineExceeded`] holding the last failure; cancellation and the end
    /// of the session end the read at once.
    async fn read_snapshot(&self, stop: &Stop) -> Result<Snapshot> {
        let mut tries = 0u32;
        // Boxed: a gRPC call's future is large and the worker's loop holds this one.
        let read = Box::pin(retry(
            "get",
            self.client.endpoints(),
            &SNAPSHOT_RETRY,
            cdc_etcd::Error::is_retryable,
            &stop.cancel,
            || {
                tries += 1;
                let tries = tries;
                self.metrics.record_snapshot_read();
                async move {
                    let result = self
                        .client
                        .get(self.watch_key.clone(), GetOptions::prefix())
                        .await;
                    if let Err(err) = &result {
                        warn!(error = %ErrorReport(err), tries, "etcd worker snapshot read failed");
                    }
                    result
                }
            },
        ));
        let response = stop.guard(async { Ok(read.await?) }).await?;
        let mut raw_state = RawState::with_capacity(response.kvs.len());
        let mut counter = CounterRead::Absent;
        for kv in response.kvs {
            if kv.key == self.counter_key {
                counter = self.parse_counter(&kv.value, kv.mod_revision);
            } else {
                raw_state.insert(
                    kv.key,
                    RawEntry {
                        value: kv.value,
                        mod_revision: kv.mod_revision,
                        create_revision: kv.create_revision,
                    },
                );
            }
        }
        Ok(Snapshot {
            raw_state,
            counter,
            revision: response.revision,
        })
    }

    fn install(&mut self, snapshot: Snapshot) {
        self.raw_state = snapshot.raw_state;
        self.observe_counter(snapshot.counter);
        self.revision = snapshot.revision;
    }

    /// The full fence on a snapshot: the owner key exists with the campaign's create revision
    /// (a key deleted and re-created by another campaign of the same lease is not ours).
    fn check_fence(&self, raw_state: &RawState) -> Result<()> {
        match &self.fence {
            Some(fence)
                if raw_state.get(&fence.key).map(|entry| entry.create_revision)
                    != Some(fence.create_revision) =>
            {
                info!("owner fence does not hold in the snapshot, this capture is not the owner");
                Err(Error::NotOwner)
            }
            _ => Ok(()),
        }
    }

    /// Reads a counter value written at `mod_revision`; anything but a positive decimal that
    /// can be incremented is logged and marked for repair.
    fn parse_counter(&self, value: &[u8], mod_revision: Revision) -> CounterRead {
        match counter_value(value) {
            Some(counter) => CounterRead::Valid(counter),
            None => {
                error!(
                    key = %String::from_utf8_lossy(&self.counter_key),
                    value = %String::from_utf8_lossy(value),
                    mod_revision,
                    "etcd worker delete counter is not a positive number below i64::MAX, repairing it"
                );
                CounterRead::Invalid(mod_revision)
            }
        }
    }

    fn observe_counter(&mut self, counter: CounterRead) {
        match counter {
            CounterRead::Absent => {
                self.delete_counter = 0;
                self.invalid_counter = None;
            }
            CounterRead::Valid(counter) => {
                self.delete_counter = counter;
                self.invalid_counter = None;
            }
            // The last valid value stays: the repair counts on from it.
            CounterRead::Invalid(mod_revision) => self.invalid_counter = Some(mod_revision),
        }
    }

    /// Replaces an invalid delete counter by a positive one, unless it changed since it was
    /// read (then another worker repaired it first, or a writer replaced it, and its event is
    /// on the way: [`Error::EtcdTryAgain`]). No-op while the counter is valid.
    ///
    /// The new value, the larger of the last valid value + 1 and the revision of the invalid
    /// write, is one an incrementing writer has not reached: every increment takes a revision
    /// of its own. A transaction in flight elsewhere compared the old value and is refused.
    /// When no such value can itself be incremented the worker ends: a smaller one could
    /// repeat a value some worker has seen.
    async fn repair_counter(&mut self) -> Result<()> {
        let Some(mod_revision) = self.invalid_counter else {
            return Ok(());
        };
        let counter = repaired_counter(self.delete_counter, mod_revision)
            .ok_or_else(|| self.counter_exhausted())?;
        let mut txn = Txn {
            compares: vec![Compare::ModRevision {
                key: self.counter_key.clone(),
                op: CompareOp::Equal,
                revision: mod_revision,
            }],
            success: vec![TxnOp::Put {
                key: self.counter_key.clone(),
                value: counter.to_string().into_bytes(),
                lease: 0,
            }],
            failure: Vec::new(),
        };
        self.add_fence(&mut txn);
        let response = self.client.txn(txn).await?;
        self.backoff.reset();
        self.check_fence_response(&response)?;
        if response.succeeded {
            info!(counter, "etcd worker delete counter repaired");
            self.observe_counter(CounterRead::Valid(counter));
            Ok(())
        } else {
            debug!(
                mod_revision,
                "etcd worker delete counter changed before its repair"
            );
            Err(Error::EtcdTryAgain)
        }
    }

    /// Replaces the watch by one from `revision + 1` (capture-spec §4.3 step 3).
    async fn open_watch(&mut self, cancel: &CancellationToken) {
        self.close_watch().await;
        self.watch = Some(self.watch_opener.open(
            self.revision + 1,
            self.watch_config.clone(),
            cancel.clone(),
        ));
        self.last_watch_item = Instant::now();
    }

    /// Stops the watch and waits for its task.
    async fn close_watch(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.close().await;
        }
    }

    /// Replaces the snapshot after a compaction: a fresh read whose differences from the
    /// current snapshot are queued as updates, so the state is reloaded in full and stays
    /// consistent; then a new watch from the fresh revision.
    async fn resync(&mut self, stop: &Stop) -> Result<()> {
        self.metrics.record_resync();
        self.close_watch().await;
        let snapshot = self.read_snapshot(stop).await?;
        self.check_fence(&snapshot.raw_state)?;
        for key in self.raw_state.keys() {
            if !snapshot.raw_state.contains_key(key) {
                self.pending_updates.push((key.clone(), None));
            }
        }
        for (key, entry) in &snapshot.raw_state {
            if self.raw_state.get(key).map(|old| &old.value) != Some(&entry.value) {
                self.pending_updates
                    .push((key.clone(), Some(entry.value.clone())));
            }
        }
        self.install(snapshot);
        self.open_watch(&stop.cancel).await;
        Ok(())
    }

    /// Applies one watch response. A progress notification is ignored: moving the revision to
    /// its header could drop an event of that revision still on its way. Events at or below
    /// the revision reached before this response are stale and dropped (so is a response
    /// holding only those). The
    /// revision becomes that of the last applied event rather than the header's: every part of
    /// a catch-up batch that etcd splits carries the store's current revision in its header,
    /// and advancing to it would drop the later parts. The worker's own commit comes back as
    /// events at the commit revision, so the read-your-writes barrier is still reached.
    fn handle_response(&mut self, response: WatchResponse) -> Result<()> {
        if response.is_progress_notify() {
            return Ok(());
        }
        // The events of one transaction share a revision: compare with the one before.
        let applied = self.revision;
        for event in response.events {
            if event.kv.mod_revision <= applied {
                continue;
            }
            self.revision = self.revision.max(event.kv.mod_revision);
            let key = event.kv.key;
            if key == self.counter_key {
                let counter = match event.kind {
                    EventKind::Put => self.parse_counter(&event.kv.value, event.kv.mod_revision),
                    EventKind::Delete => {
                        warn!("etcd worker delete counter was deleted, resetting it to 0");
                        CounterRead::Absent
                    }
                };
                self.observe_counter(counter);
                continue;
            }
            match event.kind {
                EventKind::Put => {
                    self.raw_state.insert(
                        key.clone(),
                        RawEntry {
                            value: event.kv.value.clone(),
                            mod_revision: event.kv.mod_revision,
                            create_revision: event.kv.create_revision,
                        },
                    );
                    self.pending_updates.push((key, Some(event.kv.value)));
                }
                EventKind::Delete => {
                    if self.fence.as_ref().is_some_and(|fence| fence.key == key) {
                        info!("owner key deleted, this capture is not the owner any more");
                        return Err(Error::NotOwner);
                    }
                    self.raw_state.remove(&key);
                    self.pending_updates.push((key, None));
                }
            }
        }
        Ok(())
    }

    /// Decides on a failed commit or delete-counter repair. A retryable etcd error (no answer
    /// in time, no space, too many requests, ...) is counted, logged and backs the next
    /// transaction off; another retryable error (a refused compare, a patch asking to try
    /// again) is retried at the next wake-up; any other error ends the worker.
    fn commit_failed(&mut self, err: Error, op: &'static str) -> Result<()> {
        match err {
            Error::Etcd(err) if err.is_retryable() => {
                self.metrics.record_commit_error();
                let delay = self.backoff.fail(Instant::now());
                warn!(
                    op,
                    error = %ErrorReport(&err),
                    failures = self.backoff.failures,
                    retry_in = ?delay,
                    "etcd worker transaction failed, backing off"
                );
                Ok(())
            }
            err if err.is_retryable() => {
                debug!(op, error = %ErrorReport(&err), "etcd worker transaction will be retried");
                Ok(())
            }
            err => Err(err),
        }
    }

    /// Commits the leading groups that fit in one transaction. Returns the number of keys
    /// committed; the committed groups leave `groups`.
    async fn try_commit(&mut self, groups: &mut VecDeque<PatchGroup>) -> Result<usize> {
        // Every transaction compares the counter: an invalid one is repaired first.
        self.repair_counter().await?;
        let batch = next_batch(&self.raw_state, groups.make_contiguous(), self.limits)?;
        if batch.changes.is_empty() {
            groups.drain(..batch.n_groups);
            return Ok(0);
        }
        let txn = self.build_txn(&batch.changes)?;
        let started = Instant::now();
        let response = self.client.txn(txn).await?;
        self.backoff.reset();
        let latency = started.elapsed();
        self.metrics.record_txn(response.succeeded, latency);
        if latency > SLOW_WARN {
            warn!(duration = ?latency, n_keys = batch.changes.len(), "etcd worker txn took too long");
        }
        if response.succeeded {
            self.barrier_revision = response.revision;
            groups.drain(..batch.n_groups);
            return Ok(batch.changes.len());
        }
        self.check_fence_response(&response)?;
        debug!(
            n_keys = batch.changes.len(),
            revision = self.revision,
            "etcd worker txn refused"
        );
        Err(Error::EtcdTryAgain)
    }

    /// The error of a delete counter that cannot grow any more.
    fn counter_exhausted(&self) -> Error {
        Error::Etcd(cdc_etcd::Error::InvalidValue {
            key: String::from_utf8_lossy(&self.counter_key).into_owned(),
            reason: format!(
                "the delete counter cannot grow past {} without overflowing",
                self.delete_counter
            ),
        })
    }

    fn build_txn(&self, changes: &BTreeMap<Key, Option<Value>>) -> Result<Txn> {
        let mut txn = Txn::default();
        let mut has_delete = false;
        for (key, value) in changes {
            let revision = self
                .raw_state
                .get(key)
                .map_or(0, |entry| entry.mod_revision);
            txn.compares.push(Compare::ModRevision {
                key: key.clone(),
                op: CompareOp::Equal,
                revision,
            });
            match value {
                Some(value) => txn.success.push(TxnOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: 0,
                }),
                None => {
                    has_delete = true;
                    txn.success.push(TxnOp::Delete {
                        key: key.clone(),
                        prefix: false,
                    });
                }
            }
        }
        if has_delete {
            // Never write a value that every worker would then read as invalid (one that cannot
            // be incremented again): only this worker fails, not the cluster.
            let next = self
                .delete_counter
                .checked_add(1)
                .filter(|next| next.checked_add(1).is_some())
                .ok_or_else(|| self.counter_exhausted())?;
            txn.success.push(TxnOp::Put {
                key: self.counter_key.clone(),
                value: next.to_string().into_bytes(),
                lease: 0,
            });
        }
        txn.compares.push(if self.delete_counter > 0 {
            Compare::Value {
                key: self.counter_key.clone(),
                op: CompareOp::Equal,
                value: self.delete_counter.to_string().into_bytes(),
            }
        } else {
            Compare::CreateRevision {
                key: self.counter_key.clone(),
                op: CompareOp::Equal,
                revision: 0,
            }
        });
        self.add_fence(&mut txn);
        Ok(txn)
    }

    /// Adds the owner fence to a transaction of a fenced worker: the owner key's create
    /// revision must be the campaign's, and a refused transaction reads the key back.
    fn add_fence(&self, txn: &mut Txn) {
        if let Some(fence) = &self.fence {
            txn.compares.push(Compare::CreateRevision {
                key: fence.key.clone(),
                op: CompareOp::Equal,
                revision: fence.create_revision,
            });
            txn.failure.push(TxnOp::Get {
                key: fence.key.clone(),
                options: GetOptions::default(),
            });
        }
    }

    /// A refused transaction of a fenced worker whose owner key no longer has the campaign's
    /// create revision ends the worker with [`Error::NotOwner`].
    fn check_fence_response(&self, response: &cdc_etcd::TxnResponse) -> Result<()> {
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        if response.succeeded {
            return Ok(());
        }
        let holds = response.responses.iter().any(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs
                .first()
                .is_some_and(|kv| kv.create_revision == fence.create_revision),
            TxnOpResponse::Put | TxnOpResponse::Delete { .. } => false,
        });
        if holds {
            Ok(())
        } else {
            info!("owner fence refused, this capture is not the owner any more");
            Err(Error::NotOwner)
        }
    }
}

/// A delete counter value a writer can increment: a positive decimal below `i64::MAX`.
fn counter_value(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|counter| *counter > 0 && counter.checked_add(1).is_some())
}

/// The value that repairs a delete counter whose last valid value was `last_valid` (0: none)
/// and that was overwritten at `bad_revision`: the larger of `last_valid + 1` and
/// `bad_revision`, if it can be incremented in turn.
fn repaired_counter(last_valid: i64, bad_revision: Revision) -> Option<i64> {
    let counter = last_valid.checked_add(1)?.max(bad_revision);
    counter.checked_add(1).map(|_| counter)
}

/// How a worker paces its ticks.
struct Pacing {
    /// At most one tick per interval (burst 2).
    interval: Duration,
    /// An idle reactor is ticked this often.
    heartbeat: Duration,
    /// Pokes that ask for a tick.
    poke: TickPoke,
}

/// What woke the worker.
enum Wake {
    /// The watch delivered an item (`None`: its task ended).
    Watch(Option<cdc_etcd::Result<WatchResponse>>),
    /// The reactor's owner asked for a tick.
    Poke,
    /// A deadline: a requested tick, the heartbeat, a commit retry or a stall report.
    Timer,
}

/// At most one tick per interval on average, with a burst of two (a generic cell rate
/// algorithm on tokio's clock, so that paused-time tests control it).
#[derive(Debug)]
struct TickLimiter {
    interval: Duration,
    /// The theoretical arrival time of the next tick at the nominal rate.
    next_nominal: Instant,
}

impl TickLimiter {
    /// Ticks allowed at once beyond the rate.
    const BURST: u32 = 2;

    fn new(interval: Duration, now: Instant) -> TickLimiter {
        TickLimiter {
            interval,
            next_nominal: now,
        }
    }

    /// The first instant a tick is allowed.
    fn ready_at(&self) -> Instant {
        let tolerance = self.interval * (Self::BURST - 1);
        self.next_nominal
            .checked_sub(tolerance)
            .unwrap_or(self.next_nominal)
    }

    /// Takes a tick at `now` if allowed.
    fn try_acquire(&mut self, now: Instant) -> bool {
        if now < self.ready_at() {
            return false;
        }
        self.next_nominal = self.next_nominal.max(now) + self.interval;
        true
    }
}

/// The pause of a worker after consecutive transactions that failed with an etcd error
/// (etcd out of space, overloaded or unreachable): a worker does not retry a struggling etcd
/// at its tick rate. Reset as soon as etcd answers a transaction.
#[derive(Debug, Default)]
struct CommitBackoff {
    /// Consecutive failures.
    failures: u32,
    /// No transaction before this instant.
    until: Option<Instant>,
}

impl CommitBackoff {
    /// Whether a transaction may be sent at `now`.
    fn is_over(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }

    /// Counts a failure at `now` and returns the pause before the next transaction.
    fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = jittered(nominal_backoff(self.failures), &mut rand::rng());
        self.until = Some(now + delay);
        delay
    }

    fn reset(&mut self) {
        *self = CommitBackoff::default();
    }
}

/// The pause after `failures` (at least 1) consecutive failures before jitter: the base,
/// doubled for every failure after the first, capped.
fn nominal_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    COMMIT_BACKOFF_BASE
        .saturating_mul(1 << doublings)
        .min(COMMIT_BACKOFF_MAX)
}

/// Half of `nominal` plus a random part of the other half, so that workers that failed
/// together do not retry together.
fn jittered(nominal: Duration, rng: &mut impl Rng) -> Duration {
    let half = nominal / 2;
    half + half.mul_f64(rng.random::<f64>())
}

/// What ends a worker from outside: cancellation by its owner or the end of the session.
#[derive(Debug)]
struct Stop {
    cancel: CancellationToken,
    session_done: Option<CancellationToken>,
}

impl Stop {
    /// Resolves, with the error that ends the worker, once it is cancelled or the session
    /// ends (cancellation wins when both happened).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on tokens.
    async fn stopped(&self) -> Error {
        let session_done = async {
            match &self.session_done {
                Some(session_done) => session_done.cancelled().await,
                None => pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Error::Cancelled,
            () = session_done => Error::SessionDone,
        }
    }

    /// Runs `call` unless the worker is stopped first; then `call` is dropped where it waits
    /// and the stopping error is returned.
    async fn guard<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            biased;
            err = self.stopped() => Err(err),
            result = call => result,
        }
    }
}

/// The next response of the watch; pending forever while no watch is open.
///
/// # Cancel safety
/// Cancel-safe: `ResilientWatch::recv` loses no response when cancelled.
async fn next_watch_item(
    watch: &mut Option<ResilientWatch>,
) -> Option<cdc_etcd::Result<WatchResponse>> {
    match watch {
        Some(watch) => watch.recv().await,
        None => pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_backoff_doubles_up_to_its_cap() {
        let nominal: Vec<_> = (1..=8).map(nominal_backoff).collect();
        let millis: Vec<u128> = nominal.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(nominal_backoff(u32::MAX), COMMIT_BACKOFF_MAX);

        let mut rng = rand::rng();
        for failures in 1..=8 {
            let nominal = nominal_backoff(failures);
            for _ in 0..100 {
                let delay = jittered(nominal, &mut rng);
                assert!(
                    delay >= nominal / 2 && delay <= nominal,
                    "{delay:?} of {nominal:?}"
                );
            }
        }
    }

    #[test]
    fn counter_values() {
        assert_eq!(counter_value(b"1"), Some(1));
        assert_eq!(counter_value(b"9223372036854775806"), Some(i64::MAX - 1));
        // Valid as an i64, but one more delete would overflow it.
        assert_eq!(counter_value(b"9223372036854775807"), None);
        assert_eq!(counter_value(b"9223372036854775808"), None);
        for bad in [&b"0"[..], b"-3", b"", b"x", b" 1", b"\xff"] {
            assert_eq!(counter_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn repaired_counters_never_go_back() {
        assert_eq!(repaired_counter(0, 7), Some(7));
        assert_eq!(repaired_counter(5, 3), Some(6));
        assert_eq!(repaired_counter(5, 100), Some(100));
        assert_eq!(repaired_counter(i64::MAX - 2, 3), Some(i64::MAX - 1));
        // Nothing at or above the bound is left that can be incremented.
        assert_eq!(repaired_counter(i64::MAX - 1, 3), None);
        assert_eq!(repaired_counter(i64::MAX, 3), None);
        assert_eq!(repaired_counter(0, i64::MAX), None);
    }

    /// A state that ignores everything.
    struct Nothing;

    impl ReactorState for Nothing {
        fn update(&mut self, _key: &[u8], _value: Option<&[u8]>, _is_init: bool) -> Result<()> {
            Ok(())
        }

        fn update_pending_change(&mut self, _now: std::time::Instant) {}

        fn get_patches(&mut self) -> Vec<PatchGroup> {
            Vec::new()
        }
    }

    impl Reactor<Nothing> for Nothing {
        async fn tick(&mut self, _state: &mut Nothing) -> Result<NextTick> {
            Ok(NextTick::Idle)
        }
    }

    // The snapshot read of a worker whose etcd never answers is retried, then gives up at the
    // deadline of a retried etcd call, with that deadline in its error.
    #[tokio::test(start_paused = true)]
    async fn snapshot_read_gives_up_at_the_retried_call_deadline() {
        let unreachable = vec!["127.0.0.1:1".to_owned()];
        let client = EtcdClient::connect(&unreachable, cdc_etcd::ConnectConfig::default())
            .await
            .unwrap();
        let worker = EtcdWorker::new(client, "/deadline");
        let metrics = worker.metrics().clone();
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let result = worker
            .run(&mut Nothing, Nothing, Duration::from_millis(10), &cancel)
            .await;
        let deadline = RetryPolicy::default().deadline;
        match result {
            Err(Error::Etcd(cdc_etcd::Error::DeadlineExceeded { after, .. })) => {
                assert_eq!(after, deadline);
            }
            Err(err) => panic!("expected the read's deadline, got {err:?}"),
            Ok(_) => panic!("expected the read's deadline, got a finished worker"),
        }
        assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
        assert!(metrics.snapshot_reads() > 1, "{}", metrics.snapshot_reads());
    }

    #[test]
    fn commit_backoff_holds_until_reset() {
        let mut backoff = CommitBackoff::default();
        let now = Instant::now();
        assert!(backoff.is_over(now));
        let first = backoff.fail(now);
        assert!(!backoff.is_over(now));
        assert!(backoff.is_over(now + first));
        backoff.fail(now);
        assert_eq!(backoff.failures, 2);
        backoff.reset();
        assert_eq!(backoff.failures, 0);
        assert!(backoff.is_over(now));
    }
}
