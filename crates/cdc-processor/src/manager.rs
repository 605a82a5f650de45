//! The processor manager of a capture incarnation (TiCDC's `cdc/processor/manager.go` in
//! pingcap/tiflow): the [`Processor`] ticked on the capture's etcd worker, the owner's messages
//! received on the "scheduler/to-agent" topic and the answers sent on "scheduler/to-owner",
//! one shared client per upstream, pipeline errors written into the task positions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cdc_etcd::{ConnectConfig, EtcdClient, TlsConfig};
use cdc_model::{
    ChangeFeedId, ChangeFeedInfo, ErrorReport, GoTime, Liveness, RunningError, UpstreamId,
    UpstreamInfo,
};
use cdc_orchestrator::{GlobalReactorState, TickPoke};
use cdc_p2p::{BoxError, NamedTopic};
use cdc_reactor::{
    PokeSlot, ProcessorManager, ProcessorManagerFactory, ReactorContext, Tick, check_capture_alive,
};
use cdc_scheduler::replica::ReplicaSpec;
use cdc_scheduler::{Epoch, Span, TO_AGENT_TOPIC, TO_OWNER_TOPIC, ToAgent, ToOwner};
use cdc_sink::SinkUri;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ProcessorConfig;
use crate::error::{Error, Result};
use crate::pipeline::{EtcdPipeline, PipelineConfig, PipelineHandle, SpanPipeline, UriSinks};
use crate::processor::{PipelineFactory, Processor, SpanFailure};
use crate::span_log::SpanLog;

/// How long registering or removing the message handler may take.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the processor manager of each capture incarnation: implements
/// [`ProcessorManagerFactory`].
#[derive(Clone)]
pub struct ProcessorReactors {
    config: Arc<ProcessorConfig>,
    fixed_pipeline: Option<Arc<dyn SpanPipeline>>,
}

impl std::fmt::Debug for ProcessorReactors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorReactors")
            .field("config", &self.config)
            .field("fixed_pipeline", &self.fixed_pipeline.is_some())
            .finish()
    }
}

impl ProcessorReactors {
    /// Processors with these settings: each span runs the etcd pipeline from its changefeed's
    /// upstream into its changefeed's sink.
    pub fn new(config: ProcessorConfig) -> ProcessorReactors {
        ProcessorReactors {
            config: Arc::new(config),
            fixed_pipeline: None,
        }
    }

