//! Totals over every session, counted when asked (a `/metrics` scrape),
//! so the paths that change them never pay for keeping them.

use super::BrokerState;

/// What the sessions hold, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTally {
    pub online: u64,
    pub offline: u64,
    /// Sessions that outlive their connection (expiry above 0).
    pub persistent: u64,
    pub subscriptions: u64,
    /// Deliveries sent and not yet acknowledged.
    pub inflight: u64,
    /// Deliveries waiting to be sent, in memory or spilled to the log.
    pub queued: u64,
}

impl BrokerState {
    /// Counts every session, locking each briefly in turn.
    pub fn session_tally(&self) -> SessionTally {
        let mut tally = SessionTally::default();
        for entry in self.sessions.iter() {
            let session = entry.value();
            if session.is_online() {
                tally.online += 1;
            } else {
                tally.offline += 1;
            }
            tally.persistent += u64::from(session.is_persistent());
            let state = session.lock();
            tally.subscriptions += state.subscription_count() as u64;
            tally.inflight += state.outbound.inflight().count() as u64;
            tally.queued += state.outbound.queued() as u64;
        }
        tally
    }

    /// Bytes of the retained messages held.
    pub fn retained_bytes(&self) -> usize {
        self.retained.read().bytes()
    }
}
