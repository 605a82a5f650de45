//! The error type of this crate.

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

/// Errors of the etcd layer.
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
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether a later attempt of the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Rpc { code, .. } => !matches!(
                code,
                RpcCode::InvalidArgument
                    | RpcCode::PermissionDenied
                    | RpcCode::Unimplemented
                    | RpcCode::OutOfRange
                    | RpcCode::Unauthenticated
                    | RpcCode::NotFound
            ),
            Error::StreamBroken { .. } => true,
            Error::Compacted { .. } => false,
            Error::LeaseNotFound { .. } => false,
            Error::Cancelled => false,
        }
    }
}
