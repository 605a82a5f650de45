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
    /// A TLS parameter is given without one it needs: `cert` or `key` without `ca`, `cert`
    /// without `key` or the reverse (mysql: `ssl-ca`, `ssl-cert`, `ssl-key`).
    #[error(
        "[CDC:ErrSinkURIInvalid]sink uri parameter {parameter:?} needs {needs:?} too ({reason})"
    )]
    TlsParameterMissing {
        /// The parameter given.
        parameter: &'static str,
        /// The parameter it needs.
        needs: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A TLS file named by the sink URI cannot be read, or does not hold what its parameter
    /// needs (checked when the sink opens).
    #[error("[CDC:ErrSinkURIInvalid]sink uri parameter {parameter:?} file {path}: {reason}")]
    TlsFile {
        /// The parameter (`ca`, `cert`, `key`, `ssl-ca`, ...).
        parameter: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it, with the cause.
        reason: String,
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
    /// A call to the downstream MySQL or MariaDB failed; the cause carries the server's message.
    #[error("[CDC:ErrMySQLTxnError]{op} on mysql {address}")]
    Mysql {
        /// The call.
        op: &'static str,
        /// The server, `host:port`.
        address: String,
        /// The cause.
        #[source]
        source: Box<sqlx::Error>,
    },
    /// A call to the downstream MySQL or MariaDB did not answer in time.
    #[error("[CDC:ErrMySQLTxnError]{op} on mysql {address} did not answer within {timeout:?}")]
    MysqlTimeout {
        /// The call.
        op: &'static str,
        /// The server, `host:port`.
        address: String,
        /// The deadline.
        timeout: std::time::Duration,
    },
    /// A call to the downstream NATS server failed.
    #[error("[CDC:ErrNatsSinkFailed]{op} on nats {address}")]
    Nats {
        /// The call.
        op: &'static str,
        /// The server, `host:port`.
        address: String,
        /// The cause.
        #[source]
        source: async_nats::Error,
    },
    /// The JetStream stream is missing and the URI does not ask to create it.
    #[error(
        "[CDC:ErrNatsSinkFailed]stream {stream:?} does not exist on nats {address} (create it with subjects {subject}.>, or add create-stream=true to the sink uri)"
    )]
    NatsStreamMissing {
        /// The server.
        address: String,
        /// The stream.
        stream: String,
        /// The sink's subject.
        subject: String,
    },
    /// The JetStream stream does not take the sink's subject.
    #[error(
        "[CDC:ErrNatsSinkFailed]stream {stream:?} on nats {address} does not cover subject {subject:?} (its subjects are {subjects:?})"
    )]
    NatsStreamMismatch {
        /// The server.
        address: String,
        /// The stream.
        stream: String,
        /// The subject the sink publishes to.
        subject: String,
        /// The stream's subjects.
        subjects: Vec<String>,
    },
    /// A publish was not acknowledged in time.
    #[error("[CDC:ErrNatsSinkFailed]{op} on nats {address} did not finish within {timeout:?}")]
    NatsTimeout {
        /// The call.
        op: &'static str,
        /// The server.
        address: String,
        /// The deadline.
        timeout: std::time::Duration,
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
            // A TLS setting an operator must fix: the sink does not try again; the changefeed's
            // own retry, after its backoff, takes a fixed file up (docs/security.md, "TLS to the
            // sinks").
            Error::TlsParameterMissing { .. } => false,
            Error::TlsFile { .. } => false,
            // A downstream that is down may come back; a refused request (too many operations
            // per transaction, a value too large) will be refused again.
            Error::Etcd { source, .. } => source.is_retryable(),
            // Another writer of the same keys (a span's former capture) stops soon.
            Error::EtcdFence { .. } => true,
            Error::Io { .. } => true,
            Error::Mysql { source, .. } => mysql_retryable(source),
            Error::MysqlTimeout { .. } => true,
            // A server that is down comes back; a stream may be created or changed meanwhile.
            Error::Nats { .. } => true,
            Error::NatsStreamMissing { .. } => true,
            Error::NatsStreamMismatch { .. } => true,
            Error::NatsTimeout { .. } => true,
        }
    }
}

/// Whether a MySQL error may pass: a lost connection, a pool timeout, a deadlock, a lock wait
/// timeout or a server that is starting; a refused login or statement is worth a retry too, as an
/// operator may fix the grant, the database or the server's limits while the changefeed waits.
pub(crate) fn mysql_retryable(error: &sqlx::Error) -> bool {
    !matches!(
        error,
        sqlx::Error::Configuration(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnNotFound(_)
    )
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
