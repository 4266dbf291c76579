//! One task per connection: read frames, feed the client core, write what
//! it hands back, and watch the keep alive, the write deadline, and the
//! broker's signals (takeover, shutdown).
//!
//! Once connected, the task is one small struct (`Conn`) polled by hand:
//! socket readiness, the wake-up signal and journal tickets are polled where
//! they live, and its deadlines sit on the broker's timer wheel, so an idle
//! connection holds no futures, timers or buffers of its own.
//!
//! Nothing blocks on one direction: the socket is read while output waits
//! to be written and written while acknowledgements wait for the journal.
//! What a connection may hold is bounded: encoded output (it stops reading
//! and pumping while that is full), acknowledgements waiting for the disk
//! (it stops reading past the Receive Maximum), and the time output may wait
//! without the client reading any of it (then it is closed as a slow
//! consumer).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;
use tokio::time::timeout;

use super::arrival::{ArrivalOrder, Stamp, has_subscription_change};
use super::socket::Socket;
use crate::broker::{BrokerState, Client, Close, Connected, Metrics, Output};
use crate::protocol::{
    Codec, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Packet, ReasonCode, Version,
};
use crate::session::{ConnectionSignal, Stop};
use crate::store::{StoreError, Ticket};
use crate::timer::{TimerId, now_ms};

/// Room reserved for one read once the socket is readable. Buffers are
/// released whenever they run empty, so an idle connection holds none.
const READ_BUFFER: usize = 8 * 1024;

/// Queued messages are taken from the session only while less than this is
/// waiting to be written, and about this much at a time.
const PUMP_BYTES: usize = 64 * 1024;

/// Above this much unwritten output the connection stops reading: a client
/// that does not read what it is sent is not served more.
const OUTPUT_LIMIT: usize = 256 * 1024;

/// Rounds of reading and writing one poll does before letting other tasks
/// run.
const ROUNDS_PER_POLL: usize = 32;

/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// How long the last packets (acknowledgements, DISCONNECT) may take to be
/// written when the connection closes, and how long the input is then
/// drained so the close reaches the client as a FIN, not a reset.
const LAST_WORDS_WAIT: Duration = Duration::from_secs(1);
const DRAIN_WAIT: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 1024 * 1024;

/// Who is on the other end, as the transport knows it.
pub struct Peer {
    pub addr: SocketAddr,
    /// The client certificate's identity, when the listener takes it as
    /// the username (`use_identity_as_username`).
    pub identity: Option<Arc<str>>,
}

