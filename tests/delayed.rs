//! Delayed publish over real sockets: `$delayed/{seconds}/{topic}` goes out
//! to `{topic}` when due with its QoS, properties and retain flag; bad
//! topics and limits are refused with reason codes; pending delays survive
//! SIGKILL, and what fell due while the broker was down goes out at start
//! in due order.

#[path = "crash/broker.rs"]
mod broker;
mod common;
mod raw;
#[path = "crash/rng.rs"]
mod rng;

use std::time::Duration;

use tokio::time::Instant;

use broker::BrokerProcess;

use petrel::config::Lifetime;
use raw::{
    MESSAGE_EXPIRY_INTERVAL, PUBACK, PUBLISH, Publish, SUBACK, connect_accepted, persistent_v311,
    prop_pair, prop_u32, publish_v5, publish_v311, subscribe,
};

/// The reason code of a v5 PUBACK (absent means success).
fn reason(puback: &raw::Packet) -> u8 {
    puback.body.get(2).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_delayed_publish_goes_out_when_due_with_its_qos_properties_and_retain_flag() {
    let broker = common::start_broker_with(|_| {}).await;
    let addr = broker.addr;
    let (mut subscriber, _) = raw::connect_v5(addr, &raw::unique_id("sub")).await;
    subscriber
        .send(&subscribe(1, Some(&[]), &[(b"delay/t", 1)]))
        .await;
    subscriber.expect_kind(SUBACK).await;

    let (mut publisher, _) = raw::connect_v5(addr, &raw::unique_id("pub")).await;
    let mut props = prop_pair(b"origin", b"test");
    props.extend(prop_u32(MESSAGE_EXPIRY_INTERVAL, 60));
    let mut retained = publish_v5("$delayed/1/delay/t", 1, 7, &props, b"later");
    retained[0] |= 0x01;
    publisher.send(&retained).await;
    let sent = Instant::now();
    let ack = publisher.expect_kind(PUBACK).await;
    assert_eq!(reason(&ack), 0, "stored: success, not 0x10");

    let delivered = subscriber.expect_kind(PUBLISH).await;
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "arrived after {waited:?}, before its second"
    );
    let publish = Publish::parse(&delivered, true);
    assert_eq!(publish.topic, b"delay/t");
    assert_eq!(publish.payload, b"later");
    assert_eq!(publish.qos, 1);
    assert!(
        publish
            .user_properties()
            .contains(&("origin".into(), "test".into())),
        "the user property kept"
    );
    let expiry = publish
        .properties
        .iter()
        .find(|(id, _)| *id == MESSAGE_EXPIRY_INTERVAL)
        .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        .expect("expiry kept");
    assert!(expiry <= 60, "the expiry counted while it waited: {expiry}");

    // A later subscriber gets it as the topic's retained message.
    let (mut later, _) = raw::connect_v5(addr, &raw::unique_id("later")).await;
    later
        .send(&subscribe(1, Some(&[]), &[(b"delay/t", 1)]))
        .await;
    later.expect_kind(SUBACK).await;
    let retained = Publish::parse(&later.expect_kind(PUBLISH).await, true);
    assert!(retained.retain && retained.payload == b"later");
    assert_eq!(broker.petrel().state().delays_pending(), 0);
}

#[tokio::test]
async fn a_v311_delayed_publish_at_qos_0_goes_out_when_due() {
    let broker = common::start_broker_with(|_| {}).await;
    let mut subscriber = raw::connect_v311(broker.addr, &raw::unique_id("sub")).await;
    subscriber
        .send(&subscribe(1, None, &[(b"d311/t", 0)]))
        .await;
    subscriber.expect_kind(SUBACK).await;
    let mut publisher = raw::connect_v311(broker.addr, &raw::unique_id("pub")).await;
    publisher
        .send(&publish_v311("$delayed/0/d311/t", 0, 0, b"now"))
        .await;
    let publish = Publish::parse(&subscriber.expect_kind(PUBLISH).await, false);
    assert_eq!(
        (publish.topic.as_slice(), publish.payload.as_slice()),
        (&b"d311/t"[..], &b"now"[..])
    );
}

