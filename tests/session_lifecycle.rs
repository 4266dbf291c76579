//! Session lifecycle as MQTT 3.1.1 and 5.0 require of a server: CONNECT
//! validation and CONNACK codes, session present, clean session / clean start,
//! v5 session expiry, keep alive, session takeover, wills (with v5 will delay)
//! and the connect timeout.
//!
//! Clients are rumqttc where it can say what the test needs, and a raw TCP
//! socket with hand-encoded packets where a client library would hide the
//! behaviour (refused CONNECTs, silent clients, a second CONNECT, DISCONNECT
//! with a reason code).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use common::ids::unique_id;
use common::mqtt::{Client4, Client5, Message, v4api, v5api};

fn v4_persistent(options: &mut v4api::MqttOptions) {
    options.set_clean_session(false);
}

fn v5_persistent(options: &mut v5api::MqttOptions) {
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
}

// ---------------------------------------------------------------------------
// Raw sockets with hand-encoded packets
// ---------------------------------------------------------------------------

mod raw {
    use mqttbytes::QoS;

    pub use crate::common::wire::{
        CONNACK, DISCONNECT, Frame, PINGRESP, Raw, SUBACK, connack_u16_property, connect_v4_bytes,
        connect_v5_bytes, encode,
    };

    /// SUBSCRIBE (packet id 1, QoS 1) on a v5 connection; waits for SUBACK.
    pub async fn subscribe_v5(raw: &mut Raw, filter: &str) {
        let mut subscribe = mqttbytes::v5::Subscribe::new(filter, QoS::AtLeastOnce);
        subscribe.pkid = 1;
        raw.send(&encode(|b| subscribe.write(b))).await;
        let suback = raw.expect_frame(SUBACK).await;
        assert_eq!(suback.body.last(), Some(&0x01), "granted QoS 1: {suback:?}");
    }

    pub fn will_v5(topic: &str, payload: &str) -> mqttbytes::v5::LastWill {
        mqttbytes::v5::LastWill::new(topic, payload.as_bytes().to_vec(), QoS::AtLeastOnce, false)
    }

    pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

    pub fn disconnect_v5(
        reason: mqttbytes::v5::DisconnectReasonCode,
        session_expiry: Option<u32>,
    ) -> Vec<u8> {
        let properties = session_expiry.map(|interval| mqttbytes::v5::DisconnectProperties {
            session_expiry_interval: Some(interval),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        });
        let disconnect = mqttbytes::v5::Disconnect {
            reason_code: reason,
            properties,
        };
        encode(|b| disconnect.write(b))
    }
}

use raw::Raw;

/// A raw v4 connection that has received a successful CONNACK.
async fn raw_v4_session(addr: SocketAddr, id: &str, clean: bool, keep_alive: u16) -> Raw {
    let mut raw = Raw::open(addr, false).await;
    raw.send(&raw::connect_v4_bytes(id, clean, keep_alive))
        .await;
    let connack = raw.expect_frame(raw::CONNACK).await;
    assert_eq!(connack.body[1], 0x00, "CONNACK return code for {id}");
    raw
}

/// A raw v5 connection that has received a successful CONNACK.
async fn raw_v5_session(
    addr: SocketAddr,
    id: &str,
    keep_alive: u16,
    will: Option<mqttbytes::v5::LastWill>,
) -> (Raw, raw::Frame) {
    let mut raw = Raw::open(addr, true).await;
    raw.send(&raw::connect_v5_bytes(
        id, true, keep_alive, will, None, None,
    ))
    .await;
    let connack = raw.expect_frame(raw::CONNACK).await;
    assert_eq!(connack.body[1], 0x00, "CONNACK reason code for {id}");
    (raw, connack)
}

