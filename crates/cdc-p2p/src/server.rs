//! The message server (TiCDC's `pkg/p2p/server.go`): receives peers' streams and runs topic handlers in order.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use crate::proto::{MessageEntry, MessagePacket, SendMessageResponse, StreamMeta};
use crate::stream_handle::{ResponseItem, StreamHandle};
use crate::topic::Topic;

mod main_loop;
mod worker;

use main_loop::{MainLoop, Tasks, run_local_receiver};
use worker::{ErasedHandler, TypedHandler, run_worker};

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
    /// The faults to inject ([`NoFaults`] but in tests).
    faults: Arc<dyn ServerFaults>,
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
}

/// Faults a message server can be made to inject.
pub(crate) trait ServerFaults: Send + Sync {
    /// Whether to end the stream that just delivered a batch, before handling the batch, as a
    /// restarting server would: the sender is told CONGESTED and reconnects.
    fn restart_stream(&self) -> bool {
        false
    }

    /// Told the number of registered handlers (dead ones included) each time the main loop
    /// adds or removes one.
    fn handlers_changed(&self, _n_handlers: usize) {}

    /// A pause the main loop awaits before its next task, as a slow main loop would.
    fn pause_main_loop(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        None
    }
}

/// No fault.
pub(crate) struct NoFaults;

impl ServerFaults for NoFaults {}

impl MessageServer {
    /// A server for the capture `server_id`.
    pub fn new(server_id: impl Into<String>, config: ServerConfig) -> Self {
        MessageServer::with_faults(server_id, config, Arc::new(NoFaults))
    }

    /// A server for the capture `server_id` that injects `faults`.
    pub(crate) fn with_faults(
        server_id: impl Into<String>,
        config: ServerConfig,
        faults: Arc<dyn ServerFaults>,
    ) -> Self {
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
            faults,
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
            faults: Arc::clone(&self.faults),
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

    /// Schedules registering `handler` for `topic` without waiting, or fails at once with
    /// `TaskQueueCongested` when the task queue is full. Returns a receiver that completes
    /// when the handler is registered, and the handler's error channel.
    ///
    /// The handler runs on one worker, one message at a time, in order per sender.
    pub fn try_add_handler<T, F, Fut>(
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

    /// Registers a handler and waits until it is in place (see `try_add_handler`).
    pub async fn add_handler<T, F, Fut>(
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
        let (done, err_rx) = self.try_add_handler(topic, handler)?;
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

    /// Schedules removing the handler of `topic`, or fails at once with `TaskQueueCongested`.
    /// The receiver completes once the handler has finished (or after
    /// `wait_unregister_handle_timeout`). Unknown topics complete at once.
    pub fn try_remove_handler(&self, topic: &str) -> Result<oneshot::Receiver<()>> {
        let (done_tx, done_rx) = oneshot::channel();
        self.try_enqueue(Task::DeregisterHandler {
            topic: topic.to_owned(),
            done: done_tx,
        })?;
        Ok(done_rx)
    }

    /// Removes the handler of `topic` and waits. A closed server counts as success.
    pub async fn remove_handler(&self, topic: &str, cancel: &CancellationToken) -> Result<()> {
        let done = match self.try_remove_handler(topic) {
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

    /// Serves one `SendMessage` stream. `stream_cancel` ends it (the wrapper's reset).
    pub(crate) fn accept_stream(
        self: &Arc<Self>,
        inbound: Streaming<MessagePacket>,
        stream_cancel: CancellationToken,
    ) -> std::result::Result<ResponseStream, Status> {
        if self.closed.is_cancelled() {
            return Err(crate::status::server_closing());
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
                let status = crate::status::refused(&err);
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
            if self.faults.restart_stream() {
                let congested = Error::TopicCongested {
                    topic: "injected".to_owned(),
                };
                let _ = handle.try_send(Ok(error_response(&congested)));
                return Err(Error::InjectedServerRestart);
            }
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
            Err(crate::status::stream_cancelled())
        }
        _ = state.server_closed.cancelled() => {
            state.done = true;
            Err(crate::status::server_closing())
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
