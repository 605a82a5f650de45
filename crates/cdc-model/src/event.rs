//! The data plane's vocabulary: one change of an upstream key, and the resolved revision.

use std::fmt;

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpType {
    /// The key was created or modified.
    Put,
    /// The key was deleted.
    Delete,
}

impl OpType {
    /// The lowercase name (`put`, `delete`), as sinks write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Put => "put",
            OpType::Delete => "delete",
        }
    }
}

impl fmt::Display for OpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of one upstream key, as a source hands it to a sink.
///
/// Within a span, changes arrive in revision order; the changes of one upstream transaction share
/// a revision. Delivery is at least once, so a consumer drops a change whose revision it has
/// already applied for that key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangeEvent {
    /// The key.
    pub key: Vec<u8>,
    /// The value after the change; `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// The upstream revision of the change (the key's mod revision).
    pub revision: u64,
    /// Put or delete.
    pub op: OpType,
}

impl ChangeEvent {
    /// A put of `value` at `revision`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, revision: u64) -> ChangeEvent {
        ChangeEvent {
            key: key.into(),
            value: Some(value.into()),
            revision,
            op: OpType::Put,
        }
    }

    /// A delete at `revision`.
    pub fn delete(key: impl Into<Vec<u8>>, revision: u64) -> ChangeEvent {
        ChangeEvent {
            key: key.into(),
            value: None,
            revision,
            op: OpType::Delete,
        }
    }

    /// The bytes the change carries (key and value), for accounting.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// A span's resolved revision: every change of the span at or below it has been handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolvedRevision(pub u64);

impl fmt::Display for ResolvedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
