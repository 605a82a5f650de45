//! The local channel: messages a capture sends to itself, handed over in memory.

use std::any::Any;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::topic::Topic;

/// Capacity of the local channel.
pub(crate) const LOCAL_CHANNEL_SIZE: usize = 1024;

/// A message to oneself: no encoding, no sequence, no ack.
pub(crate) struct LocalEntry {
    pub(crate) topic: String,
    pub(crate) value: Box<dyn Any + Send>,
}

/// The receiving end of the local channel; hand it to `MessageServer::run`.
pub struct LocalReceiver {
    rx: mpsc::Receiver<LocalEntry>,
}

impl std::fmt::Debug for LocalReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReceiver").finish_non_exhaustive()
    }
}

impl LocalReceiver {
    pub(crate) async fn recv_many(&mut self, buffer: &mut Vec<LocalEntry>, limit: usize) -> usize {
        self.rx.recv_many(buffer, limit).await
    }
}

/// The client a capture uses for messages to itself.
#[derive(Debug, Clone)]
pub struct LocalClient {
    tx: mpsc::Sender<LocalEntry>,
    /// One counter across all topics; the lock keeps queue order equal to sequence order.
    seq: Arc<Mutex<i64>>,
}

impl LocalClient {
    /// A local client and the receiver to pass to the server.
    pub fn new() -> (LocalClient, LocalReceiver) {
        let (tx, rx) = mpsc::channel(LOCAL_CHANNEL_SIZE);
        let client = LocalClient {
            tx,
            seq: Arc::default(),
        };
        (client, LocalReceiver { rx })
    }

    fn commit(
        &self,
        permit: mpsc::Permit<'_, LocalEntry>,
        topic: &str,
        value: Box<dyn Any + Send>,
    ) -> i64 {
        let mut seq = self
            .seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *seq += 1;
        permit.send(LocalEntry {
            topic: topic.to_owned(),
            value,
        });
        *seq
    }

    /// Queues a message for this capture's own handler, waiting for space.
    pub async fn send_message<T: Topic>(
        &self,
        topic: &T,
        message: T::Message,
        cancel: &CancellationToken,
    ) -> Result<i64> {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            permit = self.tx.reserve() => permit.map_err(|_| Error::ClientClosed)?,
        };
        Ok(self.commit(permit, topic.name(), Box::new(message)))
    }

    /// Queues a message, failing with `SendTryAgain` when the channel is full.
    pub fn try_send_message<T: Topic>(&self, topic: &T, message: T::Message) -> Result<i64> {
        let permit = self.tx.try_reserve().map_err(|err| match err {
            mpsc::error::TrySendError::Full(()) => Error::SendTryAgain,
            mpsc::error::TrySendError::Closed(()) => Error::ClientClosed,
        })?;
        Ok(self.commit(permit, topic.name(), Box::new(message)))
    }

    /// `(last sequence, false)`: local messages are never acked.
    pub fn current_ack(&self, _topic: &str) -> (i64, bool) {
        (
            *self
                .seq
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            false,
        )
    }
}
