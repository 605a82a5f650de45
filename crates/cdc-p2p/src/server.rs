//! The message server (§5.2): receives peers' streams and runs topic handlers in order.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use governor::{Quota, RateLimiter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::ack::AckManager;
use crate::config::ServerConfig;
use crate::error::{BoxError, Error, Result, report};
use crate::local::{LocalEntry, LocalReceiver};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::proto::{Ack, ExitReason, MessageEntry, MessagePacket, SendMessageResponse, StreamMeta};
use crate::stream_handle::{ResponseItem, StreamHandle, TrySendError};
use crate::topic::{Codec, Topic};

/// A sender's capture ID as handlers see it.
pub type SenderId = Arc<str>;

/// The response stream of one `SendMessage` RPC.
pub(crate) type ResponseStream = Pin<Box<dyn Stream<Item = ResponseItem> + Send>>;

/// Local messages are flushed to the main loop at this count, or every `LOCAL_FLUSH_INTERVAL`.
const LOCAL_BATCH_SIZE: usize = 1024;
const LOCAL_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How long a stopping server waits for its streams' receiving tasks, which end as soon as
/// they see the server closed.
const STREAMS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Receives a handler's terminal error: its own failure, `DataLost`, or `HandlerCancelled`
/// once it is removed.
pub type HandlerErrors = mpsc::Receiver<Error>;

