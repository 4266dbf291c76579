//! QoS 0/1/2 as MQTT 3.1.1 and 5.0 require of a server, in both directions:
//! acknowledgement flows, QoS downgrade to the granted QoS, redelivery with DUP
//! on session resume, exactly-once routing of inbound QoS 2, the outbound
//! inflight window, and the bounded per-session queue (DESIGN §3).
//!
//! Clients are rumqttc where it can say what the test needs, and a raw TCP
//! socket with hand-encoded packets where a client library would hide the
//! behaviour (re-sent PUBLISH before PUBREL, withheld acknowledgements).

mod common;

use std::net::SocketAddr;

use common::ids::unique_id;
use common::mqtt::{Client4, Client5, Message, v4api, v5api};

fn q4(qos: u8) -> v4api::QoS {
    match qos {
        0 => v4api::QoS::AtMostOnce,
        1 => v4api::QoS::AtLeastOnce,
        _ => v4api::QoS::ExactlyOnce,
    }
}

fn q5(qos: u8) -> v5api::QoS {
    match qos {
        0 => v5api::QoS::AtMostOnce,
        1 => v5api::QoS::AtLeastOnce,
        _ => v5api::QoS::ExactlyOnce,
    }
}

fn v4_persistent_manual_acks(options: &mut v4api::MqttOptions) {
    options.set_clean_session(false);
    options.set_manual_acks(true);
}

fn v5_persistent_manual_acks(options: &mut v5api::MqttOptions) {
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    options.set_manual_acks(true);
}

// ---------------------------------------------------------------------------
// Raw sockets with hand-encoded packets
// ---------------------------------------------------------------------------

mod raw {
    use mqttbytes::QoS;

    pub use crate::common::wire::{
        CONNACK, DISCONNECT, Frame, PINGRESP, PUBCOMP, PUBLISH, PUBREC, PUBREL, Raw, SUBACK,
        connack_u16_property, connect_v4_bytes, connect_v5_bytes, encode, varint_at,
    };

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Publish {
        pub topic: String,
        pub qos: u8,
        pub dup: bool,
        pub pkid: u16,
        pub payload: String,
    }

