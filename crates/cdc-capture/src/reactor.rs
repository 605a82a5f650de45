//! The owner, controller and processor manager: traits built through factories (so tests can
//! inject doubles), the minimal reactors the binary runs until changefeed scheduling lands, and
//! the adapter that runs them on a [`cdc_orchestrator::EtcdWorker`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cdc_etcd::{CdcEtcdClient, LeaseId, Revision};
use cdc_model::key;
use cdc_model::{AtomicLiveness, CaptureInfo, DEFAULT_NAMESPACE, UpstreamInfo};
use cdc_orchestrator::{
    GlobalReactorState, NextTick, PatchGroup, PatchOutcome, Reactor, ReactorState, SingleDataPatch,
    TickPoke,
};
use cdc_p2p::{MessageRouter, MessageServer};
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pool::InitPool;

/// What a tick asks of its worker. Whatever it asks, the worker also ticks on a change of the
/// cluster's keys and on a poke (see [`Owner::set_tick_poke`]), plus a slow heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Tick again at the next flush interval (a reactor that polls).
    Continue,
    /// Tick again only on a change, a poke or the heartbeat.
    Idle,
    /// Tick again after this delay at the latest.
    After(Duration),
    /// The reactor is done; the worker commits what is queued and returns Ok.
    Finished,
}

/// What a reactor gets from its incarnation.
#[derive(Clone)]
pub struct ReactorContext {
    /// The cluster's etcd client.
    pub etcd: CdcEtcdClient,
    /// This capture.
    pub capture_id: String,
    /// The session's lease.
    pub lease_id: LeaseId,
    /// The owner revision (`get_owner_revision`; 0 for processors), stamped into messages.
    pub owner_revision: Revision,
    /// The PD endpoints, comma-separated (the default upstream's).
    pub pd_endpoints: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The incarnation's router (peers follow the capture keys).
    pub router: Arc<MessageRouter>,
    /// The incarnation's message server, for handlers of peers' messages.
    pub message_server: Arc<MessageServer>,
    /// The incarnation's changefeed-initialisation pool.
    pub init_pool: Arc<InitPool>,
}

/// The owner: runs while this capture is elected, on a fenced etcd worker.
pub trait Owner: Send + Sync {
    /// One pass over the cluster; patches go through `state.queue_patches`.
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>>;
    /// Asks the owner to finish; its next tick returns `Finished`.
    fn async_stop(&self);
    /// Receives the handle that asks its worker for a tick (poked on a stop request or a
    /// message); the default drops it, for owners that poll with [`Tick::Continue`].
    fn set_tick_poke(&self, poke: TickPoke) {
        let _ = poke;
    }
}

/// Builds owners.
pub trait OwnerFactory: Send + Sync {
    /// A new owner for one term.
    fn create(&self, context: ReactorContext) -> Arc<dyn Owner>;
}

/// The controller: runs beside the owner and serves the capture list.
pub trait Controller: Send + Sync {
    /// One pass over the cluster.
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>>;
    /// Asks the controller to finish.
    fn async_stop(&self);
    /// As [`Owner::set_tick_poke`].
    fn set_tick_poke(&self, poke: TickPoke) {
        let _ = poke;
    }
    /// The captures as of the last tick.
    fn captures(&self) -> Vec<CaptureInfo>;
}

/// Builds controllers.
pub trait ControllerFactory: Send + Sync {
    /// A new controller for one term.
    fn create(&self, context: ReactorContext) -> Arc<dyn Controller>;
}

/// The processor manager: runs on every capture.
pub trait ProcessorManager: Send + Sync {
    /// One pass over the cluster.
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>>;
    /// Stops every processor; called first on every exit of the incarnation.
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Appends a human-readable dump.
    fn write_debug_info(&self, out: &mut String);
    /// As [`Owner::set_tick_poke`].
    fn set_tick_poke(&self, poke: TickPoke) {
        let _ = poke;
    }
}