    /// Processors whose spans all run on `pipeline`, whatever their changefeed's upstream and
    /// sink: for tests and benchmarks that plug in a recording or idle pipeline.
    pub fn with_pipeline(
        config: ProcessorConfig,
        pipeline: Arc<dyn SpanPipeline>,
    ) -> ProcessorReactors {
        ProcessorReactors {
            config: Arc::new(config),
            fixed_pipeline: Some(pipeline),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }
}

impl ProcessorManagerFactory for ProcessorReactors {
    fn create(
        &self,
        context: ReactorContext,
        liveness: Arc<cdc_model::AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager> {
        Arc::new(Processors::new(
            context,
            liveness,
            self.config.clone(),
            self.fixed_pipeline.clone(),
        ))
    }
}

/// What the message handler shares with the manager.
struct Inbox {
    messages_tx: mpsc::Sender<ToAgent>,
    poke: PokeSlot,
    n_dropped: AtomicU64,
}

/// The processors of one capture incarnation.
struct Processors {
    context: ReactorContext,
    liveness: Arc<cdc_model::AtomicLiveness>,
    config: Arc<ProcessorConfig>,
    inbox: Arc<Inbox>,
    closed: AtomicBool,
    cancel: CancellationToken,
    n_sent: AtomicU64,
    n_send_failed: AtomicU64,
    inner: tokio::sync::Mutex<Inner>,
}

/// The state a tick works on.
struct Inner {
    processor: Processor,
    messages_rx: mpsc::Receiver<ToAgent>,
    pipelines: Pipelines,
    handler_registered: bool,
    /// The span log could not be opened: the first tick fails with it.
    span_log_error: Option<Error>,
}

impl Processors {
    fn new(
        context: ReactorContext,
        liveness: Arc<cdc_model::AtomicLiveness>,
        config: Arc<ProcessorConfig>,
        fixed_pipeline: Option<Arc<dyn SpanPipeline>>,
    ) -> Processors {
        let (messages_tx, messages_rx) = mpsc::channel(config.message_capacity.max(1));
        let inbox = Arc::new(Inbox {
            messages_tx,
            poke: PokeSlot::default(),
            n_dropped: AtomicU64::new(0),
        });
        let (span_log, span_log_error) = match &config.span_log {
            None => (None, None),
            Some(path) => match SpanLog::open(path) {
                Ok(span_log) => (Some(Arc::new(span_log)), None),
                Err(err) => (None, Some(err)),
            },
        };
        let wake = {
            let inbox = inbox.clone();
            Arc::new(move || inbox.poke.poke())
        };
        let processor = Processor::new(context.capture_id.clone(), new_epoch(), span_log, wake);
        let pipelines = Pipelines {
            fixed: fixed_pipeline,
            config: config.pipeline.clone(),
            connect: config.connect.clone(),
            // The capture's own settings, with its TLS credentials (`docs/security.md`).
            default_connect: context.etcd.client().config().clone(),
            default_upstream: (context.etcd.etcd_cluster_id(), context.pd_endpoints.clone()),
            upstreams: BTreeMap::new(),
            changefeeds: BTreeMap::new(),
        };
        Processors {
            context,
            liveness,
            config,
            inbox,
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            n_sent: AtomicU64::new(0),
            n_send_failed: AtomicU64::new(0),
            inner: tokio::sync::Mutex::new(Inner {
                processor,
                messages_rx,
                pipelines,
                handler_registered: false,
                span_log_error,
            }),
        }
    }