/// The message server. Create it, share it in an `Arc`, `run` it once, and serve it through
/// a `ServerWrapper`.
pub struct MessageServer {
    server_id: String,
    config: ServerConfig,
    task_tx: mpsc::Sender<Task>,
    task_rx: Mutex<Option<mpsc::Receiver<Task>>>,
    /// Cancelled when `run` returns.
    closed: CancellationToken,
    acks: Arc<AckManager>,
    metrics: Arc<Metrics>,
    n_peers: watch::Sender<usize>,
    /// The streams' receiving tasks; `run` awaits them (bounded) when it ends.
    pub(crate) streams: TaskTracker,
    #[cfg(test)]
    pub(crate) inject_restart: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for MessageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageServer")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

enum Task {
    MessageBatch {
        sender_id: SenderId,
        epoch: i64,
        entries: Vec<MessageEntry>,
    },
    LocalBatch(Vec<LocalEntry>),
    RegisterHandler {
        topic: String,
        handler: Box<dyn ErasedHandler>,
        dead: Arc<AtomicBool>,
        done: oneshot::Sender<Result<()>>,
    },
    DeregisterHandler {
        topic: String,
        done: oneshot::Sender<()>,
    },
    RegisterPeer(StreamHandle),
    DeregisterPeer {
        sender_id: String,
    },
    #[cfg(test)]
    Block(oneshot::Receiver<()>),
}

impl MessageServer {
    /// A server for the capture `server_id`.
    pub fn new(server_id: impl Into<String>, config: ServerConfig) -> Self {
        let (task_tx, task_rx) = mpsc::channel(config.max_pending_task_count.max(1));
        MessageServer {
            server_id: server_id.into(),
            config,
            task_tx,
            task_rx: Mutex::new(Some(task_rx)),
            closed: CancellationToken::new(),
            acks: Arc::default(),
            metrics: Arc::default(),
            n_peers: watch::Sender::new(0),
            streams: TaskTracker::new(),
            #[cfg(test)]
            inject_restart: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// This server's capture ID.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The server's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The number of registered peers, updated by the main loop.
    pub fn n_peers(&self) -> watch::Receiver<usize> {
        self.n_peers.subscribe()
    }

    /// Whether `run` has returned.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Runs the main loop, the worker pool and the local receiver until `cancel` fires or an
    /// error occurs. Runs once; afterwards the server is closed and refuses streams.
    pub async fn run(
        &self,
        cancel: CancellationToken,
        local_rx: Option<LocalReceiver>,
    ) -> Result<()> {
        let task_rx = self
            .task_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(task_rx) = task_rx else {
            return Err(Error::AlreadyRunning);
        };
        let result = self.run_main(&cancel, task_rx, local_rx).await;
        self.closed.cancel();
        self.streams.close();
        if tokio::time::timeout(STREAMS_STOP_TIMEOUT, self.streams.wait())
            .await
            .is_err()
        {
            warn!(server_id = %self.server_id, remaining = self.streams.len(), "p2p stream tasks did not stop in time");
        }
        info!(server_id = %self.server_id, "message server stopped");
        result
    }

    async fn run_main(
        &self,
        cancel: &CancellationToken,
        mut task_rx: mpsc::Receiver<Task>,
        local_rx: Option<LocalReceiver>,
    ) -> Result<()> {
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let mut workers = Vec::with_capacity(self.config.worker_pool_size);
        for _ in 0..self.config.worker_pool_size.max(1) {
            let (tx, rx) = mpsc::channel(self.config.worker_queue_size.max(1));
            workers.push(tx);
            tasks.spawn(run_worker(
                rx,
                Arc::clone(&self.acks),
                Arc::clone(&self.metrics),
            ));
        }
        if let Some(local_rx) = local_rx {
            tasks.spawn(run_local_receiver(
                local_rx,
                self.task_tx.clone(),
                cancel.clone(),
            ));
        }
        let mut main = MainLoop {
            local_sender: Arc::from(self.server_id.as_str()),
            config: self.config.clone(),
            acks: Arc::clone(&self.acks),
            workers,
            next_worker: 0,
            handlers: HashMap::new(),
            peers: HashMap::new(),
            pending: HashMap::new(),
            n_peers: self.n_peers.clone(),
        };
        let mut ack_tick = tokio::time::interval(self.config.ack_interval);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return Err(err),
                    Err(join_err) => {
                        if join_err.is_panic() {
                            std::panic::resume_unwind(join_err.into_panic());
                        }
                        return Err(Error::ServerClosed);
                    }
                },
                _ = ack_tick.tick() => main.send_acks(),
                Some(task) = task_rx.recv() => {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Ok(()),
                        handled = main.handle_task(task, &mut tasks) => handled?,
                    }
                }
            }
        }
    }

    async fn enqueue(&self, task: Task, cancel: &CancellationToken) -> Result<()> {
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => Err(Error::ServerClosed),
            _ = cancel.cancelled() => Err(Error::Cancelled),
            sent = self.task_tx.send(task) => sent.map_err(|_| Error::ServerClosed),
        }
    }

    fn try_enqueue(&self, task: Task) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(Error::ServerClosed);
        }
        self.task_tx.try_send(task).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => Error::TaskQueueCongested,
            mpsc::error::TrySendError::Closed(_) => Error::ServerClosed,
        })
    }

    /// Schedules registering `handler` for `topic` without waiting. Returns a receiver that
    /// completes when the handler is registered, and the handler's error channel.
    ///
    /// The handler runs on one worker, one message at a time, in order per sender.
    pub fn add_handler<T, F, Fut>(
        &self,
        topic: &T,
        handler: F,
    ) -> Result<(oneshot::Receiver<Result<()>>, HandlerErrors)>
    where
        T: Topic,
        F: FnMut(SenderId, T::Message) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let (err_tx, err_rx) = mpsc::channel(1);
        let dead = Arc::new(AtomicBool::new(false));
        let erased = TypedHandler::<T, F> {
            topic: topic.name().to_owned(),
            handler,
            err_tx,
            _topic: std::marker::PhantomData,
        };
        let (done_tx, done_rx) = oneshot::channel();
        self.try_enqueue(Task::RegisterHandler {
            topic: topic.name().to_owned(),
            handler: Box::new(erased),
            dead,
            done: done_tx,
        })?;
        Ok((done_rx, err_rx))
    }

    /// Registers a handler and waits until it is in place.
    pub async fn sync_add_handler<T, F, Fut>(
        &self,
        topic: &T,
        handler: F,
        cancel: &CancellationToken,
    ) -> Result<HandlerErrors>
    where
        T: Topic,
        F: FnMut(SenderId, T::Message) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let (done, err_rx) = self.add_handler(topic, handler)?;
        tokio::select! {
            biased;
            registered = done => match registered {
                Ok(result) => result.map(|()| err_rx),
                Err(_) => Err(Error::ServerClosed),
            },
            _ = cancel.cancelled() => Err(Error::Cancelled),
            _ = self.closed.cancelled() => Err(Error::ServerClosed),
        }
    }

    /// Schedules removing the handler of `topic`. The receiver completes once the handler
    /// has finished (or after `wait_unregister_handle_timeout`). Unknown topics complete at once.
    pub fn remove_handler(&self, topic: &str) -> Result<oneshot::Receiver<()>> {
        let (done_tx, done_rx) = oneshot::channel();
        self.try_enqueue(Task::DeregisterHandler {
            topic: topic.to_owned(),
            done: done_tx,
        })?;
        Ok(done_rx)
    }

    /// Removes the handler of `topic` and waits. A closed server counts as success.
    pub async fn sync_remove_handler(&self, topic: &str, cancel: &CancellationToken) -> Result<()> {
        let done = match self.remove_handler(topic) {
            Ok(done) => done,
            Err(Error::ServerClosed) => return Ok(()),
            Err(err) => return Err(err),
        };
        tokio::select! {
            biased;
            _ = done => Ok(()),
            _ = cancel.cancelled() => Err(Error::Cancelled),
            _ = self.closed.cancelled() => Ok(()),
        }
    }

    /// Forgets a peer without notifying it; its stream stays open and its messages are
    /// dropped. Use it when a capture leaves, so that a frozen peer cannot block the server.
    ///
    /// The peer's buffered messages and its ack records go too (TiCDC keeps ack records for
    /// the server's lifetime). A capture ID names one incarnation (§6.3 gives every
    /// incarnation a new one), so once that capture is removed nothing legitimate sends
    /// with its ID again. Batches already queued on a worker may recreate a few records.
    pub fn schedule_deregister_peer_task(&self, sender_id: &str) -> Result<()> {
        self.try_enqueue(Task::DeregisterPeer {
            sender_id: sender_id.to_owned(),
        })
    }

    #[cfg(test)]
    pub(crate) fn block_main_loop(&self) -> Result<oneshot::Sender<()>> {
        let (tx, rx) = oneshot::channel();
        self.try_enqueue(Task::Block(rx))?;
        Ok(tx)
    }

    /// Serves one `SendMessage` stream. `stream_cancel` ends it (the wrapper's reset).
    pub(crate) fn accept_stream(
        self: &Arc<Self>,
        inbound: Streaming<MessagePacket>,
        stream_cancel: CancellationToken,
    ) -> std::result::Result<ResponseStream, Status> {
        if self.closed.is_cancelled() {
            return Err(Status::aborted("message server is closing"));
        }
        let (tx, rx) = mpsc::channel(self.config.send_channel_size.max(1));
        let conn_cancel = stream_cancel.child_token();
        let handle_closed = CancellationToken::new();
        let server = Arc::clone(self);
        let task_cancel = conn_cancel.clone();
        let task_closed = handle_closed.clone();
        self.streams.spawn(async move {
            server
                .serve_stream(inbound, tx, task_cancel, task_closed)
                .await;
        });
        let rate =
            NonZeroU32::new(self.config.send_rate_limit_per_stream).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN));
        let state = ResponseState {
            rx,
            handle_closed,
            server_closed: self.closed.clone(),
            stream_cancel,
            limiter,
            _conn_guard: conn_cancel.drop_guard(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_response)))
    }

    async fn serve_stream(
        &self,
        mut inbound: Streaming<MessagePacket>,
        tx: mpsc::Sender<ResponseItem>,
        cancel: CancellationToken,
        handle_closed: CancellationToken,
    ) {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = self.closed.cancelled() => return,
            first = inbound.message() => first,
        };
        let packet = match first {
            Ok(Some(packet)) => packet,
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "p2p stream failed before its meta");
                return;
            }
        };
        let meta = match self.check_meta(packet.meta) {
            Ok(meta) => meta,
            Err(err) => {
                warn!(error = %report(&err), "p2p stream refused");
                let response = error_response(&err);
                let status = Status::failed_precondition(err.wire_message());
                // One response, then the error; the channel is fresh, so both fit.
                let _ = tx.try_send(Ok(response));
                let _ = tx.try_send(Err(status));
                handle_closed.cancel();
                return;
            }
        };
        let sender_id: SenderId = Arc::from(meta.sender_id.as_str());
        let epoch = meta.epoch;
        let handle = StreamHandle::with_closed(meta, tx, handle_closed);
        debug!(%sender_id, epoch, "p2p stream opened");
        if self
            .enqueue(Task::RegisterPeer(handle.clone()), &cancel)
            .await
            .is_err()
        {
            handle.close();
            return;
        }
        let result = self
            .receive_packets(&mut inbound, &handle, &sender_id, epoch, &cancel)
            .await;
        if let Err(err) = result {
            debug!(%sender_id, epoch, error = %report(&err), "p2p stream ended");
            let _ = handle.try_send(Ok(error_response(&err)));
        }
        handle.close();
    }

    async fn receive_packets(
        &self,
        inbound: &mut Streaming<MessagePacket>,
        handle: &StreamHandle,
        sender_id: &SenderId,
        epoch: i64,
        cancel: &CancellationToken,
    ) -> Result<()> {
        loop {
            let packet = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = self.closed.cancelled() => return Ok(()),
                _ = handle.closed_token().cancelled() => return Ok(()),
                packet = inbound.message() => packet,
            };
            let packet = match packet {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(status) => {
                    return Err(Error::Stream {
                        source: Box::new(status),
                    });
                }
            };
            if packet.entries.is_empty() {
                continue;
            }
            #[cfg(test)]
            self.maybe_inject_restart(handle)?;
            let task = Task::MessageBatch {
                sender_id: Arc::clone(sender_id),
                epoch,
                entries: packet.entries,
            };
            // Blocking here stops reading the stream: gRPC flow control pushes back.
            tokio::select! {
                biased;
                _ = handle.closed_token().cancelled() => return Ok(()),
                sent = self.enqueue(task, cancel) => match sent {
                    Ok(()) => {}
                    Err(Error::Cancelled | Error::ServerClosed) => return Ok(()),
                    Err(err) => return Err(err),
                },
            }
        }
    }

    #[cfg(test)]
    fn maybe_inject_restart(&self, handle: &StreamHandle) -> Result<()> {
        let per_mille = self.inject_restart.load(Ordering::Relaxed);
        if per_mille > 0 && rand::random_range(0..1000) < per_mille {
            let congested = Error::TopicCongested {
                topic: "injected".to_owned(),
            };
            let _ = handle.try_send(Ok(error_response(&congested)));
            return Err(Error::InjectedServerRestart);
        }
        Ok(())
    }

    fn check_meta(&self, meta: Option<StreamMeta>) -> Result<StreamMeta> {
        let meta = meta.ok_or(Error::IllegalMeta)?;
        if meta.receiver_id != self.server_id {
            return Err(Error::ReceiverMismatch {
                expected: self.server_id.clone(),
                actual: meta.receiver_id,
            });
        }
        Ok(meta)
    }
}

