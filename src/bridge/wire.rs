//! The bridge's side of the remote connection in bytes: the packets a
//! client sends, encoded, and the packets a server sends, read. mqttbytes
//! encodes CONNECT, SUBSCRIBE and PUBLISH and reads PUBLISH and CONNACK
//! properties; the short acknowledgements are read and written here, as
//! mqttbytes refuses some of their valid v5 forms (see MQTTBYTES.md).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqttbytes::{v4, v5};

use crate::protocol::{MessageProperties, Publish, QoS, Reader, Version, frame_header, put_varint};

/// A packet from the remote broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck { packet_id: u16, reason: u8 },
    PubRec { packet_id: u16, reason: u8 },
    PubRel { packet_id: u16 },
    PubComp { packet_id: u16 },
    SubAck { packet_id: u16, codes: Vec<u8> },
    UnsubAck,
    PingResp,
    Disconnect { reason: u8 },
}

/// What a CONNACK says, as far as the bridge uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// The 3.1.1 return code or the v5 reason code.
    pub code: u8,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub maximum_qos: Option<u8>,
    pub server_keep_alive: Option<u16>,
}

/// Why the remote's bytes cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed remaining length")]
    RemainingLength,
    #[error("a packet of {0} bytes is over the maximum packet size")]
    TooLarge(usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("a server does not send packet type {0}")]
    Unexpected(u8),
    #[error("cannot encode: {0}")]
    Encode(&'static str),
}

/// What the bridge's CONNECT carries.
#[derive(Debug, Clone)]
pub struct ConnectPacket<'a> {
    pub version: Version,
    pub client_id: &'a str,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    /// 3.1.1: Mosquitto's bridge bit (protocol level 0x84), which makes
    /// the remote treat this client as a bridge (no echo of its own
    /// messages, retain kept as published).
    pub bridge_bit: bool,
    /// v5: what the remote may have unacknowledged with the bridge.
    pub receive_maximum: u16,
    pub maximum_packet_size: u32,
}

/// Splits one whole packet off `input`: its first byte and its body.
pub fn split_frame(
    input: &mut BytesMut,
    max_size: usize,
) -> Result<Option<(u8, Bytes)>, WireError> {
    let Some((first, header, length)) =
        frame_header(input).map_err(|_| WireError::RemainingLength)?
    else {
        return Ok(None);
    };
    if header + length > max_size {
        return Err(WireError::TooLarge(header + length));
    }
    if input.len() < header + length {
        return Ok(None);
    }
    let mut frame = input.split_to(header + length);
    frame.advance(header);
    Ok(Some((first, frame.freeze())))
}

/// Reads one packet from a frame `split_frame` returned.
pub fn decode(version: Version, first: u8, body: Bytes) -> Result<Inbound, WireError> {
    let id_and_reason = |name| -> Result<(u16, u8), WireError> {
        if body.len() < 2 {
            return Err(WireError::Malformed(name));
        }
        let packet_id = u16::from_be_bytes([body[0], body[1]]);
        Ok((packet_id, body.get(2).copied().unwrap_or(0)))
    };
    match first >> 4 {
        2 => decode_connack(version, body),
        3 => decode_publish(version, first, body).map(Inbound::Publish),
        4 => {
            id_and_reason("PUBACK").map(|(packet_id, reason)| Inbound::PubAck { packet_id, reason })
        }
        5 => {
            id_and_reason("PUBREC").map(|(packet_id, reason)| Inbound::PubRec { packet_id, reason })
        }
        6 => id_and_reason("PUBREL").map(|(packet_id, _)| Inbound::PubRel { packet_id }),
        7 => id_and_reason("PUBCOMP").map(|(packet_id, _)| Inbound::PubComp { packet_id }),
        9 => decode_suback(version, body),
        11 => Ok(Inbound::UnsubAck),
        13 => Ok(Inbound::PingResp),
        14 => Ok(Inbound::Disconnect {
            reason: body.first().copied().unwrap_or(0),
        }),
        other => Err(WireError::Unexpected(other)),
    }
}

fn decode_connack(version: Version, body: Bytes) -> Result<Inbound, WireError> {
    if body.len() < 2 {
        return Err(WireError::Malformed("CONNACK"));
    }
    let mut connack = ConnAck {
        session_present: body[0] & 0x01 != 0,
        code: body[1],
        ..ConnAck::default()
    };
    if version == Version::V5 && connack.code == 0 {
        // Properties through mqttbytes, from the whole packet again.
        let mut whole = BytesMut::with_capacity(body.len() + 5);
        whole.put_u8(0x20);
        put_varint(&mut whole, body.len());
        whole.extend_from_slice(&body);
        if let Ok(v5::Packet::ConnAck(read)) = v5::read(&mut whole, usize::MAX)
            && let Some(properties) = read.properties
        {
            connack.receive_maximum = properties.receive_max;
            connack.maximum_packet_size = properties.max_packet_size;
            connack.maximum_qos = properties.max_qos;
            connack.server_keep_alive = properties.server_keep_alive;
        }
    }
    Ok(Inbound::ConnAck(connack))
}

