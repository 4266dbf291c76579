//! What a bridge reports: connected or not, to which address, the last
//! error, reconnections and message counts. Written by the bridge's task,
//! read by the admin API, /metrics and `$SYS`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// One bridge's live state.
#[derive(Debug)]
pub struct BridgeStatus {
    name: String,
    local_client_id: Arc<str>,
    connected: AtomicBool,
    /// Messages the remote acknowledged (QoS 1/2) or was sent (QoS 0).
    sent: AtomicU64,
    /// Messages that came from the remote and were published here.
    received: AtomicU64,
    /// Messages the remote refused (an error reason code in its
    /// acknowledgement) or that could not be sent to it (too large, no
    /// rule maps them any more).
    refused: AtomicU64,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default, Clone)]
struct Detail {
    address: Option<String>,
    last_error: Option<String>,
    /// Connections the remote accepted: those after the first are the
    /// reconnections.
    connections: u64,
}

/// A bridge as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BridgeReport {
    pub name: String,
    pub connected: bool,
    /// The address connected to, or last tried.
    pub address: Option<String>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Messages waiting for the remote: queued and unacknowledged.
    pub queued_messages: u64,
    pub queued_bytes: u64,
    pub sent: u64,
    pub received: u64,
    /// Lost to a full queue, refused by the remote, or unsendable.
    pub dropped: u64,
}

/// What the bridge's own session holds, read by the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueFigures {
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
}

impl BridgeStatus {
    pub fn new(name: &str) -> BridgeStatus {
        BridgeStatus {
            name: name.to_string(),
            local_client_id: super::spec::local_client_id(name).into(),
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            detail: Mutex::new(Detail::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_client_id(&self) -> &Arc<str> {
        &self.local_client_id
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bridge is trying `address`.
    pub fn trying(&self, address: &str) {
        self.detail().address = Some(address.to_string());
    }

    /// The remote accepted the bridge.
    pub fn connected(&self) {
        self.detail().connections += 1;
        self.connected.store(true, Ordering::Release);
    }

    /// The connection ended, or an attempt failed, for `error`.
    pub fn failed(&self, error: String) {
        self.connected.store(false, Ordering::Release);
        self.detail().last_error = Some(error);
    }

    pub fn disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    pub fn count_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn count_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The report, with what the bridge's session holds.
    pub fn report(&self, queue: QueueFigures) -> BridgeReport {
        let detail = self.detail().clone();
        BridgeReport {
            name: self.name.clone(),
            connected: self.is_connected(),
            address: detail.address,
            last_error: detail.last_error,
            reconnects: detail.connections.saturating_sub(1),
            queued_messages: queue.messages,
            queued_bytes: queue.bytes,
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: queue.dropped + self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_connection_is_not_a_reconnect_and_failures_keep_the_last_error() {
        let status = BridgeStatus::new("up");
        status.trying("127.0.0.1:1884");
        status.connected();
        assert!(status.is_connected());
        status.failed("remote closed the connection".into());
        status.connected();
        status.count_sent(3);
        status.count_refused();
        let report = status.report(QueueFigures {
            messages: 5,
            bytes: 50,
            dropped: 2,
        });
        assert_eq!(report.reconnects, 1);
        assert_eq!(
            report.last_error.as_deref(),
            Some("remote closed the connection")
        );
        assert_eq!(report.address.as_deref(), Some("127.0.0.1:1884"));
        assert_eq!(
            (report.sent, report.dropped, report.queued_messages),
            (3, 3, 5)
        );
    }
}
