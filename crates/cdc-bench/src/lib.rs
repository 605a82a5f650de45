//! The workspace's benchmarks: each is a binary under `src/bin/`, run by
//! `cargo xtask bench NAME`, that prints its figures.
//!
//! Not a test suite: speed and memory targets are measured here, never asserted by timed tests.
//! The library holds what the binaries that run real captures share: where the server binary
//! is and how to read a capture's `/status`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The `cdc-server` binary: `$CDC_SERVER_BIN` (set by `cargo xtask bench`), or one beside this
/// benchmark's binary, or the debug build.
pub fn server_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CDC_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("the binary's directory")?;
    let candidates = [
        profile_dir.join("cdc-server"),
        profile_dir
            .parent()
            .context("the target directory")?
            .join("debug")
            .join("cdc-server"),
    ];
    candidates
        .into_iter()
        .find(|path| path.exists())
        .context("no cdc-server binary: run `cargo build -p cdc-server` or set CDC_SERVER_BIN")
}

/// A capture's `/status` at `address`: its ID and whether it is the owner; `None` when it does
/// not answer within a second or answers something else.
pub async fn status(address: &str) -> Option<(String, bool)> {
    let get = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request = format!("GET /status HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        Some((json["id"].as_str()?.to_owned(), json["is_owner"].as_bool()?))
    };
    timeout(Duration::from_secs(1), get).await.ok().flatten()
}

/// A real `cdc-server` process of a benchmark's cluster, killed when dropped; its log and
/// config live in a temporary directory.
pub struct ClusterNode {
    /// The capture's address (HTTP API and gRPC).
    pub address: String,
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl ClusterNode {
    /// Starts `binary` against the etcd at `etcd` in cluster `cluster_id`, with `config` as its
    /// TOML config file and `rust_log` (if any) as its `RUST_LOG`, and waits until it answers
    /// `/status`.
    pub async fn start(
        binary: &std::path::Path,
        etcd: &str,
        cluster_id: &str,
        config: &str,
        rust_log: Option<&str>,
    ) -> Result<ClusterNode> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("cdc.toml");
        std::fs::write(&config_path, config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("cdc.log"))?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["--pd", etcd, "--addr", &address, "--cluster-id", cluster_id])
            .arg("--config")
            .arg(&config_path);
        if let Some(rust_log) = rust_log {
            command.env("RUST_LOG", rust_log);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let node = ClusterNode {
            address,
            child,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while status(&node.address).await.is_none() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the capture at {} does not answer; its log is {}",
                    node.address,
                    node.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(node)
    }

    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The capture's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("cdc.log")
    }

    /// The last `lines` lines of the capture's log (empty when it cannot be read).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends signal `name` (`TERM`, `KILL`) to the process with `kill(1)`.
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.pid().context("the capture has exited")?;
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()?;
        if !status.success() {
            anyhow::bail!("kill -{name} {pid} failed");
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let exited = timeout(within, self.child.wait())
            .await
            .with_context(|| format!("the capture at {} still runs", self.address))?;
        Ok(exited?)
    }
}

/// Waits until every one of `nodes` reports an ID and exactly one of them is owner, polling
/// every `poll`; returns the owner's index.
pub async fn wait_one_owner(
    nodes: &[ClusterNode],
    within: Duration,
    poll: Duration,
) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut owners = Vec::new();
        let mut up = 0;
        for (index, node) in nodes.iter().enumerate() {
            if let Some((id, is_owner)) = status(&node.address).await
                && !id.is_empty()
            {
                up += 1;
                if is_owner {
                    owners.push(index);
                }
            }
        }
        if owners.len() == 1 && up == nodes.len() {
            return Ok(owners[0]);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no single owner within {within:?}: owners {owners:?}, {up} up");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The address of the owner among `nodes`, waiting up to `within` for one.
pub async fn owner_address(nodes: &[ClusterNode], within: Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        for node in nodes {
            if let Some((_, true)) = status(&node.address).await {
                return Ok(node.address.clone());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no owner within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP request to a capture's API: its status code and JSON body (`null` when the body is
/// not JSON).
pub async fn request(
    http: &reqwest::Client,
    address: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut builder = http.request(method, format!("http://{address}{path}"));
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = builder
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("request {path} of {address}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}

/// The user + system CPU seconds process `pid` has used so far (0 once it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/<pid>/stat, after the parenthesised command name, in clock
    // ticks of 1/100 s (USER_HZ on Linux).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name, field 3 (state) is index 0, so utime (14) is index 11 and stime 12.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// An HTTP client builder. reqwest's rustls brings no crypto provider of its own: ring's, the
/// tree's one provider, is installed first.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
