//! The error types of this crate: [`Error`] of the generic etcd client (calls, retries,
//! watches), which names no TiCDC concept, and [`CdcError`] of [`crate::CdcEtcdClient`], the
//! TiCDC metadata operations, which wraps it.

use std::time::Duration;

use crate::types::{LeaseId, Revision};

/// A gRPC status code, mirrored so that no transport type appears in our signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "the names are gRPC's status codes")]
pub enum RpcCode {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// Errors of the generic etcd client: [`crate::EtcdClient`], [`crate::RetryingClient`] and
/// [`crate::watch`]. Nothing here knows the TiCDC key layout or its metadata.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call did not complete before its deadline.
    #[error("etcd {op} timed out after {after:?} (endpoints {endpoints})")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The endpoints the client talks to.
        endpoints: String,
        /// The deadline that expired.
        after: Duration,
    },
    /// etcd answered with an error status, or the transport failed.
    #[error("etcd {op} failed with {code:?}: {message} (endpoints {endpoints})")]
    Rpc {
        /// The operation.
        op: &'static str,
        /// The gRPC status code.
        code: RpcCode,
        /// The status message.
        message: String,
        /// The endpoints the client talks to.
        endpoints: String,
    },
    /// The requested revision has been compacted away.
    #[error(
        "[CDC:ErrCompacted]required revision {requested} has been compacted (compact revision {compacted})"
    )]
    Compacted {
        /// The revision that was asked for (0 when unknown).
        requested: Revision,
        /// The compaction revision (0 when unknown).
        compacted: Revision,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease {lease_id:x} not found")]
    LeaseNotFound {
        /// The lease.
        lease_id: LeaseId,
    },
    /// A stream ended or broke; the caller should open a new one.
    #[error("etcd {op} stream broken: {message}")]
    StreamBroken {
        /// The stream.
        op: &'static str,
        /// What happened.
        message: String,
    },
    /// etcd cancelled a watch for another reason than compaction; `code` is the gRPC code of
    /// etcd's error with that message (`Unknown` for a reason this crate does not know).
    #[error("etcd cancelled the watch ({code:?}): {reason}")]
    WatchCancelled {
        /// The code of the reason.
        code: RpcCode,
        /// etcd's cancel reason.
        reason: String,
    },
    /// etcd refused or cancelled a watch for a cause that re-opening it cannot cure (permission
    /// denied, an invalid request); `source` is the refusal.
    #[error("etcd refused the watch from revision {revision}")]
    WatchRefused {
        /// The revision the watch was opened from.
        revision: Revision,
        /// The refusal: a non-retryable open error, or the server's cancel as an `Rpc` error.
        #[source]
        source: Box<Error>,
    },
    /// A watch heard nothing from etcd (no event, no progress notification) for `silence`,
    /// through every re-open; `last` is the last error met meanwhile, if any.
    #[error("etcd watch from revision {revision} silent for {silence:?}")]
    WatchStalled {
        /// The revision the watch was resuming from.
        revision: Revision,
        /// How long it was silent.
        silence: Duration,
        /// The last error met while re-opening it.
        #[source]
        last: Option<Box<Error>>,
    },
    /// The operation was cancelled by the caller.
    #[error("context canceled")]
    Cancelled,
    /// A retried call did not succeed before the deadline of the whole call.
    #[error(
        "etcd {op} did not succeed within {after:?} (endpoints {endpoints}){}",
        last.as_ref().map(|last| format!(", last error: {last}")).unwrap_or_default()
    )]
    DeadlineExceeded {
        /// The operation.
        op: &'static str,
        /// The deadline of the whole call.
        after: Duration,
        /// The endpoints the client talks to.
        endpoints: String,
        /// The error of the last attempt, if one failed before the deadline.
        last: Option<Box<Error>>,
    },
    /// A retried call failed on every attempt; `last` is the error of the last one.
    #[error("[CDC:ErrReachMaxTry]reach maximum try: {tries}, error: {last}")]
    ReachMaxTry {
        /// How many attempts were made.
        tries: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },
    /// A value read from etcd is not what its key must hold (for example a non-numeric version).
    #[error("invalid value under {key}: {reason}")]
    InvalidValue {
        /// The key whose value is bad.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS credential file of an upstream cannot be used.
    #[error("TLS {key} {path}: {reason}")]
    Credentials {
        /// The upstream info's key naming the file (`ca-path`, `cert-path`, `key-path`).
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Errors of [`crate::CdcEtcdClient`]: the TiCDC metadata is missing, malformed or refused,
/// or the etcd call under it failed ([`CdcError::Etcd`]).
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// An etcd call failed.
    #[error(transparent)]
    Etcd(#[from] Error),
    /// A key is not a well-formed key of the cluster.
    #[error("[CDC:ErrInvalidEtcdKey]invalid key: {key}: {reason}")]
    InvalidEtcdKey {
        /// The key (invalid UTF-8 replaced).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value read from etcd could not be decoded.
    #[error("decode the value of {key}")]
    Decode {
        /// The key whose value is bad.
        key: String,
        /// The decoding error.
        #[source]
        source: cdc_model::Error,
    },
    /// A value could not be encoded for etcd.
    #[error("encode the value of {key}")]
    Encode {
        /// The key the value was for.
        key: String,
        /// The encoding error.
        #[source]
        source: cdc_model::Error,
    },
    /// The capture key does not exist.
    #[error("[CDC:ErrCaptureNotExist]capture not exists, {capture_id}")]
    CaptureNotExist {
        /// The capture.
        capture_id: String,
    },
    /// The changefeed info (or status) key does not exist.
    #[error("[CDC:ErrChangeFeedNotExists]changefeed not exists, {changefeed}")]
    ChangeFeedNotExists {
        /// The changefeed, as `namespace/id`.
        changefeed: String,
    },
    /// The upstream key does not exist.
    #[error("[CDC:ErrUpstreamNotFound]upstream {upstream_id} not found in namespace {namespace}")]
    UpstreamNotFound {
        /// The namespace.
        namespace: String,
        /// The upstream ID.
        upstream_id: u64,
    },
    /// A changefeed names another upstream than the one it is saved with.
    #[error(
        "[CDC:ErrUpstreamMissMatch]upstream missmatch,old: {changefeed_upstream}, new {upstream}"
    )]
    UpstreamMissMatch {
        /// The changefeed's `upstream-id`.
        changefeed_upstream: u64,
        /// The upstream's ID.
        upstream: u64,
    },
    /// There is no owner key.
    #[error("[CDC:ErrOwnerNotFound]owner not found")]
    OwnerNotFound,
    /// The owner key belongs to another capture.
    #[error("[CDC:ErrNotOwner]this capture is not a owner")]
    NotOwner,
    /// There is no owner candidate at all (etcd's `ErrElectionNoLeader`).
    #[error("election: no leader")]
    ElectionNoLeader,
    /// A guarded metadata transaction did not apply.
    #[error(
        "[DFLOW:ErrMetaOpFailed]unexpected meta operation failure: {op} changefeed {changefeed}"
    )]
    MetaOpFailed {
        /// `Create` or `Update`.
        op: &'static str,
        /// The changefeed, as `namespace/id`.
        changefeed: String,
    },
    /// etcd holds the keys of another TiCDC cluster.
    #[error("[CDC:ErrMultipleCDCClustersExist]multiple TiCDC clusters exist: found key {key}")]
    MultipleCdcClustersExist {
        /// The first foreign key found.
        key: String,
    },
}

