//! [`ResilientWatch`]: a watch that survives stalls and broken streams (`pkg/etcd/client.go`).
//!
//! A task owned by the [`ResilientWatch`] reads the underlying watch and forwards every response
//! through a bounded buffer, in order, never dropping one when the consumer is slow. After
//! [`WatchConfig::progress_interval`] without a response it asks etcd for a progress
//! notification; after [`WatchConfig::reset_after`] without any response it opens a new watch
//! from the resume revision. A broken or ended stream is re-opened the same way, with backoff.
//!
//! The resume revision only moves forward: it starts at the requested start revision and becomes
//! `mod_revision + 1` of the last forwarded event. Unlike the reference, which resumes from the
//! last header revision (inclusive), this neither redelivers events nor skips the events of a
//! catch-up batch that etcd splits (a split batch carries the store's current revision in its
//! header, not the revision of its last event).
//!
//! What is forwarded: responses with events, and progress notifications (which carry a header
//! revision the consumer must not advance to). `created` responses are consumed here. The watch
//! ends with one error, after which [`ResilientWatch::recv`] returns `None`:
//! - `Err(Error::Compacted)` on a compaction;
//! - `Err(Error::WatchRefused)` on a cause that re-opening cannot cure: an open or stream error
//!   that is not retryable ([`Error::is_retryable`]), or a server-side cancel whose reason is
//!   one of etcd's permanent errors (permission denied, an invalid token, a future revision);
//!   TiCDC's Go client ends a watch on every server-side cancel (`clientv3/watch.go`);
//! - `Err(Error::WatchStalled)` when etcd sent nothing (no event, no progress notification)
//!   for [`WatchConfig::stall_limit`], through every re-open, with the last error met.
//!
//! Transient causes (a broken stream, a timeout, a cancel for one of etcd's transient errors)
//! re-open the watch with backoff until then.

use std::future::Future;
use std::time::Duration;

use cdc_model::ErrorReport;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::client::{EtcdClient, RawWatch};
use crate::error::{Error, Result};
use crate::retry::{Backoff, BackoffPolicy, Jitter};
use crate::types::{Revision, WatchOptions, WatchResponse};

/// One watch stream, as [`ResilientWatch`] needs it.
pub trait WatchStream: Send + 'static {
    /// The next response; `Ok(None)` when the stream ended.
    ///
    /// # Cancel safety
    /// Must be cancel-safe: a cancelled call loses no response.
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchResponse>>> + Send;

    /// Asks for a progress notification.
    fn request_progress(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// Opens watch streams on one key or prefix, from a given revision. The seam that lets the
/// wrapper's loop run against scripted streams under paused time.
pub trait WatchSource: Send + 'static {
    /// The stream type.
    type Stream: WatchStream;

    /// Opens a watch delivering events from `start_revision` (inclusive; 0 means "from now").
    fn open(
        &mut self,
        start_revision: Revision,
    ) -> impl Future<Output = Result<Self::Stream>> + Send;
}

impl WatchStream for RawWatch {
    async fn next(&mut self) -> Result<Option<WatchResponse>> {
        RawWatch::next(self).await
    }

    async fn request_progress(&mut self) -> Result<()> {
        RawWatch::request_progress(self).await
    }
}

/// A [`WatchSource`] on a real etcd.
#[derive(Clone, Debug)]
pub struct EtcdWatchSource {
    client: EtcdClient,
    key: Vec<u8>,
    prefix: bool,
}

impl EtcdWatchSource {
    /// Watches `key`, or every key with that prefix.
    pub fn new(client: EtcdClient, key: Vec<u8>, prefix: bool) -> EtcdWatchSource {
        EtcdWatchSource {
            client,
            key,
            prefix,
        }
    }
}

impl WatchSource for EtcdWatchSource {
    type Stream = RawWatch;

    async fn open(&mut self, start_revision: Revision) -> Result<RawWatch> {
        let options = WatchOptions {
            prefix: self.prefix,
            start_revision,
            progress_notify: true,
            prev_kv: false,
        };
        self.client.watch(self.key.clone(), options).await
    }
}

/// Timing of a [`ResilientWatch`].
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Responses buffered for the consumer.
    pub buffer: usize,
    /// Silence after which a progress notification is requested (and the period of the check).
    pub progress_interval: Duration,
    /// Silence after which the watch is re-opened from the resume revision.
    pub reset_after: Duration,
    /// First delay before re-opening a broken stream; doubles up to `max_reopen_backoff`.
    pub min_reopen_backoff: Duration,
    /// Largest delay between attempts to re-open a broken stream.
    pub max_reopen_backoff: Duration,
    /// Silence from etcd (no event, no progress notification, through every re-open) after
    /// which the watch ends with [`Error::WatchStalled`].
    pub stall_limit: Duration,
}

