//! rumqttc clients for 3.1.1 and 5.0 whose event loop runs in a task that
//! forwards every event to the test, so a test can wait for any packet in
//! either direction with a timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::WAIT;
use super::ids::unique_id;

/// A rumqttc event loop of either protocol version, so one forwarding task
/// serves both.
pub trait PollEvents: Send + 'static {
    type Event: Send + 'static;
    type Error: Send + 'static;

    fn poll(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send;
}

impl PollEvents for rumqttc::EventLoop {
    type Event = rumqttc::Event;
    type Error = rumqttc::ConnectionError;

    fn poll(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send {
        rumqttc::EventLoop::poll(self)
    }
}

impl PollEvents for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    type Error = rumqttc::v5::ConnectionError;

    fn poll(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send {
        rumqttc::v5::EventLoop::poll(self)
    }
}

/// What the forwarding task of [`forward_events`] delivers.
pub type Events<L> = mpsc::Receiver<Result<<L as PollEvents>::Event, <L as PollEvents>::Error>>;

/// Polls `eventloop` in a task that forwards every event. The task stops at
/// the first connection error: polling again would make rumqttc reconnect,
/// silently re-establishing a closed connection behind the test's back.
pub fn forward_events<L: PollEvents>(mut eventloop: L) -> (Events<L>, JoinHandle<()>) {
    let (tx, events) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                break;
            }
        }
    });
    (events, task)
}

// One module per protocol version, so the client macro and the tests name
// rumqttc's types alike; each test crate uses only some of them.
#[allow(unused_imports)]
pub mod v4api {
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions,
        Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
    };
}

#[allow(unused_imports)]
pub mod v5api {
    pub use rumqttc::Outgoing;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, LastWill, LastWillProperties, Packet, PubAckReason,
        PubCompReason, PubRecReason, Publish, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
}

