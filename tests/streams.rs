//! Streams over real sockets: what the broker appends to partitions and
//! what a restart keeps.

mod common;
mod raw;

use std::sync::Arc;

use common::scratch::TempDir;
use petrel::config::Durability;
use petrel::store::{DiskOptions, DiskStore, Store};
use petrel::stream::StreamConfig;
use petrel::{Broker, Settings};
use raw::{PUBACK, publish_v311};

fn orders() -> StreamConfig {
    StreamConfig {
        name: "orders".into(),
        filters: vec!["orders/#".into()],
        partitions: 8,
        key: "topic:1".into(),
        retention: None,
        max_bytes: None,
        start: "latest".into(),
        max_attempts: 16,
        retry_backoff: vec!["1s".into()],
        max_inflight_per_partition: 1,
        ack_timeout: "30s".into(),
    }
}

async fn start(store: &Arc<dyn Store>) -> Broker {
    let settings = Settings {
        durability: Durability::Sync,
        streams: vec![orders()],
        ..Settings::ephemeral()
    };
    Broker::start_with_store(settings, store.clone())
        .await
        .expect("broker starts")
}

async fn publish_acknowledged(broker: &Broker, topic: &str, count: u16) {
    let mut publisher = raw::connect_v311(broker.local_addrs()[0], &raw::unique_id("pub")).await;
    for packet_id in 1..=count {
        publisher
            .send(&publish_v311(topic, 1, packet_id, b"order"))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
}

#[tokio::test]
async fn partitions_continue_their_offsets_after_a_restart() {
    let dir = TempDir::new("streams-restart");
    let options = DiskOptions {
        segment_bytes: 1 << 20,
        max_disk_bytes: u64::MAX,
    };
    let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path(), options).unwrap());
    let first = start(&store).await;
    // No subscriber at all: the stream still takes every message.
    publish_acknowledged(&first, "orders/device-1/new", 3).await;
    let ends = |broker: &Broker| broker.state().streams().iter().next().unwrap().ends();
    assert_eq!(ends(&first)[1], 3, "device-1 is in partition 1 of 8");
    first.shutdown().await;

    let second = start(&store).await;
    assert_eq!(ends(&second)[1], 3, "the restart finds the stored offsets");
    publish_acknowledged(&second, "orders/device-1/new", 1).await;
    assert_eq!(ends(&second)[1], 4);
    assert!(
        ends(&second)
            .iter()
            .enumerate()
            .all(|(p, &end)| p == 1 || end == 0)
    );
    second.shutdown().await;
}
