//! The task that runs one bridge: connects to the remote (its addresses in
//! turn, then a backoff with jitter), attaches the bridge's local session
//! for as long as the remote is connected, and moves packets between the
//! two through a `Link`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;

use super::link::{Link, LinkError, ToLocal};
use super::spec::{Address, BridgeSpec};
use super::status::BridgeStatus;
use super::wire::{self, ConnAck, ConnectPacket, Inbound};
use crate::broker::{BrokerState, Client, Close, Connected, Origin};
use crate::protocol::{Connect, Packet, Version};
use crate::session::Stop;
use crate::store::Ticket;
use crate::timer::now_ms;
use crate::transport::tls::{self, TlsError};

/// How long one address may take to accept a connection, finish TLS and
/// answer CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes waiting for the remote above which the local session is not
/// pumped and the remote not read: the remote's pace holds both back.
const OUTPUT_LIMIT: usize = 256 * 1024;

/// Bytes of queued messages one pump of the local session takes.
const PUMP_BYTES: usize = 64 * 1024;

/// Batches of packets waiting for the journal above which the remote is
/// not read.
const HELD_LIMIT: usize = 1024;

/// How long a stopping bridge spends on its last words to the remote.
const GOODBYE: Duration = Duration::from_secs(1);

/// The largest packet taken from the remote (MQTT's own maximum).
const MAX_PACKET: usize = 268_435_460;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge `{bridge}`: {source}")]
    Tls {
        bridge: String,
        source: Box<TlsError>,
    },
    #[error("bridge `{bridge}`: its local session cannot be attached: {reason}")]
    LocalSession { bridge: String, reason: String },
}

/// One configured bridge, ready to run.
pub struct Bridge {
    spec: Arc<BridgeSpec>,
    tls: Option<TlsConnector>,
}

/// A bridge running: its configuration and what it reports.
struct Running {
    spec: Arc<BridgeSpec>,
    status: Arc<BridgeStatus>,
    tls: Option<TlsConnector>,
    /// What the remote may send unacknowledged: the bridge's
    /// `max_inflight`, within what the broker lets one client leave
    /// awaiting PUBREL (`limits.receive_maximum`).
    receive_maximum: u16,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connection the remote accepted.
struct Connection {
    stream: Box<dyn Stream>,
    /// What was read after the CONNACK.
    input: BytesMut,
    connack: ConnAck,
}

/// Why an attempt to connect failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}: no answer within {CONNECT_TIMEOUT:?}")]
    Timeout(String),
    #[error("{address}: the remote refused the connection (CONNACK 0x{code:02x})")]
    Refused { address: String, code: u8 },
    #[error("{address}: {source}")]
    Wire {
        address: String,
        source: wire::WireError,
    },
    #[error("{0}: the remote closed the connection before CONNACK")]
    Closed(String),
    #[error("{0}: not a valid TLS server name")]
    ServerName(String),
}

/// How a served connection ended.
enum Ended {
    Shutdown,
    Error(String),
}

