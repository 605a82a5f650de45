//! `cargo xtask run-cluster` end to end: the xtask binary (built beforehand) runs a cluster of
//! the built `cdc-server`, the captures are listed over HTTP, and SIGINT stops and removes it.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::support::{send_signal, server_binary, wait_for, workspace_binary};

/// Whether process `pid` still exists (a zombie counts as gone: it no longer runs).
fn is_alive(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    !status.is_empty() && !status.contains("State:\tZ")
}

/// The blocked-signal mask of process `pid` (`SigBlk` in /proc), if it runs.
fn blocked_signals(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigBlk:"))?
        .trim();
    u64::from_str_radix(mask, 16).ok()
}

/// Waits until process `pid` blocks no signal. A mask inherited from run-cluster would stay;
/// glibc's `pthread_create` blocks every signal of the creating thread for an instant, which a
/// loaded machine can make visible while the runtime starts its threads.
async fn wait_unblocked(pid: i32) {
    let unblocked = wait_for(Duration::from_secs(10), || async move {
        (blocked_signals(pid) == Some(0)).then_some(())
    })
    .await;
    assert!(
        unblocked.is_ok(),
        "process {pid} still blocks signals: {:x?}",
        blocked_signals(pid)
    );
}

/// The command name of process `pid` (`comm`: the executable's name, 15 bytes at most).
fn command_of(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The fields after the command's closing parenthesis: state, ppid, ...
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

fn pid_of(line: &str) -> Option<i32> {
    line.split("(pid ")
        .nth(1)?
        .trim_end_matches(')')
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cluster_starts_lists_and_stops() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster_dir = dir.path().join("cluster");
    let mut child = Command::new(workspace_binary("xtask", "CDC_XTASK_BIN"))
        .args(["run-cluster", "--nodes", "2", "--session-ttl", "5"])
        .arg("--server-binary")
        .arg(server_binary())
        .arg("--cluster-dir")
        .arg(&cluster_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let xtask_pid = i32::try_from(child.id())?;
    let stdout = child.stdout.take().context("stdout")?;

    // Read the summary on a thread; it ends at "Ctrl-C stops everything".
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let last = line.contains("Ctrl-C stops everything");
            if lines_tx.send(line).is_err() || last {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut summary = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                let last = line.contains("Ctrl-C stops everything");
                summary.push(line);
                if last {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                bail!("run-cluster printed no summary within 60 s: {summary:?}");
            }
        }
    }
    let etcd_pid = summary
        .iter()
        .find(|line| line.starts_with("run-cluster: etcd at"))
        .and_then(|line| pid_of(line))
        .context("etcd pid")?;
    let nodes: Vec<(String, i32)> = summary
        .iter()
        .filter(|line| line.starts_with("run-cluster: node-"))
        .map(|line| {
            let address = line
                .split(" at http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap()
                .to_owned();
            (address, pid_of(line).unwrap())
        })
        .collect();
    assert_eq!(nodes.len(), 2, "{summary:?}");
    assert!(summary.iter().any(|line| line.contains("owner is")));

    // Both captures are listed, by either node (the other forwards to the owner).
    let http = crate::support::http_client();
    let list = wait_for(Duration::from_secs(10), || async {
        let list: Value = http
            .get(format!("http://{}/api/v2/captures", nodes[1].0))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (list["total"] == 2).then_some(list)
    })
    .await?;
    let owners = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["is_owner"] == Value::Bool(true))
        .count();
    assert_eq!(owners, 1);

    // The demo changefeed follows /demo/ into the file sink the summary names.
    assert!(
        summary
            .iter()
            .any(|line| line.contains("changefeed demo follows /demo/ into file://")),
        "{summary:?}"
    );
    let etcd_url = summary
        .iter()
        .find_map(|line| line.strip_prefix("run-cluster: etcd at "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("etcd url")?
        .to_owned();
    let etcd = cdc_etcd::EtcdClient::connect(&[etcd_url], Default::default()).await?;
    etcd.put("/demo/hello", "world", 0).await?;
    let demo_dir = cluster_dir.join("sink").join("demo");
    wait_for(Duration::from_secs(30), || async {
        let entries = std::fs::read_dir(&demo_dir).ok()?;
        let found = entries.filter_map(Result::ok).any(|entry| {
            std::fs::read_to_string(entry.path())
                .is_ok_and(|text| text.contains(r#""key":"/demo/hello","value":"world""#))
        });
        found.then_some(())
    })
    .await
    .context("the demo change reaches the file sink")?;

    // The captures do not inherit run-cluster's blocked signals (etcd is started the same way;
    // its Go runtime changes its own mask), and a node stops on SIGTERM.
    for (_, pid) in &nodes {
        wait_unblocked(*pid).await;
    }
    let (_, stopped) = nodes[1];
    send_signal(stopped, "TERM");
    wait_for(Duration::from_secs(12), || async {
        (!is_alive(stopped)).then_some(())
    })
    .await
    .context("the node exits on SIGTERM")?;
    assert!(is_alive(xtask_pid), "run-cluster keeps running");

    // SIGINT stops everything: the xtask exits 0, its children are gone, the files removed.
    send_signal(xtask_pid, "INT");
    let status = wait_for(Duration::from_secs(40), || {
        let status = child.try_wait().ok().flatten();
        async move { status }
    })
    .await?;
    assert!(status.success(), "{status:?}");
    for pid in nodes.iter().map(|(_, pid)| *pid).chain([etcd_pid]) {
        assert!(!is_alive(pid), "process {pid} still runs");
    }
    assert!(!cluster_dir.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cluster_stops_on_sigint_during_startup() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // An etcd nobody listens on: the captures never get an owner, startup waits.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(workspace_binary("xtask", "CDC_XTASK_BIN"))
        .args(["run-cluster", "--nodes", "2", "--session-ttl", "5"])
        .args(["--etcd", &format!("http://127.0.0.1:{port}")])
        .arg("--server-binary")
        .arg(server_binary())
        .arg("--cluster-dir")
        .arg(dir.path().join("cluster"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let xtask_pid = i32::try_from(child.id())?;
    // Both children must have exec'd the server: until then a child is a copy of run-cluster,
    // whose own mask blocks SIGINT and SIGTERM.
    let nodes = wait_for(Duration::from_secs(20), || {
        let nodes = children_of(xtask_pid);
        let execed = nodes
            .iter()
            .all(|pid| command_of(*pid).as_deref() == Some("cdc-server"));
        async move { (nodes.len() == 2 && execed).then_some(nodes) }
    })
    .await
    .context("run-cluster starts two captures")?;
    for pid in &nodes {
        wait_unblocked(*pid).await;
    }
    send_signal(xtask_pid, "INT");
    let status = wait_for(Duration::from_secs(30), || {
        let status = child.try_wait().ok().flatten();
        async move { status }
    })
    .await
    .context("run-cluster stops during startup")?;
    assert!(status.success(), "{status:?}");
    for pid in nodes {
        assert!(!is_alive(pid), "process {pid} still runs");
    }
    Ok(())
}
