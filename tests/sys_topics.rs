//! The `$SYS/broker/...` topics as Mosquitto's own client reads them:
//! `mosquitto_sub` (3.1.1 and 5.0) against a petrel publishing them every
//! second, the ACL deciding who reads them, and clients refused when they
//! try to publish there.
//!
//! Nothing here waits for time to pass: a test reads until the rounds it
//! needs have arrived (each round starts with `$SYS/broker/uptime`), every
//! read bounded by `WAIT`. Absence is shown with a later marker from the
//! same sender, which brokers deliver in order.

mod common;
mod raw;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

use common::scratch::TempDir;
use common::{TestBroker, start_broker_with};
use petrel::config::Durability;
use petrel::store::{DiskOptions, DiskStore, Store};
use petrel::{Broker, Settings};
use raw::{
    Connect, PUBACK, PUBLISH, Publish, RawClient, SUBACK, WAIT, connect_accepted, parse_properties,
    publish, subscribe, unique_id,
};

const UPTIME: &str = "$SYS/broker/uptime";
const NOT_AUTHORIZED: u8 = 0x87;
const V311_SUBACK_FAILURE: u8 = 0x80;

/// Every topic of petrel's first round on Linux (the heap topics are read
/// from `/proc`, and left out where there is none).
const TOPICS: &[&str] = &[
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/disconnected",
    "$SYS/broker/clients/total",
    "$SYS/broker/clients/maximum",
    "$SYS/broker/clients/expired",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/publish/messages/received",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/publish/messages/dropped",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/store/messages/count",
    "$SYS/broker/heap/current",
    "$SYS/broker/heap/maximum",
    "$SYS/broker/load/messages/received/1min",
    "$SYS/broker/load/messages/received/5min",
    "$SYS/broker/load/messages/received/15min",
    "$SYS/broker/load/messages/sent/1min",
    "$SYS/broker/load/messages/sent/5min",
    "$SYS/broker/load/messages/sent/15min",
    "$SYS/broker/load/bytes/received/1min",
    "$SYS/broker/load/bytes/received/5min",
    "$SYS/broker/load/bytes/received/15min",
    "$SYS/broker/load/bytes/sent/1min",
    "$SYS/broker/load/bytes/sent/5min",
    "$SYS/broker/load/bytes/sent/15min",
    "$SYS/broker/load/connections/1min",
    "$SYS/broker/load/connections/5min",
    "$SYS/broker/load/connections/15min",
];

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone)]
struct Line {
    retained: bool,
    topic: String,
    payload: String,
}