impl Bridge {
    /// The bridge of `spec`, its TLS files loaded (a file that does not
    /// load stops the start).
    pub fn new(spec: BridgeSpec) -> Result<Bridge, BridgeError> {
        let tls = match &spec.tls {
            None => None,
            Some(files) => {
                let identity = files
                    .identity
                    .as_ref()
                    .map(|(cert, key)| (cert.as_path(), key.as_path()));
                let config =
                    tls::client_config(&files.ca, identity).map_err(|source| BridgeError::Tls {
                        bridge: spec.name.clone(),
                        source: Box::new(source),
                    })?;
                Some(TlsConnector::from(config))
            }
        };
        Ok(Bridge {
            spec: Arc::new(spec),
            tls,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Makes the bridge's local session and its subscriptions before any
    /// client is served, so that from the first PUBLISH on, what matches an
    /// `out` rule is kept for the remote.
    pub fn prepare(&self, broker: &Arc<BrokerState>) -> Result<(), BridgeError> {
        let (client, signal) =
            attach_local(broker, &self.spec, 1).map_err(|reason| BridgeError::LocalSession {
                bridge: self.spec.name.clone(),
                reason,
            })?;
        client.finish(
            Close::ByClient {
                publish_will: false,
            },
            now_ms(),
        );
        signal.finish();
        Ok(())
    }

    /// Runs the bridge until `shutdown` turns true, reporting to the
    /// broker's status of the bridge of this name.
    pub async fn run(self, broker: Arc<BrokerState>, shutdown: watch::Receiver<bool>) {
        let status = broker
            .bridge_status(&self.spec.name)
            .unwrap_or_else(|| Arc::new(BridgeStatus::new(&self.spec.name)));
        let receive_maximum = self
            .spec
            .max_inflight
            .min(broker.settings().limits.receive_maximum);
        Running {
            spec: self.spec,
            status,
            tls: self.tls,
            receive_maximum,
        }
        .run(broker, shutdown)
        .await;
    }
}

impl Running {
    async fn run(self, broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
        let name = self.spec.name.clone();
        broker.publish_bridge_state(&name, false, now_ms());
        let mut bridge_bit = self.spec.protocol == Version::V311 && self.spec.try_private;
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let attempt = tokio::select! {
                attempt = self.connect(&mut bridge_bit) => attempt,
                _ = shutdown.changed() => break,
            };
            match attempt {
                Ok(connection) => {
                    failures = 0;
                    self.status.connected();
                    broker.publish_bridge_state(&name, true, now_ms());
                    let ended = self.serve(&broker, connection, &mut shutdown).await;
                    broker.publish_bridge_state(&name, false, now_ms());
                    match ended {
                        Ended::Shutdown => {
                            self.status.disconnected();
                            break;
                        }
                        Ended::Error(error) => {
                            tracing::warn!(bridge = %name, %error, "bridge disconnected");
                            self.status.failed(error);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(bridge = %name, %error, "bridge connection failed");
                    self.status.failed(error.to_string());
                }
            }
            let delay = self.spec.backoff.delay(failures, jitter());
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = sleep(delay) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Connects to the first address that answers.
    async fn connect(&self, bridge_bit: &mut bool) -> Result<Connection, ConnectError> {
        let mut last = None;
        for address in &self.spec.addresses {
            self.status.trying(&address.to_string());
            let mut attempt = self.connect_to(address, *bridge_bit).await;
            if *bridge_bit
                && matches!(
                    attempt,
                    Err(ConnectError::Refused { code: 1, .. } | ConnectError::Closed(_))
                )
            {
                // Not a broker that knows the bridge bit (3.1.1 code 1,
                // unacceptable protocol version): as Mosquitto does, go on
                // without it.
                tracing::info!(bridge = %self.spec.name, %address, "the remote refused the bridge bit; connecting as a plain client");
                *bridge_bit = false;
                attempt = self.connect_to(address, false).await;
            }
            match attempt {
                Ok(connection) => {
                    tracing::info!(bridge = %self.spec.name, %address, session_present = connection.connack.session_present, "bridge connected");
                    return Ok(connection);
                }
                Err(error) => {
                    tracing::debug!(bridge = %self.spec.name, %error, "address not reached");
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::Closed(String::new())))
    }

    async fn connect_to(
        &self,
        address: &Address,
        bridge_bit: bool,
    ) -> Result<Connection, ConnectError> {
        let shown = address.to_string();
        timeout(CONNECT_TIMEOUT, self.handshake(address, bridge_bit))
            .await
            .unwrap_or(Err(ConnectError::Timeout(shown)))
    }

    async fn handshake(
        &self,
        address: &Address,
        bridge_bit: bool,
    ) -> Result<Connection, ConnectError> {
        let shown = address.to_string();
        let io = |source| ConnectError::Io {
            address: shown.clone(),
            source,
        };
        let tcp = TcpStream::connect((address.host.as_str(), address.port))
            .await
            .map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = ServerName::try_from(address.host.clone())
                    .map_err(|_| ConnectError::ServerName(shown.clone()))?;
                Box::new(connector.connect(name, tcp).await.map_err(io)?)
            }
        };
        let spec = &self.spec;
        let mut out = BytesMut::new();
        let connect = ConnectPacket {
            version: spec.protocol,
            client_id: &spec.client_id,
            clean_start: spec.clean_start,
            keep_alive: spec.keepalive,
            username: spec.username.as_deref(),
            password: spec.password.as_deref(),
            bridge_bit,
            receive_maximum: self.receive_maximum,
            maximum_packet_size: u32::try_from(MAX_PACKET).unwrap_or(u32::MAX),
        };
        wire::encode_connect(&connect, &mut out).map_err(|source| ConnectError::Wire {
            address: shown.clone(),
            source,
        })?;
        stream.write_all(&out).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut input = BytesMut::with_capacity(4096);
        loop {
            let frame =
                wire::split_frame(&mut input, MAX_PACKET).map_err(|source| ConnectError::Wire {
                    address: shown.clone(),
                    source,
                })?;
            if let Some((first, body)) = frame {
                let packet = wire::decode(spec.protocol, first, body).map_err(|source| {
                    ConnectError::Wire {
                        address: shown.clone(),
                        source,
                    }
                })?;
                return match packet {
                    Inbound::ConnAck(connack) if connack.code == 0 => Ok(Connection {
                        stream,
                        input,
                        connack,
                    }),
                    Inbound::ConnAck(connack) => Err(ConnectError::Refused {
                        address: shown,
                        code: connack.code,
                    }),
                    _ => Err(ConnectError::Wire {
                        address: shown,
                        source: wire::WireError::Malformed("CONNACK"),
                    }),
                };
            }
            if stream.read_buf(&mut input).await.map_err(io)? == 0 {
                return Err(ConnectError::Closed(shown));
            }
        }
    }

    /// Serves one connection to the remote until it ends.
    async fn serve(
        &self,
        broker: &Arc<BrokerState>,
        connection: Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let Connection {
            stream,
            mut input,
            connack,
        } = connection;
        let window = self
            .spec
            .max_inflight
            .min(connack.receive_maximum.unwrap_or(u16::MAX));
        let (mut client, signal) = match attach_local(broker, &self.spec, window) {
            Ok(attached) => attached,
            Err(reason) => return Ended::Error(format!("the local session: {reason}")),
        };
        let mut link = Link::new(
            self.spec.clone(),
            self.status.clone(),
            self.spec.protocol,
            &connack,
            broker.topic_limits(),
            now_ms(),
        );
        let (reader, writer) = tokio::io::split(stream);
        let mut pipe = Pipe {
            broker,
            client: &mut client,
            link: &mut link,
            out: BytesMut::new(),
            held: VecDeque::new(),
            durable_epoch: 0,
        };
        let ended = pipe
            .run(&mut input, reader, writer, &signal, shutdown)
            .await;
        client.finish(
            Close::ByClient {
                publish_will: false,
            },
            now_ms(),
        );
        signal.finish();
        ended
    }
}

/// One served connection: the local client, the link, what waits to be
/// written and what waits for the journal.
struct Pipe<'a> {
    broker: &'a Arc<BrokerState>,
    client: &'a mut Client,
    link: &'a mut Link,
    out: BytesMut,
    /// Packets of the local session waiting for their journal ticket, in
    /// order.
    held: VecDeque<(Ticket, Vec<Packet>)>,
    durable_epoch: u64,
}

impl Pipe<'_> {
    async fn run(
        &mut self,
        input: &mut BytesMut,
        mut reader: tokio::io::ReadHalf<Box<dyn Stream>>,
        mut writer: tokio::io::WriteHalf<Box<dyn Stream>>,
        signal: &crate::session::ConnectionSignal,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        if let Err(error) = self
            .link
            .subscribe(self.client.free_packet_id(), &mut self.out)
        {
            return Ended::Error(error.to_string());
        }
        let journal = self.broker.journal();
        let mut unflushed = false;
        loop {
            match signal.stop() {
                Some(Stop::ShuttingDown) => return self.goodbye(writer).await,
                Some(Stop::Kicked) => return Ended::Error("disconnected by an operator".into()),
                Some(Stop::TakenOver) => {
                    return Ended::Error("the local session was taken over".into());
                }
                None => {}
            }
            let now = now_ms();
            if let Err(error) = self.handle_input(input, now) {
                return Ended::Error(error.to_string());
            }
            let mut more = false;
            if self.out.len() < OUTPUT_LIMIT {
                // Until the SUBACK, only what is already decided goes out:
                // pumping would take packet ids the SUBSCRIBE may hold.
                let output = if self.link.is_subscribing() {
                    self.client.take_output()
                } else {
                    let (output, pumped_more) = self.client.pump(now, PUMP_BYTES);
                    more = pumped_more;
                    output
                };
                if let Err(error) = self.send(output.ticket, output.packets, now) {
                    return Ended::Error(error.to_string());
                }
            }
            let keep_alive = match self.link.keep_alive(now, &mut self.out) {
                Ok(next) => next,
                Err(error) => return Ended::Error(error.to_string()),
            };
            let wake_at = keep_alive.map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |at| Instant::now() + Duration::from_millis(at.saturating_sub(now)),
            );
            let reading = self.out.len() < OUTPUT_LIMIT && self.held.len() < HELD_LIMIT;
            let oldest = self.held.front().map(|(ticket, _)| *ticket);
            let epoch = &mut self.durable_epoch;
            tokio::select! {
                read = reader.read_buf(input), if reading => match read {
                    Ok(0) => return Ended::Error("the remote closed the connection".into()),
                    Ok(_) => {}
                    Err(error) => return Ended::Error(format!("reading from the remote: {error}")),
                },
                // Written, then flushed (TLS holds what it encrypted until
                // then) once everything is written.
                wrote = write_or_flush(&mut writer, &self.out), if !self.out.is_empty() || unflushed => match wrote {
                    Ok(0) if self.out.is_empty() => unflushed = false,
                    Ok(0) => return Ended::Error("the remote stopped taking data".into()),
                    Ok(n) => {
                        self.out.advance(n);
                        self.link.wrote(now_ms());
                        unflushed = true;
                    }
                    Err(error) => return Ended::Error(format!("writing to the remote: {error}")),
                },
                durable = poll_fn(|cx| journal.poll_durable(oldest.unwrap_or(Ticket::NONE), epoch, cx)), if oldest.is_some() => {
                    if let Err(error) = durable {
                        return Ended::Error(format!("the journal: {error}"));
                    }
                    if let Err(error) = self.release_durable(now_ms()) {
                        return Ended::Error(error.to_string());
                    }
                }
                _ = poll_fn(|cx| signal.poll_woken(cx)) => {}
                _ = std::future::ready(()), if more => {}
                _ = sleep_until(wake_at) => {}
                _ = shutdown.changed() => return self.goodbye(writer).await,
            }
        }
    }

    /// Reads every whole packet in `input` and hands it on.
    fn handle_input(&mut self, input: &mut BytesMut, now: u64) -> Result<(), LinkError> {
        while let Some((first, body)) = wire::split_frame(input, MAX_PACKET)? {
            let packet = wire::decode(self.link.version(), first, body)?;
            let to_local = self.link.from_remote(packet, &mut self.out)?;
            self.apply(to_local, now)?;
        }
        Ok(())
    }

    /// Packets of the local session: out now, or once `ticket` is durable
    /// (behind whatever already waits).
    fn send(&mut self, ticket: Ticket, packets: Vec<Packet>, now: u64) -> Result<(), LinkError> {
        if ticket == Ticket::NONE && self.held.is_empty() {
            if !packets.is_empty() {
                let to_local = self.link.from_local(packets, &mut self.out)?;
                self.apply(to_local, now)?;
            }
        } else if !packets.is_empty() || ticket != Ticket::NONE {
            let ticket = self
                .held
                .back()
                .map_or(ticket, |(last, _)| ticket.max(*last));
            self.held.push_back((ticket, packets));
        }
        Ok(())
    }

    /// Sends the held packets whose tickets are now durable.
    fn release_durable(&mut self, now: u64) -> Result<(), LinkError> {
        let journal = self.broker.journal();
        while let Some((ticket, _)) = self.held.front() {
            if !journal.is_durable(*ticket) {
                break;
            }
            let (_, packets) = self.held.pop_front().unwrap_or_default();
            let to_local = self.link.from_local(packets, &mut self.out)?;
            self.apply(to_local, now)?;
        }
        Ok(())
    }

    /// Tells the local session what the link decided.
    fn apply(&mut self, to_local: Vec<ToLocal>, now: u64) -> Result<(), LinkError> {
        for action in to_local {
            match action {
                ToLocal::Handle(packet) => {
                    if let Err(close) = self.client.handle(packet, now) {
                        return Err(LinkError::LocalClosed(format!("{close:?}")));
                    }
                }
                ToLocal::Skip(packet_id) => self.client.skip_oversized(packet_id, now),
            }
        }
        Ok(())
    }

    /// What is written already goes out, then DISCONNECT, within `GOODBYE`.
    async fn goodbye(&mut self, mut writer: tokio::io::WriteHalf<Box<dyn Stream>>) -> Ended {
        wire::encode_disconnect(&mut self.out);
        let out = std::mem::take(&mut self.out);
        let _ = timeout(GOODBYE, async {
            writer.write_all(&out).await?;
            writer.shutdown().await
        })
        .await;
        Ended::Shutdown
    }
}

/// Attaches the bridge's local session, with a window of `window`
/// messages in flight, and makes its subscriptions those of the `out`
/// rules.
fn attach_local(
    broker: &Arc<BrokerState>,
    spec: &BridgeSpec,
    window: u16,
) -> Result<(Client, Arc<crate::session::ConnectionSignal>), String> {
    let connect = Connect {
        version: Version::V5,
        client_id: spec.local_client_id(),
        clean_start: false,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
        session_expiry: u32::MAX,
        receive_maximum: window,
        maximum_packet_size: None,
        topic_alias_maximum: 0,
        request_response_information: false,
        request_problem_information: true,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
        bridge: false,
    };
    let origin = Origin {
        peer: None,
        authenticated: None,
        bridge: Some(spec.queue),
    };
    // No earlier connection to wait for: only this task attaches to
    // the session, and it finished the last one before this.
    let Connected {
        mut client, signal, ..
    } = Client::connect_from(broker, connect, origin, now_ms())
        .map_err(|refusal| format!("refused with {}", refusal.reason))?;
    client.resume(now_ms());
    client
        .subscribe_bridge(&spec.rules, now_ms())
        .map_err(|close| format!("subscriptions refused: {close:?}"))?;
    Ok((client, signal))
}

/// Writes some of `out`, or flushes when it is empty (returning 0).
async fn write_or_flush(
    writer: &mut tokio::io::WriteHalf<Box<dyn Stream>>,
    out: &[u8],
) -> std::io::Result<usize> {
    if out.is_empty() {
        writer.flush().await.map(|()| 0)
    } else {
        writer.write(out).await
    }
}

/// A number in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    getrandom::u64().map_or(0.5, |n| (n >> 11) as f64 / (1u64 << 53) as f64)
}