struct ResponseState {
    rx: mpsc::Receiver<ResponseItem>,
    handle_closed: CancellationToken,
    server_closed: CancellationToken,
    stream_cancel: CancellationToken,
    limiter: governor::DefaultDirectRateLimiter,
    /// Dropping the response stream (the RPC ended) stops the stream's receiving task.
    _conn_guard: tokio_util::sync::DropGuard,
    done: bool,
}

async fn next_response(mut state: ResponseState) -> Option<(ResponseItem, ResponseState)> {
    if state.done {
        return None;
    }
    let item = tokio::select! {
        biased;
        _ = state.stream_cancel.cancelled() => {
            state.done = true;
            Err(Status::cancelled("message server stream cancelled"))
        }
        _ = state.server_closed.cancelled() => {
            state.done = true;
            Err(Status::aborted("message server is closing"))
        }
        item = state.rx.recv() => item?,
        _ = state.handle_closed.cancelled() => state.rx.try_recv().ok()?,
    };
    if item.is_err() {
        state.done = true;
    } else {
        state.limiter.until_ready().await;
    }
    Some((item, state))
}

fn error_response(err: &Error) -> SendMessageResponse {
    SendMessageResponse {
        ack: Vec::new(),
        exit_reason: err.exit_reason() as i32,
        error_message: err.wire_message(),
    }
}