/// A connected rumqttc client. Its event loop runs in a task that stops at the
/// first connection error, so a closed connection is never silently
/// re-established behind the test's back.
macro_rules! mqtt_client {
    ($name:ident, $api:ident) => {
        pub struct $name {
            id: String,
            pub client: $api::AsyncClient,
            events: mpsc::Receiver<Result<$api::Event, $api::ConnectionError>>,
            task: JoinHandle<()>,
            /// Publishes that arrived while a helper waited for something else.
            backlog: VecDeque<$api::Publish>,
        }

        impl $name {
            /// Connects and returns the CONNACK; panics if the connection fails.
            pub async fn connect(
                addr: SocketAddr,
                id: &str,
                configure: impl FnOnce(&mut $api::MqttOptions),
            ) -> ($name, $api::ConnAck) {
                let mut options = $api::MqttOptions::new(id, addr.ip().to_string(), addr.port());
                configure(&mut options);
                let (client, eventloop) = $api::AsyncClient::new(options, 64);
                let (events, task) = forward_events(eventloop);
                let mut me = $name {
                    id: id.to_string(),
                    client,
                    events,
                    task,
                    backlog: VecDeque::new(),
                };
                match me.next_event().await {
                    Some(Ok($api::Event::Incoming($api::Packet::ConnAck(connack)))) => {
                        (me, connack)
                    }
                    other => panic!("{id}: expected CONNACK, got {other:?}"),
                }
            }

            /// Connects, disconnects again and returns whether the CONNACK
            /// said session present.
            pub async fn session_present(
                addr: SocketAddr,
                id: &str,
                configure: impl FnOnce(&mut $api::MqttOptions),
            ) -> bool {
                let (client, connack) = $name::connect(addr, id, configure).await;
                client.disconnect().await;
                connack.session_present
            }

            /// The next event; `None` once the event loop has stopped.
            pub async fn next_event(
                &mut self,
            ) -> Option<Result<$api::Event, $api::ConnectionError>> {
                match timeout(WAIT, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => panic!("{}: no MQTT event within {WAIT:?}", self.id),
                }
            }

            /// Waits for the next PUBLISH delivered to this client.
            pub async fn next_publish(&mut self) -> $api::Publish {
                if let Some(publish) = self.backlog.pop_front() {
                    return publish;
                }
                loop {
                    match self.next_event().await {
                        Some(Ok($api::Event::Incoming($api::Packet::Publish(publish)))) => {
                            return publish;
                        }
                        Some(Ok(_)) => {}
                        other => panic!(
                            "{}: connection ended waiting for PUBLISH: {other:?}",
                            self.id
                        ),
                    }
                }
            }

            /// Connects a client that watches `filter` at QoS 1.
            pub async fn watch(addr: SocketAddr, filter: &str) -> $name {
                let (mut watcher, _) = $name::connect(addr, &unique_id("watch"), |_| {}).await;
                watcher.subscribe(filter, $api::QoS::AtLeastOnce).await;
                watcher
            }

            /// Publishes each `(topic, payload)` at QoS 1 from a new client,
            /// then "marker" on `marker_topic`, and returns `(topic, payload)`
            /// of every message this client received before the marker: the
            /// marker shows the absence of a message without a sleep.
            pub async fn received_before_marker(
                &mut self,
                addr: SocketAddr,
                publishes: &[(&str, &str)],
                marker_topic: &str,
            ) -> Vec<(String, String)> {
                let (mut publisher, _) = $name::connect(addr, &unique_id("pub"), |_| {}).await;
                for (topic, payload) in publishes {
                    publisher
                        .publish(topic, $api::QoS::AtLeastOnce, payload)
                        .await;
                }
                publisher
                    .publish(marker_topic, $api::QoS::AtLeastOnce, "marker")
                    .await;
                let mut seen = Vec::new();
                loop {
                    let publish = self.next_publish().await;
                    if publish.topic_text() == marker_topic {
                        return seen;
                    }
                    seen.push((publish.topic_text(), publish.payload_text()));
                }
            }

            /// Payloads of every message received before the first one whose
            /// payload is `marker`, for tests that publish everything on one
            /// topic.
            pub async fn payloads_before_marker(&mut self, marker: &str) -> Vec<String> {
                let mut seen = Vec::new();
                loop {
                    let payload = self.next_publish().await.payload_text();
                    if payload == marker {
                        return seen;
                    }
                    seen.push(payload);
                }
            }

            /// Waits until `want` matches an event and returns it, keeping
            /// publishes seen meanwhile.
            pub async fn wait_for(
                &mut self,
                what: &str,
                want: impl Fn(&$api::Event) -> bool,
            ) -> $api::Event {
                loop {
                    match self.next_event().await {
                        Some(Ok(event)) if want(&event) => return event,
                        Some(Ok($api::Event::Incoming($api::Packet::Publish(publish)))) => {
                            self.backlog.push_back(publish);
                        }
                        Some(Ok(_)) => {}
                        other => panic!(
                            "{}: connection ended waiting for {what}: {other:?}",
                            self.id
                        ),
                    }
                }
            }

            /// Subscribes and returns the SUBACK return codes.
            pub async fn subscribe(
                &mut self,
                filter: &str,
                qos: $api::QoS,
            ) -> Vec<$api::SubscribeReasonCode> {
                self.client
                    .subscribe(filter, qos)
                    .await
                    .expect("subscribe request queued");
                match self
                    .wait_for("SUBACK", |e| {
                        matches!(e, $api::Event::Incoming($api::Packet::SubAck(_)))
                    })
                    .await
                {
                    $api::Event::Incoming($api::Packet::SubAck(suback)) => suback.return_codes,
                    _ => unreachable!(),
                }
            }

            /// Publishes and waits until the QoS flow is complete (written for
            /// QoS 0, PUBACK for QoS 1, PUBCOMP for QoS 2).
            pub async fn publish(&mut self, topic: &str, qos: $api::QoS, payload: &str) {
                self.client
                    .publish(topic, qos, false, payload.as_bytes().to_vec())
                    .await
                    .expect("publish request queued");
                match qos {
                    $api::QoS::AtMostOnce => {
                        self.wait_for("the QoS 0 PUBLISH to be written", |e| {
                            matches!(e, $api::Event::Outgoing($api::Outgoing::Publish(_)))
                        })
                        .await
                    }
                    $api::QoS::AtLeastOnce => {
                        self.wait_for("PUBACK", |e| {
                            matches!(e, $api::Event::Incoming($api::Packet::PubAck(_)))
                        })
                        .await
                    }
                    $api::QoS::ExactlyOnce => {
                        self.wait_for("PUBCOMP", |e| {
                            matches!(e, $api::Event::Incoming($api::Packet::PubComp(_)))
                        })
                        .await
                    }
                };
            }

            /// Sends DISCONNECT, then closes the socket as a client must.
            pub async fn disconnect(mut self) {
                self.client
                    .disconnect()
                    .await
                    .expect("disconnect request queued");
                self.wait_for("DISCONNECT to be written", |e| {
                    matches!(e, $api::Event::Outgoing($api::Outgoing::Disconnect))
                })
                .await;
                self.task.abort();
                let _ = self.task.await;
            }

            /// Drops the connection without DISCONNECT (a network failure).
            pub async fn kill(self) {
                self.task.abort();
                let _ = self.task.await;
            }

            /// Waits until the broker ends the connection and returns the error
            /// the client saw.
            pub async fn closed(&mut self) -> Option<$api::ConnectionError> {
                loop {
                    match self.next_event().await {
                        Some(Ok($api::Event::Incoming($api::Packet::Publish(publish)))) => {
                            self.backlog.push_back(publish);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Some(error),
                        None => return None,
                    }
                }
            }
        }
    };
}

mqtt_client!(Client4, v4api);
mqtt_client!(Client5, v5api);

/// Lets one assertion read a PUBLISH of either protocol version.
pub trait Message {
    fn topic_text(&self) -> String;
    fn payload_text(&self) -> String;
}

impl Message for v4api::Publish {
    fn topic_text(&self) -> String {
        self.topic.clone()
    }
    fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl Message for v5api::Publish {
    fn topic_text(&self) -> String {
        String::from_utf8_lossy(&self.topic).into_owned()
    }
    fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}
