//! The processes of one run: a three-member etcd cluster, a sink etcd and the `cdc-server`
//! captures, each capture reaching etcd and its peers only through the run's proxies.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cdc_etcd::{ConnectConfig, EtcdClient, GetOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{Mode, Proxy};
use crate::record::{Jsonl, mono_ns};

/// The captures' session TTL in seconds: the smallest the configuration accepts, so that
/// pauses and partitions longer than it bite within a short run.
pub(crate) const TTL_SECS: u64 = 5;
/// The cluster ID of the captures.
pub(crate) const CLUSTER_ID: &str = "chaos";

/// A free loopback port (probed: someone may take it before it is used; starts retry).
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("find a free port")?
        .local_addr()?
        .port())
}

/// The etcd binary: `CDC_ETCD_BIN`, or `etcd` on the `PATH`.
fn etcd_binary() -> PathBuf {
    std::env::var_os("CDC_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

fn signal(pid: u32, signal: Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("a pid")?;
    kill(Pid::from_raw(pid), signal).with_context(|| format!("{signal} to {pid}"))
}

/// One etcd process (a member of the upstream cluster, or the sink etcd alone).
pub(crate) struct EtcdMember {
    pub(crate) name: String,
    pub(crate) client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub(crate) paused: bool,
}

impl EtcdMember {
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(etcd_binary())
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=chaos")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start etcd (run `cargo xtask install`)")?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub(crate) fn pause(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGSTOP)?;
            self.paused = true;
        }
        Ok(())
    }

    pub(crate) fn resume(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGCONT)?;
        }
        self.paused = false;
        Ok(())
    }

    /// SIGKILL and reap; the data dir stays for [`Self::restart`].
    pub(crate) async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        self.paused = false;
        Ok(())
    }

    /// Starts the member again on its data dir and ports (it rejoins its cluster).
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn()
    }

    /// The member's view of the cluster through the gRPC gateway: (its ID, the leader's ID).
    pub(crate) async fn status(&self, http: &reqwest::Client) -> Option<(String, String)> {
        let response = http
            .post(format!("{}/v3/maintenance/status", self.endpoint()))
            .body("{}")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let value: Value = response.json().await.ok()?;
        let member = value["header"]["member_id"].as_str()?.to_owned();
        let leader = value["leader"].as_str()?.to_owned();
        Some((member, leader))
    }
}

/// Starts members named `prefix0..` as one cluster under `dir`; waits until all serve.
pub(crate) async fn start_etcd(
    dir: &Path,
    prefix: &str,
    members: usize,
) -> Result<Vec<EtcdMember>> {
    let mut ports = Vec::new();
    for _ in 0..members {
        ports.push((free_port()?, free_port()?));
    }
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("{prefix}{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut started = Vec::new();
    for (i, (client_port, peer_port)) in ports.into_iter().enumerate() {
        let name = format!("{prefix}{i}");
        let mut member = EtcdMember {
            data_dir: dir.join(format!("{name}.data")),
            log: dir.join(format!("{name}.log")),
            name,
            client_port,
            peer_port,
            initial_cluster: initial_cluster.clone(),
            child: None,
            paused: false,
        };
        member.spawn()?;
        started.push(member);
    }
    let endpoints: Vec<String> = started.iter().map(EtcdMember::endpoint).collect();
    wait_serving(&endpoints, Duration::from_secs(60)).await?;
    Ok(started)
}

/// Waits until a read through `endpoints` succeeds.
pub(crate) async fn wait_serving(endpoints: &[String], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let config = ConnectConfig {
        request_timeout: Duration::from_secs(2),
        ..ConnectConfig::default()
    };
    for endpoint in endpoints {
        loop {
            if let Ok(client) =
                EtcdClient::connect(std::slice::from_ref(endpoint), config.clone()).await
                && client.get("health", GetOptions::default()).await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("etcd at {endpoint} does not serve within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A capture slot: its proxies stay for the run, its process is replaced after a kill.
pub(crate) struct Slot {
    /// One proxy per etcd member (the capture's `--pd`).
    pub(crate) etcd_proxies: Vec<Proxy>,
    /// The proxy in front of the capture's port (its `--advertise-addr`): peers' p2p streams
    /// and forwarded API calls come through it.
    pub(crate) p2p_proxy: Proxy,
    pub(crate) process: Option<CaptureProcess>,
}

impl Slot {
    pub(crate) fn set_etcd_mode(&self, mode: Mode) {
        for proxy in &self.etcd_proxies {
            proxy.set_mode(mode);
        }
    }
}

/// One `cdc-server` process; `n` numbers processes across the run (its log files).
pub(crate) struct CaptureProcess {
    pub(crate) n: usize,
    pub(crate) addr: SocketAddr,
    child: Child,
    pub(crate) paused: bool,
}

impl CaptureProcess {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn pause(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGSTOP)?;
            self.paused = true;
        }
        Ok(())
    }

    pub(crate) fn resume(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGCONT)?;
        }
        self.paused = false;
        Ok(())
    }

    /// SIGKILL, reap, and record the death (after the reap: later than the real death, so the
    /// span-log check is only stricter).
    pub(crate) async fn kill(mut self, deaths: &Jsonl) -> Result<()> {
        let pid = self.pid().unwrap_or(0);
        self.child.start_kill()?;
        self.child.wait().await?;
        deaths.write_now(&serde_json::json!({
            "capture": self.n.to_string(),
            "pid": pid,
            "died_at_mono_ns": mono_ns(),
        }))
    }

    /// `GET path` on the capture's own port (not through its proxy).
    pub(crate) async fn get(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let response = http
            .get(format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }
}

/// What starting a capture needs.
pub(crate) struct CaptureSpec<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) run_dir: &'a Path,
}

