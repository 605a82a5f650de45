//! The server's handler workers: each runs its handlers one message at a time, in order.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::SenderId;
use crate::ack::AckManager;
use crate::error::{BoxError, Error, Result, report};
use crate::metrics::Metrics;
use crate::proto::MessageEntry;
use crate::topic::{Codec, Topic};

pub(super) enum WorkerEvent {
    Register {
        id: u64,
        topic: Arc<str>,
        handler: Box<dyn ErasedHandler>,
        cancelled: Arc<AtomicBool>,
        dead: Arc<AtomicBool>,
    },
    Remote {
        id: u64,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    },
    Local {
        id: u64,
        sender_id: SenderId,
        value: Box<dyn Any + Send>,
    },
    /// The last event of a handler; `done` gets whether it left no message unprocessed.
    Unregister {
        id: u64,
        done: oneshot::Sender<bool>,
    },
}

struct WorkerSlot {
    topic: Arc<str>,
    handler: Box<dyn ErasedHandler>,
    cancelled: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    /// Whether removal stopped it before a message given to it.
    dropped: bool,
}

pub(super) async fn run_worker(
    mut events: mpsc::Receiver<WorkerEvent>,
    acks: Arc<AckManager>,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let mut slots: HashMap<u64, WorkerSlot> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            WorkerEvent::Register {
                id,
                topic,
                handler,
                cancelled,
                dead,
            } => {
                slots.insert(
                    id,
                    WorkerSlot {
                        topic,
                        handler,
                        cancelled,
                        dead,
                        dropped: false,
                    },
                );
            }
            WorkerEvent::Remote {
                id,
                sender_id,
                entries,
            } => {
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                let context = HandlerContext {
                    acks: &acks,
                    metrics: &metrics,
                    cancelled: &slot.cancelled,
                };
                let handling = slot.handler.handle_remote(context, sender_id, entries);
                match isolate_panic(&slot.topic, handling).await {
                    Ok(true) => {}
                    Ok(false) => slot.dropped = true,
                    Err(err) => fail_handler(&mut slots, id, err),
                }
            }
            WorkerEvent::Local {
                id,
                sender_id,
                value,
            } => {
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                if slot.cancelled.load(Ordering::Acquire) {
                    continue;
                }
                let handling = slot.handler.handle_local(sender_id, value);
                if let Err(err) = isolate_panic(&slot.topic, handling).await {
                    fail_handler(&mut slots, id, err);
                }
            }
            WorkerEvent::Unregister { id, done } => {
                // A missing slot is a handler that failed, leaving its messages unprocessed.
                let clean = slots.remove(&id).is_some_and(|slot| {
                    slot.handler.report(Error::HandlerCancelled);
                    !slot.dropped
                });
                let _ = done.send(clean);
            }
        }
    }
    Ok(())
}

/// Runs a handler call, turning a panic into `HandlerPanicked`: a handler's bug fails that
/// handler (removed and reported like any handler error), not the server, as a client's
/// panic fails only that client (see `router.rs`).
async fn isolate_panic<T>(topic: &str, handling: BoxFuture<'_, Result<T>>) -> Result<T> {
    match AssertUnwindSafe(handling).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(Error::HandlerPanicked {
            topic: topic.to_owned(),
            message: crate::router::panic_message(payload.as_ref()),
        }),
    }
}

fn fail_handler(slots: &mut HashMap<u64, WorkerSlot>, id: u64, err: Error) {
    if let Some(slot) = slots.remove(&id) {
        warn!(error = %report(&err), "p2p handler failed");
        slot.dead.store(true, Ordering::Release);
        slot.handler.report(err);
    }
}

pub(super) struct HandlerContext<'a> {
    acks: &'a AckManager,
    metrics: &'a Metrics,
    cancelled: &'a AtomicBool,
}

pub(super) trait ErasedHandler: Send {
    /// Handles a batch; `Ok(false)` if removal stopped it before the batch's end.
    fn handle_remote<'a>(
        &'a mut self,
        context: HandlerContext<'a>,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    ) -> BoxFuture<'a, Result<bool>>;

    fn handle_local(
        &mut self,
        sender_id: SenderId,
        value: Box<dyn Any + Send>,
    ) -> BoxFuture<'_, Result<()>>;

    /// Delivers the handler's terminal error to its error channel.
    fn report(&self, err: Error);
}

pub(super) struct TypedHandler<T, F> {
    pub(super) topic: String,
    pub(super) handler: F,
    pub(super) err_tx: mpsc::Sender<Error>,
    pub(super) _topic: std::marker::PhantomData<fn() -> T>,
}

impl<T, F, Fut> ErasedHandler for TypedHandler<T, F>
where
    T: Topic,
    F: FnMut(SenderId, T::Message) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn handle_remote<'a>(
        &'a mut self,
        context: HandlerContext<'a>,
        sender_id: SenderId,
        entries: Vec<MessageEntry>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // One lookup per batch; each processed message is then acked by a plain store.
            let Some(ack) = context.acks.cell(&sender_id, &self.topic) else {
                debug!(%sender_id, topic = %self.topic, "messages of a deregistered sender dropped");
                return Ok(true);
            };
            let mut last = ack.load();
            for entry in entries {
                if context.cancelled.load(Ordering::Acquire) {
                    return Ok(false);
                }
                if entry.sequence <= last {
                    context.metrics.add_repeated(1);
                    continue;
                }
                if last != 0 && entry.sequence > last + 1 {
                    return Err(Error::DataLost {
                        topic: self.topic.clone(),
                        expected_seq: last + 1,
                        got_seq: entry.sequence,
                    });
                }
                let message = decode::<T>(&self.topic, entry.content)?;
                (self.handler)(Arc::clone(&sender_id), message)
                    .await
                    .map_err(|source| Error::Handler {
                        topic: self.topic.clone(),
                        source,
                    })?;
                last = entry.sequence;
                ack.store(last);
                context.metrics.add_received(1);
            }
            Ok(true)
        })
    }

    fn handle_local(
        &mut self,
        sender_id: SenderId,
        value: Box<dyn Any + Send>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let message = value.downcast::<T::Message>().map_err(|_| Error::Decode {
                topic: self.topic.clone(),
                source: "local message of another type".into(),
            })?;
            (self.handler)(sender_id, *message)
                .await
                .map_err(|source| Error::Handler {
                    topic: self.topic.clone(),
                    source,
                })
        })
    }

    fn report(&self, err: Error) {
        let _ = self.err_tx.try_send(err);
    }
}

fn decode<T: Topic>(topic: &str, payload: Bytes) -> Result<T::Message> {
    T::Codec::decode(payload).map_err(|source| Error::Decode {
        topic: topic.to_owned(),
        source,
    })
}
