//! Multi-process tests: a real etcd and real `cdc-server` processes.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cdc_etcd::testing::{EtcdServer, etcdctl_binary};
use cdc_etcd::{EtcdClient, GetOptions};
use serde_json::Value;

use crate::support::{hold_for, server_binary, wait_for};

pub(crate) const TTL: u64 = 5;
/// A session TTL long enough that, within the generous waits of a loaded machine, a lease that
/// ends cannot have expired on its own, and a vanished capture stays in the reactor states for
/// its removal delay (`max(ttl / 2, 5)` s = 15 s).
const LONG_TTL: u64 = 30;

pub(crate) use crate::support::node::{ServerNode as Node, owners};

/// Starts one capture process with session TTL `ttl`.
fn start_node(etcd: &str, cluster_id: &str, ttl: u64) -> Node {
    Node::start(etcd, cluster_id, &format!("capture-session-ttl = {ttl}\n"))
}

pub(crate) async fn start_cluster(n_nodes: usize, cluster_id: &str) -> (EtcdServer, Vec<Node>) {
    start_cluster_with_ttl(n_nodes, cluster_id, TTL).await
}

async fn start_cluster_with_ttl(
    n_nodes: usize,
    cluster_id: &str,
    ttl: u64,
) -> (EtcdServer, Vec<Node>) {
    let etcd = EtcdServer::start().await.unwrap();
    let nodes: Vec<Node> = (0..n_nodes)
        .map(|_| start_node(&etcd.endpoint(), cluster_id, ttl))
        .collect();
    (etcd, nodes)
}

