//! The data plane against `etcdctl make-mirror`: the same workload mirrored from one etcd into
//! another by (a) `etcdctl make-mirror`, (b) one capture with one span and (c) three captures
//! with six spans.
//!
//! Each case gets a fresh upstream and a fresh destination etcd. A sample of the keys (every
//! 100th, value round 0) is written first, so that the six-span changefeed has keys to split at;
//! then the mirror starts (make-mirror copies the sample first; a changefeed starts at the
//! current revision), and the measured round puts every key once (value round 1: 100 bytes that
//! carry the put's time) through many concurrent clients. A watch on the destination sees each
//! key arrive: end-to-end lag is arrival minus put, throughput is keys over the time from the
//! first put to the last arrival, and CPU is the mirror's processes' user + system seconds over
//! the measured round.
//!
//! Usage: `cargo xtask bench dataplane [--keys N] [--sink-query QUERY] [--only-make-mirror]`.
//! The last line is `dataplane/make-mirror throughput ratio=<x> lag_p99=<ms>ms`, x being (c)'s
//! throughput over (a)'s and the lag (c)'s.
//!
//! `cargo xtask bench dataplane -- mysql [--keys N] [--sink-query QUERY]` runs case (c) into the
//! etcd mirror and then into a MySQL table (the `mysql://` sink on a fresh `mariadbd`, its table
//! created beforehand with an index on `revision` for the reader). The reader polls the rows
//! changed after the changefeed's checkpoint (every row at or below it is committed), so a key's
//! arrival is seen within a poll (about 50 ms) of its commit. The last line is
//! `dataplane/mysql events_per_s=<n> lag_p99=<ms>ms etcd_mirror_events_per_s=<n> etcd_mirror_lag_p99=<ms>ms`.
//!
//! `cargo xtask bench dataplane -- nats [--keys N] [--sink-query QUERY]` runs case (c) into the
//! etcd mirror and then into a JetStream stream (the `nats://` sink on a fresh `nats-server -js`,
//! its stream `BENCH` created beforehand over `bench.>`). The reader is an ordered consumer of
//! the stream: a key arrives when JetStream has stored its message. The last line is
//! `dataplane/nats events_per_s=<n> lag_p99=<ms>ms etcd_mirror_events_per_s=<n> etcd_mirror_lag_p99=<ms>ms`.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cdc_bench::{ClusterNode, cpu_seconds, owner_address, request};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions, WatchOptions};
use cdc_sink::testing::{MariaDb, NatsServer};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::Row as _;
use sqlx::mysql::MySqlPool;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const PREFIX: &str = "/bench/";
const DEST_PREFIX: &str = "/mirror/";
const VALUE_LEN: usize = 100;
/// Clients (connections) of the writer, and puts in flight over them.
const WRITER_CLIENTS: usize = 8;
const WRITER_IN_FLIGHT: usize = 128;
/// Every how many keys one is written before the mirror starts.
const SAMPLE_EVERY: usize = 100;
/// How long a case may take to deliver the measured round.
const CASE_DEADLINE: Duration = Duration::from_secs(600);

/// The figures of one case.
struct Figures {
    events_per_s: f64,
    lag_p50: Duration,
    lag_p99: Duration,
    cpu_seconds: f64,
}

fn key(i: usize) -> String {
    format!("{PREFIX}{i:08}")
}

/// A 100-byte value of `round` that carries `since_epoch`, the put's time.
fn value(round: u32, since_epoch: Duration) -> Vec<u8> {
    let mut value = format!("{round}:{:020}:", since_epoch.as_nanos()).into_bytes();
    value.resize(VALUE_LEN, b'x');
    value
}

/// The round and put time a value carries.
fn parse_value(value: &[u8]) -> Option<(u32, Duration)> {
    let text = std::str::from_utf8(value.get(..24)?).ok()?;
    let mut parts = text.split(':');
    let round = parts.next()?.parse().ok()?;
    let nanos: u64 = parts.next()?.parse().ok()?;
    Some((round, Duration::from_nanos(nanos)))
}

