//! [`EtcdSink`]: mirrors a span's changes into another etcd under a prefix, fenced per key by
//! source revision.
//!
//! Each change's key has the span's source prefix replaced by the sink's prefix; a put is put,
//! a delete is deleted. Writes are buffered until [`Sink::flush`], which collapses the buffer to
//! the last change of each key (a mirror needs only the final value of a flush window, and etcd
//! refuses a transaction that names one key twice), cuts it into transactions of at most
//! `batch-size` operations and [`MAX_TXN_BYTES`] and sends up to [`MAX_IN_FLIGHT`] of them at
//! once. The transactions of one flush name disjoint keys, so their order does not matter; a
//! flush returns only when all of them are committed, so a later flush never overtakes an
//! earlier one.
//!
//! # The revision fence
//!
//! Two sinks may write one span's keys at once: a capture frozen past its lease's TTL still
//! flushes, on its SIGCONT and before it notices the lost lease, what it held from before the
//! freeze, after the span's new capture wrote newer changes (docs/guarantees.md, "The data plane,
//! end to end"). So every mirrored key `K` has a revision record, the key
//! `REVISION_RECORD_PREFIX` (`cdc-mirror-revision`) followed by `K` (for the sink prefix `/mirror/`, the records live
//! under `cdc-mirror-revision/mirror/`), whose value is the source revision of the last change
//! applied to `K` as a 20-digit decimal, so that etcd's byte order of values is their numeric
//! order. Mirror prefixes start with `/` (the sink URI's path), the records' prefix does not, so
//! the records are never inside a mirror and the mirror stays byte-equal to the upstream.
//!
//! Each change is two operations of one transaction: the key's put (or delete) and its record's
//! put, guarded by the record holding an older revision. A delete leaves its record (a
//! tombstone), so an older put replayed later cannot resurrect the key. When a guard fails (a
//! record absent, newer, or written meanwhile), the transaction's failure branch reads the
//! batch's records; the changes whose revision is not newer than their record's are dropped
//! (the mirror already holds a later state of the key) and the rest are sent again with exact
//! guards (the record still absent, or still at the modification that was read), at most
//! `MAX_FENCE_ATTEMPTS` (8) times. Per key, the change with the highest source revision wins,
//! whatever order the sinks' transactions arrive in.
//!
//! Records are never deleted: the sink etcd keeps one small key per key ever mirrored, deleted
//! ones included. Removing a mirror's records while no changefeed writes into it is safe;
//! removing them while one does reopens the window above. A mirror fed from another upstream,
//! or from an upstream whose revisions started over, needs its records removed first: its
//! changes would otherwise be compared with revisions of another history.

use std::collections::HashMap;

use cdc_etcd::{
    Compare, CompareOp, ConnectConfig, EtcdClient, GetOptions, KeyValue, TlsConfig, Txn, TxnOp,
    TxnOpResponse,
};
use cdc_model::{ChangeEvent, OpType};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::uri::EtcdSinkConfig;

/// Transactions of one flush in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// The most bytes of keys and values in one transaction (revision records included), below
/// etcd's default `--max-request-bytes` (1.5 MiB); a single larger change goes alone.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// What precedes a mirrored key in the key of its revision record.
pub(crate) const REVISION_RECORD_PREFIX: &[u8] = b"cdc-mirror-revision";

/// Attempts of one transaction whose guards keep failing before the flush fails.
pub(crate) const MAX_FENCE_ATTEMPTS: usize = 8;

/// The width of a record's value: `u64::MAX` has 20 decimal digits.
const REVISION_WIDTH: usize = 20;

/// The value of a revision record: `revision` as a 20-digit decimal.
pub(crate) fn revision_record_value(revision: u64) -> Vec<u8> {
    format!("{revision:0width$}", width = REVISION_WIDTH).into_bytes()
}

