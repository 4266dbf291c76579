//! A client on a plain socket, for packets rumqttc refuses to send and for
//! replies rumqttc cannot show (a DISCONNECT without properties, the exact
//! bytes of a SUBACK, a close with nothing before it).
//!
//! Test files add the packet exchanges only they need in their own
//! `impl Raw` block.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectProperties, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::WAIT;
use super::ids::client_id;

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// A frame as read off the wire: the first header byte and the bytes after
/// the remaining-length field.
#[derive(Debug)]
pub struct Frame {
    pub first: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn packet_type(&self) -> u8 {
        self.first >> 4
    }

    /// The packet identifier of an acknowledgement (PUBACK .. PUBCOMP).
    pub fn ack_pkid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// Decodes the frame with rumqttc's MQTT 5 codec (not for DISCONNECT, see
    /// [`Frame::disconnect`]).
    pub fn decode(&self) -> Packet {
        let mut whole = vec![self.first];
        push_varint(&mut whole, self.body.len());
        whole.extend_from_slice(&self.body);
        Packet::read(&mut BytesMut::from(&whole[..]), None)
            .unwrap_or_else(|e| panic!("cannot decode {self:?} from the broker: {e:?}"))
    }

    /// Reason code and reason string of a DISCONNECT. Parsed by hand because
    /// a DISCONNECT may omit the reason code and the property length.
    pub fn disconnect(&self) -> (u8, Option<String>) {
        assert_eq!(
            self.packet_type(),
            DISCONNECT,
            "expected DISCONNECT, got {self:?}"
        );
        let mut body = self.body.clone();
        if body.is_empty() {
            return (0, None);
        }
        let reason = body.get_u8();
        if body.is_empty() {
            return (reason, None);
        }
        let len = read_varint(&mut body);
        let mut props = body.split_to(len);
        let mut reason_string = None;
        while props.has_remaining() {
            match props.get_u8() {
                0x11 => {
                    props.get_u32();
                }
                0x1F => reason_string = Some(read_string(&mut props)),
                0x1C => {
                    read_string(&mut props);
                }
                0x26 => {
                    read_string(&mut props);
                    read_string(&mut props);
                }
                other => panic!("unexpected property {other:#x} in DISCONNECT {self:?}"),
            }
        }
        (reason, reason_string)
    }
}

/// Reads the variable byte integer that starts at `body[*at]` and moves `at`
/// past it.
pub fn varint_at(body: &[u8], at: &mut usize) -> usize {
    let mut value = 0usize;
    for shift in 0..4 {
        let byte = body[*at];
        *at += 1;
        value |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}

/// Takes a variable byte integer off the front of `body`.
pub fn read_varint(body: &mut Bytes) -> usize {
    let mut at = 0;
    let value = varint_at(body, &mut at);
    body.advance(at);
    value
}

pub fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

pub fn read_string(body: &mut Bytes) -> String {
    let len = usize::from(body.get_u16());
    String::from_utf8_lossy(&body.split_to(len)).into_owned()
}

/// The two-byte value of v5 CONNACK property `id`, if present.
pub fn connack_u16_property(connack: &Frame, id: u8) -> Option<u16> {
    let body = &connack.body;
    let mut at = 2;
    let len = varint_at(body, &mut at);
    let end = at + len;
    let string_len = |at: usize| 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    while at < end {
        let property = body[at];
        at += 1;
        let size = match property {
            0x11 | 0x27 | 0x02 => 4,
            0x21 | 0x22 | 0x13 => 2,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A | 0x01 => 1,
            0x12 | 0x1A | 0x1C | 0x1F | 0x15 | 0x03 | 0x08 | 0x16 | 0x09 => string_len(at),
            0x26 => string_len(at) + string_len(at + string_len(at)),
            other => panic!("unexpected CONNACK property {other:#x}"),
        };
        if property == id && size == 2 {
            return Some(u16::from_be_bytes([body[at], body[at + 1]]));
        }
        at += size;
    }
    None
}

/// The bytes of a packet that `mqttbytes` writes.
pub fn encode(write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    write(&mut buffer).expect("packet encodes");
    buffer.to_vec()
}

/// A 3.1.1 CONNECT.
pub fn connect_v4_bytes(id: &str, clean_session: bool, keep_alive: u16) -> Vec<u8> {
    let connect = mqttbytes::v4::Connect {
        protocol: mqttbytes::Protocol::V4,
        keep_alive,
        client_id: id.to_string(),
        clean_session,
        last_will: None,
        login: None,
    };
    encode(|b| connect.write(b))
}

/// A v5 CONNECT.
pub fn connect_v5_bytes(
    id: &str,
    clean_start: bool,
    keep_alive: u16,
    last_will: Option<mqttbytes::v5::LastWill>,
    session_expiry: Option<u32>,
    receive_maximum: Option<u16>,
) -> Vec<u8> {
    let properties = mqttbytes::v5::ConnectProperties {
        session_expiry_interval: session_expiry,
        receive_maximum,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    };
    let connect = mqttbytes::v5::Connect {
        protocol: mqttbytes::Protocol::V5,
        keep_alive,
        client_id: id.to_string(),
        clean_session: clean_start,
        last_will,
        login: None,
        properties: Some(properties),
    };
    encode(|b| connect.write(b))
}

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// Whether this connection speaks MQTT 5, which decides how a PUBLISH
    /// from the broker is laid out.
    pub v5: bool,
}

