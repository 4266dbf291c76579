//! Byte-level protocol violations and the exact reaction the specs require.
//!
//! Every test writes hand-made bytes on a raw socket (`raw`) and asserts what
//! MQTT 3.1.1 or 5.0 demands of a server for that input: for 3.1.1 usually that
//! the connection is closed with no packet before the close (3.1.1 §4.8), or a
//! particular CONNACK return code; for 5.0 a DISCONNECT (or, during CONNECT, a
//! CONNACK) carrying the matching reason code and then the close (5.0 §4.13).
//! The positive tests cover well-formed inputs that a naive decoder refuses.
//! The last test feeds thousands of mutated packets and checks the broker
//! survives them.

mod common;
mod raw;

use std::sync::{Mutex, Once};
use std::time::Duration;

use raw::{
    Connect, Event, MAXIMUM_PACKET_SIZE, PAYLOAD_FORMAT_INDICATOR, PUBACK, PUBCOMP, PUBLISH,
    PUBREC, PUBREL, Publish, RECEIVE_MAXIMUM, RawClient, SESSION_EXPIRY_INTERVAL, SUBACK,
    TOPIC_ALIAS, TOPIC_ALIAS_MAXIMUM, Will, ack, connect_v5, connect_v5_with, connect_v311, packet,
    prop_u16, prop_u32, publish, publish_v5, publish_v311, string, subscribe, unique_id,
};

// v5 reason codes.
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
const TOPIC_FILTER_INVALID: u8 = 0x8f;
const TOPIC_NAME_INVALID: u8 = 0x90;
const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;
const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

/// A topic no other test (or other run against a shared broker) uses.
fn topic(name: &str) -> String {
    format!("petrel-raw/{}/{name}", unique_id("t"))
}

/// Sends `bytes` on an accepted 3.1.1 session; the broker must close the
/// connection without sending anything first.
async fn v311_session_closes_after(bytes: &[u8]) {
    let broker = common::start_broker().await;
    let mut client = connect_v311(broker.addr, &unique_id("m")).await;
    client.send(bytes).await;
    client.expect_closed().await;
}

/// Sends `bytes` on an accepted v5 session; the broker must answer with a
/// DISCONNECT carrying one of `reasons` and then close.
async fn v5_session_disconnects_after(bytes: &[u8], reasons: &[u8]) {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    client.send(bytes).await;
    client.expect_disconnect_then_close(reasons).await;
}

/// Sends a CONNECT; the broker must close without any reply (3.1.1
/// [MQTT-3.1.4-1]: close without CONNACK when the CONNECT does not conform).
async fn connect_closes_without_reply(connect: &[u8]) {
    let broker = common::start_broker().await;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(connect).await;
    client.expect_closed().await;
}

/// Sends a v5 CONNECT; the broker must answer CONNACK with `reason`, then close.
async fn v5_connect_refused_with(connect: &[u8], reason: u8) {
    let broker = common::start_broker().await;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(connect).await;
    client.expect_v5_connack_then_close(reason).await;
}

/// A 3.1.1 session subscribed to `filter` at `qos`.
async fn v311_subscriber(addr: std::net::SocketAddr, filter: &str, qos: u8) -> RawClient {
    let mut client = connect_v311(addr, &unique_id("s")).await;
    client
        .send(&subscribe(1, None, &[(filter.as_bytes(), qos)]))
        .await;
    let suback = client.expect_kind(SUBACK).await;
    assert_eq!(
        suback.body,
        [0x00, 0x01, qos],
        "subscription not granted: {suback:?}"
    );
    client
}

/// Waits for the PUBLISH a 3.1.1 `watcher` receives and checks its topic and
/// payload.
async fn expect_v311_delivery(watcher: &mut RawClient, topic: &str, payload: &[u8]) {
    let delivery = Publish::parse(&watcher.expect_kind(PUBLISH).await, false);
    assert_eq!(String::from_utf8_lossy(&delivery.topic), topic);
    assert_eq!(delivery.payload, payload);
}

// ---------------------------------------------------------------------------
// CONNECT stage

/// 3.1.1 and 5.0 [MQTT-3.1.0-1]: the first packet must be CONNECT. Before a
/// CONNECT the protocol version is unknown and a v5 server may not send
/// DISCONNECT before CONNACK [MQTT-3.14.0-1], so the only answer is a close.
#[tokio::test]
async fn first_packet_pingreq_instead_of_connect_closes_connection_without_reply() {
    connect_closes_without_reply(&[0xc0, 0x00]).await;
}

#[tokio::test]
async fn first_packet_publish_instead_of_connect_closes_connection_without_reply() {
    connect_closes_without_reply(&publish_v311("petrel-raw/first", 0, 0, b"x")).await;
}

/// A CONNECT whose remaining length runs to a fifth byte is malformed
/// (variable byte integers have at most four bytes, 3.1.1 §2.2.3, 5.0 §1.5.5).
#[tokio::test]
async fn first_packet_with_five_byte_remaining_length_closes_connection_without_reply() {
    connect_closes_without_reply(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]).await;
}

/// 3.1.1 [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
#[tokio::test]
async fn v311_second_connect_closes_connection() {
    let id = unique_id("c");
    let broker = common::start_broker().await;
    let mut client = connect_v311(broker.addr, &id).await;
    client.send(&Connect::v311(&id).encode()).await;
    client.expect_closed().await;
}

/// 5.0 [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error.
#[tokio::test]
async fn v5_second_connect_gets_disconnect_0x82() {
    let id = unique_id("c");
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &id).await;
    client.send(&Connect::v5(&id).encode()).await;
    client.expect_disconnect_then_close(&[PROTOCOL_ERROR]).await;
}

/// 3.1.1 [MQTT-3.1.2-3]: the reserved connect flag must be 0, else disconnect.
#[tokio::test]
async fn v311_connect_with_reserved_flag_set_closes_without_connack() {
    let mut connect = Connect::v311(&unique_id("c"));
    connect.flags_override = Some(0x03);
    connect_closes_without_reply(&connect.encode()).await;
}

/// 5.0 [MQTT-3.1.2-3]: a reserved flag of 1 is a Malformed Packet. §4.13.1
/// lets the server send CONNACK with the reason code before closing; petrel
/// does so for every CONNECT-stage error once the version is known.
#[tokio::test]
async fn v5_connect_with_reserved_flag_set_gets_connack_0x81() {
    let mut connect = Connect::v5(&unique_id("c"));
    connect.flags_override = Some(0x03);
    v5_connect_refused_with(&connect.encode(), MALFORMED_PACKET).await;
}

