//! MQTT 5.0 statements that bind the server, proven byte by byte.
//!
//! Each test writes hand-made bytes on raw sockets (`raw`) and asserts the
//! exact packets, or the close, that the 5.0 specification requires. The
//! statement ids are in the doc comment of each test and the tests are cited
//! in `conformance/mqtt-5.0.tsv`.
//!
//! Tests that use `common::start_broker()` honour `PETREL_TEST_BROKER=host:port`
//! and so run against another broker too; the few that need particular
//! settings (anonymous clients refused) always run petrel. Topics and client
//! ids are unique per run.

mod common;
mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use raw::{
    CONNACK, Connack, Connect, MAXIMUM_PACKET_SIZE, PAYLOAD_FORMAT_INDICATOR, PUBACK, PUBLISH,
    PUBREC, Packet, Publish, RawClient, SESSION_EXPIRY_INTERVAL, SUBACK, TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM, UNSUBACK, USER_PROPERTY, Will, ack, connect_v5, connect_v5_with, packet,
    parse_properties, prop_byte, prop_pair, prop_u16, prop_u32, properties, publish, publish_v5,
    string, subscribe, unique_id,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

// v5 reason codes.
const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const NOT_AUTHORIZED: u8 = 0x87;
const BAD_AUTHENTICATION_METHOD: u8 = 0x8c;
const TOPIC_FILTER_INVALID: u8 = 0x8f;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

// v5 property identifiers not named in `raw`.
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const AUTHENTICATION_METHOD: u8 = 0x15;
const REASON_STRING: u8 = 0x1f;
const WILL_DELAY_INTERVAL: u8 = 0x18;

/// A topic prefix that no other test, and no other run against a shared
/// broker, uses.
fn prefix(name: &str) -> String {
    format!("petrel-v5/{}/{name}", unique_id("t"))
}

/// A UTF-8 string property (the bytes need not be UTF-8).
fn prop_string(id: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(string(bytes));
    out
}

/// A v5 UNSUBSCRIBE with fixed-header flags `flags` and no properties.
fn unsubscribe(flags: u8, packet_id: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend(properties(&[]));
    for filter in filters {
        body.extend(string(filter));
    }
    packet(0xa0 | flags, &body)
}

/// The reason codes of a v5 SUBACK or UNSUBACK (after its properties).
fn reasons(packet: &Packet) -> Vec<u8> {
    let (_, used) = parse_properties(&packet.body[2..]);
    packet.body[2 + used..].to_vec()
}

/// The property ids of a v5 SUBACK or UNSUBACK.
fn ack_property_ids(packet: &Packet) -> Vec<u8> {
    let (props, _) = parse_properties(&packet.body[2..]);
    props.iter().map(|(id, _)| *id).collect()
}

/// Subscribes `client` with one SUBSCRIBE carrying `props` and checks that
/// every filter is granted the QoS asked for.
async fn subscribe_all(
    client: &mut RawClient,
    packet_id: u16,
    props: &[u8],
    filters: &[(&[u8], u8)],
) {
    client
        .send(&subscribe(packet_id, Some(props), filters))
        .await;
    let suback = client.expect_kind(SUBACK).await;
    assert_eq!(suback.packet_id(), packet_id, "{suback:?}");
    let granted: Vec<u8> = filters.iter().map(|(_, options)| options & 0x03).collect();
    assert_eq!(reasons(&suback), granted, "not granted: {suback:?}");
}

/// A v5 session subscribed to `filter` with subscription options `options`.
async fn subscriber(addr: SocketAddr, filter: &str, options: u8) -> RawClient {
    let (mut client, _) = connect_v5(addr, &unique_id("s")).await;
    subscribe_all(&mut client, 1, &[], &[(filter.as_bytes(), options)]).await;
    client
}

/// Sends a QoS 0 PUBLISH and waits for the answer to a PINGREQ after it:
/// the broker handles one connection's packets in order, so the publish is
/// routed (and any retained-store change done) by then.
async fn publish_qos0_and_sync(client: &mut RawClient, bytes: &[u8]) {
    client.send(bytes).await;
    client.ping().await;
}

/// The broker sends nothing more to `client` before answering a PINGREQ.
async fn expect_nothing_queued(client: &mut RawClient) {
    client.ping().await;
}

/// A v5 CONNECT with a will on `topic`.
fn connect_with_will(client_id: &str, topic: &str, retain: bool, will_props: &[u8]) -> Connect {
    Connect {
        will: Some(Will {
            topic: topic.as_bytes().to_vec(),
            payload: b"gone".to_vec(),
            qos: 0,
            retain,
            properties: will_props.to_vec(),
        }),
        ..Connect::v5(client_id)
    }
}

/// Connects with a will on `topic`, then drops the socket without
/// DISCONNECT, so the broker publishes the will at once.
async fn connect_and_vanish(addr: SocketAddr, topic: &str, retain: bool, will_props: &[u8]) {
    let (client, _) = connect_v5_with(
        addr,
        &connect_with_will(&unique_id("w"), topic, retain, will_props),
    )
    .await;
    drop(client);
}

/// Refuses nothing: sends a normal DISCONNECT and waits for the close.
async fn disconnect(mut client: RawClient) {
    client.send(&[0xe0, 0x00]).await;
    client.expect_closed().await;
}

/// A CONNECT the broker must refuse: it asks for an authentication method
/// no broker here supports.
fn refused_connect(client_id: &str, clean: bool) -> Connect {
    Connect {
        clean,
        properties: prop_string(AUTHENTICATION_METHOD, b"petrel-test-no-such-method"),
        ..Connect::v5(client_id)
    }
}

/// Connects `client_id` with clean start 0 and Session Expiry Interval 300,
/// then disconnects, so the broker keeps a session for it.
async fn store_session(addr: SocketAddr, client_id: &str) {
    let connect = Connect {
        clean: false,
        properties: prop_u32(SESSION_EXPIRY_INTERVAL, 300),
        ..Connect::v5(client_id)
    };
    let (client, _) = connect_v5_with(addr, &connect).await;
    disconnect(client).await;
}

/// Ends the stored session of `client_id` (clean start 1, expiry 0), so
/// runs against a shared broker leave nothing behind.
async fn end_session(addr: SocketAddr, client_id: &str) {
    let (client, _) = connect_v5(addr, client_id).await;
    disconnect(client).await;
}

// ---------------------------------------------------------------------------
// 1.5 Data representation

/// A raw TCP connection that reads exact byte counts, for asserting the
/// encoding of the fixed header itself (`RawClient` re-encodes it).
struct Wire(TcpStream);

impl Wire {
    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        timeout(raw::WAIT, self.0.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{n} bytes did not arrive within {:?}", raw::WAIT))
            .unwrap_or_else(|e| panic!("reading {n} bytes failed: {e}"));
        buf
    }

    /// Reads one packet whose remaining length fits one byte.
    async fn read_short_packet(&mut self) -> Vec<u8> {
        let mut bytes = self.read_exact(2).await;
        assert!(bytes[1] < 0x80, "unexpectedly long packet {bytes:02x?}");
        bytes.extend(self.read_exact(usize::from(bytes[1])).await);
        bytes
    }
}

/// [MQTT-1.5.5-1]: the remaining length is a variable byte integer in the
/// fewest bytes: a delivery with remaining length 127 starts `30 7F`, one
/// with 128 starts `30 80 01`.
#[tokio::test]
async fn remaining_lengths_127_and_128_use_the_fewest_bytes() {
    let broker = common::start_broker().await;
    let topic = prefix("varint");
    let mut wire = Wire(
        timeout(raw::WAIT, TcpStream::connect(broker.addr))
            .await
            .expect("connect in time")
            .expect("connect"),
    );
    wire.0
        .write_all(&Connect::v5(&unique_id("s")).encode())
        .await
        .expect("write");
    let connack = wire.read_short_packet().await;
    assert_eq!(connack[3], 0x00, "CONNECT refused: {connack:02x?}");
    wire.0
        .write_all(&subscribe(1, Some(&[]), &[(topic.as_bytes(), 0)]))
        .await
        .expect("write");
    let suback = wire.read_short_packet().await;
    assert_eq!(suback, [0x90, 0x04, 0x00, 0x01, 0x00, 0x00]);

    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    for (remaining, header) in [(127usize, &[0x30, 0x7f][..]), (128, &[0x30, 0x80, 0x01])] {
        // Topic length, topic, empty property section, payload.
        let payload = vec![b'x'; remaining - 3 - topic.len()];
        let bytes = publish_v5(&topic, 0, 0, &[], &payload);
        assert!(bytes.starts_with(header));
        publish_qos0_and_sync(&mut publisher, &bytes).await;
        // The delivery is the same packet as the one published.
        let delivered = wire.read_exact(bytes.len()).await;
        assert_eq!(
            raw::hex(&delivered[..4]),
            raw::hex(&bytes[..4]),
            "remaining length {remaining}"
        );
        assert_eq!(delivered, bytes, "remaining length {remaining}");
    }
}

/// [MQTT-1.5.7-1]: both strings of a User Property follow the UTF-8 rules;
/// a value (or key) holding the byte FF makes the PUBLISH malformed.
#[tokio::test]
async fn user_property_with_invalid_utf8_gets_disconnect_0x81() {
    let broker = common::start_broker().await;
    let topic = prefix("pair");
    for pair in [prop_pair(b"k", b"a\xff"), prop_pair(b"k\xff", b"v")] {
        let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
        client.send(&publish_v5(&topic, 0, 0, &pair, b"x")).await;
        client
            .expect_disconnect_then_close(&[MALFORMED_PACKET])
            .await;
    }
}

/// [MQTT-1.5.4-3]: EF BB BF inside a topic is U+FEFF and stays there: the
/// subscriber to the exact topic gets it back byte for byte, the subscriber
/// to the topic without it gets nothing.
#[tokio::test]
async fn bom_in_a_topic_is_kept_not_stripped() {
    let broker = common::start_broker().await;
    let base = prefix("bom");
    let plain = format!("{base}/x");
    let mut with_bom = format!("{base}/").into_bytes();
    with_bom.extend([0xef, 0xbb, 0xbf, b'x']);
    let (mut exact, _) = connect_v5(broker.addr, &unique_id("s")).await;
    subscribe_all(&mut exact, 1, &[], &[(&with_bom, 0)]).await;
    let mut stripped = subscriber(broker.addr, &plain, 0).await;

    let bytes = publish(0x30, &with_bom, None, Some(&[]), b"bom");
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publish_qos0_and_sync(&mut publisher, &bytes).await;
    let delivered = exact.expect_kind(PUBLISH).await;
    assert_eq!(delivered.to_bytes(), bytes);
    expect_nothing_queued(&mut stripped).await;
}

// ---------------------------------------------------------------------------
// 3.1 CONNECT

/// [MQTT-3.1.2-14]: a will with Will Retain 0 is published as a normal
/// message (RETAIN 0 to a live subscriber) and is not kept: a later
/// subscriber gets nothing.
#[tokio::test]
async fn will_with_retain_0_is_published_and_not_retained() {
    let broker = common::start_broker().await;
    let topic = prefix("will0");
    let mut watcher = subscriber(broker.addr, &topic, 0).await;
    connect_and_vanish(broker.addr, &topic, false, &[]).await;
    let will = watcher.expect_kind(PUBLISH).await;
    assert_eq!(will.to_bytes(), publish_v5(&topic, 0, 0, &[], b"gone"));

    let mut late = subscriber(broker.addr, &topic, 0).await;
    expect_nothing_queued(&mut late).await;
}

/// [MQTT-3.1.2-15]: a will with Will Retain 1 is published as a retained
/// message: a subscriber arriving afterwards gets it with RETAIN 1.
#[tokio::test]
async fn will_with_retain_1_is_retained() {
    let broker = common::start_broker().await;
    let topic = prefix("will1");
    let mut watcher = subscriber(broker.addr, &topic, 0).await;
    connect_and_vanish(broker.addr, &topic, true, &[]).await;
    // A live subscriber without Retain As Published sees RETAIN 0.
    let live = watcher.expect_kind(PUBLISH).await;
    assert_eq!(live.to_bytes(), publish_v5(&topic, 0, 0, &[], b"gone"));

    let mut late = subscriber(broker.addr, &topic, 0).await;
    let retained = late.expect_kind(PUBLISH).await;
    assert_eq!(
        retained.to_bytes(),
        publish(0x31, topic.as_bytes(), None, Some(&[]), b"gone")
    );
    // Clear the retained message for later runs against the same broker.
    let (mut cleaner, _) = connect_v5(broker.addr, &unique_id("c")).await;
    let clear = publish(0x31, topic.as_bytes(), None, Some(&[]), b"");
    publish_qos0_and_sync(&mut cleaner, &clear).await;
}

/// [MQTT-3.1.3-5]: client ids of 1 and of 23 bytes of digits and ASCII
/// letters are accepted as given: CONNACK 0x00 with no Assigned Client
/// Identifier.
#[tokio::test]
async fn short_alphanumeric_client_ids_are_accepted_as_given() {
    let broker = common::start_broker().await;
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let one = char::from(alphabet[std::process::id() as usize % alphabet.len()]).to_string();
    let stamp: String = unique_id("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let long: String = format!("Z{stamp}{}", "0".repeat(23))
        .chars()
        .take(23)
        .collect();
    assert_eq!(long.len(), 23);
    for id in [one, long] {
        let mut client = RawClient::connect(broker.addr).await;
        client.send(&Connect::v5(&id).encode()).await;
        let packet = client.expect_kind(CONNACK).await;
        let connack = Connack::parse_v5(&packet);
        assert_eq!(packet.body[..2], [0x00, 0x00], "id {id:?}: {packet:?}");
        assert_eq!(
            connack.property(ASSIGNED_CLIENT_IDENTIFIER),
            None,
            "id {id:?}: {packet:?}"
        );
        disconnect(client).await;
    }
}

/// [MQTT-3.1.3-10]: the will's User Properties reach the subscriber in the
/// order the CONNECT gave them, duplicate keys included.
#[tokio::test]
async fn will_user_properties_keep_their_order() {
    let broker = common::start_broker().await;
    let topic = prefix("willprops");
    let mut watcher = subscriber(broker.addr, &topic, 0).await;
    let pairs = [
        prop_pair(b"k", b"1"),
        prop_pair(b"a", b"2"),
        prop_pair(b"k", b"3"),
    ]
    .concat();
    connect_and_vanish(broker.addr, &topic, false, &pairs).await;
    let will = Publish::parse(&watcher.expect_kind(PUBLISH).await, true);
    let user_properties: Vec<u8> = will
        .properties
        .iter()
        .filter(|(id, _)| *id == USER_PROPERTY)
        .flat_map(|(id, value)| std::iter::once(*id).chain(value.iter().copied()))
        .collect();
    assert_eq!(raw::hex(&user_properties), raw::hex(&pairs));
}

/// [MQTT-3.1.4-2]: with anonymous clients refused, a CONNECT without a user
/// name gets CONNACK 0x87 and the connection is closed.
#[tokio::test]
async fn connect_without_user_name_is_refused_with_0x87_when_anonymous_is_off() {
    let broker = common::start_broker_with(|settings| settings.allow_anonymous = false).await;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&Connect::v5(&unique_id("a")).encode()).await;
    let connack = client.expect_kind(CONNACK).await;
    assert_eq!(connack.body[..2], [0x00, NOT_AUTHORIZED], "{connack:?}");
    client.expect_closed().await;
}

/// [MQTT-3.1.4-6]: a retained PUBLISH sent in the same write as a CONNECT
/// the broker refuses is not processed: a later subscriber finds nothing.
#[tokio::test]
async fn publish_after_a_refused_connect_is_not_processed() {
    let broker = common::start_broker().await;
    let topic = prefix("refused");
    let mut bytes = refused_connect(&unique_id("r"), true).encode();
    bytes.extend(publish(0x31, topic.as_bytes(), None, Some(&[]), b"kept?"));
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&bytes).await;
    client
        .expect_v5_connack_then_close(BAD_AUTHENTICATION_METHOD)
        .await;

    let mut late = subscriber(broker.addr, &topic, 0).await;
    expect_nothing_queued(&mut late).await;
}

