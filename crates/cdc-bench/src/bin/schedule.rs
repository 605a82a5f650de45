//! Scheduling at scale through real `cdc-server` processes: 1,000 changefeeds of 10 spans each
//! (10 key prefixes, one span per prefix, blackhole sinks) on three captures.
//!
//! Two figures:
//! - `all_replicating`: from the first create request to every span of every changefeed
//!   reported `replicating` by `GET /api/v2/changefeeds/{id}` (a changefeed is polled until it
//!   has all its spans replicating, then no more). The time the creates alone took is printed
//!   before it.
//! - `etcd_writes_per_s`: once all replicate and a settling pause has passed, the etcd store
//!   revision's growth per second over a window; every write transaction adds exactly one
//!   revision, whatever it writes (lease keep-alives add none). etcd's own counters
//!   (`etcd_mvcc_put_total`, `etcd_mvcc_txn_total`) over the same window are printed before it.
//!
//! Usage: `cargo xtask bench schedule [--changefeeds N] [--spans S] [--window SECS]`.
//! The last line is `schedule <N>x<S> all_replicating=<s>s etcd_writes_per_s=<x>`.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cdc_bench::{ClusterNode, request, server_binary, wait_one_owner};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions};
use futures::stream::{self, StreamExt};
use serde_json::json;
use tokio::time::{Instant, sleep};

const NODES: usize = 3;
const TTL: u64 = 10;
/// Requests in flight at once against the cluster (operators script creates in parallel).
const CONCURRENCY: usize = 64;
/// How long the cluster settles once everything replicates, before the write rate is measured.
const SETTLE: Duration = Duration::from_secs(5);
const CLUSTER: &str = "bench";

/// Whether changefeed `id` has `spans` spans, all replicating.
async fn replicating(http: &reqwest::Client, address: &str, id: &str, spans: usize) -> bool {
    let path = format!("/api/v2/changefeeds/{id}");
    match request(http, address, "GET", &path, None).await {
        Ok((200, detail)) => detail["spans"].as_array().is_some_and(|list| {
            list.len() == spans && list.iter().all(|span| span["state"] == "replicating")
        }),
        _ => false,
    }
}

/// etcd's `etcd_mvcc_put_total` and `etcd_mvcc_txn_total`.
async fn etcd_counters(http: &reqwest::Client, endpoint: &str) -> Result<(f64, f64)> {
    let text = http
        .get(format!("{endpoint}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("{name} in etcd's metrics"))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("parse {name}"))
    };
    Ok((value("etcd_mvcc_put_total")?, value("etcd_mvcc_txn_total")?))
}

async fn store_revision(client: &EtcdClient) -> Result<i64> {
    Ok(client.get("bench", GetOptions::default()).await?.revision)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut changefeeds: usize = 1000;
    let mut spans: usize = 10;
    let mut window = Duration::from_secs(10);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--changefeeds" => {
                changefeeds = iter.next().context("--changefeeds N")?.parse()?;
            }
            "--spans" => spans = iter.next().context("--spans S")?.parse()?,
            "--window" => {
                window = Duration::from_secs(iter.next().context("--window SECS")?.parse()?);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if changefeeds == 0 || spans == 0 || window.is_zero() {
        bail!("--changefeeds, --spans and --window must be positive");
    }
    let binary = server_binary()?;
    println!(
        "schedule: {changefeeds} changefeeds x {spans} spans, blackhole sinks, on {NODES} cdc-server processes ({})",
        binary.display()
    );
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let config = format!("capture-session-ttl = {TTL}\n");
        nodes.push(
            ClusterNode::start(&binary, &etcd.endpoint(), CLUSTER, &config, Some("info")).await?,
        );
    }
    let result = measure(&nodes, &etcd, &client, changefeeds, spans, window).await;
    if result.is_err() {
        // What the captures said last, for the failure.
        for (index, node) in nodes.iter().enumerate() {
            println!(
                "--- node {index} ({}):\n{}",
                node.address,
                node.log_tail(30)
            );
        }
    }
    result
}

