//! The message client (TiCDC's `pkg/p2p/client.go`): one per remote peer, with per-topic sequences, batching,
//! acks and resend after every reconnect.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use governor::{Quota, RateLimiter};
use prost::Message as _;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ClientConfig, MAX_RETRY_RATE_PER_SECOND, MIN_RETRY_RATE_PER_SECOND};
use crate::error::{BoxError, Error, Result};
use crate::flush_timer::FlushTimer;
use crate::metrics::Metrics;
use crate::proto::{ExitReason, MessageEntry, MessagePacket, SendMessageResponse, StreamMeta};
use crate::topic::{Codec, Topic};

/// Packets queued between the batcher and the HTTP/2 stream.
const OUTBOUND_CHANNEL_SIZE: usize = 4;
/// A batch's entries are allocated up front up to this count (TiCDC's default batch).
const MAX_PREALLOCATED_ENTRIES: usize = 1024;
/// What an unacked entry counts against `ClientConfig::max_unacked_bytes` besides its
/// payload, so that empty payloads are bounded too.
pub(crate) const UNACKED_ENTRY_OVERHEAD: usize = 64;
/// The reconnect period when the configured rate is NaN or not positive.
const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(1);

/// An entry sent (or about to be sent) but not acked. The topic is the key of its state, so
/// only the payload handle and the sequence are kept.
#[derive(Debug)]
struct Unacked {
    sequence: i64,
    content: Bytes,
}

#[derive(Debug)]
struct TopicState {
    ack: i64,
    /// Sent (or about to be sent) but not acked, in sequence order.
    unacked: VecDeque<Unacked>,
}

impl TopicState {
    fn new() -> Self {
        TopicState {
            ack: 0,
            unacked: VecDeque::new(),
        }
    }
}

/// The next sequence per topic. Senders mostly repeat a topic, so the last one used is
/// checked before the map.
#[derive(Debug, Default)]
struct Sequences {
    /// (topic, next sequence), in order of first use.
    slots: Vec<(String, i64)>,
    index: HashMap<String, usize>,
    last: usize,
}

impl Sequences {
    fn find(&self, topic: &str) -> Option<usize> {
        match self.slots.get(self.last) {
            Some((name, _)) if name == topic => Some(self.last),
            _ => self.index.get(topic).copied(),
        }
    }

    /// The last sequence assigned on `topic`, 0 if none (or unknown).
    fn last_assigned(&self, topic: &str) -> i64 {
        self.find(topic).map_or(0, |slot| self.slots[slot].1 - 1)
    }

    /// Forgets `topic`; its next message starts over at sequence 1.
    fn remove(&mut self, topic: &str) {
        let Some(slot) = self.index.remove(topic) else {
            return;
        };
        self.slots.swap_remove(slot);
        if let Some((moved, _)) = self.slots.get(slot) {
            self.index.insert(moved.clone(), slot);
        }
        self.last = 0;
    }
}

#[derive(Debug)]
struct Shared {
    sender_id: String,
    receiver_id: String,
    config: ClientConfig,
    metrics: Arc<Metrics>,
    /// The next sequence per topic. Senders take this lock once per message; it is apart
    /// from `topics` so that they never wait for the stream tasks.
    sequences: Mutex<Sequences>,
    /// Acks and unacked entries per topic, taken once per chunk by the stream tasks. A topic
    /// is added here and to `sequences` together, under both locks (`sequences` first).
    topics: Mutex<HashMap<String, TopicState>>,
    queue_tx: mpsc::Sender<MessageEntry>,
    queue_rx: Mutex<Option<mpsc::Receiver<MessageEntry>>>,
    closed: CancellationToken,
    /// Set with `closed`; checked on every send without taking the token's lock.
    is_closed: AtomicBool,
    epoch: AtomicI64,
    /// Bytes held by the unacked queues (payload plus `UNACKED_ENTRY_OVERHEAD` per entry),
    /// written once per chunk and once per ack response, read on every send.
    unacked_bytes: AtomicUsize,
    /// `config.max_unacked_bytes`, at least 1 so that one message can always be in flight.
    max_unacked_bytes: usize,
    /// Notified when acks free unacked bytes.
    acked: Notify,
    /// The faults to inject ([`NoClientFaults`] but in tests).
    faults: Arc<dyn ClientFaults>,
}