// ---------------------------------------------------------------------------
// 3.2 CONNACK

/// [MQTT-3.2.2-1]: the CONNACK acknowledge flags byte is exactly 00 for a
/// new session and 01 for a resumed one (bits 7 to 1 are 0).
#[tokio::test]
async fn connack_flags_byte_is_exactly_00_or_01() {
    let broker = common::start_broker().await;
    let id = unique_id("f");
    let mut client = RawClient::connect(broker.addr).await;
    client
        .send(
            &Connect {
                clean: true,
                properties: prop_u32(SESSION_EXPIRY_INTERVAL, 300),
                ..Connect::v5(&id)
            }
            .encode(),
        )
        .await;
    let fresh = client.expect_kind(CONNACK).await;
    assert_eq!(fresh.body[..2], [0x00, 0x00], "{fresh:?}");
    disconnect(client).await;

    let mut client = RawClient::connect(broker.addr).await;
    client
        .send(
            &Connect {
                clean: false,
                properties: prop_u32(SESSION_EXPIRY_INTERVAL, 300),
                ..Connect::v5(&id)
            }
            .encode(),
        )
        .await;
    let resumed = client.expect_kind(CONNACK).await;
    assert_eq!(resumed.body[..2], [0x01, 0x00], "{resumed:?}");
    disconnect(client).await;
    end_session(broker.addr, &id).await;
}

