//! `cargo xtask chaos [--seed S] [--runs N] [--duration 30s] [--keep]`: builds `cdc-server`
//! and the `chaos` tool of `crates/cdc-chaos` (debug builds, like the integration tests) and
//! runs it; its run directories go under `target/chaos/`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, install, run_checked, target_dir};

pub(crate) fn run(args: &[String]) -> Result<()> {
    install::ensure_tools()?;
    run_checked(cargo().args([
        "build",
        "--package",
        "cdc-server",
        "--package",
        "cdc-chaos",
        "--bin",
        "cdc-server",
        "--bin",
        "chaos",
    ]))?;
    let debug = target_dir().join("debug");
    let status = Command::new(debug.join("chaos"))
        .env("CDC_SERVER_BIN", debug.join("cdc-server"))
        .arg("--out")
        .arg(target_dir().join("chaos"))
        .args(args)
        .status()?;
    if !status.success() {
        bail!("chaos: {status}");
    }
    Ok(())
}
