//! A changefeed's memory is bounded by its quota: while its sink stalls for 30 s, 1 GiB of
//! changes arrives, and the capture's resident memory stays under the quota plus 100 MiB
//! (docs/guarantees.md). The quota is 64 MiB here instead of TiCDC's default 1 GiB, so that the
//! gigabyte is sixteen quotas.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cdc_etcd::GetOptions;
use cdc_etcd::testing::EtcdServer;
use serde_json::json;

use super::{Cluster, SETTLE};
use crate::support::wait_for;

const QUOTA: u64 = 64 << 20;
const VALUE: usize = 16 << 10;
/// 1 GiB of changes.
const KEYS: usize = (1 << 30) / VALUE;
const STALL: Duration = Duration::from_secs(30);
const SLACK: u64 = 100 << 20;

/// The resident set of process `pid`, in bytes (0 once it is gone).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_keeps_the_capture_under_its_memory_quota() -> Result<()> {
    let cluster = Cluster::start(1, "memory").await?;
    let mut sink = EtcdServer::start().await?;
    let sink_host = sink.endpoint().trim_start_matches("http://").to_owned();
    let body = json!({
        "changefeed_id": "stalled",
        "sink_uri": format!("etcd://{sink_host}/mirror/?flush-interval=200ms"),
        "replica_config": {
            "filter": {"rules": ["/mem/"]},
            "memory_quota": QUOTA,
        },
    });
    cluster.create(0, &body).await?;
    cluster.wait_replicating("stalled", 1, SETTLE).await?;
    let pid = cluster.nodes[0].pid();
    let baseline = rss_bytes(pid);

    // The sink's etcd stops answering; 1 GiB of changes arrives, and the stall lasts.
    sink.pause()?;
    let stalled_at = Instant::now();
    let done = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            while !done.is_cancelled() {
                peak = peak.max(rss_bytes(pid));
                tokio::select! {
                    () = done.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            peak.max(rss_bytes(pid))
        }
    });
    let writers = (0..8).map(|w| {
        let client = cluster.client.clone();
        async move {
            for i in (w..KEYS).step_by(8) {
                client
                    .put(format!("/mem/{i:06}"), vec![b'm'; VALUE], 0)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(writers).await?;
    let last = u64::try_from(
        cluster
            .client
            .get("/", GetOptions::default())
            .await?
            .revision,
    )?;
    // The stall is a fault held for its length, not a wait for some state.
    tokio::time::sleep_until((stalled_at + STALL).into()).await;
    done.cancel();
    let peak = sampler.await?;
    sink.resume()?;
    ensure!(
        peak < QUOTA + SLACK,
        "the capture's RSS peaked at {} MiB (baseline {} MiB) for a quota of {} MiB{}",
        peak >> 20,
        baseline >> 20,
        QUOTA >> 20,
        cluster.diagnostics()
    );

    // The changefeed catches up once its sink is back (after its retry backoff).
    wait_for(Duration::from_secs(300), || async {
        let detail = cluster.changefeed("stalled").await?;
        (detail["checkpoint_ts"].as_u64()? >= last).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "the changefeed catches up to {last}{}",
            cluster.diagnostics()
        )
    })?;
    let mirrored = sink
        .client()
        .await?
        .get(
            "/mirror/",
            GetOptions {
                count_only: true,
                ..GetOptions::prefix()
            },
        )
        .await?
        .count;
    ensure!(
        usize::try_from(mirrored)? == KEYS,
        "{mirrored} of {KEYS} keys mirrored"
    );
    Ok(())
}