/// The task serving one connection, from accept to close.
pub fn serve<S: Socket>(
    stream: S,
    peer: Peer,
    broker: Arc<BrokerState>,
    order: Arc<ArrivalOrder>,
    shutdown: watch::Receiver<bool>,
) -> Task<S> {
    let accepting = Box::pin(accept(stream, peer, broker.clone(), order, shutdown));
    Task {
        phase: Phase::Accepting(accepting),
        broker,
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A connection's task. The phases before and after serving run in boxed
/// futures, so the task itself is only as large as the state of a
/// connection being served.
pub struct Task<S> {
    phase: Phase<S>,
    broker: Arc<BrokerState>,
}

// The served connection is the task's state; the other phases are boxed
// on purpose, so the task is only as large as a served connection.
enum Phase<S> {
    Accepting(Boxed<Option<Conn<S>>>),
    Serving(Conn<S>),
    Finishing(Boxed<()>),
    Done,
}

impl<S: Socket> Future for Task<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let next = match &mut self.phase {
                Phase::Accepting(accepting) => match accepting.as_mut().poll(cx) {
                    Poll::Ready(Some(conn)) => Phase::Serving(conn),
                    Poll::Ready(None) => Phase::Done,
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Serving(conn) => match conn.poll(cx) {
                    Poll::Ready(close) => {
                        let Phase::Serving(conn) = std::mem::replace(&mut self.phase, Phase::Done)
                        else {
                            unreachable!("serving");
                        };
                        Phase::Finishing(Box::pin(conn.finish(close)))
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Finishing(finishing) => match finishing.as_mut().poll(cx) {
                    Poll::Ready(()) => Phase::Done,
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Done => return Poll::Ready(()),
            };
            self.phase = next;
        }
    }
}

impl<S> Drop for Task<S> {
    /// Counted here, whether the task ran to its end or was cut at
    /// shutdown.
    fn drop(&mut self) {
        self.broker.metrics().connection_closed();
    }
}

/// The socket with its codec and buffers.
struct Wire<S> {
    stream: S,
    codec: Codec,
    /// Allocated while there is something to read or write, released as
    /// soon as both run empty.
    buffers: Option<Box<Buffers>>,
}

#[derive(Default)]
struct Buffers {
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

impl<S: Socket> Wire<S> {
    fn new(stream: S, codec: Codec) -> Wire<S> {
        Wire {
            stream,
            codec,
            buffers: None,
        }
    }

    /// Reads what the socket has now. The read buffer is taken for the
    /// read and given back if nothing came.
    fn try_read(&mut self, cx: &mut Context<'_>, metrics: &Metrics) -> Read {
        let input = &mut self.buffers.get_or_insert_default().input;
        input.reserve(READ_BUFFER);
        let read = match self.stream.poll_read_into(cx, input) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Read::Closed,
            Poll::Ready(Ok(read)) => {
                metrics.bytes_received_add(read as u64);
                Read::Data
            }
            Poll::Pending => Read::Empty,
        };
        if read != Read::Data {
            self.release_empty_buffers();
        }
        read
    }

    /// Gives back buffers that hold nothing, so an idle connection keeps
    /// none.
    fn release_empty_buffers(&mut self) {
        let Some(buffers) = &mut self.buffers else {
            return;
        };
        match (buffers.input.is_empty(), buffers.output.is_empty()) {
            (true, true) => self.buffers = None,
            (true, false) => buffers.input = BytesMut::new(),
            (false, true) => buffers.output = BytesMut::new(),
            (false, false) => {}
        }
    }

    fn input(&self) -> &[u8] {
        self.buffers.as_ref().map_or(&[], |b| &b.input)
    }

    fn output_len(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.output.len())
    }

    /// Output waits: encoded, or written into a stream that has not sent
    /// it yet.
    fn has_output(&self) -> bool {
        self.output_len() > 0 || self.stream.unflushed()
    }

    /// The next whole packet in the input.
    fn decode(&mut self) -> Result<Option<Packet>, DecodeError> {
        match &mut self.buffers {
            Some(buffers) => self.codec.decode(&mut buffers.input),
            None => Ok(None),
        }
    }

    /// Encodes one packet into the output.
    fn encode_one(&mut self, packet: &Packet) -> Result<usize, EncodeError> {
        let output = &mut self.buffers.get_or_insert_default().output;
        self.codec.encode(packet, output)
    }

    /// Writes as much output as the socket takes now, and flushes what
    /// the stream holds back; returns whether any went out. What is left
    /// wakes the task when the socket takes more.
    fn try_write(&mut self, cx: &mut Context<'_>, metrics: &Metrics) -> std::io::Result<bool> {
        let mut progress = false;
        while let Some(buffers) = self.buffers.as_mut().filter(|b| !b.output.is_empty()) {
            match self.stream.poll_write_from(cx, &buffers.output) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => {
                    let _ = buffers.output.split_to(written);
                    metrics.bytes_sent_add(written as u64);
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => break,
            }
        }
        if self.stream.unflushed()
            && let Poll::Ready(Err(error)) = self.stream.poll_flush(cx)
        {
            return Err(error);
        }
        self.release_empty_buffers();
        Ok(progress)
    }

    /// Encodes packets into the output and counts the PUBLISHes sent. A
    /// message larger than the client accepts is skipped for this client.
    fn encode(&mut self, client: &mut Client, packets: Vec<Packet>) {
        let mut publishes = [0; 3];
        for packet in &packets {
            match self.encode_one(packet) {
                Ok(_) => {
                    if let Packet::Deliver(deliver) = packet {
                        publishes[deliver.qos as usize] += 1;
                    }
                }
                // The codec already retried other packets without their
                // Reason String; what is still too large cannot be sent.
                Err(EncodeError::TooLarge { size }) => match packet {
                    Packet::Deliver(deliver) => {
                        tracing::debug!(client_id = %client.client_id(), size, topic = %deliver.message.topic, "message larger than the client accepts: skipped");
                        client.skip_oversized(deliver.packet_id, now_ms());
                    }
                    _ => tracing::debug!(
                        client_id = %client.client_id(),
                        size,
                        "packet larger than the client accepts even without reason string: skipped"
                    ),
                },
                Err(error) => tracing::warn!(%error, "cannot encode packet"),
            }
        }
        client.broker().metrics().messages_sent_add(publishes);
    }

    /// Encodes a packet that has no client to report skips to.
    fn encode_raw(&mut self, packet: Packet) {
        if let Err(error) = self.encode_one(&packet) {
            tracing::warn!(%error, "cannot encode packet");
        }
    }

    /// Writes everything in the output within `limit`.
    async fn write_all_within(&mut self, limit: Duration, metrics: &Metrics) {
        let written = std::future::poll_fn(|cx| match self.try_write(cx, metrics) {
            Err(_) => Poll::Ready(()),
            Ok(_) if !self.has_output() => Poll::Ready(()),
            Ok(_) => Poll::Pending,
        });
        let _ = timeout(limit, written).await;
        self.buffers = None;
    }

    /// Answers a CONNECT with a refusing CONNACK and closes.
    async fn refuse(mut self, connack: ConnAck, metrics: &Metrics) {
        self.encode_raw(Packet::ConnAck(connack));
        self.write_all_within(LAST_WORDS_WAIT, metrics).await;
        self.close().await;
    }

    /// Closes gracefully: FIN first, then whatever the client still sends
    /// is read and dropped for a short while, so that closing with unread
    /// input does not turn into a reset that destroys the last packets.
    async fn close(mut self) {
        let shutdown = std::future::poll_fn(|cx| self.stream.poll_shutdown(cx));
        let _ = timeout(LAST_WORDS_WAIT, shutdown).await;
        let drain = async {
            let mut drained = 0;
            let mut scratch = BytesMut::with_capacity(4096);
            while drained < DRAIN_BYTES {
                scratch.clear();
                let read =
                    std::future::poll_fn(|cx| self.stream.poll_read_into(cx, &mut scratch)).await;
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(read) => drained += read,
                }
            }
        };
        let _ = timeout(DRAIN_WAIT, drain).await;
    }
}

/// Reads the CONNECT and attaches the client; `None` when the connection
/// ends before that.
async fn accept<S: Socket>(
    stream: S,
    peer: Peer,
    broker: Arc<BrokerState>,
    order: Arc<ArrivalOrder>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Conn<S>> {
    let limits = &broker.settings().limits;
    let mut wire = Wire::new(stream, Codec::new(limits.max_packet_size));
    let Peer {
        addr: peer,
        identity,
    } = peer;
    let connect_timeout = Duration::from_secs(limits.connect_timeout_secs);
    let connect = tokio::select! {
        read = timeout(connect_timeout, read_connect(&mut wire, broker.metrics())) => read,
        _ = shutdown.changed() => return None,
    };
    let connect = match connect {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
        Ok(Err(ConnectFailure::Io)) => return None,
        Ok(Err(ConnectFailure::Decode(error))) => {
            tracing::info!(%peer, %error, "CONNECT refused");
            refuse_connect(wire, error, broker.metrics()).await;
            return None;
        }
        Ok(Ok(connect)) => *connect,
    };
    wire.release_empty_buffers();
    // Admission (failed-login throttle, allow_anonymous, password file)
    // before the CONNECT touches any session; from here on the username is
    // the one the client was admitted with, whose ACL rights it gets.
    let connect = match broker
        .authenticate(&connect, peer, identity.as_deref())
        .await
    {
        Ok(username) => Connect {
            username: username.map(|name| name.to_string()),
            ..connect
        },
        Err(reason) => {
            let refusal = crate::broker::Refusal::new(connect.version, reason);
            tracing::info!(%peer, reason = %refusal.reason, "CONNECT refused");
            if let Some(connack) = refusal.connack {
                wire.refuse(*connack, broker.metrics()).await;
            }
            return None;
        }
    };
    let maximum_packet_size = connect.maximum_packet_size;
    let topic_alias_maximum = connect.topic_alias_maximum;
    if let Some(max) = maximum_packet_size {
        wire.codec.set_max_outgoing(max);
    }
    // v5 enhanced authentication: its AUTH exchange runs before the
    // CONNACK, and within the connect timeout too.
    let authenticated = match connect.authentication_method.as_deref() {
        None => None,
        Some(method) => {
            let exchange = exchange_auth(&mut wire, &broker, method, &connect);
            let outcome = tokio::select! {
                outcome = timeout(connect_timeout, exchange) => outcome.unwrap_or(Err(None)),
                _ = shutdown.changed() => return None,
            };
            match outcome {
                Ok(authenticated) => {
                    broker.enhanced_auth_ended(&connect.client_id, Some(peer), Ok(()));
                    Some(authenticated)
                }
                // The client left, broke off or took too long.
                Err(None) => return None,
                Err(Some(refusal)) => {
                    broker.enhanced_auth_ended(&connect.client_id, Some(peer), Err(&refusal));
                    let connack = ConnAck {
                        reason: refusal.reason,
                        ..ConnAck::default()
                    };
                    wire.refuse(connack, broker.metrics()).await;
                    return None;
                }
            }
        }
    };
    let origin = crate::broker::Origin {
        peer: Some(peer),
        authenticated,
        bridge: None,
    };
    let Connected {
        mut client,
        signal,
        previous,
    } = match Client::connect_from(&broker, connect, origin, now_ms()) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::info!(%peer, reason = %refusal.reason, "CONNECT refused");
            if let Some(connack) = refusal.connack {
                wire.refuse(*connack, broker.metrics()).await;
            }
            return None;
        }
    };
    if let Some(previous) = previous {
        // Bounded: a stuck old connection must not hold the new one
        // forever; it can change nothing once this one resumes.
        let _ = timeout(TAKEOVER_WAIT, previous.finished()).await;
    }
    client.resume(now_ms());
    wire.codec
        .set_outbound_topic_aliases(topic_alias_maximum.min(limits.max_outbound_topic_aliases));
    // A client need not wait for the CONNACK: what it sent behind the
    // CONNECT may already be in the input, and the socket will not turn
    // readable again for it.
    let backlog = !wire.input().is_empty();
    Some(Conn {
        wire,
        client,
        signal,
        held: Held::default(),
        pending: PendingStamp { order, stamp: None },
        waiting: None,
        last_read_ms: now_ms(),
        stalled_since_ms: 0,
        alarm: TimerId::default(),
        alarm_at: 0,
        durable_epoch: 0,
        backlog,
    })
}

