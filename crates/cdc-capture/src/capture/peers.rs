//! Keeps an incarnation's p2p peers in step with the capture keys: the capture events the
//! cluster state returns become router and message-server calls (TiCDC's `SetOnCaptureAdded` /
//! `SetOnCaptureRemoved` hooks in `cdc/capture/capture.go` of pingcap/tiflow).

use std::time::Instant;

use cdc_orchestrator::{CaptureEvent, NextTick, PatchGroup, Reactor, ReactorState, TickPoke};

use super::*;

/// A capture's reactor state that keeps the router's peers current: a capture whose key is
/// put becomes a peer, and one removed after the delay stops being one; on the owner's worker
/// a removed capture is also deregistered from the message server.
pub(super) struct PeerSyncState {
    pub(super) state: CaptureState,
    router: Arc<MessageRouter>,
    /// The owner's message server, which forgets the removed captures' acknowledgements.
    server: Option<Arc<MessageServer>>,
}

impl PeerSyncState {
    pub(super) fn new(
        state: CaptureState,
        router: Arc<MessageRouter>,
        server: Option<Arc<MessageServer>>,
    ) -> Self {
        PeerSyncState {
            state,
            router,
            server,
        }
    }

    /// Acts on the capture events of the last update.
    fn sync_peers(&mut self) {
        for event in self.state.0.take_capture_events() {
            match event {
                CaptureEvent::Added { id, address } => self.router.add_peer(id, address),
                CaptureEvent::Removed { id } => {
                    self.router.remove_peer(&id);
                    if let Some(server) = &self.server {
                        server.deregister_peer(&id);
                    }
                }
            }
        }
    }
}

impl ReactorState for PeerSyncState {
    fn update(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        is_init: bool,
    ) -> cdc_orchestrator::Result<()> {
        let result = self.state.update(key, value, is_init);
        self.sync_peers();
        result
    }

    fn update_pending_change(&mut self, now: Instant) {
        self.state.update_pending_change(now);
        self.sync_peers();
    }

    fn next_pending_change(&self) -> Option<Instant> {
        self.state.next_pending_change()
    }

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        self.state.get_patches()
    }
}

/// Runs a [`WorkerReactor`] over a [`PeerSyncState`].
pub(super) struct PeerSyncReactor(pub(super) WorkerReactor);

impl Reactor<PeerSyncState> for PeerSyncReactor {
    fn set_tick_poke(&mut self, poke: TickPoke) {
        self.0.set_tick_poke(poke);
    }

    async fn tick(&mut self, state: &mut PeerSyncState) -> cdc_orchestrator::Result<NextTick> {
        self.0.tick(&mut state.state).await
    }
}

#[cfg(test)]
mod tests;
