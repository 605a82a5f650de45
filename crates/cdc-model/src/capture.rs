//! [`CaptureInfo`], the value of a capture key, and the capture's [`Liveness`].

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};

use serde::{Deserialize, Serialize};

use crate::ids::CaptureId;
use crate::json::{null_as_default, serde_object_only};

/// The value of the capture key `/<root>/<cluster>/__cdc_meta__/capture/<id>`.
///
/// All six keys are always written, in this order, with no `omitempty`; tidb-dashboard
/// discovers TiCDC nodes by this key and format.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct CaptureInfo {
    /// The capture ID.
    #[serde(deserialize_with = "null_as_default")]
    pub id: CaptureId,
    /// The advertised `host:port` peers use for gRPC.
    #[serde(rename = "address", deserialize_with = "null_as_default")]
    pub address: String,
    /// The release version.
    #[serde(deserialize_with = "null_as_default")]
    pub version: String,
    /// The build hash.
    #[serde(rename = "git-hash", deserialize_with = "null_as_default")]
    pub git_hash: String,
    /// The absolute path of the executable, `""` if unknown.
    #[serde(rename = "deploy-path", deserialize_with = "null_as_default")]
    pub deploy_path: String,
    /// Unix seconds at which this incarnation was created.
    #[serde(rename = "start-timestamp", deserialize_with = "null_as_default")]
    pub start_timestamp: i64,
}

serde_object_only!(CaptureInfo);

/// The versions of the given captures, in order, including empty ones.
pub fn list_versions(captures: &[CaptureInfo]) -> Vec<String> {
    captures
        .iter()
        .map(|capture| capture.version.clone())
        .collect()
}

/// Whether a capture accepts new work. Never stored in etcd; reported over HTTP as its
/// integer value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Liveness {
    /// The capture is running normally.
    #[default]
    Alive = 0,
    /// The capture is draining or shutting down. It never becomes Alive again.
    Stopping = 1,
}

impl Liveness {
    /// The integer value (0 Alive, 1 Stopping).
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "Alive",
            Liveness::Stopping => "Stopping",
        })
    }
}

/// A [`Liveness`] shared between threads. The only transition is Alive to Stopping.
#[derive(Debug, Default)]
pub struct AtomicLiveness(AtomicI32);

impl AtomicLiveness {
    /// A new liveness, Alive.
    pub const fn new() -> Self {
        AtomicLiveness(AtomicI32::new(Liveness::Alive as i32))
    }

    /// The current liveness.
    pub fn load(&self) -> Liveness {
        if self.0.load(Ordering::SeqCst) == Liveness::Alive as i32 {
            Liveness::Alive
        } else {
            Liveness::Stopping
        }
    }

    /// Moves to Stopping with a compare-and-swap from Alive. Returns `true` if this call
    /// made the transition, `false` if the liveness was already Stopping.
    pub fn store_stopping(&self) -> bool {
        self.0
            .compare_exchange(
                Liveness::Alive as i32,
                Liveness::Stopping as i32,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests;
