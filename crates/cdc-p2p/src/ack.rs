//! The server's ack records: sender -> topic -> last processed sequence (0 means unknown),
//! and the tombstones of deregistered senders.
//!
//! Records live as long as the server, except that a sender deregistered with
//! `MessageServer::deregister_peer` (its capture was removed) trades them for a tombstone:
//! the server refuses that sender from then on, so a frozen incarnation that resumes cannot
//! start its sequences over (`docs/guarantees.md`: exactly once per sender and topic).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::warn;

type Topics = HashMap<String, Arc<AckCell>>;

/// A (sender, topic) record: the last processed sequence, or none yet.
#[derive(Debug)]
pub(crate) struct AckCell(AtomicI64);

/// What a cell holds before its first store; `range` skips it.
const NONE: i64 = i64::MIN;

impl AckCell {
    /// The last processed sequence, 0 if none yet.
    pub(crate) fn load(&self) -> i64 {
        match self.0.load(Ordering::Acquire) {
            NONE => 0,
            seq => seq,
        }
    }

    pub(crate) fn store(&self, seq: i64) {
        self.0.store(seq, Ordering::Release);
    }
}

impl Default for AckCell {
    fn default() -> Self {
        AckCell(AtomicI64::new(NONE))
    }
}

#[derive(Debug, Default)]
struct Records {
    acks: HashMap<String, Topics>,
    /// Deregistered senders, for `is_tombstoned`.
    tombstones: HashSet<String>,
    /// The same senders, oldest first, for eviction at the cap.
    tombstone_order: VecDeque<String>,
}

/// Last processed sequence per (sender, topic), and the deregistered senders. Shared by the
/// server's main loop, its streams and its workers.
///
/// Each record is an atomic cell: a worker looks its cell up once per batch and stores each
/// processed sequence without taking the map's lock.
#[derive(Debug)]
pub(crate) struct AckManager {
    records: Mutex<Records>,
    /// At most this many tombstones are kept (`ServerConfig::max_deregistered_senders`).
    max_tombstones: usize,
}

impl Default for AckManager {
    fn default() -> Self {
        AckManager::new(crate::config::ServerConfig::default().max_deregistered_senders)
    }
}

impl AckManager {
    pub(crate) fn new(max_tombstones: usize) -> Self {
        AckManager {
            records: Mutex::default(),
            max_tombstones: max_tombstones.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        // A poisoned lock only means a thread panicked while holding it; the map is valid.
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The record of (sender, topic), created empty on first use; `None` for a deregistered
    /// sender, whose messages must not be handled.
    pub(crate) fn cell(&self, sender_id: &str, topic: &str) -> Option<Arc<AckCell>> {
        let mut records = self.lock();
        if records.tombstones.contains(sender_id) {
            return None;
        }
        let topics = match records.acks.get_mut(sender_id) {
            Some(topics) => topics,
            None => records.acks.entry(sender_id.to_owned()).or_default(),
        };
        let cell = match topics.get(topic) {
            Some(cell) => Arc::clone(cell),
            None => Arc::clone(topics.entry(topic.to_owned()).or_default()),
        };
        Some(cell)
    }

    /// The last processed sequence, 0 if unknown.
    #[cfg(test)]
    pub(crate) fn get(&self, sender_id: &str, topic: &str) -> i64 {
        self.lock()
            .acks
            .get(sender_id)
            .and_then(|topics| topics.get(topic))
            .map_or(0, |cell| cell.load())
    }

    #[cfg(test)]
    pub(crate) fn set(&self, sender_id: &str, topic: &str, seq: i64) {
        if let Some(cell) = self.cell(sender_id, topic) {
            cell.store(seq);
        }
    }

    /// Visits the sender's known (topic, seq) pairs until `visit` returns false.
    pub(crate) fn range(&self, sender_id: &str, mut visit: impl FnMut(&str, i64) -> bool) {
        if let Some(topics) = self.lock().acks.get(sender_id) {
            for (topic, cell) in topics {
                let seq = cell.0.load(Ordering::Acquire);
                if seq != NONE && !visit(topic, seq) {
                    return;
                }
            }
        }
    }

    /// Forgets every sender's record of `topic`.
    #[cfg(test)]
    pub(crate) fn remove_topic(&self, topic: &str) {
        let mut records = self.lock();
        records.acks.retain(|_, topics| {
            topics.remove(topic);
            !topics.is_empty()
        });
    }

    /// The senders that have a record of `topic`.
    pub(crate) fn senders_of(&self, topic: &str) -> Vec<String> {
        self.lock()
            .acks
            .iter()
            .filter(|(_, topics)| topics.contains_key(topic))
            .map(|(sender_id, _)| sender_id.clone())
            .collect()
    }

    /// Forgets the record of (sender, topic), and the sender's entry once it has none.
    pub(crate) fn remove(&self, sender_id: &str, topic: &str) {
        let mut records = self.lock();
        if let Some(topics) = records.acks.get_mut(sender_id) {
            topics.remove(topic);
            if topics.is_empty() {
                records.acks.remove(sender_id);
            }
        }
    }

    /// The number of (sender, topic) records.
    #[cfg(test)]
    pub(crate) fn n_records(&self) -> usize {
        self.lock().acks.values().map(HashMap::len).sum()
    }

    /// Whether `sender_id` was deregistered.
    pub(crate) fn is_tombstoned(&self, sender_id: &str) -> bool {
        self.lock().tombstones.contains(sender_id)
    }

    /// Replaces a deregistered sender's records by a tombstone, so that a later stream with
    /// its ID is refused instead of starting from "unknown" (which would handle again the
    /// messages processed but not yet acked, and miss a gap). Returns false if the sender
    /// was already deregistered.
    ///
    /// A capture ID names one incarnation (every incarnation takes a new one, see
    /// ARCHITECTURE.md), so the tombstones grow by one per removed incarnation; past the cap,
    /// the oldest goes, with a warning.
    pub(crate) fn tombstone(&self, sender_id: &str) -> bool {
        let mut records = self.lock();
        records.acks.remove(sender_id);
        if !records.tombstones.insert(sender_id.to_owned()) {
            return false;
        }
        records.tombstone_order.push_back(sender_id.to_owned());
        while records.tombstone_order.len() > self.max_tombstones {
            if let Some(oldest) = records.tombstone_order.pop_front() {
                records.tombstones.remove(&oldest);
                warn!(sender_id = %oldest, limit = self.max_tombstones, "p2p tombstone of a deregistered sender evicted");
            }
        }
        true
    }
}
