//! [`EtcdSource`]: one key range of an upstream etcd, as ordered change batches and a resolved
//! revision.
//!
//! # The resolved revision
//!
//! It moves to the revision of the last event of every watch response: etcd keeps the events of
//! one revision in one response (its catch-up batches end on a revision boundary), so every event
//! up to that revision has been handed out.
//!
//! When the span is idle, it moves through progress requests: the resilient watch asks for
//! progress after [`SourceConfig::progress_interval`] of silence, etcd answers with its current
//! revision. On etcd 3.4 that answer is not ordered with the watch's events (it is sent on the
//! stream's control channel, even while the watcher is still catching up or an event of that
//! revision is still queued; etcd 3.4.25 and 3.5.8 send it only once every watcher is synced).
//! So an answer `H` is only a candidate: it becomes the resolved revision when a later answer
//! arrives at least [`SourceConfig::confirm_after`] after it with no event at or below `H` in
//! between; an event at or below `H` drops the candidate. etcd delivers a catching-up or
//! lagging watcher's events every 100 ms (`syncWatchersLoop` in `mvcc/watchable_store.go`), well
//! inside the default confirmation delay, and the watch asks for progress only after
//! [`SourceConfig::progress_interval`] without any response.
//!
//! Hazard: the rule rests on that timing. A watcher that catches up over a backlog so large that
//! one pass of etcd's sync loop takes longer than a progress interval plus the confirmation delay,
//! and whose first event in the span comes only after that, could see the resolved revision pass
//! that event. Events are never lost (the watch still delivers them, in order); only the resolved
//! revision, and so a checkpoint, could run ahead of them.

use std::time::Duration;

use cdc_etcd::watch::{ResilientWatch, WatchConfig, WatchSource};
use cdc_etcd::{EtcdClient, EventKind, RawWatch, Revision, WatchOptions};
use cdc_model::{ChangeEvent, OpType};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A span's key range: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The first key (inclusive).
    pub start: Vec<u8>,
    /// The end (exclusive); must be above `start`.
    pub end: Vec<u8>,
}

impl KeyRange {
    /// The range of every key with `prefix`. `None` when no key is above every such key (an
    /// empty prefix, or one of only `0xff` bytes).
    pub fn prefix(prefix: &[u8]) -> Option<KeyRange> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Some(KeyRange {
                    start: prefix.to_vec(),
                    end,
                });
            }
        }
        None
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && key < self.end.as_slice()
    }

    fn check(&self) -> Result<()> {
        if self.end.is_empty() {
            return Err(self.invalid("has no end key"));
        }
        if self.end <= self.start {
            return Err(self.invalid("is empty: its end is not above its start"));
        }
        Ok(())
    }

    fn invalid(&self, reason: &'static str) -> Error {
        Error::InvalidRange {
            start: String::from_utf8_lossy(&self.start).into_owned(),
            end: String::from_utf8_lossy(&self.end).into_owned(),
            reason,
        }
    }
}

/// Bounds and timing of an [`EtcdSource`].
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Watch responses buffered between the watch and the consumer: the memory bound. A
    /// response of a watcher that catches up holds up to 1,000 revisions' changes (etcd's
    /// `watchBatchMaxRevs`), so the bound is in responses, each at most the client's
    /// `max_decoding_message_size`; the default keeps two.
    pub buffer: usize,
    /// Silence after which progress is requested, and the period of the requests.
    pub progress_interval: Duration,
    /// How long a progress answer must stand unchallenged before it becomes the resolved
    /// revision.
    pub confirm_after: Duration,
    /// Silence after which the watch is re-opened.
    pub reset_after: Duration,
}

