//! A subscriber with a persistent session that receives as a correct MQTT
//! 3.1.1 client must for exactly-once to hold end to end: a QoS 2 PUBLISH is
//! delivered to the application only if its packet identifier is not already
//! awaiting PUBREL, and that set of identifiers outlives the connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{Conn, Lost};
use crate::raw::{self, PUBLISH, PUBREL, Packet, Publish, SUBACK};

/// How long a reconnect may keep failing once the broker is meant to be up.
const RECONNECT: Duration = Duration::from_secs(15);

/// What one subscriber has received, shared with the test, which polls it.
/// The lock is only held for short updates and reads, never across `.await`.
#[derive(Default)]
pub struct Inbox {
    /// SUBACK received (for the first subscription or a renewed one).
    pub subscribed: bool,
    /// Deliveries to the application per payload, by the QoS they came at.
    pub qos1: HashMap<String, u32>,
    pub qos2: HashMap<String, u32>,
    /// QoS 2 re-sends the pending set kept from being delivered twice.
    pub qos2_redelivered_and_suppressed: u64,
    pub deliveries: u64,
    pub last_delivery: Option<Instant>,
    pub reconnects: u32,
    /// Reconnects after which the broker no longer had the session.
    pub sessions_lost: u32,
    pub anomalies: Vec<String>,
}

pub type SharedInbox = Arc<Mutex<Inbox>>;

pub fn lock(inbox: &SharedInbox) -> MutexGuard<'_, Inbox> {
    inbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Subscribes `filter` at QoS 2 on first connect and receives until `stop`
/// turns true.
pub async fn run(
    addr: SocketAddr,
    client_id: String,
    filter: &'static str,
    inbox: SharedInbox,
    mut stop: watch::Receiver<bool>,
) {
    let mut subscriber = Subscriber {
        client_id,
        filter,
        inbox,
        pending_pubrel: HashSet::new(),
    };
    let mut connected_before = false;
    while !*stop.borrow_and_update() {
        let give_up_at = Instant::now() + RECONNECT;
        let (mut conn, present) = Conn::open(addr, &subscriber.client_id, false, give_up_at)
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        let renew = !connected_before || !present;
        if connected_before {
            let mut inbox = lock(&subscriber.inbox);
            inbox.reconnects += 1;
            if !present {
                inbox.sessions_lost += 1;
            }
        }
        if connected_before && !present {
            // The broker's half of the session is gone, so this half must
            // go too [MQTT-3.1.2-4]: keeping stale identifiers would
            // swallow new messages that reuse them.
            subscriber.pending_pubrel.clear();
        }
        connected_before = true;
        if renew {
            lock(&subscriber.inbox).subscribed = false;
            let subscribe = raw::subscribe(1, None, &[(subscriber.filter.as_bytes(), 2)]);
            if conn.send(&subscribe).await.is_err() {
                continue;
            }
        }
        match subscriber.serve(&mut conn, &mut stop).await {
            Ok(()) => {
                conn.disconnect().await;
                return;
            }
            Err(Lost) => continue,
        }
    }
}

struct Subscriber {
    client_id: String,
    filter: &'static str,
    inbox: SharedInbox,
    /// QoS 2 identifiers answered with PUBREC and not yet released.
    pending_pubrel: HashSet<u16>,
}

impl Subscriber {
    async fn serve(
        &mut self,
        conn: &mut Conn,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Lost> {
        loop {
            if *stop.borrow_and_update() {
                return Ok(());
            }
            let packet = tokio::select! {
                packet = conn.recv() => packet?,
                changed = stop.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            self.on_packet(conn, packet).await?;
        }
    }

    async fn on_packet(&mut self, conn: &mut Conn, packet: Packet) -> Result<(), Lost> {
        match packet.kind() {
            PUBLISH => {
                let publish = Publish::parse(&packet, false);
                let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                match (publish.qos, publish.packet_id) {
                    (1, Some(packet_id)) => {
                        self.deliver(1, payload);
                        conn.send(&raw::ack(0x40, packet_id)).await?;
                    }
                    (2, Some(packet_id)) => {
                        if self.pending_pubrel.insert(packet_id) {
                            self.deliver(2, payload);
                        } else {
                            lock(&self.inbox).qos2_redelivered_and_suppressed += 1;
                        }
                        conn.send(&raw::ack(0x50, packet_id)).await?;
                    }
                    _ => self.anomaly(format!("PUBLISH at QoS {} ({payload})", publish.qos)),
                }
            }
            PUBREL if packet.body.len() == 2 && packet.flags() == 0x02 => {
                let packet_id = packet.packet_id();
                self.pending_pubrel.remove(&packet_id);
                conn.send(&raw::ack(0x70, packet_id)).await?;
            }
            SUBACK if packet.body.len() == 3 && packet.packet_id() == 1 => {
                if packet.body[2] == 2 {
                    lock(&self.inbox).subscribed = true;
                } else {
                    self.anomaly(format!("subscription not granted at QoS 2: {packet:?}"));
                }
            }
            _ => self.anomaly(format!("unexpected {packet:?}")),
        }
        Ok(())
    }

    fn deliver(&self, qos: u8, payload: String) {
        let mut inbox = lock(&self.inbox);
        let counts = if qos == 1 {
            &mut inbox.qos1
        } else {
            &mut inbox.qos2
        };
        *counts.entry(payload).or_default() += 1;
        inbox.deliveries += 1;
        inbox.last_delivery = Some(Instant::now());
    }

    fn anomaly(&self, what: String) {
        let line = format!("{}: {what}", self.client_id);
        lock(&self.inbox).anomalies.push(line);
    }
}
