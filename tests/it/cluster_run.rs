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

use crate::cluster::{server_binary, wait_for, workspace_binary};

/// Whether process `pid` still exists (a zombie counts as gone: it no longer runs).
fn is_alive(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    !status.is_empty() && !status.contains("State:\tZ")
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
    let http = reqwest::Client::new();
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

    // SIGINT stops everything: the xtask exits 0, its children are gone, the files removed.
    let sent = Command::new("kill")
        .args(["-INT", &xtask_pid.to_string()])
        .status()?;
    assert!(sent.success());
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
