//! In-process tests of the p2p layer: TiCDC's `pkg/p2p/*_test.go` cases, adapted
//! where the Go test checked internals. Servers listen on 127.0.0.1:0.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::ack::AckManager;
use crate::client::{Batcher, ClientFaults};
use crate::proto::{ExitReason, MessageEntry, MessagePacket, SendMessageResponse, StreamMeta};
use crate::server::{NoFaults, ServerFaults};
use crate::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TestMessage {
    index: i64,
}

type TestTopic = NamedTopic<TestMessage>;

const SERVER_ID: &str = "test-server-1";

/// Polls `check` every 5 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn test_server_config() -> ServerConfig {
    ServerConfig {
        ack_interval: Duration::from_millis(20),
        ..ServerConfig::default()
    }
}

fn test_client_config() -> ClientConfig {
    ClientConfig {
        retry_rate_limit_per_second: 50.0,
        ..ClientConfig::default()
    }
}

/// The set-up the server tests share: a server on 127.0.0.1:0 and, when asked, a recorder on
/// the topic "topic" and a message client "client-1" running against the server. Build it with
/// [`setup`], adjust it, then [`Setup::start`] it.
struct Setup {
    server_id: String,
    config: ServerConfig,
    faults: Arc<dyn ServerFaults>,
    local_rx: Option<LocalReceiver>,
    recorder: bool,
    client_config: Option<ClientConfig>,
}

/// A server with ID [`SERVER_ID`] and [`test_server_config`], nothing registered.
fn setup() -> Setup {
    Setup {
        server_id: SERVER_ID.to_owned(),
        config: test_server_config(),
        faults: Arc::new(NoFaults),
        local_rx: None,
        recorder: false,
        client_config: None,
    }
}

impl Setup {
    fn server_id(mut self, server_id: &str) -> Self {
        self.server_id = server_id.to_owned();
        self
    }

    /// Adjusts the server's configuration.
    fn config(mut self, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        adjust(&mut self.config);
        self
    }

    /// Makes the server inject `faults`.
    fn faults(mut self, faults: impl ServerFaults + 'static) -> Self {
        self.faults = Arc::new(faults);
        self
    }

    /// Serves the local client whose receiver is `local_rx`.
    fn local(mut self, local_rx: LocalReceiver) -> Self {
        self.local_rx = Some(local_rx);
        self
    }

    /// Registers a [`recorder`] on "topic" into [`Fixture::received`].
    fn recorder(mut self) -> Self {
        self.recorder = true;
        self
    }

    /// Runs a message client "client-1" with `config` against the server, until the fixture
    /// stops.
    fn client(mut self, config: ClientConfig) -> Self {
        self.client_config = Some(config);
        self
    }

