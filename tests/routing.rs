//! Routing as clients see it: wildcard matching, `$`-topics, overlapping
//! subscriptions, UNSUBSCRIBE, shared subscriptions, retained messages, the
//! MQTT 5 subscription options, and invalid topic names and filters.
//!
//! Every test uses its own topic prefix and client ids, so the tests can also
//! run side by side against one external broker (`PETREL_TEST_BROKER`).
//! Absence is proven with a later marker message: the publisher sends the
//! message that must not arrive, then a marker on a topic the subscriber does
//! receive, and the subscriber must see the marker without the other message.

mod common;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet as Packet5, RetainForwardRule, SubscribeProperties, SubscribeReasonCode as Rc5,
    UnsubAckReason,
};
use rumqttc::{QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::time::timeout;

use common::ids::{client_id, unique};
use common::mqtt::{Events, forward_events};
use common::scoped::V5;
use common::wire::{Raw, push_varint, read_varint};

// ---------------------------------------------------------------------------
// Harness: rumqttc clients for 3.1.1 and 5.0, and a raw socket client.
// ---------------------------------------------------------------------------

/// One application message as a subscriber saw it, whatever the protocol.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Bytes,
    qos: u8,
    retain: bool,
    /// Subscription identifiers (MQTT 5 only), sorted.
    subscription_ids: Vec<usize>,
}

impl Msg {
    fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Something that receives application messages.
trait Subscriber {
    /// The next message on a topic inside this test's prefix; panics after
    /// `common::WAIT` or when the connection ends.
    async fn next_msg(&mut self) -> Msg;

    /// Receives until `marker` and every topic in `expected` arrived, and fails
    /// on any other topic in between or on a second copy of an expected one.
    /// Returns the expected messages in arrival order.
    async fn expect_topics_then_marker(&mut self, expected: &[String], marker: &str) -> Vec<Msg> {
        let mut seen = Vec::new();
        let mut marker_seen = false;
        while !marker_seen || seen.len() < expected.len() {
            let msg = self.next_msg().await;
            if msg.topic == marker {
                marker_seen = true;
                continue;
            }
            assert!(
                expected.contains(&msg.topic),
                "received a message on `{}` that must not be delivered here (expected only {expected:?} and the marker `{marker}`)",
                msg.topic
            );
            assert!(
                !seen.iter().any(|m: &Msg| m.topic == msg.topic),
                "received a second copy of the message on `{}`",
                msg.topic
            );
            seen.push(msg);
        }
        seen
    }
}

/// A 3.1.1 client driven by rumqttc.
struct V4 {
    id: String,
    client: rumqttc::AsyncClient,
    events: Events<rumqttc::EventLoop>,
    scope: String,
    buffered: VecDeque<rumqttc::Publish>,
}

impl V4 {
    async fn connect(addr: SocketAddr, scope: &str) -> V4 {
        Self::connect_with(addr, scope, |_| {}).await
    }

    async fn connect_with(
        addr: SocketAddr,
        scope: &str,
        adjust: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> V4 {
        let id = client_id("v4");
        let mut options = rumqttc::MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
        adjust(&mut options);
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 64);
        let (events, _) = forward_events(eventloop);
        let mut me = V4 {
            id,
            client,
            events,
            scope: scope.to_string(),
            buffered: Default::default(),
        };
        match me.next_packet().await {
            rumqttc::Packet::ConnAck(ack) => assert_eq!(
                ack.code,
                rumqttc::ConnectReturnCode::Success,
                "{} was refused",
                me.id
            ),
            other => panic!("{}: expected CONNACK, got {other:?}", me.id),
        }
        me
    }

    /// The next packet from the broker; panics on a timeout or a closed connection.
    async fn next_packet(&mut self) -> rumqttc::Packet {
        loop {
            let event = timeout(common::WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: nothing arrived within {:?}", self.id, common::WAIT)
                });
            match event {
                Some(Ok(rumqttc::Event::Incoming(packet))) => return packet,
                Some(Ok(rumqttc::Event::Outgoing(_))) => continue,
                Some(Err(error)) => panic!("{}: connection failed: {error}", self.id),
                None => panic!("{}: connection already ended", self.id),
            }
        }
    }

    /// Waits for a packet `pick` accepts; publishes seen meanwhile are kept.
    async fn wait_for<T>(&mut self, what: &str, pick: impl Fn(&rumqttc::Packet) -> Option<T>) -> T {
        loop {
            let packet = self.next_packet().await;
            if let Some(found) = pick(&packet) {
                return found;
            }
            match packet {
                rumqttc::Packet::Publish(publish) => self.buffered.push_back(publish),
                // Intermediate steps of a QoS 2 flow, and keep-alive.
                rumqttc::Packet::PubRec(_) | rumqttc::Packet::PingResp => {}
                other => panic!("{}: expected {what}, got {other:?}", self.id),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.subscribe_many(&[(filter, qos)]).await
    }

    async fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|(path, qos)| SubscribeFilter::new(path.to_string(), *qos));
        self.client
            .subscribe_many(filters)
            .await
            .expect("subscribe queued");
        self.wait_for("SUBACK", |p| match p {
            rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and checks that the broker granted `qos`.
    async fn subscribe_ok(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe(filter, qos).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "{}: SUBSCRIBE to `{filter}`",
            self.id
        );
    }

    async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("unsubscribe queued");
        self.wait_for("UNSUBACK", |p| match p {
            rumqttc::Packet::UnsubAck(_) => Some(()),
            _ => None,
        })
        .await
    }

    async fn publish_marker(&mut self, topic: &str) {
        self.publish(topic, QoS::AtLeastOnce, false, "marker").await
    }

    /// Publishes and, for QoS 1 and 2, waits until the broker has acknowledged it.
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("publish queued");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |p| {
                    matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| {
                    matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                })
                .await
            }
        }
    }
}

