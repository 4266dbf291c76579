//! A publisher with a persistent session that behaves as MQTT 3.1.1 §4.4
//! asks of a client: after every reconnect it re-sends each unacknowledged
//! PUBLISH with DUP set and its original packet identifier, and each PUBREL
//! still waiting for PUBCOMP.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

use crate::client::{Conn, Lost};
use crate::raw::{self, PINGRESP, PUBACK, PUBCOMP, PUBREC, Packet};

/// Unacknowledged messages (PUBLISH awaiting PUBACK/PUBREC, or PUBREL
/// awaiting PUBCOMP) a publisher keeps at once.
const WINDOW: usize = 10;

/// New messages are offered every `PACE` in bursts of `BURST`. The cap keeps
/// the run small against a fast in-memory broker; a broker that fsyncs is
/// slowed by the window long before it.
const PACE: Duration = Duration::from_millis(4);
const BURST: usize = 2;

/// How long a reconnect may keep failing once the broker is meant to be up.
const RECONNECT: Duration = Duration::from_secs(15);

pub struct Spec {
    /// Names the client id and prefixes every payload.
    pub name: String,
    pub qos: u8,
    pub topic: String,
}

/// What one publisher sent and what the broker acknowledged, by sequence
/// number (the payload is `"<name>:<seq>"`).
pub struct Report {
    pub name: String,
    pub qos: u8,
    pub published: u64,
    pub acked: Vec<u64>,
    /// Messages or PUBRELs still unacknowledged when the drain ended.
    pub unfinished: usize,
    pub reconnects: u32,
    /// Reconnects after which the broker no longer had the session.
    pub sessions_lost: u32,
    pub anomalies: Vec<String>,
}

pub fn payload(name: &str, seq: u64) -> String {
    format!("{name}:{seq}")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent, PUBACK or PUBREC not yet received.
    Published,
    /// PUBREC received and PUBREL sent, PUBCOMP not yet received.
    Released,
}

struct Outgoing {
    packet_id: u16,
    seq: u64,
    stage: Stage,
}

/// Publishes until `stop` carries a deadline, then finishes the flows in
/// flight (reconnecting as needed) until that deadline. `acked` counts
/// acknowledgements across publishers so the test can see traffic flowing.
pub async fn run(
    addr: SocketAddr,
    spec: Spec,
    mut stop: watch::Receiver<Option<Instant>>,
    acked: Arc<AtomicU64>,
) -> Report {
    let mut publisher = Publisher {
        client_id: format!("crash-pub-{}", spec.name),
        report: Report {
            name: spec.name.clone(),
            qos: spec.qos,
            published: 0,
            acked: Vec::new(),
            unfinished: 0,
            reconnects: 0,
            sessions_lost: 0,
            anomalies: Vec::new(),
        },
        spec,
        inflight: VecDeque::new(),
        next_packet_id: 1,
        acked_total: acked,
    };
    let mut connected_before = false;
    loop {
        let stop_at = *stop.borrow_and_update();
        if let Some(deadline) = stop_at
            && (publisher.inflight.is_empty() || Instant::now() >= deadline)
        {
            break;
        }
        let give_up_at = match stop_at {
            Some(deadline) => deadline,
            None => Instant::now() + RECONNECT,
        };
        let (mut conn, present) =
            match Conn::open(addr, &publisher.client_id, false, give_up_at).await {
                Ok(opened) => opened,
                Err(failure) if stop_at.is_some() => {
                    publisher.report.anomalies.push(failure);
                    break;
                }
                Err(failure) => panic!("{failure}"),
            };
        if connected_before {
            publisher.report.reconnects += 1;
            if !present {
                publisher.report.sessions_lost += 1;
            }
        }
        connected_before = true;
        match publisher.serve(&mut conn, &mut stop).await {
            Ok(()) => {
                conn.disconnect().await;
                break;
            }
            Err(Lost) => continue,
        }
    }
    publisher.report.unfinished = publisher.inflight.len();
    publisher.report
}

struct Publisher {
    client_id: String,
    spec: Spec,
    report: Report,
    /// In the order first sent, which is the order re-sends must keep.
    inflight: VecDeque<Outgoing>,
    next_packet_id: u16,
    acked_total: Arc<AtomicU64>,
}

enum Event {
    Packet(Result<Packet, Lost>),
    Pace,
    StopChanged,
    DrainOver,
}

