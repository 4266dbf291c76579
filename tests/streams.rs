//! Streams over real sockets with rumqttc as the consumer: what the broker
//! appends to partitions, how consumer groups split and read them, replay,
//! retention, and what a restart keeps.

#[path = "crash/broker.rs"]
mod broker;
mod common;
mod raw;
#[path = "crash/rng.rs"]
mod rng;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use broker::BrokerProcess;
use common::WAIT;
use common::scratch::TempDir;
use petrel::config::Durability;
use petrel::store::{DiskOptions, DiskStore, Store};
use petrel::stream::{StreamConfig, partition_of};
use petrel::{Broker, Settings};
use raw::{PUBACK, publish_v311};

fn orders(partitions: u32) -> StreamConfig {
    StreamConfig {
        partitions,
        key: "topic:1".into(),
        start: "earliest".into(),
        ..StreamConfig::new("orders", &["orders/#"])
    }
}

/// A `sync` broker with one stream, on `store`.
async fn start_with(stream: StreamConfig, store: &Arc<dyn Store>) -> Broker {
    let settings = Settings {
        durability: Durability::Sync,
        streams: vec![stream],
        ..Settings::ephemeral()
    };
    Broker::start_with_store(settings, store.clone())
        .await
        .expect("broker starts")
}

/// A commit log and state database in a scratch directory.
fn disk_store(name: &str) -> (TempDir, Arc<dyn Store>) {
    let dir = TempDir::new(name);
    let options = DiskOptions {
        segment_bytes: 1 << 20,
        max_disk_bytes: u64::MAX,
    };
    let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path(), options).unwrap());
    (dir, store)
}

/// Publishes `orders/{key}/x` with payload `{key}:{seq}` for each pair, at
/// QoS 1, each acknowledged before the next goes.
async fn publish_orders(addr: SocketAddr, messages: &[(String, u32)]) {
    let mut publisher = raw::connect_v311(addr, &raw::unique_id("pub")).await;
    for (index, (key, seq)) in messages.iter().enumerate() {
        let packet_id = (index % 60_000 + 1) as u16;
        let payload = format!("{key}:{seq}");
        publisher
            .send(&publish_v311(
                &format!("orders/{key}/x"),
                1,
                packet_id,
                payload.as_bytes(),
            ))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
}

/// `count` messages for each of `keys` keys, interleaved by key.
fn keyed(keys: u32, count: u32) -> Vec<(String, u32)> {
    (0..count)
        .flat_map(|seq| (0..keys).map(move |key| (format!("k{key:03}"), seq)))
        .collect()
}

/// One message as a group member received it.
#[derive(Debug, Clone)]
struct Got {
    member: String,
    key: String,
    seq: u32,
    properties: HashMap<String, String>,
    publish: rumqttc::v5::mqttbytes::v5::Publish,
}

impl Got {
    fn offset(&self) -> u64 {
        self.properties["offset"].parse().unwrap()
    }
    fn partition(&self) -> u32 {
        self.properties["partition"].parse().unwrap()
    }
}

/// A v5 rumqttc client subscribed to a stream; everything it receives goes
/// to one channel shared by the group's members.
struct Member {
    client: AsyncClient,
    task: JoinHandle<()>,
}

struct Join<'a> {
    filter: &'a str,
    qos: QoS,
    manual_acks: bool,
    stream_offset: Option<String>,
}

