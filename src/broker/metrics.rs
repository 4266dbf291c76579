//! Counters an operator reads to see what the broker did and refused.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_dropped: AtomicU64,
    messages_expired: AtomicU64,
    connections_current: AtomicU64,
    connections_refused: AtomicU64,
}

impl Metrics {
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }
    /// Messages a full session queue could not keep.
    pub fn messages_dropped(&self) -> u64 {
        self.messages_dropped.load(Ordering::Relaxed)
    }
    /// Messages whose expiry passed before they could be delivered.
    pub fn messages_expired(&self) -> u64 {
        self.messages_expired.load(Ordering::Relaxed)
    }
    pub fn connections_current(&self) -> u64 {
        self.connections_current.load(Ordering::Relaxed)
    }
    /// Sockets closed at accept because `max_connections` was reached.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn message_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn messages_sent_add(&self, count: u64) {
        self.messages_sent.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn message_dropped(&self, client_id: &str) {
        let total = self.messages_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // One line per power of two keeps a flood of drops from flooding the log.
        if total.is_power_of_two() {
            tracing::warn!(client_id, total, "session queue full: message dropped");
        }
    }
    pub(crate) fn messages_expired_add(&self, count: u64) {
        self.messages_expired.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn connection_opened(&self) -> u64 {
        self.connections_current.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }
}
