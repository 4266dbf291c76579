//! The changes the broker reports to its store, and their encoding in the
//! commit log.
//!
//! A record is written to the log exactly as it was journalled (postcard,
//! variant order is part of the on-disk format), so the log can be replayed
//! into the state database after a crash and every message body in it
//! exists once, inside the `PutCopies` record that routed it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{SessionRecord, StoreError};
use crate::protocol::{Message, QoS};
use crate::session::{Delivery, Sent, SubscriptionEntry};

/// A change that must reach the store. Client ids and topics are shared
/// with the live state, so a record costs little more than its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A persistent session's own fields; its subscriptions are rows of
    /// their own.
    PutSession(Box<SessionRecord>),
    /// Removes a session with everything it owns.
    DeleteSession(Arc<str>),
    PutSubscription {
        client_id: Arc<str>,
        filter: Arc<str>,
        entry: SubscriptionEntry,
    },
    DeleteSubscription {
        client_id: Arc<str>,
        filter: Arc<str>,
    },
    PutRetained(Arc<Message>),
    DeleteRetained(Arc<str>),
    /// One inbound message, once, with the persistent sessions it was queued
    /// for and, for QoS 2 from a persistent session, the publisher's packet
    /// id awaiting PUBREL: written together, so a publisher re-sending after
    /// a crash finds both or neither. `message` is absent when no copy needs
    /// it.
    PutCopies {
        message: Option<Arc<Message>>,
        copies: Vec<Copy>,
        inbound_qos2: Option<(Arc<str>, u16)>,
        /// The stream partitions it is appended to, with its offsets.
        appends: Vec<Append>,
    },
    MarkSent {
        client_id: Arc<str>,
        seq: u64,
        sent: Sent,
    },
    DeleteDelivery {
        client_id: Arc<str>,
        seq: u64,
    },
    DeleteInboundQos2 {
        client_id: Arc<str>,
        packet_id: u16,
    },
    /// A consumer group has read `stream/partition` up to `offset`: the
    /// next offset it reads.
    CommitOffset {
        group: Arc<str>,
        stream: Arc<str>,
        partition: u32,
        offset: u64,
    },
    /// Retention dropped every offset of `stream/partition` below `start`.
    TrimPartition {
        stream: Arc<str>,
        partition: u32,
        start: u64,
    },
    /// A consumer group's offsets in `stream` are no longer kept (a reader
    /// of its own whose session ended).
    DeleteGroup {
        group: Arc<str>,
        stream: Arc<str>,
    },
    /// A delayed publish waiting until `due` (unix ms), with the
    /// publisher's QoS 2 packet id awaiting PUBREL when it has one
    /// (written together, as with `PutCopies`).
    PutDelayed {
        id: u64,
        due: u64,
        message: Arc<Message>,
        inbound_qos2: Option<(Arc<str>, u16)>,
    },
    /// A delayed publish went out (or expired).
    DeleteDelayed {
        id: u64,
        due: u64,
    },
    /// A stream message `group` gave up on after `attempts` failed
    /// deliveries, `reason` the last failure, at `at` (unix ms): kept in
    /// the group's dead-letter queue.
    PutDeadLetter {
        group: Arc<str>,
        stream: Arc<str>,
        partition: u32,
        offset: u64,
        attempts: u32,
        reason: String,
        at: u64,
        message: Arc<Message>,
    },
    /// A dead letter re-driven into its stream (or dropped).
    DeleteDeadLetter {
        group: Arc<str>,
        stream: Arc<str>,
        partition: u32,
        offset: u64,
    },
}

/// One message appended to one stream partition, at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub stream: Arc<str>,
    pub partition: u32,
    pub offset: u64,
}

impl Append {
    /// The partition's name in the partition index.
    pub fn partition_name(&self) -> String {
        partition_name(&self.stream, self.partition)
    }
}

/// A partition's name in the store: stream names have no '/', so
/// `stream/partition` is unique.
pub fn partition_name(stream: &str, partition: u32) -> String {
    format!("{stream}/{partition}")
}

/// Where one copy of a message goes: a persistent session, under its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Copy {
    pub client_id: Arc<str>,
    pub seq: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

impl Copy {
    /// The copy of `delivery` for `client_id`; none unless it is stored.
    pub fn of(client_id: &Arc<str>, delivery: &Delivery) -> Option<Copy> {
        Some(Copy {
            client_id: client_id.clone(),
            seq: delivery.seq?,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
        })
    }

    /// The delivery this copy describes, with its message.
    pub fn delivery(&self, message: Arc<Message>) -> Delivery {
        Delivery {
            message,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.clone(),
            seq: Some(self.seq),
            stream: None,
        }
    }
}

impl Record {
    /// Roughly what the record holds, for the journal's bound.
    pub(super) fn weight(&self) -> usize {
        const BASE: usize = 64;
        BASE + match self {
            Record::PutRetained(message)
            | Record::PutDelayed { message, .. }
            | Record::PutDeadLetter { message, .. } => message.size(),
            Record::PutCopies {
                message,
                copies,
                appends,
                ..
            } => message.as_ref().map_or(0, |m| m.size()) + BASE * (copies.len() + appends.len()),
            _ => 0,
        }
    }

    /// Appends the record's log encoding to `buffer`.
    pub fn encode_into(&self, buffer: &mut Vec<u8>) -> Result<(), StoreError> {
        let encoded = postcard::to_extend(self, std::mem::take(buffer))
            .map_err(|error| StoreError::Backend(format!("cannot encode a record: {error}")))?;
        *buffer = encoded;
        Ok(())
    }

    /// Reads a record back from its log encoding; `at` names where it was
    /// found for the error.
    pub fn decode(bytes: &[u8], at: impl std::fmt::Display) -> Result<Record, StoreError> {
        postcard::from_bytes(bytes)
            .map_err(|error| StoreError::Corrupt(format!("{at}: undecodable record: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageProperties;
    use crate::session::AwaitedAck;

    #[test]
    fn every_kind_of_record_reads_back_as_written() {
        let message = Arc::new(Message {
            topic: "t/1".into(),
            payload: bytes::Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: Some(1_700_000_000_000),
            publisher: Some("p".into()),
        });
        let records = [
            Record::PutCopies {
                message: Some(message.clone()),
                copies: vec![Copy {
                    client_id: "a".into(),
                    seq: 7,
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    subscription_ids: vec![3],
                }],
                inbound_qos2: Some(("p".into(), 9)),
                appends: vec![Append {
                    stream: "orders".into(),
                    partition: 3,
                    offset: 41,
                }],
            },
            Record::MarkSent {
                client_id: "a".into(),
                seq: 7,
                sent: Sent {
                    packet_id: 4,
                    awaiting: AwaitedAck::PubComp,
                },
            },
            Record::PutRetained(message),
            Record::DeleteSession("a".into()),
        ];
        for record in records {
            let mut buffer = vec![0xAA];
            record.encode_into(&mut buffer).unwrap();
            assert_eq!(buffer[0], 0xAA, "appends after what the buffer held");
            assert_eq!(Record::decode(&buffer[1..], "test").unwrap(), record);
        }
    }

    #[test]
    fn garbage_is_reported_as_corruption_where_it_was_found() {
        let error = Record::decode(&[0xFF, 0xFF, 0xFF], "segment 3 offset 40").unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(text) if text.contains("segment 3 offset 40"))
        );
    }
}