struct HandlerEntry {
    id: u64,
    worker: usize,
    cancelled: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
}

impl HandlerEntry {
    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire) && !self.cancelled.load(Ordering::Acquire)
    }
}

struct Peer {
    epoch: i64,
    handle: StreamHandle,
}

enum PendingEntry {
    Remote { epoch: i64, entry: MessageEntry },
    Local(Box<dyn Any + Send>),
}

struct MainLoop {
    local_sender: SenderId,
    config: ServerConfig,
    acks: Arc<AckManager>,
    workers: Vec<mpsc::Sender<WorkerEvent>>,
    next_worker: usize,
    handlers: HashMap<String, HandlerEntry>,
    peers: HashMap<String, Peer>,
    /// Messages of topics without a handler: sender -> topic -> entries in arrival order.
    /// A sender's entries go when it is deregistered, aborted or replaced by a newer epoch
    /// (its client resends them, as they were never acked); a sender has at most
    /// `max_pending_topic_count_per_sender` topics here.
    pending: HashMap<SenderId, HashMap<String, Vec<PendingEntry>>>,
    n_peers: watch::Sender<usize>,
}

impl MainLoop {
    async fn handle_task(&mut self, task: Task, tasks: &mut JoinSet<Result<()>>) -> Result<()> {
        match task {
            Task::MessageBatch {
                sender_id,
                epoch,
                entries,
            } => self.handle_messages(&sender_id, epoch, entries).await,
            Task::LocalBatch(entries) => self.handle_local(entries).await,
            Task::RegisterHandler {
                topic,
                handler,
                dead,
                done,
            } => {
                let result = self.register_handler(topic, handler, dead).await;
                let _ = done.send(result);
                Ok(())
            }
            Task::DeregisterHandler { topic, done } => {
                self.deregister_handler(&topic, done, tasks);
                Ok(())
            }
            Task::RegisterPeer(handle) => {
                self.register_peer(handle);
                Ok(())
            }
            Task::DeregisterPeer { sender_id } => {
                if self.forget_peer(&sender_id).is_some() {
                    info!(%sender_id, "p2p peer deregistered");
                    self.publish_n_peers();
                }
                // The capture is gone for good (see `schedule_deregister_peer_task`).
                self.acks.remove_node(&sender_id);
                Ok(())
            }
            #[cfg(test)]
            Task::Block(unblock) => {
                let _ = unblock.await;
                Ok(())
            }
        }
    }

