//! Durable state (the commit log and the state database): what a restart
//! restores, what is purged, what never touches the disk, and how storage
//! faults reach clients.
//!
//! Restarts here stop a broker and start another one on the same open
//! `DiskStore`, reading everything back through `Store::load`; `crash.rs`
//! covers reopening the data directory after `kill -9` with the real binary.

mod common;
mod raw;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::faulty_store::{Faults, FaultyStore};
use common::scratch::TempDir;
use petrel::config::Durability;
use petrel::protocol::Message;
use petrel::store::{DiskOptions, DiskStore, Record, Snapshot, Store, StoreError};
use petrel::{Broker, Settings};
use raw::{
    Connect, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, Publish, RawClient, SUBACK, ack,
    persistent_v311, prop_u32, publish_v5, publish_v311, subscribe,
};

const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const WILL_DELAY_INTERVAL: u8 = 0x18;

fn sync_settings() -> Settings {
    Settings {
        durability: Durability::Sync,
        ..Settings::ephemeral()
    }
}

async fn start(store: &Arc<dyn Store>) -> Broker {
    Broker::start_with_store(sync_settings(), store.clone())
        .await
        .expect("broker starts on the store")
}

const DISK: DiskOptions = DiskOptions {
    segment_bytes: 1 << 20,
    max_disk_bytes: u64::MAX,
};

fn open_store(dir: &TempDir) -> Arc<dyn Store> {
    Arc::new(DiskStore::open(dir.path(), DISK).expect("store opens"))
}

/// Connects with `connect`; returns the client and CONNACK's session present.
async fn connect_with(broker: &Broker, connect: &Connect) -> (RawClient, bool) {
    raw::connect_accepted(broker.local_addrs()[0], connect).await
}

fn persistent_v5(id: &str, expiry_secs: u32) -> Connect {
    Connect {
        clean: false,
        properties: prop_u32(SESSION_EXPIRY_INTERVAL, expiry_secs),
        ..Connect::v5(id)
    }
}

async fn subscribe_to(client: &mut RawClient, filter: &str, qos: u8, v5: bool) {
    let props: Option<&[u8]> = v5.then_some(&[]);
    client
        .send(&subscribe(1, props, &[(filter.as_bytes(), qos)]))
        .await;
    let suback = client.expect_kind(SUBACK).await;
    assert_ne!(suback.body.last(), Some(&0x80), "subscription refused");
}

async fn expect_publish(client: &mut RawClient, v5: bool) -> Publish {
    Publish::parse(&client.expect_kind(PUBLISH).await, v5)
}

