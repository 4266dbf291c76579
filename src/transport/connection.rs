//! One task per connection: read frames, feed the client, write what it
//! returns, and watch the keep alive, takeover and shutdown signals.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use crate::broker::{BrokerState, Client, Close, Connected, now_ms};
use crate::protocol::{
    Codec, ConnAck, DecodeError, Disconnect, EncodeError, Packet, ReasonCode, Version,
};

/// Room reserved for one read once the socket is readable. Buffers are
/// released whenever they run empty, so an idle connection holds none.
const READ_BUFFER: usize = 8 * 1024;

/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

pub async fn serve(stream: TcpStream, peer: SocketAddr, broker: Arc<BrokerState>) {
    broker.metrics.connection_opened();
    let span = tracing::info_span!("connection", %peer, client_id = tracing::field::Empty);
    run(stream, &broker).instrument(span).await;
    broker.metrics.connection_closed();
}

async fn run(mut stream: TcpStream, broker: &Arc<BrokerState>) {
    let limits = &broker.settings.limits;
    let mut codec = Codec::new(limits.max_packet_size);
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();

    let connect_timeout = Duration::from_secs(limits.connect_timeout_secs);
    let connect = match timeout(
        connect_timeout,
        read_connect(&mut stream, &mut codec, &mut input),
    )
    .await
    {
        Err(_) => {
            tracing::debug!("no CONNECT within the connect timeout");
            return;
        }
        Ok(Err(ConnectFailure::Io)) => return,
        Ok(Err(ConnectFailure::Decode(error))) => {
            tracing::info!(%error, "CONNECT refused");
            refuse_connect(&mut stream, &codec, error).await;
            return;
        }
        Ok(Ok(connect)) => connect,
    };
    let version = connect.version;
    let maximum_packet_size = connect.maximum_packet_size;
    let Connected {
        mut client,
        mut kicked,
        previous_finished,
    } = match Client::connect(broker, *connect) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::info!(reason = %refusal.reason, "CONNECT refused");
            if let Some(connack) = refusal.connack {
                let _ = write_packets(
                    &mut stream,
                    &codec,
                    &mut output,
                    vec![Packet::ConnAck(*connack)],
                )
                .await;
            }
            return;
        }
    };
    tracing::Span::current().record("client_id", client.client_id());
    if let Some(finished) = previous_finished {
        // Bounded: a stuck old connection must not hold the new one forever.
        let _ = timeout(TAKEOVER_WAIT, finished).await;
    }
    client.resume();
    if let Some(max) = maximum_packet_size {
        codec.set_max_outgoing(max);
    }

    let session = client.session().clone();
    let mut shutdown = broker.shutdown.clone();
    let keep_alive = client.keep_alive_limit();
    let mut last_read = Instant::now();
    let mut takeover_done = None;
    let mut held = Held::default();
    let close = loop {
        if let Err(close) = flush(&mut stream, &codec, &mut output, &mut client, &mut held).await {
            break close;
        }
        let keep_alive_deadline = keep_alive.map(|limit| last_read + limit);
        let durable_after = held.oldest_epoch();
        tokio::select! {
            // Reading goes on while acknowledgements wait for their flush,
            // so one flush covers everything the client pipelines meanwhile.
            durable = broker.commit.durable(durable_after.unwrap_or(0)), if durable_after.is_some() => {
                if let Err(error) = durable {
                    tracing::error!(%error, "closing: acknowledgements cannot be made durable");
                    held.clear();
                    break Close::ByServer(ReasonCode::UNSPECIFIED_ERROR);
                }
                let packets = held.release_oldest();
                if let Err(close) = write_batch(&mut stream, &codec, &mut output, &mut client, packets).await {
                    break close;
                }
            }
            ready = stream.readable() => {
                if ready.is_err() {
                    break Close::Lost;
                }
                input.reserve(READ_BUFFER);
                match stream.try_read_buf(&mut input) {
                    Ok(0) => break Close::Lost,
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break Close::Lost,
                }
                last_read = Instant::now();
                if let Err(close) = handle_input(&mut codec, &mut input, &mut client) {
                    break close;
                }
                if input.is_empty() {
                    input = BytesMut::new();
                }
            }
            _ = session.woken() => {}
            takeover = &mut kicked => {
                // Handle what already arrived (an acknowledgement sent just
                // before the client reconnected must count), then close.
                let mut close = Close::ByServer(ReasonCode::SESSION_TAKEN_OVER);
                if let Ok(takeover) = takeover {
                    close = Close::ByServer(takeover.reason);
                    takeover_done = Some(takeover.done);
                }
                while let Ok(read) = stream.try_read_buf(&mut input) {
                    if read == 0 {
                        break;
                    }
                }
                if let Err(early) = handle_input(&mut codec, &mut input, &mut client) {
                    close = early;
                }
                break close;
            }
            _ = sleep_until(keep_alive_deadline.unwrap_or_else(Instant::now)), if keep_alive_deadline.is_some() => {
                tracing::info!("keep alive expired");
                break Close::ByServer(ReasonCode::KEEP_ALIVE_TIMEOUT);
            }
            _ = shutdown.changed() => break Close::ByServer(ReasonCode(0x8B)),
        }
    };

    // Answers to packets handled before the close still go out, then the
    // DISCONNECT where the protocol has one.
    let durable_after = held.newest_epoch().max(client.take_durable_after());
    let mut last_words = held.release_all();
    last_words.extend(client.take_outgoing());
    if !last_words.is_empty()
        && let Err(error) = broker.commit.durable(durable_after).await
    {
        tracing::error!(%error, "acknowledgements withheld: not durable");
        last_words.clear();
    }
    if let Close::ByServer(reason) = close
        && version == Version::V5
    {
        last_words.push(Packet::Disconnect(Disconnect::new(reason)));
    }
    if close != Close::Lost && !last_words.is_empty() {
        let _ = write_batch(&mut stream, &codec, &mut output, &mut client, last_words).await;
    }
    let _ = stream.shutdown().await;
    client.finish(close);
    if let Some(done) = takeover_done {
        let _ = done.send(());
    }
}

