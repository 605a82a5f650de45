//! The span pipeline: the [`SpanPipeline`] trait, the [`PipelineHandle`] every implementation
//! returns, and [`EtcdPipeline`] (etcd source to a sink).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cdc_etcd::EtcdClient;
use cdc_model::{DEFAULT_NAMESPACE, ErrorReport};
use cdc_scheduler::{Checkpoint, Span};
use cdc_sink::{AnySink, BlackholeStats, SharedSinks, Sink, SinkUri, SpanTarget};
use cdc_source_etcd::{EtcdSource, KeyRange, SourceConfig, SourceOutput};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Whether a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineState {
    /// It runs.
    Running,
    /// It stopped because it was asked to.
    Stopped,
    /// It stopped on an error; [`PipelineHandle::stop`] returns it.
    Failed,
}

/// A pipeline's progress and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineProgress {
    /// Checkpoint (every change at or below it is durable in the sink) and resolved revision
    /// (every change at or below it has left the source). Both only move forward.
    pub checkpoint: Checkpoint,
    /// Whether it runs.
    pub state: PipelineState,
}

/// Runs spans. `start` never blocks: the pipeline starts in a task owned by the handle, and an
/// error (at start or later) shows as [`PipelineState::Failed`] and is returned by
/// [`PipelineHandle::stop`].
pub trait SpanPipeline: Send + Sync + 'static {
    /// Starts `span` from `from_revision`, its checkpoint: changes after it are replicated.
    fn start(&self, span: Span, from_revision: u64) -> PipelineHandle;
}

/// Publishes a running pipeline's progress; it never moves back.
#[derive(Debug)]
pub struct ProgressReporter {
    progress_tx: watch::Sender<PipelineProgress>,
}

impl ProgressReporter {
    /// Merges `checkpoint` into the published progress.
    pub fn report(&self, checkpoint: Checkpoint) {
        self.progress_tx.send_if_modified(|progress| {
            let before = progress.checkpoint;
            progress.checkpoint.merge(checkpoint);
            progress.checkpoint != before
        });
    }
}

/// A started pipeline: its progress and the task that runs it. Dropping it cancels the task;
/// [`PipelineHandle::stop`] also waits for it.
#[derive(Debug)]
pub struct PipelineHandle {
    span: String,
    progress_rx: watch::Receiver<PipelineProgress>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
}

impl PipelineHandle {
    /// Runs `run` in a task owned by the handle. `run` gets the reporter of its progress (which
    /// starts at `from_revision`) and a token cancelled by [`PipelineHandle::stop`]; it must
    /// return promptly once the token is cancelled. `span` names the span in errors.
    pub fn spawn<F, Fut>(span: String, from_revision: u64, run: F) -> PipelineHandle
    where
        F: FnOnce(ProgressReporter, CancellationToken) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (progress_tx, progress_rx) = watch::channel(PipelineProgress {
            checkpoint: Checkpoint::at(from_revision),
            state: PipelineState::Running,
        });
        let cancel = CancellationToken::new();
        let state_tx = progress_tx.clone();
        let running = run(ProgressReporter { progress_tx }, cancel.clone());
        let task = tokio::spawn(async move {
            let result = running.await;
            let state = match result {
                Ok(()) => PipelineState::Stopped,
                Err(_) => PipelineState::Failed,
            };
            state_tx.send_modify(|progress| progress.state = state);
            result
        });
        PipelineHandle {
            span,
            progress_rx,
            cancel,
            task: Some(task),
        }
    }

    /// The current progress.
    pub fn current(&self) -> PipelineProgress {
        *self.progress_rx.borrow()
    }

    /// A receiver of every progress change.
    pub fn progress(&self) -> watch::Receiver<PipelineProgress> {
        self.progress_rx.clone()
    }

    /// Stops the pipeline and waits for its task; the final checkpoint, or the error the
    /// pipeline failed with.
    pub async fn stop(mut self) -> Result<Checkpoint> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(result) => result?,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => {
                    return Err(Error::TaskFailed {
                        span: self.span.clone(),
                    });
                }
            }
        }
        Ok(self.current().checkpoint)
    }
}

impl Drop for PipelineHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Opens the sink of each span.
pub trait SinkFactory: Send + Sync + 'static {
    /// The sink type.
    type Sink: Sink;

    /// Opens the sink of `span`.
    fn open(&self, span: &Span) -> impl Future<Output = cdc_sink::Result<Self::Sink>> + Send;
}

/// Opens, for each span of one changefeed, the sink its sink URI names. Files of the file sink
/// go under `<dir>/<changefeed id>/` (`<namespace>.<id>` outside the default namespace) and are
/// named after the span ID; the etcd sink replaces the changefeed rule (key prefix) a span was
/// cut from by its own prefix, and the spans share one connection to it.
#[derive(Debug)]
pub struct UriSinks {
    uri: SinkUri,
    rules: Vec<Vec<u8>>,
    shared: SharedSinks,
}

