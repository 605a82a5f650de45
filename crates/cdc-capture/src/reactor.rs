//! The minimal reactors (the controller the binary runs, and an owner and processor manager
//! that coordinate no work, for tests), and the adapter that runs any [`cdc_reactor`] reactor
//! on a [`cdc_orchestrator::EtcdWorker`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cdc_model::{AtomicLiveness, CaptureInfo};
use cdc_orchestrator::{GlobalReactorState, NextTick, PatchGroup, Reactor, ReactorState, TickPoke};
use cdc_reactor::{
    Controller, ControllerFactory, Owner, OwnerFactory, PokeSlot, ProcessorManager,
    ProcessorManagerFactory, ReactorContext, Result, Tick, check_capture_alive, default_upstream,
};
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::error::Error;

/// Reactors that coordinate no work: the controller the binary runs, and an owner and a
/// processor manager for tests that need a cluster without changefeeds.
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
    fn create(&self, _context: ReactorContext) -> Arc<dyn Controller> {
        Arc::new(MinimalController {
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
                let patch = cdc_reactor::upstream_if_absent(&state.cluster_id, &upstream)?;
                info!(
                    upstream_id = upstream.id,
                    "writing the default upstream info"
                );
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
                    cdc_reactor::Error::Orchestrator(cdc_orchestrator::Error::LeaseExpired {
                        ..
                    }) => cdc_orchestrator::Error::LeaseExpired {
                        capture_id: self.capture_id.clone(),
                    },
                    cdc_reactor::Error::Orchestrator(cdc_orchestrator::Error::NotOwner) => {
                        cdc_orchestrator::Error::NotOwner
                    }
                    cdc_reactor::Error::Orchestrator(cdc_orchestrator::Error::SessionDone) => {
                        cdc_orchestrator::Error::SessionDone
                    }
                    _ => cdc_orchestrator::Error::Cancelled,
                };
                let err = Error::from(err);
                self.failure = Some(err);
                Err(nearest)
            }
        }
    }
}
