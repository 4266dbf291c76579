//! A scripted remote: a TCP listener on 127.0.0.1 that speaks just enough
//! of the server side of MQTT 5, by hand, for a test to play the remote
//! broker of a bridge one packet at a time (read CONNECT, answer CONNACK,
//! read a PUBLISH, answer PUBREC, close ...). It decides nothing by
//! itself: the only packet it answers unasked is PINGREQ.
//!
//! Every read waits for at most [`WAIT`]; a read that gets nothing panics
//! with the packets the connection has seen so far.

use std::fmt;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};

use crate::support::{WAIT, free_port, loopback};

/// A packet a bridge (an MQTT 5 client) sends.
#[derive(Clone, PartialEq, Eq)]
pub enum Packet {
    Connect {
        /// The protocol level byte (5 for MQTT 5).
        level: u8,
        clean_start: bool,
        keep_alive: u16,
        client_id: String,
    },
    Publish {
        dup: bool,
        qos: u8,
        retain: bool,
        topic: String,
        /// 0 at QoS 0.
        packet_id: u16,
        payload: Vec<u8>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(u16),
    PingReq,
    Disconnect,
    /// Any other packet type, with its first byte.
    Other(u8),
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packet::Connect {
                level,
                clean_start,
                keep_alive,
                client_id,
            } => write!(
                f,
                "CONNECT(level {level}, clean start {clean_start}, keep alive \
                 {keep_alive}, client id {client_id:?})"
            ),
            Packet::Publish {
                dup,
                qos,
                retain,
                topic,
                packet_id,
                payload,
            } => write!(
                f,
                "PUBLISH(id {packet_id}, q{qos}{}{}, {topic}, {:?})",
                if *dup { " dup" } else { "" },
                if *retain { " retain" } else { "" },
                String::from_utf8_lossy(payload)
            ),
            Packet::PubAck(id) => write!(f, "PUBACK({id})"),
            Packet::PubRec(id) => write!(f, "PUBREC({id})"),
            Packet::PubRel(id) => write!(f, "PUBREL({id})"),
            Packet::PubComp(id) => write!(f, "PUBCOMP({id})"),
            Packet::Subscribe(id) => write!(f, "SUBSCRIBE({id})"),
            Packet::PingReq => f.write_str("PINGREQ"),
            Packet::Disconnect => f.write_str("DISCONNECT"),
            Packet::Other(first) => write!(f, "packet type {} (0x{first:02x})", first >> 4),
        }
    }
}

/// The listener the bridge dials.
pub struct ScriptedRemote {
    listener: TcpListener,
    port: u16,
    accepted: u32,
}

impl ScriptedRemote {
    /// Listens on a free loopback port.
    pub async fn bind() -> ScriptedRemote {
        let port = free_port();
        let listener = TcpListener::bind(loopback(port))
            .await
            .expect("bind the scripted remote's port");
        ScriptedRemote {
            listener,
            port,
            accepted: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The next connection the bridge makes, within [`WAIT`].
    pub async fn accept(&mut self) -> Conn {
        let (stream, _) = timeout(WAIT, self.listener.accept())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the scripted remote: no connection #{} from the bridge within {WAIT:?}",
                    self.accepted + 1
                )
            })
            .expect("accept a connection");
        let _ = stream.set_nodelay(true);
        self.accepted += 1;
        Conn {
            name: format!("scripted remote, connection #{}", self.accepted),
            stream,
            input: Vec::new(),
            seen: Vec::new(),
        }
    }
}

/// One connection from the bridge.
pub struct Conn {
    name: String,
    stream: TcpStream,
    /// Bytes read and not yet taken as packets.
    input: Vec<u8>,
    /// Every packet read, in order (PINGREQs included).
    seen: Vec<Packet>,
}

impl Conn {
    /// The packets read so far, in order.
    pub fn seen(&self) -> &[Packet] {
        &self.seen
    }