/// A connection being served.
struct Conn<S> {
    wire: Wire<S>,
    client: Client,
    signal: Arc<ConnectionSignal>,
    held: Held,
    pending: PendingStamp,
    /// While reading is held back by another connection (arrival order) or
    /// by the journal's backlog: what resolves when it may go on.
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    last_read_ms: u64,
    /// Since when output has waited without the client reading any of it
    /// (0: it has not).
    stalled_since_ms: u64,
    /// The alarm armed on the broker's timer wheel, and for when (0: none).
    alarm: TimerId,
    alarm_at: u64,
    /// The journal settlement this connection last registered for.
    durable_epoch: u64,
    /// Whole packets wait in the input, left while acknowledgements were
    /// held at their bound.
    backlog: bool,
}

impl<S: Socket> Conn<S> {
    fn broker(&self) -> &Arc<BrokerState> {
        self.client.broker()
    }

    /// Serves the connection until it must close; returns why.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Close> {
        for _ in 0..ROUNDS_PER_POLL {
            match self.round(cx) {
                Round::Progress => {}
                Round::Idle => return Poll::Pending,
                Round::Close(close) => return Poll::Ready(close),
            }
        }
        // Busy: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One round over everything the connection waits for.
    fn round(&mut self, cx: &mut Context<'_>) -> Round {
        match self.signal.stop() {
            Some(Stop::TakenOver) => return Round::Close(self.finish_reading(cx)),
            Some(Stop::ShuttingDown) => {
                return Round::Close(Close::ByServer(ReasonCode::SERVER_SHUTTING_DOWN));
            }
            Some(Stop::Kicked) => {
                return Round::Close(Close::ByServer(ReasonCode::ADMINISTRATIVE_ACTION));
            }
            None => {}
        }
        let now = now_ms();
        if self.signal.take_alarm()
            && let Some(close) = self.deadline_passed(now)
        {
            return Round::Close(close);
        }
        let mut progress = false;
        match self.release_durable(cx) {
            Ok(released) => progress |= released,
            Err(close) => return Round::Close(close),
        }
        if self.wire.output_len() < PUMP_BYTES {
            let (output, more) = self.client.pump(now, PUMP_BYTES);
            progress |= more;
            self.send(output);
        }
        match self.write(cx, now) {
            Ok(wrote) => progress |= wrote,
            Err(close) => return Round::Close(close),
        }
        match self.read(cx) {
            Ok(read) => progress |= read,
            Err(close) => return Round::Close(close),
        }
        self.arm_alarm();
        if self.signal.poll_woken(cx).is_ready() {
            progress = true;
        }
        if progress {
            Round::Progress
        } else {
            Round::Idle
        }
    }

