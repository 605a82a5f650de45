//! The message server (§5.2): receives peers' streams and runs topic handlers in order.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt as _, Stream};
use governor::{Quota, RateLimiter};
use tokio::sync::{Notify, mpsc, oneshot, watch};
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

/// Receives a handler's terminal error: its own failure, `DataLost`, `HandlerPanicked`, or
/// `HandlerCancelled` once it is removed. A failed handler stays registered (its topic's
/// messages end their senders' streams with `HandlerDead`) until it is removed or replaced.
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
    /// Notified by `deregister_peer`; the main loop then closes the deregistered streams.
    deregistered: Notify,
    metrics: Arc<Metrics>,
    n_peers: watch::Sender<usize>,
    /// The streams' receiving tasks; `run` awaits them (bounded) when it ends.
    pub(crate) streams: TaskTracker,
    #[cfg(test)]
    pub(crate) inject_restart: std::sync::atomic::AtomicU32,
    /// The number of registered handlers (dead ones included), updated by the main loop.
    #[cfg(test)]
    pub(crate) n_handlers: watch::Sender<usize>,
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
    #[cfg(test)]
    Block {
        entered: oneshot::Sender<()>,
        unblock: oneshot::Receiver<()>,
    },
}

impl MessageServer {
    /// A server for the capture `server_id`.
    pub fn new(server_id: impl Into<String>, config: ServerConfig) -> Self {
        let (task_tx, task_rx) = mpsc::channel(config.max_pending_task_count.max(1));
        let acks = Arc::new(AckManager::new(config.max_deregistered_senders));
        MessageServer {
            server_id: server_id.into(),
            config,
            task_tx,
            task_rx: Mutex::new(Some(task_rx)),
            closed: CancellationToken::new(),
            acks,
            deregistered: Notify::new(),
            metrics: Arc::default(),
            n_peers: watch::Sender::new(0),
            streams: TaskTracker::new(),
            #[cfg(test)]
            inject_restart: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            n_handlers: watch::Sender::new(0),
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

    /// The number of (sender, topic) ack records.
    #[cfg(test)]
    pub(crate) fn n_ack_records(&self) -> usize {
        self.acks.n_records()
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
        let mut tasks: Tasks = JoinSet::new();
        let mut workers = Vec::with_capacity(self.config.worker_pool_size);
        for _ in 0..self.config.worker_pool_size.max(1) {
            let (tx, rx) = mpsc::channel(self.config.worker_queue_size.max(1));
            workers.push(tx);
            let worker = run_worker(rx, Arc::clone(&self.acks), Arc::clone(&self.metrics));
            tasks.spawn(worker.map(|result| result.map(|()| None)));
        }
        if let Some(local_rx) = local_rx {
            let receiver = run_local_receiver(local_rx, self.task_tx.clone(), cancel.clone());
            tasks.spawn(receiver.map(|result| result.map(|()| None)));
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
            removed_topics: HashMap::new(),
            #[cfg(test)]
            n_handlers: self.n_handlers.clone(),
        };
        let mut ack_tick = tokio::time::interval(self.config.ack_interval);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(gone))) => main.handler_gone(gone),
                    Ok(Err(err)) => return Err(err),
                    Err(join_err) => {
                        if join_err.is_panic() {
                            std::panic::resume_unwind(join_err.into_panic());
                        }
                        return Err(Error::ServerClosed);
                    }
                },
                _ = ack_tick.tick() => main.send_acks(),
                () = self.deregistered.notified() => main.close_deregistered(),
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

    /// Deregisters a peer whose capture left the cluster: from now on its streams are
    /// refused (`SenderDeregistered`, exit reason CAPTURE_SUICIDE) and its messages dropped,
    /// and its open stream is closed by the main loop. Never blocks and cannot be lost to a
    /// full task queue, so a frozen peer is deregistered whatever the server's load.
    ///
    /// The peer's ack records give way to a tombstone kept for the server's life (up to
    /// `ServerConfig::max_deregistered_senders`): a capture ID names one incarnation, so
    /// nothing legitimate sends with it again, while a frozen incarnation that resumes would
    /// otherwise start its sequences over and see messages handled twice (TiCDC's
    /// `pkg/p2p/server.go` leaves this as a TODO).
    pub fn deregister_peer(&self, sender_id: &str) {
        if self.acks.tombstone(sender_id) {
            info!(%sender_id, "p2p peer deregistered");
        }
        self.deregistered.notify_one();
    }

