//! Helpers shared by the test modules: a real etcd with a client, the workspace binaries,
//! `cdc-server` processes, signals to child processes, and waiting on a condition with a
//! deadline.

pub(crate) mod node;

use std::fmt::Display;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions};

/// Starts a fresh etcd and connects a client to it.
pub(crate) async fn etcd() -> (EtcdServer, EtcdClient) {
    let server = EtcdServer::start().await.expect("start etcd");
    let client = server.client().await.expect("connect to etcd");
    (server, client)
}

/// Whether `key` exists.
pub(crate) async fn key_exists(client: &EtcdClient, key: impl Into<Vec<u8>>) -> bool {
    !client
        .get(key, GetOptions::default())
        .await
        .expect("read a key")
        .kvs
        .is_empty()
}

/// A workspace binary: `$env_var` if set, else next to this test binary
/// (`target/<profile>/deps/it-*` -> `target/<profile>/<name>`). `cargo xtask test` builds
/// both and sets the variables.
pub(crate) fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p {name}` or set {env_var}",
        binary.display()
    );
    binary
}

/// The `cdc-server` binary.
pub(crate) fn server_binary() -> PathBuf {
    workspace_binary("cdc-server", "CDC_SERVER_BIN")
}

/// Sends signal `name` (`TERM`, `INT`, ...) to process `pid` with `kill`.
pub(crate) fn send_signal(pid: impl Display, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`.
pub(crate) async fn wait_for<T, F, Fut>(within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that `check` holds at every poll (every 50 ms) for `window`: the first failure is
/// the error. For invariants that must hold over a stretch of time, such as "no restart".
pub(crate) async fn hold_for<F, Fut>(window: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    loop {
        check()
            .await
            .map_err(|err| err.context(format!("after {:?}", started.elapsed())))?;
        if started.elapsed() >= window {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client. reqwest's rustls brings no crypto provider of its own: ring's, the tree's one
/// provider, is installed first.
pub(crate) fn http_client() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
