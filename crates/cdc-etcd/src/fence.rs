//! The owner fence: the proof of leadership every owner transaction carries.
//!
//! The election (cdc-election) hands it to the winner of a campaign; the owner's etcd worker
//! (cdc-orchestrator, TiCDC's `pkg/orchestrator/etcd_worker.go`) adds its compare to every
//! transaction.

use crate::types::{Compare, CompareOp, Revision};

/// Proof of leadership: owner writes carry `create_revision(key) == create_revision`, so a
/// deposed owner's writes fail even when its data revisions are still current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerFence {
    /// The owner's election key (`.../__cdc_meta__/owner/<lease hex>`).
    pub key: Vec<u8>,
    /// The create revision of the election key when the campaign was won.
    pub create_revision: Revision,
}

impl OwnerFence {
    /// The guard to add to every owner transaction.
    pub fn compare(&self) -> Compare {
        Compare::CreateRevision {
            key: self.key.clone(),
            op: CompareOp::Equal,
            revision: self.create_revision,
        }
    }
}
