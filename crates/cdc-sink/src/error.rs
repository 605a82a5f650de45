//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the sinks: bad sink URIs, and failures of the sinks themselves.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URI has no `scheme://`.
    #[error("[CDC:ErrSinkURIInvalid]sink uri {uri:?} has no scheme")]
    MissingScheme {
        /// The URI.
        uri: String,
    },
    /// The URI's scheme names no sink.
    #[error("[CDC:ErrSinkURIInvalid]sink uri scheme {scheme:?} is not supported")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
    },
    /// A query parameter is not one of the scheme's.
    #[error(
        "[CDC:ErrSinkURIInvalid]sink uri parameter {parameter:?} is not supported by {scheme}://"
    )]
    UnknownParameter {
        /// The scheme.
        scheme: String,
        /// The parameter.
        parameter: String,
    },
    /// A query parameter's value is not valid.
    #[error("[CDC:ErrSinkURIInvalid]sink uri parameter {parameter:?} value {value:?} {reason}")]
    InvalidParameter {
        /// The parameter.
        parameter: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The URI's address or path is not valid for its scheme.
    #[error("[CDC:ErrSinkURIInvalid]sink uri {uri:?} {reason}")]
    InvalidUri {
        /// The URI.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A call to the downstream etcd failed.
    #[error("[CDC:ErrEtcdSinkFailed]{op} on etcd {endpoints}")]
    Etcd {
        /// The call.
        op: &'static str,
        /// The downstream endpoints.
        endpoints: String,
        /// The cause.
        #[source]
        source: Box<cdc_etcd::Error>,
    },
    /// The etcd mirror could not commit a transaction under its per-key revision fence.
    #[error("[CDC:ErrEtcdSinkFailed]etcd mirror on {endpoints}: {reason}")]
    EtcdFence {
        /// The downstream endpoints.
        endpoints: String,
        /// What went wrong.
        reason: &'static str,
    },
    /// A file operation failed.
    #[error("[CDC:ErrFileSinkFileOp]{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the same operation may succeed later (a full disk may be freed, a missing mount may
    /// come back); a bad URI never becomes good.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::MissingScheme { .. } => false,
            Error::UnknownScheme { .. } => false,
            Error::UnknownParameter { .. } => false,
            Error::InvalidParameter { .. } => false,
            Error::InvalidUri { .. } => false,
            // A downstream that is down may come back; a refused request (too many operations
            // per transaction, a value too large) will be refused again.
            Error::Etcd { source, .. } => source.is_retryable(),
            // Another writer of the same keys (a span's former capture) stops soon.
            Error::EtcdFence { .. } => true,
            Error::Io { .. } => true,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