    fn publish_n_peers(&self) {
        self.n_peers.send_replace(self.peers.len());
    }

    /// Removes a peer from the registry and drops its buffered messages.
    fn forget_peer(&mut self, sender_id: &str) -> Option<Peer> {
        self.pending.remove(sender_id);
        self.peers.remove(sender_id)
    }

    fn register_peer(&mut self, handle: StreamHandle) {
        let sender_id = handle.meta().sender_id.clone();
        let epoch = handle.meta().epoch;
        match self.peers.get(&sender_id) {
            None => {
                if self.peers.len() > self.config.max_peer_count {
                    // TiCDC stops the whole server here; refusing the stream is enough.
                    let err = Error::TooManyPeers {
                        n_peers: self.peers.len(),
                    };
                    warn!(%sender_id, "p2p stream refused: too many peers");
                    let _ = handle.try_send(Ok(error_response(&err)));
                    handle.close();
                    return;
                }
            }
            Some(peer) if peer.epoch > epoch => {
                let err = Error::StaleConnection {
                    sender_id: sender_id.clone(),
                    epoch,
                };
                let _ = handle.try_send(Ok(error_response(&err)));
                handle.close();
                return;
            }
            Some(peer) if peer.epoch == epoch => {
                let err = Error::DuplicateConnection {
                    sender_id: sender_id.clone(),
                    epoch,
                };
                let _ = handle.try_send(Ok(error_response(&err)));
                handle.close();
                return;
            }
            Some(peer) => {
                let err = Error::StaleConnection {
                    sender_id: sender_id.clone(),
                    epoch: peer.epoch,
                };
                let _ = peer.handle.try_send(Ok(error_response(&err)));
                peer.handle.close();
                // Buffered messages of the old epoch would be dropped on replay anyway.
                self.pending.remove(sender_id.as_str());
            }
        }
        debug!(%sender_id, epoch, "p2p peer registered");
        self.peers.insert(sender_id, Peer { epoch, handle });
        self.publish_n_peers();
    }

    /// Ends a peer's stream with `err` and forgets the peer.
    fn abort_peer(&mut self, sender_id: &str, err: &Error) {
        if let Some(peer) = self.forget_peer(sender_id) {
            warn!(%sender_id, error = %report(err), "p2p peer aborted");
            let _ = peer.handle.try_send(Ok(error_response(err)));
            peer.handle.close();
            self.publish_n_peers();
        }
    }

    fn send_acks(&mut self) {
        let mut gone = Vec::new();
        for (sender_id, peer) in &self.peers {
            let mut acks = Vec::new();
            self.acks.range(sender_id, |topic, last_seq| {
                acks.push(Ack {
                    topic: topic.to_owned(),
                    last_seq,
                });
                true
            });
            if acks.is_empty() {
                continue;
            }
            let response = SendMessageResponse {
                ack: acks,
                exit_reason: ExitReason::Ok as i32,
                error_message: String::new(),
            };
            // Acks are cumulative: a full channel (a frozen peer) skips this tick instead of
            // blocking the main loop.
            if let Err(TrySendError::Closed) = peer.handle.try_send(Ok(response)) {
                gone.push(sender_id.clone());
            }
        }
        for sender_id in gone {
            debug!(%sender_id, "p2p peer stream closed");
            self.forget_peer(&sender_id);
        }
        self.publish_n_peers();
    }

