//! The server's ack records: sender -> topic -> last processed sequence (0 means unknown).
//!
//! Records live as long as the server, except that a sender deregistered with
//! `MessageServer::schedule_deregister_peer_task` (its capture was removed) loses them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Last processed sequence per (sender, topic). Shared by the main loop and the workers.
///
/// Each record is an atomic cell: a worker looks its cell up once per batch and stores each
/// processed sequence without taking the map's lock.
#[derive(Debug, Default)]
pub(crate) struct AckManager {
    acks: Mutex<HashMap<String, Topics>>,
}

impl AckManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topics>> {
        // A poisoned lock only means a handler panicked while holding it; the map is valid.
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The record of (sender, topic), created empty on first use.
    pub(crate) fn cell(&self, sender_id: &str, topic: &str) -> Arc<AckCell> {
        let mut acks = self.lock();
        let topics = match acks.get_mut(sender_id) {
            Some(topics) => topics,
            None => acks.entry(sender_id.to_owned()).or_default(),
        };
        match topics.get(topic) {
            Some(cell) => Arc::clone(cell),
            None => Arc::clone(topics.entry(topic.to_owned()).or_default()),
        }
    }

    /// The last processed sequence, 0 if unknown.
    #[cfg(test)]
    pub(crate) fn get(&self, sender_id: &str, topic: &str) -> i64 {
        self.lock()
            .get(sender_id)
            .and_then(|topics| topics.get(topic))
            .map_or(0, |cell| cell.load())
    }

    #[cfg(test)]
    pub(crate) fn set(&self, sender_id: &str, topic: &str, seq: i64) {
        self.cell(sender_id, topic).store(seq);
    }

    /// Visits the sender's known (topic, seq) pairs until `visit` returns false.
    pub(crate) fn range(&self, sender_id: &str, mut visit: impl FnMut(&str, i64) -> bool) {
        if let Some(topics) = self.lock().get(sender_id) {
            for (topic, cell) in topics {
                let seq = cell.0.load(Ordering::Acquire);
                if seq != NONE && !visit(topic, seq) {
                    return;
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn remove_topic(&self, topic: &str) {
        for topics in self.lock().values_mut() {
            topics.remove(topic);
        }
    }

    /// Forgets a sender's records. Only for a sender removed for good (its capture left the
    /// cluster): a later stream with the same ID would start from "unknown" and could see
    /// messages again that were processed but not yet acked.
    pub(crate) fn remove_node(&self, sender_id: &str) {
        self.lock().remove(sender_id);
    }
}