/// A `mosquitto_sub` on `$SYS/broker/#`, its output read line by line.
/// The process is killed when this is dropped.
struct MosquittoSub {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl MosquittoSub {
    fn start(addr: SocketAddr, version: &str, extra: &[&str]) -> MosquittoSub {
        let port = addr.port().to_string();
        let id = unique_id("syssub");
        let mut command = Command::new("mosquitto_sub");
        command
            .args(["-h", "127.0.0.1", "-p", &port, "-i", &id, "-V", version])
            .args(["-t", "$SYS/broker/#"])
            // Tab-separated, since some topics hold a space
            // (`retained messages/count`); %r is the retain flag.
            .args(["-F", "%r\\t%t\\t%p"])
            // A bound of its own, should the test end without killing it.
            .args(["-W", "60"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot run mosquitto_sub (install mosquitto-clients): {error}")
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        MosquittoSub {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Waits for the process to end on its own (`-C`), successfully.
    async fn exits_successfully(mut self) {
        let status = timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("mosquitto_sub still running after {WAIT:?}"))
            .expect("mosquitto_sub can be waited for");
        assert!(status.success(), "mosquitto_sub: {status}");
    }

    async fn next(&mut self) -> Line {
        let line = timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("mosquitto_sub printed nothing within {WAIT:?}"))
            .expect("mosquitto_sub's output is readable")
            .expect("mosquitto_sub exited early");
        let mut fields = line.splitn(3, '\t');
        let (Some(retained), Some(topic), Some(payload)) =
            (fields.next(), fields.next(), fields.next())
        else {
            panic!("unexpected mosquitto_sub line {line:?}");
        };
        Line {
            retained: retained == "1",
            topic: topic.to_string(),
            payload: payload.to_string(),
        }
    }
}

/// What a subscriber knows of the tree: the retained values it was given,
/// then every live update, and the live rounds seen (each starts with the
/// uptime).
#[derive(Default)]
struct View {
    latest: HashMap<String, String>,
    retained_topics: HashSet<String>,
    uptimes: Vec<u64>,
}

impl View {
    fn apply(&mut self, line: Line) {
        if line.retained {
            self.retained_topics.insert(line.topic.clone());
        } else if line.topic == UPTIME {
            self.uptimes.push(seconds(&line.payload));
        }
        self.latest.insert(line.topic, line.payload);
    }

    fn number(&self, topic: &str) -> u64 {
        let text = self
            .latest
            .get(topic)
            .unwrap_or_else(|| panic!("nothing on {topic}"));
        text.parse()
            .unwrap_or_else(|_| panic!("{topic}: {text:?} is not a number"))
    }
}

/// The seconds of an uptime payload, `N seconds`.
fn seconds(payload: &str) -> u64 {
    payload
        .strip_suffix(" seconds")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("uptime {payload:?} is not `N seconds`"))
}

async fn sys_broker(adjust: impl FnOnce(&mut Settings)) -> TestBroker {
    start_broker_with(|settings| {
        settings.sys_interval = 1;
        adjust(settings);
    })
    .await
}

/// Publishes one retained QoS 1 message as a 3.1.1 client and disconnects,
/// waiting until the broker has closed the connection.
async fn publish_retained_and_leave(addr: SocketAddr, topic: &str) {
    let (mut client, _) = connect_accepted(addr, &Connect::v311(&unique_id("syspub"))).await;
    client
        .send(&publish(0x33, topic.as_bytes(), Some(1), None, b"kept"))
        .await;
    client.expect_kind(PUBACK).await;
    client.send(&[0xe0, 0x00]).await;
    client.expect_closed().await;
}

async fn mosquitto_sub_reads_the_tree(version: &str) {
    let broker = sys_broker(|_| {}).await;
    let addr = broker.addr;
    publish_retained_and_leave(addr, &format!("sys-test/{}", unique_id("r"))).await;

    let mut sub = MosquittoSub::start(addr, version, &[]);
    let mut view = View::default();
    // The values published after the subscription are read from the
    // second live round on: the first may have been sampled before the
    // subscriber connected. The third uptime ends the second round.
    while view.uptimes.len() < 3 {
        view.apply(sub.next().await);
    }

    // Everything came retained first, under Mosquitto's names.
    for topic in TOPICS {
        assert!(
            view.retained_topics.contains(*topic),
            "{topic} was not retained; retained: {:?}",
            view.retained_topics
        );
    }
    assert_eq!(
        view.latest["$SYS/broker/version"],
        format!("petrel {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        view.uptimes.windows(2).all(|pair| pair[0] < pair[1]),
        "uptime does not increase: {:?}",
        view.uptimes
    );
    // The publisher has gone: the subscriber is the one client.
    assert_eq!(view.number("$SYS/broker/clients/connected"), 1);
    assert_eq!(view.number("$SYS/broker/clients/total"), 1);
    assert_eq!(view.number("$SYS/broker/clients/disconnected"), 0);
    assert!(view.number("$SYS/broker/clients/maximum") >= 1);
    assert_eq!(view.number("$SYS/broker/subscriptions/count"), 1);
    // The one PUBLISH received; the `$SYS` values went out to the
    // subscriber.
    assert_eq!(view.number("$SYS/broker/messages/received"), 1);
    assert_eq!(view.number("$SYS/broker/publish/messages/received"), 1);
    assert!(view.number("$SYS/broker/messages/sent") >= TOPICS.len() as u64);
    assert!(view.number("$SYS/broker/bytes/received") > 0);
    assert!(view.number("$SYS/broker/bytes/sent") > 0);
    // The `$SYS` values themselves and the one retained publish.
    assert_eq!(
        view.number("$SYS/broker/retained messages/count"),
        TOPICS.len() as u64 + 1
    );
    assert!(view.number("$SYS/broker/heap/current") > 0);
    assert!(view.number("$SYS/broker/heap/maximum") >= view.number("$SYS/broker/heap/current"));
    for window in ["1min", "5min", "15min"] {
        let topic = format!("$SYS/broker/load/messages/received/{window}");
        let load: f64 = view.latest[&topic].parse().expect("a load is a number");
        assert!(load >= 0.0, "{topic}: {load}");
        assert_eq!(view.latest[&topic].split('.').nth(1).map(str::len), Some(2));
    }
}

#[tokio::test]
async fn mosquitto_sub_v311_reads_mosquittos_sys_topics_with_sane_values() {
    mosquitto_sub_reads_the_tree("mqttv311").await;
}

#[tokio::test]
async fn mosquitto_sub_v5_reads_mosquittos_sys_topics_with_sane_values() {
    mosquitto_sub_reads_the_tree("mqttv5").await;
}

#[tokio::test]
async fn a_new_subscriber_gets_every_topic_retained_before_any_live_value() {
    let broker = sys_broker(|_| {}).await;
    // A live uptime means the first round, which publishes every topic,
    // is complete.
    let mut first = MosquittoSub::start(broker.addr, "mqttv311", &[]);
    let mut view = View::default();
    while view.uptimes.is_empty() {
        view.apply(first.next().await);
    }

    // The snapshot is delivered whole before anything routed later, so
    // the first N messages are exactly the N topics, all retained; `-C N`
    // then ends mosquitto_sub by itself.
    let count = TOPICS.len().to_string();
    let mut late = MosquittoSub::start(broker.addr, "mqttv5", &["-C", &count]);
    let mut topics = HashSet::new();
    for _ in TOPICS {
        let line = late.next().await;
        assert!(line.retained, "{line:?} is not retained");
        assert!(topics.insert(line.topic.clone()), "{line:?} twice");
    }
    let expected: HashSet<String> = TOPICS.iter().map(|t| t.to_string()).collect();
    assert_eq!(topics, expected);
    late.exits_successfully().await;
}

/// An ACL that lets the `watcher` user read `$SYS`, and anonymous clients
/// only `marker/#`.
const ACL: &str = "\
topic readwrite marker/#

user watcher
topic read $SYS/#
topic readwrite marker/#
";

struct WithAcl {
    broker: TestBroker,
    _dir: TempDir,
}

async fn sys_broker_with_acl() -> WithAcl {
    let dir = TempDir::new("sys-acl");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let broker = sys_broker(|settings| settings.acl_file = Some(acl)).await;
    WithAcl { broker, _dir: dir }
}

async fn connect(addr: SocketAddr, v5: bool, username: Option<&str>) -> RawClient {
    let id = unique_id("sysacl");
    let connect = Connect {
        username: username.map(|name| name.as_bytes().to_vec()),
        ..if v5 {
            Connect::v5(&id)
        } else {
            Connect::v311(&id)
        }
    };
    connect_accepted(addr, &connect).await.0
}

/// The SUBACK codes for `filters`, each asked at QoS 0.
async fn subscribe_codes(client: &mut RawClient, v5: bool, filters: &[&str]) -> Vec<u8> {
    let filters: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_bytes(), 0)).collect();
    let props: &[u8] = &[];
    client
        .send(&subscribe(9, v5.then_some(props), &filters))
        .await;
    let suback = client.expect_kind(SUBACK).await;
    let after_id = &suback.body[2..];
    if v5 {
        let (_, used) = parse_properties(after_id);
        after_id[used..].to_vec()
    } else {
        after_id.to_vec()
    }
}

/// The topics of the PUBLISHes `client` receives before one on `marker`.
async fn topics_before(client: &mut RawClient, v5: bool, marker: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let publish = Publish::parse(&client.expect_kind(PUBLISH).await, v5);
        if let Some(id) = publish.packet_id {
            client.send(&raw::ack(0x40, id)).await;
        }
        let topic = String::from_utf8(publish.topic).unwrap();
        if topic == marker {
            return topics;
        }
        topics.push(topic);
    }
}

