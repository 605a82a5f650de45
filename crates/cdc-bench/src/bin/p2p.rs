//! p2p benchmark: messages per second and one-way latency through `MessageRouter`, against
//! a bare tonic bidirectional stream with the same batching (the ceiling), between two
//! processes on loopback. The last line is `p2p/raw throughput ratio 64B=<x> 1KiB=<y>`.
//!
//! `cargo xtask bench p2p` runs the comparison; `cargo xtask bench p2p -- tls` runs it with
//! both paths over mutual TLS (a throwaway CA and certificates from rcgen; the last line is
//! then `p2p/raw throughput ratio with TLS ...`); `cargo xtask bench p2p -- memory` sends
//! 1,000,000 messages to a slow handler and reports the server's peak RSS.
//!
//! The driver spawns this binary again with `serve` as the server process and talks to it
//! over stdin/stdout: `expect <n>` starts a phase, `result ...` ends it.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cdc_p2p::proto::cdc_peer_to_peer_server::{CdcPeerToPeer, CdcPeerToPeerServer};
use cdc_p2p::proto::{MessageEntry, MessagePacket, SendMessageResponse, StreamMeta};
use cdc_p2p::{
    ClientConfig, MessageRouter, MessageServer, NamedTopic, Raw, ServerConfig, ServerWrapper,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

type BenchTopic = NamedTopic<Bytes, Raw>;
const TOPIC: &str = "bench";
const SERVER_ID: &str = "bench-server";
const BATCH_COUNT: usize = 1024;
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

fn now_nanos() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

fn payload(size: usize) -> Bytes {
    let mut bytes = vec![0u8; size.max(8)];
    bytes[..8].copy_from_slice(&now_nanos().to_le_bytes());
    Bytes::from(bytes)
}

/// What the server process measures in one phase.
#[derive(Default)]
struct Phase {
    expected: u64,
    received: u64,
    first_sent: u64,
    last_received: u64,
    latencies: Vec<u64>,
    gaps: u64,
}

impl Phase {
    fn record(&mut self, content: &[u8]) {
        let received = now_nanos();
        let sent = content
            .get(..8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(received);
        if self.received == 0 {
            self.first_sent = sent;
        }
        self.received += 1;
        self.last_received = received;
        self.latencies.push(received.saturating_sub(sent));
    }
}

#[derive(Clone, Default)]
struct Stats {
    phase: Arc<Mutex<Phase>>,
    done: Arc<Notify>,
}

impl Stats {
    fn record(&self, content: &[u8]) {
        let mut phase = self.phase.lock().expect("no panics while locked");
        phase.record(content);
        if phase.expected > 0 && phase.received == phase.expected {
            self.done.notify_one();
        }
    }
}

/// The ceiling: a bare stream that only checks sequences and timestamps.
struct RawServer {
    stats: Stats,
}

#[tonic::async_trait]
impl CdcPeerToPeer for RawServer {
    type SendMessageStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<SendMessageResponse, tonic::Status>> + Send>,
    >;

    async fn send_message(
        &self,
        request: tonic::Request<tonic::Streaming<MessagePacket>>,
    ) -> Result<tonic::Response<Self::SendMessageStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let stats = self.stats.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut next_seq = 1;
            while let Ok(Some(packet)) = inbound.message().await {
                for entry in &packet.entries {
                    if entry.sequence != next_seq {
                        stats.phase.lock().expect("no panics while locked").gaps += 1;
                    }
                    next_seq = entry.sequence + 1;
                    stats.record(&entry.content);
                }
            }
            drop(tx);
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn server_config(memory: bool) -> ServerConfig {
    if memory {
        // Small queues: the server's memory must stay within them whatever the client does.
        ServerConfig {
            max_pending_task_count: 64,
            worker_queue_size: 8,
            ..ServerConfig::default()
        }
    } else {
        ServerConfig::default()
    }
}

/// CPU time of this process's live threads, in nanoseconds (from `/proc/self/task/*/schedstat`).
/// A machine shared with other work changes wall-clock rates a lot; CPU per message much less.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The certificates of the `tls` mode (PEM): a CA, and one certificate for 127.0.0.1 that
/// both sides present.
#[derive(Clone)]
struct Certs {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Certs {
    fn generate() -> Result<Certs> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "bench");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok(Certs {
            ca: ca.pem().into_bytes(),
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        })
    }

    fn write(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::write(dir.join("ca.pem"), &self.ca)?;
        std::fs::write(dir.join("cert.pem"), &self.cert)?;
        std::fs::write(dir.join("key.pem"), &self.key)?;
        Ok(())
    }

    fn read(dir: &std::path::Path) -> Result<Certs> {
        Ok(Certs {
            ca: std::fs::read(dir.join("ca.pem"))?,
            cert: std::fs::read(dir.join("cert.pem"))?,
            key: std::fs::read(dir.join("key.pem"))?,
        })
    }

    /// The clients' configuration (p2p router and raw stream alike).
    fn client(&self) -> ClientConfig {
        ClientConfig {
            tls: Some(cdc_p2p::PeerTls {
                ca_pem: self.ca.clone(),
                cert_pem: self.cert.clone(),
                key_pem: self.key.clone(),
            }),
            ..ClientConfig::default()
        }
    }

    /// tonic's server TLS with a required client certificate, for both ports.
    fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca))
    }
}

