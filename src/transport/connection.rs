//! One task per connection: read frames, feed the client core, write what
//! it hands back, and watch the keep alive, the write deadline, and the
//! broker's signals (takeover, shutdown).
//!
//! Nothing here blocks on one direction: the socket is read while output
//! waits to be written and written while acknowledgements wait for the
//! journal. What a connection may hold is bounded: encoded output (it stops
//! reading and pumping while that is full), acknowledgements waiting for the
//! disk (it stops reading past the Receive Maximum), and the time output may
//! wait without the client reading any of it (then it is closed as a slow
//! consumer).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use super::arrival::{ArrivalOrder, Stamp, has_subscription_change};
use crate::broker::{BrokerState, Client, Close, Connected, Output};
use crate::protocol::{
    Codec, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Packet, ReasonCode, Version,
};
use crate::session::{ConnectionSignal, Stop};
use crate::store::Ticket;
use crate::timer::now_ms;

/// Room reserved for one read once the socket is readable. Buffers are
/// released whenever they run empty, so an idle connection holds none.
const READ_BUFFER: usize = 8 * 1024;

/// Queued messages are taken from the session only while less than this is
/// waiting to be written, and about this much at a time.
const PUMP_BYTES: usize = 64 * 1024;

/// Above this much unwritten output the connection stops reading: a client
/// that does not read what it is sent is not served more.
const OUTPUT_LIMIT: usize = 256 * 1024;

/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// How long the last packets (acknowledgements, DISCONNECT) may take to be
/// written when the connection closes, and how long the input is then
/// drained so the close reaches the client as a FIN, not a reset.
const LAST_WORDS_WAIT: Duration = Duration::from_secs(1);
const DRAIN_WAIT: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 1024 * 1024;

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    order: Arc<ArrivalOrder>,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("connection", %peer, client_id = tracing::field::Empty);
    tracing::Instrument::instrument(run(stream, &broker, &order, shutdown), span).await;
    broker.metrics().connection_closed();
}

/// The socket with its codec and buffers.
struct Wire {
    stream: TcpStream,
    codec: Codec,
    input: BytesMut,
    output: BytesMut,
}

/// What one read from the socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Data,
    /// Nothing to read now.
    Empty,
    /// End of stream, or an error.
    Closed,
}

impl Wire {
    /// Reads what the socket has now.
    fn try_read(&mut self) -> Read {
        self.input.reserve(READ_BUFFER);
        match self.stream.try_read_buf(&mut self.input) {
            Ok(0) => Read::Closed,
            Ok(_) => Read::Data,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Read::Empty,
            Err(_) => Read::Closed,
        }
    }

    /// Writes as much output as the socket takes now; returns whether any
    /// went out.
    fn try_write(&mut self) -> std::io::Result<bool> {
        let mut progress = false;
        while !self.output.is_empty() {
            match self.stream.try_write(&self.output) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    let _ = self.output.split_to(written);
                    progress = true;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
        Ok(progress)
    }

    /// Encodes packets into the output. A message larger than the client
    /// accepts is skipped for this client; returns the PUBLISHes encoded.
    fn encode(&mut self, client: &mut Client, packets: Vec<Packet>) -> u64 {
        let mut publishes = 0;
        for packet in &packets {
            match self.codec.encode(packet, &mut self.output) {
                Ok(_) => publishes += u64::from(matches!(packet, Packet::Deliver(_))),
                // The codec already retried other packets without their
                // Reason String; what is still too large cannot be sent.
                Err(EncodeError::TooLarge { size }) => match packet {
                    Packet::Deliver(deliver) => {
                        tracing::debug!(size, topic = %deliver.message.topic, "message larger than the client accepts: skipped");
                        client.skip_oversized(deliver.packet_id);
                    }
                    _ => tracing::debug!(
                        size,
                        "packet larger than the client accepts even without reason string: skipped"
                    ),
                },
                Err(error) => tracing::warn!(%error, "cannot encode packet"),
            }
        }
        publishes
    }

    /// Writes everything in the output within `limit`.
    async fn write_all_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let written = timeout(limit, self.stream.write_all(&self.output)).await;
        self.output = BytesMut::new();
        matches!(written, Ok(Ok(()))) && Instant::now() <= deadline
    }

