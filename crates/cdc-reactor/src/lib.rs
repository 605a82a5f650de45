//! The reactors a capture runs, as traits: the owner (while elected), the controller (beside the
//! owner) and the processor manager (always), each built per term or incarnation by a factory,
//! and ticked by the capture on a [`cdc_orchestrator::EtcdWorker`] over the cluster's
//! [`GlobalReactorState`].
//!
//! The owner and processor crates implement these traits; the capture runs them and never needs
//! to know which implementation it runs (tests inject doubles). Also here: what a reactor gets
//! from its incarnation ([`ReactorContext`]), the owner's HTTP API as data ([`OwnerApi`]), the
//! changefeed-initialisation pool ([`InitPool`]) and small helpers both sides share.
//!
//! Layering: this crate sits above cdc-etcd, cdc-orchestrator and cdc-p2p and below the
//! capture, owner and processor crates (see ARCHITECTURE.md).
#![warn(missing_docs)]

mod api;
mod error;
mod pool;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_etcd::{CdcEtcdClient, LeaseId, Revision};
use cdc_model::key;
use cdc_model::{CaptureInfo, UpstreamInfo};
use cdc_orchestrator::{GlobalReactorState, PatchOutcome, SingleDataPatch, TickPoke};
use cdc_p2p::{MessageRouter, MessageServer};
use futures::future::BoxFuture;

pub use api::{ApiRequest, ApiResponse, OwnerApi};
pub use error::{BoxError, Error, Result};
pub use pool::{InitPool, Job};

/// One running changefeed's progress as the owner saw it at its last tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangefeedProgress {
    /// The changefeed.
    pub id: cdc_model::ChangeFeedId,
    /// Its checkpoint (an upstream revision).
    pub checkpoint: u64,
    /// Its resolved revision: every upstream change up to it has been received.
    pub resolved: u64,
}

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
    /// The owner revision (the create revision of the owner key; 0 for processors), stamped
    /// into the owner's messages.
    pub owner_revision: Revision,
    /// The PD endpoints, comma-separated (the default upstream's).
    pub pd_endpoints: String,
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
    /// Asks the owner to finish; its next tick returns `Finished`. Returns at once.
    fn async_stop(&self);
    /// Receives the handle that asks its worker for a tick (poked on a stop request or a
    /// message); the default drops it, for owners that poll with [`Tick::Continue`].
    fn set_tick_poke(&self, poke: TickPoke) {
        let _ = poke;
    }
    /// The owner's HTTP API, if it serves one.
    fn api(&self) -> Option<Arc<dyn OwnerApi>> {
        None
    }

    /// Each running changefeed's progress as of the last tick, for the owner-only metrics;
    /// none by default.
    fn changefeed_progress(&self) -> Vec<ChangefeedProgress> {
        Vec::new()
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
    /// Asks the controller to finish. Returns at once.
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
        liveness: Arc<cdc_model::AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager>;
}

/// The tick poke of a reactor's current worker, set when the worker starts.
#[derive(Default)]
pub struct PokeSlot(Mutex<Option<TickPoke>>);

impl PokeSlot {
    /// Keeps the poke of the reactor's worker.
    pub fn set(&self, poke: TickPoke) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(poke);
    }

    /// Asks the worker for a tick; a reactor whose worker has not started ticks first anyway.
    pub fn poke(&self) {
        if let Some(poke) = &*self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            poke.poke();
        }
    }
}

/// The default upstream of a cluster: the etcd (PD) cluster ID and endpoints.
pub fn default_upstream(etcd: &CdcEtcdClient, pd_endpoints: &str) -> UpstreamInfo {
    UpstreamInfo {
        id: etcd.etcd_cluster_id(),
        pd_endpoints: pd_endpoints.to_owned(),
        key_path: String::new(),
        cert_path: String::new(),
        ca_path: String::new(),
        cert_allowed_cn: None,
    }
}

/// The patch that writes `upstream`'s info under the default namespace of cluster
/// `cluster_id` when the key is absent, and leaves one written meanwhile by another writer as it
/// is. Both the minimal owner and the owner core write the default upstream with it.
pub fn upstream_if_absent(
    cluster_id: &str,
    upstream: &UpstreamInfo,
) -> cdc_model::Result<SingleDataPatch> {
    let key = key::upstream_key(cluster_id, cdc_model::DEFAULT_NAMESPACE, upstream.id);
    let value = cdc_model::to_go_json(upstream)?;
    Ok(SingleDataPatch::new(key, move |old| {
        Ok(match old {
            Some(_) => PatchOutcome::Unchanged,
            None => PatchOutcome::Set(Some(value.clone())),
        })
    }))
}

/// A read-only patch on a capture's raw key (TiCDC's `check_capture_alive`): when the key is
/// absent or empty at commit time, the worker fails with `ErrLeaseExpired`. It reads the raw
/// key, not `GlobalReactorState::captures`, which keeps a vanished capture for the removal
/// delay.
pub fn check_capture_alive(cluster_id: &str, capture_id: &str) -> SingleDataPatch {
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
