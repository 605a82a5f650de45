//! The error type of this crate.

use std::path::PathBuf;

/// Why a run directory could not be judged: the evidence is missing, unreadable or malformed,
/// or an etcd to compare could not be read. An oracle's verdict is never an error: it is a
/// count in the [`crate::Report`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the run directory could not be read.
    #[error("read {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of a file is not what the run directory's format says.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1 (0 for the whole file).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A call to an etcd (the upstream or a mirror) failed or did not answer in time.
    #[error("{op} on etcd {endpoints}")]
    Etcd {
        /// The call.
        op: &'static str,
        /// The endpoints.
        endpoints: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Whether checking again may succeed: an etcd that failed may answer later; missing or
    /// malformed evidence stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Etcd { .. } => true,
            Error::Io { .. } | Error::Malformed { .. } => false,
        }
    }

    pub(crate) fn malformed(
        path: &std::path::Path,
        line: usize,
        reason: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            path: path.to_owned(),
            line,
            reason: reason.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