    /// Closes gracefully: FIN first, then whatever the client still sends
    /// is read and dropped for a short while, so that closing with unread
    /// input does not turn into a reset that destroys the last packets.
    async fn close(mut self) {
        let _ = timeout(LAST_WORDS_WAIT, self.stream.shutdown()).await;
        let drain = async {
            let mut drained = 0;
            let mut scratch = BytesMut::with_capacity(4096);
            while drained < DRAIN_BYTES {
                scratch.clear();
                match tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => drained += read,
                }
            }
        };
        let _ = timeout(DRAIN_WAIT, drain).await;
    }
}

async fn run(
    stream: TcpStream,
    broker: &Arc<BrokerState>,
    order: &ArrivalOrder,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = &broker.settings().limits;
    let mut wire = Wire {
        stream,
        codec: Codec::new(limits.max_packet_size),
        input: BytesMut::new(),
        output: BytesMut::new(),
    };
    let connect_timeout = Duration::from_secs(limits.connect_timeout_secs);
    let connect = tokio::select! {
        read = timeout(connect_timeout, read_connect(&mut wire)) => read,
        _ = shutdown.changed() => return,
    };
    drop(shutdown);
    let connect = match connect {
        Err(_) => {
            tracing::debug!("no CONNECT within the connect timeout");
            return;
        }
        Ok(Err(ConnectFailure::Io)) => return,
        Ok(Err(ConnectFailure::Decode(error))) => {
            tracing::info!(%error, "CONNECT refused");
            refuse_connect(wire, error).await;
            return;
        }
        Ok(Ok(connect)) => connect,
    };
    let version = connect.version;
    let maximum_packet_size = connect.maximum_packet_size;
    let topic_alias_maximum = connect.topic_alias_maximum;
    let Connected {
        mut client,
        signal,
        previous,
    } = match Client::connect(broker, *connect, now_ms()) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::info!(reason = %refusal.reason, "CONNECT refused");
            if let Some(connack) = refusal.connack {
                wire.encode_raw(Packet::ConnAck(*connack));
                wire.write_all_within(LAST_WORDS_WAIT).await;
                wire.close().await;
            }
            return;
        }
    };
    tracing::Span::current().record("client_id", client.client_id());
    if let Some(previous) = previous {
        // Bounded: a stuck old connection must not hold the new one
        // forever; it can change nothing once this one resumes.
        let _ = timeout(TAKEOVER_WAIT, previous.finished()).await;
    }
    client.resume(now_ms());
    if let Some(max) = maximum_packet_size {
        wire.codec.set_max_outgoing(max);
    }
    wire.codec
        .set_outbound_topic_aliases(topic_alias_maximum.min(limits.max_outbound_topic_aliases));

    let mut held = Held::default();
    let close = serve_session(&mut wire, &mut client, &signal, &mut held, broker, order).await;

    // Answers to packets handled before the close still go out, then the
    // DISCONNECT where the protocol has one.
    if !matches!(close, Close::Lost | Close::Stalled) {
        let last = client.take_output();
        let ticket = held.newest_ticket().max(last.ticket);
        let mut packets = held.release_all();
        packets.extend(last.packets);
        let durable = timeout(LAST_WORDS_WAIT, broker.journal().durable(ticket)).await;
        if !matches!(durable, Ok(Ok(()))) && !packets.is_empty() {
            tracing::error!("acknowledgements withheld: not durable");
            packets.clear();
        }
        if let Close::ByServer(reason) = close
            && version == Version::V5
        {
            packets.push(Packet::Disconnect(Disconnect::new(reason)));
        }
        let sent = wire.encode(&mut client, packets);
        broker.metrics().messages_sent_add(sent);
        wire.write_all_within(LAST_WORDS_WAIT).await;
    }
    // The session is released before the goodbye drain, so a client that
    // reconnects as soon as it sees the close finds the outcome settled.
    client.finish(close, now_ms());
    signal.finish();
    wire.close().await;
}