/// [MQTT-3.2.2-6]: a refused CONNECT (clean start 0) for a client id whose
/// session the broker holds gets Session Present 0.
#[tokio::test]
async fn refused_connack_has_session_present_0_even_for_a_stored_session() {
    let broker = common::start_broker().await;
    let id = unique_id("r");
    store_session(broker.addr, &id).await;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&refused_connect(&id, false).encode()).await;
    let connack = client.expect_kind(CONNACK).await;
    assert_eq!(
        connack.body[..2],
        [0x00, BAD_AUTHENTICATION_METHOD],
        "{connack:?}"
    );
    client.expect_closed().await;
    end_session(broker.addr, &id).await;
}

// ---------------------------------------------------------------------------
// 3.3 PUBLISH

/// [MQTT-3.3.2-7]: a Topic Alias set on one connection means nothing on
/// the next one, even for the same session: a PUBLISH with only that alias
/// is a Protocol Error there (0x94, Topic Alias invalid, also names it).
#[tokio::test]
async fn topic_alias_mapping_does_not_survive_a_reconnect() {
    let broker = common::start_broker().await;
    let topic = prefix("alias");
    let id = unique_id("a");
    let connect = Connect {
        clean: false,
        properties: prop_u32(SESSION_EXPIRY_INTERVAL, 300),
        ..Connect::v5(&id)
    };
    let (mut client, connack) = connect_v5_with(broker.addr, &connect).await;
    assert!(
        connack.property_u16(raw::TOPIC_ALIAS_MAXIMUM).unwrap_or(0) >= 1,
        "the broker takes no topic aliases"
    );
    let alias = prop_u16(TOPIC_ALIAS, 1);
    publish_qos0_and_sync(&mut client, &publish_v5(&topic, 0, 0, &alias, b"set")).await;
    // The mapping works on this connection.
    publish_qos0_and_sync(&mut client, &publish(0x30, b"", None, Some(&alias), b"use")).await;
    disconnect(client).await;

    let (mut client, _) = connect_v5_with(broker.addr, &connect).await;
    client
        .send(&publish(0x30, b"", None, Some(&alias), b"stale"))
        .await;
    client
        .expect_disconnect_then_close(&[PROTOCOL_ERROR, TOPIC_ALIAS_INVALID])
        .await;
    end_session(broker.addr, &id).await;
}

/// [MQTT-3.3.2-13]: the Response Topic is a UTF-8 string; the byte FF in it
/// makes the PUBLISH malformed.
#[tokio::test]
async fn response_topic_with_invalid_utf8_gets_disconnect_0x81() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    let props = prop_string(RESPONSE_TOPIC, b"r/\xff");
    client
        .send(&publish_v5(&prefix("rt"), 0, 0, &props, b"x"))
        .await;
    client
        .expect_disconnect_then_close(&[MALFORMED_PACKET])
        .await;
}

/// [MQTT-3.3.2-19]: the Content Type is a UTF-8 string; the byte FF in it
/// makes the PUBLISH malformed.
#[tokio::test]
async fn content_type_with_invalid_utf8_gets_disconnect_0x81() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    let props = prop_string(CONTENT_TYPE, b"text/\xff");
    client
        .send(&publish_v5(&prefix("ct"), 0, 0, &props, b"x"))
        .await;
    client
        .expect_disconnect_then_close(&[MALFORMED_PACKET])
        .await;
}

/// [MQTT-3.3.4-5]: a client subscribed to `p/t` (identifier 1) and to
/// `$share/g/p/t` (identifier 2) gets two copies of a message on `p/t`, each
/// carrying only the identifier of the subscription it serves.
#[tokio::test]
async fn plain_and_shared_copies_each_carry_their_own_subscription_identifier() {
    let broker = common::start_broker().await;
    let topic = prefix("subid");
    let shared = format!("$share/{}/{topic}", unique_id("g").replace('-', ""));
    let (mut client, _) = connect_v5(broker.addr, &unique_id("s")).await;
    let id_1 = [SUBSCRIPTION_IDENTIFIER, 1];
    let id_2 = [SUBSCRIPTION_IDENTIFIER, 2];
    subscribe_all(&mut client, 1, &id_1, &[(topic.as_bytes(), 0)]).await;
    subscribe_all(&mut client, 2, &id_2, &[(shared.as_bytes(), 0)]).await;

    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publish_qos0_and_sync(&mut publisher, &publish_v5(&topic, 0, 0, &[], b"x")).await;
    let mut carried = Vec::new();
    for _ in 0..2 {
        let copy = Publish::parse(&client.expect_kind(PUBLISH).await, true);
        assert_eq!(copy.topic, topic.as_bytes());
        let ids: Vec<Vec<u8>> = copy
            .properties
            .iter()
            .filter(|(id, _)| *id == SUBSCRIPTION_IDENTIFIER)
            .map(|(_, value)| value.clone())
            .collect();
        carried.push(ids);
    }
    carried.sort();
    assert_eq!(carried, [vec![vec![1]], vec![vec![2]]]);
    expect_nothing_queued(&mut client).await;
}

/// [MQTT-3.3.1-2], [MQTT-4.3.1-1]: a QoS 0 PUBLISH has DUP 0: a message
/// published at QoS 1 with DUP 1 reaches a QoS 0 subscriber as `30 ...`.
#[tokio::test]
async fn qos0_delivery_of_a_dup_publish_has_dup_0() {
    let broker = common::start_broker().await;
    let topic = prefix("dup0");
    let mut watcher = subscriber(broker.addr, &topic, 0).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher
        .send(&publish(0x3a, topic.as_bytes(), Some(3), Some(&[]), b"d"))
        .await;
    assert_eq!(publisher.expect_kind(PUBACK).await.packet_id(), 3);
    let copy = watcher.expect_kind(PUBLISH).await;
    assert_eq!(copy.to_bytes(), publish_v5(&topic, 0, 0, &[], b"d"));
}