    fn peer_is_current(&self, sender_id: &str, epoch: i64) -> bool {
        self.peers
            .get(sender_id)
            .is_some_and(|peer| peer.epoch == epoch && !peer.handle.is_closed())
    }

    /// Returns the live handler of `topic`, forgetting it if it died.
    fn live_handler(&mut self, topic: &str) -> Option<(u64, usize)> {
        let entry = self.handlers.get(topic)?;
        if entry.is_alive() {
            return Some((entry.id, entry.worker));
        }
        self.handlers.remove(topic);
        None
    }

    async fn send_to_worker(&mut self, worker: usize, event: WorkerEvent) -> Result<()> {
        self.workers[worker]
            .send(event)
            .await
            .map_err(|_| Error::ServerClosed)
    }

    async fn handle_messages(
        &mut self,
        sender_id: &SenderId,
        epoch: i64,
        entries: Vec<MessageEntry>,
    ) -> Result<()> {
        if !self.peer_is_current(sender_id, epoch) {
            return Ok(());
        }
        // Split by topic, keeping arrival order within each topic. A batch of one topic (the
        // common case) moves on whole.
        let mut by_topic: Vec<(String, Vec<MessageEntry>)> = Vec::new();
        let single_topic = entries
            .first()
            .filter(|first| entries.iter().all(|entry| entry.topic == first.topic))
            .map(|first| first.topic.clone());
        match single_topic {
            Some(topic) => by_topic.push((topic, entries)),
            None => {
                for entry in entries {
                    match by_topic.iter_mut().find(|(topic, _)| *topic == entry.topic) {
                        Some((_, group)) => group.push(entry),
                        None => by_topic.push((entry.topic.clone(), vec![entry])),
                    }
                }
            }
        }
        for (topic, group) in by_topic {
            if let Some((id, worker)) = self.live_handler(&topic) {
                let event = WorkerEvent::Remote {
                    id,
                    sender_id: Arc::clone(sender_id),
                    entries: group,
                };
                self.send_to_worker(worker, event).await?;
                continue;
            }
            let limit = self.config.max_pending_message_count_per_topic;
            let topic_limit = self.config.max_pending_topic_count_per_sender;
            let topics = self.pending.entry(Arc::clone(sender_id)).or_default();
            if !topics.contains_key(&topic) && topics.len() >= topic_limit {
                let err = Error::TooManyPendingTopics {
                    sender_id: sender_id.to_string(),
                    limit: topic_limit,
                };
                self.abort_peer(sender_id, &err);
                return Ok(());
            }
            let buffer = topics.entry(topic.clone()).or_default();
            for entry in group {
                if buffer.len() > limit {
                    // Aborting drops the sender's buffers.
                    self.abort_peer(sender_id, &Error::TopicCongested { topic });
                    return Ok(());
                }
                buffer.push(PendingEntry::Remote { epoch, entry });
            }
        }
        Ok(())
    }

    async fn handle_local(&mut self, entries: Vec<LocalEntry>) -> Result<()> {
        for LocalEntry { topic, value } in entries {
            if let Some((id, worker)) = self.live_handler(&topic) {
                let event = WorkerEvent::Local {
                    id,
                    sender_id: Arc::clone(&self.local_sender),
                    value,
                };
                self.send_to_worker(worker, event).await?;
                continue;
            }
            let topics = self
                .pending
                .entry(Arc::clone(&self.local_sender))
                .or_default();
            if !topics.contains_key(&topic)
                && topics.len() >= self.config.max_pending_topic_count_per_sender
            {
                warn!(%topic, "local message for a topic without handler dropped: too many such topics");
                continue;
            }
            let buffer = topics.entry(topic.clone()).or_default();
            buffer.push(PendingEntry::Local(value));
            if buffer.len() >= self.config.max_pending_message_count_per_topic {
                warn!(%topic, "local messages for a topic without handler dropped");
                buffer.clear();
            }
        }
        Ok(())
    }

