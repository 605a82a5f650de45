//! The reactor contracts (TiCDC's `pkg/orchestrator/interfaces.go`).

use std::future::Future;
use std::time::Instant;

use crate::error::Result;
use crate::patch::PatchGroup;

/// The reactor's view of the shared state, built from etcd updates; pure (no IO, no clock).
pub trait ReactorState: Send {
    /// Applies one key: `value` is `None` when the key was deleted; `is_init` is true during
    /// the initial load. An empty value is an empty value, never a delete. An error ends the
    /// worker.
    fn update(&mut self, key: &[u8], value: Option<&[u8]>, is_init: bool) -> Result<()>;

    /// Called once after each batch of updates (and on every worker iteration that ticks),
    /// with the current time; time-driven changes such as a delayed capture removal happen here.
    fn update_pending_change(&mut self, now: Instant);

    /// Drains the queued patch groups. Each group is committed atomically, possibly together
    /// with other groups.
    fn get_patches(&mut self) -> Vec<PatchGroup>;
}

/// The logic run over a [`ReactorState`] by an etcd worker.
///
/// `tick` mutates the state in place and queues patches on it. Returning
/// [`crate::Error::ReactorFinished`] is a normal exit: the worker commits the patches queued so
/// far and returns the state. Any other error ends the worker.
pub trait Reactor<S: ReactorState>: Send {
    /// One tick over a consistent snapshot of the state.
    ///
    /// The worker drops a tick in progress when it is cancelled or the session ends (the
    /// worker then returns without the state): a tick must leave the reactor fit to drop at
    /// any of its awaits.
    fn tick(&mut self, state: &mut S) -> impl Future<Output = Result<()>> + Send;
}
