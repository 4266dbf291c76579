//! A raw-socket MQTT test client for byte-level tests.
//!
//! It sends exactly the bytes a test hands it and reports what comes back one
//! packet at a time, so a test can assert the precise reaction the specs
//! require to a malformed or forbidden packet: a reply (CONNACK, DISCONNECT,
//! an ack) and/or the broker closing the connection. Every wait is bounded by
//! [`WAIT`]; nothing here knows about petrel, so the same tests run against any
//! broker.
#![allow(dead_code)]

use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

/// One whole control packet as received: the first byte of the fixed header
/// and everything after the remaining length.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    pub fn flags(&self) -> u8 {
        self.first & 0x0f
    }

    /// The packet identifier that opens the variable header of acks,
    /// SUBACK and UNSUBACK.
    pub fn packet_id(&self) -> u16 {
        assert!(self.body.len() >= 2, "no packet identifier in {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// The v5 reason code of a PUBACK/PUBREC/PUBREL/PUBCOMP, where an omitted
    /// reason code means 0x00 (success).
    pub fn ack_reason(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }

    /// The v5 reason code of a DISCONNECT, where an empty body means 0x00.
    pub fn disconnect_reason(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    /// The whole packet as it was on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        packet(self.first, &self.body)
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = [
            "reserved(0)",
            "CONNECT",
            "CONNACK",
            "PUBLISH",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBSCRIBE",
            "SUBACK",
            "UNSUBSCRIBE",
            "UNSUBACK",
            "PINGREQ",
            "PINGRESP",
            "DISCONNECT",
            "AUTH",
        ][usize::from(self.kind())];
        write!(f, "{name} [{}]", hex(&self.to_bytes()))
    }
}

/// What the next read from the broker produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Packet(Packet),
    /// Orderly close (FIN): the read returned end of file.
    Closed,
    /// The broker reset the connection (RST).
    Reset,
}

/// A TCP connection to a broker that speaks raw bytes.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("TCP connect to {addr} failed: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawClient::from_stream(stream)
    }

    /// A client over a stream the test connected itself.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`. A failed write is ignored on purpose: it means the
    /// broker has already closed the connection, which the next read reports
    /// and the test asserts on.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.try_send(bytes).await;
    }

    /// Writes `bytes`, reporting a failed write (the broker reset the
    /// connection) instead of ignoring it.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("writing {} bytes to the broker timed out", bytes.len()))
    }

    /// The payloads of the 3.1.1 PUBLISHes on `topic` that arrive before
    /// the one carrying `marker`, in order; QoS 1 ones are acknowledged.
    pub async fn payloads_before_marker(&mut self, topic: &str, marker: &[u8]) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        loop {
            let packet = self.expect_kind(PUBLISH).await;
            let publish = Publish::parse(&packet, false);
            if let Some(packet_id) = publish.packet_id {
                self.send(&ack(0x40, packet_id)).await;
            }
            if publish.topic != topic.as_bytes() {
                continue;
            }
            if publish.payload == marker {
                return payloads;
            }
            payloads.push(publish.payload);
        }
    }

    /// Closes our side for writing (sends FIN) while reads still work.
    pub async fn shutdown_write(&mut self) {
        let _ = timeout(WAIT, self.stream.shutdown()).await;
    }

    /// The next packet or close, failing the test after [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        match self.next_event_within(WAIT).await {
            Some(event) => event,
            None => {
                panic!("nothing received from the broker within {WAIT:?} (no packet, no close)")
            }
        }
    }

    /// The next packet or close, or `None` if nothing arrives within `within`.
    pub async fn next_event_within(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(packet) = self.take_packet() {
                return Some(Event::Packet(packet));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => return None,
                Ok(Ok(0)) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed in the middle of a packet: [{}]",
                        hex(&self.buf)
                    );
                    return Some(Event::Closed);
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Some(Event::Reset);
                }
                Ok(Err(e)) => panic!("reading from the broker failed: {e}"),
            }
        }
    }

    /// The next packet; fails the test if the broker closes instead.
    pub async fn expect_packet(&mut self) -> Packet {
        match self.next_event().await {
            Event::Packet(packet) => packet,
            other => panic!("expected a packet, the broker closed the connection ({other:?})"),
        }
    }

    /// The next packet, which must be of `kind`.
    pub async fn expect_kind(&mut self, kind: u8) -> Packet {
        let packet = self.expect_packet().await;
        assert_eq!(
            packet.kind(),
            kind,
            "expected packet type {kind}, got {packet:?}"
        );
        packet
    }

    /// The broker closes the connection (FIN or RST) with no packet before it.
    pub async fn expect_closed(&mut self) {
        match self.next_event().await {
            Event::Closed | Event::Reset => {}
            Event::Packet(packet) => panic!(
                "expected the broker to close the connection without sending anything, got {packet:?}"
            ),
        }
    }

    /// The broker sends a DISCONNECT with one of `reasons`, then closes.
    pub async fn expect_disconnect_then_close(&mut self, reasons: &[u8]) {
        let packet = self.expect_packet().await;
        assert!(
            packet.kind() == DISCONNECT && reasons.contains(&packet.disconnect_reason()),
            "expected DISCONNECT with reason code in {} then close, got {packet:?}",
            hex(reasons)
        );
        self.expect_closed().await;
    }

    /// The broker sends a v5 CONNACK with reason code `reason`, then closes.
    pub async fn expect_v5_connack_then_close(&mut self, reason: u8) {
        let packet = self.expect_packet().await;
        assert!(
            packet.kind() == CONNACK && packet.body.get(1) == Some(&reason),
            "expected CONNACK with reason code {reason:#04x} then close, got {packet:?}"
        );
        self.expect_closed().await;
    }

    /// PINGREQ answered by PINGRESP as the very next packet: the connection
    /// is alive and nothing else was queued before it.
    pub async fn ping(&mut self) {
        self.send(&[0xc0, 0x00]).await;
        match self.next_event().await {
            Event::Packet(packet) if packet.to_bytes() == [0xd0, 0x00] => {}
            other => panic!("expected PINGRESP as the next packet, got {other:?}"),
        }
    }

    fn take_packet(&mut self) -> Option<Packet> {
        let first = *self.buf.first()?;
        let mut length = 0usize;
        let mut index = 1;
        loop {
            let byte = *self.buf.get(index)?;
            length |= usize::from(byte & 0x7f) << (7 * (index - 1));
            index += 1;
            if byte & 0x80 == 0 {
                break;
            }
            assert!(
                index <= 4,
                "broker sent a remaining length longer than 4 bytes: [{}]",
                hex(&self.buf)
            );
        }
        if self.buf.len() < index + length {
            return None;
        }
        let body = self.buf[index..index + length].to_vec();
        self.buf.drain(..index + length);
        Some(Packet { first, body })
    }
}

