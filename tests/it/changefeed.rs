//! Changefeeds across three real `cdc-server` processes and a real etcd: the etcd source and
//! the blackhole sink, with every capture's span log (`[debug] span-log`) as the record of
//! which capture ran which span when.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod dataplane;
mod memory;
mod mysql;
mod nats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::node::{ServerNode, owners, send_when_ready};
use crate::support::{hold_for, wait_for};
use cdc_oracle::mono_ns;
use cdc_oracle::span_log::{self, ProcessLog, SpanHistory};

/// The captures' session TTL: the smallest the configuration accepts.
const TTL: u64 = 5;
/// How long a vanished capture stays in the reactor states (`max(ttl / 2, 5)` s).
const REMOVAL_DELAY: u64 = 5;
/// Generous bound for what takes a few ticks on an idle machine.
const SETTLE: Duration = Duration::from_secs(30);

/// The upstream etcd's store revision.
async fn store_revision(client: &EtcdClient) -> Result<u64> {
    Ok(u64::try_from(
        client.get("/", GetOptions::default()).await?.revision,
    )?)
}

/// The checkpoint of changefeed `id` as the API reports it.
async fn checkpoint(cluster: &Cluster, id: &str) -> Option<u64> {
    cluster.changefeed(id).await?["checkpoint_ts"].as_u64()
}

/// A writer running while an end-to-end test fails captures and servers in turn, at store
/// revisions counted from `from`.
struct Faults {
    writer: tokio::task::JoinHandle<Result<()>>,
    client: EtcdClient,
    from: u64,
}

impl Faults {
    /// Starts `write` on a client of the cluster's etcd.
    fn start<F>(cluster: &Cluster, from: u64, write: impl FnOnce(EtcdClient) -> F) -> Faults
    where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        Faults {
            writer: tokio::spawn(write(cluster.client.clone())),
            client: cluster.client.clone(),
            from,
        }
    }

    /// Waits (180 s at most) until the writes reach revision `from + offset`.
    async fn reach(&self, offset: u64) -> Result<()> {
        let target = self.from + offset;
        wait_for(Duration::from_secs(180), || async {
            let revision = self
                .client
                .get("/", GetOptions::default())
                .await
                .ok()?
                .revision;
            (u64::try_from(revision).ok()? >= target).then_some(())
        })
        .await
    }

    /// Kills (SIGKILL) a capture other than the owner at `from + capture`, then the owner at
    /// `from + owner`, each replaced by a new capture.
    async fn kill_a_capture_then_the_owner(
        &self,
        cluster: &mut Cluster,
        capture: u64,
        owner: u64,
    ) -> Result<()> {
        self.reach(capture).await?;
        let (owner_index, _) = cluster.wait_owner(SETTLE).await?;
        cluster.kill((owner_index + 1) % cluster.nodes.len())?;
        cluster.add_node();
        self.reach(owner).await?;
        let (owner_index, _) = cluster.wait_owner(Duration::from_secs(TTL * 3)).await?;
        cluster.kill(owner_index)?;
        cluster.add_node();
        Ok(())
    }

    /// Waits for the writer to finish; the store revision after its last write.
    async fn finish(self) -> Result<u64> {
        self.writer.await??;
        store_revision(&self.client).await
    }
}

/// One `cdc-server` process with its own span log.
struct Node {
    server: ServerNode,
    span_log: PathBuf,
}

impl Node {
    fn start(etcd: &str, cluster_id: &str, span_log: PathBuf) -> Node {
        let config = format!(
            "capture-session-ttl = {TTL}\n[debug]\nspan-log = {:?}\n",
            span_log.display().to_string()
        );
        let mut server = ServerNode::start(etcd, cluster_id, &config);
        server.get_timeout = Duration::from_secs(10);
        Node { server, span_log }
    }

    fn span_log_text(&self) -> String {
        std::fs::read_to_string(&self.span_log).unwrap_or_default()
    }
}

impl std::ops::Deref for Node {
    type Target = ServerNode;

    fn deref(&self) -> &ServerNode {
        &self.server
    }
}

/// Sends one request with a JSON body and returns the status and the JSON answer (`null` when
/// the body is empty or not JSON).
async fn call(
    address: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let url = format!("http://{address}{path}");
    let (status, text) = send_when_ready(|| {
        let request = crate::support::http_client()
            .request(method.clone(), &url)
            .timeout(Duration::from_secs(10));
        match body {
            Some(body) => request.json(body),
            None => request,
        }
    })
    .await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok((status.as_u16(), value))
}