/// The revision a record's value holds; `None` when it is not 20 decimal digits (a record
/// written by someone else, which any change overwrites).
fn parse_revision_record(value: &[u8]) -> Option<u64> {
    if value.len() != REVISION_WIDTH || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// One key's change as the mirror applies it.
#[derive(Debug)]
struct MirrorChange {
    /// The key in the mirror.
    key: Vec<u8>,
    /// The key of its revision record.
    record: Vec<u8>,
    /// The source revision.
    revision: u64,
    /// The value to put; `None` deletes the key.
    value: Option<Vec<u8>>,
}

impl MirrorChange {
    /// The bytes the change adds to a transaction.
    fn bytes(&self) -> usize {
        self.key.len()
            + self.value.as_ref().map_or(0, Vec::len)
            + self.record.len()
            + REVISION_WIDTH
    }

    /// The change's two operations: the key's put or delete, and its record's put.
    fn push_ops(&self, ops: &mut Vec<TxnOp>) {
        ops.push(match &self.value {
            Some(value) => TxnOp::Put {
                key: self.key.clone(),
                value: value.clone(),
                lease: 0,
            },
            None => TxnOp::Delete {
                key: self.key.clone(),
                prefix: false,
            },
        });
        ops.push(TxnOp::Put {
            key: self.record.clone(),
            value: revision_record_value(self.revision),
            lease: 0,
        });
    }
}

/// What a transaction's guard expects of a change's record.
#[derive(Clone, Copy, Debug)]
enum Guard {
    /// A record older than the change (the first attempt's guess: the key was mirrored before).
    Older,
    /// No record (as read by the previous attempt).
    Absent,
    /// The record as read by the previous attempt, at this modification revision.
    Unchanged(i64),
}

impl Guard {
    fn compare(self, change: &MirrorChange) -> Compare {
        match self {
            Guard::Older => Compare::Value {
                key: change.record.clone(),
                op: CompareOp::Less,
                value: revision_record_value(change.revision),
            },
            Guard::Absent => Compare::CreateRevision {
                key: change.record.clone(),
                op: CompareOp::Equal,
                revision: 0,
            },
            Guard::Unchanged(mod_revision) => Compare::ModRevision {
                key: change.record.clone(),
                op: CompareOp::Equal,
                revision: mod_revision,
            },
        }
    }

    /// The guard of a change whose record was read as `record`, or `None` when the record is
    /// not older than the change (the change is dropped).
    fn after_read(change: &MirrorChange, record: Option<&KeyValue>) -> Option<Guard> {
        match record {
            None => Some(Guard::Absent),
            Some(record) => match parse_revision_record(&record.value) {
                Some(revision) if revision >= change.revision => None,
                Some(_) | None => Some(Guard::Unchanged(record.mod_revision)),
            },
        }
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
    /// With TLS (`ca`) the endpoints are `https://` and the server must present a certificate
    /// signed by the CA for the endpoint's host; with `cert` and `key` the sink presents its
    /// certificate, as etcd's `--client-cert-auth` requires.
    pub async fn connect(config: &EtcdSinkConfig) -> Result<EtcdClient> {
        let (endpoints, tls) = match &config.tls {
            None => (config.endpoints.clone(), None),
            Some(tls) => {
                let loaded = tls.load().await?;
                (
                    config
                        .endpoints
                        .iter()
                        .map(|endpoint| format!("https://{endpoint}"))
                        .collect(),
                    Some(std::sync::Arc::new(TlsConfig {
                        ca_pem: loaded.ca_pem,
                        identity: loaded.identity,
                    })),
                )
            }
        };
        let connect = ConnectConfig {
            tls,
            ..ConnectConfig::default()
        };
        EtcdClient::connect(&endpoints, connect)
            .await
            .map_err(|source| Error::Etcd {
                op: "connect",
                endpoints: config.endpoints.join(","),
                source: Box::new(source),
            })
    }

    /// A sink on `client` for a span whose keys start with `source_prefix` (the changefeed rule
    /// the span was cut from). The config's prefix starts with `/`, as [`crate::SinkUri`]
    /// makes it, so no revision record falls inside the mirror.
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

    /// The key of the revision record of the mirror key `target_key`.
    pub fn record_key(target_key: &[u8]) -> Vec<u8> {
        let mut record = Vec::with_capacity(REVISION_RECORD_PREFIX.len() + target_key.len());
        record.extend_from_slice(REVISION_RECORD_PREFIX);
        record.extend_from_slice(target_key);
        record
    }

    /// The buffer as mirror changes: the last change of each key, in the order of those
    /// changes. The changes' keys and values move out of the buffer, so a flush holds one copy.
    fn take_changes(&mut self) -> Vec<MirrorChange> {
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
                let record = EtcdSink::record_key(&key);
                let value = match (event.op, event.value) {
                    (OpType::Put, Some(value)) => Some(value),
                    (OpType::Put, None) | (OpType::Delete, _) => None,
                };
                MirrorChange {
                    key,
                    record,
                    revision: event.revision,
                    value,
                }
            })
            .collect()
    }
}

