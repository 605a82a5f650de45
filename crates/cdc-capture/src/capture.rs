//! The capture: the restart loop, one incarnation, the owner campaign, drain and close (§6).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cdc_election::Session;
use cdc_etcd::{
    CdcEtcdClient, Compare, CompareOp, GetOptions, OwnerFence, RetryPolicy, RetryingClient, Txn,
    TxnOp,
};
use cdc_model::key;
use cdc_model::{AtomicLiveness, CaptureInfo, DEFAULT_NAMESPACE, ErrorReport, Liveness};
use cdc_orchestrator::{EtcdWorker, GlobalReactorState};
use cdc_p2p::{MessageRouter, MessageServer, MetricsSnapshot, ServerWrapper};
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::Config;
use crate::election::{Election, ElectionFactory, EtcdElections, RESIGN_TIMEOUT};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reactor::{CaptureState, MinimalReactors, Role, WorkerReactor};
use crate::session::{EtcdSessionFactory, SESSION_CLOSE_BUDGET, SessionFactory};
use crate::tls::CurrentTls;
use crate::version::{GIT_HASH, VERSION};
use cdc_reactor::{
    Controller, ControllerFactory, InitPool, Owner, OwnerApi, OwnerFactory, ProcessorManager,
    ProcessorManagerFactory, ReactorContext, Tick, default_upstream,
};

/// The deadline for deleting the capture's keys on exit.
const CLEAN_META_TIMEOUT: Duration = Duration::from_secs(10);
/// The deadline of the owner lookups the HTTP API does.
const OWNER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a processor polls the meta version until the migration is done.
const META_VERSION_POLL: Duration = Duration::from_secs(1);
/// How long the lease check after a worker error may take, retries included.
const LEASE_CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// How long `Capture::run` may take to return once cancelled, at most: the owner's resign,
/// the deletion of the capture's keys and the session's close, each within its own deadline.
pub const STOP_BUDGET: Duration = Duration::from_secs(
    RESIGN_TIMEOUT.as_secs() + CLEAN_META_TIMEOUT.as_secs() + SESSION_CLOSE_BUDGET.as_secs(),
);
/// How many times the owner tries to write the meta version when a concurrent write beat it.
const MIGRATE_ATTEMPTS: usize = 3;
/// The cluster that inherits the metadata of the pre-v6.2 layout.
const DEFAULT_CLUSTER_ID: &str = "default";
/// Workers of the changefeed-initialisation pool.
pub const CHANGEFEED_INIT_WORKERS: usize = 8;

/// The pluggable parts of a capture.
#[derive(Clone)]
pub struct CaptureParts {
    /// Grants sessions.
    pub sessions: Arc<dyn SessionFactory>,
    /// Builds elections.
    pub elections: Arc<dyn ElectionFactory>,
    /// Builds owners.
    pub owners: Arc<dyn OwnerFactory>,
    /// Builds controllers.
    pub controllers: Arc<dyn ControllerFactory>,
    /// Builds processor managers.
    pub processors: Arc<dyn ProcessorManagerFactory>,
}

impl CaptureParts {
    /// The production parts on `etcd`.
    pub fn production(etcd: &CdcEtcdClient) -> Self {
        CaptureParts {
            sessions: Arc::new(EtcdSessionFactory::new(etcd.client().clone())),
            elections: Arc::new(EtcdElections),
            owners: Arc::new(MinimalReactors),
            controllers: Arc::new(MinimalReactors),
            processors: Arc::new(MinimalReactors),
        }
    }
}

/// What one incarnation shares with its tasks.
#[derive(Clone)]
pub struct Incarnation {
    /// The capture ID of this incarnation.
    pub capture_id: String,
    /// The session's lease.
    pub lease_id: cdc_etcd::LeaseId,
    /// Cancelled when the session is lost.
    pub session_done: CancellationToken,
    /// The owner election.
    pub election: Arc<dyn Election>,
    /// This incarnation's message server.
    pub message_server: Arc<MessageServer>,
    /// This incarnation's router.
    pub router: Arc<MessageRouter>,
    /// This incarnation's changefeed-initialisation pool.
    pub init_pool: Arc<InitPool>,
}

#[derive(Default)]
struct Current {
    info: Option<CaptureInfo>,
    session: Option<Arc<Session>>,
    incarnation_cancel: Option<CancellationToken>,
    owner: Option<Arc<dyn Owner>>,
    controller: Option<Arc<dyn Controller>>,
    processor_manager: Option<Arc<dyn ProcessorManager>>,
    message_server: Option<Arc<MessageServer>>,
    router: Option<Arc<MessageRouter>>,
}

