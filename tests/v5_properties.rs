//! MQTT 5 properties as clients see them: message expiry, topic aliases from
//! the client, maximum packet size in both directions, pass-through of user
//! properties and request/response properties, payload format validation,
//! response information and reason strings.
//!
//! Every test uses its own topic prefix and client ids, so the tests can also
//! run side by side against one external broker (`PETREL_TEST_BROKER`).
//! Absence is proven with a later marker message, never with a sleep; the
//! only sleeps let message expiry time pass, which is what they test.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, ConnectReturnCode, Filter, Packet, PubAck, PubAckReason, Publish,
    PublishProperties, SubscribeReasonCode, UnsubAckReason,
};

use common::ids::{client_id, unique};
use common::scoped::V5;
use common::wire::Raw;

// ---------------------------------------------------------------------------
// Harness: an MQTT 5 rumqttc client and a raw socket client.
// ---------------------------------------------------------------------------

impl V5 {
    async fn connect(addr: SocketAddr, scope: &str) -> (V5, ConnAck) {
        Self::connect_as(addr, scope, &client_id("v5"), |_| {}).await
    }

    /// Connects as `id` and checks the CONNACK accepts.
    async fn connect_as(
        addr: SocketAddr,
        scope: &str,
        id: &str,
        adjust: impl FnOnce(&mut MqttOptions),
    ) -> (V5, ConnAck) {
        let (me, connack) = V5::open(addr, scope, id, adjust).await;
        assert_eq!(
            connack.code,
            ConnectReturnCode::Success,
            "{} was refused",
            me.id
        );
        (me, connack)
    }

    /// A client in scope `p` subscribed to `topic` at QoS 1.
    async fn subscribed(addr: SocketAddr, p: &str, topic: &str) -> V5 {
        let (mut sub, _) = V5::connect(addr, p).await;
        sub.subscribe_ok(topic, QoS::AtLeastOnce).await;
        sub
    }

    /// Publishes "marker" on `topic` from a new client and checks it is the
    /// next message this client receives: whatever was published before it
    /// was not routed here.
    async fn expect_marker_next(&mut self, addr: SocketAddr, p: &str, topic: &str, why: &str) {
        let (mut publisher, _) = V5::connect(addr, p).await;
        publisher.publish_plain(topic, "marker").await;
        assert_eq!(
            self.next_publish().await.payload,
            Bytes::from_static(b"marker"),
            "{why}"
        );
    }