// ---------------------------------------------------------------------------
// CONNECT validation and CONNACK codes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsupported_protocol_level_is_refused_with_0x01_and_closed() {
    let broker = common::start_broker().await;
    let mut raw = Raw::open(broker.addr, false).await;
    // CONNECT, protocol name "MQTT", protocol level 6, clean session, keep
    // alive 60, client id "x".
    raw.send(&[
        0x10, 13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6, 0x02, 0x00, 60, 0x00, 0x01, b'x',
    ])
    .await;
    let frames = raw.frames_until_closed().await;
    // [MQTT-3.1.2-2]: CONNACK return code 0x01 (unacceptable protocol level),
    // then close.
    assert_eq!(frames.len(), 1, "one CONNACK then close, got {frames:?}");
    assert_eq!(frames[0].packet_type(), raw::CONNACK);
    assert_eq!(
        frames[0].body,
        vec![0x00, 0x01],
        "CONNACK 0x01 (unacceptable protocol level)"
    );
}

#[tokio::test]
async fn v4_empty_client_id_with_clean_session_false_is_refused_with_0x02() {
    let broker = common::start_broker().await;
    let mut raw = Raw::open(broker.addr, false).await;
    raw.send(&raw::connect_v4_bytes("", false, 60)).await;
    let frames = raw.frames_until_closed().await;
    // [MQTT-3.1.3-8]: CONNACK 0x02 (identifier rejected), then close.
    assert_eq!(frames.len(), 1, "one CONNACK then close, got {frames:?}");
    assert_eq!(frames[0].packet_type(), raw::CONNACK);
    assert_eq!(
        frames[0].body,
        vec![0x00, 0x02],
        "CONNACK 0x02 (identifier rejected)"
    );
}

#[tokio::test]
async fn v4_empty_client_id_with_clean_session_true_is_accepted() {
    let broker = common::start_broker().await;
    let topic = format!("petrel-test/{}/anon", unique_id("anon"));
    let (mut client, connack) = Client4::connect(broker.addr, "", |_| {}).await;
    assert_eq!(connack.code, v4api::ConnectReturnCode::Success);
    assert!(!connack.session_present, "a clean session is never present");
    // The connection is usable.
    client.subscribe(&topic, v4api::QoS::AtLeastOnce).await;
    client
        .publish(&topic, v4api::QoS::AtLeastOnce, "hello")
        .await;
    assert_eq!(client.next_publish().await.payload_text(), "hello");
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_client_identifier() {
    let broker = common::start_broker().await;
    let (first, connack) = Client5::connect(broker.addr, "", |_| {}).await;
    assert_eq!(connack.code, v5api::ConnectReturnCode::Success);
    let assigned = connack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("[MQTT-3.2.2-16] CONNACK carries an Assigned Client Identifier");
    assert!(
        !assigned.is_empty(),
        "assigned client identifier is not empty"
    );

    let (second, connack) = Client5::connect(broker.addr, "", |_| {}).await;
    let other = connack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("second CONNACK carries an Assigned Client Identifier");
    assert_ne!(assigned, other, "assigned identifiers are unique");
    first.disconnect().await;
    second.disconnect().await;
}

// ---------------------------------------------------------------------------
// Session present, clean session / clean start, session expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn v4_session_present_is_0_on_clean_session_and_1_on_resumed_session() {
    let broker = common::start_broker().await;
    let id = unique_id("present4");

    assert!(
        !Client4::session_present(broker.addr, &id, v4_persistent).await,
        "no session existed for a new client id"
    );

    assert!(
        Client4::session_present(broker.addr, &id, v4_persistent).await,
        "[MQTT-3.2.2-2] persistent session is resumed"
    );

    assert!(
        !Client4::session_present(broker.addr, &id, |_| {}).await,
        "[MQTT-3.2.2-1] clean session: session present 0"
    );

    // The clean session discarded the stored one and itself ended with its
    // connection [MQTT-3.1.2-6].
    assert!(
        !Client4::session_present(broker.addr, &id, v4_persistent).await,
        "a clean session leaves nothing behind"
    );
}