/// Decodes and handles every whole packet in `input`.
fn handle_input(codec: &mut Codec, input: &mut BytesMut, client: &mut Client) -> Result<(), Close> {
    loop {
        match codec.decode(input) {
            Ok(Some(packet)) => {
                tracing::trace!(?packet, "received");
                client.handle(packet, now_ms())?;
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::info!(%error, "closing connection");
                return Err(Close::ByServer(error.reason()));
            }
        }
    }
}

enum ConnectFailure {
    Io,
    Decode(DecodeError),
}

async fn read_connect(
    stream: &mut TcpStream,
    codec: &mut Codec,
    input: &mut BytesMut,
) -> Result<Box<crate::protocol::Connect>, ConnectFailure> {
    loop {
        match codec.decode(input) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => {
                return Err(ConnectFailure::Decode(DecodeError::Protocol("not CONNECT")));
            }
            Ok(None) => {}
            Err(error) => return Err(ConnectFailure::Decode(error)),
        }
        match stream.read_buf(input).await {
            Ok(0) | Err(_) => return Err(ConnectFailure::Io),
            Ok(_) => {}
        }
    }
}

/// Answers a CONNECT that could not be read: an unsupported protocol level
/// gets the 3.1.1 CONNACK 0x01 [MQTT-3.1.2-2]; a v5 CONNECT that is
/// malformed or breaks the protocol gets a CONNACK with the reason (4.13);
/// anything else just closes, as 3.1.1 has no code for it.
async fn refuse_connect(stream: &mut TcpStream, codec: &Codec, error: DecodeError) {
    let answer = match (error, codec.version()) {
        (DecodeError::UnsupportedVersion(_), _) => true,
        (DecodeError::BadProtocolName, _) => false,
        (_, version) => version == Some(Version::V5),
    };
    if answer {
        let connack = ConnAck {
            reason: error.reason(),
            ..ConnAck::default()
        };
        let mut output = BytesMut::new();
        let _ = write_packets(stream, codec, &mut output, vec![Packet::ConnAck(connack)]).await;
    }
}

