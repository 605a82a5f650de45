//! A real etcd process for tests and benchmarks (feature `testing`).
//!
//! [`EtcdServer::start`] runs the `etcd` binary (from `CDC_ETCD_BIN`, or `etcd` on the `PATH`) on
//! free loopback ports with a temporary data dir, waits until it serves, and kills it on drop.
//! For fault tests it can pause (SIGSTOP), resume, kill and restart the same member on the same
//! data dir and ports, revoke a lease out of band and compact the history.
//! [`EtcdServer::start_tls`] runs it with TLS on `https://` client URLs and
//! `--client-cert-auth`, with certificates the test made.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::{ConnectConfig, EtcdClient, TlsConfig};
use crate::types::{GetOptions, LeaseId, Revision};

const INSTALL_HINT: &str = "etcd is required for this test: run `cargo xtask install` (apt-get install etcd-server etcd-client) or set CDC_ETCD_BIN";

/// How long to wait for etcd to serve after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd member owned by a test.
pub struct EtcdServer {
    child: Option<Child>,
    data_dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    paused: bool,
    tls: Option<ServerTls>,
}

/// TLS for a test etcd: its certificate, key and the CA it trusts for client certificates
/// (files, as etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`), and the credentials its
/// own clients ([`EtcdServer::client`], the readiness probe) use.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate (PEM file); it must name 127.0.0.1.
    pub cert_file: PathBuf,
    /// The server's private key (PEM file).
    pub key_file: PathBuf,
    /// The CA whose client certificates etcd accepts (`--client-cert-auth`).
    pub trusted_ca_file: PathBuf,
    /// The CA and client identity of the harness's own clients.
    pub client: TlsConfig,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The etcd binary to run.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("CDC_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// The etcdctl binary to run.
pub fn etcdctl_binary() -> PathBuf {
    std::env::var_os("CDC_ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcdctl"))
}

impl EtcdServer {
    /// Starts a fresh single-member etcd and waits until it serves.
    pub async fn start() -> io::Result<EtcdServer> {
        // Boxed: the start's future holds a whole server; callers' futures stay small.
        Box::pin(Self::start_with(None)).await
    }

    /// Starts a fresh single-member etcd serving TLS on `https://` client URLs with
    /// `--client-cert-auth`, and waits until it serves.
    pub async fn start_tls(tls: ServerTls) -> io::Result<EtcdServer> {
        Box::pin(Self::start_with(Some(tls))).await
    }

    async fn start_with(tls: Option<ServerTls>) -> io::Result<EtcdServer> {
        let mut last_error = None;
        // A free port can be taken by someone else between our probe and etcd's bind: retry.
        for _ in 0..5 {
            let data_dir = tempfile::Builder::new().prefix("cdc-etcd-").tempdir()?;
            let mut server = EtcdServer {
                child: None,
                data_dir,
                client_port: free_port()?,
                peer_port: free_port()?,
                paused: false,
                tls: tls.clone(),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()))
                .arg(format!(
                    "--trusted-ca-file={}",
                    tls.trusted_ca_file.display()
                ))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=cdc-test")
            .arg(format!(
                "--data-dir={}",
                self.data_dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=cdc-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| {
                if err.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{INSTALL_HINT} ({}: {err})", etcd_binary().display()),
                    )
                } else {
                    err
                }
            })?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let config = ConnectConfig {
            request_timeout: Duration::from_secs(1),
            ..self.connect_config()
        };
        let client = EtcdClient::connect(&self.endpoints(), config)
            .await
            .map_err(|err| io::Error::other(format!("connect to test etcd: {err}")))?;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "etcd exited with {status} before serving; log: {}",
                    self.log_path().display()
                )));
            }
            if client.get("health", GetOptions::default()).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "etcd did not serve within {READY_TIMEOUT:?}; log: {}",
                    self.log_path().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The connection settings of the harness's own clients (with its TLS credentials).
    pub fn connect_config(&self) -> ConnectConfig {
        ConnectConfig {
            tls: self
                .tls
                .as_ref()
                .map(|tls| std::sync::Arc::new(tls.client.clone())),
            ..ConnectConfig::default()
        }
    }

    /// The client URLs, for [`EtcdClient::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The file etcd logs to.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("etcd.log")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new client with default settings.
    pub async fn client(&self) -> crate::Result<EtcdClient> {
        EtcdClient::connect(&self.endpoints(), self.connect_config()).await
    }

    /// Revokes a lease out of band, as an operator or an expiry would.
    pub async fn revoke_lease(&self, lease_id: LeaseId) -> crate::Result<()> {
        self.client().await?.lease_revoke(lease_id).await
    }

    /// Compacts (physically) the whole history up to the current revision and returns it.
    pub async fn compact(&self) -> crate::Result<Revision> {
        let client = self.client().await?;
        let revision = client.get("compact", GetOptions::default()).await?.revision;
        client.compact(revision).await?;
        Ok(revision)
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("etcd is not running"))?;
        let pid = i32::try_from(pid).map_err(io::Error::other)?;
        kill(Pid::from_raw(pid), signal).map_err(io::Error::other)
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing answers. Returns once
    /// every thread of etcd is stopped: the kernel stops a process only when one of its threads
    /// is next scheduled, so on a loaded machine another thread could still answer a request
    /// sent right after `kill` returned.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("etcd is not running"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid)? {
            if Instant::now() >= deadline {
                return Err(io::Error::other("etcd did not stop within 10 s of SIGSTOP"));
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "a synchronous test harness call waits a millisecond for the kernel"
            )]
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// Kills the process (SIGKILL) and reaps it. The data dir is kept for [`Self::restart`].
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                let _ = child.kill();
            }
            child.kill()?;
            child.wait()?;
        }
        self.paused = false;
        Ok(())
    }

    /// Starts the same member again on the same data dir and ports, and waits until it serves.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn_and_wait().await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: u32) -> io::Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = match std::fs::read_to_string(task?.path().join("stat")) {
            Ok(stat) => stat,
            // A thread that exited meanwhile is not running either.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        // The state follows the parenthesised command name, which may itself hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if !matches!(state, Some("T" | "t")) {
            return Ok(false);
        }
    }
    Ok(true)
}
