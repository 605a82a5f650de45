//! The error type of the capture.

/// Errors of the capture. The `[CDC:...]` codes are TiCDC's: logs and HTTP answers carry them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The incarnation must end and a new one start (new lease, new capture ID).
    #[error("[CDC:ErrCaptureSuicide]capture suicide")]
    Suicide,
    /// Writing the capture key failed.
    #[error("[CDC:ErrCaptureRegister]capture register to etcd failed")]
    Register(#[source] Box<Error>),
    /// No incarnation has been set up yet.
    #[error("[CDC:ErrCaptureNotInitialized]capture has not been initialized yet")]
    NotInitialized,
    /// The owner campaign failed.
    #[error("[CDC:ErrCaptureCampaignOwner]campaign owner failed")]
    CampaignOwner(#[source] Box<Error>),
    /// Resigning the ownership failed.
    #[error("[CDC:ErrCaptureResignOwner]resign owner failed")]
    ResignOwner(#[source] Box<Error>),
    /// This capture is not the owner (or its owner key is gone).
    #[error("[CDC:ErrNotOwner]this capture is not a owner")]
    NotOwner,
    /// No capture matches the owner key.
    #[error("[CDC:ErrOwnerNotFound]owner not found")]
    OwnerNotFound,
    /// The etcd session (lease keep-alive) ended.
    #[error("[CDC:ErrEtcdSessionDone]the etcd session is done")]
    SessionDone,
    /// The capture key is gone: its lease expired or was revoked.
    #[error("[CDC:ErrLeaseExpired]owner lease expired ")]
    LeaseExpired,
    /// A capture ID that no capture has.
    #[error("[CDC:ErrCaptureNotExist]capture not exists: {capture_id}")]
    CaptureNotExist {
        /// The unknown ID.
        capture_id: String,
    },
    /// The meta version in etcd is newer than this binary.
    #[error(
        "[CDC:ErrEtcdMigrateFailed]meta version {found} is newer than this binary's {supported}"
    )]
    MetaVersionTooNew {
        /// The version in etcd.
        found: u64,
        /// The version this binary writes.
        supported: u64,
    },
    /// The meta version in etcd is not one this binary knows (`0`, or not a decimal number):
    /// refused and left as it is.
    #[error(
        "[CDC:ErrEtcdMigrateFailed]meta version {found:?} under {key} is unknown to this binary, which knows only {supported}; refusing to overwrite it"
    )]
    MetaVersionUnknown {
        /// The meta version key.
        key: String,
        /// Its value as found.
        found: String,
        /// The version this binary writes.
        supported: u64,
    },
    /// Changefeed data of the pre-v6.2 layout, which this binary does not migrate, with no
    /// meta version.
    #[error(
        "[CDC:ErrEtcdMigrateFailed]found legacy (pre-v6.2) TiCDC metadata {key} and no meta version; migrate it with TiCDC v6.2 or later, or remove it"
    )]
    LegacyMetadata {
        /// The first legacy key found.
        key: String,
    },
    /// Changefeed data in the cluster's prefix with no meta version: not written by a version
    /// this binary knows, so the version is not guessed.
    #[error(
        "[CDC:ErrEtcdMigrateFailed]found changefeed metadata {key} but no meta version; refusing to guess the version"
    )]
    UnversionedMetadata {
        /// The first changefeed key found.
        key: String,
    },
    /// An etcd call failed.
    #[error("[CDC:ErrPDEtcdAPIError]etcd api call error")]
    Etcd(#[from] cdc_etcd::Error),
    /// A metadata operation found the TiCDC metadata missing, malformed or refused (a failed
    /// etcd call under it converts to [`Error::Etcd`]).
    #[error("[CDC:ErrPDEtcdAPIError]etcd api call error")]
    EtcdMeta(#[source] cdc_etcd::CdcError),
    /// The session or the election failed.
    #[error("election")]
    Election(#[from] cdc_election::Error),
    /// An etcd worker failed.
    #[error("etcd worker")]
    Orchestrator(#[from] cdc_orchestrator::Error),
    /// A model value could not be encoded or is invalid.
    #[error("model")]
    Model(#[from] cdc_model::Error),
    /// The p2p layer failed.
    #[error("p2p")]
    P2p(#[from] cdc_p2p::Error),
    /// A reactor's own error (the owner's or a processor's), classified by its crate.
    #[error(transparent)]
    Reactor(cdc_reactor::Error),
    /// An internal deadline expired (TiCDC's DeadlineExceeded).
    #[error("deadline of {op} exceeded")]
    DeadlineExceeded {
        /// What timed out.
        op: &'static str,
    },
    /// The HTTP or gRPC listener failed.
    #[error("serve {addr}")]
    Serve {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A request to another capture failed.
    #[error("forward to {address}")]
    Forward {
        /// The capture's address.
        address: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server has not passed the meta-version gate yet: the `/api/v2` routes wait for it
    /// (TiCDC's `CheckServerReadyMiddleware`).
    #[error("[CDC:ErrServerIsNotReady]cdc server is not ready")]
    ServerNotReady,
    /// A request that was already forwarded as often as allowed, or whose forward count is not
    /// a number; TiCDC's code, without its `CDC:` prefix.
    #[error(
        "[ErrRequestForwardErr]request forward error, an request can only forward to owner one time"
    )]
    ForwardLimit,
    /// A configuration value is invalid.
    #[error("[CDC:ErrInvalidServerOption]{message}")]
    InvalidConfig {
        /// What is wrong.
        message: String,
    },
    /// The caller cancelled the operation.
    #[error("context canceled")]
    Cancelled,
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A metadata operation's failed etcd call is [`Error::Etcd`], as every other failed call;
/// the metadata's own errors are [`Error::EtcdMeta`]. The split is made once, by
/// `cdc_reactor::Error`'s conversion, whose two variants map onto these.
impl From<cdc_etcd::CdcError> for Error {
    fn from(err: cdc_etcd::CdcError) -> Self {
        Error::from(cdc_reactor::Error::from(err))
    }
}

/// A reactor's error becomes the capture error of the layer it came from, so that the capture's
/// own classification applies; only the reactor crates' own errors stay wrapped.
impl From<cdc_reactor::Error> for Error {
    fn from(err: cdc_reactor::Error) -> Error {
        match err {
            cdc_reactor::Error::Etcd(err) => Error::Etcd(err),
            cdc_reactor::Error::EtcdMeta(err) => Error::EtcdMeta(err),
            cdc_reactor::Error::Orchestrator(err) => Error::from_worker(err),
            cdc_reactor::Error::P2p(err) => Error::P2p(err),
            cdc_reactor::Error::Model(err) => Error::Model(err),
            cdc_reactor::Error::Cancelled => Error::Cancelled,
            err @ cdc_reactor::Error::Reactor { .. } => Error::Reactor(err),
        }
    }
}

impl Error {
    /// The capture error nearest to an etcd worker's error: a lost session, lease or
    /// ownership and cancellation get the capture's own variants.
    pub(crate) fn from_worker(err: cdc_orchestrator::Error) -> Error {
        match err {
            cdc_orchestrator::Error::NotOwner => Error::NotOwner,
            cdc_orchestrator::Error::SessionDone => Error::SessionDone,
            cdc_orchestrator::Error::LeaseExpired { .. } => Error::LeaseExpired,
            cdc_orchestrator::Error::Cancelled => Error::Cancelled,
            other => Error::Orchestrator(other),
        }
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Suicide => true,
            Error::Register(source) => source.is_retryable(),
            Error::NotInitialized => true,
            Error::CampaignOwner(source) => source.is_retryable(),
            Error::ResignOwner(source) => source.is_retryable(),
            Error::NotOwner => false,
            Error::OwnerNotFound => true,
            Error::SessionDone => true,
            Error::LeaseExpired => true,
            Error::CaptureNotExist { .. } => false,
            Error::MetaVersionTooNew { .. } => false,
            Error::MetaVersionUnknown { .. } => false,
            Error::LegacyMetadata { .. } => false,
            Error::UnversionedMetadata { .. } => false,
            Error::Etcd(source) => source.is_retryable(),
            Error::EtcdMeta(source) => source.is_retryable(),
            Error::Election(source) => source.is_retryable(),
            Error::Orchestrator(source) => source.is_retryable(),
            Error::Model(_) => false,
            Error::P2p(source) => source.is_retryable(),
            Error::Reactor(source) => source.restarts_capture(),
            Error::DeadlineExceeded { .. } => true,
            Error::Serve { .. } => false,
            Error::Forward { .. } => true,
            Error::ServerNotReady => true,
            Error::ForwardLimit => false,
            Error::InvalidConfig { .. } => false,
            Error::Cancelled => false,
        }
    }

    /// The innermost error of the capture's own wrappers.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Register(source) | Error::CampaignOwner(source) | Error::ResignOwner(source) => {
                source.root_cause()
            }
            other => other,
        }
    }

    /// Whether the outer loop starts a new incarnation after this error (§6.2) instead of
    /// exiting the server. TiCDC restarts only on suicide, cancellation and deadlines; this port
    /// also restarts on every error a new incarnation may overcome: a lost session or
    /// ownership, and transient etcd, election, worker and p2p failures (a short etcd outage
    /// must not end the process). Only errors a restart cannot fix exit: an invalid
    /// configuration, a meta version newer than this binary, data that cannot be decoded or
    /// encoded, and programming errors.
    pub fn restarts_capture(&self) -> bool {
        match self {
            Error::Register(source) | Error::CampaignOwner(source) | Error::ResignOwner(source) => {
                source.restarts_capture()
            }
            Error::Suicide
            | Error::Cancelled
            | Error::DeadlineExceeded { .. }
            | Error::SessionDone
            | Error::LeaseExpired
            | Error::NotOwner => true,
            // Lookups that a later attempt may answer.
            Error::NotInitialized
            | Error::OwnerNotFound
            | Error::CaptureNotExist { .. }
            | Error::Forward { .. }
            | Error::ServerNotReady
            | Error::ForwardLimit => true,
            Error::Etcd(err) => etcd_restarts(err),
            Error::EtcdMeta(err) => err.etcd().map_or_else(|| err.is_retryable(), etcd_restarts),
            Error::Election(err) => election_restarts(err),
            Error::Orchestrator(err) => orchestrator_restarts(err),
            Error::P2p(err) => err.is_retryable() || matches!(err, cdc_p2p::Error::Cancelled),
            Error::Reactor(err) => err.restarts_capture(),
            Error::MetaVersionTooNew { .. }
            | Error::MetaVersionUnknown { .. }
            | Error::LegacyMetadata { .. }
            | Error::UnversionedMetadata { .. }
            | Error::Model(_)
            | Error::Serve { .. }
            | Error::InvalidConfig { .. } => false,
        }
    }

    /// Whether the error is etcd's compaction error ([`cdc_etcd::Error::is_compacted`]).
    pub fn is_compacted(&self) -> bool {
        match self.root_cause() {
            Error::Election(cdc_election::Error::Compacted { .. }) => true,
            Error::Etcd(err) | Error::Election(cdc_election::Error::Etcd(err)) => {
                err.is_compacted()
            }
            Error::EtcdMeta(err) => err.is_compacted(),
            _ => false,
        }
    }
}

/// An etcd error restarts the capture when a later call may succeed (a timeout, an unavailable
/// or leaderless cluster, exhausted retries), when it was cancelled, or when it means our lease
/// or a watched revision is gone (a new incarnation starts afresh). Refused arguments,
/// permissions, undecodable values and a second cluster in the same etcd exit.
fn etcd_restarts(err: &cdc_etcd::Error) -> bool {
    err.is_retryable()
        || matches!(
            err.root_cause(),
            cdc_etcd::Error::Cancelled
                | cdc_etcd::Error::LeaseNotFound { .. }
                | cdc_etcd::Error::Compacted { .. }
                | cdc_etcd::Error::Rpc {
                    code: cdc_etcd::RpcCode::Cancelled | cdc_etcd::RpcCode::NotFound,
                    ..
                }
        )
}

/// Every session and election failure restarts the capture, except etcd errors a restart
/// cannot fix.
fn election_restarts(err: &cdc_election::Error) -> bool {
    match err {
        cdc_election::Error::Compacted { .. }
        | cdc_election::Error::Cancelled
        | cdc_election::Error::LeaseExpired { .. }
        | cdc_election::Error::NotLeader
        | cdc_election::Error::OwnerNotFound
        | cdc_election::Error::Thread(_) => true,
        cdc_election::Error::Etcd(err) => etcd_restarts(err),
    }
}

/// A worker's lost session, lost ownership, cancellation or transient etcd failure restarts the
/// capture; a patch too large for one transaction and undecodable or invalid data exit, as in
/// TiCDC (`cdc/capture/capture.go` in pingcap/tiflow; ARCHITECTURE.md, "Restart or exit").
fn orchestrator_restarts(err: &cdc_orchestrator::Error) -> bool {
    match err {
        cdc_orchestrator::Error::NotOwner
        | cdc_orchestrator::Error::SessionDone
        | cdc_orchestrator::Error::LeaseExpired { .. }
        | cdc_orchestrator::Error::Cancelled
        | cdc_orchestrator::Error::EtcdTryAgain => true,
        cdc_orchestrator::Error::Etcd(err) => etcd_restarts(err),
        cdc_orchestrator::Error::ReactorFinished
        | cdc_orchestrator::Error::EtcdIgnore
        | cdc_orchestrator::Error::TxnSizeExceed { .. }
        | cdc_orchestrator::Error::TxnOpsExceed { .. }
        | cdc_orchestrator::Error::Unmarshal { .. }
        | cdc_orchestrator::Error::Model(_)
        | cdc_orchestrator::Error::MissingStatus { .. }
        | cdc_orchestrator::Error::InvalidKey { .. } => false,
    }
}