/// Whether a call that failed with `code` may succeed later: every code but refused
/// arguments, permissions, authentication, missing methods and missing objects.
fn code_is_retryable(code: RpcCode) -> bool {
    match code {
        RpcCode::InvalidArgument
        | RpcCode::PermissionDenied
        | RpcCode::Unimplemented
        | RpcCode::OutOfRange
        | RpcCode::Unauthenticated
        | RpcCode::NotFound => false,
        RpcCode::Ok
        | RpcCode::Cancelled
        | RpcCode::Unknown
        | RpcCode::DeadlineExceeded
        | RpcCode::AlreadyExists
        | RpcCode::ResourceExhausted
        | RpcCode::FailedPrecondition
        | RpcCode::Aborted
        | RpcCode::Internal
        | RpcCode::Unavailable
        | RpcCode::DataLoss => true,
    }
}

/// The result type of the generic etcd client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The result type of [`crate::CdcEtcdClient`].
pub type CdcResult<T, E = CdcError> = std::result::Result<T, E>;

impl Error {
    /// Whether a later attempt of the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Rpc { code, .. } | Error::WatchCancelled { code, .. } => {
                code_is_retryable(*code)
            }
            Error::StreamBroken { .. } => true,
            Error::Compacted { .. } => false,
            Error::WatchRefused { .. } => false,
            // A new watch (in a new incarnation) may find etcd healthy again.
            Error::WatchStalled { .. } => true,
            Error::LeaseNotFound { .. } => false,
            Error::Cancelled => false,
            // The whole call may succeed later; the caller decides.
            Error::DeadlineExceeded { .. } => true,
            // Only retryable errors are retried, so the last one is retryable too.
            Error::ReachMaxTry { .. } => true,
            Error::InvalidValue { .. } => false,
            // The files may be deployed or fixed while the caller retries with backoff.
            Error::Credentials { .. } => true,
        }
    }

    /// The innermost error: the last attempt's error of [`Error::ReachMaxTry`] or
    /// [`Error::DeadlineExceeded`], otherwise `self`.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::ReachMaxTry { last, .. } => last.root_cause(),
            Error::DeadlineExceeded {
                last: Some(last), ..
            } => last.root_cause(),
            other => other,
        }
    }

    /// Whether this is one of etcd's transient server errors (no space, too many requests, no
    /// leader, leader changed, not capable, stopped, request timed out, unhealthy) or a reset
    /// connection: the only errors on which TiCDC retries a transaction.
    pub fn is_transient_etcd_error(&self) -> bool {
        crate::classify::is_transient(self)
    }

    /// Whether the requested revision was compacted, by type or by etcd's message (as TiCDC's
    /// `IsErrCompacted`).
    pub fn is_compacted(&self) -> bool {
        match self.root_cause() {
            Error::Compacted { .. } => true,
            Error::Rpc { message, .. } => message.contains(crate::classify::COMPACTED_MESSAGE),
            _ => false,
        }
    }
}

