//! What a TiCDC operator's tools call, against real `cdc-server` processes: the v1 endpoints as
//! TiUP calls them (`pkg/cluster/api/cdcapi.go` in pingcap/tiup), the forward hop limit, the
//! `/api/v2` not-ready answer, the version fields, and the metrics that `metrics/` (the Grafana
//! dashboard and the alert rules) reads.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cdc_etcd::testing::EtcdServer;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cluster::{Node, TTL, one_owner, owners, started_ids};
use crate::support::wait_for;

/// One request with optional headers and body: (status, body text).
async fn request(
    address: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut request = crate::support::http_client()
        .request(method, format!("http://{address}{path}"))
        .timeout(Duration::from_secs(15));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn start_nodes(etcd: &EtcdServer, cluster_id: &str, n: usize) -> Vec<Node> {
    (0..n)
        .map(|_| {
            Node::start(
                &etcd.endpoint(),
                cluster_id,
                &format!("capture-session-ttl = {TTL}\n"),
            )
        })
        .collect()
}

/// The version fields: the crate version, the embedded git hash (or TiCDC's `None` for a build
/// without git) and the UTC build time.
fn check_version_fields(status: &Value) {
    let version = status["version"].as_str().unwrap();
    assert_eq!(version, concat!("v", env!("CARGO_PKG_VERSION")), "{status}");
    let hash = status["git_hash"].as_str().unwrap();
    assert!(
        hash == "None" || (hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit())),
        "{status}"
    );
    // This test is built from a git checkout, and so is the binary beside it.
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.git")).exists() {
        assert_ne!(
            hash, "None",
            "a build from a checkout embeds its hash: {status}"
        );
    }
    let build_ts = status["build_ts"].as_str().unwrap();
    let digits: String = build_ts.chars().filter(char::is_ascii_digit).collect();
    assert_eq!((build_ts.len(), digits.len()), (19, 14), "{status}");
}

