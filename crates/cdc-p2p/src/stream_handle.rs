//! The server's handle on one stream's responses: a bounded channel that can be closed
//! while senders are active.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::proto::{SendMessageResponse, StreamMeta};

pub(crate) type ResponseItem = std::result::Result<SendMessageResponse, Status>;

/// The sending side of a stream's responses.
#[derive(Debug, Clone)]
pub(crate) struct StreamHandle {
    meta: StreamMeta,
    tx: mpsc::Sender<ResponseItem>,
    closed: CancellationToken,
}

/// Why a non-blocking send failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError {
    Full,
    Closed,
}

impl StreamHandle {
    /// A handle whose `close` cancels `closed` (which the response stream watches).
    pub(crate) fn with_closed(
        meta: StreamMeta,
        tx: mpsc::Sender<ResponseItem>,
        closed: CancellationToken,
    ) -> Self {
        StreamHandle { meta, tx, closed }
    }

    pub(crate) fn meta(&self) -> &StreamMeta {
        &self.meta
    }

    pub(crate) fn try_send(&self, item: ResponseItem) -> Result<(), TrySendError> {
        if self.closed.is_cancelled() {
            return Err(TrySendError::Closed);
        }
        self.tx.try_send(item).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => TrySendError::Full,
            mpsc::error::TrySendError::Closed(_) => TrySendError::Closed,
        })
    }

    /// Ends the stream once the responses already queued are delivered. Idempotent.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.tx.is_closed()
    }

    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }
}