    /// Registers the handler of the owner's messages: it queues them (dropping and counting
    /// when the queue is full, never blocking the p2p worker) and pokes the worker.
    async fn register_handler(&self) -> Result<(), cdc_p2p::Error> {
        let topic: NamedTopic<ToAgent> = NamedTopic::new(TO_AGENT_TOPIC);
        let inbox = self.inbox.clone();
        let handler = move |_sender, message: ToAgent| {
            match inbox.messages_tx.try_send(message) {
                Ok(()) => inbox.poke.poke(),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    inbox.n_dropped.fetch_add(1, Ordering::Relaxed);
                    inbox.poke.poke();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            std::future::ready(Ok::<(), BoxError>(()))
        };
        let registered = tokio::time::timeout(
            HANDLER_TIMEOUT,
            self.context
                .message_server
                .add_handler(&topic, handler, &self.cancel),
        )
        .await;
        match registered {
            Ok(Ok(_errors)) => Ok(()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(cdc_p2p::Error::TaskQueueCongested),
        }
    }

    /// Sends the agent's messages to the owner. A full send queue is waited on until
    /// `send_timeout` after the first message; after that, a message that finds no room is
    /// dropped (the owner's next heartbeat repairs it), so an unreachable owner delays a tick
    /// by at most `send_timeout`.
    async fn send(&self, messages: Vec<ToOwner>) {
        if messages.is_empty() {
            return;
        }
        let topic: NamedTopic<ToOwner> = NamedTopic::new(TO_OWNER_TOPIC);
        let deadline = tokio::time::Instant::now() + self.config.send_timeout;
        let mut client = None;
        for message in messages {
            let to = message.to.clone();
            if client
                .as_ref()
                .is_none_or(|(owner, _): &(String, _)| *owner != to)
            {
                client = self
                    .context
                    .router
                    .client(&to)
                    .map(|peer| (to.clone(), peer));
            }
            let Some((_, peer)) = &client else {
                self.n_send_failed.fetch_add(1, Ordering::Relaxed);
                debug!(owner = %to, "dropped a message to an owner whose address is unknown");
                continue;
            };
            let sent = if tokio::time::Instant::now() < deadline {
                match tokio::time::timeout_at(
                    deadline,
                    peer.send_message(&topic, message, &self.cancel),
                )
                .await
                {
                    Ok(sent) => sent.map(|_| ()),
                    Err(_) => Err(cdc_p2p::Error::SendTryAgain),
                }
            } else {
                peer.try_send_message(&topic, message).map(|_| ())
            };
            match sent {
                Ok(()) => {
                    self.n_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    self.n_send_failed.fetch_add(1, Ordering::Relaxed);
                    debug!(owner = %to, error = %ErrorReport(&err), "dropped a message to the owner");
                }
            }
        }
    }

    async fn tick_inner(&self, state: &mut GlobalReactorState) -> cdc_reactor::Result<Tick> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(Tick::Finished);
        }
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        if let Some(err) = inner.span_log_error.take() {
            return Err(cdc_reactor::Error::reactor(
                "opening the span log",
                err,
                false,
            ));
        }
        let mut retry_soon = false;
        if !inner.handler_registered {
            match self.register_handler().await {
                Ok(()) => inner.handler_registered = true,
                Err(err) => {
                    warn!(error = %ErrorReport(&err), "registering the scheduler handler failed, retrying");
                    retry_soon = true;
                }
            }
        }
        if self.liveness.load() == Liveness::Stopping {
            inner.processor.set_stopping();
        }
        let mut messages = Vec::new();
        while let Ok(message) = inner.messages_rx.try_recv() {
            messages.push(message);
        }
        inner.pipelines.retain(state);
        let output = {
            let mut factory = StatePipelines {
                pipelines: &mut inner.pipelines,
                state: &mut *state,
            };
            inner.processor.tick(messages, &mut factory).await
        };
        self.send(output.messages).await;
        self.report_failures(state, output.failures);
        self.check_capture_alive(state, &inner.processor);
        if retry_soon {
            return Ok(Tick::After(Duration::from_secs(1)));
        }
        if inner.processor.running_spans().next().is_some() || inner.processor.has_waiting_spans() {
            Ok(Tick::After(self.config.progress_interval))
        } else {
            Ok(Tick::Idle)
        }
    }

    /// Writes each changefeed's first pipeline error of this tick into its task position,
    /// where the owner takes it (TiCDC's `TaskPosition.error`).
    fn report_failures(&self, state: &mut GlobalReactorState, failures: Vec<SpanFailure>) {
        if failures.is_empty() {
            return;
        }
        let address = state
            .captures
            .get(&self.context.capture_id)
            .map(|capture| capture.address.clone())
            .unwrap_or_default();
        let mut first: BTreeMap<ChangeFeedId, RunningError> = BTreeMap::new();
        for failure in failures {
            first
                .entry(failure.span.changefeed.clone())
                .or_insert_with(|| running_error(&failure.error, &address));
        }
        for (changefeed, error) in first {
            let Some(changefeed_state) = state.changefeeds.get_mut(&changefeed) else {
                continue;
            };
            info!(changefeed = %changefeed, code = error.code, "reporting a processor error");
            changefeed_state.patch_task_position(&self.context.capture_id, move |position| {
                let mut position = position.unwrap_or_default();
                position.error = Some(error.clone());
                Ok((Some(position), true))
            });
        }
    }