    async fn register_handler(
        &mut self,
        topic: String,
        handler: Box<dyn ErasedHandler>,
        dead: Arc<AtomicBool>,
    ) -> Result<()> {
        if self.live_handler(&topic).is_some() {
            return Err(Error::HandlerExists { topic });
        }
        let id = self.next_handler_id();
        let worker = self.next_worker % self.workers.len();
        self.next_worker = self.next_worker.wrapping_add(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        self.send_to_worker(
            worker,
            WorkerEvent::Register {
                id,
                handler,
                cancelled: Arc::clone(&cancelled),
                dead: Arc::clone(&dead),
            },
        )
        .await?;
        self.handlers.insert(
            topic.clone(),
            HandlerEntry {
                id,
                worker,
                cancelled,
                dead,
            },
        );
        debug!(%topic, "p2p handler registered");
        // Replay what arrived before the handler, sender by sender.
        let mut buffered = Vec::new();
        self.pending.retain(|sender_id, topics| {
            if let Some(entries) = topics.remove(&topic) {
                buffered.push((Arc::clone(sender_id), entries));
            }
            !topics.is_empty()
        });
        for (sender_id, entries) in buffered {
            let mut remote = Vec::new();
            let mut remote_epoch = None;
            for pending in entries {
                match pending {
                    PendingEntry::Remote { epoch, entry } => {
                        if remote_epoch.is_some_and(|current| current != epoch) {
                            let batch = std::mem::take(&mut remote);
                            self.handle_messages(&sender_id, remote_epoch.unwrap_or(epoch), batch)
                                .await?;
                        }
                        remote_epoch = Some(epoch);
                        remote.push(entry);
                    }
                    PendingEntry::Local(value) => {
                        self.handle_local(vec![LocalEntry {
                            topic: topic.clone(),
                            value,
                        }])
                        .await?;
                    }
                }
            }
            if let Some(epoch) = remote_epoch {
                self.handle_messages(&sender_id, epoch, remote).await?;
            }
        }
        Ok(())
    }

    fn next_handler_id(&mut self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn deregister_handler(
        &mut self,
        topic: &str,
        done: oneshot::Sender<()>,
        tasks: &mut JoinSet<Result<()>>,
    ) {
        let Some(entry) = self.handlers.remove(topic) else {
            let _ = done.send(());
            return;
        };
        entry.cancelled.store(true, Ordering::Release);
        let worker = self.workers[entry.worker].clone();
        let timeout = self.config.wait_unregister_handle_timeout;
        let topic = topic.to_owned();
        tasks.spawn(async move {
            let (unregistered_tx, unregistered_rx) = oneshot::channel();
            let unregister = async {
                if worker
                    .send(WorkerEvent::Unregister {
                        id: entry.id,
                        done: unregistered_tx,
                    })
                    .await
                    .is_ok()
                {
                    let _ = unregistered_rx.await;
                }
            };
            if tokio::time::timeout(timeout, unregister).await.is_err() {
                warn!(%topic, "p2p handler did not finish in time after removal");
            }
            let _ = done.send(());
            Ok(())
        });
    }
}

enum WorkerEvent {
    Register {
        id: u64,
        handler: Box<dyn ErasedHandler>,
        cancelled: Arc<AtomicBool>,
        dead: Arc<AtomicBool>,
    },
    Remote {
        id: u64,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    },
    Local {
        id: u64,
        sender_id: SenderId,
        value: Box<dyn Any + Send>,
    },
    Unregister {
        id: u64,
        done: oneshot::Sender<()>,
    },
}

struct WorkerSlot {
    handler: Box<dyn ErasedHandler>,
    cancelled: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
}

async fn run_worker(
    mut events: mpsc::Receiver<WorkerEvent>,
    acks: Arc<AckManager>,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let mut slots: HashMap<u64, WorkerSlot> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            WorkerEvent::Register {
                id,
                handler,
                cancelled,
                dead,
            } => {
                slots.insert(
                    id,
                    WorkerSlot {
                        handler,
                        cancelled,
                        dead,
                    },
                );
            }
            WorkerEvent::Remote {
                id,
                sender_id,
                entries,
            } => {
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                let context = HandlerContext {
                    acks: &acks,
                    metrics: &metrics,
                    cancelled: &slot.cancelled,
                };
                if let Err(err) = slot
                    .handler
                    .handle_remote(context, sender_id, entries)
                    .await
                {
                    fail_handler(&mut slots, id, err);
                }
            }
            WorkerEvent::Local {
                id,
                sender_id,
                value,
            } => {
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                if slot.cancelled.load(Ordering::Acquire) {
                    continue;
                }
                if let Err(err) = slot.handler.handle_local(sender_id, value).await {
                    fail_handler(&mut slots, id, err);
                }
            }
            WorkerEvent::Unregister { id, done } => {
                if let Some(slot) = slots.remove(&id) {
                    slot.handler.report(Error::HandlerCancelled);
                }
                let _ = done.send(());
            }
        }
    }
    Ok(())
}

