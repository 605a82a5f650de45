//! The owner on a capture: [`OwnerReactors`] builds one [`Owner`] per term, which runs
//! [`OwnerCore`] on the capture's fenced etcd worker, carries the scheduler's messages over p2p
//! and serves the changefeed API (TiCDC's `cdc/owner/owner.go` and `cdc/api/v2/changefeed.go`
//! in pingcap/tiflow).
//!
//! Messages from the agents and API requests wait in bounded channels; the p2p handler and the
//! API poke the worker, and both are handled inside the next tick. A full message channel drops
//! and counts: the heartbeats repair lost messages, and the p2p worker is never blocked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdc_etcd::{ConnectConfig, EtcdClient, GetOptions, TlsConfig};
use cdc_model::{AdminJobType, ChangeFeedInfo, ErrorReport, FeedState, GoTime, UpstreamInfo};
use cdc_orchestrator::GlobalReactorState;
use cdc_p2p::{Json, NamedTopic};
use cdc_reactor::{
    ApiRequest, ApiResponse, Owner, OwnerApi, OwnerFactory, PokeSlot, ReactorContext, Tick,
};
use cdc_scheduler::{TO_AGENT_TOPIC, TO_OWNER_TOPIC, ToAgent, ToOwner};
use chrono::Utc;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{self, ApiError, Route};
use crate::config::OwnerConfig;
use crate::core::{Job, OwnerCore, Reply, Request};
use crate::error::{Error, Result};
use crate::feed::AdminJob;
use cdc_scheduler::replica::ReplicaSpec;
use cdc_scheduler::split::{choose_split_keys, prefix_range_end};

/// The typed topic of [`cdc_scheduler::TO_AGENT_TOPIC`].
pub fn to_agent_topic() -> NamedTopic<ToAgent, Json> {
    NamedTopic::new(TO_AGENT_TOPIC)
}

/// The typed topic of [`cdc_scheduler::TO_OWNER_TOPIC`].
pub fn to_owner_topic() -> NamedTopic<ToOwner, Json> {
    NamedTopic::new(TO_OWNER_TOPIC)
}

/// How long an API request waits for the owner's tick.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long registering or removing the p2p handler may take.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest changefeed info a create writes: well inside one etcd transaction
/// (`cdc_orchestrator::TXN_MAX_SIZE`), which the info and status must share.
const MAX_INFO_SIZE: usize = 512 * 1024;
/// The most messages one tick takes from the channel (the rest wait for the next tick).
const MAX_MESSAGES_PER_TICK: usize = 65_536;

/// Builds the owner of each term.
#[derive(Debug, Clone, Default)]
pub struct OwnerReactors {
    config: OwnerConfig,
}

impl OwnerReactors {
    /// The factory of owners with `config`, validated.
    pub fn new(config: OwnerConfig) -> Result<OwnerReactors> {
        config.validate()?;
        Ok(OwnerReactors { config })
    }
}

impl OwnerFactory for OwnerReactors {
    fn create(&self, context: ReactorContext) -> Arc<dyn Owner> {
        Arc::new(EtcdOwner::new(context, self.config.clone()))
    }
}

/// Wraps an owner error for the capture: a new incarnation may recover from every error but a
/// bad configuration.
fn reactor_error(err: Error) -> cdc_reactor::Error {
    let restarts_capture = match &err {
        Error::InvalidConfig { .. } | Error::Scheduler(_) => false,
        Error::Etcd(_) | Error::P2p(_) | Error::Model(_) | Error::Cancelled => true,
    };
    cdc_reactor::Error::reactor("owner", err, restarts_capture)
}

/// The owner's state; the API reads it between ticks.
type SharedCore = Arc<Mutex<std::result::Result<OwnerCore, Option<Error>>>>;

