//! The processor's settings.

use std::path::PathBuf;
use std::time::Duration;

use cdc_etcd::ConnectConfig;

use crate::error::{Error, Result};
use crate::pipeline::PipelineConfig;

/// Settings of the processors ([`ProcessorReactors`](crate::ProcessorReactors)).
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// When set, every pipeline start and stop appends a line to this file (see
    /// [`SpanLog`](crate::SpanLog)); the server's `debug.span-log`.
    pub span_log: Option<PathBuf>,
    /// The span pipelines' settings.
    pub pipeline: PipelineConfig,
    /// How the processors connect to upstreams (one client per upstream, shared by its spans).
    pub connect: ConnectConfig,
    /// How long closing the processors waits for the pipelines to stop.
    pub close_timeout: Duration,
    /// While pipelines run, the processor ticks at least this often, to pass their progress on
    /// (the owner's heartbeats usually tick it sooner).
    pub progress_interval: Duration,
    /// How many messages from the owner wait for the next tick; more are dropped (and counted):
    /// heartbeats repair what is lost.
    pub message_capacity: usize,
    /// How long a tick waits for room in the send queue to the owner before it drops the
    /// answers that do not fit (heartbeats repair them).
    pub send_timeout: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> ProcessorConfig {
        ProcessorConfig {
            span_log: None,
            pipeline: PipelineConfig::default(),
            connect: ConnectConfig::default(),
            close_timeout: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
            message_capacity: 16_384,
            send_timeout: Duration::from_millis(500),
        }
    }
}

impl ProcessorConfig {
    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<()> {
        if self.progress_interval.is_zero() {
            return Err(Error::InvalidConfig {
                field: "progress_interval",
                reason: "must be larger than 0",
            });
        }
        if self.pipeline.flush_interval.is_zero() {
            return Err(Error::InvalidConfig {
                field: "pipeline.flush_interval",
                reason: "must be larger than 0",
            });
        }
        if self.message_capacity == 0 {
            return Err(Error::InvalidConfig {
                field: "message_capacity",
                reason: "must be larger than 0",
            });
        }
        Ok(())
    }
}
