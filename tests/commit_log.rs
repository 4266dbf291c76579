//! The commit log with the real `petrel` binary: offline backlogs larger
//! than what a session holds in memory, recovery after SIGKILL (a torn tail
//! is cut, damage before it stops the start), reclaim of old segments, and
//! a full disk or `max_disk_bytes` refusing publishes with 0x97 until space
//! returns.

#[path = "crash/broker.rs"]
mod broker;
mod raw;
#[path = "crash/rng.rs"]
mod rng;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use broker::BrokerProcess;
use raw::{
    Connect, PUBACK, PUBLISH, Publish, RawClient, SESSION_EXPIRY_INTERVAL, SUBACK, ack,
    connect_accepted, connect_v5_with, persistent_v311, prop_u32, publish_v5, publish_v311,
    subscribe,
};

/// Messages a publisher keeps unacknowledged at once.
const WINDOW: usize = 50;

/// Longest a broker may take to reclaim segments once nothing needs them:
/// a few of its 2 s checkpoints.
const RECLAIM: Duration = Duration::from_secs(15);

/// Subscribes a persistent 3.1.1 session to `filter` at QoS 1 and leaves.
async fn park_subscriber(addr: SocketAddr, id: &str, filter: &str) {
    let (mut subscriber, _) = connect_accepted(addr, &persistent_v311(id)).await;
    subscriber
        .send(&subscribe(1, None, &[(filter.as_bytes(), 1)]))
        .await;
    subscriber.expect_kind(SUBACK).await;
    subscriber.send(&[0xe0, 0x00]).await;
    subscriber.expect_closed().await;
}

/// Publishes `m{first}` .. `m{last}` (padded to `size` bytes) at QoS 1 from
/// a 3.1.1 client, `WINDOW` at a time, and waits for every PUBACK.
async fn publish_acknowledged(addr: SocketAddr, topic: &str, first: u32, last: u32, size: usize) {
    let mut publisher = raw::connect_v311(addr, &raw::unique_id("pub")).await;
    let mut next = first;
    let mut unacked = 0;
    while next <= last || unacked > 0 {
        while next <= last && unacked < WINDOW {
            let payload = format!("m{next:08}").into_bytes();
            let mut padded = payload.clone();
            padded.resize(size.max(payload.len()), b'.');
            let packet_id = (next % 60_000 + 1) as u16;
            publisher
                .send(&publish_v311(topic, 1, packet_id, &padded))
                .await;
            next += 1;
            unacked += 1;
        }
        publisher.expect_kind(PUBACK).await;
        unacked -= 1;
    }
}

/// Resumes the persistent session `id` and receives `count` messages,
/// acknowledging each; returns their numbers in arrival order.
async fn drain(addr: SocketAddr, id: &str, count: usize) -> Vec<u32> {
    let (mut subscriber, present) = connect_accepted(addr, &persistent_v311(id)).await;
    assert!(present, "the persistent session is there");
    let numbers = receive(&mut subscriber, count, false).await;
    subscriber.send(&[0xe0, 0x00]).await;
    subscriber.expect_closed().await;
    numbers
}

/// `drain` for a v5 session.
async fn drain_v5(addr: SocketAddr, id: &str, count: usize) -> Vec<u32> {
    let (mut subscriber, connack) = connect_v5_with(addr, &persistent_v5(id)).await;
    assert!(connack.session_present, "the persistent session is there");
    receive(&mut subscriber, count, true).await
}