/// [MQTT-3.3.1-8]: a PUBLISH with RETAIN 0 is not stored and leaves the
/// retained message of its topic alone: a new subscriber gets `kept` with
/// RETAIN 1, and not `live`.
#[tokio::test]
async fn publish_with_retain_0_leaves_the_retained_message_alone() {
    let broker = common::start_broker().await;
    let topic = prefix("retain0");
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    let kept = publish(0x31, topic.as_bytes(), None, Some(&[]), b"kept");
    publish_qos0_and_sync(&mut publisher, &kept).await;
    publish_qos0_and_sync(&mut publisher, &publish_v5(&topic, 0, 0, &[], b"live")).await;

    let mut late = subscriber(broker.addr, &topic, 0).await;
    assert_eq!(late.expect_kind(PUBLISH).await.to_bytes(), kept);
    expect_nothing_queued(&mut late).await;
    let clear = publish(0x31, topic.as_bytes(), None, Some(&[]), b"");
    publish_qos0_and_sync(&mut publisher, &clear).await;
}

// ---------------------------------------------------------------------------
// Reason Strings and the client's Maximum Packet Size (3.4.2, 3.5.2, 3.9.2)

/// The Maximum Packet Size the tests below announce: room for petrel's
/// CONNACK (24 bytes) and for a bare error acknowledgement (PUBACK
/// `40 04 00 01 99 00`, SUBACK `90 04 00 01 00 8F`: 6 bytes), not for the
/// same acknowledgement with a Reason String of more than 21 bytes, which
/// petrel's are (`error_acks_carry_a_reason_string_when_it_fits`).
const SMALL_MAXIMUM: u32 = 30;

/// A v5 session that announced Maximum Packet Size [`SMALL_MAXIMUM`].
async fn small_maximum_client(addr: SocketAddr) -> RawClient {
    let mut client = RawClient::connect(addr).await;
    let connect = Connect {
        properties: prop_u32(MAXIMUM_PACKET_SIZE, SMALL_MAXIMUM),
        ..Connect::v5(&unique_id("small"))
    };
    client.send(&connect.encode()).await;
    let connack = client.expect_kind(CONNACK).await;
    assert_eq!(connack.body[1], 0x00, "CONNECT refused: {connack:?}");
    client
}

/// A PUBACK or PUBREC with `reason` and no properties, in either of its two
/// exact encodings (empty property section written or left out).
fn bare_ack(first: u8, packet_id: u16, reason: u8) -> [Vec<u8>; 2] {
    let mut short = packet_id.to_be_bytes().to_vec();
    short.push(reason);
    let mut long = short.clone();
    long.push(0x00);
    [packet(first, &short), packet(first, &long)]
}

/// [MQTT-3.4.2-2]: a PUBACK refusing a payload that is not the UTF-8 its
/// Payload Format Indicator announced still reaches a client whose Maximum
/// Packet Size leaves no room for a Reason String: without it.
#[tokio::test]
async fn puback_error_drops_reason_string_beyond_client_maximum_packet_size() {
    let broker = common::start_broker().await;
    let mut client = small_maximum_client(broker.addr).await;
    let props = prop_byte(PAYLOAD_FORMAT_INDICATOR, 1);
    client
        .send(&publish_v5(&prefix("pfi"), 1, 1, &props, b"\xff\xfe"))
        .await;
    let puback = client.expect_kind(PUBACK).await;
    assert!(
        bare_ack(0x40, 1, PAYLOAD_FORMAT_INVALID).contains(&puback.to_bytes()),
        "expected PUBACK 0x99 without properties, got {puback:?}"
    );
    client.ping().await;
}

/// [MQTT-3.5.2-2]: the same for PUBREC at QoS 2.
#[tokio::test]
async fn pubrec_error_drops_reason_string_beyond_client_maximum_packet_size() {
    let broker = common::start_broker().await;
    let mut client = small_maximum_client(broker.addr).await;
    let props = prop_byte(PAYLOAD_FORMAT_INDICATOR, 1);
    client
        .send(&publish_v5(&prefix("pfi"), 2, 1, &props, b"\xff\xfe"))
        .await;
    let pubrec = client.expect_kind(PUBREC).await;
    assert!(
        bare_ack(0x50, 1, PAYLOAD_FORMAT_INVALID).contains(&pubrec.to_bytes()),
        "expected PUBREC 0x99 without properties, got {pubrec:?}"
    );
    client.ping().await;
}

/// [MQTT-3.9.2-1]: a SUBACK refusing an invalid filter still reaches a
/// client whose Maximum Packet Size leaves no room for a Reason String:
/// without it.
#[tokio::test]
async fn suback_error_drops_reason_string_beyond_client_maximum_packet_size() {
    let broker = common::start_broker().await;
    let mut client = small_maximum_client(broker.addr).await;
    let filter = format!("{}/#/x", prefix("bad"));
    client
        .send(&subscribe(1, Some(&[]), &[(filter.as_bytes(), 0)]))
        .await;
    let suback = client.expect_kind(SUBACK).await;
    assert_eq!(
        suback.to_bytes(),
        [0x90, 0x04, 0x00, 0x01, 0x00, TOPIC_FILTER_INVALID]
    );
    client.ping().await;
}

/// The control for the three tests above: with no Maximum Packet Size the
/// same refusals carry petrel's Reason String, so the tests above prove it
/// was left out, not missing anyway.
#[tokio::test]
async fn error_acks_carry_a_reason_string_when_it_fits() {
    let broker = common::start_broker_with(|_| {}).await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("c")).await;
    let props = prop_byte(PAYLOAD_FORMAT_INDICATOR, 1);
    client
        .send(&publish_v5(&prefix("pfi"), 1, 1, &props, b"\xff\xfe"))
        .await;
    let puback = client.expect_kind(PUBACK).await;
    let (props, _) = parse_properties(&puback.body[3..]);
    assert!(
        props.iter().any(|(id, _)| *id == REASON_STRING),
        "{puback:?}"
    );
    assert!(puback.to_bytes().len() > SMALL_MAXIMUM as usize);

    let filter = format!("{}/#/x", prefix("bad"));
    client
        .send(&subscribe(2, Some(&[]), &[(filter.as_bytes(), 0)]))
        .await;
    let suback = client.expect_kind(SUBACK).await;
    assert_eq!(ack_property_ids(&suback), [REASON_STRING], "{suback:?}");
    assert!(suback.to_bytes().len() > SMALL_MAXIMUM as usize);
}

// ---------------------------------------------------------------------------
// 3.10 UNSUBSCRIBE, 3.11 UNSUBACK

/// [MQTT-3.10.1-1]: UNSUBSCRIBE with fixed-header flags 0000 is malformed.
#[tokio::test]
async fn unsubscribe_with_flags_0000_gets_disconnect_0x81() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("m")).await;
    client
        .send(&unsubscribe(0x00, 1, &[prefix("u").as_bytes()]))
        .await;
    client
        .expect_disconnect_then_close(&[MALFORMED_PACKET])
        .await;
}

