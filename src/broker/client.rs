//! One connected client: the protocol logic between the socket task and the
//! shared broker state. The socket task feeds it packets and writes what it
//! returns; it never touches the socket itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::BrokerState;
use crate::protocol::{Ack, Disconnect, Packet, Publish, ReasonCode, Version, Will};
use crate::session::{AckOutcome, Session, SessionState};

/// Why and how a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT; `publish_will` for v5 reason 0x04.
    ByClient { publish_will: bool },
    /// The broker closes it: for v5 a DISCONNECT with this reason goes first
    /// (where the spec allows one). The will is published.
    ByServer(ReasonCode),
    /// The socket closed or failed without DISCONNECT. The will is published.
    Lost,
}

pub struct Client {
    pub(super) broker: Arc<BrokerState>,
    pub(super) session: Arc<Session>,
    pub(super) connection_id: u64,
    pub(super) version: Version,
    pub(super) keep_alive: u16,
    pub(super) will: Option<Will>,
    /// Whether the session's expiry was 0 at CONNECT: a DISCONNECT may not
    /// then make it non-zero [MQTT-3.14.2-2].
    pub(super) connected_with_zero_expiry: bool,
    /// v5 topic aliases the client set up for its PUBLISHes.
    pub(super) topic_aliases: HashMap<u16, String>,
    /// Reason strings go out unless the client asked for none.
    pub(super) problem_information: bool,
    /// Control packets waiting to be written, ahead of queued messages.
    pub(super) outgoing: Vec<Packet>,
    /// The store write that what is waiting to be written depends on: it
    /// goes out only once that write is durable (0: nothing to wait for).
    pub(super) durable_after: u64,
}

/// How many queued messages one wake-up writes before letting the task read
/// again, so one busy subscription cannot starve the client's own input.
const PUMP_BATCH: usize = 256;

impl Client {
    pub fn client_id(&self) -> &str {
        self.session.client_id()
    }

    pub fn broker(&self) -> &Arc<BrokerState> {
        &self.broker
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// 1.5 times the keep alive [MQTT-3.1.2-24], or none when it is 0.
    pub fn keep_alive_limit(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The one dispatch point for packets after CONNECT.
    pub fn handle(&mut self, packet: Packet, now_ms: u64) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, now_ms),
            Packet::PubAck(ack) => self.on_ack_outcome(|s| s.outbound.on_puback(ack.packet_id)),
            Packet::PubRec(ack) => {
                self.on_ack_outcome(|s| s.outbound.on_pubrec(ack.packet_id, ack.reason))
            }
            Packet::PubRel(ack) => {
                self.on_pubrel(ack.packet_id);
                Ok(())
            }
            Packet::PubComp(ack) => self.on_ack_outcome(|s| s.outbound.on_pubcomp(ack.packet_id)),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, now_ms),
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.outgoing.push(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(disconnect)),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR)),
        }
    }

    fn on_ack_outcome(
        &mut self,
        apply: impl FnOnce(&mut SessionState) -> AckOutcome,
    ) -> Result<(), Close> {
        let (outcome, written) = {
            let mut state = self.session.lock();
            let outcome = apply(&mut state);
            (
                outcome,
                self.broker.journal(self.session.client_id(), &mut state),
            )
        };
        self.wait_for(written);
        if let AckOutcome::PubRel(ack) = outcome {
            self.outgoing.push(Packet::PubRel(ack));
        }
        Ok(())
    }

    fn on_pubrel(&mut self, packet_id: u16) {
        let known = self.session.lock().release_qos2(packet_id);
        if known && self.session.is_persistent() && self.broker.store.keeps_messages() {
            // PUBCOMP lets the client reuse the id, so the stored one must be
            // gone first: found after a crash it would swallow a new message.
            match self
                .broker
                .store
                .delete_inbound_qos2(self.session.client_id(), packet_id)
            {
                Ok(()) => {
                    let written = self.broker.commit.wrote();
                    self.wait_for(written);
                }
                Err(error) => {
                    tracing::error!(%error, packet_id, "cannot release stored QoS 2 packet id");
                }
            }
        }
        let reason = if known {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.outgoing
            .push(Packet::PubComp(Ack::new(packet_id, reason)));
    }

    fn on_disconnect(&mut self, disconnect: Disconnect) -> Close {
        if let Some(expiry) = disconnect.session_expiry {
            if self.connected_with_zero_expiry && expiry != 0 {
                return Close::ByServer(ReasonCode::PROTOCOL_ERROR);
            }
            let max = self.broker.settings.limits.max_session_expiry_secs;
            Session::set_expiry(&mut self.session.lock(), &self.session, expiry.min(max));
        }
        Close::ByClient {
            publish_will: disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL,
        }
    }

    /// Control packets waiting to be written, without queued messages: what
    /// still goes out before the broker closes the connection.
    pub fn take_outgoing(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.outgoing)
    }

    /// Holds what is waiting to be written until store write `written`
    /// (from `GroupCommit::wrote`) is durable.
    pub(super) fn wait_for(&mut self, written: u64) {
        self.durable_after = self.durable_after.max(written);
    }

    /// The store write to wait for before writing what `pump` returned.
    pub fn take_durable_after(&mut self) -> u64 {
        std::mem::take(&mut self.durable_after)
    }

    /// Reason strings are sent only if the client did not opt out.
    pub(super) fn reason_string(&self, text: &str) -> Option<String> {
        self.problem_information.then(|| text.to_string())
    }

    /// Takes the control packets waiting to be written, then as many queued
    /// messages as the inflight window allows (up to one batch). Returns the
    /// packets and whether more messages may be waiting.
    pub fn pump(&mut self, now_ms: u64) -> (Vec<Packet>, bool) {
        let mut packets = std::mem::take(&mut self.outgoing);
        let mut expired = 0;
        let mut more = false;
        let written = {
            let mut state = self.session.lock();
            for count in 0.. {
                if count == PUMP_BATCH {
                    more = true;
                    break;
                }
                match state.outbound.next_publish(now_ms, &mut expired) {
                    Some(publish) => packets.push(Packet::Publish(publish)),
                    None => break,
                }
            }
            self.broker.journal(self.session.client_id(), &mut state)
        };
        self.wait_for(written);
        if expired > 0 {
            self.broker.metrics.messages_expired_add(expired);
        }
        (packets, more)
    }

    /// A message that could not be written because the client's Maximum
    /// Packet Size is smaller: it is dropped for this client [MQTT-3.1.2-25].
    pub fn skip_oversized(&mut self, publish: &Publish) {
        if publish.packet_id != 0 {
            let mut state = self.session.lock();
            state.outbound.abandon(publish.packet_id);
            self.broker.journal(self.session.client_id(), &mut state);
        }
        self.broker.metrics.message_dropped(self.client_id());
    }
}