/// Serves an accepted connection until it closes; returns why.
async fn serve_session(
    wire: &mut Wire,
    client: &mut Client,
    signal: &ConnectionSignal,
    held: &mut Held,
    broker: &BrokerState,
    order: &ArrivalOrder,
) -> Close {
    let mut pending = PendingStamp { order, stamp: None };
    serve_loop(wire, client, signal, held, broker, &mut pending).await
}

/// The stamp of the read whose packets are being handled, released once
/// they are, or when the connection ends in any way (a task cut at
/// shutdown included), so it never holds other connections back.
struct PendingStamp<'a> {
    order: &'a ArrivalOrder,
    stamp: Option<Stamp>,
}

impl PendingStamp<'_> {
    fn release(&mut self) {
        if let Some(stamp) = self.stamp.take() {
            self.order.handled(stamp);
        }
    }
}

impl Drop for PendingStamp<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

async fn serve_loop(
    wire: &mut Wire,
    client: &mut Client,
    signal: &ConnectionSignal,
    held: &mut Held,
    broker: &BrokerState,
    pending: &mut PendingStamp<'_>,
) -> Close {
    let limits = &broker.settings().limits;
    let keep_alive = client.keep_alive_limit();
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let max_held_acks = usize::from(limits.receive_maximum);
    let mut last_read = Instant::now();
    let mut stalled_since: Option<Instant> = None;
    let mut alarm = pin!(sleep_until(far_future()));
    let mut alarm_at = far_future();
    loop {
        match signal.stop() {
            Some(Stop::TakenOver) => return finish_reading(wire, client),
            Some(Stop::ShuttingDown) => return Close::ByServer(ReasonCode::SERVER_SHUTTING_DOWN),
            None => {}
        }
        if wire.output.len() < PUMP_BYTES {
            let (output, more) = client.pump(now_ms(), PUMP_BYTES);
            if more {
                signal.wake();
            }
            if output.ticket != Ticket::NONE || !held.is_empty() {
                held.hold(output);
            } else if !output.packets.is_empty() {
                let sent = wire.encode(client, output.packets);
                broker.metrics().messages_sent_add(sent);
            }
        }
        if !wire.output.is_empty() {
            match wire.try_write() {
                Ok(true) => stalled_since = None,
                Ok(false) => {
                    stalled_since.get_or_insert_with(Instant::now);
                }
                Err(_) => return Close::Lost,
            }
        } else {
            stalled_since = None;
        }
        let congested = broker.journal().congested();
        let blocked = pending.stamp.filter(|_| !wire.input.is_empty());
        let reading = blocked.is_none()
            && wire.output.len() < OUTPUT_LIMIT
            && held.acks < max_held_acks
            && !congested;
        // Wake for whichever comes first: the keep alive or the write
        // deadline. The alarm is only moved when it rings or must ring
        // earlier, not on every read.
        let deadline = [
            keep_alive.map(|limit| last_read + limit),
            stalled_since.map(|since| since + write_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(far_future);
        if deadline < alarm_at {
            alarm_at = deadline;
            alarm.as_mut().reset(deadline);
        }
        tokio::select! {
            durable = broker.journal().durable(held.oldest_ticket()), if !held.is_empty() => {
                if let Err(error) = durable {
                    tracing::error!(%error, "closing: acknowledgements cannot be made durable");
                    held.clear();
                    return Close::ByServer(ReasonCode::UNSPECIFIED_ERROR);
                }
                let packets = held.release_oldest();
                let sent = wire.encode(client, packets);
                broker.metrics().messages_sent_add(sent);
            }
            _ = pending.order.earlier_handled(blocked.unwrap_or(Stamp::FIRST)), if blocked.is_some() => {
                match handle_input(wire, client, held, Some((pending.order, blocked.unwrap_or(Stamp::FIRST)))) {
                    Ok(Handled::All) => pending.release(),
                    Ok(Handled::Blocked) => {}
                    Err(close) => return close,
                }
            }
            ready = wire.stream.readable(), if reading => {
                if ready.is_err() {
                    return Close::Lost;
                }
                match wire.try_read() {
                    Read::Data => last_read = Instant::now(),
                    Read::Empty => continue,
                    Read::Closed => {
                        // Handle what arrived before the end (a DISCONNECT).
                        return handle_input(wire, client, held, None)
                            .err()
                            .unwrap_or(Close::Lost);
                    }
                }
                let stamp = pending.order.stamp(has_subscription_change(&wire.input));
                pending.stamp = Some(stamp);
                match handle_input(wire, client, held, Some((pending.order, stamp))) {
                    Ok(Handled::All) => pending.release(),
                    Ok(Handled::Blocked) => {}
                    Err(close) => return close,
                }
            }
            ready = wire.stream.writable(), if !wire.output.is_empty() => {
                if ready.is_err() {
                    return Close::Lost;
                }
            }
            _ = signal.woken() => {}
            _ = broker.journal().relieved(), if congested => {}
            _ = &mut alarm => {
                alarm_at = far_future();
                alarm.as_mut().reset(alarm_at);
                let now = Instant::now();
                if keep_alive.is_some_and(|limit| last_read + limit <= now) {
                    tracing::info!("keep alive expired");
                    return Close::ByServer(ReasonCode::KEEP_ALIVE_TIMEOUT);
                }
                if stalled_since.is_some_and(|since| since + write_timeout <= now) {
                    broker.metrics().slow_consumer_closed(client.client_id());
                    return Close::Stalled;
                }
            }
        }
    }
}

/// An instant no alarm reaches: about a year ahead.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

/// Taken over: what the client sent before the takeover is still handled
/// (an acknowledgement sent just before it reconnected must count), then
/// the connection closes.
fn finish_reading(wire: &mut Wire, client: &mut Client) -> Close {
    while wire.input.len() < DRAIN_BYTES && wire.try_read() == Read::Data {}
    let mut answers = Held::default();
    match handle_input(wire, client, &mut answers, None) {
        Err(Close::ByServer(reason)) if reason != ReasonCode::SESSION_TAKEN_OVER => {
            Close::ByServer(reason)
        }
        _ => Close::ByServer(ReasonCode::SESSION_TAKEN_OVER),
    }
}

/// How far `handle_input` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Every whole packet in the input.
    All,
    /// Up to a PUBLISH that must wait for another connection's earlier
    /// SUBSCRIBE or UNSUBSCRIBE.
    Blocked,
}

/// Decodes and handles every whole packet in the input, holding the
/// answers that wait for the journal. With an arrival stamp, stops before a
/// PUBLISH that an earlier subscription change must precede.
fn handle_input(
    wire: &mut Wire,
    client: &mut Client,
    held: &mut Held,
    order: Option<(&ArrivalOrder, Stamp)>,
) -> Result<Handled, Close> {
    let result = loop {
        if let Some((order, stamp)) = order
            && wire.input.first().is_some_and(|byte| byte >> 4 == 3)
            && order.must_wait(stamp)
        {
            break Ok(Handled::Blocked);
        }
        match wire.codec.decode(&mut wire.input) {
            Ok(Some(packet)) => {
                tracing::trace!(?packet, "received");
                if let Err(close) = client.handle(packet, now_ms()) {
                    break Err(close);
                }
            }
            Ok(None) => break Ok(Handled::All),
            Err(error) => {
                tracing::info!(%error, "closing connection");
                break Err(Close::ByServer(error.reason()));
            }
        }
    };
    let output = client.take_output();
    if output.ticket != Ticket::NONE || !held.is_empty() {
        held.hold(output);
    } else if !output.packets.is_empty() {
        let sent = wire.encode(client, output.packets);
        client.broker().metrics().messages_sent_add(sent);
    }
    if wire.input.is_empty() {
        wire.input = BytesMut::new();
    }
    result
}

enum ConnectFailure {
    Io,
    Decode(DecodeError),
}

async fn read_connect(wire: &mut Wire) -> Result<Box<Connect>, ConnectFailure> {
    loop {
        match wire.codec.decode(&mut wire.input) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => {
                return Err(ConnectFailure::Decode(DecodeError::Protocol("not CONNECT")));
            }
            Ok(None) => {}
            Err(error) => return Err(ConnectFailure::Decode(error)),
        }
        if wire.stream.readable().await.is_err() {
            return Err(ConnectFailure::Io);
        }
        if wire.try_read() == Read::Closed {
            return Err(ConnectFailure::Io);
        }
    }
}