fn decode_publish(version: Version, first: u8, body: Bytes) -> Result<Publish, WireError> {
    let mut whole = BytesMut::with_capacity(body.len() + 5);
    whole.put_u8(first);
    put_varint(&mut whole, body.len());
    whole.extend_from_slice(&body);
    let malformed = |_| WireError::Malformed("PUBLISH");
    match version {
        Version::V311 => match v4::read(&mut whole, usize::MAX).map_err(malformed)? {
            v4::Packet::Publish(publish) => Ok(Publish {
                dup: publish.dup,
                qos: qos_from(publish.qos),
                retain: publish.retain,
                topic: publish.topic,
                packet_id: publish.pkid,
                topic_alias: None,
                properties: MessageProperties::default(),
                payload: publish.payload,
            }),
            _ => Err(WireError::Malformed("PUBLISH")),
        },
        Version::V5 => match v5::read(&mut whole, usize::MAX).map_err(malformed)? {
            v5::Packet::Publish(publish) => {
                let read = publish.properties.unwrap_or(v5::PublishProperties {
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    topic_alias: None,
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                    subscription_identifiers: Vec::new(),
                    content_type: None,
                });
                Ok(Publish {
                    dup: publish.dup,
                    qos: qos_from(publish.qos),
                    retain: publish.retain,
                    topic: publish.topic,
                    packet_id: publish.pkid,
                    topic_alias: read.topic_alias,
                    properties: MessageProperties {
                        payload_format_indicator: read.payload_format_indicator,
                        message_expiry_interval: read.message_expiry_interval,
                        content_type: read.content_type,
                        response_topic: read.response_topic,
                        correlation_data: read.correlation_data,
                        user_properties: read.user_properties,
                    },
                    payload: publish.payload,
                })
            }
            _ => Err(WireError::Malformed("PUBLISH")),
        },
    }
}

fn decode_suback(version: Version, body: Bytes) -> Result<Inbound, WireError> {
    let malformed = |_| WireError::Malformed("SUBACK");
    let mut r = Reader::new(body);
    let packet_id = r.u16().map_err(malformed)?;
    if version == Version::V5 {
        let properties = r.varint().map_err(malformed)?;
        r.sub(properties as usize).map_err(malformed)?;
    }
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(WireError::Malformed("SUBACK"));
    }
    Ok(Inbound::SubAck { packet_id, codes })
}

