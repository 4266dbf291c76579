//! Messages on their way to one client: the bounded queue and the inflight
//! window, with the QoS 1 and QoS 2 sender state machines. No I/O and no
//! clock: time comes in as unix milliseconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::{Ack, Deliver, Message, Packet, QoS, ReasonCode};

/// One message for one session, at the QoS it is delivered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// The key of the stored copy, for QoS 1/2 deliveries to a persistent
    /// session; every change to such a delivery is reported as a `Change`.
    #[serde(skip)]
    pub seq: Option<u64>,
    /// Set for a message read from a stream for a consumer group: how it
    /// ends (acknowledged, refused, sent at QoS 0) is reported back.
    #[serde(skip)]
    pub stream: Option<Box<StreamOrigin>>,
}

/// The stream position a delivery was read from, as the consumer group
/// that read it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOrigin {
    pub group: u32,
    pub partition: u32,
    pub offset: u64,
    /// The partition's hand-out the delivery belongs to: one that was
    /// failed and handed out again makes late reports of older ones stale.
    pub epoch: u32,
}

/// How a stream delivery ended for this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettled {
    pub origin: StreamOrigin,
    /// The v5 reason code of a negative acknowledgement; none when it was
    /// acknowledged, sent at QoS 0, expired or could not be sent at all.
    pub refused: Option<ReasonCode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AwaitedAck {
    PubAck,
    PubRec,
    PubComp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub awaiting: AwaitedAck,
}

/// How far a stored delivery has got: the packet id it was sent with and
/// the acknowledgement it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub packet_id: u16,
    pub awaiting: AwaitedAck,
}

/// A change to a stored delivery that the store must learn about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Sent {
        seq: u64,
        sent: Sent,
    },
    /// Acknowledged, expired, dropped or abandoned: no longer needed.
    Removed {
        seq: u64,
    },
}

impl Change {
    /// Whether the packet this change goes with may only be written once the
    /// change is on disk. A QoS 2 PUBLISH re-sent after a crash under another
    /// packet id, or PUBLISH re-sent after PUBREL, would be a duplicate for
    /// the client; QoS 1 tolerates both.
    pub fn must_be_durable_before_sending(&self) -> bool {
        matches!(
            self,
            Change::Sent {
                sent: Sent {
                    awaiting: AwaitedAck::PubRec | AwaitedAck::PubComp,
                    ..
                },
                ..
            }
        )
    }
}

/// What happened to a message offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued, after dropping an older message to make room.
    QueuedDroppingOlder,
    /// Not queued: the queue is full (or it is QoS 0 and the queue has
    /// messages waiting in the store).
    Dropped,
}

/// What a full queue does with a QoS 1/2 message once it holds no QoS 0
/// message to give up instead (`queue_full` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFull {
    /// The new message is dropped.
    #[default]
    DropNew,
    /// The oldest waiting message is dropped to make room.
    DropOldest,
    /// The new message is dropped and its publisher told (v5 0x97): the
    /// broker checks before accepting a publish.
    Refuse,
}

/// How much may wait for one session beyond its inflight window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    /// Messages' sizes (topic, payload, properties) together.
    pub max_bytes: usize,
    pub when_full: QueueFull,
}

impl QueueLimits {
    /// A limit on the count alone, dropping new messages when full.
    pub fn messages(max_messages: usize) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes: usize::MAX,
            when_full: QueueFull::DropNew,
        }
    }
}

/// Stored messages held in memory per offline session before further ones
/// are left in the store and read back as the queue drains: an offline
/// backlog costs disk, not memory.
pub const HELD_IN_MEMORY: usize = 256;

/// The same for a connected session, which is about to send them: enough
/// that a subscriber a little behind its publishers never waits for reads.
pub const HELD_WHILE_CONNECTED: usize = 65_536;

/// Spilled messages read back at once.
const REFILL_BATCH: usize = 1024;

/// A stored message left in the store: its key and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spilled {
    pub seq: u64,
    pub size: u32,
}

/// The answer to an acknowledgement from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum AckOutcome {
    /// The message is done (or was unknown, which is harmless).
    Done,
    /// Answer with this PUBREL.
    PubRel(Ack),
}