/// [MQTT-3.10.4-6], [MQTT-3.11.3-1]: an UNSUBSCRIBE of a subscribed, a
/// never subscribed and another subscribed filter is answered by one
/// UNSUBACK whose reason codes follow the filters: 00 11 00. Both
/// subscriptions are gone afterwards.
#[tokio::test]
async fn unsubscribe_of_three_filters_gets_one_unsuback_in_filter_order() {
    let broker = common::start_broker().await;
    let base = prefix("unsub");
    let (a, never, b) = (
        format!("{base}/a"),
        format!("{base}/n"),
        format!("{base}/b"),
    );
    let (mut client, _) = connect_v5(broker.addr, &unique_id("s")).await;
    subscribe_all(&mut client, 1, &[], &[(a.as_bytes(), 0), (b.as_bytes(), 0)]).await;
    client
        .send(&unsubscribe(
            0x02,
            7,
            &[a.as_bytes(), never.as_bytes(), b.as_bytes()],
        ))
        .await;
    let unsuback = client.expect_kind(UNSUBACK).await;
    assert_eq!(unsuback.packet_id(), 7);
    assert_eq!(
        reasons(&unsuback),
        [0x00, NO_SUBSCRIPTION_EXISTED, 0x00],
        "{unsuback:?}"
    );
    expect_nothing_queued(&mut client).await;

    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publish_qos0_and_sync(&mut publisher, &publish_v5(&a, 0, 0, &[], b"x")).await;
    publish_qos0_and_sync(&mut publisher, &publish_v5(&b, 0, 0, &[], b"x")).await;
    expect_nothing_queued(&mut client).await;
}

/// [MQTT-2.2.1-6], [MQTT-3.10.4-5]: an UNSUBSCRIBE with packet id 0x1234
/// of a filter never subscribed is still answered, by an UNSUBACK whose
/// variable header starts `12 34` and whose one reason code is 0x11 (no
/// subscription existed).
#[tokio::test]
async fn unsuback_for_an_unknown_filter_carries_the_unsubscribe_packet_id() {
    let broker = common::start_broker().await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("u")).await;
    client
        .send(&unsubscribe(0x02, 0x1234, &[prefix("never").as_bytes()]))
        .await;
    let unsuback = client.expect_kind(UNSUBACK).await;
    assert_eq!(unsuback.flags(), 0, "{unsuback:?}");
    assert_eq!(
        unsuback.body[..2],
        [0x12, 0x34],
        "[MQTT-2.2.1-6] the UNSUBACK must carry the UNSUBSCRIBE's id: {unsuback:?}"
    );
    assert_eq!(
        reasons(&unsuback),
        [NO_SUBSCRIPTION_EXISTED],
        "{unsuback:?}"
    );
    expect_nothing_queued(&mut client).await;
}

/// [MQTT-4.7.3-2], [MQTT-1.5.4-2]: a topic filter containing U+0000 makes
/// the SUBSCRIBE malformed: DISCONNECT 0x81, then close, and no SUBACK.
#[tokio::test]
async fn subscribe_with_nul_in_the_filter_gets_disconnect_0x81() {
    let broker = common::start_broker().await;
    let mut filter = prefix("nul").into_bytes();
    filter.extend(b"/a\0b");
    let (mut client, _) = connect_v5(broker.addr, &unique_id("n")).await;
    client.send(&subscribe(1, Some(&[]), &[(&filter, 0)])).await;
    client
        .expect_disconnect_then_close(&[MALFORMED_PACKET])
        .await;
}

/// [MQTT-3.10.4-3]: a QoS 2 delivery the broker started keeps going after
/// its subscription is deleted: PUBREC sent after the UNSUBACK is answered
/// by PUBREL.
#[tokio::test]
async fn qos2_delivery_started_before_unsubscribe_is_completed() {
    let broker = common::start_broker().await;
    let topic = prefix("unsubq2");
    let mut client = subscriber(broker.addr, &topic, 2).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher.send(&publish_v5(&topic, 2, 1, &[], b"q2")).await;
    assert_eq!(publisher.expect_kind(PUBREC).await.packet_id(), 1);
    publisher.send(&ack(0x62, 1)).await;

    let delivery = Publish::parse(&client.expect_kind(PUBLISH).await, true);
    assert_eq!(delivery.qos, 2);
    let id = delivery.packet_id.expect("QoS 2 has an id");
    client
        .send(&unsubscribe(0x02, 9, &[topic.as_bytes()]))
        .await;
    let unsuback = client.expect_kind(UNSUBACK).await;
    assert_eq!(reasons(&unsuback), [0x00], "{unsuback:?}");
    client.send(&ack(0x50, id)).await;
    let pubrel = client.expect_packet().await;
    assert!(
        [ack(0x62, id), bare_ack(0x62, id, 0x00)[1].clone()].contains(&pubrel.to_bytes()),
        "expected PUBREL for {id}, got {pubrel:?}"
    );
    client.send(&ack(0x70, id)).await;
    expect_nothing_queued(&mut client).await;
}

// ---------------------------------------------------------------------------
// 3.14 DISCONNECT

/// [MQTT-3.14.1-1]: a DISCONNECT whose reserved flags are not 0 (`E1 00`)
/// is malformed: the broker answers DISCONNECT 0x81 and closes, and as this
/// is no normal disconnection the will is published.
#[tokio::test]
async fn disconnect_with_reserved_flags_gets_0x81_and_will_is_published() {
    let broker = common::start_broker().await;
    let topic = prefix("will");
    let mut watcher = subscriber(broker.addr, &topic, 0).await;
    let (mut client, _) = connect_v5_with(
        broker.addr,
        &connect_with_will(&unique_id("w"), &topic, false, &[]),
    )
    .await;
    client.send(&[0xe1, 0x00]).await;
    client
        .expect_disconnect_then_close(&[MALFORMED_PACKET])
        .await;
    let will = watcher.expect_kind(PUBLISH).await;
    assert_eq!(will.to_bytes(), publish_v5(&topic, 0, 0, &[], b"gone"));
}

// ---------------------------------------------------------------------------
// 3.1.2 will delay, 3.3.2 topic aliases, 3.8.4 subscription replacement

/// [MQTT-3.1.2-8]: a will with a Will Delay Interval of 3600 s, on a
/// session that expires 1 s after the connection drops, is published when
/// the session ends, not an hour later, and not before the session ended.
#[tokio::test]
async fn will_is_published_when_the_session_ends_before_the_will_delay() {
    let broker = common::start_broker().await;
    let topic = prefix("will-session-end");
    let mut watcher = subscriber(broker.addr, &topic, 0).await;
    let connect = Connect {
        properties: prop_u32(SESSION_EXPIRY_INTERVAL, 1),
        ..connect_with_will(
            &unique_id("w"),
            &topic,
            false,
            &prop_u32(WILL_DELAY_INTERVAL, 3600),
        )
    };
    let (client, _) = connect_v5_with(broker.addr, &connect).await;
    drop(client);

    assert_eq!(
        watcher.next_event_within(Duration::from_millis(500)).await,
        None,
        "[MQTT-3.1.2-8] the will went out before the session ended"
    );
    let will = watcher.expect_kind(PUBLISH).await;
    assert_eq!(
        will.to_bytes(),
        publish_v5(&topic, 0, 0, &[], b"gone"),
        "[MQTT-3.1.2-8] expected the will once the session ended"
    );
}

/// [MQTT-3.3.2-12]: every Topic Alias from 1 to the Topic Alias Maximum
/// the broker announced in CONNACK is accepted: one PUBLISH per alias sets
/// it to its own topic, then one PUBLISH per alias with an empty topic uses
/// it, and the subscriber gets every message under its full topic.
#[tokio::test]
async fn every_topic_alias_up_to_the_announced_maximum_is_accepted() {
    let broker = common::start_broker().await;
    let base = prefix("alias-max");
    let mut watcher = subscriber(broker.addr, &format!("{base}/#"), 0).await;
    let (mut publisher, connack) = connect_v5(broker.addr, &unique_id("p")).await;
    let maximum = connack
        .property_u16(TOPIC_ALIAS_MAXIMUM)
        .expect("the broker announces a Topic Alias Maximum");
    assert!(maximum >= 1, "Topic Alias Maximum {maximum}");

    for alias in 1..=maximum {
        let topic = format!("{base}/{alias}");
        let set = publish_v5(&topic, 0, 0, &prop_u16(TOPIC_ALIAS, alias), b"set");
        publisher.send(&set).await;
    }
    for alias in 1..=maximum {
        let used = publish(
            0x30,
            b"",
            None,
            Some(&prop_u16(TOPIC_ALIAS, alias)),
            b"used",
        );
        publisher.send(&used).await;
    }
    // A refused alias ends the connection (DISCONNECT 0x94), so the
    // PINGRESP shows that every one was accepted.
    publisher.ping().await;

    for payload in [b"set".as_slice(), b"used"] {
        for alias in 1..=maximum {
            let delivery = watcher.expect_kind(PUBLISH).await;
            let topic = format!("{base}/{alias}");
            assert_eq!(
                delivery.to_bytes(),
                publish_v5(&topic, 0, 0, &[], payload),
                "[MQTT-3.3.2-12] alias {alias} of {maximum}"
            );
        }
    }
    expect_nothing_queued(&mut watcher).await;
}

