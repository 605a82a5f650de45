//! The reactor contracts (TiCDC's `pkg/orchestrator/interfaces.go`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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

    /// When [`ReactorState::update_pending_change`] next has a time-driven change to make (a
    /// delayed capture removal falling due), if ever: the worker ticks then even when nothing
    /// else happened. Computed from the times passed in, never from a clock.
    fn next_pending_change(&self) -> Option<Instant> {
        None
    }

    /// Drains the queued patch groups. Each group is committed atomically, possibly together
    /// with other groups.
    fn get_patches(&mut self) -> Vec<PatchGroup>;
}

/// When a reactor needs its next tick. Whatever it answers, the worker also ticks it when the
/// snapshot changed, when it was poked ([`TickPoke`]) and on a slow heartbeat; never more
/// often than once per worker interval (burst 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTick {
    /// Only on a change of the snapshot, a poke or the heartbeat.
    Idle,
    /// Also once this much time has passed; `Duration::ZERO` ticks again at the next worker
    /// interval, as a reactor that polls.
    After(Duration),
}

/// The handle that asks a worker for a tick of its reactor: the reactor's owner pokes it when
/// a message or a request arrived for the reactor (a stop request, for one). A poke while the
/// worker is busy is kept for its next wait, and pokes before a tick are merged into it.
#[derive(Clone, Debug, Default)]
pub struct TickPoke(Arc<Notify>);

impl TickPoke {
    /// A handle no worker waits on yet.
    pub fn new() -> TickPoke {
        TickPoke::default()
    }

    /// Asks for a tick soon (within one worker interval, once the read-your-writes barrier
    /// allows).
    pub fn poke(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next poke, or at once for a poke that arrived since the last wait.
    ///
    /// # Cancel safety
    /// Cancel-safe: a poke is not consumed by a cancelled wait.
    pub(crate) async fn poked(&self) {
        self.0.notified().await;
    }
}

/// The logic run over a [`ReactorState`] by an etcd worker.
///
/// `tick` mutates the state in place and queues patches on it, and says when it next needs a
/// tick. Returning [`crate::Error::ReactorFinished`] is a normal exit: the worker commits the
/// patches queued so far and returns the state. Any other error ends the worker.
pub trait Reactor<S: ReactorState>: Send {
    /// One tick over a consistent snapshot of the state.
    ///
    /// The worker drops a tick in progress when it is cancelled or the session ends (the
    /// worker then returns without the state): a tick must leave the reactor fit to drop at
    /// any of its awaits.
    fn tick(&mut self, state: &mut S) -> impl Future<Output = Result<NextTick>> + Send;

    /// Receives, before the first tick, the handle that pokes the worker running this reactor;
    /// a reactor woken by messages or requests keeps it. The default drops it.
    fn set_tick_poke(&mut self, poke: TickPoke) {
        let _ = poke;
    }
}