pub(crate) async fn one_owner(nodes: &mut [Node], within: Duration) -> Result<(usize, String)> {
    let deadline = Instant::now() + within;
    loop {
        let found = owners(&*nodes).await;
        if found.len() == 1 {
            return Ok(found.into_iter().next().expect("one owner"));
        }
        if Instant::now() >= deadline {
            bail!("owners after {within:?}: {found:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node's capture ID, in node order, once each node has one (a node reports an empty
/// ID until its first incarnation has started).
pub(crate) async fn started_ids(nodes: &[Node], within: Duration) -> Result<Vec<String>> {
    wait_for(within, || async {
        let mut ids = Vec::new();
        for node in nodes {
            ids.push(node.id().await.ok().filter(|id| !id.is_empty())?);
        }
        Some(ids)
    })
    .await
    .context("every capture has started")
}

pub(crate) async fn capture_keys(client: &EtcdClient, cluster_id: &str) -> Vec<(String, Vec<u8>)> {
    client
        .get(
            format!("/tidb/cdc/{cluster_id}/__cdc_meta__/capture/"),
            GetOptions::prefix(),
        )
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key_lossy(), kv.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_captures_register_and_sigterm_hands_ownership_over() -> Result<()> {
    let (etcd, mut nodes) = start_cluster(3, "default").await;
    let client = etcd.client().await?;
    let (owner_index, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;

    // The captures list, served by the owner and forwarded by the others.
    let captures = wait_for(Duration::from_secs(10), || async {
        let list = nodes[(owner_index + 1) % 3]
            .get("/api/v2/captures")
            .await
            .ok()?;
        (list["total"] == 3).then_some(list)
    })
    .await?;
    let items = captures["items"].as_array().context("items")?;
    assert_eq!(items.len(), 3);
    for item in items {
        let keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["id", "is_owner", "address", "cluster_id"]);
        assert_eq!(
            item["is_owner"],
            Value::Bool(item["id"] == owner_id.as_str())
        );
        assert_eq!(item["cluster_id"], "default");
    }

    // TiCDC's exact capture-key JSON.
    let keys = capture_keys(&client, "default").await;
    assert_eq!(keys.len(), 3);
    for (key, value) in &keys {
        let text = String::from_utf8(value.clone())?;
        let json: serde_json::Map<String, Value> = serde_json::from_str(&text)?;
        let fields: Vec<&str> = json.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "id",
                "address",
                "version",
                "git-hash",
                "deploy-path",
                "start-timestamp"
            ]
        );
        assert!(key.ends_with(json["id"].as_str().unwrap()));
        assert!(json["start-timestamp"].as_i64().unwrap() > 0);
    }

    // SIGTERM on the owner: it resigns (its log says so; a new owner could also follow an
    // expiry, so the log is the proof, not the time), another capture is owner, and the process
    // exits 0. The waits are generous for a loaded machine.
    nodes[owner_index].signal("TERM");
    let (new_index, _) = wait_for(Duration::from_secs(20), || async {
        let found = owners(&nodes).await;
        found.into_iter().find(|(index, _)| *index != owner_index)
    })
    .await?;
    assert_ne!(new_index, owner_index);
    let status = nodes[owner_index]
        .wait_exit(Duration::from_secs(30))
        .await?;
    assert!(status.success(), "{status:?}");
    let log = nodes[owner_index].log_text();
    assert!(log.contains("resigned the ownership"), "{log}");
    wait_for(Duration::from_secs(5), || async {
        (capture_keys(&client, "default").await.len() == 2).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_owner_gives_a_new_owner_within_ttl() -> Result<()> {
    let (_etcd, mut nodes) = start_cluster(3, "kill9").await;
    let (owner_index, _) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
    nodes[owner_index].kill()?;
    let (new_index, _) = one_owner(&mut nodes, Duration::from_secs(TTL + 2)).await?;
    assert_ne!(new_index, owner_index);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_comes_back_as_a_new_capture() -> Result<()> {
    let (etcd, mut nodes) = start_cluster(2, "revoke").await;
    let client = etcd.client().await?;
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    let old_id = nodes[0].status().await?["id"].as_str().unwrap().to_owned();
    let key = format!("/tidb/cdc/revoke/__cdc_meta__/capture/{old_id}");
    let lease = client.get(key, GetOptions::default()).await?.kvs[0].lease;
    let output = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "lease",
            "revoke",
            &format!("{lease:x}"),
        ])
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let new_id = wait_for(Duration::from_secs(25), || async {
        let id = nodes[0].status().await.ok()?["id"].as_str()?.to_owned();
        (!id.is_empty() && id != old_id).then_some(id)
    })
    .await?;
    assert!(nodes[0].is_running());
    wait_for(Duration::from_secs(10), || async {
        let keys = capture_keys(&client, "revoke").await;
        keys.iter()
            .any(|(key, _)| key.ends_with(&new_id))
            .then_some(())
    })
    .await?;
    one_owner(&mut nodes, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_owner_key_gives_one_owner_again() -> Result<()> {
    let (etcd, mut nodes) = start_cluster(3, "delowner").await;
    let client = etcd.client().await?;
    let (_, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
    let owner_keys = client
        .get(
            "/tidb/cdc/delowner/__cdc_meta__/owner/",
            GetOptions::prefix(),
        )
        .await?;
    let owner_key = owner_keys
        .kvs
        .iter()
        .find(|kv| kv.value == owner_id.as_bytes())
        .context("the owner's key")?
        .key
        .clone();
    client.delete(owner_key, false).await?;
    // No lease expires here: whatever the load, one owner comes back, so the wait is generous.
    let (_, new_owner) = wait_for(Duration::from_secs(20), || async {
        let found = owners(&nodes).await;
        (found.len() == 1 && found[0].1 != owner_id).then(|| found[0].clone())
    })
    .await?;
    assert_ne!(new_owner, owner_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_json_crashes_nothing() -> Result<()> {
    let (etcd, mut nodes) = start_cluster(2, "garbage").await;
    let client = etcd.client().await?;
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    let bad_capture = "/tidb/cdc/garbage/__cdc_meta__/capture/bogus";
    let bad_changefeed = "/tidb/cdc/garbage/default/changefeed/info/cf";
    client.put(bad_capture, "{not json", 0).await?;
    client.put(bad_changefeed, "]]garbage", 0).await?;
    // A sentinel written after the garbage: a third capture registers, and the owner's list
    // shows it only once its worker has gone past the garbage's revisions.
    nodes.push(start_node(&etcd.endpoint(), "garbage", TTL));
    let third = wait_for(Duration::from_secs(15), || async {
        let id = nodes[2].id().await.ok()?;
        (!id.is_empty()).then_some(id)
    })
    .await?;
    let list = wait_for(Duration::from_secs(10), || async {
        let list = nodes[0].get("/api/v2/captures").await.ok()?;
        let listed = list["items"]
            .as_array()?
            .iter()
            .any(|item| item["id"] == third.as_str());
        listed.then_some(list)
    })
    .await?;
    assert_eq!(list["total"], 3, "{list}");
    assert!(nodes.iter_mut().all(Node::is_running));
    one_owner(&mut nodes, Duration::from_secs(5)).await?;
    // Every capture that saw the garbage logged both keys (the first two live, the third in
    // its initial snapshot).
    for node in &nodes {
        wait_for(Duration::from_secs(5), || async {
            let log = node.log_text();
            (log.contains(bad_capture) && log.contains(bad_changefeed)).then_some(())
        })
        .await
        .with_context(|| format!("the log names the bad keys: {}", node.log_text()))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_etcd_brings_every_capture_back_with_one_owner() -> Result<()> {
    let (mut etcd, mut nodes) = start_cluster(3, "etcdrestart").await;
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    etcd.restart().await?;
    let restarted = Instant::now();
    let client = etcd.client().await?;
    let within = Duration::from_secs(TTL + 10);
    // Every capture registered (under its current ID), and exactly one owner.
    wait_for(within, || async {
        let keys = capture_keys(&client, "etcdrestart").await;
        let mut ids = Vec::new();
        for node in &nodes {
            ids.push(node.status().await.ok()?["id"].as_str()?.to_owned());
        }
        let registered = keys.len() == 3
            && ids
                .iter()
                .all(|id| keys.iter().any(|(key, _)| key.ends_with(id.as_str())));
        (registered && owners(&nodes).await.len() == 1).then_some(())
    })
    .await?;
    assert!(restarted.elapsed() <= within);
    assert!(nodes.iter_mut().all(Node::is_running));
    Ok(())
}

/// Runs etcdctl against `etcd` and checks it succeeded.
fn etcdctl(etcd: &EtcdServer, args: &[&str]) -> Result<String> {
    let output = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint()])
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!("etcdctl {args:?}: {output:?}");
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_capture_key_restarts_the_capture_at_once() -> Result<()> {
    // A long TTL: its removal delay (15 s) is what a capture would wait for if only its reactor
    // state noticed the deletion, and its lease cannot expire during the test.
    let (etcd, mut nodes) = start_cluster_with_ttl(2, "delcapture", LONG_TTL).await;
    let client = etcd.client().await?;
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    // Both captures have registered: each has an ID and its key (an owner can be elected
    // before the other capture's first incarnation has written its key).
    let (old_id, lease) = wait_for(Duration::from_secs(10), || async {
        let id = nodes[1].id().await.ok().filter(|id| !id.is_empty())?;
        let key = format!("/tidb/cdc/delcapture/__cdc_meta__/capture/{id}");
        let found = client.get(key.as_str(), GetOptions::default()).await.ok()?;
        Some((id, found.kvs.first()?.lease))
    })
    .await?;
    let other_id = nodes[0].id().await?;
    let key = format!("/tidb/cdc/delcapture/__cdc_meta__/capture/{old_id}");
    // Only the key goes; its lease stays alive.
    let deleted = etcdctl(&etcd, &["del", &key])?;
    assert_eq!(deleted.trim(), "1");
    let started = Instant::now();
    let new_id = wait_for(Duration::from_secs(10), || async {
        let id = nodes[1].id().await.ok()?;
        (!id.is_empty() && id != old_id).then_some(id)
    })
    .await
    .context("a new capture well before the removal delay (15 s)")?;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(nodes[1].is_running());
    wait_for(Duration::from_secs(10), || async {
        let keys = capture_keys(&client, "delcapture").await;
        let ids: Vec<&str> = keys
            .iter()
            .filter_map(|(key, _)| key.rsplit('/').next())
            .collect();
        (ids.len() == 2 && ids.contains(&new_id.as_str()) && ids.contains(&other_id.as_str()))
            .then_some(())
    })
    .await?;
    // The old incarnation closed its session on exit: the old lease is revoked.
    let ttl = client.lease_time_to_live(lease).await?;
    assert_eq!(ttl.ttl, -1, "the old lease is gone");
    assert!(nodes[1].log_text().contains("ErrLeaseExpired"));
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    Ok(())
}

/// Every capture key of `cluster_id` is one of `nodes`' current capture IDs, and there are as
/// many as nodes.
async fn all_registered(client: &EtcdClient, cluster_id: &str, nodes: &[Node]) -> Option<()> {
    let keys = capture_keys(client, cluster_id).await;
    let mut ids = Vec::new();
    for node in nodes {
        ids.push(node.id().await.ok().filter(|id| !id.is_empty())?);
    }
    let registered = keys.len() == ids.len()
        && ids
            .iter()
            .all(|id| keys.iter().any(|(key, _)| key.ends_with(id.as_str())));
    registered.then_some(())
}

/// Whether the incarnation of `log` that registered with `lease` closed its session (revoking
/// the lease) before it ended: the close is logged before "capture recovered", which the
/// restart loop logs once the incarnation has returned and before the next one (and its
/// reset, held back by the restart limiter) begins. `None` until both lines are logged.
fn revoked_before_restarting(log: &str, lease: i64) -> Option<bool> {
    let lease = format!("lease_id={lease:x}");
    let lines: Vec<&str> = log.lines().collect();
    let registered = lines
        .iter()
        .position(|line| line.contains("capture registered") && line.contains(&lease))?;
    let after = &lines[registered..];
    let recovered = after
        .iter()
        .position(|line| line.contains("capture recovered"))?;
    let closed = after.iter().position(|line| {
        (line.contains("session closed") || line.contains("session lease revoked"))
            && line.contains(&lease)
    })?;
    Some(closed < recovered)
}

// An owner that commits suicide (its capture key deleted) revokes its lease while cleaning up,
// not in its next incarnation's reset, which the restart limiter (burst 2, then one per 20 s)
// may hold back: its log shows the close before the restart, the lease is gone well within its
// long TTL (so it did not expire), and another capture is owner. One node commits suicide
// twice, the second time with its restart held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suicided_owner_revokes_its_lease_before_restarting() -> Result<()> {
    let cluster = "ownersuicide";
    let (etcd, mut nodes) = start_cluster_with_ttl(2, cluster, LONG_TTL).await;
    let client = etcd.client().await?;
    let mut suicides = [0_u32; 2];
    // Two nodes take turns as owner: the third suicide is the first node's second one.
    for _ in 0..3 {
        wait_for(Duration::from_secs(30), || {
            all_registered(&client, cluster, &nodes)
        })
        .await
        .context("both captures registered")?;
        let (index, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
        let key = format!("/tidb/cdc/{cluster}/__cdc_meta__/capture/{owner_id}");
        let lease = client.get(key.as_str(), GetOptions::default()).await?.kvs[0].lease;
        let deleted = etcdctl(&etcd, &["del", &key])?;
        assert_eq!(deleted.trim(), "1");
        suicides[index] += 1;
        let other = 1 - index;
        // Half the TTL: generous for a loaded machine, and no expiry can pass for a revoke.
        wait_for(Duration::from_secs(LONG_TTL / 2), || async {
            let revoked = client.lease_time_to_live(lease).await.ok()?.ttl == -1;
            let owners = owners(&nodes).await;
            (revoked && owners.len() == 1 && owners[0].0 == other).then_some(())
        })
        .await
        .with_context(|| format!("suicide {suicides:?}: lease revoked and a new owner"))?;
        let revoked_first = wait_for(Duration::from_secs(10), || async {
            revoked_before_restarting(&nodes[index].log_text(), lease)
        })
        .await
        .with_context(|| format!("the log of node {index}: {}", nodes[index].log_text()))?;
        assert!(
            revoked_first,
            "suicide {suicides:?}: the lease is revoked before the restart: {}",
            nodes[index].log_text()
        );
        assert!(nodes[index].is_running());
        if suicides[index] == 2 {
            return Ok(());
        }
    }
    bail!("one node should have committed suicide twice: {suicides:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_sent_to_a_non_owner_is_forwarded() -> Result<()> {
    let (_etcd, mut nodes) = start_cluster(3, "resign").await;
    let (owner_index, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
    let answer = nodes[(owner_index + 1) % 3]
        .post("/api/v2/owner/resign")
        .await?;
    assert_eq!(answer, serde_json::json!({}));
    let (new_index, _) = wait_for(Duration::from_secs(5), || async {
        let found = owners(&nodes).await;
        (found.len() == 1 && found[0].1 != owner_id).then(|| found[0].clone())
    })
    .await?;
    assert_ne!(new_index, owner_index);
    // The old owner stays up as a plain capture.
    assert!(nodes.iter_mut().all(Node::is_running));
    assert_eq!(nodes[owner_index].id().await?, owner_id);
    Ok(())
}

// TiCDC's drain: every capture forwards it to the owner, which moves the target's spans away
// and answers how many are still on it; the owner itself cannot be drained, and the request
// changes nobody's liveness (a SIGTERM drains a capture for good, see `a_second_sigterm...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_goes_to_the_owner_which_refuses_to_drain_itself() -> Result<()> {
    let (_etcd, mut nodes) = start_cluster(3, "drain").await;
    let (owner_index, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
    let ids = started_ids(&nodes, Duration::from_secs(10)).await?;
    let other = (owner_index + 1) % 3;
    let third = (owner_index + 2) % 3;
    let err = nodes[other]
        .post(&format!("/api/v2/captures/{owner_id}/drain"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // A capture that is not owner, through the third one: nothing runs on it, so 0 at once.
    let answer = nodes[third]
        .post(&format!("/api/v2/captures/{}/drain", ids[other]))
        .await?;
    assert_eq!(answer, serde_json::json!({"current_table_count": 0}));
    for node in &nodes {
        let status = node.status().await?;
        assert_eq!(status["liveness"], 0, "{status}");
    }
    let (after, _) = one_owner(&mut nodes, Duration::from_secs(5)).await?;
    assert_eq!(after, owner_index);
    assert!(nodes.iter_mut().all(Node::is_running));
    // An unknown capture is a bad request.
    let err = nodes[0]
        .post("/api/v2/captures/no-such-capture/drain")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ErrCaptureNotExist"), "{err}");
    assert!(err.to_string().contains("400"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_debug_and_metrics_endpoints() -> Result<()> {
    let (_etcd, mut nodes) = start_cluster(2, "endpoints").await;
    let (owner_index, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
    // Both captures have started, so their `/status` no longer changes.
    started_ids(&nodes, Duration::from_secs(10)).await?;
    let other = (owner_index + 1) % 2;

    for (index, node) in nodes.iter().enumerate() {
        let status = node.status().await?;
        let fields: Vec<&str> = status
            .as_object()
            .context("an object")?
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "version",
                "git_hash",
                "id",
                "pid",
                "is_owner",
                "liveness",
                "cluster_id",
                "build_ts"
            ]
        );
        assert!(status["version"].as_str().unwrap().starts_with('v'));
        assert!(status["git_hash"].is_string());
        assert_eq!(status["pid"], node.pid());
        assert_eq!(status["is_owner"], index == owner_index);
        assert_eq!(status["liveness"], 0);
        assert_eq!(status["cluster_id"], "endpoints");
        assert_eq!(node.get("/api/v2/status").await?, status);
        // Health: served by the owner, forwarded by the other capture.
        assert_eq!(node.get("/api/v2/health").await?, serde_json::json!({}));
    }

    // Debug info names this capture, its liveness and its processor manager.
    for node in &nodes {
        let id = node.id().await?;
        let info = node.get_text("/debug/info").await?;
        assert!(info.contains(&id), "{info}");
        assert!(info.contains("liveness: Alive"), "{info}");
        assert!(info.contains("processor manager"), "{info}");
    }
    let info = nodes[owner_index].get_text("/debug/info").await?;
    assert!(info.contains("owner: true"), "{info}");
    assert!(info.contains(&owner_id));

    // Metrics: every family, on the owner (which runs all three workers).
    let families = [
        "ticdc_owner_captures",
        "ticdc_capture_owner_changes_total",
        "ticdc_etcd_worker_ticks_total",
        "ticdc_etcd_worker_commits_total",
        "ticdc_etcd_worker_commit_conflicts_total",
        "ticdc_etcd_worker_commit_errors_total",
        "ticdc_etcd_worker_resyncs_total",
        "ticdc_etcd_worker_commit_duration_seconds",
        "ticdc_p2p_incarnation_messages",
        "ticdc_p2p_client_errors_total",
        "ticdc_capture_restarts_total",
        "ticdc_capture_resign_failures_total",
        "ticdc_server_tls_reload_total",
    ];
    let roles = ["owner", "controller", "processor"];
    let metrics = wait_for(Duration::from_secs(10), || async {
        let text = nodes[owner_index].get_text("/metrics").await.ok()?;
        let complete = families
            .iter()
            .all(|family| text.contains(&format!("# TYPE {family} ")))
            && text.contains("# TYPE ticdc_etcd_worker_commit_duration_seconds histogram")
            && roles.iter().all(|role| {
                // Every role has ticked (the processor after the meta-version gate), and has
                // a commit latency histogram.
                let ticks = format!("ticdc_etcd_worker_ticks_total{{role=\"{role}\"}} ");
                let ticked = text
                    .lines()
                    .find_map(|line| line.strip_prefix(ticks.as_str()))
                    .and_then(|value| value.parse::<f64>().ok())
                    .is_some_and(|value| value > 0.0);
                let histogram = format!(
                    "ticdc_etcd_worker_commit_duration_seconds_bucket{{role=\"{role}\",le=\"+Inf\"}}"
                );
                ticked && text.contains(&histogram)
            })
            && text.contains("ticdc_owner_captures 2");
        complete.then_some(text)
    })
    .await
    .with_context(|| "every metric family is exported, with a series per worker role")?;
    assert!(
        metrics.contains("ticdc_capture_owner_changes_total 1"),
        "{metrics}"
    );
    let metrics = nodes[other].get_text("/metrics").await?;
    assert!(
        metrics.contains("ticdc_capture_restarts_total 0"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() -> Result<()> {
    let (mut etcd, mut nodes) = start_cluster(1, "twosignals").await;
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    // With etcd frozen, the graceful stop waits on the resign and the cleanup for seconds.
    etcd.pause()?;
    nodes[0].signal("TERM");
    nodes[0].wait_log("received SIGTERM, stopping").await?;
    assert!(nodes[0].is_running(), "the first SIGTERM stops gracefully");
    nodes[0].signal("TERM");
    // With etcd frozen, the graceful stop takes the drain's 5 s and then the cleanup's 10 s
    // deletion deadline: an exit within 5 s of the second signal is the immediate one, with
    // room for load.
    let status = nodes[0].wait_exit(Duration::from_secs(5)).await;
    etcd.resume()?;
    let status = status?;
    assert!(!status.success(), "{status:?}");
    assert!(nodes[0].log_text().contains("second signal"));
    Ok(())
}

// The server stays served while a SIGTERM drains it: with etcd frozen the owner's resign (and
// so the drain) takes seconds, and `/status` answers throughout, reporting Stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_during_a_drain() -> Result<()> {
    let (mut etcd, mut nodes) = start_cluster(1, "drainserves").await;
    one_owner(&mut nodes, Duration::from_secs(20)).await?;
    etcd.pause()?;
    nodes[0].signal("TERM");
    let during = async {
        nodes[0].wait_log("received SIGTERM, stopping").await?;
        hold_for(Duration::from_secs(2), || async {
            let status = nodes[0].status().await?;
            ensure!(status["liveness"] == 1, "status during the drain: {status}");
            Ok(())
        })
        .await
    }
    .await;
    etcd.resume()?;
    during?;
    let status = nodes[0].wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// Runs cdc-server on a configuration file and returns (exit code, stderr).
fn run_with_config(content: &str) -> Result<(Option<i32>, String, PathBuf, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cdc.toml");
    std::fs::write(&path, content)?;
    let output = Command::new(server_binary())
        .args(["--pd", "http://127.0.0.1:1", "--addr"])
        .arg(format!("127.0.0.1:{}", crate::support::node::free_port()))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        path,
        dir,
    ))
}

#[test]
fn bad_configuration_exits_with_status_2() -> Result<()> {
    for (content, key) in [
        ("capture-sesion-ttl = 5\n", "capture-sesion-ttl"),
        ("gc-ttl = \"soon\"\n", "gc-ttl"),
        // A Go duration needs its unit (an integer is nanoseconds, as in TiCDC's files).
        (
            "[debug.messages]\nserver-ack-interval = \"3\"\n",
            "server-ack-interval",
        ),
    ] {
        let (code, stderr, path, _dir) = run_with_config(content)?;
        assert_eq!(code, Some(2), "{content}: {stderr}");
        assert!(stderr.contains(key), "{content}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{content}: {stderr}"
        );
    }
    Ok(())
}
