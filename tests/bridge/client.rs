//! An MQTT test client of either protocol version over rumqttc, with one
//! message type for both, so a scenario is written once and run as v5 and
//! as 3.1.1.
//!
//! The rumqttc event loop runs in a task that forwards every event to the
//! client through an unbounded channel (a test that publishes hundreds of
//! messages before reading acknowledgements must not stall the loop) and
//! stops at the first connection error: polling again would make rumqttc
//! reconnect behind the test's back. A reconnect is a new [`Client`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::support::WAIT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V311,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V5 => "v5",
            Protocol::V311 => "v311",
        })
    }
}

/// A PUBLISH the client received.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.text();
        if text.len() > 60 {
            let mut cut = 60;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        write!(
            f,
            "{} q{}{}{} {text:?} ({} bytes)",
            self.topic,
            self.qos,
            if self.retain { " retain" } else { "" },
            if self.dup { " dup" } else { "" },
            self.payload.len()
        )
    }
}

/// What the event loop reported, reduced to what the tests wait for.
#[derive(Debug)]
enum Event {
    ConnAck {
        accepted: bool,
        session_present: bool,
        detail: String,
    },
    /// The granted QoS of each filter, `None` for a refusal.
    SubAck(Vec<Option<u8>>),
    /// A PUBACK; for v5, the reason if it is not Success.
    PubAck(Option<String>),
    /// A PUBREC; for v5, the reason if it is not Success.
    PubRec(Option<String>),
    PubComp,
    /// A PUBLISH was written; packet id 0 is a QoS 0 one.
    Sent {
        pkid: u16,
    },
    Message(Msg),
    DisconnectSent,
    Ended(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// How a client connects.
#[derive(Clone, Copy)]
pub enum Session {
    /// Clean session / clean start, expiring with the connection.
    Clean,
    /// 3.1.1 clean session 0; v5 clean start 0 with a one-hour session
    /// expiry: the broker keeps subscriptions and queues messages while the
    /// client is away.
    Persistent,
}

pub struct Client {
    name: String,
    handle: Handle,
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
    /// Messages received but not yet taken by the test.
    inbox: VecDeque<Msg>,
    /// Every message received, in order, taken or not.
    history: Vec<Msg>,
    pub session_present: bool,
}

fn qos_v4(qos: u8) -> rumqttc::QoS {
    rumqttc::qos(qos).expect("QoS 0, 1 or 2")
}

fn qos_v5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(qos).expect("QoS 0, 1 or 2")
}

impl Client {
    /// Connects with a clean session; panics unless the broker accepts.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, id: &str) -> Client {
        Client::connect_with(addr, protocol, id, Session::Clean).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        protocol: Protocol,
        id: &str,
        session: Session,
    ) -> Client {
        let persistent = matches!(session, Session::Persistent);
        let host = addr.ip().to_string();
        let (tx, events) = mpsc::unbounded_channel();
        let (handle, task) = match protocol {
            Protocol::V311 => {
                let mut options = rumqttc::MqttOptions::new(id, host, addr.port());
                options
                    .set_clean_session(!persistent)
                    .set_keep_alive(Duration::from_secs(30))
                    .set_max_packet_size(1 << 20, 1 << 20);
                let (client, eventloop) = rumqttc::AsyncClient::new(options, 1024);
                (Handle::V4(client), tokio::spawn(forward_v4(eventloop, tx)))
            }
            Protocol::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(id, host, addr.port());
                options
                    .set_clean_start(!persistent)
                    .set_keep_alive(Duration::from_secs(30))
                    .set_max_packet_size(Some(1 << 20));
                if persistent {
                    options.set_session_expiry_interval(Some(3600));
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 1024);
                (Handle::V5(client), tokio::spawn(forward_v5(eventloop, tx)))
            }
        };
        let mut client = Client {
            name: format!("{id} ({protocol} client of {addr})"),
            handle,
            events,
            task,
            inbox: VecDeque::new(),
            history: Vec::new(),
            session_present: false,
        };
        match client.next_event(Instant::now() + WAIT, "CONNACK").await {
            Event::ConnAck {
                accepted: true,
                session_present,
                ..
            } => client.session_present = session_present,
            Event::ConnAck { detail, .. } => {
                panic!("{}: connection refused: {detail}", client.name)
            }
            other => panic!("{}: expected CONNACK, got {other:?}", client.name),
        }
        client
    }

    /// The next event, keeping messages in the inbox (and returning them
    /// too). Panics at `deadline` or if the connection ends.
    async fn next_event(&mut self, deadline: Instant, what: &str) -> Event {
        match self.try_next_event(deadline).await {
            Some(Event::Ended(error)) => {
                panic!(
                    "{}: connection ended while waiting for {what}: {error}",
                    self.name
                )
            }
            Some(event) => event,
            None => panic!("{}: no {what} before the deadline", self.name),
        }
    }

    /// The next event, or `None` at `deadline`. Messages go to the inbox
    /// and the history as well.
    async fn try_next_event(&mut self, deadline: Instant) -> Option<Event> {
        let event = match timeout_at(deadline, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Event::Ended("the event loop task has stopped".into()),
            Err(_) => return None,
        };
        if let Event::Message(msg) = &event {
            self.inbox.push_back(msg.clone());
            self.history.push(msg.clone());
        }
        Some(event)
    }

    /// Subscribes to `filter` at `qos`; panics unless the broker grants it.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) {
        let queued = match &self.handle {
            Handle::V4(client) => client.subscribe(filter, qos_v4(qos)).await.is_ok(),
            Handle::V5(client) => client.subscribe(filter, qos_v5(qos)).await.is_ok(),
        };
        assert!(queued, "{}: cannot queue SUBSCRIBE", self.name);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Event::SubAck(granted) = self.next_event(deadline, "SUBACK").await {
                assert!(
                    granted.iter().all(Option::is_some),
                    "{}: SUBSCRIBE {filter} refused: {granted:?}",
                    self.name
                );
                return;
            }
        }
    }

    /// Publishes and waits until the flow is complete: written for QoS 0,
    /// PUBACK for QoS 1, PUBCOMP for QoS 2.
    pub async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        self.publish_all(qos, retain, [(topic.to_string(), payload.to_vec())])
            .await;
    }

    /// Publishes every `(topic, payload)` in order at `qos`, then waits
    /// until each flow is complete (for QoS 1 and 2: every message
    /// acknowledged by the broker, which under petrel's `sync` durability
    /// means on disk). Returns the reasons of the v5 PUBACKs (QoS 1) or
    /// PUBRECs (QoS 2) that were not Success, in the order they came: a
    /// broker that had no subscriber for a message says
    /// `NoMatchingSubscribers`.
    pub async fn publish_all(
        &mut self,
        qos: u8,
        retain: bool,
        messages: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Vec<String> {
        let mut count = 0;
        for (topic, payload) in messages {
            let queued = match &self.handle {
                Handle::V4(client) => client
                    .publish(topic.as_str(), qos_v4(qos), retain, payload)
                    .await
                    .is_ok(),
                Handle::V5(client) => client
                    .publish(topic.as_str(), qos_v5(qos), retain, payload)
                    .await
                    .is_ok(),
            };
            assert!(queued, "{}: cannot queue PUBLISH to {topic}", self.name);
            count += 1;
        }
        let deadline = Instant::now() + crate::support::BULK_WAIT;
        let mut done = 0;
        let mut refusals = Vec::new();
        while done < count {
            let what = format!("completion of publish {} of {count} at QoS {qos}", done + 1);
            match (qos, self.next_event(deadline, &what).await) {
                (1, Event::PubAck(refusal)) => {
                    refusals.extend(refusal);
                    done += 1;
                }
                (2, Event::PubRec(refusal)) => refusals.extend(refusal),
                (0, Event::Sent { pkid: 0 }) | (2, Event::PubComp) => done += 1,
                _ => {}
            }
        }
        refusals
    }

    /// The next received message the test has not taken yet, or `None` at
    /// `deadline`.
    pub async fn next_message_before(&mut self, deadline: Instant) -> Option<Msg> {
        loop {
            if let Some(msg) = self.inbox.pop_front() {
                return Some(msg);
            }
            match self.try_next_event(deadline).await? {
                Event::Ended(error) => panic!("{}: connection ended: {error}", self.name),
                _ => continue,
            }
        }
    }

    /// Waits (within [`WAIT`]) for a message satisfying `want` and returns
    /// it; the messages taken before it are dropped from the inbox (they
    /// stay in [`Client::history`]). Panics with what came if none does.
    pub async fn expect(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        self.expect_within(WAIT, what, want).await
    }

    pub async fn expect_within(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Msg) -> bool,
    ) -> Msg {
        let deadline = Instant::now() + within;
        let mut skipped = Vec::new();
        while let Some(msg) = self.next_message_before(deadline).await {
            if want(&msg) {
                return msg;
            }
            skipped.push(msg);
        }
        panic!(
            "{}: no {what} within {within:?}; received meanwhile: {skipped:#?}",
            self.name
        )
    }

    /// Like [`Client::expect`], but `None` at `deadline` instead of a panic.
    pub async fn find_before(
        &mut self,
        deadline: Instant,
        want: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        while let Some(msg) = self.next_message_before(deadline).await {
            if want(&msg) {
                return Some(msg);
            }
        }
        None
    }

    /// The next message on `topic`, dropping those before it.
    pub async fn expect_on(&mut self, topic: &str) -> Msg {
        self.expect(&format!("a message on {topic}"), |m| m.topic == topic)
            .await
    }

    /// Every message received so far, in order, taken or not.
    pub fn history(&self) -> &[Msg] {
        &self.history
    }

    /// Sends DISCONNECT (a persistent session stays on the broker) and
    /// waits until it is written.
    pub async fn disconnect(mut self) {
        let queued = match &self.handle {
            Handle::V4(client) => client.disconnect().await.is_ok(),
            Handle::V5(client) => client.disconnect().await.is_ok(),
        };
        assert!(queued, "{}: cannot queue DISCONNECT", self.name);
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_next_event(deadline).await {
                Some(Event::DisconnectSent) | Some(Event::Ended(_)) => break,
                Some(_) => {}
                None => panic!("{}: DISCONNECT not written within {WAIT:?}", self.name),
            }
        }
        self.task.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Event>) {
    use rumqttc::{ConnectReturnCode, Event as E, Packet, SubscribeReasonCode};
    loop {
        let event = match eventloop.poll().await {
            Ok(E::Incoming(Packet::ConnAck(connack))) => Event::ConnAck {
                accepted: connack.code == ConnectReturnCode::Success,
                session_present: connack.session_present,
                detail: format!("{connack:?}"),
            },
            Ok(E::Incoming(Packet::SubAck(suback))) => Event::SubAck(
                suback
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        SubscribeReasonCode::Success(qos) => Some(*qos as u8),
                        SubscribeReasonCode::Failure => None,
                    })
                    .collect(),
            ),
            Ok(E::Incoming(Packet::PubAck(_))) => Event::PubAck(None),
            Ok(E::Incoming(Packet::PubRec(_))) => Event::PubRec(None),
            Ok(E::Incoming(Packet::PubComp(_))) => Event::PubComp,
            Ok(E::Incoming(Packet::Publish(publish))) => Event::Message(Msg {
                topic: publish.topic.clone(),
                qos: publish.qos as u8,
                retain: publish.retain,
                dup: publish.dup,
                payload: publish.payload.to_vec(),
            }),
            Ok(E::Outgoing(Outgoing::Publish(pkid))) => Event::Sent { pkid },
            Ok(E::Outgoing(Outgoing::Disconnect)) => Event::DisconnectSent,
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Event::Ended(error.to_string()));
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