impl<'a> Join<'a> {
    fn group(filter: &'a str) -> Join<'a> {
        Join {
            filter,
            qos: QoS::AtLeastOnce,
            manual_acks: false,
            stream_offset: None,
        }
    }
}

impl Member {
    /// Connects `id`, subscribes as `join` says and returns once the SUBACK
    /// is in.
    async fn join(
        addr: SocketAddr,
        id: &str,
        join: Join<'_>,
        got: mpsc::UnboundedSender<Got>,
    ) -> Member {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_manual_acks(join.manual_acks);
        options.set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let properties = SubscribeProperties {
            id: None,
            user_properties: join
                .stream_offset
                .map(|offset| vec![("stream-offset".to_string(), offset)])
                .unwrap_or_default(),
        };
        client
            .subscribe_with_properties(join.filter, join.qos, properties)
            .await
            .unwrap();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let member = id.to_string();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(suback)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(suback.return_codes);
                        }
                    }
                    Event::Incoming(Packet::Publish(publish)) => {
                        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                        // `key:seq`, perhaps with padding after another ':'.
                        let mut parts = payload.splitn(3, ':');
                        let key = parts.next().unwrap_or_default();
                        let seq = parts.next().expect("key:seq");
                        let properties = publish
                            .properties
                            .as_ref()
                            .map(|p| p.user_properties.iter().cloned().collect())
                            .unwrap_or_default();
                        let _ = got.send(Got {
                            member: member.clone(),
                            key: key.to_string(),
                            seq: seq.parse().unwrap(),
                            properties,
                            publish,
                        });
                    }
                    _ => {}
                }
            }
        });
        let codes = timeout(WAIT, subscribed).await.expect("SUBACK").unwrap();
        assert_eq!(codes.len(), 1);
        Member { client, task }
    }

    /// DISCONNECT, and the connection closed.
    async fn leave(self) {
        self.client.disconnect().await.unwrap();
        let _ = timeout(WAIT, self.task).await;
    }

    /// Drops the connection without DISCONNECT.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A raw v5 client in group `g` of stream `orders`, once its SUBACK is in.
async fn raw_member(addr: SocketAddr) -> raw::RawClient {
    raw::stream_member_v5(addr, "$share/g/$stream/orders").await
}

/// Waits for the next `n` messages.
async fn take(got: &mut mpsc::UnboundedReceiver<Got>, n: usize) -> Vec<Got> {
    let mut taken = Vec::with_capacity(n);
    let deadline = Instant::now() + WAIT;
    while taken.len() < n {
        match timeout(deadline - Instant::now(), got.recv()).await {
            Ok(Some(one)) => taken.push(one),
            _ => panic!("{} of {n} messages arrived", taken.len()),
        }
    }
    taken
}

/// Receives until every `(key, seq)` of `expected` has been seen at least
/// once; returns everything received.
async fn until_all(got: &mut mpsc::UnboundedReceiver<Got>, expected: &[(String, u32)]) -> Vec<Got> {
    let mut missing: HashSet<(String, u32)> = expected.iter().cloned().collect();
    let mut all = Vec::new();
    let deadline = Instant::now() + WAIT * 3;
    while !missing.is_empty() {
        match timeout(deadline - Instant::now(), got.recv()).await {
            Ok(Some(one)) => {
                missing.remove(&(one.key.clone(), one.seq));
                all.push(one);
            }
            _ => panic!(
                "{} messages never arrived, e.g. {:?}",
                missing.len(),
                missing.iter().next()
            ),
        }
    }
    all
}

/// Per key, the sequence numbers in the order they were first received:
/// a redelivery repeats, but never reorders, what came first.
fn first_seen_by_key(all: &[Got]) -> BTreeMap<String, Vec<u32>> {
    let mut seen = HashSet::new();
    let mut by_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for one in all {
        if seen.insert((one.key.clone(), one.seq)) {
            by_key.entry(one.key.clone()).or_default().push(one.seq);
        }
    }
    by_key
}

fn assert_key_order(by_key: &BTreeMap<String, Vec<u32>>) {
    for (key, seqs) in by_key {
        assert!(seqs.is_sorted(), "key {key} arrived out of order: {seqs:?}");
    }
}

