//! One subscribing connection (a plain subscriber, a member of a shared
//! subscription, or a member of a stream's consumer group): acknowledges
//! every delivery as a real client must (PUBACK; PUBREC, then PUBCOMP for
//! each PUBREL) and records latency, losses, duplicates and ordering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mqttbytes::QoS;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::BenchError;
use crate::client::{Conn, Incoming, SessionMode, Version};
use crate::flow::EndToEnd;
use crate::keyed::{KeyStamp, owner_of};
use crate::progress::{Feed, Live};
use crate::publisher::Clock;
use crate::stats::{Delivery, DeliveryTracker, Histogram, Stamp};

/// The messages a subscriber hears from.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Publishers `first..first + count`, each numbering `per_publisher`
    /// messages on its own topic.
    Publishers {
        first: u32,
        count: u32,
        per_publisher: u64,
    },
    /// The run tagged `run` over keys `0..per_key.len()`, key `k` carrying
    /// `per_key[k]` messages, each key numbered by the one of `publishers`
    /// publishers that owns it.
    Keys {
        run: u32,
        publishers: u32,
        per_key: Arc<[u64]>,
    },
}

/// Where a received payload belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Message `seq` of source `source` (a publisher, or a key), sent at
    /// `sent_ns`.
    Source { source: u32, seq: u64, sent_ns: u64 },
    /// Stamped, but not by this run, or by a publisher that does not own
    /// the key it names.
    Foreign,
    /// Too short to carry a stamp.
    Unstamped,
}

impl Expect {
    pub fn tracker(&self) -> DeliveryTracker {
        match self {
            Expect::Publishers {
                first,
                count,
                per_publisher,
            } => DeliveryTracker::new(*first, *count, *per_publisher),
            Expect::Keys { per_key, .. } => DeliveryTracker::with_limits(0, per_key.to_vec()),
        }
    }

    pub fn place(&self, payload: &[u8]) -> Placed {
        match self {
            Expect::Publishers { .. } => match Stamp::read(payload) {
                Some(stamp) => Placed::Source {
                    source: stamp.publisher,
                    seq: stamp.seq,
                    sent_ns: stamp.sent_ns,
                },
                None => Placed::Unstamped,
            },
            Expect::Keys {
                run, publishers, ..
            } => match KeyStamp::read(payload) {
                Some(stamp)
                    if stamp.run == *run && owner_of(stamp.key, *publishers) == stamp.publisher =>
                {
                    Placed::Source {
                        source: stamp.key,
                        seq: stamp.seq,
                        sent_ns: stamp.sent_ns,
                    }
                }
                Some(_) => Placed::Foreign,
                None => Placed::Unstamped,
            },
        }
    }
}

/// What one subscriber expects.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    pub filter: String,
    pub qos: QoS,
    pub expect: Expect,
    pub session: SessionMode,
    /// How long to keep listening after the publishers finished and nothing
    /// more arrived.
    pub drain: Duration,
    /// The end-to-end window whose slots deliveries give back, when set.
    pub e2e: Option<Arc<EndToEnd>>,
}

/// Session Expiry Interval of a persistent v5 subscriber: far longer than
/// a run, yet short enough that a session left behind by an aborted run
/// goes away by itself.
pub const PERSISTENT_EXPIRY_SECS: u32 = 300;

/// How long a DISCONNECT waits for the broker to close the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Attempts at starting a persistent subscriber from an empty session.
const EMPTY_SESSION_ATTEMPTS: u32 = 5;

/// Where subscribers connect, and how.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub version: Version,
    pub keepalive: u16,
}

/// Connects a subscriber as `name` and subscribes it. A persistent
/// subscriber first ends whatever session the broker holds for `name`, so
/// that it starts empty and only this run's messages are stored for it.
pub async fn connect(
    name: String,
    spec: &SubscriberSpec,
    to: Endpoint,
    read_chunk: usize,
) -> Result<Conn, BenchError> {
    let mut attempts = 0;
    loop {
        if spec.session != SessionMode::Clean {
            end_session(name.clone(), to).await?;
        }
        let mut conn = Conn::open(name.clone(), to.version, to.addr, None, read_chunk).await?;
        let accepted = conn.connect(to.keepalive, spec.session).await?;
        if spec.session == SessionMode::Clean || !accepted.session_present {
            conn.subscribe(&spec.filter, spec.qos).await?;
            return Ok(conn);
        }
        // A broker may close the clean connection's socket before it has
        // dropped that session, and the persistent CONNECT then resumes it.
        attempts += 1;
        if attempts == EMPTY_SESSION_ATTEMPTS {
            return Err(BenchError::SessionKept {
                client: name,
                attempts,
            });
        }
        conn.disconnect(CLOSE_WAIT).await?;
    }
}

