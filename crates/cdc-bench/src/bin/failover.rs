//! Owner failover benchmark: how long a queued candidate waits for the leadership after the
//! leader hands over (resign and close) or crashes (SIGKILL, the lease must expire).
//!
//! The leader is a child process, this binary re-executed in the `candidate` role: it grants a
//! session, wins the election and holds it until it reads `resign` on stdin (graceful) or is
//! killed with SIGKILL (crash) at a random phase of its renewal period. The measuring candidate
//! runs in this process with its own session; each figure is the time from the resign request
//! or the SIGKILL to its campaign's return.
//!
//! Usage: `cargo xtask bench failover [--rounds N]` (default 5 rounds per case, TTL 5 and 10).
#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on stdout; the candidate role talks to its parent there"
)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cdc_election::{Election, Session};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{ConnectConfig, EtcdClient, GetOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const TTLS: [i64; 2] = [5, 10];
const PREFIX: &str = "/tidb/cdc/bench/__cdc_meta__/owner";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("candidate") => Box::pin(candidate(&args[1..])).await,
        _ => {
            let rounds = match args.iter().position(|arg| arg == "--rounds") {
                Some(at) => args
                    .get(at + 1)
                    .context("--rounds needs a value")?
                    .parse()
                    .context("parse --rounds")?,
                None => 5,
            };
            if rounds < 1 {
                bail!("--rounds must be at least 1");
            }
            Box::pin(bench(rounds)).await
        }
    }
}

/// The child role: `candidate <endpoint> <ttl> <value>`.
async fn candidate(args: &[String]) -> Result<()> {
    let [endpoint, ttl, value] = args else {
        bail!("usage: failover candidate <endpoint> <ttl> <value>");
    };
    let client = EtcdClient::connect(std::slice::from_ref(endpoint), ConnectConfig::default())
        .await
        .context("connect")?;
    let session = Session::grant(client.clone(), ttl.parse().context("parse ttl")?)
        .await
        .context("grant")?;
    let election = Election::new(&session, PREFIX);
    let fence = election
        .campaign(value, &CancellationToken::new())
        .await
        .context("campaign")?;
    println!("elected {}", fence.create_revision);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let done = session.done();
    tokio::select! {
        // `resign`, or the parent went away: hand over gracefully.
        _ = stdin.next_line() => {}
        () = done.wait() => bail!("session lost: {:?}", session.end()),
    }
    election.resign().await.context("resign")?;
    session.close().await.context("close")?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Handover {
    Graceful,
    Crash,
}

struct Leader {
    child: Child,
    stdin: ChildStdin,
}

async fn start_leader(endpoint: &str, ttl: i64, value: &str) -> Result<Leader> {
    let mut child = Command::new(std::env::current_exe().context("locate this binary")?)
        .args(["candidate", endpoint, &ttl.to_string(), value])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn the leader")?;
    let stdin = child.stdin.take().context("leader stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("leader stdout")?).lines();
    let line = timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .context("the leader was not elected within 30 s")??
        .context("the leader exited before being elected")?;
    if !line.starts_with("elected ") {
        bail!("unexpected leader output {line:?}");
    }
    Ok(Leader { child, stdin })
}

async fn wait_for_key(client: &EtcdClient, key: &[u8]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !client
            .get(key.to_vec(), GetOptions::default())
            .await?
            .kvs
            .is_empty()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("our key did not appear");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One round: returns the time from the hand-over (or kill) to our win.
async fn round(
    server: &EtcdServer,
    client: &EtcdClient,
    session: &Session,
    ttl: i64,
    handover: Handover,
) -> Result<Duration> {
    let mut leader = start_leader(&server.endpoint(), ttl, "leader").await?;
    let ours = Arc::new(Election::new(session, PREFIX));
    let campaign = {
        let ours = Arc::clone(&ours);
        tokio::spawn(async move { ours.campaign("bench", &CancellationToken::new()).await })
    };
    wait_for_key(client, ours.key()).await?;
    if campaign.is_finished() {
        bail!("we won while the leader was alive");
    }
    if handover == Handover::Crash {
        // The leader renews every TTL/3: kill it at a uniformly random phase of that period,
        // as a real crash would, rather than right after its first renewal.
        let period = Duration::from_secs(ttl.unsigned_abs()) / 3;
        tokio::time::sleep(period.mul_f64(rand::random_range(0.0..1.0))).await;
    }
    let started = Instant::now();
    match handover {
        Handover::Graceful => leader.stdin.write_all(b"resign\n").await?,
        Handover::Crash => leader.child.start_kill()?,
    }
    let bound = Duration::from_secs(ttl.unsigned_abs()) * 2;
    timeout(bound, campaign)
        .await
        .context("no hand-over within two TTLs")???;
    let elapsed = started.elapsed();
    let status = leader.child.wait().await?;
    if handover == Handover::Graceful && !status.success() {
        bail!("the leader failed to hand over: {status}");
    }
    ours.resign().await?;
    Ok(elapsed)
}

fn p50_and_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[(samples.len() - 1) / 2], samples[samples.len() - 1])
}

async fn bench(rounds: usize) -> Result<()> {
    let server = EtcdServer::start().await.context("start etcd")?;
    let client = server.client().await?;
    println!("failover: {rounds} rounds per case; times from hand-over or SIGKILL to the win");
    let mut summary = None;
    for ttl in TTLS {
        let session = Session::grant(client.clone(), ttl).await?;
        let ttl_s = Duration::from_secs(ttl.unsigned_abs());
        let mut graceful = Vec::with_capacity(rounds);
        let mut crash = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            graceful.push(round(&server, &client, &session, ttl, Handover::Graceful).await?);
        }
        for _ in 0..rounds {
            crash.push(round(&server, &client, &session, ttl, Handover::Crash).await?);
        }
        session.close().await?;
        let (graceful_p50, graceful_max) = p50_and_max(&mut graceful);
        let (crash_p50, crash_max) = p50_and_max(&mut crash);
        // A killed holder renewed at most TTL/3 before dying, and etcd sweeps expired leases
        // every 500 ms: its key disappears between 2/3 TTL and TTL + 0.5 s after the kill.
        let crash_floor = ttl_s * 2 / 3;
        let crash_ceiling = ttl_s + Duration::from_millis(500);
        println!(
            "ttl={ttl}s graceful p50={:.3}s max={:.3}s (lease bound: none, no expiry to wait for)",
            graceful_p50.as_secs_f64(),
            graceful_max.as_secs_f64(),
        );
        println!(
            "ttl={ttl}s crash    p50={:.3}s max={:.3}s (lease bound: >= {:.3}s, <= {:.3}s)",
            crash_p50.as_secs_f64(),
            crash_max.as_secs_f64(),
            crash_floor.as_secs_f64(),
            crash_ceiling.as_secs_f64(),
        );
        if ttl == 5 {
            summary = Some((graceful_p50, crash_p50, crash_max));
        }
    }
    let (graceful_p50, crash_p50, crash_max) = summary.context("no TTL 5 figures")?;
    println!(
        "failover ttl=5 graceful_p50={:.3}s crash_p50={:.3}s crash_max={:.3}s",
        graceful_p50.as_secs_f64(),
        crash_p50.as_secs_f64(),
        crash_max.as_secs_f64(),
    );
    Ok(())
}