/// A capture server's capture. Shared as `Arc<Capture>` by the HTTP handlers.
pub struct Capture {
    config: Config,
    etcd: CdcEtcdClient,
    parts: CaptureParts,
    metrics: Arc<Metrics>,
    p2p: ServerWrapper,
    liveness: Arc<AtomicLiveness>,
    state: Mutex<Current>,
    /// True from a won campaign to the resign: the drain waits for it to go down. `is_owner()`
    /// answers from the published owner instead, which only a confirmed owner is.
    owner_term_tx: watch::Sender<bool>,
    migrate_done: AtomicBool,
    restart_limiter: DefaultDirectRateLimiter,
    campaign_limiter: DefaultDirectRateLimiter,
    /// The TLS credentials in use, when TLS is on (`crate::tls`: replaced when the files
    /// change).
    tls: Option<CurrentTls>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cluster_id", &self.config.cluster_id)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// A capture with `parts`; `config` must have been validated. `p2p` is the process's gRPC
    /// service wrapper, into which each incarnation installs its message server.
    pub fn new(
        config: Config,
        etcd: CdcEtcdClient,
        parts: CaptureParts,
        metrics: Arc<Metrics>,
        p2p: ServerWrapper,
    ) -> Arc<Self> {
        let tls = CurrentTls::from_config(&config);
        Self::with_tls(config, etcd, parts, metrics, p2p, tls)
    }