impl CdcError {
    /// Whether a later attempt of the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CdcError::Etcd(err) => err.is_retryable(),
            CdcError::InvalidEtcdKey { .. } => false,
            CdcError::Decode { .. } => false,
            CdcError::Encode { .. } => false,
            CdcError::CaptureNotExist { .. } => false,
            CdcError::ChangeFeedNotExists { .. } => false,
            CdcError::UpstreamNotFound { .. } => false,
            CdcError::UpstreamMissMatch { .. } => false,
            CdcError::OwnerNotFound => false,
            CdcError::NotOwner => false,
            CdcError::ElectionNoLeader => true,
            // Someone else changed the metadata: re-read and decide again.
            CdcError::MetaOpFailed { .. } => true,
            CdcError::MultipleCdcClustersExist { .. } => false,
        }
    }

    /// The error of the etcd call that failed, if the operation failed in one.
    pub fn etcd(&self) -> Option<&Error> {
        match self {
            CdcError::Etcd(err) => Some(err),
            CdcError::InvalidEtcdKey { .. }
            | CdcError::Decode { .. }
            | CdcError::Encode { .. }
            | CdcError::CaptureNotExist { .. }
            | CdcError::ChangeFeedNotExists { .. }
            | CdcError::UpstreamNotFound { .. }
            | CdcError::UpstreamMissMatch { .. }
            | CdcError::OwnerNotFound
            | CdcError::NotOwner
            | CdcError::ElectionNoLeader
            | CdcError::MetaOpFailed { .. }
            | CdcError::MultipleCdcClustersExist { .. } => None,
        }
    }

    /// Whether an etcd call failed on a compacted revision ([`Error::is_compacted`]).
    pub fn is_compacted(&self) -> bool {
        self.etcd().is_some_and(Error::is_compacted)
    }
}

/// A key rejected by the key layout (`cdc_model::key`) is [`CdcError::InvalidEtcdKey`], so that
/// callers and [`CdcError::is_retryable`] classify it as before the layout moved to `cdc-model`.
/// The model's value errors carry no key here; the call sites that decode a value under a key
/// build [`CdcError::Decode`] and [`CdcError::Encode`] with the key themselves.
impl From<cdc_model::Error> for CdcError {
    fn from(err: cdc_model::Error) -> Self {
        match err {
            cdc_model::Error::InvalidEtcdKey { key, reason } => {
                CdcError::InvalidEtcdKey { key, reason }
            }
            source @ cdc_model::Error::Encode { .. } => CdcError::Encode {
                key: String::new(),
                source,
            },
            source @ (cdc_model::Error::InvalidChangefeedId { .. }
            | cdc_model::Error::InvalidNamespace { .. }
            | cdc_model::Error::InvalidClusterId { .. }
            | cdc_model::Error::Decode { .. }
            | cdc_model::Error::InvalidTime { .. }
            | cdc_model::Error::NullConfig { .. }
            | cdc_model::Error::ConfigNotObject { .. }) => CdcError::Decode {
                key: String::new(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_the_layout_rejects_is_invalid_etcd_key() {
        let bare = "/tidb/cdc/default";
        let err = CdcError::from(cdc_model::key::CdcKey::parse("default", bare).unwrap_err());
        assert!(
            matches!(&err, CdcError::InvalidEtcdKey { key, .. } if key == bare),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("[CDC:ErrInvalidEtcdKey]invalid key: /tidb/cdc/default: "),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    // The metadata client's error wraps the generic client's: its display, retry
    // classification and compaction check are the wrapped error's.
    #[test]
    fn a_failed_call_under_a_metadata_operation_is_classified_as_the_call() {
        let compacted = CdcError::from(Error::ReachMaxTry {
            tries: 3,
            last: Box::new(Error::Compacted {
                requested: 5,
                compacted: 7,
            }),
        });
        assert!(compacted.is_compacted());
        assert!(compacted.is_retryable());
        assert!(matches!(
            compacted.etcd().map(Error::root_cause),
            Some(Error::Compacted { .. })
        ));
        let timeout = Error::Timeout {
            op: "get",
            endpoints: "127.0.0.1:2379".to_owned(),
            after: std::time::Duration::from_secs(1),
        };
        let message = timeout.to_string();
        let wrapped = CdcError::Etcd(timeout);
        assert_eq!(wrapped.to_string(), message);
        assert!(wrapped.is_retryable());
        assert!(!wrapped.is_compacted());
        assert!(!CdcError::from(Error::Cancelled).is_retryable());

        let missing = CdcError::CaptureNotExist {
            capture_id: "c".to_owned(),
        };
        assert!(missing.etcd().is_none());
        assert!(!missing.is_retryable() && !missing.is_compacted());
        assert!(CdcError::ElectionNoLeader.is_retryable());
    }
}