/// A server builder with the p2p settings, over TLS when `certs` is set.
fn server_builder(
    config: &ServerConfig,
    certs: Option<&Certs>,
) -> Result<tonic::transport::Server> {
    let builder = cdc_p2p::configure_server(tonic::transport::Server::builder(), config);
    Ok(match certs {
        Some(certs) => builder.tls_config(certs.server())?,
        None => builder,
    })
}

/// The server process: p2p on one port, the raw stream on another; phases driven by stdin.
async fn serve(memory: bool, certs: Option<Certs>) -> Result<()> {
    let stats = Stats::default();
    let config = server_config(memory);
    let server = Arc::new(MessageServer::new(SERVER_ID, config.clone()));
    let cancel = CancellationToken::new();
    let handler_stats = stats.clone();
    let topic = BenchTopic::new(TOPIC);
    let wrapper = ServerWrapper::new(&config);
    wrapper.reset(Some(Arc::clone(&server)));
    let p2p_listener = TcpListener::bind("127.0.0.1:0").await?;
    let raw_listener = TcpListener::bind("127.0.0.1:0").await?;
    let p2p_addr = p2p_listener.local_addr()?;
    let raw_addr = raw_listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let server = Arc::clone(&server);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            server
                .run(cancel, None)
                .await
                .context("run the message server")
        });
    }
    {
        let cancel = cancel.clone();
        let mut builder = server_builder(&config, certs.as_ref())?;
        tasks.spawn(async move {
            builder
                .add_service(wrapper.service())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(p2p_listener),
                    cancel.cancelled_owned(),
                )
                .await
                .context("serve p2p")
        });
    }
    {
        let cancel = cancel.clone();
        let raw = RawServer {
            stats: stats.clone(),
        };
        let mut builder = server_builder(&config, certs.as_ref())?;
        tasks.spawn(async move {
            builder
                .add_service(CdcPeerToPeerServer::new(raw))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(raw_listener),
                    cancel.cancelled_owned(),
                )
                .await
                .context("serve raw")
        });
    }
    let mut n_handled = 0u64;
    server
        .add_handler(
            &topic,
            move |_, content: Bytes| {
                handler_stats.record(&content);
                n_handled += 1;
                let slow = memory && n_handled.is_multiple_of(100);
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(())
                }
            },
            &cancel,
        )
        .await?;
    println!("listen {p2p_addr} {raw_addr} rss_kib={}", peak_rss_kib());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Some(expected) = line.strip_prefix("expect ") else {
            break;
        };
        let expected: u64 = expected.trim().parse()?;
        *stats.phase.lock().expect("no panics while locked") = Phase {
            expected,
            latencies: Vec::with_capacity(usize::try_from(expected)?),
            ..Phase::default()
        };
        let cpu_at_start = cpu_ns();
        println!("ready");
        stats.done.notified().await;
        let cpu = cpu_ns().saturating_sub(cpu_at_start);
        let mut phase = std::mem::take(&mut *stats.phase.lock().expect("no panics while locked"));
        phase.latencies.sort_unstable();
        let percentile = |p: f64| {
            let index = ((phase.latencies.len() as f64 - 1.0) * p).round() as usize;
            phase.latencies.get(index).copied().unwrap_or(0)
        };
        println!(
            "result {} {} {} {} {} {} {}",
            phase.received,
            phase.last_received.saturating_sub(phase.first_sent),
            percentile(0.5),
            percentile(0.99),
            phase.gaps,
            peak_rss_kib(),
            cpu,
        );
    }
    cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    async fn line(&mut self) -> Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(300), self.stdout.next_line())
            .await
            .context("wait for the server process")??;
        line.context("the server process exited")
    }

    async fn start_phase(&mut self, expected: u64) -> Result<()> {
        self.stdin
            .write_all(format!("expect {expected}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let ready = self.line().await?;
        if ready != "ready" {
            bail!("unexpected line {ready:?}");
        }
        Ok(())
    }

    async fn result(&mut self) -> Result<PhaseResult> {
        let line = self.line().await?;
        let fields: Vec<u64> = line
            .strip_prefix("result ")
            .with_context(|| format!("unexpected line {line:?}"))?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [
            received,
            elapsed_ns,
            p50_ns,
            p99_ns,
            gaps,
            rss_kib,
            server_cpu_ns,
        ] = fields[..]
        else {
            bail!("bad result line {line:?}");
        };
        Ok(PhaseResult {
            received,
            elapsed_ns,
            p50_ns,
            p99_ns,
            gaps,
            rss_kib,
            server_cpu_ns,
            client_cpu_ns: 0,
        })
    }
}

struct PhaseResult {
    received: u64,
    elapsed_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    gaps: u64,
    rss_kib: u64,
    server_cpu_ns: u64,
    client_cpu_ns: u64,
}

impl PhaseResult {
    fn rate(&self) -> f64 {
        self.received as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }

    /// CPU microseconds per message: (client process, server process).
    fn cpu_us_per_message(&self) -> (f64, f64) {
        let per = |ns: u64| ns as f64 / 1e3 / self.received.max(1) as f64;
        (per(self.client_cpu_ns), per(self.server_cpu_ns))
    }
}

/// How the driver produces messages: as fast as possible, or at a fixed rate.
#[derive(Clone, Copy)]
enum Pace {
    Flood,
    PerSecond(u64),
}

async fn paced(pace: Pace, index: u64, started: tokio::time::Instant) {
    if let Pace::PerSecond(rate) = pace {
        let due = started + Duration::from_nanos(index * 1_000_000_000 / rate);
        tokio::time::sleep_until(due).await;
    }
}

async fn drive_p2p(router: &MessageRouter, n: u64, size: usize, pace: Pace) -> Result<()> {
    let client = router
        .client(SERVER_ID)
        .context("the server is a known peer")?;
    let topic = BenchTopic::new(TOPIC);
    let cancel = CancellationToken::new();
    let started = tokio::time::Instant::now();
    for index in 0..n {
        paced(pace, index, started).await;
        client.send_message(&topic, payload(size), &cancel).await?;
    }
    Ok(())
}

/// Keeps a raw stream open: dropping it resets the stream, which may discard data the server
/// has not read yet.
type OpenStream = (
    mpsc::Sender<MessagePacket>,
    tonic::Response<tonic::Streaming<SendMessageResponse>>,
);

/// The ceiling: the same batching (1024 entries or 10 ms) straight onto a tonic stream.
async fn drive_raw(
    addr: &str,
    client_config: &ClientConfig,
    n: u64,
    size: usize,
    pace: Pace,
) -> Result<OpenStream> {
    let mut client = cdc_p2p::connect(addr, client_config).await?;
    let (out_tx, out_rx) = mpsc::channel(4);
    out_tx
        .send(MessagePacket {
            meta: Some(StreamMeta {
                sender_id: "bench-driver".to_owned(),
                receiver_id: SERVER_ID.to_owned(),
                epoch: 1,
                ..StreamMeta::default()
            }),
            entries: Vec::new(),
        })
        .await?;
    let response = client.send_message(ReceiverStream::new(out_rx)).await?;
    let (queue_tx, mut queue_rx) = mpsc::channel::<MessageEntry>(1024);
    let batching = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH_COUNT);
        let mut received = Vec::with_capacity(BATCH_COUNT);
        let mut ticker = tokio::time::interval(BATCH_INTERVAL);
        loop {
            tokio::select! {
                n = queue_rx.recv_many(&mut received, BATCH_COUNT) => {
                    if n == 0 {
                        break;
                    }
                    for entry in received.drain(..) {
                        batch.push(entry);
                        if batch.len() >= BATCH_COUNT {
                            let entries = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_COUNT));
                            out_tx.send(MessagePacket { meta: None, entries }).await?;
                        }
                    }
                }
                _ = ticker.tick() => {
                    if !batch.is_empty() {
                        let entries = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_COUNT));
                        out_tx.send(MessagePacket { meta: None, entries }).await?;
                    }
                }
            }
        }
        if !batch.is_empty() {
            out_tx
                .send(MessagePacket {
                    meta: None,
                    entries: batch,
                })
                .await?;
        }
        anyhow::Ok(out_tx)
    });
    let started = tokio::time::Instant::now();
    for index in 0..n {
        paced(pace, index, started).await;
        let sequence = i64::try_from(index)? + 1;
        let entry = MessageEntry {
            topic: TOPIC.to_owned(),
            content: payload(size),
            sequence,
        };
        queue_tx.send(entry).await?;
    }
    drop(queue_tx);
    let out_tx = batching.await??;
    Ok((out_tx, response))
}