struct EtcdOwner {
    context: ReactorContext,
    core: SharedCore,
    messages_tx: mpsc::Sender<ToOwner>,
    messages_rx: Mutex<mpsc::Receiver<ToOwner>>,
    requests_rx: Mutex<mpsc::Receiver<Request>>,
    api: Arc<ApiServer>,
    poke: Arc<PokeSlot>,
    /// Set by `async_stop`; shared with the API, which then answers 503 at once.
    stopped: Arc<AtomicBool>,
    handler_registered: AtomicBool,
    /// The terminal error of the message handler, if it fails (a message that does not
    /// decode, a gap in a sender's sequence): the owner would hear nothing more, so it ends.
    handler_errors: Mutex<Option<cdc_p2p::HandlerErrors>>,
    dropped_messages: Arc<AtomicU64>,
    started: Instant,
}

impl EtcdOwner {
    fn new(context: ReactorContext, config: OwnerConfig) -> EtcdOwner {
        let default_upstream = cdc_reactor::default_upstream(&context.etcd, &context.pd_endpoints);
        let (messages_tx, messages_rx) = mpsc::channel(config.message_queue);
        let (requests_tx, requests_rx) = mpsc::channel(config.api_queue);
        let poke = Arc::new(PokeSlot::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let core = OwnerCore::new(
            context.capture_id.clone(),
            context.owner_revision,
            config,
            default_upstream,
        )
        .map_err(Some);
        let core = Arc::new(Mutex::new(core));
        let api = Arc::new(ApiServer {
            context: context.clone(),
            core: core.clone(),
            requests_tx,
            poke: poke.clone(),
            stopped: stopped.clone(),
            default_revision: SharedRevision::default(),
        });
        EtcdOwner {
            context,
            core,
            messages_tx,
            messages_rx: Mutex::new(messages_rx),
            requests_rx: Mutex::new(requests_rx),
            api,
            poke,
            stopped,
            handler_registered: AtomicBool::new(false),
            handler_errors: Mutex::new(None),
            dropped_messages: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    /// Registers the handler of the agents' messages (a former term's is removed first).
    async fn register_handler(&self) -> Result<()> {
        let cancel = CancellationToken::new();
        let server = &self.context.message_server;
        let registered = tokio::time::timeout(HANDLER_TIMEOUT, async {
            server.remove_handler(TO_OWNER_TOPIC, &cancel).await?;
            let messages_tx = self.messages_tx.clone();
            let poke = self.poke.clone();
            let dropped = self.dropped_messages.clone();
            let errors = server
                .add_handler(
                    &to_owner_topic(),
                    move |_sender, message: ToOwner| {
                        match messages_tx.try_send(message) {
                            Ok(()) => poke.poke(),
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                                if n.is_power_of_two() {
                                    warn!(dropped = n, "owner message queue full, dropping");
                                }
                                poke.poke();
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                        std::future::ready(Ok(()))
                    },
                    &cancel,
                )
                .await?;
            Ok::<cdc_p2p::HandlerErrors, cdc_p2p::Error>(errors)
        })
        .await;
        match registered {
            Ok(Ok(errors)) => {
                *self
                    .handler_errors
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(errors);
                self.handler_registered.store(true, Ordering::SeqCst);
                Ok(())
            }
            Ok(Err(err)) => Err(Error::P2p(err)),
            Err(_) => Err(Error::P2p(cdc_p2p::Error::ServerClosed)),
        }
    }

    /// Removes the handler at the end of the term (bounded).
    async fn remove_handler(&self) {
        if !self.handler_registered.swap(false, Ordering::SeqCst) {
            return;
        }
        let cancel = CancellationToken::new();
        let removed = tokio::time::timeout(
            HANDLER_TIMEOUT,
            self.context
                .message_server
                .remove_handler(TO_OWNER_TOPIC, &cancel),
        )
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(error = %ErrorReport(&err), "cannot remove the owner's message handler")
            }
            Err(_) => warn!("removing the owner's message handler timed out"),
        }
    }

    /// Fails when the message handler failed: the owner would hear nothing more.
    fn check_handler(&self) -> Result<()> {
        let mut errors = self
            .handler_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match errors.as_mut().map(mpsc::Receiver::try_recv) {
            Some(Ok(err)) => {
                *errors = None;
                warn!(error = %ErrorReport(&err), "the owner's message handler failed, ending the term");
                Err(Error::P2p(err))
            }
            Some(Err(_)) | None => Ok(()),
        }
    }

    fn send(&self, messages: Vec<ToAgent>) {
        let topic = to_agent_topic();
        for message in messages {
            let Some(client) = self.context.router.client(&message.to) else {
                debug!(to = message.to, "no route to the capture, message dropped");
                continue;
            };
            let to = message.to.clone();
            if let Err(err) = client.try_send_message(&topic, message) {
                debug!(to, error = %ErrorReport(&err), "message to the agent dropped");
            }
        }
    }
}

impl Owner for EtcdOwner {
    fn tick<'a>(
        &'a self,
        state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        Box::pin(async move {
            if self.stopped.load(Ordering::SeqCst) {
                self.remove_handler().await;
                let mut rx = self
                    .requests_rx
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                rx.close();
                while let Ok(request) = rx.try_recv() {
                    let err = ApiError::owner_gone();
                    let _ = request.reply.send((err.status, err.body()));
                }
                info!(capture_id = self.context.capture_id, "owner stopped");
                return Ok(Tick::Finished);
            }
            if !self.handler_registered.load(Ordering::SeqCst) {
                self.register_handler().await.map_err(reactor_error)?;
                info!(
                    capture_id = self.context.capture_id,
                    owner_revision = self.context.owner_revision,
                    "owner started"
                );
            }
            self.check_handler().map_err(reactor_error)?;
            let mut messages = Vec::new();
            {
                let mut rx = self
                    .messages_rx
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                while messages.len() < MAX_MESSAGES_PER_TICK {
                    match rx.try_recv() {
                        Ok(message) => messages.push(message),
                        Err(_) => break,
                    }
                }
            }
            let mut requests = Vec::new();
            {
                let mut rx = self
                    .requests_rx
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                while let Ok(request) = rx.try_recv() {
                    requests.push(request);
                }
            }
            let output = {
                let mut core = self
                    .core
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let core = match &mut *core {
                    Ok(core) => core,
                    Err(err) => {
                        let err = err.take().unwrap_or(Error::Cancelled);
                        return Err(reactor_error(err));
                    }
                };
                core.tick(
                    state,
                    self.started.elapsed(),
                    Utc::now(),
                    messages,
                    requests,
                )
            };
            self.send(output.messages);
            Ok(Tick::After(output.next))
        })
    }

    fn async_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.poke.poke();
    }