    fn send(&mut self, output: Output) {
        send(&mut self.wire, &mut self.client, &mut self.held, output);
    }

    /// Releases held packets whose tickets are durable; `Ok(true)` if any.
    fn release_durable(&mut self, cx: &mut Context<'_>) -> Result<bool, Close> {
        let mut released = false;
        while !self.held.is_empty() {
            let ticket = self.held.oldest_ticket();
            let durable =
                self.client
                    .broker()
                    .journal()
                    .poll_durable(ticket, &mut self.durable_epoch, cx);
            match durable {
                Poll::Ready(Ok(())) => {
                    let packets = self.held.release_oldest();
                    self.wire.encode(&mut self.client, packets);
                    released = true;
                }
                Poll::Ready(Err(error)) => {
                    tracing::error!(client_id = %self.client.client_id(), %error, "closing: acknowledgements cannot be made durable");
                    self.held.clear();
                    return Err(Close::ByServer(match error {
                        StoreError::Full(_) => ReasonCode::QUOTA_EXCEEDED,
                        _ => ReasonCode::UNSPECIFIED_ERROR,
                    }));
                }
                Poll::Pending => break,
            }
        }
        Ok(released)
    }

    /// Writes what the socket takes; keeps track of a client that stopped
    /// reading.
    fn write(&mut self, cx: &mut Context<'_>, now: u64) -> Result<bool, Close> {
        if !self.wire.has_output() {
            self.stalled_since_ms = 0;
            return Ok(false);
        }
        let wrote = self
            .wire
            .try_write(cx, self.client.broker().metrics())
            .map_err(|_| Close::Lost)?;
        if wrote {
            self.stalled_since_ms = 0;
        } else if self.stalled_since_ms == 0 {
            self.stalled_since_ms = now;
        }
        Ok(wrote)
    }

