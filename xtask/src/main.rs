//! Project automation: `cargo xtask install | tidy | gen-docs | test | run-cluster | bench NAME | chaos`.
//!
//! The xtask links none of the project's crates; it drives `cargo` and the tools that a fresh
//! Debian machine lacks (`protoc` for etcd-client's build, `etcd` and `etcdctl` for the tests,
//! `cargo-deny` for CI). `tidy` checks the invariants of ARCHITECTURE.md ("Checked by").

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports to its terminal"
)]

mod chaos;
mod gen_docs;
mod install;
mod run_cluster;
mod tidy;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project automation for the cdc workspace")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks: protoc, etcd, etcdctl and systemd-analyze through
    /// apt-get, cargo-deny through `cargo install --locked`.
    Install,
    /// Check the workspace's invariants: layering, unused dependencies, `//!` headers, citations.
    Tidy,
    /// Write the generated flag and key tables of docs/operations.md (from `cdc-server
    /// reference-tables`).
    GenDocs,
    /// Run the tidy checks, then every test (unit, real etcd, real processes).
    Test {
        /// Extra arguments passed to the test runner (a filter, for example).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build cdc-server and run a local cluster: one etcd and N captures.
    RunCluster(run_cluster::Args),
    /// Run a benchmark from the cdc-bench package in release mode (failover, failover_cluster,
    /// worker, p2p, idle, schedule).
    Bench {
        /// The benchmark: a binary of the cdc-bench package.
        name: String,
        /// Arguments passed to the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build cdc-server and the chaos tool, then run randomized faults against a real cluster
    /// and judge each run with the oracles (`--seed S`, `--runs N`, `--duration 30s`, `--keep`).
    Chaos {
        /// Arguments passed to the chaos tool.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Install => install::ensure_tools().and_then(|()| install::ensure_cargo_tools()),
        Cmd::Tidy => tidy::run(),
        Cmd::GenDocs => gen_docs::run(&project_root()),
        Cmd::Test { args } => test(&args),
        Cmd::RunCluster(args) => run_cluster::run(args),
        Cmd::Bench { name, args } => bench(&name, &args),
        Cmd::Chaos { args } => chaos::run(&args),
    }
}

/// The workspace root, from this package's manifest directory.
pub(crate) fn project_root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR at run time too; prefer it, so that a binary built from
    // another checkout sharing the target dir still works on the checkout it was run from.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs us, so that toolchain overrides carry over.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root());
    cmd
}

pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The cargo target directory (`CARGO_TARGET_DIR`, or `target/` in the workspace).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

fn test(args: &[String]) -> Result<()> {
    tidy::run()?;
    install::ensure_tools()?;
    // Multi-process tests run the real server binary: build it first and tell them where it is.
    run_checked(cargo().args(["build", "--package", "cdc-server"]))?;
    let server_bin = target_dir().join("debug").join("cdc-server");
    let xtask_bin = std::env::current_exe().context("the xtask binary's path")?;
    if args.is_empty() {
        // nextest runs no doctests: the crate-level examples of the reusable crates run here, first,
        // so that the suite's summary stays the last thing printed.
        run_checked(cargo().args(["test", "--workspace", "--all-features", "--doc"]))?;
    }
    let has_nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if has_nextest {
        run_checked(
            cargo()
                .env("CDC_SERVER_BIN", &server_bin)
                .env("CDC_XTASK_BIN", &xtask_bin)
                .args(["nextest", "run", "--workspace", "--all-features"])
                .args(["--no-fail-fast", "--profile", "ci"])
                .args(args),
        )
    } else {
        run_checked(
            cargo()
                .env("CDC_SERVER_BIN", &server_bin)
                .env("CDC_XTASK_BIN", &xtask_bin)
                .args(["test", "--workspace", "--all-features", "--no-fail-fast"])
                .args(args),
        )
    }
}

fn bench(name: &str, args: &[String]) -> Result<()> {
    install::ensure_tools()?;
    // One build of both packages, so that their shared dependencies are compiled once with one
    // set of features; benchmarks that run real captures use this release server.
    run_checked(cargo().args([
        "build",
        "--release",
        "--package",
        "cdc-server",
        "--package",
        "cdc-bench",
        "--bin",
        "cdc-server",
        "--bin",
        name,
    ]))?;
    let release = target_dir().join("release");
    run_checked(
        Command::new(release.join(name))
            .env("CDC_SERVER_BIN", release.join("cdc-server"))
            .args(args),
    )
}
