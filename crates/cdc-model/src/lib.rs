//! The vocabulary of the capture layer: identifiers, the JSON values TiCDC keeps in etcd,
//! and the enums and timestamps the other crates reason about.
//!
//! This crate is pure data. It has no async runtime, performs no IO and never reads a
//! clock; callers pass times in. The etcd key layout of a cluster is here too ([`key`]): it is
//! pure string work, so the pure orchestrator states parse keys without an etcd client.
//!
//! Key types: [`CaptureInfo`], [`ChangeFeedInfo`], [`ChangeFeedStatus`], [`TaskPosition`],
//! [`UpstreamInfo`], [`RunningError`], [`ChangeFeedId`], [`GoTime`], [`FeedState`],
//! [`AdminJobType`], [`Liveness`], and for the data plane [`ChangeEvent`] and
//! [`ResolvedRevision`].
//!
//! Invariants:
//! * Every value type decodes what TiCDC (Go `encoding/json`) writes: missing fields take
//!   zero values, `null` becomes `None` (or the zero value for non-optional fields), and
//!   unknown fields are ignored, except on [`ChangeFeedInfo`], which keeps them so that a
//!   read-modify-write loses nothing.
//! * Encoding writes fields in Go's declaration order; [`to_go_json`] also escapes like Go,
//!   so byte comparisons against values written by TiCDC hold.
//! * u64 values keep full precision; nothing goes through f64.
//! * Data that comes from etcd or the network never panics; it yields an [`Error`].
#![warn(missing_docs)]

mod capture;
mod changefeed;
mod error;
mod event;
mod go_time;
mod ids;
mod json;
pub mod key;
mod report;
mod task;
mod tso;
mod upstream;

pub use capture::{AtomicLiveness, CaptureInfo, Liveness, list_versions};
pub use changefeed::{
    AdminJobType, ChangeFeedInfo, ChangeFeedStatus, FeedState, RunningError, is_gc_fast_fail_code,
};
pub use error::{Error, Result};
pub use event::{ChangeEvent, OpType, ResolvedRevision};
pub use go_time::GoTime;
pub use ids::{
    CaptureId, ChangeFeedId, DEFAULT_NAMESPACE, MAX_ID_LEN, RESERVED_CLUSTER_IDS, UpstreamId,
    new_capture_id, validate_changefeed_id, validate_cluster_id, validate_namespace,
};
pub use json::{from_json, to_go_json};
pub use report::ErrorReport;
pub use task::TaskPosition;
pub use tso::{compose_ts, extract_logical, extract_physical};
pub use upstream::UpstreamInfo;

#[cfg(test)]
mod tests;