#[derive(Debug)]
pub struct Outbound {
    /// The oldest waiting messages, held in memory.
    queue: VecDeque<Delivery>,
    /// Stored messages waiting behind `queue`, left in the store; boxed,
    /// as most sessions never have any.
    spill: Option<Box<Spill>>,
    /// Sizes of the messages in `queue` and spilled.
    queued_bytes: u64,
    inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// min(client Receive Maximum, configured max_inflight).
    window: u16,
    /// The limits (`QueueLimits`), kept small: every session has them.
    max_messages: u32,
    max_bytes: u64,
    when_full: QueueFull,
    /// Messages this session lost to a full queue.
    dropped: u32,
    /// Whether a connection serves the session: it holds more in memory.
    connected: bool,
    /// Changes to stored deliveries not yet taken by `take_changes`.
    changes: Vec<Change>,
    /// Consumer groups' deliveries; boxed, as most sessions read no stream.
    streamed: Option<Box<Streamed>>,
}

/// A group member's stream deliveries: outside the queue's limits (the
/// group bounds them per partition) and never spilled or dropped.
#[derive(Debug, Default)]
struct Streamed {
    waiting: VecDeque<Delivery>,
    /// Ended deliveries not yet taken by `take_settled`.
    settled: Vec<StreamSettled>,
}

/// Stored messages left in the store, oldest first.
#[derive(Debug, Default)]
struct Spill {
    keys: VecDeque<Spilled>,
    /// Whether the first of them are being read back.
    fetching: bool,
}

impl Outbound {
    pub fn new(window: u16, limits: QueueLimits) -> Outbound {
        Outbound {
            queue: VecDeque::new(),
            spill: None,
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_packet_id: 1,
            window: window.max(1),
            max_messages: u32::try_from(limits.max_messages).unwrap_or(u32::MAX),
            max_bytes: u64::try_from(limits.max_bytes).unwrap_or(u64::MAX),
            when_full: limits.when_full,
            dropped: 0,
            connected: false,
            changes: Vec::new(),
            streamed: None,
        }
    }

    /// Puts back deliveries read from the store, in their stored order: those
    /// already sent into the inflight window (to be re-sent on resume), the
    /// rest into the queue.
    pub fn restore(&mut self, stored: impl IntoIterator<Item = (Delivery, Option<Sent>)>) {
        for (delivery, sent) in stored {
            match sent {
                Some(sent) => {
                    self.next_packet_id = sent.packet_id.checked_add(1).unwrap_or(1).max(1);
                    self.inflight.push_back(Inflight {
                        packet_id: sent.packet_id,
                        delivery,
                        awaiting: sent.awaiting,
                    });
                }
                None => {
                    self.queued_bytes += size_of(&delivery);
                    self.queue.push_back(delivery);
                }
            }
        }
    }

    /// Puts back stored messages left in the store, behind the restored
    /// queue.
    pub fn restore_spilled(&mut self, spilled: impl IntoIterator<Item = Spilled>) {
        for entry in spilled {
            self.queued_bytes += u64::from(entry.size);
            self.spill.get_or_insert_default().keys.push_back(entry);
        }
    }

