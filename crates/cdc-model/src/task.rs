//! [`TaskPosition`], the value of `.../task/position/<capture>/<changefeed>`.

use serde::{Deserialize, Serialize};

use crate::changefeed::RunningError;
use crate::json::{null_as_default, serde_object_only};

/// A processor's progress on one changefeed. The processor writes it; the owner reads it
/// and clears `error` and `warning`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct TaskPosition {
    /// Everything up to this TSO is durable in the sink.
    #[serde(rename = "checkpoint-ts", deserialize_with = "null_as_default")]
    pub checkpoint_ts: u64,
    /// Every change up to this TSO has been received.
    #[serde(rename = "resolved-ts", deserialize_with = "null_as_default")]
    pub resolved_ts: u64,
    /// The number of changes processed.
    #[serde(deserialize_with = "null_as_default")]
    pub count: u64,
    /// An error the processor reports to the owner.
    pub error: Option<RunningError>,
    /// A warning the processor reports to the owner.
    pub warning: Option<RunningError>,
}

serde_object_only!(TaskPosition);