impl UriSinks {
    /// The sinks `uri` names for a changefeed whose rules (key prefixes) are `rules`.
    pub fn new(uri: SinkUri, rules: Vec<Vec<u8>>) -> UriSinks {
        UriSinks {
            uri,
            rules,
            shared: SharedSinks::default(),
        }
    }

    /// What the blackhole sinks of these spans counted.
    pub fn blackhole_stats(&self) -> &Arc<BlackholeStats> {
        self.shared.blackhole_stats()
    }

    /// The rule `span` was cut from: the longest rule its start key begins with (rules do not
    /// overlap, so there is at most one), or none.
    fn source_prefix(&self, span: &Span) -> &[u8] {
        self.rules
            .iter()
            .filter(|rule| span.start_key.starts_with(rule))
            .max_by_key(|rule| rule.len())
            .map_or(&[][..], Vec::as_slice)
    }
}

impl SinkFactory for UriSinks {
    type Sink = AnySink;

    async fn open(&self, span: &Span) -> cdc_sink::Result<AnySink> {
        let changefeed = if span.changefeed.namespace == DEFAULT_NAMESPACE {
            span.changefeed.id.clone()
        } else {
            format!("{}.{}", span.changefeed.namespace, span.changefeed.id)
        };
        let span_name = format!("span-{}", span.span_id);
        let target = SpanTarget {
            changefeed: &changefeed,
            span: &span_name,
            source_prefix: self.source_prefix(span),
            start_key: &span.start_key,
            end_key: &span.end_key,
        };
        AnySink::open(&self.uri, target, &self.shared).await
    }
}

/// The default [`PipelineConfig::max_unflushed_bytes`]: 64 MiB.
pub const DEFAULT_MAX_UNFLUSHED_BYTES: u64 = 64 << 20;

/// Settings of an [`EtcdPipeline`].
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The source's bounds and timing.
    pub source: SourceConfig,
    /// How often the sink is flushed and the checkpoint moved.
    pub flush_interval: Duration,
    /// The sink is also flushed once this many bytes of changes wait for a flush, before the
    /// source is read again: with the source's bounded buffer, this bounds a span's memory while
    /// its sink is slow (see docs/guarantees.md).
    pub max_unflushed_bytes: u64,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            source: SourceConfig::default(),
            flush_interval: Duration::from_secs(1),
            max_unflushed_bytes: DEFAULT_MAX_UNFLUSHED_BYTES,
        }
    }
}

/// Runs spans of one upstream etcd into sinks; every span shares the upstream's client.
///
/// A span's changes go to its sink as they arrive; every `flush_interval` the sink is flushed
/// and, once the flush returned, the checkpoint moves to the resolved revision reached before the
/// flush. While the sink is slow the source is not read, so the watch stops being polled.
///
/// With a target revision (the changefeed's `target-ts`), changes after it never reach the sink
/// and the checkpoint and resolved revision stop at it.
#[derive(Debug)]
pub struct EtcdPipeline<F> {
    client: EtcdClient,
    sinks: Arc<F>,
    config: PipelineConfig,
    target: u64,
}

impl<F: SinkFactory> EtcdPipeline<F> {
    /// Pipelines on `client` into the sinks of `sinks`.
    pub fn new(client: EtcdClient, sinks: Arc<F>, config: PipelineConfig) -> EtcdPipeline<F> {
        EtcdPipeline {
            client,
            sinks,
            config,
            target: u64::MAX,
        }
    }

    /// Replicates changes up to `target` (inclusive) only; `u64::MAX` is unbounded.
    pub fn with_target(mut self, target: u64) -> EtcdPipeline<F> {
        self.target = target;
        self
    }
}

impl<F: SinkFactory> SpanPipeline for EtcdPipeline<F> {
    fn start(&self, span: Span, from_revision: u64) -> PipelineHandle {
        let client = self.client.clone();
        let sinks = self.sinks.clone();
        let config = self.config.clone();
        let bounds = Bounds {
            from_revision,
            target: self.target,
        };
        let name = span.span_ref().to_string();
        PipelineHandle::spawn(name, from_revision, move |reporter, cancel| {
            run_etcd(client, sinks, config, span, bounds, reporter, cancel)
        })
    }
}

/// Where a span's pipeline starts and where it stops replicating.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// The checkpoint it starts from: changes after it are replicated.
    from_revision: u64,
    /// The last revision replicated.
    target: u64,
}

