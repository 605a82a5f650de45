//! Batching of patch groups into transactions (TiCDC's `batch.go`, with the copy-then-merge fix).
//!
//! Each group is evaluated on a view of its own and merged into the batch only when the batch
//! can take it, so a group is never applied twice and a group at exactly the limit still makes
//! progress.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::patch::{Key, PatchGroup, RawState, Value, evaluate_group};

/// Largest payload of one transaction: `2*len(key) + len(value)` summed over its keys.
pub const TXN_MAX_SIZE: usize = 1024 * (1024 + 256);
/// etcd's default `--max-txn-ops`: it bounds the compares and the success ops separately.
pub const TXN_MAX_OPS: usize = 128;

/// What one transaction may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TxnLimits {
    /// Keys one transaction may touch.
    pub(crate) max_keys: usize,
    /// Bytes one transaction may carry.
    pub(crate) max_size: usize,
}

impl TxnLimits {
    /// The limits of a worker: one compare goes to the delete counter and, when `fenced`, one
    /// to the owner key, so a transaction can touch 127 keys (126 when fenced).
    pub(crate) fn for_worker(fenced: bool) -> Self {
        TxnLimits {
            max_keys: TXN_MAX_OPS - 1 - usize::from(fenced),
            max_size: TXN_MAX_SIZE,
        }
    }
}

/// The changes of the leading groups that fit in one transaction.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Every changed key with its new value (`None` deletes).
    pub(crate) changes: BTreeMap<Key, Option<Value>>,
    /// How many leading groups the batch holds.
    pub(crate) n_groups: usize,
    /// The summed size of the groups.
    pub(crate) size: usize,
}

fn changes_size(changes: &BTreeMap<Key, Option<Value>>) -> usize {
    changes
        .iter()
        .map(|(key, value)| 2 * key.len() + value.as_ref().map_or(0, Vec::len))
        .sum()
}

/// Evaluates the leading groups of `groups` against `base` and merges those that fit.
///
/// The first group is always taken unless it alone exceeds the limits, which is
/// [`Error::TxnSizeExceed`] or [`Error::TxnOpsExceed`]. A patch error other than
/// [`Error::EtcdIgnore`] aborts the batch.
pub(crate) fn next_batch(
    base: &RawState,
    groups: &[PatchGroup],
    limits: TxnLimits,
) -> Result<Batch> {
    let mut batch = Batch::default();
    for (index, group) in groups.iter().enumerate() {
        let changes = evaluate_group(base, &batch.changes, group)?;
        let size = changes_size(&changes);
        if index == 0 {
            if size > limits.max_size {
                return Err(Error::TxnSizeExceed {
                    size,
                    max: limits.max_size,
                });
            }
            if changes.len() > limits.max_keys {
                return Err(Error::TxnOpsExceed {
                    ops: changes.len(),
                    max: limits.max_keys,
                });
            }
        }
        let n_new_keys = changes
            .keys()
            .filter(|key| !batch.changes.contains_key(*key))
            .count();
        if batch.size + size > limits.max_size || batch.changes.len() + n_new_keys > limits.max_keys
        {
            break;
        }
        batch.changes.extend(changes);
        batch.size += size;
        batch.n_groups += 1;
    }
    Ok(batch)
}

#[cfg(test)]
mod tests;