#[tokio::test]
async fn a_bad_delayed_topic_is_refused_and_not_published_as_it_is() {
    let broker = common::start_broker_with(|_| {}).await;
    let (mut watcher, _) = raw::connect_v5(broker.addr, &raw::unique_id("watch")).await;
    watcher
        .send(&subscribe(
            1,
            Some(&[]),
            &[(b"$delayed/#", 1), (b"marker", 1)],
        ))
        .await;
    watcher.expect_kind(SUBACK).await;
    let (mut publisher, _) = raw::connect_v5(broker.addr, &raw::unique_id("pub")).await;
    for (packet_id, topic) in [
        (1, "$delayed/soon/t"),
        (2, "$delayed/5/"),
        (3, "$delayed/-1/t"),
        (5, "$delayed/1/$delayed/1/t"),
    ] {
        publisher
            .send(&publish_v5(topic, 1, packet_id, &[], b"x"))
            .await;
        let ack = publisher.expect_kind(PUBACK).await;
        assert_eq!(reason(&ack), 0x90, "{topic}: topic name invalid");
    }
    publisher
        .send(&publish_v5("$delayed/0/$dlq/g/s", 1, 6, &[], b"x"))
        .await;
    let ack = publisher.expect_kind(PUBACK).await;
    assert_eq!(reason(&ack), 0x87, "no forged dead letters");
    publisher.send(&publish_v5("marker", 1, 4, &[], b"m")).await;
    publisher.expect_kind(PUBACK).await;
    let first = Publish::parse(&watcher.expect_kind(PUBLISH).await, true);
    assert_eq!(first.topic, b"marker", "nothing was published literally");
}

#[tokio::test]
async fn delays_past_max_delay_or_the_pending_limit_are_refused_and_counted() {
    let broker = common::start_broker_with(|settings| {
        settings.limits.max_delay = Lifetime::Seconds(10);
        settings.limits.max_pending_delays = 1;
    })
    .await;
    let (mut publisher, _) = raw::connect_v5(broker.addr, &raw::unique_id("pub")).await;
    let publish = |packet_id: u16, topic: &'static str| publish_v5(topic, 1, packet_id, &[], b"x");
    publisher.send(&publish(1, "$delayed/11/t")).await;
    assert_eq!(
        reason(&publisher.expect_kind(PUBACK).await),
        0x83,
        "over max_delay"
    );
    publisher.send(&publish(2, "$delayed/10/t")).await;
    assert_eq!(reason(&publisher.expect_kind(PUBACK).await), 0, "within it");
    publisher.send(&publish(3, "$delayed/1/t")).await;
    assert_eq!(
        reason(&publisher.expect_kind(PUBACK).await),
        0x97,
        "one waits already"
    );
    let petrel = broker.petrel().state();
    assert_eq!(petrel.delays_pending(), 1);
    assert_eq!(petrel.metrics().delays_refused(), 2);
}

#[tokio::test]
async fn pending_delays_survive_kill_9_and_those_due_meanwhile_go_out_at_start_in_due_order() {
    let mut broker = BrokerProcess::start("delayed-kill").await;
    let addr = broker.addr();
    // A persistent subscriber, away while the broker is down.
    let (mut subscriber, _) = connect_accepted(addr, &persistent_v311("delay-sub")).await;
    subscriber
        .send(&subscribe(1, None, &[(b"later/#", 1)]))
        .await;
    subscriber.expect_kind(SUBACK).await;
    subscriber.send(&[0xe0, 0x00]).await;
    subscriber.expect_closed().await;

    let mut publisher = raw::connect_v311(addr, &raw::unique_id("pub")).await;
    for (packet_id, topic, payload) in [
        (1, "$delayed/2/later/c", "c"),
        (2, "$delayed/1/later/a", "a"),
        (3, "$delayed/1/later/b", "b"),
        (4, "$delayed/3600/later/z", "z"),
    ] {
        publisher
            .send(&publish_v311(topic, 1, packet_id, payload.as_bytes()))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
    let acknowledged = Instant::now();
    broker.kill();
    // Down for longer than the short delays: they fall due meanwhile.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(acknowledged.elapsed())).await;
    broker.restart().await;

    let (mut subscriber, present) = connect_accepted(addr, &persistent_v311("delay-sub")).await;
    assert!(present);
    let mut got = Vec::new();
    while got.len() < 3 {
        let publish = Publish::parse(&subscriber.expect_kind(PUBLISH).await, false);
        subscriber
            .send(&raw::ack(0x40, publish.packet_id.expect("QoS 1")))
            .await;
        got.push(String::from_utf8(publish.payload).unwrap());
    }
    assert_eq!(got, ["a", "b", "c"], "in due order, ties in arrival order");
    assert_eq!(broker.log(), "", "no warning or error");
}