impl Default for WatchConfig {
    fn default() -> WatchConfig {
        WatchConfig {
            buffer: 16,
            progress_interval: Duration::from_secs(1),
            reset_after: Duration::from_secs(10),
            min_reopen_backoff: Duration::from_millis(100),
            max_reopen_backoff: Duration::from_secs(2),
            // Six silent re-opens: far beyond a leader election or a restart of etcd.
            stall_limit: Duration::from_secs(60),
        }
    }
}

/// A watch that requests progress when idle, re-opens itself when stuck or broken, and never
/// drops a response. Dropping it aborts its task.
#[derive(Debug)]
pub struct ResilientWatch {
    responses_rx: mpsc::Receiver<Result<WatchResponse>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ResilientWatch {
    /// Watches `key` (or every key with that prefix) on etcd from `start_revision` (inclusive; 0
    /// means "from now"), with the default timing. `cancel` (or dropping the watch) stops it.
    pub fn start(
        client: EtcdClient,
        key: Vec<u8>,
        prefix: bool,
        start_revision: Revision,
        cancel: CancellationToken,
    ) -> ResilientWatch {
        ResilientWatch::with_source(
            EtcdWatchSource::new(client, key, prefix),
            start_revision,
            WatchConfig::default(),
            cancel,
        )
    }

    /// Watches through any [`WatchSource`].
    pub fn with_source<S: WatchSource>(
        source: S,
        start_revision: Revision,
        config: WatchConfig,
        cancel: CancellationToken,
    ) -> ResilientWatch {
        let cancel = cancel.child_token();
        let (responses_tx, responses_rx) = mpsc::channel(config.buffer.max(1));
        let forwarder = Forwarder {
            source,
            config,
            resume_revision: start_revision,
            responses_tx,
            cancel: cancel.clone(),
            last_receipt: Instant::now(),
            last_error: None,
        };
        let task = tokio::spawn(forwarder.run());
        ResilientWatch {
            responses_rx,
            cancel,
            task: Some(task),
        }
    }

    /// The next response, or `None` once cancelled (or after the error that ends the watch was
    /// delivered).
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled call loses no response.
    pub async fn recv(&mut self) -> Option<Result<WatchResponse>> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            response = self.responses_rx.recv() => response,
        }
    }

    /// Stops the watch and waits for its task to end.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

