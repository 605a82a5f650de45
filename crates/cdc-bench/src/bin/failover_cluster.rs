//! Owner failover through real `cdc-server` processes: how long a three-capture cluster goes
//! without an owner after the owner is stopped with SIGTERM (graceful: drain, resign, exit) or
//! killed with SIGKILL (crash: its lease must expire).
//!
//! Each figure is the time from the signal to the first `/status` of another capture that
//! reports `is_owner: true` (polled every 5 ms on every other capture). After each round the
//! stopped capture is replaced by a new process, so every round starts with three captures.
//! Crash kills land at a random phase of the owner's TTL/3 renewal period.
//!
//! Usage: `cargo xtask bench failover_cluster [--rounds N] [--ttl S]...` (default 5 rounds per
//! case, TTL 5 and 10). The server binary is `$CDC_SERVER_BIN`, else `cdc-server` of this
//! build's profile directory, else of the debug one (`cargo build -p cdc-server`).
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cdc_bench::{ClusterNode, server_binary, status, wait_one_owner};
use cdc_etcd::testing::EtcdServer;
use rand::Rng;
use tokio::time::{Instant, sleep};

const DEFAULT_TTLS: [u64; 2] = [5, 10];
const NODES: usize = 3;
const POLL: Duration = Duration::from_millis(5);

/// From `since`, the time until a node other than `old` reports itself owner.
async fn time_to_new_owner(nodes: &[ClusterNode], old: usize, since: Instant) -> Result<Duration> {
    let deadline = since + Duration::from_secs(60);
    loop {
        for (index, node) in nodes.iter().enumerate() {
            if index != old && matches!(status(&node.address).await, Some((_, true))) {
                return Ok(since.elapsed());
            }
        }
        if Instant::now() >= deadline {
            bail!("no new owner within 60 s");
        }
        sleep(POLL).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Graceful,
    Crash,
}

/// A capture of the cluster with session TTL `ttl`.
async fn start_node(binary: &Path, etcd: &EtcdServer, ttl: u64) -> Result<ClusterNode> {
    let config = format!("capture-session-ttl = {ttl}\n");
    ClusterNode::start(binary, &etcd.endpoint(), "bench", &config, Some("warn")).await
}

async fn run_case(
    binary: &Path,
    etcd: &EtcdServer,
    ttl: u64,
    case: Case,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(start_node(binary, etcd, ttl).await?);
    }
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let owner =
            wait_one_owner(&nodes, Duration::from_secs(60), Duration::from_millis(20)).await?;
        let since = match case {
            Case::Graceful => {
                let since = Instant::now();
                nodes[owner].signal("TERM")?;
                since
            }
            Case::Crash => {
                let period_ms = ttl * 1000 / 3;
                let phase = rand::rng().random_range(0..period_ms);
                sleep(Duration::from_millis(phase)).await;
                let since = Instant::now();
                nodes[owner].signal("KILL")?;
                since
            }
        };
        samples.push(time_to_new_owner(&nodes, owner, since).await?);
        let mut old = nodes.swap_remove(owner);
        let exited = old.wait_exit(Duration::from_secs(15)).await;
        if case == Case::Graceful {
            match exited {
                Ok(status) if status.success() => {}
                other => bail!("the SIGTERMed owner did not exit 0: {other:?}"),
            }
        }
        drop(old);
        nodes.push(start_node(binary, etcd, ttl).await?);
    }
    Ok(samples)
}

fn p50_and_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 5;
    let mut ttls = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--rounds" => rounds = iter.next().context("--rounds N")?.parse()?,
            "--ttl" => ttls.push(iter.next().context("--ttl S")?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if ttls.is_empty() {
        ttls = DEFAULT_TTLS.to_vec();
    }
    let binary = server_binary()?;
    println!(
        "failover_cluster: {NODES} cdc-server processes ({}), {rounds} rounds per case",
        binary.display()
    );
    let mut summary = Vec::new();
    for ttl in ttls {
        for case in [Case::Graceful, Case::Crash] {
            // A fresh etcd per case: no leftovers of the previous case's leases.
            let etcd = EtcdServer::start().await?;
            let mut samples = Box::pin(run_case(&binary, &etcd, ttl, case, rounds)).await?;
            let (p50, max) = p50_and_max(&mut samples);
            let name = match case {
                Case::Graceful => "graceful (SIGTERM)",
                Case::Crash => "crash (SIGKILL)",
            };
            let bound = match case {
                Case::Graceful => "no lease wait".to_owned(),
                Case::Crash => format!(
                    "lease bound {:.3}s..{:.3}s",
                    ttl as f64 * 2.0 / 3.0,
                    ttl as f64 + 0.5
                ),
            };
            println!(
                "ttl={ttl}s {name}: p50={:.3}s max={:.3}s ({bound}) samples={:?}",
                p50.as_secs_f64(),
                max.as_secs_f64(),
                samples
                    .iter()
                    .map(|sample| format!("{:.3}", sample.as_secs_f64()))
                    .collect::<Vec<_>>()
            );
            let label = match case {
                Case::Graceful => format!("ttl{ttl}_graceful"),
                Case::Crash => format!("ttl{ttl}_crash"),
            };
            summary.push(format!(
                "{label}_p50={:.3}s {label}_max={:.3}s",
                p50.as_secs_f64(),
                max.as_secs_f64()
            ));
        }
    }
    println!("failover_cluster {}", summary.join(" "));
    Ok(())
}
