//! The capture: the restart loop, one incarnation, the owner campaign, drain and close (§6).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cdc_election::Session;
use cdc_etcd::{
    CdcEtcdClient, Compare, CompareOp, GetOptions, RetryPolicy, RetryingClient, Txn, TxnOp, key,
};
use cdc_model::{AtomicLiveness, CaptureInfo, DEFAULT_NAMESPACE, ErrorReport, Liveness};
use cdc_orchestrator::{EtcdWorker, GlobalReactorState, OwnerFence};
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
use crate::pool::InitPool;
use crate::reactor::{
    CaptureState, Controller, ControllerFactory, MinimalReactors, Owner, OwnerFactory,
    ProcessorManager, ProcessorManagerFactory, ReactorContext, Role, Tick, WorkerReactor,
    default_upstream,
};
use crate::session::{EtcdSessionFactory, SESSION_CLOSE_BUDGET, SessionFactory};

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
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cluster_id", &self.config.cluster_id)
            .finish_non_exhaustive()
    }
}

/// The release version reported in the capture key and `/status`.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// The build hash; empty when unknown.
pub const GIT_HASH: &str = match option_env!("CDC_GIT_HASH") {
    Some(hash) => hash,
    None => "",
};

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
        let election = self.parts.elections.create(
            self.etcd.client().clone(),
            &key::owner_prefix(&self.config.cluster_id),
            lease_id,
        );
        let messages = &self.config.debug.messages;
        let message_server = Arc::new(MessageServer::new(
            capture_id.clone(),
            messages.server_config(),
        ));
        let router = Arc::new(MessageRouter::new(
            capture_id.clone(),
            messages.client_config(self.config.advertise_addr.clone()),
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
            session_done: session.done(),
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
            metrics: Arc::clone(&self.metrics),
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

    /// The task group: campaign, processor, message server and pool; the first error cancels
    /// the rest, and the first root error (not a sibling's cancellation) is returned.
    async fn run_group(
        self: &Arc<Self>,
        incarnation: &Incarnation,
        processor_manager: &Arc<dyn ProcessorManager>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let group = cancel.child_token();
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let span = tracing::Span::current();
        tasks.spawn(
            {
                let capture = Arc::clone(self);
                let incarnation = incarnation.clone();
                let group = group.clone();
                async move {
                    let result = capture.campaign_owner(&incarnation, &group).await;
                    match result {
                        // An error no restart can cure (a transaction too large, a meta version
                        // newer than this binary) ends the capture, whoever else failed too.
                        Err(err) if !err.restarts_capture() => {
                            warn!(error = %ErrorReport(&err), "campaign task failed for good");
                            Err(err)
                        }
                        _ if group.is_cancelled() => Err(Error::Cancelled),
                        Ok(()) if capture.liveness.load() == Liveness::Stopping => {
                            // Drained: stay up without campaigning until closed.
                            group.cancelled().await;
                            Err(Error::Cancelled)
                        }
                        Ok(()) => Err(Error::Suicide),
                        Err(err) => {
                            warn!(error = %ErrorReport(&err), "campaign task failed, suicide");
                            Err(Error::Suicide)
                        }
                    }
                }
            }
            .instrument(info_span!(parent: &span, "owner")),
        );
        tasks.spawn(
            {
                let capture = Arc::clone(self);
                let incarnation = incarnation.clone();
                let group = group.clone();
                let processor_manager = Arc::clone(processor_manager);
                async move {
                    let result = async {
                        capture.wait_meta_version(&incarnation, &group).await?;
                        let state = capture.hooked_state(&incarnation, false);
                        capture
                            .run_etcd_worker(
                                Role::Processor(Arc::clone(&processor_manager)),
                                state,
                                capture.config.processor_flush_interval,
                                &incarnation,
                                None,
                                &group,
                            )
                            .await
                    }
                    .await;
                    // Stop the owner too, and close the processors at once: no double writes.
                    group.cancel();
                    processor_manager.close().await;
                    result
                }
            }
            .instrument(info_span!(parent: &span, "processor")),
        );
        tasks.spawn(
            {
                let server = Arc::clone(&incarnation.message_server);
                let local = incarnation.router.local_channel();
                let group = group.clone();
                async move {
                    server.run(group.clone(), local).await?;
                    Err(Error::Cancelled)
                }
            }
            .instrument(info_span!(parent: &span, "p2p")),
        );
        if let Some(errors) = incarnation.router.errors() {
            tasks.spawn(
                Arc::clone(self)
                    .watch_router_errors(errors, group.clone())
                    .instrument(info_span!(parent: &span, "p2p")),
            );
        }
        tasks.spawn({
            let pool = Arc::clone(&incarnation.init_pool);
            let group = group.clone();
            async move { pool.run(&group).await }
        });
        let mut first_error: Option<Error> = None;
        while let Some(joined) = tasks.join_next().await {
            let result = match joined {
                Ok(result) => result,
                Err(join_error) if join_error.is_panic() => {
                    std::panic::resume_unwind(join_error.into_panic())
                }
                Err(_) => Err(Error::Cancelled),
            };
            if let Err(err) = result {
                group.cancel();
                // A sibling's cancellation or suicide is a consequence; keep the root error,
                // and an error that ends the capture over one that restarts it, whichever task
                // finished first.
                let replace = first_error
                    .as_ref()
                    .is_none_or(|first| group_error_rank(&err) > group_error_rank(first));
                if replace {
                    first_error = Some(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Logs and counts the errors of p2p clients that stopped for good until the group ends.
    /// The router has already dropped such a client; a permanent failure (the peer restarted
    /// as another capture: `CAPTURE_ID_MISMATCH`) is normal churn and ends nothing; a client that
    /// panicked ends the incarnation.
    async fn watch_router_errors(
        self: Arc<Self>,
        mut errors: tokio::sync::mpsc::Receiver<cdc_p2p::Error>,
        group: CancellationToken,
    ) -> Result<()> {
        loop {
            tokio::select! {
                () = group.cancelled() => return Err(Error::Cancelled),
                received = errors.recv() => match received {
                    Some(err @ cdc_p2p::Error::ClientPanicked { .. }) => {
                        // The router keeps a panicked client closed (a fresh one would restart
                        // its sequences against a server that acknowledged them), so this
                        // incarnation cannot reach that peer any more: start a new one.
                        self.metrics.p2p_client_errors.inc();
                        warn!(error = %ErrorReport(&err), "p2p client to a peer panicked, suicide");
                        return Err(Error::Suicide);
                    }
                    Some(err) => {
                        self.metrics.p2p_client_errors.inc();
                        warn!(error = %ErrorReport(&err), "p2p client to a peer stopped; the router dropped it");
                    }
                    None => {
                        group.cancelled().await;
                        return Err(Error::Cancelled);
                    }
                },
            }
        }
    }

    /// A reactor state whose capture hooks keep the router's peers current; the owner's also
    /// deregisters removed captures from the message server (§6.4 step 8).
    fn hooked_state(&self, incarnation: &Incarnation, owner: bool) -> CaptureState {
        let mut state = GlobalReactorState::new(
            self.config.cluster_id.clone(),
            u64::try_from(self.config.capture_session_ttl).unwrap_or(0),
        );
        let router = Arc::clone(&incarnation.router);
        let on_added = Box::new(move |capture_id: &String, address: &str| {
            router.add_peer(capture_id.clone(), address.to_owned());
        });
        let router = Arc::clone(&incarnation.router);
        let server = owner.then(|| Arc::clone(&incarnation.message_server));
        let on_removed = Box::new(move |capture_id: &String| {
            router.remove_peer(capture_id);
            if let Some(server) = &server
                && let Err(err) = server.schedule_deregister_peer_task(capture_id)
            {
                warn!(%capture_id, error = %err, "deregistering a removed capture failed");
            }
        });
        state.set_hooks(on_added, on_removed);
        CaptureState(state)
    }

    /// The campaign loop of §6.4.
    pub async fn campaign_owner(
        &self,
        incarnation: &Incarnation,
        cancel: &CancellationToken,
    ) -> Result<()> {
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = self.campaign_limiter.until_ready() => {}
            }
            if self.liveness.load() == Liveness::Stopping {
                return Ok(());
            }
            let fence = match incarnation
                .election
                .campaign(&incarnation.capture_id, cancel)
                .await
            {
                Ok(fence) => fence,
                Err(err) if is_cancelled(&err) => return Ok(()),
                Err(err) if err.is_compacted() => {
                    warn!(error = %ErrorReport(&err), "campaign hit a compaction, campaigning again");
                    continue;
                }
                // A transient etcd failure is no lost lease (the session reports that): retry,
                // paced by the campaign limiter.
                Err(Error::Election(err)) if err.is_retryable() => {
                    warn!(error = %ErrorReport(&err), "campaign failed transiently, campaigning again");
                    continue;
                }
                Err(err) => {
                    warn!(error = %ErrorReport(&err), "campaign failed");
                    return Err(Error::CampaignOwner(Box::new(err)));
                }
            };
            if self.liveness.load() == Liveness::Stopping {
                info!("elected while stopping, resigning");
                return self.resign(incarnation).await;
            }
            let owner_revision = tokio::select! {
                () = cancel.cancelled() => Err(Error::Cancelled),
                revision = incarnation.election.owner_revision(&incarnation.capture_id) => revision,
            };
            let owner_revision = match owner_revision {
                Ok(revision) => revision,
                Err(err) => {
                    // We won: give the key up (bounded) before leaving, or no other capture can
                    // win until this incarnation's lease is revoked. A failed resign is logged;
                    // the session's close at the end of the incarnation removes the key then.
                    let _ = self.resign(incarnation).await;
                    if is_cancelled(&err) {
                        return Ok(());
                    }
                    warn!(error = %ErrorReport(&err), "reading the owner revision failed after the campaign was won");
                    return Err(err);
                }
            };
            info!(owner_revision, "campaign won, this capture is the owner");
            self.metrics.owner_changes.inc();
            let context = self.reactor_context(incarnation, owner_revision);
            let owner = self.parts.owners.create(context.clone());
            let controller = self.parts.controllers.create(context);
            // The term starts now, for the drain (which waits for the resign); the owner and
            // the controller are published only once confirmed: after the migration, on their
            // fenced worker's first tick, which comes after a first snapshot that holds our
            // owner key.
            self.owner_term_tx.send_replace(true);
            // A drain that raced with the election must still stop this owner.
            if self.liveness.load() == Liveness::Stopping {
                owner.async_stop();
            }
            let fence = OwnerFence {
                key: fence.key,
                create_revision: fence.create_revision,
            };
            let (owner_confirmed_tx, owner_confirmed_rx) = watch::channel(false);
            let (controller_confirmed_tx, controller_confirmed_rx) = watch::channel(false);
            let confirming_owner: Arc<dyn Owner> = Arc::new(ConfirmingOwner {
                owner: Arc::clone(&owner),
                confirmed: owner_confirmed_tx,
            });
            let confirming_controller: Arc<dyn Controller> = Arc::new(ConfirmingController {
                controller: Arc::clone(&controller),
                confirmed: controller_confirmed_tx,
            });
            let term_over = CancellationToken::new();
            let workers = async {
                // Boxed: the worker's future is large and the campaign loop's callers hold it.
                let result = Box::pin(async {
                    self.migrate(&fence, cancel).await?;
                    self.run_owner_workers(
                        &confirming_owner,
                        &confirming_controller,
                        incarnation,
                        &fence,
                        cancel,
                    )
                    .await
                })
                .await;
                term_over.cancel();
                result
            };
            let publish = self.publish_when_confirmed(
                &owner,
                &controller,
                owner_confirmed_rx,
                controller_confirmed_rx,
                &term_over,
            );
            let (result, ()) = tokio::join!(workers, publish);
            owner.async_stop();
            controller.async_stop();
            {
                let mut state = self.state();
                state.owner = None;
                state.controller = None;
            }
            // The term ends only after the resign: a drain meanwhile waits for it.
            let resigned = if matches!(result, Err(Error::NotOwner)) {
                Ok(())
            } else {
                self.resign(incarnation).await
            };
            self.owner_term_tx.send_replace(false);
            info!(result = ?result.as_ref().err(), "owner stopped");
            result?;
            resigned?;
        }
    }

    /// Publishes the owner (and with it `is_owner`), then the controller, each once its worker
    /// confirmed it, unless the term is over first. A drain that did not find the owner
    /// published finds Stopping set here, and the owner stops.
    async fn publish_when_confirmed(
        &self,
        owner: &Arc<dyn Owner>,
        controller: &Arc<dyn Controller>,
        mut owner_confirmed: watch::Receiver<bool>,
        mut controller_confirmed: watch::Receiver<bool>,
        term_over: &CancellationToken,
    ) {
        tokio::select! {
            biased;
            () = term_over.cancelled() => return,
            confirmed = owner_confirmed.wait_for(|confirmed| *confirmed) => {
                if confirmed.is_err() {
                    return;
                }
            }
        }
        self.state().owner = Some(Arc::clone(owner));
        info!("the owner is confirmed by its first snapshot");
        if self.liveness.load() == Liveness::Stopping {
            owner.async_stop();
        }
        tokio::select! {
            biased;
            () = term_over.cancelled() => {}
            confirmed = controller_confirmed.wait_for(|confirmed| *confirmed) => {
                if confirmed.is_ok() {
                    self.state().controller = Some(Arc::clone(controller));
                }
            }
        }
    }

    /// The owner and the controller, each on its own etcd worker fenced by the owner key, in
    /// one group: the first error cancels both, and when one finishes the other is asked to
    /// finish too. Returns the root error (a sibling's cancellation is a consequence), the
    /// owner's first when both failed.
    async fn run_owner_workers(
        &self,
        owner: &Arc<dyn Owner>,
        controller: &Arc<dyn Controller>,
        incarnation: &Incarnation,
        fence: &OwnerFence,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let term = cancel.child_token();
        let interval = self.config.owner_flush_interval;
        let owner_worker = async {
            // Boxed: a worker's future is large.
            let result = Box::pin(self.run_etcd_worker(
                Role::Owner(Arc::clone(owner)),
                self.hooked_state(incarnation, true),
                interval,
                incarnation,
                Some(fence.clone()),
                &term,
            ))
            .await;
            controller.async_stop();
            if result.is_err() {
                term.cancel();
            }
            result
        };
        let controller_worker = async {
            // Boxed: a worker's future is large.
            let result = Box::pin(self.run_etcd_worker(
                Role::Controller(Arc::clone(controller)),
                self.hooked_state(incarnation, false),
                interval,
                incarnation,
                Some(fence.clone()),
                &term,
            ))
            .await;
            owner.async_stop();
            if result.is_err() {
                term.cancel();
            }
            result
        };
        let (owner_result, controller_result) = tokio::join!(owner_worker, controller_worker);
        match (owner_result, controller_result) {
            (Err(Error::Cancelled), Err(err)) | (Err(err), _) | (Ok(()), Err(err)) => Err(err),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Resigns the ownership on a fresh 5 s deadline. A failure or a timeout is reported
    /// (`ErrCaptureResignOwner`), logged and counted.
    async fn resign(&self, incarnation: &Incarnation) -> Result<()> {
        let err = match tokio::time::timeout(RESIGN_TIMEOUT, incarnation.election.resign()).await {
            Ok(Ok(())) => {
                info!("resigned the ownership");
                return Ok(());
            }
            Ok(Err(err)) => Error::ResignOwner(Box::new(err)),
            Err(_) => Error::ResignOwner(Box::new(Error::DeadlineExceeded { op: "resign owner" })),
        };
        self.metrics.resign_failures.inc();
        warn!(error = %ErrorReport(&err), "resigning the ownership failed");
        Err(err)
    }

    /// Reads the meta version and applies the gate both roles share (one parser,
    /// [`CdcEtcdClient::parse_meta_version`], so the owner and the processors accept and refuse
    /// the same values): the key's current value, if any, and whether it is the version this
    /// binary writes. A newer version is [`Error::MetaVersionTooNew`]; a value that is not a
    /// decimal number, or a version this binary does not know (`0`), is
    /// [`Error::MetaVersionUnknown`].
    async fn read_meta_version(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(Option<cdc_etcd::KeyValue>, MetaVersion)> {
        let version_key = key::meta_version_key(&self.config.cluster_id);
        let response = self
            .etcd
            .retrying()
            .get(version_key.clone(), GetOptions::default(), cancel)
            .await?;
        let Some(kv) = response.kvs.into_iter().next() else {
            return Ok((None, MetaVersion::Absent));
        };
        let unknown = || Error::MetaVersionUnknown {
            key: version_key.clone(),
            found: String::from_utf8_lossy(&kv.value).into_owned(),
            supported: cdc_etcd::META_VERSION,
        };
        let version = match CdcEtcdClient::parse_meta_version(&version_key, &kv.value) {
            Ok(version) => version,
            Err(cdc_etcd::Error::InvalidValue { .. }) => return Err(unknown()),
            Err(other) => return Err(other.into()),
        };
        match version.cmp(&cdc_etcd::META_VERSION) {
            std::cmp::Ordering::Equal => Ok((Some(kv), MetaVersion::Current)),
            std::cmp::Ordering::Greater => Err(Error::MetaVersionTooNew {
                found: version,
                supported: cdc_etcd::META_VERSION,
            }),
            std::cmp::Ordering::Less => Err(unknown()),
        }
    }

    /// The first key that shows metadata written without a meta version: legacy (pre-v6.2)
    /// changefeed data under `/tidb/cdc/changefeed/info` or `/tidb/cdc/job`, which only the
    /// default cluster would have inherited, or changefeed data in this cluster's own prefix.
    async fn unversioned_data(&self, cancel: &CancellationToken) -> Result<Option<Error>> {
        let first_key = |prefix: String| async move {
            let options = GetOptions {
                limit: 1,
                keys_only: true,
                ..GetOptions::prefix()
            };
            let response = self
                .etcd
                .retrying()
                .get(key::prefix_with_boundary(&prefix), options, cancel)
                .await?;
            Ok::<_, Error>(response.kvs.into_iter().next().map(|kv| kv.key_lossy()))
        };
        if self.config.cluster_id == DEFAULT_CLUSTER_ID {
            // The changefeed prefixes of the pre-v6.2 layout (`key::LEGACY_PREFIXES`), which
            // TiCDC's migration (`pkg/migrate/migrate.go` in pingcap/tiflow) moves.
            for prefix in ["/tidb/cdc/changefeed/info", "/tidb/cdc/job"] {
                if let Some(key) = first_key(prefix.to_owned()).await? {
                    return Ok(Some(Error::LegacyMetadata { key }));
                }
            }
        }
        let options = GetOptions {
            keys_only: true,
            ..GetOptions::prefix()
        };
        let response = self
            .etcd
            .retrying()
            .get(
                key::prefix_with_boundary(&key::base_key(&self.config.cluster_id)),
                options,
                cancel,
            )
            .await?;
        let changefeed_data = response.kvs.into_iter().find(|kv| {
            let Ok(parsed) = key::CdcKey::parse_bytes(&self.config.cluster_id, &kv.key) else {
                // A key this layout does not know is no changefeed data, and not ours to judge.
                return false;
            };
            matches!(
                parsed.kind,
                key::CdcKeyKind::ChangefeedInfo { .. }
                    | key::CdcKeyKind::ChangefeedStatus { .. }
                    | key::CdcKeyKind::TaskPosition { .. }
            )
        });
        Ok(changefeed_data.map(|kv| Error::UnversionedMetadata {
            key: kv.key_lossy(),
        }))
    }

    /// The owner's side of the meta-version gate (§6.6, no legacy data to move). The current
    /// version passes; a newer or unknown one is refused and left as it is. An absent version
    /// is written (version 1, and the default upstream info unless one is there) in one
    /// transaction fenced by the owner key, but only when the cluster holds no changefeed data:
    /// data without a version is legacy or foreign, and refused with an error naming its key.
    async fn migrate(&self, fence: &OwnerFence, cancel: &CancellationToken) -> Result<()> {
        for _ in 0..MIGRATE_ATTEMPTS {
            let (current, version) = self.read_meta_version(cancel).await?;
            if version == MetaVersion::Current {
                self.migrate_done.store(true, Ordering::SeqCst);
                return Ok(());
            }
            if let Some(refusal) = self.unversioned_data(cancel).await? {
                return Err(refusal);
            }
            if self.write_meta_version(fence, current, cancel).await? {
                info!(
                    version = cdc_etcd::META_VERSION,
                    "meta version and default upstream written"
                );
                self.migrate_done.store(true, Ordering::SeqCst);
                return Ok(());
            }
            // Another owner migrated meanwhile, or someone wrote the upstream, or we lost the
            // ownership: look again.
            let owner_key = self
                .etcd
                .retrying()
                .get(fence.key.clone(), GetOptions::default(), cancel)
                .await?;
            let still_owner = owner_key
                .kvs
                .first()
                .is_some_and(|kv| kv.create_revision == fence.create_revision);
            if !still_owner {
                return Err(Error::NotOwner);
            }
            info!("the meta version or the upstream changed during the migration, again");
        }
        Err(Error::DeadlineExceeded {
            op: "write the meta version",
        })
    }

    /// Writes the meta version (and the default upstream info unless one is there) in one
    /// transaction fenced by the owner key, on condition that the version key is still
    /// `current` and the upstream key unchanged. Whether it committed.
    async fn write_meta_version(
        &self,
        fence: &OwnerFence,
        current: Option<cdc_etcd::KeyValue>,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let version_key = key::meta_version_key(&self.config.cluster_id);
        let upstream = default_upstream(&self.etcd, &self.config.endpoints().join(","));
        let upstream_key =
            key::upstream_key(&self.config.cluster_id, DEFAULT_NAMESPACE, upstream.id);
        let existing_upstream = self
            .etcd
            .retrying()
            .get(upstream_key.clone(), GetOptions::default(), cancel)
            .await?
            .kvs
            .into_iter()
            .next();
        let mut success = Vec::new();
        if existing_upstream.is_none() {
            success.push(TxnOp::Put {
                key: upstream_key.clone().into_bytes(),
                value: cdc_model::to_go_json(&upstream)?,
                lease: 0,
            });
        }
        success.push(TxnOp::Put {
            key: version_key.clone().into_bytes(),
            value: cdc_etcd::META_VERSION.to_string().into_bytes(),
            lease: 0,
        });
        let txn = Txn {
            compares: vec![
                Compare::CreateRevision {
                    key: fence.key.clone(),
                    op: CompareOp::Equal,
                    revision: fence.create_revision,
                },
                Compare::ModRevision {
                    key: version_key.into_bytes(),
                    op: CompareOp::Equal,
                    revision: current.as_ref().map_or(0, |kv| kv.mod_revision),
                },
                Compare::ModRevision {
                    key: upstream_key.into_bytes(),
                    op: CompareOp::Equal,
                    revision: existing_upstream.as_ref().map_or(0, |kv| kv.mod_revision),
                },
            ],
            success,
            failure: vec![],
        };
        Ok(self.etcd.retrying().txn(txn, cancel).await?.succeeded)
    }

    /// The processor's side of the meta-version gate: polls every second until the version is
    /// the current one (warning every 5 s). A version this binary does not know ends the wait
    /// with the owner's error. Every read is raced against the session's end, so a lease lost
    /// while etcd hangs surfaces as a suicide at once, not after the read's retries.
    async fn wait_meta_version(
        &self,
        incarnation: &Incarnation,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut polls = 0_u32;
        loop {
            let read = tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled),
                () = incarnation.session_done.cancelled() => return Err(Error::Suicide),
                read = self.read_meta_version(cancel) => read,
            };
            match read {
                Ok((_, MetaVersion::Current)) => {
                    self.migrate_done.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Ok((_, MetaVersion::Absent)) => {
                    if polls % 5 == 4 {
                        warn!("waiting for the owner to write the meta version");
                    }
                }
                Err(Error::Etcd(cdc_etcd::Error::Cancelled)) => return Err(Error::Cancelled),
                Err(err @ (Error::MetaVersionTooNew { .. } | Error::MetaVersionUnknown { .. })) => {
                    return Err(err);
                }
                Err(err) => warn!(error = %ErrorReport(&err), "reading the meta version failed"),
            }
            polls = polls.saturating_add(1);
            tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled),
                () = incarnation.session_done.cancelled() => return Err(Error::Suicide),
                () = tokio::time::sleep(META_VERSION_POLL) => {}
            }
        }
    }

    /// Runs `role` on an etcd worker over the cluster's base key until it finishes or fails,
    /// and maps the error (§6.3 `run_etcd_worker`): session done or lease expired is suicide;
    /// after any other error, a lease whose TTL reads -1 is suicide too, and so is a lease that
    /// could not be checked within 5 s (TiCDC returns `ErrPDEtcdAPIError` there, which exits the
    /// server after a short etcd outage).
    async fn run_etcd_worker(
        &self,
        role: Role,
        state: CaptureState,
        interval: Duration,
        incarnation: &Incarnation,
        fence: Option<OwnerFence>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let name = role.name();
        let mut reactor = WorkerReactor {
            capture_id: incarnation.capture_id.clone(),
            role,
            failure: None,
        };
        let mut worker = EtcdWorker::new(
            self.etcd.client().clone(),
            key::base_key(&self.config.cluster_id),
        )
        .with_session_done(incarnation.session_done.clone())
        .with_metrics(self.metrics.worker(name));
        if let Some(fence) = fence {
            worker = worker.with_owner_fence(fence);
        }
        let err = match worker.run(&mut reactor, state, interval, cancel).await {
            Ok(_) => return Ok(()),
            Err(err) => reactor
                .failure
                .take()
                .unwrap_or_else(|| from_worker_error(err)),
        };
        match err {
            Error::SessionDone | Error::LeaseExpired => {
                warn!(role = name, error = %ErrorReport(&err), "the session is lost, suicide");
                Err(Error::Suicide)
            }
            Error::Cancelled => Err(Error::Cancelled),
            other => match self.lease_ttl(incarnation.lease_id, cancel).await {
                Ok(-1) => {
                    warn!(role = name, error = %ErrorReport(&other), "the lease is gone, suicide");
                    Err(Error::Suicide)
                }
                Ok(_) => {
                    warn!(role = name, error = %ErrorReport(&other), "etcd worker failed");
                    Err(other)
                }
                Err(cdc_etcd::Error::Cancelled) => Err(other),
                Err(ttl_error)
                    if ttl_error.is_retryable()
                        || matches!(
                            ttl_error,
                            cdc_etcd::Error::DeadlineExceeded { .. }
                                | cdc_etcd::Error::Timeout { .. }
                        ) =>
                {
                    // Whether the lease lives is unknown: a new incarnation is the safe way on.
                    warn!(role = name, error = %ErrorReport(&other), ttl_error = %ErrorReport(&ttl_error), "worker failed and the lease could not be checked, suicide");
                    Err(Error::Suicide)
                }
                Err(ttl_error) => {
                    // etcd refused the check for good (permissions, authentication): a restart
                    // would meet the same refusal, so the worker's own error decides.
                    warn!(role = name, error = %ErrorReport(&other), ttl_error = %ErrorReport(&ttl_error), "worker failed and etcd refused the lease check");
                    Err(other)
                }
            },
        }
    }

    /// The remaining TTL of `lease_id` (-1 when gone), read through the retrying client within
    /// [`LEASE_CHECK_DEADLINE`].
    async fn lease_ttl(
        &self,
        lease_id: cdc_etcd::LeaseId,
        cancel: &CancellationToken,
    ) -> std::result::Result<i64, cdc_etcd::Error> {
        let policy = RetryPolicy {
            deadline: LEASE_CHECK_DEADLINE,
            ..self.etcd.retrying().policy().clone()
        };
        let retrying = RetryingClient::with_policy(self.etcd.client().clone(), policy);
        let ttl = retrying.lease_time_to_live(lease_id, cancel).await?;
        Ok(ttl.ttl)
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

    /// A copy of the current capture info.
    pub fn info(&self) -> Result<CaptureInfo> {
        self.state().info.clone().ok_or(Error::NotInitialized)
    }

    /// The owner, if this capture is owner.
    pub fn owner(&self) -> Result<Arc<dyn Owner>> {
        self.state().owner.clone().ok_or(Error::NotOwner)
    }

    /// Whether this capture is owner.
    pub fn is_owner(&self) -> bool {
        self.state().owner.is_some()
    }

    /// The controller, if this capture is owner.
    pub fn controller(&self) -> Result<Arc<dyn Controller>> {
        self.state().controller.clone().ok_or(Error::NotOwner)
    }

    /// Whether this capture runs the controller.
    pub fn is_controller(&self) -> bool {
        self.state().controller.is_some()
    }

    /// The controller, as the source of cluster status; `None` if not owner.
    pub fn status_provider(&self) -> Option<Arc<dyn Controller>> {
        self.state().controller.clone()
    }

    /// The owner's (and controller's) capture info, read from etcd: the owner ID, then its
    /// capture key. No owner, or an owner without a capture key, is [`Error::OwnerNotFound`].
    pub async fn controller_capture_info(&self) -> Result<CaptureInfo> {
        let lookup = async {
            let cancel = CancellationToken::new();
            let owner_id = self.etcd.get_owner_id(&cancel).await.ok()?;
            self.etcd.get_capture_info(&owner_id, &cancel).await.ok()
        };
        tokio::time::timeout(OWNER_LOOKUP_TIMEOUT, lookup)
            .await
            .ok()
            .flatten()
            .ok_or(Error::OwnerNotFound)
    }

    /// Another capture's info, read from etcd.
    pub async fn capture_info(&self, capture_id: &str) -> Result<CaptureInfo> {
        let cancel = CancellationToken::new();
        let lookup = self.etcd.get_capture_info(capture_id, &cancel);
        match tokio::time::timeout(OWNER_LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(cdc_etcd::Error::CaptureNotExist { .. })) => Err(Error::CaptureNotExist {
                capture_id: capture_id.to_owned(),
            }),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(Error::DeadlineExceeded {
                op: "get capture info",
            }),
        }
    }

    /// Whether the meta-version gate has passed (§6.6).
    pub fn is_ready(&self) -> bool {
        self.migrate_done.load(Ordering::SeqCst)
    }

    /// The p2p counters of the current incarnation: (message server, router clients).
    pub fn p2p_metrics(&self) -> Option<(MetricsSnapshot, MetricsSnapshot)> {
        let state = self.state();
        let server = state.message_server.as_ref()?.metrics();
        let router = state.router.as_ref()?.metrics();
        Some((server, router))
    }

    /// A human-readable dump. The capture lock is released before the components are asked.
    pub fn write_debug_info(&self, out: &mut String) {
        let (info, owner, processor_manager) = {
            let state = self.state();
            (
                state.info.clone(),
                state.owner.is_some(),
                state.processor_manager.clone(),
            )
        };
        use std::fmt::Write as _;
        let _ = writeln!(out, "capture: {info:?}");
        let _ = writeln!(
            out,
            "liveness: {}, owner: {owner}, ready: {}",
            self.liveness(),
            self.is_ready()
        );
        if let Some((server, router)) = self.p2p_metrics() {
            let _ = writeln!(out, "p2p server: {server:?}");
            let _ = writeln!(out, "p2p clients: {router:?}");
        }
        if let Some(processor_manager) = processor_manager {
            processor_manager.write_debug_info(out);
        }
    }

    /// Logs a fatal error of the whole capture.
    pub fn log_exit(result: &Result<()>) {
        if let Err(err) = result {
            error!(error = %ErrorReport(err), "capture exited");
        }
    }
}

/// An owner that reports its first tick: its fenced worker has loaded a snapshot holding our
/// owner key, after the migration.
struct ConfirmingOwner {
    owner: Arc<dyn Owner>,
    confirmed: watch::Sender<bool>,
}

impl Owner for ConfirmingOwner {
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        self.confirmed
            .send_if_modified(|confirmed| !std::mem::replace(confirmed, true));
        self.owner.tick(state)
    }

    fn async_stop(&self) {
        self.owner.async_stop();
    }
}

/// A controller that reports its first tick, as [`ConfirmingOwner`] does.
struct ConfirmingController {
    controller: Arc<dyn Controller>,
    confirmed: watch::Sender<bool>,
}

impl Controller for ConfirmingController {
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        self.confirmed
            .send_if_modified(|confirmed| !std::mem::replace(confirmed, true));
        self.controller.tick(state)
    }

    fn async_stop(&self) {
        self.controller.async_stop();
    }

    fn captures(&self) -> Vec<CaptureInfo> {
        self.controller.captures()
    }
}

/// How strongly a task's error speaks for the whole group: an error that ends the capture beats
/// any other, a root error beats a suicide, and a suicide beats a cancellation (the echo of a
/// sibling's failure).
fn group_error_rank(err: &Error) -> u8 {
    if !err.restarts_capture() {
        3
    } else if matches!(err, Error::Cancelled) {
        0
    } else if matches!(err, Error::Suicide) {
        1
    } else {
        2
    }
}

fn is_cancelled(err: &Error) -> bool {
    matches!(
        err.root_cause(),
        Error::Cancelled | Error::Election(cdc_election::Error::Cancelled)
    )
}

/// The meta version in etcd as the gate reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaVersion {
    /// No meta version key.
    Absent,
    /// The version this binary writes.
    Current,
}

fn from_worker_error(err: cdc_orchestrator::Error) -> Error {
    match err {
        cdc_orchestrator::Error::NotOwner => Error::NotOwner,
        cdc_orchestrator::Error::SessionDone => Error::SessionDone,
        cdc_orchestrator::Error::LeaseExpired { .. } => Error::LeaseExpired,
        cdc_orchestrator::Error::Cancelled => Error::Cancelled,
        other => Error::Orchestrator(other),
    }
}

#[cfg(test)]
mod tests;
