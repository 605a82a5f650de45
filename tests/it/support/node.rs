//! One real `cdc-server` process of a test cluster: started on a free loopback port with its
//! own config and log in a temporary directory, killed and reaped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{send_signal, server_binary, wait_for};

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// How long a request waits for a capture to be ready. A capture answers every `/api/v2` route
/// 503 `CDC:ErrServerIsNotReady` until its processor has seen the meta version, up to a second
/// after the owner wrote it; the tests that are not about readiness wait for it, as TiUP
/// retries.
const READY_WAIT: Duration = Duration::from_secs(20);

/// Sends the request `make` builds, again while the capture answers that it is not ready (for
/// [`READY_WAIT`] at most): the status and body of the last answer.
pub(crate) async fn send_when_ready(
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, String)> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let response = make().send().await?;
        let status = response.status();
        let body = response.text().await?;
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && body.contains("CDC:ErrServerIsNotReady")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        return Ok((status, body));
    }
}

/// A `cdc-server` process logging at `info` into its own log file.
pub(crate) struct ServerNode {
    /// The capture's address (HTTP API and gRPC).
    pub(crate) address: String,
    /// The timeout of each `GET` to the node's API.
    pub(crate) get_timeout: Duration,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerNode {
    /// Starts `cdc-server` against the etcd at `etcd` in cluster `cluster_id`, with `config` as
    /// its TOML config file.
    pub(crate) fn start(etcd: &str, cluster_id: &str, config: &str) -> ServerNode {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("cdc.toml");
        std::fs::write(&config_path, config).expect("write the config");
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("cdc.log");
        let stderr = std::fs::File::create(&log).expect("create the log");
        let child = Command::new(server_binary())
            .args(["--pd", etcd, "--addr", &address, "--cluster-id", cluster_id])
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start cdc-server");
        ServerNode {
            address,
            get_timeout: Duration::from_secs(2),
            child,
            log,
            _dir: dir,
        }
    }

    /// What the process logged so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the process's log, for failure messages.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits (5 s at most) until the process has logged `text`.
    pub(crate) async fn wait_log(&self, text: &str) -> Result<()> {
        wait_for(Duration::from_secs(5), || async {
            self.log_text().contains(text).then_some(())
        })
        .await
    }

    /// A successful answer to `POST path`, as JSON.
    pub(crate) async fn post(&self, path: &str) -> Result<Value> {
        let url = format!("http://{}{path}", self.address);
        let (status, body) = send_when_ready(|| {
            super::http_client()
                .post(&url)
                .timeout(Duration::from_secs(10))
        })
        .await?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The body of a successful answer to `GET path`.
    async fn get_body(&self, path: &str) -> Result<String> {
        let url = format!("http://{}{path}", self.address);
        let (status, body) =
            send_when_ready(|| super::http_client().get(&url).timeout(self.get_timeout)).await?;
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        Ok(body)
    }

    /// A successful answer to `GET path`, as text.
    pub(crate) async fn get_text(&self, path: &str) -> Result<String> {
        self.get_body(path).await
    }

    /// A successful answer to `GET path`, as JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        Ok(serde_json::from_str(&self.get_body(path).await?)?)
    }

    /// The node's `/status`.
    pub(crate) async fn status(&self) -> Result<Value> {
        self.get("/status").await
    }

    /// The current capture ID; empty until the first incarnation has started.
    pub(crate) async fn id(&self) -> Result<String> {
        let status = self.status().await?;
        Ok(status["id"].as_str().unwrap_or_default().to_owned())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`TERM`, `KILL`, ...) to the process.
    pub(crate) fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits up to `within` for the process to exit; its exit status.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("cdc-server {} still runs after {within:?}", self.pid())
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The owners among `nodes` by their `/status`, as (index, capture ID).
pub(crate) async fn owners<'a>(
    nodes: impl IntoIterator<Item = &'a ServerNode>,
) -> Vec<(usize, String)> {
    let mut owners = Vec::new();
    for (index, node) in nodes.into_iter().enumerate() {
        if let Ok(status) = node.status().await
            && status["is_owner"] == Value::Bool(true)
        {
            owners.push((index, status["id"].as_str().unwrap_or_default().to_owned()));
        }
    }
    owners
}
