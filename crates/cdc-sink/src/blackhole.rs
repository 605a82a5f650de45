//! [`BlackholeSink`]: counts changes and bytes and drops them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cdc_model::ChangeEvent;

use crate::error::Result;
use crate::sink::Sink;

/// What a [`BlackholeSink`] has seen; shared, so a metric or a test reads it while the sink runs.
#[derive(Debug, Default)]
pub struct BlackholeStats {
    events: AtomicU64,
    bytes: AtomicU64,
    flushes: AtomicU64,
}

impl BlackholeStats {
    /// Changes written.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Bytes of keys and values written.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Flushes.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

/// The `blackhole://` sink: every write succeeds at once and is dropped; every flush is durable.
#[derive(Debug, Clone, Default)]
pub struct BlackholeSink {
    stats: Arc<BlackholeStats>,
}

impl BlackholeSink {
    /// A sink with fresh counters.
    pub fn new() -> BlackholeSink {
        BlackholeSink::default()
    }

    /// A sink adding to `stats` (several spans may share one set of counters).
    pub fn with_stats(stats: Arc<BlackholeStats>) -> BlackholeSink {
        BlackholeSink { stats }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<BlackholeStats> {
        &self.stats
    }
}

impl Sink for BlackholeSink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        let bytes: usize = events.iter().map(ChangeEvent::size).sum();
        self.stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn close(self) -> Result<()> {
        Ok(())
    }
}
