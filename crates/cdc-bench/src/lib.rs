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
