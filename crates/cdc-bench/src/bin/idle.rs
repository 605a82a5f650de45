//! The cost of an idle cluster: three release `cdc-server` processes with no changefeeds
//! against a real etcd, the CPU each capture burns, and how soon the owner reacts to a change.
//!
//! CPU: after the captures elected an owner and a short warm-up, `utime + stime` of each process
//! (`/proc/<pid>/stat`, in clock ticks of 10 ms) is read at the start and the end of the
//! measurement window (60 s by default); the figure is the mean share of one core per capture.
//!
//! Reaction: a capture key is written for a capture that does not run (an address nobody
//! serves), and the time until the owner's controller logs "capture joined" for it is measured
//! from the moment etcd acknowledged the write; the key is deleted again after each sample.
//! This runs after the CPU window, which it would disturb.
//!
//! Usage: `cargo xtask bench idle [--seconds N] [--samples N]`. The server binary is
//! `$CDC_SERVER_BIN`, else `cdc-server` of this build's profile directory, else of the debug
//! one. The last line reads `idle cpu_per_capture=<percent>% reaction_p50=<ms>ms`.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cdc_bench::{server_binary, status};
use cdc_etcd::testing::EtcdServer;
use cdc_model::CaptureInfo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

const NODES: usize = 3;
const CLUSTER_ID: &str = "bench";
/// Linux reports process times in clock ticks of `USER_HZ`, 100 on every mainstream build.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// After the owner is elected, before the CPU window opens.
const WARM_UP: Duration = Duration::from_secs(5);

struct Node {
    address: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a capture; every stderr line that says "capture joined" goes to `joined_tx`
    /// with the instant it was read.
    async fn start(
        binary: &PathBuf,
        etcd: &str,
        joined_tx: mpsc::Sender<(String, Instant)>,
    ) -> Result<Node> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut child = Command::new(binary)
            .args(["--pd", etcd, "--addr", &address, "--cluster-id", CLUSTER_ID])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let stderr = child.stderr.take().context("the capture's stderr")?;
        // Ends with the process's stderr; dropped with the runtime otherwise.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("capture joined") {
                    let _ = joined_tx.send((line, Instant::now())).await;
                }
            }
        });
        Ok(Node {
            address,
            child,
            _dir: dir,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("the node has exited")
    }
}

/// Waits until exactly one node reports itself owner and all report an ID.
async fn wait_one_owner(nodes: &[Node], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let mut owners = 0;
        let mut up = 0;
        for node in nodes {
            if let Some((id, is_owner)) = status(&node.address).await
                && !id.is_empty()
            {
                up += 1;
                owners += usize::from(is_owner);
            }
        }
        if owners == 1 && up == nodes.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no single owner within {within:?}: {owners} owners, {up} up");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// `utime + stime` of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it start with the state (field 3).
    let after_name = stat.rsplit_once(')').context("/proc stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// The mean share of one core, in percent, each node used over `window`.
async fn cpu_per_capture(nodes: &[Node], window: Duration) -> Result<Vec<f64>> {
    let pids: Vec<u32> = nodes.iter().map(Node::pid).collect::<Result<_>>()?;
    let before: Vec<u64> = pids
        .iter()
        .map(|pid| cpu_ticks(*pid))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<u64> = pids
        .iter()
        .map(|pid| cpu_ticks(*pid))
        .collect::<Result<_>>()?;
    Ok(before
        .iter()
        .zip(&after)
        .map(|(before, after)| {
            let seconds = (after - before) as f64 / CLOCK_TICKS_PER_SECOND;
            100.0 * seconds / elapsed
        })
        .collect())
}

/// Writes the key of a capture that does not run and returns how long the owner took to log
/// it as joined; deletes the key again.
async fn reaction(
    etcd: &cdc_etcd::EtcdClient,
    joined_rx: &mut mpsc::Receiver<(String, Instant)>,
    sample: usize,
) -> Result<Duration> {
    let capture_id = format!("00000000-0000-4000-8000-{sample:012}");
    let info = CaptureInfo {
        id: capture_id.clone(),
        address: "127.0.0.1:1".to_owned(),
        version: "v0.0.0-bench".to_owned(),
        git_hash: String::new(),
        deploy_path: String::new(),
        start_timestamp: 0,
    };
    let key = cdc_model::key::capture_key(CLUSTER_ID, &capture_id);
    let value = cdc_model::to_go_json(&info)?;
    etcd.put(key.as_str(), value, 0).await?;
    let written = Instant::now();
    let deadline = written + Duration::from_secs(10);
    let reacted = loop {
        let (line, at) = timeout(deadline - Instant::now(), joined_rx.recv())
            .await
            .context("the owner did not log the join within 10 s")?
            .context("every capture's log ended")?;
        if line.contains(&capture_id) {
            break at;
        }
    };
    etcd.delete(key.as_str(), false).await?;
    Ok(reacted.saturating_duration_since(written))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 60;
    let mut samples = 20;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => seconds = iter.next().context("--seconds N")?.parse()?,
            "--samples" => samples = iter.next().context("--samples N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if seconds == 0 || samples == 0 {
        bail!("--seconds and --samples must be at least 1");
    }
    let binary = server_binary()?;
    println!(
        "idle: {NODES} cdc-server processes ({}), {seconds} s of CPU, {samples} reactions",
        binary.display()
    );
    let etcd = EtcdServer::start().await.context("start etcd")?;
    let client = etcd.client().await?;
    let (joined_tx, mut joined_rx) = mpsc::channel(64);
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(Node::start(&binary, &etcd.endpoint(), joined_tx.clone()).await?);
    }
    drop(joined_tx);
    wait_one_owner(&nodes, Duration::from_secs(60)).await?;
    sleep(WARM_UP).await;
    // The joins of the real captures are not samples.
    while joined_rx.try_recv().is_ok() {}

    let cpu = cpu_per_capture(&nodes, Duration::from_secs(seconds)).await?;
    for (index, percent) in cpu.iter().enumerate() {
        println!("capture {index}: {percent:.3}% of a core");
    }
    let mean_cpu = cpu.iter().sum::<f64>() / cpu.len() as f64;

    let mut reactions = Vec::with_capacity(samples);
    for sample in 0..samples {
        reactions.push(reaction(&client, &mut joined_rx, sample).await?);
        // Apart, so that each change meets an idle owner.
        sleep(Duration::from_millis(200)).await;
    }
    reactions.sort();
    let p50 = reactions[reactions.len() / 2];
    let max = reactions[reactions.len() - 1];
    println!(
        "reaction from a capture-key write to the owner's tick: p50 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    println!(
        "idle cpu_per_capture={mean_cpu:.3}% reaction_p50={:.1}ms",
        p50.as_secs_f64() * 1000.0
    );
    Ok(())
}