async fn run_etcd<F: SinkFactory>(
    client: EtcdClient,
    sinks: Arc<F>,
    config: PipelineConfig,
    span: Span,
    bounds: Bounds,
    reporter: ProgressReporter,
    cancel: CancellationToken,
) -> Result<()> {
    let from_revision = bounds.from_revision;
    let name = span.span_ref().to_string();
    if span.end_key.is_empty() {
        return Err(Error::UnboundedSpan { span: name });
    }
    let range = KeyRange {
        start: span.start_key.clone(),
        end: span.end_key.clone(),
    };
    let source_error = |source| Error::Source {
        span: name.clone(),
        source,
    };
    let sink_error = |source| Error::Sink {
        span: name.clone(),
        source,
    };
    let mut source = EtcdSource::start(client, range, from_revision, &config.source, &cancel)
        .map_err(source_error)?;
    let opened = tokio::select! {
        () = cancel.cancelled() => None,
        opened = sinks.open(&span) => Some(opened),
    };
    let mut sink = match opened {
        None => {
            source.close().await;
            return Ok(());
        }
        Some(Err(err)) => {
            source.close().await;
            return Err(sink_error(err));
        }
        Some(Ok(sink)) => sink,
    };
    tracing::info!(span = %name, from_revision, "span pipeline started");
    let result = pump(&mut source, &mut sink, &config, bounds, &reporter, &cancel).await;
    source.close().await;
    // A sink stuck in its close is left behind once the pipeline is asked to stop.
    let closed = tokio::select! {
        biased;
        closed = sink.close() => Some(closed),
        () = cancel.cancelled() => None,
    };
    let result = match result {
        Ok(()) => Ok(()),
        Err(Failure::Source(err)) => Err(source_error(err)),
        Err(Failure::Sink(err)) => Err(sink_error(err)),
    };
    if let Some(Err(err)) = closed {
        tracing::warn!(span = %name, error = %ErrorReport(&err), "closing the sink failed");
    }
    match &result {
        Ok(()) => tracing::info!(span = %name, "span pipeline stopped"),
        Err(err) => tracing::warn!(span = %name, error = %ErrorReport(err), "span pipeline failed"),
    }
    result
}

enum Failure {
    Source(cdc_source_etcd::Error),
    Sink(cdc_sink::Error),
}

/// Moves changes from the source to the sink and the checkpoint after each flush, until
/// cancelled or an error. Changes after the target are dropped and progress stops at it.
async fn pump<S: Sink>(
    source: &mut EtcdSource,
    sink: &mut S,
    config: &PipelineConfig,
    bounds: Bounds,
    reporter: &ProgressReporter,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    // A start beyond the target replicates nothing and stays where it started.
    let limit = bounds.target.max(bounds.from_revision);
    let mut progress = Checkpoint::at(bounds.from_revision);
    let mut flush = tokio::time::interval_at(
        tokio::time::Instant::now() + config.flush_interval,
        config.flush_interval,
    );
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Bytes written to the sink since its last flush: at `max_unflushed_bytes` the sink is
    // flushed before the source is read again.
    let mut unflushed: u64 = 0;
    loop {
        let flush_now = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            _ = flush.tick() => true,
            output = source.next() => {
                match output.map_err(Failure::Source)? {
                    None => return Ok(()),
                    Some(SourceOutput::Events { mut events, resolved }) => {
                        events.retain(|event| event.revision <= limit);
                        if !events.is_empty() {
                            match unless_cancelled(cancel, sink.write(&events)).await {
                                None => return Ok(()),
                                Some(written) => written.map_err(Failure::Sink)?,
                            }
                            unflushed = unflushed.saturating_add(events.iter().map(event_bytes).sum());
                        }
                        progress.resolved = progress.resolved.max(resolved.min(limit));
                        reporter.report(progress);
                    }
                    Some(SourceOutput::Resolved(resolved)) => {
                        progress.resolved = progress.resolved.max(resolved.min(limit));
                        reporter.report(progress);
                    }
                }
                unflushed >= config.max_unflushed_bytes
            }
        };
        if flush_now && progress.resolved > progress.checkpoint {
            // Everything up to `resolved` has been written: after the flush it is durable.
            let covered = progress.resolved;
            match unless_cancelled(cancel, sink.flush()).await {
                None => return Ok(()),
                Some(flushed) => flushed.map_err(Failure::Sink)?,
            }
            unflushed = 0;
            progress.checkpoint = covered;
            reporter.report(progress);
        }
    }
}

/// What a change costs in memory while it waits in a sink for its flush: its key and value and
/// a fixed overhead for its bookkeeping.
fn event_bytes(event: &cdc_model::ChangeEvent) -> u64 {
    const OVERHEAD: usize = 64;
    let value = event.value.as_ref().map_or(0, Vec::len);
    u64::try_from(event.key.len() + value + OVERHEAD).unwrap_or(u64::MAX)
}

/// Runs `future` unless `cancel` fires first (`None`).
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    future: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        value = future => Some(value),
    }
}
