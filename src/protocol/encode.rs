//! Writing server packets. CONNACK and SUBACK go through mqttbytes. PUBLISH
//! is written here straight from the shared message (no per-delivery copy),
//! and so are the acknowledgements, UNSUBACK and DISCONNECT, because
//! mqttbytes' reason enums cannot carry every code the broker sends and its
//! short forms are ones some clients cannot read.

use bytes::{BufMut, BytesMut};
use mqttbytes::{v4, v5};

use super::codec::{EncodeError, MAX_REMAINING_LENGTH};
use super::{
    Ack, Auth, ConnAck, Deliver, Disconnect, Packet, QoS, ReasonCode, SubAck, UnsubAck, Version,
};

/// mqttbytes writes the length of longer strings truncated: never hand it one.
const MAX_STRING: usize = 65_535;

/// Writes any server packet but PUBLISH, which goes through `deliver`.
pub fn packet(
    version: Version,
    mqtt31: bool,
    packet: &Packet,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    match (packet, version) {
        (Packet::ConnAck(c), Version::V311) => v311_connack(c, mqtt31, out),
        (Packet::ConnAck(c), Version::V5) => v5_connack(c, out),
        (Packet::PubAck(a), _) => ack(0x40, version, a, out),
        (Packet::PubRec(a), _) => ack(0x50, version, a, out),
        (Packet::PubRel(a), _) => ack(0x62, version, a, out),
        (Packet::PubComp(a), _) => ack(0x70, version, a, out),
        (Packet::SubAck(s), _) => suback(version, s, out),
        (Packet::UnsubAck(u), _) => unsuback(version, u, out),
        (Packet::PingResp, _) => codec(v4::PingResp.write(out)),
        (Packet::Disconnect(d), Version::V5) => v5_disconnect(d, out),
        (Packet::Disconnect(_), Version::V311) => {
            Err(EncodeError::Invalid("3.1.1 servers never send DISCONNECT"))
        }
        (Packet::Auth(a), Version::V5) => v5_auth(a, out),
        (Packet::Auth(_), Version::V311) => Err(EncodeError::Invalid("3.1.1 has no AUTH")),
        (Packet::Deliver(_), _) => Err(EncodeError::Invalid("PUBLISH goes through `deliver`")),
        (
            Packet::Connect(_)
            | Packet::Publish(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq,
            _,
        ) => Err(EncodeError::Invalid("client-only packet")),
    }
}

fn codec<T>(result: Result<T, mqttbytes::Error>) -> Result<(), EncodeError> {
    result
        .map(|_| ())
        .map_err(|_| EncodeError::Invalid("mqttbytes refused the packet"))
}

/// How a PUBLISH names its topic on a v5 connection with outbound aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicForm {
    /// The topic name only.
    Name,
    /// The topic name, setting up this alias for later messages.
    NameAndAlias(u16),
    /// An empty topic name and the alias set up earlier.
    Alias(u16),
}

