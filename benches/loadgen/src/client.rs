//! A minimal MQTT client over one raw TCP socket, encoding and decoding with
//! `mqttbytes` (v4 for 3.1.1, v5 for 5.0).
//!
//! It only does what the load generator needs: queue packets into a write
//! buffer, flush them in one write, and decode whatever the broker sent into
//! a small version-independent [`Incoming`] model. Flow control and state
//! live in the publisher and subscriber loops.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttbytes::{QoS, v4, v5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::BenchError;

/// Largest packet accepted from the broker.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

/// MQTT protocol level spoken by a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// A packet from the broker, reduced to what the generator acts on.
#[derive(Debug)]
pub enum Incoming {
    ConnAck {
        code: u8,
        session_present: bool,
        receive_max: Option<u16>,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    Publish {
        qos: QoS,
        pkid: u16,
        payload: Bytes,
        /// v5 user properties, in order (always empty on 3.1.1).
        user: Vec<(String, String)>,
    },
    PubAck {
        pkid: u16,
        reason: u8,
    },
    PubRec {
        pkid: u16,
        reason: u8,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
    },
    PingResp,
    Disconnect {
        reason: u8,
    },
    /// A packet a broker never sends to a client (CONNECT, SUBSCRIBE, ...).
    Other(&'static str),
}

/// What a connection asks the broker to do with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// 3.1.1 clean session 1, 5.0 clean start 1 without a session expiry:
    /// any earlier session is discarded and this one ends with the
    /// connection.
    Clean,
    /// 3.1.1 clean session 0, 5.0 clean start 0 with this Session Expiry
    /// Interval: the broker keeps the session and must store every message
    /// for it, as for a device that may go offline.
    Persistent { expiry_secs: u32 },
}

/// A successful CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub session_present: bool,
    /// The broker's receive maximum (v5), if it announced one.
    pub receive_max: Option<u16>,
}

/// Builds PUBLISH packets for one topic without re-allocating the topic.
pub enum PublishTemplate {
    V4(v4::Publish),
    V5(v5::Publish),
}

impl PublishTemplate {
    pub fn new(version: Version, topic: &str, qos: QoS) -> Self {
        match version {
            Version::V4 => PublishTemplate::V4(v4::Publish::from_bytes(topic, qos, Bytes::new())),
            Version::V5 => PublishTemplate::V5(v5::Publish::from_bytes(topic, qos, Bytes::new())),
        }
    }

    fn write(&mut self, pkid: u16, payload: Bytes, buf: &mut BytesMut) -> Result<(), BenchError> {
        let written = match self {
            PublishTemplate::V4(p) => {
                p.pkid = pkid;
                p.payload = payload;
                p.write(buf)
            }
            PublishTemplate::V5(p) => {
                p.pkid = pkid;
                p.payload = payload;
                p.write(buf)
            }
        };
        written.map(drop).map_err(BenchError::Encode)
    }
}

/// One client connection: the socket, a read buffer holding undecoded
/// bytes and a write buffer of queued packets.
pub struct Conn {
    name: String,
    version: Version,
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    read_chunk: usize,
}