/// Receives `count` QoS 1 messages numbered `m{n}`, acknowledging each.
async fn receive(subscriber: &mut RawClient, count: usize, v5: bool) -> Vec<u32> {
    let mut numbers = Vec::with_capacity(count);
    while numbers.len() < count {
        let packet = subscriber.expect_kind(PUBLISH).await;
        let publish = Publish::parse(&packet, v5);
        let text = String::from_utf8_lossy(&publish.payload);
        numbers.push(
            text[1..9]
                .parse()
                .expect("payload starts with m and a number"),
        );
        subscriber
            .send(&ack(0x40, publish.packet_id.expect("QoS 1")))
            .await;
    }
    numbers
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
        .expect("the log directory exists")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

/// Waits, within `RECLAIM`, until the log holds at most `most` segments.
async fn wait_for_segments_at_most(data_dir: &Path, most: usize) -> usize {
    let deadline = Instant::now() + RECLAIM;
    loop {
        let now = segments(data_dir).len();
        if now <= most || Instant::now() >= deadline {
            return now;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_backlog_larger_than_memory_arrives_whole_and_in_order_across_sigkill() {
    // Far more than a session holds in memory (256), over many segments.
    const HALF: u32 = 2_000;
    let mut broker = BrokerProcess::start("backlog").await;
    let addr = broker.addr();
    park_subscriber(addr, "backlog-sub", "backlog/#").await;

    // Read back from the log while the broker runs...
    publish_acknowledged(addr, "backlog/a", 1, HALF, 100).await;
    let first: Vec<u32> = drain(addr, "backlog-sub", HALF as usize).await;
    assert_eq!(first, (1..=HALF).collect::<Vec<_>>());

    // ...and after a crash, from what the restart found on disk.
    publish_acknowledged(addr, "backlog/b", HALF + 1, 2 * HALF, 100).await;
    let written = segments(&broker.data_dir()).len();
    assert!(written > 3, "the backlog spans segments: {written}");
    broker.kill();
    broker.restart().await;
    let second = drain(addr, "backlog-sub", HALF as usize).await;
    assert_eq!(second, (HALF + 1..=2 * HALF).collect::<Vec<_>>());

    // Nothing points into the old segments any more: they go.
    let left = wait_for_segments_at_most(&broker.data_dir(), 2).await;
    assert!(
        left <= 2,
        "{left} of {written} segments left after draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_start_and_nothing_acknowledged_is_lost() {
    const MESSAGES: u32 = 300;
    let mut broker = BrokerProcess::start("torn").await;
    let addr = broker.addr();
    park_subscriber(addr, "torn-sub", "torn/#").await;
    publish_acknowledged(addr, "torn/x", 1, MESSAGES, 64).await;
    broker.kill();

    // What a crash in the middle of a write leaves: the start of a frame
    // whose length runs past the end of the file.
    let last = segments(&broker.data_dir()).pop().expect("a segment");
    let mut tail = 4_000u32.to_le_bytes().to_vec();
    tail.extend_from_slice(&[0xAB; 13]);
    let kept = std::fs::metadata(&last).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut file, &tail).unwrap();
    drop(file);

    broker.restart().await;
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        kept,
        "the torn bytes are cut"
    );
    let received = drain(addr, "torn-sub", MESSAGES as usize).await;
    assert_eq!(received, (1..=MESSAGES).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_before_the_tail_stops_the_start_naming_segment_and_offset() {
    let mut broker = BrokerProcess::start("damaged").await;
    let addr = broker.addr();
    park_subscriber(addr, "damaged-sub", "damaged/#").await;
    publish_acknowledged(addr, "damaged/x", 1, 100, 64).await;
    broker.kill();

    // One bit of the first record's body, which every later sync covered.
    let segment = segments(&broker.data_dir()).pop().expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    const HEADER: usize = 20;
    bytes[HEADER + 1] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let output = broker.start_fails();
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        output.contains(&name) && output.contains("offset 0"),
        "the refusal names the segment and the offset: {output}"
    );
}

/// Publishes QoS 1 messages from a v5 client until one is refused; returns
/// the payloads acknowledged with success and the refusal's reason code.
async fn publish_until_refused(client: &mut RawClient, topic: &str, limit: u32) -> (Vec<u32>, u8) {
    for n in 1..=limit {
        let mut payload = format!("m{n:08}").into_bytes();
        payload.resize(1024, b'.');
        let packet_id = (n % 60_000 + 1) as u16;
        client
            .send(&publish_v5(topic, 1, packet_id, &[], &payload))
            .await;
        match client.next_event().await {
            raw::Event::Packet(packet) if packet.kind() == PUBACK => {
                if packet.ack_reason() >= 0x80 {
                    return ((1..n).collect(), packet.ack_reason());
                }
            }
            raw::Event::Packet(packet) if packet.kind() == raw::DISCONNECT => {
                return ((1..n).collect(), packet.disconnect_reason());
            }
            other => panic!("PUBACK expected, got {other:?}"),
        }
    }
    panic!("{limit} messages were accepted: nothing was refused");
}

/// A v5 persistent subscriber (session expiry one hour).
fn persistent_v5(id: &str) -> Connect {
    Connect {
        clean: false,
        properties: prop_u32(SESSION_EXPIRY_INTERVAL, 3600),
        ..Connect::v5(id)
    }
}

/// Publishes until accepted again (each try waits for its PUBACK), for at
/// most `within`.
async fn publish_until_accepted(addr: SocketAddr, topic: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let (mut client, _) = connect_v5_with(addr, &Connect::v5(&raw::unique_id("retry"))).await;
    while Instant::now() < deadline {
        client
            .send(&publish_v5(topic, 1, 7, &[], b"m99999999 after"))
            .await;
        let puback = client.expect_kind(PUBACK).await;
        if puback.ack_reason() < 0x80 {
            return true;
        }
        sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_disk_bytes_refuses_with_0x97_and_accepts_again_once_drained() {
    let mut broker = BrokerProcess::start_with("quota", "max_disk_bytes = 400000", |_| {}).await;
    let addr = broker.addr();
    let (mut subscriber, _) = connect_v5_with(addr, &persistent_v5("quota-sub")).await;
    subscriber
        .send(&subscribe(1, Some(&[]), &[(b"quota/#", 1)]))
        .await;
    subscriber.expect_kind(SUBACK).await;
    drop(subscriber);

    let (mut publisher, _) = connect_v5_with(addr, &Connect::v5("quota-pub")).await;
    let (accepted, reason) = publish_until_refused(&mut publisher, "quota/x", 2_000).await;
    assert_eq!(reason, 0x97, "quota exceeded");
    assert!(accepted.len() > 100, "{} accepted first", accepted.len());

    // The subscriber takes its backlog; the log behind it is reclaimed and
    // publishes are accepted again, with no restart.
    let received = drain_v5(addr, "quota-sub", accepted.len()).await;
    assert_eq!(received, accepted);
    assert!(
        publish_until_accepted(addr, "quota/x", RECLAIM).await,
        "publishes accepted again once the backlog was delivered"
    );
    assert!(broker.terminate().success());
}

/// A tmpfs of `bytes` mounted on `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "mounting a small tmpfs needs root (CAP_SYS_ADMIN)"
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_0x97_keeps_serving_and_resumes_when_space_returns() {
    const DISK: u64 = 8 << 20;
    let mut disk = None;
    let mut broker = BrokerProcess::start_with("full", "", |dir| {
        disk = Some(SmallDisk::mount(&dir.join("data"), DISK));
    })
    .await;
    let addr = broker.addr();
    let data_dir = broker.data_dir();
    let (mut subscriber, _) = connect_v5_with(addr, &persistent_v5("full-sub")).await;
    subscriber
        .send(&subscribe(1, Some(&[]), &[(b"full/#", 1)]))
        .await;
    subscriber.expect_kind(SUBACK).await;
    drop(subscriber);

    // Something else on the disk takes most of it.
    let ballast = data_dir.join("ballast");
    std::fs::write(&ballast, vec![0u8; (DISK - (2 << 20)) as usize]).unwrap();

    let (mut publisher, _) = connect_v5_with(addr, &Connect::v5("full-pub")).await;
    let (accepted, reason) = publish_until_refused(&mut publisher, "full/x", 10_000).await;
    assert_eq!(reason, 0x97, "a full disk is quota exceeded, not 0x80");

    // The rest of the disk fills up too.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&ballast)
        .unwrap();
    while std::io::Write::write_all(&mut file, &[0u8; 65536]).is_ok() {}
    drop(file);

    // The broker still serves clients, and still refuses, while its disk
    // is full.
    let (mut bystander, connack) = connect_v5_with(addr, &Connect::v5("full-bystander")).await;
    assert_eq!(connack.reason, 0, "CONNACK while the disk is full");
    let (_, reason) = publish_until_refused(&mut bystander, "full/y", 1).await;
    assert_eq!(reason, 0x97);

    // Space returns: publishes are accepted again without a restart, and
    // everything acknowledged arrives.
    std::fs::remove_file(&ballast).unwrap();
    assert!(
        publish_until_accepted(addr, "full/x", RECLAIM).await,
        "publishes accepted again once space returned"
    );
    let mut expected = accepted.clone();
    expected.push(99_999_999);
    let received = drain_v5(addr, "full-sub", expected.len()).await;
    assert_eq!(received, expected);
    assert!(broker.terminate().success(), "SIGTERM still stops it");
    drop(broker);
    drop(disk);
}
