//! The fencing oracle of `cdc-oracle` on real data: three `cdc-server` processes logging JSON,
//! a changefeed whose checkpoint the owner keeps writing, the owner killed once; the run
//! directory holds the captures' logs and the metadata's history, and the oracle finds every
//! owner write inside its term.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, EventKind, WatchOptions};
use cdc_oracle::{
    Outcome, logged_owner_txns, owner_terms, run::metadata_events, stale_owner_writes,
};
use serde_json::json;

use crate::support::node::{ServerNode, owners};
use crate::support::wait_for;

const CLUSTER: &str = "oracle";
const SETTLE: Duration = Duration::from_secs(30);

fn start_node(etcd: &str) -> ServerNode {
    let mut node = ServerNode::start(etcd, CLUSTER, "capture-session-ttl = 5\nlog-json = true\n");
    node.get_timeout = Duration::from_secs(10);
    node
}

/// Waits until exactly one running node reports itself owner; returns its index.
async fn wait_owner(nodes: &[ServerNode], not: Option<&str>) -> Result<usize> {
    wait_for(SETTLE, || async {
        match owners(nodes).await.as_slice() {
            [(index, id)] if Some(id.as_str()) != not => Some(*index),
            _ => None,
        }
    })
    .await
    .context("one owner")
}

/// Waits until the changefeed's checkpoint, as any node answers it, reaches `revision`.
async fn wait_checkpoint(nodes: &[ServerNode], revision: i64) -> Result<()> {
    wait_for(SETTLE, || async {
        for node in nodes {
            if let Ok(detail) = node.get("/api/v2/changefeeds/fenced").await
                && detail["checkpoint_ts"].as_i64()? >= revision
            {
                return Some(());
            }
        }
        None
    })
    .await
    .with_context(|| format!("the checkpoint reaches {revision}"))
}

async fn write_keys(client: &EtcdClient, from: usize, n: usize) -> Result<i64> {
    let mut revision = 0;
    for i in from..from + n {
        revision = client.put(format!("/a/{i:04}"), "v", 0).await?;
    }
    Ok(revision)
}

/// Every event under the cluster's prefix from revision 1 to now, as the runner's recorder
/// writes them into `metadata.jsonl` (a watch from revision 1 replays the history). The watch
/// covers the range up to a sentinel key written last, whose event ends the history.
async fn record_metadata(client: &EtcdClient, dir: &Path) -> Result<()> {
    const SENTINEL: &str = "/zz-oracle-test-end";
    let prefix = format!("/tidb/cdc/{CLUSTER}/");
    client.put(SENTINEL, "", 0).await?;
    let mut watch = client
        .watch_range(
            prefix.clone(),
            format!("{SENTINEL}\0"),
            WatchOptions {
                start_revision: 1,
                ..WatchOptions::default()
            },
        )
        .await?;
    let mut lines = String::new();
    loop {
        let Some(response) = tokio::time::timeout(SETTLE, watch.next()).await?? else {
            bail!("the watch ended before the sentinel");
        };
        for event in response.events {
            let kv = event.kv;
            let key = String::from_utf8(kv.key)?;
            if key == SENTINEL {
                std::fs::write(dir.join("metadata.jsonl"), lines)?;
                return Ok(());
            }
            if !key.starts_with(&prefix) {
                continue;
            }
            let line = json!({
                "type": match event.kind { EventKind::Put => "put", EventKind::Delete => "delete" },
                "key": key,
                "value": String::from_utf8(kv.value)?,
                "mod_revision": kv.mod_revision,
                "create_revision": kv.create_revision,
                "mono_ns": cdc_oracle::mono_ns(),
            });
            lines.push_str(&format!("{line}\n"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_owner_write_is_inside_its_term_across_an_owner_kill() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    let endpoint = etcd.endpoint();
    let mut nodes: Vec<ServerNode> = (0..3).map(|_| start_node(&endpoint)).collect();
    let owner = wait_owner(&nodes, None).await?;
    let first_owner_id = nodes[owner].id().await?;

    write_keys(&client, 0, 20).await?;
    let body = json!({
        "changefeed_id": "fenced",
        "sink_uri": "blackhole://",
        "replica_config": {
            "filter": {"rules": ["/a/"]},
            "scheduler": {"spans_per_prefix": 3},
        },
    });
    let response = crate::support::http_client()
        .post(format!(
            "http://{}/api/v2/changefeeds",
            nodes[owner].address
        ))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "create: {}",
        response.text().await?
    );
    let revision = write_keys(&client, 20, 20).await?;
    wait_checkpoint(&nodes, revision).await?;

    // The owner dies; its key goes with its lease, and another capture's term begins.
    let dir = tempfile::tempdir()?;
    let mut killed = nodes.remove(owner);
    killed.kill()?;
    std::fs::write(dir.path().join("capture-0.log"), killed.log_text())?;
    wait_owner(&nodes, Some(&first_owner_id)).await?;
    let revision = write_keys(&client, 40, 20).await?;
    wait_checkpoint(&nodes, revision).await?;

    for (index, node) in nodes.iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("capture-{}.log", index + 1)),
            node.log_text(),
        )?;
    }
    record_metadata(&client, dir.path()).await?;

    // The data is real: two terms, each with committed owner transactions.
    let terms = owner_terms(&metadata_events(dir.path())?);
    ensure!(terms.len() >= 2, "{terms:?}");
    let txns = logged_owner_txns(dir.path())?;
    let committed_terms: BTreeSet<u64> = txns
        .iter()
        .filter(|txn| txn.outcome == Outcome::Committed)
        .map(|txn| txn.owner_revision)
        .collect();
    ensure!(
        committed_terms.contains(&terms[0].create_revision)
            && committed_terms.contains(&terms[1].create_revision),
        "committed in terms {committed_terms:?} of {terms:?}"
    );
    ensure!(
        txns.iter().all(|txn| txn.capture.is_some()),
        "every line names its capture: {txns:?}"
    );

    let finding = stale_owner_writes(dir.path())?;
    assert_eq!(finding.count, 0, "{:?}", finding.details);

    // The same commit, had the deposed owner made it after its term (as an unfenced one
    // could), is found: its line repeated with the revision of the term's end.
    let log = std::fs::read_to_string(dir.path().join("capture-0.log"))?;
    let committed = log
        .lines()
        .find(|line| line.contains("cdc::owner_commit") && line.contains("\"committed\""))
        .context("a committed line of the first owner")?;
    let mut stale: serde_json::Value = serde_json::from_str(committed)?;
    stale["fields"]["revision"] = json!(terms[0].end.context("the first term ended")?);
    std::fs::write(dir.path().join("capture-0.log"), format!("{log}{stale}\n"))?;
    let finding = stale_owner_writes(dir.path())?;
    assert_eq!(finding.count, 1, "{:?}", finding.details);
    Ok(())
}