/// A session set up with a CONNECT that the broker accepted.
pub async fn connect_v311(addr: SocketAddr, client_id: &str) -> RawClient {
    let mut client = RawClient::connect(addr).await;
    client.send(&Connect::v311(client_id).encode()).await;
    let connack = client.expect_packet().await;
    assert_eq!(
        connack.to_bytes(),
        [0x20, 0x02, 0x00, 0x00],
        "3.1.1 CONNECT was not accepted"
    );
    client
}

/// A session set up with `connect` (either version), which the broker must
/// accept; returns the client and CONNACK's session present.
pub async fn connect_accepted(addr: SocketAddr, connect: &Connect) -> (RawClient, bool) {
    let mut client = RawClient::connect(addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_kind(CONNACK).await;
    // Flags, then the 3.1.1 return code or the v5 reason code.
    assert_eq!(connack.body[1], 0, "CONNECT refused: {connack:?}");
    (client, connack.body[0] & 1 == 1)
}

/// A 3.1.1 CONNECT for a persistent session (clean session 0).
pub fn persistent_v311(id: &str) -> Connect {
    Connect {
        clean: false,
        ..Connect::v311(id)
    }
}

/// A v5 session set up with `connect`, which the broker must accept.
pub async fn connect_v5_with(addr: SocketAddr, connect: &Connect) -> (RawClient, Connack) {
    let mut client = RawClient::connect(addr).await;
    client.send(&connect.encode()).await;
    let packet = client.expect_kind(CONNACK).await;
    let connack = Connack::parse_v5(&packet);
    assert_eq!(connack.reason, 0, "v5 CONNECT was not accepted: {packet:?}");
    (client, connack)
}

pub async fn connect_v5(addr: SocketAddr, client_id: &str) -> (RawClient, Connack) {
    connect_v5_with(addr, &Connect::v5(client_id)).await
}

/// A v5 client subscribed at QoS 1 to the stream subscription `filter`
/// (`$share/{group}/$stream/{name}`), once its SUBACK is in: for tests that
/// answer stream deliveries byte by byte (negative acknowledgements).
pub async fn stream_member_v5(addr: SocketAddr, filter: &str) -> RawClient {
    let (mut member, _) = connect_v5(addr, &unique_id("member")).await;
    member
        .send(&subscribe(1, Some(&[]), &[(filter.as_bytes(), 1)]))
        .await;
    member.expect_kind(SUBACK).await;
    member
}

/// A client identifier unique within this process and short enough for any
/// broker (3.1.1 servers need only accept 1..=23 characters).
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id() % 100_000)
}

