//! `cargo xtask bench worker`: the etcd worker's commit throughput against raw CAS
//! transactions of the same shape, the initial load of 10,000 changefeeds, and the CPU of an
//! idle worker.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{Compare, CompareOp, EtcdClient, Txn, TxnOp};
use cdc_orchestrator::{
    DataPatch, Error, EtcdWorker, GlobalReactorState, NextTick, PatchGroup, PatchOutcome, Reactor,
    ReactorState, SingleDataPatch, WorkerMetricsSnapshot,
};
use tokio_util::sync::CancellationToken;

/// Keys each transaction writes.
const N_KEYS: usize = 10;
/// How long each throughput run lasts.
const RUN: Duration = Duration::from_secs(3);
const N_CHANGEFEEDS: usize = 10_000;
const CLUSTER: &str = "bench";

/// Counts committed rounds: each tick queues one group that bumps `N_KEYS` counters.
struct CountState {
    round: u64,
    patches: Vec<PatchGroup>,
}

impl ReactorState for CountState {
    fn update(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        _is_init: bool,
    ) -> cdc_orchestrator::Result<()> {
        if key.ends_with(b"/0") {
            self.round = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        Ok(())
    }
    fn update_pending_change(&mut self, _now: std::time::Instant) {}
    fn get_patches(&mut self) -> Vec<PatchGroup> {
        std::mem::take(&mut self.patches)
    }
}

struct CountReactor {
    deadline: Instant,
}

impl Reactor<CountState> for CountReactor {
    async fn tick(&mut self, state: &mut CountState) -> cdc_orchestrator::Result<NextTick> {
        if Instant::now() >= self.deadline {
            return Err(Error::ReactorFinished);
        }
        let next = (state.round + 1).to_string().into_bytes();
        state.patches.push(
            (0..N_KEYS)
                .map(|i| {
                    let next = next.clone();
                    Box::new(SingleDataPatch::new(
                        format!("/tp/{i}").into_bytes(),
                        move |_| Ok(PatchOutcome::Set(Some(next.clone()))),
                    )) as Box<dyn DataPatch>
                })
                .collect(),
        );
        // Throughput: tick again as soon as the worker allows.
        Ok(NextTick::After(std::time::Duration::ZERO))
    }
}

/// Transactions per second, and the worker's own counters of the run.
async fn worker_throughput(client: &EtcdClient) -> Result<(f64, WorkerMetricsSnapshot)> {
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut reactor = CountReactor {
        deadline: started + RUN,
    };
    let state = CountState {
        round: 0,
        patches: Vec::new(),
    };
    let worker = EtcdWorker::new(client.clone(), "/tp");
    let metrics = worker.metrics().clone();
    worker
        .run(&mut reactor, state, Duration::from_millis(1), &cancel)
        .await
        .context("run the worker")?;
    let elapsed = started.elapsed().as_secs_f64();
    let response = client.get("/tp/0", cdc_etcd::GetOptions::default()).await?;
    let rounds: f64 = std::str::from_utf8(&response.kvs[0].value)?.parse()?;
    Ok((rounds / elapsed, metrics.snapshot()))
}

/// The same transaction shape without the worker: compare every key's mod revision and the
/// delete counter, put every key, one call at a time.
async fn raw_throughput(client: &EtcdClient) -> Result<f64> {
    let mut revisions = [0i64; N_KEYS];
    let started = Instant::now();
    let mut n_txns = 0u64;
    while started.elapsed() < RUN {
        let value = n_txns.to_string().into_bytes();
        let mut txn = Txn::default();
        for (i, revision) in revisions.iter().enumerate() {
            let key = format!("/raw/{i}").into_bytes();
            txn.compares.push(Compare::ModRevision {
                key: key.clone(),
                op: CompareOp::Equal,
                revision: *revision,
            });
            txn.success.push(TxnOp::Put {
                key,
                value: value.clone(),
                lease: 0,
            });
        }
        txn.compares.push(Compare::CreateRevision {
            key: b"/raw/__cdc_meta__/meta/ticdc-delete-etcd-key-count".to_vec(),
            op: CompareOp::Equal,
            revision: 0,
        });
        let response = client.txn(txn).await?;
        if !response.succeeded {
            bail!("raw CAS refused");
        }
        revisions.fill(response.revision);
        n_txns += 1;
    }
    Ok(n_txns as f64 / started.elapsed().as_secs_f64())
}

async fn load_changefeeds(client: &EtcdClient) -> Result<()> {
    let info = serde_json::json!({
        "upstream-id": 1, "namespace": "default", "sink-uri": "blackhole://",
        "create-time": "2024-01-01T00:00:00.000000+08:00", "start-ts": 1, "target-ts": 0,
        "admin-job-type": 0, "sort-engine": "unified", "sort-dir": "",
        "config": {"case-sensitive": false, "enable-old-value": true, "filter": {"rules": ["*.*"]}},
        "state": "normal", "error": null, "warning": null, "creator-version": "v7.5.0", "epoch": 1
    });
    let mut ops = Vec::new();
    for n in 0..N_CHANGEFEEDS {
        let id = format!("changefeed-{n}");
        let mut info = info.clone();
        info["changefeed-id"] = serde_json::Value::String(id.clone());
        let base = format!("/tidb/cdc/{CLUSTER}/default");
        ops.push((
            format!("{base}/changefeed/info/{id}"),
            serde_json::to_vec(&info)?,
        ));
        ops.push((
            format!("{base}/changefeed/status/{id}"),
            br#"{"checkpoint-ts":1,"min-table-barrier-ts":1,"admin-job-type":0}"#.to_vec(),
        ));
        for capture in 0..3 {
            ops.push((
                format!("{base}/task/position/capture-{capture}/{id}"),
                br#"{"checkpoint-ts":1,"resolved-ts":1,"count":0,"error":null,"warning":null}"#
                    .to_vec(),
            ));
        }
    }
    for chunk in ops.chunks(100) {
        let txn = Txn {
            compares: vec![],
            success: chunk
                .iter()
                .map(|(key, value)| TxnOp::Put {
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    lease: 0,
                })
                .collect(),
            failure: vec![],
        };
        client.txn(txn).await?;
    }
    Ok(())
}

struct FinishAtOnce;

impl Reactor<GlobalReactorState> for FinishAtOnce {
    async fn tick(
        &mut self,
        _state: &mut GlobalReactorState,
    ) -> cdc_orchestrator::Result<NextTick> {
        Err(Error::ReactorFinished)
    }
}

struct Idle;

impl Reactor<GlobalReactorState> for Idle {
    async fn tick(
        &mut self,
        _state: &mut GlobalReactorState,
    ) -> cdc_orchestrator::Result<NextTick> {
        Ok(NextTick::Idle)
    }
}

fn rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .context("stat")?
        .split_whitespace()
        .collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    // USER_HZ is 100 on Linux.
    Ok((utime + stime) / 100.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let server = EtcdServer::start().await.context("start etcd")?;
    let client = server.client().await?;

    let (worker_tps, metrics) = Box::pin(worker_throughput(&client)).await?;
    let raw_tps = raw_throughput(&client).await?;
    println!(
        "worker: {worker_tps:.0} txn/s, {:.0} keys/s",
        worker_tps * N_KEYS as f64
    );
    let latency = &metrics.commit_latency;
    println!(
        "worker metrics: {} ticks, {} commits, {} conflicts, mean commit latency {:.2} ms",
        metrics.ticks,
        metrics.commits,
        metrics.commit_conflicts,
        latency.sum.as_secs_f64() * 1000.0 / latency.count.max(1) as f64
    );
    println!(
        "raw CAS: {raw_tps:.0} txn/s, {:.0} keys/s",
        raw_tps * N_KEYS as f64
    );

    load_changefeeds(&client).await?;
    let rss_before = rss_mib()?;
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let state = EtcdWorker::new(client.clone(), format!("/tidb/cdc/{CLUSTER}"))
        .run(
            &mut FinishAtOnce,
            GlobalReactorState::new(CLUSTER, 10),
            Duration::from_millis(50),
            &cancel,
        )
        .await?;
    let load = started.elapsed().as_secs_f64();
    let rss = rss_mib()?;
    println!(
        "load: {} changefeeds in {load:.2}s, rss {rss:.0} MiB (before {rss_before:.0} MiB)",
        state.changefeeds.len()
    );
    drop(state);

    let idle_cancel = CancellationToken::new();
    let worker_cancel = idle_cancel.clone();
    let idle_client = client.clone();
    let idle = tokio::spawn(async move {
        EtcdWorker::new(idle_client, "/idle")
            .run(
                &mut Idle,
                GlobalReactorState::new("idle", 10),
                Duration::from_millis(50),
                &worker_cancel,
            )
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = cpu_seconds()?;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_seconds()? - cpu_before) / idle_started.elapsed().as_secs_f64() * 100.0;
    idle_cancel.cancel();
    match idle.await? {
        Err(Error::Cancelled) => {}
        other => bail!("idle worker ended with {:?}", other.err()),
    }
    println!("idle worker: {idle_cpu:.2}% of one core");
    println!(
        "worker/raw throughput ratio={:.2} load_10k={load:.2}s rss={rss:.0}MiB idle_cpu={idle_cpu:.2}%",
        worker_tps / raw_tps
    );
    Ok(())
}