/// A length-prefixed string or binary value, already checked for length.
fn put_string(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

/// A string or binary property: its id, then the value.
fn put_property_string(section: &mut Vec<u8>, id: u8, bytes: &[u8]) -> Result<(), EncodeError> {
    check_length(bytes.len())?;
    section.push(id);
    put_string(section, bytes);
    Ok(())
}

/// The v5 property section of a PUBLISH the broker sends.
fn publish_properties(d: &Deliver, alias: Option<u16>) -> Result<Vec<u8>, EncodeError> {
    let props = &d.message.properties;
    let mut section = Vec::new();
    if let Some(indicator) = props.payload_format_indicator {
        section.extend_from_slice(&[1, indicator]);
    }
    if let Some(expiry) = d.message_expiry {
        section.push(2);
        section.extend_from_slice(&expiry.to_be_bytes());
    }
    if let Some(content_type) = &props.content_type {
        put_property_string(&mut section, 3, content_type.as_bytes())?;
    }
    if let Some(response_topic) = &props.response_topic {
        put_property_string(&mut section, 8, response_topic.as_bytes())?;
    }
    if let Some(correlation_data) = &props.correlation_data {
        put_property_string(&mut section, 9, correlation_data)?;
    }
    for &id in &d.subscription_ids {
        section.push(11);
        put_varint(&mut section, id as usize);
    }
    if let Some(alias) = alias {
        section.push(35);
        section.extend_from_slice(&alias.to_be_bytes());
    }
    for (key, value) in &props.user_properties {
        check_length(value.len())?;
        put_property_string(&mut section, 38, key.as_bytes())?;
        put_string(&mut section, value.as_bytes());
    }
    Ok(section)
}

fn check_length(length: usize) -> Result<(), EncodeError> {
    if length > MAX_STRING {
        return Err(EncodeError::Invalid("string longer than 65535 bytes"));
    }
    Ok(())
}

/// Writes a PUBLISH straight from the shared message, without copying it
/// into another packet type first.
pub fn deliver(
    version: Version,
    d: &Deliver,
    form: TopicForm,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let message = &d.message;
    let (topic, alias) = match form {
        TopicForm::Name => (&*message.topic, None),
        TopicForm::NameAndAlias(alias) => (&*message.topic, Some(alias)),
        TopicForm::Alias(alias) => ("", Some(alias)),
    };
    check_length(topic.len())?;
    let section = match version {
        Version::V5 => Some(publish_properties(d, alias)?),
        Version::V311 => None,
    };
    let packet_id_len = if d.qos == QoS::AtMostOnce { 0 } else { 2 };
    let properties_len = section
        .as_ref()
        .map_or(0, |s| varint_len(s.len()) + s.len());
    let remaining = 2 + topic.len() + packet_id_len + properties_len + message.payload.len();
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge {
            size: remaining + 5,
        });
    }
    let byte1 = 0x30 | (u8::from(d.dup) << 3) | ((d.qos as u8) << 1) | u8::from(d.retain);
    out.reserve(5 + remaining);
    out.put_u8(byte1);
    put_varint(out, remaining);
    put_string(out, topic.as_bytes());
    if packet_id_len > 0 {
        out.put_u16(d.packet_id);
    }
    if let Some(section) = section {
        put_varint(out, section.len());
        out.extend_from_slice(&section);
    }
    out.extend_from_slice(&message.payload);
    Ok(())
}

/// MQTT 3.1 has no Session Present flag: that byte is reserved there.
fn v311_connack(c: &ConnAck, mqtt31: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    let code = match c.reason.v311_connack_code() {
        0x00 => v4::ConnectReturnCode::Success,
        0x01 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x02 => v4::ConnectReturnCode::BadClientId,
        0x03 => v4::ConnectReturnCode::ServiceUnavailable,
        0x04 => v4::ConnectReturnCode::BadUserNamePassword,
        _ => v4::ConnectReturnCode::NotAuthorized,
    };
    codec(v4::ConnAck::new(code, c.session_present && !mqtt31).write(out))
}

fn v5_connack_code(reason: ReasonCode) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match reason.0 {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x83 => C::ImplementationSpecificError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x8C => C::BadAuthenticationMethod,
        0x90 => C::TopicNameInvalid,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x99 => C::PayloadFormatInvalid,
        0x9A => C::RetainNotSupported,
        0x9B => C::QoSNotSupported,
        0x9F => C::ConnectionRateExceeded,
        _ => C::UnspecifiedError,
    }
}