impl Subscriber for V4 {
    async fn next_msg(&mut self) -> Msg {
        loop {
            let publish = match self.buffered.pop_front() {
                Some(publish) => publish,
                None => match self.next_packet().await {
                    rumqttc::Packet::Publish(publish) => publish,
                    _ => continue,
                },
            };
            if !publish.topic.contains(&self.scope) {
                continue; // another test's traffic on a shared external broker
            }
            return Msg {
                topic: publish.topic,
                payload: publish.payload,
                qos: publish.qos as u8,
                retain: publish.retain,
                subscription_ids: vec![],
            };
        }
    }
}

impl V5 {
    async fn connect(addr: SocketAddr, scope: &str) -> V5 {
        V5::open(addr, scope, &client_id("v5"), |_| {}).await.0
    }

    /// Sends one SUBSCRIBE and returns the SUBACK's reason codes.
    async fn subscribe(&mut self, filter: Filter, id: Option<usize>) -> Vec<Rc5> {
        let properties = SubscribeProperties {
            id,
            user_properties: vec![],
        };
        self.client
            .subscribe_many_with_properties([filter], properties)
            .await
            .expect("subscribe queued");
        self.wait_for("SUBACK", |p| match p {
            Packet5::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and checks that the broker granted the requested QoS.
    async fn subscribe_ok(&mut self, filter: Filter) {
        let (path, qos) = (filter.path.clone(), filter.qos);
        let codes = self.subscribe(filter, None).await;
        assert_eq!(
            codes,
            vec![Rc5::Success(qos)],
            "{}: SUBSCRIBE to `{path}`",
            self.id
        );
    }

    async fn unsubscribe(&mut self, filter: &str) -> Vec<UnsubAckReason> {
        self.client
            .unsubscribe(filter)
            .await
            .expect("unsubscribe queued");
        self.wait_for("UNSUBACK", |p| match p {
            Packet5::UnsubAck(ack) => Some(ack.reasons.clone()),
            _ => None,
        })
        .await
    }

    async fn publish_marker(&mut self, topic: &str) {
        self.publish(topic, QoS5::AtLeastOnce, false, "marker")
            .await
    }

    /// Publishes and, for QoS 1 and 2, waits until the broker has acknowledged it.
    async fn publish(&mut self, topic: &str, qos: QoS5, retain: bool, payload: &str) {
        self.client
            .publish(topic, qos, retain, payload.to_string())
            .await
            .expect("publish queued");
        match qos {
            QoS5::AtMostOnce => {}
            QoS5::AtLeastOnce => {
                self.wait_for("PUBACK", |p| matches!(p, Packet5::PubAck(_)).then_some(()))
                    .await
            }
            QoS5::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| {
                    matches!(p, Packet5::PubComp(_)).then_some(())
                })
                .await
            }
        }
    }
}

impl Subscriber for V5 {
    async fn next_msg(&mut self) -> Msg {
        let publish = self.next_publish().await;
        let mut subscription_ids = publish
            .properties
            .as_ref()
            .map(|p| p.subscription_identifiers.clone())
            .unwrap_or_default();
        subscription_ids.sort_unstable();
        Msg {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload,
            qos: publish.qos as u8,
            retain: publish.retain,
            subscription_ids,
        }
    }
}

fn filter(path: &str, qos: QoS5) -> Filter {
    Filter::new(path, qos)
}

impl Raw {
    /// Sends a SUBSCRIBE (protocol level 4) with packet id 1 and returns the
    /// SUBACK's return codes.
    async fn subscribe_v4(&mut self, filters: &[(&str, QoS)]) -> Vec<u8> {
        let subscribe = rumqttc::Subscribe {
            pkid: 1,
            filters: filters
                .iter()
                .map(|(path, qos)| SubscribeFilter::new(path.to_string(), *qos))
                .collect(),
        };
        let mut out = BytesMut::new();
        subscribe.write(&mut out).expect("encode SUBSCRIBE");
        self.send(&out).await;
        let ack = self
            .next_frame()
            .await
            .expect("SUBACK, not a closed connection");
        assert_eq!(ack.packet_type(), 9, "expected SUBACK, got {ack:?}");
        assert_eq!(&ack.body[..2], &[0, 1], "SUBACK for packet id 1");
        ack.body[2..].to_vec()
    }