impl Drop for ResilientWatch {
    /// Cancels the task and aborts it, so that it ends even while its source's `open` or the
    /// stream does not return (dropped with it); [`ResilientWatch::close`] waits for it instead.
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the forwarding loop does next.
enum Step {
    /// Keep reading the same stream.
    Continue,
    /// The stream was silent too long: open a new one now.
    Stalled,
    /// The stream broke or ended: open a new one after a backoff.
    Broken,
    /// The watch is over (cancelled, consumer gone, or its ending error delivered).
    Stop,
}

struct Forwarder<S: WatchSource> {
    source: S,
    config: WatchConfig,
    resume_revision: Revision,
    responses_tx: mpsc::Sender<Result<WatchResponse>>,
    cancel: CancellationToken,
    /// When etcd last answered (or the watch started): the stall is measured from here,
    /// across re-opens.
    last_receipt: Instant,
    /// The last transient error met since then.
    last_error: Option<Error>,
}

impl<S: WatchSource> Forwarder<S> {
    async fn run(mut self) {
        let mut backoff = self.reopen_backoff();
        loop {
            let Some(stream) = self.open().await else {
                return;
            };
            match self.forward(stream).await {
                Step::Stop => return,
                Step::Continue | Step::Stalled => backoff.reset(),
                Step::Broken => {
                    if self.end_if_stalled().await {
                        return;
                    }
                    // The stream broke: pace the re-open so that a dead server is not hammered.
                    if !sleep(&self.cancel, backoff.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }

    /// The pauses between re-opens: from `min_reopen_backoff`, doubling up to
    /// `max_reopen_backoff`, without jitter.
    fn reopen_backoff(&self) -> Backoff {
        Backoff::new(BackoffPolicy {
            base: self.config.min_reopen_backoff,
            max: self.config.max_reopen_backoff,
            jitter: Jitter::None,
        })
    }

    /// Opens a stream from the resume revision, retrying with backoff; `None` when cancelled.
    async fn open(&mut self) -> Option<S::Stream> {
        let mut backoff = self.reopen_backoff();
        loop {
            let opened = tokio::select! {
                () = self.cancel.cancelled() => return None,
                opened = self.source.open(self.resume_revision) => opened,
            };
            match opened {
                Ok(stream) => return Some(stream),
                Err(err) if err.is_retryable() => {
                    tracing::warn!(
                        revision = self.resume_revision,
                        error = %ErrorReport(&err),
                        "cannot open an etcd watch, retrying"
                    );
                    self.last_error = Some(err);
                }
                Err(err) => {
                    self.refuse(err).await;
                    return None;
                }
            }
            if self.end_if_stalled().await {
                return None;
            }
            if !sleep(&self.cancel, backoff.next_delay()).await {
                return None;
            }
        }
    }

    /// Forwards the responses of one stream until it must be re-opened or the watch ends.
    async fn forward(&mut self, mut stream: S::Stream) -> Step {
        let mut last_receipt = Instant::now();
        let mut ticker = tokio::time::interval_at(
            last_receipt + self.config.progress_interval,
            self.config.progress_interval,
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Step::Stop,
                received = stream.next() => {
                    last_receipt = Instant::now();
                    let step = self.handle(received, last_receipt).await;
                    if !matches!(step, Step::Continue) {
                        return step;
                    }
                    ticker.reset();
                }
                _ = ticker.tick() => {
                    if let Err(err) = stream.request_progress().await {
                        tracing::warn!(
                            error = %ErrorReport(&err),
                            "etcd watch progress request failed"
                        );
                    }
                    if self.end_if_stalled().await {
                        return Step::Stop;
                    }
                    let silence = last_receipt.elapsed();
                    if silence >= self.config.reset_after {
                        tracing::warn!(
                            ?silence,
                            revision = self.resume_revision,
                            "etcd watch silent, re-opening it"
                        );
                        return Step::Stalled;
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        received: Result<Option<WatchResponse>>,
        last_receipt: Instant,
    ) -> Step {
        let response = match received {
            Ok(Some(response)) => response,
            Ok(None) => {
                tracing::warn!(
                    revision = self.resume_revision,
                    "etcd watch ended, re-opening it"
                );
                return Step::Broken;
            }
            Err(err) if err.is_retryable() => {
                tracing::warn!(
                    revision = self.resume_revision,
                    error = %ErrorReport(&err),
                    "etcd watch broken, re-opening it"
                );
                self.last_error = Some(err);
                return Step::Broken;
            }
            Err(err) => {
                self.refuse(err).await;
                return Step::Stop;
            }
        };
        if response.compact_revision > 0 {
            let err = Error::Compacted {
                requested: self.resume_revision,
                compacted: response.compact_revision,
            };
            self.send(Err(err), last_receipt).await;
            return Step::Stop;
        }
        if response.canceled {
            // Not an answer that counts against the stall: a cancel repeated for ever is one.
            let err = crate::classify::watch_cancelled(&response.cancel_reason);
            if !err.is_retryable() {
                self.refuse(err).await;
                return Step::Stop;
            }
            tracing::warn!(
                revision = self.resume_revision,
                error = %ErrorReport(&err),
                "etcd cancelled the watch, re-opening it"
            );
            self.last_error = Some(err);
            return Step::Broken;
        }
        self.last_receipt = last_receipt;
        self.last_error = None;
        if response.created && response.events.is_empty() {
            return Step::Continue;
        }
        if let Some(last) = response.events.last() {
            self.resume_revision = self.resume_revision.max(last.kv.mod_revision + 1);
        }
        if self.send(Ok(response), last_receipt).await {
            Step::Continue
        } else {
            Step::Stop
        }
    }

    /// Ends the watch with `WatchRefused` for `source`, a cause re-opening cannot cure.
    async fn refuse(&mut self, source: Error) {
        let err = Error::WatchRefused {
            revision: self.resume_revision,
            source: Box::new(source),
        };
        self.send(Err(err), Instant::now()).await;
    }

    /// Ends the watch with `WatchStalled` once etcd has been silent for the stall limit;
    /// whether it did.
    async fn end_if_stalled(&mut self) -> bool {
        let silence = self.last_receipt.elapsed();
        if silence < self.config.stall_limit {
            return false;
        }
        let err = Error::WatchStalled {
            revision: self.resume_revision,
            silence,
            last: self.last_error.take().map(Box::new),
        };
        self.send(Err(err), Instant::now()).await;
        true
    }

    /// Hands a response to the consumer, waiting as long as it takes; `false` when cancelled
    /// or the consumer is gone. Never re-opens the watch meanwhile.
    async fn send(&mut self, response: Result<WatchResponse>, last_receipt: Instant) -> bool {
        let mut warn = tokio::time::interval(self.config.progress_interval);
        warn.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return false,
                permit = self.responses_tx.reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(response);
                            true
                        }
                        Err(_) => false,
                    };
                }
                _ = warn.tick() => {
                    let blocked = last_receipt.elapsed();
                    if blocked >= self.config.reset_after {
                        tracing::warn!(?blocked, "etcd watch consumer is slow");
                    }
                }
            }
        }
    }
}

/// Sleeps unless cancelled; `false` when cancelled.
async fn sleep(cancel: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

#[cfg(test)]
mod tests;