    /// Reads and handles what the client sent, unless something holds
    /// reading back.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, Close> {
        if let Some(waiting) = &mut self.waiting {
            if waiting.as_mut().poll(cx).is_pending() {
                return Ok(false);
            }
            self.waiting = None;
            if let Some(stamp) = self.pending.stamp {
                self.handle(stamp)?;
            }
            return Ok(true);
        }
        let limits = &self.broker().settings().limits;
        if self.wire.output_len() >= OUTPUT_LIMIT
            || self.held.acks() >= usize::from(limits.receive_maximum)
        {
            return Ok(false);
        }
        if self.backlog {
            // Packets read earlier and left while acknowledgements were
            // held at their bound: handle them before reading more.
            self.backlog = false;
            self.handle_read()?;
            return Ok(true);
        }
        if self.broker().journal().congested() {
            let broker = self.broker().clone();
            self.waiting = Some(Box::pin(async move { broker.journal().relieved().await }));
            return Ok(true);
        }
        match self.wire.stream.poll_readable(cx) {
            Poll::Pending => return Ok(false),
            Poll::Ready(Err(_)) => return Err(Close::Lost),
            Poll::Ready(Ok(())) => {}
        }
        match self.wire.try_read(cx, self.client.broker().metrics()) {
            Read::Data => {}
            Read::Empty => return Ok(true),
            Read::Closed => {
                // Handle what arrived before the end (a DISCONNECT).
                let close = handle_input(&mut self.wire, &mut self.client, &mut self.held, None)
                    .err()
                    .unwrap_or(Close::Lost);
                return Err(close);
            }
        }
        self.last_read_ms = now_ms();
        self.handle_read()?;
        Ok(true)
    }

    /// Stamps what was read and handles it.
    fn handle_read(&mut self) -> Result<(), Close> {
        let stamp = self
            .pending
            .order
            .stamp(has_subscription_change(self.wire.input()));
        self.pending.stamp = Some(stamp);
        self.handle(stamp)
    }

    /// Handles the input read under `stamp`; a PUBLISH that must wait for
    /// another connection's earlier subscription change stops it.
    fn handle(&mut self, stamp: Stamp) -> Result<(), Close> {
        let max_acks = usize::from(self.broker().settings().limits.receive_maximum);
        let handled = handle_input(
            &mut self.wire,
            &mut self.client,
            &mut self.held,
            Some((&self.pending.order, stamp, max_acks)),
        )?;
        match handled {
            Handled::All => self.pending.release(),
            Handled::AcksHeld => {
                self.pending.release();
                self.backlog = true;
            }
            Handled::Blocked => {
                let order = self.pending.order.clone();
                self.waiting = Some(Box::pin(async move { order.earlier_handled(stamp).await }));
            }
        }
        Ok(())
    }

    /// When the keep alive expires, if there is one.
    fn keep_alive_deadline(&self) -> Option<u64> {
        self.client
            .keep_alive_limit()
            .map(|limit| self.last_read_ms + limit.as_millis() as u64)
    }

    /// When output that waits unread makes this a slow consumer.
    fn write_deadline(&self) -> Option<u64> {
        let write_timeout_ms = self.broker().settings().limits.write_timeout_secs * 1000;
        (self.stalled_since_ms > 0).then(|| self.stalled_since_ms + write_timeout_ms)
    }

    /// The keep alive or the write deadline, whichever comes first.
    fn next_deadline(&self) -> Option<u64> {
        self.keep_alive_deadline()
            .into_iter()
            .chain(self.write_deadline())
            .min()
    }

    /// Why the connection must close now, if a deadline passed.
    fn deadline_passed(&mut self, now: u64) -> Option<Close> {
        self.alarm_at = 0;
        if self.keep_alive_deadline().is_some_and(|at| at <= now) {
            tracing::info!(client_id = %self.client.client_id(), "keep alive expired");
            return Some(Close::ByServer(ReasonCode::KEEP_ALIVE_TIMEOUT));
        }
        if self.write_deadline().is_some_and(|at| at <= now) {
            self.broker()
                .metrics()
                .slow_consumer_closed(self.client.client_id());
            return Some(Close::Stalled);
        }
        None
    }

    /// Keeps the alarm armed no later than the next deadline. It is moved
    /// only when it must ring earlier, or after it rang, not on every read.
    fn arm_alarm(&mut self) {
        let Some(deadline) = self.next_deadline() else {
            return;
        };
        if self.alarm_at != 0 && self.alarm_at <= deadline {
            return;
        }
        let timers = self.client.broker().timers();
        if self.alarm_at != 0 {
            timers.cancel(self.alarm);
        }
        self.alarm = timers.arm_connection_alarm(deadline, &self.signal);
        self.alarm_at = deadline;
    }

    /// Taken over: what the client sent before the takeover is still handled
    /// (an acknowledgement sent just before it reconnected must count), then
    /// the connection closes.
    fn finish_reading(&mut self, cx: &mut Context<'_>) -> Close {
        let metrics = self.client.broker().metrics();
        while self.wire.input().len() < DRAIN_BYTES && self.wire.try_read(cx, metrics) == Read::Data
        {
        }
        let mut answers = Held::default();
        match handle_input(&mut self.wire, &mut self.client, &mut answers, None) {
            Err(Close::ByServer(reason)) if reason != ReasonCode::SESSION_TAKEN_OVER => {
                Close::ByServer(reason)
            }
            _ => Close::ByServer(ReasonCode::SESSION_TAKEN_OVER),
        }
    }

    /// Answers to packets handled before the close still go out, then the
    /// DISCONNECT where the protocol has one; the session is released, then
    /// the socket closed gracefully.
    async fn finish(mut self, close: Close) {
        self.pending.release();
        if self.alarm_at != 0 {
            self.client.broker().timers().cancel(self.alarm);
        }
        if !matches!(close, Close::Lost | Close::Stalled) {
            let last = self.client.take_output();
            let ticket = self.held.newest_ticket().max(last.ticket);
            let mut packets = self.held.release_all();
            packets.extend(last.packets);
            let durable = timeout(
                LAST_WORDS_WAIT,
                self.client.broker().journal().durable(ticket),
            )
            .await;
            if !matches!(durable, Ok(Ok(()))) && !packets.is_empty() {
                tracing::error!(client_id = %self.client.client_id(), "acknowledgements withheld: not durable");
                packets.clear();
            }
            if let Close::ByServer(reason) = close
                && self.client.version() == Version::V5
            {
                packets.push(Packet::Disconnect(Disconnect::new(reason)));
            }
            self.wire.encode(&mut self.client, packets);
            self.wire
                .write_all_within(LAST_WORDS_WAIT, self.client.broker().metrics())
                .await;
        }
        // The session is released before the goodbye drain, so a client
        // that reconnects as soon as it sees the close finds the outcome
        // settled.
        self.client.finish(close, now_ms());
        self.signal.finish();
        self.wire.close().await;
    }
}

