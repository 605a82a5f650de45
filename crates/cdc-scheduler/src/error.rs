//! The error type of this crate.

use cdc_model::CaptureId;

/// Errors of the scheduling core: refused requests and invalid configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A drain names a capture the coordinator does not know.
    #[error("[CDC:ErrCaptureNotExist]capture {capture_id} does not exist")]
    CaptureNotFound {
        /// The capture.
        capture_id: CaptureId,
    },
    /// A drain names the owner's own capture.
    #[error(
        "[CDC:ErrSchedulerRequestFailed]capture {capture_id} is the owner and cannot be drained"
    )]
    DrainOwner {
        /// The capture.
        capture_id: CaptureId,
    },
    /// A drain names a capture whose spans could go nowhere else.
    #[error(
        "[CDC:ErrSchedulerRequestFailed]capture {capture_id} is the only capture that can run spans"
    )]
    DrainOnlyCapture {
        /// The capture.
        capture_id: CaptureId,
    },
    /// A configuration value is out of range.
    #[error("[CDC:ErrInvalidServerOption]scheduler {field} {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// Whether the same request may succeed later without any change on the caller's side.
    pub fn is_retryable(&self) -> bool {
        match self {
            // The capture may not have been seen yet by a new owner.
            Error::CaptureNotFound { .. } => true,
            // Another capture may join.
            Error::DrainOnlyCapture { .. } => true,
            Error::DrainOwner { .. } | Error::InvalidConfig { .. } => false,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