/// Builds processor managers.
pub trait ProcessorManagerFactory: Send + Sync {
    /// A new manager for one incarnation.
    fn create(
        &self,
        context: ReactorContext,
        liveness: Arc<AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager>;
}

/// The factories the binary uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct MinimalReactors;

impl OwnerFactory for MinimalReactors {
    fn create(&self, context: ReactorContext) -> Arc<dyn Owner> {
        Arc::new(MinimalOwner {
            context,
            stopped: AtomicBool::new(false),
            poke: PokeSlot::default(),
        })
    }
}

impl ControllerFactory for MinimalReactors {
    fn create(&self, context: ReactorContext) -> Arc<dyn Controller> {
        Arc::new(MinimalController {
            context,
            stopped: AtomicBool::new(false),
            captures: Mutex::new(Vec::new()),
            poke: PokeSlot::default(),
        })
    }
}

impl ProcessorManagerFactory for MinimalReactors {
    fn create(
        &self,
        context: ReactorContext,
        liveness: Arc<AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager> {
        Arc::new(MinimalProcessorManager {
            context,
            liveness,
            ticks: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            poke: PokeSlot::default(),
        })
    }
}

/// The default upstream of this cluster: the etcd (PD) cluster ID and endpoints.
pub(crate) fn default_upstream(etcd: &CdcEtcdClient, pd_endpoints: &str) -> UpstreamInfo {
    UpstreamInfo {
        id: etcd.etcd_cluster_id(),
        pd_endpoints: pd_endpoints.to_owned(),
        key_path: String::new(),
        cert_path: String::new(),
        ca_path: String::new(),
        cert_allowed_cn: None,
    }
}

/// The tick poke of a reactor's current worker, set when the worker starts.
#[derive(Default)]
struct PokeSlot(Mutex<Option<TickPoke>>);

impl PokeSlot {
    fn set(&self, poke: TickPoke) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(poke);
    }

    /// Asks the worker for a tick; a reactor whose worker has not started ticks first anyway.
    fn poke(&self) {
        if let Some(poke) = &*self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            poke.poke();
        }
    }
}

/// Keeps the default upstream info (the meta version is written by the migration step before
/// the owner's worker starts). Its writes are fenced by the worker.
struct MinimalOwner {
    context: ReactorContext,
    stopped: AtomicBool,
    poke: PokeSlot,
}

impl Owner for MinimalOwner {
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(Tick::Finished);
            }
            let upstream = default_upstream(&self.context.etcd, &self.context.pd_endpoints);
            if !state.upstreams.contains_key(&upstream.id) {
                let key = key::upstream_key(&state.cluster_id, DEFAULT_NAMESPACE, upstream.id);
                let value = cdc_model::to_go_json(&upstream)?;
                info!(
                    upstream_id = upstream.id,
                    "writing the default upstream info"
                );
                let patch = SingleDataPatch::new(key, move |old| {
                    Ok(match old {
                        Some(_) => PatchOutcome::Unchanged,
                        None => PatchOutcome::Set(Some(value.clone())),
                    })
                });
                let group: PatchGroup = vec![Box::new(patch)];
                state.queue_patches(group);
            }
            // The upstream only needs writing again after a change of the keys.
            Ok(Tick::Idle)
        })
    }

    fn async_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.poke.poke();
    }

    fn set_tick_poke(&self, poke: TickPoke) {
        self.poke.set(poke);
    }
}

/// Keeps the capture list and reports joins and leaves.
struct MinimalController {
    context: ReactorContext,
    stopped: AtomicBool,
    captures: Mutex<Vec<CaptureInfo>>,
    poke: PokeSlot,
}

impl Controller for MinimalController {
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(Tick::Finished);
            }
            let current: Vec<CaptureInfo> = state.captures.values().cloned().collect();
            let mut known = self
                .captures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *known != current {
                for capture in current.iter().filter(|c| !known.contains(c)) {
                    info!(capture_id = %capture.id, address = %capture.address, "capture joined");
                }
                for capture in known.iter().filter(|c| !current.contains(c)) {
                    info!(capture_id = %capture.id, "capture left");
                }
                let n_captures = i64::try_from(current.len()).unwrap_or(i64::MAX);
                self.context.metrics.captures.set(n_captures);
                *known = current;
            }
            // The capture list only changes with the keys.
            Ok(Tick::Idle)
        })
    }

    fn async_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.poke.poke();
    }

    fn set_tick_poke(&self, poke: TickPoke) {
        self.poke.set(poke);
    }

    fn captures(&self) -> Vec<CaptureInfo> {
        self.captures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A read-only patch on this capture's raw key (TiCDC's `check_capture_alive`): when the key
/// is absent or empty at commit time, the worker fails with `ErrLeaseExpired`. It reads the
/// raw key, not `GlobalReactorState::captures`, which keeps a vanished capture for the removal
/// delay.
pub(crate) fn check_capture_alive(cluster_id: &str, capture_id: &str) -> SingleDataPatch {
    let capture_id = capture_id.to_owned();
    SingleDataPatch::new(
        key::capture_key(cluster_id, &capture_id),
        move |old| match old {
            None | Some([]) => Err(cdc_orchestrator::Error::LeaseExpired {
                capture_id: capture_id.clone(),
            }),
            Some(_) => Ok(PatchOutcome::Unchanged),
        },
    )
}