/// 3.1.1 [MQTT-3.1.2-22]: the password flag requires the user name flag.
#[tokio::test]
async fn v311_connect_with_password_but_no_username_closes_without_connack() {
    let mut connect = Connect::v311(&unique_id("c"));
    connect.password = Some(b"secret".to_vec());
    assert_eq!(connect.flags(), 0x42);
    connect_closes_without_reply(&connect.encode()).await;
}

/// 3.1.1 [MQTT-3.1.2-1]: a wrong protocol name may only be disconnected (this
/// broker speaks no other protocol), and [MQTT-3.1.4-1] allows no CONNACK.
#[tokio::test]
async fn v311_connect_with_wrong_protocol_name_closes_without_connack() {
    let mut connect = Connect::v311(&unique_id("c"));
    connect.protocol_name = b"MQTX".to_vec();
    connect_closes_without_reply(&connect.encode()).await;
}

/// 5.0 [MQTT-3.1.2-1]: a wrong protocol name MAY get CONNACK 0x84 and MUST be
/// closed; either form is accepted, nothing else.
#[tokio::test]
async fn v5_connect_with_wrong_protocol_name_gets_connack_0x84_or_close() {
    let broker = common::start_broker().await;
    let mut connect = Connect::v5(&unique_id("c"));
    connect.protocol_name = b"MQTX".to_vec();
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    match client.next_event().await {
        Event::Closed | Event::Reset => {}
        Event::Packet(packet) => {
            assert!(
                packet.first == 0x20 && packet.body.get(1) == Some(&UNSUPPORTED_PROTOCOL_VERSION),
                "expected CONNACK 0x84 or a close, got {packet:?}"
            );
            client.expect_closed().await;
        }
    }
}

/// MQTT 3.1 (protocol name `MQIsdp`, level 3) devices are served like 3.1.1
/// ones, as Mosquitto and HiveMQ do. Their CONNACK is the two-byte form with
/// the first byte reserved (no Session Present flag, which 3.1 lacks), even
/// for a resumed session.
#[tokio::test]
async fn mqtt31_client_is_served_like_a_311_client() {
    let broker = common::start_broker_with(|_| {}).await;
    let id = unique_id("legacy");
    let mut connect = Connect::v311(&id);
    connect.protocol_name = b"MQIsdp".to_vec();
    connect.level = 3;
    connect.clean = false;
    for _ in 0..2 {
        let mut client = RawClient::connect(broker.addr).await;
        client.send(&connect.encode()).await;
        let connack = client.expect_packet().await;
        assert_eq!(connack.to_bytes(), [0x20, 0x02, 0x00, 0x00]);
        client.send(&subscribe(1, None, &[(b"legacy/t", 1)])).await;
        let suback = client.expect_kind(SUBACK).await;
        assert_eq!(suback.body.last(), Some(&1));
        client.send(&publish_v311("legacy/t", 1, 7, b"hello")).await;
        let (mut puback, mut delivered) = (false, None);
        while !puback || delivered.is_none() {
            let packet = client.expect_packet().await;
            match packet.kind() {
                PUBACK => puback = true,
                PUBLISH => delivered = Some(Publish::parse(&packet, false)),
                other => panic!("unexpected packet type {other}"),
            }
        }
        let delivered = delivered.unwrap();
        assert_eq!(delivered.payload, b"hello");
        client
            .send(&ack(0x40, delivered.packet_id.expect("QoS 1 has an id")))
            .await;
    }
}

/// Level 3 under the 3.1.1 protocol name is no protocol at all: CONNACK 0x01
/// (unacceptable protocol version) and close [MQTT-3.1.2-2].
#[tokio::test]
async fn protocol_name_mqtt_with_level_3_gets_connack_0x01_then_close() {
    let broker = common::start_broker().await;
    let mut connect = Connect::v311(&unique_id("c"));
    connect.level = 3;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_packet().await;
    assert_eq!(
        connack.to_bytes(),
        [0x20, 0x02, 0x00, 0x01],
        "expected CONNACK 0x01, got {connack:?}"
    );
    client.expect_closed().await;
}

/// An unknown protocol level (6): 3.1.1 [MQTT-3.1.2-2] requires CONNACK 0x01
/// then disconnect; 5.0 [MQTT-3.1.2-2] allows CONNACK 0x84 then close. One of
/// the two CONNACKs must come, then the close.
#[tokio::test]
async fn connect_with_protocol_level_6_gets_unsupported_version_connack_then_close() {
    let broker = common::start_broker().await;
    let mut connect = Connect::v5(&unique_id("c"));
    connect.level = 6;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_packet().await;
    let v311_form = connack.to_bytes() == [0x20, 0x02, 0x00, 0x01];
    let v5_form = connack.first == 0x20
        && connack.body.len() >= 3
        && connack.body[1] == UNSUPPORTED_PROTOCOL_VERSION;
    assert!(
        v311_form || v5_form,
        "expected CONNACK 0x01 or v5 CONNACK 0x84, got {connack:?}"
    );
    client.expect_closed().await;
}

/// 3.1.1 [MQTT-3.1.4-1]: bytes after the last field the flags announce make
/// the CONNECT non-conforming: close without CONNACK.
#[tokio::test]
async fn v311_connect_with_trailing_bytes_closes_without_connack() {
    let mut connect = Connect::v311(&unique_id("c"));
    connect.trailing = b"xx".to_vec();
    connect_closes_without_reply(&connect.encode()).await;
}

/// 5.0: bytes after the last field are a Malformed Packet: CONNACK 0x81
/// (§4.13.1), then close.
#[tokio::test]
async fn v5_connect_with_trailing_bytes_gets_connack_0x81() {
    let mut connect = Connect::v5(&unique_id("c"));
    connect.trailing = b"xx".to_vec();
    v5_connect_refused_with(&connect.encode(), MALFORMED_PACKET).await;
}

/// 3.1.1 [MQTT-3.1.3-8]: an empty client id with CleanSession 0 gets CONNACK
/// 0x02 (identifier rejected), then the connection is closed.
#[tokio::test]
async fn v311_empty_client_id_without_clean_session_gets_connack_0x02() {
    let broker = common::start_broker().await;
    let mut connect = Connect::v311("");
    connect.clean = false;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_packet().await;
    assert_eq!(
        connack.to_bytes(),
        [0x20, 0x02, 0x00, 0x02],
        "expected CONNACK 0x02, got {connack:?}"
    );
    client.expect_closed().await;
}