    fn set_tick_poke(&self, poke: cdc_orchestrator::TickPoke) {
        self.poke.set(poke);
    }

    fn api(&self) -> Option<Arc<dyn OwnerApi>> {
        Some(self.api.clone())
    }

    fn changefeed_progress(&self) -> Vec<cdc_reactor::ChangefeedProgress> {
        let core = self
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*core {
            Ok(core) => core.progress(),
            Err(_) => Vec::new(),
        }
    }
}

/// An upstream and a client of it.
struct Upstream {
    info: UpstreamInfo,
    client: EtcdClient,
}

/// Serves the API: validates, does the IO a request needs (upstream revisions, key listings),
/// then hands the request to the owner's tick.
struct ApiServer {
    context: ReactorContext,
    core: SharedCore,
    requests_tx: mpsc::Sender<Request>,
    poke: Arc<PokeSlot>,
    stopped: Arc<AtomicBool>,
    /// The default upstream's current revision, read once for the creates waiting for it.
    default_revision: SharedRevision,
}

/// One current-revision read shared by the requests that wait for it: a request takes the
/// revision of a read that started after it arrived (so, as its own read would, a revision
/// current at or after its arrival), and concurrent creates cost one round trip, not one each.
#[derive(Debug, Default)]
struct SharedRevision {
    /// When the last read started, and what it read.
    last: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl SharedRevision {
    async fn current(&self, client: &EtcdClient) -> std::result::Result<u64, ApiError> {
        let arrived = Instant::now();
        // Cancel-safe: a cancelled waiter leaves the lock, and a cancelled read stores nothing.
        let mut last = self.last.lock().await;
        if let Some((started, revision)) = *last
            && started >= arrived
        {
            return Ok(revision);
        }
        let started = Instant::now();
        let revision = current_revision(client).await?;
        *last = Some((started, revision));
        Ok(revision)
    }
}

impl OwnerApi for ApiServer {
    fn serve(&self, request: ApiRequest) -> BoxFuture<'_, ApiResponse> {
        Box::pin(async move {
            let served =
                tokio::time::timeout(API_TIMEOUT, Box::pin(self.serve_request(request))).await;
            let reply = match served {
                Ok(Ok(reply)) => reply,
                Ok(Err(err)) => (err.status, err.body()),
                Err(_) => {
                    let err = ApiError::internal("the request timed out");
                    (err.status, err.body())
                }
            };
            ApiResponse {
                status: reply.0,
                body: reply.1,
            }
        })
    }
}