    /// The changes to stored deliveries since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn record(&mut self, delivery: &Delivery, change: impl FnOnce(u64) -> Change) {
        if let Some(seq) = delivery.seq {
            self.changes.push(change(seq));
        }
    }

    pub fn set_window(&mut self, window: u16) {
        self.window = window.max(1);
    }

    /// Replaces the queue's limits (a bridge's session has its own); what
    /// already waits stays.
    pub fn set_limits(&mut self, limits: QueueLimits) {
        self.max_messages = u32::try_from(limits.max_messages).unwrap_or(u32::MAX);
        self.max_bytes = u64::try_from(limits.max_bytes).unwrap_or(u64::MAX);
        self.when_full = limits.when_full;
    }

    /// Sizes of the waiting messages together, as `max_queued_bytes` counts
    /// them.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    pub fn queue(&self) -> impl Iterator<Item = &Delivery> {
        self.queue.iter()
    }

    /// Whether a connection is serving the session: it then holds more
    /// messages in memory before spilling.
    pub fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
    }

    /// Stored messages held in memory before further ones are spilled.
    fn hold(&self) -> usize {
        if self.connected {
            HELD_WHILE_CONNECTED
        } else {
            HELD_IN_MEMORY
        }
    }

    fn spilled(&self) -> usize {
        self.spill.as_ref().map_or(0, |spill| spill.keys.len())
    }

    /// Messages waiting (held and spilled), not counting the inflight ones.
    pub fn queued(&self) -> usize {
        self.queue.len() + self.spilled()
    }

    /// Messages this session lost to a full queue.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Whether a message of `size` bytes finds the queue full.
    pub fn is_full(&self, size: usize) -> bool {
        self.queued() >= self.max_messages as usize
            || self.queued_bytes.saturating_add(size as u64) > self.max_bytes
    }

    /// Whether a message of `size` bytes finds the queue full and the queue
    /// refuses, rather than drops, what does not fit (`QueueFull::Refuse`).
    pub fn refuses(&self, size: usize) -> bool {
        self.when_full == QueueFull::Refuse && self.is_full(size)
    }

    /// Adds a message behind the ones already waiting. When the queue is full
    /// QoS 0 messages go first (DESIGN §3); then `QueueFull` decides. A
    /// stored message finding `HELD_IN_MEMORY` already held (or others
    /// already spilled) is left in the store, and only its key is kept.
    pub fn enqueue(&mut self, delivery: Delivery) -> Enqueued {
        let size = delivery.message.size();
        let mut outcome = Enqueued::Queued;
        if self.is_full(size) {
            if delivery.qos == QoS::AtMostOnce {
                return self.drop_new(&delivery);
            }
            if let Some(oldest_qos0) = self.queue.iter().position(|d| d.qos == QoS::AtMostOnce) {
                self.remove_queued(oldest_qos0);
            } else if self.when_full != QueueFull::DropOldest || !self.drop_oldest() {
                return self.drop_new(&delivery);
            }
            self.dropped = self.dropped.saturating_add(1);
            outcome = Enqueued::QueuedDroppingOlder;
        }
        match delivery.seq {
            Some(seq) if self.spilled() > 0 || self.queue.len() >= self.hold() => {
                self.spill.get_or_insert_default().keys.push_back(Spilled {
                    seq,
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                });
            }
            // Behind messages left in the store, a QoS 0 message would
            // overtake them; it is the one that gives way. (Unstored QoS 1/2
            // messages, retained ones sent on subscribe, go ahead.)
            None if self.spilled() > 0 && delivery.qos == QoS::AtMostOnce => {
                return self.drop_new(&delivery);
            }
            _ => self.queue.push_back(delivery),
        }
        self.queued_bytes += size as u64;
        outcome
    }

    fn drop_new(&mut self, delivery: &Delivery) -> Enqueued {
        self.dropped = self.dropped.saturating_add(1);
        self.record(delivery, |seq| Change::Removed { seq });
        Enqueued::Dropped
    }

    /// Drops the oldest waiting message, held or spilled.
    fn drop_oldest(&mut self) -> bool {
        if !self.queue.is_empty() {
            self.remove_queued(0);
            return true;
        }
        // One being read back is skipped when it arrives (`refill`).
        match self.spill.as_mut().and_then(|spill| spill.keys.pop_front()) {
            Some(entry) => {
                self.queued_bytes -= u64::from(entry.size);
                self.changes.push(Change::Removed { seq: entry.seq });
                true
            }
            None => false,
        }
    }

    fn remove_queued(&mut self, at: usize) {
        if let Some(gone) = self.queue.remove(at) {
            self.queued_bytes -= size_of(&gone);
            self.record(&gone, |seq| Change::Removed { seq });
        }
    }

    /// The keys of spilled messages to read back now that the held queue
    /// runs low, once per read: `refill` must follow.
    pub fn wants_refill(&mut self) -> Option<Vec<u64>> {
        let hold = self.hold();
        let held = self.queue.len();
        let spill = self.spill.as_mut()?;
        if spill.fetching || spill.keys.is_empty() || held >= hold / 2 {
            return None;
        }
        spill.fetching = true;
        let room = (hold - held).min(REFILL_BATCH);
        Some(spill.keys.iter().take(room).map(|s| s.seq).collect())
    }

    /// The read asked for by `wants_refill` failed: it is asked again later.
    pub fn refill_failed(&mut self) {
        if let Some(spill) = self.spill.as_mut() {
            spill.fetching = false;
        }
    }

    /// Takes back the messages read for `asked`, in order. An asked key the
    /// store no longer had is counted as dropped.
    pub fn refill(&mut self, asked: &[u64], found: Vec<Delivery>) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        spill.fetching = false;
        let mut found: HashMap<u64, Delivery> = found
            .into_iter()
            .filter_map(|d| Some((d.seq?, d)))
            .collect();
        for &seq in asked {
            // Keys dropped while they were read are no longer in front.
            let Some(at) = spill.keys.iter().position(|s| s.seq == seq) else {
                continue;
            };
            let entry = spill.keys.remove(at).expect("found above");
            self.queued_bytes -= u64::from(entry.size);
            match found.remove(&seq) {
                Some(delivery) => {
                    self.queued_bytes += size_of(&delivery);
                    self.queue.push_back(delivery);
                }
                None => {
                    self.dropped = self.dropped.saturating_add(1);
                    self.changes.push(Change::Removed { seq });
                }
            }
        }
        if spill.keys.is_empty() {
            self.spill = None;
        }
    }

    /// The next PUBLISH to write, if the window allows one. Expired messages
    /// are discarded on the way and counted in `expired`.
    pub fn next_publish(&mut self, now_ms: u64, expired: &mut u64) -> Option<Deliver> {
        loop {
            // Stream deliveries go first: a group is waiting on each.
            let streamed = self
                .streamed
                .as_ref()
                .is_some_and(|s| !s.waiting.is_empty());
            let front = match &self.streamed {
                Some(s) if streamed => s.waiting.front()?,
                _ => self.queue.front()?,
            };
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= usize::from(self.window) {
                return None;
            }
            let delivery = match self.streamed.as_mut() {
                Some(s) if streamed => s.waiting.pop_front()?,
                _ => {
                    let delivery = self.queue.pop_front()?;
                    self.queued_bytes -= size_of(&delivery);
                    delivery
                }
            };
            if delivery.message.is_expired(now_ms) {
                *expired += 1;
                self.record(&delivery, |seq| Change::Removed { seq });
                self.settle(&delivery, None);
                continue;
            }
            let packet_id = match delivery.qos {
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce | QoS::ExactlyOnce => self.allocate_packet_id(),
            };
            let publish = to_deliver(&delivery, packet_id, false, now_ms);
            if delivery.qos == QoS::AtMostOnce {
                self.settle(&delivery, None);
            } else {
                let awaiting = match delivery.qos {
                    QoS::ExactlyOnce => AwaitedAck::PubRec,
                    _ => AwaitedAck::PubAck,
                };
                let sent = Sent {
                    packet_id,
                    awaiting,
                };
                self.record(&delivery, |seq| Change::Sent { seq, sent });
                self.inflight.push_back(Inflight {
                    packet_id,
                    delivery,
                    awaiting,
                });
            }
            return Some(publish);
        }
    }

    /// Adds a consumer group's delivery: sent before the queue, outside
    /// its limits.
    pub fn enqueue_streamed(&mut self, delivery: Delivery) {
        self.streamed
            .get_or_insert_default()
            .waiting
            .push_back(delivery);
    }

    /// Takes the stream deliveries that ended since the last call.
    pub fn take_settled(&mut self) -> Vec<StreamSettled> {
        match self.streamed.as_mut() {
            Some(s) if !s.settled.is_empty() => std::mem::take(&mut s.settled),
            _ => Vec::new(),
        }
    }

    /// Takes back the stream deliveries from `which` not yet acknowledged,
    /// waiting or inflight (their partition went to another reader, or is
    /// read again): their acknowledgements, if any still come, find
    /// nothing.
    pub fn withdraw_streamed(&mut self, which: impl Fn(&StreamOrigin) -> bool) -> usize {
        let Some(streamed) = self.streamed.as_mut() else {
            return 0;
        };
        let taken = |delivery: &Delivery| delivery.stream.as_deref().is_some_and(&which);
        let before = streamed.waiting.len() + self.inflight.len();
        streamed.waiting.retain(|d| !taken(d));
        self.inflight.retain(|i| !taken(&i.delivery));
        before - streamed.waiting.len() - self.inflight.len()
    }

    /// Reports a stream delivery's end.
    fn settle(&mut self, delivery: &Delivery, refused: Option<ReasonCode>) {
        if let Some(origin) = &delivery.stream {
            self.streamed
                .get_or_insert_default()
                .settled
                .push(StreamSettled {
                    origin: **origin,
                    refused,
                });
        }
    }

    /// Forgets an inflight message that could not be sent at all (too large
    /// for the client's Maximum Packet Size).
    pub fn abandon(&mut self, packet_id: u16) {
        if let Some(at) = self.inflight.iter().position(|i| i.packet_id == packet_id) {
            self.remove_inflight(at, None);
        }
    }

    fn remove_inflight(&mut self, at: usize, refused: Option<ReasonCode>) {
        if let Some(done) = self.inflight.remove(at) {
            self.record(&done.delivery, |seq| Change::Removed { seq });
            self.settle(&done.delivery, refused);
        }
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    fn position(&self, packet_id: u16, awaiting: AwaitedAck) -> Option<usize> {
        self.inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.awaiting == awaiting)
    }

    /// PUBACK; a v5 error reason is a negative acknowledgement, which
    /// only a stream delivery's group takes note of.
    pub fn on_puback(&mut self, packet_id: u16, reason: ReasonCode) -> AckOutcome {
        if let Some(at) = self.position(packet_id, AwaitedAck::PubAck) {
            self.remove_inflight(at, reason.is_error().then_some(reason));
        }
        AckOutcome::Done
    }

    /// PUBREC: answer PUBREL, or end the flow when the client refused the
    /// message with an error reason (v5).
    pub fn on_pubrec(&mut self, packet_id: u16, reason: ReasonCode) -> AckOutcome {
        match self.position(packet_id, AwaitedAck::PubRec) {
            Some(at) if reason.is_error() => {
                self.remove_inflight(at, Some(reason));
                AckOutcome::Done
            }
            Some(at) => {
                self.inflight[at].awaiting = AwaitedAck::PubComp;
                let sent = Sent {
                    packet_id,
                    awaiting: AwaitedAck::PubComp,
                };
                if let Some(seq) = self.inflight[at].delivery.seq {
                    self.changes.push(Change::Sent { seq, sent });
                }
                AckOutcome::PubRel(Ack::new(packet_id, ReasonCode::SUCCESS))
            }
            // A PUBREC repeated after we already sent PUBREL gets PUBREL again.
            None if self.position(packet_id, AwaitedAck::PubComp).is_some() => {
                AckOutcome::PubRel(Ack::new(packet_id, ReasonCode::SUCCESS))
            }
            None => {
                AckOutcome::PubRel(Ack::new(packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND))
            }
        }
    }

    pub fn on_pubcomp(&mut self, packet_id: u16) -> AckOutcome {
        if let Some(at) = self.position(packet_id, AwaitedAck::PubComp) {
            self.remove_inflight(at, None);
        }
        AckOutcome::Done
    }

    /// What to send again, in the original order, when the client comes back
    /// [MQTT-4.4.0-1]: PUBLISH with DUP for unacknowledged messages, PUBREL for
    /// those already received.
    pub fn resend(&self, now_ms: u64) -> Vec<Packet> {
        self.inflight
            .iter()
            .map(|i| match i.awaiting {
                AwaitedAck::PubAck | AwaitedAck::PubRec => {
                    Packet::Deliver(to_deliver(&i.delivery, i.packet_id, true, now_ms))
                }
                AwaitedAck::PubComp => Packet::PubRel(Ack::new(i.packet_id, ReasonCode::SUCCESS)),
            })
            .collect()
    }
}