/// Puts `keys` (all of them, or every `every`th) with values of `round`, through
/// [`WRITER_CLIENTS`] clients with [`WRITER_IN_FLIGHT`] puts in flight.
async fn write(
    endpoints: &[String],
    keys: usize,
    every: usize,
    round: u32,
    epoch: Instant,
) -> Result<()> {
    let mut clients = Vec::with_capacity(WRITER_CLIENTS);
    for _ in 0..WRITER_CLIENTS {
        clients.push(EtcdClient::connect(endpoints, Default::default()).await?);
    }
    let clients = Arc::new(clients);
    stream::iter((0..keys).step_by(every))
        .map(|i| {
            let clients = Arc::clone(&clients);
            async move {
                let client = &clients[i % clients.len()];
                client
                    .put(key(i), value(round, epoch.elapsed()), 0)
                    .await
                    .with_context(|| format!("put {}", key(i)))
            }
        })
        .buffer_unordered(WRITER_IN_FLIGHT)
        .try_for_each(|_revision| futures::future::ok(()))
        .await
}

/// Watches the destination until every key has arrived with a value of `round`; returns each
/// key's lag and the time of the last arrival.
async fn watch_arrivals(
    dest: &EtcdClient,
    keys: usize,
    round: u32,
    epoch: Instant,
) -> Result<(Vec<Duration>, Duration)> {
    let start = dest.get("/", GetOptions::default()).await?.revision + 1;
    let mut watch = dest
        .watch(
            DEST_PREFIX,
            WatchOptions {
                prefix: true,
                start_revision: start,
                ..WatchOptions::default()
            },
        )
        .await?;
    let mut seen = HashSet::with_capacity(keys);
    let mut lags = Vec::with_capacity(keys);
    let mut last = Duration::ZERO;
    let deadline = Instant::now() + CASE_DEADLINE;
    while seen.len() < keys {
        let response = tokio::time::timeout_at(deadline, watch.next())
            .await
            .with_context(|| format!("{} of {keys} keys arrived in time", seen.len()))??
            .context("the destination's watch ended")?;
        let now = epoch.elapsed();
        for event in response.events {
            let kv = event.kv;
            let Some((value_round, put_at)) = parse_value(&kv.value) else {
                continue;
            };
            if value_round == round && seen.insert(kv.key) {
                lags.push(now.saturating_sub(put_at));
                last = now;
            }
        }
    }
    Ok((lags, last))
}

/// Runs the measured round against a running mirror whose processes are `pids`.
async fn measure(
    upstream: &[String],
    dest: &EtcdClient,
    keys: usize,
    pids: &[u32],
) -> Result<Figures> {
    let epoch = Instant::now();
    measure_with(
        upstream,
        keys,
        pids,
        epoch,
        Box::pin(watch_arrivals(dest, keys, 1, epoch)),
    )
    .await
}