/// Checks every tick that this capture is still in the cluster (`check_capture_alive`). Its
/// ticks follow the changes of the keys: the deletion of its capture key is one.
struct MinimalProcessorManager {
    context: ReactorContext,
    liveness: Arc<AtomicLiveness>,
    ticks: AtomicU64,
    closed: AtomicBool,
    poke: PokeSlot,
}

impl ProcessorManager for MinimalProcessorManager {
    fn tick<'a>(&'a self, state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(Tick::Finished);
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
            state.queue_patches(vec![Box::new(check_capture_alive(
                &state.cluster_id,
                &self.context.capture_id,
            ))]);
            Ok(Tick::Idle)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::SeqCst);
            self.poke.poke();
        })
    }

    fn set_tick_poke(&self, poke: TickPoke) {
        self.poke.set(poke);
    }

    fn write_debug_info(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "processor manager of capture {}: ticks {}, liveness {}, closed {}",
            self.context.capture_id,
            self.ticks.load(Ordering::Relaxed),
            self.liveness.load(),
            self.closed.load(Ordering::SeqCst),
        );
    }
}

/// The [`GlobalReactorState`] of a capture's worker. A value that does not decode (garbage
/// JSON under a capture or changefeed key, a key that does not parse) is logged and skipped
/// instead of ending the worker: bad data written by someone else must not stop the cluster.
pub(crate) struct CaptureState(pub(crate) GlobalReactorState);

impl ReactorState for CaptureState {
    fn update(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        is_init: bool,
    ) -> cdc_orchestrator::Result<()> {
        match self.0.update(key, value, is_init) {
            Err(
                err @ (cdc_orchestrator::Error::Unmarshal { .. }
                | cdc_orchestrator::Error::Model(_)
                | cdc_orchestrator::Error::InvalidKey { .. }),
            ) => {
                warn!(key = %String::from_utf8_lossy(key), error = %cdc_model::ErrorReport(&err), "ignoring a value that does not decode");
                Ok(())
            }
            other => other,
        }
    }

    fn update_pending_change(&mut self, now: Instant) {
        self.0.update_pending_change(now);
    }

    fn next_pending_change(&self) -> Option<Instant> {
        self.0.next_pending_change()
    }

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        self.0.get_patches()
    }
}

/// What a worker ticks.
pub(crate) enum Role {
    Processor(Arc<dyn ProcessorManager>),
    Owner(Arc<dyn Owner>),
    Controller(Arc<dyn Controller>),
}

impl Role {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Role::Processor(_) => "processor",
            Role::Owner(_) => "owner",
            Role::Controller(_) => "controller",
        }
    }
}

/// Runs a [`Role`] as a [`Reactor`]: a finished tick becomes `ReactorFinished`, and a
/// capture error is kept (the worker gets its nearest orchestrator error) so that the caller
/// maps the precise cause.
pub(crate) struct WorkerReactor {
    pub(crate) role: Role,
    pub(crate) capture_id: String,
    pub(crate) failure: Option<Error>,
}

impl Reactor<CaptureState> for WorkerReactor {
    fn set_tick_poke(&mut self, poke: TickPoke) {
        match &self.role {
            Role::Processor(manager) => manager.set_tick_poke(poke),
            Role::Owner(owner) => owner.set_tick_poke(poke),
            Role::Controller(controller) => controller.set_tick_poke(poke),
        }
    }

    async fn tick(&mut self, state: &mut CaptureState) -> cdc_orchestrator::Result<NextTick> {
        let result = match &self.role {
            Role::Processor(manager) => manager.tick(&mut state.0).await,
            Role::Owner(owner) => owner.tick(&mut state.0).await,
            Role::Controller(controller) => controller.tick(&mut state.0).await,
        };
        match result {
            Ok(Tick::Continue) => Ok(NextTick::After(Duration::ZERO)),
            Ok(Tick::Idle) => Ok(NextTick::Idle),
            Ok(Tick::After(delay)) => Ok(NextTick::After(delay)),
            Ok(Tick::Finished) => Err(cdc_orchestrator::Error::ReactorFinished),
            Err(err) => {
                let nearest = match &err {
                    Error::LeaseExpired => cdc_orchestrator::Error::LeaseExpired {
                        capture_id: self.capture_id.clone(),
                    },
                    Error::NotOwner => cdc_orchestrator::Error::NotOwner,
                    Error::SessionDone => cdc_orchestrator::Error::SessionDone,
                    _ => cdc_orchestrator::Error::Cancelled,
                };
                self.failure = Some(err);
                Err(nearest)
            }
        }
    }
}