/// Faults a message client can be made to inject.
pub(crate) trait ClientFaults: Send + Sync + std::fmt::Debug {
    /// Whether the stream task panics on the chunk it just took from the queue.
    fn panic_on_chunk(&self) -> bool {
        false
    }
}

/// No fault.
#[derive(Debug)]
pub(crate) struct NoClientFaults;

impl ClientFaults for NoClientFaults {}

/// Marks the client closed when `run` ends, even by a panic, so that sends fail with
/// `ClientClosed` instead of waiting for a stream that never comes back.
struct CloseOnDrop<'a>(&'a Shared);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.is_closed.store(true, Ordering::Release);
        self.0.closed.cancel();
    }
}

/// A client that sends messages to one remote peer's message server.
#[derive(Debug, Clone)]
pub struct MessageClient {
    shared: Arc<Shared>,
}

impl MessageClient {
    /// A client from `sender_id` (this capture) to `receiver_id` (the peer's capture ID).
    pub fn new(
        sender_id: impl Into<String>,
        receiver_id: impl Into<String>,
        config: ClientConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        MessageClient::with_faults(
            sender_id,
            receiver_id,
            config,
            metrics,
            Arc::new(NoClientFaults),
        )
    }

    /// A client like [`MessageClient::new`] that injects `faults`.
    pub(crate) fn with_faults(
        sender_id: impl Into<String>,
        receiver_id: impl Into<String>,
        config: ClientConfig,
        metrics: Arc<Metrics>,
        faults: Arc<dyn ClientFaults>,
    ) -> Self {
        let (queue_tx, queue_rx) = mpsc::channel(config.send_channel_size.max(1));
        let max_unacked_bytes = config.max_unacked_bytes.max(1);
        MessageClient {
            shared: Arc::new(Shared {
                sender_id: sender_id.into(),
                receiver_id: receiver_id.into(),
                config,
                metrics,
                sequences: Mutex::default(),
                topics: Mutex::default(),
                queue_tx,
                queue_rx: Mutex::new(Some(queue_rx)),
                closed: CancellationToken::new(),
                is_closed: AtomicBool::new(false),
                epoch: AtomicI64::new(0),
                unacked_bytes: AtomicUsize::new(0),
                max_unacked_bytes,
                acked: Notify::new(),
                faults,
            }),
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicState>> {
        self.shared
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sequences(&self) -> std::sync::MutexGuard<'_, Sequences> {
        self.shared
            .sequences
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the topic's next sequence, creating the topic on first use.
    fn take_seq(&self, sequences: &mut Sequences, topic: &str) -> i64 {
        let slot = match sequences.find(topic) {
            Some(slot) => slot,
            None => self.add_topic(sequences, topic),
        };
        sequences.last = slot;
        let next = &mut sequences.slots[slot].1;
        *next += 1;
        *next - 1
    }

    /// Adds a topic to both maps (the caller holds the sequences lock). Returns its slot.
    fn add_topic(&self, sequences: &mut Sequences, topic: &str) -> usize {
        self.topics()
            .entry(topic.to_owned())
            .or_insert_with(TopicState::new);
        sequences.slots.push((topic.to_owned(), 1));
        sequences
            .index
            .insert(topic.to_owned(), sequences.slots.len() - 1);
        sequences.slots.len() - 1
    }

    /// Creates the topic on first use. The sending paths create it in `commit`, under the
    /// lock that assigns the sequence; this is for the paths that queue nothing.
    fn register(&self, topic: &str) {
        let mut sequences = self.sequences();
        if sequences.find(topic).is_none() {
            self.add_topic(&mut sequences, topic);
        }
    }

    /// Steps 1 to 3 of a send: refuses a closed client, then encodes; a topic that fails to
    /// encode is still created, as the topic comes before the encoding.
    fn encode(
        &self,
        topic: &str,
        encode: impl FnOnce() -> std::result::Result<Bytes, BoxError>,
    ) -> Result<Bytes> {
        if self.shared.is_closed.load(Ordering::Acquire) {
            return Err(Error::ClientClosed);
        }
        encode().map_err(|source| {
            self.register(topic);
            Error::Encode {
                topic: topic.to_owned(),
                source,
            }
        })
    }

    /// Creates the topic if needed and assigns the sequence, under the sequences lock, so
    /// queue order equals sequence order.
    fn commit(&self, permit: mpsc::Permit<'_, MessageEntry>, topic: &str, content: Bytes) -> i64 {
        let mut sequences = self.sequences();
        let sequence = self.take_seq(&mut sequences, topic);
        permit.send(MessageEntry {
            topic: topic.to_owned(),
            content,
            sequence,
        });
        sequence
    }

    /// Whether the unacked queues hold `max_unacked_bytes` or more.
    fn unacked_full(&self) -> bool {
        self.shared.unacked_bytes.load(Ordering::Relaxed) >= self.shared.max_unacked_bytes
    }

    /// Waits until acks bring the unacked bytes under the limit.
    async fn wait_unacked_space(&self, cancel: &CancellationToken) -> Result<()> {
        loop {
            let acked = self.shared.acked.notified();
            tokio::pin!(acked);
            // Registered before the check, so an ack in between still wakes this task.
            acked.as_mut().enable();
            if !self.unacked_full() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = self.shared.closed.cancelled() => return Err(Error::ClientClosed),
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = acked => {}
            }
        }
    }

    async fn queue(&self, topic: &str, content: Bytes, cancel: &CancellationToken) -> Result<i64> {
        if cancel.is_cancelled() {
            self.register(topic);
            return Err(Error::Cancelled);
        }
        if self.unacked_full() {
            self.register(topic);
            self.wait_unacked_space(cancel).await?;
        }
        // With space in the queue nothing waits, so the cancellation futures are only built
        // when the queue is full.
        let permit = match self.shared.queue_tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Error::ClientClosed),
            Err(mpsc::error::TrySendError::Full(())) => {
                self.register(topic);
                tokio::select! {
                    biased;
                    _ = self.shared.closed.cancelled() => return Err(Error::ClientClosed),
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    permit = self.shared.queue_tx.reserve() => permit.map_err(|_| Error::ClientClosed)?,
                }
            }
        };
        Ok(self.commit(permit, topic, content))
    }

