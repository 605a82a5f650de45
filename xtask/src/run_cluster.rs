//! `cargo xtask run-cluster`: a local etcd and N captures on free loopback ports, logs streamed
//! with a prefix, everything stopped and cleaned up on Ctrl-C.
#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "a foreground command: it reports on stderr and polls children from plain threads"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use crate::{cargo, install, project_root, run_checked};

/// Options of `run-cluster`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Number of captures to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Use this etcd instead of starting one.
    #[arg(long)]
    etcd: Option<String>,
    /// The capture-session-ttl of every capture, in seconds (at least 5).
    #[arg(long, default_value_t = 10)]
    session_ttl: u32,
    /// Run this cdc-server binary instead of building the workspace's.
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Where etcd's data and the captures' files go (removed on exit); default `target/cluster`.
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
}

struct Process {
    name: String,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    // Ctrl-C and SIGTERM are taken by one thread below; children get them unblocked.
    let signals = {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set
    };
    signals.thread_block().context("block SIGINT and SIGTERM")?;
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    install::ensure_tools()?;
    let binary = match &args.server_binary {
        Some(binary) => binary.clone(),
        None => {
            run_checked(cargo().args(["build", "--package", "cdc-server", "--bin", "cdc-server"]))?;
            crate::target_dir().join("debug").join("cdc-server")
        }
    };
    let cluster_dir = args
        .cluster_dir
        .clone()
        .unwrap_or_else(|| project_root().join("target").join("cluster"));
    let _ = std::fs::remove_dir_all(&cluster_dir);
    std::fs::create_dir_all(&cluster_dir).context("create target/cluster")?;

    let mut processes: Vec<Process> = Vec::new();
    let etcd_url = match &args.etcd {
        Some(url) => url.clone(),
        None => {
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let url = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let etcd = std::env::var_os("CDC_ETCD_BIN").unwrap_or_else(|| "etcd".into());
            let mut command = Command::new(etcd);
            command
                .arg("--data-dir")
                .arg(cluster_dir.join("etcd"))
                .args(["--name", "etcd", "--listen-client-urls", &url])
                .args(["--advertise-client-urls", &url, "--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("etcd={peer}")]);
            processes.push(spawn("etcd", command, &signals)?);
            wait_tcp(client_port, Duration::from_secs(20)).context("wait for etcd")?;
            url
        }
    };

    let mut addresses = Vec::new();
    for node in 1..=args.nodes {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let dir = cluster_dir.join(format!("node-{node}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("cdc.toml");
        std::fs::write(
            &config,
            format!("capture-session-ttl = {}\n", args.session_ttl),
        )?;
        let mut command = Command::new(&binary);
        command
            .args(["--pd", &etcd_url, "--addr", &address])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--config")
            .arg(&config);
        processes.push(spawn(&format!("node-{node}"), command, &signals)?);
        addresses.push(address);
    }

    let owner = wait_owner(&addresses, Duration::from_secs(30))?;
    let mut out = std::io::stdout().lock();
    match processes.iter().find(|process| process.name == "etcd") {
        Some(etcd) => writeln!(
            out,
            "\nrun-cluster: etcd at {etcd_url} (pid {})",
            etcd.child.id()
        )?,
        None => writeln!(out, "\nrun-cluster: etcd at {etcd_url}")?,
    }
    for (index, address) in addresses.iter().enumerate() {
        let pid = processes
            .iter()
            .find(|process| process.name == format!("node-{}", index + 1))
            .map(|process| process.child.id())
            .unwrap_or(0);
        writeln!(
            out,
            "run-cluster: node-{} at http://{address} (pid {pid})",
            index + 1
        )?;
    }
    writeln!(out, "run-cluster: owner is {owner}")?;
    writeln!(out, "run-cluster: try")?;
    writeln!(out, "  curl -s http://{}/api/v2/captures", addresses[0])?;
    writeln!(
        out,
        "  etcdctl --endpoints {etcd_url} get --prefix /tidb/cdc"
    )?;
    let last = processes
        .last()
        .map(|process| process.child.id())
        .unwrap_or(0);
    writeln!(out, "  kill -TERM {last}    # stops node-{}", args.nodes)?;
    writeln!(out, "run-cluster: Ctrl-C stops everything")?;
    out.flush()?;
    drop(out);

    let signal = signals.wait().context("wait for a signal")?;
    eprintln!("run-cluster: {signal:?} received, stopping the cluster");
    // Captures first (they resign and delete their keys), then etcd.
    for process in processes.iter_mut().rev() {
        if process.name == "etcd" {
            continue;
        }
        stop(process);
    }
    for process in processes.iter_mut() {
        stop(process);
    }
    drop(processes);
    if args.etcd.is_none() {
        let _ = std::fs::remove_dir_all(&cluster_dir);
    }
    eprintln!("run-cluster: stopped");
    Ok(())
}

fn spawn(name: &str, mut command: Command, signals: &SigSet) -> Result<Process> {
    let unblock = *signals;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; sigprocmask is.
    unsafe {
        command.pre_exec(move || unblock.thread_unblock().map_err(std::io::Error::from));
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {name}"))?;
    if let Some(stdout) = child.stdout.take() {
        stream(name, stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        stream(name, stderr);
    }
    Ok(Process {
        name: name.to_owned(),
        child,
    })
}

/// Copies a child's output to ours, one prefixed line at a time; ends with the pipe.
fn stream(name: &str, output: impl Read + Send + 'static) {
    let prefix = format!("[{name}] ");
    thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            eprintln!("{prefix}{line}");
        }
    });
}

fn stop(process: &mut Process) {
    if !matches!(process.child.try_wait(), Ok(None)) {
        return;
    }
    let pid = Pid::from_raw(i32::try_from(process.child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        if !matches!(process.child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "run-cluster: {} did not stop in time, killing it",
        process.name
    );
    let _ = process.child.kill();
    let _ = process.child.wait();
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_tcp(port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on port {port} after {within:?}")
}

/// A plain HTTP/1.0 GET; returns the body.
fn http_get(address: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} on {address}: {head}");
    }
    Ok(body.to_owned())
}

/// Waits until some node reports itself owner; returns its address.
fn wait_owner(addresses: &[String], within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for address in addresses {
            if let Ok(body) = http_get(address, "/status")
                && body.contains("\"is_owner\":true")
            {
                return Ok(address.clone());
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("no owner elected within {within:?}")
}