/// A cluster of captures whose span logs are kept, including those of the killed ones.
struct Cluster {
    etcd: EtcdServer,
    client: EtcdClient,
    cluster_id: String,
    nodes: Vec<Node>,
    /// The killed processes: their span logs (closed at their death) and their files.
    dead: Vec<(ProcessLog, Node)>,
    dir: tempfile::TempDir,
    started: usize,
}

impl Cluster {
    async fn start(n_nodes: usize, cluster_id: &str) -> Result<Cluster> {
        let etcd = EtcdServer::start().await?;
        let client = etcd.client().await?;
        let mut cluster = Cluster {
            etcd,
            client,
            cluster_id: cluster_id.to_owned(),
            nodes: Vec::new(),
            dead: Vec::new(),
            dir: tempfile::tempdir()?,
            started: 0,
        };
        for _ in 0..n_nodes {
            cluster.add_node();
        }
        cluster.started_ids().await?;
        cluster.wait_owner(SETTLE).await?;
        Ok(cluster)
    }

    /// Starts one more capture process.
    fn add_node(&mut self) -> usize {
        self.started += 1;
        let span_log = self
            .dir
            .path()
            .join(format!("span-log-{}.jsonl", self.started));
        self.nodes.push(Node::start(
            &self.etcd.endpoint(),
            &self.cluster_id,
            span_log,
        ));
        self.nodes.len() - 1
    }

    /// Kills node `index` with SIGKILL and reaps it; its span log ends at its death.
    fn kill(&mut self, index: usize) -> Result<()> {
        let mut node = self.nodes.remove(index);
        node.server.kill()?;
        let died_at = mono_ns();
        let log = ProcessLog {
            name: node.span_log.display().to_string(),
            text: node.span_log_text(),
            died_at: Some(died_at),
        };
        self.dead.push((log, node));
        Ok(())
    }

    /// The lease of node `index`'s current capture key, if it has one.
    async fn lease_of(&self, index: usize) -> Option<i64> {
        let id = self.nodes[index].id().await.ok()?;
        let key = format!("/tidb/cdc/{}/__cdc_meta__/capture/{id}", self.cluster_id);
        let found = self.client.get(key, GetOptions::default()).await.ok()?;
        found.kvs.first().map(|kv| kv.lease)
    }

    /// Every span log so far, the running processes' open to the end.
    fn history(&self) -> Result<SpanHistory> {
        let mut logs: Vec<ProcessLog> = Vec::new();
        for (log, _) in &self.dead {
            logs.push(log.clone());
        }
        for node in &self.nodes {
            logs.push(ProcessLog {
                name: node.span_log.display().to_string(),
                text: node.span_log_text(),
                died_at: None,
            });
        }
        Ok(span_log::parse(&logs)?)
    }