#[tokio::test]
async fn restart_restores_inflight_queued_and_inbound_qos2_state() {
    let dir = TempDir::new("restore");
    let store = open_store(&dir);
    let first = start(&store).await;

    let (mut subscriber, present) = connect_with(&first, &persistent_v311("keeper")).await;
    assert!(!present);
    subscribe_to(&mut subscriber, "plant/#", 2, false).await;
    let (mut publisher, _) = connect_with(&first, &persistent_v311("sensor")).await;

    publisher.send(&publish_v311("plant/a", 1, 1, b"one")).await;
    assert_eq!(publisher.expect_kind(PUBACK).await.packet_id(), 1);
    publisher.send(&publish_v311("plant/b", 2, 2, b"two")).await;
    assert_eq!(publisher.expect_kind(PUBREC).await.packet_id(), 2);

    // The subscriber receives both and acknowledges neither, then leaves.
    let one = expect_publish(&mut subscriber, false).await;
    let two = expect_publish(&mut subscriber, false).await;
    assert_eq!(
        (one.payload.as_slice(), two.payload.as_slice()),
        (&b"one"[..], &b"two"[..])
    );
    drop(subscriber);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Queued while the subscriber is away.
    publisher
        .send(&publish_v311("plant/c", 1, 3, b"three"))
        .await;
    assert_eq!(publisher.expect_kind(PUBACK).await.packet_id(), 3);
    drop(publisher);
    first.shutdown().await;

    let second = start(&store).await;
    let (mut subscriber, present) = connect_with(&second, &persistent_v311("keeper")).await;
    assert!(present, "the persistent session survives the restart");
    let again_one = expect_publish(&mut subscriber, false).await;
    let again_two = expect_publish(&mut subscriber, false).await;
    assert!(
        again_one.dup && again_two.dup,
        "unacknowledged messages are re-sent with DUP"
    );
    assert_eq!(
        again_one.packet_id, one.packet_id,
        "with their original packet ids"
    );
    assert_eq!(again_two.packet_id, two.packet_id);
    assert_eq!(again_two.payload, b"two");
    let three = expect_publish(&mut subscriber, false).await;
    assert_eq!(three.payload, b"three");
    assert!(!three.dup);

    // The publisher re-sends its QoS 2 message before PUBREL: acknowledged
    // again, routed no second time.
    let (mut publisher, present) = connect_with(&second, &persistent_v311("sensor")).await;
    assert!(present);
    let mut resend = publish_v311("plant/b", 2, 2, b"two");
    resend[0] |= 0x08;
    publisher.send(&resend).await;
    assert_eq!(publisher.expect_kind(PUBREC).await.packet_id(), 2);
    publisher.send(&ack(0x62, 2)).await;
    assert_eq!(publisher.expect_kind(PUBCOMP).await.packet_id(), 2);

    subscriber
        .send(&ack(0x40, again_one.packet_id.unwrap()))
        .await;
    subscriber
        .send(&ack(0x50, again_two.packet_id.unwrap()))
        .await;
    assert_eq!(
        subscriber.expect_kind(PUBREL).await.packet_id(),
        again_two.packet_id.unwrap()
    );
    subscriber
        .send(&ack(0x70, again_two.packet_id.unwrap()))
        .await;
    subscriber.send(&ack(0x40, three.packet_id.unwrap())).await;
    subscriber.send(&[0xc0, 0x00]).await;
    assert_eq!(
        subscriber.expect_packet().await.kind(),
        PINGRESP,
        "no duplicate of the re-sent QoS 2 message"
    );
    drop((subscriber, publisher));
    second.shutdown().await;

    let left = store.load().unwrap();
    assert!(
        left.deliveries.values().all(Vec::is_empty) && left.inbound_qos2.is_empty(),
        "acknowledged deliveries and released packet ids are gone from disk: {left:?}"
    );
}

#[tokio::test]
async fn retained_messages_and_message_expiry_survive_and_count_the_downtime() {
    let dir = TempDir::new("expiry");
    let store = open_store(&dir);
    let first = start(&store).await;

    let (mut subscriber, _) = connect_with(&first, &persistent_v5("reader", 600)).await;
    subscribe_to(&mut subscriber, "news/#", 1, true).await;
    drop(subscriber);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut publisher, _) = connect_with(&first, &Connect::v5("writer")).await;
    let short = prop_u32(MESSAGE_EXPIRY_INTERVAL, 1);
    publisher
        .send(&publish_v5("news/short", 1, 1, &short, b"soon gone"))
        .await;
    publisher.expect_kind(PUBACK).await;
    publisher
        .send(&publish_v5("news/long", 1, 2, &[], b"kept"))
        .await;
    publisher.expect_kind(PUBACK).await;
    let mut retained = publish_v5("state/short", 1, 3, &short, b"old state");
    retained[0] |= 0x01;
    publisher.send(&retained).await;
    publisher.expect_kind(PUBACK).await;
    let mut retained = publish_v5("state/long", 1, 4, &[], b"state");
    retained[0] |= 0x01;
    publisher.send(&retained).await;
    publisher.expect_kind(PUBACK).await;
    drop(publisher);
    first.shutdown().await;

    // The broker is down longer than the short expiry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = start(&store).await;
    let (mut subscriber, present) = connect_with(&second, &persistent_v5("reader", 600)).await;
    assert!(present);
    let kept = expect_publish(&mut subscriber, true).await;
    assert_eq!(
        kept.payload, b"kept",
        "the expired queued message is not delivered"
    );
    subscriber.send(&ack(0x40, kept.packet_id.unwrap())).await;
    subscribe_to(&mut subscriber, "state/+", 1, true).await;
    let state = expect_publish(&mut subscriber, true).await;
    assert!(state.retain);
    assert_eq!(state.payload, b"state");
    subscriber.send(&ack(0x40, state.packet_id.unwrap())).await;
    subscriber.send(&[0xc0, 0x00]).await;
    assert_eq!(
        subscriber.expect_packet().await.kind(),
        PINGRESP,
        "the expired retained message is gone"
    );
    drop(subscriber);
    second.shutdown().await;
}