    /// Sends a SUBSCRIBE (protocol level 5) with packet id 1 and returns the
    /// SUBACK's reason codes.
    async fn subscribe_v5(&mut self, filters: &[(&str, QoS5)]) -> Vec<u8> {
        let subscribe = rumqttc::v5::mqttbytes::v5::Subscribe {
            pkid: 1,
            filters: filters
                .iter()
                .map(|(path, qos)| filter(path, *qos))
                .collect(),
            properties: None,
        };
        self.send_packet(Packet5::Subscribe(subscribe)).await;
        let ack = self
            .next_frame()
            .await
            .expect("SUBACK, not a closed connection");
        assert_eq!(ack.packet_type(), 9, "expected SUBACK, got {ack:?}");
        let mut body = ack.body.clone();
        assert_eq!(body.get_u16(), 1, "SUBACK for packet id 1");
        let properties_len = read_varint(&mut body);
        body.advance(properties_len);
        body.to_vec()
    }
}

/// A PUBLISH at QoS 0 on protocol level 4 or 5, written by hand so that any
/// topic, even an invalid one, goes on the wire.
fn raw_publish_qos0(topic: &str, payload: &[u8], v5: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(payload);
    let mut packet = vec![0x30];
    push_varint(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

// ---------------------------------------------------------------------------
// Wildcards and `$`-topics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn multi_level_wildcard_matches_the_parent_level_and_every_descendant() {
    let broker = common::start_broker().await;
    let p = unique("multi-level");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/sport/#"), QoS::AtLeastOnce)
        .await;
    let mut publisher = V4::connect(broker.addr, &p).await;

    for topic in [
        "sport",
        "sport/tennis",
        "sport/tennis/player1/ranking",
        "sport/",
        "sports",
        "sportsman/tennis",
        "Sport/tennis",
        "other/sport",
    ] {
        publisher
            .publish(&format!("{p}/{topic}"), QoS::AtLeastOnce, false, topic)
            .await;
    }
    let marker = format!("{p}/sport/marker");
    publisher.publish_marker(&marker).await;

    let expected: Vec<String> = [
        "sport",
        "sport/tennis",
        "sport/tennis/player1/ranking",
        "sport/",
    ]
    .iter()
    .map(|t| format!("{p}/{t}"))
    .collect();
    sub.expect_topics_then_marker(&expected, &marker).await;
}

#[tokio::test]
async fn single_level_wildcard_matches_exactly_one_level_even_an_empty_one() {
    let broker = common::start_broker().await;
    let p = unique("single-level");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/sport/+/player"), QoS::AtLeastOnce)
        .await;
    let mut publisher = V4::connect(broker.addr, &p).await;

    for topic in [
        "sport/tennis/player",
        "sport//player",
        "sport/player",
        "sport/tennis/x/player",
        "sport/tennis/player/x",
        "sport/tennis/players",
        "sport/ténnis/player",
    ] {
        publisher
            .publish(&format!("{p}/{topic}"), QoS::AtLeastOnce, false, topic)
            .await;
    }
    let marker = format!("{p}/sport/marker/player");
    publisher.publish_marker(&marker).await;

    let expected = vec![
        format!("{p}/sport/tennis/player"),
        format!("{p}/sport//player"),
        format!("{p}/sport/ténnis/player"),
    ];
    sub.expect_topics_then_marker(&expected, &marker).await;
}

#[tokio::test]
async fn single_level_wildcards_match_an_empty_leading_level() {
    let broker = common::start_broker().await;
    let p = unique("empty-leading");
    // `/finance`-style topic: an empty first level, then this test's prefix.
    let leading_empty = format!("/{p}");

    let mut two_levels = V4::connect(broker.addr, &p).await;
    two_levels.subscribe_ok("+/+", QoS::AtLeastOnce).await;
    let mut slash_plus = V4::connect(broker.addr, &p).await;
    slash_plus.subscribe_ok("/+", QoS::AtLeastOnce).await;
    let mut one_level = V4::connect(broker.addr, &p).await;
    one_level.subscribe_ok("+", QoS::AtLeastOnce).await;

    let mut publisher = V4::connect(broker.addr, &p).await;
    let one_level_topic = p.clone();
    let two_level_marker = format!("{p}/marker");
    let slash_marker = format!("/{p}-marker");
    publisher
        .publish(&leading_empty, QoS::AtLeastOnce, false, "x")
        .await;
    publisher
        .publish(&one_level_topic, QoS::AtLeastOnce, false, "x")
        .await;
    publisher
        .publish(&two_level_marker, QoS::AtLeastOnce, false, "x")
        .await;
    publisher
        .publish(&slash_marker, QoS::AtLeastOnce, false, "x")
        .await;

    // `+/+` matches `/p` (levels "" and "p"), then the others in order.
    let got = two_levels
        .expect_topics_then_marker(std::slice::from_ref(&leading_empty), &two_level_marker)
        .await;
    assert_eq!(got[0].topic, leading_empty);
    // `/+` matches `/p` but neither `p` nor `p/marker`.
    slash_plus
        .expect_topics_then_marker(std::slice::from_ref(&leading_empty), &slash_marker)
        .await;
    // `+` matches `p` but not `/p`, which has two levels.
    one_level
        .expect_topics_then_marker(&[], &one_level_topic)
        .await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards_but_by_their_own_prefix() {
    let broker = common::start_broker().await;
    let p = unique("dollar");
    // Mosquitto, like many brokers, refuses client publishes into `$SYS`, so
    // the rule is exercised with another `$` topic: it is the same rule.
    let dollar_topic = format!("$test/{p}");

    let mut wildcards = V4::connect(broker.addr, &p).await;
    let codes = wildcards
        .subscribe_many(&[
            ("#", QoS::AtLeastOnce),
            (&format!("+/{p}"), QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    let mut dollar = V4::connect(broker.addr, &p).await;
    dollar.subscribe_ok("$test/#", QoS::AtLeastOnce).await;

    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&dollar_topic, QoS::AtLeastOnce, false, "x")
        .await;
    let marker = format!("marker/{p}");
    let dollar_marker = format!("$test/{p}/marker");
    publisher.publish_marker(&marker).await;
    publisher.publish_marker(&dollar_marker).await;

    wildcards.expect_topics_then_marker(&[], &marker).await;
    dollar
        .expect_topics_then_marker(std::slice::from_ref(&dollar_topic), &dollar_marker)
        .await;
}

// ---------------------------------------------------------------------------
// Overlapping subscriptions and subscription identifiers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_granted_qos() {
    let broker = common::start_broker().await;
    let p = unique("overlap");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/a/#"), QoS::AtMostOnce).await;
    sub.subscribe_ok(&format!("{p}/a/+"), QoS::ExactlyOnce)
        .await;

    let mut publisher = V4::connect(broker.addr, &p).await;
    let topic = format!("{p}/a/x");
    publisher
        .publish(&topic, QoS::ExactlyOnce, false, "x")
        .await;
    let marker = format!("{p}/a/marker");
    publisher
        .publish(&marker, QoS::ExactlyOnce, false, "marker")
        .await;

    let got = sub
        .expect_topics_then_marker(std::slice::from_ref(&topic), &marker)
        .await;
    assert_eq!(got[0].qos, 2, "delivered at the highest granted QoS (2)");
}

#[tokio::test]
async fn v5_single_delivery_for_overlapping_subscriptions_carries_every_subscription_identifier() {
    let broker = common::start_broker().await;
    let p = unique("sub-ids");
    let mut sub = V5::connect(broker.addr, &p).await;
    for (path, qos, id) in [
        (format!("{p}/a/#"), QoS5::AtMostOnce, 1),
        (format!("{p}/a/+"), QoS5::AtLeastOnce, 2),
        (format!("{p}/b/#"), QoS5::AtLeastOnce, 3),
    ] {
        let codes = sub.subscribe(filter(&path, qos), Some(id)).await;
        assert_eq!(codes, vec![Rc5::Success(qos)], "SUBSCRIBE to `{path}`");
    }

    let mut publisher = V5::connect(broker.addr, &p).await;
    let topic = format!("{p}/a/x");
    publisher
        .publish(&topic, QoS5::AtLeastOnce, false, "x")
        .await;
    let marker = format!("{p}/b/marker");
    publisher.publish_marker(&marker).await;

    let got = sub
        .expect_topics_then_marker(std::slice::from_ref(&topic), &marker)
        .await;
    assert_eq!(got[0].qos, 1, "delivered at the highest granted QoS (1)");
    assert_eq!(
        got[0].subscription_ids,
        vec![1, 2],
        "the one copy names both matching subscriptions, and only those"
    );
}

// ---------------------------------------------------------------------------
// UNSUBSCRIBE
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = common::start_broker().await;
    let p = unique("unsub");
    let topic = format!("{p}/t");
    let marker = format!("{p}/marker");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&topic, QoS::AtLeastOnce).await;
    sub.subscribe_ok(&marker, QoS::AtLeastOnce).await;
    let mut publisher = V4::connect(broker.addr, &p).await;

    publisher
        .publish(&topic, QoS::AtLeastOnce, false, "before")
        .await;
    let before = sub.next_msg().await;
    assert_eq!(
        (before.topic.as_str(), before.payload_str().as_str()),
        (topic.as_str(), "before")
    );

    sub.unsubscribe(&topic).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, "after")
        .await;
    publisher.publish_marker(&marker).await;
    sub.expect_topics_then_marker(&[], &marker).await;
}

#[tokio::test]
async fn v5_unsuback_reports_success_and_no_subscription_existed() {
    let broker = common::start_broker().await;
    let p = unique("unsub5");
    let topic = format!("{p}/t");
    let marker = format!("{p}/marker");
    let mut sub = V5::connect(broker.addr, &p).await;
    sub.subscribe_ok(filter(&topic, QoS5::AtLeastOnce)).await;
    sub.subscribe_ok(filter(&marker, QoS5::AtLeastOnce)).await;

    assert_eq!(sub.unsubscribe(&topic).await, vec![UnsubAckReason::Success]);
    assert_eq!(
        sub.unsubscribe(&format!("{p}/never-subscribed")).await,
        vec![UnsubAckReason::NoSubscriptionExisted],
        "0x11 for a filter that had no subscription"
    );
    assert_eq!(
        sub.unsubscribe(&topic).await,
        vec![UnsubAckReason::NoSubscriptionExisted],
        "0x11 for a filter that was already unsubscribed"
    );

    let mut publisher = V5::connect(broker.addr, &p).await;
    publisher
        .publish(&topic, QoS5::AtLeastOnce, false, "after")
        .await;
    publisher.publish_marker(&marker).await;
    sub.expect_topics_then_marker(&[], &marker).await;
}

// ---------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------

/// Receives from two shared-subscription members until every one of `count`
/// messages on `topic` arrived and both members saw `control`; fails on any
/// message delivered twice. Returns how many each member got.
async fn split_between<A: Subscriber, B: Subscriber>(
    first: &mut A,
    second: &mut B,
    topic: &str,
    control: &str,
    count: usize,
) -> (usize, usize) {
    let mut seen = HashSet::new();
    let mut got = [0usize; 2];
    let mut control_seen = [false; 2];
    while seen.len() < count || !control_seen.iter().all(|c| *c) {
        let (member, msg) = tokio::select! {
            msg = first.next_msg() => (0, msg),
            msg = second.next_msg() => (1, msg),
        };
        if msg.topic == control {
            control_seen[member] = true;
            continue;
        }
        assert_eq!(msg.topic, topic, "unexpected topic at member {member}");
        assert!(
            seen.insert(msg.payload_str()),
            "message {} was delivered to more than one member (or twice)",
            msg.payload_str()
        );
        got[member] += 1;
    }
    (got[0], got[1])
}

#[tokio::test]
async fn shared_subscription_members_split_messages_and_a_plain_subscriber_gets_all() {
    let broker = common::start_broker().await;
    let p = unique("shared");
    let topic = format!("{p}/t");
    let control = format!("{p}/control");
    let shared = format!("$share/workers/{topic}");

    let mut first = V5::connect(broker.addr, &p).await;
    let mut second = V5::connect(broker.addr, &p).await;
    for member in [&mut first, &mut second] {
        member
            .subscribe_ok(filter(&shared, QoS5::AtLeastOnce))
            .await;
        member
            .subscribe_ok(filter(&control, QoS5::AtLeastOnce))
            .await;
    }
    let mut plain = V5::connect(broker.addr, &p).await;
    plain.subscribe_ok(filter(&topic, QoS5::AtLeastOnce)).await;

    let mut publisher = V5::connect(broker.addr, &p).await;
    const COUNT: usize = 20;
    for i in 0..COUNT {
        publisher
            .publish(&topic, QoS5::AtLeastOnce, false, &i.to_string())
            .await;
    }
    publisher
        .publish(&control, QoS5::AtLeastOnce, false, "control")
        .await;

    let (a, b) = split_between(&mut first, &mut second, &topic, &control, COUNT).await;
    assert_eq!(a + b, COUNT);
    assert!(a > 0 && b > 0, "both members get a share (got {a} and {b})");

    for i in 0..COUNT {
        let msg = plain.next_msg().await;
        assert_eq!(msg.topic, topic);
        assert_eq!(
            msg.payload_str(),
            i.to_string(),
            "plain subscriber gets all, in order"
        );
    }
}

#[tokio::test]
async fn shared_subscription_member_that_leaves_no_longer_gets_a_share() {
    let broker = common::start_broker().await;
    let p = unique("shared-leave");
    let topic = format!("{p}/t");
    let shared = format!("$share/workers/{topic}");
    let mut leaving = V5::connect(broker.addr, &p).await;
    leaving
        .subscribe_ok(filter(&shared, QoS5::AtLeastOnce))
        .await;
    let mut staying = V5::connect(broker.addr, &p).await;
    staying
        .subscribe_ok(filter(&shared, QoS5::AtLeastOnce))
        .await;
    leaving.disconnect().await;

    let mut publisher = V5::connect(broker.addr, &p).await;
    for i in 0..10 {
        publisher
            .publish(&topic, QoS5::AtLeastOnce, false, &i.to_string())
            .await;
    }
    for i in 0..10 {
        let msg = staying.next_msg().await;
        assert_eq!(
            msg.payload_str(),
            i.to_string(),
            "the remaining member gets every message, in order"
        );
    }
}

#[tokio::test]
async fn shared_subscriptions_work_for_v311_clients() {
    let broker = common::start_broker().await;
    let p = unique("shared4");
    let topic = format!("{p}/t");
    let control = format!("{p}/control");
    let shared = format!("$share/workers/{topic}");

    let mut first = V4::connect(broker.addr, &p).await;
    let mut second = V4::connect(broker.addr, &p).await;
    for member in [&mut first, &mut second] {
        member.subscribe_ok(&shared, QoS::AtLeastOnce).await;
        member.subscribe_ok(&control, QoS::AtLeastOnce).await;
    }
    let mut publisher = V4::connect(broker.addr, &p).await;
    const COUNT: usize = 20;
    for i in 0..COUNT {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    publisher
        .publish(&control, QoS::AtLeastOnce, false, "control")
        .await;

    let (a, b) = split_between(&mut first, &mut second, &topic, &control, COUNT).await;
    assert!(a > 0 && b > 0, "both members get a share (got {a} and {b})");
}

#[tokio::test]
async fn each_shared_group_gets_its_own_copy() {
    let broker = common::start_broker().await;
    let p = unique("shared-groups");
    let topic = format!("{p}/t");
    let mut first = V5::connect(broker.addr, &p).await;
    first
        .subscribe_ok(filter(&format!("$share/one/{topic}"), QoS5::AtLeastOnce))
        .await;
    let mut second = V5::connect(broker.addr, &p).await;
    second
        .subscribe_ok(filter(&format!("$share/two/{topic}"), QoS5::AtLeastOnce))
        .await;

    let mut publisher = V5::connect(broker.addr, &p).await;
    for i in 0..5 {
        publisher
            .publish(&topic, QoS5::AtLeastOnce, false, &i.to_string())
            .await;
    }
    for group in [&mut first, &mut second] {
        for i in 0..5 {
            assert_eq!(group.next_msg().await.payload_str(), i.to_string());
        }
    }
}

#[tokio::test]
async fn v5_no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = common::start_broker().await;
    let p = unique("shared-no-local");
    let mut raw = Raw::connect_v5(broker.addr, None).await.0;
    let subscribe = rumqttc::v5::mqttbytes::v5::Subscribe {
        pkid: 1,
        filters: vec![Filter {
            nolocal: true,
            ..filter(&format!("$share/g/{p}/t"), QoS5::AtLeastOnce)
        }],
        properties: None,
    };
    raw.send_packet(Packet5::Subscribe(subscribe)).await;
    let frames = raw.frames_until_closed().await;
    assert_eq!(
        frames.len(),
        1,
        "one DISCONNECT, then the close: {frames:?}"
    );
    assert_eq!(
        frames[0].packet_type(),
        14,
        "expected DISCONNECT, got {frames:?}"
    );
    assert_eq!(
        frames[0].body.first(),
        Some(&0x82),
        "DISCONNECT reason is Protocol Error (0x82): {frames:?}"
    );
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription_and_its_qos() {
    let broker = common::start_broker().await;
    let p = unique("resubscribe");
    let topic = format!("{p}/t");
    let marker = format!("{p}/marker");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&topic, QoS::AtMostOnce).await;
    sub.subscribe_ok(&topic, QoS::AtLeastOnce).await;
    sub.subscribe_ok(&marker, QoS::AtLeastOnce).await;

    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, "x")
        .await;
    publisher.publish_marker(&marker).await;
    let got = sub
        .expect_topics_then_marker(std::slice::from_ref(&topic), &marker)
        .await;
    assert_eq!(
        got[0].qos, 1,
        "the new subscription's QoS replaced the old one"
    );
}

