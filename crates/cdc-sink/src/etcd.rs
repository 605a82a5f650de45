//! [`EtcdSink`]: mirrors a span's changes into another etcd under a prefix.
//!
//! Each change's key has the span's source prefix replaced by the sink's prefix; a put is put,
//! a delete is deleted. Writes are buffered until [`Sink::flush`], which collapses the buffer to
//! the last change of each key (a mirror needs only the final value of a flush window, and etcd
//! refuses a transaction that names one key twice), cuts it into transactions of at most
//! `batch-size` operations and [`MAX_TXN_BYTES`] and sends up to [`MAX_IN_FLIGHT`] of them at once. The transactions of
//! one flush name disjoint keys, so their order does not matter; a flush returns only when all of
//! them are committed, so a later flush never overtakes an earlier one: per key, the last change
//! in revision order wins.

use std::collections::HashMap;

use cdc_etcd::{ConnectConfig, EtcdClient, Txn, TxnOp};
use cdc_model::{ChangeEvent, OpType};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::uri::EtcdSinkConfig;

/// Transactions of one flush in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// The most bytes of keys and values in one transaction, below etcd's default
/// `--max-request-bytes` (1.5 MiB); a single larger change goes alone.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// The bytes an operation adds to a transaction.
fn op_bytes(op: &TxnOp) -> usize {
    match op {
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
        TxnOp::Delete { key, .. } | TxnOp::Get { key, .. } => key.len(),
    }
}

/// A mirror of one span in another etcd.
#[derive(Debug)]
pub struct EtcdSink {
    client: EtcdClient,
    config: EtcdSinkConfig,
    source_prefix: Vec<u8>,
    buffer: Vec<ChangeEvent>,
}

impl EtcdSink {
    /// Connects to the sink's etcd. Spans of one changefeed on one capture share the client.
    pub async fn connect(config: &EtcdSinkConfig) -> Result<EtcdClient> {
        EtcdClient::connect(&config.endpoints, ConnectConfig::default())
            .await
            .map_err(|source| Error::Etcd {
                op: "connect",
                endpoints: config.endpoints.join(","),
                source: Box::new(source),
            })
    }

    /// A sink on `client` for a span whose keys start with `source_prefix` (the changefeed rule
    /// the span was cut from).
    pub fn new(client: EtcdClient, config: EtcdSinkConfig, source_prefix: Vec<u8>) -> EtcdSink {
        EtcdSink {
            client,
            config,
            source_prefix,
            buffer: Vec::new(),
        }
    }

    /// The key `key` has in the mirror.
    pub fn target_key(&self, key: &[u8]) -> Vec<u8> {
        let rest = key
            .strip_prefix(self.source_prefix.as_slice())
            .unwrap_or(key);
        let mut target = Vec::with_capacity(self.config.prefix.len() + rest.len());
        target.extend_from_slice(&self.config.prefix);
        target.extend_from_slice(rest);
        target
    }

    /// The buffer as operations: the last change of each key, in the order of those changes.
    /// The changes' keys and values move into the operations, so a flush holds one copy.
    fn take_ops(&mut self) -> Vec<TxnOp> {
        let events = std::mem::take(&mut self.buffer);
        let keep: Vec<bool> = {
            let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                last.insert(event.key.as_slice(), index);
            }
            (0..events.len())
                .map(|index| last.get(events[index].key.as_slice()) == Some(&index))
                .collect()
        };
        events
            .into_iter()
            .zip(keep)
            .filter(|(_, keep)| *keep)
            .map(|(event, _)| {
                let key = self.target_key(&event.key);
                match (event.op, event.value) {
                    (OpType::Put, Some(value)) => TxnOp::Put {
                        key,
                        value,
                        lease: 0,
                    },
                    (OpType::Put, None) | (OpType::Delete, _) => {
                        TxnOp::Delete { key, prefix: false }
                    }
                }
            })
            .collect()
    }
}

impl Sink for EtcdSink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        self.buffer.extend_from_slice(events);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let ops = self.take_ops();
        let batch_size = self.config.batch_size.max(1);
        let mut batches: Vec<Txn> = Vec::with_capacity(ops.len().div_ceil(batch_size));
        let mut bytes = 0;
        for op in ops {
            let size = op_bytes(&op);
            let full = batches
                .last()
                .is_none_or(|txn| txn.success.len() >= batch_size || bytes + size > MAX_TXN_BYTES);
            if full {
                batches.push(Txn {
                    compares: Vec::new(),
                    success: Vec::new(),
                    failure: Vec::new(),
                });
                bytes = 0;
            }
            bytes += size;
            if let Some(txn) = batches.last_mut() {
                txn.success.push(op);
            }
        }
        let client = &self.client;
        let endpoints = &self.config.endpoints;
        stream::iter(batches)
            .map(|txn| async move {
                client.txn(txn).await.map_err(|source| Error::Etcd {
                    op: "txn",
                    endpoints: endpoints.join(","),
                    source: Box::new(source),
                })
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    async fn close(self) -> Result<()> {
        Ok(())
    }
}