    fn try_queue(&self, topic: &str, content: Bytes) -> Result<i64> {
        if self.unacked_full() {
            self.register(topic);
            return Err(Error::SendTryAgain);
        }
        let permit = self
            .shared
            .queue_tx
            .try_reserve()
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(()) => {
                    self.register(topic);
                    Error::SendTryAgain
                }
                mpsc::error::TrySendError::Closed(()) => Error::ClientClosed,
            })?;
        Ok(self.commit(permit, topic, content))
    }

    /// Queues a message, waiting for space in the send queue and, while the peer has not
    /// acked `max_unacked_bytes` of sent messages, for acks. Returns its sequence.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is queued only when the call returns `Ok`.
    pub async fn send_message<T: Topic>(
        &self,
        topic: &T,
        message: &T::Message,
        cancel: &CancellationToken,
    ) -> Result<i64> {
        let content = self.encode(topic.name(), || T::Codec::encode(message))?;
        self.queue(topic.name(), content, cancel).await
    }

    /// `send_message` for a message it may consume (see `Codec::encode_owned`).
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is queued only when the call returns `Ok`.
    pub async fn send_message_owned<T: Topic>(
        &self,
        topic: &T,
        message: T::Message,
        cancel: &CancellationToken,
    ) -> Result<i64> {
        let content = self.encode(topic.name(), || T::Codec::encode_owned(message))?;
        self.queue(topic.name(), content, cancel).await
    }

    /// Queues a message, failing at once with `SendTryAgain` when the queue is full or the
    /// unacked messages hold `max_unacked_bytes`.
    pub fn try_send_message<T: Topic>(&self, topic: &T, message: &T::Message) -> Result<i64> {
        let content = self.encode(topic.name(), || T::Codec::encode(message))?;
        self.try_queue(topic.name(), content)
    }

    /// `try_send_message` for a message it may consume (see `Codec::encode_owned`).
    pub fn try_send_message_owned<T: Topic>(&self, topic: &T, message: T::Message) -> Result<i64> {
        let content = self.encode(topic.name(), || T::Codec::encode_owned(message))?;
        self.try_queue(topic.name(), content)
    }

    /// `(ack, true)` for a topic this client has sent to (0 before any ack), `(0, false)`
    /// for an unknown topic.
    pub fn current_ack(&self, topic: &str) -> (i64, bool) {
        match self.topics().get(topic) {
            Some(state) => (state.ack, true),
            None => (0, false),
        }
    }

    #[cfg(test)]
    pub(crate) fn take_queue(&self) -> Option<mpsc::Receiver<MessageEntry>> {
        self.shared
            .queue_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// The counters this client adds to (shared with the other clients of its router).
    pub fn metrics(&self) -> crate::metrics::MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Whether `run` has ended; sends then fail with `ClientClosed`.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Whether both handles are the same client.
    pub(crate) fn same(&self, other: &MessageClient) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Connects to `addr` and keeps the stream up, reconnecting (rate-limited) until `cancel`
    /// fires, or the peer turns out to be another capture or refuses this sender as
    /// deregistered (`ClientPermanentFail`). Runs once; afterwards the client is closed.
    pub async fn run(&self, cancel: &CancellationToken, addr: &str) -> Result<()> {
        let _close = CloseOnDrop(&self.shared);
        let queue_rx = self
            .shared
            .queue_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match queue_rx {
            Some(mut queue_rx) => self.run_loop(cancel, addr, &mut queue_rx).await,
            None => Err(Error::ClientClosed),
        }
    }

    /// The time between reconnects: the inverse of the rate, clamped to the validated range
    /// (`ClientConfig` may be built without `MessagesConfig::validate_and_adjust`).
    fn retry_period(&self) -> Duration {
        let rate = self.shared.config.retry_rate_limit_per_second;
        if rate.is_nan() || rate <= 0.0 {
            return DEFAULT_RETRY_PERIOD;
        }
        let rate = rate.clamp(MIN_RETRY_RATE_PER_SECOND, MAX_RETRY_RATE_PER_SECOND);
        Duration::try_from_secs_f64(1.0 / rate)
            .unwrap_or(DEFAULT_RETRY_PERIOD)
            .max(Duration::from_micros(1))
    }

    async fn run_loop(
        &self,
        cancel: &CancellationToken,
        addr: &str,
        queue_rx: &mut mpsc::Receiver<MessageEntry>,
    ) -> Result<()> {
        let quota = Quota::with_period(self.retry_period())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(quota);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = limiter.until_ready() => {}
            }
            match self.run_once(cancel, addr, queue_rx).await {
                Ok(()) => return Ok(()),
                Err(Error::Cancelled) => return Ok(()),
                Err(err @ Error::ClientPermanentFail { .. }) => {
                    warn!(receiver_id = %self.shared.receiver_id, error = %crate::error::report(&err), "p2p client failed permanently");
                    return Err(err);
                }
                Err(err) => {
                    debug!(receiver_id = %self.shared.receiver_id, %addr, error = %crate::error::report(&err), "p2p stream broke, reconnecting");
                }
            }
        }
    }

    async fn run_once(
        &self,
        cancel: &CancellationToken,
        addr: &str,
        queue_rx: &mut mpsc::Receiver<MessageEntry>,
    ) -> Result<()> {
        let config = &self.shared.config;
        let mut grpc = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            connected = crate::transport::connect(addr, config) => connected?,
        };
        let epoch = self.shared.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        if epoch > 1 {
            self.shared.metrics.add_reconnect();
        }
        info!(receiver_id = %self.shared.receiver_id, %addr, epoch, "p2p stream opening");
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CHANNEL_SIZE);
        let meta = StreamMeta {
            sender_id: self.shared.sender_id.clone(),
            receiver_id: self.shared.receiver_id.clone(),
            epoch,
            client_version: config.client_version.clone(),
            sender_advertised_addr: config.advertised_addr.clone(),
        };
        out_tx
            .send(MessagePacket {
                meta: Some(meta),
                entries: Vec::new(),
            })
            .await
            .map_err(|_| Error::ServerClosed)?;
        let receive = async {
            let response = grpc
                .send_message(ReceiverStream::new(out_rx))
                .await
                .map_err(|status| Error::Stream {
                    source: Box::new(status),
                })?;
            self.receive_responses(response.into_inner()).await
        };
        let mut batcher = Batcher::new(out_tx, config.max_batch_count, config.max_batch_bytes);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(()),
            received = receive => received,
            sent = self.send_entries(queue_rx, &mut batcher) => sent,
        }
    }

    /// Tx: resends every unacked entry, then streams the queue in batches.
    ///
    /// An entry moves to its topic's unacked queue as it leaves the send queue, so dropping
    /// this future at any await loses nothing: the next stream resends it.
    async fn send_entries(
        &self,
        queue_rx: &mut mpsc::Receiver<MessageEntry>,
        batcher: &mut Batcher,
    ) -> Result<()> {
        let resend: Vec<Vec<MessageEntry>> = self
            .topics()
            .iter()
            .filter(|(_, state)| !state.unacked.is_empty())
            .map(|(topic, state)| {
                state
                    .unacked
                    .iter()
                    .map(|unacked| MessageEntry {
                        topic: topic.clone(),
                        content: unacked.content.clone(),
                        sequence: unacked.sequence,
                    })
                    .collect()
            })
            .collect();
        for entries in resend {
            self.shared.metrics.add_resent(entries.len() as u64);
            batcher.extend(entries).await?;
            batcher.flush().await?;
        }
        let mut flush_timer = FlushTimer::new(self.shared.config.batch_send_interval);
        let limit = self.shared.config.max_batch_count.clamp(1, 1024);
        let mut received = Vec::with_capacity(limit);
        loop {
            tokio::select! {
                n = queue_rx.recv_many(&mut received, limit) => {
                    if n == 0 {
                        return Err(Error::ClientClosed);
                    }
                    assert!(!self.shared.faults.panic_on_chunk(), "injected client panic");
                    self.track_unacked(&received);
                    self.shared.metrics.add_sent(received.len() as u64);
                    // Flushed on the interval's grid while traffic flows; an idle client
                    // does not wake at the batch interval.
                    flush_timer.traffic();
                    batcher.extend(received.drain(..)).await?;
                }
                () = flush_timer.tick() => batcher.flush().await?,
            }
        }
    }

    /// Moves a chunk taken off the send queue into the unacked queues, under one lock, one
    /// map lookup per run of entries of the same topic.
    fn track_unacked(&self, entries: &[MessageEntry]) {
        let mut added = 0;
        let mut topics = self.topics();
        let mut rest = entries;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|entry| entry.topic != first.topic)
                .unwrap_or(rest.len());
            let state = topics
                .get_mut(&first.topic)
                .expect("a topic's state is created before its first entry is queued");
            for entry in &rest[..run] {
                debug_assert!(
                    state
                        .unacked
                        .back()
                        .is_none_or(|last| last.sequence + 1 == entry.sequence),
                    "sequences leave the queue in order"
                );
                if entry.sequence > state.ack {
                    added += entry.content.len() + UNACKED_ENTRY_OVERHEAD;
                    state.unacked.push_back(Unacked {
                        sequence: entry.sequence,
                        content: entry.content.clone(),
                    });
                }
            }
            rest = &rest[run..];
        }
        drop(topics);
        self.shared
            .unacked_bytes
            .fetch_add(added, Ordering::Relaxed);
    }

    /// Rx: applies acks until the server ends the stream.
    async fn receive_responses(
        &self,
        mut inbound: tonic::Streaming<SendMessageResponse>,
    ) -> Result<()> {
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(Error::ServerClosed),
                Err(status) => {
                    return Err(Error::Stream {
                        source: Box::new(status),
                    });
                }
            };
            match response.exit_reason() {
                ExitReason::Ok => self.apply_acks(&response),
                ExitReason::CaptureIdMismatch | ExitReason::CaptureSuicide => {
                    return Err(Error::ClientPermanentFail {
                        reason: response.error_message,
                    });
                }
                reason => {
                    debug!(?reason, message = %response.error_message, "p2p server ended the stream");
                    return Err(Error::ServerClosed);
                }
            }
        }
    }

    /// Forgets the topics the server no longer acks (their handler was removed and the
    /// server trimmed their records) and that hold nothing unacked: every assigned sequence
    /// is acked. Such a topic starts over at sequence 1, which the server takes as new, so
    /// per-changefeed topics do not accumulate. A topic with anything unacked stays (the
    /// server has not trimmed it, or will take its resend as new).
    fn trim_topics(
        &self,
        sequences: &mut Sequences,
        topics: &mut HashMap<String, TopicState>,
        response: &SendMessageResponse,
    ) {
        let acked: std::collections::HashSet<&str> =
            response.ack.iter().map(|ack| ack.topic.as_str()).collect();
        topics.retain(|topic, state| {
            let idle = !acked.contains(topic.as_str())
                && state.unacked.is_empty()
                && sequences.last_assigned(topic) == state.ack;
            if idle {
                debug!(receiver_id = %self.shared.receiver_id, %topic, "p2p topic no longer acked, forgotten");
                sequences.remove(topic);
            }
            !idle
        });
    }

    /// The number of topics the client tracks.
    #[cfg(test)]
    pub(crate) fn n_topics(&self) -> usize {
        self.topics().len()
    }

    fn apply_acks(&self, response: &SendMessageResponse) {
        let mut acked = 0;
        let mut freed = 0;
        // Taken before `topics`, as everywhere, for trimming below.
        let mut sequences = self.sequences();
        let mut topics = self.topics();
        for ack in &response.ack {
            let Some(state) = topics.get_mut(&ack.topic) else {
                debug!(topic = %ack.topic, "ack for an unknown topic ignored");
                continue;
            };
            if ack.last_seq <= state.ack {
                continue;
            }
            state.ack = ack.last_seq;
            while let Some(entry) = state
                .unacked
                .pop_front_if(|entry| entry.sequence <= ack.last_seq)
            {
                freed += entry.content.len() + UNACKED_ENTRY_OVERHEAD;
                acked += 1;
            }
        }
        if topics.len() > response.ack.len() {
            self.trim_topics(&mut sequences, &mut topics, response);
        }
        drop(topics);
        drop(sequences);
        if freed > 0 {
            self.shared
                .unacked_bytes
                .fetch_sub(freed, Ordering::Relaxed);
            self.shared.acked.notify_waiters();
        }
        self.shared.metrics.add_acked(acked);
    }
}