    /// Queues the check that this capture's key still exists (TiCDC's `checkCaptureAlive`): on
    /// each changefeed this processor has spans of, or once when it has none.
    fn check_capture_alive(&self, state: &mut GlobalReactorState, processor: &Processor) {
        let mut checked = false;
        for changefeed in processor.changefeeds() {
            if let Some(changefeed_state) = state.changefeeds.get_mut(&changefeed) {
                changefeed_state.check_capture_alive(&self.context.capture_id);
                checked = true;
            }
        }
        if !checked {
            let patch = check_capture_alive(&state.cluster_id, &self.context.capture_id);
            state.queue_patches(vec![Box::new(patch)]);
        }
    }
}

impl ProcessorManager for Processors {
    fn tick<'a>(
        &'a self,
        state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        Box::pin(self.tick_inner(state))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::SeqCst);
            self.inbox.poke.poke();
            let mut inner = self.inner.lock().await;
            inner.processor.close(self.config.close_timeout).await;
            inner.pipelines.clear();
            if inner.handler_registered {
                inner.handler_registered = false;
                let removed = tokio::time::timeout(
                    HANDLER_TIMEOUT,
                    self.context
                        .message_server
                        .remove_handler(TO_AGENT_TOPIC, &self.cancel),
                )
                .await;
                match removed {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        warn!(error = %ErrorReport(&err), "removing the scheduler handler failed");
                    }
                    Err(_) => warn!("removing the scheduler handler timed out"),
                }
            }
            self.cancel.cancel();
            info!(capture_id = self.context.capture_id, "processors closed");
        })
    }

    fn write_debug_info(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "processor manager of capture {}: liveness {}, closed {}, messages sent {}, send failures {}, received dropped {}",
            self.context.capture_id,
            self.liveness.load(),
            self.closed.load(Ordering::SeqCst),
            self.n_sent.load(Ordering::Relaxed),
            self.n_send_failed.load(Ordering::Relaxed),
            self.inbox.n_dropped.load(Ordering::Relaxed),
        );
        match self.inner.try_lock() {
            Ok(inner) => {
                inner.processor.write_debug_info(out);
                let _ = writeln!(
                    out,
                    "  upstream clients {:?}",
                    inner.pipelines.upstreams.keys().collect::<Vec<_>>()
                );
            }
            Err(_) => {
                let _ = writeln!(out, "  (busy in a tick)");
            }
        }
    }

    fn set_tick_poke(&self, poke: TickPoke) {
        self.inbox.poke.set(poke);
    }
}

/// The epoch of a new agent: the wall clock in nanoseconds, larger than any former
/// incarnation's on this capture (capture IDs are new per incarnation anyway).
fn new_epoch() -> Epoch {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    Epoch(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// TiCDC's `RunningError` of a pipeline error: the most specific error code in the chain (the
/// innermost `[CDC:...]` prefix) and the whole chain as the message.
pub(crate) fn running_error(error: &Error, address: &str) -> RunningError {
    let mut code = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(found) = error_code(&current.to_string()) {
            code = Some(found);
        }
        cause = current.source();
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        });
    RunningError {
        time: GoTime::from_unix_millis(now_ms).unwrap_or_else(GoTime::zero),
        addr: address.to_owned(),
        code: code.unwrap_or_else(|| "CDC:ErrProcessorUnknown".to_owned()),
        message: ErrorReport(error).to_string(),
    }
}

/// The code of a message that starts with `[CDC:ErrXxx]`.
fn error_code(message: &str) -> Option<String> {
    let rest = message.strip_prefix('[')?;
    let end = rest.find(']')?;
    let code = &rest[..end];
    code.starts_with("CDC:").then(|| code.to_owned())
}

/// The pipeline of one changefeed, rebuilt when its sink URI, upstream, target or rules
/// change.
struct ChangefeedPipeline {
    sink_uri: String,
    upstream_id: UpstreamId,
    target: u64,
    rules: Vec<Vec<u8>>,
    max_unflushed_bytes: u64,
    pipeline: EtcdPipeline<UriSinks>,
}

/// The upstream clients and the changefeeds' pipelines.
struct Pipelines {
    /// Runs every span instead of the changefeeds' pipelines, when set.
    fixed: Option<Arc<dyn SpanPipeline>>,
    config: PipelineConfig,
    connect: ConnectConfig,
    /// How to connect to the default upstream: as the capture connects to its etcd.
    default_connect: ConnectConfig,
    /// The default upstream: the cluster's own etcd (its cluster ID and endpoints).
    default_upstream: (UpstreamId, String),
    upstreams: BTreeMap<UpstreamId, EtcdClient>,
    changefeeds: BTreeMap<ChangeFeedId, ChangefeedPipeline>,
}