#[tokio::test]
async fn v5_session_present_is_0_on_clean_start_and_1_on_resumed_session() {
    let broker = common::start_broker().await;
    let id = unique_id("present5");

    assert!(
        !Client5::session_present(broker.addr, &id, v5_persistent).await,
        "no session existed for a new client id"
    );

    assert!(
        Client5::session_present(broker.addr, &id, v5_persistent).await,
        "[MQTT-3.2.2-3] existing session is resumed"
    );

    assert!(
        !Client5::session_present(broker.addr, &id, |o| {
            o.set_clean_start(true);
            o.set_session_expiry_interval(Some(300));
        })
        .await,
        "[MQTT-3.2.2-2] clean start: session present 0"
    );
}

#[tokio::test]
async fn v4_clean_session_discards_earlier_subscriptions() {
    let broker = common::start_broker().await;
    let id = unique_id("cleansub4");
    let prefix = format!("petrel-test/{id}");
    let (topic, marker) = (format!("{prefix}/data"), format!("{prefix}/marker"));

    let (mut sub, _) = Client4::connect(broker.addr, &id, v4_persistent).await;
    sub.subscribe(&topic, v4api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut sub, connack) = Client4::connect(broker.addr, &id, |_| {}).await;
    assert!(!connack.session_present);
    sub.subscribe(&marker, v4api::QoS::AtLeastOnce).await;

    let seen = sub
        .received_before_marker(broker.addr, &[(&topic, "old subscription")], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "the discarded subscription still delivered {seen:?}"
    );
}

#[tokio::test]
async fn v5_clean_start_discards_earlier_subscriptions() {
    let broker = common::start_broker().await;
    let id = unique_id("cleansub5");
    let prefix = format!("petrel-test/{id}");
    let (topic, marker) = (format!("{prefix}/data"), format!("{prefix}/marker"));

    let (mut sub, _) = Client5::connect(broker.addr, &id, v5_persistent).await;
    sub.subscribe(&topic, v5api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut sub, connack) = Client5::connect(broker.addr, &id, |o| {
        o.set_clean_start(true);
    })
    .await;
    assert!(!connack.session_present);
    sub.subscribe(&marker, v5api::QoS::AtLeastOnce).await;

    let seen = sub
        .received_before_marker(broker.addr, &[(&topic, "old subscription")], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "the discarded subscription still delivered {seen:?}"
    );
}

#[tokio::test]
async fn v5_session_expiry_0_discards_the_session_at_disconnect() {
    let broker = common::start_broker().await;
    let id = unique_id("expiry0");
    let prefix = format!("petrel-test/{id}");
    let (topic, marker) = (format!("{prefix}/data"), format!("{prefix}/marker"));

    // Clean start 0 but no Session Expiry Interval: the session ends with the
    // connection [MQTT-3.1.2-23 ff].
    let (mut sub, _) = Client5::connect(broker.addr, &id, |o| {
        o.set_clean_start(false);
    })
    .await;
    sub.subscribe(&topic, v5api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut sub, connack) = Client5::connect(broker.addr, &id, v5_persistent).await;
    assert!(
        !connack.session_present,
        "a session with expiry 0 is gone after disconnect"
    );
    sub.subscribe(&marker, v5api::QoS::AtLeastOnce).await;

    let seen = sub
        .received_before_marker(broker.addr, &[(&topic, "expired subscription")], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "the expired session still delivered {seen:?}"
    );
}

#[tokio::test]
async fn v5_session_with_expiry_interval_is_resumed_with_messages_queued_while_offline() {
    let broker = common::start_broker().await;
    let id = unique_id("expirykeep");
    let topic = format!("petrel-test/{id}/data");
    let expiry = |o: &mut v5api::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(2));
    };

    let (mut sub, _) = Client5::connect(broker.addr, &id, expiry).await;
    sub.subscribe(&topic, v5api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = Client5::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    publisher
        .publish(&topic, v5api::QoS::AtLeastOnce, "while offline")
        .await;

    let (mut sub, connack) = Client5::connect(broker.addr, &id, expiry).await;
    assert!(
        connack.session_present,
        "session is kept within its expiry interval"
    );
    let publish = sub.next_publish().await;
    assert_eq!(publish.payload_text(), "while offline");
    assert_eq!(publish.qos, v5api::QoS::AtLeastOnce);
}