    /// Fails with every process's recent log when the span logs show an overlap.
    fn check_no_overlap(&self) -> Result<SpanHistory> {
        let history = self.history()?;
        history
            .check_no_overlap()
            .map_err(|overlap| anyhow::anyhow!("{overlap}"))
            .with_context(|| self.diagnostics())?;
        Ok(history)
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "\n--- node {index} ({}):\n{}",
                node.address,
                node.log_tail(40)
            ));
        }
        for (_, node) in &self.dead {
            out.push_str(&format!(
                "\n--- killed ({}):\n{}",
                node.address,
                node.log_tail(20)
            ));
        }
        out
    }

    /// Every running node's capture ID, once each has one.
    async fn started_ids(&self) -> Result<Vec<String>> {
        wait_for(SETTLE, || async {
            let mut ids = Vec::new();
            for node in &self.nodes {
                ids.push(node.id().await.ok().filter(|id| !id.is_empty())?);
            }
            Some(ids)
        })
        .await
        .context("every capture has started")
    }

    /// The nodes that report themselves owner, as (index, capture ID).
    async fn owners(&self) -> Vec<(usize, String)> {
        owners(self.nodes.iter().map(|node| &node.server)).await
    }

    async fn wait_owner(&self, within: Duration) -> Result<(usize, String)> {
        wait_for(within, || async {
            let owners = self.owners().await;
            (owners.len() == 1).then(|| owners[0].clone())
        })
        .await
        .with_context(|| format!("one owner within {within:?}{}", self.diagnostics()))
    }

    /// Sends a request to node `index`.
    async fn call_node(
        &self,
        index: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        call(&self.nodes[index].address, method, path, body).await
    }

    /// A successful answer of some node (the first that answers 2xx), or the last failure.
    async fn api(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut last = String::new();
        for node in &self.nodes {
            match call(&node.address, method.clone(), path, body).await {
                Ok((status, value)) if (200..300).contains(&status) => return Ok(value),
                Ok((status, value)) => last = format!("{method} {path}: {status}: {value}"),
                Err(err) => last = format!("{method} {path}: {err:#}"),
            }
        }
        bail!("{last}")
    }

    /// The changefeed's detail, or `None` while no owner answers.
    async fn changefeed(&self, id: &str) -> Option<Value> {
        self.api(Method::GET, &format!("/api/v2/changefeeds/{id}"), None)
            .await
            .ok()
    }

    /// Waits until changefeed `id` has `n_spans` spans, all replicating on running captures;
    /// returns its detail.
    async fn wait_replicating(&self, id: &str, n_spans: usize, within: Duration) -> Result<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let found = wait_for(within, || async {
            let ids: BTreeSet<String> = self.current_ids().await;
            let detail = self.changefeed(id).await?;
            *last.lock().unwrap() = detail.clone();
            let spans = detail["spans"].as_array()?;
            let replicating = spans.len() == n_spans
                && spans.iter().all(|span| {
                    span["state"] == "replicating"
                        && span["capture_id"]
                            .as_str()
                            .is_some_and(|capture| ids.contains(capture))
                });
            replicating.then_some(detail)
        })
        .await;
        found.with_context(|| {
            let last = last.lock().unwrap();
            format!(
                "changefeed {id}: {n_spans} spans replicating on running captures within {within:?}; last {last}{}",
                self.diagnostics()
            )
        })
    }

    /// The capture IDs of the running nodes that answer.
    async fn current_ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for node in &self.nodes {
            if let Ok(id) = node.id().await
                && !id.is_empty()
            {
                ids.insert(id);
            }
        }
        ids
    }

    /// Writes `n` keys under each prefix; returns the last revision.
    async fn write_keys(&self, prefixes: &[&str], n: usize) -> Result<i64> {
        let mut revision = 0;
        for prefix in prefixes {
            for i in 0..n {
                revision = self
                    .client
                    .put(format!("{prefix}{i:04}"), format!("value {i}"), 0)
                    .await?;
            }
        }
        Ok(revision)
    }

    /// Creates a changefeed through node `via` (forwarded to the owner unless it is owner).
    async fn create(&self, via: usize, body: &Value) -> Result<Value> {
        let (status, answer) = self
            .call_node(via, Method::POST, "/api/v2/changefeeds", Some(body))
            .await?;
        ensure!(status == 200, "create: {status}: {answer}");
        Ok(answer)
    }
}

/// A changefeed over `prefixes` into the blackhole sink, from the current revision.
fn changefeed_body(id: &str, prefixes: &[&str], spans_per_prefix: usize) -> Value {
    json!({
        "changefeed_id": id,
        "sink_uri": "blackhole://",
        "replica_config": {
            "filter": {"rules": prefixes},
            "scheduler": {"spans_per_prefix": spans_per_prefix},
        },
    })
}

/// The spans of a detail answer per capture ID.
fn spans_per_capture(detail: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for span in detail["spans"].as_array().into_iter().flatten() {
        let capture = span["capture_id"].as_str().unwrap_or_default().to_owned();
        *counts.entry(capture).or_default() += 1;
    }
    counts
}

