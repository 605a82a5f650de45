//! The server's main loop: peers, handlers, buffered messages, acks and their trimming.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::worker::{ErasedHandler, WorkerEvent};
use super::{LOCAL_BATCH_SIZE, LOCAL_FLUSH_INTERVAL, SenderId, ServerFaults, Task, error_response};
use crate::ack::AckManager;
use crate::config::ServerConfig;
use crate::error::{Error, Result, report};
use crate::flush_timer::FlushTimer;
use crate::local::LocalEntry;
use crate::local::LocalReceiver;
use crate::proto::{Ack, ExitReason, MessageEntry, SendMessageResponse};
use crate::stream_handle::{StreamHandle, TrySendError};

pub(super) struct HandlerEntry {
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

pub(super) struct Peer {
    epoch: i64,
    handle: StreamHandle,
    /// The acks last sent on this stream: a tick with nothing new sends nothing, so idle
    /// streams cost no messages.
    sent_acks: Vec<Ack>,
}

pub(super) enum PendingEntry {
    Remote { epoch: i64, entry: MessageEntry },
    Local(Box<dyn Any + Send>),
}

pub(super) struct MainLoop {
    pub(super) local_sender: SenderId,
    pub(super) config: ServerConfig,
    pub(super) acks: Arc<AckManager>,
    pub(super) workers: Vec<mpsc::Sender<WorkerEvent>>,
    pub(super) next_worker: usize,
    pub(super) handlers: HashMap<String, HandlerEntry>,
    pub(super) peers: HashMap<String, Peer>,
    /// Messages of topics without a handler: sender -> topic -> entries in arrival order.
    /// A sender's entries go when it is deregistered, aborted or replaced by a newer epoch
    /// (its client resends them, as they were never acked); a sender has at most
    /// `max_pending_topic_count_per_sender` topics here.
    pub(super) pending: HashMap<SenderId, HashMap<String, Vec<PendingEntry>>>,
    pub(super) n_peers: watch::Sender<usize>,
    /// Topics whose handler was removed, until their ack records are trimmed.
    pub(super) removed_topics: HashMap<String, RemovedTopic>,
    /// The faults to inject (none but in tests).
    pub(super) faults: Arc<dyn ServerFaults>,
}

impl MainLoop {
    pub(super) async fn handle_task(&mut self, task: Task, tasks: &mut Tasks) -> Result<()> {
        if let Some(pause) = self.faults.pause_main_loop() {
            pause.await;
        }
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
        self.peers.insert(
            sender_id,
            Peer {
                epoch,
                handle,
                sent_acks: Vec::new(),
            },
        );
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
    pub(super) fn close_deregistered(&mut self) {
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

    pub(super) fn send_acks(&mut self) {
        let trimmed = self.trim_removed_topics();
        let mut gone = Vec::new();
        for (sender_id, peer) in &mut self.peers {
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
            // Nothing new for this stream: no message (a removed topic's ack and a trim are
            // always sent, as the removal waits for them).
            if acks == peer.sent_acks
                && acked_removed.is_empty()
                && trimmed.binary_search(sender_id).is_err()
            {
                continue;
            }
            let response = SendMessageResponse {
                ack: acks.clone(),
                exit_reason: ExitReason::Ok as i32,
                error_message: String::new(),
            };
            // Acks are cumulative: a full channel (a frozen peer) skips this tick instead of
            // blocking the main loop.
            match peer.handle.try_send(Ok(response)) {
                Ok(()) => {
                    peer.sent_acks = acks;
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
        self.faults.handlers_changed(self.handlers.len());
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
        self.faults.handlers_changed(self.handlers.len());
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
    pub(super) fn handler_gone(&mut self, gone: HandlerGone) {
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
pub(super) struct HandlerGone {
    topic: String,
    /// Whether it left no message unprocessed (it was not stopped in the middle of a batch,
    /// had not failed, and finished in time).
    clean: bool,
    done: oneshot::Sender<()>,
}

/// A topic whose handler was removed cleanly, waiting to have its ack records trimmed.
pub(super) struct RemovedTopic {
    since: tokio::time::Instant,
    /// Senders to whose stream (of this epoch) an ack set was queued since the removal.
    acked: HashMap<String, i64>,
}

/// The main loop's owned tasks: the workers, the local receiver and handler removals.
pub(super) type Tasks = JoinSet<Result<Option<HandlerGone>>>;

/// What `MainLoop::handler` found for a topic.
enum HandlerLookup {
    Live { id: u64, worker: usize },
    Dead,
    Missing,
}

pub(super) async fn run_local_receiver(
    mut local_rx: LocalReceiver,
    task_tx: mpsc::Sender<Task>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut batch = Vec::with_capacity(LOCAL_BATCH_SIZE);
    // Flushed on the interval's grid while messages flow; an idle receiver does not wake at
    // the flush interval.
    let mut flush_timer = FlushTimer::new(LOCAL_FLUSH_INTERVAL);
    loop {
        let flush = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            received = local_rx.recv_many(&mut batch, LOCAL_BATCH_SIZE) => {
                if received == 0 {
                    return Err(Error::ServerClosed);
                }
                flush_timer.traffic();
                batch.len() >= LOCAL_BATCH_SIZE
            }
            () = flush_timer.tick() => true,
        };
        if flush && !batch.is_empty() {
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

#[cfg(test)]
mod tests;