#[tokio::test]
async fn expired_sessions_are_purged_from_disk_live_and_across_a_restart() {
    let dir = TempDir::new("purge");
    let store = open_store(&dir);
    let first = start(&store).await;
    let (mut live, _) = connect_with(&first, &persistent_v5("short-live", 1)).await;
    subscribe_to(&mut live, "purge/#", 1, true).await;
    let (mut downtime, _) = connect_with(&first, &persistent_v5("short-down", 2)).await;
    subscribe_to(&mut downtime, "purge/#", 1, true).await;
    drop((live, downtime));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut publisher, _) = connect_with(&first, &Connect::v5("purger")).await;
    for id in 1..=5u16 {
        publisher
            .send(&publish_v5("purge/x", 1, id, &[], b"queued"))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
    let held = |snapshot: &Snapshot, id: &str| {
        snapshot.sessions.iter().any(|s| s.client_id == id)
            || snapshot.deliveries.get(id).is_some_and(|d| !d.is_empty())
    };
    let before = store.load().unwrap();
    assert!(held(&before, "short-live") && held(&before, "short-down"));
    assert_eq!(before.deliveries["short-live"].len(), 5);

    // The 1 s session expires while the broker runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = store.load().unwrap();
    assert!(
        !held(&after, "short-live"),
        "expired session purged: {after:?}"
    );
    assert!(held(&after, "short-down"));
    drop(publisher);
    first.shutdown().await;

    // The 2 s one expires while the broker is down.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = start(&store).await;
    let after = store.load().unwrap();
    assert!(
        !held(&after, "short-down"),
        "expired during downtime, purged at start: {after:?}"
    );
    let (_client, present) = connect_with(&second, &persistent_v5("short-down", 60)).await;
    assert!(!present);
    second.shutdown().await;
}

#[tokio::test]
async fn sessions_that_are_not_persistent_never_touch_the_disk() {
    let dir = TempDir::new("clean");
    let store = open_store(&dir);
    let broker = start(&store).await;
    let (mut subscriber, _) = connect_with(&broker, &Connect::v311("fleeting-sub")).await;
    subscribe_to(&mut subscriber, "t/#", 2, false).await;
    let (mut v5_subscriber, _) = connect_with(&broker, &Connect::v5("fleeting-v5")).await;
    subscribe_to(&mut v5_subscriber, "t/#", 2, true).await;
    let (mut publisher, _) = connect_with(&broker, &Connect::v311("fleeting-pub")).await;
    publisher.send(&publish_v311("t/1", 1, 1, b"a")).await;
    publisher.expect_kind(PUBACK).await;
    publisher.send(&publish_v311("t/2", 2, 2, b"b")).await;
    publisher.expect_kind(PUBREC).await;
    publisher.send(&ack(0x62, 2)).await;
    publisher.expect_kind(PUBCOMP).await;
    for _ in 0..2 {
        expect_publish(&mut subscriber, false).await;
        expect_publish(&mut v5_subscriber, true).await;
    }
    let snapshot = store.load().unwrap();
    assert!(
        snapshot.sessions.is_empty()
            && snapshot.deliveries.is_empty()
            && snapshot.inbound_qos2.is_empty()
            && snapshot.retained.is_empty(),
        "nothing stored for clean sessions: {snapshot:?}"
    );
    drop((subscriber, v5_subscriber, publisher));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_delayed_will_still_due_survives_a_restart() {
    let dir = TempDir::new("will");
    let store = open_store(&dir);
    let first = start(&store).await;
    let mut connect = persistent_v5("mortal", 600);
    connect.will = Some(raw::Will {
        topic: b"wills/mortal".to_vec(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
        properties: prop_u32(WILL_DELAY_INTERVAL, 2),
    });
    let (client, _) = connect_with(&first, &connect).await;
    // Abrupt loss: the will is due 2 s later.
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.shutdown().await;

    let second = start(&store).await;
    let (mut watcher, _) = connect_with(&second, &Connect::v5("watcher")).await;
    subscribe_to(&mut watcher, "wills/#", 1, true).await;
    let will = expect_publish(&mut watcher, true).await;
    assert_eq!(will.topic, b"wills/mortal");
    assert_eq!(will.payload, b"gone");
    drop(watcher);
    second.shutdown().await;
}

/// Writes of message copies, or flushes, that fail on demand, as a full or
/// failing disk would make them.
#[derive(Default)]
struct Injected {
    fail_copies: AtomicBool,
    fail_flush: AtomicBool,
}

impl Faults for Injected {
    fn before_copies(&self) -> Result<(), StoreError> {
        if self.fail_copies.load(Ordering::SeqCst) {
            return Err(StoreError::Full("injected: no space left on device".into()));
        }
        Ok(())
    }
    fn before_flush(&self) -> Result<(), StoreError> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected: I/O error".into()));
        }
        Ok(())
    }
    fn has_space(&self) -> bool {
        !self.fail_copies.load(Ordering::SeqCst)
    }
}