/// The rows of the MySQL table changed after the changefeed's checkpoint, polled until every
/// key has arrived with a value of `round`; returns each key's lag and the last arrival.
async fn mysql_arrivals(
    pool: &MySqlPool,
    owner: &str,
    keys: usize,
    round: u32,
    epoch: Instant,
) -> Result<(Vec<Duration>, Duration)> {
    let http = reqwest::Client::new();
    let mut since: u64 = 0;
    let mut seen = HashSet::with_capacity(keys);
    let mut lags = Vec::with_capacity(keys);
    let mut last = Duration::ZERO;
    let deadline = Instant::now() + CASE_DEADLINE;
    while seen.len() < keys {
        if Instant::now() > deadline {
            bail!("{} of {keys} keys arrived in time", seen.len());
        }
        // Read before the rows: every change at or below it is committed.
        let checkpoint =
            match request(&http, owner, "GET", "/api/v2/changefeeds/mirror", None).await {
                Ok((200, detail)) => detail["checkpoint_ts"].as_u64().unwrap_or(since),
                _ => since,
            };
        let rows = sqlx::query("SELECT k, v FROM bench WHERE revision > ?")
            .bind(since)
            .fetch_all(pool)
            .await?;
        let now = epoch.elapsed();
        for row in rows {
            let key: Vec<u8> = row.try_get(0)?;
            let value: Option<Vec<u8>> = row.try_get(1)?;
            let Some((value_round, put_at)) = value.as_deref().and_then(parse_value) else {
                continue;
            };
            if value_round == round && seen.insert(key) {
                lags.push(now.saturating_sub(put_at));
                last = now;
            }
        }
        since = since.max(checkpoint);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((lags, last))
}

/// The messages of JetStream stream `stream`, read by an ordered consumer until every key has
/// arrived with a value of `round`; returns each key's lag and the last arrival.
async fn nats_arrivals(
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
    keys: usize,
    round: u32,
    epoch: Instant,
) -> Result<(Vec<Duration>, Duration)> {
    let consumer = jetstream
        .get_stream(stream)
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen = HashSet::with_capacity(keys);
    let mut lags = Vec::with_capacity(keys);
    let mut last = Duration::ZERO;
    let deadline = Instant::now() + CASE_DEADLINE;
    while seen.len() < keys {
        let Ok(next) = tokio::time::timeout_at(deadline, messages.next()).await else {
            bail!("{} of {keys} keys arrived in time", seen.len());
        };
        let message = next.context("the ordered consumer ended")??;
        let now = epoch.elapsed();
        let line: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let (Some(key), Some(value)) = (line["key"].as_str(), line["value"].as_str()) else {
            continue;
        };
        let Some((value_round, put_at)) = parse_value(value.as_bytes()) else {
            continue;
        };
        if value_round == round && seen.insert(key.to_owned()) {
            lags.push(now.saturating_sub(put_at));
            last = now;
        }
    }
    Ok((lags, last))
}

/// Runs the measured round, whose arrivals `arrivals` sees, against a running mirror whose
/// processes are `pids`.
async fn measure_with(
    upstream: &[String],
    keys: usize,
    pids: &[u32],
    epoch: Instant,
    arrivals: impl std::future::Future<Output = Result<(Vec<Duration>, Duration)>>,
) -> Result<Figures> {
    let cpu_before: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum();
    let writer = async {
        let first_put = epoch.elapsed();
        write(upstream, keys, 1, 1, epoch).await?;
        println!("  writer done after {:.1?}", epoch.elapsed());
        Ok::<_, anyhow::Error>(first_put)
    };
    let ((mut lags, last), first_put) = tokio::try_join!(arrivals, writer)?;
    let cpu_after: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum();
    lags.sort();
    let percentile = |p: f64| {
        let index = ((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len()) - 1;
        lags[index]
    };
    let elapsed = last.saturating_sub(first_put).as_secs_f64().max(1e-3);
    Ok(Figures {
        events_per_s: keys as f64 / elapsed,
        lag_p50: percentile(0.50),
        lag_p99: percentile(0.99),
        cpu_seconds: cpu_after - cpu_before,
    })
}

/// Fresh upstream and destination etcds, with the key sample written.
async fn etcds(keys: usize) -> Result<(EtcdServer, EtcdServer, EtcdClient)> {
    let upstream = EtcdServer::start().await?;
    let dest = EtcdServer::start().await?;
    write(&upstream.endpoints(), keys, SAMPLE_EVERY, 0, Instant::now()).await?;
    let dest_client = dest.client().await?;
    Ok((upstream, dest, dest_client))
}

/// Case (a): `etcdctl make-mirror`.
async fn make_mirror(keys: usize) -> Result<Figures> {
    let (upstream, dest, dest_client) = etcds(keys).await?;
    let mut child: Child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", upstream.endpoint()))
        .args([
            "make-mirror",
            "--prefix",
            PREFIX,
            "--dest-prefix",
            DEST_PREFIX,
        ])
        .arg(dest.endpoint())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start etcdctl make-mirror (Debian's etcd-client)")?;
    let pid = child.id().context("make-mirror's pid")?;
    // make-mirror copies what exists first: wait until the sample is there.
    let sample = keys.div_ceil(SAMPLE_EVERY);
    wait_for_count(&dest_client, sample).await?;
    let figures = measure(&upstream.endpoints(), &dest_client, keys, &[pid]).await;
    child.kill().await.ok();
    figures
}

async fn wait_for_count(client: &EtcdClient, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = client
            .get(
                DEST_PREFIX,
                GetOptions {
                    count_only: true,
                    ..GetOptions::prefix()
                },
            )
            .await?
            .count;
        if usize::try_from(got).unwrap_or(0) >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the mirror has {got} of {count} keys after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cases (b) and (c): `captures` capture processes, one changefeed of `spans` spans.
async fn captures(
    binary: &Path,
    keys: usize,
    captures: usize,
    spans: usize,
    sink_query: &str,
) -> Result<Figures> {
    let (upstream, dest, dest_client) = etcds(keys).await?;
    let dest_host = dest.endpoint().trim_start_matches("http://").to_owned();
    let sink_uri = format!("etcd://{dest_host}{DEST_PREFIX}{sink_query}");
    let (nodes, _owner) = changefeed(binary, &upstream, captures, spans, &sink_uri).await?;
    let pids: Vec<u32> = nodes.iter().filter_map(ClusterNode::pid).collect();
    measure(&upstream.endpoints(), &dest_client, keys, &pids).await
}

/// Case (c) into the MySQL sink: `captures` capture processes, one changefeed of `spans` spans
/// into table `bench` of a fresh `mariadbd`.
async fn captures_mysql(
    binary: &Path,
    keys: usize,
    captures: usize,
    spans: usize,
    sink_query: &str,
) -> Result<Figures> {
    let upstream = EtcdServer::start().await?;
    write(&upstream.endpoints(), keys, SAMPLE_EVERY, 0, Instant::now()).await?;
    let database = MariaDb::start().await?;
    let pool = database.pool().await?;
    sqlx::query(&cdc_sink::create_table_sql("bench"))
        .execute(&pool)
        .await?;
    sqlx::query("CREATE INDEX by_revision ON bench (revision)")
        .execute(&pool)
        .await?;
    let extra = sink_query.replacen('?', "&", 1);
    let sink_uri = database.sink_uri("bench", &extra);
    let (nodes, owner) = changefeed(binary, &upstream, captures, spans, &sink_uri).await?;
    let pids: Vec<u32> = nodes.iter().filter_map(ClusterNode::pid).collect();
    let epoch = Instant::now();
    let arrivals = Box::pin(mysql_arrivals(&pool, &owner, keys, 1, epoch));
    measure_with(&upstream.endpoints(), keys, &pids, epoch, arrivals).await
}

/// Case (c) into the NATS sink: `captures` capture processes, one changefeed of `spans` spans
/// publishing to `bench.mirror` in stream `BENCH` of a fresh `nats-server -js`.
async fn captures_nats(
    binary: &Path,
    keys: usize,
    captures: usize,
    spans: usize,
    sink_query: &str,
) -> Result<Figures> {
    let upstream = EtcdServer::start().await?;
    write(&upstream.endpoints(), keys, SAMPLE_EVERY, 0, Instant::now()).await?;
    let server = NatsServer::start().await?;
    let jetstream = async_nats::jetstream::new(server.client().await?);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".to_owned(),
            subjects: vec!["bench.>".to_owned()],
            duplicate_window: cdc_sink::DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await?;
    let extra = sink_query.replacen('?', "&", 1);
    let sink_uri = server.sink_uri("bench", "BENCH", &extra);
    let (nodes, _owner) = changefeed(binary, &upstream, captures, spans, &sink_uri).await?;
    let pids: Vec<u32> = nodes.iter().filter_map(ClusterNode::pid).collect();
    let epoch = Instant::now();
    let arrivals = Box::pin(nats_arrivals(&jetstream, "BENCH", keys, 1, epoch));
    measure_with(&upstream.endpoints(), keys, &pids, epoch, arrivals).await
}

/// Starts `captures` capture processes on `upstream` and a changefeed `mirror` of `spans` spans
/// over the prefix into `sink_uri`; returns once every span replicates, with the owner's address.
async fn changefeed(
    binary: &Path,
    upstream: &EtcdServer,
    captures: usize,
    spans: usize,
    sink_uri: &str,
) -> Result<(Vec<ClusterNode>, String)> {
    let mut nodes = Vec::with_capacity(captures);
    for _ in 0..captures {
        nodes.push(ClusterNode::start(binary, &upstream.endpoint(), "bench", "", None).await?);
    }
    let http = cdc_bench::http_client_builder().build()?;
    let owner = owner_address(&nodes, Duration::from_secs(60)).await?;
    let body = json!({
        "changefeed_id": "mirror",
        "sink_uri": sink_uri,
        "replica_config": {
            "filter": {"rules": [PREFIX]},
            "scheduler": {"spans_per_prefix": spans},
        },
    });
    let (status, answer) =
        request(&http, &owner, "POST", "/api/v2/changefeeds", Some(body)).await?;
    if status != 200 {
        bail!("create the changefeed: {status} {answer}");
    }
    // Wait until every span replicates.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, detail) = request(&http, &owner, "GET", "/api/v2/changefeeds/mirror", None).await?;
        let states: Vec<&str> = detail["spans"]
            .as_array()
            .map(|spans| spans.iter().filter_map(|s| s["state"].as_str()).collect())
            .unwrap_or_default();
        if states.len() == spans && states.iter().all(|state| *state == "replicating") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the changefeed's spans are not all replicating after 60 s: {detail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((nodes, owner))
}

fn report(name: &str, figures: &Figures) {
    println!(
        "dataplane/{name} events_per_s={:.0} lag_p50={}ms lag_p99={}ms cpu_s={:.1}",
        figures.events_per_s,
        figures.lag_p50.as_millis(),
        figures.lag_p99.as_millis(),
        figures.cpu_seconds,
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut keys = 200_000;
    let mut sink_query = String::new();
    let mut only_make_mirror = false;
    let mut mysql = false;
    let mut nats = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => {}
            "mysql" => mysql = true,
            "nats" => nats = true,
            "--keys" => keys = args.next().context("--keys N")?.parse()?,
            "--sink-query" => {
                sink_query = format!("?{}", args.next().context("--sink-query QUERY")?)
            }
            "--only-make-mirror" => only_make_mirror = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let binary = cdc_bench::server_binary()?;
    if mysql {
        println!(
            "dataplane: {keys} keys of {VALUE_LEN} B; 3 captures 6 spans into (c) the etcd mirror and (d) a MySQL table"
        );
        let c = Box::pin(captures(&binary, keys, 3, 6, &sink_query))
            .await
            .context("case (c) three captures into etcd")?;
        report("3-captures-6-spans", &c);
        let d = Box::pin(captures_mysql(&binary, keys, 3, 6, &sink_query))
            .await
            .context("case (d) three captures into mysql")?;
        report("mysql-3-captures-6-spans", &d);
        println!(
            "dataplane/mysql events_per_s={:.0} lag_p99={}ms etcd_mirror_events_per_s={:.0} etcd_mirror_lag_p99={}ms",
            d.events_per_s,
            d.lag_p99.as_millis(),
            c.events_per_s,
            c.lag_p99.as_millis()
        );
        return Ok(());
    }
    if nats {
        println!(
            "dataplane: {keys} keys of {VALUE_LEN} B; 3 captures 6 spans into (c) the etcd mirror and (d) a JetStream stream"
        );
        let c = Box::pin(captures(&binary, keys, 3, 6, &sink_query))
            .await
            .context("case (c) three captures into etcd")?;
        report("3-captures-6-spans", &c);
        let d = Box::pin(captures_nats(&binary, keys, 3, 6, &sink_query))
            .await
            .context("case (d) three captures into nats")?;
        report("nats-3-captures-6-spans", &d);
        println!(
            "dataplane/nats events_per_s={:.0} lag_p99={}ms etcd_mirror_events_per_s={:.0} etcd_mirror_lag_p99={}ms",
            d.events_per_s,
            d.lag_p99.as_millis(),
            c.events_per_s,
            c.lag_p99.as_millis()
        );
        return Ok(());
    }
    println!(
        "dataplane: {keys} keys of {VALUE_LEN} B; (a) make-mirror, (b) 1 capture 1 span, (c) 3 captures 6 spans"
    );
    let a = Box::pin(make_mirror(keys))
        .await
        .context("case (a) make-mirror")?;
    report("make-mirror", &a);
    if only_make_mirror {
        return Ok(());
    }
    let b = Box::pin(captures(&binary, keys, 1, 1, &sink_query))
        .await
        .context("case (b) one capture")?;
    report("1-capture-1-span", &b);
    let c = Box::pin(captures(&binary, keys, 3, 6, &sink_query))
        .await
        .context("case (c) three captures")?;
    report("3-captures-6-spans", &c);
    println!(
        "dataplane/make-mirror throughput ratio={:.2} lag_p99={}ms",
        c.events_per_s / a.events_per_s,
        c.lag_p99.as_millis()
    );
    Ok(())
}
