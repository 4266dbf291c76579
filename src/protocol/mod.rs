//! One internal packet model for MQTT 3.1.1 and 5.0, and the codec adapter
//! that turns bytes into it and back.
//!
//! The session layer never sees which protocol version a packet came in as,
//! except where the specs make behaviour differ (it reads `Version` then).

mod codec;
mod decode;
mod encode;
mod properties;
pub mod reason;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub(crate) use codec::frame_header;
pub use codec::{Codec, DecodeError, EncodeError};
pub(crate) use decode::Reader;
pub(crate) use encode::put_varint;
pub use reason::ReasonCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Every packet petrel reads or writes, in both protocol versions.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    /// A PUBLISH as a client sends it.
    Publish(Publish),
    /// A PUBLISH as the broker sends it.
    Deliver(Deliver),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// v5 only, both ways: a step of enhanced authentication.
    Auth(Auth),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// Binary data by both specs, so not a `String`.
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// v5 only; 3.1.1 sessions are mapped onto it by the session layer.
    pub session_expiry: u32,
    pub receive_maximum: u16,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: u16,
    pub request_response_information: bool,
    pub request_problem_information: bool,
    pub user_properties: Vec<(String, String)>,
    /// v5 enhanced authentication: the method, and its first data (SCRAM:
    /// client-first).
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    /// 3.1.1: the client set Mosquitto's bridge bit, announcing itself as
    /// another broker's bridge: its subscriptions are served as v5's No
    /// Local and Retain As Published, so nothing it sends comes back.
    pub bridge: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub delay_interval: u32,
    pub properties: MessageProperties,
}

/// The v5 properties that travel with an application message from publisher
/// to subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    /// Bytes of the variable-length properties, as the limits count them.
    pub fn size(&self) -> usize {
        self.content_type.as_ref().map_or(0, String::len)
            + self.response_topic.as_ref().map_or(0, String::len)
            + self.correlation_data.as_ref().map_or(0, Bytes::len)
            + self
                .user_properties
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when the client sent only a topic alias.
    pub topic: String,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub topic_alias: Option<u16>,
    pub properties: MessageProperties,
    pub payload: Bytes,
}

/// An application message as the broker holds it once accepted: one copy,
/// shared by every session it goes to and encoded straight from there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Everything but the expiry interval, which is kept as `expires_at`.
    pub properties: MessageProperties,
    /// Wall-clock deadline in unix milliseconds, so it survives restarts.
    pub expires_at: Option<u64>,
    /// The publishing client, for No Local.
    pub publisher: Option<Arc<str>>,
}

impl Message {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }

    /// The Message Expiry Interval to forward: what is left, in whole seconds
    /// rounded up so a message never arrives claiming 0 while still valid.
    pub fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        self.expires_at.map(|at| {
            let left_ms = at.saturating_sub(now_ms);
            u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    /// Bytes this message holds, for queue and retained-store limits.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.properties.size()
    }
}

/// A PUBLISH the broker sends: the shared message and what this one
/// delivery adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deliver {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// 0 for QoS 0.
    pub packet_id: u16,
    /// The identifiers of every matching subscription (v5).
    pub subscription_ids: Vec<u32>,
    /// What is left of the Message Expiry Interval, in seconds (v5).
    pub message_expiry: Option<u32>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub reason_string: Option<String>,
}

impl Ack {
    pub fn new(packet_id: u16, reason: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason,
            reason_string: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: ConnAckProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    /// The CONNECT's Authentication Method, repeated by a successful
    /// CONNACK after enhanced authentication [MQTT-4.12.0-5], and the
    /// method's last word (SCRAM: server-final).
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetainHandling {
    /// Send retained messages on every subscribe.
    OnSubscribe,
    /// Send them only when the subscription did not exist before.
    OnNewSubscription,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn with_qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub subscription_id: Option<u32>,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter, in order; on 3.1.1 only 0x00..=0x02 and 0x80 exist.
    pub reasons: Vec<ReasonCode>,
    pub reason_string: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// Sent only on v5.
    pub reasons: Vec<ReasonCode>,
}

/// AUTH (v5). A client sends 0x18 (Continue authentication) or 0x19
/// (Re-authenticate); the broker sends 0x18, or 0x00 (Success) to end a
/// re-authentication. Every AUTH names the method (3.15.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub method: String,
    pub data: Option<Bytes>,
    pub reason_string: Option<String>,
    /// Read from clients and ignored, as on every packet but PUBLISH.
    pub user_properties: Vec<(String, String)>,
}

impl Auth {
    pub fn new(reason: ReasonCode, method: &str, data: Option<Bytes>) -> Auth {
        Auth {
            reason,
            method: method.to_string(),
            data,
            reason_string: None,
            user_properties: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub session_expiry: Option<u32>,
    pub reason_string: Option<String>,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            session_expiry: None,
            reason_string: None,
        }
    }
}