/// 3.1.1 §3.1.3.5: the password is binary data, not a UTF-8 string.
#[tokio::test]
async fn v311_connect_with_binary_password_is_accepted() {
    let broker = common::start_broker().await;
    let mut connect = Connect::v311(&unique_id("c"));
    connect.username = Some(b"user".to_vec());
    connect.password = Some(vec![0xff, 0xfe, 0x00, 0xc3, 0x28]);
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_packet().await;
    assert_eq!(
        connack.to_bytes(),
        [0x20, 0x02, 0x00, 0x00],
        "expected CONNACK 0x00, got {connack:?}"
    );
    client.ping().await;
}

// ---------------------------------------------------------------------------
// PUBLISH

/// 3.1.1 [MQTT-3.3.1-4]: QoS 3 must close the connection.
#[tokio::test]
async fn v311_publish_with_qos_3_closes_connection() {
    v311_session_closes_after(&publish(0x36, b"petrel-raw/q3", Some(1), None, b"x")).await;
}

/// 5.0 [MQTT-3.3.1-4]: QoS 3 is a Malformed Packet.
#[tokio::test]
async fn v5_publish_with_qos_3_gets_disconnect_0x81() {
    let bytes = publish(0x36, b"petrel-raw/q3", Some(1), Some(&[]), b"x");
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET]).await;
}

/// 3.1.1 [MQTT-2.3.1-1]: QoS > 0 PUBLISH needs a non-zero packet identifier.
#[tokio::test]
async fn v311_qos1_publish_with_packet_id_0_closes_connection() {
    v311_session_closes_after(&publish(0x32, b"petrel-raw/id0", Some(0), None, b"x")).await;
}

/// 5.0 [MQTT-2.2.1-3]: identifier 0 is not allowed; the spec does not say
/// whether that is malformed or a protocol error, so either code is accepted.
#[tokio::test]
async fn v5_qos1_publish_with_packet_id_0_gets_disconnect_0x81_or_0x82() {
    let bytes = publish(0x32, b"petrel-raw/id0", Some(0), Some(&[]), b"x");
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET, PROTOCOL_ERROR]).await;
}

/// 3.1.1 [MQTT-3.3.2-2]: no wildcards in a topic name.
#[tokio::test]
async fn v311_publish_topic_with_plus_closes_connection() {
    v311_session_closes_after(&publish(0x30, b"petrel-raw/+/x", None, None, b"x")).await;
}

#[tokio::test]
async fn v311_publish_topic_with_hash_closes_connection() {
    v311_session_closes_after(&publish(0x30, b"petrel-raw/#", None, None, b"x")).await;
}

/// 3.1.1 [MQTT-1.5.3-2]: U+0000 in a string closes the connection.
#[tokio::test]
async fn v311_publish_topic_with_nul_closes_connection() {
    v311_session_closes_after(&publish(0x30, b"petrel-raw/a\0b", None, None, b"x")).await;
}

/// 3.1.1 [MQTT-1.5.3-1]: ill-formed UTF-8 closes the connection.
#[tokio::test]
async fn v311_publish_topic_with_invalid_utf8_closes_connection() {
    v311_session_closes_after(&publish(0x30, b"petrel-raw/a\xffb", None, None, b"x")).await;
}

/// 3.1.1 [MQTT-4.7.3-1]: a topic name is at least one character long.
#[tokio::test]
async fn v311_publish_with_empty_topic_closes_connection() {
    v311_session_closes_after(&publish(0x30, b"", None, None, b"x")).await;
}

/// 5.0 [MQTT-3.3.2-2]: no wildcards in a topic name. The spec names no reason
/// code; Malformed Packet, Protocol Error and Topic Name invalid all fit.
#[tokio::test]
async fn v5_publish_topic_with_plus_gets_disconnect() {
    let bytes = publish(0x30, b"petrel-raw/+/x", None, Some(&[]), b"x");
    let reasons = [MALFORMED_PACKET, PROTOCOL_ERROR, TOPIC_NAME_INVALID];
    v5_session_disconnects_after(&bytes, &reasons).await;
}

#[tokio::test]
async fn v5_publish_topic_with_hash_gets_disconnect() {
    let bytes = publish(0x30, b"petrel-raw/#", None, Some(&[]), b"x");
    let reasons = [MALFORMED_PACKET, PROTOCOL_ERROR, TOPIC_NAME_INVALID];
    v5_session_disconnects_after(&bytes, &reasons).await;
}

/// 5.0 [MQTT-1.5.4-2]: U+0000 in a string is a Malformed Packet.
#[tokio::test]
async fn v5_publish_topic_with_nul_gets_disconnect_0x81() {
    let bytes = publish(0x30, b"petrel-raw/a\0b", None, Some(&[]), b"x");
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET]).await;
}

/// 5.0 [MQTT-1.5.4-1]: ill-formed UTF-8 is a Malformed Packet.
#[tokio::test]
async fn v5_publish_topic_with_invalid_utf8_gets_disconnect_0x81() {
    let bytes = publish(0x30, b"petrel-raw/a\xffb", None, Some(&[]), b"x");
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET]).await;
}

/// 5.0 §3.3.2.3.4: a zero-length topic without a Topic Alias is a Protocol
/// Error.
#[tokio::test]
async fn v5_publish_with_empty_topic_and_no_alias_gets_disconnect_0x82() {
    let bytes = publish(0x30, b"", None, Some(&[]), b"x");
    v5_session_disconnects_after(&bytes, &[PROTOCOL_ERROR]).await;
}

/// 5.0 [MQTT-3.3.2-8] and §3.3.4: "A Topic Alias value of 0 or greater than
/// the Maximum Topic Alias is a Protocol Error, the receiver uses DISCONNECT
/// with Reason Code of 0x94 (Topic Alias invalid)".
#[tokio::test]
async fn v5_publish_with_topic_alias_zero_gets_disconnect_0x94() {
    let bytes = publish_v5("petrel-raw/alias", 0, 0, &prop_u16(TOPIC_ALIAS, 0), b"x");
    v5_session_disconnects_after(&bytes, &[TOPIC_ALIAS_INVALID]).await;
}

