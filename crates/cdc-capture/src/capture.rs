//! The capture: the restart loop, one incarnation, the owner campaign, drain and close (§6).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cdc_etcd::{EtcdClient, GetOptions, LeaseId};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::Config;
use crate::election::{Election, EtcdElection, RESIGN_TIMEOUT};
use crate::error::{Error, Result};
use crate::info::{AtomicLiveness, CaptureInfo, Liveness};
use crate::metrics::Metrics;
use crate::reactor::{
    Controller, ControllerFactory, META_VERSION, MinimalReactors, Owner, OwnerFactory,
    ProcessorManager, ProcessorManagerFactory, ReactorContext, Tick,
};
use crate::session::{EtcdSessionFactory, SessionFactory};
use crate::view::{ClusterView, Keys, run_view};

/// The deadline for deleting the capture's keys on exit.
const CLEAN_META_TIMEOUT: Duration = Duration::from_secs(10);
/// Workers of the changefeed-initialisation pool.
pub const CHANGEFEED_INIT_WORKERS: usize = 8;

/// Builds elections; tests inject doubles.
pub trait ElectionFactory: Send + Sync {
    /// The election under `prefix` for `lease_id`.
    fn create(&self, client: EtcdClient, prefix: &str, lease_id: LeaseId) -> Arc<dyn Election>;
}

/// The etcd election factory.
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdElections;

