//! The error type of this crate.

use cdc_etcd::{LeaseId, Revision};

/// Errors of the session and the election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The revision a campaign waited from was compacted away; campaign again.
    #[error(
        "[CDC:ErrCompacted]required revision {requested} has been compacted (compact revision {compacted})"
    )]
    Compacted {
        /// The revision that was asked for (0 when unknown).
        requested: Revision,
        /// The compaction revision (0 when unknown).
        compacted: Revision,
    },
    /// The caller cancelled the operation.
    #[error("context canceled")]
    Cancelled,
    /// The lease is gone (expired, revoked, or its keep-alive missed the deadline), or the
    /// election key attached to it vanished.
    #[error("[CDC:ErrLeaseExpired]lease {lease_id:x} expired or was revoked")]
    LeaseExpired {
        /// The lease.
        lease_id: LeaseId,
    },
    /// Another candidate leads, or our key no longer carries our create revision.
    #[error("[CDC:ErrNotOwner]election: not leader")]
    NotLeader,
    /// Nobody holds the election.
    #[error("[CDC:ErrOwnerNotFound]owner not found")]
    OwnerNotFound,
    /// An etcd call failed.
    #[error("etcd call failed")]
    Etcd(#[source] cdc_etcd::Error),
    /// The keep-alive thread could not be started.
    #[error("start the keep-alive thread")]
    Thread(#[source] std::io::Error),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the caller may retry the same operation (a campaign after [`Error::Compacted`],
    /// for example). A lost lease is never retryable: it needs a new session.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Compacted { .. } => true,
            Error::Cancelled => false,
            Error::LeaseExpired { .. } => false,
            Error::NotLeader => false,
            Error::OwnerNotFound => true,
            Error::Etcd(err) => err.is_retryable(),
            Error::Thread(_) => false,
        }
    }
}

impl From<cdc_etcd::Error> for Error {
    fn from(err: cdc_etcd::Error) -> Error {
        match err {
            cdc_etcd::Error::Compacted {
                requested,
                compacted,
            } => Error::Compacted {
                requested,
                compacted,
            },
            cdc_etcd::Error::LeaseNotFound { lease_id } => Error::LeaseExpired { lease_id },
            cdc_etcd::Error::Cancelled => Error::Cancelled,
            other => Error::Etcd(other),
        }
    }
}