/// 5.0 [MQTT-3.3.2-9] and §3.3.4: a Topic Alias above the Topic Alias Maximum
/// from the CONNACK (absent means 0) gets DISCONNECT 0x94.
#[tokio::test]
async fn v5_publish_with_topic_alias_above_maximum_gets_disconnect_0x94() {
    let broker = common::start_broker().await;
    let (mut client, connack) = connect_v5(broker.addr, &unique_id("m")).await;
    let maximum = connack.property_u16(TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    assert!(maximum < u16::MAX, "no alias above the maximum exists");
    let bytes = publish_v5(
        "petrel-raw/alias",
        0,
        0,
        &prop_u16(TOPIC_ALIAS, maximum + 1),
        b"x",
    );
    client.send(&bytes).await;
    client
        .expect_disconnect_then_close(&[TOPIC_ALIAS_INVALID])
        .await;
}

/// 5.0 §3.3.2.3.2: Payload Format Indicator more than once is a Protocol Error.
#[tokio::test]
async fn v5_publish_with_duplicate_payload_format_indicator_gets_disconnect_0x82() {
    let props = [PAYLOAD_FORMAT_INDICATOR, 0, PAYLOAD_FORMAT_INDICATOR, 0];
    let bytes = publish_v5("petrel-raw/pfi", 0, 0, &props, b"x");
    v5_session_disconnects_after(&bytes, &[PROTOCOL_ERROR]).await;
}

/// 5.0 §2.2.2: a property length that ends inside a property (here 2 bytes of
/// a 5-byte Message Expiry Interval) is a Malformed Packet.
#[tokio::test]
async fn v5_publish_with_property_length_shorter_than_properties_gets_disconnect_0x81() {
    let mut body = string(b"petrel-raw/proplen");
    body.push(2);
    body.extend(prop_u32(0x02, 60));
    body.extend_from_slice(b"x");
    v5_session_disconnects_after(&packet(0x30, &body), &[MALFORMED_PACKET]).await;
}

/// 5.0 §3.3.2.3.2: a payload marked UTF-8 (indicator 1) that is not UTF-8 is
/// answered with PUBACK 0x99 or DISCONNECT 0x99. The spec makes the check
/// optional (MAY); petrel performs it, so one of the two must come.
#[tokio::test]
async fn v5_publish_marked_utf8_with_invalid_payload_gets_reason_0x99() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    let props = [PAYLOAD_FORMAT_INDICATOR, 1];
    let bytes = publish_v5("petrel-raw/pfi", 1, 1, &props, &[0xff, 0xfe, 0x80]);
    client.send(&bytes).await;
    let reply = client.expect_packet().await;
    if reply.kind() == PUBACK {
        assert_eq!(reply.packet_id(), 1, "PUBACK for the wrong id: {reply:?}");
        assert_eq!(
            reply.ack_reason(),
            PAYLOAD_FORMAT_INVALID,
            "expected PUBACK 0x99, got {reply:?}"
        );
    } else {
        assert!(
            reply.first == 0xe0 && reply.disconnect_reason() == PAYLOAD_FORMAT_INVALID,
            "expected PUBACK 0x99 or DISCONNECT 0x99, got {reply:?}"
        );
        client.expect_closed().await;
    }
}

/// A remaining length running to a fifth byte is malformed.
#[tokio::test]
async fn v311_packet_with_five_byte_remaining_length_closes_connection() {
    v311_session_closes_after(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]).await;
}

#[tokio::test]
async fn v5_packet_with_five_byte_remaining_length_gets_disconnect_0x81() {
    v5_session_disconnects_after(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], &[MALFORMED_PACKET]).await;
}

/// 5.0 §3.1.2.11.4 / §3.2.2.3.6: a packet larger than the Maximum Packet Size
/// the server announced gets DISCONNECT 0x95.
#[tokio::test]
async fn v5_publish_larger_than_max_packet_size_gets_disconnect_0x95() {
    let broker = common::start_broker_with(|s| s.limits.max_packet_size = 1024).await;
    let (mut client, connack) = connect_v5(broker.addr, &unique_id("m")).await;
    assert_eq!(
        connack.property_u32(MAXIMUM_PACKET_SIZE),
        Some(1024),
        "CONNACK must announce the Maximum Packet Size"
    );
    client
        .send(&publish_v5("petrel-raw/big", 0, 0, &[], &[b'x'; 2000]))
        .await;
    client
        .expect_disconnect_then_close(&[PACKET_TOO_LARGE])
        .await;
}

/// 3.1.1 has no Maximum Packet Size; a server enforcing a limit can only close.
#[tokio::test]
async fn v311_publish_larger_than_max_packet_size_closes_connection() {
    let broker = common::start_broker_with(|s| s.limits.max_packet_size = 1024).await;
    let mut client = connect_v311(broker.addr, &unique_id("m")).await;
    client
        .send(&publish_v311("petrel-raw/big", 0, 0, &[b'x'; 2000]))
        .await;
    client.expect_closed().await;
}

/// 5.0 §3.3.4: more unacknowledged QoS 2 PUBLISHes than the Receive Maximum
/// the server announced gets DISCONNECT 0x93.
#[tokio::test]
async fn v5_qos2_publishes_beyond_receive_maximum_get_disconnect_0x93() {
    let broker = common::start_broker_with(|s| s.limits.receive_maximum = 2).await;
    let (mut client, connack) = connect_v5(broker.addr, &unique_id("m")).await;
    assert_eq!(
        connack.property_u16(RECEIVE_MAXIMUM),
        Some(2),
        "CONNACK must announce Receive Maximum 2"
    );
    let topic = topic("rm");
    for id in 1..=3 {
        client.send(&publish_v5(&topic, 2, id, &[], b"q")).await;
    }
    for id in 1..=2 {
        let pubrec = client.expect_kind(PUBREC).await;
        assert_eq!(pubrec.packet_id(), id, "PUBREC out of order: {pubrec:?}");
        assert!(pubrec.ack_reason() < 0x80, "PUBREC refused: {pubrec:?}");
    }
    client
        .expect_disconnect_then_close(&[RECEIVE_MAXIMUM_EXCEEDED])
        .await;
}

// ---------------------------------------------------------------------------
// PUBREL

/// 3.1.1 §4.3.3: PUBREL is always answered by PUBCOMP with
/// the same identifier, known or not; the connection stays up.
#[tokio::test]
async fn v311_pubrel_for_unknown_packet_id_gets_pubcomp() {
    let broker = common::start_broker().await;
    let mut client = connect_v311(broker.addr, &unique_id("m")).await;
    client.send(&ack(0x62, 7)).await;
    let pubcomp = client.expect_packet().await;
    assert_eq!(
        pubcomp.to_bytes(),
        [0x70, 0x02, 0x00, 0x07],
        "expected PUBCOMP 7, got {pubcomp:?}"
    );
    client.ping().await;
}