impl Conn {
    /// Opens the TCP connection (optionally from a given local address) with
    /// Nagle disabled. `read_chunk` sizes the read buffer: large for traffic,
    /// tiny for idle connections.
    pub async fn open(
        name: String,
        version: Version,
        addr: SocketAddr,
        local: Option<IpAddr>,
        read_chunk: usize,
    ) -> Result<Conn, BenchError> {
        let connect_err = |source| BenchError::Connect { addr, source };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(connect_err)?;
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0)).map_err(connect_err)?;
        }
        let stream = socket.connect(addr).await.map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        Ok(Conn {
            name,
            version,
            stream,
            rbuf: BytesMut::with_capacity(read_chunk),
            wbuf: BytesMut::with_capacity(read_chunk.min(16 * 1024)),
            read_chunk,
        })
    }

    fn io_err(&self, source: std::io::Error) -> BenchError {
        BenchError::Io {
            client: self.name.clone(),
            source,
        }
    }

    /// Sends CONNECT (clean session) and waits for a successful CONNACK.
    /// Returns the broker's receive maximum (v5) if it announced one.
    pub async fn handshake(&mut self, keepalive: u16) -> Result<Option<u16>, BenchError> {
        let accepted = self.connect(keepalive, SessionMode::Clean).await?;
        Ok(accepted.receive_max)
    }

    /// Sends CONNECT with the given session handling and waits for a
    /// successful CONNACK.
    pub async fn connect(
        &mut self,
        keepalive: u16,
        session: SessionMode,
    ) -> Result<Accepted, BenchError> {
        let clean = session == SessionMode::Clean;
        match self.version {
            Version::V4 => {
                let mut c = v4::Connect::new(self.name.as_str());
                c.keep_alive = keepalive;
                c.clean_session = clean;
                c.write(&mut self.wbuf).map_err(BenchError::Encode)?;
            }
            Version::V5 => {
                let mut c = v5::Connect::new(self.name.as_str());
                c.keep_alive = keepalive;
                c.clean_session = clean;
                if let SessionMode::Persistent { expiry_secs } = session {
                    c.properties = Some(expiry_properties(expiry_secs));
                }
                c.write(&mut self.wbuf).map_err(BenchError::Encode)?;
            }
        }
        self.flush().await?;
        match self.next().await? {
            Incoming::ConnAck {
                code: 0,
                session_present,
                receive_max,
            } => Ok(Accepted {
                session_present,
                receive_max,
            }),
            Incoming::ConnAck { code, .. } => Err(BenchError::ConnectRefused {
                client: self.name.clone(),
                code,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Subscribes to one filter and waits for the SUBACK; returns the
    /// granted QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<QoS, BenchError> {
        const PKID: u16 = 1;
        match self.version {
            Version::V4 => {
                let mut s = v4::Subscribe::new(filter, qos);
                s.pkid = PKID;
                s.write(&mut self.wbuf).map_err(BenchError::Encode)?;
            }
            Version::V5 => {
                let mut s = v5::Subscribe::new(filter, qos);
                s.pkid = PKID;
                s.write(&mut self.wbuf).map_err(BenchError::Encode)?;
            }
        }
        self.flush().await?;
        loop {
            match self.next().await? {
                Incoming::SubAck { pkid: PKID, codes } => {
                    let code = codes.first().copied().unwrap_or(0x80);
                    return match code {
                        0 => Ok(QoS::AtMostOnce),
                        1 => Ok(QoS::AtLeastOnce),
                        2 => Ok(QoS::ExactlyOnce),
                        _ => Err(BenchError::SubscribeRefused {
                            client: self.name.clone(),
                            code,
                        }),
                    };
                }
                Incoming::PingResp => {}
                other => return Err(self.unexpected(&other)),
            }
        }
    }

    pub fn unexpected(&self, packet: &Incoming) -> BenchError {
        match packet {
            Incoming::Disconnect { reason } => BenchError::Disconnected {
                client: self.name.clone(),
                reason: *reason,
            },
            other => BenchError::UnexpectedPacket {
                client: self.name.clone(),
                packet: packet_name(other),
            },
        }
    }

    pub fn queue_publish(
        &mut self,
        template: &mut PublishTemplate,
        pkid: u16,
        payload: Bytes,
    ) -> Result<(), BenchError> {
        template.write(pkid, payload, &mut self.wbuf)
    }

    pub fn queue_puback(&mut self, pkid: u16) -> Result<(), BenchError> {
        match self.version {
            Version::V4 => v4::PubAck::new(pkid).write(&mut self.wbuf),
            Version::V5 => v5::PubAck::new(pkid).write(&mut self.wbuf),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    pub fn queue_pubrec(&mut self, pkid: u16) -> Result<(), BenchError> {
        match self.version {
            Version::V4 => v4::PubRec::new(pkid).write(&mut self.wbuf),
            Version::V5 => v5::PubRec::new(pkid).write(&mut self.wbuf),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    /// Refuses a QoS 1 or 2 delivery with reason 0x80 (unspecified error):
    /// a v5 PUBACK, or a v5 PUBREC, which ends a QoS 2 flow. 3.1.1 has no
    /// way to refuse, so it is never asked to.
    pub fn queue_refusal(&mut self, pkid: u16, qos: QoS) -> Result<(), BenchError> {
        match (self.version, qos) {
            (Version::V5, QoS::ExactlyOnce) => v5::PubRec {
                pkid,
                reason: v5::PubRecReason::UnspecifiedError,
                properties: None,
            }
            .write(&mut self.wbuf),
            (Version::V5, _) => v5::PubAck {
                pkid,
                reason: v5::PubAckReason::UnspecifiedError,
                properties: None,
            }
            .write(&mut self.wbuf),
            (Version::V4, _) => return Err(BenchError::RefusalNeedsV5),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    pub fn queue_pubrel(&mut self, pkid: u16) -> Result<(), BenchError> {
        match self.version {
            Version::V4 => v4::PubRel::new(pkid).write(&mut self.wbuf),
            Version::V5 => v5::PubRel::new(pkid).write(&mut self.wbuf),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    pub fn queue_pubcomp(&mut self, pkid: u16) -> Result<(), BenchError> {
        match self.version {
            Version::V4 => v4::PubComp::new(pkid).write(&mut self.wbuf),
            Version::V5 => v5::PubComp::new(pkid).write(&mut self.wbuf),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    pub fn queue_pingreq(&mut self) -> Result<(), BenchError> {
        match self.version {
            Version::V4 => v4::PingReq.write(&mut self.wbuf),
            Version::V5 => v5::PingReq.write(&mut self.wbuf),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    pub fn queue_disconnect(&mut self) -> Result<(), BenchError> {
        match self.version {
            Version::V4 => v4::Disconnect.write(&mut self.wbuf),
            Version::V5 => v5::Disconnect::new().write(&mut self.wbuf),
        }
        .map(drop)
        .map_err(BenchError::Encode)
    }

    /// Sends DISCONNECT and waits until the broker closes the connection
    /// (or `wait` passes), so that a later CONNECT with the same client id
    /// is not mistaken for a takeover of this one.
    pub async fn disconnect(mut self, wait: Duration) -> Result<(), BenchError> {
        self.queue_disconnect()?;
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        let closed = async {
            loop {
                self.rbuf.clear();
                match self.fill().await {
                    Ok(()) => {}
                    Err(BenchError::Closed { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match timeout(wait, closed).await {
            Ok(result) => result,
            Err(_) => Err(BenchError::Timeout(
                "waiting for the broker to close a connection",
            )),
        }
    }

    pub fn has_pending_writes(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes every queued packet.
    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        result.map_err(|e| self.io_err(e))
    }

    fn reserve_read(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 + 1 {
            self.rbuf.reserve(self.read_chunk);
        }
    }

    /// Waits for more bytes from the broker. Cancel-safe: when used in
    /// `select!` and another branch wins, no data is lost.
    pub async fn fill(&mut self) -> Result<(), BenchError> {
        self.reserve_read();
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(BenchError::Closed {
                client: self.name.clone(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Reads whatever the socket already holds without waiting; returns
    /// whether anything arrived.
    pub fn try_fill(&mut self) -> Result<bool, BenchError> {
        self.reserve_read();
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(BenchError::Closed {
                client: self.name.clone(),
            }),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Decodes one packet from the bytes already read, `None` if a full
    /// packet has not arrived yet.
    pub fn decode(&mut self) -> Result<Option<Incoming>, BenchError> {
        // mqttbytes 0.6 rejects a v5 DISCONNECT with no reason code (remaining
        // length 0), which the spec allows and means "normal disconnection".
        if self.rbuf.len() >= 2 && self.rbuf[0] == 0xE0 && self.rbuf[1] == 0 {
            let _ = self.rbuf.split_to(2);
            return Ok(Some(Incoming::Disconnect { reason: 0 }));
        }
        let decoded = match self.version {
            Version::V4 => v4::read(&mut self.rbuf, MAX_INCOMING_PACKET).map(from_v4),
            Version::V5 => v5::read(&mut self.rbuf, MAX_INCOMING_PACKET).map(from_v5),
        };
        match decoded {
            Ok(packet) => Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(error) => Err(BenchError::Decode {
                client: self.name.clone(),
                error,
            }),
        }
    }

    /// Waits for the next packet.
    pub async fn next(&mut self) -> Result<Incoming, BenchError> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// The value of the first v5 user property called `name`.
pub fn user_property<'a>(user: &'a [(String, String)], name: &str) -> Option<&'a str> {
    user.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

pub fn packet_name(packet: &Incoming) -> &'static str {
    match packet {
        Incoming::ConnAck { .. } => "CONNACK",
        Incoming::SubAck { .. } => "SUBACK",
        Incoming::Publish { .. } => "PUBLISH",
        Incoming::PubAck { .. } => "PUBACK",
        Incoming::PubRec { .. } => "PUBREC",
        Incoming::PubRel { .. } => "PUBREL",
        Incoming::PubComp { .. } => "PUBCOMP",
        Incoming::PingResp => "PINGRESP",
        Incoming::Disconnect { .. } => "DISCONNECT",
        Incoming::Other(name) => name,
    }
}

fn expiry_properties(expiry_secs: u32) -> v5::ConnectProperties {
    v5::ConnectProperties {
        session_expiry_interval: Some(expiry_secs),
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

fn from_v4(packet: v4::Packet) -> Incoming {
    match packet {
        v4::Packet::ConnAck(c) => Incoming::ConnAck {
            code: c.code as u8,
            session_present: c.session_present,
            receive_max: None,
        },
        v4::Packet::SubAck(s) => Incoming::SubAck {
            pkid: s.pkid,
            codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(qos) => *qos as u8,
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        },
        v4::Packet::Publish(p) => Incoming::Publish {
            qos: p.qos,
            pkid: p.pkid,
            payload: p.payload,
            user: Vec::new(),
        },
        v4::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        v4::Packet::PubComp(a) => Incoming::PubComp { pkid: a.pkid },
        v4::Packet::PingResp => Incoming::PingResp,
        v4::Packet::Disconnect => Incoming::Disconnect { reason: 0 },
        v4::Packet::Connect(_) => Incoming::Other("CONNECT"),
        v4::Packet::Subscribe(_) => Incoming::Other("SUBSCRIBE"),
        v4::Packet::Unsubscribe(_) => Incoming::Other("UNSUBSCRIBE"),
        v4::Packet::UnsubAck(_) => Incoming::Other("UNSUBACK"),
        v4::Packet::PingReq => Incoming::Other("PINGREQ"),
    }
}

fn from_v5(packet: v5::Packet) -> Incoming {
    match packet {
        v5::Packet::ConnAck(c) => Incoming::ConnAck {
            code: c.code as u8,
            session_present: c.session_present,
            receive_max: c.properties.and_then(|p| p.receive_max),
        },
        v5::Packet::SubAck(s) => Incoming::SubAck {
            pkid: s.pkid,
            codes: s.return_codes.iter().map(|c| *c as u8).collect(),
        },
        v5::Packet::Publish(p) => Incoming::Publish {
            qos: p.qos,
            pkid: p.pkid,
            payload: p.payload,
            user: p.properties.map(|p| p.user_properties).unwrap_or_default(),
        },
        v5::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            reason: a.reason as u8,
        },
        v5::Packet::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            reason: a.reason as u8,
        },
        v5::Packet::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        v5::Packet::PubComp(a) => Incoming::PubComp { pkid: a.pkid },
        v5::Packet::PingResp => Incoming::PingResp,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            reason: d.reason_code as u8,
        },
        v5::Packet::Connect(_) => Incoming::Other("CONNECT"),
        v5::Packet::Subscribe(_) => Incoming::Other("SUBSCRIBE"),
        v5::Packet::Unsubscribe(_) => Incoming::Other("UNSUBSCRIBE"),
        v5::Packet::UnsubAck(_) => Incoming::Other("UNSUBACK"),
        v5::Packet::PingReq => Incoming::Other("PINGREQ"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connection whose broker side is a plain socket the test writes to.
    async fn pair(version: Version) -> Option<(Conn, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        let (conn, accepted) = tokio::join!(
            Conn::open("t".to_string(), version, addr, None, 1024),
            listener.accept()
        );
        Some((conn.ok()?, accepted.ok()?.0))
    }

    #[tokio::test]
    async fn v5_disconnect_without_reason_code_is_a_normal_disconnect() {
        let Some((mut conn, mut broker)) = pair(Version::V5).await else {
            panic!("loopback socket pair");
        };
        let sent = broker.write_all(&[0xE0, 0x00]).await;
        assert!(sent.is_ok());
        assert!(matches!(
            conn.next().await,
            Ok(Incoming::Disconnect { reason: 0 })
        ));
    }

    #[tokio::test]
    async fn packets_split_across_reads_are_reassembled() {
        let Some((mut conn, mut broker)) = pair(Version::V4).await else {
            panic!("loopback socket pair");
        };
        // PUBLISH QoS 1, topic "a/b", packet id 7, payload "xyz", in two writes.
        let packet = [0x32, 10, 0, 3, b'a', b'/', b'b', 0, 7, b'x', b'y', b'z'];
        assert!(broker.write_all(&packet[..4]).await.is_ok());
        assert!(conn.try_fill().is_ok());
        assert!(matches!(conn.decode(), Ok(None)));
        assert!(broker.write_all(&packet[4..]).await.is_ok());
        match conn.next().await {
            Ok(Incoming::Publish {
                qos, pkid, payload, ..
            }) => {
                assert_eq!(qos, QoS::AtLeastOnce);
                assert_eq!(pkid, 7);
                assert_eq!(&payload[..], b"xyz");
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_connack_is_an_error_naming_the_code() {
        let Some((mut conn, mut broker)) = pair(Version::V4).await else {
            panic!("loopback socket pair");
        };
        assert!(broker.write_all(&[0x20, 2, 0, 5]).await.is_ok());
        match conn.handshake(30).await {
            Err(BenchError::ConnectRefused { code: 5, .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Reads the next packet the client sent, as a v5 broker would.
    async fn read_v5(broker: &mut TcpStream, buf: &mut BytesMut) -> Option<v5::Packet> {
        loop {
            match v5::read(buf, MAX_INCOMING_PACKET) {
                Ok(packet) => return Some(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return None,
            }
            if broker.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    #[tokio::test]
    async fn persistent_v5_connect_asks_for_the_session_to_outlive_the_connection() {
        let Some((mut conn, mut broker)) = pair(Version::V5).await else {
            panic!("loopback socket pair");
        };
        let broker_side = async {
            let mut buf = BytesMut::new();
            let connect = read_v5(&mut broker, &mut buf).await;
            // CONNACK: session present, success, no properties.
            broker.write_all(&[0x20, 3, 1, 0, 0]).await.ok()?;
            connect
        };
        let persistent = SessionMode::Persistent { expiry_secs: 300 };
        let (accepted, connect) = tokio::join!(conn.connect(30, persistent), broker_side);
        match connect {
            Some(v5::Packet::Connect(c)) => {
                assert!(!c.clean_session);
                let expiry = c.properties.and_then(|p| p.session_expiry_interval);
                assert_eq!(expiry, Some(300));
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        assert_eq!(
            accepted.ok(),
            Some(Accepted {
                session_present: true,
                receive_max: None
            })
        );
    }

    #[tokio::test]
    async fn clean_v5_connect_carries_no_session_expiry() {
        let Some((mut conn, mut broker)) = pair(Version::V5).await else {
            panic!("loopback socket pair");
        };
        let broker_side = async {
            let mut buf = BytesMut::new();
            let connect = read_v5(&mut broker, &mut buf).await;
            broker.write_all(&[0x20, 3, 0, 0, 0]).await.ok()?;
            connect
        };
        let (accepted, connect) = tokio::join!(conn.connect(30, SessionMode::Clean), broker_side);
        match connect {
            Some(v5::Packet::Connect(c)) => {
                assert!(c.clean_session);
                assert_eq!(c.properties.and_then(|p| p.session_expiry_interval), None);
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        assert!(accepted.is_ok_and(|a| !a.session_present));
    }

    #[tokio::test]
    async fn disconnect_waits_for_the_broker_to_close() {
        let Some((conn, mut broker)) = pair(Version::V4).await else {
            panic!("loopback socket pair");
        };
        let broker_side = async {
            let mut got = [0u8; 2];
            broker.read_exact(&mut got).await.ok()?;
            drop(broker);
            Some(got)
        };
        let (closed, got) = tokio::join!(conn.disconnect(Duration::from_secs(5)), broker_side);
        assert_eq!(got, Some([0xE0, 0]));
        assert!(closed.is_ok());
    }

    #[tokio::test]
    async fn a_refusal_is_a_v5_ack_with_reason_0x80_and_impossible_on_3_1_1() {
        let Some((mut conn, mut broker)) = pair(Version::V5).await else {
            panic!("loopback socket pair");
        };
        assert!(conn.queue_refusal(7, QoS::AtLeastOnce).is_ok());
        assert!(conn.queue_refusal(8, QoS::ExactlyOnce).is_ok());
        assert!(conn.flush().await.is_ok());
        let mut got = [0u8; 10];
        assert!(broker.read_exact(&mut got).await.is_ok());
        // PUBACK then PUBREC, each: packet id, reason 0x80, no properties.
        assert_eq!(got, [0x40, 3, 0, 7, 0x80, 0x50, 3, 0, 8, 0x80]);
        let Some((mut v4, _broker)) = pair(Version::V4).await else {
            panic!("loopback socket pair");
        };
        assert!(matches!(
            v4.queue_refusal(1, QoS::AtLeastOnce),
            Err(BenchError::RefusalNeedsV5)
        ));
    }

    #[tokio::test]
    async fn closed_socket_is_reported() {
        let Some((mut conn, broker)) = pair(Version::V4).await else {
            panic!("loopback socket pair");
        };
        drop(broker);
        assert!(matches!(conn.next().await, Err(BenchError::Closed { .. })));
    }
}