impl Wire {
    /// Encodes a packet that has no client to report skips to.
    fn encode_raw(&mut self, packet: Packet) {
        if let Err(error) = self.codec.encode(&packet, &mut self.output) {
            tracing::warn!(%error, "cannot encode packet");
        }
    }
}

/// Answers a CONNECT that could not be read: an unsupported protocol level
/// gets the 3.1.1 CONNACK 0x01 [MQTT-3.1.2-2]; a v5 CONNECT that is
/// malformed or breaks the protocol gets a CONNACK with the reason (4.13);
/// anything else just closes, as 3.1.1 has no code for it.
async fn refuse_connect(mut wire: Wire, error: DecodeError) {
    let answer = match (error, wire.codec.version()) {
        (DecodeError::UnsupportedVersion(_), _) => true,
        (DecodeError::BadProtocolName, _) => false,
        (_, version) => version == Some(Version::V5),
    };
    if answer {
        wire.encode_raw(Packet::ConnAck(ConnAck {
            reason: error.reason(),
            ..ConnAck::default()
        }));
        wire.write_all_within(LAST_WORDS_WAIT).await;
    }
    wire.close().await;
}

/// Packets that may go out only once a journal ticket is durable (DESIGN §4
/// `sync`), in the order they were produced, each batch with the ticket it
/// waits for. Batches that need no flush queue behind earlier ones, so the
/// client sees every packet in order.
#[derive(Default)]
struct Held {
    batches: VecDeque<(Ticket, Vec<Packet>)>,
    /// PUBACK / PUBREC held: bounded by the Receive Maximum.
    acks: usize,
}

fn acks_in(packets: &[Packet]) -> usize {
    packets
        .iter()
        .filter(|p| matches!(p, Packet::PubAck(_) | Packet::PubRec(_)))
        .count()
}

impl Held {
    fn hold(&mut self, output: Output) {
        if output.packets.is_empty() {
            return;
        }
        let ticket = output.ticket.max(self.newest_ticket());
        self.acks += acks_in(&output.packets);
        self.batches.push_back((ticket, output.packets));
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn oldest_ticket(&self) -> Ticket {
        self.batches.front().map_or(Ticket::NONE, |(t, _)| *t)
    }

    fn newest_ticket(&self) -> Ticket {
        self.batches.back().map_or(Ticket::NONE, |(t, _)| *t)
    }

    fn release_oldest(&mut self) -> Vec<Packet> {
        let packets = self
            .batches
            .pop_front()
            .map(|(_, packets)| packets)
            .unwrap_or_default();
        self.acks -= acks_in(&packets);
        packets
    }

    fn release_all(&mut self) -> Vec<Packet> {
        self.acks = 0;
        self.batches
            .drain(..)
            .flat_map(|(_, packets)| packets)
            .collect()
    }

    fn clear(&mut self) {
        self.acks = 0;
        self.batches.clear();
    }
}
