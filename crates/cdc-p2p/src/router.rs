//! The message router (TiCDC's `pkg/p2p/message_router.go`): one lazily created client per peer plus the local client.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::client::{ClientFaults, MessageClient, NoClientFaults};
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::local::{LocalClient, LocalReceiver};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::topic::Topic;

/// A client to a peer: remote over gRPC, or the local channel for oneself.
#[derive(Debug, Clone)]
pub enum PeerClient {
    /// A remote peer.
    Remote(MessageClient),
    /// This capture itself.
    Local(LocalClient),
}

impl PeerClient {
    /// Queues a message, waiting for space. Returns its sequence.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is queued only when the call returns `Ok`.
    pub async fn send_message<T: Topic>(
        &self,
        topic: &T,
        message: T::Message,
        cancel: &CancellationToken,
    ) -> Result<i64> {
        match self {
            PeerClient::Remote(client) => client.send_message_owned(topic, message, cancel).await,
            PeerClient::Local(client) => client.send_message(topic, message, cancel).await,
        }
    }

    /// Queues a message or fails at once with `SendTryAgain`.
    pub fn try_send_message<T: Topic>(&self, topic: &T, message: T::Message) -> Result<i64> {
        match self {
            PeerClient::Remote(client) => client.try_send_message_owned(topic, message),
            PeerClient::Local(client) => client.try_send_message(topic, message),
        }
    }

    /// The topic's ack (see `MessageClient::current_ack` and `LocalClient::current_ack`).
    pub fn current_ack(&self, topic: &str) -> (i64, bool) {
        match self {
            PeerClient::Remote(client) => client.current_ack(topic),
            PeerClient::Local(client) => client.current_ack(topic),
        }
    }
}

#[derive(Debug)]
struct RemotePeer {
    client: MessageClient,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct RouterState {
    addrs: HashMap<String, String>,
    clients: HashMap<String, RemotePeer>,
}

/// Removes a client from the map when its task ends, even by a panic or by being dropped,
/// so that `client` then starts a fresh one.
struct RemoveOnExit<'a> {
    shared: &'a Shared,
    peer_id: &'a str,
    client: &'a MessageClient,
    /// Keep the (closed) client in the map: set after a panic, see `client`.
    keep: bool,
}

impl Drop for RemoveOnExit<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state
            .clients
            .get(self.peer_id)
            .is_some_and(|peer| peer.client.same(self.client))
        {
            state.clients.remove(self.peer_id);
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[derive(Debug)]
struct Shared {
    self_id: String,
    config: ClientConfig,
    metrics: Arc<Metrics>,
    state: Mutex<RouterState>,
    errors_tx: mpsc::Sender<Error>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// The faults its clients inject ([`NoClientFaults`] but in tests).
    client_faults: Arc<dyn ClientFaults>,
}

/// Routes messages to peers by capture ID.
#[derive(Debug)]
pub struct MessageRouter {
    shared: Arc<Shared>,
    local: LocalClient,
    local_rx: Mutex<Option<LocalReceiver>>,
    errors_rx: Mutex<Option<mpsc::Receiver<Error>>>,
}

impl MessageRouter {
    /// A router for the capture `self_id`.
    pub fn new(self_id: impl Into<String>, config: ClientConfig) -> Self {
        MessageRouter::with_client_faults(self_id, config, Arc::new(NoClientFaults))
    }

    /// A router for the capture `self_id` whose clients inject `client_faults`.
    pub(crate) fn with_client_faults(
        self_id: impl Into<String>,
        config: ClientConfig,
        client_faults: Arc<dyn ClientFaults>,
    ) -> Self {
        let (errors_tx, errors_rx) = mpsc::channel(1);
        let (local, local_rx) = LocalClient::new();
        MessageRouter {
            shared: Arc::new(Shared {
                self_id: self_id.into(),
                config,
                metrics: Arc::default(),
                state: Mutex::default(),
                errors_tx,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                client_faults,
            }),
            local,
            local_rx: Mutex::new(Some(local_rx)),
            errors_rx: Mutex::new(Some(errors_rx)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records (or updates) a peer's address.
    pub fn add_peer(&self, id: impl Into<String>, addr: impl Into<String>) {
        self.state().addrs.insert(id.into(), addr.into());
    }

    /// Forgets a peer's address and stops its client. The client leaves the map when its
    /// task ends, so a new client cannot start while the old one still runs.
    pub fn remove_peer(&self, id: &str) {
        let mut state = self.state();
        state.addrs.remove(id);
        if let Some(peer) = state.clients.get(id) {
            peer.cancel.cancel();
            // A client whose task already ended (after a panic) has nothing left to wait for.
            if peer.client.is_closed() {
                state.clients.remove(id);
            }
        }
    }

    /// The client for `id`: the local client for this capture, None for an unknown address
    /// (the caller retries later), otherwise a running remote client created on first use.
    pub fn client(&self, id: &str) -> Option<PeerClient> {
        if id == self.shared.self_id {
            return Some(PeerClient::Local(self.local.clone()));
        }
        if self.shared.cancel.is_cancelled() {
            return None;
        }
        let mut state = self.state();
        if let Some(peer) = state.clients.get(id) {
            return Some(PeerClient::Remote(peer.client.clone()));
        }
        let addr = state.addrs.get(id)?.clone();
        let client = MessageClient::with_faults(
            self.shared.self_id.clone(),
            id,
            self.shared.config.clone(),
            Arc::clone(&self.shared.metrics),
            Arc::clone(&self.shared.client_faults),
        );
        let cancel = self.shared.cancel.child_token();
        state.clients.insert(
            id.to_owned(),
            RemotePeer {
                client: client.clone(),
                cancel: cancel.clone(),
            },
        );
        let shared = Arc::clone(&self.shared);
        let peer_id = id.to_owned();
        let running = client.clone();
        self.shared.tasks.spawn(async move {
            let mut remove = RemoveOnExit {
                shared: &shared,
                peer_id: &peer_id,
                client: &running,
                keep: false,
            };
            // A panic is a bug; it still ends in the error channel and a closed client. That
            // closed client stays in the map until `remove_peer`: a fresh client would start
            // its sequences at 1 again, which the peer's server has already acknowledged and
            // would drop as duplicates. Failing every send loudly is better than that.
            let result = AssertUnwindSafe(running.run(&cancel, &addr))
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| {
                    remove.keep = true;
                    Err(Error::ClientPanicked {
                        receiver_id: peer_id.clone(),
                        message: panic_message(payload.as_ref()),
                    })
                });
            if let Err(err) = result {
                warn!(peer = %peer_id, error = %crate::error::report(&err), "p2p client stopped");
                // Capacity 1: extra errors are dropped, as in TiCDC.
                let _ = shared.errors_tx.try_send(err);
            }
        });
        Some(PeerClient::Remote(client))
    }

    /// The receiver of messages sent to oneself; pass it to `MessageServer::run`. Taken once.
    pub fn local_channel(&self) -> Option<LocalReceiver> {
        self.local_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Errors of clients that stopped (capacity 1; later errors are dropped). Taken once.
    pub fn errors(&self) -> Option<mpsc::Receiver<Error>> {
        self.errors_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Counters of all remote clients.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Stops every client and waits for their tasks. Idempotent.
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.state().clients.clear();
    }
}

/// Dropping the router stops its clients (without waiting for them; `close` waits), so that
/// no client outlives the router that owns it.
impl Drop for MessageRouter {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
    }
}
