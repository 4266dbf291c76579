//! One connected client: the protocol logic between the connection task and
//! the shared broker state. The task feeds it packets and the time, and
//! writes what it hands back; it never touches the socket itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::BrokerState;
use super::enhanced_auth::EnhancedAuth;
use crate::protocol::{Ack, Disconnect, Packet, ReasonCode, Version};
use crate::session::{AckOutcome, PublishLimits, Session, SessionState, StreamSettled};
use crate::store::{Record, Ticket};

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
    /// The client stopped reading what it was sent (a slow consumer): closed
    /// without last words, which it would not read. The will is published.
    Stalled,
}

/// What a client hands the connection task to write: packets in order,
/// and the journal ticket that must be durable before any of them goes out.
#[derive(Debug, Default)]
pub struct Output {
    pub packets: Vec<Packet>,
    pub ticket: Ticket,
}

pub struct Client {
    pub(super) broker: Arc<BrokerState>,
    pub(super) session: Arc<Session>,
    pub(super) connection_id: u64,
    pub(super) version: Version,
    pub(super) keep_alive: u16,
    /// Whether the session's expiry was 0 at CONNECT: a DISCONNECT may not
    /// then make it non-zero [MQTT-3.14.2-2].
    pub(super) connected_with_zero_expiry: bool,
    /// Reason strings go out unless the client asked for none.
    pub(super) problem_information: bool,
    /// Allocated only for the clients that use topic aliases or send CONNECT
    /// user properties.
    pub(super) extras: Option<Box<ClientExtras>>,
    /// Control packets waiting to be written, ahead of queued messages.
    pub(super) outgoing: Vec<Packet>,
    /// The journal write that what is waiting to be written depends on.
    pub(super) ticket: Ticket,
}

/// What few clients use, boxed in `Client`, whose idle size matters (every
/// 8 bytes more in a connection's task can cost 128 in tokio's task cell):
/// topic aliases, CONNECT user properties, stream acknowledgements, publish
/// limits, enhanced authentication.
#[derive(Default)]
pub(super) struct ClientExtras {
    /// The client's address, for the logs of its publish limits and its
    /// re-authentication: set when the extras are made at CONNECT.
    pub(super) peer: Option<SocketAddr>,
    /// The token buckets of `limits.max_publish_rate` and
    /// `max_publish_bytes_rate`, when either is set.
    pub(super) publish_limits: Option<PublishLimits>,
    /// How the client authenticated with AUTH, for re-authentication.
    pub(super) enhanced_auth: Option<EnhancedAuth>,
    /// The username the client was admitted with, whose ACL rights it has
    /// (none: anonymous).
    pub(super) username: Option<Arc<str>>,
    /// v5 topic aliases the client set up for its PUBLISHes (at most
    /// `limits.max_topic_alias`, so a list).
    pub(super) topic_aliases: Vec<(u16, Arc<str>)>,
    /// The v5 CONNECT's user properties, kept for as long as the connection
    /// lives (for operators' client details).
    pub(super) connect_user_properties: Vec<(String, String)>,
    /// Stream deliveries acknowledged since the last pump: handed to their
    /// groups together, one lock and one commit per partition for a whole
    /// read of acknowledgements.
    pub(super) stream_settled: Vec<StreamSettled>,
    /// This is the local side of one of the broker's bridges: the broker
    /// itself, held to no ACL.
    pub(super) bridge: bool,
    /// A 3.1.1 client that set the bridge bit: another broker's bridge,
    /// whose subscriptions are No Local and Retain As Published.
    pub(super) remote_bridge: bool,
}

impl ClientExtras {
    /// The extras a CONNECT asks for, if any: its user properties, publish
    /// limits, an enhanced authentication to keep; with the client's
    /// address, which the last two log.
    pub(super) fn at_connect(
        connect_user_properties: Vec<(String, String)>,
        publish_limits: Option<PublishLimits>,
        enhanced_auth: Option<EnhancedAuth>,
        peer: Option<SocketAddr>,
    ) -> Option<Box<ClientExtras>> {
        let needed = !connect_user_properties.is_empty()
            || publish_limits.is_some()
            || enhanced_auth.is_some();
        needed.then(|| {
            Box::new(ClientExtras {
                peer,
                publish_limits,
                enhanced_auth,
                connect_user_properties,
                ..ClientExtras::default()
            })
        })
    }
}

