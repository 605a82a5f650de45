//! The capture server binary: flags and configuration, logging, signals, then the capture.

mod cli;
mod config;
mod godur;
mod keys;
mod logging;
mod reference;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cdc_capture::{CaptureParts, Config, Server};
use cdc_owner::{OwnerConfig, OwnerReactors};
use cdc_processor::{ProcessorConfig, ProcessorReactors};
use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long the drain (owner resign) may take within the stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How long a graceful stop may take before the process exits anyway: the drain, then the
/// capture's own bounded cleanup (whose session close revokes the lease, so the capture's keys
/// go at once instead of one TTL later).
const STOP_DEADLINE: Duration = DRAIN_DEADLINE.saturating_add(cdc_capture::STOP_BUDGET);

fn main() -> ExitCode {
    // Before any HTTP client is built (`cli` and the capture's forwarding client).
    cdc_capture::install_crypto_provider();
    let cli = config::Cli::parse();
    let server = match cli.command {
        Some(config::Command::Cli(args)) => return cli::run(*args),
        Some(config::Command::Version) => {
            #[allow(clippy::print_stdout, reason = "the command's output")]
            {
                println!("{}", cdc_capture::version_info());
            }
            return ExitCode::SUCCESS;
        }
        Some(config::Command::ReferenceTables) => {
            #[allow(clippy::print_stdout, reason = "the command's output")]
            {
                print!("{}", reference::tables());
            }
            return ExitCode::SUCCESS;
        }
        Some(config::Command::Server(server)) => *server,
        None => cli.server,
    };
    let loaded = match config::load(&server) {
        Ok(loaded) => loaded,
        Err(message) => {
            #[allow(clippy::print_stderr, reason = "logging is not set up yet")]
            {
                eprintln!("cdc-server: {message}");
            }
            return ExitCode::from(2);
        }
    };
    match logging::init(&loaded.log) {
        Ok(set_level) => cdc_capture::set_log_level_handler(set_level),
        Err(err) => {
            #[allow(clippy::print_stderr, reason = "logging could not be set up")]
            {
                eprintln!("cdc-server: {err:#}");
            }
            return ExitCode::from(2);
        }
    }
    for warning in loaded.warnings {
        warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "starting the runtime failed");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(loaded.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("cdc-server failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signals that stop the server gracefully: TiCDC's set (`pkg/cmd/util/helper.go` in
/// pingcap/tiflow: SIGHUP, SIGINT, SIGTERM, SIGQUIT), each draining first.
struct StopSignals {
    signals: Vec<(&'static str, Signal)>,
}

impl StopSignals {
    fn install() -> Result<StopSignals> {
        let mut signals = Vec::new();
        for (name, kind) in [
            ("SIGHUP", SignalKind::hangup()),
            ("SIGINT", SignalKind::interrupt()),
            ("SIGTERM", SignalKind::terminate()),
            ("SIGQUIT", SignalKind::quit()),
        ] {
            let stream = signal(kind).with_context(|| format!("install the {name} handler"))?;
            signals.push((name, stream));
        }
        Ok(StopSignals { signals })
    }

    /// The name of the next stop signal received.
    ///
    /// # Cancel safety
    /// Cancel-safe: each `Signal::recv` is.
    async fn recv(&mut self) -> &'static str {
        let waits = self.signals.iter_mut().map(|(name, stream)| {
            let name: &'static str = name;
            Box::pin(async move {
                stream.recv().await;
                name
            })
        });
        futures::future::select_all(waits).await.0
    }
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
    let mut signals = StopSignals::install()?;
    let mut running = std::pin::pin!(server.run(cancel.clone()));
    tokio::select! {
        result = &mut running => return result.context("run the capture"),
        name = signals.recv() => info!(signal = name, "received {name}, stopping"),
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
        name = signals.recv() => anyhow::bail!("second signal ({name}), exiting at once"),
    }
}