/// The stamp of the read whose packets are being handled, released once
/// they are, or when the connection ends in any way (a task cut at shutdown
/// included), so it never holds other connections back.
struct PendingStamp {
    order: Arc<ArrivalOrder>,
    stamp: Option<Stamp>,
}

impl PendingStamp {
    fn release(&mut self) {
        if let Some(stamp) = self.stamp.take() {
            self.order.handled(stamp);
        }
    }
}

impl Drop for PendingStamp {
    fn drop(&mut self) {
        self.release();
    }
}

/// What one round over a connection found.
enum Round {
    Progress,
    Idle,
    Close(Close),
}

/// How far `handle_input` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Every whole packet in the input.
    All,
    /// Up to a PUBLISH that must wait for another connection's earlier
    /// SUBSCRIBE or UNSUBSCRIBE.
    Blocked,
    /// Up to the Receive Maximum of acknowledgements held for the journal:
    /// the rest waits in the input (and nothing more is read) until some go
    /// out, the v5 contract applied to every client.
    AcksHeld,
}

/// Writes what the client core handed back, or holds it while it waits
/// for the journal (keeping the order of everything written).
fn send<S: Socket>(wire: &mut Wire<S>, client: &mut Client, held: &mut Held, output: Output) {
    if output.ticket != Ticket::NONE || !held.is_empty() {
        held.hold(output);
    } else if !output.packets.is_empty() {
        wire.encode(client, output.packets);
    }
}