async fn spawn_server(
    memory: bool,
    certs_dir: Option<&std::path::Path>,
) -> Result<(Child, String, String, u64)> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    match certs_dir {
        Some(dir) => command.arg("serve-tls").arg(dir),
        None => command.arg(if memory { "serve-memory" } else { "serve" }),
    };
    let mut process = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn the server process")?;
    let stdin = process.stdin.take().context("stdin")?;
    let stdout = BufReader::new(process.stdout.take().context("stdout")?).lines();
    let mut child = Child {
        process,
        stdin,
        stdout,
    };
    let listen = child.line().await?;
    let mut words = listen.split(' ');
    let (Some("listen"), Some(p2p), Some(raw), Some(rss)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("unexpected line {listen:?}");
    };
    let rss_kib = rss.trim_start_matches("rss_kib=").parse()?;
    Ok((child, p2p.to_owned(), raw.to_owned(), rss_kib))
}

/// Flood runs per path and size. The runs alternate between the paths (and which goes
/// first), so that a noisy moment on the shared machine hits both, and the ratio compares
/// the medians.
const FLOOD_ROUNDS: usize = 3;
/// Messages sent through each path before measuring: the p2p client connects on first use,
/// and neither path should pay for connecting or a cold allocator in a measured phase.
const WARM_UP: u64 = 20_000;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Raw,
    P2p,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Raw => "raw",
            Path::P2p => "p2p",
        }
    }
}