async fn forward_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::UnboundedSender<Event>) {
    use rumqttc::v5::Event as E;
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, Packet, PubAckReason, PubRecReason, SubscribeReasonCode,
    };
    loop {
        let event = match eventloop.poll().await {
            Ok(E::Incoming(Packet::ConnAck(connack))) => Event::ConnAck {
                accepted: connack.code == ConnectReturnCode::Success,
                session_present: connack.session_present,
                detail: format!("{connack:?}"),
            },
            Ok(E::Incoming(Packet::SubAck(suback))) => Event::SubAck(
                suback
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        SubscribeReasonCode::Success(qos) => Some(*qos as u8),
                        _ => None,
                    })
                    .collect(),
            ),
            Ok(E::Incoming(Packet::PubAck(ack))) => {
                Event::PubAck((ack.reason != PubAckReason::Success).then(|| format!("{ack:?}")))
            }
            Ok(E::Incoming(Packet::PubRec(rec))) => {
                Event::PubRec((rec.reason != PubRecReason::Success).then(|| format!("{rec:?}")))
            }
            Ok(E::Incoming(Packet::PubComp(_))) => Event::PubComp,
            Ok(E::Incoming(Packet::Publish(publish))) => Event::Message(Msg {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                qos: publish.qos as u8,
                retain: publish.retain,
                dup: publish.dup,
                payload: publish.payload.to_vec(),
            }),
            Ok(E::Outgoing(Outgoing::Publish(pkid))) => Event::Sent { pkid },
            Ok(E::Outgoing(Outgoing::Disconnect)) => Event::DisconnectSent,
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Event::Ended(error.to_string()));
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