impl Publisher {
    /// One connection: re-send, then publish and answer acks. `Ok` once
    /// stopped and finished (or out of time), `Err` when the connection
    /// breaks.
    async fn serve(
        &mut self,
        conn: &mut Conn,
        stop: &mut watch::Receiver<Option<Instant>>,
    ) -> Result<(), Lost> {
        for out in &self.inflight {
            conn.send(&self.encode(out, true)).await?;
        }
        let mut pace = interval(PACE);
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let stop_at = *stop.borrow_and_update();
            if let Some(deadline) = stop_at
                && (self.inflight.is_empty() || Instant::now() >= deadline)
            {
                return Ok(());
            }
            let drain_over = stop_at.unwrap_or_else(|| Instant::now() + RECONNECT);
            let event = tokio::select! {
                packet = conn.recv() => Event::Packet(packet),
                _ = pace.tick(), if stop_at.is_none() => Event::Pace,
                changed = stop.changed(), if stop_at.is_none() => match changed {
                    Ok(()) => Event::StopChanged,
                    // The test always sends a deadline before it lets go.
                    Err(_) => Event::DrainOver,
                },
                _ = sleep_until(drain_over), if stop_at.is_some() => Event::DrainOver,
            };
            match event {
                Event::Packet(packet) => self.on_packet(conn, packet?).await?,
                Event::Pace => self.publish_more(conn).await?,
                Event::StopChanged => {}
                Event::DrainOver => return Ok(()),
            }
        }
    }

    async fn publish_more(&mut self, conn: &mut Conn) -> Result<(), Lost> {
        for _ in 0..BURST {
            if self.inflight.len() >= WINDOW {
                break;
            }
            let out = Outgoing {
                packet_id: self.free_packet_id(),
                seq: self.report.published,
                stage: Stage::Published,
            };
            self.report.published += 1;
            let bytes = self.encode(&out, false);
            self.inflight.push_back(out);
            conn.send(&bytes).await?;
        }
        Ok(())
    }

    async fn on_packet(&mut self, conn: &mut Conn, packet: Packet) -> Result<(), Lost> {
        let kind = packet.kind();
        if kind == PINGRESP {
            return Ok(());
        }
        if ![PUBACK, PUBREC, PUBCOMP].contains(&kind) || packet.body.len() != 2 {
            self.anomaly(format!("unexpected {packet:?}"));
            return Ok(());
        }
        let packet_id = packet.packet_id();
        let found = self
            .inflight
            .iter()
            .position(|out| out.packet_id == packet_id);
        let stage = found.map(|at| self.inflight[at].stage);
        match (kind, self.spec.qos, found, stage) {
            (PUBACK, 1, Some(at), Some(Stage::Published)) => {
                let out = self.inflight.remove(at).expect("found above");
                self.acknowledged(out.seq);
            }
            (PUBREC, 2, Some(at), Some(Stage::Published)) => {
                self.inflight[at].stage = Stage::Released;
                self.acknowledged(self.inflight[at].seq);
                conn.send(&raw::ack(0x62, packet_id)).await?;
            }
            // The PUBREL may not have arrived before a crash.
            (PUBREC, 2, Some(_), Some(Stage::Released)) => {
                conn.send(&raw::ack(0x62, packet_id)).await?;
            }
            (PUBCOMP, 2, Some(at), Some(Stage::Released)) => {
                self.inflight.remove(at);
            }
            _ => self.anomaly(format!(
                "{packet:?} does not match any flow in progress (QoS {})",
                self.spec.qos
            )),
        }
        Ok(())
    }

    fn acknowledged(&mut self, seq: u64) {
        self.report.acked.push(seq);
        self.acked_total.fetch_add(1, Ordering::Relaxed);
    }

    fn anomaly(&mut self, what: String) {
        self.report
            .anomalies
            .push(format!("{}: {what}", self.client_id));
    }

    fn encode(&self, out: &Outgoing, resend: bool) -> Vec<u8> {
        match out.stage {
            Stage::Published => {
                let dup = if resend { 0x08 } else { 0 };
                raw::publish(
                    0x30 | dup | (self.spec.qos << 1),
                    self.spec.topic.as_bytes(),
                    Some(out.packet_id),
                    None,
                    payload(&self.spec.name, out.seq).as_bytes(),
                )
            }
            Stage::Released => raw::ack(0x62, out.packet_id),
        }
    }

    /// The next identifier not held by a flow in progress [MQTT-2.3.1-2].
    fn free_packet_id(&mut self) -> u16 {
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|out| out.packet_id == candidate) {
                return candidate;
            }
        }
    }
}