// TiUP's rolling restart: status, the capture list, drain and resign over the v1 API, with
// TiCDC's answers, whichever capture it asks; and the forward hop limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_endpoints_answer_as_tiup_expects() -> Result<()> {
    let etcd = EtcdServer::start().await.unwrap();
    let mut nodes = start_nodes(&etcd, "v1api", 3);
    let (owner_index, owner_id) = one_owner(&mut nodes, Duration::from_secs(30)).await?;
    let ids = started_ids(&nodes, Duration::from_secs(10)).await?;
    let other = (owner_index + 1) % 3;
    let third = (owner_index + 2) % 3;

    // Status: TiCDC's fields, the version fields, the same as `/status`.
    for (index, node) in nodes.iter().enumerate() {
        let (code, text) = request(&node.address, Method::GET, "/api/v1/status", &[], None).await?;
        assert_eq!(code, 200, "{text}");
        let status = json_of(&text);
        assert_eq!(status["id"], ids[index].as_str());
        assert_eq!(status["is_owner"], index == owner_index);
        assert_eq!(status["liveness"], 0);
        assert_eq!(status["pid"], node.pid());
        assert_eq!(status["cluster_id"], "v1api");
        check_version_fields(&status);
        assert_eq!(node.get("/status").await?["git_hash"], status["git_hash"]);
        assert_eq!(
            node.get("/api/v2/status").await?["build_ts"],
            status["build_ts"]
        );
    }

    // The captures, as a bare array, from the owner and forwarded by the others; once every
    // capture is known to the owner.
    let listed = wait_for(Duration::from_secs(20), || async {
        let (code, text) = request(
            &nodes[other].address,
            Method::GET,
            "/api/v1/captures",
            &[],
            None,
        )
        .await
        .ok()?;
        let list = json_of(&text);
        (code == 200 && list.as_array().is_some_and(|items| items.len() == 3)).then_some(list)
    })
    .await
    .context("the owner lists the three captures")?;
    let items = listed.as_array().unwrap();
    let listed_ids: BTreeSet<&str> = items
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, ids.iter().map(String::as_str).collect());
    for item in items {
        let index = ids.iter().position(|id| item["id"] == id.as_str()).unwrap();
        assert_eq!(item["is_owner"], index == owner_index, "{item}");
        assert_eq!(item["address"], nodes[index].address.as_str(), "{item}");
    }

    // Health: 200 with an owner, from any capture.
    for node in &nodes {
        let (code, text) = request(&node.address, Method::GET, "/api/v1/health", &[], None).await?;
        assert_eq!(code, 200, "{text}");
    }

    // Drain: a capture that runs nothing has 0 tables left at once; the owner and unknown
    // captures are refused as TiCDC refuses them (which TiUP reads as "hard restart").
    let drain = |capture_id: &str| format!("{{\"capture_id\":\"{capture_id}\"}}");
    let (code, text) = request(
        &nodes[third].address,
        Method::PUT,
        "/api/v1/captures/drain",
        &[],
        Some(&drain(&ids[other])),
    )
    .await?;
    assert_eq!(
        (code, json_of(&text)),
        (202, json!({"current_table_count": 0})),
        "{text}"
    );
    let (code, text) = request(
        &nodes[other].address,
        Method::PUT,
        "/api/v1/captures/drain",
        &[],
        Some(&drain(&owner_id)),
    )
    .await?;
    assert_eq!(code, 400, "{text}");
    let (code, text) = request(
        &nodes[owner_index].address,
        Method::PUT,
        "/api/v1/captures/drain",
        &[],
        Some(&drain("no-such-capture")),
    )
    .await?;
    assert_eq!(code, 400, "{text}");
    assert_eq!(
        json_of(&text)["error_code"],
        "CDC:ErrCaptureNotExist",
        "{text}"
    );
    let (code, text) = request(
        &nodes[owner_index].address,
        Method::PUT,
        "/api/v1/captures/drain",
        &[],
        Some("{\"id\": 1}"),
    )
    .await?;
    assert_eq!(code, 400, "{text}");
    assert_eq!(
        json_of(&text)["error_code"],
        "CDC:ErrAPIInvalidParam",
        "{text}"
    );

    // The forward hop limit: a request that already took two hops is answered, not forwarded;
    // one that took one is forwarded once more; a count that is no number is refused.
    let v2_captures = "/api/v2/captures";
    for (times, expected) in [("2", 500), ("x", 500), ("1", 200)] {
        let (code, text) = request(
            &nodes[other].address,
            Method::GET,
            v2_captures,
            &[
                ("TiCDC-ForwardTimes", times),
                ("TiCDC-ForwardFromCapture", "elsewhere"),
            ],
            None,
        )
        .await?;
        assert_eq!(code, expected, "ForwardTimes {times}: {text}");
        if expected == 500 {
            let error = json_of(&text);
            assert_eq!(error["error_code"], "ErrRequestForwardErr", "{text}");
            assert!(
                error["error_msg"]
                    .as_str()
                    .unwrap()
                    .contains("request forward error"),
                "{text}"
            );
        }
    }
    // The owner serves a request whatever its count: it forwards nothing.
    let (code, text) = request(
        &nodes[owner_index].address,
        Method::GET,
        v2_captures,
        &[("TiCDC-ForwardTimes", "2")],
        None,
    )
    .await?;
    assert_eq!(code, 200, "{text}");

    // TiCDC's oldest resign is the owner's alone: another capture answers 500 ErrNotOwner.
    let (code, text) = request(
        &nodes[other].address,
        Method::POST,
        "/capture/owner/resign",
        &[],
        None,
    )
    .await?;
    assert_eq!(code, 500, "{text}");
    assert_eq!(json_of(&text)["error_code"], "CDC:ErrNotOwner", "{text}");

    // The v1 resign, sent to a capture that is not owner: 202, and another capture takes over.
    let (code, text) = request(
        &nodes[other].address,
        Method::POST,
        "/api/v1/owner/resign",
        &[],
        None,
    )
    .await?;
    assert_eq!(code, 202, "{text}");
    let (new_index, new_id) = wait_for(Duration::from_secs(20), || async {
        let found = owners(&nodes).await;
        (found.len() == 1 && found[0].1 != owner_id).then(|| found[0].clone())
    })
    .await
    .context("a new owner after the v1 resign")?;
    // And the oldest resign, on the new owner.
    let (code, text) = request(
        &nodes[new_index].address,
        Method::POST,
        "/capture/owner/resign",
        &[],
        None,
    )
    .await?;
    assert_eq!(
        (code, json_of(&text)),
        (200, json!({"status": true, "message": ""})),
        "{text}"
    );
    wait_for(Duration::from_secs(20), || async {
        let found = owners(&nodes).await;
        (found.len() == 1 && found[0].1 != new_id).then_some(())
    })
    .await
    .context("a new owner after the resign on /capture/owner/resign")?;
    assert!(nodes.iter_mut().all(Node::is_running));
    Ok(())
}