/// What a waiting message counts against `max_queued_bytes`.
fn size_of(delivery: &Delivery) -> u64 {
    delivery.message.size() as u64
}

fn to_deliver(delivery: &Delivery, packet_id: u16, dup: bool, now_ms: u64) -> Deliver {
    Deliver {
        message: delivery.message.clone(),
        qos: delivery.qos,
        retain: delivery.retain,
        dup,
        packet_id,
        subscription_ids: delivery.subscription_ids.clone(),
        message_expiry: delivery.message.remaining_expiry(now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageProperties;
    use bytes::Bytes;

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        delivery_expiring(qos, payload, None)
    }

    fn delivery_expiring(qos: QoS, payload: &'static str, expires_at: Option<u64>) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(payload.as_bytes()),
                qos,
                retain: false,
                properties: MessageProperties::default(),
                expires_at,
                publisher: None,
            }),
            qos,
            retain: false,
            subscription_ids: vec![],
            seq: None,
            stream: None,
        }
    }

    fn drain(out: &mut Outbound, now_ms: u64) -> Vec<Deliver> {
        let mut expired = 0;
        std::iter::from_fn(|| out.next_publish(now_ms, &mut expired)).collect()
    }

    #[test]
    fn inflight_window_holds_back_qos1_until_acked() {
        let mut out = Outbound::new(2, QueueLimits::messages(100));
        for p in ["1", "2", "3"] {
            out.enqueue(delivery(QoS::AtLeastOnce, p));
        }
        let sent = drain(&mut out, 0);
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].packet_id, sent[1].packet_id), (1, 2));
        assert!(drain(&mut out, 0).is_empty());
        assert_eq!(out.on_puback(1, ReasonCode::SUCCESS), AckOutcome::Done);
        let sent = drain(&mut out, 0);
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0].message.payload[..], b"3");
    }

    #[test]
    fn qos0_is_not_held_by_the_window_but_keeps_its_order() {
        let mut out = Outbound::new(1, QueueLimits::messages(100));
        out.enqueue(delivery(QoS::AtLeastOnce, "a"));
        out.enqueue(delivery(QoS::AtMostOnce, "b"));
        out.enqueue(delivery(QoS::AtLeastOnce, "c"));
        out.enqueue(delivery(QoS::AtMostOnce, "d"));
        let sent: Vec<_> = drain(&mut out, 0)
            .iter()
            .map(|p| p.message.payload.clone())
            .collect();
        assert_eq!(sent, ["a", "b"]);
    }

    #[test]
    fn qos2_sender_flow_and_resend_after_reconnect() {
        let mut out = Outbound::new(10, QueueLimits::messages(100));
        out.enqueue(delivery(QoS::ExactlyOnce, "x"));
        out.enqueue(delivery(QoS::ExactlyOnce, "y"));
        let sent = drain(&mut out, 0);
        assert_eq!(
            out.on_pubrec(sent[0].packet_id, ReasonCode::SUCCESS),
            AckOutcome::PubRel(Ack::new(1, ReasonCode::SUCCESS))
        );
        let resent = out.resend(0);
        assert_eq!(resent.len(), 2);
        assert!(matches!(&resent[0], Packet::PubRel(a) if a.packet_id == 1));
        assert!(matches!(&resent[1], Packet::Deliver(p) if p.dup && p.packet_id == 2));
        assert_eq!(out.on_pubcomp(1), AckOutcome::Done);
        assert_eq!(out.inflight().count(), 1);
    }

    #[test]
    fn pubrec_with_error_reason_ends_the_flow() {
        let mut out = Outbound::new(10, QueueLimits::messages(100));
        out.enqueue(delivery(QoS::ExactlyOnce, "x"));
        drain(&mut out, 0);
        assert_eq!(out.on_pubrec(1, ReasonCode(0x80)), AckOutcome::Done);
        assert_eq!(out.inflight().count(), 0);
    }

    #[test]
    fn unknown_pubrec_gets_pubrel_packet_id_not_found() {
        let mut out = Outbound::new(10, QueueLimits::messages(100));
        assert_eq!(
            out.on_pubrec(7, ReasonCode::SUCCESS),
            AckOutcome::PubRel(Ack::new(7, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND))
        );
    }

    #[test]
    fn full_queue_drops_qos0_first() {
        let mut out = Outbound::new(1, QueueLimits::messages(2));
        assert_eq!(
            out.enqueue(delivery(QoS::AtMostOnce, "0")),
            Enqueued::Queued
        );
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "1")),
            Enqueued::Queued
        );
        assert_eq!(
            out.enqueue(delivery(QoS::AtMostOnce, "2")),
            Enqueued::Dropped
        );
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "3")),
            Enqueued::QueuedDroppingOlder
        );
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "4")),
            Enqueued::Dropped
        );
        let queued: Vec<_> = out.queue().map(|d| d.message.payload.clone()).collect();
        assert_eq!(queued, ["1", "3"]);
    }

    #[test]
    fn expired_messages_are_never_sent_and_expiry_is_decremented() {
        let mut out = Outbound::new(10, QueueLimits::messages(100));
        out.enqueue(delivery_expiring(QoS::AtLeastOnce, "old", Some(1_000)));
        out.enqueue(delivery_expiring(QoS::AtLeastOnce, "new", Some(10_000)));
        let mut expired = 0;
        let publish = out.next_publish(4_000, &mut expired).unwrap();
        assert_eq!(&publish.message.payload[..], b"new");
        assert_eq!(publish.message_expiry, Some(6));
        assert_eq!(expired, 1);
    }

    fn streamed(qos: QoS, offset: u64) -> Delivery {
        Delivery {
            stream: Some(Box::new(StreamOrigin {
                group: 3,
                partition: 1,
                offset,
                epoch: 0,
            })),
            ..delivery(qos, "s")
        }
    }

    #[test]
    fn stream_deliveries_go_first_and_report_how_each_ended() {
        let mut out = Outbound::new(10, QueueLimits::messages(1));
        out.enqueue(delivery(QoS::AtLeastOnce, "queued"));
        out.enqueue_streamed(streamed(QoS::AtLeastOnce, 7));
        out.enqueue_streamed(streamed(QoS::AtLeastOnce, 8));
        out.enqueue_streamed(streamed(QoS::AtMostOnce, 9));
        assert_eq!(out.queued(), 1, "outside the queue's limits");
        let mut expired = 0;
        let sent: Vec<Deliver> = std::iter::from_fn(|| out.next_publish(0, &mut expired)).collect();
        assert_eq!(sent.len(), 4);
        assert_eq!(&sent[3].message.payload[..], b"queued");
        let offsets = |settled: Vec<StreamSettled>| -> Vec<(u64, Option<ReasonCode>)> {
            settled
                .into_iter()
                .map(|s| (s.origin.offset, s.refused))
                .collect()
        };
        assert_eq!(
            offsets(out.take_settled()),
            [(9, None)],
            "QoS 0 ends when sent"
        );
        out.on_puback(sent[0].packet_id, ReasonCode::SUCCESS);
        out.on_puback(sent[1].packet_id, ReasonCode::UNSPECIFIED_ERROR);
        assert_eq!(
            offsets(out.take_settled()),
            [(7, None), (8, Some(ReasonCode::UNSPECIFIED_ERROR))]
        );
        assert!(out.take_settled().is_empty());
    }

    #[test]
    fn withdrawn_stream_deliveries_leave_the_window_and_later_acks_find_nothing() {
        let mut out = Outbound::new(1, QueueLimits::messages(10));
        out.enqueue_streamed(streamed(QoS::AtLeastOnce, 1));
        out.enqueue_streamed(streamed(QoS::AtLeastOnce, 2));
        let mut expired = 0;
        let first = out.next_publish(0, &mut expired).unwrap();
        assert!(out.next_publish(0, &mut expired).is_none(), "window of 1");
        out.enqueue(delivery(QoS::AtLeastOnce, "queued"));
        assert_eq!(
            out.withdraw_streamed(|o| o.group == 4),
            0,
            "another group's"
        );
        assert_eq!(out.withdraw_streamed(|o| o.group == 3), 2);
        assert_eq!(out.queued(), 1, "the queue keeps its own");
        assert_eq!(out.inflight().count(), 0);
        out.on_puback(first.packet_id, ReasonCode::SUCCESS);
        assert!(out.take_settled().is_empty());
    }

    fn stored(qos: QoS, payload: &'static str, seq: u64) -> Delivery {
        Delivery {
            seq: Some(seq),
            ..delivery(qos, payload)
        }
    }

    #[test]
    fn stored_deliveries_report_every_change_and_unstored_ones_none() {
        let mut out = Outbound::new(10, QueueLimits::messages(2));
        out.enqueue(stored(QoS::AtLeastOnce, "a", 7));
        out.enqueue(stored(QoS::ExactlyOnce, "b", 8));
        out.enqueue(delivery(QoS::AtLeastOnce, "unstored"));
        assert_eq!(
            out.enqueue(stored(QoS::AtLeastOnce, "overflow", 9)),
            Enqueued::Dropped
        );
        assert_eq!(out.take_changes(), [Change::Removed { seq: 9 }]);
        drain(&mut out, 0);
        let sent = |packet_id, awaiting| Sent {
            packet_id,
            awaiting,
        };
        let changes = out.take_changes();
        assert_eq!(
            changes,
            [
                Change::Sent {
                    seq: 7,
                    sent: sent(1, AwaitedAck::PubAck)
                },
                Change::Sent {
                    seq: 8,
                    sent: sent(2, AwaitedAck::PubRec)
                },
            ]
        );
        assert!(!changes[0].must_be_durable_before_sending());
        assert!(changes[1].must_be_durable_before_sending());
        out.on_puback(1, ReasonCode::SUCCESS);
        out.on_pubrec(2, ReasonCode::SUCCESS);
        out.on_pubcomp(2);
        assert_eq!(
            out.take_changes(),
            [
                Change::Removed { seq: 7 },
                Change::Sent {
                    seq: 8,
                    sent: sent(2, AwaitedAck::PubComp)
                },
                Change::Removed { seq: 8 },
            ]
        );
        assert!(out.take_changes().is_empty());
    }

    #[test]
    fn restored_deliveries_resume_where_they_were() {
        let mut out = Outbound::new(10, QueueLimits::messages(100));
        let awaiting_comp = Sent {
            packet_id: 40,
            awaiting: AwaitedAck::PubComp,
        };
        out.restore([
            (stored(QoS::ExactlyOnce, "released", 1), Some(awaiting_comp)),
            (stored(QoS::AtLeastOnce, "queued", 2), None),
        ]);
        let resent = out.resend(0);
        assert!(matches!(&resent[..], [Packet::PubRel(a)] if a.packet_id == 40));
        let next = drain(&mut out, 0);
        assert_eq!(
            next[0].packet_id, 41,
            "new ids continue after restored ones"
        );
        assert_eq!(&next[0].message.payload[..], b"queued");
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_still_in_flight() {
        let mut out = Outbound::new(10, QueueLimits::messages(100));
        out.next_packet_id = u16::MAX;
        out.enqueue(delivery(QoS::AtLeastOnce, "a"));
        out.enqueue(delivery(QoS::AtLeastOnce, "b"));
        let ids: Vec<u16> = drain(&mut out, 0).iter().map(|p| p.packet_id).collect();
        assert_eq!(ids, [u16::MAX, 1]);
    }

    fn payloads(out: &Outbound) -> Vec<String> {
        out.queue()
            .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
            .collect()
    }

    #[test]
    fn stored_messages_past_the_held_ones_wait_in_the_store_and_come_back_in_order() {
        let mut out = Outbound::new(10, QueueLimits::messages(10_000));
        let total = HELD_IN_MEMORY as u64 + 100;
        for seq in 1..=total {
            out.enqueue(stored(QoS::AtLeastOnce, "m", seq));
        }
        assert_eq!(out.queue().count(), HELD_IN_MEMORY);
        assert_eq!(out.queued(), total as usize);
        assert_eq!(
            out.enqueue(delivery(QoS::AtMostOnce, "qos0")),
            Enqueued::Dropped,
            "a QoS 0 message would overtake the spilled ones"
        );
        assert!(
            out.wants_refill().is_none(),
            "the held queue is not low yet"
        );
        let sent = HELD_IN_MEMORY / 2 + 1;
        for _ in 0..sent {
            out.queue.pop_front();
        }
        let asked = out.wants_refill().expect("runs low");
        assert_eq!(asked.first(), Some(&(HELD_IN_MEMORY as u64 + 1)));
        assert!(out.wants_refill().is_none(), "one read at a time");
        // The store no longer has the first one asked for.
        let found = asked[1..]
            .iter()
            .map(|&seq| stored(QoS::AtLeastOnce, "back", seq))
            .collect();
        out.refill(&asked, found);
        assert_eq!(out.take_changes(), [Change::Removed { seq: asked[0] }]);
        let seqs: Vec<u64> = out.queue().filter_map(|d| d.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        assert_eq!(out.queue().count(), HELD_IN_MEMORY - sent + asked.len() - 1);
        assert_eq!(out.queued(), total as usize - sent - 1);
    }

    #[test]
    fn a_full_queue_drops_the_new_or_the_oldest_message_as_configured() {
        let limits = |when_full| QueueLimits {
            max_messages: 3,
            max_bytes: usize::MAX,
            when_full,
        };
        let mut newest_goes = Outbound::new(1, limits(QueueFull::DropNew));
        let mut oldest_goes = Outbound::new(1, limits(QueueFull::DropOldest));
        for out in [&mut newest_goes, &mut oldest_goes] {
            for (seq, payload) in ["a", "b", "c"].into_iter().enumerate() {
                out.enqueue(stored(QoS::AtLeastOnce, payload, seq as u64));
            }
            out.take_changes();
        }
        assert_eq!(
            newest_goes.enqueue(stored(QoS::AtLeastOnce, "d", 3)),
            Enqueued::Dropped
        );
        assert_eq!(payloads(&newest_goes), ["a", "b", "c"]);
        assert_eq!(newest_goes.take_changes(), [Change::Removed { seq: 3 }]);
        assert_eq!(
            oldest_goes.enqueue(stored(QoS::AtLeastOnce, "d", 3)),
            Enqueued::QueuedDroppingOlder
        );
        assert_eq!(payloads(&oldest_goes), ["b", "c", "d"]);
        assert_eq!(oldest_goes.take_changes(), [Change::Removed { seq: 0 }]);
        assert_eq!((newest_goes.dropped(), oldest_goes.dropped()), (1, 1));
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_too() {
        let one = delivery(QoS::AtLeastOnce, "x").message.size();
        let mut out = Outbound::new(
            1,
            QueueLimits {
                max_messages: 100,
                max_bytes: 2 * one,
                when_full: QueueFull::DropNew,
            },
        );
        assert!(!out.is_full(one));
        out.enqueue(delivery(QoS::AtLeastOnce, "x"));
        out.enqueue(delivery(QoS::AtLeastOnce, "y"));
        assert!(out.is_full(one));
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "z")),
            Enqueued::Dropped
        );
        // Sending frees the bytes.
        drain(&mut out, 0);
        assert!(!out.is_full(one));
    }
}