impl Pipelines {
    /// Forgets the pipelines of changefeeds gone from the state (running spans keep theirs).
    fn retain(&mut self, state: &GlobalReactorState) {
        self.changefeeds
            .retain(|changefeed, _| state.changefeeds.contains_key(changefeed));
    }

    fn clear(&mut self) {
        self.changefeeds.clear();
        self.upstreams.clear();
    }

    /// Whether a span of `changefeed` can start: its info and upstream are known (or every span
    /// runs on the fixed pipeline). This capture's view of the cluster may lag behind the
    /// owner's, which dispatches spans of a changefeed it has just created.
    fn is_ready(&self, changefeed: &ChangeFeedId, state: &GlobalReactorState) -> bool {
        if self.fixed.is_some() {
            return true;
        }
        let Some(info) = state
            .changefeeds
            .get(changefeed)
            .and_then(|changefeed_state| changefeed_state.info.as_ref())
        else {
            return false;
        };
        self.upstreams.contains_key(&info.upstream_id)
            || state.upstreams.contains_key(&info.upstream_id)
            || info.upstream_id == self.default_upstream.0
    }

    /// What starting a span of `changefeed` needs beyond what is cached, read from the state
    /// before anything is awaited.
    fn resolve(
        &self,
        changefeed: &ChangeFeedId,
        state: &GlobalReactorState,
    ) -> Result<Option<NewPipeline>> {
        let info: &ChangeFeedInfo = state
            .changefeeds
            .get(changefeed)
            .and_then(|changefeed_state| changefeed_state.info.as_ref())
            .ok_or_else(|| Error::ChangefeedNotFound {
                changefeed: changefeed.to_string(),
            })?;
        let spec = ReplicaSpec::from_config(info.config.as_ref()).map_err(|reason| {
            Error::InvalidRules {
                changefeed: changefeed.to_string(),
                reason,
            }
        })?;
        let rules = spec.prefixes();
        // The changefeed's memory quota, shared evenly by its spans.
        let max_unflushed_bytes = spec.memory_quota() / spec.span_count().max(1);
        let current = self.changefeeds.get(changefeed).is_some_and(|cached| {
            cached.sink_uri == info.sink_uri
                && cached.upstream_id == info.upstream_id
                && cached.target == info.target_ts()
                && cached.rules == rules
                && cached.max_unflushed_bytes == max_unflushed_bytes
        });
        if current {
            return Ok(None);
        }
        let sink_uri = SinkUri::parse(&info.sink_uri).map_err(|source| Error::SinkUri {
            changefeed: changefeed.to_string(),
            source,
        })?;
        let upstream_id = info.upstream_id;
        let upstream = if self.upstreams.contains_key(&upstream_id) {
            None
        } else {
            match state.upstreams.get(&upstream_id) {
                Some(upstream) => Some(upstream.clone()),
                None if upstream_id == self.default_upstream.0 => Some(UpstreamInfo {
                    id: upstream_id,
                    pd_endpoints: self.default_upstream.1.clone(),
                    ..UpstreamInfo::default()
                }),
                None => {
                    return Err(Error::UpstreamNotFound {
                        changefeed: changefeed.to_string(),
                        upstream_id,
                    });
                }
            }
        };
        Ok(Some(NewPipeline {
            sink_uri,
            sink_uri_text: info.sink_uri.clone(),
            upstream_id,
            target: info.target_ts(),
            rules,
            max_unflushed_bytes,
            upstream,
        }))
    }