// Until a capture has passed the meta-version gate, every `/api/v2` route answers TiCDC's 503
// `CDC:ErrServerIsNotReady`; the other routes answer. Here the gate stays closed while another
// (never migrating) owner holds the owner key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_routes_answer_503_until_the_capture_is_ready() -> Result<()> {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let cluster_id = "notready";
    let blocking_owner = format!("/tidb/cdc/{cluster_id}/__cdc_meta__/owner/22b0000000000001");
    client
        .put(blocking_owner.as_str(), "a-capture-that-never-migrates", 0)
        .await?;
    let node = &start_nodes(&etcd, cluster_id, 1)[0];
    wait_for(Duration::from_secs(20), || async {
        node.id().await.ok().filter(|id| !id.is_empty())
    })
    .await
    .context("the capture has started")?;
    for path in [
        "/api/v2/status",
        "/api/v2/health",
        "/api/v2/captures",
        "/api/v2/changefeeds",
        "/api/v2/processors",
    ] {
        let (code, text) = request(&node.address, Method::GET, path, &[], None).await?;
        assert_eq!(code, 503, "{path}: {text}");
        assert_eq!(
            json_of(&text),
            json!({
                "error_msg": "[CDC:ErrServerIsNotReady]cdc server is not ready",
                "error_code": "CDC:ErrServerIsNotReady",
            }),
            "{path}"
        );
    }
    let (code, text) = request(
        &node.address,
        Method::POST,
        "/api/v2/owner/resign",
        &[],
        None,
    )
    .await?;
    assert_eq!(code, 503, "{text}");
    for path in ["/status", "/api/v1/status", "/metrics"] {
        let (code, text) = request(&node.address, Method::GET, path, &[], None).await?;
        assert_eq!(code, 200, "{path}: {text}");
    }
    // The owner key names no capture: where TiCDC answers 500 (no owner to forward to, the v1
    // health check), so does this capture.
    for path in ["/api/v1/health", "/api/v1/captures"] {
        let (code, text) = request(&node.address, Method::GET, path, &[], None).await?;
        assert_eq!(code, 500, "{path}: {text}");
        assert_eq!(
            json_of(&text)["error_code"],
            "CDC:ErrOwnerNotFound",
            "{path}: {text}"
        );
    }
    // The other owner goes: this capture wins, migrates, and the routes answer.
    client.delete(blocking_owner.as_str(), false).await?;
    let status = wait_for(Duration::from_secs(30), || async {
        let (code, text) = request(&node.address, Method::GET, "/api/v2/status", &[], None)
            .await
            .ok()?;
        // Readiness and the won election reach the status separately: wait for both.
        let status = json_of(&text);
        (code == 200 && status["is_owner"] == true).then_some(status)
    })
    .await
    .with_context(|| format!("ready after the owner key went\n{}", node.log_tail(30)))?;
    assert_eq!(status["is_owner"], true, "{status}");
    Ok(())
}

/// Every metric name `text` (a dashboard or rule file) uses: the words that start with
/// `ticdc_` or `process_`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ticdc_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Whether `/metrics` text `exposition` has `name`: a family of that name, or a histogram's
/// `_bucket`, `_sum` or `_count` series.
fn is_exported(exposition: &str, name: &str) -> bool {
    if exposition.contains(&format!("# TYPE {name} ")) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| exposition.contains(&format!("# TYPE {base} histogram")))
    })
}