/// Collects entries into packets, flushing at `max_count` entries or `max_bytes` wire bytes.
#[derive(Debug)]
pub(crate) struct Batcher {
    out_tx: mpsc::Sender<MessagePacket>,
    max_count: usize,
    max_bytes: usize,
    entries: Vec<MessageEntry>,
    bytes: usize,
}

impl Batcher {
    pub(crate) fn new(
        out_tx: mpsc::Sender<MessagePacket>,
        max_count: usize,
        max_bytes: usize,
    ) -> Self {
        Batcher {
            out_tx,
            max_count,
            max_bytes,
            entries: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) async fn append(&mut self, entry: MessageEntry) -> Result<()> {
        self.bytes += entry.encoded_len();
        self.entries.push(entry);
        if self.entries.len() >= self.max_count || self.bytes >= self.max_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Appends entries in order, flushing whenever a limit is reached.
    pub(crate) async fn extend(
        &mut self,
        entries: impl IntoIterator<Item = MessageEntry>,
    ) -> Result<()> {
        for entry in entries {
            self.append(entry).await?;
        }
        Ok(())
    }

    /// Sends the pending entries as one packet without meta; does nothing when empty.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        // The next batch starts with room for a full one, as growing it costs a copy per
        // doubling.
        let capacity = self.max_count.min(MAX_PREALLOCATED_ENTRIES);
        let packet = MessagePacket {
            meta: None,
            entries: std::mem::replace(&mut self.entries, Vec::with_capacity(capacity)),
        };
        self.bytes = 0;
        self.out_tx
            .send(packet)
            .await
            .map_err(|_| Error::ServerClosed)
    }
}