/// Starts slot `slot`'s capture as process number `n`.
pub(crate) async fn start_capture(spec: &CaptureSpec<'_>, slot: &mut Slot, n: usize) -> Result<()> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    slot.p2p_proxy.set_target(addr);
    let pd = slot
        .etcd_proxies
        .iter()
        .map(|proxy| format!("http://{}", proxy.addr()))
        .collect::<Vec<_>>()
        .join(",");
    let config = spec.run_dir.join(format!("capture-{n}.toml"));
    let span_log = spec.run_dir.join(format!("capture-{n}.span.log"));
    let log = spec.run_dir.join(format!("capture-{n}.log"));
    std::fs::write(
        &config,
        format!(
            "capture-session-ttl = {TTL_SECS}\nlog-json = true\n[debug]\nspan-log = {:?}\n",
            span_log.display().to_string()
        ),
    )?;
    let stderr = File::create(spec.run_dir.join(format!("capture-{n}.stderr")))?;
    let child = Command::new(spec.binary)
        .arg("--pd")
        .arg(&pd)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--advertise-addr")
        .arg(slot.p2p_proxy.addr().to_string())
        .args(["--cluster-id", CLUSTER_ID, "--log-level", "info"])
        .arg("--log-file")
        .arg(&log)
        .arg("--data-dir")
        .arg(spec.run_dir.join(format!("capture-{n}.data")))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", spec.binary.display()))?;
    slot.process = Some(CaptureProcess {
        n,
        addr,
        child,
        paused: false,
    });
    Ok(())
}

/// Builds `count` slots with their proxies (etcd proxies to `members`).
pub(crate) async fn make_slots(
    count: usize,
    members: &[EtcdMember],
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Vec<Slot>> {
    let mut slots = Vec::new();
    for _ in 0..count {
        let mut etcd_proxies = Vec::new();
        for member in members {
            let target: SocketAddr = format!("127.0.0.1:{}", member.client_port).parse()?;
            etcd_proxies.push(Proxy::start(target, tracker, cancel).await?);
        }
        // The target is set when the process starts.
        let placeholder: SocketAddr = "127.0.0.1:9".parse()?;
        let p2p_proxy = Proxy::start(placeholder, tracker, cancel).await?;
        slots.push(Slot {
            etcd_proxies,
            p2p_proxy,
            process: None,
        });
    }
    Ok(slots)
}
