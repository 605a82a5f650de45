//! Data patches: pure functions from the committed values to the values a transaction writes
//! (TiCDC's `pkg/orchestrator/interfaces.go`).
//!
//! A patch sees the values through a [`PatchView`]: the worker's committed snapshot, overlaid
//! with the changes of the groups already accepted into the current batch, overlaid with the
//! changes of the group being evaluated. The view plays the role of TiCDC's `(values, changed)`
//! pair: every key a patch sets is a changed key. Patches are re-run on every commit attempt, so
//! they must be pure.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// An etcd revision: etcd's plain `i64`, the same type as the etcd client's revisions. Spelled
/// here so that this pure module names no IO crate.
pub(crate) type Revision = i64;

/// An etcd key, as bytes.
pub type Key = Vec<u8>;
/// An etcd value, as bytes.
pub type Value = Vec<u8>;

/// One key of the worker's committed snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The value.
    pub value: Value,
    /// The revision of the key's last modification.
    pub mod_revision: Revision,
    /// The revision of the key's creation (the owner fence compares it).
    pub create_revision: Revision,
}

/// The committed snapshot a worker evaluates patches against.
pub type RawState = HashMap<Key, RawEntry>;

/// The values a patch reads and writes: committed values overlaid with pending changes.
pub struct PatchView<'a> {
    base: &'a RawState,
    batch: &'a BTreeMap<Key, Option<Value>>,
    group: BTreeMap<Key, Option<Value>>,
}

impl<'a> PatchView<'a> {
    /// A view over `base` with the accepted `batch` changes applied.
    pub(crate) fn new(base: &'a RawState, batch: &'a BTreeMap<Key, Option<Value>>) -> Self {
        PatchView {
            base,
            batch,
            group: BTreeMap::new(),
        }
    }

    /// The current value of `key`, `None` when absent.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        if let Some(value) = self.group.get(key) {
            return value.as_deref();
        }
        if let Some(value) = self.batch.get(key) {
            return value.as_deref();
        }
        self.base.get(key).map(|entry| entry.value.as_slice())
    }

    /// Sets `key` to `value` (`None` deletes it) and marks it changed.
    pub fn set(&mut self, key: Key, value: Option<Value>) {
        self.group.insert(key, value);
    }

    /// The keys this view's group changed, with their new values.
    pub(crate) fn into_changes(self) -> BTreeMap<Key, Option<Value>> {
        self.group
    }
}

/// A change to the shared state, re-run on every commit attempt.
///
/// Errors: [`Error::EtcdIgnore`] skips this patch, [`Error::EtcdTryAgain`] aborts the commit
/// attempt so that it is retried later on fresher values; any other error is fatal to the worker.
pub trait DataPatch: Send + Sync {
    /// Applies the patch to `view`.
    fn patch(&self, view: &mut PatchView<'_>) -> Result<()>;
}

/// The outcome of a [`SingleDataPatch`] function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Leave the key as it is.
    Unchanged,
    /// Write the value, or delete the key when `None`.
    Set(Option<Value>),
}

/// The function of a [`SingleDataPatch`]: old value in, outcome out.
pub type PatchFn = Box<dyn Fn(Option<&[u8]>) -> Result<PatchOutcome> + Send + Sync>;

/// A patch of one key: `f(old)` gives the new value, or says the key is unchanged.
pub struct SingleDataPatch {
    key: Key,
    func: PatchFn,
}

impl SingleDataPatch {
    /// A patch of `key` computed by `func`, which must be pure.
    pub fn new(
        key: impl Into<Key>,
        func: impl Fn(Option<&[u8]>) -> Result<PatchOutcome> + Send + Sync + 'static,
    ) -> Self {
        SingleDataPatch {
            key: key.into(),
            func: Box::new(func),
        }
    }

    /// The patched key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl DataPatch for SingleDataPatch {
    fn patch(&self, view: &mut PatchView<'_>) -> Result<()> {
        match (self.func)(view.get(&self.key))? {
            PatchOutcome::Unchanged => Ok(()),
            PatchOutcome::Set(value) => {
                view.set(self.key.clone(), value);
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for SingleDataPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleDataPatch")
            .field("key", &String::from_utf8_lossy(&self.key))
            .finish_non_exhaustive()
    }
}

/// A group of patches committed atomically.
pub type PatchGroup = Vec<Box<dyn DataPatch>>;

/// Runs `group` on a fresh view over `base` and `batch`, honouring [`Error::EtcdIgnore`].
pub(crate) fn evaluate_group(
    base: &RawState,
    batch: &BTreeMap<Key, Option<Value>>,
    group: &[Box<dyn DataPatch>],
) -> Result<BTreeMap<Key, Option<Value>>> {
    let mut view = PatchView::new(base, batch);
    for patch in group {
        match patch.patch(&mut view) {
            Ok(()) | Err(Error::EtcdIgnore) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(view.into_changes())
}

#[cfg(test)]
mod tests;
