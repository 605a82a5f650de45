//! cdc-orchestrator: the etcd worker and the reactor contracts.
//!
//! - [`EtcdWorker`] is the IO shell: it keeps a consistent snapshot of a key prefix, ticks a
//!   [`Reactor`] over a [`ReactorState`] and commits the state's [`DataPatch`] groups as
//!   compare-and-swap transactions (TiCDC's `pkg/orchestrator/etcd_worker.go`). It ticks when the snapshot changed, when
//!   poked through a [`TickPoke`], at the deadline a tick asked for ([`NextTick`]) and on a slow
//!   heartbeat, so that an idle reactor costs next to nothing.
//! - [`WorkerMetrics`] counts the worker's ticks, commits, conflicts, commit latency and
//!   resyncs for a capture's `/metrics`.
//! - [`GlobalReactorState`] and [`ChangefeedReactorState`] are TiCDC's cluster and changefeed
//!   states; [`key`] holds the relative-key helpers of a worker prefix.
//! - Everything else is pure: states and patches perform no IO and read no clock; the time is
//!   passed in.
//!
//! Invariants: the reactor only sees a snapshot at one etcd revision, at or after the worker's
//! own last commit (read-your-writes), and never a partially applied transaction. A patch group
//! is committed at most once per accepted evaluation and never applied twice.
//! This crate never depends on tonic or p2p.
//!
//! Not here: the owner, controller and processor reactors that run on the worker (cdc-capture).

#![warn(missing_docs)]

mod batch;
mod changefeed;
mod error;
mod global;
pub mod key;
mod metrics;
mod patch;
mod reactor;
mod worker;

pub use batch::{TXN_MAX_OPS, TXN_MAX_SIZE};
pub use cdc_etcd::OwnerFence;
pub use changefeed::ChangefeedReactorState;
pub use error::{Error, Result};
pub use global::{CaptureEvent, GlobalReactorState};
pub use metrics::{
    COMMIT_LATENCY_BOUNDS, ExponentialBuckets, HistogramSnapshot, LatencySnapshot, TICK_DURATION,
    TXN_EXEC_DURATION, TXN_SIZE, WorkerMetrics, WorkerMetricsSnapshot,
};
pub use patch::{
    DataPatch, Key, PatchFn, PatchGroup, PatchOutcome, PatchView, RawEntry, RawState,
    SingleDataPatch, Value,
};
pub use reactor::{NextTick, Reactor, ReactorState, TickPoke};
pub use worker::{DEFAULT_HEARTBEAT, EtcdWorker};