// ---------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_with_the_retain_flag_and_live_ones_without() {
    let broker = common::start_broker().await;
    let p = unique("retained");
    let topic = format!("{p}/r");
    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "stored")
        .await;

    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&topic, QoS::AtLeastOnce).await;
    let stored = sub.next_msg().await;
    assert_eq!(stored.payload_str(), "stored");
    assert!(
        stored.retain,
        "a retained message sent on subscribe has the retain flag"
    );

    // 3.1.1: a message matching an established subscription goes out with
    // retain 0, however the publisher set it.
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "live")
        .await;
    let live = sub.next_msg().await;
    assert_eq!(live.payload_str(), "live");
    assert!(
        !live.retain,
        "live forwarding clears the retain flag for 3.1.1"
    );
}

#[tokio::test]
async fn newer_retained_message_replaces_the_older_one() {
    let broker = common::start_broker().await;
    let p = unique("retained-replace");
    let topic = format!("{p}/r");
    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "old")
        .await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "new")
        .await;

    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&topic, QoS::AtLeastOnce).await;
    let first = sub.next_msg().await;
    assert_eq!(first.payload_str(), "new");
    assert!(first.retain);

    publisher.publish_marker(&topic).await;
    let next = sub.next_msg().await;
    assert_eq!(
        next.payload_str(),
        "marker",
        "only one retained message per topic"
    );
}