/// QoS 1 PUBLISHes of `payloads` on `topic`, packet ids from `first_id`,
/// as one run of bytes.
fn qos1_publishes(topic: &str, first_id: u16, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (id, payload) in (first_id..).zip(payloads) {
        bytes.extend(publish_v5(topic, 1, id, &[], payload));
    }
    bytes
}

/// Checks a PUBACK 0x00 for each of `count` packet ids from `first_id`.
async fn expect_pubacks(client: &mut RawClient, first_id: u16, count: usize) {
    for id in (first_id..).take(count) {
        let puback = client.expect_kind(PUBACK).await;
        assert_eq!(
            (puback.packet_id(), puback.ack_reason()),
            (id, 0x00),
            "{puback:?}"
        );
    }
}

/// Sends QoS 1 PUBLISHes of `payloads` in one write, then checks their
/// PUBACKs.
async fn publish_burst(client: &mut RawClient, topic: &str, first_id: u16, payloads: &[Vec<u8>]) {
    client
        .send(&qos1_publishes(topic, first_id, payloads))
        .await;
    expect_pubacks(client, first_id, payloads.len()).await;
}

/// [MQTT-3.8.4-4]: replacing a QoS 1 subscription while messages flow
/// loses none: ten messages are sent, the subscriber subscribes again to
/// the same filter once the first arrives, ten more are sent, and every one
/// of the twenty reaches the subscriber before the final marker.
#[tokio::test]
async fn replacing_a_subscription_loses_no_message() {
    let broker = common::start_broker().await;
    let topic = prefix("replace-no-loss");
    let mut sub = subscriber(broker.addr, &topic, 1).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    let payloads: Vec<Vec<u8>> = (0..20).map(|n| format!("m{n:02}").into_bytes()).collect();

    publisher
        .send(&qos1_publishes(&topic, 1, &payloads[..10]))
        .await;
    let first = next_publish(&mut sub).await;
    sub.send(&ack(0x40, first.packet_id.expect("QoS 1 has an id")))
        .await;
    sub.send(&subscribe(2, Some(&[]), &[(topic.as_bytes(), 1)]))
        .await;
    expect_pubacks(&mut publisher, 1, 10).await;
    publish_burst(&mut publisher, &topic, 11, &payloads[10..]).await;
    publish_burst(&mut publisher, &topic, 21, &[b"marker".to_vec()]).await;

    let mut received = vec![first.payload];
    let mut subacks = Vec::new();
    loop {
        let packet = sub.expect_packet().await;
        if packet.kind() == SUBACK {
            subacks.push((packet.packet_id(), reasons(&packet)));
            continue;
        }
        let delivery = Publish::parse(&packet, true);
        sub.send(&ack(0x40, delivery.packet_id.expect("QoS 1 has an id")))
            .await;
        if delivery.payload == b"marker" {
            break;
        }
        received.push(delivery.payload);
    }
    assert_eq!(subacks, [(2, vec![0x01])], "one SUBACK granting QoS 1");
    received.sort();
    received.dedup();
    assert_eq!(
        received, payloads,
        "[MQTT-3.8.4-4] messages were lost when the subscription was replaced"
    );
    expect_nothing_queued(&mut sub).await;
}

// ---------------------------------------------------------------------------
// 4.3 QoS, 4.8 shared subscriptions, 4.12 enhanced authentication

/// [MQTT-4.3.2-5]: once the broker has sent PUBACK for packet id 5, a
/// PUBLISH with id 5 again (DUP 1) is a new message: the subscriber gets a
/// second copy.
#[tokio::test]
async fn qos1_publish_reusing_an_acknowledged_id_is_a_new_message() {
    let broker = common::start_broker().await;
    let topic = prefix("reuse");
    let mut watcher = subscriber(broker.addr, &topic, 1).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    for first in [0x32, 0x3a] {
        publisher
            .send(&publish(first, topic.as_bytes(), Some(5), Some(&[]), b"m"))
            .await;
        let puback = publisher.expect_kind(PUBACK).await;
        assert_eq!(puback.packet_id(), 5);
        assert_eq!(puback.ack_reason(), 0x00, "{puback:?}");
    }
    for _ in 0..2 {
        let copy = Publish::parse(&watcher.expect_kind(PUBLISH).await, true);
        assert_eq!((copy.qos, copy.dup), (1, false));
        assert_eq!(copy.payload, b"m");
        watcher
            .send(&ack(0x40, copy.packet_id.expect("QoS 1 has an id")))
            .await;
    }
    expect_nothing_queued(&mut watcher).await;
}

/// [MQTT-4.4.0-2]: a delivery the client answers with PUBACK 0x80
/// (`40 03 id 80`) is acknowledged: when the session resumes, the broker
/// re-sends the delivery left unanswered (DUP 1, same id) and not the one
/// answered with 0x80.
#[tokio::test]
async fn delivery_answered_with_puback_0x80_is_not_resent() {
    let broker = common::start_broker().await;
    let topic = prefix("puback-80");
    let id = unique_id("r");
    let (mut sub, _) = connect_v5_with(broker.addr, &persistent(&id, true, 60)).await;
    subscribe_all(&mut sub, 1, &[], &[(topic.as_bytes(), 1)]).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;

    publish_burst(&mut publisher, &topic, 1, &[b"refused".to_vec()]).await;
    let refused = next_publish(&mut sub).await;
    assert_eq!(refused.payload, b"refused");
    let mut refusal = refused
        .packet_id
        .expect("QoS 1 has an id")
        .to_be_bytes()
        .to_vec();
    refusal.push(0x80);
    sub.send(&packet(0x40, &refusal)).await;
    sub.ping().await;

    publish_burst(&mut publisher, &topic, 2, &[b"unanswered".to_vec()]).await;
    let unanswered = next_publish(&mut sub).await;
    assert_eq!(unanswered.payload, b"unanswered");
    drop(sub);

    let (mut back, connack) = connect_v5_with(broker.addr, &persistent(&id, false, 60)).await;
    assert!(connack.session_present, "the session was kept");
    let again = next_publish(&mut back).await;
    assert_eq!(
        (again.dup, again.packet_id, again.payload.as_slice()),
        (true, unanswered.packet_id, b"unanswered".as_slice()),
        "[MQTT-4.4.0-2] only the unanswered delivery is re-sent"
    );
    back.send(&ack(0x40, unanswered.packet_id.expect("QoS 1 has an id")))
        .await;
    expect_nothing_queued(&mut back).await;
    disconnect(back).await;
    end_session(broker.addr, &id).await;
}