/// 5.0 §3.7.2.1: PUBREL for an unknown identifier gets PUBCOMP 0x92; the
/// connection stays up.
#[tokio::test]
async fn v5_pubrel_for_unknown_packet_id_gets_pubcomp_0x92() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    client.send(&ack(0x62, 7)).await;
    let pubcomp = client.expect_kind(PUBCOMP).await;
    assert_eq!(
        pubcomp.packet_id(),
        7,
        "PUBCOMP for the wrong id: {pubcomp:?}"
    );
    assert_eq!(
        pubcomp.ack_reason(),
        PACKET_IDENTIFIER_NOT_FOUND,
        "expected PUBCOMP 0x92, got {pubcomp:?}"
    );
    client.ping().await;
}

/// 3.1.1 [MQTT-3.6.1-1]: PUBREL flags must be 0b0010, else close.
#[tokio::test]
async fn v311_pubrel_with_wrong_fixed_header_flags_closes_connection() {
    v311_session_closes_after(&ack(0x60, 7)).await;
}

/// 5.0 §2.1.3: wrong fixed-header flags are a Malformed Packet.
#[tokio::test]
async fn v5_pubrel_with_wrong_fixed_header_flags_gets_disconnect_0x81() {
    v5_session_disconnects_after(&ack(0x60, 7), &[MALFORMED_PACKET]).await;
}

// ---------------------------------------------------------------------------
// SUBSCRIBE

/// 3.1.1 [MQTT-3.8.1-1]: SUBSCRIBE flags other than 0b0010 are malformed.
#[tokio::test]
async fn v311_subscribe_with_wrong_fixed_header_flags_closes_connection() {
    let mut bytes = subscribe(1, None, &[(b"petrel-raw/s", 0)]);
    bytes[0] = 0x80;
    v311_session_closes_after(&bytes).await;
}

/// 5.0 [MQTT-3.8.1-1]: SUBSCRIBE flags other than 0b0010 are malformed.
#[tokio::test]
async fn v5_subscribe_with_wrong_fixed_header_flags_gets_disconnect_0x81() {
    let mut bytes = subscribe(1, Some(&[]), &[(b"petrel-raw/s", 0)]);
    bytes[0] = 0x80;
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET]).await;
}

/// 3.1.1 [MQTT-3.8.3-3]: a SUBSCRIBE without filters is a protocol violation.
#[tokio::test]
async fn v311_subscribe_without_filters_closes_connection() {
    v311_session_closes_after(&subscribe(1, None, &[])).await;
}

/// 5.0 [MQTT-3.8.3-2]: a SUBSCRIBE without filters is a Protocol Error.
#[tokio::test]
async fn v5_subscribe_without_filters_gets_disconnect_0x82() {
    v5_session_disconnects_after(&subscribe(1, Some(&[]), &[]), &[PROTOCOL_ERROR]).await;
}

/// 3.1.1 [MQTT-3.8.3-4]: reserved bits in the requested-QoS byte are malformed.
#[tokio::test]
async fn v311_subscribe_with_reserved_option_bits_closes_connection() {
    v311_session_closes_after(&subscribe(1, None, &[(b"petrel-raw/s", 0x05)])).await;
}

/// 3.1.1 [MQTT-3.8.3-4]: requested QoS 3 is malformed.
#[tokio::test]
async fn v311_subscribe_with_qos_3_closes_connection() {
    v311_session_closes_after(&subscribe(1, None, &[(b"petrel-raw/s", 0x03)])).await;
}

/// 5.0 [MQTT-3.8.3-5]: reserved bits 6-7 of the subscription options set is a
/// Malformed Packet.
#[tokio::test]
async fn v5_subscribe_with_reserved_option_bits_gets_disconnect_0x81() {
    let bytes = subscribe(1, Some(&[]), &[(b"petrel-raw/s", 0x41)]);
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET]).await;
}

/// 5.0 §3.8.3.1: Maximum QoS 3 is a Protocol Error.
#[tokio::test]
async fn v5_subscribe_with_qos_3_gets_disconnect_0x82() {
    let bytes = subscribe(1, Some(&[]), &[(b"petrel-raw/s", 0x03)]);
    v5_session_disconnects_after(&bytes, &[PROTOCOL_ERROR]).await;
}

/// 5.0 §3.8.3.1: Retain Handling 3 is a Protocol Error.
#[tokio::test]
async fn v5_subscribe_with_retain_handling_3_gets_disconnect_0x82() {
    let bytes = subscribe(1, Some(&[]), &[(b"petrel-raw/s", 0x30)]);
    v5_session_disconnects_after(&bytes, &[PROTOCOL_ERROR]).await;
}

/// 3.1.1 [MQTT-2.3.1-1]: SUBSCRIBE needs a non-zero packet identifier.
#[tokio::test]
async fn v311_subscribe_with_packet_id_0_closes_connection() {
    v311_session_closes_after(&subscribe(0, None, &[(b"petrel-raw/s", 0)])).await;
}

/// 5.0 [MQTT-2.2.1-3]: identifier 0 is not allowed (malformed or protocol
/// error; the spec does not say which).
#[tokio::test]
async fn v5_subscribe_with_packet_id_0_gets_disconnect_0x81_or_0x82() {
    let bytes = subscribe(0, Some(&[]), &[(b"petrel-raw/s", 0)]);
    v5_session_disconnects_after(&bytes, &[MALFORMED_PACKET, PROTOCOL_ERROR]).await;
}

const INVALID_FILTERS: [&[u8]; 4] = [b"petrel-raw/#/b", b"petrel-raw/a+/b", b"petrel-raw/a#", b""];

/// 3.1.1 [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1]: misplaced wildcards
/// and empty filters violate the protocol. The connection is closed, or (as
/// many servers do) the filter is refused with SUBACK 0x80; never granted.
#[tokio::test]
async fn v311_subscribe_with_invalid_filter_is_refused() {
    let broker = common::start_broker().await;
    for filter in INVALID_FILTERS {
        let mut client = connect_v311(broker.addr, &unique_id("m")).await;
        client.send(&subscribe(1, None, &[(filter, 0)])).await;
        match client.next_event().await {
            Event::Closed | Event::Reset => {}
            Event::Packet(packet) => assert_eq!(
                packet.to_bytes(),
                [0x90, 0x03, 0x00, 0x01, 0x80],
                "filter {:?}: expected close or SUBACK 0x80",
                String::from_utf8_lossy(filter)
            ),
        }
    }
}