#[tokio::test]
async fn empty_retained_payload_clears_the_retained_message_and_is_still_forwarded() {
    let broker = common::start_broker().await;
    let p = unique("retained-clear");
    let topic = format!("{p}/r");
    let mut existing = V4::connect(broker.addr, &p).await;
    existing.subscribe_ok(&topic, QoS::AtLeastOnce).await;

    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "stored")
        .await;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "").await;

    // Existing subscribers get the empty message like any other.
    assert_eq!(existing.next_msg().await.payload_str(), "stored");
    let cleared = existing.next_msg().await;
    assert!(
        cleared.payload.is_empty(),
        "the empty retained message is forwarded"
    );

    let mut late = V4::connect(broker.addr, &p).await;
    late.subscribe_ok(&topic, QoS::AtLeastOnce).await;
    publisher.publish_marker(&topic).await;
    let first = late.next_msg().await;
    assert_eq!(
        (first.payload_str().as_str(), first.retain),
        ("marker", false),
        "nothing retained is left after an empty retained publish"
    );
}

#[tokio::test]
async fn wildcard_subscription_receives_every_matching_retained_message() {
    let broker = common::start_broker().await;
    let p = unique("retained-wild");
    let mut publisher = V4::connect(broker.addr, &p).await;
    for topic in ["r/a", "r/b/c", "other"] {
        publisher
            .publish(&format!("{p}/{topic}"), QoS::AtLeastOnce, true, topic)
            .await;
    }

    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/r/#"), QoS::AtLeastOnce)
        .await;
    let marker = format!("{p}/r/marker");
    publisher.publish_marker(&marker).await;

    let got = sub
        .expect_topics_then_marker(&[format!("{p}/r/a"), format!("{p}/r/b/c")], &marker)
        .await;
    assert!(
        got.iter().all(|m| m.retain),
        "retained copies have the retain flag: {got:?}"
    );
}