fn v5_connack(c: &ConnAck, out: &mut BytesMut) -> Result<(), EncodeError> {
    let p = &c.properties;
    for value in [
        p.authentication_method.as_deref().map(str::as_bytes),
        p.authentication_data.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        check_length(value.len())?;
    }
    let properties = v5::ConnAckProperties {
        session_expiry_interval: p.session_expiry_interval,
        receive_max: p.receive_maximum,
        max_qos: p.maximum_qos,
        retain_available: p.retain_available,
        max_packet_size: p.maximum_packet_size,
        assigned_client_identifier: p.assigned_client_identifier.clone(),
        topic_alias_max: p.topic_alias_maximum,
        reason_string: p.reason_string.clone(),
        user_properties: Vec::new(),
        wildcard_subscription_available: p.wildcard_subscription_available,
        subscription_identifiers_available: p.subscription_identifiers_available,
        shared_subscription_available: p.shared_subscription_available,
        server_keep_alive: p.server_keep_alive,
        response_information: p.response_information.clone(),
        server_reference: None,
        authentication_method: p.authentication_method.clone(),
        authentication_data: p.authentication_data.clone(),
    };
    let connack = v5::ConnAck {
        session_present: c.session_present,
        code: v5_connack_code(c.reason),
        properties: Some(properties),
    };
    codec(connack.write(out))
}

