//! `chaos`: randomized, seeded faults against a real cluster (three etcd members, a sink etcd,
//! three to five `cdc-server` captures behind TCP proxies, a writer and two changefeeds),
//! judged by the independent oracles of `cdc-oracle`; run by `cargo xtask chaos`.
//!
//! Each run prints `chaos seed=<S> faults=<k> lost=<n> reordered=<n> double_run=<n>
//! checkpoint_regressions=<n> stale_owner_writes=<n> recovery=<s>s`; a failing run keeps its
//! directory (`target/chaos/seed-<S>/`) and prints the command that replays it. The last line is
//! `chaos runs=<N> failed=<F> max_recovery=<s>s`, and the exit status is 1 when a run failed.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports to its terminal"
)]

mod cluster;
mod faults;
mod judge;
mod proxy;
mod record;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

/// Randomized faults against a real cluster, judged by independent oracles.
#[derive(Parser, Debug)]
#[command(name = "chaos")]
struct Cli {
    /// The first run's seed (the next runs take the following seeds); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// How many runs.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// How long each run injects faults (then the faults stop and the cluster must converge).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// How long convergence may take after the last fault.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    converge_within: Duration,
    /// The `cdc-server` binary (default: `CDC_SERVER_BIN`).
    #[arg(long, env = "CDC_SERVER_BIN")]
    server_binary: PathBuf,
    /// Where the run directories go (`seed-<S>/` each).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Keep the directories of passing runs too.
    #[arg(long)]
    keep: bool,
    /// Stop after the first failing run.
    #[arg(long)]
    until_failure: bool,
    /// Judge a kept run directory again with the file-based oracles (no etcd), and exit.
    #[arg(long)]
    judge_only: Option<PathBuf>,
}

/// The first of SIGINT and SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|err| err.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest's rustls has no crypto provider of its own (ring is the workspace's one).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chaos: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(runs(&cli)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("chaos: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every seed; returns how many failed.
async fn runs(cli: &Cli) -> Result<u64> {
    if let Some(dir) = &cli.judge_only {
        let mut outcome = run::Outcome {
            converged: true,
            ..run::Outcome::default()
        };
        judge::judge(dir, &[], &mut outcome).await;
        for detail in &outcome.details {
            println!("  {detail}");
        }
        println!(
            "chaos judged {} lost={} reordered={} double_run={} checkpoint_regressions={} stale_owner_writes={}",
            dir.display(),
            outcome.lost,
            outcome.reordered,
            outcome.double_run,
            outcome.checkpoint_regressions,
            outcome.stale_owner_writes
        );
        return Ok(u64::from(outcome.failed()));
    }
    let first = match cli.seed {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock")?
            .as_secs(),
    };
    let server_binary = std::fs::canonicalize(&cli.server_binary)
        .with_context(|| format!("the server binary {}", cli.server_binary.display()))?;
    std::fs::create_dir_all(&cli.out)?;
    let out = std::fs::canonicalize(&cli.out)?;
    let mut failed = 0;
    let mut ran = 0;
    let mut max_recovery: f64 = 0.0;
    for seed in first..first.saturating_add(cli.runs) {
        if cli.until_failure && failed > 0 {
            break;
        }
        ran += 1;
        let config = run::RunConfig {
            seed,
            duration: cli.duration,
            server_binary: server_binary.clone(),
            dir: out.join(format!("seed-{seed}")),
            converge_within: cli.converge_within,
            keep: cli.keep,
        };
        // Ctrl-C or SIGTERM ends the run: dropping it kills its processes (each child is
        // killed on drop); the sink's tmpfs is unmounted and the directory kept.
        let outcome = tokio::select! {
            outcome = Box::pin(run::run(&config)) => outcome,
            signal = interrupted() => {
                run::unmount_sink(&config.dir);
                anyhow::bail!("{signal} received: run seed={seed} stopped, its directory kept in {}", config.dir.display());
            }
        };
        let failing = outcome.as_ref().map_or(true, run::Outcome::failed);
        match &outcome {
            Ok(outcome) => {
                max_recovery = max_recovery.max(outcome.recovery);
                println!(
                    "chaos seed={seed} faults={} lost={} reordered={} double_run={} checkpoint_regressions={} stale_owner_writes={} recovery={:.1}s",
                    outcome.faults,
                    outcome.lost,
                    outcome.reordered,
                    outcome.double_run,
                    outcome.checkpoint_regressions,
                    outcome.stale_owner_writes,
                    outcome.recovery,
                );
                if failing {
                    for detail in &outcome.details {
                        println!("  {detail}");
                    }
                }
            }
            Err(err) => println!("chaos seed={seed} error: {err:#}"),
        }
        if failing {
            failed += 1;
            println!(
                "  kept {}; replay: cargo xtask chaos --seed {seed} --runs 1 --duration {}",
                config.dir.display(),
                humantime_serde::re::humantime::format_duration(cli.duration)
            );
        } else if !cli.keep {
            run::clean(&config.dir)?;
        }
    }
    println!("chaos runs={ran} failed={failed} max_recovery={max_recovery:.1}s");
    Ok(failed)
}