/// Commits `changes` (distinct keys) under the revision fence: each is applied only if its
/// record is older, the others are dropped.
async fn commit_fenced(
    client: &EtcdClient,
    endpoints: &[String],
    mut changes: Vec<MirrorChange>,
) -> Result<()> {
    let mut guards = vec![Guard::Older; changes.len()];
    for _ in 0..MAX_FENCE_ATTEMPTS {
        if changes.is_empty() {
            return Ok(());
        }
        let mut success = Vec::with_capacity(2 * changes.len());
        for change in &changes {
            change.push_ops(&mut success);
        }
        let txn = Txn {
            compares: changes
                .iter()
                .zip(&guards)
                .map(|(change, guard)| guard.compare(change))
                .collect(),
            success,
            failure: changes
                .iter()
                .map(|change| TxnOp::Get {
                    key: change.record.clone(),
                    options: GetOptions::default(),
                })
                .collect(),
        };
        let response = client.txn(txn).await.map_err(|source| Error::Etcd {
            op: "txn",
            endpoints: endpoints.join(","),
            source: Box::new(source),
        })?;
        if response.succeeded {
            return Ok(());
        }
        if response.responses.len() != changes.len() {
            return Err(Error::EtcdFence {
                endpoints: endpoints.join(","),
                reason: "answered a refused transaction with fewer reads than it asked",
            });
        }
        let mut kept = Vec::with_capacity(changes.len());
        guards.clear();
        for (change, answer) in changes.into_iter().zip(response.responses) {
            let TxnOpResponse::Get(read) = answer else {
                return Err(Error::EtcdFence {
                    endpoints: endpoints.join(","),
                    reason: "answered a read of a revision record with another operation",
                });
            };
            if let Some(guard) = Guard::after_read(&change, read.kvs.first()) {
                kept.push(change);
                guards.push(guard);
            }
        }
        changes = kept;
    }
    if changes.is_empty() {
        return Ok(());
    }
    Err(Error::EtcdFence {
        endpoints: endpoints.join(","),
        reason: "revision records kept changing under every attempt of a transaction",
    })
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
        let changes = self.take_changes();
        // Each change is two operations (its key and its revision record).
        let changes_per_txn = (self.config.batch_size / 2).max(1);
        let mut batches: Vec<Vec<MirrorChange>> =
            Vec::with_capacity(changes.len().div_ceil(changes_per_txn));
        let mut bytes = 0;
        for change in changes {
            let size = change.bytes();
            let full = batches
                .last()
                .is_none_or(|batch| batch.len() >= changes_per_txn || bytes + size > MAX_TXN_BYTES);
            if full {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(batch) = batches.last_mut() {
                batch.push(change);
            }
        }
        let client = &self.client;
        let endpoints = &self.config.endpoints;
        stream::iter(batches)
            .map(|batch| commit_fenced(client, endpoints, batch))
            .buffer_unordered(MAX_IN_FLIGHT)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    async fn close(self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
