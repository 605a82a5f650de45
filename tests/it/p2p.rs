//! p2p over a faulty link: a TCP proxy between client and server drops connections at
//! random points; every handler must still see every message exactly once, in order.
//! Covers TiCDC's `pkg/p2p` client tests of client streams broken at random and of the first
//! streams failing, and a fault test through the proxy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cdc_p2p::{
    ClientConfig, MessageClient, MessageServer, NamedTopic, ServerConfig, ServerWrapper, Topic,
};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type IndexTopic = NamedTopic<i64>;

/// A TCP proxy whose connections can all be cut at once.
struct Proxy {
    addr: String,
    generation: Arc<Mutex<CancellationToken>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Proxies to `upstream`; the first `fail_first` connections are closed at once.
    async fn start(upstream: String, fail_first: usize) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let accept_generation = Arc::clone(&generation);
        let accept_cancel = cancel.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            let mut n_accepted = 0;
            loop {
                let accepted = tokio::select! {
                    _ = accept_cancel.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                n_accepted += 1;
                if n_accepted <= fail_first {
                    drop(inbound);
                    continue;
                }
                let cut = accept_generation
                    .lock()
                    .expect("no panics while locked")
                    .child_token();
                let upstream = upstream.clone();
                connections.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
            connections.shutdown().await;
        });
        Ok(Proxy {
            addr,
            generation,
            cancel,
            tasks,
        })
    }

    /// Drops every open connection.
    fn cut(&self) {
        let mut generation = self.generation.lock().expect("no panics while locked");
        generation.cancel();
        *generation = CancellationToken::new();
    }

    async fn stop(mut self) {
        self.cut();
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Per (sender, topic): the last index seen, and any violation of exactly-once order.
#[derive(Default)]
struct Ledger {
    last: HashMap<(String, String), i64>,
    violations: Vec<String>,
    delivered: u64,
}

struct Harness {
    server: Arc<MessageServer>,
    addr: String,
    ledger: Arc<Mutex<Ledger>>,
    cancel: CancellationToken,
    tasks: JoinSet<Result<()>>,
}

async fn start_server(topics: &[IndexTopic]) -> Result<Harness> {
    let config = ServerConfig {
        ack_interval: Duration::from_millis(20),
        ..ServerConfig::default()
    };
    let server = Arc::new(MessageServer::new("server-1", config.clone()));
    let wrapper = ServerWrapper::new(&config);
    wrapper.reset(Some(Arc::clone(&server)));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let serve_cancel = cancel.clone();
    tasks.spawn(async move {
        cdc_p2p::serve(listener, &wrapper, &config, serve_cancel).await?;
        Ok(())
    });
    let running = Arc::clone(&server);
    let run_cancel = cancel.clone();
    tasks.spawn(async move { Ok(running.run(run_cancel, None).await?) });
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for topic in topics {
        let ledger = Arc::clone(&ledger);
        let topic_name = topic.name().to_owned();
        server
            .add_handler(
                topic,
                move |sender, index: i64| {
                    let mut ledger = ledger.lock().expect("no panics while locked");
                    ledger.delivered += 1;
                    let last = ledger
                        .last
                        .entry((sender.to_string(), topic_name.clone()))
                        .or_insert(0);
                    let expected = *last + 1;
                    *last = index;
                    if index != expected {
                        let violation =
                            format!("{sender}/{topic_name}: got {index}, expected {expected}");
                        ledger.violations.push(violation);
                    }
                    std::future::ready(Ok(()))
                },
                &cancel,
            )
            .await?;
    }
    Ok(Harness {
        server,
        addr,
        ledger,
        cancel,
        tasks,
    })
}

/// `n_senders` clients (distinct capture IDs) each send `per_topic` messages on every topic
/// through `addr`; returns once every topic is acked by every client.
async fn send_all(
    addr: &str,
    topics: &[IndexTopic],
    n_senders: usize,
    per_topic: i64,
    ack_deadline: Duration,
) -> Result<Vec<MessageClient>> {
    let config = ClientConfig {
        retry_rate_limit_per_second: 200.0,
        ..ClientConfig::default()
    };
    let cancel = CancellationToken::new();
    let mut runs = JoinSet::new();
    let mut senders = JoinSet::new();
    let mut clients = Vec::new();
    for i in 0..n_senders {
        let client = MessageClient::new(
            format!("sender-{i}"),
            "server-1",
            config.clone(),
            Arc::default(),
        );
        let running = client.clone();
        let run_cancel = cancel.clone();
        let addr = addr.to_owned();
        runs.spawn(async move { running.run(&run_cancel, &addr).await });
        let sending = client.clone();
        let topics = topics.to_vec();
        let send_cancel = cancel.clone();
        senders.spawn(async move {
            for index in 1..=per_topic {
                for topic in &topics {
                    let seq = sending.send_message(topic, &index, &send_cancel).await?;
                    ensure!(seq == index, "sequence {seq} for index {index}");
                }
            }
            Ok(())
        });
        clients.push(client);
    }
    while let Some(joined) = senders.join_next().await {
        joined??;
    }
    let deadline = tokio::time::Instant::now() + ack_deadline;
    for client in &clients {
        for topic in topics {
            let name = topic.name().to_owned();
            while client.current_ack(&name) != (per_topic, true) {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "ack of {name} stuck at {:?}",
                    client.current_ack(&name)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    cancel.cancel();
    while let Some(joined) = runs.join_next().await {
        joined??;
    }
    Ok(clients)
}

fn topics(n: usize) -> Vec<IndexTopic> {
    (0..n)
        .map(|i| IndexTopic::new(format!("topic-{i}")))
        .collect()
}

async fn stop(mut harness: Harness) -> Result<()> {
    harness.cancel.cancel();
    while let Some(joined) = harness.tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// The fault test: 4 senders × 4 topics × 10,000 messages through a proxy that cuts
/// every connection at random intervals. Also case 71 (client streams broken at random).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_drops_connections_exactly_once_in_order() -> Result<()> {
    const PER_TOPIC: i64 = 10_000;
    let topics = topics(4);
    let harness = start_server(&topics).await?;
    let proxy = Proxy::start(harness.addr.clone(), 0).await?;
    let cutting = CancellationToken::new();
    let cutter = {
        let cutting = cutting.clone();
        let generation = Arc::clone(&proxy.generation);
        tokio::spawn(async move {
            let mut n_cuts = 0u32;
            // Bounded: at most 2,000 cuts (the sending takes seconds).
            while n_cuts < 2_000 {
                let pause = Duration::from_millis(rand::rng().random_range(5..60));
                tokio::select! {
                    _ = cutting.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                let mut generation = generation.lock().expect("no panics while locked");
                generation.cancel();
                *generation = CancellationToken::new();
                n_cuts += 1;
            }
            n_cuts
        })
    };
    let clients = send_all(&proxy.addr, &topics, 4, PER_TOPIC, Duration::from_secs(120)).await?;
    cutting.cancel();
    let n_cuts = cutter.await?;
    let n_reconnects: u64 = clients
        .iter()
        .map(|client| client.metrics().reconnects)
        .sum();
    {
        let ledger = harness.ledger.lock().expect("no panics while locked");
        ensure!(
            ledger.violations.is_empty(),
            "violations: {:?}",
            &ledger.violations[..ledger.violations.len().min(10)]
        );
        ensure!(
            ledger.delivered == 4 * 4 * PER_TOPIC as u64,
            "delivered {}",
            ledger.delivered
        );
        for ((sender, topic), last) in &ledger.last {
            ensure!(*last == PER_TOPIC, "{sender}/{topic} ended at {last}");
        }
        ensure!(ledger.last.len() == 16);
    }
    let metrics = harness.server.metrics();
    println!(
        "proxy cuts: {n_cuts}, client reconnects: {n_reconnects}, server metrics: {metrics:?}"
    );
    ensure!(n_reconnects > 0, "the proxy never broke a stream");
    proxy.stop().await;
    stop(harness).await
}

/// Case 72 (adapted: the first streams fail at the transport instead of in the batcher): the
/// client reconnects and delivers everything in order; acks reach 128 on 4 topics.
#[tokio::test]
async fn first_streams_fail_then_deliver() -> Result<()> {
    let topics = topics(4);
    let harness = start_server(&topics).await?;
    let proxy = Proxy::start(harness.addr.clone(), 3).await?;
    send_all(&proxy.addr, &topics, 1, 128, Duration::from_secs(30))
        .await
        .context("send through a proxy that fails the first 3 connections")?;
    {
        let ledger = harness.ledger.lock().expect("no panics while locked");
        ensure!(
            ledger.violations.is_empty(),
            "violations: {:?}",
            ledger.violations
        );
        ensure!(ledger.delivered == 4 * 128);
    }
    proxy.stop().await;
    stop(harness).await
}