fn qos_from(qos: mqttbytes::QoS) -> QoS {
    match qos {
        mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to(qos: QoS) -> mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

/// mqttbytes may leave part of a packet behind when it refuses one: write
/// into the end of `out` and cut back on failure.
fn guarded(
    out: &mut BytesMut,
    what: &'static str,
    write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
) -> Result<(), WireError> {
    let mark = out.len();
    write(out).map(|_| ()).map_err(|_| {
        out.truncate(mark);
        WireError::Encode(what)
    })
}

pub fn encode_connect(connect: &ConnectPacket<'_>, out: &mut BytesMut) -> Result<(), WireError> {
    let login = connect.username.map(|username| v4::Login {
        username: username.to_string(),
        password: connect.password.unwrap_or_default().to_string(),
    });
    let mark = out.len();
    match connect.version {
        Version::V311 => {
            let packet = v4::Connect {
                protocol: mqttbytes::Protocol::V4,
                keep_alive: connect.keep_alive,
                client_id: connect.client_id.to_string(),
                clean_session: connect.clean_start,
                last_will: None,
                login,
            };
            guarded(out, "CONNECT", |out| packet.write(out))?;
            if connect.bridge_bit {
                set_bridge_bit(&mut out[mark..])?;
            }
        }
        Version::V5 => {
            let packet = v5::Connect {
                protocol: mqttbytes::Protocol::V5,
                keep_alive: connect.keep_alive,
                client_id: connect.client_id.to_string(),
                clean_session: connect.clean_start,
                last_will: None,
                login: login.map(|login| v5::Login {
                    username: login.username,
                    password: login.password,
                }),
                properties: Some(v5::ConnectProperties {
                    // The remote keeps the session for good unless asked
                    // to start clean.
                    session_expiry_interval: (!connect.clean_start).then_some(u32::MAX),
                    receive_maximum: Some(connect.receive_maximum),
                    max_packet_size: Some(connect.maximum_packet_size),
                    topic_alias_max: None,
                    request_response_info: None,
                    request_problem_info: None,
                    user_properties: Vec::new(),
                    authentication_method: None,
                    authentication_data: None,
                }),
            };
            guarded(out, "CONNECT", |out| packet.write(out))?;
        }
    }
    Ok(())
}

/// Sets bit 7 of the protocol level in an encoded 3.1.1 CONNECT.
fn set_bridge_bit(connect: &mut [u8]) -> Result<(), WireError> {
    // Fixed header (1 + 1..4 bytes), then 00 04 "MQTT", then the level.
    let header = 1 + connect[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let level = header + 6;
    match connect.get_mut(level) {
        Some(byte) if *byte == 4 => {
            *byte |= 0x80;
            Ok(())
        }
        _ => Err(WireError::Encode("CONNECT")),
    }
}

/// One SUBSCRIBE for `filters`; v5 with No Local, Retain As Published and
/// retained messages only for a subscription that is new on the remote.
pub fn encode_subscribe(
    version: Version,
    packet_id: u16,
    filters: &[(String, QoS)],
    out: &mut BytesMut,
) -> Result<(), WireError> {
    match version {
        Version::V311 => {
            let packet = v4::Subscribe {
                pkid: packet_id,
                filters: filters
                    .iter()
                    .map(|(path, qos)| v4::SubscribeFilter::new(path.clone(), qos_to(*qos)))
                    .collect(),
            };
            guarded(out, "SUBSCRIBE", |out| packet.write(out))
        }
        Version::V5 => {
            let packet = v5::Subscribe {
                pkid: packet_id,
                filters: filters
                    .iter()
                    .map(|(path, qos)| v5::SubscribeFilter {
                        path: path.clone(),
                        qos: qos_to(*qos),
                        nolocal: true,
                        preserve_retain: true,
                        retain_forward_rule: v5::RetainForwardRule::OnNewSubscribe,
                    })
                    .collect(),
                properties: None,
            };
            guarded(out, "SUBSCRIBE", |out| packet.write(out))
        }
    }
}

/// A PUBLISH to the remote.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    pub payload: &'a Bytes,
    pub properties: &'a MessageProperties,
    pub message_expiry: Option<u32>,
}

pub fn encode_publish(
    version: Version,
    publish: &Outgoing<'_>,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    match version {
        Version::V311 => {
            let packet = v4::Publish {
                dup: publish.dup,
                qos: qos_to(publish.qos),
                retain: publish.retain,
                topic: publish.topic.to_string(),
                pkid: publish.packet_id,
                payload: publish.payload.clone(),
            };
            guarded(out, "PUBLISH", |out| packet.write(out))
        }
        Version::V5 => {
            let properties = publish.properties;
            let has_properties = properties.payload_format_indicator.is_some()
                || publish.message_expiry.is_some()
                || properties.content_type.is_some()
                || properties.response_topic.is_some()
                || properties.correlation_data.is_some()
                || !properties.user_properties.is_empty();
            let packet = v5::Publish {
                dup: publish.dup,
                qos: qos_to(publish.qos),
                retain: publish.retain,
                topic: publish.topic.to_string(),
                pkid: publish.packet_id,
                properties: has_properties.then(|| v5::PublishProperties {
                    payload_format_indicator: properties.payload_format_indicator,
                    message_expiry_interval: publish.message_expiry,
                    topic_alias: None,
                    response_topic: properties.response_topic.clone(),
                    correlation_data: properties.correlation_data.clone(),
                    user_properties: properties.user_properties.clone(),
                    subscription_identifiers: Vec::new(),
                    content_type: properties.content_type.clone(),
                }),
                payload: publish.payload.clone(),
            };
            guarded(out, "PUBLISH", |out| packet.write(out))
        }
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP with success: the same four bytes in
/// both versions.
pub fn encode_ack(packet_type: AckType, packet_id: u16, out: &mut BytesMut) {
    out.put_u8(match packet_type {
        AckType::PubAck => 0x40,
        AckType::PubRec => 0x50,
        AckType::PubRel => 0x62,
        AckType::PubComp => 0x70,
    });
    out.put_u8(2);
    out.put_u16(packet_id);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckType {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

pub fn encode_pingreq(out: &mut BytesMut) {
    out.extend_from_slice(&[0xc0, 0x00]);
}

pub fn encode_disconnect(out: &mut BytesMut) {
    out.extend_from_slice(&[0xe0, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(version: Version, bytes: &[u8]) -> Vec<Inbound> {
        let mut input = BytesMut::from(bytes);
        let mut packets = Vec::new();
        while let Some((first, body)) = split_frame(&mut input, 1 << 20).unwrap() {
            packets.push(decode(version, first, body).unwrap());
        }
        assert!(input.is_empty(), "a partial packet left over");
        packets
    }

    #[test]
    fn the_short_v5_acknowledgements_mqttbytes_refuses_are_read() {
        let packets = read_all(
            Version::V5,
            &[
                0x40, 0x02, 0, 7, 0x50, 0x03, 0, 8, 0x10, 0x62, 0x02, 0, 9, 0x70, 0x02, 0, 9, 0xe0,
                0x00, 0xd0, 0x00,
            ],
        );
        assert_eq!(
            packets,
            [
                Inbound::PubAck {
                    packet_id: 7,
                    reason: 0
                },
                Inbound::PubRec {
                    packet_id: 8,
                    reason: 0x10
                },
                Inbound::PubRel { packet_id: 9 },
                Inbound::PubComp { packet_id: 9 },
                Inbound::Disconnect { reason: 0 },
                Inbound::PingResp,
            ]
        );
    }

    #[test]
    fn a_packet_split_anywhere_is_read_once_whole() {
        let mut encoded = BytesMut::new();
        let payload = Bytes::from_static(b"21.5");
        let properties = MessageProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..MessageProperties::default()
        };
        let outgoing = Outgoing {
            topic: "edge1/sensors/a",
            qos: QoS::ExactlyOnce,
            retain: true,
            dup: true,
            packet_id: 513,
            payload: &payload,
            properties: &properties,
            message_expiry: Some(30),
        };
        encode_publish(Version::V5, &outgoing, &mut encoded).unwrap();
        for cut in 1..encoded.len() {
            let mut input = BytesMut::from(&encoded[..cut]);
            assert_eq!(
                split_frame(&mut input, 1 << 20).unwrap(),
                None,
                "cut at {cut}"
            );
            input.extend_from_slice(&encoded[cut..]);
            let (first, body) = split_frame(&mut input, 1 << 20).unwrap().unwrap();
            let Inbound::Publish(read) = decode(Version::V5, first, body).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(read.topic, "edge1/sensors/a");
            assert_eq!(
                (read.qos, read.retain, read.dup, read.packet_id),
                (QoS::ExactlyOnce, true, true, 513)
            );
            assert_eq!(read.properties.message_expiry_interval, Some(30));
            assert_eq!(read.properties.content_type.as_deref(), Some("text/plain"));
            assert_eq!(read.properties.user_properties, properties.user_properties);
            assert_eq!(read.payload, payload);
        }
    }

    #[test]
    fn the_bridge_bit_sets_the_top_bit_of_the_3_1_1_protocol_level() {
        let mut encoded = BytesMut::new();
        let connect = ConnectPacket {
            version: Version::V311,
            client_id: "edge-1",
            clean_start: false,
            keep_alive: 60,
            username: Some("u"),
            password: Some("p"),
            bridge_bit: true,
            receive_maximum: 100,
            maximum_packet_size: 1 << 20,
        };
        encode_connect(&connect, &mut encoded).unwrap();
        assert_eq!(&encoded[2..9], &[0, 4, b'M', b'Q', b'T', b'T', 0x84]);
        let mut plain = BytesMut::new();
        encode_connect(
            &ConnectPacket {
                bridge_bit: false,
                ..connect
            },
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain[8], 0x04);
    }

    #[test]
    fn connack_and_suback_carry_what_the_bridge_needs() {
        // v5 CONNACK, session present, success, Receive Maximum 20.
        let packets = read_all(
            Version::V5,
            &[0x20, 0x06, 0x01, 0x00, 0x03, 0x21, 0x00, 0x14],
        );
        assert_eq!(
            packets,
            [Inbound::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                receive_maximum: Some(20),
                ..ConnAck::default()
            })]
        );
        let packets = read_all(Version::V5, &[0x90, 0x05, 0x00, 0x02, 0x00, 0x01, 0x87]);
        assert_eq!(
            packets,
            [Inbound::SubAck {
                packet_id: 2,
                codes: vec![1, 0x87]
            }]
        );
        let packets = read_all(Version::V311, &[0x20, 0x02, 0x00, 0x01]);
        assert_eq!(
            packets,
            [Inbound::ConnAck(ConnAck {
                code: 1,
                ..ConnAck::default()
            })]
        );
    }

    #[test]
    fn an_oversized_or_malformed_frame_is_an_error() {
        let mut input = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
        assert_eq!(
            split_frame(&mut input, 1 << 20),
            Err(WireError::TooLarge(268_435_460))
        );
        let mut input = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert_eq!(
            split_frame(&mut input, usize::MAX),
            Err(WireError::RemainingLength)
        );
        let mut input = BytesMut::from(&[0x10, 0x00][..]);
        let (first, body) = split_frame(&mut input, 1 << 20).unwrap().unwrap();
        assert_eq!(
            decode(Version::V5, first, body),
            Err(WireError::Unexpected(1))
        );
    }
}
