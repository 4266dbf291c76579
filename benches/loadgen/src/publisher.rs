//! One publishing connection: sends its numbered, time-stamped messages as
//! fast as the window (and the optional rate) allows and runs the real
//! acknowledgement flows (PUBACK; PUBREC -> PUBREL -> PUBCOMP). Messages go
//! to one topic, or rotate over the keys the publisher owns (stream).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mqttbytes::QoS;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::BenchError;
use crate::client::{Conn, Incoming, PublishTemplate, Version};
use crate::flow::EndToEnd;
use crate::keyed::{KeyOwner, KeyStamp};
use crate::progress::Live;
use crate::stats::{AckEffect, Histogram, InflightWindow, Stamp};

/// PUBLISH packets queued before one socket write.
const BATCH: u64 = 64;

/// Where one publisher's messages go and how they are numbered.
#[derive(Debug, Clone)]
pub enum Route {
    /// Every message on one topic, numbered from 0.
    Topic(String),
    /// Messages rotate over the keys `owner` owns, `topics[i]` carrying
    /// `owner.key(i)`, numbered from 0 per key and stamped with the run's
    /// tag.
    Keys {
        topics: Vec<String>,
        owner: KeyOwner,
        run: u32,
    },
}

/// What one publisher sends.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    pub id: u32,
    pub route: Route,
    pub qos: QoS,
    pub messages: u64,
    pub payload: usize,
    /// Requested outstanding QoS 1/2 messages; the broker's v5 receive
    /// maximum lowers it.
    pub max_inflight: u16,
    /// Messages per second for this publisher when a rate is set.
    pub rate: Option<f64>,
    /// The end-to-end window shared by every publisher, when set.
    pub e2e: Option<Arc<EndToEnd>>,
}

/// What one publisher observed.
#[derive(Debug)]
pub struct PublisherStats {
    pub id: u32,
    pub sent: u64,
    pub acked: u64,
    /// Acknowledgements with a v5 failure reason code (>= 0x80).
    pub rejected: u64,
    /// Acknowledgements for packet ids not in the state they answer.
    pub unexpected_acks: u64,
    /// Packets a broker should not send to a pure publisher.
    pub unexpected_packets: u64,
    pub first_send: Option<Instant>,
    pub last_send: Option<Instant>,
    pub last_ack: Option<Instant>,
    /// PUBLISH to PUBACK/PUBCOMP time.
    pub ack_latency: Histogram,
    pub timed_out: bool,
    pub error: Option<String>,
}

impl PublisherStats {
    pub fn new(id: u32) -> Self {
        PublisherStats {
            id,
            sent: 0,
            acked: 0,
            rejected: 0,
            unexpected_acks: 0,
            unexpected_packets: 0,
            first_send: None,
            last_send: None,
            last_ack: None,
            ack_latency: Histogram::new(),
            timed_out: false,
            error: None,
        }
    }
}

/// Shared timing for every client of one run.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Origin of the nanosecond timestamps carried in payloads.
    pub base: Instant,
    /// Hard end of the run.
    pub deadline: Instant,
    /// PINGREQ period, so the broker's keepalive never fires.
    pub ping_every: Duration,
}

impl Clock {
    pub fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64
    }
}

struct Publisher<'a> {
    conn: &'a mut Conn,
    spec: &'a PublisherSpec,
    clock: Clock,
    /// One per topic of the route.
    templates: Vec<PublishTemplate>,
    window: InflightWindow,
    scratch: BytesMut,
    stats: PublisherStats,
    seq: u64,
    /// The live line's counters, and how many sends they have been told.
    live: Option<(Arc<Live>, u64)>,
}

