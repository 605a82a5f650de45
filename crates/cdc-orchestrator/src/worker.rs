//! The etcd worker: the IO shell that keeps a consistent snapshot of a key prefix, ticks a
//! reactor over it and commits the reactor's patches as compare-and-swap transactions
//! (TiCDC's `pkg/orchestrator/etcd_worker.go`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cdc_etcd::retry::retry;
use cdc_etcd::watch::{EtcdWatchSource, ResilientWatch, WatchConfig, WatchSource};
use cdc_etcd::{
    EtcdClient, EventKind, GetOptions, OwnerFence, RetryPolicy, Revision, WatchResponse,
};
use cdc_model::ErrorReport;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::TxnLimits;
use crate::error::{Error, Result};
use crate::key::normalize_prefix;
use crate::metrics::WorkerMetrics;
use crate::patch::{Key, PatchGroup, RawEntry, RawState, Value};
use crate::reactor::{NextTick, Reactor, ReactorState, TickPoke};

mod commit;
mod pacing;

use commit::{CommitBackoff, CounterRead};
use pacing::{Pacing, Stop, TickLimiter, Wake, next_watch_item};

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

/// The retries of a snapshot read: as many tries as fit in the deadline of a retried etcd
/// call ([`RetryPolicy::default`]), with TiCDC's jittered backoff from 100 ms up to 2 s.
const SNAPSHOT_RETRY: RetryPolicy = RetryPolicy {
    max_tries: u32::MAX,
    deadline: Duration::from_secs(30),
    base_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(2),
};

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
        cdc_model::key::delete_counter_key(&self.prefix)
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
            let tick_duration = now.elapsed();
            self.metrics.record_tick_duration(tick_duration);
            if tick_duration > SLOW_WARN {
                warn!(duration = ?tick_duration, "etcd worker tick took too long");
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

    /// Replaces the watch by one from `revision + 1` (TiCDC's `pkg/orchestrator/etcd_worker.go`, after a compaction).
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
}

#[cfg(test)]
mod tests;