/// Queued messages one pump takes at most, however small they are.
const PUMP_MESSAGES: usize = 256;

impl Client {
    pub fn client_id(&self) -> &str {
        self.session.client_id()
    }

    /// The username the client was admitted with; `None` if anonymous.
    pub fn username(&self) -> Option<&str> {
        self.extras.as_ref()?.username.as_deref()
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

    /// Whether this is the local side of one of the broker's bridges.
    pub fn is_bridge(&self) -> bool {
        self.extras.as_ref().is_some_and(|extras| extras.bridge)
    }

    /// A packet id the session has no message in flight under, for a
    /// packet of the bridge's own that shares the id space (its SUBSCRIBE
    /// to the remote).
    pub fn free_packet_id(&self) -> u16 {
        let state = self.session.lock();
        let used: std::collections::HashSet<u16> =
            state.outbound.inflight().map(|i| i.packet_id).collect();
        (1..=u16::MAX)
            .rev()
            .find(|id| !used.contains(id))
            .unwrap_or(1)
    }

    /// The user properties the client sent in CONNECT.
    pub fn connect_user_properties(&self) -> &[(String, String)] {
        self.extras
            .as_ref()
            .map_or(&[], |extras| &extras.connect_user_properties)
    }

    /// 1.5 times the keep alive [MQTT-3.1.2-24], or none when it is 0.
    pub fn keep_alive_limit(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The one dispatch point for packets after CONNECT.
    pub fn handle(&mut self, packet: Packet, now_ms: u64) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, now_ms),
            Packet::PubAck(ack) => self.on_ack(|s| s.outbound.on_puback(ack.packet_id, ack.reason)),
            Packet::PubRec(ack) => self.on_ack(|s| s.outbound.on_pubrec(ack.packet_id, ack.reason)),
            Packet::PubRel(ack) => self.on_pubrel(ack.packet_id),
            Packet::PubComp(ack) => self.on_ack(|s| s.outbound.on_pubcomp(ack.packet_id)),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, now_ms),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, now_ms),
            Packet::PingReq => {
                self.outgoing.push(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(disconnect)),
            Packet::Auth(auth) => self.on_auth(auth),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Deliver(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR)),
        }
    }

    /// The session, locked, if this connection is still the one serving it.
    /// A connection that was taken over (or whose session was discarded)
    /// changes nothing more: it only finishes.
    pub(super) fn current(&self) -> Result<std::sync::MutexGuard<'_, SessionState>, Close> {
        let state = self.session.lock();
        if state.is_current(self.connection_id) {
            Ok(state)
        } else {
            Err(Close::ByServer(ReasonCode::SESSION_TAKEN_OVER))
        }
    }

    /// PUBACK, PUBREC, PUBCOMP. A connection being taken over still applies
    /// the ones it had received, so the new one does not re-send those.
    fn on_ack(&mut self, apply: impl FnOnce(&mut SessionState) -> AckOutcome) -> Result<(), Close> {
        let (outcome, ticket, settled) = {
            let mut state = self.session.lock();
            if !state.may_acknowledge(self.connection_id) {
                return Err(Close::ByServer(ReasonCode::SESSION_TAKEN_OVER));
            }
            let outcome = apply(&mut state);
            let ticket = self
                .broker
                .journal_changes(self.session.client_id(), &mut state);
            (outcome, ticket, state.outbound.take_settled())
        };
        self.wait_for(ticket);
        if !settled.is_empty() {
            self.extras
                .get_or_insert_default()
                .stream_settled
                .extend(settled);
        }
        if let AckOutcome::PubRel(ack) = outcome {
            self.outgoing.push(Packet::PubRel(ack));
        }
        Ok(())
    }

    fn on_pubrel(&mut self, packet_id: u16) -> Result<(), Close> {
        let (known, ticket) = {
            let mut state = self.current()?;
            let known = state.release_qos2(packet_id);
            // PUBCOMP lets the client reuse the id, so the stored one must be
            // gone first: found after a crash it would swallow a new message.
            let stored = known && self.broker.stores_for(&self.session);
            let ticket = if stored {
                self.broker.journal.append(Record::DeleteInboundQos2 {
                    client_id: self.session.client_id().clone(),
                    packet_id,
                })
            } else {
                Ticket::NONE
            };
            (known, ticket)
        };
        self.wait_for(ticket);
        let reason = if known {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.outgoing
            .push(Packet::PubComp(Ack::new(packet_id, reason)));
        Ok(())
    }

    fn on_disconnect(&mut self, disconnect: Disconnect) -> Close {
        if let Some(expiry) = disconnect.session_expiry {
            if self.connected_with_zero_expiry && expiry != 0 {
                return Close::ByServer(ReasonCode::PROTOCOL_ERROR);
            }
            let granted = expiry.min(self.broker.max_session_expiry());
            if let Ok(mut state) = self.current() {
                Session::set_expiry(&mut state, &self.session, granted);
            }
        }
        Close::ByClient {
            publish_will: disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL,
        }
    }

    /// Holds what is waiting to be written until `ticket` is durable.
    pub(super) fn wait_for(&mut self, ticket: Ticket) {
        self.ticket = self.ticket.max(ticket);
    }

    /// Reason strings are sent only if the client did not opt out.
    pub(super) fn reason_string(&self, text: &str) -> Option<String> {
        self.problem_information.then(|| text.to_string())
    }

    /// The control packets waiting to be written, with the ticket they wait
    /// for: what still goes out before the broker closes the connection.
    pub fn take_output(&mut self) -> Output {
        Output {
            packets: std::mem::take(&mut self.outgoing),
            ticket: std::mem::take(&mut self.ticket),
        }
    }

    /// The control packets waiting to be written, then queued messages as
    /// far as the inflight window allows, up to about `max_bytes` of them.
    /// Returns the output and whether more messages may be waiting.
    pub fn pump(&mut self, now_ms: u64, max_bytes: usize) -> (Output, bool) {
        self.settle_streamed(now_ms);
        let mut expired = 0;
        let mut more = false;
        let mut ticket = Ticket::NONE;
        let mut settled = Vec::new();
        let mut state = self.session.lock();
        if state.is_current(self.connection_id) {
            let mut bytes = 0;
            let mut count = 0;
            while let Some(publish) = state.outbound.next_publish(now_ms, &mut expired) {
                if !self.may_receive(&publish.message.topic) {
                    super::security::withdraw(&mut state.outbound, &publish);
                    continue;
                }
                bytes += publish.message.size() + 16;
                count += 1;
                self.outgoing.push(Packet::Deliver(publish));
                if bytes >= max_bytes || count == PUMP_MESSAGES {
                    more = true;
                    break;
                }
            }
            self.broker.refill_if_low(&self.session, &mut state);
            ticket = self
                .broker
                .journal_changes(self.session.client_id(), &mut state);
            settled = state.outbound.take_settled();
        }
        drop(state);
        self.wait_for(ticket);
        if !settled.is_empty() {
            self.broker.streams_settled(settled, now_ms);
        }
        if expired > 0 {
            self.broker.metrics.messages_expired_add(expired);
        }
        (self.take_output(), more)
    }

    /// Hands the stream deliveries acknowledged since the last call to
    /// their groups.
    pub fn settle_streamed(&mut self, now_ms: u64) {
        if let Some(extras) = self.extras.as_mut()
            && !extras.stream_settled.is_empty()
        {
            let settled = std::mem::take(&mut extras.stream_settled);
            self.broker.streams_settled(settled, now_ms);
        }
    }

    /// A message that could not be written because the client's Maximum
    /// Packet Size is smaller: it is dropped for this client [MQTT-3.1.2-25].
    /// Its removal from the store need not be durable before what follows:
    /// found again after a crash, it is skipped again.
    pub fn skip_oversized(&mut self, packet_id: u16, now_ms: u64) {
        if packet_id != 0
            && let Ok(mut state) = self.current()
        {
            state.outbound.abandon(packet_id);
            self.broker
                .journal_changes(self.session.client_id(), &mut state);
            let settled = state.outbound.take_settled();
            drop(state);
            self.broker.streams_settled(settled, now_ms);
        }
        self.broker.metrics.message_dropped(self.client_id());
    }
}