/// Ends the broker's session for `name`, if any: a clean CONNECT discards
/// it and the DISCONNECT ends the clean one.
pub async fn end_session(name: String, to: Endpoint) -> Result<(), BenchError> {
    let mut conn = Conn::open(name, to.version, to.addr, None, 1024).await?;
    conn.connect(to.keepalive, SessionMode::Clean).await?;
    conn.disconnect(CLOSE_WAIT).await
}

/// Ends the sessions of persistent subscribers after a run, so that
/// successive runs do not pile up stored sessions (3.1.1 ones never
/// expire). Each connection is closed before its session is ended, so the
/// broker never sees the clean CONNECT as a takeover. Failures are only
/// logged: the measurement is already complete.
pub async fn end_sessions(names: Vec<String>, conns: Vec<Conn>, to: Endpoint) {
    let closes = conns
        .into_iter()
        .map(|conn| tokio::spawn(conn.disconnect(CLOSE_WAIT)));
    for handle in closes.collect::<Vec<_>>() {
        let _ = handle.await;
    }
    let ends = names.into_iter().map(|name| {
        tokio::spawn(async move {
            let client = name.clone();
            match timeout(2 * CLOSE_WAIT, end_session(name, to)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, client, "cannot end the session of a persistent subscriber");
                }
                Err(_) => {
                    tracing::warn!(client, "timed out ending the session of a persistent subscriber");
                }
            }
        })
    });
    for handle in ends.collect::<Vec<_>>() {
        let _ = handle.await;
    }
}

/// What one subscriber observed.
#[derive(Debug)]
pub struct SubscriberStats {
    pub tracker: DeliveryTracker,
    /// Send-to-receive time of each first copy.
    pub latency: Histogram,
    pub first_rx: Option<Instant>,
    pub last_rx: Option<Instant>,
    /// PUBLISH packets with a payload too short to carry a stamp.
    pub unstamped: u64,
    /// Packets a broker should not send here, and PUBREL for packet ids
    /// never received.
    pub unexpected_packets: u64,
    /// Deliveries at a QoS other than the one subscribed and published with.
    pub wrong_qos: u64,
    pub timed_out: bool,
    pub error: Option<String>,
}

impl SubscriberStats {
    /// Nothing observed yet; deliveries are checked against `tracker`.
    pub fn new(tracker: DeliveryTracker) -> SubscriberStats {
        SubscriberStats {
            tracker,
            latency: Histogram::new(),
            first_rx: None,
            last_rx: None,
            unstamped: 0,
            unexpected_packets: 0,
            wrong_qos: 0,
            timed_out: false,
            error: None,
        }
    }
}

/// Runs one subscriber on a connected and subscribed `conn` until it has
/// every expected message, the publishers are done and the broker has gone
/// quiet for `spec.drain`, an error, or the deadline.
pub async fn run(
    conn: &mut Conn,
    spec: &SubscriberSpec,
    clock: Clock,
    mut publishers_done: watch::Receiver<bool>,
    live: Option<Arc<Live>>,
) -> SubscriberStats {
    let mut stats = SubscriberStats::new(spec.expect.tracker());
    // Packet ids of QoS 2 deliveries awaiting PUBREL.
    let mut awaiting_rel = vec![false; 1 << 16];
    let mut feed = live.map(Feed::new);
    if let Err(e) = listen(
        conn,
        spec,
        clock,
        &mut publishers_done,
        &mut stats,
        &mut awaiting_rel,
        &mut feed,
    )
    .await
    {
        stats.error = Some(e.to_string());
    }
    stats
}

