//! The etcd request and response vocabulary of this crate, so that no `etcd_client` type appears
//! in a public signature.

/// An etcd revision.
pub type Revision = i64;
/// An etcd lease id.
pub type LeaseId = i64;

/// A key and its value with etcd's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value; empty for a keys-only read.
    pub value: Vec<u8>,
    /// The revision of the key's last creation.
    pub create_revision: Revision,
    /// The revision of the key's last modification.
    pub mod_revision: Revision,
    /// The number of modifications since creation.
    pub version: i64,
    /// The lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

impl KeyValue {
    /// The key as text, with invalid UTF-8 replaced (for logs and errors).
    pub fn key_lossy(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// The answer to a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResponse {
    /// The store revision when the read was served.
    pub revision: Revision,
    /// The keys read, in the requested order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys match than were returned (a limit was hit).
    pub more: bool,
    /// The number of keys in the range.
    pub count: i64,
}

/// What to sort a range read by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortTarget {
    /// By key.
    Key,
    /// By version.
    Version,
    /// By create revision.
    Create,
    /// By mod revision.
    Mod,
    /// By value.
    Value,
}

/// The order of a sorted range read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

/// Options of a range read. The default reads exactly one key at the current revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Read every key that starts with the given key.
    pub prefix: bool,
    /// At most this many keys; 0 means no limit.
    pub limit: i64,
    /// Read at this revision; 0 means the current one.
    pub revision: Revision,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Sort the result.
    pub sort: Option<(SortTarget, SortOrder)>,
    /// Only keys created at or before this revision; 0 means no bound.
    pub max_create_revision: Revision,
}

impl GetOptions {
    /// A prefix read.
    pub fn prefix() -> GetOptions {
        GetOptions {
            prefix: true,
            ..GetOptions::default()
        }
    }
}

/// A comparison operator of a transaction guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Compare the key's value.
    Value {
        /// The key.
        key: Vec<u8>,
        /// The operator.
        op: CompareOp,
        /// The value to compare with.
        value: Vec<u8>,
    },
    /// Compare the key's create revision (0 when the key does not exist).
    CreateRevision {
        /// The key.
        key: Vec<u8>,
        /// The operator.
        op: CompareOp,
        /// The revision to compare with.
        revision: Revision,
    },
    /// Compare the key's mod revision (0 when the key does not exist).
    ModRevision {
        /// The key.
        key: Vec<u8>,
        /// The operator.
        op: CompareOp,
        /// The revision to compare with.
        revision: Revision,
    },
    /// Compare the key's version (0 when the key does not exist).
    Version {
        /// The key.
        key: Vec<u8>,
        /// The operator.
        op: CompareOp,
        /// The version to compare with.
        version: i64,
    },
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Put a value, attached to a lease when `lease != 0`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease, 0 for none.
        lease: LeaseId,
    },
    /// Delete a key, or every key with that prefix.
    Delete {
        /// The key or prefix.
        key: Vec<u8>,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
    /// Read a key or range.
    Get {
        /// The key.
        key: Vec<u8>,
        /// How to read.
        options: GetOptions,
    },
}

/// A transaction: if every compare holds, run `success`, otherwise `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// The guards.
    pub compares: Vec<Compare>,
    /// Operations run when every guard holds.
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The answer to one operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// A put was done.
    Put,
    /// A delete was done.
    Delete {
        /// How many keys were deleted.
        deleted: i64,
    },
    /// A read was done.
    Get(GetResponse),
}

/// The answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the guards held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease id.
    pub id: LeaseId,
    /// The TTL etcd granted, in seconds; etcd may raise a short requested TTL.
    pub ttl: i64,
}

/// The remaining life of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// Remaining seconds; -1 when the lease does not exist (expired or revoked).
    pub ttl: i64,
    /// The TTL granted at creation; 0 when the lease does not exist.
    pub granted_ttl: i64,
}

/// One answer on a lease keep-alive stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAliveResponse {
    /// The lease the answer is about.
    pub id: LeaseId,
    /// The new TTL; 0 or less means the lease is gone.
    pub ttl: i64,
}

/// Options of a watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Watch every key with the given prefix.
    pub prefix: bool,
    /// The first revision to deliver (inclusive); 0 means "from now".
    pub start_revision: Revision,
    /// Ask etcd for periodic progress notifications.
    pub progress_notify: bool,
    /// Include the previous key-value in events.
    pub prev_kv: bool,
}

/// The kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or modified.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change delivered by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the change; for a delete, the key with the delete's mod revision.
    pub kv: KeyValue,
    /// The key-value before the change, when asked for.
    pub prev_kv: Option<KeyValue>,
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    /// The store revision of the response header.
    pub revision: Revision,
    /// The watcher this response belongs to (-1 for a broadcast progress answer on etcd 3.4).
    pub watch_id: i64,
    /// The watch was just created.
    pub created: bool,
    /// The watch was cancelled by the server.
    pub canceled: bool,
    /// When > 0, the requested revision was compacted up to this revision.
    pub compact_revision: Revision,
    /// Why the server cancelled the watch (empty on etcd 3.4 for compaction).
    pub cancel_reason: String,
    /// The changes, in revision order.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// Whether this is a progress notification: no events, not a creation, not a cancel.
    pub fn is_progress_notify(&self) -> bool {
        !self.created && !self.canceled && self.events.is_empty() && self.compact_revision == 0
    }
}
