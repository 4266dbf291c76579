//! Reading client packets into the internal model.
//!
//! Every client packet is read here by hand, in one pass, enforcing the rules
//! mqttbytes skips (reserved bits, exact property sections, at least one
//! filter) and accepting the forms it refuses (binary passwords, MQTT 3.1,
//! v5 acks and DISCONNECT without a reason code). mqttbytes' own v5
//! UNSUBSCRIBE decoder prints every packet id to stderr, so it is never
//! called.

use bytes::{Buf, Bytes};

use super::codec::DecodeError;
use super::properties::{self, Properties};
use super::{
    Ack, Auth, Connect, Disconnect, MessageProperties, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscriptionOptions, Unsubscribe, Version, Will,
};

/// A cursor over one packet's bytes; every read checks the bounds.
pub struct Reader {
    bytes: Bytes,
}

const TRUNCATED: DecodeError = DecodeError::Malformed("packet ends early");

impl Reader {
    pub fn new(bytes: Bytes) -> Reader {
        Reader { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.bytes.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.bytes.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.bytes.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.bytes.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.bytes.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.bytes.get_u32())
    }

    /// A variable byte integer: at most four bytes.
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for shift in [0, 7, 14, 21] {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let length = usize::from(self.u16()?);
        if self.bytes.len() < length {
            return Err(TRUNCATED);
        }
        Ok(self.bytes.split_to(length))
    }

    /// A UTF-8 string; U+0000 is forbidden by both specs [MQTT-1.5.3-2].
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw)
            .map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))?;
        if text.contains('\0') {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        Ok(text.to_owned())
    }

    /// The next `length` bytes as a reader of their own.
    pub fn sub(&mut self, length: usize) -> Result<Reader, DecodeError> {
        if self.bytes.len() < length {
            return Err(TRUNCATED);
        }
        Ok(Reader::new(self.bytes.split_to(length)))
    }

    /// Everything left, as one slice of the packet.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    fn expect_end(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("bytes after the end of the packet"))
        }
    }
}

fn packet_id(reader: &mut Reader) -> Result<u16, DecodeError> {
    match reader.u16()? {
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

impl From<Properties> for MessageProperties {
    fn from(p: Properties) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
        }
    }
}

/// The protocol a CONNECT asks for, read from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectVersion {
    /// The packet format.
    pub version: Version,
    /// MQTT 3.1 (`MQIsdp`, level 3): the packets of 3.1.1, but a CONNACK
    /// without the Session Present flag.
    pub mqtt31: bool,
    /// Mosquitto's bridge bit (the level's top bit, `try_private`): the
    /// client is another broker's bridge.
    pub bridge: bool,
}

pub fn connect_version(body: Bytes) -> Result<ConnectVersion, DecodeError> {
    let mut r = Reader::new(body);
    let name = r.string()?;
    let level = r.u8()?;
    let bridge = level & 0x80 != 0;
    let (version, mqtt31) = match (name.as_str(), level & 0x7f, bridge) {
        ("MQTT", 4, _) => (Version::V311, false),
        // v5 has No Local and Retain As Published instead.
        ("MQTT", 5, false) => (Version::V5, false),
        ("MQIsdp", 3, _) => (Version::V311, true),
        ("MQTT" | "MQIsdp", _, _) => return Err(DecodeError::UnsupportedVersion(level)),
        _ => return Err(DecodeError::BadProtocolName),
    };
    Ok(ConnectVersion {
        version,
        mqtt31,
        bridge,
    })
}

/// CONNECT, read completely by hand (see the module note).
pub fn connect(body: Bytes, version: Version) -> Result<Connect, DecodeError> {
    let mut r = Reader::new(body);
    r.string()?;
    r.u8()?;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let has_will = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !has_will && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain set without a will",
        ));
    }
    let will_qos = QoS::from_bits(will_qos_bits).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if version == Version::V311 && has_password && !has_username {
        return Err(DecodeError::Malformed("password without username"));
    }
    let keep_alive = r.u16()?;
    let props = match version {
        Version::V5 => properties::read(&mut r, properties::CONNECT)?,
        Version::V311 => Properties::default(),
    };
    let client_id = r.string()?;
    let will = if has_will {
        let will_props = match version {
            Version::V5 => properties::read(&mut r, properties::WILL)?,
            Version::V311 => Properties::default(),
        };
        let delay_interval = will_props.will_delay_interval.unwrap_or(0);
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            delay_interval,
            properties: will_props.into(),
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.expect_end()?;
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without a method",
        ));
    }
    Ok(Connect {
        version,
        client_id,
        clean_start,
        keep_alive,
        username,
        password,
        will,
        session_expiry: props.session_expiry_interval.unwrap_or(0),
        receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        maximum_packet_size: props.maximum_packet_size,
        topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
        request_response_information: props.request_response_information == Some(1),
        request_problem_information: props.request_problem_information != Some(0),
        user_properties: props.user_properties,
        authentication_method: props.authentication_method,
        authentication_data: props.authentication_data,
        bridge: false,
    })
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP. v5 may omit the reason code (meaning
/// success) and the properties.
pub fn ack(version: Version, body: Bytes) -> Result<Ack, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = packet_id(&mut r)?;
    let mut ack = Ack::new(packet_id, ReasonCode::SUCCESS);
    if version == Version::V5 && !r.is_empty() {
        ack.reason = ReasonCode(r.u8()?);
        if !r.is_empty() {
            ack.reason_string = properties::read(&mut r, properties::ACK)?.reason_string;
        }
    }
    r.expect_end()?;
    Ok(ack)
}

