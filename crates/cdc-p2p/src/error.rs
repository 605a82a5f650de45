//! The crate's error type and its wire mapping (`ExitReason`, gRPC status).

use crate::proto::ExitReason;

/// A boxed error from a handler or a transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the p2p layer. `code()` gives TiCDC's RFC code (`CDC:ErrPeerMessage...`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first packet of a stream carried no meta.
    #[error("peer message illegal meta: the first packet has no meta")]
    IllegalMeta,
    /// The peer is a different capture than the one expected; retrying cannot help.
    #[error("peer message client permanently failed: {reason}")]
    ClientPermanentFail {
        /// Why (the server's error message).
        reason: String,
    },
    /// The client has stopped; nothing more can be sent through it.
    #[error("peer message client is closed")]
    ClientClosed,
    /// The send queue is full; try again later.
    #[error("peer message send queue is full, try again")]
    SendTryAgain,
    /// A message could not be encoded.
    #[error("peer message encode error on topic {topic}")]
    Encode {
        /// The topic.
        topic: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// A payload could not be decoded.
    #[error("peer message decode error on topic {topic}")]
    Decode {
        /// The topic.
        topic: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// A stream handle was used after it was closed.
    #[error("peer message internal sender is closed")]
    InternalSenderClosed,
    /// A newer stream from the same sender exists (or this one is older).
    #[error("peer message stale connection from {sender_id}: epoch {epoch} is stale")]
    StaleConnection {
        /// The sender.
        sender_id: String,
        /// The epoch of the stale stream.
        epoch: i64,
    },
    /// A second stream with the same sender and epoch.
    #[error("peer message duplicate connection from {sender_id} with epoch {epoch}")]
    DuplicateConnection {
        /// The sender.
        sender_id: String,
        /// The duplicated epoch.
        epoch: i64,
    },
    /// The message server (or, on the client side, the remote stream) has closed.
    #[error("peer message server is closed")]
    ServerClosed,
    /// A sequence gap: a message was lost. Never ignored silently.
    #[error(
        "peer message data lost on topic {topic}: expected sequence {expected_seq}, got {got_seq}"
    )]
    DataLost {
        /// The topic.
        topic: String,
        /// The sequence that should have come next.
        expected_seq: i64,
        /// The sequence that came.
        got_seq: i64,
    },
    /// More peers than `MaxPeerCount`.
    #[error("peer message server has too many peers ({n_peers})")]
    TooManyPeers {
        /// Peers already registered.
        n_peers: usize,
    },
    /// The server's task queue is full.
    #[error("peer message server task queue is congested")]
    TaskQueueCongested,
    /// The sender was deregistered (its capture left the cluster); its streams are refused
    /// for the server's life.
    #[error("peer message sender {sender_id} was deregistered: its capture left the cluster")]
    SenderDeregistered {
        /// The sender.
        sender_id: String,
    },
    /// The stream's receiver ID is not this server's ID.
    #[error("peer message receiver mismatch: expected {expected}, got {actual}")]
    ReceiverMismatch {
        /// This server's ID.
        expected: String,
        /// The receiver ID in the stream meta.
        actual: String,
    },
    /// Too many messages buffered for a topic that has no handler.
    #[error("peer message topic {topic} is congested")]
    TopicCongested {
        /// The topic.
        topic: String,
    },
    /// One sender has messages buffered for too many topics without a handler.
    #[error(
        "peer message sender {sender_id} has messages for more than {limit} topics without a handler"
    )]
    TooManyPendingTopics {
        /// The sender.
        sender_id: String,
        /// `ServerConfig::max_pending_topic_count_per_sender`.
        limit: usize,
    },
    /// A restart injected by tests.
    #[error("peer message server restart injected")]
    InjectedServerRestart,
    /// A handler is already registered for the topic (a programming error).
    #[error("peer message handler already registered for topic {topic}")]
    HandlerExists {
        /// The topic.
        topic: String,
    },
    /// The handler was removed (TiCDC's `ErrWorkerPoolHandleCancelled`).
    #[error("peer message handler was cancelled")]
    HandlerCancelled,
    /// A message came for a topic whose handler has failed and is not yet removed or
    /// replaced; the sender's stream ends, and its client resends once it reconnects.
    #[error("peer message handler for topic {topic} has failed")]
    HandlerDead {
        /// The topic.
        topic: String,
    },
    /// The handler function panicked (a bug); the handler was removed, the server serves on.
    #[error("peer message handler for topic {topic} panicked: {message}")]
    HandlerPanicked {
        /// The topic.
        topic: String,
        /// The panic's message.
        message: String,
    },
    /// The handler function returned an error.
    #[error("peer message handler for topic {topic} failed")]
    Handler {
        /// The topic.
        topic: String,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// The server's response stream ended with an error status.
    #[error("peer message stream failed")]
    Stream {
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// Connecting to a peer failed or timed out.
    #[error("peer message connect to {addr} failed")]
    Connect {
        /// The address.
        addr: String,
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// A client's task panicked (a bug); the router dropped the client.
    #[error("peer message client to {receiver_id} panicked: {message}")]
    ClientPanicked {
        /// The peer the client sent to.
        receiver_id: String,
        /// The panic's message.
        message: String,
    },
    /// The server has already been run once.
    #[error("peer message server can run only once")]
    AlreadyRunning,
    /// A configuration value is invalid (`CDC:ErrInvalidServerOption`).
    #[error("invalid server option: {reason}")]
    InvalidServerOption {
        /// What is wrong.
        reason: String,
    },
    /// The caller's cancellation token fired.
    #[error("context canceled")]
    Cancelled,
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying (reconnecting, resending) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::SendTryAgain
            | Error::StaleConnection { .. }
            | Error::DuplicateConnection { .. }
            | Error::ServerClosed
            | Error::TaskQueueCongested
            | Error::TopicCongested { .. }
            | Error::TooManyPendingTopics { .. }
            | Error::InjectedServerRestart
            | Error::InternalSenderClosed
            | Error::HandlerDead { .. }
            | Error::Stream { .. }
            | Error::Connect { .. } => true,
            Error::IllegalMeta
            | Error::ClientPermanentFail { .. }
            | Error::ClientClosed
            | Error::Encode { .. }
            | Error::Decode { .. }
            | Error::DataLost { .. }
            | Error::TooManyPeers { .. }
            | Error::ReceiverMismatch { .. }
            | Error::SenderDeregistered { .. }
            | Error::HandlerExists { .. }
            | Error::HandlerCancelled
            | Error::HandlerPanicked { .. }
            | Error::Handler { .. }
            | Error::ClientPanicked { .. }
            | Error::AlreadyRunning
            | Error::InvalidServerOption { .. }
            | Error::Cancelled => false,
        }
    }

    /// TiCDC's RFC error code, matched on by logs and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Error::IllegalMeta => "CDC:ErrPeerMessageIllegalMeta",
            Error::ClientPermanentFail { .. } => "CDC:ErrPeerMessageClientPermanentFail",
            Error::ClientClosed => "CDC:ErrPeerMessageClientClosed",
            Error::SendTryAgain => "CDC:ErrPeerMessageSendTryAgain",
            Error::Encode { .. } => "CDC:ErrPeerMessageEncodeError",
            Error::Decode { .. } => "CDC:ErrPeerMessageDecodeError",
            Error::InternalSenderClosed => "CDC:ErrPeerMessageInternalSenderClosed",
            Error::StaleConnection { .. } => "CDC:ErrPeerMessageStaleConnection",
            Error::DuplicateConnection { .. } => "CDC:ErrPeerMessageDuplicateConnection",
            Error::ServerClosed | Error::AlreadyRunning => "CDC:ErrPeerMessageServerClosed",
            Error::DataLost { .. } => "CDC:ErrPeerMessageDataLost",
            Error::TooManyPeers { .. } => "CDC:ErrPeerMessageToManyPeers",
            Error::TaskQueueCongested => "CDC:ErrPeerMessageTaskQueueCongested",
            Error::ReceiverMismatch { .. } => "CDC:ErrPeerMessageReceiverMismatch",
            Error::SenderDeregistered { .. } => "CDC:ErrPeerMessageSenderDeregistered",
            Error::TopicCongested { .. } | Error::TooManyPendingTopics { .. } => {
                "CDC:ErrPeerMessageTopicCongested"
            }
            Error::InjectedServerRestart => "CDC:ErrPeerMessageInjectedServerRestart",
            Error::HandlerExists { .. } => "CDC:ErrPeerMessageHandlerExists",
            Error::HandlerCancelled | Error::HandlerDead { .. } => {
                "CDC:ErrWorkerPoolHandleCancelled"
            }
            Error::HandlerPanicked { .. } => "CDC:ErrPeerMessageHandlerPanicked",
            Error::Handler { .. } => "CDC:ErrPeerMessageHandlerFailed",
            Error::ClientPanicked { .. } => "CDC:ErrPeerMessageClientPanicked",
            Error::Stream { .. } | Error::Connect { .. } => "CDC:ErrPeerMessageStreamFailed",
            Error::InvalidServerOption { .. } => "CDC:ErrInvalidServerOption",
            Error::Cancelled => "CDC:ErrContextCanceled",
        }
    }

    /// The exit reason a stream gets when the server ends it with this error (TiCDC's `errorToRPCResponse` in `pkg/p2p/server.go`).
    pub fn exit_reason(&self) -> ExitReason {
        match self {
            Error::TopicCongested { .. }
            | Error::TooManyPendingTopics { .. }
            | Error::TaskQueueCongested => ExitReason::Congested,
            Error::StaleConnection { .. } => ExitReason::StaleConnection,
            Error::ReceiverMismatch { .. } => ExitReason::CaptureIdMismatch,
            // Not sent by TiCDC: the sender's capture was removed, so its incarnation is
            // over; our client treats it as permanent, a Go client reconnects and is refused.
            Error::SenderDeregistered { .. } => ExitReason::CaptureSuicide,
            // TiCDC maps DuplicateConnection to UNKNOWN; we send the dedicated value, which
            // a Go client treats the same way (any reason but OK ends the stream).
            Error::DuplicateConnection { .. } => ExitReason::DuplicateConnection,
            Error::IllegalMeta
            | Error::ClientPermanentFail { .. }
            | Error::ClientClosed
            | Error::SendTryAgain
            | Error::Encode { .. }
            | Error::Decode { .. }
            | Error::InternalSenderClosed
            | Error::ServerClosed
            | Error::DataLost { .. }
            | Error::TooManyPeers { .. }
            | Error::InjectedServerRestart
            | Error::HandlerExists { .. }
            | Error::HandlerCancelled
            | Error::HandlerDead { .. }
            | Error::HandlerPanicked { .. }
            | Error::Handler { .. }
            | Error::ClientPanicked { .. }
            | Error::Stream { .. }
            | Error::Connect { .. }
            | Error::AlreadyRunning
            | Error::InvalidServerOption { .. }
            | Error::Cancelled => ExitReason::Unknown,
        }
    }

    /// The `error_message` sent on the wire: `[code]text`, as TiCDC formats it.
    pub fn wire_message(&self) -> String {
        format!("[{}]{}", self.code(), report(self))
    }
}

/// Renders an error and its chain of sources on one line.
pub(crate) fn report(err: &(dyn std::error::Error + 'static)) -> String {
    cdc_model::ErrorReport(err).to_string()
}