/// The span IDs a detail answer places on `capture`.
fn spans_on(detail: &Value, capture: &str) -> BTreeSet<u64> {
    detail["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|span| span["capture_id"] == capture)
        .filter_map(|span| span["span_id"].as_u64())
        .collect()
}

const PREFIXES: [&str; 3] = ["/a/", "/b/", "/c/"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_spans_spread_evenly_and_a_killed_capture_s_move_in_time() -> Result<()> {
    let mut cluster = Cluster::start(3, "spread").await?;
    // Keys to split on: four spans per prefix are cut at keys present at creation.
    cluster.write_keys(&PREFIXES, 40).await?;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let via = (owner + 1) % 3;
    let created = cluster
        .create(via, &changefeed_body("spread", &PREFIXES, 4))
        .await?;
    assert_eq!(created["id"], "spread", "{created}");
    assert_eq!(created["namespace"], "default", "{created}");
    assert_eq!(created["sink_uri"], "blackhole://", "{created}");

    let detail = cluster
        .wait_replicating("spread", 12, SETTLE)
        .await
        .context("12 spans replicating")?;
    let ids = cluster.started_ids().await?;
    let counts = spans_per_capture(&detail);
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 4)).collect();
    assert_eq!(counts, expected, "{detail}");
    assert_eq!(detail["state"], "normal", "{detail}");
    // Each prefix is cut into four contiguous spans: one span's end is the next one's start.
    let spans = detail["spans"].as_array().context("spans")?;
    let mut by_id: Vec<&Value> = spans.iter().collect();
    by_id.sort_by_key(|span| span["span_id"].as_u64());
    let span_ids: BTreeSet<u64> = by_id
        .iter()
        .filter_map(|span| span["span_id"].as_u64())
        .collect();
    assert_eq!(span_ids.len(), 12, "distinct span IDs: {detail}");
    for prefix in by_id.chunks(4) {
        for pair in prefix.windows(2) {
            assert_eq!(pair[0]["end_key"], pair[1]["start_key"], "{detail}");
        }
        for span in prefix {
            assert_ne!(span["end_key"], "", "an explicit end key: {detail}");
        }
    }
    // The split keys chosen at creation are stored with the changefeed: three per prefix.
    let info = cluster
        .client
        .get(
            "/tidb/cdc/spread/default/changefeed/info/spread",
            GetOptions::default(),
        )
        .await?;
    let info: Value = serde_json::from_slice(&info.kvs.first().context("the info")?.value)?;
    let split_keys = info["config"]["scheduler"]["split_keys_base64"]
        .as_array()
        .with_context(|| format!("split keys in {info}"))?;
    assert_eq!(split_keys.len(), 3, "one list per prefix: {info}");
    for list in split_keys {
        assert_eq!(list.as_array().map(Vec::len), Some(3), "{info}");
    }

    // The processors, as TiCDC lists them, and each capture's span IDs.
    let processors = cluster.api(Method::GET, "/api/v2/processors", None).await?;
    let items = processors["items"].as_array().context("items")?;
    assert_eq!(items.len(), 3, "{processors}");
    for id in &ids {
        let path = format!("/api/v2/processors/spread/{id}");
        let processor = cluster.api(Method::GET, &path, None).await?;
        let tables: BTreeSet<u64> = processor["table_ids"]
            .as_array()
            .context("table_ids")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(tables, spans_on(&detail, id), "{processor} {detail}");
    }
    // The changefeed list.
    let list = cluster
        .api(Method::GET, "/api/v2/changefeeds", None)
        .await?;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["id"], "spread", "{list}");
    assert_eq!(list["items"][0]["state"], "normal", "{list}");

    // SIGKILL a capture that is not owner: its spans move to the others within
    // TTL + the removal delay + 2 s.
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let victim = (owner + 1) % 3;
    let victim_id = cluster.nodes[victim].id().await?;
    let killed = Instant::now();
    cluster.kill(victim)?;
    let within = Duration::from_secs(TTL + REMOVAL_DELAY + 2);
    let detail = cluster.wait_replicating("spread", 12, within).await?;
    let elapsed = killed.elapsed();
    assert!(elapsed <= within, "{elapsed:?}");
    let counts = spans_per_capture(&detail);
    assert!(!counts.contains_key(&victim_id), "{detail}");
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [6, 6],
        "{detail}"
    );
    let history = cluster.check_no_overlap()?;
    assert!(history.moves() >= 4, "{history:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_capture_moves_its_spans_away() -> Result<()> {
    let cluster = Cluster::start(3, "drainspans").await?;
    let (owner, owner_id) = cluster.wait_owner(SETTLE).await?;
    let prefixes: Vec<String> = (0..12).map(|i| format!("/drain/{i:02}/")).collect();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    cluster
        .create(owner, &changefeed_body("drain", &prefixes, 1))
        .await?;
    cluster.wait_replicating("drain", 12, SETTLE).await?;

    // Drain a capture that is not owner, through the third one (forwarded to the owner).
    let target = (owner + 1) % 3;
    let via = (owner + 2) % 3;
    let target_id = cluster.nodes[target].id().await?;
    let path = format!("/api/v2/captures/{target_id}/drain");
    let (status, answer) = cluster.call_node(via, Method::POST, &path, None).await?;
    assert_eq!(status, 202, "{answer}");
    let count = answer["current_table_count"]
        .as_u64()
        .context("current_table_count")?;
    assert!(count <= 4, "{answer}");
    // As TiCDC's clients do: ask again until nothing is left on it.
    wait_for(SETTLE, || async {
        let (status, answer) = cluster
            .call_node(via, Method::POST, &path, None)
            .await
            .ok()?;
        (status == 202 && answer["current_table_count"] == 0).then_some(())
    })
    .await
    .with_context(|| format!("the drain finishes{}", cluster.diagnostics()))?;
    let detail = cluster.wait_replicating("drain", 12, SETTLE).await?;
    assert!(spans_on(&detail, &target_id).is_empty(), "{detail}");
    let counts = spans_per_capture(&detail);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [6, 6],
        "{detail}"
    );
    let processors = cluster.api(Method::GET, "/api/v2/processors", None).await?;
    let on_target = processors["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|item| item["capture_id"] == target_id.as_str());
    assert!(!on_target, "{processors}");
    // The drained capture stopped every pipeline it ran (its log says stop for each start).
    let history = cluster.check_no_overlap()?;
    for intervals in history.intervals.values() {
        for interval in intervals {
            if interval.capture == target_id {
                assert_ne!(interval.stop, u64::MAX, "{interval} still runs");
            }
        }
    }
    assert!(history.moves() >= 4, "{history:?}");

    // The owner cannot be drained, nor an unknown capture.
    let path = format!("/api/v2/captures/{owner_id}/drain");
    let (status, answer) = cluster.call_node(via, Method::POST, &path, None).await?;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = cluster
        .call_node(via, Method::POST, "/api/v2/captures/no-such/drain", None)
        .await?;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error_code"].is_string(), "{answer}");
    Ok(())
}