#[tokio::test]
async fn v5_session_is_discarded_after_its_expiry_interval() {
    let broker = common::start_broker().await;
    let id = unique_id("expirygone");
    let prefix = format!("petrel-test/{id}");
    let (topic, marker) = (format!("{prefix}/data"), format!("{prefix}/marker"));
    let expiry = |o: &mut v5api::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(1));
    };

    let (mut sub, _) = Client5::connect(broker.addr, &id, expiry).await;
    sub.subscribe(&topic, v5api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    // The passage of time is the behaviour under test: the session must be
    // gone once its 1 s expiry interval has elapsed (with a margin for the
    // broker's expiry check).
    tokio::time::sleep(Duration::from_millis(3000)).await;

    let (mut sub, connack) = Client5::connect(broker.addr, &id, v5_persistent).await;
    assert!(
        !connack.session_present,
        "session outlived its expiry interval"
    );
    sub.subscribe(&marker, v5api::QoS::AtLeastOnce).await;
    let seen = sub
        .received_before_marker(broker.addr, &[(&topic, "expired subscription")], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "the expired session still delivered {seen:?}"
    );
}

#[tokio::test]
async fn v4_persistent_session_receives_qos1_messages_published_while_offline() {
    let broker = common::start_broker().await;
    let id = unique_id("offline4");
    let topic = format!("petrel-test/{id}/data");

    let (mut sub, _) = Client4::connect(broker.addr, &id, v4_persistent).await;
    sub.subscribe(&topic, v4api::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    for n in 0..3 {
        publisher
            .publish(&topic, v4api::QoS::AtLeastOnce, &format!("offline {n}"))
            .await;
    }

    let (mut sub, connack) = Client4::connect(broker.addr, &id, v4_persistent).await;
    assert!(connack.session_present);
    for n in 0..3 {
        let publish = sub.next_publish().await;
        assert_eq!(publish.payload_text(), format!("offline {n}"), "in order");
        assert_eq!(publish.qos, v4api::QoS::AtLeastOnce);
    }
}

#[tokio::test]
async fn v5_session_expiry_interval_on_disconnect_replaces_the_connect_value() {
    let broker = common::start_broker().await;
    let id = unique_id("expirydisc");

    let mut raw = Raw::open(broker.addr, true).await;
    raw.send(&raw::connect_v5_bytes(
        &id,
        false,
        60,
        None,
        Some(300),
        None,
    ))
    .await;
    raw.expect_frame(raw::CONNACK).await;
    // MQTT 5 §3.14.2.2.2: a Session Expiry Interval on DISCONNECT replaces
    // the one from CONNECT; 0 ends the session now.
    raw.send(&raw::disconnect_v5(
        mqttbytes::v5::DisconnectReasonCode::NormalDisconnection,
        Some(0),
    ))
    .await;
    let frames = raw.frames_until_closed().await;
    assert!(
        frames.is_empty(),
        "nothing is sent after DISCONNECT: {frames:?}"
    );

    assert!(
        !Client5::session_present(broker.addr, &id, v5_persistent).await,
        "session kept although DISCONNECT set its expiry to 0"
    );
}

// ---------------------------------------------------------------------------
// Keep alive
// ---------------------------------------------------------------------------

/// Expected window for the close of a connection whose client went silent
/// with keep alive 1 s: no earlier than 1.5 x keep alive (less a little for
/// the CONNACK round trip), and not much later.
const KEEPALIVE_CLOSE_EARLIEST: Duration = Duration::from_millis(1400);
const KEEPALIVE_CLOSE_LATEST: Duration = Duration::from_millis(3000);

#[tokio::test]
async fn v4_silent_client_is_disconnected_after_one_and_a_half_keep_alive() {
    let broker = common::start_broker().await;
    let mut raw = raw_v4_session(broker.addr, &unique_id("silent4"), true, 1).await;
    let silent_since = Instant::now();
    let frames = raw.frames_until_closed().await;
    let elapsed = silent_since.elapsed();
    assert!(
        frames.is_empty(),
        "a 3.1.1 server sends nothing before closing: {frames:?}"
    );
    assert!(
        (KEEPALIVE_CLOSE_EARLIEST..=KEEPALIVE_CLOSE_LATEST).contains(&elapsed),
        "[MQTT-3.1.2-24] closed after {elapsed:?}, expected about 1.5 s"
    );
}

#[tokio::test]
async fn v5_silent_client_is_disconnected_after_one_and_a_half_keep_alive() {
    let broker = common::start_broker().await;
    let (mut raw, connack) = raw_v5_session(broker.addr, &unique_id("silent5"), 1, None).await;
    let silent_since = Instant::now();
    let server_keep_alive = raw::connack_u16_property(&connack, 0x13);
    assert!(
        server_keep_alive.is_none() || server_keep_alive == Some(1),
        "unexpected Server Keep Alive {server_keep_alive:?} for a 1 s keep alive"
    );
    let frames = raw.frames_until_closed().await;
    let elapsed = silent_since.elapsed();
    // The server may send DISCONNECT 0x8D (keep alive timeout) before closing.
    for frame in &frames {
        assert_eq!(
            frame.packet_type(),
            raw::DISCONNECT,
            "only DISCONNECT may precede the close"
        );
        assert_eq!(
            frame.body.first(),
            Some(&0x8D),
            "DISCONNECT reason 0x8D: {frame:?}"
        );
    }
    assert!(
        (KEEPALIVE_CLOSE_EARLIEST..=KEEPALIVE_CLOSE_LATEST).contains(&elapsed),
        "[MQTT-3.1.2-22] closed after {elapsed:?}, expected about 1.5 s"
    );
}

#[tokio::test]
async fn client_sending_pingreq_within_keep_alive_stays_connected() {
    let broker = common::start_broker().await;
    let mut raw = raw_v4_session(broker.addr, &unique_id("pinger"), true, 1).await;
    // The client's own schedule: a PINGREQ every 500 ms for 3 s, twice the
    // time a silent client would be allowed.
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..6 {
        ticks.tick().await;
        raw.send(&raw::PINGREQ).await;
        let frame = raw
            .next_frame()
            .await
            .expect("connection stays open while pinging");
        assert_eq!(frame.packet_type(), raw::PINGRESP);
    }
}

// ---------------------------------------------------------------------------
// Session takeover
// ---------------------------------------------------------------------------

#[tokio::test]
async fn v4_session_takeover_closes_the_first_connection_and_keeps_the_session() {
    let broker = common::start_broker().await;
    let id = unique_id("takeover4");
    let topic = format!("petrel-test/{id}/data");

    let (mut first, _) = Client4::connect(broker.addr, &id, v4_persistent).await;
    first.subscribe(&topic, v4api::QoS::AtLeastOnce).await;

    let (mut second, connack) = Client4::connect(broker.addr, &id, v4_persistent).await;
    assert!(connack.session_present, "the taken-over session continues");
    // [MQTT-3.1.4-2]: the existing client is disconnected.
    first.closed().await;

    let (mut publisher, _) = Client4::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    publisher
        .publish(&topic, v4api::QoS::AtLeastOnce, "to the new connection")
        .await;
    assert_eq!(
        second.next_publish().await.payload_text(),
        "to the new connection"
    );
}

#[tokio::test]
async fn v5_session_takeover_disconnects_old_client_with_0x8e() {
    let broker = common::start_broker().await;
    let id = unique_id("takeover5");
    let topic = format!("petrel-test/{id}/data");

    // The first client is a raw socket so the test sees the exact bytes the
    // broker sends it (rumqttc 0.25 cannot decode a DISCONNECT that carries
    // a reason code but omits the property length, which the spec allows).
    let mut first = Raw::open(broker.addr, true).await;
    first
        .send(&raw::connect_v5_bytes(&id, true, 60, None, Some(300), None))
        .await;
    let connack = first.expect_frame(raw::CONNACK).await;
    assert_eq!(connack.body[1], 0x00);
    raw::subscribe_v5(&mut first, &topic).await;

    let (mut second, connack) = Client5::connect(broker.addr, &id, v5_persistent).await;
    assert!(connack.session_present, "the taken-over session continues");
    // [MQTT-3.1.4-3]: DISCONNECT 0x8E (session taken over) to the existing
    // client, then its connection is closed.
    let frames = first.frames_until_closed().await;
    assert_eq!(frames.len(), 1, "one DISCONNECT then close, got {frames:?}");
    assert_eq!(frames[0].packet_type(), raw::DISCONNECT, "{frames:?}");
    assert_eq!(
        frames[0].body.first(),
        Some(&0x8E),
        "reason 0x8E: {frames:?}"
    );

    let (mut publisher, _) = Client5::connect(broker.addr, &unique_id("pub"), |_| {}).await;
    publisher
        .publish(&topic, v5api::QoS::AtLeastOnce, "to the new connection")
        .await;
    assert_eq!(
        second.next_publish().await.payload_text(),
        "to the new connection"
    );
}

// ---------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------

/// Options with a QoS 1 will on `topic`.
fn v4_will(topic: &str, payload: &str, retain: bool) -> impl FnOnce(&mut v4api::MqttOptions) {
    let will = v4api::LastWill::new(topic, payload, v4api::QoS::AtLeastOnce, retain);
    move |o| {
        o.set_last_will(will);
    }
}

/// Options with the QoS 1 will "gone" on `topic`.
fn v5_will(topic: &str) -> impl FnOnce(&mut v5api::MqttOptions) {
    let will = v5api::LastWill::new(topic, "gone", v5api::QoS::AtLeastOnce, false, None);
    move |o| {
        o.set_last_will(will);
    }
}

#[tokio::test]
async fn v4_will_is_published_when_the_connection_drops() {
    let broker = common::start_broker().await;
    let id = unique_id("will4drop");
    let will_topic = format!("petrel-test/{id}/will");
    let mut watcher = Client4::watch(broker.addr, &will_topic).await;

    let (client, _) = Client4::connect(broker.addr, &id, v4_will(&will_topic, "gone", false)).await;
    client.kill().await;

    let will = watcher.next_publish().await;
    assert_eq!(will.topic_text(), will_topic);
    assert_eq!(will.payload_text(), "gone");
    assert_eq!(will.qos, v4api::QoS::AtLeastOnce);
    assert!(!will.retain);
}

#[tokio::test]
async fn v4_will_is_not_published_after_normal_disconnect() {
    let broker = common::start_broker().await;
    let id = unique_id("will4norm");
    let prefix = format!("petrel-test/{id}");
    let (will_topic, marker) = (format!("{prefix}/will"), format!("{prefix}/marker"));
    let mut watcher = Client4::watch(broker.addr, &format!("{prefix}/#")).await;

    let (client, _) = Client4::connect(broker.addr, &id, v4_will(&will_topic, "gone", false)).await;
    client.disconnect().await;

    let seen = watcher
        .received_before_marker(broker.addr, &[], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "[MQTT-3.14.4-3] will published after DISCONNECT: {seen:?}"
    );
}

#[tokio::test]
async fn v4_will_with_retain_is_kept_as_the_retained_message() {
    let broker = common::start_broker().await;
    let id = unique_id("willret");
    let will_topic = format!("petrel-test/{id}/will");
    let mut watcher = Client4::watch(broker.addr, &will_topic).await;

    let (client, _) = Client4::connect(
        broker.addr,
        &id,
        v4_will(&will_topic, "gone for good", true),
    )
    .await;
    client.kill().await;
    let live = watcher.next_publish().await;
    assert_eq!(live.payload_text(), "gone for good");

    // A later subscriber gets the will as the retained message [MQTT-3.1.2-17].
    let (mut late, _) = Client4::connect(broker.addr, &unique_id("late"), |_| {}).await;
    late.subscribe(&will_topic, v4api::QoS::AtLeastOnce).await;
    let retained = late.next_publish().await;
    assert_eq!(retained.payload_text(), "gone for good");
    assert!(
        retained.retain,
        "[MQTT-3.3.1-8] retained delivery has RETAIN 1"
    );

    // Clear the retained message again.
    late.client
        .publish(&will_topic, v4api::QoS::AtLeastOnce, true, Vec::new())
        .await
        .unwrap();
    late.wait_for("PUBACK", |e| {
        matches!(e, v4api::Event::Incoming(v4api::Packet::PubAck(_)))
    })
    .await;
}

#[tokio::test]
async fn v5_will_is_published_when_the_connection_drops() {
    let broker = common::start_broker().await;
    let id = unique_id("will5drop");
    let will_topic = format!("petrel-test/{id}/will");
    let mut watcher = Client5::watch(broker.addr, &will_topic).await;

    let (client, _) = Client5::connect(broker.addr, &id, v5_will(&will_topic)).await;
    client.kill().await;

    let will = watcher.next_publish().await;
    assert_eq!(will.topic_text(), will_topic);
    assert_eq!(will.payload_text(), "gone");
    assert_eq!(will.qos, v5api::QoS::AtLeastOnce);
}

#[tokio::test]
async fn v5_will_is_not_published_after_normal_disconnect() {
    let broker = common::start_broker().await;
    let id = unique_id("will5norm");
    let prefix = format!("petrel-test/{id}");
    let (will_topic, marker) = (format!("{prefix}/will"), format!("{prefix}/marker"));
    let mut watcher = Client5::watch(broker.addr, &format!("{prefix}/#")).await;

    let (client, _) = Client5::connect(broker.addr, &id, v5_will(&will_topic)).await;
    client.disconnect().await;

    let seen = watcher
        .received_before_marker(broker.addr, &[], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "[MQTT-3.1.2-10] will published after DISCONNECT 0x00: {seen:?}"
    );
}

#[tokio::test]
async fn v5_will_is_published_on_disconnect_with_reason_0x04() {
    let broker = common::start_broker().await;
    let id = unique_id("will5x04");
    let will_topic = format!("petrel-test/{id}/will");
    let mut watcher = Client5::watch(broker.addr, &will_topic).await;

    let (mut raw, _) = raw_v5_session(
        broker.addr,
        &id,
        60,
        Some(raw::will_v5(&will_topic, "asked for")),
    )
    .await;
    raw.send(&raw::disconnect_v5(
        mqttbytes::v5::DisconnectReasonCode::DisconnectWithWillMessage,
        None,
    ))
    .await;

    let will = watcher.next_publish().await;
    assert_eq!(will.topic_text(), will_topic);
    assert_eq!(will.payload_text(), "asked for");
    drop(raw);
}

fn v5_will_with_delay(topic: &str, delay_secs: u32) -> impl FnOnce(&mut v5api::MqttOptions) {
    let topic = topic.to_string();
    move |o: &mut v5api::MqttOptions| {
        o.set_clean_start(false);
        // The session outlives the will delay, so the delay alone decides.
        o.set_session_expiry_interval(Some(300));
        o.set_last_will(v5api::LastWill::new(
            topic,
            "gone",
            v5api::QoS::AtLeastOnce,
            false,
            Some(v5api::LastWillProperties {
                delay_interval: Some(delay_secs),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
        ));
    }
}

#[tokio::test]
async fn v5_will_is_published_after_the_will_delay_interval() {
    let broker = common::start_broker().await;
    let id = unique_id("willdelay");
    let will_topic = format!("petrel-test/{id}/will");
    let mut watcher = Client5::watch(broker.addr, &will_topic).await;

    let (client, _) = Client5::connect(broker.addr, &id, v5_will_with_delay(&will_topic, 2)).await;
    let dropped_at = Instant::now();
    client.kill().await;

    let will = watcher.next_publish().await;
    let elapsed = dropped_at.elapsed();
    assert_eq!(will.payload_text(), "gone");
    assert!(
        elapsed >= Duration::from_millis(1900),
        "[MQTT-3.1.3-9] will published {elapsed:?} after the drop, before its 2 s delay"
    );
}

#[tokio::test]
async fn v5_will_is_not_published_when_the_client_reconnects_within_the_will_delay() {
    let broker = common::start_broker().await;
    let id = unique_id("willback");
    let prefix = format!("petrel-test/{id}");
    let (will_topic, marker) = (format!("{prefix}/will"), format!("{prefix}/marker"));
    let mut watcher = Client5::watch(broker.addr, &format!("{prefix}/#")).await;

    let (client, _) = Client5::connect(broker.addr, &id, v5_will_with_delay(&will_topic, 2)).await;
    client.kill().await;
    let (back, connack) = Client5::connect(broker.addr, &id, v5_persistent).await;
    assert!(connack.session_present, "session resumed within its expiry");

    // The passage of time is the behaviour under test: wait past the 2 s will
    // delay; the will must not come.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let seen = watcher
        .received_before_marker(broker.addr, &[], &marker)
        .await;
    assert!(
        seen.is_empty(),
        "[MQTT-3.1.3-9] will published despite reconnect: {seen:?}"
    );
    back.disconnect().await;
}

// ---------------------------------------------------------------------------
// Connect timeout and a second CONNECT
// ---------------------------------------------------------------------------

#[tokio::test]
async fn socket_that_never_sends_connect_is_closed_after_connect_timeout() {
    let broker = common::start_broker_with(|s| s.limits.connect_timeout_secs = 1).await;
    let opened_at = Instant::now();
    let mut raw = Raw::open(broker.addr, false).await;
    let frames = raw.frames_until_closed().await;
    let elapsed = opened_at.elapsed();
    assert!(
        frames.is_empty(),
        "nothing is sent before CONNECT: {frames:?}"
    );
    assert!(
        (Duration::from_millis(900)..=Duration::from_millis(3000)).contains(&elapsed),
        "closed after {elapsed:?}, expected about the 1 s connect timeout"
    );
}

#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection() {
    let broker = common::start_broker().await;
    let mut raw = Raw::open(broker.addr, false).await;
    raw.send(&raw::PINGREQ).await;
    let frames = raw.frames_until_closed().await;
    // [MQTT-3.1.0-1]: the first packet must be CONNECT; nothing is answered.
    assert!(frames.is_empty(), "no reply before the close: {frames:?}");
}

#[tokio::test]
async fn v4_second_connect_on_a_connection_closes_it() {
    let broker = common::start_broker().await;
    let id = unique_id("twice4");
    let mut raw = raw_v4_session(broker.addr, &id, true, 60).await;
    raw.send(&raw::connect_v4_bytes(&id, true, 60)).await;
    let frames = raw.frames_until_closed().await;
    // [MQTT-3.1.0-2]: a protocol violation; the connection is closed and the
    // second CONNECT is not acknowledged.
    assert!(
        frames.is_empty(),
        "nothing is sent before the close: {frames:?}"
    );
}

#[tokio::test]
async fn v5_second_connect_on_a_connection_closes_it() {
    let broker = common::start_broker().await;
    let id = unique_id("twice5");
    let (mut raw, _) = raw_v5_session(broker.addr, &id, 60, None).await;
    raw.send(&raw::connect_v5_bytes(&id, true, 60, None, None, None))
        .await;
    let frames = raw.frames_until_closed().await;
    // [MQTT-3.1.0-2]: a Protocol Error; the server may send DISCONNECT 0x82.
    for frame in &frames {
        assert_eq!(
            frame.packet_type(),
            raw::DISCONNECT,
            "only DISCONNECT may precede the close"
        );
        assert_eq!(
            frame.body.first(),
            Some(&0x82),
            "DISCONNECT reason 0x82: {frame:?}"
        );
    }
}