/// 5.0 same rules: DISCONNECT 0x81/0x82 and close, or SUBACK 0x8F; never
/// granted.
#[tokio::test]
async fn v5_subscribe_with_invalid_filter_is_refused() {
    let broker = common::start_broker().await;
    for filter in INVALID_FILTERS {
        let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
        client.send(&subscribe(1, Some(&[]), &[(filter, 0)])).await;
        let reply = client.expect_packet().await;
        let name = String::from_utf8_lossy(filter);
        if reply.kind() == SUBACK {
            assert_eq!(
                reply.body.last(),
                Some(&TOPIC_FILTER_INVALID),
                "filter {name:?}: expected SUBACK 0x8F, got {reply:?}"
            );
        } else {
            assert!(
                reply.first == 0xe0
                    && [MALFORMED_PACKET, PROTOCOL_ERROR].contains(&reply.disconnect_reason()),
                "filter {name:?}: expected SUBACK 0x8F or DISCONNECT 0x81/0x82, got {reply:?}"
            );
            client.expect_closed().await;
        }
    }
}

// ---------------------------------------------------------------------------
// Other packets

/// 3.1.1 [MQTT-2.2.2-2]: invalid fixed-header flags close the connection.
#[tokio::test]
async fn v311_pingreq_with_nonzero_flags_closes_connection() {
    v311_session_closes_after(&[0xc1, 0x00]).await;
}

/// 5.0 §2.1.3: invalid fixed-header flags are a Malformed Packet.
#[tokio::test]
async fn v5_pingreq_with_nonzero_flags_gets_disconnect_0x81() {
    v5_session_disconnects_after(&[0xc1, 0x00], &[MALFORMED_PACKET]).await;
}

/// PINGREQ has no variable header; a remaining length of 1 is malformed.
#[tokio::test]
async fn v311_pingreq_with_body_closes_connection() {
    v311_session_closes_after(&[0xc0, 0x01, 0x00]).await;
}

#[tokio::test]
async fn v5_pingreq_with_body_gets_disconnect_0x81() {
    v5_session_disconnects_after(&[0xc0, 0x01, 0x00], &[MALFORMED_PACKET]).await;
}

/// 3.1.1 §2.2.1: packet types 0 and 15 are reserved.
#[tokio::test]
async fn v311_packet_type_0_closes_connection() {
    v311_session_closes_after(&[0x00, 0x00]).await;
}

#[tokio::test]
async fn v311_packet_type_15_closes_connection() {
    v311_session_closes_after(&[0xf0, 0x00]).await;
}

/// 5.0 §2.1.2: type 0 is reserved (malformed or protocol error).
#[tokio::test]
async fn v5_packet_type_0_gets_disconnect_0x81_or_0x82() {
    v5_session_disconnects_after(&[0x00, 0x00], &[MALFORMED_PACKET, PROTOCOL_ERROR]).await;
}

/// 5.0 §4.12: AUTH without an Authentication Method in the
/// CONNECT is a Protocol Error: DISCONNECT 0x82 then close, or a bare close.
#[tokio::test]
async fn v5_auth_without_auth_method_gets_disconnect_0x82_or_close() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    client.send(&[0xf0, 0x02, 0x18, 0x00]).await;
    match client.next_event().await {
        Event::Closed | Event::Reset => {}
        Event::Packet(packet) => {
            assert!(
                packet.first == 0xe0 && packet.disconnect_reason() == PROTOCOL_ERROR,
                "expected DISCONNECT 0x82 or close, got {packet:?}"
            );
            client.expect_closed().await;
        }
    }
}

// ---------------------------------------------------------------------------
// Well-formed short forms that must be accepted

/// Connects a v5 client (session expiry 0) with the will "gone" on
/// `{base}/will`, watched by a 3.1.1 subscriber on `{base}/#`, and sends
/// `disconnect`, after which the broker must close the connection. Returns
/// the watcher, `base` and the client id.
async fn will_client_disconnects_with(
    addr: std::net::SocketAddr,
    disconnect: &[u8],
) -> (RawClient, String, String) {
    let base = topic("will");
    let watcher = v311_subscriber(addr, &format!("{base}/#"), 0).await;
    let id = unique_id("w");
    let mut connect = Connect::v5(&id);
    connect.will = Some(Will {
        topic: format!("{base}/will").into_bytes(),
        payload: b"gone".to_vec(),
        qos: 0,
        retain: false,
        properties: Vec::new(),
    });
    let (mut client, _) = connect_v5_with(addr, &connect).await;
    client.send(disconnect).await;
    assert_eq!(
        client.next_event().await,
        Event::Closed,
        "expected a clean close after DISCONNECT"
    );
    (watcher, base, id)
}

/// Asserts that `watcher` (subscribed to `{base}/#`) gets no will: the client
/// id is connected again (so the broker is done with the old connection) and
/// publishes a marker, which must be the first message the watcher sees, with
/// nothing following it for a short while.
async fn assert_no_will(
    addr: std::net::SocketAddr,
    watcher: &mut RawClient,
    base: &str,
    client_id: &str,
) {
    let marker = format!("{base}/marker");
    let (mut again, _) = connect_v5(addr, client_id).await;
    again.send(&publish_v5(&marker, 1, 1, &[], b"m")).await;
    let puback = again.expect_kind(PUBACK).await;
    assert!(puback.ack_reason() < 0x80, "marker refused: {puback:?}");
    let first = Publish::parse(&watcher.expect_kind(PUBLISH).await, false);
    assert_eq!(
        String::from_utf8_lossy(&first.topic),
        marker,
        "the will was published after a normal disconnect"
    );
    let late = watcher.next_event_within(Duration::from_millis(300)).await;
    assert_eq!(late, None, "unexpected traffic after the marker");
}

/// 5.0 §3.14.2.1: a DISCONNECT with remaining length 0 is reason 0x00, normal
/// disconnection: the will is discarded [MQTT-3.14.4-3] and the server closes.
#[tokio::test]
async fn v5_disconnect_with_remaining_length_0_is_normal_and_discards_will() {
    let broker = common::start_broker().await;
    let (mut watcher, base, id) = will_client_disconnects_with(broker.addr, &[0xe0, 0x00]).await;
    assert_no_will(broker.addr, &mut watcher, &base, &id).await;
}

/// 5.0 §3.14.2.2: a DISCONNECT with only the reason code (0x00) is valid.
#[tokio::test]
async fn v5_disconnect_with_only_reason_code_0x00_is_normal_and_discards_will() {
    let broker = common::start_broker().await;
    let (mut watcher, base, id) =
        will_client_disconnects_with(broker.addr, &[0xe0, 0x01, 0x00]).await;
    assert_no_will(broker.addr, &mut watcher, &base, &id).await;
}