    /// The next packet, or `None` if the bridge closed the connection
    /// first; panics at `deadline`.
    async fn read_packet_before(&mut self, deadline: Instant) -> Option<Packet> {
        loop {
            if let Some(packet) = self.take_packet() {
                self.seen.push(packet.clone());
                return Some(packet);
            }
            let mut buffer = [0u8; 4096];
            let read = timeout_at(deadline, self.stream.read(&mut buffer))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: no packet from the bridge before the deadline; seen so far: {:?}",
                        self.name, self.seen
                    )
                });
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.input.extend_from_slice(&buffer[..n]),
            }
        }
    }

    /// The next packet other than PINGREQ (answered with PINGRESP), within
    /// [`WAIT`]; panics if the bridge closes the connection first.
    pub async fn next(&mut self, what: &str) -> Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read_packet_before(deadline).await {
                Some(Packet::PingReq) => self.send(&[0xd0, 0x00]).await,
                Some(packet) => return packet,
                None => panic!(
                    "{}: the bridge closed the connection while {what} was due; seen: {:?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Reads CONNECT and answers CONNACK (Success) with `session_present`;
    /// returns the CONNECT.
    pub async fn handshake(&mut self, session_present: bool) -> Packet {
        let connect = self.next("CONNECT").await;
        assert!(
            matches!(connect, Packet::Connect { level: 5, .. }),
            "{}: the bridge's first packet must be an MQTT 5 CONNECT: {connect:?}",
            self.name
        );
        // Acknowledge flags, reason Success, no properties.
        self.send(&[0x20, 0x03, u8::from(session_present), 0x00, 0x00])
            .await;
        connect
    }

    /// Answers a 3.1.1 CONNECT with CONNACK return code `code` (0:
    /// accepted, 1: unacceptable protocol version, ...).
    pub async fn connack_v311(&mut self, code: u8) {
        self.send(&[0x20, 0x02, 0x00, code]).await;
    }

    pub async fn send_pubrec(&mut self, packet_id: u16) {
        self.send_ack(0x50, packet_id).await;
    }

    pub async fn send_pubcomp(&mut self, packet_id: u16) {
        self.send_ack(0x70, packet_id).await;
    }

    /// A PUBACK/PUBREC/PUBCOMP with reason Success (the short form).
    async fn send_ack(&mut self, first: u8, packet_id: u16) {
        let [high, low] = packet_id.to_be_bytes();
        self.send(&[first, 0x02, high, low]).await;
    }

    async fn send(&mut self, bytes: &[u8]) {
        let name = &self.name;
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("{name}: cannot write within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{name}: cannot write: {e}"));
    }

    /// Closes the connection from this side: what was written goes first
    /// (FIN, not RST: the bridge reads everything before the end), then
    /// waits until the bridge has closed its side too, within [`WAIT`].
    /// Returns the packets that came meanwhile.
    pub async fn close(mut self) -> Vec<Packet> {
        let _ = self.stream.shutdown().await;
        let before = self.seen.len();
        let deadline = Instant::now() + WAIT;
        while self.read_packet_before(deadline).await.is_some() {}
        self.seen.split_off(before)
    }

    /// Takes one whole packet off the front of the input, if there is one.
    fn take_packet(&mut self) -> Option<Packet> {
        let (length, header) = remaining_length(self.input.get(1..)?)?;
        let total = 1 + header + length;
        if self.input.len() < total {
            return None;
        }
        let first = self.input[0];
        let body: Vec<u8> = self.input[1 + header..total].to_vec();
        self.input.drain(..total);
        Some(
            parse(first, &body).unwrap_or_else(|| {
                panic!("{}: malformed packet 0x{first:02x} {body:?}", self.name)
            }),
        )
    }
}

/// The remaining length at the front of `bytes` and how many bytes it took.
fn remaining_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (at, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return Some((value, at + 1));
        }
    }
    assert!(bytes.len() < 4, "a remaining length longer than 4 bytes");
    None
}

/// A reader over a packet body.
struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn string(&mut self) -> Option<String> {
        let length = usize::from(self.u16()?);
        Some(String::from_utf8_lossy(self.bytes(length)?).into_owned())
    }

    /// Skips a v5 property block.
    fn properties(&mut self) -> Option<()> {
        let (length, header) = remaining_length(self.0)?;
        self.bytes(header)?;
        self.bytes(length)?;
        Some(())
    }
}

/// Reads a packet an MQTT 5 client sends.
fn parse(first: u8, body: &[u8]) -> Option<Packet> {
    let mut body = Body(body);
    Some(match first >> 4 {
        1 => {
            let _protocol = body.string()?;
            let level = body.u8()?;
            let flags = body.u8()?;
            let keep_alive = body.u16()?;
            if level == 5 {
                body.properties()?;
            }
            Packet::Connect {
                level,
                clean_start: flags & 0x02 != 0,
                keep_alive,
                client_id: body.string()?,
            }
        }
        3 => {
            let qos = (first >> 1) & 0x03;
            let topic = body.string()?;
            let packet_id = if qos > 0 { body.u16()? } else { 0 };
            body.properties()?;
            Packet::Publish {
                dup: first & 0x08 != 0,
                qos,
                retain: first & 0x01 != 0,
                topic,
                packet_id,
                payload: body.0.to_vec(),
            }
        }
        4 => Packet::PubAck(body.u16()?),
        5 => Packet::PubRec(body.u16()?),
        6 => Packet::PubRel(body.u16()?),
        7 => Packet::PubComp(body.u16()?),
        8 => Packet::Subscribe(body.u16()?),
        12 => Packet::PingReq,
        14 => Packet::Disconnect,
        _ => Packet::Other(first),
    })
}