/// Runs one publisher on an already connected `conn` until every message is
/// sent and acknowledged, an error, or the deadline. Never fails: problems
/// are recorded in the returned stats so the run can still be reported.
pub async fn run(
    conn: &mut Conn,
    version: Version,
    spec: &PublisherSpec,
    receive_max: Option<u16>,
    clock: Clock,
    live: Option<Arc<Live>>,
) -> PublisherStats {
    let limit = receive_max.map_or(spec.max_inflight, |r| r.min(spec.max_inflight));
    let topics = match &spec.route {
        Route::Topic(topic) => std::slice::from_ref(topic),
        Route::Keys { topics, .. } => topics.as_slice(),
    };
    let mut p = Publisher {
        templates: topics
            .iter()
            .map(|topic| PublishTemplate::new(version, topic, spec.qos))
            .collect(),
        window: InflightWindow::new(usize::from(limit)),
        scratch: BytesMut::with_capacity(64 * 1024),
        stats: PublisherStats::new(spec.id),
        seq: 0,
        live: live.map(|live| (live, 0)),
        conn,
        spec,
        clock,
    };
    if let Err(e) = p.run().await {
        p.stats.error = Some(e.to_string());
    }
    p.stats
}

impl Publisher<'_> {
    fn can_send(&self) -> bool {
        self.may_send_but_for_e2e() && self.spec.e2e.as_ref().is_none_or(|e2e| e2e.has_room())
    }

    /// Messages are left and the publisher's own window has room.
    fn may_send_but_for_e2e(&self) -> bool {
        self.seq < self.spec.messages
            && (self.spec.qos == QoS::AtMostOnce || self.window.has_room())
    }

    fn done(&self) -> bool {
        self.seq >= self.spec.messages && self.window.inflight() == 0
    }

    /// Queues up to one batch of due messages; returns the time the next
    /// message is due if pacing held it back.
    fn queue_batch(&mut self, start: Instant) -> Result<Option<Instant>, BenchError> {
        let now = Instant::now();
        for _ in 0..BATCH {
            if !self.can_send() {
                break;
            }
            if let Some(rate) = self.spec.rate {
                let due = Duration::try_from_secs_f64(self.seq as f64 / rate)
                    .ok()
                    .and_then(|offset| start.checked_add(offset))
                    .unwrap_or(self.clock.deadline);
                if due > now {
                    return Ok(Some(due));
                }
            }
            let topic = self.topic_of_next();
            if topic >= self.templates.len() {
                // A publisher that owns no key has nowhere to publish.
                break;
            }
            if self.spec.e2e.as_ref().is_some_and(|e2e| !e2e.try_take()) {
                break;
            }
            let sent_ns = self.clock.now_ns();
            let pkid = if self.spec.qos == QoS::AtMostOnce {
                0
            } else {
                match self.window.acquire(sent_ns) {
                    Some(id) => id,
                    None => break,
                }
            };
            self.stamp(sent_ns);
            let payload = self.scratch.split().freeze();
            self.conn
                .queue_publish(&mut self.templates[topic], pkid, payload)?;
            self.seq += 1;
            self.stats.sent += 1;
            let sent_at = Instant::now();
            self.stats.first_send.get_or_insert(sent_at);
            self.stats.last_send = Some(sent_at);
        }
        Ok(None)
    }

    /// The index of the topic the next message goes to.
    fn topic_of_next(&self) -> usize {
        match &self.spec.route {
            Route::Topic(_) => 0,
            Route::Keys { owner, .. } => owner.place(self.seq).0 as usize,
        }
    }

    /// Writes the stamp of the next message into `scratch`.
    fn stamp(&mut self, sent_ns: u64) {
        match &self.spec.route {
            Route::Topic(_) => Stamp {
                sent_ns,
                publisher: self.spec.id,
                seq: self.seq,
            }
            .write(&mut self.scratch, self.spec.payload),
            Route::Keys { owner, run, .. } => {
                let (local, seq) = owner.place(self.seq);
                KeyStamp {
                    sent_ns,
                    run: *run,
                    publisher: owner.publisher,
                    key: owner.key(local),
                    seq,
                }
                .write(&mut self.scratch, self.spec.payload);
            }
        }
    }

    fn completed(&mut self, sent_ns: u64) {
        self.stats.acked += 1;
        self.stats.last_ack = Some(Instant::now());
        self.stats
            .ack_latency
            .record(self.clock.now_ns().saturating_sub(sent_ns));
    }

    fn handle(&mut self, packet: Incoming) -> Result<(), BenchError> {
        match packet {
            Incoming::PubAck { pkid, reason } if self.spec.qos == QoS::AtLeastOnce => {
                match self.window.on_puback(pkid) {
                    AckEffect::Completed { sent_ns } => {
                        if reason >= 0x80 {
                            self.stats.rejected += 1;
                        }
                        self.completed(sent_ns);
                    }
                    _ => self.stats.unexpected_acks += 1,
                }
            }
            Incoming::PubRec { pkid, reason } if self.spec.qos == QoS::ExactlyOnce => {
                if reason >= 0x80 {
                    // A failed PUBREC ends the flow: no PUBREL follows.
                    match self.window.on_puback(pkid) {
                        AckEffect::Completed { sent_ns } => {
                            self.stats.rejected += 1;
                            self.completed(sent_ns);
                        }
                        _ => self.stats.unexpected_acks += 1,
                    }
                } else {
                    match self.window.on_pubrec(pkid) {
                        AckEffect::SendPubRel => self.conn.queue_pubrel(pkid)?,
                        _ => self.stats.unexpected_acks += 1,
                    }
                }
            }
            Incoming::PubComp { pkid } if self.spec.qos == QoS::ExactlyOnce => {
                match self.window.on_pubcomp(pkid) {
                    AckEffect::Completed { sent_ns } => self.completed(sent_ns),
                    _ => self.stats.unexpected_acks += 1,
                }
            }
            Incoming::PubAck { .. } | Incoming::PubRec { .. } | Incoming::PubComp { .. } => {
                self.stats.unexpected_acks += 1;
            }
            Incoming::PingResp => {}
            Incoming::Disconnect { .. } => return Err(self.conn.unexpected(&packet)),
            _ => self.stats.unexpected_packets += 1,
        }
        Ok(())
    }

    fn drain_incoming(&mut self) -> Result<(), BenchError> {
        while let Some(packet) = self.conn.decode()? {
            self.handle(packet)?;
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), BenchError> {
        let start = Instant::now();
        let deadline = self.clock.deadline;
        let mut next_ping = start + self.clock.ping_every;
        loop {
            if Instant::now() >= deadline {
                self.stats.timed_out = true;
                return Ok(());
            }
            let next_due = self.queue_batch(start)?;
            if let Some((live, told)) = &mut self.live {
                live.sent(self.stats.sent - *told);
                *told = self.stats.sent;
            }
            if Instant::now() >= next_ping {
                self.conn.queue_pingreq()?;
                next_ping = Instant::now() + self.clock.ping_every;
            }
            if self.conn.has_pending_writes() {
                match timeout_at(deadline, self.conn.flush()).await {
                    Ok(result) => result?,
                    Err(_) => {
                        self.stats.timed_out = true;
                        return Ok(());
                    }
                }
            }
            self.conn.try_fill()?;
            self.drain_incoming()?;
            if self.conn.has_pending_writes() {
                continue;
            }
            if self.done() {
                return Ok(());
            }
            if self.can_send() && next_due.is_none() {
                // A full batch went out and more may go: let other tasks run.
                tokio::task::yield_now().await;
                continue;
            }
            let wake = next_due.unwrap_or(deadline).min(next_ping).min(deadline);
            // Waits for the end-to-end window whenever it is the only thing
            // that could hold this publisher back; `freed` returns at once if
            // a slot came free since `can_send` looked.
            let e2e = self.spec.e2e.clone();
            let only_e2e_blocks = self.may_send_but_for_e2e() && e2e.is_some();
            tokio::select! {
                result = self.conn.fill() => result?,
                _ = sleep_until(wake) => {}
                _ = async { if let Some(w) = &e2e { w.freed().await } }, if only_e2e_blocks => {}
            }
            self.drain_incoming()?;
        }
    }
}
