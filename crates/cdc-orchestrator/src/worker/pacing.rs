//! How the worker paces itself: its tick triggers and rate, and what stops it from outside.

use std::future::pending;
use std::time::Duration;

use cdc_etcd::WatchResponse;
use cdc_etcd::watch::ResilientWatch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::reactor::TickPoke;

/// How a worker paces its ticks.
pub(super) struct Pacing {
    /// At most one tick per interval (burst 2).
    pub(super) interval: Duration,
    /// An idle reactor is ticked this often.
    pub(super) heartbeat: Duration,
    /// Pokes that ask for a tick.
    pub(super) poke: TickPoke,
}

/// What woke the worker.
pub(super) enum Wake {
    /// The watch delivered an item (`None`: its task ended).
    Watch(Option<cdc_etcd::Result<WatchResponse>>),
    /// The reactor's owner asked for a tick.
    Poke,
    /// A deadline: a requested tick, the heartbeat, a commit retry or a stall report.
    Timer,
}

/// At most one tick per interval on average, with a burst of two (a generic cell rate
/// algorithm on tokio's clock, so that paused-time tests control it).
#[derive(Debug)]
pub(super) struct TickLimiter {
    pub(super) interval: Duration,
    /// The theoretical arrival time of the next tick at the nominal rate.
    pub(super) next_nominal: Instant,
}

impl TickLimiter {
    /// Ticks allowed at once beyond the rate.
    const BURST: u32 = 2;

    pub(super) fn new(interval: Duration, now: Instant) -> TickLimiter {
        TickLimiter {
            interval,
            next_nominal: now,
        }
    }

    /// The first instant a tick is allowed.
    pub(super) fn ready_at(&self) -> Instant {
        let tolerance = self.interval * (Self::BURST - 1);
        self.next_nominal
            .checked_sub(tolerance)
            .unwrap_or(self.next_nominal)
    }

    /// Takes a tick at `now` if allowed.
    pub(super) fn try_acquire(&mut self, now: Instant) -> bool {
        if now < self.ready_at() {
            return false;
        }
        self.next_nominal = self.next_nominal.max(now) + self.interval;
        true
    }
}

/// What ends a worker from outside: cancellation by its owner or the end of the session.
#[derive(Debug)]
pub(super) struct Stop {
    pub(super) cancel: CancellationToken,
    pub(super) session_done: Option<CancellationToken>,
}

impl Stop {
    /// Resolves, with the error that ends the worker, once it is cancelled or the session
    /// ends (cancellation wins when both happened).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on tokens.
    pub(super) async fn stopped(&self) -> Error {
        let session_done = async {
            match &self.session_done {
                Some(session_done) => session_done.cancelled().await,
                None => pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Error::Cancelled,
            () = session_done => Error::SessionDone,
        }
    }

    /// Runs `call` unless the worker is stopped first; then `call` is dropped where it waits
    /// and the stopping error is returned.
    pub(super) async fn guard<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            biased;
            err = self.stopped() => Err(err),
            result = call => result,
        }
    }
}

/// The next response of the watch; pending forever while no watch is open.
///
/// # Cancel safety
/// Cancel-safe: `ResilientWatch::recv` loses no response when cancelled.
pub(super) async fn next_watch_item(
    watch: &mut Option<ResilientWatch>,
) -> Option<cdc_etcd::Result<WatchResponse>> {
    match watch {
        Some(watch) => watch.recv().await,
        None => pending().await,
    }
}