// ---------------------------------------------------------------------------
// Encoding helpers: they write exactly what they are told, including values
// the specs forbid.

/// A variable byte integer (up to 4 bytes for values up to 268,435,455).
pub fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A fixed header with a correct remaining length, then `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A two-byte length prefix, then the bytes (UTF-8 or not).
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let length = u16::try_from(bytes.len()).expect("string fits a u16 length");
    let mut out = length.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// v5 properties with their length prefix.
pub fn properties(bytes: &[u8]) -> Vec<u8> {
    let mut out = varint(bytes.len());
    out.extend_from_slice(bytes);
    out
}

pub fn prop_byte(id: u8, value: u8) -> Vec<u8> {
    vec![id, value]
}

pub fn prop_u16(id: u8, value: u16) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(value.to_be_bytes());
    out
}

pub fn prop_u32(id: u8, value: u32) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(value.to_be_bytes());
    out
}

/// A User Property (the bytes need not be UTF-8).
pub fn prop_pair(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![USER_PROPERTY];
    out.extend(string(key));
    out.extend(string(value));
    out
}

pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub const USER_PROPERTY: u8 = 0x26;

/// A CONNECT whose every field a test may set to anything.
#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    /// Replaces the connect flags computed from the fields below.
    pub flags_override: Option<u8>,
    pub clean: bool,
    pub keep_alive: u16,
    /// Raw v5 property bytes (without the length); written when `level >= 5`.
    pub properties: Vec<u8>,
    pub client_id: Vec<u8>,
    pub will: Option<Will>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// Bytes appended after the payload, inside the remaining length.
    pub trailing: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// Raw v5 will property bytes (without the length).
    pub properties: Vec<u8>,
}

impl Connect {
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            flags_override: None,
            clean: true,
            keep_alive: 60,
            properties: Vec::new(),
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            username: None,
            password: None,
            trailing: Vec::new(),
        }
    }

    pub fn v5(client_id: &str) -> Connect {
        Connect {
            level: 5,
            ..Connect::v311(client_id)
        }
    }

    pub fn flags(&self) -> u8 {
        if let Some(flags) = self.flags_override {
            return flags;
        }
        let mut flags = 0;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        flags
    }

    pub fn encode(&self) -> Vec<u8> {
        let v5 = self.level >= 5;
        let mut body = string(&self.protocol_name);
        body.push(self.level);
        body.push(self.flags());
        body.extend(self.keep_alive.to_be_bytes());
        if v5 {
            body.extend(properties(&self.properties));
        }
        body.extend(string(&self.client_id));
        if let Some(will) = &self.will {
            if v5 {
                body.extend(properties(&will.properties));
            }
            body.extend(string(&will.topic));
            body.extend(string(&will.payload));
        }
        if let Some(username) = &self.username {
            body.extend(string(username));
        }
        if let Some(password) = &self.password {
            body.extend(string(password));
        }
        body.extend_from_slice(&self.trailing);
        packet(0x10, &body)
    }
}

/// A PUBLISH with the given first byte (type, DUP, QoS, RETAIN bits as
/// given), a packet identifier when `packet_id` is set, and v5 properties
/// when `props` is set.
pub fn publish(
    first: u8,
    topic: &[u8],
    packet_id: Option<u16>,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = packet_id {
        body.extend(id.to_be_bytes());
    }
    if let Some(props) = props {
        body.extend(properties(props));
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// A 3.1.1 PUBLISH of `qos` (identifier included when QoS > 0).
pub fn publish_v311(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let id = (qos > 0).then_some(packet_id);
    publish(0x30 | (qos << 1), topic.as_bytes(), id, None, payload)
}

/// A v5 PUBLISH of `qos` with raw property bytes `props`.
pub fn publish_v5(topic: &str, qos: u8, packet_id: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let id = (qos > 0).then_some(packet_id);
    publish(
        0x30 | (qos << 1),
        topic.as_bytes(),
        id,
        Some(props),
        payload,
    )
}

/// A SUBSCRIBE (fixed-header flags 0b0010) with `(filter, options)` pairs.
pub fn subscribe(packet_id: u16, props: Option<&[u8]>, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if let Some(props) = props {
        body.extend(properties(props));
    }
    for (filter, options) in filters {
        body.extend(string(filter));
        body.push(*options);
    }
    packet(0x82, &body)
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP in its shortest form (identifier only).
pub fn ack(first: u8, packet_id: u16) -> Vec<u8> {
    packet(first, &packet_id.to_be_bytes())
}

/// A v5 PUBACK/PUBREC/PUBREL/PUBCOMP with a reason code and no properties.
pub fn ack_with_reason(first: u8, packet_id: u16, reason: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(reason);
    packet(first, &body)
}

// ---------------------------------------------------------------------------
// Decoding helpers for what the broker sends.

/// A received v5 CONNACK.
#[derive(Debug, Clone)]
pub struct Connack {
    pub session_present: bool,
    pub reason: u8,
    pub properties: Vec<(u8, Vec<u8>)>,
}

impl Connack {
    pub fn parse_v5(packet: &Packet) -> Connack {
        assert_eq!(packet.first, 0x20, "not a CONNACK: {packet:?}");
        assert!(packet.body.len() >= 2, "short CONNACK: {packet:?}");
        let properties = if packet.body.len() > 2 {
            parse_properties(&packet.body[2..]).0
        } else {
            Vec::new()
        };
        Connack {
            session_present: packet.body[0] & 0x01 == 1,
            reason: packet.body[1],
            properties,
        }
    }

    pub fn property(&self, id: u8) -> Option<&[u8]> {
        self.properties
            .iter()
            .find(|(found, _)| *found == id)
            .map(|(_, value)| value.as_slice())
    }

    pub fn property_u16(&self, id: u8) -> Option<u16> {
        self.property(id).map(|v| u16::from_be_bytes([v[0], v[1]]))
    }

    pub fn property_u32(&self, id: u8) -> Option<u32> {
        self.property(id)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }
}

/// A received PUBLISH.
#[derive(Debug, Clone)]
pub struct Publish {
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub topic: Vec<u8>,
    pub packet_id: Option<u16>,
    pub properties: Vec<(u8, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl Publish {
    /// The v5 user properties, in order, as text.
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.properties
            .iter()
            .filter(|(id, _)| *id == USER_PROPERTY)
            .map(|(_, value)| {
                let text = |at: usize| {
                    let len = usize::from(u16::from_be_bytes([value[at], value[at + 1]]));
                    let end = at + 2 + len;
                    (
                        String::from_utf8_lossy(&value[at + 2..end]).into_owned(),
                        end,
                    )
                };
                let (name, next) = text(0);
                (name, text(next).0)
            })
            .collect()
    }

    pub fn parse(packet: &Packet, v5: bool) -> Publish {
        assert_eq!(packet.kind(), PUBLISH, "not a PUBLISH: {packet:?}");
        let qos = (packet.first >> 1) & 0x03;
        let body = &packet.body;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let mut at = 2 + topic_len;
        let topic = body[2..at].to_vec();
        let packet_id = (qos > 0).then(|| {
            at += 2;
            u16::from_be_bytes([body[at - 2], body[at - 1]])
        });
        let properties = if v5 {
            let (properties, used) = parse_properties(&body[at..]);
            at += used;
            properties
        } else {
            Vec::new()
        };
        Publish {
            qos,
            dup: packet.first & 0x08 != 0,
            retain: packet.first & 0x01 != 0,
            topic,
            packet_id,
            properties,
            payload: body[at..].to_vec(),
        }
    }
}

fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!(
        "bad variable byte integer from the broker: [{}]",
        hex(bytes)
    );
}

/// Parses a v5 property block (length prefix first); returns the properties
/// and the number of bytes used including the prefix.
pub fn parse_properties(bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    let (length, prefix) = read_varint(bytes);
    let end = prefix + length;
    assert!(end <= bytes.len(), "property length overruns the packet");
    let mut at = prefix;
    let mut out = Vec::new();
    while at < end {
        let id = bytes[at];
        at += 1;
        let size = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0b => read_varint(&bytes[at..]).1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                2 + usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
            }
            0x26 => {
                let key = 2 + usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
                let value = u16::from_be_bytes([bytes[at + key], bytes[at + key + 1]]);
                key + 2 + usize::from(value)
            }
            other => panic!("unknown property {other:#04x} from the broker"),
        };
        out.push((id, bytes[at..at + size].to_vec()));
        at += size;
    }
    (out, end)
}

pub fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(64).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 64 { " …" } else { "" };
    format!("{}{more}", shown.join(" "))
}