    async fn subscribe_ok(&mut self, path: &str, qos: QoS) {
        self.client
            .subscribe_many([Filter::new(path, qos)])
            .await
            .expect("subscribe queued");
        let codes = self
            .wait_for("SUBACK", |p| match p {
                Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "{}: SUBSCRIBE to `{path}`",
            self.id
        );
    }

    /// Publishes at QoS 1 and returns the broker's PUBACK.
    async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        properties: PublishProperties,
    ) -> PubAck {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
            .expect("publish queued");
        self.wait_for("PUBACK", |p| match p {
            Packet::PubAck(ack) => Some(ack.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes at QoS 1 without properties and checks the PUBACK is a success.
    async fn publish_plain(&mut self, topic: &str, payload: &str) {
        let ack = self
            .publish(topic, payload.to_string(), PublishProperties::default())
            .await;
        assert_accepted(&ack, topic);
    }
}

fn topic_of(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.topic).into_owned()
}

impl Raw {
    /// Publishes at QoS 1 with packet id `pkid` and returns the broker's
    /// answer: a PUBACK, or the DISCONNECT (reason code and reason string) it
    /// closed the connection with.
    async fn publish_qos1(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &[u8],
        properties: Option<PublishProperties>,
    ) -> Answer {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            pkid,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
            properties,
            ..Default::default()
        };
        self.send_packet(Packet::Publish(publish)).await;
        match self.next_frame().await {
            None => Answer::Closed,
            Some(frame) if frame.packet_type() == 14 => {
                let (reason, reason_string) = frame.disconnect();
                Answer::Disconnect {
                    reason,
                    reason_string,
                }
            }
            Some(frame) => match frame.decode() {
                Packet::PubAck(ack) => {
                    assert_eq!(ack.pkid, pkid, "PUBACK for the packet id sent");
                    Answer::PubAck(ack)
                }
                other => panic!("expected PUBACK or DISCONNECT, got {other:?}"),
            },
        }
    }
}

/// What a broker answered to a QoS 1 PUBLISH.
#[derive(Debug)]
enum Answer {
    PubAck(PubAck),
    Disconnect {
        reason: u8,
        reason_string: Option<String>,
    },
    Closed,
}

/// Checks that a PUBACK accepts the message: Success, or No Matching
/// Subscribers (0x10), which is also a success.
fn assert_accepted(ack: &PubAck, what: &str) {
    assert!(
        matches!(
            ack.reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "PUBACK for {what} accepts it, got {:?}",
        ack.reason
    );
}

fn properties() -> PublishProperties {
    PublishProperties::default()
}

// ---------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------

fn expiring(seconds: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(seconds),
        ..properties()
    }
}

/// Connects a subscriber whose session outlives the connection, subscribes
/// it to `topic` at QoS 1 and takes it offline.
async fn offline_subscriber(addr: SocketAddr, p: &str, topic: &str) -> String {
    let id = client_id("offline");
    let (mut sub, _) = V5::connect_as(addr, p, &id, |o| {
        o.set_session_expiry_interval(Some(300));
    })
    .await;
    sub.subscribe_ok(topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    id
}

async fn reconnect_subscriber(addr: SocketAddr, p: &str, id: &str) -> V5 {
    let (sub, connack) = V5::connect_as(addr, p, id, |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(300));
    })
    .await;
    assert!(connack.session_present, "the persistent session is resumed");
    sub
}

#[tokio::test]
async fn message_expiry_interval_is_reduced_by_the_time_the_message_waited() {
    let broker = common::start_broker().await;
    let p = unique("expiry-left");
    let topic = format!("{p}/t");
    let id = offline_subscriber(broker.addr, &p, &topic).await;

    let (mut publisher, _) = V5::connect(broker.addr, &p).await;
    let ack = publisher.publish(&topic, "waits", expiring(5)).await;
    assert_accepted(&ack, "publish");
    let published = Instant::now();

    // The message has to wait for the offline subscriber for a while: that
    // time is what the forwarded interval must account for.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(published.elapsed())).await;

    let mut sub = reconnect_subscriber(broker.addr, &p, &id).await;
    let msg = sub.next_publish().await;
    assert_eq!(msg.payload, Bytes::from_static(b"waits"));
    let left = msg
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the forwarded message keeps a message expiry interval");
    assert!(
        (1..5).contains(&left),
        "expiry 5 s, queued for at least 1.5 s: forwarded interval must be 1..=4, got {left}"
    );
}

#[tokio::test]
async fn message_that_expired_while_queued_is_never_delivered() {
    let broker = common::start_broker().await;
    let p = unique("expiry-gone");
    let topic = format!("{p}/t");
    let id = offline_subscriber(broker.addr, &p, &topic).await;

    let (mut publisher, _) = V5::connect(broker.addr, &p).await;
    let ack = publisher.publish(&topic, "expires", expiring(1)).await;
    assert_accepted(&ack, "publish");
    let published = Instant::now();
    let ack = publisher.publish(&topic, "marker", expiring(600)).await;
    assert_accepted(&ack, "publish");

    // Let the first message's one second run out (with margin for brokers
    // that count whole seconds).
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(published.elapsed())).await;

    let mut sub = reconnect_subscriber(broker.addr, &p, &id).await;
    let msg = sub.next_publish().await;
    assert_eq!(
        msg.payload,
        Bytes::from_static(b"marker"),
        "the expired message is dropped, the later one still arrives"
    );
}

