//! A minimal MQTT 3.1.1 connection for clients that outlive their broker.
//!
//! `raw::RawClient` fails the test on any broken connection, which is the
//! normal case here: every SIGKILL breaks every connection. This one reports
//! the loss as `Lost` so the caller can reconnect, and leaves the encoding of
//! packets to `raw`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use crate::raw::{self, CONNACK, Connect, Packet};

/// How long one write, one TCP connect or one CONNACK may take. A live
/// broker on loopback answers in milliseconds; a dead one refuses or resets.
const STEP: Duration = Duration::from_secs(5);

/// Pause between connection attempts while the broker restarts.
const RETRY: Duration = Duration::from_millis(25);

/// Keep alive sent in CONNECT: long enough that no test phase is idle for
/// 1.5 times it, so only a crash ever ends a connection.
const KEEP_ALIVE_SECS: u16 = 60;

/// The connection is gone (closed, reset, or a write that failed or hung).
#[derive(Debug)]
pub struct Lost;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects as `client_id`, retrying until `give_up_at` while the broker
    /// is down or refuses. Returns the connection and CONNACK's session
    /// present flag, or the last failure.
    pub async fn open(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
        give_up_at: Instant,
    ) -> Result<(Conn, bool), String> {
        loop {
            let failure = match Conn::try_open(addr, client_id, clean).await {
                Ok(opened) => return Ok(opened),
                Err(failure) => failure,
            };
            if Instant::now() + RETRY >= give_up_at {
                return Err(format!(
                    "{client_id} could not connect to {addr}: {failure}"
                ));
            }
            sleep(RETRY).await;
        }
    }

    async fn try_open(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
    ) -> Result<(Conn, bool), String> {
        let stream = match timeout(STEP, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("TCP connect timed out".into()),
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        let connect = Connect {
            clean,
            keep_alive: KEEP_ALIVE_SECS,
            ..Connect::v311(client_id)
        };
        conn.send(&connect.encode())
            .await
            .map_err(|_| "CONNECT not written")?;
        let connack = match timeout(STEP, conn.recv()).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(Lost)) => return Err("connection lost before CONNACK".into()),
            Err(_) => return Err("no CONNACK".into()),
        };
        if connack.kind() != CONNACK || connack.body.len() != 2 {
            return Err(format!("expected CONNACK, got {connack:?}"));
        }
        if connack.body[1] != 0 {
            return Err(format!("CONNECT refused: {connack:?}"));
        }
        Ok((conn, connack.body[0] & 0x01 == 1))
    }

    /// Writes a whole packet. Not cancel safe: never race it in a `select!`.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Lost> {
        match timeout(STEP, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Lost),
        }
    }

    /// The next whole packet. Cancel safe: bytes already read stay buffered,
    /// so it can race timers in a `select!`.
    pub async fn recv(&mut self) -> Result<Packet, Lost> {
        loop {
            if let Some(packet) = self.take_packet() {
                return Ok(packet);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(Lost),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet within `within`, failing the test otherwise: for
    /// tests that expect the broker to stay up.
    pub async fn expect_within(&mut self, within: Duration) -> Packet {
        match timeout(within, self.recv()).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(Lost)) => panic!("the broker closed the connection"),
            Err(_) => panic!("no packet from the broker within {within:?}"),
        }
    }

    /// Sends DISCONNECT so the broker ends the connection without a will,
    /// then waits (bounded) for it to close the socket.
    pub async fn disconnect(mut self) {
        if self.send(&[0xe0, 0x00]).await.is_ok() {
            let _ = timeout(STEP, async { while self.recv().await.is_ok() {} }).await;
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
                raw::hex(&self.buf)
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