fn fail_handler(slots: &mut HashMap<u64, WorkerSlot>, id: u64, err: Error) {
    if let Some(slot) = slots.remove(&id) {
        warn!(error = %report(&err), "p2p handler failed");
        slot.dead.store(true, Ordering::Release);
        slot.handler.report(err);
    }
}

struct HandlerContext<'a> {
    acks: &'a AckManager,
    metrics: &'a Metrics,
    cancelled: &'a AtomicBool,
}

trait ErasedHandler: Send {
    fn handle_remote<'a>(
        &'a mut self,
        context: HandlerContext<'a>,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    ) -> BoxFuture<'a, Result<()>>;

    fn handle_local(
        &mut self,
        sender_id: SenderId,
        value: Box<dyn Any + Send>,
    ) -> BoxFuture<'_, Result<()>>;

    /// Delivers the handler's terminal error to its error channel.
    fn report(&self, err: Error);
}

struct TypedHandler<T, F> {
    topic: String,
    handler: F,
    err_tx: mpsc::Sender<Error>,
    _topic: std::marker::PhantomData<fn() -> T>,
}

impl<T, F, Fut> ErasedHandler for TypedHandler<T, F>
where
    T: Topic,
    F: FnMut(SenderId, T::Message) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn handle_remote<'a>(
        &'a mut self,
        context: HandlerContext<'a>,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // One lookup per batch; each processed message is then acked by a plain store.
            let ack = context.acks.cell(&sender_id, &self.topic);
            let mut last = ack.load();
            for entry in entries {
                if context.cancelled.load(Ordering::Acquire) {
                    return Ok(());
                }
                if entry.sequence <= last {
                    context.metrics.add_repeated(1);
                    continue;
                }
                if last != 0 && entry.sequence > last + 1 {
                    return Err(Error::DataLost {
                        topic: self.topic.clone(),
                        expected_seq: last + 1,
                        got_seq: entry.sequence,
                    });
                }
                let message = decode::<T>(&self.topic, entry.content)?;
                (self.handler)(Arc::clone(&sender_id), message)
                    .await
                    .map_err(|source| Error::Handler {
                        topic: self.topic.clone(),
                        source,
                    })?;
                last = entry.sequence;
                ack.store(last);
                context.metrics.add_received(1);
            }
            Ok(())
        })
    }

    fn handle_local(
        &mut self,
        sender_id: SenderId,
        value: Box<dyn Any + Send>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let message = value.downcast::<T::Message>().map_err(|_| Error::Decode {
                topic: self.topic.clone(),
                source: "local message of another type".into(),
            })?;
            (self.handler)(sender_id, *message)
                .await
                .map_err(|source| Error::Handler {
                    topic: self.topic.clone(),
                    source,
                })
        })
    }

    fn report(&self, err: Error) {
        let _ = self.err_tx.try_send(err);
    }
}

fn decode<T: Topic>(topic: &str, payload: Bytes) -> Result<T::Message> {
    T::Codec::decode(payload).map_err(|source| Error::Decode {
        topic: topic.to_owned(),
        source,
    })
}

async fn run_local_receiver(
    mut local_rx: LocalReceiver,
    task_tx: mpsc::Sender<Task>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut batch = Vec::with_capacity(LOCAL_BATCH_SIZE);
    let mut tick = tokio::time::interval(LOCAL_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The flush follows the first message of a batch by one interval; an idle receiver
        // does not wake at the flush interval.
        let was_empty = batch.is_empty();
        let flush = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            received = local_rx.recv_many(&mut batch, LOCAL_BATCH_SIZE) => {
                if received == 0 {
                    return Err(Error::ServerClosed);
                }
                if was_empty {
                    tick.reset();
                }
                batch.len() >= LOCAL_BATCH_SIZE
            }
            _ = tick.tick(), if !was_empty => true,
        };
        if flush {
            let task = Task::LocalBatch(std::mem::replace(
                &mut batch,
                Vec::with_capacity(LOCAL_BATCH_SIZE),
            ));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                sent = task_tx.send(task) => sent.map_err(|_| Error::ServerClosed)?,
            }
        }
    }
}