/// [MQTT-4.8.2-3]: a shared-subscription member granted QoS 0 receives a
/// QoS 1 message at QoS 0.
#[tokio::test]
async fn shared_member_granted_qos0_receives_qos1_messages_at_qos0() {
    let broker = common::start_broker().await;
    let topic = prefix("sharedqos");
    let shared = format!("$share/{}/{topic}", unique_id("g").replace('-', ""));
    let mut member = subscriber(broker.addr, &shared, 0).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher.send(&publish_v5(&topic, 1, 1, &[], b"m")).await;
    let puback = publisher.expect_kind(PUBACK).await;
    assert_eq!(puback.packet_id(), 1);
    let copy = member.expect_kind(PUBLISH).await;
    assert_eq!(copy.to_bytes(), publish_v5(&topic, 0, 0, &[], b"m"));
}

/// [MQTT-4.12.0-1]: a CONNECT with an Authentication Method the broker does
/// not support gets CONNACK 0x8C and the connection is closed.
#[tokio::test]
async fn unsupported_authentication_method_gets_connack_0x8c_then_close() {
    let broker = common::start_broker().await;
    let mut client = RawClient::connect(broker.addr).await;
    client
        .send(&refused_connect(&unique_id("x"), true).encode())
        .await;
    let connack = client.expect_kind(CONNACK).await;
    assert_eq!(
        connack.body[..2],
        [0x00, BAD_AUTHENTICATION_METHOD],
        "{connack:?}"
    );
    client.expect_closed().await;
}

/// [MQTT-4.12.0-6]: without an Authentication Method in CONNECT the broker
/// puts none in CONNACK and sends no AUTH: the next packet after CONNACK
/// is the answer to a PINGREQ.
#[tokio::test]
async fn connect_without_authentication_method_gets_no_auth_exchange() {
    let broker = common::start_broker().await;
    let (mut client, connack) = connect_v5(broker.addr, &unique_id("n")).await;
    assert_eq!(connack.property(AUTHENTICATION_METHOD), None);
    assert_eq!(connack.property(0x16), None, "Authentication Data");
    client.ping().await;
    assert!(
        client
            .next_event_within(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing else arrives"
    );
}

// ---------------------------------------------------------------------------
// 4.1 sessions, 4.3.3 QoS 2 and expiry, 4.8.2 shared subscriptions

/// A persistent v5 session (expiry `expiry_secs`) with clean start `clean`.
fn persistent(client_id: &str, clean: bool, expiry_secs: u32) -> Connect {
    Connect {
        clean,
        properties: prop_u32(SESSION_EXPIRY_INTERVAL, expiry_secs),
        ..Connect::v5(client_id)
    }
}

/// The next PUBLISH `client` receives, parsed.
async fn next_publish(client: &mut RawClient) -> Publish {
    Publish::parse(&client.expect_kind(PUBLISH).await, true)
}

/// Every PUBLISH payload `client` receives before the answer to a PINGREQ.
async fn payloads_until_ping(client: &mut RawClient) -> Vec<Vec<u8>> {
    client.send(&[0xc0, 0x00]).await;
    let mut payloads = Vec::new();
    loop {
        let packet = client.expect_packet().await;
        match packet.kind() {
            PUBLISH => payloads.push(Publish::parse(&packet, true).payload),
            raw::PINGRESP => return payloads,
            _ => {}
        }
    }
}

/// [MQTT-4.1.0-1] A session with a 1 s expiry is not discarded while its
/// connection stays open longer than that.
#[tokio::test]
async fn session_state_is_kept_while_the_connection_is_open() {
    let broker = common::start_broker().await;
    let topic = prefix("open");
    let (mut client, _) = connect_v5_with(broker.addr, &persistent(&unique_id("o"), true, 1)).await;
    subscribe_all(&mut client, 1, &[], &[(topic.as_bytes(), 1)]).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        client.ping().await;
    }
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher
        .send(&publish_v5(&topic, 1, 1, &[], b"still subscribed"))
        .await;
    publisher.expect_kind(PUBACK).await;
    assert_eq!(next_publish(&mut client).await.payload, b"still subscribed");
}

/// [MQTT-4.3.3-7] A QoS 2 message already sent is re-sent after its expiry
/// has passed: expiry no longer applies once it is in flight.
#[tokio::test]
async fn qos2_message_in_flight_is_resent_after_its_expiry() {
    let broker = common::start_broker().await;
    let topic = prefix("inflight");
    let id = unique_id("r");
    let (mut receiver, _) = connect_v5_with(broker.addr, &persistent(&id, true, 60)).await;
    subscribe_all(&mut receiver, 1, &[], &[(topic.as_bytes(), 2)]).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    let expiry = prop_u32(raw::MESSAGE_EXPIRY_INTERVAL, 1);
    publisher
        .send(&publish_v5(&topic, 2, 1, &expiry, b"short-lived"))
        .await;
    publisher.expect_kind(PUBREC).await;
    let first = next_publish(&mut receiver).await;
    drop(receiver); // no PUBREC
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut receiver, connack) = connect_v5_with(broker.addr, &persistent(&id, false, 60)).await;
    assert!(connack.session_present);
    let again = next_publish(&mut receiver).await;
    assert!(again.dup, "re-sent with DUP");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload, b"short-lived");
}

/// [MQTT-4.3.3-13] A QoS 2 exchange is completed even when the message has
/// expired meanwhile: PUBREL after the expiry gets PUBCOMP 0x00.
#[tokio::test]
async fn qos2_exchange_completes_after_the_message_expired() {
    let broker = common::start_broker().await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    let expiry = prop_u32(raw::MESSAGE_EXPIRY_INTERVAL, 1);
    publisher
        .send(&publish_v5(&prefix("expired"), 2, 3, &expiry, b"x"))
        .await;
    assert_eq!(publisher.expect_kind(PUBREC).await.packet_id(), 3);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    publisher.send(&ack(0x62, 3)).await;
    let pubcomp = publisher.expect_kind(raw::PUBCOMP).await;
    assert_eq!(pubcomp.to_bytes()[..4], [0x70, 0x02, 0x00, 0x03][..]);
    assert_eq!(pubcomp.ack_reason(), 0x00);
}

/// Two persistent members of one shared group; returns them with their ids.
async fn shared_pair(addr: SocketAddr, filter: &str, expiry_secs: u32) -> [(String, RawClient); 2] {
    let mut members = Vec::new();
    for _ in 0..2 {
        let id = unique_id("m");
        let (mut client, _) = connect_v5_with(addr, &persistent(&id, true, expiry_secs)).await;
        subscribe_all(&mut client, 1, &[], &[(filter.as_bytes(), 2)]).await;
        members.push((id, client));
    }
    members.try_into().ok().unwrap()
}

/// Which member got the one message: (its index, the PUBLISH).
async fn receiving_member(members: &mut [(String, RawClient); 2]) -> (usize, Publish) {
    for _ in 0..50 {
        for (index, (_, client)) in members.iter_mut().enumerate() {
            if let Some(raw::Event::Packet(packet)) =
                client.next_event_within(Duration::from_millis(100)).await
            {
                assert_eq!(packet.kind(), PUBLISH, "{packet:?}");
                return (index, Publish::parse(&packet, true));
            }
        }
    }
    panic!("no member received the shared message");
}

/// [MQTT-4.8.2-4] A shared QoS 2 delivery cut off before PUBREC is completed
/// to the same member when it reconnects, never to the other one.
#[tokio::test]
async fn shared_qos2_delivery_cut_off_goes_back_to_the_same_member() {
    let broker = common::start_broker().await;
    let topic = prefix("share-resume");
    let filter = format!("$share/{}/{topic}", unique_id("g"));
    let mut members = shared_pair(broker.addr, &filter, 60).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher
        .send(&publish_v5(&topic, 2, 1, &[], b"once"))
        .await;
    publisher.expect_kind(PUBREC).await;
    let (got, first) = receiving_member(&mut members).await;
    let [(id_a, a), (id_b, b)] = members;
    let ((id, cut), (_, mut other)) = if got == 0 {
        ((id_a, a), (id_b, b))
    } else {
        ((id_b, b), (id_a, a))
    };
    drop(cut);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !payloads_until_ping(&mut other)
            .await
            .contains(&b"once".to_vec()),
        "the other member must not get it"
    );
    let (mut back, _) = connect_v5_with(broker.addr, &persistent(&id, false, 60)).await;
    let again = next_publish(&mut back).await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, again.payload),
        (first.packet_id, b"once".to_vec())
    );
}

