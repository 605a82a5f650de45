//! Counters of the p2p layer; the capture renders them as Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters shared by a server or by a router's clients.
#[derive(Debug, Default)]
pub struct Metrics {
    messages_sent: AtomicU64,
    messages_resent: AtomicU64,
    messages_received: AtomicU64,
    messages_repeated: AtomicU64,
    messages_acked: AtomicU64,
    reconnects: AtomicU64,
}

/// A point-in-time copy of `Metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Entries a client handed to a stream for the first time.
    pub messages_sent: u64,
    /// Entries a client sent again after a reconnect.
    pub messages_resent: u64,
    /// Entries a server's handlers processed.
    pub messages_received: u64,
    /// Duplicate entries a server dropped.
    pub messages_repeated: u64,
    /// Entries a client saw acknowledged.
    pub messages_acked: u64,
    /// Streams a client opened after its first one.
    pub reconnects: u64,
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_resent: self.messages_resent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_repeated: self.messages_repeated.load(Ordering::Relaxed),
            messages_acked: self.messages_acked.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_sent(&self, n: u64) {
        self.messages_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_resent(&self, n: u64) {
        self.messages_resent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_received(&self, n: u64) {
        self.messages_received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_repeated(&self, n: u64) {
        self.messages_repeated.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_acked(&self, n: u64) {
        self.messages_acked.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}