/// Decodes and handles every whole packet in the input, holding the
/// answers that wait for the journal. With an arrival stamp, stops before a
/// PUBLISH that an earlier subscription change must precede, and once the
/// acknowledgements held reach their bound.
fn handle_input<S: Socket>(
    wire: &mut Wire<S>,
    client: &mut Client,
    held: &mut Held,
    bounds: Option<(&ArrivalOrder, Stamp, usize)>,
) -> Result<Handled, Close> {
    let result = loop {
        if let Some((order, stamp, max_acks)) = bounds {
            if held.acks() >= max_acks && !wire.input().is_empty() {
                break Ok(Handled::AcksHeld);
            }
            if wire.input().first().is_some_and(|byte| byte >> 4 == 3) && order.must_wait(stamp) {
                break Ok(Handled::Blocked);
            }
        }
        match wire.decode() {
            Ok(Some(packet)) => {
                tracing::trace!(client_id = %client.client_id(), ?packet, "received");
                let handled = client.handle(packet, now_ms());
                // Answered packet by packet, so the acknowledgements held
                // are counted as they pile up.
                let output = client.take_output();
                send(wire, client, held, output);
                if let Err(close) = handled {
                    break Err(close);
                }
            }
            Ok(None) => break Ok(Handled::All),
            Err(error) => {
                tracing::info!(client_id = %client.client_id(), %error, "closing connection");
                break Err(Close::ByServer(error.reason()));
            }
        }
    };
    wire.release_empty_buffers();
    result
}

enum ConnectFailure {
    Io,
    Decode(DecodeError),
}

async fn read_connect<S: Socket>(
    wire: &mut Wire<S>,
    metrics: &Metrics,
) -> Result<Box<Connect>, ConnectFailure> {
    match read_packet(wire, metrics).await? {
        Packet::Connect(connect) => Ok(connect),
        _ => Err(ConnectFailure::Decode(DecodeError::Protocol("not CONNECT"))),
    }
}

use crate::broker::enhanced_auth::{AuthRefusal, AuthStep, Authenticated};

/// Runs a v5 enhanced authentication exchange before the CONNACK: the
/// broker's AUTH challenges go out, the client's AUTH answers come in.
/// `Err(None)`: the client left (or sent DISCONNECT); `Err(Some(_))`: the
/// CONNACK reason to refuse it with. Anything from the client but AUTH or
/// DISCONNECT before the CONNACK is a protocol error [MQTT-3.1.2-30].
async fn exchange_auth<S: Socket>(
    wire: &mut Wire<S>,
    broker: &BrokerState,
    method: &str,
    connect: &Connect,
) -> Result<Authenticated, Option<AuthRefusal>> {
    let data = connect.authentication_data.as_deref();
    let mut step = broker.start_enhanced_auth(method, data, connect.username.as_deref());
    loop {
        let (challenge, conversation) = match step {
            AuthStep::Accept(authenticated) => return Ok(authenticated),
            AuthStep::Refuse(refusal) => return Err(Some(refusal)),
            AuthStep::Continue(challenge, conversation) => (challenge, conversation),
        };
        wire.encode_raw(Packet::Auth(challenge));
        let written = std::future::poll_fn(|cx| match wire.try_write(cx, broker.metrics()) {
            Err(_) => Poll::Ready(false),
            Ok(_) if !wire.has_output() => Poll::Ready(true),
            Ok(_) => Poll::Pending,
        });
        if !written.await {
            return Err(None);
        }
        let answer = match read_packet(wire, broker.metrics()).await {
            Ok(Packet::Auth(answer)) => answer,
            Ok(Packet::Disconnect(_)) | Err(ConnectFailure::Io) => return Err(None),
            Ok(_) => {
                return Err(Some(AuthRefusal {
                    reason: ReasonCode::PROTOCOL_ERROR,
                    why: "a packet other than AUTH before the CONNACK",
                }));
            }
            Err(ConnectFailure::Decode(error)) => {
                return Err(Some(AuthRefusal {
                    reason: error.reason(),
                    why: "AUTH not readable",
                }));
            }
        };
        step = conversation.next(&answer);
    }
}

