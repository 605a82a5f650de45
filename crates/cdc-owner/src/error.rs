//! The error type of this crate.

/// The owner's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("[CDC:ErrInvalidServerOption]owner {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The scheduler refused its configuration or a request.
    #[error("scheduler")]
    Scheduler(#[from] cdc_scheduler::Error),
    /// An etcd call failed.
    #[error("etcd")]
    Etcd(#[from] cdc_etcd::Error),
    /// A p2p call failed.
    #[error("p2p")]
    P2p(#[from] cdc_p2p::Error),
    /// A value did not encode or decode.
    #[error("model")]
    Model(#[from] cdc_model::Error),
    /// The owner was stopped.
    #[error("context canceled")]
    Cancelled,
}

impl Error {
    /// Whether the same operation may succeed later without a change on the caller's side.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidConfig { .. } => false,
            Error::Scheduler(err) => err.is_retryable(),
            Error::Etcd(err) => err.is_retryable(),
            Error::P2p(_) => true,
            Error::Model(_) => false,
            Error::Cancelled => false,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