fn etcd_error(what: &str, err: &(dyn std::error::Error + 'static)) -> ApiError {
    ApiError::internal(format!("{what}: {}", ErrorReport(err)))
}

impl ApiServer {
    async fn serve_request(&self, request: ApiRequest) -> std::result::Result<Reply, ApiError> {
        let route = api::route(&request.method, &request.path)?;
        let query = api::parse_query(&request.query);
        let body = &request.body;
        let job = match route {
            Route::ListChangefeeds => Job::List {
                state: query.get("state").cloned().unwrap_or_default(),
                namespace: query.get("namespace").filter(|ns| !ns.is_empty()).cloned(),
            },
            Route::CreateChangefeed => self.prepare_create(api::parse_create(body)?).await?,
            Route::GetChangefeed(id) => Job::Get(api::changefeed_id(&id, &query)?),
            Route::UpdateChangefeed(id) => {
                let id = api::changefeed_id(&id, &query)?;
                let info = self.read_info(&id).await?;
                let mut plan = api::parse_update(body, &info)?;
                if let Some(spec) = &mut plan.spec {
                    let upstream = self.upstream_of(&info).await?;
                    choose_all_split_keys(&upstream.client, spec).await?;
                    let mut updated = info.clone();
                    spec.write_into(updated.config.get_or_insert_with(|| serde_json::json!({})));
                    check_info_size(&updated)?;
                }
                Job::Update { id, plan }
            }
            Route::RemoveChangefeed(id) => Job::Admin {
                id: api::changefeed_id(&id, &query)?,
                job: AdminJob::Remove,
            },
            Route::PauseChangefeed(id) => Job::Admin {
                id: api::changefeed_id(&id, &query)?,
                job: AdminJob::Pause,
            },
            Route::ResumeChangefeed(id) => {
                let id = api::changefeed_id(&id, &query)?;
                let overwrite_checkpoint = api::parse_resume(body)?;
                if let Some(checkpoint) = overwrite_checkpoint {
                    let info = self.read_info(&id).await?;
                    let upstream = self.upstream_of(&info).await?;
                    check_revision(&upstream.client, "overwrite_checkpoint_ts", checkpoint).await?;
                }
                Job::Admin {
                    id,
                    job: AdminJob::Resume {
                        overwrite_checkpoint,
                    },
                }
            }
            Route::ListProcessors => Job::ListProcessors,
            Route::GetProcessor(changefeed, capture_id) => Job::GetProcessor {
                changefeed: api::changefeed_id(&changefeed, &query)?,
                capture_id,
            },
            Route::DrainCapture(capture_id) => Job::Drain(capture_id),
        };
        self.ask(job).await
    }

    async fn ask(&self, job: Job) -> std::result::Result<Reply, ApiError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(ApiError::owner_gone());
        }
        if OwnerCore::is_read(&job) {
            // Reads are answered from the last tick's view, without waiting for a tick.
            let core = self
                .core
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Ok(core) = &*core
                && core.has_ticked()
            {
                return core.read(&job);
            }
        }
        let (reply, answer) = oneshot::channel();
        self.requests_tx
            .try_send(Request { job, reply })
            .map_err(|_| ApiError::owner_gone())?;
        self.poke.poke();
        answer.await.map_err(|_| ApiError::owner_gone())
    }

    async fn read_info(
        &self,
        id: &cdc_model::ChangeFeedId,
    ) -> std::result::Result<ChangeFeedInfo, ApiError> {
        let cancel = CancellationToken::new();
        match self.context.etcd.get_changefeed_info(id, &cancel).await {
            Ok(info) => Ok(info),
            Err(cdc_etcd::CdcError::ChangeFeedNotExists { .. }) => {
                Err(ApiError::changefeed_not_exists(id))
            }
            Err(err) => Err(etcd_error("read the changefeed", &err)),
        }
    }

    fn default_upstream(&self) -> Upstream {
        Upstream {
            info: cdc_reactor::default_upstream(&self.context.etcd, &self.context.pd_endpoints),
            client: self.context.etcd.client().clone(),
        }
    }

    /// A client of another upstream, with the TLS files its info names, and its info with the
    /// cluster ID read from it.
    async fn connect(&self, upstream: &UpstreamInfo) -> std::result::Result<Upstream, ApiError> {
        let pd_addrs = |err: &cdc_etcd::Error| {
            ApiError::invalid_param(format!(
                "pd_addrs {}: {}",
                upstream.pd_endpoints,
                ErrorReport(err)
            ))
        };
        let tls = TlsConfig::from_files(&upstream.ca_path, &upstream.cert_path, &upstream.key_path)
            .map_err(|err| pd_addrs(&err))?;
        let connect = ConnectConfig {
            tls: tls.map(Arc::new),
            ..ConnectConfig::default()
        };
        let client = EtcdClient::connect(&upstream.pd_endpoint_list(), connect)
            .await
            .map_err(|err| pd_addrs(&err))?;
        let id = client.cluster_id().await.map_err(|err| pd_addrs(&err))?;
        Ok(Upstream {
            info: UpstreamInfo {
                id,
                ..upstream.clone()
            },
            client,
        })
    }

    /// The upstream of a stored changefeed.
    async fn upstream_of(&self, info: &ChangeFeedInfo) -> std::result::Result<Upstream, ApiError> {
        let default = self.default_upstream();
        if info.upstream_id == default.info.id {
            return Ok(default);
        }
        let cancel = CancellationToken::new();
        let upstream = self
            .context
            .etcd
            .get_upstream_info(info.upstream_id, &info.namespace, &cancel)
            .await
            .map_err(|err| etcd_error("read the upstream", &err))?;
        self.connect(&upstream).await
    }

    /// Resolves the upstream, the start revision and the split keys of a create request.
    async fn prepare_create(&self, plan: api::CreatePlan) -> std::result::Result<Job, ApiError> {
        let (upstream, default) = match &plan.upstream {
            None => (self.default_upstream(), true),
            Some(upstream) => (self.connect(upstream).await?, false),
        };
        let start_ts = if plan.start_ts == 0 && default {
            self.default_revision.current(&upstream.client).await?
        } else if plan.start_ts == 0 {
            current_revision(&upstream.client).await?
        } else {
            check_revision(&upstream.client, "start_ts", plan.start_ts).await?;
            plan.start_ts
        };
        if plan.target_ts > 0 && plan.target_ts <= start_ts {
            return Err(ApiError::invalid_param(format!(
                "target_ts {} must be larger than start_ts {start_ts}",
                plan.target_ts
            )));
        }
        let mut spec = plan.spec;
        choose_all_split_keys(&upstream.client, &mut spec).await?;
        let now = Utc::now();
        let info = ChangeFeedInfo {
            upstream_id: upstream.info.id,
            namespace: plan.id.namespace.clone(),
            changefeed_id: plan.id.id.clone(),
            sink_uri: plan.sink_uri,
            create_time: GoTime::from_datetime(now.fixed_offset()),
            start_ts,
            target_ts: plan.target_ts,
            admin_job_type: AdminJobType::Noop,
            sort_engine: "unified".to_owned(),
            config: Some(spec.new_config()),
            state: FeedState::Normal,
            creator_version: env!("CARGO_PKG_VERSION").to_owned(),
            epoch: now
                .timestamp_nanos_opt()
                .and_then(|nanos| u64::try_from(nanos).ok())
                .unwrap_or(0),
            ..ChangeFeedInfo::default()
        };
        check_info_size(&info)?;
        Ok(Job::Create {
            info: Box::new(info),
            upstream: upstream.info,
        })
    }
}

