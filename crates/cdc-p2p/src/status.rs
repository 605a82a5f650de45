//! The gRPC statuses the p2p service ends an RPC with, built in one place.
//!
//! Errors reach the peer first as a `SendMessageResponse` (its exit reason and
//! `Error::wire_message`); the status only ends the RPC.

use tonic::Status;

use crate::error::Error;

/// No message server is installed in the `ServerWrapper`.
pub(crate) fn server_not_running() -> Status {
    Status::unavailable("message server is not running")
}

/// The message server has stopped (or is stopping).
pub(crate) fn server_closing() -> Status {
    Status::aborted("message server is closing")
}

/// The stream was cancelled by the `ServerWrapper` (reset) or the RPC's end.
pub(crate) fn stream_cancelled() -> Status {
    Status::cancelled("message server stream cancelled")
}

/// A stream refused at its meta: the code follows the error's classification (a retryable
/// refusal is UNAVAILABLE, another FAILED_PRECONDITION), the message is the error's full
/// report in TiCDC's `[code]text` form.
pub(crate) fn refused(err: &Error) -> Status {
    if err.is_retryable() {
        Status::unavailable(err.wire_message())
    } else {
        Status::failed_precondition(err.wire_message())
    }
}
