//! Framing, per-connection protocol version, and the error -> reason code map.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use super::encode::TopicForm;
use super::{Packet, ReasonCode, Version, decode, encode};

/// Why an incoming packet was refused. Each maps to exactly one reason code in
/// `reason()`: the one place decode failures become protocol answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds the maximum packet size")]
    TooLarge { size: usize },
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("unknown protocol name")]
    BadProtocolName,
}

impl DecodeError {
    pub fn reason(self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) | DecodeError::BadProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet of {size} bytes exceeds the client's maximum packet size")]
    TooLarge { size: usize },
    #[error("packet cannot be encoded: {0}")]
    Invalid(&'static str),
}

/// Reads and writes packets for one connection. The protocol version is fixed
/// by the CONNECT and kept for the connection.
#[derive(Debug)]
pub struct Codec {
    version: Option<Version>,
    /// MQTT 3.1 (`MQIsdp`): 3.1.1 packets, but a CONNACK without Session
    /// Present.
    mqtt31: bool,
    /// The v5 CONNECT named an Authentication Method, so AUTH may follow
    /// [MQTT-4.12.0-7]. Which method is the broker's to check: a flag
    /// keeps the codec, which every connection holds, small.
    enhanced_auth: bool,
    max_incoming: usize,
    max_outgoing: usize,
    /// v5 topic aliases for PUBLISHes to the client, once it allows some.
    aliases: Option<Box<OutboundAliases>>,
}

/// Topic aliases the broker set up towards one client: the first
/// `maximum` distinct topics get one, for the life of the connection
/// [MQTT-3.3.2-7].
#[derive(Debug)]
struct OutboundAliases {
    maximum: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

pub(super) const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// How much of a frame's announced size is reserved ahead of its bytes: a
/// header announcing a large frame does not claim that memory until the
/// bytes actually arrive.
const RESERVE_AHEAD: usize = 16 * 1024;

impl Codec {
    pub fn new(max_incoming: u32) -> Codec {
        Codec {
            version: None,
            mqtt31: false,
            enhanced_auth: false,
            max_incoming: max_incoming as usize,
            max_outgoing: MAX_REMAINING_LENGTH + 5,
            aliases: None,
        }
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Limits outgoing packets to the client's Maximum Packet Size.
    pub fn set_max_outgoing(&mut self, max: u32) {
        self.max_outgoing = max as usize;
    }

    /// Lets PUBLISHes to a v5 client use up to `maximum` topic aliases.
    pub fn set_outbound_topic_aliases(&mut self, maximum: u16) {
        self.aliases = (maximum > 0 && self.version == Some(Version::V5)).then(|| {
            Box::new(OutboundAliases {
                maximum,
                by_topic: HashMap::new(),
            })
        });
    }

    /// The next whole packet in `buf`, `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some((byte1, header_len, remaining)) = frame_header(buf)? else {
            return Ok(None);
        };
        let size = header_len + remaining;
        if size > self.max_incoming {
            return Err(DecodeError::TooLarge { size });
        }
        if buf.len() < size {
            buf.reserve((size - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let frame = buf.split_to(size).freeze();
        let body = frame.slice(header_len..);
        let packet_type = byte1 >> 4;
        let flags = byte1 & 0x0F;
        let expected_flags = match packet_type {
            3 => flags,
            6 | 8 | 10 => 0b0010,
            _ => 0,
        };
        if flags != expected_flags {
            return Err(DecodeError::Malformed("invalid fixed header flags"));
        }
        let Some(version) = self.version else {
            if packet_type != 1 {
                return Err(DecodeError::Protocol("first packet is not CONNECT"));
            }
            // The version is kept as soon as it is known, so that a CONNECT
            // that fails later can still be refused in the client's format.
            let announced = decode::connect_version(body.clone())?;
            let version = announced.version;
            self.version = Some(version);
            self.mqtt31 = announced.mqtt31;
            let mut connect = decode::connect(body, version)?;
            connect.bridge = announced.bridge;
            self.enhanced_auth = connect.authentication_method.is_some();
            return Ok(Some(Packet::Connect(Box::new(connect))));
        };
        let packet = match packet_type {
            1 => return Err(DecodeError::Protocol("second CONNECT")),
            3 => Packet::Publish(decode::publish(version, byte1, body)?),
            4 => Packet::PubAck(decode::ack(version, body)?),
            5 => Packet::PubRec(decode::ack(version, body)?),
            6 => Packet::PubRel(decode::ack(version, body)?),
            7 => Packet::PubComp(decode::ack(version, body)?),
            8 => Packet::Subscribe(decode::subscribe(version, body)?),
            10 => Packet::Unsubscribe(decode::unsubscribe(version, body)?),
            12 => {
                decode::empty(body)?;
                Packet::PingReq
            }
            14 => Packet::Disconnect(decode::disconnect(version, body)?),
            15 if version == Version::V5 && self.enhanced_auth => Packet::Auth(decode::auth(body)?),
            15 if version == Version::V5 => {
                return Err(DecodeError::Protocol(
                    "AUTH after a CONNECT without an authentication method",
                ));
            }
            2 | 9 | 11 | 13 => return Err(DecodeError::Protocol("server-only packet type")),
            _ => return Err(DecodeError::Malformed("reserved packet type")),
        };
        Ok(Some(packet))
    }

    /// Appends `packet` to `out`. On error nothing is appended: mqttbytes may
    /// leave partial bytes behind when it fails, so they are cut off here.
    ///
    /// A packet other than PUBLISH that exceeds the client's Maximum Packet
    /// Size goes out without its Reason String instead [MQTT-3.1.2-25,
    /// MQTT-3.4.2-2, MQTT-3.5.2-2, MQTT-3.6.2-2, MQTT-3.7.2-2, MQTT-3.9.2-1,
    /// MQTT-3.14.2-3, MQTT-3.15.2-2]; petrel sends User Properties only on PUBLISH. Only
    /// a PUBLISH (or a packet too large even without them) is refused.
    pub fn encode(&mut self, packet: &Packet, out: &mut BytesMut) -> Result<usize, EncodeError> {
        if let Packet::Deliver(deliver) = packet {
            return self.encode_deliver(deliver, out);
        }
        match self.encode_exact(packet, out) {
            Err(EncodeError::TooLarge { size }) => match without_reason_string(packet) {
                Some(stripped) => self
                    .encode_exact(&stripped, out)
                    .map_err(|_| EncodeError::TooLarge { size }),
                None => Err(EncodeError::TooLarge { size }),
            },
            result => result,
        }
    }

    fn encode_exact(&self, packet: &Packet, out: &mut BytesMut) -> Result<usize, EncodeError> {
        let start = out.len();
        let version = self.version.unwrap_or(Version::V311);
        let result = encode::packet(version, self.mqtt31, packet, out);
        self.settle(start, result, out)
    }

    /// A PUBLISH, with a topic alias where the client allows one. An alias
    /// counts as set up only once a PUBLISH carrying its topic was encoded.
    fn encode_deliver(
        &mut self,
        deliver: &crate::protocol::Deliver,
        out: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        let version = self.version.unwrap_or(Version::V311);
        let topic = &deliver.message.topic;
        let form = match &self.aliases {
            None => TopicForm::Name,
            Some(aliases) => match aliases.by_topic.get(topic) {
                Some(&alias) => TopicForm::Alias(alias),
                None if aliases.by_topic.len() < usize::from(aliases.maximum) => {
                    TopicForm::NameAndAlias(aliases.by_topic.len() as u16 + 1)
                }
                None => TopicForm::Name,
            },
        };
        let start = out.len();
        let result = encode::deliver(version, deliver, form, out);
        let written = self.settle(start, result, out)?;
        if let (TopicForm::NameAndAlias(alias), Some(aliases)) = (form, &mut self.aliases) {
            aliases.by_topic.insert(topic.clone(), alias);
        }
        Ok(written)
    }

    /// Cuts off what a failed or oversized encoding left in `out`.
    fn settle(
        &self,
        start: usize,
        result: Result<(), EncodeError>,
        out: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        let written = out.len() - start;
        match result {
            Err(error) => {
                out.truncate(start);
                Err(error)
            }
            Ok(()) if written > self.max_outgoing => {
                out.truncate(start);
                Err(EncodeError::TooLarge { size: written })
            }
            Ok(()) => Ok(written),
        }
    }
}

/// A copy of `packet` without the properties a sender must leave out rather
/// than exceed the receiver's Maximum Packet Size, or `None` when it has none
/// (or is a PUBLISH, which is never cut down).
fn without_reason_string(packet: &Packet) -> Option<Packet> {
    let stripped = match packet {
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack)
            if ack.reason_string.is_some() =>
        {
            let ack = crate::protocol::Ack {
                reason_string: None,
                ..ack.clone()
            };
            match packet {
                Packet::PubAck(_) => Packet::PubAck(ack),
                Packet::PubRec(_) => Packet::PubRec(ack),
                Packet::PubRel(_) => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        Packet::SubAck(suback) if suback.reason_string.is_some() => {
            Packet::SubAck(crate::protocol::SubAck {
                reason_string: None,
                ..suback.clone()
            })
        }
        Packet::Disconnect(disconnect) if disconnect.reason_string.is_some() => {
            Packet::Disconnect(crate::protocol::Disconnect {
                reason_string: None,
                ..disconnect.clone()
            })
        }
        Packet::Auth(auth) if auth.reason_string.is_some() => Packet::Auth(crate::protocol::Auth {
            reason_string: None,
            ..auth.clone()
        }),
        Packet::ConnAck(connack) if connack.properties.reason_string.is_some() => {
            let mut connack = connack.clone();
            connack.properties.reason_string = None;
            Packet::ConnAck(connack)
        }
        _ => return None,
    };
    Some(stripped)
}

/// Reads the fixed header: (first byte, header length, remaining length), or
/// `None` when it is not complete yet.
pub(crate) fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, shift) in [0, 7, 14, 21].into_iter().enumerate() {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((byte1, 2 + i, remaining)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Ack, Disconnect};

    fn connected(version: Version) -> Codec {
        let mut codec = Codec::new(1024);
        let connect: &[u8] = match version {
            Version::V311 => &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0],
            Version::V5 => &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0],
        };
        let mut buf = BytesMut::from(connect);
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Packet::Connect(_)))
        ));
        codec
    }

    fn decode_one(codec: &mut Codec, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        codec.decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = connected(Version::V311);
        let mut buf = BytesMut::from(&[0x30, 0x05, 0x00][..]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[0x01, b'a', b'x', b'y']);
        let Ok(Some(Packet::Publish(publish))) = codec.decode(&mut buf) else {
            panic!("publish expected");
        };
        assert_eq!(publish.topic, "a");
        assert_eq!(&publish.payload[..], b"xy");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_header_announcing_a_large_frame_does_not_reserve_it_up_front() {
        let mut codec = Codec::new(2 * 1024 * 1024);
        let mut codec_v5 = connected(Version::V5);
        std::mem::swap(&mut codec.version, &mut codec_v5.version);
        // PUBLISH announcing 1 MiB, of which 3 bytes have arrived.
        let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40, 0, 1, b't'][..]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 64 * 1024, "reserved {}", buf.capacity());
    }

    #[test]
    fn five_byte_remaining_length_is_malformed() {
        let mut codec = connected(Version::V311);
        let result = decode_one(&mut codec, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert!(matches!(result, Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn oversized_packet_is_refused_before_it_arrives() {
        let mut codec = connected(Version::V5);
        let result = decode_one(&mut codec, &[0x30, 0x80, 0x10]);
        assert_eq!(result, Err(DecodeError::TooLarge { size: 2051 }));
    }

    #[test]
    fn v5_acks_and_disconnect_may_omit_reason_and_properties() {
        let mut codec = connected(Version::V5);
        assert_eq!(
            decode_one(&mut codec, &[0xE0, 0x00]),
            Ok(Some(Packet::Disconnect(Disconnect::new(
                ReasonCode::NORMAL_DISCONNECTION
            ))))
        );
        assert_eq!(
            decode_one(&mut codec, &[0xE0, 0x01, 0x04]),
            Ok(Some(Packet::Disconnect(Disconnect::new(
                ReasonCode::DISCONNECT_WITH_WILL
            ))))
        );
        assert_eq!(
            decode_one(&mut codec, &[0x50, 0x02, 0x00, 0x07]),
            Ok(Some(Packet::PubRec(Ack::new(7, ReasonCode::SUCCESS))))
        );
        assert_eq!(
            decode_one(&mut codec, &[0x40, 0x03, 0x00, 0x07, 0x80]),
            Ok(Some(Packet::PubAck(Ack::new(7, ReasonCode(0x80)))))
        );
    }

    #[test]
    fn v311_binary_password_is_accepted() {
        let mut codec = Codec::new(1024);
        let mut bytes = vec![0x10, 0];
        bytes.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60]);
        bytes.extend_from_slice(&[0, 1, b'c', 0, 1, b'u', 0, 2, 0xFF, 0xFE]);
        bytes[1] = (bytes.len() - 2) as u8;
        let Ok(Some(Packet::Connect(connect))) = decode_one(&mut codec, &bytes) else {
            panic!("connect expected");
        };
        assert_eq!(connect.password.as_deref(), Some(&[0xFF, 0xFE][..]));
    }

    #[test]
    fn connect_rules_mqttbytes_skips_are_enforced() {
        let base = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        let mut reserved = base;
        reserved[9] |= 1;
        assert!(matches!(
            decode_one(&mut Codec::new(1024), &reserved),
            Err(DecodeError::Malformed(_))
        ));
        let mut password_only = base;
        password_only[9] |= 0x40;
        assert!(decode_one(&mut Codec::new(1024), &password_only).is_err());
        let mut trailing = base.to_vec();
        trailing.push(0);
        trailing[1] += 1;
        assert!(matches!(
            decode_one(&mut Codec::new(1024), &trailing),
            Err(DecodeError::Malformed(_))
        ));
        let mut level3 = base;
        level3[8] = 3;
        assert_eq!(
            decode_one(&mut Codec::new(1024), &level3),
            Err(DecodeError::UnsupportedVersion(3)),
            "level 3 is MQTT 3.1 only under its own name, MQIsdp"
        );
    }

    #[test]
    fn packets_before_or_after_connect_follow_the_rules() {
        assert_eq!(
            decode_one(&mut Codec::new(1024), &[0xC0, 0x00]),
            Err(DecodeError::Protocol("first packet is not CONNECT"))
        );
        let mut codec = connected(Version::V311);
        assert_eq!(
            decode_one(
                &mut codec,
                &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]
            ),
            Err(DecodeError::Protocol("second CONNECT"))
        );
        assert!(matches!(
            decode_one(&mut codec, &[0xC1, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// A v5 codec whose CONNECT named the Authentication Method "M".
    fn connected_with_method() -> Codec {
        let mut codec = Codec::new(1024);
        let connect = [
            0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 4, 21, 0, 1, b'M', 0, 0,
        ];
        let Ok(Some(Packet::Connect(connect))) = decode_one(&mut codec, &connect) else {
            panic!("connect expected");
        };
        assert_eq!(connect.authentication_method.as_deref(), Some("M"));
        codec
    }

    #[test]
    fn auth_is_read_only_after_a_connect_that_named_a_method() {
        // AUTH 0x19, Authentication Method "M", Authentication Data "d".
        let auth = [0xF0, 10, 0x19, 8, 21, 0, 1, b'M', 22, 0, 1, b'd'];
        assert_eq!(
            decode_one(&mut connected(Version::V5), &auth),
            Err(DecodeError::Protocol(
                "AUTH after a CONNECT without an authentication method"
            )),
            "[MQTT-4.12.0-7]"
        );
        assert!(matches!(
            decode_one(&mut connected(Version::V311), &auth),
            Err(DecodeError::Malformed(_))
        ));
        let Ok(Some(Packet::Auth(read))) = decode_one(&mut connected_with_method(), &auth) else {
            panic!("AUTH expected");
        };
        assert_eq!(read.reason, ReasonCode::REAUTHENTICATE);
        assert_eq!(read.method, "M");
        assert_eq!(read.data.as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn auth_from_a_client_breaking_the_rules_is_refused() {
        let cases: [(&[u8], &str); 7] = [
            (&[0xF0, 0], "short form: 0x00 Success is the server's"),
            (&[0xF0, 1, 0x18], "no properties, so no method"),
            (&[0xF0, 6, 0x00, 4, 21, 0, 1, b'M'], "0x00 Success"),
            (&[0xF0, 6, 0x8C, 4, 21, 0, 1, b'M'], "a failure code"),
            (&[0xF0, 5, 0x18, 3, 22, 0, 0], "data without a method"),
            (
                &[0xF0, 10, 0x18, 8, 21, 0, 1, b'M', 21, 0, 1, b'M'],
                "the method twice",
            ),
            (
                &[0xF0, 7, 0x18, 4, 21, 0, 1, b'M', 0],
                "bytes after the properties",
            ),
        ];
        for (bytes, case) in cases {
            assert!(
                decode_one(&mut connected_with_method(), bytes).is_err(),
                "{case}"
            );
        }
        // Reserved fixed-header flags [MQTT-3.15.1-1].
        assert!(matches!(
            decode_one(
                &mut connected_with_method(),
                &[0xF1, 6, 0x18, 4, 21, 0, 1, b'M']
            ),
            Err(DecodeError::Malformed(_))
        ));
        // Session Expiry Interval has no place in AUTH.
        let mut codec = connected_with_method();
        assert!(matches!(
            decode_one(
                &mut codec,
                &[0xF0, 11, 0x18, 9, 21, 0, 1, b'M', 17, 0, 0, 0, 1]
            ),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn subscribe_rules_mqttbytes_skips_are_enforced() {
        let mut codec = connected(Version::V311);
        // Wrong flags.
        assert!(decode_one(&mut codec, &[0x80, 0x06, 0, 1, 0, 1, b'a', 0]).is_err());
        let mut codec = connected(Version::V311);
        // No filters.
        assert!(decode_one(&mut codec, &[0x82, 0x02, 0, 1]).is_err());
        let mut codec = connected(Version::V311);
        // Reserved option bits.
        assert!(decode_one(&mut codec, &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04]).is_err());
        let mut codec = connected(Version::V311);
        assert!(matches!(
            decode_one(&mut codec, &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x01]),
            Ok(Some(Packet::Subscribe(_)))
        ));
    }

    #[test]
    fn v5_property_rules_mqttbytes_skips_are_enforced() {
        // PUBLISH "a" QoS 0 with Payload Format Indicator twice.
        let mut codec = connected(Version::V5);
        let duplicate = [0x30, 0x08, 0, 1, b'a', 4, 1, 1, 1, 1];
        assert!(matches!(
            decode_one(&mut codec, &duplicate),
            Err(DecodeError::Protocol(_))
        ));
        // Property length 1 while a 2-byte property follows.
        let mut codec = connected(Version::V5);
        let short = [0x30, 0x06, 0, 1, b'a', 1, 1, 1];
        assert!(decode_one(&mut codec, &short).is_err());
        // Subscription identifier from a client.
        let mut codec = connected(Version::V5);
        let sub_id = [0x30, 0x06, 0, 1, b'a', 2, 11, 1];
        assert!(decode_one(&mut codec, &sub_id).is_err());
    }

    /// Mutated copies of valid packets must decode or fail, never panic, and
    /// never leave the buffer in a state that loops forever.
    #[test]
    fn mutated_packets_never_panic_the_decoder() {
        let samples: [&[u8]; 6] = [
            &[0x30, 0x08, 0, 1, b'a', 4, 1, 1, b'x', b'y'],
            &[0x32, 0x0A, 0, 1, b'a', 0, 5, 3, 2, 0, 0, 0],
            &[0x82, 0x08, 0, 1, 2, 11, 7, 0, 1, b'a'],
            &[0x62, 0x04, 0, 1, 0x92, 0],
            &[0xA2, 0x05, 0, 9, 0, 0, 1],
            &[0xE0, 0x05, 0x04, 3, 17, 0, 0],
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..50_000 {
            let version = if round % 2 == 0 {
                Version::V5
            } else {
                Version::V311
            };
            let mut codec = connected(version);
            let mut bytes = samples[(next() % samples.len() as u64) as usize].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.insert(at, next() as u8),
                    _ => {
                        bytes.remove(at);
                        if bytes.is_empty() {
                            bytes.push(0x30);
                        }
                    }
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 1 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    fn deliver(topic: &str, payload: &'static [u8]) -> Packet {
        Packet::Deliver(crate::protocol::Deliver {
            message: std::sync::Arc::new(crate::protocol::Message {
                topic: topic.into(),
                payload: bytes::Bytes::from_static(payload),
                qos: crate::protocol::QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                publisher: None,
            }),
            qos: crate::protocol::QoS::AtMostOnce,
            retain: false,
            dup: false,
            packet_id: 0,
            subscription_ids: vec![],
            message_expiry: None,
        })
    }

    #[test]
    fn encoding_guards_the_client_maximum_packet_size() {
        let mut codec = connected(Version::V5);
        codec.set_max_outgoing(16);
        let mut out = BytesMut::new();
        assert!(matches!(
            codec.encode(&deliver("t", &[0; 32]), &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn outbound_topic_aliases_name_a_topic_once_then_use_the_alias() {
        let mut codec = connected(Version::V5);
        codec.set_outbound_topic_aliases(1);
        let mut out = BytesMut::new();
        codec.encode(&deliver("ab", b"1"), &mut out).unwrap();
        // Topic "ab", property section: Topic Alias (35) = 1.
        assert_eq!(&out[..], &[0x30, 9, 0, 2, b'a', b'b', 3, 35, 0, 1, b'1']);
        out.clear();
        codec.encode(&deliver("ab", b"2"), &mut out).unwrap();
        assert_eq!(&out[..], &[0x30, 7, 0, 0, 3, 35, 0, 1, b'2']);
        out.clear();
        // The client allows one alias: another topic goes by name.
        codec.encode(&deliver("cd", b"3"), &mut out).unwrap();
        assert_eq!(&out[..], &[0x30, 6, 0, 2, b'c', b'd', 0, b'3']);
    }

    #[test]
    fn an_alias_is_not_used_before_a_publish_naming_its_topic_went_out() {
        let mut codec = connected(Version::V5);
        codec.set_outbound_topic_aliases(4);
        codec.set_max_outgoing(12);
        let mut out = BytesMut::new();
        assert!(codec.encode(&deliver("ab", &[0; 8]), &mut out).is_err());
        codec.encode(&deliver("ab", b"x"), &mut out).unwrap();
        assert_eq!(&out[..4], &[0x30, 9, 0, 2], "the topic is still named");
    }

    #[test]
    fn v311_connections_never_get_topic_aliases() {
        let mut codec = connected(Version::V311);
        codec.set_outbound_topic_aliases(4);
        let mut out = BytesMut::new();
        codec.encode(&deliver("ab", b"1"), &mut out).unwrap();
        codec.encode(&deliver("ab", b"1"), &mut out).unwrap();
        assert_eq!(
            &out[..],
            &[
                0x30, 5, 0, 2, b'a', b'b', b'1', 0x30, 5, 0, 2, b'a', b'b', b'1'
            ]
        );
    }

    #[test]
    fn mqtt31_connect_is_accepted_and_its_connack_has_no_session_present() {
        let mut codec = Codec::new(1024);
        let connect = [
            0x10, 16, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0, 0, 60, 0, 2, b'i', b'd',
        ];
        let Ok(Some(Packet::Connect(connect))) = decode_one(&mut codec, &connect) else {
            panic!("MQTT 3.1 CONNECT accepted");
        };
        assert_eq!(connect.version, Version::V311);
        assert!(!connect.clean_start);
        let mut out = BytesMut::new();
        let connack = crate::protocol::ConnAck {
            session_present: true,
            ..Default::default()
        };
        codec.encode(&Packet::ConnAck(connack), &mut out).unwrap();
        assert_eq!(&out[..], &[0x20, 2, 0, 0]);
    }

    #[test]
    fn the_bridge_bit_marks_a_3_1_1_connect_and_is_refused_on_v5() {
        let connect = |level: u8| {
            [
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', level, 0, 0, 60, 0, 2, b'i', b'd',
            ]
        };
        let mut codec = Codec::new(1024);
        let Ok(Some(Packet::Connect(read))) = decode_one(&mut codec, &connect(0x84)) else {
            panic!("a bridge's 3.1.1 CONNECT accepted");
        };
        assert_eq!((read.version, read.bridge), (Version::V311, true));
        let Ok(Some(Packet::Connect(read))) = decode_one(&mut Codec::new(1024), &connect(4)) else {
            panic!("a 3.1.1 CONNECT accepted");
        };
        assert!(!read.bridge);
        let refused = decode_one(
            &mut Codec::new(1024),
            &[
                0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 0x85, 0, 0, 60, 0, 0, 2, b'i', b'd',
            ],
        );
        assert!(
            matches!(refused, Err(DecodeError::UnsupportedVersion(0x85))),
            "{refused:?}"
        );
    }

    #[test]
    fn oversized_acks_lose_their_reason_string_not_the_packet() {
        let mut codec = connected(Version::V5);
        codec.set_max_outgoing(16);
        let long = Some("x".repeat(40));
        let mut ack = Ack::new(7, ReasonCode::PAYLOAD_FORMAT_INVALID);
        ack.reason_string = long.clone();
        let suback = crate::protocol::SubAck {
            packet_id: 9,
            reasons: vec![ReasonCode::TOPIC_FILTER_INVALID],
            reason_string: long.clone(),
        };
        let mut auth = crate::protocol::Auth::new(ReasonCode::CONTINUE_AUTHENTICATION, "M", None);
        auth.reason_string = long.clone();
        let disconnect = Disconnect {
            reason_string: long,
            ..Disconnect::new(ReasonCode::PROTOCOL_ERROR)
        };
        let cases: [(Packet, &[u8]); 5] = [
            (Packet::Auth(auth), &[0xF0, 6, 0x18, 4, 21, 0, 1, b'M']),
            (
                Packet::PubAck(ack.clone()),
                &[0x40, 0x04, 0x00, 0x07, 0x99, 0x00],
            ),
            (Packet::PubRec(ack), &[0x50, 0x04, 0x00, 0x07, 0x99, 0x00]),
            (
                Packet::SubAck(suback),
                &[0x90, 0x04, 0x00, 0x09, 0x00, 0x8F],
            ),
            (Packet::Disconnect(disconnect), &[0xE0, 0x02, 0x82, 0x00]),
        ];
        for (packet, expected) in cases {
            let mut out = BytesMut::new();
            assert!(codec.encode(&packet, &mut out).is_ok(), "{packet:?}");
            assert_eq!(&out[..], expected, "{packet:?}");
        }
    }
}