impl Raw {
    pub async fn open(addr: SocketAddr, v5: bool) -> Raw {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("broker accepts TCP");
        // Tests time the broker's reaction to small packets.
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Raw {
            stream,
            buf: BytesMut::new(),
            v5,
        }
    }

    /// Connects with protocol level 4 and checks the CONNACK accepts.
    pub async fn connect_v4(addr: SocketAddr) -> Raw {
        let mut raw = Raw::open(addr, false).await;
        let mut out = BytesMut::new();
        rumqttc::Connect::new(client_id("raw4"))
            .write(&mut out)
            .expect("encode CONNECT");
        raw.send(&out).await;
        let ack = raw.next_frame().await.expect("CONNACK before close");
        assert_eq!(ack.packet_type(), 2, "expected CONNACK, got {ack:?}");
        assert_eq!(ack.body.get(1), Some(&0), "CONNACK refuses: {ack:?}");
        raw
    }

    /// Connects with protocol level 5 and returns the accepting CONNACK.
    pub async fn connect_v5(
        addr: SocketAddr,
        properties: Option<ConnectProperties>,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, true).await;
        let connect = rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 60,
            client_id: client_id("raw5"),
            clean_start: true,
            properties,
        };
        raw.send_packet(Packet::Connect(connect, None, None)).await;
        let frame = raw.next_frame().await.expect("CONNACK before close");
        let Packet::ConnAck(ack) = frame.decode() else {
            panic!("expected CONNACK, got {frame:?}");
        };
        assert_eq!(ack.code, ConnectReturnCode::Success, "CONNACK refuses");
        (raw, ack)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The broker may already have closed the socket; the reads that follow tell.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Encodes `packet` as MQTT 5 and sends it.
    pub async fn send_packet(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode packet");
        self.send(&out).await;
    }

    /// The next frame, or `None` once the broker closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        timeout(WAIT, self.read_frame())
            .await
            .unwrap_or_else(|_| panic!("no packet and no close within {WAIT:?}"))
    }

    /// The next frame, which must be of `packet_type`.
    pub async fn expect_frame(&mut self, packet_type: u8) -> Frame {
        match self.next_frame().await {
            Some(frame) if frame.packet_type() == packet_type => frame,
            other => panic!("expected packet type {packet_type}, got {other:?}"),
        }
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.split_frame() {
                return Some(frame);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn split_frame(&mut self) -> Option<Frame> {
        split_frame(&mut self.buf)
    }

    /// Reads until the broker closes the connection and returns what it sent
    /// before closing. Panics if the connection stays open.
    pub async fn frames_until_closed(&mut self) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return frames,
                Err(_) => panic!(
                    "the broker kept the connection open for {WAIT:?}, after sending {frames:?}"
                ),
            }
        }
    }
}

/// Takes the first whole frame off `buf`, or `None` while more bytes are
/// needed.
pub fn split_frame(buf: &mut BytesMut) -> Option<Frame> {
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let byte = *buf.get(header_len)?;
        remaining |= usize::from(byte & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        assert!(header_len <= 4, "malformed remaining length from broker");
    }
    if buf.len() < header_len + remaining {
        return None;
    }
    let mut frame = buf.split_to(header_len + remaining).freeze();
    let first = frame[0];
    frame.advance(header_len);
    Some(Frame { first, body: frame })
}