/// 5.0 §3.14.2.1: reason 0x04 (disconnect with will message) in the one-byte
/// form publishes the will.
#[tokio::test]
async fn v5_disconnect_with_only_reason_code_0x04_publishes_will() {
    let broker = common::start_broker().await;
    let (mut watcher, base, _) =
        will_client_disconnects_with(broker.addr, &[0xe0, 0x01, 0x04]).await;
    expect_v311_delivery(&mut watcher, &format!("{base}/will"), b"gone").await;
}

/// A v5 session with Session Expiry 300 s subscribed to `topic` at `qos`,
/// and the CONNECT to resume it.
async fn persistent_v5_subscriber(
    addr: std::net::SocketAddr,
    topic: &str,
    qos: u8,
) -> (RawClient, Connect) {
    let mut connect = Connect::v5(&unique_id("s"));
    connect.properties = prop_u32(SESSION_EXPIRY_INTERVAL, 300);
    let (mut subscriber, _) = connect_v5_with(addr, &connect).await;
    subscriber
        .send(&subscribe(1, Some(&[]), &[(topic.as_bytes(), qos)]))
        .await;
    let suback = subscriber.expect_kind(SUBACK).await;
    assert_eq!(
        suback.body.last(),
        Some(&qos),
        "QoS {qos} not granted: {suback:?}"
    );
    (subscriber, connect)
}

/// Waits for the PUBLISH a v5 `subscriber` receives, checks its QoS and
/// returns its packet identifier.
async fn expect_v5_delivery_id(subscriber: &mut RawClient, qos: u8) -> u16 {
    let delivery = Publish::parse(&subscriber.expect_kind(PUBLISH).await, true);
    assert_eq!(delivery.qos, qos);
    delivery
        .packet_id
        .unwrap_or_else(|| panic!("QoS {qos} has an identifier"))
}

/// Ends `subscriber`'s connection once the broker has processed everything
/// it sent, reconnects to its persistent session and checks nothing is
/// redelivered: a resent PUBLISH or PUBREL would come before the PINGRESP.
async fn assert_resumed_without_redelivery(
    addr: std::net::SocketAddr,
    mut subscriber: RawClient,
    mut connect: Connect,
) {
    subscriber.ping().await;
    drop(subscriber);
    connect.clean = false;
    let (mut resumed, connack) = connect_v5_with(addr, &connect).await;
    assert!(connack.session_present, "the session was not kept");
    resumed.ping().await;
}

/// 5.0 §3.4.2.1: a PUBACK with remaining length 2 means success.
#[tokio::test]
async fn v5_puback_with_remaining_length_2_acknowledges_delivery() {
    let broker = common::start_broker().await;
    let topic = topic("puback");
    let (mut subscriber, connect) = persistent_v5_subscriber(broker.addr, &topic, 1).await;

    let mut publisher = connect_v311(broker.addr, &unique_id("p")).await;
    publisher.send(&publish_v311(&topic, 1, 1, b"one")).await;
    assert_eq!(
        publisher.expect_packet().await.to_bytes(),
        [0x40, 0x02, 0, 1]
    );

    let id = expect_v5_delivery_id(&mut subscriber, 1).await;
    subscriber.send(&ack(0x40, id)).await;
    assert_resumed_without_redelivery(broker.addr, subscriber, connect).await;
}

/// 5.0 §3.5.2.1 and §3.7.2.1: PUBREC and PUBCOMP with remaining length 2 mean
/// success; the broker answers the PUBREC with PUBREL and the flow completes.
#[tokio::test]
async fn v5_pubrec_and_pubcomp_with_remaining_length_2_complete_qos2_delivery() {
    let broker = common::start_broker().await;
    let topic = topic("pubrec");
    let (mut subscriber, connect) = persistent_v5_subscriber(broker.addr, &topic, 2).await;

    let mut publisher = connect_v311(broker.addr, &unique_id("p")).await;
    publisher.send(&publish_v311(&topic, 2, 1, b"two")).await;
    assert_eq!(
        publisher.expect_packet().await.to_bytes(),
        [0x50, 0x02, 0, 1]
    );
    publisher.send(&ack(0x62, 1)).await;
    assert_eq!(
        publisher.expect_packet().await.to_bytes(),
        [0x70, 0x02, 0, 1]
    );

    let id = expect_v5_delivery_id(&mut subscriber, 2).await;
    subscriber.send(&ack(0x50, id)).await;
    let pubrel = subscriber.expect_kind(PUBREL).await;
    assert_eq!(pubrel.flags(), 0b0010, "PUBREL flags: {pubrel:?}");
    assert_eq!(
        pubrel.packet_id(),
        id,
        "PUBREL for the wrong id: {pubrel:?}"
    );
    assert_eq!(pubrel.ack_reason(), 0, "PUBREL not success: {pubrel:?}");
    subscriber.send(&ack(0x70, id)).await;
    assert_resumed_without_redelivery(broker.addr, subscriber, connect).await;
}

/// 5.0 §3.6.2.1: a PUBREL with remaining length 2 means success: the broker
/// completes with PUBCOMP 0x00 and the message reaches subscribers.
#[tokio::test]
async fn v5_pubrel_with_remaining_length_2_releases_inbound_qos2_message() {
    let broker = common::start_broker().await;
    let topic = topic("pubrel");
    let mut watcher = v311_subscriber(broker.addr, &topic, 0).await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    client.send(&publish_v5(&topic, 2, 1, &[], b"two")).await;
    let pubrec = client.expect_kind(PUBREC).await;
    assert_eq!(pubrec.packet_id(), 1);
    assert!(pubrec.ack_reason() < 0x80, "PUBREC refused: {pubrec:?}");
    client.send(&ack(0x62, 1)).await;
    let pubcomp = client.expect_kind(PUBCOMP).await;
    assert_eq!(pubcomp.packet_id(), 1);
    assert_eq!(pubcomp.ack_reason(), 0, "PUBCOMP not success: {pubcomp:?}");
    expect_v311_delivery(&mut watcher, &topic, b"two").await;
    client.ping().await;
}

// ---------------------------------------------------------------------------
// Robustness

/// Panics raised outside the test code (in the broker) while tests run.
static BROKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_broker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("");
            if !file.starts_with("tests/")
                && !file.contains("/tests/")
                && let Ok(mut panics) = BROKER_PANICS.lock()
            {
                panics.push(info.to_string());
            }
            previous(info);
        }));
    });
}