/// Waits for what a v5 connection answers when the broker will not
/// acknowledge: a DISCONNECT with `reason`, or the connection closing.
async fn expect_no_acknowledgement(client: &mut RawClient, reason: u8) {
    match client.next_event().await {
        raw::Event::Packet(packet) => {
            assert_eq!(
                packet.kind(),
                raw::DISCONNECT,
                "no acknowledgement: {packet:?}"
            );
            assert_eq!(packet.disconnect_reason(), reason);
        }
        raw::Event::Closed | raw::Event::Reset => {}
    }
}

#[tokio::test]
async fn a_full_store_refuses_publishes_with_a_reason_code_and_recovers_by_itself() {
    let dir = TempDir::new("fault");
    let failing = FaultyStore::new(
        DiskStore::open(dir.path(), DISK).unwrap(),
        Injected::default(),
    );
    let store: Arc<dyn Store> = failing.clone();
    let broker = start(&store).await;
    let (mut subscriber, _) = connect_with(&broker, &persistent_v5("durable-reader", 600)).await;
    subscribe_to(&mut subscriber, "f/#", 2, true).await;
    let (mut v5, _) = connect_with(&broker, &Connect::v5("v5-writer")).await;

    // The write that finds the disk full: its publisher never gets a
    // success acknowledgement but quota exceeded, and the store counts as
    // full from then on.
    failing.faults.fail_copies.store(true, Ordering::SeqCst);
    v5.send(&publish_v5("f/0", 1, 1, &[], b"unacknowledged"))
        .await;
    expect_no_acknowledgement(&mut v5, 0x97).await;

    // While full, durable publishes are refused up front and go nowhere.
    let (mut v5, _) = connect_with(&broker, &Connect::v5("v5-writer")).await;
    let (mut v311, _) = connect_with(&broker, &Connect::v311("v311-writer")).await;
    v5.send(&publish_v5("f/1", 1, 1, &[], b"refused")).await;
    let puback = v5.expect_kind(PUBACK).await;
    assert_eq!(puback.ack_reason(), 0x97, "v5 QoS 1: quota exceeded");
    v5.send(&publish_v5("f/2", 2, 2, &[], b"refused")).await;
    let pubrec = v5.expect_kind(PUBREC).await;
    assert_eq!(pubrec.ack_reason(), 0x97, "v5 QoS 2: quota exceeded");
    v311.send(&publish_v311("f/3", 1, 1, b"refused")).await;
    v311.expect_closed().await;

    // Space comes back: the broker notices by itself, without a restart,
    // and the same packet id is a new message that arrives.
    failing.faults.fail_copies.store(false, Ordering::SeqCst);
    tokio::time::timeout(
        Duration::from_secs(10),
        broker.state().journal().until_accepting(),
    )
    .await
    .expect("the broker accepts publishes again once space is back");
    v5.send(&publish_v5("f/2", 2, 2, &[], b"accepted")).await;
    let pubrec = v5.expect_kind(PUBREC).await;
    assert_eq!(pubrec.ack_reason(), 0x00);
    loop {
        let delivered = expect_publish(&mut subscriber, true).await;
        assert_ne!(
            delivered.payload, b"refused",
            "nothing refused is delivered"
        );
        subscriber
            .send(&ack(0x50, delivered.packet_id.expect("QoS 2 has an id")))
            .await;
        if delivered.payload == b"accepted" {
            break;
        }
    }

    // A failing flush: the acknowledgement is withheld and the connection
    // closed, never a PUBACK for a message that is not on disk.
    failing.faults.fail_flush.store(true, Ordering::SeqCst);
    v5.send(&publish_v5("f/4", 1, 3, &[], b"unflushed")).await;
    expect_no_acknowledgement(&mut v5, 0x80).await;
    failing.faults.fail_flush.store(false, Ordering::SeqCst);
    drop((subscriber, v5, v311));
    broker.shutdown().await;
}