#[tokio::test]
async fn retained_message_is_delivered_at_the_lower_of_its_qos_and_the_granted_qos() {
    let broker = common::start_broker().await;
    let p = unique("retained-qos");
    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&format!("{p}/r/at-most-once"), QoS::AtMostOnce, true, "q0")
        .await;
    publisher
        .publish(&format!("{p}/r/exactly-once"), QoS::ExactlyOnce, true, "q2")
        .await;

    // A QoS 0 publish carries no acknowledgement to wait for; a later QoS 1
    // one on the same connection shows the broker has processed it.
    let marker = format!("{p}/r/marker");
    publisher
        .publish(&marker, QoS::AtLeastOnce, true, "marker")
        .await;

    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/r/#"), QoS::AtLeastOnce)
        .await;
    let mut got = sub
        .expect_topics_then_marker(
            &[format!("{p}/r/at-most-once"), format!("{p}/r/exactly-once")],
            &marker,
        )
        .await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!((got[0].payload_str().as_str(), got[0].qos), ("q0", 0));
    assert_eq!(
        (got[1].payload_str().as_str(), got[1].qos),
        ("q2", 1),
        "QoS 2 retained message downgraded to the granted QoS 1"
    );
}

#[tokio::test]
async fn retained_dollar_topics_are_not_sent_for_leading_wildcards() {
    let broker = common::start_broker().await;
    let p = unique("retained-dollar");
    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&format!("$test/{p}"), QoS::AtLeastOnce, true, "dollar")
        .await;
    let plain = format!("{p}/plain");
    publisher
        .publish(&plain, QoS::AtLeastOnce, true, "plain")
        .await;

    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok("#", QoS::AtLeastOnce).await;
    sub.subscribe_ok(&format!("+/{p}"), QoS::AtLeastOnce).await;
    let marker = format!("{p}/marker");
    publisher.publish_marker(&marker).await;
    sub.expect_topics_then_marker(std::slice::from_ref(&plain), &marker)
        .await;
}

