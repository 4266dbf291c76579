//! The broker's view of its bridges: their statuses, with what each one's
//! local session holds for the remote.

use std::sync::Arc;

use super::BrokerState;
use crate::bridge::{BridgeReport, BridgeStatus, QueueFigures};

impl BrokerState {
    /// The configured bridges' statuses, in configuration order.
    pub fn bridges(&self) -> &[Arc<BridgeStatus>] {
        &self.bridges
    }

    pub fn bridge_status(&self, name: &str) -> Option<Arc<BridgeStatus>> {
        self.bridges.iter().find(|b| b.name() == name).cloned()
    }

    /// Every bridge as the admin API and /metrics show it.
    pub fn bridge_reports(&self) -> Vec<BridgeReport> {
        self.bridges
            .iter()
            .map(|status| status.report(self.bridge_queue(status.local_client_id())))
            .collect()
    }

    /// What the bridge's session holds for the remote: waiting and in
    /// flight, and what it lost to a full queue.
    fn bridge_queue(&self, client_id: &str) -> QueueFigures {
        let Some(session) = self.session(client_id) else {
            return QueueFigures::default();
        };
        let state = session.lock();
        let outbound = &state.outbound;
        let inflight: Vec<_> = outbound.inflight().collect();
        QueueFigures {
            messages: (outbound.queued() + inflight.len()) as u64,
            bytes: outbound.queued_bytes()
                + inflight
                    .iter()
                    .map(|i| i.delivery.message.size() as u64)
                    .sum::<u64>(),
            dropped: u64::from(outbound.dropped()),
        }
    }
}