/// Waits until `client`, subscribed to the uptime, receives a live one: a
/// round was routed after everything this test did before.
async fn live_uptime(client: &mut RawClient, v5: bool) {
    loop {
        let publish = Publish::parse(&client.expect_kind(PUBLISH).await, v5);
        if publish.topic == UPTIME.as_bytes() && !publish.retain {
            return;
        }
    }
}

async fn the_acl_keeps_sys_from_an_anonymous_client(v5: bool) {
    let secured = sys_broker_with_acl().await;
    let addr = secured.broker.addr;
    let marker = format!("marker/{}", unique_id("m"));

    let mut anonymous = connect(addr, v5, None).await;
    let refused = if v5 {
        NOT_AUTHORIZED
    } else {
        V311_SUBACK_FAILURE
    };
    assert_eq!(
        subscribe_codes(
            &mut anonymous,
            v5,
            &["$SYS/#", "$SYS/broker/uptime", &marker]
        )
        .await,
        vec![refused, refused, 0x00]
    );

    // The watcher may read them: it gets the retained uptime, then a live
    // one routed after the anonymous client subscribed.
    let mut watcher = connect(addr, v5, Some("watcher")).await;
    assert_eq!(
        subscribe_codes(&mut watcher, v5, &[UPTIME]).await,
        vec![0x00]
    );
    live_uptime(&mut watcher, v5).await;

    // Neither retained nor live `$SYS` values reached the anonymous client:
    // the marker is the first thing it receives.
    let props: &[u8] = &[];
    anonymous
        .send(&publish(
            0x30,
            marker.as_bytes(),
            None,
            v5.then_some(props),
            b"m",
        ))
        .await;
    assert_eq!(
        topics_before(&mut anonymous, v5, &marker).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_v311_client_the_acl_denies_sys_gets_suback_0x80_and_no_sys_message() {
    the_acl_keeps_sys_from_an_anonymous_client(false).await;
}

#[tokio::test]
async fn a_v5_client_the_acl_denies_sys_gets_suback_0x87_and_no_sys_message() {
    the_acl_keeps_sys_from_an_anonymous_client(true).await;
}

#[tokio::test]
async fn mosquitto_sub_as_a_user_the_acl_allows_reads_sys() {
    let secured = sys_broker_with_acl().await;
    let mut sub = MosquittoSub::start(secured.broker.addr, "mqttv5", &["-u", "watcher"]);
    let mut view = View::default();
    while view.uptimes.is_empty() {
        view.apply(sub.next().await);
    }
    assert!(view.retained_topics.contains("$SYS/broker/version"));
}

/// Publishes at QoS 1 and returns the PUBACK's reason (0 on 3.1.1, whose
/// PUBACK carries none).
async fn puback_reason(client: &mut RawClient, v5: bool, topic: &str, id: u16) -> u8 {
    let props: &[u8] = &[];
    client
        .send(&publish(
            0x33,
            topic.as_bytes(),
            Some(id),
            v5.then_some(props),
            b"forged",
        ))
        .await;
    let ack = client.expect_kind(PUBACK).await;
    assert_eq!(ack.packet_id(), id);
    ack.ack_reason()
}

#[tokio::test]
async fn clients_may_not_publish_to_sys_v5_hears_0x87_and_v311_is_dropped() {
    // No rounds: only what the clients publish could appear under `$SYS`.
    let broker = start_broker_with(|_| {}).await;
    let addr = broker.addr;
    let marker = format!("marker/{}", unique_id("m"));
    let bridge_state = format!("$SYS/broker/connection/{}/state", unique_id("b"));

    let mut subscriber = connect(addr, false, None).await;
    assert_eq!(
        subscribe_codes(&mut subscriber, false, &["$SYS/#", &marker]).await,
        vec![0x00, 0x00]
    );
    let mut v5 = connect(addr, true, None).await;
    let mut v311 = connect(addr, false, None).await;
    for (n, topic) in [
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$delayed/1/$SYS/broker/version",
    ]
    .into_iter()
    .enumerate()
    {
        let id = n as u16 + 1;
        assert_eq!(
            puback_reason(&mut v5, true, topic, id).await,
            NOT_AUTHORIZED,
            "{topic}"
        );
        assert_eq!(
            puback_reason(&mut v311, false, topic, id).await,
            0x00,
            "{topic}"
        );
    }
    // A bridge's state topic is the one exception, as in Mosquitto.
    assert_eq!(puback_reason(&mut v5, true, &bridge_state, 9).await, 0x00);
    puback_reason(&mut v5, true, &marker, 10).await;
    assert_eq!(
        topics_before(&mut subscriber, false, &marker).await,
        vec![bridge_state.clone()]
    );

    // Nothing forged was retained either; the bridge state was.
    let mut late = connect(addr, false, None).await;
    assert_eq!(
        subscribe_codes(&mut late, false, &["$SYS/#", &marker]).await,
        vec![0x00, 0x00]
    );
    puback_reason(&mut v311, false, &marker, 11).await;
    assert_eq!(
        topics_before(&mut late, false, &marker).await,
        vec![bridge_state]
    );
}

#[tokio::test]
async fn sys_values_are_never_written_to_the_store_and_do_not_survive_a_restart() {
    let dir = TempDir::new("sys-store");
    let options = DiskOptions {
        segment_bytes: 1 << 20,
        max_disk_bytes: u64::MAX,
    };
    let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path(), options).expect("opens"));
    let on_disk = |sys_interval| Settings {
        durability: Durability::Sync,
        sys_interval,
        ..Settings::ephemeral()
    };
    let kept = format!("sys-test/{}", unique_id("kept"));

    let first = Broker::start_with_store(on_disk(1), store.clone())
        .await
        .expect("starts");
    let addr = first.local_addrs()[0];
    publish_retained_and_leave(addr, &kept).await;
    // A live round after the publish: the `$SYS` values were replaced at
    // least once while a retained message of a client's was stored.
    let mut watcher = connect(addr, false, None).await;
    assert_eq!(
        subscribe_codes(&mut watcher, false, &[UPTIME]).await,
        vec![0x00]
    );
    live_uptime(&mut watcher, false).await;
    drop(watcher);
    first.shutdown().await;

    // Restarted without rounds: the client's retained message is back, no
    // `$SYS` value is.
    let second = Broker::start_with_store(on_disk(0), store.clone())
        .await
        .expect("restarts");
    let addr = second.local_addrs()[0];
    let marker = format!("marker/{}", unique_id("m"));
    let mut late = connect(addr, false, None).await;
    assert_eq!(
        subscribe_codes(&mut late, false, &["$SYS/#", "sys-test/#", &marker]).await,
        vec![0x00, 0x00, 0x00]
    );
    late.send(&publish(0x30, marker.as_bytes(), None, None, b"m"))
        .await;
    assert_eq!(topics_before(&mut late, false, &marker).await, vec![kept]);
    drop(late);
    second.shutdown().await;
}

#[tokio::test]
async fn a_will_under_sys_is_refused_at_connect() {
    let broker = petrel::Broker::start(petrel::Settings::ephemeral())
        .await
        .expect("broker starts");
    let addr = broker.local_addrs()[0];
    let connect = raw::Connect {
        will: Some(raw::Will {
            topic: b"$SYS/broker/uptime".to_vec(),
            payload: b"forged".to_vec(),
            qos: 0,
            retain: true,
            properties: Vec::new(),
        }),
        ..raw::Connect::v5("forger")
    };
    let mut client = raw::RawClient::connect(addr).await;
    client.send(&connect.encode()).await;
    let connack = raw::Connack::parse_v5(&client.expect_kind(raw::CONNACK).await);
    assert_eq!(connack.reason, 0x87);
    broker.shutdown().await;
}