fn petrel_serve(dir: &Path) -> Command {
    let config = dir.join("petrel.toml");
    std::fs::write(
        &config,
        "durability = \"sync\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_petrel"));
    // Every PETREL_* variable is a setting to petrel: the harness's own must
    // not reach it.
    command
        .env_remove("PETREL_TEST_BROKER")
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs `petrel serve` expecting it to refuse to start; returns its stderr.
fn refused_start(mut command: Command) -> String {
    let mut child = command.spawn().unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "petrel must not start");
            let output = child.wait_with_output().unwrap();
            return String::from_utf8_lossy(&output.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("petrel kept running instead of refusing to start");
}

#[test]
fn a_data_dir_in_use_by_another_petrel_is_refused_at_start() {
    let dir = TempDir::new("locked");
    let data = dir.path().join("data");
    let mut first = petrel_serve(dir.path())
        .arg("--data-dir")
        .arg(&data)
        .spawn()
        .unwrap();
    // Wait until the first one holds the database.
    for _ in 0..100 {
        if data.join("db").join("conf").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut second = petrel_serve(dir.path());
    second.arg("--data-dir").arg(&data);
    let stderr = refused_start(second);
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        stderr.contains("in use by another petrel process"),
        "clear error expected, got: {stderr}"
    );
}

#[test]
fn a_data_dir_that_cannot_be_written_is_refused_at_start() {
    let dir = TempDir::new("unwritable");
    // A regular file where the directory should be: unwritable even for root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let mut command = petrel_serve(dir.path());
    command.arg("--data-dir").arg(blocker.join("data"));
    let stderr = refused_start(command);
    assert!(
        stderr.contains("cannot create data_dir"),
        "clear error expected, got: {stderr}"
    );

    // A read-only directory (meaningful when not running as root).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let read_only = dir.path().join("read-only");
        std::fs::create_dir(&read_only).unwrap();
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o500)).unwrap();
        let writable_anyway = std::fs::write(read_only.join("probe"), b"").is_ok();
        if !writable_anyway {
            let mut command = petrel_serve(dir.path());
            command.arg("--data-dir").arg(&read_only);
            let stderr = refused_start(command);
            assert!(
                stderr.contains("cannot open the database"),
                "clear error expected, got: {stderr}"
            );
        }
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[test]
fn a_damaged_database_is_refused_at_start_not_started_empty() {
    let dir = TempDir::new("corrupt");
    {
        let store = DiskStore::open(dir.path(), DISK).unwrap();
        store.load().unwrap();
        let message = Message {
            topic: "kept/1".into(),
            payload: bytes::Bytes::from_static(b"state"),
            qos: petrel::protocol::QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
        };
        store.write(Record::PutRetained(Arc::new(message))).unwrap();
        store.flush().unwrap();
    }
    let file = dir.path().join("db").join("db");
    let length = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0xff; length]).unwrap();
    match DiskStore::open(dir.path(), DISK) {
        Err(StoreError::Corrupt(reason)) => assert!(reason.contains("no readable petrel data")),
        Err(other) => panic!("expected a corruption error, got {other}"),
        Ok(_) => panic!("a damaged database must not open as an empty one"),
    }
}
