//! [`EtcdSink`]: mirrors a span's changes into another etcd under a prefix.
//!
//! Each change's key has the span's source prefix replaced by the sink's prefix; a put is put,
//! a delete is deleted. Writes are buffered until [`Sink::flush`], which collapses the buffer to
//! the last change of each key (a mirror needs only the final value of a flush window, and etcd
//! refuses a transaction that names one key twice), cuts it into transactions of at most
//! `batch-size` operations and sends up to [`MAX_IN_FLIGHT`] of them at once. The transactions of
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
    fn take_ops(&mut self) -> Vec<TxnOp> {
        let events = std::mem::take(&mut self.buffer);
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            last.insert(event.key.as_slice(), index);
        }
        events
            .iter()
            .enumerate()
            .filter(|(index, event)| last.get(event.key.as_slice()) == Some(index))
            .map(|(_, event)| {
                let key = self.target_key(&event.key);
                match (event.op, &event.value) {
                    (OpType::Put, Some(value)) => TxnOp::Put {
                        key,
                        value: value.clone(),
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
        let mut batches = Vec::with_capacity(ops.len().div_ceil(batch_size));
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            batches.push(Txn {
                compares: Vec::new(),
                success: ops.by_ref().take(batch_size).collect(),
                failure: Vec::new(),
            });
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
