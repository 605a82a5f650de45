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

/// How tonic words a connection that broke under a call (observed when etcd is killed).
const BROKEN_CONNECTION_MESSAGES: [&str; 2] = ["transport error", "h2 protocol error"];

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
            let mut code = rpc_code(i32::from(status.code()));
            // tonic reports a connection that broke under a call as Unknown; it is the same
            // condition as a refused connection.
            if code == RpcCode::Unknown
                && BROKEN_CONNECTION_MESSAGES
                    .iter()
                    .any(|broken| message.starts_with(broken))
            {
                code = RpcCode::Unavailable;
            }
            Error::Rpc {
                op,
                code,
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

/// etcd's errors that cancel a watch (its `rpctypes` and `mvcc` messages) with their gRPC
/// codes, as etcd's server maps them.
const WATCH_CANCEL_REASONS: [(&str, RpcCode); 6] = [
    ("etcdserver: permission denied", RpcCode::PermissionDenied),
    ("etcdserver: user name is empty", RpcCode::InvalidArgument),
    ("etcdserver: invalid auth token", RpcCode::Unauthenticated),
    (
        "etcdserver: authentication failed, invalid user ID or password",
        RpcCode::InvalidArgument,
    ),
    (
        "etcdserver: user name not found",
        RpcCode::FailedPrecondition,
    ),
    (
        "mvcc: required revision is a future revision",
        RpcCode::OutOfRange,
    ),
];

/// The error of a server-side watch cancel other than compaction: a known permanent reason
/// keeps its code, one of etcd's transient errors is `Unavailable`, anything else `Unknown`
/// (both retried).
pub(crate) fn watch_cancelled(reason: &str) -> Error {
    let code = WATCH_CANCEL_REASONS
        .iter()
        .find(|(known, _)| reason.contains(known))
        .map_or_else(
            || {
                if is_transient_message(reason) {
                    RpcCode::Unavailable
                } else {
                    RpcCode::Unknown
                }
            },
            |(_, code)| *code,
        );
    Error::WatchCancelled {
        code,
        reason: reason.to_owned(),
    }
}

/// The messages of etcd's transient server errors (its `rpctypes` `ErrNoSpace`,
/// `ErrTooManyRequests`, `ErrNoLeader`, `ErrLeaderChanged`, `ErrNotCapable`, `ErrStopped`,
/// `ErrTimeout`, `ErrTimeoutDueToLeaderFail`, `ErrGRPCTimeoutDueToConnectionLost` and
/// `ErrUnhealthy`), and the transport failures TiCDC also retries a txn on.
const TRANSIENT_MESSAGES: [&str; 11] = [
    "etcdserver: mvcc: database space exceeded",
    "etcdserver: too many requests",
    "etcdserver: no leader",
    "etcdserver: leader changed",
    "etcdserver: not capable",
    "etcdserver: server stopped",
    // Also the prefix of the "possibly due to previous leader failure" and "possibly due to
    // connection lost" variants.
    "etcdserver: request timed out",
    "etcdserver: unhealthy cluster",
    "raft: stopped",
    "received prior goaway: code: NO_ERROR",
    "connection reset by peer",
];

/// Whether `err` is one of etcd's transient errors, on which even a transaction is retried.
pub(crate) fn is_transient(err: &Error) -> bool {
    match err {
        Error::Rpc { message, .. }
        | Error::StreamBroken { message, .. }
        | Error::WatchCancelled {
            reason: message, ..
        } => is_transient_message(message),
        _ => false,
    }
}

/// Whether `message` holds one of etcd's transient errors.
fn is_transient_message(message: &str) -> bool {
    TRANSIENT_MESSAGES
        .iter()
        .any(|transient| message.contains(transient))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: RpcCode, message: &str) -> Error {
        Error::Rpc {
            op: "txn",
            code,
            message: message.to_owned(),
            endpoints: "http://127.0.0.1:1".to_owned(),
        }
    }

    #[test]
    fn transient_errors() {
        for message in [
            "etcdserver: mvcc: database space exceeded",
            "etcdserver: too many requests",
            "etcdserver: no leader",
            "etcdserver: leader changed",
            "etcdserver: not capable",
            "etcdserver: server stopped",
            "etcdserver: request timed out",
            "etcdserver: request timed out, possibly due to previous leader failure",
            "etcdserver: request timed out, possibly due to connection lost",
            "etcdserver: unhealthy cluster",
            "rpc error: raft: stopped",
            "transport: received prior goaway: code: NO_ERROR",
            "read tcp: connection reset by peer",
        ] {
            assert!(
                is_transient(&rpc(RpcCode::Unavailable, message)),
                "{message}"
            );
        }
        for err in [
            rpc(RpcCode::Unknown, "mock error"),
            rpc(RpcCode::DeadlineExceeded, "context deadline exceeded"),
            rpc(RpcCode::Unavailable, "tcp connect error"),
            Error::Cancelled,
            Error::Compacted {
                requested: 1,
                compacted: 2,
            },
        ] {
            assert!(!is_transient(&err), "{err}");
        }
    }

    #[test]
    fn watch_cancel_reasons() {
        for (reason, retryable) in [
            ("etcdserver: permission denied", false),
            ("etcdserver: user name is empty", false),
            ("etcdserver: invalid auth token", false),
            ("mvcc: required revision is a future revision", false),
            ("etcdserver: no leader", true),
            ("", true),
            ("something new", true),
        ] {
            assert_eq!(
                watch_cancelled(reason).is_retryable(),
                retryable,
                "{reason:?}"
            );
        }
        assert!(matches!(
            watch_cancelled("etcdserver: permission denied"),
            Error::WatchCancelled {
                code: RpcCode::PermissionDenied,
                ..
            }
        ));
    }
}