#[tokio::test]
async fn retained_message_expires_and_keeps_counting_down_while_stored() {
    let broker = common::start_broker().await;
    let p = unique("retained-expiry");
    let (mut publisher, _) = V5::connect(broker.addr, &p).await;
    for (topic, payload, seconds) in [("r/short", "expires", 1), ("r/long", "stays", 60)] {
        publisher
            .client
            .publish_with_properties(
                format!("{p}/{topic}"),
                QoS::AtLeastOnce,
                true,
                payload,
                expiring(seconds),
            )
            .await
            .expect("publish queued");
        let ack = publisher
            .wait_for("PUBACK", |p| match p {
                Packet::PubAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await;
        assert_accepted(&ack, "publish");
    }
    let published = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(published.elapsed())).await;

    let (mut sub, _) = V5::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/r/#"), QoS::AtLeastOnce)
        .await;
    let marker = format!("{p}/r/marker");
    publisher.publish_plain(&marker, "marker").await;

    let stays = sub.next_publish().await;
    assert_eq!(
        (topic_of(&stays), stays.retain),
        (format!("{p}/r/long"), true),
        "only the unexpired retained message is sent on subscribe"
    );
    let left = stays
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the retained message keeps its expiry interval");
    assert!(
        (1..=58).contains(&left),
        "60 s expiry, stored for 2.5 s: forwarded interval must be at most 58, got {left}"
    );
    assert_eq!(topic_of(&sub.next_publish().await), marker);
}

// ---------------------------------------------------------------------------
// Topic aliases from the client
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_topic_alias_is_resolved_to_the_full_topic_for_subscribers() {
    let broker = common::start_broker().await;
    let p = unique("alias");
    let (first_topic, second_topic) = (format!("{p}/first"), format!("{p}/second"));
    let (mut sub, _) = V5::connect(broker.addr, &p).await;
    sub.subscribe_ok(&format!("{p}/#"), QoS::AtLeastOnce).await;

    let (mut publisher, connack) = V5::connect(broker.addr, &p).await;
    let alias_max = connack
        .properties
        .as_ref()
        .and_then(|p| p.topic_alias_max)
        .unwrap_or(0);
    assert!(
        alias_max >= 1,
        "the broker accepts topic aliases from clients"
    );

    let alias = |topic_alias| PublishProperties {
        topic_alias: Some(topic_alias),
        ..properties()
    };
    // Set up alias 1, use it, map it to another topic, use it again.
    for (topic, payload) in [
        (first_topic.as_str(), "sets up"),
        ("", "uses"),
        (second_topic.as_str(), "remaps"),
        ("", "uses again"),
    ] {
        let ack = publisher.publish(topic, payload, alias(1)).await;
        assert_accepted(&ack, payload);
    }

    for (topic, payload) in [
        (&first_topic, "sets up"),
        (&first_topic, "uses"),
        (&second_topic, "remaps"),
        (&second_topic, "uses again"),
    ] {
        let msg = sub.next_publish().await;
        assert_eq!(
            (topic_of(&msg), msg.payload.clone()),
            (topic.clone(), Bytes::from(payload)),
            "delivered with the full topic"
        );
        let forwarded_alias = msg.properties.as_ref().and_then(|p| p.topic_alias);
        assert_eq!(
            forwarded_alias, None,
            "the publisher's alias is not forwarded to a subscriber that allowed none"
        );
    }
}

/// Connects a raw MQTT 5 client and publishes at QoS 1 with `topic` and
/// Topic Alias `alias`; returns the broker's answer and its Topic Alias Maximum.
async fn publish_with_alias(addr: SocketAddr, topic: &str, alias: u16) -> (Answer, u16) {
    let (mut raw, connack) = Raw::connect_v5(addr, None).await;
    let alias_max = connack
        .properties
        .as_ref()
        .and_then(|p| p.topic_alias_max)
        .unwrap_or(0);
    let properties = PublishProperties {
        topic_alias: Some(alias),
        ..properties()
    };
    let answer = raw.publish_qos1(1, topic, b"x", Some(properties)).await;
    (answer, alias_max)
}

#[tokio::test]
async fn topic_alias_above_the_server_maximum_is_disconnected_with_topic_alias_invalid() {
    let broker = common::start_broker().await;
    let p = unique("alias-max");
    let (_, alias_max) = publish_with_alias(broker.addr, &format!("{p}/t"), 1).await;
    let (answer, _) = publish_with_alias(broker.addr, &format!("{p}/t"), alias_max + 1).await;
    match answer {
        Answer::Disconnect { reason, .. } => assert_eq!(
            reason,
            0x94,
            "Topic Alias Invalid (0x94) for alias {}, got {reason:#x}",
            alias_max + 1
        ),
        other => panic!("expected DISCONNECT 0x94, got {other:?}"),
    }
}

#[tokio::test]
async fn topic_alias_zero_is_a_protocol_violation_that_disconnects() {
    let broker = common::start_broker().await;
    let p = unique("alias-zero");
    let (answer, _) = publish_with_alias(broker.addr, &format!("{p}/t"), 0).await;
    match answer {
        // The spec names no reason code for alias 0; any protocol-violation
        // code fits.
        Answer::Disconnect { reason, .. } => assert!(
            [0x81, 0x82, 0x94].contains(&reason),
            "Malformed Packet, Protocol Error or Topic Alias Invalid, got {reason:#x}"
        ),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test]
async fn empty_topic_with_an_alias_that_has_no_mapping_is_refused() {
    let broker = common::start_broker().await;
    match publish_with_alias(broker.addr, "", 1).await.0 {
        Answer::Disconnect { reason, .. } => assert!(
            reason == 0x82 || reason == 0x94,
            "Protocol Error (0x82) or Topic Alias Invalid (0x94), got {reason:#x}"
        ),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Maximum packet size
// ---------------------------------------------------------------------------

#[tokio::test]
async fn subscriber_maximum_packet_size_skips_larger_messages_but_not_later_small_ones() {
    let broker = common::start_broker().await;
    let p = unique("client-max");
    let topic = format!("{p}/t");
    let (mut sub, _) = V5::connect_as(broker.addr, &p, &client_id("small"), |o| {
        o.set_max_packet_size(Some(512));
    })
    .await;
    sub.subscribe_ok(&topic, QoS::AtLeastOnce).await;

    let (mut publisher, _) = V5::connect(broker.addr, &p).await;
    publisher.publish_plain(&topic, &"x".repeat(2000)).await;
    publisher.publish_plain(&topic, "small").await;

    // rumqttc fails the connection if a packet above 512 bytes arrives.
    let msg = sub.next_publish().await;
    assert_eq!(
        msg.payload,
        Bytes::from_static(b"small"),
        "the oversized message is skipped, the small one delivered"
    );
}

#[tokio::test]
async fn v5_publish_above_the_server_maximum_packet_size_is_disconnected_with_packet_too_large() {
    let broker = common::start_broker_with(|s| s.limits.max_packet_size = 1024).await;
    let p = unique("server-max");
    let topic = format!("{p}/t");
    let mut sub = V5::subscribed(broker.addr, &p, &topic).await;

    let (mut raw, connack) = Raw::connect_v5(broker.addr, None).await;
    assert_eq!(
        connack.properties.as_ref().and_then(|p| p.max_packet_size),
        Some(1024),
        "CONNACK tells the client the server's Maximum Packet Size"
    );

    // Just below the limit is fine.
    let fits = vec![b'f'; 900];
    match raw.publish_qos1(1, &topic, &fits, None).await {
        Answer::PubAck(ack) => assert_accepted(&ack, "raw publish"),
        other => panic!("a 900-byte payload fits in 1024 bytes, got {other:?}"),
    }
    assert_eq!(sub.next_publish().await.payload.len(), 900);

    let too_big = vec![b'x'; 2000];
    match raw.publish_qos1(2, &topic, &too_big, None).await {
        Answer::Disconnect { reason, .. } => assert_eq!(
            reason, 0x95,
            "DISCONNECT reason is Packet Too Large (0x95), got {reason:#x}"
        ),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    assert!(
        raw.frames_until_closed().await.is_empty(),
        "nothing after DISCONNECT"
    );

    sub.expect_marker_next(
        broker.addr,
        &p,
        &topic,
        "the oversized message was not routed",
    )
    .await;
}

#[tokio::test]
async fn v311_publish_above_the_server_maximum_packet_size_closes_the_connection() {
    let broker = common::start_broker_with(|s| s.limits.max_packet_size = 1024).await;
    let p = unique("server-max4");
    let topic = format!("{p}/t");
    let mut sub = V5::subscribed(broker.addr, &p, &topic).await;

    let mut raw = Raw::connect_v4(broker.addr).await;
    let mut out = BytesMut::new();
    rumqttc::Publish::new(&topic, rumqttc::QoS::AtMostOnce, vec![b'x'; 2000])
        .write(&mut out)
        .expect("encode PUBLISH");
    raw.send(&out).await;
    let frames = raw.frames_until_closed().await;
    assert!(
        frames.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {frames:?}"
    );

    sub.expect_marker_next(
        broker.addr,
        &p,
        &topic,
        "the oversized message was not routed",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Pass-through properties
// ---------------------------------------------------------------------------

#[tokio::test]
async fn user_properties_and_request_response_properties_are_forwarded_unchanged() {
    let broker = common::start_broker().await;
    let p = unique("pass-through");
    let topic = format!("{p}/request");
    let mut sub = V5::subscribed(broker.addr, &p, &topic).await;

    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".into()),
        response_topic: Some(format!("{p}/reply/42")),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xfe, 0xff])),
        user_properties: vec![
            ("k".into(), "1".into()),
            ("a".into(), "2".into()),
            ("k".into(), "3".into()),
            ("ünïcode".into(), "välue".into()),
            ("empty".into(), "".into()),
        ],
        ..properties()
    };
    let (mut publisher, _) = V5::connect(broker.addr, &p).await;
    let ack = publisher.publish(&topic, r#"{"q":1}"#, sent.clone()).await;
    assert_accepted(&ack, "publish");

    let msg = sub.next_publish().await;
    let got = msg.properties.expect("the message keeps its properties");
    assert_eq!(
        got.payload_format_indicator,
        Some(1),
        "payload format indicator"
    );
    assert_eq!(got.content_type, sent.content_type, "content type");
    assert_eq!(got.response_topic, sent.response_topic, "response topic");
    assert_eq!(
        got.correlation_data, sent.correlation_data,
        "correlation data"
    );
    assert_eq!(
        got.user_properties, sent.user_properties,
        "user properties, with duplicates and in their order"
    );
}

#[tokio::test]
async fn response_topic_with_wildcards_is_refused() {
    let broker = common::start_broker().await;
    let p = unique("bad-response-topic");
    let topic = format!("{p}/t");
    let mut sub = V5::subscribed(broker.addr, &p, &topic).await;

    let (mut raw, _) = Raw::connect_v5(broker.addr, None).await;
    let bad = PublishProperties {
        response_topic: Some(format!("{p}/replies/+")),
        ..properties()
    };
    match raw.publish_qos1(1, &topic, b"request", Some(bad)).await {
        Answer::Disconnect { reason, .. } => assert!(
            reason >= 0x80,
            "DISCONNECT with an error reason code, got {reason:#x}"
        ),
        Answer::PubAck(ack) => assert!(
            !matches!(
                ack.reason,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            ),
            "a wildcard Response Topic is not accepted, got PUBACK {:?}",
            ack.reason
        ),
        Answer::Closed => {}
    }

    sub.expect_marker_next(
        broker.addr,
        &p,
        &topic,
        "the request with the invalid Response Topic was not routed",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Payload format indicator
// ---------------------------------------------------------------------------

fn utf8_declared() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        ..properties()
    }
}

const NOT_UTF8: &[u8] = &[b'o', b'k', 0xff, 0xfe, 0xc3];

#[tokio::test]
async fn payload_declared_utf8_but_invalid_is_refused_with_payload_format_invalid() {
    let broker = common::start_broker().await;
    let p = unique("bad-utf8");
    let topic = format!("{p}/t");
    let mut sub = V5::subscribed(broker.addr, &p, &topic).await;

    // The same bytes without the UTF-8 declaration are just binary data.
    let (mut raw, _) = Raw::connect_v5(broker.addr, None).await;
    match raw.publish_qos1(1, &topic, NOT_UTF8, None).await {
        Answer::PubAck(ack) => assert_accepted(&ack, "raw publish"),
        other => panic!("a binary payload is accepted, got {other:?}"),
    }
    assert_eq!(
        sub.next_publish().await.payload,
        Bytes::from_static(NOT_UTF8)
    );

    match raw
        .publish_qos1(2, &topic, NOT_UTF8, Some(utf8_declared()))
        .await
    {
        Answer::PubAck(ack) => assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid),
        Answer::Disconnect { reason, .. } => {
            assert_eq!(reason, 0x99, "DISCONNECT reason Payload Format Invalid")
        }
        Answer::Closed => panic!("closed without PUBACK 0x99 or DISCONNECT 0x99"),
    }

    sub.expect_marker_next(
        broker.addr,
        &p,
        &topic,
        "the invalid message was not routed",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Response information
// ---------------------------------------------------------------------------

#[tokio::test]
async fn requested_response_information_is_returned_in_connack() {
    let broker = common::start_broker().await;
    let p = unique("response-info");
    let (_client, connack) = V5::connect_as(broker.addr, &p, &client_id("rri"), |o| {
        let mut props = ConnectProperties::new();
        props.request_response_info = Some(1);
        o.set_connect_properties(props);
    })
    .await;
    let info = connack
        .properties
        .and_then(|p| p.response_information)
        .expect("CONNACK carries Response Information when the client asks for it");
    assert!(
        !info.is_empty(),
        "Response Information is a usable topic prefix"
    );
}

#[tokio::test]
async fn response_information_is_not_sent_unless_requested() {
    let broker = common::start_broker().await;
    let p = unique("no-response-info");
    let (_client, connack) = V5::connect(broker.addr, &p).await;
    assert_eq!(
        connack.properties.and_then(|p| p.response_information),
        None,
        "no Response Information without Request Response Information = 1"
    );
}

// ---------------------------------------------------------------------------
// Reason strings and request problem information
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failure_acknowledgement_carries_a_reason_string_by_default() {
    let broker = common::start_broker().await;
    let p = unique("reason-string");
    let (mut raw, _) = Raw::connect_v5(broker.addr, None).await;
    let answer = raw
        .publish_qos1(1, &format!("{p}/t"), NOT_UTF8, Some(utf8_declared()))
        .await;
    let reason_string = match answer {
        Answer::PubAck(ack) => {
            assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid);
            ack.properties.and_then(|p| p.reason_string)
        }
        Answer::Disconnect {
            reason,
            reason_string,
        } => {
            assert_eq!(reason, 0x99);
            reason_string
        }
        Answer::Closed => panic!("closed without PUBACK 0x99 or DISCONNECT 0x99"),
    };
    let reason_string = reason_string.expect("a reason string explains the refusal");
    assert!(!reason_string.is_empty());
}

#[tokio::test]
async fn no_reason_string_on_acknowledgements_when_problem_information_is_not_requested() {
    let broker = common::start_broker().await;
    let p = unique("no-reason-string");
    let mut props = ConnectProperties::new();
    props.request_problem_info = Some(0);

    // An UNSUBACK with a non-success reason code: no reason string, no user properties.
    let (mut raw, _) = Raw::connect_v5(broker.addr, Some(props.clone())).await;
    let unsubscribe = rumqttc::v5::mqttbytes::v5::Unsubscribe {
        pkid: 7,
        filters: vec![format!("{p}/never-subscribed")],
        properties: None,
    };
    raw.send_packet(Packet::Unsubscribe(unsubscribe)).await;
    let frame = raw.next_frame().await.expect("UNSUBACK, not a close");
    let Packet::UnsubAck(ack) = frame.decode() else {
        panic!("expected UNSUBACK, got {frame:?}");
    };
    assert_eq!(ack.reasons, vec![UnsubAckReason::NoSubscriptionExisted]);
    assert_eq!(
        ack.properties, None,
        "no reason string or user properties on UNSUBACK"
    );

    // A refused PUBLISH: a PUBACK must not carry a reason string (a
    // DISCONNECT may).
    let answer = raw
        .publish_qos1(1, &format!("{p}/t"), NOT_UTF8, Some(utf8_declared()))
        .await;
    match answer {
        Answer::PubAck(ack) => {
            assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid);
            assert_eq!(
                ack.properties, None,
                "no reason string or user properties on PUBACK"
            );
        }
        Answer::Disconnect { reason, .. } => assert_eq!(reason, 0x99),
        Answer::Closed => panic!("closed without PUBACK 0x99 or DISCONNECT 0x99"),
    }
}