#[tokio::test]
async fn a_group_splits_the_partitions_and_reads_every_message_once_in_key_order() {
    let (_dir, store) = disk_store("a_group_splits_the_partitions_and_reads_");
    let broker = start_with(orders(8), &store).await;
    let addr = broker.local_addrs()[0];
    let (tx, mut got) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for id in ["m1", "m2", "m3"] {
        members.push(
            Member::join(
                addr,
                id,
                Join::group("$share/billing/$stream/orders"),
                tx.clone(),
            )
            .await,
        );
    }
    let messages = keyed(100, 3);
    publish_orders(addr, &messages).await;
    let all = take(&mut got, messages.len()).await;

    let distinct: HashSet<(String, u32)> = all.iter().map(|g| (g.key.clone(), g.seq)).collect();
    assert_eq!(distinct.len(), messages.len(), "each message once");
    assert_key_order(&first_seen_by_key(&all));
    let readers: HashSet<&str> = all.iter().map(|g| g.member.as_str()).collect();
    assert_eq!(readers.len(), 3, "every member reads some partitions");
    let mut partition_readers: HashMap<u32, HashSet<&str>> = HashMap::new();
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    for one in &all {
        assert_eq!(one.properties["stream"], "orders");
        assert_eq!(one.properties["key"], one.key);
        assert_eq!(
            one.partition(),
            partition_of(&one.key, 8),
            "hash(key) % partitions"
        );
        assert_eq!(
            String::from_utf8_lossy(&one.publish.topic),
            format!("orders/{}/x", one.key)
        );
        partition_readers
            .entry(one.partition())
            .or_default()
            .insert(one.member.as_str());
        let previous = last_offset.insert(one.partition(), one.offset());
        assert_eq!(
            previous.map_or(0, |p| p + 1),
            one.offset(),
            "dense offsets in order within partition {}",
            one.partition()
        );
    }
    assert!(
        partition_readers.values().all(|readers| readers.len() == 1),
        "one reader per partition: {partition_readers:?}"
    );

    let report = &broker.state().stream_reports()[0];
    let billing = &report.groups[0];
    assert_eq!(billing.name, "billing");
    assert_eq!(billing.members.len(), 3);
    let acknowledged = |p: &petrel::broker::GroupPartitionReport| p.lag == 0;
    let deadline = Instant::now() + WAIT;
    while !broker.state().stream_reports()[0].groups[0]
        .partitions
        .iter()
        .all(acknowledged)
    {
        assert!(
            Instant::now() < deadline,
            "offsets committed as acknowledged"
        );
        tokio::task::yield_now().await;
    }
    for member in members {
        member.leave().await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn members_joining_and_leaving_lose_nothing_and_keep_key_order() {
    let (_dir, store) = disk_store("members_joining_and_leaving_lose_nothing");
    let broker = start_with(orders(8), &store).await;
    let addr = broker.local_addrs()[0];
    let (tx, mut got) = mpsc::unbounded_channel();
    let filter = "$share/rebalance/$stream/orders";
    let first = Member::join(addr, "a", Join::group(filter), tx.clone()).await;
    let second = Member::join(addr, "b", Join::group(filter), tx.clone()).await;
    let messages = keyed(100, 4);
    let (early, late) = messages.split_at(messages.len() / 2);
    publish_orders(addr, early).await;
    let mut all = take(&mut got, 20).await;
    // A third member joins while the first half is being read, then one
    // leaves cleanly and one vanishes without a word.
    let third = Member::join(addr, "c", Join::group(filter), tx.clone()).await;
    publish_orders(addr, late).await;
    second.leave().await;
    first.kill().await;
    let seen: HashSet<(String, u32)> = all.iter().map(|g| (g.key.clone(), g.seq)).collect();
    let rest: Vec<(String, u32)> = messages
        .iter()
        .filter(|m| !seen.contains(*m))
        .cloned()
        .collect();
    all.extend(until_all(&mut got, &rest).await);
    assert_key_order(&first_seen_by_key(&all));
    third.leave().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn two_groups_each_read_everything() {
    let (_dir, store) = disk_store("two_groups_each_read_everything");
    let broker = start_with(orders(4), &store).await;
    let addr = broker.local_addrs()[0];
    let (billing_tx, mut billing) = mpsc::unbounded_channel();
    let (audit_tx, mut audit) = mpsc::unbounded_channel();
    let b = Member::join(
        addr,
        "b1",
        Join::group("$share/billing/$stream/orders"),
        billing_tx,
    )
    .await;
    let a = Member::join(
        addr,
        "a1",
        Join::group("$share/audit/$stream/orders"),
        audit_tx,
    )
    .await;
    let messages = keyed(20, 2);
    publish_orders(addr, &messages).await;
    for got in [&mut billing, &mut audit] {
        let all = take(got, messages.len()).await;
        let distinct: HashSet<(String, u32)> = all.iter().map(|g| (g.key.clone(), g.seq)).collect();
        assert_eq!(distinct.len(), messages.len());
    }
    b.leave().await;
    a.leave().await;
    broker.shutdown().await;
}

/// Unix time in microseconds, as `stream-offset` takes it.
fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::test]
async fn a_group_replays_from_earliest_or_from_a_point_in_time() {
    let (_dir, store) = disk_store("a_group_replays_from_earliest_or_from_a_");
    let mut config = orders(2);
    config.start = "latest".into();
    let broker = start_with(config, &store).await;
    let addr = broker.local_addrs()[0];
    let before = keyed(5, 2);
    publish_orders(addr, &before).await;
    // The clock moves past the last append before the point is taken, so
    // that millisecond belongs to the earlier messages alone.
    let last_before = micros_now() / 1000;
    while micros_now() / 1000 <= last_before {
        tokio::task::yield_now().await;
    }
    let point = micros_now();
    let after: Vec<(String, u32)> = keyed(5, 2).into_iter().map(|(k, s)| (k, s + 10)).collect();
    publish_orders(addr, &after).await;

    let (tx, mut latest) = mpsc::unbounded_channel();
    let fresh = Member::join(
        addr,
        "fresh",
        Join::group("$share/fresh/$stream/orders"),
        tx,
    )
    .await;
    publish_orders(addr, &[("k900".into(), 0)]).await;
    let first = take(&mut latest, 1).await;
    assert_eq!(
        (first[0].key.as_str(), first[0].seq),
        ("k900", 0),
        "a new group starts at latest"
    );
    fresh.leave().await;

    let mut from_earliest = Join::group("$share/replay/$stream/orders");
    from_earliest.stream_offset = Some("earliest".into());
    let (tx, mut earliest) = mpsc::unbounded_channel();
    let replay = Member::join(addr, "replay", from_earliest, tx).await;
    let all = take(&mut earliest, before.len() + after.len() + 1).await;
    assert_key_order(&first_seen_by_key(&all));
    replay.leave().await;

    let mut from_point = Join::group("$share/since/$stream/orders");
    from_point.stream_offset = Some(point.to_string());
    let (tx, mut since) = mpsc::unbounded_channel();
    let reader = Member::join(addr, "since", from_point, tx).await;
    let all = take(&mut since, after.len() + 1).await;
    let seqs: HashSet<u32> = all.iter().map(|g| g.seq).collect();
    assert!(
        seqs.iter().all(|&s| s >= 10 || s == 0),
        "only what came after the point: {seqs:?}"
    );
    assert!(all.iter().all(|g| g.key != "k900" || g.seq == 0));
    reader.leave().await;

    // A reader of its own, `$stream/orders`, is a group named by its id.
    let mut own = Join::group("$stream/orders");
    own.stream_offset = Some("earliest".into());
    let (tx, mut mine) = mpsc::unbounded_channel();
    let alone = Member::join(addr, "alone", own, tx).await;
    take(&mut mine, before.len() + after.len() + 1).await;
    let groups: Vec<String> = broker.state().stream_reports()[0]
        .groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    assert!(groups.contains(&"alone".to_string()), "{groups:?}");
    alone.leave().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_group_resumes_after_a_restart_from_its_committed_offsets() {
    let (_dir, store) = disk_store("streams-resume");
    let first = start_with(orders(1), &store).await;
    let messages = keyed(1, 10);
    publish_orders(first.local_addrs()[0], &messages).await;
    let (tx, mut got) = mpsc::unbounded_channel();
    let mut manual = Join::group("$share/g/$stream/orders");
    manual.manual_acks = true;
    let member = Member::join(first.local_addrs()[0], "reader", manual, tx).await;
    // Acknowledge four; the fifth arrives (so the fourth is committed) and
    // is left unacknowledged.
    for expected in 0..5 {
        let one = take(&mut got, 1).await.remove(0);
        assert_eq!(one.seq, expected);
        if expected < 4 {
            member.client.ack(&one.publish).await.unwrap();
        }
    }
    member.kill().await;
    first.shutdown().await;

    let second = start_with(orders(1), &store).await;
    let (tx, mut got) = mpsc::unbounded_channel();
    let member = Member::join(
        second.local_addrs()[0],
        "reader",
        Join::group("$share/g/$stream/orders"),
        tx,
    )
    .await;
    let rest = take(&mut got, 6).await;
    let seqs: Vec<u32> = rest.iter().map(|g| g.seq).collect();
    assert_eq!(
        seqs,
        [4, 5, 6, 7, 8, 9],
        "from the first unacknowledged one on"
    );
    member.leave().await;
    second.shutdown().await;
}

#[tokio::test]
async fn fewer_partitions_than_stored_stop_the_start_and_more_are_taken() {
    let (_dir, store) = disk_store("streams-grow");
    let broker = start_with(orders(4), &store).await;
    publish_orders(broker.local_addrs()[0], &keyed(10, 1)).await;
    broker.shutdown().await;

    let settings = Settings {
        durability: Durability::Sync,
        streams: vec![orders(2)],
        ..Settings::ephemeral()
    };
    let refused = Broker::start_with_store(settings, store.clone())
        .await
        .err()
        .expect("refused");
    let message = refused.to_string();
    assert!(
        message.contains("`orders`") && message.contains("never shrink"),
        "{message}"
    );

    let grown = start_with(orders(8), &store).await;
    let ends: u64 = grown
        .state()
        .streams()
        .iter()
        .next()
        .unwrap()
        .ends()
        .iter()
        .sum();
    assert_eq!(ends, 10, "what the four partitions hold is kept");
    grown.shutdown().await;
}

#[tokio::test]
async fn retention_trims_whole_blocks_and_a_group_behind_continues_from_the_log_start() {
    let (_dir, store) = disk_store("retention_trims_whole_blocks_and_a_group");
    let mut config = orders(1);
    // Each message is about 20 bytes: 1024 of them are one block.
    config.max_bytes = Some(petrel::stream::spec::ByteCount::Text("30KiB".into()));
    let broker = start_with(config, &store).await;
    let addr = broker.local_addrs()[0];
    // A group that read nothing yet.
    let (tx, mut got) = mpsc::unbounded_channel();
    let mut manual = Join::group("$share/slow/$stream/orders");
    manual.manual_acks = true;
    let slow = Member::join(addr, "slow", manual, tx).await;
    publish_orders(addr, &keyed(1, 3000)).await;
    let first = take(&mut got, 1).await.remove(0);
    assert_eq!(first.seq, 0);
    slow.kill().await;

    let stream = || broker.state().streams().iter().next().unwrap();
    let deadline = Instant::now() + WAIT;
    while stream().bounds(0).start == 0 {
        assert!(Instant::now() < deadline, "retention trimmed by bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Whole blocks go, the open one too when the publisher is still filling
    // it as retention runs, so the start is not always a multiple of 1024.
    let start = stream().bounds(0).start;

    let (tx, mut got) = mpsc::unbounded_channel();
    let back = Member::join(addr, "slow", Join::group("$share/slow/$stream/orders"), tx).await;
    let next = take(&mut got, 1).await.remove(0);
    assert_eq!(u64::from(next.seq), start, "continues from the log start");
    assert!(broker.state().metrics().stream_messages_skipped() >= start);
    back.leave().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn retention_by_age_trims_blocks_older_than_it() {
    let (_dir, store) = disk_store("retention_by_age_trims_blocks_older_than");
    let mut config = orders(1);
    config.retention = Some("1s".into());
    let broker = start_with(config, &store).await;
    publish_orders(broker.local_addrs()[0], &keyed(1, 1100)).await;
    let stream = || broker.state().streams().iter().next().unwrap();
    let deadline = Instant::now() + WAIT;
    while stream().bounds(0).start == 0 {
        assert!(Instant::now() < deadline, "retention trimmed by age");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The full block went; the open one too if it aged meanwhile.
    let start = stream().bounds(0).start;
    assert!(start == 1024 || start == 1100, "whole blocks: {start}");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_publish_feeding_a_stream_is_acknowledged_as_delivered_not_as_unmatched() {
    let (_dir, store) = disk_store("a_publish_feeding_a_stream_is_acknowledg");
    let broker = start_with(orders(8), &store).await;
    let (mut publisher, _) = raw::connect_v5(broker.local_addrs()[0], &raw::unique_id("pub")).await;
    publisher
        .send(&raw::publish_v5("orders/k1/x", 1, 1, &[], b"k1:0"))
        .await;
    let ack = publisher.expect_kind(PUBACK).await;
    // Packet id, then the reason code (absent means success).
    assert_eq!(
        ack.body.get(2).copied().unwrap_or(0),
        0,
        "not 0x10 no matching subscribers"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn partitions_continue_their_offsets_after_a_restart() {
    let (_dir, store) = disk_store("streams-restart");
    let mut config = orders(8);
    config.start = "latest".into();
    let first = start_with(config.clone(), &store).await;
    // No reader at all: the stream still takes every message.
    let device = vec![("device-1".to_string(), 0); 3];
    publish_orders(first.local_addrs()[0], &device).await;
    let ends = |broker: &Broker| broker.state().streams().iter().next().unwrap().ends();
    assert_eq!(ends(&first)[1], 3, "device-1 is in partition 1 of 8");
    first.shutdown().await;

    let second = start_with(config, &store).await;
    assert_eq!(ends(&second)[1], 3, "the restart finds the stored offsets");
    publish_orders(second.local_addrs()[0], &device[..1]).await;
    assert_eq!(ends(&second)[1], 4);
    assert!(
        ends(&second)
            .iter()
            .enumerate()
            .all(|(p, &end)| p == 1 || end == 0)
    );
    second.shutdown().await;
}

#[tokio::test]
async fn a_group_reading_far_behind_reads_from_the_commit_log() {
    let (_dir, store) = disk_store("streams-far-behind");
    // 32 partitions share 64 MiB of memory: 2 MiB each.
    let broker = start_with(orders(32), &store).await;
    let addr = broker.local_addrs()[0];
    // Well past what the partition holds in memory.
    let padding = "x".repeat(64 * 1024);
    let mut publisher = raw::connect_v311(addr, &raw::unique_id("pub")).await;
    for seq in 0..200u32 {
        let payload = format!("big:{seq}:{padding}");
        publisher
            .send(&publish_v311(
                "orders/big/x",
                1,
                (seq + 1) as u16,
                payload.as_bytes(),
            ))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
    let stream = broker.state().streams().iter().next().unwrap();
    assert!(
        stream.bounds(partition_of("big", 32)).memory_start > 0,
        "the oldest are on disk only"
    );
    let (tx, mut got) = mpsc::unbounded_channel();
    let reader = Member::join(addr, "far", Join::group("$share/far/$stream/orders"), tx).await;
    let all = take(&mut got, 200).await;
    let seqs: Vec<u32> = all.iter().map(|g| g.seq).collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    assert!(all.iter().all(|g| g.publish.payload.len() > 64 * 1024));
    reader.leave().await;
    broker.shutdown().await;
}

/// The stream of `a_group_survives_kill_9...` as the binary's config has it.
const ONE_PARTITION: &str = "[[streams]]\n\
     name = \"orders\"\n\
     filters = [\"orders/#\"]\n\
     partitions = 1\n\
     key = \"topic:1\"\n\
     start = \"earliest\"\n";

#[tokio::test]
async fn a_group_survives_kill_9_under_load_with_no_acknowledged_append_lost_and_no_commit_undone()
{
    let mut broker = BrokerProcess::start_with("stream-kill", ONE_PARTITION, |_| {}).await;
    let addr = broker.addr();
    // A publisher that keeps going until the broker dies under it.
    let acked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let publishing = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut publisher = raw::connect_v311(addr, &raw::unique_id("pub")).await;
            for seq in 0..u32::MAX {
                let payload = format!("k:{seq}");
                let packet_id = (seq % 60_000 + 1) as u16;
                publisher
                    .send(&publish_v311(
                        "orders/k/x",
                        1,
                        packet_id,
                        payload.as_bytes(),
                    ))
                    .await;
                match publisher.next_event().await {
                    raw::Event::Packet(packet) if packet.kind() == PUBACK => {
                        acked.store(seq + 1, std::sync::atomic::Ordering::Release);
                    }
                    _ => return,
                }
            }
        })
    };
    let (tx, mut got) = mpsc::unbounded_channel();
    let mut manual = Join::group("$share/g/$stream/orders");
    manual.manual_acks = true;
    let reader = Member::join(addr, "reader", manual, tx.clone()).await;
    // Read and acknowledge 150; the 151st arriving means the 150th commit
    // is in the journal, and a later publish acknowledged under `sync`
    // means it is on disk.
    for expected in 0..=150u32 {
        let one = take(&mut got, 1).await.remove(0);
        assert_eq!(one.seq, expected, "in offset order");
        if expected < 150 {
            reader.client.ack(&one.publish).await.unwrap();
        }
    }
    // Three more acknowledgements: at least one is for a publish sent after
    // the commit was journalled.
    let seen = acked.load(std::sync::atomic::Ordering::Acquire);
    let deadline = Instant::now() + WAIT;
    while acked.load(std::sync::atomic::Ordering::Acquire) < seen + 3 {
        assert!(Instant::now() < deadline, "the publisher goes on");
        tokio::task::yield_now().await;
    }
    broker.kill();
    let _ = publishing.await;
    reader.kill().await;
    let acknowledged = acked.load(std::sync::atomic::Ordering::Acquire);

    broker.restart().await;
    let (tx, mut got) = mpsc::unbounded_channel();
    let reader = Member::join(addr, "reader", Join::group("$share/g/$stream/orders"), tx).await;
    let after: Vec<u32> = take(&mut got, (acknowledged - 150) as usize)
        .await
        .iter()
        .map(|g| g.seq)
        .collect();
    assert_eq!(
        after,
        (150..acknowledged).collect::<Vec<_>>(),
        "from the first unacknowledged offset, every acknowledged append, in order"
    );
    reader.leave().await;
    assert_eq!(broker.log(), "", "no warning or error");
}

#[tokio::test]
async fn a_negative_ack_is_a_failed_attempt_and_the_message_comes_again_after_the_backoff() {
    let (_dir, store) = disk_store("streams-nack");
    let config = StreamConfig {
        retry_backoff: vec!["200ms".into()],
        ..orders(1)
    };
    let broker = start_with(config, &store).await;
    let addr = broker.local_addrs()[0];
    publish_orders(addr, &keyed(1, 2)).await;
    let mut member = raw_member(addr).await;
    let first = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(first.payload, b"k000:0");
    assert!(!first.user_properties().iter().any(|(n, _)| n == "attempt"));
    // PUBACK with 0x80: refused.
    let id = first.packet_id.unwrap();
    let refused = Instant::now();
    member.send(&raw::ack_with_reason(0x40, id, 0x80)).await;
    let again = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert!(
        refused.elapsed() >= Duration::from_millis(180),
        "after the backoff"
    );
    assert_eq!(
        again.payload, b"k000:0",
        "the same message, before the next"
    );
    let properties = again.user_properties();
    assert!(properties.contains(&("offset".into(), "0".into())));
    assert!(
        properties.contains(&("attempt".into(), "2".into())),
        "{properties:?}"
    );
    assert_eq!(broker.state().metrics().stream_deliveries_failed(), 1);
    let id = again.packet_id.unwrap();
    member.send(&raw::ack(0x40, id)).await;
    let next = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(next.payload, b"k000:1");
    broker.shutdown().await;
}

#[tokio::test]
async fn after_max_attempts_the_message_goes_to_the_groups_dead_letter_topic_and_the_partition_moves_on()
 {
    let (_dir, store) = disk_store("streams-dead");
    let config = StreamConfig {
        retry_backoff: vec!["50ms".into()],
        max_attempts: 2,
        ..orders(1)
    };
    let broker = start_with(config, &store).await;
    let addr = broker.local_addrs()[0];
    let (mut watcher, _) = raw::connect_v5(addr, &raw::unique_id("dlq")).await;
    watcher
        .send(&raw::subscribe(1, Some(&[]), &[(b"$dlq/g/orders", 1)]))
        .await;
    watcher.expect_kind(raw::SUBACK).await;
    // Nobody but the broker publishes there.
    watcher
        .send(&raw::publish_v5("$dlq/g/orders", 1, 9, &[], b"forged"))
        .await;
    let refused = watcher.expect_kind(PUBACK).await;
    assert_eq!(refused.body.get(2).copied(), Some(0x87));

    publish_orders(addr, &keyed(1, 2)).await;
    let mut member = raw_member(addr).await;
    for _ in 0..2 {
        let delivery = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
        assert_eq!(delivery.payload, b"k000:0");
        let id = delivery.packet_id.unwrap();
        member.send(&raw::ack_with_reason(0x40, id, 0x80)).await;
    }
    let next = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(next.payload, b"k000:1", "the partition moved on");

    let letter = raw::Publish::parse(&watcher.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(letter.topic, b"$dlq/g/orders");
    assert_eq!(letter.payload, b"k000:0");
    let properties = letter.user_properties();
    for wanted in [("stream", "orders"), ("attempts", "2"), ("reason", "0x80")] {
        let wanted = (wanted.0.to_string(), wanted.1.to_string());
        assert!(properties.contains(&wanted), "{wanted:?} in {properties:?}");
    }
    assert!(
        properties.iter().any(|(name, _)| name == "offset"),
        "{properties:?}"
    );
    assert_eq!(broker.state().metrics().stream_dead_letters(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn dead_letters_older_than_dlq_retention_are_dropped_from_disk() {
    let (_dir, store) = disk_store("streams-dlq-retention");
    let config = StreamConfig {
        max_attempts: 1,
        dlq_retention: "200ms".into(),
        ..orders(1)
    };
    let broker = start_with(config, &store).await;
    let addr = broker.local_addrs()[0];
    publish_orders(addr, &keyed(1, 1)).await;
    let mut member = raw_member(addr).await;
    let delivery = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    let id = delivery.packet_id.unwrap();
    member.send(&raw::ack_with_reason(0x40, id, 0x80)).await;

    let metrics = || broker.state().metrics();
    let deadline = Instant::now() + WAIT;
    while metrics().stream_dead_letters() == 0 || metrics().dead_letters_dropped() == 0 {
        assert!(Instant::now() < deadline, "dead-lettered, then dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.dead_letters().unwrap()
    })
    .await
    .unwrap();
    assert!(kept.is_empty(), "gone from disk too: {kept:?}");
    broker.shutdown().await;
}

#[tokio::test]
async fn retries_follow_each_backoff_step_in_order_then_the_dead_letter_and_the_next_of_the_key() {
    let (_dir, store) = disk_store("streams-backoff");
    let config = StreamConfig {
        retry_backoff: vec!["100ms".into(), "300ms".into()],
        max_attempts: 3,
        ..orders(1)
    };
    let broker = start_with(config, &store).await;
    let addr = broker.local_addrs()[0];
    let (mut watcher, _) = raw::connect_v5(addr, &raw::unique_id("dlq")).await;
    watcher
        .send(&raw::subscribe(1, Some(&[]), &[(b"$dlq/g/orders", 1)]))
        .await;
    watcher.expect_kind(raw::SUBACK).await;
    publish_orders(addr, &keyed(1, 2)).await;
    let mut member = raw_member(addr).await;
    let mut refused_at = None;
    for wait in [None, Some(100), Some(300)] {
        let delivery = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
        assert_eq!(
            delivery.payload, b"k000:0",
            "the later message of the key waits"
        );
        if let (Some(wait), Some(at)) = (wait, refused_at) {
            let waited = Instant::elapsed(&at);
            assert!(
                waited >= Duration::from_millis(wait - 20),
                "attempt after {waited:?}, the step is {wait} ms"
            );
        }
        let id = delivery.packet_id.unwrap();
        member.send(&raw::ack_with_reason(0x40, id, 0x80)).await;
        refused_at = Some(Instant::now());
    }
    let next = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(
        next.payload, b"k000:1",
        "after three attempts it is given up"
    );
    let letter = raw::Publish::parse(&watcher.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(letter.payload, b"k000:0");
    broker.shutdown().await;
}

#[tokio::test]
async fn relaxed_ordering_moves_on_past_a_refused_message_and_keeps_it_across_a_restart() {
    let (_dir, store) = disk_store("streams-relaxed");
    let config = || StreamConfig {
        ordering: "relaxed".into(),
        retry_backoff: vec!["300ms".into(), "1h".into()],
        ..orders(1)
    };
    let broker = start_with(config(), &store).await;
    let addr = broker.local_addrs()[0];
    publish_orders(addr, &keyed(1, 3)).await;
    let mut member = raw_member(addr).await;
    let first = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(first.payload, b"k000:0");
    let refused = Instant::now();
    member
        .send(&raw::ack_with_reason(0x40, first.packet_id.unwrap(), 0x80))
        .await;
    for later in [b"k000:1", b"k000:2"] {
        let delivery = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
        assert_eq!(delivery.payload, later, "the partition moved on");
        member
            .send(&raw::ack(0x40, delivery.packet_id.unwrap()))
            .await;
    }
    let retry = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert!(
        refused.elapsed() >= Duration::from_millis(280),
        "after the backoff"
    );
    assert_eq!(retry.payload, b"k000:0");
    assert!(
        retry
            .user_properties()
            .contains(&("attempt".into(), "2".into()))
    );
    // Refused again: the next retry is an hour away when the broker stops.
    member
        .send(&raw::ack_with_reason(0x40, retry.packet_id.unwrap(), 0x80))
        .await;
    let deadline = Instant::now() + WAIT;
    while broker.state().metrics().stream_deliveries_failed() < 2 {
        assert!(Instant::now() < deadline, "the second refusal is counted");
        tokio::task::yield_now().await;
    }
    broker.shutdown().await;

    // The waiting message held the group's commit back: nothing is lost.
    let broker = start_with(config(), &store).await;
    let mut member = raw_member(broker.local_addrs()[0]).await;
    let again = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(again.payload, b"k000:0", "read again after the restart");
    broker.shutdown().await;
}
