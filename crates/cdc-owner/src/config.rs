//! The owner's settings.

use std::time::Duration;

use cdc_scheduler::SchedulerConfig;

use crate::error::{Error, Result};
use crate::feed::RetryPolicy;

/// Settings of the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerConfig {
    /// The scheduler's knobs.
    pub scheduler: SchedulerConfig,
    /// How changefeed errors are retried.
    pub retry: RetryPolicy,
    /// The shortest time between two status writes of one changefeed: the checkpoint is written
    /// at most this often (TiCDC writes it every owner tick, 50 ms).
    pub checkpoint_interval: Duration,
    /// The most changefeed statuses written in one tick: the rest wait for the next ticks, so
    /// that the owner sends at most one status transaction per tick.
    pub max_status_writes_per_tick: usize,
    /// How many ToOwner messages wait for the owner's tick at most; more are dropped and counted
    /// (heartbeats repair them).
    pub message_queue: usize,
    /// How many API requests wait for the owner's tick at most; more are answered 503.
    pub api_queue: usize,
}

impl Default for OwnerConfig {
    fn default() -> Self {
        OwnerConfig {
            scheduler: SchedulerConfig::default(),
            retry: RetryPolicy::default(),
            checkpoint_interval: Duration::from_millis(100),
            max_status_writes_per_tick: 100,
            message_queue: 65_536,
            api_queue: 256,
        }
    }
}

impl OwnerConfig {
    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<()> {
        self.scheduler.validate()?;
        if self.retry.backoff_initial.is_zero() {
            return Err(Error::InvalidConfig {
                field: "retry.backoff_initial",
                reason: "must be larger than 0",
            });
        }
        if self.retry.backoff_max < self.retry.backoff_initial {
            return Err(Error::InvalidConfig {
                field: "retry.backoff_max",
                reason: "must be at least retry.backoff_initial",
            });
        }
        // One transaction holds at most 126 keys besides the fence and the counter.
        if self.max_status_writes_per_tick == 0 || self.max_status_writes_per_tick > 120 {
            return Err(Error::InvalidConfig {
                field: "max_status_writes_per_tick",
                reason: "must be in 1..=120",
            });
        }
        if self.message_queue == 0 || self.api_queue == 0 {
            return Err(Error::InvalidConfig {
                field: "message_queue",
                reason: "queues must hold at least one entry",
            });
        }
        Ok(())
    }
}