// ---------------------------------------------------------------------------
// MQTT 5 subscription options
// ---------------------------------------------------------------------------

/// A publisher in scope `p` that has left the retained message "stored" on
/// `topic`.
async fn retained_publisher(addr: SocketAddr, p: &str, topic: &str) -> V5 {
    let mut publisher = V5::connect(addr, p).await;
    publisher
        .publish(topic, QoS5::AtLeastOnce, true, "stored")
        .await;
    publisher
}

fn with_retain_handling(path: &str, rule: RetainForwardRule) -> Filter {
    Filter {
        retain_forward_rule: rule,
        ..filter(path, QoS5::AtLeastOnce)
    }
}

#[tokio::test]
async fn v5_retained_message_sent_on_subscribe_carries_the_subscription_identifier() {
    let broker = common::start_broker().await;
    let p = unique("retained-sub-id");
    let topic = format!("{p}/r");
    let _publisher = retained_publisher(broker.addr, &p, &topic).await;

    let mut sub = V5::connect(broker.addr, &p).await;
    let codes = sub
        .subscribe(filter(&format!("{p}/#"), QoS5::AtLeastOnce), Some(7))
        .await;
    assert_eq!(codes, vec![Rc5::Success(QoS5::AtLeastOnce)]);
    let msg = sub.next_msg().await;
    assert_eq!((msg.payload_str().as_str(), msg.retain), ("stored", true));
    assert_eq!(
        msg.subscription_ids,
        vec![7],
        "the subscription's identifier"
    );
}

#[tokio::test]
async fn v5_retain_handling_0_sends_retained_messages_on_every_subscribe() {
    let broker = common::start_broker().await;
    let p = unique("rh0");
    let topic = format!("{p}/r");
    let _publisher = retained_publisher(broker.addr, &p, &topic).await;

    let mut sub = V5::connect(broker.addr, &p).await;
    for round in ["new subscription", "re-subscription"] {
        sub.subscribe_ok(with_retain_handling(
            &topic,
            RetainForwardRule::OnEverySubscribe,
        ))
        .await;
        let msg = sub.next_msg().await;
        assert_eq!(
            (msg.payload_str().as_str(), msg.retain),
            ("stored", true),
            "retained message on the {round}"
        );
    }
}

#[tokio::test]
async fn v5_retain_handling_1_sends_retained_messages_only_for_a_new_subscription() {
    let broker = common::start_broker().await;
    let p = unique("rh1");
    let topic = format!("{p}/r");
    let mut publisher = retained_publisher(broker.addr, &p, &topic).await;

    let mut sub = V5::connect(broker.addr, &p).await;
    sub.subscribe_ok(with_retain_handling(
        &topic,
        RetainForwardRule::OnNewSubscribe,
    ))
    .await;
    let msg = sub.next_msg().await;
    assert_eq!((msg.payload_str().as_str(), msg.retain), ("stored", true));

    sub.subscribe_ok(with_retain_handling(
        &topic,
        RetainForwardRule::OnNewSubscribe,
    ))
    .await;
    publisher.publish_marker(&topic).await;
    let next = sub.next_msg().await;
    assert_eq!(
        next.payload_str(),
        "marker",
        "no retained message when the subscription already existed"
    );
}

#[tokio::test]
async fn v5_retain_handling_2_never_sends_retained_messages() {
    let broker = common::start_broker().await;
    let p = unique("rh2");
    let topic = format!("{p}/r");
    let mut publisher = retained_publisher(broker.addr, &p, &topic).await;

    let mut sub = V5::connect(broker.addr, &p).await;
    sub.subscribe_ok(with_retain_handling(&topic, RetainForwardRule::Never))
        .await;
    publisher.publish_marker(&topic).await;
    let next = sub.next_msg().await;
    assert_eq!(
        next.payload_str(),
        "marker",
        "no retained message with retain handling 2"
    );
}

#[tokio::test]
async fn v5_retain_as_published_keeps_the_retain_flag_on_live_forwarding() {
    let broker = common::start_broker().await;
    let p = unique("rap");
    let topic = format!("{p}/t");
    let mut keeps = V5::connect(broker.addr, &p).await;
    keeps
        .subscribe_ok(Filter {
            preserve_retain: true,
            ..filter(&topic, QoS5::AtLeastOnce)
        })
        .await;
    let mut clears = V5::connect(broker.addr, &p).await;
    clears.subscribe_ok(filter(&topic, QoS5::AtLeastOnce)).await;

    let mut publisher = V5::connect(broker.addr, &p).await;
    publisher
        .publish(&topic, QoS5::AtLeastOnce, true, "retained")
        .await;
    publisher
        .publish(&topic, QoS5::AtLeastOnce, false, "plain")
        .await;

    let (first, second) = (keeps.next_msg().await, keeps.next_msg().await);
    assert_eq!(
        (first.payload_str().as_str(), first.retain),
        ("retained", true),
        "RAP=1"
    );
    assert_eq!(
        (second.payload_str().as_str(), second.retain),
        ("plain", false),
        "RAP=1"
    );
    let (first, second) = (clears.next_msg().await, clears.next_msg().await);
    assert_eq!(
        (first.payload_str().as_str(), first.retain),
        ("retained", false),
        "RAP=0"
    );
    assert_eq!(
        (second.payload_str().as_str(), second.retain),
        ("plain", false),
        "RAP=0"
    );
}