/// [MQTT-4.8.2-5] When that member's session ends before it reconnects, the
/// message is not offered to another member.
#[tokio::test]
async fn shared_delivery_of_an_ended_session_is_not_given_to_another_member() {
    let broker = common::start_broker().await;
    let topic = prefix("share-ended");
    let filter = format!("$share/{}/{topic}", unique_id("g"));
    let mut members = shared_pair(broker.addr, &filter, 1).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher
        .send(&publish_v5(&topic, 2, 1, &[], b"orphan"))
        .await;
    publisher.expect_kind(PUBREC).await;
    let (got, _) = receiving_member(&mut members).await;
    let [(_, a), (_, b)] = members;
    let (cut, mut other) = if got == 0 { (a, b) } else { (b, a) };
    drop(cut);
    // The cut member's 1 s session expires.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        !payloads_until_ping(&mut other)
            .await
            .contains(&b"orphan".to_vec()),
        "the message must not move to the other member"
    );
}

/// [MQTT-4.8.2-6] A shared delivery refused with PUBACK 0x80 is discarded,
/// not offered to the other member.
#[tokio::test]
async fn shared_delivery_refused_by_a_member_is_discarded() {
    let broker = common::start_broker().await;
    let topic = prefix("share-refused");
    let filter = format!("$share/{}/{topic}", unique_id("g"));
    let mut members = shared_pair(broker.addr, &filter, 60).await;
    let (mut publisher, _) = connect_v5(broker.addr, &unique_id("p")).await;
    publisher
        .send(&publish_v5(&topic, 1, 1, &[], b"refused"))
        .await;
    publisher.expect_kind(PUBACK).await;
    let (got, delivered) = receiving_member(&mut members).await;
    let [(_, a), (_, b)] = members;
    let (mut refuser, mut other) = if got == 0 { (a, b) } else { (b, a) };
    let mut refusal = packet(0x40, &delivered.packet_id.unwrap().to_be_bytes());
    refusal.extend([0x80]);
    refusal[1] = 3;
    refuser.send(&refusal).await;
    refuser.ping().await;
    for id in 2..=3u16 {
        publisher
            .send(&publish_v5(&topic, 1, id, &[], b"marker"))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = payloads_until_ping(&mut other).await;
    assert!(
        !seen.contains(&b"refused".to_vec()),
        "the refused message went to the other member: {seen:?}"
    );
}

/// [MQTT-3.1.2-24] A client announcing a Maximum Packet Size of 16 bytes
/// still gets its CONNACK within that size.
#[tokio::test]
async fn connack_fits_a_small_client_maximum_packet_size() {
    let broker = common::start_broker().await;
    let connect = Connect {
        properties: prop_u32(MAXIMUM_PACKET_SIZE, 16),
        ..Connect::v5(&unique_id("tiny"))
    };
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_kind(CONNACK).await;
    assert!(
        connack.to_bytes().len() <= 16,
        "CONNACK of {} bytes exceeds the client's 16: {connack:?}",
        connack.to_bytes().len()
    );
    assert_eq!(Connack::parse_v5(&connack).reason, 0);
}

/// The Topic Alias of a received PUBLISH, if it carries one.
fn topic_alias_of(publish: &Publish) -> Option<u16> {
    publish
        .properties
        .iter()
        .find(|(id, _)| *id == TOPIC_ALIAS)
        .map(|(_, value)| u16::from_be_bytes([value[0], value[1]]))
}

/// Subscribes `client` to `filter` and returns the next `count` PUBLISHes a
/// second client sends to `topics` (one each, in turn, `rounds` times).
async fn receive_on(
    broker: SocketAddr,
    client: &mut RawClient,
    filter: &str,
    topics: &[String],
    rounds: usize,
) -> Vec<Publish> {
    client
        .send(&subscribe(1, Some(&[]), &[(filter.as_bytes(), 0)]))
        .await;
    client.expect_kind(SUBACK).await;
    let (mut publisher, _) = connect_v5(broker, &unique_id("p")).await;
    let mut received = Vec::new();
    for _ in 0..rounds {
        for topic in topics {
            publisher.send(&publish_v5(topic, 0, 0, &[], b"x")).await;
            received.push(Publish::parse(&client.expect_kind(PUBLISH).await, true));
        }
    }
    received
}

/// [MQTT-3.1.2-26], [MQTT-3.3.2-11], [MQTT-3.3.2-8]: a client that allows
/// two Topic Aliases gets aliases 1 and 2 for its first two topics (the
/// topic named once, then only the alias) and never a third alias nor 0:
/// a third topic keeps its name.
#[tokio::test]
async fn the_broker_sends_topic_aliases_only_within_the_client_maximum() {
    let broker = common::start_broker().await;
    let base = prefix("out-alias");
    let connect = Connect {
        properties: prop_u16(TOPIC_ALIAS_MAXIMUM, 2),
        ..Connect::v5(&unique_id("a"))
    };
    let (mut client, _) = connect_v5_with(broker.addr, &connect).await;
    let topics: Vec<String> = (0..3).map(|i| format!("{base}/{i}")).collect();
    let received = receive_on(broker.addr, &mut client, &format!("{base}/+"), &topics, 2).await;
    for (at, publish) in received.iter().enumerate() {
        let (round, which) = (at / 3, at % 3);
        let alias = topic_alias_of(publish);
        match which {
            2 => {
                assert_eq!(alias, None, "no third alias");
                assert_eq!(publish.topic, topics[2].as_bytes());
            }
            _ => {
                assert_eq!(alias, Some(which as u16 + 1), "aliases 1 and 2, never 0");
                let named: &[u8] = if round == 0 {
                    topics[which].as_bytes()
                } else {
                    b""
                };
                assert_eq!(publish.topic, named, "named once, then the alias alone");
            }
        }
    }
}

/// [MQTT-3.1.2-27]: a client that allows no Topic Alias never gets one,
/// however often a topic repeats.
#[tokio::test]
async fn a_client_that_allows_no_topic_alias_gets_none() {
    let broker = common::start_broker().await;
    let topic = prefix("no-alias");
    let (mut client, _) = connect_v5(broker.addr, &unique_id("n")).await;
    let received = receive_on(
        broker.addr,
        &mut client,
        &topic,
        std::slice::from_ref(&topic),
        5,
    )
    .await;
    assert!(
        received
            .iter()
            .all(|p| topic_alias_of(p).is_none() && p.topic == topic.as_bytes())
    );
}

/// [MQTT-3.3.2-7], the broker's side: aliases it set up on one connection
/// are set up again, with the topic named, on the next.
#[tokio::test]
async fn broker_topic_aliases_start_over_on_a_new_connection() {
    let broker = common::start_broker().await;
    let topic = prefix("alias-again");
    let connect = Connect {
        properties: prop_u16(TOPIC_ALIAS_MAXIMUM, 4),
        ..Connect::v5(&unique_id("r"))
    };
    for _ in 0..2 {
        let (mut client, _) = connect_v5_with(broker.addr, &connect).await;
        let received = receive_on(
            broker.addr,
            &mut client,
            &topic,
            std::slice::from_ref(&topic),
            2,
        )
        .await;
        assert_eq!(
            received[0].topic,
            topic.as_bytes(),
            "named on each new connection"
        );
        assert_eq!(topic_alias_of(&received[0]), Some(1));
        assert_eq!(received[1].topic, b"");
        assert_eq!(topic_alias_of(&received[1]), Some(1));
        disconnect(client).await;
    }
}