/// Creates the changefeeds, waits for them to replicate and measures the steady state.
async fn measure(
    nodes: &[ClusterNode],
    etcd: &EtcdServer,
    client: &EtcdClient,
    changefeeds: usize,
    spans: usize,
    window: Duration,
) -> Result<()> {
    let owner = wait_one_owner(nodes, Duration::from_secs(60), Duration::from_millis(50)).await?;
    let http = cdc_bench::http_client_builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // Requests go to the owner: forwarding would add two etcd reads per request to the load
    // measured. A 503 (the owner's queue full, or etcd slow) is retried, as a client would.
    let owner_address = nodes[owner].address.clone();
    let ids: Vec<String> = (0..changefeeds).map(|i| format!("cf-{i:04}")).collect();

    let started = Instant::now();
    let created: Vec<Result<()>> = stream::iter(ids.iter())
        .map(|id| {
            let http = http.clone();
            let owner_address = owner_address.clone();
            async move {
                let rules: Vec<String> =
                    (0..spans).map(|s| format!("/bench/{id}/{s:02}/")).collect();
                let body = json!({
                    "changefeed_id": id,
                    "sink_uri": "blackhole://",
                    "replica_config": {"filter": {"rules": rules}},
                });
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let (status, answer) = request(
                        &http,
                        &owner_address,
                        "POST",
                        "/api/v2/changefeeds",
                        Some(body.clone()),
                    )
                    .await?;
                    match status {
                        200 => return Ok(()),
                        // An attempt that timed out (503) may have created it all the same.
                        409 if attempts > 1 => return Ok(()),
                        503 if attempts < 20 => sleep(Duration::from_millis(100)).await,
                        _ => bail!("create {id}: {status}: {answer}"),
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    let creates_took = started.elapsed();
    println!(
        "schedule: {changefeeds} creates answered in {:.2}s",
        creates_took.as_secs_f64()
    );

    // Poll the changefeeds not yet seen all-replicating, through the owner.
    let mut pending: BTreeSet<String> = ids.iter().cloned().collect();
    let deadline = started + Duration::from_secs(600);
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            bail!(
                "{} changefeeds not all replicating after 600 s",
                pending.len()
            );
        }
        let done: Vec<String> = stream::iter(pending.iter().cloned())
            .map(|id| {
                let http = http.clone();
                let owner_address = owner_address.clone();
                async move {
                    replicating(&http, &owner_address, &id, spans)
                        .await
                        .then_some(id)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|done| async move { done })
            .collect()
            .await;
        for id in done {
            pending.remove(&id);
        }
        if !pending.is_empty() {
            sleep(Duration::from_millis(50)).await;
        }
    }
    let all_replicating = started.elapsed();
    println!(
        "schedule: all {} spans replicating {:.2}s after the first create ({:.2}s after the last create answered)",
        changefeeds * spans,
        all_replicating.as_secs_f64(),
        all_replicating.saturating_sub(creates_took).as_secs_f64()
    );

    // Steady state: the store revision's growth over the window.
    sleep(SETTLE).await;
    let (puts_before, txns_before) = etcd_counters(&http, &etcd.endpoint()).await?;
    let revision_before = store_revision(client).await?;
    let window_start = Instant::now();
    sleep(window).await;
    let revision_after = store_revision(client).await?;
    let seconds = window_start.elapsed().as_secs_f64();
    let (puts_after, txns_after) = etcd_counters(&http, &etcd.endpoint()).await?;
    // The reading of the revision itself writes nothing.
    let writes = u32::try_from(revision_after - revision_before).unwrap_or(u32::MAX);
    let writes_per_s = f64::from(writes) / seconds;
    println!(
        "schedule: steady state over {seconds:.1}s: {writes} revisions, etcd_mvcc_put_total +{}, etcd_mvcc_txn_total +{}",
        puts_after - puts_before,
        txns_after - txns_before
    );
    println!(
        "schedule {changefeeds}x{spans} all_replicating={:.2}s etcd_writes_per_s={writes_per_s:.1}",
        all_replicating.as_secs_f64()
    );
    Ok(())
}
