//! An MQTT 5 rumqttc client that sees only its own test's topics: tests that
//! share one external broker see each other's traffic through wildcard
//! subscriptions, and the client's `scope` (the test's topic prefix) drops it.
//!
//! Each test file adds the connect, subscribe and publish helpers its tests
//! need in its own `impl V5` block, since their shapes differ per file.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish};
use rumqttc::v5::{AsyncClient, MqttOptions};
use tokio::time::timeout;

use super::WAIT;
use super::mqtt::{Events, forward_events};

pub struct V5 {
    pub id: String,
    pub client: AsyncClient,
    events: Events<rumqttc::v5::EventLoop>,
    scope: String,
    buffered: VecDeque<Publish>,
}

impl V5 {
    /// Connects as `id` and returns the CONNACK, accepting or not.
    pub async fn open(
        addr: SocketAddr,
        scope: &str,
        id: &str,
        adjust: impl FnOnce(&mut MqttOptions),
    ) -> (V5, ConnAck) {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        adjust(&mut options);
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (events, _) = forward_events(eventloop);
        let mut me = V5 {
            id: id.to_string(),
            client,
            events,
            scope: scope.to_string(),
            buffered: VecDeque::new(),
        };
        let connack = match me.next_packet().await {
            Packet::ConnAck(ack) => ack,
            other => panic!("{}: expected CONNACK, got {other:?}", me.id),
        };
        (me, connack)
    }

    /// The next packet from the broker; panics on a timeout or a closed connection.
    pub async fn next_packet(&mut self) -> Packet {
        loop {
            let event = timeout(WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing arrived within {WAIT:?}", self.id));
            match event {
                Some(Ok(rumqttc::v5::Event::Incoming(packet))) => return packet,
                Some(Ok(rumqttc::v5::Event::Outgoing(_))) => continue,
                Some(Err(error)) => panic!("{}: connection failed: {error}", self.id),
                None => panic!("{}: connection already ended", self.id),
            }
        }
    }

    /// Waits for a packet `pick` accepts; publishes seen meanwhile are kept.
    pub async fn wait_for<T>(&mut self, what: &str, pick: impl Fn(&Packet) -> Option<T>) -> T {
        loop {
            let packet = self.next_packet().await;
            if let Some(found) = pick(&packet) {
                return found;
            }
            match packet {
                Packet::Publish(publish) => self.buffered.push_back(publish),
                // Intermediate steps of a QoS 2 flow, and keep-alive.
                Packet::PubRec(_) | Packet::PingResp(_) => {}
                other => panic!("{}: expected {what}, got {other:?}", self.id),
            }
        }
    }

    /// The next PUBLISH on a topic inside this test's prefix.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            let publish = match self.buffered.pop_front() {
                Some(publish) => publish,
                None => match self.next_packet().await {
                    Packet::Publish(publish) => publish,
                    _ => continue,
                },
            };
            if String::from_utf8_lossy(&publish.topic).contains(&self.scope) {
                return publish;
            }
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection,
    /// so that the session is offline when this returns.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect queued");
        let closed = async {
            while let Some(event) = self.events.recv().await {
                if event.is_err() {
                    break;
                }
            }
        };
        timeout(WAIT, closed).await.unwrap_or_else(|_| {
            panic!(
                "{}: the broker did not close the connection after DISCONNECT",
                self.id
            )
        });
    }
}