// Captures and owners are killed with SIGKILL 50 times, every fifth time the owner, while
// two changefeeds keep moving: each kill starts a replacement, so spans are added, moved to
// the new captures and rebuilt by new owners throughout. (The kills whose leases expire on
// their own are the other tests'.) The span logs of every process,
// the killed ones closed at their death, show no span on two captures at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_span_runs_on_two_captures_over_fifty_kills() -> Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, "kills").await?;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let prefixes: Vec<String> = (0..12).map(|i| format!("/kills/{i:02}/")).collect();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    cluster
        .create(owner, &changefeed_body("kills-a", &prefixes[..8], 1))
        .await?;
    cluster
        .create(owner, &changefeed_body("kills-b", &prefixes[8..], 1))
        .await?;
    cluster.wait_replicating("kills-a", 8, SETTLE).await?;
    cluster.wait_replicating("kills-b", 4, SETTLE).await?;

    let mut owner_kills = 0;
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    for kill in 0..50 {
        let starts_before = cluster.history()?.starts();
        let victim = if kill % 5 == 4 {
            // An owner kill: wait (bounded) for the owner elected after the last one.
            let (index, _) = cluster
                .wait_owner(Duration::from_secs(TTL * 3))
                .await
                .with_context(|| format!("an owner before kill {kill}"))?;
            owner_kills += 1;
            index
        } else {
            // xorshift: a reproducible choice among the running nodes.
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            usize::try_from(rng_state % 3).unwrap()
        };
        // The victim's lease goes at once after its death instead of one TTL later, so that
        // its spans are placed elsewhere, and a new owner elected, as soon as the cluster
        // can: the fastest reassignment is the one most likely to overlap a dead capture.
        let lease = cluster.lease_of(victim).await;
        cluster.kill(victim)?;
        if let Some(lease) = lease {
            // Gone already if the capture had restarted meanwhile.
            let _ = cluster.client.lease_revoke(lease).await;
        }
        cluster.add_node();
        // Let the schedule move before the next kill: the replacement has registered and
        // some pipeline has started since this kill began (not required: a cluster without
        // an owner moves nothing).
        cluster.started_ids().await?;
        let _ = wait_for(Duration::from_secs(2), || async {
            let starts = cluster.history().ok()?.starts();
            (starts > starts_before).then_some(())
        })
        .await;
        cluster
            .check_no_overlap()
            .with_context(|| format!("after kill {kill}"))?;
    }
    assert_eq!(owner_kills, 10);

    // The cluster recovers: every span replicates on the running captures.
    let recover = Duration::from_secs(TTL + REMOVAL_DELAY) + SETTLE;
    cluster.wait_replicating("kills-a", 8, recover).await?;
    cluster.wait_replicating("kills-b", 4, recover).await?;
    // The kills did make the schedule work: spans moved about once per kill (about 2.5 per
    // kill on an idle machine).
    let history = cluster.check_no_overlap()?;
    eprintln!(
        "fifty kills in {:?}: {} pipeline starts, {} moves",
        started.elapsed(),
        history.starts(),
        history.moves()
    );
    assert!(
        history.moves() >= 50 && history.starts() >= 62,
        "moves {}, starts {}",
        history.moves(),
        history.starts()
    );
    Ok(())
}

/// Polls a changefeed's checkpoint through the API and in etcd.
struct CheckpointWatch {
    status_key: String,
    last_api: i64,
    last_stored: i64,
    checks: usize,
}

