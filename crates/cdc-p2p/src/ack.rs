//! The server's ack records: sender -> topic -> last processed sequence (0 means unknown).

use std::collections::HashMap;
use std::sync::Mutex;

/// Last processed sequence per (sender, topic). Shared by the main loop and the workers.
#[derive(Debug, Default)]
pub(crate) struct AckManager {
    acks: Mutex<HashMap<String, HashMap<String, i64>>>,
}

impl AckManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, i64>>> {
        // A poisoned lock only means a handler panicked while holding it; the map is valid.
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last processed sequence, 0 if unknown.
    pub(crate) fn get(&self, sender_id: &str, topic: &str) -> i64 {
        self.lock()
            .get(sender_id)
            .and_then(|topics| topics.get(topic))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn set(&self, sender_id: &str, topic: &str, seq: i64) {
        let mut acks = self.lock();
        let topics = match acks.get_mut(sender_id) {
            Some(topics) => topics,
            None => acks.entry(sender_id.to_owned()).or_default(),
        };
        match topics.get_mut(topic) {
            Some(last) => *last = seq,
            None => {
                topics.insert(topic.to_owned(), seq);
            }
        }
    }

    /// Visits the sender's (topic, seq) pairs until `visit` returns false.
    pub(crate) fn range(&self, sender_id: &str, mut visit: impl FnMut(&str, i64) -> bool) {
        if let Some(topics) = self.lock().get(sender_id) {
            for (topic, seq) in topics {
                if !visit(topic, *seq) {
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

    #[cfg(test)]
    pub(crate) fn remove_node(&self, sender_id: &str) {
        self.lock().remove(sender_id);
    }
}