/// Runs one phase: the server expects `count` messages, the driver sends them on `path`.
async fn run_phase(
    child: &mut Child,
    router: &MessageRouter,
    (raw_addr, raw_config): (&str, &ClientConfig),
    path: Path,
    (size, pace, count): (usize, Pace, u64),
) -> Result<PhaseResult> {
    child.start_phase(count).await?;
    let cpu_at_start = cpu_ns();
    let mut open_stream = None;
    match path {
        Path::P2p => drive_p2p(router, count, size, pace).await?,
        Path::Raw => {
            open_stream = Some(drive_raw(raw_addr, raw_config, count, size, pace).await?);
        }
    }
    let mut result = child.result().await?;
    result.client_cpu_ns = cpu_ns().saturating_sub(cpu_at_start);
    // The stream closes only once the server has everything.
    drop(open_stream);
    if result.gaps > 0 {
        bail!("{}: {} sequence gaps", path.name(), result.gaps);
    }
    Ok(result)
}

fn print_row(path: Path, label: &str, load: &str, result: &PhaseResult) {
    let (client_cpu, server_cpu) = result.cpu_us_per_message();
    println!(
        "{:<6} {label:<5} {load:<10} {:>9} {:>12.0} {:>8.3} {:>8.3} {client_cpu:>8.3} {server_cpu:>8.3}",
        path.name(),
        result.received,
        result.rate(),
        result.p50_ns as f64 / 1e6,
        result.p99_ns as f64 / 1e6,
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn compare(tls: bool) -> Result<()> {
    let certs = if tls { Some(Certs::generate()?) } else { None };
    let certs_dir = tempfile::tempdir()?;
    if let Some(certs) = &certs {
        certs.write(certs_dir.path())?;
    }
    let (mut child, p2p_addr, raw_addr, _) =
        spawn_server(false, certs.as_ref().map(|_| certs_dir.path())).await?;
    let client_config = certs.as_ref().map(Certs::client).unwrap_or_default();
    let router = MessageRouter::new("bench-driver", client_config.clone());
    router.add_peer(SERVER_ID, &p2p_addr);
    let raw = (raw_addr.as_str(), &client_config);
    let over = if tls {
        " over mutual TLS (both paths)"
    } else {
        ""
    };
    println!(
        "p2p benchmark: two processes on loopback{over}, batches of {BATCH_COUNT} or {BATCH_INTERVAL:?}; \
         {FLOOD_ROUNDS} alternating flood runs per path, ratio of the medians"
    );
    for path in [Path::Raw, Path::P2p] {
        run_phase(&mut child, &router, raw, path, (64, Pace::Flood, WARM_UP)).await?;
    }
    println!(
        "{:<6} {:<5} {:<10} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8}",
        "path", "size", "load", "messages", "msg/s", "p50 ms", "p99 ms", "cli cpu", "srv cpu"
    );
    let mut ratios = Vec::new();
    for (size, label, n) in [(64usize, "64B", 1_000_000u64), (1024, "1KiB", 300_000)] {
        let mut raw_rates = Vec::new();
        let mut p2p_rates = Vec::new();
        for round in 0..FLOOD_ROUNDS {
            let order = if round % 2 == 0 {
                [Path::Raw, Path::P2p]
            } else {
                [Path::P2p, Path::Raw]
            };
            for path in order {
                let result =
                    run_phase(&mut child, &router, raw, path, (size, Pace::Flood, n)).await?;
                print_row(path, label, &format!("flood #{}", round + 1), &result);
                match path {
                    Path::Raw => raw_rates.push(result.rate()),
                    Path::P2p => p2p_rates.push(result.rate()),
                }
            }
        }
        for path in [Path::Raw, Path::P2p] {
            let paced = (size, Pace::PerSecond(10_000), 20_000);
            let result = run_phase(&mut child, &router, raw, path, paced).await?;
            print_row(path, label, "10k/s", &result);
        }
        let raw = median(&mut raw_rates);
        let p2p = median(&mut p2p_rates);
        println!("{label}: median flood msg/s raw {raw:.0}, p2p {p2p:.0} (cpu: µs per message)");
        ratios.push((label, p2p / raw));
    }
    router.close().await;
    drop(child.stdin);
    child.process.wait().await?;
    let with = if tls { " with TLS" } else { "" };
    println!(
        "p2p/raw throughput ratio{with} {}={:.2} {}={:.2}",
        ratios[0].0, ratios[0].1, ratios[1].0, ratios[1].1
    );
    Ok(())
}

async fn memory() -> Result<()> {
    const N: u64 = 1_000_000;
    let (mut child, p2p_addr, _, rss_at_start) = spawn_server(true, None).await?;
    let router = MessageRouter::new("bench-driver", ClientConfig::default());
    router.add_peer(SERVER_ID, &p2p_addr);
    let config = server_config(true);
    child.start_phase(N).await?;
    let started = std::time::Instant::now();
    drive_p2p(&router, N, 64, Pace::Flood).await?;
    let result = child.result().await?;
    router.close().await;
    drop(child.stdin);
    child.process.wait().await?;
    println!(
        "memory: {} messages of 64 B to a slow handler in {:.1} s; server task queue {} batches, worker queues {} batches x {} workers",
        result.received,
        started.elapsed().as_secs_f64(),
        config.max_pending_task_count,
        config.worker_queue_size,
        config.worker_pool_size,
    );
    println!(
        "memory: server peak RSS {} KiB after setup, {} KiB after 1,000,000 messages",
        rss_at_start, result.rss_kib
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("serve") => serve(false, None).await,
        Some("serve-memory") => serve(true, None).await,
        Some("serve-tls") => {
            let dir = std::env::args()
                .nth(2)
                .context("serve-tls needs a directory")?;
            serve(false, Some(Certs::read(std::path::Path::new(&dir))?)).await
        }
        Some("memory") => memory().await,
        Some("tls") => compare(true).await,
        None => compare(false).await,
        Some(other) => bail!("unknown mode {other:?}: use no argument, `tls` or `memory`"),
    }
}