    /// Queues a task that blocks the main loop until the returned sender fires or drops;
    /// the returned receiver completes once the main loop has reached it.
    #[cfg(test)]
    pub(crate) fn block_main_loop(&self) -> Result<(oneshot::Sender<()>, oneshot::Receiver<()>)> {
        let (unblock_tx, unblock_rx) = oneshot::channel();
        let (entered_tx, entered_rx) = oneshot::channel();
        self.try_enqueue(Task::Block {
            entered: entered_tx,
            unblock: unblock_rx,
        })?;
        Ok((unblock_tx, entered_rx))
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
        if self.acks.is_tombstoned(&meta.sender_id) {
            return Err(Error::SenderDeregistered {
                sender_id: meta.sender_id,
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
    /// Topics whose handler was removed, until their ack records are trimmed.
    removed_topics: HashMap<String, RemovedTopic>,
    #[cfg(test)]
    n_handlers: watch::Sender<usize>,
}

impl MainLoop {
    async fn handle_task(&mut self, task: Task, tasks: &mut Tasks) -> Result<()> {
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
            #[cfg(test)]
            Task::Block { entered, unblock } => {
                let _ = entered.send(());
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
        if self.acks.is_tombstoned(&sender_id) {
            // Deregistered after the stream's meta was checked.
            let err = Error::SenderDeregistered { sender_id };
            let _ = handle.try_send(Ok(error_response(&err)));
            handle.close();
            return;
        }
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

    /// Closes the streams and drops the buffered messages of deregistered senders.
    fn close_deregistered(&mut self) {
        let deregistered: Vec<String> = self
            .peers
            .keys()
            .filter(|sender_id| self.acks.is_tombstoned(sender_id))
            .cloned()
            .collect();
        for sender_id in deregistered {
            let err = Error::SenderDeregistered {
                sender_id: sender_id.clone(),
            };
            self.abort_peer(&sender_id, &err);
        }
        let acks = &self.acks;
        self.pending
            .retain(|sender_id, _| !acks.is_tombstoned(sender_id));
    }

    fn send_acks(&mut self) {
        let trimmed = self.trim_removed_topics();
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
            if acks.is_empty() && trimmed.binary_search(sender_id).is_err() {
                continue;
            }
            let acked_removed: Vec<String> = if self.removed_topics.is_empty() {
                Vec::new()
            } else {
                acks.iter()
                    .filter(|ack| self.removed_topics.contains_key(&ack.topic))
                    .map(|ack| ack.topic.clone())
                    .collect()
            };
            let response = SendMessageResponse {
                ack: acks,
                exit_reason: ExitReason::Ok as i32,
                error_message: String::new(),
            };
            // Acks are cumulative: a full channel (a frozen peer) skips this tick instead of
            // blocking the main loop.
            match peer.handle.try_send(Ok(response)) {
                Ok(()) => {
                    for topic in acked_removed {
                        if let Some(removed) = self.removed_topics.get_mut(&topic) {
                            removed.acked.insert(sender_id.clone(), peer.epoch);
                        }
                    }
                }
                Err(TrySendError::Full) => {}
                Err(TrySendError::Closed) => gone.push(sender_id.clone()),
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

    /// The handler of `topic`. A handler that failed (or panicked) stays registered as dead
    /// until it is removed or replaced, so that its topic's messages end their sender's
    /// stream instead of being buffered: TiCDC's worker pool refuses events for a handle that
    /// has exited, and `pkg/p2p/server.go` then ends the peer's stream with that error. The
    /// client resends those messages (never acked) once it reconnects.
    fn handler(&self, topic: &str) -> HandlerLookup {
        match self.handlers.get(topic) {
            Some(entry) if entry.is_alive() => HandlerLookup::Live {
                id: entry.id,
                worker: entry.worker,
            },
            Some(_) => HandlerLookup::Dead,
            None => HandlerLookup::Missing,
        }
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
            match self.handler(&topic) {
                HandlerLookup::Live { id, worker } => {
                    let event = WorkerEvent::Remote {
                        id,
                        sender_id: Arc::clone(sender_id),
                        entries: group,
                    };
                    self.send_to_worker(worker, event).await?;
                    continue;
                }
                HandlerLookup::Dead => {
                    // Aborting forgets the peer, so the rest of the batch goes too.
                    self.abort_peer(sender_id, &Error::HandlerDead { topic });
                    return Ok(());
                }
                HandlerLookup::Missing => {}
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
            match self.handler(&topic) {
                HandlerLookup::Live { id, worker } => {
                    let event = WorkerEvent::Local {
                        id,
                        sender_id: Arc::clone(&self.local_sender),
                        value,
                    };
                    self.send_to_worker(worker, event).await?;
                    continue;
                }
                HandlerLookup::Dead => {
                    warn!(%topic, "local message for a failed handler dropped");
                    continue;
                }
                HandlerLookup::Missing => {}
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
        // A dead handler is replaced.
        if let HandlerLookup::Live { .. } = self.handler(&topic) {
            return Err(Error::HandlerExists { topic });
        }
        // The new handler continues from the records a removed one left.
        self.removed_topics.remove(&topic);
        let id = self.next_handler_id();
        let worker = self.next_worker % self.workers.len();
        self.next_worker = self.next_worker.wrapping_add(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        self.send_to_worker(
            worker,
            WorkerEvent::Register {
                id,
                topic: Arc::from(topic.as_str()),
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
        #[cfg(test)]
        self.n_handlers.send_replace(self.handlers.len());
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

    fn deregister_handler(&mut self, topic: &str, done: oneshot::Sender<()>, tasks: &mut Tasks) {
        let Some(entry) = self.handlers.remove(topic) else {
            let _ = done.send(());
            return;
        };
        entry.cancelled.store(true, Ordering::Release);
        #[cfg(test)]
        self.n_handlers.send_replace(self.handlers.len());
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
                    .is_err()
                {
                    return false;
                }
                unregistered_rx.await.unwrap_or(false)
            };
            let clean = match tokio::time::timeout(timeout, unregister).await {
                Ok(clean) => clean,
                Err(_) => {
                    warn!(%topic, "p2p handler did not finish in time after removal");
                    false
                }
            };
            Ok(Some(HandlerGone { topic, clean, done }))
        });
    }

    /// A removed handler has finished. If it left no message unprocessed, its topic's ack
    /// records are trimmed once the topic has stayed without handler for
    /// `ServerConfig::removed_topic_linger` (see `trim_removed_topics`); otherwise they stay,
    /// so that a later handler of the topic still detects the gap (`DataLost`).
    fn handler_gone(&mut self, gone: HandlerGone) {
        let HandlerGone { topic, clean, done } = gone;
        if clean && !self.handlers.contains_key(&topic) {
            self.removed_topics.insert(
                topic,
                RemovedTopic {
                    since: tokio::time::Instant::now(),
                    acked: HashMap::new(),
                },
            );
        }
        let _ = done.send(());
    }

    /// Trims the ack records of topics removed at least `removed_topic_linger` ago, sender by
    /// sender, so that topics named per changefeed do not accumulate.
    ///
    /// A sender's record goes only once an ack set holding it was queued to the sender's
    /// current stream after the removal: its client then holds nothing of the topic that the
    /// handler processed, and, seeing later ack sets without the topic, trims its own state
    /// (`MessageClient`) and starts the topic over at sequence 1, which the trimmed server
    /// accepts as new. Returns the senders that lost a record, which are sent an ack set at
    /// once (possibly empty) so that their clients learn it.
    fn trim_removed_topics(&mut self) -> Vec<String> {
        let mut trimmed_senders = Vec::new();
        if self.removed_topics.is_empty() {
            return trimmed_senders;
        }
        let now = tokio::time::Instant::now();
        let linger = self.config.removed_topic_linger;
        let peers = &self.peers;
        let acks = &self.acks;
        self.removed_topics.retain(|topic, removed| {
            if now.duration_since(removed.since) < linger {
                return true;
            }
            let mut remaining = false;
            for sender_id in acks.senders_of(topic) {
                let delivered = removed.acked.get(sender_id.as_str()).is_some_and(|epoch| {
                    peers
                        .get(&sender_id)
                        .is_some_and(|peer| peer.epoch == *epoch)
                });
                if delivered {
                    acks.remove(&sender_id, topic);
                    trimmed_senders.push(sender_id);
                } else {
                    remaining = true;
                }
            }
            if !remaining {
                debug!(%topic, "p2p ack records of a removed topic trimmed");
            }
            remaining
        });
        trimmed_senders.sort_unstable();
        trimmed_senders.dedup();
        trimmed_senders
    }
}

/// A removed handler that has finished, reported by the task that unregistered it.
struct HandlerGone {
    topic: String,
    /// Whether it left no message unprocessed (it was not stopped in the middle of a batch,
    /// had not failed, and finished in time).
    clean: bool,
    done: oneshot::Sender<()>,
}

/// A topic whose handler was removed cleanly, waiting to have its ack records trimmed.
struct RemovedTopic {
    since: tokio::time::Instant,
    /// Senders to whose stream (of this epoch) an ack set was queued since the removal.
    acked: HashMap<String, i64>,
}

/// The main loop's owned tasks: the workers, the local receiver and handler removals.
type Tasks = JoinSet<Result<Option<HandlerGone>>>;

/// What `MainLoop::handler` found for a topic.
enum HandlerLookup {
    Live { id: u64, worker: usize },
    Dead,
    Missing,
}

enum WorkerEvent {
    Register {
        id: u64,
        topic: Arc<str>,
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
    /// The last event of a handler; `done` gets whether it left no message unprocessed.
    Unregister {
        id: u64,
        done: oneshot::Sender<bool>,
    },
}

struct WorkerSlot {
    topic: Arc<str>,
    handler: Box<dyn ErasedHandler>,
    cancelled: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    /// Whether removal stopped it before a message given to it.
    dropped: bool,
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
                topic,
                handler,
                cancelled,
                dead,
            } => {
                slots.insert(
                    id,
                    WorkerSlot {
                        topic,
                        handler,
                        cancelled,
                        dead,
                        dropped: false,
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
                let handling = slot.handler.handle_remote(context, sender_id, entries);
                match isolate_panic(&slot.topic, handling).await {
                    Ok(true) => {}
                    Ok(false) => slot.dropped = true,
                    Err(err) => fail_handler(&mut slots, id, err),
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
                let handling = slot.handler.handle_local(sender_id, value);
                if let Err(err) = isolate_panic(&slot.topic, handling).await {
                    fail_handler(&mut slots, id, err);
                }
            }
            WorkerEvent::Unregister { id, done } => {
                // A missing slot is a handler that failed, leaving its messages unprocessed.
                let clean = slots.remove(&id).is_some_and(|slot| {
                    slot.handler.report(Error::HandlerCancelled);
                    !slot.dropped
                });
                let _ = done.send(clean);
            }
        }
    }
    Ok(())
}

/// Runs a handler call, turning a panic into `HandlerPanicked`: a handler's bug fails that
/// handler (removed and reported like any handler error), not the server, as a client's
/// panic fails only that client (see `router.rs`).
async fn isolate_panic<T>(topic: &str, handling: BoxFuture<'_, Result<T>>) -> Result<T> {
    match AssertUnwindSafe(handling).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(Error::HandlerPanicked {
            topic: topic.to_owned(),
            message: crate::router::panic_message(payload.as_ref()),
        }),
    }
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
    /// Handles a batch; `Ok(false)` if removal stopped it before the batch's end.
    fn handle_remote<'a>(
        &'a mut self,
        context: HandlerContext<'a>,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    ) -> BoxFuture<'a, Result<bool>>;

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
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // One lookup per batch; each processed message is then acked by a plain store.
            let Some(ack) = context.acks.cell(&sender_id, &self.topic) else {
                debug!(%sender_id, topic = %self.topic, "messages of a deregistered sender dropped");
                return Ok(true);
            };
            let mut last = ack.load();
            for entry in entries {
                if context.cancelled.load(Ordering::Acquire) {
                    return Ok(false);
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
            Ok(true)
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
        let flush = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            received = local_rx.recv_many(&mut batch, LOCAL_BATCH_SIZE) => {
                if received == 0 {
                    return Err(Error::ServerClosed);
                }
                batch.len() >= LOCAL_BATCH_SIZE
            }
            _ = tick.tick() => !batch.is_empty(),
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