/// Refuses an info too large to write in one transaction with its status.
fn check_info_size(info: &ChangeFeedInfo) -> std::result::Result<(), ApiError> {
    let encoded = cdc_model::to_go_json(info)
        .map_err(|err| ApiError::internal(ErrorReport(&err).to_string()))?;
    if encoded.len() > MAX_INFO_SIZE {
        return Err(ApiError::invalid_param(format!(
            "replica_config: the changefeed's info would take {} bytes, more than {MAX_INFO_SIZE}; use fewer prefixes or spans per prefix",
            encoded.len()
        )));
    }
    Ok(())
}

/// The upstream's current revision.
async fn current_revision(client: &EtcdClient) -> std::result::Result<u64, ApiError> {
    let options = GetOptions {
        count_only: true,
        ..GetOptions::default()
    };
    let response = client
        .get(b"\0".to_vec(), options)
        .await
        .map_err(|err| etcd_error("read the upstream's revision", &err))?;
    Ok(u64::try_from(response.revision).unwrap_or(0))
}

/// Refuses a revision ahead of the upstream's current one or already compacted.
async fn check_revision(
    client: &EtcdClient,
    field: &str,
    revision: u64,
) -> std::result::Result<(), ApiError> {
    let current = current_revision(client).await?;
    if revision > current {
        return Err(ApiError::invalid_param(format!(
            "{field} {revision} is ahead of the upstream's current revision {current}"
        )));
    }
    let options = GetOptions {
        count_only: true,
        revision: i64::try_from(revision).unwrap_or(i64::MAX),
        ..GetOptions::default()
    };
    match client.get(b"\0".to_vec(), options).await {
        Ok(_) => Ok(()),
        Err(cdc_etcd::Error::Compacted { compacted, .. }) => {
            Err(ApiError::compacted(field, revision, compacted))
        }
        Err(err) => Err(etcd_error("read the upstream at the revision", &err)),
    }
}

/// Chooses the split keys of every prefix from the keys present now, when the spec asks for
/// more than one span per prefix and has none yet.
async fn choose_all_split_keys(
    client: &EtcdClient,
    spec: &mut ReplicaSpec,
) -> std::result::Result<(), ApiError> {
    if spec.spans_per_prefix <= 1 || !spec.split_keys.is_empty() {
        return Ok(());
    }
    let mut split_keys = Vec::new();
    for prefix in spec.prefixes() {
        if prefix_range_end(&prefix).is_none() {
            split_keys.push(Vec::new());
            continue;
        }
        let options = GetOptions {
            keys_only: true,
            ..GetOptions::prefix()
        };
        let response = client
            .get(prefix.clone(), options)
            .await
            .map_err(|err| etcd_error("list the prefix's keys", &err))?;
        let keys: Vec<Vec<u8>> = response.kvs.into_iter().map(|kv| kv.key).collect();
        split_keys.push(choose_split_keys(&prefix, &keys, spec.spans_per_prefix));
    }
    spec.split_keys = split_keys;
    Ok(())
}

#[cfg(test)]
mod tests;