    /// As [`Capture::new`], with the TLS credentials the server loaded and keeps current.
    pub(crate) fn with_tls(
        config: Config,
        etcd: CdcEtcdClient,
        parts: CaptureParts,
        metrics: Arc<Metrics>,
        p2p: ServerWrapper,
        tls: Option<CurrentTls>,
    ) -> Arc<Self> {
        let restart_quota = Quota::with_period(Duration::from_secs(20))
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(2).expect("non-zero"));
        let campaign_quota = Quota::per_second(NonZeroU32::new(1).expect("non-zero"));
        Arc::new(Capture {
            config,
            etcd,
            parts,
            metrics,
            p2p,
            liveness: Arc::new(AtomicLiveness::default()),
            state: Mutex::new(Current::default()),
            owner_term_tx: watch::channel(false).0,
            migrate_done: AtomicBool::new(false),
            restart_limiter: RateLimiter::direct(restart_quota),
            campaign_limiter: RateLimiter::direct(campaign_quota),
            tls,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Current> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS credentials in use, when TLS is on.
    pub(crate) fn tls(&self) -> Option<&CurrentTls> {
        self.tls.as_ref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The cluster's etcd client.
    pub fn etcd(&self) -> &CdcEtcdClient {
        &self.etcd
    }

    /// The outer loop (§6.2): runs incarnations until `cancel`, restarting after suicide,
    /// cancellation or an internal deadline (at most 0.05/s after a burst of 2).
    pub async fn run(self: &Arc<Self>, cancel: CancellationToken) -> Result<()> {
        let result = self.run_loop(&cancel).await;
        self.close_session().await;
        result
    }

    async fn run_loop(self: &Arc<Self>, cancel: &CancellationToken) -> Result<()> {
        let mut first = true;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let incarnation_cancel = cancel.child_token();
            self.state().incarnation_cancel = Some(incarnation_cancel.clone());
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = self.restart_limiter.until_ready() => {}
            }
            if !first {
                self.metrics.restarts.inc();
            }
            first = false;
            match Box::pin(self.run_once(&incarnation_cancel)).await {
                Ok(()) => return Ok(()),
                Err(err) if err.restarts_capture() => {
                    if cancel.is_cancelled() {
                        return Ok(());
                    }
                    info!(error = %ErrorReport(&err), "capture recovered");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// §6.3 reset: a new session (closing the previous one, if the last incarnation's cleanup
    /// has not), a new capture ID, a new message server in the wrapper, a new router, a new
    /// pool and a new processor manager.
    pub async fn reset(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(Incarnation, Arc<dyn ProcessorManager>, CaptureInfo)> {
        let session = Arc::new(
            self.parts
                .sessions
                .grant(self.config.capture_session_ttl, cancel)
                .await?,
        );
        let capture_id = uuid::Uuid::new_v4().to_string();
        let info = CaptureInfo {
            id: capture_id.clone(),
            address: self.config.advertise_addr.clone(),
            version: VERSION.to_owned(),
            git_hash: GIT_HASH.to_owned(),
            deploy_path: std::env::current_exe()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            start_timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        };
        let previous = {
            let mut state = self.state();
            state.info = Some(info.clone());
            state.session.replace(Arc::clone(&session))
        };
        if let Some(previous) = previous {
            self.close_bounded(&previous).await;
        }
        let lease_id = session.lease_id();
        let election = self
            .parts
            .elections
            .create(&session, &key::owner_prefix(&self.config.cluster_id));
        let messages = &self.config.debug.messages;
        let message_server = Arc::new(MessageServer::new(
            capture_id.clone(),
            messages.server_config(),
        ));
        let router = Arc::new(MessageRouter::new(
            capture_id.clone(),
            cdc_p2p::ClientConfig {
                tls: self.tls.as_ref().map(CurrentTls::peer),
                ..messages.client_config(self.config.advertise_addr.clone())
            },
        ));
        let old_router = {
            let mut state = self.state();
            self.p2p.reset(None);
            state.message_server = Some(Arc::clone(&message_server));
            state.router.replace(Arc::clone(&router))
        };
        if let Some(old_router) = old_router {
            old_router.close().await;
        }
        self.p2p.reset(Some(Arc::clone(&message_server)));
        let init_pool = Arc::new(InitPool::new(CHANGEFEED_INIT_WORKERS));
        let incarnation = Incarnation {
            capture_id: capture_id.clone(),
            lease_id,
            session_done: session.done().child_token(),
            election,
            message_server,
            router,
            init_pool,
        };
        let context = self.reactor_context(&incarnation, 0);
        let processor_manager = self
            .parts
            .processors
            .create(context, Arc::clone(&self.liveness));
        self.state().processor_manager = Some(Arc::clone(&processor_manager));
        Ok((incarnation, processor_manager, info))
    }

    /// One incarnation (§6.3): reset, register, run the task group, clean up. Unlike TiCDC,
    /// which closes the session in the next reset (after the restart delay and a new grant),
    /// the cleanup closes it, so no key of this incarnation outlives it.
    pub async fn run_once(self: &Arc<Self>, cancel: &CancellationToken) -> Result<()> {
        let (incarnation, processor_manager, info) = self.reset(cancel).await?;
        let span = info_span!("capture", capture_id = %incarnation.capture_id);
        let result = async {
            self.register(&info, incarnation.lease_id, cancel).await?;
            info!(address = %info.address, lease_id = %format_args!("{:x}", incarnation.lease_id), "capture registered");
            self.run_group(&incarnation, &processor_manager, cancel).await
        }
        .instrument(span.clone())
        .await;
        // Always: stop the processors first, then the owner and the p2p parts, then delete
        // our keys on a fresh deadline.
        processor_manager.close().await;
        self.close();
        // The incarnation's last p2p counts join the totals that outlive it.
        if let Some((server, clients)) = self.p2p_metrics() {
            self.metrics
                .fold_p2p(&incarnation.capture_id, &server, &clients);
        }
        let router = {
            let mut state = self.state();
            state.processor_manager = None;
            state.message_server = None;
            state.router.take()
        };
        if let Some(router) = router {
            router.close().await;
        }
        self.delete_capture_info(&incarnation.capture_id)
            .instrument(span.clone())
            .await;
        // Without its capture key the lease serves nothing: revoking it now deletes any owner or
        // campaign key this incarnation left behind (a resign that failed or timed out), so
        // another capture can win at once, not after our restart delay and next grant.
        self.close_session().instrument(span).await;
        result
    }

    /// Closes the current session, if any, within [`SESSION_CLOSE_BUDGET`]: stops its
    /// keep-alive and revokes its lease. A lease left by a failed close expires on its own.
    async fn close_session(&self) {
        let session = self.state().session.take();
        if let Some(session) = session {
            self.close_bounded(&session).await;
        }
    }

    /// Closes `session` within [`SESSION_CLOSE_BUDGET`], the one budget of the join and the
    /// revoke: [`Session::close`] bounds each by half of it (the factory grants it so), and
    /// a revoke that failed (etcd hung for a moment) is retried in what is left, so the lease
    /// and every key on it go now, not one TTL later. A failure is logged.
    async fn close_bounded(&self, session: &Session) {
        let deadline = tokio::time::Instant::now() + SESSION_CLOSE_BUDGET;
        let lease_id = session.lease_id();
        match tokio::time::timeout_at(deadline, session.close()).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => {
                warn!(error = %ErrorReport(&err), "closing the session failed, revoking its lease again");
            }
            Err(_) => warn!("closing the session ran out of its budget"),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            warn!("the session's lease expires on its own");
            return;
        }
        let policy = RetryPolicy {
            deadline: left,
            ..self.etcd.retrying().policy().clone()
        };
        let retrying = RetryingClient::with_policy(self.etcd.client().clone(), policy);
        let never = CancellationToken::new();
        let revoke = retrying.lease_revoke(lease_id, &never);
        match tokio::time::timeout(left, revoke).await {
            Ok(Ok(()) | Err(cdc_etcd::Error::LeaseNotFound { .. })) => {
                info!(lease_id = %format_args!("{lease_id:x}"), "session lease revoked");
            }
            Ok(Err(err)) => {
                warn!(error = %ErrorReport(&err), "revoking the session's lease failed; it expires on its own");
            }
            Err(_) => warn!("revoking the session's lease timed out; it expires on its own"),
        }
    }

    fn reactor_context(&self, incarnation: &Incarnation, owner_revision: i64) -> ReactorContext {
        ReactorContext {
            etcd: self.etcd.clone(),
            capture_id: incarnation.capture_id.clone(),
            lease_id: incarnation.lease_id,
            owner_revision,
            pd_endpoints: self.config.endpoints().join(","),
            router: Arc::clone(&incarnation.router),
            message_server: Arc::clone(&incarnation.message_server),
            init_pool: Arc::clone(&incarnation.init_pool),
        }
    }

    async fn register(
        &self,
        info: &CaptureInfo,
        lease_id: cdc_etcd::LeaseId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        self.etcd
            .put_capture_info(info, lease_id, cancel)
            .await
            .map_err(|err| Error::Register(Box::new(err.into())))
    }

    async fn delete_capture_info(&self, capture_id: &str) {
        let fresh = CancellationToken::new();
        let delete = self.etcd.delete_capture_info(capture_id, &fresh);
        match tokio::time::timeout(CLEAN_META_TIMEOUT, delete).await {
            Ok(Ok(())) => info!("capture info deleted"),
            Ok(Err(err)) => warn!(error = %ErrorReport(&err), "deleting the capture info failed"),
            Err(_) => warn!("deleting the capture info timed out"),
        }
    }

    /// Drains the capture: Stopping for good, and the owner (if any) stops and resigns. Returns
    /// when this capture is no longer owner, or after 5 s.
    pub async fn drain(&self) {
        if self.liveness.store_stopping() {
            info!("capture draining");
        }
        // The term starts before the owner is published and ends after its resign, so it
        // also covers an owner that is not confirmed yet (it sees Stopping when published) and
        // one that is stepping down (no longer published, key not yet resigned).
        let (owner, mut is_owner_rx) = {
            let state = self.state();
            (state.owner.clone(), self.owner_term_tx.subscribe())
        };
        if let Some(owner) = owner {
            owner.async_stop();
        }
        let resigned = is_owner_rx.wait_for(|is_owner| !*is_owner);
        if tokio::time::timeout(RESIGN_TIMEOUT, resigned)
            .await
            .is_err()
        {
            warn!("the owner did not resign within the drain deadline");
        }
    }

    /// The liveness.
    pub fn liveness(&self) -> Liveness {
        self.liveness.load()
    }

    /// Stops the owner, takes the message server out of the wrapper and ends the current
    /// incarnation (a new one starts unless the parent token is cancelled; the incarnation's
    /// exit path closes the router). Re-entrant.
    pub fn close(&self) {
        let mut state = self.state();
        if let Some(owner) = &state.owner {
            owner.async_stop();
        }
        if let Some(controller) = &state.controller {
            controller.async_stop();
        }
        self.p2p.reset(None);
        if let Some(cancel) = state.incarnation_cancel.take() {
            cancel.cancel();
        }
    }

    /// Logs a fatal error of the whole capture.
    pub fn log_exit(result: &Result<()>) {
        if let Err(err) = result {
            error!(error = %ErrorReport(err), "capture exited");
        }
    }
}

mod campaign;
mod getters;
mod group;
mod migration;
mod peers;
#[cfg(test)]
mod tests;