/// The next whole packet, reading as needed.
async fn read_packet<S: Socket>(
    wire: &mut Wire<S>,
    metrics: &Metrics,
) -> Result<Packet, ConnectFailure> {
    loop {
        match wire.decode() {
            Ok(Some(packet)) => return Ok(packet),
            Ok(None) => {}
            Err(error) => return Err(ConnectFailure::Decode(error)),
        }
        let read = std::future::poll_fn(|cx| match wire.try_read(cx, metrics) {
            Read::Empty => Poll::Pending,
            read => Poll::Ready(read),
        })
        .await;
        if read == Read::Closed {
            return Err(ConnectFailure::Io);
        }
    }
}

/// Answers a CONNECT that could not be read: an unsupported protocol level
/// gets the 3.1.1 CONNACK 0x01 [MQTT-3.1.2-2]; a v5 CONNECT that is
/// malformed or breaks the protocol gets a CONNACK with the reason (4.13);
/// anything else just closes, as 3.1.1 has no code for it.
async fn refuse_connect<S: Socket>(wire: Wire<S>, error: DecodeError, metrics: &Metrics) {
    let answer = match (error, wire.codec.version()) {
        (DecodeError::UnsupportedVersion(_), _) => true,
        (DecodeError::BadProtocolName, _) => false,
        (_, version) => version == Some(Version::V5),
    };
    if answer {
        let connack = ConnAck {
            reason: error.reason(),
            ..ConnAck::default()
        };
        wire.refuse(connack, metrics).await;
    } else {
        wire.close().await;
    }
}

/// Packets that may go out only once a journal ticket is durable (DESIGN §4
/// `sync`), in the order they were produced, each batch with the ticket it
/// waits for. Batches that need no flush queue behind earlier ones, so the
/// client sees every packet in order. Allocated only while something is
/// held.
#[derive(Default)]
struct Held {
    waiting: Option<Box<Batches>>,
}

#[derive(Default)]
struct Batches {
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
        let waiting = self.waiting.get_or_insert_default();
        waiting.acks += acks_in(&output.packets);
        waiting.batches.push_back((ticket, output.packets));
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_none()
    }

    /// Acknowledgements held.
    fn acks(&self) -> usize {
        self.waiting.as_ref().map_or(0, |w| w.acks)
    }

    fn oldest_ticket(&self) -> Ticket {
        self.waiting
            .as_ref()
            .and_then(|w| w.batches.front())
            .map_or(Ticket::NONE, |(t, _)| *t)
    }

    fn newest_ticket(&self) -> Ticket {
        self.waiting
            .as_ref()
            .and_then(|w| w.batches.back())
            .map_or(Ticket::NONE, |(t, _)| *t)
    }

    fn release_oldest(&mut self) -> Vec<Packet> {
        let Some(waiting) = &mut self.waiting else {
            return Vec::new();
        };
        let packets = waiting
            .batches
            .pop_front()
            .map(|(_, packets)| packets)
            .unwrap_or_default();
        waiting.acks -= acks_in(&packets);
        if waiting.batches.is_empty() {
            self.waiting = None;
        }
        packets
    }

    fn release_all(&mut self) -> Vec<Packet> {
        self.waiting
            .take()
            .map(|w| w.batches.into_iter().flat_map(|(_, p)| p).collect())
            .unwrap_or_default()
    }

    fn clear(&mut self) {
        self.waiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs this much task state (besides its socket
    /// registration and session); docs/BENCHMARKS.md has the whole budget.
    /// Tokio pads a task to 128 bytes: with up to 264 bytes of state it
    /// takes 384, with 272 it takes 512 (measured: 1 370 against 1 435 bytes
    /// per idle connection).
    #[test]
    fn a_served_connection_is_a_small_task() {
        assert!(
            std::mem::size_of::<Task<tokio::net::TcpStream>>() <= 264,
            "{} bytes",
            std::mem::size_of::<Task<tokio::net::TcpStream>>()
        );
    }
}