    async fn start(self) -> Fixture {
        let probe = Arc::new(MainLoopProbe::new(self.faults));
        let server = Arc::new(MessageServer::with_faults(
            &self.server_id,
            self.config.clone(),
            Arc::clone(&probe) as Arc<dyn ServerFaults>,
        ));
        let wrapper = ServerWrapper::new(&self.config);
        wrapper.reset(Some(Arc::clone(&server)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server_cancel = CancellationToken::new();
        let mut serving = JoinSet::new();
        let serve_wrapper = wrapper.clone();
        let serve_cancel = server_cancel.clone();
        let config = self.config;
        serving.spawn(async move {
            serve(listener, &serve_wrapper, &config, serve_cancel)
                .await
                .unwrap();
        });
        let running = Arc::clone(&server);
        let run_cancel = server_cancel.clone();
        let local_rx = self.local_rx;
        let run = tokio::spawn(async move { running.run(run_cancel, local_rx).await });
        let mut fixture = Fixture {
            server,
            probe,
            wrapper,
            addr,
            server_cancel,
            run,
            serving,
            cancel: CancellationToken::new(),
            topic: TestTopic::new("topic"),
            received: Received::default(),
            client: None,
            client_metrics: Arc::default(),
            client_run: None,
        };
        if self.recorder {
            fixture
                .add_recorder(&fixture.topic, &fixture.received)
                .await;
        }
        if let Some(config) = self.client_config {
            let client = MessageClient::new(
                "client-1",
                self.server_id,
                config,
                Arc::clone(&fixture.client_metrics),
            );
            fixture.client_run = Some(spawn_run(&client, &fixture.addr, fixture.cancel.clone()));
            fixture.client = Some(client);
        }
        fixture
    }
}

/// The server faults of every fixture: publishes the number of handlers, pauses the main
/// loop on demand, and restarts streams as the set-up's faults say.
struct MainLoopProbe {
    restarts: Arc<dyn ServerFaults>,
    /// The number of registered handlers (dead ones included), updated by the main loop.
    n_handlers: tokio::sync::watch::Sender<usize>,
    /// The next pause: signalled once the main loop has reached it, then awaited.
    pause: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
    >,
}

impl MainLoopProbe {
    fn new(restarts: Arc<dyn ServerFaults>) -> Self {
        MainLoopProbe {
            restarts,
            n_handlers: tokio::sync::watch::Sender::new(0),
            pause: Mutex::new(None),
        }
    }

    /// Blocks the main loop at its next task until the returned sender fires or drops; the
    /// returned receiver completes once the main loop has reached it. The next task is
    /// queued here (removing an unknown topic, which does nothing), so `TaskQueueCongested`
    /// means the queue is full.
    fn block_main_loop(
        &self,
        server: &MessageServer,
    ) -> Result<(
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    )> {
        let (unblock_tx, unblock_rx) = tokio::sync::oneshot::channel();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        *self.pause.lock().unwrap() = Some((entered_tx, unblock_rx));
        if let Err(err) = server.try_remove_handler("no such topic") {
            self.pause.lock().unwrap().take();
            return Err(err);
        }
        Ok((unblock_tx, entered_rx))
    }
}

impl ServerFaults for MainLoopProbe {
    fn restart_stream(&self) -> bool {
        self.restarts.restart_stream()
    }

    fn handlers_changed(&self, n_handlers: usize) {
        self.n_handlers.send_replace(n_handlers);
    }

    fn pause_main_loop(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let (entered, unblock) = self.pause.lock().unwrap().take()?;
        Some(Box::pin(async move {
            let _ = entered.send(());
            let _ = unblock.await;
        }))
    }
}

/// A started [`Setup`].
struct Fixture {
    server: Arc<MessageServer>,
    /// Watches and slows the server's main loop.
    probe: Arc<MainLoopProbe>,
    wrapper: ServerWrapper,
    addr: String,
    /// Stops the server's main loop and its gRPC endpoint.
    server_cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<()>>,
    serving: JoinSet<()>,
    /// Bounds the tests' calls; stops the client.
    cancel: CancellationToken,
    /// "topic".
    topic: TestTopic,
    /// What the recorder on "topic" saw, when the set-up asked for it.
    received: Received,
    client: Option<MessageClient>,
    /// The counters of the client.
    client_metrics: Arc<Metrics>,
    client_run: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Fixture {
    /// The message client "client-1".
    fn client(&self) -> &MessageClient {
        self.client.as_ref().expect("the set-up has a client")
    }

    /// Registers a [`recorder`] handler for `topic`.
    async fn add_recorder(&self, topic: &TestTopic, received: &Received) -> HandlerErrors {
        self.server
            .add_handler(topic, recorder(received), &self.cancel)
            .await
            .unwrap()
    }

    /// Stops the client (which must have run without error), then the server.
    async fn stop(mut self) {
        if let Some(client_run) = self.client_run.take() {
            self.cancel.cancel();
            client_run.await.unwrap().unwrap();
        }
        self.server_cancel.cancel();
        self.run.await.unwrap().unwrap();
        while self.serving.join_next().await.is_some() {}
    }
}

/// Runs `client` against `addr` until `cancel` fires.
fn spawn_run(
    client: &MessageClient,
    addr: &str,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    let running = client.clone();
    let addr = addr.to_owned();
    tokio::spawn(async move { running.run(&cancel, &addr).await })
}

/// Asserts that `client`'s ack of `topic` reaches `seq` (known) within `timeout`.
async fn assert_acked(client: &MessageClient, topic: &str, seq: i64, timeout: Duration) {
    assert!(
        wait_until(timeout, || client.current_ack(topic) == (seq, true)).await,
        "ack of {topic} is {:?}",
        client.current_ack(topic)
    );
}

fn meta(sender: &str, receiver: &str, epoch: i64) -> StreamMeta {
    StreamMeta {
        sender_id: sender.to_owned(),
        receiver_id: receiver.to_owned(),
        epoch,
        client_version: String::new(),
        sender_advertised_addr: String::new(),
    }
}

fn entry(topic: &str, sequence: i64) -> MessageEntry {
    MessageEntry {
        topic: topic.to_owned(),
        content: Bytes::from(serde_json::to_vec(&TestMessage { index: sequence }).unwrap()),
        sequence,
    }
}

fn packet(entries: Vec<MessageEntry>) -> MessagePacket {
    MessagePacket {
        meta: None,
        entries,
    }
}

/// A hand-driven stream: the test writes packets and reads responses.
async fn open_raw(
    addr: &str,
    meta: StreamMeta,
) -> (mpsc::Sender<MessagePacket>, Streaming<SendMessageResponse>) {
    let mut client = connect(addr, &ClientConfig::default()).await.unwrap();
    let (tx, rx) = mpsc::channel(1024);
    tx.send(MessagePacket {
        meta: Some(meta),
        entries: Vec::new(),
    })
    .await
    .unwrap();
    let responses = client
        .send_message(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

/// Reads responses until one has a reason other than OK (or the stream ends).
async fn next_exit_reason(responses: &mut Streaming<SendMessageResponse>) -> Option<ExitReason> {
    let read = async {
        loop {
            match responses.message().await {
                Ok(Some(response)) if response.exit_reason() == ExitReason::Ok => continue,
                Ok(Some(response)) => return Some(response.exit_reason()),
                Ok(None) | Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap()
}

/// Reads responses until the ack of `topic` reaches `seq`.
async fn wait_ack(responses: &mut Streaming<SendMessageResponse>, topic: &str, seq: i64) {
    let read = async {
        loop {
            let response = responses.message().await.unwrap().unwrap();
            assert_eq!(
                response.exit_reason(),
                ExitReason::Ok,
                "{}",
                response.error_message
            );
            if response
                .ack
                .iter()
                .any(|ack| ack.topic == topic && ack.last_seq >= seq)
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();
}

type Received = Arc<Mutex<Vec<(String, i64)>>>;

/// A handler that records (sender, index).
fn recorder(
    received: &Received,
) -> impl FnMut(SenderId, TestMessage) -> std::future::Ready<Result<(), BoxError>> + Send + 'static
{
    let received = Arc::clone(received);
    move |sender: SenderId, message: TestMessage| {
        received
            .lock()
            .unwrap()
            .push((sender.to_string(), message.index));
        std::future::ready(Ok(()))
    }
}

fn count(received: &Received) -> usize {
    received.lock().unwrap().len()
}

/// Asserts that each sender's indices are 1, 2, 3, ... in order.
fn assert_in_order(received: &Received) -> HashMap<String, i64> {
    let mut last: HashMap<String, i64> = HashMap::new();
    for (sender, index) in received.lock().unwrap().iter() {
        let previous = last.entry(sender.clone()).or_insert(0);
        assert_eq!(*index, *previous + 1, "sender {sender}");
        *previous = *index;
    }
    last
}

// Cases 44, 45, 46: the ack records.
#[test]
fn ack_manager_get_set_range_remove() {
    let acks = AckManager::default();
    assert_eq!(acks.get("node-1", "topic-1"), 0);
    acks.set("node-1", "topic-1", 1);
    acks.set("node-1", "topic-2", 2);
    acks.set("node-2", "topic-1", 3);
    assert_eq!(acks.get("node-1", "topic-1"), 1);
    assert_eq!(acks.get("node-1", "topic-2"), 2);
    assert_eq!(acks.get("node-2", "topic-1"), 3);
    assert_eq!(acks.get("node-2", "topic-2"), 0);

    for i in 0..100 {
        acks.set("node-3", &format!("topic-{i}"), i);
    }
    let mut seen = HashMap::new();
    acks.range("node-3", |topic, seq| {
        seen.insert(topic.to_owned(), seq);
        true
    });
    assert_eq!(seen.len(), 100);
    assert!((0..100).all(|i| seen[&format!("topic-{i}")] == i));
    let mut visited = 0;
    acks.range("node-3", |_, _| {
        visited += 1;
        visited < 50
    });
    assert_eq!(visited, 50);
    acks.range("unknown", |_, _| panic!("an unknown node visits nothing"));

    acks.set("node-1", "topic-3", 3);
    acks.set("node-2", "topic-3", 3);
    acks.remove_topic("topic-3");
    assert_eq!(acks.get("node-1", "topic-3"), 0);
    assert_eq!(acks.get("node-2", "topic-3"), 0);
    assert_eq!(acks.get("node-1", "topic-1"), 1);
    assert!(acks.tombstone("node-2"));
    assert!(!acks.tombstone("node-2"));
    assert_eq!(acks.get("node-2", "topic-1"), 0);
    assert!(
        acks.cell("node-2", "topic-1").is_none(),
        "no record for a tombstone"
    );
    assert_eq!(acks.get("node-1", "topic-2"), 2);
}

// The tombstones are capped: past the cap the oldest is forgotten.
#[test]
fn ack_manager_tombstones_capped() {
    let acks = AckManager::new(2);
    for sender in ["node-1", "node-2", "node-3"] {
        assert!(acks.tombstone(sender));
    }
    assert!(!acks.is_tombstoned("node-1"));
    assert!(acks.is_tombstoned("node-2"));
    assert!(acks.is_tombstoned("node-3"));
}

// Cases 47, 48 (adapted: the server never blocks on a stream, it uses `try_send`): a send
// reaches the reader; a full channel says so; a closed handle refuses sends; double close is
// fine; `meta()` returns the meta.
#[test]
fn stream_handle_send_and_close() {
    use crate::stream_handle::{StreamHandle, TrySendError};
    let (tx, mut rx) = mpsc::channel(1);
    let handle = StreamHandle::with_closed(meta("a", "b", 7), tx, CancellationToken::new());
    assert_eq!(handle.meta().epoch, 7);
    let response = SendMessageResponse {
        error_message: "test".to_owned(),
        ..SendMessageResponse::default()
    };
    handle.try_send(Ok(response.clone())).unwrap();
    assert_eq!(
        handle.try_send(Ok(response.clone())),
        Err(TrySendError::Full)
    );
    assert_eq!(rx.try_recv().unwrap().unwrap().error_message, "test");
    handle.close();
    handle.close();
    assert!(handle.is_closed());
    assert_eq!(handle.try_send(Ok(response)), Err(TrySendError::Closed));
}

#[derive(Debug, PartialEq)]
struct Packed(u32);

impl CustomEncoding for Packed {
    fn marshal(&self) -> Result<Bytes, BoxError> {
        Ok(Bytes::copy_from_slice(&self.0.to_be_bytes()))
    }

    fn unmarshal(payload: Bytes) -> Result<Self, BoxError> {
        let bytes: [u8; 4] = payload.as_ref().try_into()?;
        Ok(Packed(u32::from_be_bytes(bytes)))
    }
}

// Case 49: JSON by default; a type with its own encoding uses exactly those bytes.
#[test]
fn codecs_round_trip() {
    let message = TestMessage { index: 42 };
    let encoded = <Json as Codec<TestMessage>>::encode(&message).unwrap();
    assert_eq!(&encoded[..], br#"{"index":42}"#);
    assert_eq!(
        <Json as Codec<TestMessage>>::decode(encoded).unwrap(),
        message
    );
    let encoded = <Custom as Codec<Packed>>::encode(&Packed(0x01020304)).unwrap();
    assert_eq!(&encoded[..], &[1, 2, 3, 4]);
    assert_eq!(
        <Custom as Codec<Packed>>::decode(encoded).unwrap(),
        Packed(0x01020304)
    );
    assert!(<Custom as Codec<Packed>>::decode(Bytes::from_static(b"xy")).is_err());
}

// Cases 50, 51, 52: the batcher flushes at the count, not below the byte limit, and never
// sends an empty packet.
#[tokio::test]
async fn batcher_limits() {
    let (tx, mut rx) = mpsc::channel(16);
    let mut batcher = Batcher::new(tx.clone(), 100, usize::MAX);
    for seq in 1..100 {
        batcher.append(entry("topic", seq)).await.unwrap();
    }
    assert!(rx.try_recv().is_err());
    batcher.append(entry("topic", 100)).await.unwrap();
    let sent = rx.try_recv().unwrap();
    assert!(sent.meta.is_none());
    let seqs: Vec<i64> = sent.entries.iter().map(|entry| entry.sequence).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());

    let mut batcher = Batcher::new(tx.clone(), usize::MAX, 1000);
    for seq in 1..=11 {
        batcher.append(entry("topic", seq)).await.unwrap();
    }
    assert!(rx.try_recv().is_err(), "about 220 bytes stay below 1000");

    let mut batcher = Batcher::new(tx, 100, 1000);
    batcher.flush().await.unwrap();
    assert!(rx.try_recv().is_err());
}

// Case 53: connecting to a real server and opening SendMessage reaches the server once.
#[tokio::test]
async fn connect_reaches_server() {
    let fixture = setup().start().await;
    let mut n_peers = fixture.server.n_peers();
    let (_tx, _responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    tokio::time::timeout(Duration::from_secs(5), n_peers.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
    fixture.stop().await;
}

// Cases 54, 55: 8 producers share a queue of 8; the consumer sees sequences 1..=N in order
// and each producer sees increasing sequences.
#[tokio::test]
async fn send_queue_orders_sequences() {
    for blocking in [false, true] {
        let per_producer = if blocking { 100 } else { 1000 };
        let config = ClientConfig {
            send_channel_size: 8,
            ..ClientConfig::default()
        };
        let client = MessageClient::new("a", "b", config, Arc::default());
        let mut queue = client.take_queue().unwrap();
        let topic = TestTopic::new("topic");
        let mut producers = JoinSet::new();
        for _ in 0..8 {
            let client = client.clone();
            let topic = topic.clone();
            producers.spawn(async move {
                let cancel = CancellationToken::new();
                let mut last = 0;
                for index in 0..per_producer {
                    let message = TestMessage { index };
                    let seq = if blocking {
                        client
                            .send_message(&topic, &message, &cancel)
                            .await
                            .unwrap()
                    } else {
                        loop {
                            match client.try_send_message(&topic, &message) {
                                Ok(seq) => break seq,
                                Err(Error::SendTryAgain) => tokio::task::yield_now().await,
                                Err(err) => panic!("{err}"),
                            }
                        }
                    };
                    assert!(seq > last);
                    last = seq;
                }
            });
        }
        let total = 8 * per_producer;
        for expected in 1..=total {
            let entry = tokio::time::timeout(Duration::from_secs(10), queue.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(entry.sequence, expected);
        }
        while let Some(joined) = producers.join_next().await {
            joined.unwrap();
        }
    }
}

// Case 56: 16 clients × 512 messages sent before the handler exists (pending limit lifted)
// plus 1024 local messages; per-sender order from 1; acks reach 512; local messages come
// from the server's own ID; removing the handler twice is fine and its error channel gets
// HandlerCancelled.
#[tokio::test]
async fn server_multi_client_single_topic() {
    let (local, local_rx) = LocalClient::new();
    let fixture = setup()
        .config(|config| config.max_pending_message_count_per_topic = 1 << 20)
        .local(local_rx)
        .start()
        .await;
    let topic = TestTopic::new("test-topic-1");
    let cancel = fixture.cancel.clone();
    let mut clients = Vec::new();
    let mut runs = JoinSet::new();
    for i in 0..16 {
        let client = MessageClient::new(
            format!("client-{i}"),
            SERVER_ID,
            test_client_config(),
            Arc::default(),
        );
        let running = client.clone();
        let addr = fixture.addr.clone();
        let run_cancel = cancel.clone();
        runs.spawn(async move { running.run(&run_cancel, &addr).await });
        for index in 1..=512 {
            client
                .send_message(&topic, &TestMessage { index }, &cancel)
                .await
                .unwrap();
        }
        clients.push(client);
    }
    for index in 1..=1024 {
        local
            .send_message(&topic, TestMessage { index }, &cancel)
            .await
            .unwrap();
    }
    let received = Received::default();
    let mut errors = fixture.add_recorder(&topic, &received).await;
    assert!(
        wait_until(Duration::from_secs(20), || count(&received)
            == 16 * 512 + 1024)
        .await
    );
    let last = assert_in_order(&received);
    assert_eq!(last[SERVER_ID], 1024);
    for i in 0..16 {
        assert_eq!(last[&format!("client-{i}")], 512);
    }
    for client in &clients {
        assert!(
            wait_until(Duration::from_secs(5), || client
                .current_ack("test-topic-1")
                == (512, true))
            .await
        );
    }
    fixture
        .server
        .remove_handler("test-topic-1", &cancel)
        .await
        .unwrap();
    fixture
        .server
        .remove_handler("test-topic-1", &cancel)
        .await
        .unwrap();
    assert!(matches!(errors.recv().await, Some(Error::HandlerCancelled)));
    cancel.cancel();
    while let Some(joined) = runs.join_next().await {
        joined.unwrap().unwrap();
    }
    fixture.stop().await;
}

// Case 57: after removal (once ack >= 42) the handler is never called again; removal does not
// wait for wait_unregister_handle_timeout. The messages that follow are received: a new
// handler gets them.
#[tokio::test]
async fn server_deregister_handler() {
    let fixture = setup()
        .config(|config| config.wait_unregister_handle_timeout = Duration::from_secs(60))
        .recorder()
        .start()
        .await;
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    for seq in 1..=42 {
        tx.send(packet(vec![entry("topic", seq)])).await.unwrap();
    }
    wait_ack(&mut responses, "topic", 42).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        fixture.server.remove_handler("topic", &fixture.cancel),
    )
    .await
    .unwrap()
    .unwrap();
    for seq in 43..=60 {
        tx.send(packet(vec![entry("topic", seq)])).await.unwrap();
    }
    let replacement = Received::default();
    fixture.add_recorder(&fixture.topic, &replacement).await;
    wait_ack(&mut responses, "topic", 60).await;
    let indices: Vec<i64> = replacement
        .lock()
        .unwrap()
        .iter()
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(indices, (43..=60).collect::<Vec<_>>());
    assert_eq!(count(&fixture.received), 42);
    fixture.stop().await;
}

// A message for a topic whose handler failed ends the sender's stream instead of being
// buffered; once the handler is replaced, the reconnected sender's resend is handled.
#[tokio::test]
async fn message_for_failed_handler_fails_the_stream() {
    let fixture = setup().start().await;
    let mut errors = fixture
        .server
        .add_handler(
            &fixture.topic,
            |_, message: TestMessage| {
                std::future::ready(if message.index == 2 {
                    Err("refused".into())
                } else {
                    Ok(())
                })
            },
            &fixture.cancel,
        )
        .await
        .unwrap();
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    tx.send(packet(vec![entry("topic", 1), entry("topic", 2)]))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(err, Error::Handler { .. }), "{err}");
    tx.send(packet(vec![entry("topic", 3)])).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let response = responses.message().await.unwrap().unwrap();
            if response.exit_reason() != ExitReason::Ok {
                return response;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(reason.exit_reason(), ExitReason::Unknown);
    assert!(
        reason
            .error_message
            .contains("CDC:ErrWorkerPoolHandleCancelled")
            && reason.error_message.contains("topic topic has failed"),
        "{}",
        reason.error_message
    );

    // A replacement handler takes the resend from 2 (1 was processed, 2 and 3 were not).
    fixture
        .add_recorder(&fixture.topic, &fixture.received)
        .await;
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 2)).await;
    tx.send(packet(vec![entry("topic", 2), entry("topic", 3)]))
        .await
        .unwrap();
    wait_ack(&mut responses, "topic", 3).await;
    let indices: Vec<i64> = fixture
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(indices, vec![2, 3]);
    fixture.stop().await;
}

// A handler that panics is removed and reported; the server keeps serving other topics.
#[tokio::test]
async fn handler_panic_is_isolated() {
    let fixture = setup().start().await;
    let mut errors = fixture
        .server
        .add_handler(
            &TestTopic::new("panicking"),
            |_, message: TestMessage| {
                assert!(message.index != 2, "handler bug on message 2");
                std::future::ready(Ok(()))
            },
            &fixture.cancel,
        )
        .await
        .unwrap();
    fixture
        .add_recorder(&TestTopic::new("other"), &fixture.received)
        .await;
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    tx.send(packet(vec![entry("panicking", 1), entry("panicking", 2)]))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&err, Error::HandlerPanicked { topic, message }
            if topic == "panicking" && message.contains("handler bug on message 2")),
        "{err}"
    );
    tx.send(packet(vec![entry("other", 1)])).await.unwrap();
    wait_ack(&mut responses, "other", 1).await;
    assert_eq!(count(&fixture.received), 1);
    assert!(!fixture.run.is_finished(), "the server still runs");
    fixture.stop().await;
}

// Topics named per changefeed do not accumulate: once a topic's handler is removed, the
// server trims its ack records and the client its state; the topic then starts over at 1.
#[tokio::test]
async fn removed_topics_are_trimmed() {
    let fixture = setup()
        .config(|config| config.removed_topic_linger = Duration::from_millis(50))
        .client(test_client_config())
        .start()
        .await;
    let (server, client, cancel) = (&fixture.server, fixture.client(), &fixture.cancel);
    let kept = TestTopic::new("kept");
    fixture.add_recorder(&kept, &fixture.received).await;
    let topics: Vec<TestTopic> = (0..8)
        .map(|i| TestTopic::new(format!("changefeed-{i}")))
        .collect();
    for topic in &topics {
        fixture.add_recorder(topic, &fixture.received).await;
    }
    for topic in topics.iter().chain([&kept]) {
        for index in 1..=3 {
            client
                .send_message(topic, &TestMessage { index }, cancel)
                .await
                .unwrap();
        }
    }
    for topic in topics.iter().chain([&kept]) {
        assert_acked(client, topic.name(), 3, Duration::from_secs(10)).await;
    }
    assert_eq!(server.n_ack_records(), 9);
    assert_eq!(client.n_topics(), 9);

    for topic in &topics {
        server.remove_handler(topic.name(), cancel).await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || server.n_ack_records() == 1
            && client.n_topics() == 1)
        .await,
        "records {}, client topics {}",
        server.n_ack_records(),
        client.n_topics()
    );
    assert_eq!(client.current_ack("kept"), (3, true));

    // A topic that comes back starts over and is handled.
    let again = Received::default();
    fixture.add_recorder(&topics[0], &again).await;
    let seq = client
        .send_message(&topics[0], &TestMessage { index: 1 }, cancel)
        .await
        .unwrap();
    assert_eq!(seq, 1);
    assert_acked(client, topics[0].name(), 1, Duration::from_secs(10)).await;
    assert_eq!(count(&again), 1);
    fixture.stop().await;
}

// Case 58: cancelling the server ends open streams with "message server is closing".
#[tokio::test]
async fn server_closed_ends_streams() {
    let fixture = setup().start().await;
    let mut n_peers = fixture.server.n_peers();
    let (_tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    n_peers.wait_for(|n| *n == 1).await.unwrap();
    fixture.server_cancel.cancel();
    let status = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        status.message().contains("message server is closing"),
        "{status:?}"
    );
    fixture.stop().await;
}

// Case 59: 512 messages to a topic without handler, limit 256 -> CONGESTED.
#[tokio::test]
async fn topic_congested_without_handler() {
    let fixture = setup().start().await;
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    for seq in 1..=512 {
        // A send may fail once the server has closed the stream.
        if tx.send(packet(vec![entry("topic", seq)])).await.is_err() {
            break;
        }
    }
    assert_eq!(
        next_exit_reason(&mut responses).await,
        Some(ExitReason::Congested)
    );
    fixture.stop().await;
}

// Cases 60, 61 and duplicate-stream arbitration: an older incoming stream is stale; a newer
// one makes the old stream stale; the same epoch twice is a duplicate.
#[tokio::test]
async fn stream_epoch_arbitration() {
    let fixture = setup().start().await;
    let addr = fixture.addr.as_str();
    let mut n_peers = fixture.server.n_peers();
    let (_tx5, mut responses5) = open_raw(addr, meta("client-1", SERVER_ID, 5)).await;
    n_peers.wait_for(|n| *n == 1).await.unwrap();
    let (_tx4, mut responses4) = open_raw(addr, meta("client-1", SERVER_ID, 4)).await;
    assert_eq!(
        next_exit_reason(&mut responses4).await,
        Some(ExitReason::StaleConnection)
    );
    let (_tx5b, mut responses5b) = open_raw(addr, meta("client-1", SERVER_ID, 5)).await;
    assert_eq!(
        next_exit_reason(&mut responses5b).await,
        Some(ExitReason::DuplicateConnection)
    );
    let (_tx6, _responses6) = open_raw(addr, meta("client-1", SERVER_ID, 6)).await;
    assert_eq!(
        next_exit_reason(&mut responses5).await,
        Some(ExitReason::StaleConnection)
    );
    fixture.stop().await;
}

// Case 62: every message sent twice -> each index once, in order; ack reaches 128.
#[tokio::test]
async fn repeated_messages_are_dropped() {
    let fixture = setup().recorder().start().await;
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    for seq in 1..=128 {
        tx.send(packet(vec![entry("topic", seq)])).await.unwrap();
        tx.send(packet(vec![entry("topic", seq)])).await.unwrap();
    }
    wait_ack(&mut responses, "topic", 128).await;
    assert_eq!(count(&fixture.received), 128);
    assert_in_order(&fixture.received);
    assert_eq!(fixture.server.metrics().messages_repeated, 128);
    fixture.stop().await;
}

// Cases 63, 64 (adapted: the main loop "is blocked" by never having started): a pending
// add_handler returns ServerClosed and a pending remove_handler returns Ok once
// the server is cancelled.
#[tokio::test]
async fn exit_while_adding_or_removing_handler() {
    let server = Arc::new(MessageServer::new(SERVER_ID, test_server_config()));
    let topic = TestTopic::new("topic");
    let cancel = CancellationToken::new();
    let adding = {
        let server = Arc::clone(&server);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            server
                .add_handler(
                    &topic,
                    |_, _: TestMessage| std::future::ready(Ok(())),
                    &cancel,
                )
                .await
                .map(|_| ())
        })
    };
    let removing = {
        let server = Arc::clone(&server);
        let cancel = cancel.clone();
        tokio::spawn(async move { server.remove_handler("topic", &cancel).await })
    };
    let server_cancel = CancellationToken::new();
    server_cancel.cancel();
    server.run(server_cancel, None).await.unwrap();
    assert!(matches!(adding.await.unwrap(), Err(Error::ServerClosed)));
    removing.await.unwrap().unwrap();
    assert!(matches!(
        server.run(CancellationToken::new(), None).await,
        Err(Error::AlreadyRunning)
    ));
}

// Case 65: a receiver ID other than the server's gets CAPTURE_ID_MISMATCH first.
#[tokio::test]
async fn receiver_id_mismatch() {
    let fixture = setup().start().await;
    let (_tx, mut responses) = open_raw(&fixture.addr, meta("client-1", "test-server-2", 1)).await;
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.exit_reason(), ExitReason::CaptureIdMismatch);
    assert!(
        first
            .error_message
            .contains("CDC:ErrPeerMessageReceiverMismatch")
    );
    assert!(responses.message().await.is_err());
    fixture.stop().await;
}

// Case 66: seqs 1, 2, 3; the handler blocks on 2 and is removed (3 is lost) and re-added;
// seq 4 arrives -> the new handler is never called and its error channel gets DataLost.
#[tokio::test]
async fn data_loss_after_unregister_handler() {
    let fixture = setup().start().await;
    let (server, topic, cancel) = (&fixture.server, &fixture.topic, &fixture.cancel);
    let (entered_tx, mut entered_rx) = mpsc::channel(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let handler_release = Arc::clone(&release);
    server
        .add_handler(
            topic,
            move |_, message: TestMessage| {
                let entered_tx = entered_tx.clone();
                let release = Arc::clone(&handler_release);
                async move {
                    if message.index == 2 {
                        entered_tx.send(()).await.unwrap();
                        release.notified().await;
                    }
                    Ok(())
                }
            },
            cancel,
        )
        .await
        .unwrap();
    let (tx, _responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    tx.send(packet(vec![
        entry("topic", 1),
        entry("topic", 2),
        entry("topic", 3),
    ]))
    .await
    .unwrap();
    entered_rx.recv().await.unwrap();
    let mut n_handlers = fixture.probe.n_handlers.subscribe();
    let removing = {
        let server = Arc::clone(server);
        let cancel = cancel.clone();
        tokio::spawn(async move { server.remove_handler("topic", &cancel).await })
    };
    // Release the handler only once the main loop has removed it.
    tokio::time::timeout(Duration::from_secs(10), n_handlers.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    release.notify_one();
    removing.await.unwrap().unwrap();
    let called = Received::default();
    let mut errors = fixture.add_recorder(topic, &called).await;
    tx.send(packet(vec![entry("topic", 4)])).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::DataLost {
                expected_seq: 3,
                got_seq: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(count(&called), 0);
    fixture.stop().await;
}

// Case 67: deregister_peer empties the registry.
#[tokio::test]
async fn server_deregister_peer() {
    let fixture = setup().start().await;
    let mut n_peers = fixture.server.n_peers();
    let (_tx, _responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    n_peers.wait_for(|n| *n == 1).await.unwrap();
    fixture.server.deregister_peer("client-1");
    tokio::time::timeout(Duration::from_secs(10), n_peers.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    fixture.stop().await;
}

// Deregistering cannot be lost to a full task queue (a frozen peer is exactly when it fills).
#[tokio::test]
async fn deregister_peer_with_full_task_queue() {
    let fixture = setup()
        .config(|config| config.max_pending_task_count = 2)
        .start()
        .await;
    let mut n_peers = fixture.server.n_peers();
    let (_tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    n_peers.wait_for(|n| *n == 1).await.unwrap();
    let (unblock, entered) = fixture.probe.block_main_loop(&fixture.server).unwrap();
    entered.await.unwrap();
    let topic = TestTopic::new("topic");
    let mut n_queued = 0;
    let full = loop {
        match fixture
            .server
            .try_add_handler(&topic, |_, _: TestMessage| std::future::ready(Ok(())))
        {
            Ok(_) if n_queued < 16 => n_queued += 1,
            Ok(_) => panic!("the task queue of 2 never filled"),
            Err(err) => break err,
        }
    };
    assert!(matches!(full, Error::TaskQueueCongested), "{full}");
    fixture.server.deregister_peer("client-1");
    unblock.send(()).unwrap();
    assert_eq!(
        next_exit_reason(&mut responses).await,
        Some(ExitReason::CaptureSuicide)
    );
    tokio::time::timeout(Duration::from_secs(10), n_peers.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    fixture.stop().await;
}

// A deregistered sender that comes back (a frozen capture resumed) and resends what it had
// not seen acked is refused with a clear status; nothing is handled twice.
#[tokio::test]
async fn deregistered_sender_is_refused() {
    let fixture = setup().recorder().start().await;
    let mut n_peers = fixture.server.n_peers();
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 1)).await;
    for seq in 1..=3 {
        tx.send(packet(vec![entry("topic", seq)])).await.unwrap();
    }
    wait_ack(&mut responses, "topic", 3).await;
    fixture.server.deregister_peer("client-1");
    assert_eq!(
        next_exit_reason(&mut responses).await,
        Some(ExitReason::CaptureSuicide)
    );
    tokio::time::timeout(Duration::from_secs(10), n_peers.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();

    // The resumed sender reconnects and resends from its last ack it saw (say 1).
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-1", SERVER_ID, 2)).await;
    // The send may fail once the server has refused the stream.
    let _ = tx
        .send(packet(vec![
            entry("topic", 2),
            entry("topic", 3),
            entry("topic", 4),
        ]))
        .await;
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.exit_reason(), ExitReason::CaptureSuicide);
    assert!(
        first
            .error_message
            .contains("CDC:ErrPeerMessageSenderDeregistered"),
        "{}",
        first.error_message
    );
    let status = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("was deregistered"), "{status:?}");

    // A message client with that sender ID fails permanently instead of reconnecting.
    let client = MessageClient::new("client-1", SERVER_ID, test_client_config(), Arc::default());
    client
        .try_send_message(&TestTopic::new("topic"), &TestMessage { index: 1 })
        .unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        client.run(&CancellationToken::new(), &fixture.addr),
    )
    .await
    .unwrap();
    assert!(
        matches!(result, Err(Error::ClientPermanentFail { .. })),
        "{result:?}"
    );

    // Nothing was handled twice: a marker from a live sender comes after exactly 1, 2, 3.
    let (tx, mut responses) = open_raw(&fixture.addr, meta("client-2", SERVER_ID, 1)).await;
    tx.send(packet(vec![entry("topic", 1)])).await.unwrap();
    wait_ack(&mut responses, "topic", 1).await;
    let seen: Vec<(String, i64)> = fixture.received.lock().unwrap().clone();
    let expected: Vec<(String, i64)> = [
        ("client-1", 1),
        ("client-1", 2),
        ("client-1", 3),
        ("client-2", 1),
    ]
    .into_iter()
    .map(|(sender, index)| (sender.to_owned(), index))
    .collect();
    assert_eq!(seen, expected);
    fixture.stop().await;
}

/// Restarts the stream that delivered a batch, at random, `per_mille` times in a thousand.
struct RandomRestarts {
    per_mille: u32,
}

impl ServerFaults for RandomRestarts {
    fn restart_stream(&self) -> bool {
        rand::random_range(0..1000) < self.per_mille
    }
}

/// Runs `n_senders` tasks that each send `per_sender` messages on every topic through one
/// client, and checks every topic's ack reaches the total and handlers saw order.
async fn run_client_load(
    n_topics: usize,
    n_senders: usize,
    per_sender: i64,
    config: ServerConfig,
    inject_per_mille: u32,
) {
    let fixture = setup()
        .config(|adjusted| *adjusted = config)
        .faults(RandomRestarts {
            per_mille: inject_per_mille,
        })
        .client(test_client_config())
        .start()
        .await;
    let (server, client, cancel) = (&fixture.server, fixture.client(), &fixture.cancel);
    let topics: Vec<TestTopic> = (0..n_topics)
        .map(|i| TestTopic::new(format!("topic-{i}")))
        .collect();
    let mut received = Vec::new();
    for topic in &topics {
        let topic_received = Received::default();
        let seen = Arc::clone(&topic_received);
        let mut last = 0;
        // Within one topic and sender, sequences and therefore delivery are ordered.
        server
            .add_handler(
                topic,
                move |sender, message: TestMessage| {
                    assert!(message.index > 0);
                    last += 1;
                    seen.lock().unwrap().push((sender.to_string(), last));
                    std::future::ready(Ok(()))
                },
                cancel,
            )
            .await
            .unwrap();
        received.push(topic_received);
    }
    let mut senders = JoinSet::new();
    for _ in 0..n_senders {
        let client = client.clone();
        let topics = topics.clone();
        let cancel = cancel.clone();
        senders.spawn(async move {
            for index in 1..=per_sender {
                for topic in &topics {
                    client
                        .send_message(topic, &TestMessage { index }, &cancel)
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(joined) = senders.join_next().await {
        joined.unwrap();
    }
    let total = n_senders as i64 * per_sender;
    for topic in &topics {
        assert!(
            wait_until(Duration::from_secs(40), || client.current_ack(topic.name())
                == (total, true))
            .await,
            "ack of {} is {:?}",
            topic.name(),
            client.current_ack(topic.name())
        );
    }
    for topic_received in &received {
        assert_eq!(count(topic_received), total as usize);
    }
    fixture.stop().await;
}

// Case 68: 1 topic, 4 senders × 1024 -> ack 4096.
#[tokio::test]
async fn message_client_basic() {
    run_client_load(1, 4, 1024, test_server_config(), 0).await;
}

// Case 69: 4 topics × 4 senders × 1024 -> every ack 4096.
#[tokio::test]
async fn message_client_basic_multi_topics() {
    run_client_load(4, 4, 1024, test_server_config(), 0).await;
}

// Case 70: the server randomly (1%) answers CONGESTED and drops the stream; 128 messages on
// 1 and on 4 topics arrive gap-free and in order, acks reach 128.
#[tokio::test]
async fn server_restart_injected() {
    let config = ServerConfig {
        max_pending_message_count_per_topic: 1 << 20,
        ..test_server_config()
    };
    run_client_load(1, 1, 128, config.clone(), 10).await;
    run_client_load(4, 1, 128, config, 10).await;
}

// Case 73: try_send_message retried on SendTryAgain gives consecutive sequences; order and
// ack 128 hold.
#[tokio::test]
async fn basic_nonblocking() {
    let fixture = setup()
        .recorder()
        .client(ClientConfig {
            send_channel_size: 4,
            ..test_client_config()
        })
        .start()
        .await;
    let client = fixture.client();
    for index in 1..=128 {
        let seq = loop {
            match client.try_send_message(&fixture.topic, &TestMessage { index }) {
                Ok(seq) => break seq,
                Err(Error::SendTryAgain) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(err) => panic!("{err}"),
            }
        };
        assert_eq!(seq, index);
    }
    assert_acked(client, "topic", 128, Duration::from_secs(10)).await;
    assert_in_order(&fixture.received);
    fixture.stop().await;
}

// Case 74: a task queue of 10 and a slowed main loop push back; 1024 send_message calls
// succeed and the final ack equals the last sequence.
#[tokio::test]
async fn message_back_pressure() {
    let fixture = setup()
        .config(|config| config.max_pending_task_count = 10)
        .client(test_client_config())
        .start()
        .await;
    let (server, client, cancel) = (&fixture.server, fixture.client(), &fixture.cancel);
    let seen = Arc::clone(&fixture.received);
    server
        .add_handler(
            &fixture.topic,
            move |sender: SenderId, message: TestMessage| {
                seen.lock()
                    .unwrap()
                    .push((sender.to_string(), message.index));
                async move {
                    if message.index % 64 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(())
                }
            },
            cancel,
        )
        .await
        .unwrap();
    let mut last = 0;
    for index in 1..=1024 {
        if index % 256 == 0 {
            // Slow the main loop down for a moment.
            let unblock = loop {
                match fixture.probe.block_main_loop(server) {
                    Ok((unblock, _)) => break unblock,
                    Err(Error::TaskQueueCongested) => tokio::task::yield_now().await,
                    Err(err) => panic!("{err}"),
                }
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            unblock.send(()).unwrap();
        }
        last = client
            .send_message(&fixture.topic, &TestMessage { index }, cancel)
            .await
            .unwrap();
    }
    assert_acked(client, "topic", last, Duration::from_secs(10)).await;
    assert_in_order(&fixture.received);
    fixture.stop().await;
}

// Case 75: per-topic pending limit 10; 100 messages paced; the handler is removed for a while
// and re-added -> CONGESTED, reconnect and resend; the ack finally reaches 100.
#[tokio::test]
async fn topic_congested_then_recovers() {
    let fixture = setup()
        .config(|config| config.max_pending_message_count_per_topic = 10)
        .recorder()
        .client(test_client_config())
        .start()
        .await;
    let (server, client, cancel) = (&fixture.server, fixture.client(), &fixture.cancel);
    for index in 1..=100 {
        if index == 30 {
            server.remove_handler("topic", cancel).await.unwrap();
        }
        if index == 70 {
            fixture
                .add_recorder(&fixture.topic, &fixture.received)
                .await;
        }
        client
            .send_message(&fixture.topic, &TestMessage { index }, cancel)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_acked(client, "topic", 100, Duration::from_secs(20)).await;
    assert!(
        fixture.client_metrics.snapshot().reconnects >= 1,
        "congestion forced a reconnect"
    );
    let indices: Vec<i64> = fixture
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, index)| *index)
        .collect();
    assert_eq!(indices, (1..=100).collect::<Vec<_>>());
    fixture.stop().await;
}

type ResponseSenders =
    Arc<Mutex<Vec<mpsc::Sender<std::result::Result<SendMessageResponse, tonic::Status>>>>>;

/// A protocol double: records every packet and lets the test answer.
struct RecordingServer {
    packets: mpsc::Sender<(usize, MessagePacket)>,
    responses: ResponseSenders,
    n_streams: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl crate::proto::cdc_peer_to_peer_server::CdcPeerToPeer for RecordingServer {
    type SendMessageStream =
        ReceiverStream<std::result::Result<SendMessageResponse, tonic::Status>>;

    async fn send_message(
        &self,
        request: tonic::Request<Streaming<MessagePacket>>,
    ) -> std::result::Result<tonic::Response<Self::SendMessageStream>, tonic::Status> {
        let stream_index = self.n_streams.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(16);
        self.responses.lock().unwrap().push(tx);
        let packets = self.packets.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(packet)) = inbound.message().await {
                if packets.send((stream_index, packet)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

struct Recording {
    addr: String,
    packets: mpsc::Receiver<(usize, MessagePacket)>,
    responses: ResponseSenders,
    cancel: CancellationToken,
}

async fn start_recording() -> Recording {
    let (packets_tx, packets) = mpsc::channel(1024);
    let responses = Arc::default();
    let service = RecordingServer {
        packets: packets_tx,
        responses: Arc::clone(&responses),
        n_streams: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    let shutdown = cancel.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(crate::proto::cdc_peer_to_peer_server::CdcPeerToPeerServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
            .unwrap();
    });
    Recording {
        addr,
        packets,
        responses,
        cancel,
    }
}

impl Recording {
    async fn next_packet(&mut self) -> (usize, MessagePacket) {
        tokio::time::timeout(Duration::from_secs(10), self.packets.recv())
            .await
            .unwrap()
            .unwrap()
    }

    fn respond(
        &self,
        stream: usize,
        response: std::result::Result<SendMessageResponse, tonic::Status>,
    ) {
        let sender = self.responses.lock().unwrap()[stream].clone();
        sender.try_send(response).unwrap();
    }
}

fn ack_response(topic: &str, last_seq: i64) -> SendMessageResponse {
    SendMessageResponse {
        ack: vec![crate::proto::Ack {
            topic: topic.to_owned(),
            last_seq,
        }],
        exit_reason: ExitReason::Ok as i32,
        error_message: String::new(),
    }
}

// Case 76: first meta {sender, receiver, epoch 1, version, advertised address}; try_send gives
// seq 1; current_ack known 0 / unknown false; ack 1 -> 1; send_message gives seq 2; a stream
// error -> epoch 2 resends seq 2 only.
#[tokio::test]
async fn client_basics_against_recording_server() {
    let mut recording = start_recording().await;
    let config = ClientConfig {
        client_version: "v5.4.0".to_owned(),
        advertised_addr: "fake-addr:8300".to_owned(),
        ..test_client_config()
    };
    let client = MessageClient::new("node-1", "node-2", config, Arc::default());
    let cancel = CancellationToken::new();
    let run = spawn_run(&client, &recording.addr, cancel.clone());
    let (stream, first) = recording.next_packet().await;
    assert_eq!(stream, 0);
    let expected = StreamMeta {
        client_version: "v5.4.0".to_owned(),
        sender_advertised_addr: "fake-addr:8300".to_owned(),
        ..meta("node-1", "node-2", 1)
    };
    assert_eq!(first.meta, Some(expected));
    assert!(first.entries.is_empty());
    let topic = TestTopic::new("test-topic");
    assert_eq!(
        client
            .try_send_message(&topic, &TestMessage { index: 1 })
            .unwrap(),
        1
    );
    let (_, batch) = recording.next_packet().await;
    assert_eq!(batch.entries.len(), 1);
    assert_eq!(batch.entries[0].sequence, 1);
    assert_eq!(client.current_ack("test-topic"), (0, true));
    assert_eq!(client.current_ack("unknown"), (0, false));
    recording.respond(0, Ok(ack_response("test-topic", 1)));
    assert_acked(&client, "test-topic", 1, Duration::from_secs(5)).await;
    assert_eq!(
        client
            .send_message(&topic, &TestMessage { index: 2 }, &cancel)
            .await
            .unwrap(),
        2
    );
    let (_, batch) = recording.next_packet().await;
    assert_eq!(batch.entries[0].sequence, 2);
    recording.respond(0, Err(tonic::Status::internal("injected")));
    let (stream, reconnect) = recording.next_packet().await;
    assert_eq!(stream, 1);
    assert_eq!(reconnect.meta.unwrap().epoch, 2);
    let (_, resent) = recording.next_packet().await;
    let seqs: Vec<i64> = resent.entries.iter().map(|entry| entry.sequence).collect();
    assert_eq!(seqs, vec![2]);
    cancel.cancel();
    run.await.unwrap().unwrap();
    recording.cancel.cancel();
}

// Case 77: CAPTURE_ID_MISMATCH ends run with ClientPermanentFail, without reconnecting.
#[tokio::test]
async fn client_permanent_failure() {
    let mut recording = start_recording().await;
    let client = MessageClient::new("node-1", "node-2", test_client_config(), Arc::default());
    let cancel = CancellationToken::new();
    let run = spawn_run(&client, &recording.addr, cancel);
    let (stream, _) = recording.next_packet().await;
    recording.respond(
        stream,
        Ok(SendMessageResponse {
            exit_reason: ExitReason::CaptureIdMismatch as i32,
            ..SendMessageResponse::default()
        }),
    );
    let result = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(Error::ClientPermanentFail { .. })));
    assert!(recording.packets.try_recv().is_err(), "no reconnect");
    let topic = TestTopic::new("topic");
    assert!(matches!(
        client.try_send_message(&topic, &TestMessage { index: 1 }),
        Err(Error::ClientClosed)
    ));
    recording.cancel.cancel();
}

// Case 78: with a queue of 1 and no consumer (the peer is unreachable), the second try_send
// gives SendTryAgain; stopping the client releases a blocked send_message; sending after
// run ended gives ClientClosed.
#[tokio::test]
async fn client_send_anomalies() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = unused.local_addr().unwrap().to_string();
    drop(unused);
    let config = ClientConfig {
        send_channel_size: 1,
        ..test_client_config()
    };
    let client = MessageClient::new("node-1", "node-2", config, Arc::default());
    let topic = TestTopic::new("topic");
    assert_eq!(
        client
            .try_send_message(&topic, &TestMessage { index: 1 })
            .unwrap(),
        1
    );
    assert!(matches!(
        client.try_send_message(&topic, &TestMessage { index: 2 }),
        Err(Error::SendTryAgain)
    ));
    let run_cancel = CancellationToken::new();
    let run = spawn_run(&client, &addr, run_cancel.clone());
    let blocked = {
        let client = client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            client
                .send_message(&topic, &TestMessage { index: 2 }, &CancellationToken::new())
                .await
        })
    };
    run_cancel.cancel();
    run.await.unwrap().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(Error::ClientClosed)));
    assert!(matches!(
        client
            .send_message(&topic, &TestMessage { index: 3 }, &CancellationToken::new())
            .await,
        Err(Error::ClientClosed)
    ));
}

// Case 79: 3 servers, 1024 messages round-robin through one router; each handler sees
// in-order indices from the router's capture; the local client and channel exist; an
// unknown peer gives None; close three times is safe.
#[tokio::test]
async fn router_basic() {
    let router = MessageRouter::new("test-client-1", test_client_config());
    let mut servers = Vec::new();
    let mut received = Vec::new();
    let cancel = CancellationToken::new();
    let topic = TestTopic::new("topic");
    for i in 0..3 {
        let server_id = format!("server-{i}");
        let server = setup().server_id(&server_id).recorder().start().await;
        router.add_peer(&server_id, &server.addr);
        received.push(Arc::clone(&server.received));
        servers.push(server);
    }
    assert!(router.client("test-client-1").is_some());
    assert!(router.local_channel().is_some());
    assert!(router.client("unknown").is_none());
    let mut last = [0; 3];
    for index in 0..1024 {
        let peer = (index % 3) as usize;
        let client = router.client(&format!("server-{peer}")).unwrap();
        last[peer] = client
            .send_message(
                &topic,
                TestMessage {
                    index: last[peer] + 1,
                },
                &cancel,
            )
            .await
            .unwrap();
    }
    for peer in 0..3 {
        let client = router.client(&format!("server-{peer}")).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || client.current_ack("topic")
                == (last[peer], true))
            .await
        );
        let seen = assert_in_order(&received[peer]);
        assert_eq!(seen["test-client-1"], last[peer]);
    }
    router.close().await;
    router.close().await;
    router.close().await;
    for server in servers {
        server.stop().await;
    }
}

// Case 80: after remove_peer, sending on that peer's client soon gives ClientClosed (the
// 500 ms of the Go test is a generous deadline here); traffic to the other peer is unaffected.
#[tokio::test]
async fn router_remove_peer() {
    let router = MessageRouter::new("test-client-1", test_client_config());
    let cancel = CancellationToken::new();
    let topic = TestTopic::new("topic");
    let server1 = setup().server_id("server-1").recorder().start().await;
    let server2 = setup().server_id("server-2").recorder().start().await;
    router.add_peer("server-1", &server1.addr);
    router.add_peer("server-2", &server2.addr);
    let client2 = router.client("server-2").unwrap();
    for index in 1..=128 {
        client2
            .send_message(&topic, TestMessage { index }, &cancel)
            .await
            .unwrap();
    }
    router.remove_peer("server-2");
    let closed = async {
        loop {
            match client2
                .send_message(&topic, TestMessage { index: 0 }, &cancel)
                .await
            {
                Err(Error::ClientClosed) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(err) => panic!("{err}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .unwrap();
    assert!(router.client("server-2").is_none(), "the address is gone");
    let client1 = router.client("server-1").unwrap();
    for index in 1..=128 {
        client1
            .send_message(&topic, TestMessage { index }, &cancel)
            .await
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || client1.current_ack("topic")
            == (128, true))
        .await
    );
    router.close().await;
    server1.stop().await;
    server2.stop().await;
}

// Dropping a router stops its clients.
#[tokio::test]
async fn router_drop_stops_clients() {
    let server = setup().recorder().start().await;
    let router = MessageRouter::new("test-client-1", test_client_config());
    router.add_peer(SERVER_ID, &server.addr);
    let Some(PeerClient::Remote(client)) = router.client(SERVER_ID) else {
        panic!("a remote client");
    };
    client
        .send_message(&server.topic, &TestMessage { index: 1 }, &server.cancel)
        .await
        .unwrap();
    assert_acked(&client, "topic", 1, Duration::from_secs(10)).await;
    drop(router);
    assert!(wait_until(Duration::from_secs(10), || client.is_closed()).await);
    server.stop().await;
}

// Case 81: a permanently failing client reports ClientPermanentFail on the router's errors.
#[tokio::test]
async fn router_client_failure() {
    let router = MessageRouter::new("test-client-1", test_client_config());
    let mut errors = router.errors().unwrap();
    let server = setup().server_id("server-1").start().await;
    // The peer's address now belongs to another capture.
    router.add_peer("server-2", &server.addr);
    let client = router.client("server-2").unwrap();
    let topic = TestTopic::new("topic");
    client
        .try_send_message(&topic, TestMessage { index: 1 })
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(err, Error::ClientPermanentFail { .. }), "{err}");
    router.close().await;
    server.stop().await;
}

// Case 82: no inner server -> UNAVAILABLE; reset(inner) -> a packet reaches the server with
// one active stream; reset(None) -> the stream fails with CANCELLED.
#[tokio::test]
async fn server_wrapper_basics() {
    let server = setup().start().await;
    server.wrapper.reset(None);
    let mut client = connect(&server.addr, &ClientConfig::default())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(MessagePacket {
        meta: Some(meta("client-1", SERVER_ID, 1)),
        entries: Vec::new(),
    })
    .await
    .unwrap();
    let status = client
        .send_message(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "message server is not running");

    server.wrapper.reset(Some(Arc::clone(&server.server)));
    let mut n_peers = server.server.n_peers();
    let (_tx, mut responses) = open_raw(&server.addr, meta("client-1", SERVER_ID, 1)).await;
    n_peers.wait_for(|n| *n == 1).await.unwrap();
    server.wrapper.reset(None);
    let status = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled);
    server.stop().await;
}

// Case 83 (adapted: no hook pauses the RPC inside the wrapper, so streams are opened while
// reset runs concurrently): no panic, no deadlock, every stream ends.
#[tokio::test]
async fn server_wrapper_reset_races_streams() {
    let server = setup().start().await;
    let mut opening = JoinSet::new();
    for i in 0..16 {
        let addr = server.addr.clone();
        opening.spawn(async move {
            let mut client = connect(&addr, &ClientConfig::default()).await.unwrap();
            let (tx, rx) = mpsc::channel(4);
            tx.send(MessagePacket {
                meta: Some(meta(&format!("client-{i}"), SERVER_ID, 1)),
                entries: Vec::new(),
            })
            .await
            .unwrap();
            if let Ok(response) = client.send_message(ReceiverStream::new(rx)).await {
                let mut responses = response.into_inner();
                while let Ok(Some(_)) = responses.message().await {}
            }
        });
    }
    for round in 0..16 {
        let inner = (round % 2 == 1).then(|| Arc::clone(&server.server));
        server.wrapper.reset(inner);
        tokio::task::yield_now().await;
    }
    server.wrapper.reset(None);
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(joined) = opening.join_next().await {
            joined.unwrap();
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

// Cases 84, 85: defaults are sane; an empty config adjusts to the defaults; out-of-range
// values are ErrInvalidServerOption; durations read as humantime strings.
#[test]
fn messages_config_defaults_and_validation() {
    let server = ServerConfig::default();
    assert!(server.max_pending_task_count > 0 && server.worker_pool_size > 0);
    assert!(server.ack_interval < Duration::from_secs(10));
    assert_eq!(server.max_recv_msg_size, 256 << 20);
    let client = ClientConfig::default();
    assert!(client.max_batch_count > 0 && client.max_batch_bytes > 0);
    assert!(client.retry_rate_limit_per_second > 0.1);

    let mut empty: MessagesConfig = serde_json::from_value(serde_json::json!({
        "client-max-batch-interval": "0s",
        "client-max-batch-size": 0,
        "client-max-batch-count": 0,
        "client-retry-rate-limit": 0.0,
        "server-max-pending-message-count": 0,
        "server-ack-interval": "0s",
        "server-worker-pool-size": 0,
        "max-recv-msg-size": 0,
        "keep-alive-time": "0s",
        "keep-alive-timeout": "0s",
    }))
    .unwrap();
    empty.validate_and_adjust().unwrap();
    assert_eq!(empty, MessagesConfig::default());

    let parsed: MessagesConfig =
        serde_json::from_value(serde_json::json!({"client-max-batch-interval": "20ms"})).unwrap();
    assert_eq!(parsed.client_max_batch_interval, Duration::from_millis(20));
    assert!(
        serde_json::from_value::<MessagesConfig>(serde_json::json!({"no-such-key": 1})).is_err()
    );

    let invalid = [
        MessagesConfig {
            server_ack_interval: Duration::from_secs(20),
            ..MessagesConfig::default()
        },
        MessagesConfig {
            client_max_batch_interval: Duration::from_secs(20),
            ..MessagesConfig::default()
        },
        MessagesConfig {
            server_worker_pool_size: 64,
            ..MessagesConfig::default()
        },
        MessagesConfig {
            max_recv_msg_size: -1,
            ..MessagesConfig::default()
        },
    ];
    for mut config in invalid {
        let err = config.validate_and_adjust().unwrap_err();
        assert_eq!(err.code(), "CDC:ErrInvalidServerOption");
    }
    let defaults = MessagesConfig::default();
    assert_eq!(defaults.client_config("addr").max_batch_count, 1024);
    assert_eq!(defaults.client_config("addr").max_batch_bytes, 64 << 20);
    assert_eq!(
        defaults.server_config().ack_interval,
        Duration::from_millis(100)
    );
}

// A reconnect rate that is tiny, huge or infinite is refused by validation, and a client
// built with one anyway (no validation) still connects instead of panicking.
#[tokio::test]
async fn retry_rate_extremes() {
    for rate in [1e-30, 1e-4, 2e6, 1e30, f64::INFINITY] {
        let mut config = MessagesConfig {
            client_retry_rate_limit: rate,
            ..MessagesConfig::default()
        };
        let err = config.validate_and_adjust().unwrap_err();
        assert_eq!(err.code(), "CDC:ErrInvalidServerOption", "{rate}");
        assert!(err.to_string().contains("client-retry-rate-limit"), "{err}");
    }
    for (rate, adjusted) in [(1e-3, 1e-3), (1e6, 1e6), (f64::NAN, 1.0), (-1.0, 1.0)] {
        let mut config = MessagesConfig {
            client_retry_rate_limit: rate,
            ..MessagesConfig::default()
        };
        config.validate_and_adjust().unwrap();
        assert_eq!(config.client_retry_rate_limit, adjusted);
    }

    let server = setup().recorder().start().await;
    let (cancel, topic) = (&server.cancel, &server.topic);
    for (i, rate) in [1e-30, 1e30, f64::INFINITY, f64::NAN, 0.0]
        .into_iter()
        .enumerate()
    {
        let config = ClientConfig {
            retry_rate_limit_per_second: rate,
            ..test_client_config()
        };
        let client = MessageClient::new(format!("client-{i}"), SERVER_ID, config, Arc::default());
        let stop = cancel.child_token();
        let run = spawn_run(&client, &server.addr, stop.clone());
        client
            .send_message(topic, &TestMessage { index: 1 }, cancel)
            .await
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || client.current_ack("topic")
                == (1, true))
            .await,
            "rate {rate}"
        );
        stop.cancel();
        run.await.unwrap().unwrap();
    }
    server.stop().await;
}

/// Makes the next chunk a client takes from its queue panic, once armed.
#[derive(Debug, Default)]
struct PanicOnce {
    armed: std::sync::atomic::AtomicBool,
}

impl PanicOnce {
    fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }
}

impl ClientFaults for PanicOnce {
    fn panic_on_chunk(&self) -> bool {
        self.armed.swap(false, Ordering::Relaxed)
    }
}

// A client task that panics is reported on the router's errors as ClientPanicked; the
// client is closed (sends give ClientClosed, not SendTryAgain) and stays in the router until
// the peer is removed; after remove_peer and add_peer, client starts a working client.
#[tokio::test]
async fn router_client_panic_cleans_up() {
    let panic = Arc::new(PanicOnce::default());
    let router = MessageRouter::with_client_faults(
        "test-client-1",
        test_client_config(),
        Arc::clone(&panic) as Arc<dyn ClientFaults>,
    );
    let mut errors = router.errors().unwrap();
    let server = setup().server_id("server-1").recorder().start().await;
    let (cancel, topic) = (server.cancel.clone(), server.topic.clone());
    let other = TestTopic::new("other");
    server.add_recorder(&other, &server.received).await;
    router.add_peer("server-1", &server.addr);
    let Some(PeerClient::Remote(first)) = router.client("server-1") else {
        panic!("a remote client");
    };
    first
        .send_message(&topic, &TestMessage { index: 1 }, &cancel)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || first.current_ack("topic")
            == (1, true))
        .await
    );
    panic.arm();
    first
        .try_send_message(&topic, &TestMessage { index: 2 })
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&err, Error::ClientPanicked { receiver_id, message }
            if receiver_id == "server-1" && message == "injected client panic"),
        "{err}"
    );
    assert!(first.is_closed());
    assert!(matches!(
        first.try_send_message(&topic, &TestMessage { index: 3 }),
        Err(Error::ClientClosed)
    ));
    assert!(matches!(
        first
            .send_message(&topic, &TestMessage { index: 3 }, &cancel)
            .await,
        Err(Error::ClientClosed)
    ));
    // The closed client stays until the peer is removed: a fresh one would restart its
    // sequences at 1, which the server has acknowledged on "topic" and would drop.
    let Some(PeerClient::Remote(again)) = router.client("server-1") else {
        panic!("a remote client");
    };
    assert!(again.same(&first));
    router.remove_peer("server-1");
    router.add_peer("server-1", &server.addr);
    let Some(PeerClient::Remote(second)) = router.client("server-1") else {
        panic!("a remote client");
    };
    assert!(!second.same(&first));
    // A new client starts its sequences at 1, which the server has seen on "topic".
    second
        .send_message(&other, &TestMessage { index: 1 }, &cancel)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || second.current_ack("other")
            == (1, true))
        .await
    );
    router.close().await;
    server.stop().await;
}

// While the peer acks nothing, the unacked messages are bounded by max_unacked_bytes:
// try_send gives SendTryAgain and send_message waits until an ack frees space.
#[tokio::test]
async fn unacked_bytes_push_back() {
    let mut recording = start_recording().await;
    let payload_len = serde_json::to_vec(&TestMessage { index: 1 }).unwrap().len();
    let entry_bytes = payload_len + crate::client::UNACKED_ENTRY_OVERHEAD;
    let config = ClientConfig {
        max_unacked_bytes: 3 * entry_bytes,
        ..test_client_config()
    };
    let client = MessageClient::new("node-1", "node-2", config, Arc::default());
    let cancel = CancellationToken::new();
    let run = spawn_run(&client, &recording.addr, cancel.clone());
    let (stream, _meta) = recording.next_packet().await;
    let topic = TestTopic::new("topic");
    for index in 1..=3 {
        client
            .send_message(&topic, &TestMessage { index }, &cancel)
            .await
            .unwrap();
        // The batch is on the wire, so the entry is in the unacked queue.
        let (_, batch) = recording.next_packet().await;
        assert_eq!(batch.entries[0].sequence, index);
    }
    assert!(matches!(
        client.try_send_message(&topic, &TestMessage { index: 4 }),
        Err(Error::SendTryAgain)
    ));
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let blocked = client.send_message(&topic, &TestMessage { index: 4 }, &cancelled);
    assert!(matches!(blocked.await, Err(Error::Cancelled)));
    let send = client.send_message(&topic, &TestMessage { index: 4 }, &cancel);
    tokio::pin!(send);
    assert!(futures::poll!(&mut send).is_pending());
    recording.respond(stream, Ok(ack_response("topic", 2)));
    let sequence = tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sequence, 4);
    let (_, batch) = recording.next_packet().await;
    assert_eq!(batch.entries[0].sequence, 4);
    cancel.cancel();
    run.await.unwrap().unwrap();
    recording.cancel.cancel();
}

/// Opens a raw stream, sends `entries` one packet each, then a message on the handled topic
/// "handled" with `handled_seq`, and waits for its ack: the main loop has then buffered the
/// entries before it.
async fn send_then_sync(
    addr: &str,
    epoch: i64,
    entries: Vec<MessageEntry>,
    handled_seq: i64,
) -> (mpsc::Sender<MessagePacket>, Streaming<SendMessageResponse>) {
    send_then_sync_from("client-1", addr, epoch, entries, handled_seq).await
}

/// `send_then_sync` from `sender`.
async fn send_then_sync_from(
    sender: &str,
    addr: &str,
    epoch: i64,
    entries: Vec<MessageEntry>,
    handled_seq: i64,
) -> (mpsc::Sender<MessagePacket>, Streaming<SendMessageResponse>) {
    let (tx, mut responses) = open_raw(addr, meta(sender, SERVER_ID, epoch)).await;
    for entry in entries {
        tx.send(packet(vec![entry])).await.unwrap();
    }
    tx.send(packet(vec![entry("handled", handled_seq)]))
        .await
        .unwrap();
    wait_ack(&mut responses, "handled", handled_seq).await;
    (tx, responses)
}

// A sender may buffer messages for at most max_pending_topic_count_per_sender topics without
// a handler; one more gives CONGESTED. Its buffers go when a newer epoch replaces it, and
// when it is deregistered.
#[tokio::test]
async fn pending_topics_bounded_and_purged() {
    let server = setup()
        .config(|config| config.max_pending_topic_count_per_sender = 2)
        .start()
        .await;
    let handled = Received::default();
    server
        .add_recorder(&TestTopic::new("handled"), &handled)
        .await;

    // Two topics fit; a message on a third ends the stream with CONGESTED.
    let (tx, mut responses) = send_then_sync(
        &server.addr,
        1,
        vec![entry("pending-1", 1), entry("pending-2", 1)],
        1,
    )
    .await;
    tx.send(packet(vec![entry("pending-3", 1)])).await.unwrap();
    assert_eq!(
        next_exit_reason(&mut responses).await,
        Some(ExitReason::Congested)
    );

    // Aborting dropped the buffers, so two new topics fit; epoch 3 replaces epoch 2 and
    // drops its buffers, so two more fit again.
    let (_tx2, mut responses2) = send_then_sync(
        &server.addr,
        2,
        vec![entry("pending-3", 1), entry("pending-4", 1)],
        2,
    )
    .await;
    let (_tx3, _responses3) = send_then_sync(
        &server.addr,
        3,
        vec![entry("pending-5", 1), entry("pending-6", 1)],
        3,
    )
    .await;
    assert_eq!(
        next_exit_reason(&mut responses2).await,
        Some(ExitReason::StaleConnection)
    );

    // Deregistering drops the buffers. Another sender buffers one message on "pending-7".
    let mut n_peers = server.server.n_peers();
    server.server.deregister_peer("client-1");
    tokio::time::timeout(Duration::from_secs(10), n_peers.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    let (_tx4, _responses4) =
        send_then_sync_from("client-2", &server.addr, 1, vec![entry("pending-7", 1)], 1).await;
    let indices: Vec<i64> = handled.lock().unwrap().iter().map(|(_, i)| *i).collect();
    assert_eq!(indices, vec![1, 2, 3, 1]);

    // None of the dropped buffers is replayed: a handler for their topics sees only what the
    // current stream buffered.
    let replayed = Received::default();
    for name in ["pending-1", "pending-3", "pending-5", "pending-7"] {
        server.add_recorder(&TestTopic::new(name), &replayed).await;
    }
    assert!(wait_until(Duration::from_secs(10), || count(&replayed) == 1).await);
    server.stop().await;
    assert_eq!(count(&replayed), 1);
}

// A stopped server has awaited its streams' receiving tasks.
#[tokio::test]
async fn server_stop_awaits_streams() {
    let server = setup().start().await;
    let inner = Arc::clone(&server.server);
    let mut n_peers = inner.n_peers();
    let (_tx1, _responses1) = open_raw(&server.addr, meta("client-1", SERVER_ID, 1)).await;
    let (_tx2, _responses2) = open_raw(&server.addr, meta("client-2", SERVER_ID, 1)).await;
    n_peers.wait_for(|n| *n == 2).await.unwrap();
    assert_eq!(inner.streams.len(), 2);
    server.stop().await;
    assert!(inner.streams.is_empty());
}