impl Default for SourceConfig {
    fn default() -> SourceConfig {
        SourceConfig {
            buffer: 2,
            progress_interval: Duration::from_secs(1),
            confirm_after: Duration::from_millis(500),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// What the source hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOutput {
    /// Changes in revision order, and the resolved revision after them.
    Events {
        /// The changes.
        events: Vec<ChangeEvent>,
        /// Every change of the span at or below it has now been handed out.
        resolved: u64,
    },
    /// The resolved revision moved without changes.
    Resolved(u64),
}

/// The changes of one key range of an upstream etcd, from a start revision.
#[derive(Debug)]
pub struct EtcdSource {
    watch: ResilientWatch,
    range: KeyRange,
    /// The revision of the last event received (or the checkpoint).
    last_event: u64,
    tracker: ResolvedTracker,
}

impl EtcdSource {
    /// Watches `range` on `client` for the changes after `checkpoint` (from `checkpoint + 1`).
    /// The resolved revision starts at `checkpoint`. `cancel` (or dropping the source) stops it.
    pub fn start(
        client: EtcdClient,
        range: KeyRange,
        checkpoint: u64,
        config: &SourceConfig,
        cancel: &CancellationToken,
    ) -> Result<EtcdSource> {
        range.check()?;
        let start_revision = checkpoint
            .checked_add(1)
            .and_then(|revision| Revision::try_from(revision).ok())
            .ok_or(Error::RevisionOutOfRange {
                revision: checkpoint,
            })?;
        let watch_config = WatchConfig {
            buffer: config.buffer.max(1),
            progress_interval: config.progress_interval,
            reset_after: config.reset_after,
            ..WatchConfig::default()
        };
        let source = RangeWatchSource {
            client,
            start: range.start.clone(),
            end: range.end.clone(),
        };
        let watch =
            ResilientWatch::with_source(source, start_revision, watch_config, cancel.clone());
        Ok(EtcdSource {
            watch,
            range,
            last_event: checkpoint,
            tracker: ResolvedTracker::new(checkpoint, config.confirm_after),
        })
    }

    /// The resolved revision: every change of the range at or below it has been handed out.
    pub fn resolved(&self) -> u64 {
        self.tracker.resolved()
    }

    /// The next changes or resolved revision; `Ok(None)` once cancelled.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled call loses nothing.
    pub async fn next(&mut self) -> Result<Option<SourceOutput>> {
        loop {
            let response = match self.watch.recv().await {
                None => return Ok(None),
                Some(Err(cdc_etcd::Error::Compacted {
                    requested,
                    compacted,
                })) => {
                    return Err(Error::Compacted {
                        revision: to_u64(requested),
                        compacted: to_u64(compacted),
                    });
                }
                Some(Err(err)) => return Err(Error::Watch(err)),
                Some(Ok(response)) => response,
            };
            if response.is_progress_notify() {
                let revision = to_u64(response.revision);
                if self.tracker.on_progress(revision, Instant::now()) {
                    return Ok(Some(SourceOutput::Resolved(self.tracker.resolved())));
                }
                continue;
            }
            let applied = self.last_event;
            let mut events = Vec::with_capacity(response.events.len());
            let mut first_new = None;
            for event in response.events {
                let revision = to_u64(event.kv.mod_revision);
                if revision <= applied {
                    continue;
                }
                first_new.get_or_insert(revision);
                self.last_event = self.last_event.max(revision);
                if !self.range.contains(&event.kv.key) {
                    tracing::debug!(key = %event.kv.key_lossy(), "event outside the span dropped");
                    continue;
                }
                events.push(match event.kind {
                    EventKind::Put => ChangeEvent {
                        key: event.kv.key,
                        value: Some(event.kv.value),
                        revision,
                        op: OpType::Put,
                    },
                    EventKind::Delete => ChangeEvent {
                        key: event.kv.key,
                        value: None,
                        revision,
                        op: OpType::Delete,
                    },
                });
            }
            let moved = match first_new {
                Some(first) => self.tracker.on_events(first, self.last_event),
                None => false,
            };
            if !events.is_empty() {
                return Ok(Some(SourceOutput::Events {
                    events,
                    resolved: self.tracker.resolved(),
                }));
            }
            if moved {
                return Ok(Some(SourceOutput::Resolved(self.tracker.resolved())));
            }
        }
    }

    /// Stops the watch and waits for its task.
    pub async fn close(self) {
        self.watch.close().await;
    }
}

/// The resolved-revision rule of this module's docs, without IO: time comes in.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedTracker {
    resolved: u64,
    /// A progress answer waiting for confirmation, and when it arrived.
    candidate: Option<(u64, Instant)>,
    confirm_after: Duration,
}

impl ResolvedTracker {
    pub(crate) fn new(checkpoint: u64, confirm_after: Duration) -> ResolvedTracker {
        ResolvedTracker {
            resolved: checkpoint,
            candidate: None,
            confirm_after,
        }
    }

    pub(crate) fn resolved(&self) -> u64 {
        self.resolved
    }

    /// Takes a watch response whose new events run from revision `first` to `last`; whether
    /// the resolved revision moved.
    pub(crate) fn on_events(&mut self, first: u64, last: u64) -> bool {
        if self
            .candidate
            .is_some_and(|(candidate, _)| first <= candidate)
        {
            // An event at or below the candidate came after it: the answer was early.
            self.candidate = None;
        }
        let before = self.resolved;
        self.resolved = self.resolved.max(last);
        if self
            .candidate
            .is_some_and(|(candidate, _)| candidate <= self.resolved)
        {
            self.candidate = None;
        }
        self.resolved > before
    }

    /// Takes a progress answer at `revision` received at `now`; whether the resolved revision
    /// moved. An answer confirms the standing candidate once it is `confirm_after` old, then
    /// becomes the next candidate.
    pub(crate) fn on_progress(&mut self, revision: u64, now: Instant) -> bool {
        let before = self.resolved;
        match self.candidate {
            Some((candidate, since)) if now.duration_since(since) >= self.confirm_after => {
                self.resolved = self.resolved.max(candidate);
                self.candidate = None;
            }
            Some(_) => return false,
            None => {}
        }
        if revision > self.resolved {
            self.candidate = Some((revision, now));
        }
        self.resolved > before
    }
}

fn to_u64(revision: Revision) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// Opens range watches for the resilient watch.
struct RangeWatchSource {
    client: EtcdClient,
    start: Vec<u8>,
    end: Vec<u8>,
}

impl WatchSource for RangeWatchSource {
    type Stream = RawWatch;

    async fn open(&mut self, start_revision: Revision) -> cdc_etcd::Result<RawWatch> {
        let options = WatchOptions {
            start_revision,
            progress_notify: true,
            ..WatchOptions::default()
        };
        self.client
            .watch_range(self.start.clone(), self.end.clone(), options)
            .await
    }
}