/// xorshift64*: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn fuzz_connect(v5: bool, rng: &mut Rng) -> Vec<u8> {
    let id = format!("fz{}", rng.below(1_000_000));
    let mut connect = if v5 {
        Connect::v5(&id)
    } else {
        Connect::v311(&id)
    };
    if rng.percent(30) {
        connect.will = Some(Will {
            topic: b"petrel-raw/fuzz/will".to_vec(),
            payload: b"w".to_vec(),
            qos: rng.below(3) as u8,
            retain: rng.percent(20),
            properties: if v5 { vec![0x18, 0, 0, 0, 1] } else { vec![] },
        });
    }
    if rng.percent(30) {
        connect.username = Some(b"user".to_vec());
        connect.password = Some(b"pass".to_vec());
    }
    if v5 && rng.percent(50) {
        connect.properties = [
            prop_u32(SESSION_EXPIRY_INTERVAL, 5),
            prop_u16(RECEIVE_MAXIMUM, 5),
            prop_u16(TOPIC_ALIAS_MAXIMUM, 3),
        ]
        .concat();
    }
    connect.encode()
}

fn fuzz_corpus(v5: bool) -> Vec<Vec<u8>> {
    let props: Option<&[u8]> = if v5 { Some(&[]) } else { None };
    let topic = b"petrel-raw/fuzz/t";
    let mut corpus = vec![
        publish(0x30, topic, None, props, b"zero"),
        publish(0x33, topic, Some(1), props, b"one"),
        publish(0x34, topic, Some(2), props, b"two"),
        subscribe(
            3,
            props,
            &[(b"petrel-raw/fuzz/+", 2), (b"petrel-raw/fuzz/#", 1)],
        ),
        packet(
            0xa2,
            &[
                &[0, 4][..],
                &props.map_or(vec![], |_| vec![0]),
                &string(b"petrel-raw/fuzz/#"),
            ]
            .concat(),
        ),
        ack(0x40, 1),
        ack(0x50, 2),
        ack(0x62, 2),
        ack(0x70, 2),
        vec![0xc0, 0x00],
        vec![0xe0, 0x00],
    ];
    if v5 {
        corpus.extend([
            publish(
                0x32,
                topic,
                Some(5),
                Some(
                    &[
                        &prop_u16(TOPIC_ALIAS, 1)[..],
                        &[0x01, 0x01],
                        &[0x03, 0, 1, b'c'],
                    ]
                    .concat(),
                ),
                b"props",
            ),
            publish(0x30, b"", None, Some(&prop_u16(TOPIC_ALIAS, 1)), b"alias"),
            subscribe(
                6,
                Some(&[0x0b, 0x07]),
                &[(b"$share/g/petrel-raw/fuzz/t", 0x2e)],
            ),
            packet(0x40, &[0, 1, 0x10, 0]),
            packet(0xe0, &[0x04, 0x05, 0x11, 0, 0, 0, 0]),
            vec![0xf0, 0x02, 0x18, 0x00],
        ]);
    }
    corpus
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len());
        match rng.below(8) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => bytes[at] = rng.byte(),
            2 if !bytes.is_empty() => bytes[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)],
            3 => bytes.insert(at, rng.byte()),
            4 if bytes.len() > 1 => {
                bytes.remove(at);
            }
            5 => bytes.truncate(at),
            6 if !bytes.is_empty() => {
                let end = at + rng.below(bytes.len() - at) + 1;
                let chunk = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
            _ if bytes.len() > 1 => {
                // Rewrite the remaining length to a plausible or absurd value.
                let (_, used) = remaining_length_size(&bytes[1..]);
                let length = match rng.below(3) {
                    0 => rng.below(bytes.len() + 8),
                    1 => rng.below(300_000_000),
                    _ => bytes.len().saturating_sub(1 + used),
                };
                let mut rewritten = vec![bytes[0]];
                rewritten.extend(raw::varint(length));
                rewritten.extend_from_slice(&bytes[(1 + used).min(bytes.len())..]);
                bytes = rewritten;
            }
            _ => {}
        }
    }
    bytes
}

/// The number of bytes a remaining length occupies (at most 4 counted).
fn remaining_length_size(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, bytes.len().min(4))
}

/// One connection: a (sometimes mutated) CONNECT and 1-4 mutated packets,
/// written whole or in small pieces, then our side closes and we drain
/// whatever the broker says until it closes too (bounded).
async fn fuzz_connection(addr: std::net::SocketAddr, seed: u64) {
    let mut rng = Rng(seed | 1);
    let v5 = rng.percent(50);
    let corpus = fuzz_corpus(v5);
    let mut bytes = fuzz_connect(v5, &mut rng);
    if rng.percent(20) {
        bytes = mutate(&mut rng, &bytes);
    }
    for _ in 0..=rng.below(4) {
        let valid = &corpus[rng.below(corpus.len())];
        if rng.percent(85) {
            bytes.extend(mutate(&mut rng, valid));
        } else {
            bytes.extend_from_slice(valid);
        }
    }
    let mut client = RawClient::connect(addr).await;
    if rng.percent(25) {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (rng.below(16) + 1).min(rest.len());
            client.send(&rest[..n]).await;
            rest = &rest[n..];
            tokio::task::yield_now().await;
        }
    } else {
        client.send(&bytes).await;
    }
    client.shutdown_write().await;
    while let Some(Event::Packet(_)) = client.next_event_within(Duration::from_secs(2)).await {}
}

/// No input stops the broker: thousands of mutated packets on fresh
/// connections, then a normal session still connects and a PUBLISH still
/// reaches its subscriber, and nothing panicked in the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutated_packets_never_stop_the_broker() {
    record_broker_panics();
    let broker = common::start_broker().await;
    let seed = std::env::var("PETREL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_9e7e_0001_u64);
    let connections = 3000;
    let mut master = Rng(seed);
    let addr = broker.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let connection_seed = master.next();
        if tasks.len() >= 64 {
            let done = tasks.join_next().await.expect("a task is running");
            done.unwrap_or_else(|e| panic!("fuzz connection failed (master seed {seed}): {e}"));
        }
        tasks.spawn(fuzz_connection(addr, connection_seed));
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap_or_else(|e| panic!("fuzz connection failed (master seed {seed}): {e}"));
    }

    let topic = topic("alive");
    let mut subscriber = v311_subscriber(broker.addr, &topic, 1).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher
        .send(&publish_v5(&topic, 1, 1, &[], b"alive"))
        .await;
    let puback = publisher.expect_kind(PUBACK).await;
    assert!(puback.ack_reason() < 0x80, "PUBLISH refused: {puback:?}");
    expect_v311_delivery(&mut subscriber, &topic, b"alive").await;

    let panics = BROKER_PANICS.lock().map(|p| p.clone()).unwrap_or_default();
    assert!(panics.is_empty(), "the broker panicked: {panics:#?}");
}