    /// Connects to an upstream; spans of one upstream share the client. The default upstream
    /// is reached as the capture reaches its etcd; another with the TLS files its info names.
    async fn connect(&mut self, upstream: UpstreamInfo) -> Result<EtcdClient> {
        let upstream_id = upstream.id;
        let connect_error = |source| Error::UpstreamConnect {
            upstream_id,
            endpoints: upstream.pd_endpoints.clone(),
            source,
        };
        let tls = if upstream_id == self.default_upstream.0 {
            self.default_connect.tls.clone()
        } else {
            TlsConfig::from_files(&upstream.ca_path, &upstream.cert_path, &upstream.key_path)
                .map_err(connect_error)?
                .map(Arc::new)
        };
        let connect = ConnectConfig {
            tls,
            ..self.connect.clone()
        };
        let client = EtcdClient::connect(&upstream.pd_endpoint_list(), connect)
            .await
            .map_err(connect_error)?;
        info!(
            upstream_id,
            endpoints = upstream.pd_endpoints,
            tls = !upstream.ca_path.is_empty(),
            "connected to an upstream"
        );
        self.upstreams.insert(upstream_id, client.clone());
        Ok(client)
    }

    async fn start(
        &mut self,
        span: Span,
        from_revision: u64,
        new_pipeline: Option<NewPipeline>,
    ) -> Result<PipelineHandle> {
        let changefeed = span.changefeed.clone();
        if let Some(new_pipeline) = new_pipeline {
            let NewPipeline {
                sink_uri,
                sink_uri_text,
                upstream_id,
                target,
                rules,
                max_unflushed_bytes,
                upstream,
            } = new_pipeline;
            let client = match (self.upstreams.get(&upstream_id), upstream) {
                (Some(client), _) => client.clone(),
                (None, Some(upstream)) => self.connect(upstream).await?,
                (None, None) => {
                    return Err(Error::UpstreamNotFound {
                        changefeed: changefeed.to_string(),
                        upstream_id,
                    });
                }
            };
            let config = PipelineConfig {
                flush_interval: sink_uri.flush_interval(),
                max_unflushed_bytes,
                ..self.config.clone()
            };
            let pipeline = EtcdPipeline::new(
                client,
                Arc::new(UriSinks::new(sink_uri, rules.clone())),
                config,
            )
            .with_target(target);
            self.changefeeds.insert(
                changefeed.clone(),
                ChangefeedPipeline {
                    sink_uri: sink_uri_text,
                    upstream_id,
                    target,
                    rules,
                    max_unflushed_bytes,
                    pipeline,
                },
            );
        }
        match self.changefeeds.get(&changefeed) {
            Some(cached) => Ok(cached.pipeline.start(span, from_revision)),
            None => Err(Error::ChangefeedNotFound {
                changefeed: changefeed.to_string(),
            }),
        }
    }
}

/// What a changefeed's new pipeline is built from.
struct NewPipeline {
    sink_uri: SinkUri,
    sink_uri_text: String,
    upstream_id: UpstreamId,
    /// The changefeed's target revision (`u64::MAX`: none).
    target: u64,
    /// The changefeed's rules (key prefixes), in order.
    rules: Vec<Vec<u8>>,
    /// Its share of the changefeed's memory quota per span.
    max_unflushed_bytes: u64,
    /// The upstream to connect to (endpoints and TLS files), when no client of it exists yet.
    upstream: Option<UpstreamInfo>,
}

/// The pipelines as the cluster state of this tick names them.
struct StatePipelines<'a> {
    pipelines: &'a mut Pipelines,
    state: &'a mut GlobalReactorState,
}

impl PipelineFactory for StatePipelines<'_> {
    fn is_ready(&self, span: &Span) -> bool {
        self.pipelines.is_ready(&span.changefeed, self.state)
    }

    fn start(
        &mut self,
        span: Span,
        from_revision: u64,
    ) -> impl Future<Output = Result<PipelineHandle>> + Send {
        let fixed = self.pipelines.fixed.clone();
        // The state is read before anything is awaited: it is not shared across threads.
        let resolved = match fixed {
            Some(_) => Ok(None),
            None => self.pipelines.resolve(&span.changefeed, self.state),
        };
        let pipelines = &mut *self.pipelines;
        async move {
            if let Some(fixed) = fixed {
                return Ok(fixed.start(span, from_revision));
            }
            let new_pipeline = resolved?;
            pipelines.start(span, from_revision, new_pipeline).await
        }
    }
}

#[cfg(test)]
mod tests;