impl ElectionFactory for EtcdElections {
    fn create(&self, client: EtcdClient, prefix: &str, lease_id: LeaseId) -> Arc<dyn Election> {
        Arc::new(EtcdElection::new(client, prefix, lease_id))
    }
}

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
    /// The production parts on `client`.
    pub fn production(client: EtcdClient) -> Self {
        CaptureParts {
            sessions: Arc::new(EtcdSessionFactory::new(client)),
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
    pub lease_id: LeaseId,
    /// Cancelled when the session is lost.
    pub session_done: CancellationToken,
    /// The owner election.
    pub election: Arc<dyn Election>,
    /// The cluster view.
    pub view_rx: watch::Receiver<Arc<ClusterView>>,
}

#[derive(Default)]
struct CaptureState {
    info: Option<CaptureInfo>,
    incarnation_cancel: Option<CancellationToken>,
    owner: Option<Arc<dyn Owner>>,
    controller: Option<Arc<dyn Controller>>,
    processor_manager: Option<Arc<dyn ProcessorManager>>,
    view_rx: Option<watch::Receiver<Arc<ClusterView>>>,
}

/// A capture server's capture. Shared as `Arc<Capture>` by the HTTP handlers.
pub struct Capture {
    config: Config,
    client: EtcdClient,
    keys: Keys,
    parts: CaptureParts,
    metrics: Arc<Metrics>,
    liveness: Arc<AtomicLiveness>,
    state: Mutex<CaptureState>,
    is_owner_tx: watch::Sender<bool>,
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
    /// A capture with `parts`; `config` must have been validated.
    pub fn new(
        config: Config,
        client: EtcdClient,
        parts: CaptureParts,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let restart_quota = Quota::with_period(Duration::from_secs(20))
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(2).expect("non-zero"));
        let campaign_quota = Quota::per_second(NonZeroU32::new(1).expect("non-zero"));
        Arc::new(Capture {
            keys: Keys::new(&config.cluster_id),
            config,
            client,
            parts,
            metrics,
            liveness: Arc::new(AtomicLiveness::default()),
            state: Mutex::new(CaptureState::default()),
            is_owner_tx: watch::channel(false).0,
            restart_limiter: RateLimiter::direct(restart_quota),
            campaign_limiter: RateLimiter::direct(campaign_quota),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.state
            .lock()
            .expect("the capture lock is never poisoned")
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The outer loop (§6.2): runs incarnations until `cancel`, restarting after suicide,
    /// cancellation or an internal deadline (at most 0.05/s after a burst of 2).
    pub async fn run(self: &Arc<Self>, cancel: CancellationToken) -> Result<()> {
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
                    info!(error = %err, "capture recovered");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// One incarnation (§6.3): new session, new ID, register, run the task group, clean up.
    pub async fn run_once(self: &Arc<Self>, cancel: &CancellationToken) -> Result<()> {
        let session = self
            .parts
            .sessions
            .grant(self.config.capture_session_ttl, cancel)
            .await?;
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
        let span = info_span!("capture", capture_id = %capture_id);
        let lease_id = session.lease_id();
        let election =
            self.parts
                .elections
                .create(self.client.clone(), &self.keys.owner_prefix(), lease_id);
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        let context = self.reactor_context(&capture_id, lease_id, 0);
        let processor_manager = self
            .parts
            .processors
            .create(context, Arc::clone(&self.liveness));
        {
            let mut state = self.state();
            state.info = Some(info.clone());
            state.processor_manager = Some(Arc::clone(&processor_manager));
            state.view_rx = Some(view_rx.clone());
        }
        let incarnation = Incarnation {
            capture_id: capture_id.clone(),
            lease_id,
            session_done: session.done(),
            election,
            view_rx,
        };
        let result = async {
            self.register(&info, lease_id).await?;
            info!(address = %info.address, lease_id = %format_args!("{lease_id:x}"), "capture registered");
            self.run_group(&incarnation, view_tx, &processor_manager, cancel).await
        }
        .instrument(span.clone())
        .await;
        // Always: stop the processors first, then forget the owner, then clean up our keys.
        processor_manager.close().await;
        self.close();
        {
            let mut state = self.state();
            state.processor_manager = None;
            state.view_rx = None;
        }
        self.delete_capture_info(&capture_id)
            .instrument(span.clone())
            .await;
        session.close().instrument(span).await;
        result
    }

    fn reactor_context(
        &self,
        capture_id: &str,
        lease_id: LeaseId,
        owner_revision: i64,
    ) -> ReactorContext {
        ReactorContext {
            client: self.client.clone(),
            keys: self.keys.clone(),
            capture_id: capture_id.to_owned(),
            lease_id,
            owner_key: format!("{}/{lease_id:x}", self.keys.owner_prefix()),
            owner_revision,
            pd_endpoints: self.config.endpoints().join(","),
            metrics: Arc::clone(&self.metrics),
        }
    }

    async fn register(&self, info: &CaptureInfo, lease_id: LeaseId) -> Result<()> {
        let value = serde_json::to_vec(info).expect("a plain struct always encodes");
        self.client
            .put(self.keys.capture_key(&info.id), value, lease_id)
            .await
            .map_err(|err| Error::Register(Box::new(err.into())))?;
        Ok(())
    }

    async fn delete_capture_info(&self, capture_id: &str) {
        let delete = async {
            self.client
                .delete(self.keys.capture_key(capture_id), false)
                .await?;
            self.client
                .delete(self.keys.task_position_prefix(capture_id), true)
                .await?;
            Ok::<(), cdc_etcd::Error>(())
        };
        match tokio::time::timeout(CLEAN_META_TIMEOUT, delete).await {
            Ok(Ok(())) => info!("capture info deleted"),
            Ok(Err(err)) => warn!(error = %err, "deleting the capture info failed"),
            Err(_) => warn!("deleting the capture info timed out"),
        }
    }

    /// The task group: view, campaign and processor; the first error cancels the rest.
    async fn run_group(
        self: &Arc<Self>,
        incarnation: &Incarnation,
        view_tx: watch::Sender<Arc<ClusterView>>,
        processor_manager: &Arc<dyn ProcessorManager>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let group = cancel.child_token();
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let span = tracing::Span::current();
        tasks.spawn(
            {
                let group = group.clone();
                let client = self.client.clone();
                let keys = self.keys.clone();
                async move {
                    run_view(client, keys, view_tx, group).await;
                    Err(Error::Cancelled)
                }
            }
            .instrument(span.clone()),
        );
        tasks.spawn(
            {
                let capture = Arc::clone(self);
                let incarnation = incarnation.clone();
                let group = group.clone();
                async move {
                    let result = capture.campaign_owner(&incarnation, &group).await;
                    if group.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    match result {
                        Ok(()) if capture.liveness.load() == Liveness::Stopping => {
                            // Drained: stay up without campaigning until closed.
                            group.cancelled().await;
                            Err(Error::Cancelled)
                        }
                        Ok(()) => Err(Error::Suicide),
                        Err(err) => {
                            warn!(error = %err, "campaign task failed");
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
                    let result = capture
                        .run_worker(
                            "processor",
                            WorkerReactor::Processor(&processor_manager),
                            capture.config.processor_flush_interval,
                            &incarnation,
                            &group,
                        )
                        .await;
                    // Stop the owner too, and close the processors at once: no double writes.
                    group.cancel();
                    processor_manager.close().await;
                    result
                }
            }
            .instrument(info_span!(parent: &span, "processor")),
        );
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
                // A sibling's cancellation is a consequence; keep the root error.
                let replace = match &first_error {
                    None => true,
                    Some(Error::Cancelled) => !matches!(err, Error::Cancelled),
                    Some(_) => false,
                };
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
            match incarnation
                .election
                .campaign(&incarnation.capture_id, cancel)
                .await
            {
                Ok(()) => {}
                Err(Error::Cancelled) => return Ok(()),
                Err(err) if err.is_compacted() => {
                    warn!(error = %err, "campaign hit a compaction, campaigning again");
                    continue;
                }
                Err(err) => {
                    warn!(error = %err, "campaign failed");
                    return Err(Error::CampaignOwner(Box::new(err)));
                }
            }
            if self.liveness.load() == Liveness::Stopping {
                info!("elected while stopping, resigning");
                return self.resign(incarnation).await;
            }
            let owner_key = format!("{}/{:x}", self.keys.owner_prefix(), incarnation.lease_id);
            let owner_revision = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                response = self.client.get(owner_key.clone(), GetOptions::default()) => {
                    match response?.kvs.first() {
                        Some(kv) => kv.create_revision,
                        None => return Err(Error::NotOwner),
                    }
                }
            };
            info!(owner_revision, "campaign won, this capture is the owner");
            let context = self.reactor_context(
                &incarnation.capture_id,
                incarnation.lease_id,
                owner_revision,
            );
            let owner = self.parts.owners.create(context.clone());
            let controller = self.parts.controllers.create(context);
            {
                let mut state = self.state();
                state.owner = Some(Arc::clone(&owner));
                state.controller = Some(Arc::clone(&controller));
            }
            self.is_owner_tx.send_replace(true);
            // A drain that raced with the election must still stop this owner.
            if self.liveness.load() == Liveness::Stopping {
                owner.async_stop();
            }
            let result = self
                .run_worker(
                    "owner",
                    WorkerReactor::Owner(&owner, &controller),
                    self.config.owner_flush_interval,
                    incarnation,
                    cancel,
                )
                .await;
            owner.async_stop();
            controller.async_stop();
            {
                let mut state = self.state();
                state.owner = None;
                state.controller = None;
            }
            if !matches!(result, Err(Error::NotOwner)) {
                self.resign(incarnation).await?;
            }
            self.is_owner_tx.send_replace(false);
            info!(result = ?result.as_ref().err(), "owner stopped");
            result?;
        }
    }

    async fn resign(&self, incarnation: &Incarnation) -> Result<()> {
        match tokio::time::timeout(RESIGN_TIMEOUT, incarnation.election.resign()).await {
            Ok(Ok(())) => {
                info!("resigned the ownership");
                Ok(())
            }
            Ok(Err(err)) => Err(Error::ResignOwner(Box::new(err))),
            Err(_) => {
                warn!("resigning the ownership timed out");
                Ok(())
            }
        }
    }

    /// Ticks `reactor` every `interval` over the current view until it finishes or fails;
    /// maps a lost session to suicide (§6.3 `run_etcd_worker`).
    async fn run_worker(
        &self,
        role: &'static str,
        reactor: WorkerReactor<'_>,
        interval: Duration,
        incarnation: &Incarnation,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks = self.metrics.worker_ticks.with_label_values(&[role]);
        let result: Result<()> = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(Error::Cancelled),
                () = incarnation.session_done.cancelled() => break Err(Error::SessionDone),
                _ = ticker.tick() => {}
            }
            let view = Arc::clone(&incarnation.view_rx.borrow());
            ticks.inc();
            match reactor.tick(&view).await {
                Ok(Tick::Continue) => {}
                Ok(Tick::Finished) => return Ok(()),
                Err(err) => break Err(err),
            }
        };
        let Err(err) = result else { return Ok(()) };
        match err {
            Error::SessionDone | Error::LeaseExpired => {
                warn!(role, error = %err, "the session is lost, suicide");
                Err(Error::Suicide)
            }
            Error::Cancelled => Err(Error::Cancelled),
            other => match self.client.lease_time_to_live(incarnation.lease_id).await {
                Ok(ttl) if ttl.ttl == -1 => {
                    warn!(role, error = %other, "the lease is gone, suicide");
                    Err(Error::Suicide)
                }
                Ok(_) => Err(other),
                Err(ttl_error) => {
                    warn!(role, error = %other, "worker failed and the lease could not be checked");
                    Err(Error::Etcd(ttl_error))
                }
            },
        }
    }

    /// Drains the capture: Stopping for good, and the owner (if any) stops and resigns. Returns
    /// when this capture is no longer owner, or after 5 s.
    pub async fn drain(&self) {
        if self.liveness.store_stopping() {
            info!("capture draining");
        }
        let owner = self.state().owner.clone();
        if let Some(owner) = owner {
            owner.async_stop();
            let mut is_owner_rx = self.is_owner_tx.subscribe();
            let resigned = is_owner_rx.wait_for(|is_owner| !*is_owner);
            if tokio::time::timeout(RESIGN_TIMEOUT, resigned)
                .await
                .is_err()
            {
                warn!("the owner did not resign within the drain deadline");
            }
        }
    }

    /// The liveness.
    pub fn liveness(&self) -> Liveness {
        self.liveness.load()
    }

    /// Stops the owner and ends the current incarnation (a new one starts unless the parent
    /// token is cancelled). Re-entrant.
    pub fn close(&self) {
        let mut state = self.state();
        if let Some(owner) = &state.owner {
            owner.async_stop();
        }
        if let Some(controller) = &state.controller {
            controller.async_stop();
        }
        if let Some(cancel) = state.incarnation_cancel.take() {
            cancel.cancel();
        }
    }

    /// A copy of the current capture info.
    pub fn info(&self) -> Result<CaptureInfo> {
        self.state().info.clone().ok_or(Error::NotInitialized)
    }

    /// The owner, if this capture is owner.
    pub fn get_owner(&self) -> Result<Arc<dyn Owner>> {
        self.state().owner.clone().ok_or(Error::NotOwner)
    }

    /// Whether this capture is owner.
    pub fn is_owner(&self) -> bool {
        self.state().owner.is_some()
    }

    /// The controller, if this capture is owner.
    pub fn get_controller(&self) -> Result<Arc<dyn Controller>> {
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

    /// The current cluster view, if an incarnation runs.
    pub fn view(&self) -> Option<Arc<ClusterView>> {
        self.state()
            .view_rx
            .as_ref()
            .map(|view_rx| Arc::clone(&view_rx.borrow()))
    }

    /// The owner's (and controller's) capture info, from the cluster view.
    pub fn get_controller_capture_info(&self) -> Result<CaptureInfo> {
        self.view()
            .and_then(|view| view.owner_capture().cloned())
            .ok_or(Error::OwnerNotFound)
    }

    /// Whether the meta version gate has passed.
    pub fn is_ready(&self) -> bool {
        self.view()
            .is_some_and(|view| view.meta_version == Some(META_VERSION))
    }

    /// A human-readable dump. The capture lock is released before the components are asked.
    pub fn write_debug_info(&self, out: &mut String) {
        let (info, owner, processor_manager, view) = {
            let state = self.state();
            (
                state.info.clone(),
                state.owner.is_some(),
                state.processor_manager.clone(),
                state
                    .view_rx
                    .as_ref()
                    .map(|view_rx| Arc::clone(&view_rx.borrow())),
            )
        };
        use std::fmt::Write as _;
        let _ = writeln!(out, "capture: {info:?}");
        let _ = writeln!(out, "liveness: {:?}, owner: {owner}", self.liveness());
        if let Some(view) = view {
            let _ = writeln!(
                out,
                "cluster view at revision {}: {} captures, owner {:?}, meta version {:?}",
                view.revision,
                view.captures.len(),
                view.owner().map(|owner| owner.capture_id.as_str()),
                view.meta_version,
            );
        }
        if let Some(processor_manager) = processor_manager {
            processor_manager.write_debug_info(out);
        }
    }

    /// Logs a fatal error of the whole capture.
    pub fn log_exit(result: &Result<()>) {
        if let Err(err) = result {
            error!(error = %err, "capture exited");
        }
    }
}

/// What a worker ticks.
enum WorkerReactor<'a> {
    Processor(&'a Arc<dyn ProcessorManager>),
    Owner(&'a Arc<dyn Owner>, &'a Arc<dyn Controller>),
}

impl WorkerReactor<'_> {
    async fn tick(&self, view: &ClusterView) -> Result<Tick> {
        match self {
            WorkerReactor::Processor(manager) => manager.tick(view).await,
            WorkerReactor::Owner(owner, controller) => {
                let tick = owner.tick(view).await?;
                controller.tick(view).await?;
                Ok(tick)
            }
        }
    }
}
