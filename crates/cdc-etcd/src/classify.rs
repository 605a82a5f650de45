//! The one place where `etcd_client::Error` is turned into this crate's [`Error`].
//!
//! etcd-client's error has no `source()` and server-side errors all arrive as gRPC statuses with
//! generic codes, so the classification reads codes and, where etcd gives nothing better,
//! messages.

use crate::error::{Error, RpcCode};

/// The message etcd sends for a read or watch of a compacted revision.
pub(crate) const COMPACTED_MESSAGE: &str = "required revision has been compacted";
/// The message etcd sends when a lease does not exist.
pub(crate) const LEASE_NOT_FOUND_MESSAGE: &str = "requested lease not found";

/// Maps a gRPC status code, read as its wire number (tonic is not a dependency of this crate).
fn rpc_code(code: i32) -> RpcCode {
    match code {
        0 => RpcCode::Ok,
        1 => RpcCode::Cancelled,
        3 => RpcCode::InvalidArgument,
        4 => RpcCode::DeadlineExceeded,
        5 => RpcCode::NotFound,
        6 => RpcCode::AlreadyExists,
        7 => RpcCode::PermissionDenied,
        8 => RpcCode::ResourceExhausted,
        9 => RpcCode::FailedPrecondition,
        10 => RpcCode::Aborted,
        11 => RpcCode::OutOfRange,
        12 => RpcCode::Unimplemented,
        13 => RpcCode::Internal,
        14 => RpcCode::Unavailable,
        15 => RpcCode::DataLoss,
        16 => RpcCode::Unauthenticated,
        _ => RpcCode::Unknown,
    }
}

/// Classifies an etcd-client error raised by `op` against `endpoints`.
pub(crate) fn classify(
    op: &'static str,
    endpoints: &str,
    lease_id: Option<i64>,
    err: etcd_client::Error,
) -> Error {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            if message.contains(COMPACTED_MESSAGE) {
                return Error::Compacted {
                    requested: 0,
                    compacted: 0,
                };
            }
            if let Some(lease_id) = lease_id
                && message.contains(LEASE_NOT_FOUND_MESSAGE)
            {
                return Error::LeaseNotFound { lease_id };
            }
            Error::Rpc {
                op,
                code: rpc_code(i32::from(status.code())),
                message,
                endpoints: endpoints.to_owned(),
            }
        }
        etcd_client::Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            Error::LeaseNotFound {
                lease_id: lease_id.unwrap_or(0),
            }
        }
        etcd_client::Error::LeaseKeepAliveError(message)
        | etcd_client::Error::WatchError(message) => Error::StreamBroken { op, message },
        etcd_client::Error::TransportError(err) => Error::Rpc {
            op,
            code: RpcCode::Unavailable,
            message: err.to_string(),
            endpoints: endpoints.to_owned(),
        },
        other => Error::Rpc {
            op,
            code: RpcCode::Unknown,
            message: other.to_string(),
            endpoints: endpoints.to_owned(),
        },
    }
}
