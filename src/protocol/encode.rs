//! Writing server packets. PUBLISH, CONNACK and SUBACK go through mqttbytes;
//! the acknowledgements, UNSUBACK and DISCONNECT are written here because
//! mqttbytes' reason enums cannot carry every code the broker sends and its
//! short forms are ones some clients cannot read.

use bytes::{BufMut, BytesMut};
use mqttbytes::{v4, v5};

use super::codec::EncodeError;
use super::{
    Ack, ConnAck, Disconnect, Packet, Publish, QoS, ReasonCode, SubAck, UnsubAck, Version,
};

/// mqttbytes writes the length of longer strings truncated: never hand it one.
const MAX_STRING: usize = 65_535;

pub fn packet(version: Version, packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    match (packet, version) {
        (Packet::Publish(p), Version::V311) => v311_publish(p, out),
        (Packet::Publish(p), Version::V5) => v5_publish(p, out),
        (Packet::ConnAck(c), Version::V311) => v311_connack(c, out),
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
        (
            Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) | Packet::PingReq,
            _,
        ) => Err(EncodeError::Invalid("client-only packet")),
    }
}

fn codec<T>(result: Result<T, mqttbytes::Error>) -> Result<(), EncodeError> {
    result
        .map(|_| ())
        .map_err(|_| EncodeError::Invalid("mqttbytes refused the packet"))
}

fn qos_of(qos: QoS) -> mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

fn check_string(text: &str) -> Result<(), EncodeError> {
    if text.len() > MAX_STRING {
        return Err(EncodeError::Invalid("string longer than 65535 bytes"));
    }
    Ok(())
}

fn v311_publish(p: &Publish, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_string(&p.topic)?;
    let mut publish = v4::Publish::from_bytes(p.topic.as_str(), qos_of(p.qos), p.payload.clone());
    publish.dup = p.dup;
    publish.retain = p.retain;
    publish.pkid = p.packet_id;
    codec(publish.write(out))
}

fn v5_publish(p: &Publish, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_string(&p.topic)?;
    let props = &p.properties;
    for text in props.content_type.iter().chain(props.response_topic.iter()) {
        check_string(text)?;
    }
    let has_properties = props.payload_format_indicator.is_some()
        || props.message_expiry_interval.is_some()
        || props.content_type.is_some()
        || props.response_topic.is_some()
        || props.correlation_data.is_some()
        || !props.user_properties.is_empty()
        || !p.subscription_ids.is_empty()
        || p.topic_alias.is_some();
    let properties = has_properties.then(|| v5::PublishProperties {
        payload_format_indicator: props.payload_format_indicator,
        message_expiry_interval: props.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        user_properties: props.user_properties.clone(),
        subscription_identifiers: p.subscription_ids.iter().map(|&id| id as usize).collect(),
        content_type: props.content_type.clone(),
    });
    let publish = v5::Publish {
        dup: p.dup,
        qos: qos_of(p.qos),
        retain: p.retain,
        topic: p.topic.clone(),
        pkid: p.packet_id,
        properties,
        payload: p.payload.clone(),
    };
    codec(publish.write(out))
}

fn v311_connack(c: &ConnAck, out: &mut BytesMut) -> Result<(), EncodeError> {
    let code = match c.reason.v311_connack_code() {
        0x00 => v4::ConnectReturnCode::Success,
        0x01 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x02 => v4::ConnectReturnCode::BadClientId,
        0x03 => v4::ConnectReturnCode::ServiceUnavailable,
        0x04 => v4::ConnectReturnCode::BadUserNamePassword,
        _ => v4::ConnectReturnCode::NotAuthorized,
    };
    codec(v4::ConnAck::new(code, c.session_present).write(out))
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
        authentication_method: None,
        authentication_data: None,
    };
    let connack = v5::ConnAck {
        session_present: c.session_present,
        code: v5_connack_code(c.reason),
        properties: Some(properties),
    };
    codec(connack.write(out))
}

/// Writes a variable byte integer.
fn put_varint(out: &mut BytesMut, mut value: usize) {
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
        check_string(text)?;
        section.push(31);
        section.extend_from_slice(&(text.len() as u16).to_be_bytes());
        section.extend_from_slice(text.as_bytes());
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
                check_string(text)?;
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
