//! The capture's identity (the capture key's JSON) and its liveness.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

/// The value of the capture key: TiCDC's exact JSON, all six keys in this order (§1.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// The capture ID, a UUIDv4.
    pub id: String,
    /// The advertise address.
    pub address: String,
    /// The release version.
    pub version: String,
    /// The build hash.
    #[serde(rename = "git-hash")]
    pub git_hash: String,
    /// The absolute path of the executable, or empty.
    #[serde(rename = "deploy-path")]
    pub deploy_path: String,
    /// Unix seconds at which this incarnation was created.
    #[serde(rename = "start-timestamp")]
    pub start_timestamp: i64,
}

/// Whether the capture accepts work: `Alive` until a drain makes it `Stopping`, for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Running normally.
    Alive,
    /// Draining: no campaign, no new work.
    Stopping,
}

impl Liveness {
    /// TiCDC's integer form (0 alive, 1 stopping), used in `/status`.
    pub fn as_i32(self) -> i32 {
        match self {
            Liveness::Alive => 0,
            Liveness::Stopping => 1,
        }
    }
}

/// A liveness shared between the capture and its components. It only moves Alive to Stopping.
#[derive(Debug, Default)]
pub struct AtomicLiveness(AtomicU8);

impl AtomicLiveness {
    /// The current value.
    pub fn load(&self) -> Liveness {
        match self.0.load(Ordering::SeqCst) {
            0 => Liveness::Alive,
            _ => Liveness::Stopping,
        }
    }

    /// Moves to Stopping; returns whether this call made the change.
    pub fn store_stopping(&self) -> bool {
        self.0
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_info_json_is_ticdc_s() {
        let info = CaptureInfo {
            id: "9ff5".to_owned(),
            address: "127.0.0.1:8300".to_owned(),
            version: "dev".to_owned(),
            ..CaptureInfo::default()
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"id":"9ff5","address":"127.0.0.1:8300","version":"dev","git-hash":"","deploy-path":"","start-timestamp":0}"#
        );
    }

    #[test]
    fn liveness_is_one_way() {
        let liveness = AtomicLiveness::default();
        assert_eq!(liveness.load(), Liveness::Alive);
        assert!(liveness.store_stopping());
        assert!(!liveness.store_stopping());
        assert_eq!(liveness.load(), Liveness::Stopping);
    }
}
