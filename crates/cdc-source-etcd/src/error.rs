//! The error type of this crate.

/// Errors of the etcd span source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The revision the source had to read from is compacted away: reading on would skip data.
    #[error(
        "[CDC:ErrSnapshotLostByGC]start revision {revision} of the span is compacted (compact revision {compacted})"
    )]
    Compacted {
        /// The revision the watch needed (the start revision, or where it resumed).
        revision: u64,
        /// The upstream's compaction revision.
        compacted: u64,
    },
    /// The key range cannot be watched.
    #[error("[CDC:ErrInvalidSpan]span [{start:?}, {end:?}) {reason}")]
    InvalidRange {
        /// The first key, lossily as text.
        start: String,
        /// The end key, lossily as text.
        end: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The start revision is beyond what etcd can represent.
    #[error("[CDC:ErrInvalidSpan]start revision {revision} is out of range")]
    RevisionOutOfRange {
        /// The revision.
        revision: u64,
    },
    /// The watch failed.
    #[error("[CDC:ErrEtcdWatch]etcd watch of the span failed")]
    Watch(#[source] cdc_etcd::Error),
}

impl Error {
    /// Whether starting the source again (from the same checkpoint) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Compacted { .. } => false,
            Error::InvalidRange { .. } => false,
            Error::RevisionOutOfRange { .. } => false,
            Error::Watch(source) => source.is_retryable(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
