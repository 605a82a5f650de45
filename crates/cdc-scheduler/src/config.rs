//! The coordinator's tuning knobs, TiCDC's `SchedulerConfig` (`pkg/config/scheduler_config.go`
//! in pingcap/tiflow) reduced to what this scheduler uses.

use std::time::Duration;

use crate::error::{Error, Result};

/// Settings of the [`Coordinator`](crate::Coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How often the owner sends heartbeats to every capture (TiCDC: two owner ticks of 50 ms).
    pub heartbeat_interval: Duration,
    /// The most spans of one changefeed that may be in the middle of an add or a move at once
    /// before the coordinator starts another move (TiCDC's `max-task-concurrency`, 10, which is
    /// per changefeed: each changefeed has its own replication manager).
    pub max_task_concurrency: usize,
    /// The most spans of one changefeed the coordinator starts adding in one tick (TiCDC's
    /// `add-table-batch-size`, 50). Adds are not bounded by `max_task_concurrency`.
    pub add_batch_size: usize,
    /// How often the coordinator looks for an uneven spread to correct by moves (TiCDC's
    /// `check-balance-interval`, one minute).
    pub balance_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            heartbeat_interval: Duration::from_millis(100),
            max_task_concurrency: 10,
            add_batch_size: 50,
            balance_interval: Duration::from_secs(60),
        }
    }
}

impl SchedulerConfig {
    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval.is_zero() {
            return Err(Error::InvalidConfig {
                field: "heartbeat_interval",
                reason: "must be larger than 0",
            });
        }
        if self.max_task_concurrency == 0 {
            return Err(Error::InvalidConfig {
                field: "max_task_concurrency",
                reason: "must be larger than 0",
            });
        }
        if self.add_batch_size == 0 {
            return Err(Error::InvalidConfig {
                field: "add_batch_size",
                reason: "must be larger than 0",
            });
        }
        Ok(())
    }
}
