//! v5 property sections: read strictly, by the rules mqttbytes leaves out.
//!
//! mqttbytes accepts duplicated single-use properties, sections whose length
//! is shorter than what they hold, and properties not allowed in a packet, so
//! every property section a client sends is read here first.

use bytes::Bytes;

use super::codec::DecodeError;
use super::decode::Reader;

/// Which properties a packet may carry, as a bitmask over property ids.
#[derive(Debug, Clone, Copy)]
pub struct Allowed(u64);

impl Allowed {
    const fn of(ids: &[u8]) -> Allowed {
        let mut mask = 0u64;
        let mut i = 0;
        while i < ids.len() {
            mask |= 1 << ids[i];
            i += 1;
        }
        Allowed(mask)
    }
    fn contains(self, id: u8) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }
}

pub const CONNECT: Allowed = Allowed::of(&[17, 21, 22, 23, 25, 33, 34, 38, 39]);
pub const WILL: Allowed = Allowed::of(&[1, 2, 3, 8, 9, 24, 38]);
/// A client never sends a Subscription Identifier in PUBLISH [MQTT-3.3.4-6].
pub const PUBLISH: Allowed = Allowed::of(&[1, 2, 3, 8, 9, 35, 38]);
pub const ACK: Allowed = Allowed::of(&[31, 38]);
pub const SUBSCRIBE: Allowed = Allowed::of(&[11, 38]);
pub const UNSUBSCRIBE: Allowed = Allowed::of(&[38]);
pub const DISCONNECT: Allowed = Allowed::of(&[17, 28, 31, 38]);
pub const AUTH: Allowed = Allowed::of(&[21, 22, 31, 38]);

/// Every property a client may send, typed.
#[derive(Debug, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifier: Option<u32>,
    pub session_expiry_interval: Option<u32>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub user_properties: Vec<(String, String)>,
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn boolean(value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(value)
}

/// Reads one property section (its length, then exactly that many bytes).
pub fn read(reader: &mut Reader, allowed: Allowed) -> Result<Properties, DecodeError> {
    let length = reader.varint()? as usize;
    let mut section = reader.sub(length)?;
    let mut props = Properties::default();
    while !section.is_empty() {
        let id = section.varint()?;
        let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
        if !allowed.contains(id) {
            // The spec calls an identifier not valid for the packet malformed (2.2.2.2).
            return Err(DecodeError::Malformed(
                "property not allowed in this packet",
            ));
        }
        match id {
            1 => once(&mut props.payload_format_indicator, boolean(section.u8()?)?)?,
            2 => once(&mut props.message_expiry_interval, section.u32()?)?,
            3 => once(&mut props.content_type, section.string()?)?,
            8 => once(&mut props.response_topic, section.string()?)?,
            9 => once(&mut props.correlation_data, section.binary()?)?,
            11 => {
                let id = section.varint()?;
                if id == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                once(&mut props.subscription_identifier, id)?
            }
            17 => once(&mut props.session_expiry_interval, section.u32()?)?,
            21 => once(&mut props.authentication_method, section.string()?)?,
            22 => once(&mut props.authentication_data, section.binary()?)?,
            23 => once(
                &mut props.request_problem_information,
                boolean(section.u8()?)?,
            )?,
            24 => once(&mut props.will_delay_interval, section.u32()?)?,
            25 => once(
                &mut props.request_response_information,
                boolean(section.u8()?)?,
            )?,
            28 => once(&mut props.server_reference, section.string()?)?,
            31 => once(&mut props.reason_string, section.string()?)?,
            33 => {
                let value = section.u16()?;
                if value == 0 {
                    return Err(DecodeError::Protocol("receive maximum 0"));
                }
                once(&mut props.receive_maximum, value)?
            }
            34 => once(&mut props.topic_alias_maximum, section.u16()?)?,
            35 => once(&mut props.topic_alias, section.u16()?)?,
            38 => {
                let key = section.string()?;
                let value = section.string()?;
                props.user_properties.push((key, value));
            }
            39 => {
                let value = section.u32()?;
                if value == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0"));
                }
                once(&mut props.maximum_packet_size, value)?
            }
            _ => return Err(DecodeError::Malformed("unknown property")),
        }
    }
    Ok(props)
}