// The dashboard and the alert rules in `metrics/` read only what the binary exports: every name
// they use is in the owner's `/metrics` once a changefeed runs. A former owner exports none of
// the owner-only gauges, and its ownership counter stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_alerts_is_exported() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../metrics");
    let files = [
        format!("{root}/grafana/cdc.json"),
        format!("{root}/alertmanager/cdc.rules.yml"),
    ];
    let mut names = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
        let used = metric_names(&text);
        ensure!(!used.is_empty(), "{file} names no metric");
        names.extend(used);
    }
    for name in [
        "ticdc_owner_ownership_counter",
        "ticdc_owner_checkpoint_ts_lag",
        "ticdc_capture_restarts_total",
        "ticdc_etcd_worker_commit_errors_total",
        "process_resident_memory_bytes",
    ] {
        ensure!(names.contains(name), "the alerts use {name}: {names:?}");
    }

    let etcd = EtcdServer::start().await.unwrap();
    let mut nodes = start_nodes(&etcd, "metrics", 2);
    let (owner_index, _) = one_owner(&mut nodes, Duration::from_secs(30)).await?;
    started_ids(&nodes, Duration::from_secs(10)).await?;
    let body = json!({
        "changefeed_id": "dashboard",
        "sink_uri": "blackhole://",
        "replica_config": {"filter": {"rules": ["/dashboard/"]}},
    })
    .to_string();
    let (code, text) = request(
        &nodes[owner_index].address,
        Method::POST,
        "/api/v2/changefeeds",
        &[],
        Some(&body),
    )
    .await?;
    ensure!(code == 200, "create: {code}: {text}");
    let owner = &nodes[owner_index];
    let exposition = wait_for(Duration::from_secs(30), || async {
        let text = owner.get_text("/metrics").await.ok()?;
        names
            .iter()
            .all(|name| is_exported(&text, name))
            .then_some(text)
    })
    .await;
    let exposition = match exposition {
        Ok(text) => text,
        Err(err) => {
            let text = owner.get_text("/metrics").await.unwrap_or_default();
            let missing: Vec<&String> = names
                .iter()
                .filter(|name| !is_exported(&text, name))
                .collect();
            return Err(err.context(format!("metrics missing from /metrics: {missing:?}")));
        }
    };
    assert!(
        exposition
            .lines()
            .any(|line| line.starts_with("ticdc_owner_checkpoint_ts_lag{")
                && line.contains("changefeed=\"dashboard\"")
                && line.contains("namespace=\"default\"")),
        "{exposition}"
    );

    // The owner steps down: the former owner drops its owner-only gauges, and its ownership
    // counter stands still while the new owner's runs.
    let former = owner.address.clone();
    let (code, text) = request(&former, Method::POST, "/api/v2/owner/resign", &[], None).await?;
    ensure!(code == 200, "resign: {code}: {text}");
    let new_index = wait_for(Duration::from_secs(20), || async {
        let found = owners(&nodes).await;
        (found.len() == 1 && found[0].0 != owner_index).then(|| found[0].0)
    })
    .await
    .context("the other capture becomes owner")?;
    let counter = |text: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix("ticdc_owner_ownership_counter "))
            .and_then(|value| value.trim().parse().ok())
    };
    let former_text = nodes[owner_index].get_text("/metrics").await?;
    for gauge in [
        "ticdc_owner_captures",
        "ticdc_owner_checkpoint_ts",
        "ticdc_owner_checkpoint_ts_lag",
        "ticdc_owner_resolved_ts",
    ] {
        assert!(
            !former_text.contains(&format!("# TYPE {gauge} ")),
            "{gauge} in\n{former_text}"
        );
    }
    let stopped = counter(&former_text).context("the former owner's counter")?;
    assert!(stopped > 0.0, "{former_text}");
    wait_for(Duration::from_secs(20), || async {
        let text = nodes[new_index].get_text("/metrics").await.ok()?;
        (counter(&text)? > 0.5).then_some(())
    })
    .await
    .context("the new owner's counter runs")?;
    let later = counter(&nodes[owner_index].get_text("/metrics").await?).unwrap();
    assert_eq!(later, stopped, "a former owner's counter stands still");
    Ok(())
}