/// Writes a variable byte integer.
pub(crate) fn put_varint(out: &mut impl BufMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// The v5 property section holding only a reason string, if there is one.
fn reason_string_section(reason_string: Option<&str>) -> Result<Vec<u8>, EncodeError> {
    let mut section = Vec::new();
    if let Some(text) = reason_string {
        put_property_string(&mut section, 31, text.as_bytes())?;
    }
    Ok(section)
}

/// Writes a reason code followed by a property section. The property length
/// is always written, even when 0: the spec lets it be left out, but several
/// client libraries cannot read the shorter form.
fn put_reason_and_properties(out: &mut BytesMut, reason: ReasonCode, section: &[u8]) {
    out.put_u8(reason.0);
    put_varint(out, section.len());
    out.extend_from_slice(section);
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn ack(byte1: u8, version: Version, a: &Ack, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u8(byte1);
    let section = reason_string_section(a.reason_string.as_deref())?;
    if version == Version::V311 || (a.reason == ReasonCode::SUCCESS && section.is_empty()) {
        out.put_u8(2);
        out.put_u16(a.packet_id);
        return Ok(());
    }
    put_varint(out, 3 + varint_len(section.len()) + section.len());
    out.put_u16(a.packet_id);
    put_reason_and_properties(out, a.reason, &section);
    Ok(())
}

fn suback(version: Version, s: &SubAck, out: &mut BytesMut) -> Result<(), EncodeError> {
    match version {
        Version::V311 => {
            let codes = s
                .reasons
                .iter()
                .map(|r| match r.v311_suback_code() {
                    0 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtMostOnce),
                    1 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce),
                    2 => v4::SubscribeReasonCode::Success(mqttbytes::QoS::ExactlyOnce),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            codec(v4::SubAck::new(s.packet_id, codes).write(out))
        }
        Version::V5 => {
            let codes = s
                .reasons
                .iter()
                .map(|r| {
                    v5::SubscribeReasonCode::try_from(r.0)
                        .unwrap_or(v5::SubscribeReasonCode::Unspecified)
                })
                .collect();
            let mut suback = v5::SubAck::new(s.packet_id, codes);
            if let Some(text) = &s.reason_string {
                check_length(text.len())?;
                suback.properties = Some(v5::SubAckProperties {
                    reason_string: Some(text.clone()),
                    user_properties: Vec::new(),
                });
            }
            codec(suback.write(out))
        }
    }
}

fn unsuback(version: Version, u: &UnsubAck, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u8(0xB0);
    match version {
        Version::V311 => {
            out.put_u8(2);
            out.put_u16(u.packet_id);
        }
        Version::V5 => {
            put_varint(out, 3 + u.reasons.len());
            out.put_u16(u.packet_id);
            out.put_u8(0);
            for reason in &u.reasons {
                out.put_u8(reason.0);
            }
        }
    }
    Ok(())
}

fn v5_disconnect(d: &Disconnect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let section = reason_string_section(d.reason_string.as_deref())?;
    out.put_u8(0xE0);
    put_varint(out, 1 + varint_len(section.len()) + section.len());
    put_reason_and_properties(out, d.reason, &section);
    Ok(())
}

/// AUTH always in full: the method is in every AUTH (3.15.2.2.2), so the
/// short forms never apply.
fn v5_auth(a: &Auth, out: &mut BytesMut) -> Result<(), EncodeError> {
    let mut section = Vec::new();
    put_property_string(&mut section, 21, a.method.as_bytes())?;
    if let Some(data) = &a.data {
        put_property_string(&mut section, 22, data)?;
    }
    if let Some(text) = &a.reason_string {
        put_property_string(&mut section, 31, text.as_bytes())?;
    }
    out.put_u8(0xF0);
    put_varint(out, 1 + varint_len(section.len()) + section.len());
    put_reason_and_properties(out, a.reason, &section);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_acks_use_the_shortest_form_the_spec_allows() {
        let mut out = BytesMut::new();
        ack(
            0x40,
            Version::V5,
            &Ack::new(9, ReasonCode::SUCCESS),
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x40, 2, 0, 9]);
        out.clear();
        let failure = Ack::new(9, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
        ack(0x70, Version::V5, &failure, &mut out).unwrap();
        assert_eq!(&out[..], &[0x70, 4, 0, 9, 0x92, 0]);
        out.clear();
        ack(0x70, Version::V311, &failure, &mut out).unwrap();
        assert_eq!(&out[..], &[0x70, 2, 0, 9]);
    }

    #[test]
    fn ack_with_reason_string_carries_it_in_properties() {
        let mut out = BytesMut::new();
        let mut a = Ack::new(1, ReasonCode::PAYLOAD_FORMAT_INVALID);
        a.reason_string = Some("ab".into());
        ack(0x40, Version::V5, &a, &mut out).unwrap();
        assert_eq!(&out[..], &[0x40, 9, 0, 1, 0x99, 5, 31, 0, 2, b'a', b'b']);
    }

    #[test]
    fn v5_disconnect_carries_its_reason_and_an_empty_property_section() {
        let mut out = BytesMut::new();
        v5_disconnect(&Disconnect::new(ReasonCode::SESSION_TAKEN_OVER), &mut out).unwrap();
        assert_eq!(&out[..], &[0xE0, 2, 0x8E, 0]);
    }

    #[test]
    fn v5_auth_names_its_method_and_carries_the_data() {
        let mut out = BytesMut::new();
        let auth = Auth::new(
            ReasonCode::CONTINUE_AUTHENTICATION,
            "M",
            Some(bytes::Bytes::from_static(b"xy")),
        );
        v5_auth(&auth, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &[0xF0, 11, 0x18, 9, 21, 0, 1, b'M', 22, 0, 2, b'x', b'y']
        );
        assert!(packet(Version::V311, false, &Packet::Auth(auth), &mut out).is_err());
    }

    #[test]
    fn v5_connack_repeats_the_authentication_method_and_data() {
        let mut out = BytesMut::new();
        let mut connack = ConnAck::default();
        connack.properties.authentication_method = Some("M".into());
        connack.properties.authentication_data = Some(bytes::Bytes::from_static(b"v"));
        v5_connack(&connack, &mut out).unwrap();
        // Flags, reason, then properties: Authentication Method, Data.
        assert_eq!(
            &out[..],
            &[0x20, 11, 0, 0, 8, 21, 0, 1, b'M', 22, 0, 1, b'v']
        );
    }

    #[test]
    fn v5_unsuback_lists_one_reason_per_filter() {
        let mut out = BytesMut::new();
        let u = UnsubAck {
            packet_id: 3,
            reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        };
        unsuback(Version::V5, &u, &mut out).unwrap();
        assert_eq!(&out[..], &[0xB0, 5, 0, 3, 0, 0x00, 0x11]);
    }
}
