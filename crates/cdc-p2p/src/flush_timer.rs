//! The flush timer of a batching sender (the client's batches, the local receiver's): a
//! free-running interval while traffic flows, stopped while idle.
//!
//! TiCDC's client flushes on a free-running ticker (`runBatchSender` in `pkg/p2p/client.go`
//! of pingcap/tiflow), so an entry waits half an interval on average. A timer armed by a
//! batch's first entry makes that entry wait a whole interval instead (`docs/benchmarks.md`:
//! the p99 at 10k msg/s missed its target that way), while a ticker that never stops wakes an
//! idle capture at every interval. This one ticks on a fixed grid from the first entry after an
//! idle spell and stops at the first tick that follows an interval without entries.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// A flush timer; [`FlushTimer::traffic`] on every received chunk, flush at every
/// [`FlushTimer::tick`].
#[derive(Debug)]
pub(crate) struct FlushTimer {
    interval: Interval,
    /// Whether the interval runs.
    running: bool,
    /// Whether entries arrived since the last tick.
    traffic: bool,
}

impl FlushTimer {
    /// A stopped timer of `period` (at least 1 ms).
    pub(crate) fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        FlushTimer {
            interval,
            running: false,
            traffic: false,
        }
    }

    /// Notes that entries arrived; a stopped timer starts, its first tick one period away.
    /// A running timer keeps its phase.
    pub(crate) fn traffic(&mut self) {
        if !self.running {
            self.interval.reset();
            self.running = true;
        }
        self.traffic = true;
    }

    /// Resolves at the next tick of a running timer (the caller flushes then); never while
    /// stopped. A tick that follows a period without entries stops the timer.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled wait leaves the timer as it was.
    pub(crate) async fn tick(&mut self) {
        if !self.running {
            return std::future::pending().await;
        }
        self.interval.tick().await;
        if !std::mem::take(&mut self.traffic) {
            self.running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    const PERIOD: Duration = Duration::from_millis(10);

    /// Waits for the next tick for at most `within`; the time it came at, if it did.
    async fn next_tick(timer: &mut FlushTimer, within: Duration) -> Option<Instant> {
        tokio::time::timeout(within, timer.tick())
            .await
            .ok()
            .map(|()| Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_on_a_grid_while_traffic_flows_and_stops_when_idle() {
        let mut timer = FlushTimer::new(PERIOD);
        assert_eq!(next_tick(&mut timer, Duration::from_secs(10)).await, None);

        // The first entry after an idle spell starts the grid.
        let start = Instant::now();
        timer.traffic();
        assert_eq!(
            next_tick(&mut timer, PERIOD * 2).await,
            Some(start + PERIOD)
        );
        // An entry 2 ms after a flush is flushed on the grid, 8 ms later, not a period later.
        tokio::time::sleep(Duration::from_millis(2)).await;
        timer.traffic();
        assert_eq!(
            next_tick(&mut timer, PERIOD * 2).await,
            Some(start + PERIOD * 2)
        );
        // Steady traffic keeps the phase, however the entries fall.
        for k in 3..10 {
            tokio::time::sleep(Duration::from_millis(7)).await;
            timer.traffic();
            assert_eq!(
                next_tick(&mut timer, PERIOD * 2).await,
                Some(start + PERIOD * k)
            );
        }
        // A period without entries: one more tick, then the timer stops and wakes no one.
        assert_eq!(
            next_tick(&mut timer, PERIOD * 2).await,
            Some(start + PERIOD * 10)
        );
        assert_eq!(next_tick(&mut timer, Duration::from_secs(10)).await, None);

        // Traffic again: a new grid from that entry.
        let restart = Instant::now();
        timer.traffic();
        assert_eq!(
            next_tick(&mut timer, PERIOD * 2).await,
            Some(restart + PERIOD)
        );
    }
}
