//! The error type of this crate.

/// Errors of the etcd worker, the reactors and their states.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The owner key of this worker is gone or belongs to another campaign (fence refused).
    #[error("[CDC:ErrNotOwner]this capture is not the owner any more")]
    NotOwner,
    /// The session (lease) of this capture ended.
    #[error("[CDC:ErrEtcdSessionDone]the etcd session is done")]
    SessionDone,
    /// The capture key is gone: the lease of this capture expired.
    #[error("[CDC:ErrLeaseExpired]owner lease expired for capture {capture_id}")]
    LeaseExpired {
        /// The capture whose key is gone.
        capture_id: String,
    },
    /// A reactor finished normally; its last patches are committed before the worker returns.
    #[error(
        "[CDC:ErrReactorFinished]the reactor has done its job and should no longer be executed"
    )]
    ReactorFinished,
    /// A patch asks to abort this commit attempt and to retry it later.
    #[error("[CDC:ErrEtcdTryAgain]the etcd txn should be aborted and retried immediately")]
    EtcdTryAgain,
    /// A patch asks to be skipped.
    #[error("[CDC:ErrEtcdIgnore]this patch should be excluded from the current etcd txn")]
    EtcdIgnore,
    /// One patch group is larger than one transaction can carry.
    #[error(
        "[CDC:ErrEtcdTxnSizeExceed]patch size:{size} of a single changefeed exceed etcd txn max size:{max}"
    )]
    TxnSizeExceed {
        /// The group's size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// One patch group touches more keys than one transaction can carry.
    #[error(
        "[CDC:ErrEtcdTxnOpsExceed]patch ops:{ops} of a single changefeed exceed etcd txn max ops:{max}"
    )]
    TxnOpsExceed {
        /// The number of keys the group touches.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// An etcd call failed.
    #[error("etcd call failed")]
    Etcd(#[from] cdc_etcd::Error),
    /// A value read from etcd could not be decoded.
    #[error("[CDC:ErrUnmarshalFailed]decode the value of {key}")]
    Unmarshal {
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: cdc_model::Error,
    },
    /// A model value is invalid or could not be encoded.
    #[error("invalid model value")]
    Model(#[from] cdc_model::Error),
    /// `resume_changefeed` with a checkpoint found no status (Go dereferences nil here).
    #[error("changefeed {changefeed} has no status to resume from")]
    MissingStatus {
        /// The changefeed.
        changefeed: String,
    },
    /// The worker was cancelled by its owner.
    #[error("context canceled")]
    Cancelled,
    /// A relative key operation got a key it cannot handle.
    #[error("invalid etcd key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the etcd worker retries after this error instead of returning it
    /// (as TiCDC's `pkg/orchestrator/etcd_worker.go` does).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::EtcdTryAgain => true,
            Error::Etcd(err) => etcd_error_is_retryable(err),
            Error::NotOwner
            | Error::SessionDone
            | Error::LeaseExpired { .. }
            | Error::ReactorFinished
            | Error::EtcdIgnore
            | Error::TxnSizeExceed { .. }
            | Error::TxnOpsExceed { .. }
            | Error::Cancelled
            | Error::InvalidKey { .. }
            | Error::Unmarshal { .. }
            | Error::Model(_)
            | Error::MissingStatus { .. } => false,
        }
    }
}

/// An etcd error is retryable for the worker when a later transaction may succeed: timeouts
/// and transient RPC failures are; cancellation, compaction and refused arguments are not.
fn etcd_error_is_retryable(err: &cdc_etcd::Error) -> bool {
    err.is_retryable()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // Case 33 (RetryableError).
    #[test]
    fn retryable_errors() {
        assert!(Error::EtcdTryAgain.is_retryable());
        let deadline = cdc_etcd::Error::Timeout {
            op: "txn",
            endpoints: "127.0.0.1:2379".to_owned(),
            after: Duration::from_secs(10),
        };
        assert!(Error::Etcd(deadline).is_retryable());
        assert!(!Error::Etcd(cdc_etcd::Error::Cancelled).is_retryable());
        let leader_fail = cdc_etcd::Error::Rpc {
            op: "txn",
            code: cdc_etcd::RpcCode::Unavailable,
            message: "etcdserver: request timed out, possibly due to previous leader failure"
                .to_owned(),
            endpoints: String::new(),
        };
        let exhausted = cdc_etcd::Error::ReachMaxTry {
            tries: 12,
            last: Box::new(leader_fail),
        };
        assert!(Error::Etcd(exhausted).is_retryable());
        assert!(!Error::Cancelled.is_retryable());
        assert!(!Error::NotOwner.is_retryable());
    }
}