#[tokio::test]
async fn v5_no_local_subscription_does_not_echo_own_publishes() {
    let broker = common::start_broker().await;
    let p = unique("no-local");
    let topic = format!("{p}/t");
    let marker = format!("{p}/marker");

    let mut client = V5::connect(broker.addr, &p).await;
    client
        .subscribe_ok(Filter {
            nolocal: true,
            ..filter(&topic, QoS5::AtLeastOnce)
        })
        .await;
    client
        .subscribe_ok(filter(&marker, QoS5::AtLeastOnce))
        .await;
    let mut other = V5::connect(broker.addr, &p).await;
    other.subscribe_ok(filter(&topic, QoS5::AtLeastOnce)).await;

    client
        .publish(&topic, QoS5::AtLeastOnce, false, "own")
        .await;
    client.publish_marker(&marker).await;

    // The message was routed (another subscriber got it), just not echoed.
    assert_eq!(other.next_msg().await.payload_str(), "own");
    client.expect_topics_then_marker(&[], &marker).await;
}

#[tokio::test]
async fn own_publishes_are_echoed_without_no_local() {
    let broker = common::start_broker().await;
    let p = unique("echo");
    let topic = format!("{p}/t");
    let mut client = V5::connect(broker.addr, &p).await;
    client.subscribe_ok(filter(&topic, QoS5::AtLeastOnce)).await;
    client
        .publish(&topic, QoS5::AtLeastOnce, false, "own")
        .await;
    assert_eq!(client.next_msg().await.payload_str(), "own");
}

// ---------------------------------------------------------------------------
// Invalid topic names and filters
// ---------------------------------------------------------------------------

/// Checks that a subscriber on `{p}/#` never saw the bad publish: a marker
/// published afterwards arrives first.
async fn assert_nothing_routed_before_marker(sub: &mut V4, addr: SocketAddr, p: &str) {
    let marker = format!("{p}/marker");
    let mut publisher = V4::connect(addr, p).await;
    publisher.publish_marker(&marker).await;
    sub.expect_topics_then_marker(&[], &marker).await;
}

#[tokio::test]
async fn v5_publish_to_a_wildcard_topic_disconnects_with_topic_name_invalid() {
    let broker = common::start_broker().await;
    let p = unique("bad-topic5");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/#"), QoS::AtLeastOnce).await;

    let mut raw = Raw::connect_v5(broker.addr, None).await.0;
    raw.send(&raw_publish_qos0(&format!("{p}/+"), b"bad", true))
        .await;
    let frames = raw.frames_until_closed().await;
    for frame in &frames {
        assert_eq!(
            frame.packet_type(),
            14,
            "only a DISCONNECT may precede the close: {frame:?}"
        );
        assert_eq!(
            frame.body.first(),
            Some(&0x90),
            "DISCONNECT reason is Topic Name Invalid (0x90): {frame:?}"
        );
    }
    assert_nothing_routed_before_marker(&mut sub, broker.addr, &p).await;
}

#[tokio::test]
async fn v311_publish_to_a_wildcard_topic_closes_the_connection() {
    let broker = common::start_broker().await;
    let p = unique("bad-topic4");
    let mut sub = V4::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/#"), QoS::AtLeastOnce).await;

    let mut raw = Raw::connect_v4(broker.addr).await;
    raw.send(&raw_publish_qos0(&format!("{p}/#"), b"bad", false))
        .await;
    let frames = raw.frames_until_closed().await;
    assert!(
        frames.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {frames:?}"
    );
    assert_nothing_routed_before_marker(&mut sub, broker.addr, &p).await;
}

#[tokio::test]
async fn v311_subscribe_with_a_misplaced_multi_level_wildcard_gets_return_code_0x80() {
    let broker = common::start_broker().await;
    let p = unique("bad-filter4");
    let mut raw = Raw::connect_v4(broker.addr).await;
    let valid = format!("{p}/ok");
    let codes = raw
        .subscribe_v4(&[
            (&format!("{p}/#/b"), QoS::AtLeastOnce),
            (&valid, QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![0x80, 0x01],
        "failure for `#/b`, the valid filter still granted"
    );

    // The connection and the valid subscription keep working.
    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&valid, QoS::AtMostOnce, false, "ok")
        .await;
    let frame = raw
        .next_frame()
        .await
        .expect("PUBLISH, not a closed connection");
    assert_eq!(frame.packet_type(), 3, "expected PUBLISH, got {frame:?}");
}

#[tokio::test]
async fn v5_subscribe_with_a_misplaced_multi_level_wildcard_gets_a_failure_reason_code() {
    let broker = common::start_broker().await;
    let p = unique("bad-filter5");
    let mut raw = Raw::connect_v5(broker.addr, None).await.0;
    let valid = format!("{p}/ok");
    let codes = raw
        .subscribe_v5(&[
            (&format!("{p}/#/b"), QoS5::AtLeastOnce),
            (&valid, QoS5::AtLeastOnce),
        ])
        .await;
    assert_eq!(codes.len(), 2, "one reason code per filter: {codes:x?}");
    assert!(
        codes[0] == 0x8F || codes[0] == 0x80,
        "Topic Filter Invalid (0x8F) or Unspecified error (0x80) for `#/b`, got {:#x}",
        codes[0]
    );
    assert_eq!(codes[1], 0x01, "the valid filter is still granted");

    let mut publisher = V4::connect(broker.addr, &p).await;
    publisher
        .publish(&valid, QoS::AtMostOnce, false, "ok")
        .await;
    let frame = raw
        .next_frame()
        .await
        .expect("PUBLISH, not a closed connection");
    assert_eq!(frame.packet_type(), 3, "expected PUBLISH, got {frame:?}");
}