async fn listen(
    conn: &mut Conn,
    spec: &SubscriberSpec,
    clock: Clock,
    publishers_done: &mut watch::Receiver<bool>,
    stats: &mut SubscriberStats,
    awaiting_rel: &mut [bool],
    feed: &mut Option<Feed>,
) -> Result<(), BenchError> {
    let deadline = clock.deadline;
    let mut next_ping = Instant::now() + clock.ping_every;
    let mut quiet_until: Option<Instant> = None;
    loop {
        let got_any = drain_incoming(conn, spec, clock, stats, awaiting_rel, feed.as_ref())?;
        if let Some(feed) = feed {
            feed.update(&stats.tracker);
        }
        if got_any && quiet_until.is_some() {
            quiet_until = Some(Instant::now() + spec.drain);
        }
        let now = Instant::now();
        if now >= next_ping {
            conn.queue_pingreq()?;
            next_ping = now + clock.ping_every;
        }
        if conn.has_pending_writes() {
            match timeout_at(deadline, conn.flush()).await {
                Ok(result) => result?,
                Err(_) => {
                    stats.timed_out = true;
                    return Ok(());
                }
            }
        }
        if stats.tracker.complete() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            stats.timed_out = true;
            return Ok(());
        }
        if quiet_until.is_some_and(|q| now >= q) {
            return Ok(());
        }
        if quiet_until.is_none() && *publishers_done.borrow() {
            quiet_until = Some(now + spec.drain);
        }
        let wake = quiet_until.unwrap_or(deadline).min(next_ping).min(deadline);
        tokio::select! {
            result = conn.fill() => result?,
            changed = publishers_done.changed(), if quiet_until.is_none() => {
                if changed.is_err() {
                    // The run is over without a signal: start draining.
                    quiet_until = Some(Instant::now() + spec.drain);
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
}

/// Handles every complete packet already read; returns whether any PUBLISH
/// arrived.
fn drain_incoming(
    conn: &mut Conn,
    spec: &SubscriberSpec,
    clock: Clock,
    stats: &mut SubscriberStats,
    awaiting_rel: &mut [bool],
    feed: Option<&Feed>,
) -> Result<bool, BenchError> {
    let mut got_any = false;
    while let Some(packet) = conn.decode()? {
        match packet {
            Incoming::Publish {
                qos, pkid, payload, ..
            } => {
                got_any = true;
                let now = Instant::now();
                stats.first_rx.get_or_insert(now);
                stats.last_rx = Some(now);
                if qos != spec.qos {
                    stats.wrong_qos += 1;
                }
                match spec.expect.place(&payload) {
                    Placed::Source {
                        source,
                        seq,
                        sent_ns,
                    } => {
                        if stats.tracker.record(source, seq) == Delivery::New {
                            let latency = clock.now_ns().saturating_sub(sent_ns);
                            stats.latency.record(latency);
                            if let Some(feed) = feed {
                                feed.latency(latency);
                            }
                            if let Some(e2e) = &spec.e2e {
                                e2e.give_back();
                            }
                        }
                    }
                    Placed::Foreign => stats.tracker.reject(),
                    Placed::Unstamped => stats.unstamped += 1,
                }
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => conn.queue_puback(pkid)?,
                    QoS::ExactlyOnce => {
                        if let Some(slot) = awaiting_rel.get_mut(usize::from(pkid)) {
                            *slot = true;
                        }
                        conn.queue_pubrec(pkid)?;
                    }
                }
            }
            Incoming::PubRel { pkid } => {
                match awaiting_rel.get_mut(usize::from(pkid)) {
                    Some(slot) if *slot => *slot = false,
                    _ => stats.unexpected_packets += 1,
                }
                // Answer even an unknown id, as the spec requires.
                conn.queue_pubcomp(pkid)?;
            }
            Incoming::PingResp => {}
            Incoming::Disconnect { .. } => return Err(conn.unexpected(&packet)),
            _ => stats.unexpected_packets += 1,
        }
    }
    Ok(got_any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use mqttbytes::v4;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What the scripted broker saw, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Clean,
        Persistent { answered_present: bool },
        Subscribed,
    }

    async fn read_v4(socket: &mut TcpStream, buf: &mut BytesMut) -> Option<v4::Packet> {
        loop {
            match v4::read(buf, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return None,
            }
            if socket.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// A 3.1.1 broker that claims a session is present for the first
    /// `stale` persistent CONNECTs, and closes each connection after its
    /// DISCONNECT, as a real broker does.
    async fn scripted_broker(listener: TcpListener, mut stale: u32) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = BytesMut::new();
            let Some(v4::Packet::Connect(c)) = read_v4(&mut socket, &mut buf).await else {
                return seen;
            };
            let present = !c.clean_session && stale > 0;
            stale = stale.saturating_sub(u32::from(present));
            seen.push(if c.clean_session {
                Seen::Clean
            } else {
                Seen::Persistent {
                    answered_present: present,
                }
            });
            let mut out = BytesMut::new();
            let _ = v4::ConnAck::new(v4::ConnectReturnCode::Success, present).write(&mut out);
            if socket.write_all(&out).await.is_err() {
                return seen;
            }
            match read_v4(&mut socket, &mut buf).await {
                Some(v4::Packet::Disconnect) => {}
                Some(v4::Packet::Subscribe(s)) => {
                    seen.push(Seen::Subscribed);
                    let mut out = BytesMut::new();
                    let granted = v4::SubscribeReasonCode::Success(QoS::AtLeastOnce);
                    let _ = v4::SubAck::new(s.pkid, vec![granted]).write(&mut out);
                    let _ = socket.write_all(&out).await;
                    return seen;
                }
                _ => return seen,
            }
        }
        seen
    }

    fn spec(session: SessionMode) -> SubscriberSpec {
        SubscriberSpec {
            filter: "bench/r/fanin/+".to_string(),
            qos: QoS::AtLeastOnce,
            expect: Expect::Publishers {
                first: 0,
                count: 1,
                per_publisher: 1,
            },
            session,
            drain: Duration::ZERO,
            e2e: None,
        }
    }

    async fn run_against(stale: u32, session: SessionMode) -> (Result<(), BenchError>, Vec<Seen>) {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            panic!("loopback listener");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("listener address");
        };
        let to = Endpoint {
            addr,
            version: Version::V4,
            keepalive: 30,
        };
        let broker = tokio::spawn(scripted_broker(listener, stale));
        let spec = spec(session);
        let connected = connect("s0".to_string(), &spec, to, 1024).await.map(drop);
        broker.abort();
        let seen = broker.await.unwrap_or_default();
        (connected, seen)
    }

    const PERSISTENT: SessionMode = SessionMode::Persistent { expiry_secs: 300 };

    #[tokio::test]
    async fn persistent_subscriber_ends_the_old_session_before_subscribing() {
        let (connected, seen) = run_against(0, PERSISTENT).await;
        assert!(connected.is_ok(), "{connected:?}");
        assert_eq!(
            seen,
            vec![
                Seen::Clean,
                Seen::Persistent {
                    answered_present: false
                },
                Seen::Subscribed
            ]
        );
    }

    #[tokio::test]
    async fn persistent_subscriber_starts_over_when_a_session_is_still_present() {
        let (connected, seen) = run_against(1, PERSISTENT).await;
        assert!(connected.is_ok(), "{connected:?}");
        assert_eq!(
            seen,
            vec![
                Seen::Clean,
                Seen::Persistent {
                    answered_present: true
                },
                Seen::Clean,
                Seen::Persistent {
                    answered_present: false
                },
                Seen::Subscribed
            ]
        );
    }

    #[tokio::test]
    async fn persistent_subscriber_gives_up_on_a_session_that_never_goes_away() {
        let (connected, _) = run_against(u32::MAX, PERSISTENT).await;
        assert!(matches!(
            connected,
            Err(BenchError::SessionKept {
                attempts: EMPTY_SESSION_ATTEMPTS,
                ..
            })
        ));
    }

    fn key_stamped(run: u32, publisher: u32, key: u32, seq: u64) -> Vec<u8> {
        let mut buf = BytesMut::new();
        KeyStamp {
            sent_ns: 5,
            run,
            publisher,
            key,
            seq,
        }
        .write(&mut buf, 64);
        buf.to_vec()
    }

    #[test]
    fn a_stream_member_places_this_runs_messages_by_key() {
        let expect = Expect::Keys {
            run: 7,
            publishers: 4,
            per_key: Arc::from(vec![2u64; 10]),
        };
        assert_eq!(
            expect.place(&key_stamped(7, 1, 9, 1)),
            Placed::Source {
                source: 9,
                seq: 1,
                sent_ns: 5
            }
        );
        assert_eq!(
            expect.place(&key_stamped(6, 1, 9, 1)),
            Placed::Foreign,
            "an earlier run's message left in the stream"
        );
        assert_eq!(
            expect.place(&key_stamped(7, 2, 9, 1)),
            Placed::Foreign,
            "key 9 belongs to publisher 1"
        );
        assert_eq!(expect.place(&[0; 20]), Placed::Unstamped);
        assert_eq!(expect.tracker().expected(), 20);
    }

    #[tokio::test]
    async fn clean_subscriber_connects_once() {
        let (connected, seen) = run_against(0, SessionMode::Clean).await;
        assert!(connected.is_ok(), "{connected:?}");
        assert_eq!(seen, vec![Seen::Clean, Seen::Subscribed]);
    }
}