/// Packets that may go out only once a store write is durable (DESIGN §4
/// `sync`), in the order they were produced, each batch with the write it
/// waits for. Batches that need no flush queue behind earlier ones, so the
/// client sees every packet in order.
#[derive(Default)]
struct Held {
    batches: VecDeque<(u64, Vec<Packet>)>,
}

impl Held {
    fn hold(&mut self, epoch: u64, packets: Vec<Packet>) {
        let epoch = epoch.max(self.newest_epoch());
        self.batches.push_back((epoch, packets));
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn oldest_epoch(&self) -> Option<u64> {
        self.batches.front().map(|(epoch, _)| *epoch)
    }

    fn newest_epoch(&self) -> u64 {
        self.batches.back().map_or(0, |(epoch, _)| *epoch)
    }

    fn release_oldest(&mut self) -> Vec<Packet> {
        self.batches
            .pop_front()
            .map(|(_, packets)| packets)
            .unwrap_or_default()
    }

    fn release_all(&mut self) -> Vec<Packet> {
        self.batches
            .drain(..)
            .flat_map(|(_, packets)| packets)
            .collect()
    }

    fn clear(&mut self) {
        self.batches.clear();
    }
}

/// Takes the client's waiting packets and queued messages, a batch at a
/// time, and writes them, or holds them while they wait for a flush.
async fn flush(
    stream: &mut TcpStream,
    codec: &Codec,
    output: &mut BytesMut,
    client: &mut Client,
    held: &mut Held,
) -> Result<(), Close> {
    let (packets, more) = client.pump(now_ms());
    if packets.is_empty() {
        return Ok(());
    }
    let durable_after = client.take_durable_after();
    if more {
        client.session().wake();
    }
    if durable_after > 0 || !held.is_empty() {
        held.hold(durable_after, packets);
        return Ok(());
    }
    write_batch(stream, codec, output, client, packets).await
}

/// Encodes and writes one batch; a message larger than the client accepts
/// is skipped for this client.
async fn write_batch(
    stream: &mut TcpStream,
    codec: &Codec,
    output: &mut BytesMut,
    client: &mut Client,
    packets: Vec<Packet>,
) -> Result<(), Close> {
    let mut publishes = 0;
    for packet in &packets {
        match codec.encode(packet, output) {
            Ok(_) => {
                if matches!(packet, Packet::Publish(_)) {
                    publishes += 1;
                }
            }
            // The codec already retried other packets without their Reason
            // String; what is still too large cannot be sent at all.
            Err(EncodeError::TooLarge { size }) => match packet {
                Packet::Publish(publish) => {
                    tracing::debug!(size, topic = %publish.topic, "message larger than the client accepts: skipped");
                    client.skip_oversized(publish);
                }
                _ => tracing::debug!(
                    size,
                    "packet larger than the client accepts even without reason string: skipped"
                ),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot encode packet");
            }
        }
    }
    stream.write_all(output).await.map_err(|_| Close::Lost)?;
    *output = BytesMut::new();
    client.broker().metrics.messages_sent_add(publishes);
    Ok(())
}

async fn write_packets(
    stream: &mut TcpStream,
    codec: &Codec,
    output: &mut BytesMut,
    packets: Vec<Packet>,
) -> std::io::Result<()> {
    for packet in &packets {
        if let Err(error) = codec.encode(packet, output) {
            tracing::warn!(%error, "cannot encode packet");
        }
    }
    stream.write_all(output).await?;
    output.clear();
    Ok(())
}
