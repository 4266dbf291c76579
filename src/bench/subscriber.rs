//! One subscribing connection: acknowledges every delivery as a real client
//! must (PUBACK; PUBREC, then PUBCOMP for each PUBREL) and records latency,
//! losses, duplicates and ordering.

use std::time::Duration;

use mqttbytes::QoS;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::bench::BenchError;
use crate::bench::client::{Conn, Incoming};
use crate::bench::publisher::Clock;
use crate::bench::stats::{Delivery, DeliveryTracker, Histogram, Stamp};

/// What one subscriber expects.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    pub filter: String,
    pub qos: QoS,
    /// First publisher id this subscriber hears from.
    pub first_publisher: u32,
    /// How many consecutive publisher ids it hears from.
    pub publishers: u32,
    pub per_publisher: u64,
    /// How long to keep listening after the publishers finished and nothing
    /// more arrived.
    pub drain: Duration,
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

/// Runs one subscriber on a connected and subscribed `conn` until it has
/// every expected message, the publishers are done and the broker has gone
/// quiet for `spec.drain`, an error, or the deadline.
pub async fn run(
    conn: &mut Conn,
    spec: &SubscriberSpec,
    clock: Clock,
    mut publishers_done: watch::Receiver<bool>,
) -> SubscriberStats {
    let mut stats = SubscriberStats {
        tracker: DeliveryTracker::new(spec.first_publisher, spec.publishers, spec.per_publisher),
        latency: Histogram::new(),
        first_rx: None,
        last_rx: None,
        unstamped: 0,
        unexpected_packets: 0,
        wrong_qos: 0,
        timed_out: false,
        error: None,
    };
    // Packet ids of QoS 2 deliveries awaiting PUBREL.
    let mut awaiting_rel = vec![false; 1 << 16];
    if let Err(e) = listen(
        conn,
        spec,
        clock,
        &mut publishers_done,
        &mut stats,
        &mut awaiting_rel,
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
) -> Result<(), BenchError> {
    let deadline = clock.deadline;
    let mut next_ping = Instant::now() + clock.ping_every;
    let mut quiet_until: Option<Instant> = None;
    loop {
        let got_any = drain_incoming(conn, spec, clock, stats, awaiting_rel)?;
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
) -> Result<bool, BenchError> {
    let mut got_any = false;
    while let Some(packet) = conn.decode()? {
        match packet {
            Incoming::Publish { qos, pkid, payload } => {
                got_any = true;
                let now = Instant::now();
                stats.first_rx.get_or_insert(now);
                stats.last_rx = Some(now);
                if qos != spec.qos {
                    stats.wrong_qos += 1;
                }
                match Stamp::read(&payload) {
                    Some(stamp) => {
                        if stats.tracker.record(stamp.publisher, stamp.seq) == Delivery::New {
                            stats
                                .latency
                                .record(clock.now_ns().saturating_sub(stamp.sent_ns));
                        }
                    }
                    None => stats.unstamped += 1,
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
