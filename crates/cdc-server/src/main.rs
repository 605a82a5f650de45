//! The capture server binary: flags and configuration, logging, signals, then the capture.

mod config;

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cdc_capture::{CaptureParts, Config, Server};
use cdc_owner::{OwnerConfig, OwnerReactors};
use cdc_processor::{ProcessorConfig, ProcessorReactors};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// How long the drain (owner resign) may take within the stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How long a graceful stop may take before the process exits anyway: the drain, then the
/// capture's own bounded cleanup (whose session close revokes the lease, so the capture's keys
/// go at once instead of one TTL later).
const STOP_DEADLINE: Duration = DRAIN_DEADLINE.saturating_add(cdc_capture::STOP_BUDGET);

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let (config, warnings) = match config::load(&cli) {
        Ok(loaded) => loaded,
        Err(message) => {
            #[allow(clippy::print_stderr, reason = "logging is not set up yet")]
            {
                eprintln!("cdc-server: {message}");
            }
            return ExitCode::from(2);
        }
    };
    if let Err(err) = init_logging(&config) {
        #[allow(clippy::print_stderr, reason = "logging could not be set up")]
        {
            eprintln!("cdc-server: {err:#}");
        }
        return ExitCode::from(2);
    }
    for warning in warnings {
        warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "starting the runtime failed");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("cdc-server failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .with_context(|| format!("parse log-level {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_file.is_empty() {
        let builder = builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        if config.log_json {
            builder.json().init()
        } else {
            builder.init()
        }
    } else {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_file)
            .with_context(|| format!("open log-file {}", config.log_file))?;
        let builder = builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file));
        if config.log_json {
            builder.json().init()
        } else {
            builder.init()
        }
    }
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    info!(config = ?config, "starting cdc-server");
    let processor_config = ProcessorConfig {
        span_log: config.debug.span_log.clone(),
        ..ProcessorConfig::default()
    };
    processor_config
        .validate()
        .context("the processor configuration")?;
    let processors = std::sync::Arc::new(ProcessorReactors::new(processor_config));
    let owners = std::sync::Arc::new(
        OwnerReactors::new(OwnerConfig::default()).context("the owner configuration")?,
    );
    // The controller stays the capture's minimal one (it serves the capture list).
    let server = Server::bind_with(config, move |etcd| CaptureParts {
        owners,
        processors,
        ..CaptureParts::production(etcd)
    })
    .await
    .context("start the server")?;
    let capture = std::sync::Arc::clone(server.capture());
    let cancel = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut running = std::pin::pin!(server.run(cancel.clone()));
    tokio::select! {
        result = &mut running => return result.context("run the capture"),
        _ = sigterm.recv() => info!("received SIGTERM, stopping"),
        _ = sigint.recv() => info!("received SIGINT, stopping"),
    }
    // The server keeps running (accepting, serving, restarting incarnations) during the
    // drain: both are polled together, and a capture that ends meanwhile ends the stop.
    let stop = async {
        let drain = async {
            if tokio::time::timeout(DRAIN_DEADLINE, capture.drain())
                .await
                .is_err()
            {
                warn!("drain did not finish in time");
            }
        };
        tokio::select! {
            result = &mut running => return result,
            () = drain => {}
        }
        cancel.cancel();
        running.await
    };
    tokio::select! {
        result = tokio::time::timeout(STOP_DEADLINE, stop) => match result {
            Ok(result) => result.context("stop the capture"),
            Err(_) => anyhow::bail!("the capture did not stop within {STOP_DEADLINE:?}"),
        },
        _ = sigterm.recv() => anyhow::bail!("second signal, exiting at once"),
        _ = sigint.recv() => anyhow::bail!("second signal, exiting at once"),
    }
}