/// DISCONNECT. v5 may omit the reason code and the properties.
pub fn disconnect(version: Version, body: Bytes) -> Result<Disconnect, DecodeError> {
    let mut r = Reader::new(body);
    let mut disconnect = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    if version == Version::V5 && !r.is_empty() {
        disconnect.reason = ReasonCode(r.u8()?);
        if !r.is_empty() {
            let props = properties::read(&mut r, properties::DISCONNECT)?;
            disconnect.session_expiry = props.session_expiry_interval;
            disconnect.reason_string = props.reason_string;
        }
    }
    r.expect_end()?;
    Ok(disconnect)
}

/// AUTH from a client: reason 0x18 (Continue authentication) or 0x19
/// (Re-authenticate) only, 0x00 being the server's [MQTT-3.15.2-1], and the
/// Authentication Method exactly once (3.15.2.2.2). So the short forms
/// (remaining length 0 or 1, meaning 0x00 or no properties) are all
/// errors from a client.
pub fn auth(body: Bytes) -> Result<Auth, DecodeError> {
    let mut r = Reader::new(body);
    let reason = match r.is_empty() {
        true => ReasonCode::SUCCESS,
        false => ReasonCode(r.u8()?),
    };
    if reason != ReasonCode::CONTINUE_AUTHENTICATION && reason != ReasonCode::REAUTHENTICATE {
        return Err(DecodeError::Protocol(
            "AUTH reason code a client may not send",
        ));
    }
    if r.is_empty() {
        return Err(DecodeError::Protocol(
            "AUTH without an authentication method",
        ));
    }
    let props = properties::read(&mut r, properties::AUTH)?;
    r.expect_end()?;
    let method = props.authentication_method.ok_or(DecodeError::Protocol(
        "AUTH without an authentication method",
    ))?;
    Ok(Auth {
        reason,
        method,
        data: props.authentication_data,
        reason_string: props.reason_string,
        user_properties: props.user_properties,
    })
}

/// PUBLISH. The payload is a slice of the frame, not a copy.
pub fn publish(version: Version, byte1: u8, body: Bytes) -> Result<Publish, DecodeError> {
    let qos = QoS::from_bits((byte1 >> 1) & 0x03).ok_or(DecodeError::Malformed("QoS 3"))?;
    let dup = byte1 & 0x08 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let mut r = Reader::new(body);
    let topic = r.string()?;
    let packet_id = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce | QoS::ExactlyOnce => packet_id(&mut r)?,
    };
    let (topic_alias, properties) = match version {
        Version::V5 => {
            let mut props = properties::read(&mut r, properties::PUBLISH)?;
            (props.topic_alias.take(), props.into())
        }
        Version::V311 => (None, MessageProperties::default()),
    };
    Ok(Publish {
        dup,
        qos,
        retain: byte1 & 0x01 != 0,
        topic,
        packet_id,
        topic_alias,
        properties,
        payload: r.rest(),
    })
}

/// SUBSCRIBE: at least one filter, no reserved option bits, and no QoS or
/// Retain Handling 3.
pub fn subscribe(version: Version, body: Bytes) -> Result<Subscribe, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = packet_id(&mut r)?;
    let (subscription_id, user_properties) = match version {
        Version::V5 => {
            let props = properties::read(&mut r, properties::SUBSCRIBE)?;
            (props.subscription_identifier, props.user_properties)
        }
        Version::V311 => (None, Vec::new()),
    };
    if r.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    let reserved = match version {
        Version::V311 => 0xFC,
        Version::V5 => 0xC0,
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = r.u8()?;
        if options & reserved != 0 {
            return Err(DecodeError::Malformed(
                "reserved subscription option bits set",
            ));
        }
        let qos = QoS::from_bits(options & 0x03);
        let retain_handling = match (options >> 4) & 0x03 {
            0 => Some(RetainHandling::OnSubscribe),
            1 => Some(RetainHandling::OnNewSubscription),
            2 => Some(RetainHandling::Never),
            _ => None,
        };
        let (Some(qos), Some(retain_handling)) = (qos, retain_handling) else {
            // v5 calls QoS 3 and Retain Handling 3 protocol errors (3.8.3.1).
            return Err(match version {
                Version::V5 => DecodeError::Protocol("QoS or Retain Handling 3"),
                Version::V311 => DecodeError::Malformed("QoS 3"),
            });
        };
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        subscription_id,
        user_properties,
    })
}

/// UNSUBSCRIBE: at least one filter.
pub fn unsubscribe(version: Version, body: Bytes) -> Result<Unsubscribe, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = packet_id(&mut r)?;
    let user_properties = match version {
        Version::V5 => properties::read(&mut r, properties::UNSUBSCRIBE)?.user_properties,
        Version::V311 => Vec::new(),
    };
    if r.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

/// Skips a PINGREQ body, which must be empty.
pub fn empty(body: Bytes) -> Result<(), DecodeError> {
    if !body.is_empty() {
        return Err(DecodeError::Malformed("packet must have no body"));
    }
    Ok(())
}