    /// Decodes a PUBLISH frame (`v5` says whether a property block follows
    /// the packet identifier).
    pub fn parse_publish(frame: &Frame, v5: bool) -> Publish {
        assert_eq!(
            frame.packet_type(),
            PUBLISH,
            "expected PUBLISH, got {frame:?}"
        );
        let qos = (frame.first >> 1) & 0x03;
        let dup = frame.first & 0x08 != 0;
        let body = &frame.body;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("UTF-8 topic");
        let mut at = 2 + topic_len;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([body[at], body[at + 1]]);
            at += 2;
        }
        if v5 {
            let properties_len = varint_at(body, &mut at);
            at += properties_len;
        }
        let payload = String::from_utf8_lossy(&body[at..]).into_owned();
        Publish {
            topic,
            qos,
            dup,
            pkid,
            payload,
        }
    }

    impl Raw {
        pub async fn expect_publish(&mut self) -> Publish {
            let frame = self.expect_frame(PUBLISH).await;
            parse_publish(&frame, self.v5)
        }

        /// Sends PINGREQ and returns every PUBLISH that arrives before the
        /// PINGRESP. The broker answers packets in order, so anything it had
        /// decided to send before reading the PINGREQ shows up here.
        pub async fn publishes_before_pingresp(&mut self) -> Vec<Publish> {
            self.send(&[0xC0, 0x00]).await;
            let mut seen = Vec::new();
            loop {
                let frame = self
                    .next_frame()
                    .await
                    .expect("connection open until PINGRESP");
                match frame.packet_type() {
                    PINGRESP => return seen,
                    PUBLISH => seen.push(parse_publish(&frame, self.v5)),
                    other => panic!("unexpected packet type {other} before PINGRESP: {frame:?}"),
                }
            }
        }

        pub async fn puback(&mut self, pkid: u16) {
            // PUBACK with only a packet identifier is valid in 3.1.1 and 5.0.
            self.send(&[0x40, 0x02, (pkid >> 8) as u8, pkid as u8])
                .await;
        }

        pub async fn pubrec(&mut self, pkid: u16) {
            self.send(&[0x50, 0x02, (pkid >> 8) as u8, pkid as u8])
                .await;
        }

        pub async fn pubrel(&mut self, pkid: u16) {
            self.send(&[0x62, 0x02, (pkid >> 8) as u8, pkid as u8])
                .await;
        }

        pub async fn pubcomp(&mut self, pkid: u16) {
            self.send(&[0x70, 0x02, (pkid >> 8) as u8, pkid as u8])
                .await;
        }

        /// Sends CONNECT and returns whether the CONNACK says session present.
        pub async fn mqtt_connect(
            &mut self,
            id: &str,
            clean: bool,
            receive_maximum: Option<u16>,
        ) -> bool {
            let bytes = if self.v5 {
                let session_expiry = if clean { None } else { Some(300) };
                connect_v5_bytes(id, clean, 60, None, session_expiry, receive_maximum)
            } else {
                assert!(receive_maximum.is_none(), "3.1.1 has no Receive Maximum");
                connect_v4_bytes(id, clean, 60)
            };
            self.send(&bytes).await;
            let connack = self.expect_frame(CONNACK).await;
            assert_eq!(connack.body[1], 0x00, "CONNACK code for {id}: {connack:?}");
            connack.body[0] & 0x01 == 1
        }

        pub async fn subscribe(&mut self, filter: &str, qos: u8) {
            let qos = qos_of(qos);
            let bytes = if self.v5 {
                let mut subscribe = mqttbytes::v5::Subscribe::new(filter, qos);
                subscribe.pkid = 1;
                encode(|b| subscribe.write(b))
            } else {
                let mut subscribe = mqttbytes::v4::Subscribe::new(filter, qos);
                subscribe.pkid = 1;
                encode(|b| subscribe.write(b))
            };
            self.send(&bytes).await;
            let suback = self.expect_frame(SUBACK).await;
            let code = *suback.body.last().unwrap();
            assert!(code < 0x80, "subscription to {filter} refused: {suback:?}");
        }

        pub async fn publish(&mut self, topic: &str, qos: u8, pkid: u16, dup: bool, payload: &str) {
            let qos = qos_of(qos);
            let bytes = if self.v5 {
                let mut publish =
                    mqttbytes::v5::Publish::new(topic, qos, payload.as_bytes().to_vec());
                publish.pkid = pkid;
                publish.dup = dup;
                encode(|b| publish.write(b))
            } else {
                let mut publish =
                    mqttbytes::v4::Publish::new(topic, qos, payload.as_bytes().to_vec());
                publish.pkid = pkid;
                publish.dup = dup;
                encode(|b| publish.write(b))
            };
            self.send(&bytes).await;
        }
    }

    pub fn qos_of(n: u8) -> QoS {
        match n {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

use raw::Raw;

// ---------------------------------------------------------------------------
// Delivery QoS and acknowledgement flows
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_delivered_qos_is_min_of_published_and_granted() {
    let broker = common::start_broker().await;
    let id = unique_id("min4");
    let (mut sub, _) = Client4::connect(broker.addr, &id, |_| {}).await;
    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    for granted in 0..=2u8 {
        let topic = format!("petrel-test/{id}/granted{granted}");
        let codes = sub.subscribe(&topic, q4(granted)).await;
        assert_eq!(
            codes,
            vec![v4api::SubscribeReasonCode::Success(q4(granted))]
        );
        for published in 0..=2u8 {
            let payload = format!("published at {published}");
            publisher.publish(&topic, q4(published), &payload).await;
            let delivered = sub.next_publish().await;
            assert_eq!(delivered.topic_text(), topic);
            assert_eq!(delivered.payload_text(), payload);
            assert_eq!(
                delivered.qos,
                q4(published.min(granted)),
                "[MQTT-3.8.4-6] published at {published} to a QoS {granted} subscription"
            );
            assert_eq!(
                delivered.pkid == 0,
                published.min(granted) == 0,
                "packet id iff QoS > 0"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_delivered_qos_is_min_of_published_and_granted() {
    let broker = common::start_broker().await;
    let id = unique_id("min5");
    let (mut sub, _) = Client5::connect(broker.addr, &id, |_| {}).await;
    let (mut publisher, _) = Client5::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    for granted in 0..=2u8 {
        let topic = format!("petrel-test/{id}/granted{granted}");
        let codes = sub.subscribe(&topic, q5(granted)).await;
        assert_eq!(
            codes,
            vec![v5api::SubscribeReasonCode::Success(q5(granted))]
        );
        for published in 0..=2u8 {
            let payload = format!("published at {published}");
            publisher.publish(&topic, q5(published), &payload).await;
            let delivered = sub.next_publish().await;
            assert_eq!(delivered.topic_text(), topic);
            assert_eq!(delivered.payload_text(), payload);
            assert_eq!(
                delivered.qos,
                q5(published.min(granted)),
                "[MQTT-3.8.4-8] published at {published} to a QoS {granted} subscription"
            );
            assert_eq!(
                delivered.pkid == 0,
                published.min(granted) == 0,
                "packet id iff QoS > 0"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos1_and_qos2_acknowledgement_flows_complete_in_both_directions() {
    let broker = common::start_broker().await;
    let id = unique_id("flows4");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client4::connect(broker.addr, &id, |_| {}).await;
    sub.subscribe(&topic, v4api::QoS::ExactlyOnce).await;
    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;

    // QoS 1: PUBLISH -> PUBACK with the same packet id, both ways.
    publisher
        .client
        .publish(&topic, v4api::QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    let sent = publisher
        .wait_for("PUBLISH written", |e| {
            matches!(e, v4api::Event::Outgoing(v4api::Outgoing::Publish(_)))
        })
        .await;
    let v4api::Event::Outgoing(v4api::Outgoing::Publish(pkid)) = sent else {
        unreachable!()
    };
    let acked = publisher
        .wait_for("PUBACK", |e| {
            matches!(e, v4api::Event::Incoming(v4api::Packet::PubAck(_)))
        })
        .await;
    assert!(matches!(acked, v4api::Event::Incoming(v4api::Packet::PubAck(a)) if a.pkid == pkid));
    let delivered = sub.next_publish().await;
    assert_eq!(
        (delivered.qos, delivered.payload_text().as_str()),
        (v4api::QoS::AtLeastOnce, "one")
    );
    sub.wait_for(
        "our PUBACK",
        |e| matches!(e, v4api::Event::Outgoing(v4api::Outgoing::PubAck(p)) if *p == delivered.pkid),
    )
    .await;

    // QoS 2 from the publisher: PUBREC, PUBREL, PUBCOMP with one packet id.
    publisher
        .client
        .publish(&topic, v4api::QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let sent = publisher
        .wait_for("PUBLISH written", |e| {
            matches!(e, v4api::Event::Outgoing(v4api::Outgoing::Publish(_)))
        })
        .await;
    let v4api::Event::Outgoing(v4api::Outgoing::Publish(pkid)) = sent else {
        unreachable!()
    };
    publisher
        .wait_for(
            "PUBREC",
            |e| matches!(e, v4api::Event::Incoming(v4api::Packet::PubRec(r)) if r.pkid == pkid),
        )
        .await;
    publisher
        .wait_for(
            "PUBCOMP",
            |e| matches!(e, v4api::Event::Incoming(v4api::Packet::PubComp(c)) if c.pkid == pkid),
        )
        .await;

    // QoS 2 to the subscriber: it sends PUBREC, gets PUBREL, sends PUBCOMP.
    let delivered = sub.next_publish().await;
    assert_eq!(
        (delivered.qos, delivered.payload_text().as_str()),
        (v4api::QoS::ExactlyOnce, "two")
    );
    let pkid = delivered.pkid;
    sub.wait_for(
        "PUBREL from the broker",
        |e| matches!(e, v4api::Event::Incoming(v4api::Packet::PubRel(r)) if r.pkid == pkid),
    )
    .await;
    sub.wait_for(
        "our PUBCOMP",
        |e| matches!(e, v4api::Event::Outgoing(v4api::Outgoing::PubComp(p)) if *p == pkid),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos1_and_qos2_acknowledgement_flows_complete_in_both_directions() {
    let broker = common::start_broker().await;
    let id = unique_id("flows5");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client5::connect(broker.addr, &id, |_| {}).await;
    sub.subscribe(&topic, v5api::QoS::ExactlyOnce).await;
    let (mut publisher, _) = Client5::connect(broker.addr, &unique_id("pub"), |_| {}).await;

    publisher
        .client
        .publish(&topic, v5api::QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    let acked = publisher
        .wait_for("PUBACK", |e| {
            matches!(e, v5api::Event::Incoming(v5api::Packet::PubAck(_)))
        })
        .await;
    let v5api::Event::Incoming(v5api::Packet::PubAck(puback)) = acked else {
        unreachable!()
    };
    assert_eq!(
        puback.reason,
        v5api::PubAckReason::Success,
        "a subscriber matched"
    );
    let delivered = sub.next_publish().await;
    assert_eq!(
        (delivered.qos, delivered.payload_text().as_str()),
        (v5api::QoS::AtLeastOnce, "one")
    );

    publisher
        .client
        .publish(&topic, v5api::QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let rec = publisher
        .wait_for("PUBREC", |e| {
            matches!(e, v5api::Event::Incoming(v5api::Packet::PubRec(_)))
        })
        .await;
    let v5api::Event::Incoming(v5api::Packet::PubRec(pubrec)) = rec else {
        unreachable!()
    };
    assert_eq!(
        pubrec.reason,
        v5api::PubRecReason::Success,
        "a subscriber matched"
    );
    let comp = publisher
        .wait_for("PUBCOMP", |e| {
            matches!(e, v5api::Event::Incoming(v5api::Packet::PubComp(_)))
        })
        .await;
    let v5api::Event::Incoming(v5api::Packet::PubComp(pubcomp)) = comp else {
        unreachable!()
    };
    assert_eq!(pubcomp.pkid, pubrec.pkid);
    assert_eq!(pubcomp.reason, v5api::PubCompReason::Success);

    let delivered = sub.next_publish().await;
    assert_eq!(
        (delivered.qos, delivered.payload_text().as_str()),
        (v5api::QoS::ExactlyOnce, "two")
    );
    let pkid = delivered.pkid;
    sub.wait_for(
        "PUBREL from the broker",
        |e| matches!(e, v5api::Event::Incoming(v5api::Packet::PubRel(r)) if r.pkid == pkid),
    )
    .await;
    sub.wait_for(
        "our PUBCOMP",
        |e| matches!(e, v5api::Event::Outgoing(v5api::Outgoing::PubComp(p)) if *p == pkid),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Redelivery on session resume
// ---------------------------------------------------------------------------

/// Three QoS 1 messages reach a manual-ack subscriber and stay unacknowledged;
/// the connection ends (DISCONNECT or a dropped socket); on resume the broker
/// re-sends all three, in order, with DUP 1 and their original packet ids.
async fn v4_resend_unacknowledged_on_resume(tag: &str, drop_connection: bool) {
    let broker = common::start_broker().await;
    let id = unique_id(tag);
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client4::connect(broker.addr, &id, v4_persistent_manual_acks).await;
    sub.subscribe(&topic, v4api::QoS::AtLeastOnce).await;
    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    let mut first = Vec::new();
    for n in 0..3 {
        let payload = format!("unacked {n}");
        publisher
            .publish(&topic, v4api::QoS::AtLeastOnce, &payload)
            .await;
        let delivered = sub.next_publish().await;
        assert_eq!(delivered.payload_text(), payload);
        assert!(!delivered.dup, "first delivery has DUP 0");
        first.push(delivered);
    }
    if drop_connection {
        sub.kill().await;
    } else {
        sub.disconnect().await;
    }

    let (mut sub, connack) = Client4::connect(broker.addr, &id, v4_persistent_manual_acks).await;
    assert!(connack.session_present);
    for original in &first {
        let again = sub.next_publish().await;
        assert_eq!(
            again.payload_text(),
            original.payload_text(),
            "[MQTT-4.6.0-1] re-sent in the original order"
        );
        assert!(again.dup, "[MQTT-3.3.1-1] re-delivery has DUP 1");
        assert_eq!(again.qos, v4api::QoS::AtLeastOnce);
        assert_eq!(
            again.pkid, original.pkid,
            "[MQTT-4.4.0-1] re-sent with the original packet id"
        );
        sub.client.ack(&again).await.unwrap();
    }
    sub.disconnect().await;

    // Acknowledged now: a further resume re-sends nothing.
    let (mut sub, connack) = Client4::connect(broker.addr, &id, v4_persistent_manual_acks).await;
    assert!(connack.session_present);
    publisher
        .publish(&topic, v4api::QoS::AtLeastOnce, "marker")
        .await;
    let seen = sub.payloads_before_marker("marker").await;
    assert!(
        seen.is_empty(),
        "acknowledged messages delivered again: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_unacknowledged_qos1_messages_are_resent_with_dup_on_session_resume() {
    v4_resend_unacknowledged_on_resume("dup4q1", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_unacknowledged_qos1_messages_are_resent_with_dup_after_the_connection_drops() {
    v4_resend_unacknowledged_on_resume("dup4drop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unacknowledged_qos1_messages_are_resent_with_dup_on_session_resume() {
    let broker = common::start_broker().await;
    let id = unique_id("dup5q1");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client5::connect(broker.addr, &id, v5_persistent_manual_acks).await;
    sub.subscribe(&topic, v5api::QoS::AtLeastOnce).await;
    let (mut publisher, _) = Client5::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    let mut first = Vec::new();
    for n in 0..3 {
        let payload = format!("unacked {n}");
        publisher
            .publish(&topic, v5api::QoS::AtLeastOnce, &payload)
            .await;
        let delivered = sub.next_publish().await;
        assert_eq!(delivered.payload_text(), payload);
        assert!(!delivered.dup, "first delivery has DUP 0");
        first.push(delivered);
    }
    sub.disconnect().await;

    let (mut sub, connack) = Client5::connect(broker.addr, &id, v5_persistent_manual_acks).await;
    assert!(connack.session_present);
    for original in &first {
        let again = sub.next_publish().await;
        assert_eq!(
            again.payload_text(),
            original.payload_text(),
            "[MQTT-4.6.0-1] re-sent in the original order"
        );
        assert!(again.dup, "[MQTT-3.3.1-1] re-delivery has DUP 1");
        assert_eq!(again.qos, v5api::QoS::AtLeastOnce);
        assert_eq!(
            again.pkid, original.pkid,
            "[MQTT-4.4.0-1] re-sent with the original packet id"
        );
        sub.client.ack(&again).await.unwrap();
    }
    sub.disconnect().await;

    let (mut sub, connack) = Client5::connect(broker.addr, &id, v5_persistent_manual_acks).await;
    assert!(connack.session_present);
    publisher
        .publish(&topic, v5api::QoS::AtLeastOnce, "marker")
        .await;
    let seen = sub.payloads_before_marker("marker").await;
    assert!(
        seen.is_empty(),
        "acknowledged messages delivered again: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_unacknowledged_qos2_message_is_resent_with_dup_on_session_resume() {
    let broker = common::start_broker().await;
    let id = unique_id("dup4q2");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client4::connect(broker.addr, &id, v4_persistent_manual_acks).await;
    sub.subscribe(&topic, v4api::QoS::ExactlyOnce).await;
    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    publisher
        .publish(&topic, v4api::QoS::ExactlyOnce, "unreceived")
        .await;

    let first = sub.next_publish().await;
    assert_eq!((first.qos, first.dup), (v4api::QoS::ExactlyOnce, false));
    sub.disconnect().await; // without PUBREC

    let (mut sub, connack) = Client4::connect(broker.addr, &id, v4_persistent_manual_acks).await;
    assert!(connack.session_present);
    let again = sub.next_publish().await;
    assert_eq!(again.payload_text(), "unreceived");
    assert!(again.dup, "[MQTT-3.3.1-1] re-delivery has DUP 1");
    assert_eq!(again.qos, v4api::QoS::ExactlyOnce);
    assert_eq!(
        again.pkid, first.pkid,
        "[MQTT-4.4.0-1] re-sent with the original packet id"
    );
    // Completing the flow now works: PUBREC -> PUBREL.
    sub.client.ack(&again).await.unwrap();
    let pkid = again.pkid;
    sub.wait_for(
        "PUBREL",
        |e| matches!(e, v4api::Event::Incoming(v4api::Packet::PubRel(r)) if r.pkid == pkid),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_unacknowledged_pubrel_is_resent_instead_of_the_publish_on_session_resume() {
    let broker = common::start_broker().await;
    let id = unique_id("pubrel4");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, false).await;
    sub.mqtt_connect(&id, false, None).await;
    sub.subscribe(&topic, 2).await;
    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    publisher
        .publish(&topic, v4api::QoS::ExactlyOnce, "released")
        .await;

    let delivered = sub.expect_publish().await;
    assert_eq!((delivered.qos, delivered.payload.as_str()), (2, "released"));
    sub.pubrec(delivered.pkid).await;
    let pubrel = sub.expect_frame(raw::PUBREL).await;
    assert_eq!(pubrel.ack_pkid(), delivered.pkid);
    drop(sub); // without PUBCOMP

    let mut sub = Raw::open(broker.addr, false).await;
    assert!(sub.mqtt_connect(&id, false, None).await, "session present");
    // [MQTT-4.4.0-1]: the PUBREL is re-sent; the PUBLISH is not.
    let pubrel = sub.expect_frame(raw::PUBREL).await;
    assert_eq!(pubrel.first, 0x62, "PUBREL fixed header flags");
    assert_eq!(pubrel.ack_pkid(), delivered.pkid);
    sub.pubcomp(delivered.pkid).await;
    let extra = sub.publishes_before_pingresp().await;
    assert!(
        extra.is_empty(),
        "released message delivered again: {extra:?}"
    );
}

// ---------------------------------------------------------------------------
// Inbound QoS 2: routed exactly once
// ---------------------------------------------------------------------------

/// Sends a QoS 2 PUBLISH twice (the second with DUP 1) before PUBREL and
/// checks each step's acknowledgement.
async fn publish_qos2_twice_then_release(
    publisher: &mut Raw,
    topic: &str,
    pkid: u16,
    payload: &str,
) {
    publisher.publish(topic, 2, pkid, false, payload).await;
    let pubrec = publisher.expect_frame(raw::PUBREC).await;
    assert_eq!(pubrec.ack_pkid(), pkid);
    // §4.3.3: a re-sent PUBLISH before PUBREL is acknowledged again with
    // PUBREC, and not routed again.
    publisher.publish(topic, 2, pkid, true, payload).await;
    let pubrec = publisher.expect_frame(raw::PUBREC).await;
    assert_eq!(pubrec.ack_pkid(), pkid);
    publisher.pubrel(pkid).await;
    let pubcomp = publisher.expect_frame(raw::PUBCOMP).await;
    assert_eq!(pubcomp.ack_pkid(), pkid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos2_publish_resent_before_pubrel_is_routed_once() {
    let broker = common::start_broker().await;
    let id = unique_id("once4");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client4::connect(broker.addr, &unique_id("sub"), |_| {}).await;
    sub.subscribe(&topic, v4api::QoS::ExactlyOnce).await;

    let mut publisher = Raw::open(broker.addr, false).await;
    publisher.mqtt_connect(&id, true, None).await;
    publish_qos2_twice_then_release(&mut publisher, &topic, 7, "exactly once").await;
    // After PUBCOMP the packet id is free: the same id carries a new message.
    publish_qos2_twice_then_release(&mut publisher, &topic, 7, "new message, same id").await;
    publisher.publish(&topic, 0, 0, false, "marker").await;

    let seen = sub.payloads_before_marker("marker").await;
    assert_eq!(
        seen,
        vec!["exactly once", "new message, same id"],
        "§4.3.3: routed once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_publish_resent_before_pubrel_is_routed_once() {
    let broker = common::start_broker().await;
    let id = unique_id("once5");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client5::connect(broker.addr, &unique_id("sub"), |_| {}).await;
    sub.subscribe(&topic, v5api::QoS::ExactlyOnce).await;

    let mut publisher = Raw::open(broker.addr, true).await;
    publisher.mqtt_connect(&id, true, None).await;
    publish_qos2_twice_then_release(&mut publisher, &topic, 7, "exactly once").await;
    publish_qos2_twice_then_release(&mut publisher, &topic, 7, "new message, same id").await;
    publisher.publish(&topic, 0, 0, false, "marker").await;

    let seen = sub.payloads_before_marker("marker").await;
    assert_eq!(
        seen,
        vec!["exactly once", "new message, same id"],
        "§4.3.3: routed once each"
    );
}

/// A raw publisher sends a QoS 2 PUBLISH, gets PUBREC, loses its connection,
/// resumes its session and re-sends the PUBLISH (DUP 1) before PUBREL; the
/// subscriber must receive one copy.
async fn qos2_resent_after_reconnect_is_routed_once(v5: bool) {
    let broker = common::start_broker().await;
    let id = unique_id(if v5 { "onceback5" } else { "onceback4" });
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client4::connect(broker.addr, &unique_id("sub"), |_| {}).await;
    sub.subscribe(&topic, v4api::QoS::ExactlyOnce).await;

    let mut publisher = Raw::open(broker.addr, v5).await;
    publisher.mqtt_connect(&id, false, None).await;
    publisher.publish(&topic, 2, 9, false, "exactly once").await;
    let pubrec = publisher.expect_frame(raw::PUBREC).await;
    assert_eq!(pubrec.ack_pkid(), 9);
    drop(publisher); // connection lost before PUBREL

    let mut publisher = Raw::open(broker.addr, v5).await;
    assert!(
        publisher.mqtt_connect(&id, false, None).await,
        "session present"
    );
    publisher.publish(&topic, 2, 9, true, "exactly once").await;
    let pubrec = publisher.expect_frame(raw::PUBREC).await;
    assert_eq!(pubrec.ack_pkid(), 9);
    publisher.pubrel(9).await;
    let pubcomp = publisher.expect_frame(raw::PUBCOMP).await;
    assert_eq!(pubcomp.ack_pkid(), 9);
    publisher.publish(&topic, 0, 0, false, "marker").await;

    let seen = sub.payloads_before_marker("marker").await;
    assert_eq!(
        seen,
        vec!["exactly once"],
        "routed once across the reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos2_publish_resent_after_reconnect_before_pubrel_is_routed_once() {
    qos2_resent_after_reconnect_is_routed_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_publish_resent_after_reconnect_before_pubrel_is_routed_once() {
    qos2_resent_after_reconnect_is_routed_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_pubrel_resent_after_reconnect_is_answered_and_the_message_routed_once() {
    let broker = common::start_broker().await;
    let id = unique_id("relback4");
    let topic = format!("petrel-test/{id}/data");
    let (mut sub, _) = Client4::connect(broker.addr, &unique_id("sub"), |_| {}).await;
    sub.subscribe(&topic, v4api::QoS::ExactlyOnce).await;

    let mut publisher = Raw::open(broker.addr, false).await;
    publisher.mqtt_connect(&id, false, None).await;
    publisher.publish(&topic, 2, 5, false, "exactly once").await;
    assert_eq!(publisher.expect_frame(raw::PUBREC).await.ack_pkid(), 5);
    publisher.pubrel(5).await;
    // The PUBCOMP is lost with the connection, as far as the client knows.
    drop(publisher);

    let mut publisher = Raw::open(broker.addr, false).await;
    assert!(
        publisher.mqtt_connect(&id, false, None).await,
        "session present"
    );
    // [MQTT-4.4.0-1] the client re-sends its PUBREL; [MQTT-4.3.3-11] the
    // server answers with PUBCOMP for the same packet id.
    publisher.pubrel(5).await;
    assert_eq!(publisher.expect_frame(raw::PUBCOMP).await.ack_pkid(), 5);
    publisher.publish(&topic, 0, 0, false, "marker").await;

    let seen = sub.payloads_before_marker("marker").await;
    assert_eq!(seen, vec!["exactly once"], "routed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_exceeding_the_server_receive_maximum_is_disconnected_with_0x93() {
    let broker = common::start_broker_with(|s| s.limits.receive_maximum = 2).await;
    let id = unique_id("inflow5");
    let topic = format!("petrel-test/{id}/data");
    let mut publisher = Raw::open(broker.addr, true).await;
    publisher
        .send(&raw::connect_v5_bytes(&id, true, 60, None, None, None))
        .await;
    let connack = publisher.expect_frame(raw::CONNACK).await;
    assert_eq!(
        raw::connack_u16_property(&connack, 0x21),
        Some(2),
        "CONNACK carries Receive Maximum = limits.receive_maximum"
    );
    // Two QoS 2 messages awaiting PUBREL use the whole quota ...
    for pkid in 1..=2 {
        publisher.publish(&topic, 2, pkid, false, "held").await;
        assert_eq!(publisher.expect_frame(raw::PUBREC).await.ack_pkid(), pkid);
    }
    // ... so a third breaks [MQTT-3.3.4-7]; MQTT 5 §3.3.4: the server
    // answers with DISCONNECT 0x93 (Receive Maximum exceeded).
    publisher.publish(&topic, 2, 3, false, "one too many").await;
    let frames = publisher.frames_until_closed().await;
    assert_eq!(frames.len(), 1, "one DISCONNECT then close: {frames:?}");
    assert_eq!(frames[0].packet_type(), raw::DISCONNECT);
    assert_eq!(frames[0].body.first(), Some(&0x93), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_packet_ids_are_never_reused_while_in_flight() {
    let broker = common::start_broker_with(|s| s.limits.max_inflight = 4).await;
    let id = unique_id("pkids");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, false).await;
    sub.mqtt_connect(&id, true, None).await;
    sub.subscribe(&topic, 1).await;
    publish_numbered_v4(broker.addr, &topic, 1, 0..40).await;

    // Acknowledge out of order (always the second-oldest) so that freed ids
    // and ids still in flight interleave; every new PUBLISH must carry an id
    // not held by an unacknowledged one [MQTT-2.3.1-2].
    let mut in_flight: Vec<raw::Publish> = Vec::new();
    let mut delivered = Vec::new();
    while delivered.len() < 40 {
        while in_flight.len() < 4 && delivered.len() + in_flight.len() < 40 {
            let publish = sub.expect_publish().await;
            assert_ne!(publish.pkid, 0);
            assert!(
                in_flight.iter().all(|p| p.pkid != publish.pkid),
                "packet id {} reused while in flight: {in_flight:?}",
                publish.pkid
            );
            in_flight.push(publish);
        }
        let done = in_flight.remove(if in_flight.len() > 1 { 1 } else { 0 });
        sub.puback(done.pkid).await;
        delivered.push(done.payload);
    }
    let mut numbers: Vec<u32> = delivered.iter().map(|p| p.parse().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..40).collect::<Vec<_>>(),
        "every message delivered once"
    );
}

// ---------------------------------------------------------------------------
// Outbound inflight window
// ---------------------------------------------------------------------------

/// Publishes `count` QoS 1 messages "0", "1", ... and waits for each PUBACK,
/// so all of them have been routed before the subscriber looks.
async fn publish_numbered_v4(addr: SocketAddr, topic: &str, qos: u8, range: std::ops::Range<u32>) {
    let (mut publisher, _) = Client4::connect(addr, &unique_id("pub"), |_| {}).await;
    for n in range {
        publisher.publish(topic, q4(qos), &n.to_string()).await;
    }
    publisher.disconnect().await;
}

fn payloads(publishes: &[raw::Publish]) -> Vec<&str> {
    publishes.iter().map(|p| p.payload.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_outbound_inflight_window_is_capped_by_max_inflight() {
    let broker = common::start_broker_with(|s| s.limits.max_inflight = 2).await;
    let id = unique_id("window4");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, false).await;
    sub.mqtt_connect(&id, true, None).await;
    sub.subscribe(&topic, 1).await;
    publish_numbered_v4(broker.addr, &topic, 1, 0..5).await;

    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    assert_eq!(payloads(&[first.clone(), second.clone()]), vec!["0", "1"]);
    let extra = sub.publishes_before_pingresp().await;
    assert!(
        extra.is_empty(),
        "more than max_inflight = 2 unacknowledged: {extra:?}"
    );

    sub.puback(first.pkid).await;
    let third = sub.expect_publish().await;
    assert_eq!(third.payload, "2", "one PUBACK frees one slot");
    let extra = sub.publishes_before_pingresp().await;
    assert!(
        extra.is_empty(),
        "more than max_inflight = 2 unacknowledged: {extra:?}"
    );

    sub.puback(second.pkid).await;
    sub.puback(third.pkid).await;
    let rest = [sub.expect_publish().await, sub.expect_publish().await];
    assert_eq!(payloads(&rest), vec!["3", "4"]);
    assert!(rest.iter().all(|p| p.qos == 1 && !p.dup));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_outbound_inflight_window_is_capped_by_client_receive_maximum() {
    let broker = common::start_broker().await;
    let id = unique_id("recvmax5");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, true).await;
    sub.mqtt_connect(&id, true, Some(1)).await;
    sub.subscribe(&topic, 1).await;
    publish_numbered_v4(broker.addr, &topic, 1, 0..3).await;

    for n in 0..3 {
        let delivered = sub.expect_publish().await;
        assert_eq!(delivered.payload, n.to_string());
        let extra = sub.publishes_before_pingresp().await;
        assert!(
            extra.is_empty(),
            "[MQTT-3.3.4-9] more than Receive Maximum 1 in flight: {extra:?}"
        );
        sub.puback(delivered.pkid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_outbound_inflight_window_is_the_smaller_of_receive_maximum_and_max_inflight() {
    let broker = common::start_broker_with(|s| s.limits.max_inflight = 2).await;
    let id = unique_id("window5");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, true).await;
    sub.mqtt_connect(&id, true, Some(5)).await;
    sub.subscribe(&topic, 1).await;
    publish_numbered_v4(broker.addr, &topic, 1, 0..4).await;

    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    assert_eq!(payloads(&[first.clone(), second.clone()]), vec!["0", "1"]);
    let extra = sub.publishes_before_pingresp().await;
    assert!(
        extra.is_empty(),
        "more than max_inflight = 2 unacknowledged: {extra:?}"
    );
    sub.puback(first.pkid).await;
    sub.puback(second.pkid).await;
    let rest = [sub.expect_publish().await, sub.expect_publish().await];
    assert_eq!(payloads(&rest), vec!["2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_message_holds_its_inflight_slot_until_pubcomp() {
    let broker = common::start_broker().await;
    let id = unique_id("slot5");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, true).await;
    sub.mqtt_connect(&id, true, Some(1)).await;
    sub.subscribe(&topic, 2).await;
    publish_numbered_v4(broker.addr, &topic, 2, 0..2).await;

    let first = sub.expect_publish().await;
    assert_eq!((first.payload.as_str(), first.qos), ("0", 2));
    sub.pubrec(first.pkid).await;
    let pubrel = sub.expect_frame(raw::PUBREL).await;
    assert_eq!(pubrel.ack_pkid(), first.pkid);
    // MQTT 5 §4.9: the send quota returns on PUBCOMP, not on PUBREC.
    let extra = sub.publishes_before_pingresp().await;
    assert!(
        extra.is_empty(),
        "second message sent before PUBCOMP: {extra:?}"
    );
    sub.pubcomp(first.pkid).await;
    let second = sub.expect_publish().await;
    assert_eq!((second.payload.as_str(), second.qos), ("1", 2));
}

// ---------------------------------------------------------------------------
// Bounded per-session queue
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_session_queue_is_bounded_by_max_queued_messages_and_counts_drops() {
    let broker = common::start_broker_with(|s| s.limits.max_queued_messages = 5).await;
    let id = unique_id("queue");
    let topic = format!("petrel-test/{id}/data");
    let persistent = |o: &mut v4api::MqttOptions| {
        o.set_clean_session(false);
    };
    let (mut sub, _) = Client4::connect(broker.addr, &id, persistent).await;
    sub.subscribe(&topic, v4api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    publish_numbered_v4(broker.addr, &topic, 1, 0..8).await;

    let (mut sub, connack) = Client4::connect(broker.addr, &id, persistent).await;
    assert!(connack.session_present);
    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    publisher
        .publish(&topic, v4api::QoS::AtLeastOnce, "marker")
        .await;
    let seen = sub.payloads_before_marker("marker").await;
    assert_eq!(
        seen.len(),
        5,
        "max_queued_messages = 5 messages kept, got {seen:?}"
    );
    let numbers: Vec<u32> = seen.iter().map(|p| p.parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "kept in publish order: {numbers:?}"
    );

    assert_eq!(
        broker.petrel().metrics().messages_dropped(),
        3,
        "8 published, 5 queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_qos0_messages_before_qos1() {
    let broker = common::start_broker_with(|s| s.limits.max_queued_messages = 5).await;
    let id = unique_id("qos0first");
    let topic = format!("petrel-test/{id}/data");
    let persistent = |o: &mut v4api::MqttOptions| {
        o.set_clean_session(false);
    };
    let (mut sub, _) = Client4::connect(broker.addr, &id, persistent).await;
    sub.subscribe(&topic, v4api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    for n in 0..5 {
        publisher
            .publish(&topic, v4api::QoS::AtMostOnce, &format!("qos0-{n}"))
            .await;
    }
    for n in 0..5 {
        publisher
            .publish(&topic, v4api::QoS::AtLeastOnce, &format!("qos1-{n}"))
            .await;
    }

    let (mut sub, connack) = Client4::connect(broker.addr, &id, persistent).await;
    assert!(connack.session_present);
    publisher
        .publish(&topic, v4api::QoS::AtLeastOnce, "marker")
        .await;
    let seen = sub.payloads_before_marker("marker").await;
    let qos1: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("qos1"))
        .collect();
    assert_eq!(
        qos1,
        vec!["qos1-0", "qos1-1", "qos1-2", "qos1-3", "qos1-4"],
        "DESIGN §3: QoS 0 is dropped first, so every QoS 1 message is kept; got {seen:?}"
    );

    assert_eq!(
        broker.petrel().metrics().messages_dropped() as usize,
        10 - seen.len(),
        "every message not delivered is counted as dropped (delivered {seen:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_behind_a_full_inflight_window_is_bounded_for_a_connected_subscriber() {
    let broker = common::start_broker_with(|s| {
        s.limits.max_inflight = 2;
        s.limits.max_queued_messages = 5;
    })
    .await;
    let id = unique_id("slowsub");
    let topic = format!("petrel-test/{id}/data");
    let mut sub = Raw::open(broker.addr, false).await;
    sub.mqtt_connect(&id, true, None).await;
    sub.subscribe(&topic, 1).await;
    // 2 go in flight, 5 wait in the queue, 3 do not fit.
    publish_numbered_v4(broker.addr, &topic, 1, 0..10).await;

    let mut delivered = Vec::new();
    for _ in 0..7 {
        let publish = sub.expect_publish().await;
        sub.puback(publish.pkid).await;
        delivered.push(publish.payload);
    }
    let extra = sub.publishes_before_pingresp().await;
    assert!(
        extra.is_empty(),
        "more than inflight + queue delivered: {extra:?}"
    );
    let numbers: Vec<u32> = delivered.iter().map(|p| p.parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "delivered in publish order: {numbers:?}"
    );

    assert_eq!(
        broker.petrel().metrics().messages_dropped(),
        3,
        "10 published, 2 in flight + 5 queued"
    );
}