impl CheckpointWatch {
    /// One poll: the checkpoint never moves back, in the API or in etcd, and never passes the
    /// checkpoint of a span the answer places on a capture.
    async fn check(&mut self, cluster: &Cluster) -> Result<()> {
        if let Some(detail) = cluster.changefeed("cp").await {
            let checkpoint = detail["checkpoint_ts"].as_i64().context("checkpoint_ts")?;
            ensure!(
                checkpoint >= self.last_api,
                "the checkpoint moved back from {} to {checkpoint}: {detail}",
                self.last_api
            );
            self.last_api = checkpoint;
            for span in detail["spans"].as_array().into_iter().flatten() {
                if span["state"] == "absent" {
                    continue;
                }
                let span_checkpoint = span["checkpoint_ts"].as_i64().context("span checkpoint")?;
                ensure!(
                    checkpoint <= span_checkpoint,
                    "the checkpoint {checkpoint} passes span {span}: {detail}"
                );
            }
            self.checks += 1;
        }
        let stored = cluster
            .client
            .get(self.status_key.as_str(), GetOptions::default())
            .await?;
        if let Some(kv) = stored.kvs.first() {
            let status: Value = serde_json::from_slice(&kv.value)?;
            let checkpoint = status["checkpoint-ts"].as_i64().context("checkpoint-ts")?;
            ensure!(
                checkpoint >= self.last_stored,
                "the stored checkpoint moved back from {} to {checkpoint}",
                self.last_stored
            );
            self.last_stored = checkpoint;
        }
        // The poll interval.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_never_passes_a_span_nor_moves_back() -> Result<()> {
    let mut cluster = Cluster::start(3, "checkpoint").await?;
    let prefixes = ["/cp/a/", "/cp/b/"];
    cluster.write_keys(&prefixes, 20).await?;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    cluster
        .create(owner, &changefeed_body("cp", &prefixes, 3))
        .await?;
    cluster.wait_replicating("cp", 6, SETTLE).await?;

    // A writer keeps the upstream's revision moving, inside and outside the spans.
    let writer_client = cluster.etcd.client().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut i = 0_u64;
            while !stop.is_cancelled() {
                let key = match i % 3 {
                    0 => format!("/cp/a/w{i}"),
                    1 => format!("/cp/b/w{i}"),
                    _ => format!("/elsewhere/{i}"),
                };
                let _ = writer_client.put(key, "x", 0).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut watch = CheckpointWatch {
        status_key: "/tidb/cdc/checkpoint/default/changefeed/status/cp".to_owned(),
        last_api: 0,
        last_stored: 0,
        checks: 0,
    };

    // Polled while it runs, across an owner failover and a capture kill.
    let phase = Duration::from_secs(4);
    let started = Instant::now();
    while started.elapsed() < phase {
        watch.check(&cluster).await?;
    }
    let before_failover = watch.last_api;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    cluster.kill(owner)?;
    cluster.add_node();
    let failover = Instant::now();
    let recover = Duration::from_secs(TTL + REMOVAL_DELAY) + SETTLE;
    while failover.elapsed() < Duration::from_secs(TTL + 4) {
        watch.check(&cluster).await?;
    }
    cluster.wait_replicating("cp", 6, recover).await?;
    let victim = {
        let (owner, _) = cluster.wait_owner(SETTLE).await?;
        (owner + 1) % cluster.nodes.len()
    };
    cluster.kill(victim)?;
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(TTL + REMOVAL_DELAY + 2) {
        watch.check(&cluster).await?;
    }
    cluster.wait_replicating("cp", 6, recover).await?;
    // The checkpoint still advances after both.
    let target = watch.last_api + 1;
    wait_for(SETTLE, || async {
        let detail = cluster.changefeed("cp").await?;
        (detail["checkpoint_ts"].as_i64()? >= target).then_some(())
    })
    .await
    .context("the checkpoint advances")?;
    watch.check(&cluster).await?;
    stop.cancel();
    writer.await?;
    assert!(watch.checks >= 20, "{} checks", watch.checks);
    assert!(watch.last_stored > 0 && watch.last_api > before_failover);
    cluster.check_no_overlap()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_update_and_remove_survive_an_owner_failover() -> Result<()> {
    let mut cluster = Cluster::start(3, "admin").await?;
    let prefixes = ["/adm/0/", "/adm/1/", "/adm/2/", "/adm/3/"];
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let via = (owner + 1) % 3;
    cluster
        .create(via, &changefeed_body("adm", &prefixes, 1))
        .await?;
    cluster.wait_replicating("adm", 4, SETTLE).await?;
    // A duplicate is a conflict.
    let (status, answer) = cluster
        .call_node(
            via,
            Method::POST,
            "/api/v2/changefeeds",
            Some(&changefeed_body("adm", &prefixes, 1)),
        )
        .await?;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error_code"], "CDC:ErrChangeFeedAlreadyExists");

    // Pause: stopped, and every pipeline stops.
    let (status, answer) = cluster
        .call_node(via, Method::POST, "/api/v2/changefeeds/adm/pause", None)
        .await?;
    assert_eq!(status, 200, "{answer}");
    let stopped = |detail: &Value| {
        detail["state"] == "stopped"
            && detail["spans"]
                .as_array()
                .is_none_or(|spans| spans.iter().all(|span| span["state"] == "absent"))
    };
    wait_for(SETTLE, || async {
        let detail = cluster.changefeed("adm").await?;
        stopped(&detail).then_some(())
    })
    .await
    .context("paused")?;
    let all_stopped = |cluster: &Cluster| -> Result<()> {
        let history = cluster.history()?;
        for (span, intervals) in &history.intervals {
            for interval in intervals {
                ensure!(
                    interval.stop != u64::MAX,
                    "span {span:?} still runs: {interval}"
                );
            }
        }
        Ok(())
    };
    wait_for(SETTLE, || async { all_stopped(&cluster).ok() })
        .await
        .context("every pipeline stops")?;

    // The owner dies; the new one keeps it stopped.
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    cluster.kill(owner)?;
    cluster.add_node();
    let (owner, _) = cluster
        .wait_owner(Duration::from_secs(TTL * 2) + SETTLE)
        .await?;
    let starts = cluster.history()?.starts();
    hold_for(Duration::from_secs(2), || async {
        let detail = cluster.changefeed("adm").await.context("the detail")?;
        ensure!(stopped(&detail), "{detail}");
        ensure!(cluster.history()?.starts() == starts, "a pipeline started");
        Ok(())
    })
    .await?;

    // Update while stopped: sink, target and rules.
    let sink_dir = tempfile::tempdir()?;
    let sink_uri = format!("file://{}", sink_dir.path().display());
    let update = json!({
        "sink_uri": sink_uri,
        "target_ts": 1_000_000_000_i64,
        "replica_config": {"filter": {"rules": ["/adm/0/", "/adm/1/", "/adm/2/", "/adm/3/", "/adm/4/"]}},
    });
    let via = (owner + 1) % 3;
    let (status, answer) = cluster
        .call_node(via, Method::PUT, "/api/v2/changefeeds/adm", Some(&update))
        .await?;
    assert_eq!(status, 200, "{answer}");
    let detail = cluster.changefeed("adm").await.context("the detail")?;
    assert_eq!(detail["sink_uri"], sink_uri.as_str(), "{detail}");
    assert_eq!(detail["target_ts"], 1_000_000_000_i64, "{detail}");
    assert_eq!(
        detail["config"]["filter"]["rules"].as_array().map(Vec::len),
        Some(5),
        "{detail}"
    );

    // Resume: five spans replicate.
    let (status, answer) = cluster
        .call_node(via, Method::POST, "/api/v2/changefeeds/adm/resume", None)
        .await?;
    assert_eq!(status, 200, "{answer}");
    let detail = cluster.wait_replicating("adm", 5, SETTLE).await?;
    assert_eq!(detail["state"], "normal", "{detail}");
    // An update while it runs is refused.
    let (status, answer) = cluster
        .call_node(via, Method::PUT, "/api/v2/changefeeds/adm", Some(&update))
        .await?;
    assert_eq!(status, 400, "{answer}");

    // The owner dies again: the survivors' spans keep running (the new owner rebuilds the
    // schedule from heartbeats), the dead one's move, and it still runs.
    let (owner, owner_id) = cluster.wait_owner(SETTLE).await?;
    let survivors_before: BTreeMap<u64, String> = detail["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|span| span["capture_id"] != owner_id.as_str())
        .filter_map(|span| {
            Some((
                span["span_id"].as_u64()?,
                span["capture_id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let killed_at = mono_ns();
    cluster.kill(owner)?;
    cluster.add_node();
    cluster
        .wait_owner(Duration::from_secs(TTL * 2) + SETTLE)
        .await?;
    let detail = cluster
        .wait_replicating("adm", 5, Duration::from_secs(TTL + REMOVAL_DELAY) + SETTLE)
        .await?;
    assert_eq!(detail["state"], "normal", "{detail}");
    for (span_id, capture) in &survivors_before {
        let now_on: Vec<&Value> = detail["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|span| span["span_id"] == *span_id)
            .collect();
        assert_eq!(now_on.len(), 1, "{detail}");
        assert_eq!(now_on[0]["capture_id"], capture.as_str(), "{detail}");
    }
    let history = cluster.check_no_overlap()?;
    for (span, intervals) in &history.intervals {
        for interval in intervals {
            let survivor = survivors_before
                .iter()
                .any(|(id, capture)| *id == span.span_id && *capture == interval.capture);
            if survivor && interval.start <= killed_at {
                assert_eq!(
                    interval.stop,
                    u64::MAX,
                    "span {span:?} was restarted across the failover: {interval}"
                );
            }
        }
    }

    // Remove: gone from the API and from etcd, and every pipeline stops.
    let (status, answer) = cluster
        .call_node(0, Method::DELETE, "/api/v2/changefeeds/adm", None)
        .await?;
    assert_eq!(status, 200, "{answer}");
    wait_for(SETTLE, || async {
        let (status, answer) = cluster
            .call_node(0, Method::GET, "/api/v2/changefeeds/adm", None)
            .await
            .ok()?;
        (status == 404 && answer["error_code"] == "CDC:ErrChangeFeedNotExists").then_some(())
    })
    .await
    .context("removed")?;
    let info_key = "/tidb/cdc/admin/default/changefeed/info/adm";
    let status_key = "/tidb/cdc/admin/default/changefeed/status/adm";
    wait_for(SETTLE, || async {
        let info = cluster
            .client
            .get(info_key, GetOptions::default())
            .await
            .ok()?;
        let status = cluster
            .client
            .get(status_key, GetOptions::default())
            .await
            .ok()?;
        (info.kvs.is_empty() && status.kvs.is_empty()).then_some(())
    })
    .await
    .context("the keys are deleted")?;
    wait_for(SETTLE, || async { all_stopped(&cluster).ok() })
        .await
        .context("every pipeline stops")?;
    let list = cluster
        .api(Method::GET, "/api/v2/changefeeds", None)
        .await?;
    assert_eq!(list["total"], 0, "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_revision_fails_the_changefeed() -> Result<()> {
    let cluster = Cluster::start(3, "compacted").await?;
    let prefixes = ["/gc/"];
    let first = cluster.write_keys(&prefixes, 10).await?;
    let compacted = cluster.etcd.compact().await?;
    assert!(compacted >= first);

    // At creation: a start revision below the compaction is refused, naming the field.
    let mut body = changefeed_body("gc", &prefixes, 1);
    // Watched from start_ts + 1, which is below the compaction.
    body["start_ts"] = json!(first - 5);
    let (status, answer) = cluster
        .call_node(0, Method::POST, "/api/v2/changefeeds", Some(&body))
        .await?;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error_msg"].as_str().unwrap_or_default();
    assert!(message.contains("start_ts"), "{answer}");
    // And one ahead of the current revision.
    body["start_ts"] = json!(compacted + 1_000_000);
    let (status, answer) = cluster
        .call_node(0, Method::POST, "/api/v2/changefeeds", Some(&body))
        .await?;
    assert_eq!(status, 400, "{answer}");

    // Later: a paused changefeed whose checkpoint gets compacted fails when resumed (or its
    // resume is refused), with an error naming the compaction; it never skips the gap.
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    cluster
        .create(owner, &changefeed_body("gc", &prefixes, 1))
        .await?;
    cluster.wait_replicating("gc", 1, SETTLE).await?;
    cluster
        .api(Method::POST, "/api/v2/changefeeds/gc/pause", None)
        .await?;
    wait_for(SETTLE, || async {
        let detail = cluster.changefeed("gc").await?;
        (detail["state"] == "stopped").then_some(())
    })
    .await?;
    let detail = cluster.changefeed("gc").await.context("the detail")?;
    let checkpoint = detail["checkpoint_ts"].as_i64().context("checkpoint")?;
    cluster.write_keys(&prefixes, 10).await?;
    let compacted = cluster.etcd.compact().await?;
    assert!(compacted > checkpoint + 1);
    let (status, answer) = cluster
        .call_node(0, Method::POST, "/api/v2/changefeeds/gc/resume", None)
        .await?;
    if status == 400 {
        let message = answer["error_msg"].as_str().unwrap_or_default();
        assert!(message.contains("compact"), "{answer}");
        return Ok(());
    }
    assert_eq!(status, 200, "{answer}");
    // The state and the error are written together; the answer may show the state a tick
    // before the error.
    let detail = wait_for(SETTLE, || async {
        let detail = cluster.changefeed("gc").await?;
        (detail["state"] == "failed" && !detail["error"].is_null()).then_some(detail)
    })
    .await
    .with_context(|| format!("failed{}", cluster.diagnostics()))?;
    let message = detail["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("compact"), "{detail}");
    assert!(
        message.contains(&(checkpoint + 1).to_string())
            || message.contains(&checkpoint.to_string()),
        "the error names the revision: {detail}"
    );
    // A failed changefeed runs nothing.
    let history = cluster.check_no_overlap()?;
    let running: usize = history
        .intervals
        .values()
        .flatten()
        .filter(|interval| interval.stop == u64::MAX)
        .count();
    assert_eq!(running, 0, "{history:?}");
    Ok(())
}
