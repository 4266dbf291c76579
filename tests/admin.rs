//! The admin HTTP API and `petrel streams`: a broker with a stream and a
//! consumer group reading it, and what the API and the command show of them.

mod common;
mod raw;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::WAIT;
use common::mqtt::{Client4, v4api};
use common::ports::free_port;
use common::scratch::TempDir;
use petrel::admin::client::{self, ClientError};
use petrel::config::Admin;
use petrel::stream::StreamConfig;
use petrel::{Broker, BrokerError, Settings};
use raw::{PUBACK, publish_v311};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::Instant;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// How often a test asks the API again while it waits for a state.
const POLL: Duration = Duration::from_millis(20);

/// "device-1" (topic level 1) is in partition 1 of 8 and of 2 (FNV-1a 64,
/// pinned in `stream::key`).
const DEVICE_1: &str = "orders/device-1/new";

fn orders(partitions: u32) -> StreamConfig {
    StreamConfig {
        partitions,
        key: "topic:1".into(),
        // A group created after the messages were published reads them.
        start: "earliest".into(),
        ..StreamConfig::new("orders", &["orders/#"])
    }
}

async fn start(token: Option<&str>) -> Broker {
    let settings = Settings {
        streams: vec![orders(8)],
        admin: common::loopback_admin(token),
        ..Settings::ephemeral()
    };
    Broker::start(settings).await.expect("broker starts")
}

fn admin_addr(broker: &Broker) -> String {
    broker
        .admin_addr()
        .expect("the admin API is configured")
        .to_string()
}

async fn publish_acknowledged(mqtt: SocketAddr, topic: &str, count: u16) {
    let mut publisher = raw::connect_v311(mqtt, &raw::unique_id("pub")).await;
    for packet_id in 1..=count {
        publisher
            .send(&publish_v311(topic, 1, packet_id, b"order"))
            .await;
        publisher.expect_kind(PUBACK).await;
    }
}

/// Asks `GET path` until `ready` holds for the JSON answer; fails after
/// `WAIT`, showing the last answer.
async fn answer_when(
    addr: &str,
    token: Option<&str>,
    path: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = client::get(addr, token, path)
            .await
            .expect("the admin API answers");
        let answer: Value = serde_json::from_slice(&body).expect("the answer is JSON");
        if ready(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never showed the expected state; last answer: {answer:#}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The report of group `group` on partition `partition` of the first
/// stream, when the group exists.
fn group_partition<'a>(streams: &'a Value, group: &str, partition: u64) -> Option<&'a Value> {
    streams[0]["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["partition"] == partition)
}

#[tokio::test]
async fn the_api_shows_end_offsets_and_a_groups_committed_offset_and_lag() {
    let broker = start(None).await;
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    publish_acknowledged(mqtt, DEVICE_1, 3).await;

    let streams = answer_when(&admin, None, "/v1/streams", |s| {
        s[0]["partitions"][1]["end"] == 3
    })
    .await;
    assert_eq!(streams.as_array().unwrap().len(), 1);
    assert_eq!(streams[0]["name"], "orders");
    assert_eq!(streams[0]["filters"], json!(["orders/#"]));
    assert_eq!(streams[0]["key"], "topic:1");
    let ends: Vec<&Value> = streams[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["end"])
        .collect();
    assert_eq!(ends, [0, 3, 0, 0, 0, 0, 0, 0]);
    assert_eq!(streams[0]["groups"], json!([]), "nobody reads yet");

    let consumer_id = common::ids::unique_id("consumer");
    let (mut consumer, _) = Client4::connect(mqtt, &consumer_id, |options| {
        options.set_manual_acks(true);
    })
    .await;
    let granted = consumer
        .subscribe("$share/g/$stream/orders", v4api::QoS::AtLeastOnce)
        .await;
    assert_eq!(
        granted,
        [v4api::SubscribeReasonCode::Success(v4api::QoS::AtLeastOnce)]
    );
    let first = consumer.next_publish().await;
    assert_eq!(first.topic, DEVICE_1);

    // Delivered, not yet acknowledged: nothing committed, all three lag.
    let streams = answer_when(&admin, None, "/v1/streams", |s| {
        group_partition(s, "g", 1).is_some_and(|p| p["inflight"] == 1)
    })
    .await;
    let reading = group_partition(&streams, "g", 1).unwrap();
    assert_eq!(reading["committed"], 0);
    assert_eq!(reading["lag"], 3);
    assert_eq!(reading["owner"], consumer_id.as_str());
    assert_eq!(streams[0]["groups"][0]["members"], json!([consumer_id]));

    consumer.client.ack(&first).await.unwrap();
    for _ in 0..2 {
        let next = consumer.next_publish().await;
        consumer.client.ack(&next).await.unwrap();
    }
    let streams = answer_when(&admin, None, "/v1/streams", |s| {
        group_partition(s, "g", 1).is_some_and(|p| p["committed"] == 3)
    })
    .await;
    let read = group_partition(&streams, "g", 1).unwrap();
    assert_eq!(read["lag"], 0);
    assert_eq!(read["inflight"], 0);
    assert_eq!(streams[0]["groups"][0]["skipped"], 0);

    let one = client::get(&admin, None, "/v1/streams/orders")
        .await
        .unwrap();
    let one: Value = serde_json::from_slice(&one).unwrap();
    assert_eq!(one, streams[0], "one stream, as the list shows it");

    consumer.disconnect().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_streams_and_paths_are_json_404s() {
    let broker = start(None).await;
    let admin = admin_addr(&broker);
    for (path, expected) in [
        ("/v1/streams/invoices", "no stream named `invoices`"),
        ("/v1/nothing", "no such endpoint: /v1/nothing"),
        ("/nothing", "no such endpoint: /nothing"),
    ] {
        match client::get(&admin, None, path).await {
            Err(ClientError::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, 404, "{path}");
                assert_eq!(message, expected, "{path}");
            }
            other => panic!("GET {path}: expected a 404, got {other:?}"),
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_configured_token_is_required_on_every_request() {
    let broker = start(Some("s3cret")).await;
    let admin = admin_addr(&broker);
    for (token, path) in [
        (None, "/v1/streams"),
        (Some("s3cre"), "/v1/streams"),
        (Some("s3cret-and-more"), "/v1/streams"),
        (None, "/v1/nothing"),
    ] {
        match client::get(&admin, token, path).await {
            Err(ClientError::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, 401, "token {token:?} on {path}");
                assert_eq!(message, "missing or wrong bearer token");
            }
            other => panic!("token {token:?} on {path}: expected a 401, got {other:?}"),
        }
    }
    let streams = client::get(&admin, Some("s3cret"), "/v1/streams")
        .await
        .expect("the right token is let in");
    let streams: Value = serde_json::from_slice(&streams).unwrap();
    assert_eq!(streams[0]["name"], "orders");

    // RFC 6750: the refusal names the scheme to use.
    let refusal = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(admin).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket
            .write_all(b"GET /v1/streams HTTP/1.1\r\nHost: petrel\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer.to_ascii_lowercase()
    })
    .await
    .unwrap();
    assert!(refusal.starts_with("http/1.1 401"), "{refusal}");
    assert!(refusal.contains("www-authenticate: bearer"), "{refusal}");
    assert!(refusal.contains("application/json"), "{refusal}");
    broker.shutdown().await;
}

#[tokio::test]
async fn an_admin_address_in_use_stops_the_start_naming_admin_bind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let settings = Settings {
        admin: Some(Admin {
            bind: taken.local_addr().unwrap(),
            token: None,
        }),
        ..Settings::ephemeral()
    };
    match Broker::start(settings).await {
        Err(error @ BrokerError::AdminBind { .. }) => {
            assert!(error.to_string().contains("admin.bind"), "{error}");
        }
        Err(other) => panic!("expected AdminBind, got {other}"),
        Ok(_) => panic!("the broker started on an address in use"),
    }
}

/// A `petrel serve` child, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `petrel streams` with `args`, pointed at `admin` with `token` through
/// the environment, as an operator's shell would.
async fn petrel_streams(admin: &str, token: &str, args: &[&str]) -> Output {
    Command::new(PETREL)
        .arg("streams")
        .args(args)
        .env("PETREL_ADMIN", admin)
        .env("PETREL_ADMIN_TOKEN", token)
        .output()
        .await
        .expect("petrel runs")
}

/// Runs `petrel streams --json` until it succeeds and `ready` holds for its
/// output; fails after `WAIT` (covers the broker's start too).
async fn json_when(admin: &str, token: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let output = petrel_streams(admin, token, &["--json"]).await;
        let shown = output
            .status
            .success()
            .then(|| serde_json::from_slice::<Value>(&output.stdout).ok())
            .flatten();
        if let Some(streams) = &shown
            && ready(streams)
        {
            return streams.clone();
        }
        assert!(
            Instant::now() < deadline,
            "`petrel streams --json` never showed the expected state; last: {shown:?}, stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The lines of `text` as whitespace-separated fields.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|line| line.split_whitespace().collect())
        .collect()
}

#[tokio::test]
async fn petrel_streams_shows_a_serving_brokers_streams_as_tables_and_json() {
    let dir = TempDir::new("admin-cli");
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = format!("127.0.0.1:{}", free_port());
    let token = "t0ken";
    let config = dir.path().join("petrel.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
durability = "memory"

[[listeners]]
bind = "{mqtt}"

[[streams]]
name = "orders"
filters = ["orders/#"]
partitions = 2
key = "topic:1"
start = "earliest"

[admin]
bind = "{admin}"
token = "{token}"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();
    // The variables `petrel streams` reads are set for `serve` too, as in an
    // operator's shell: they are not settings and must not be refused.
    let _serving = Serving(
        std::process::Command::new(PETREL)
            .args(["serve", "-c"])
            .arg(&config)
            .env("PETREL_ADMIN", &admin)
            .env("PETREL_ADMIN_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    json_when(&admin, token, |streams| streams[0]["name"] == "orders").await;

    publish_acknowledged(mqtt, DEVICE_1, 3).await;
    let consumer_id = common::ids::unique_id("consumer");
    let (mut consumer, _) = Client4::connect(mqtt, &consumer_id, |_| {}).await;
    consumer
        .subscribe("$share/g/$stream/orders", v4api::QoS::AtLeastOnce)
        .await;
    for _ in 0..3 {
        consumer.next_publish().await;
    }
    let streams = json_when(&admin, token, |streams| {
        group_partition(streams, "g", 1).is_some_and(|p| p["committed"] == 3)
    })
    .await;
    assert_eq!(streams[0]["partitions"][1]["end"], 3);
    assert_eq!(streams[0]["partitions"][0]["end"], 0);

    let output = petrel_streams(&admin, token, &[]).await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines = rows(&text);
    assert!(
        text.starts_with("stream orders  filters: orders/#  key: topic:1\n"),
        "{text}"
    );
    for expected in [
        vec!["PARTITION", "START", "END"],
        vec!["0", "0", "0"],
        vec!["1", "0", "3"],
        vec![
            "GROUP",
            "PARTITION",
            "COMMITTED",
            "LAG",
            "INFLIGHT",
            "RETRYING",
            "OWNER",
        ],
        vec!["g", "1", "3", "0", "0", "0", consumer_id.as_str()],
        vec!["members", "of", "g:", consumer_id.as_str()],
    ] {
        assert!(lines.contains(&expected), "no line {expected:?} in\n{text}");
    }

    // Flags win over the environment.
    let refused = petrel_streams(&admin, token, &["--token", "wrong"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("missing or wrong bearer token"),
        "{stderr}"
    );
    let nobody = format!("127.0.0.1:{}", free_port());
    let unreachable = petrel_streams(&admin, token, &["--admin", &nobody]).await;
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the admin API at {nobody}")),
        "{stderr}"
    );

    consumer.disconnect().await;
}

#[test]
fn serve_refuses_an_admin_api_open_to_the_network_without_a_token() {
    let dir = TempDir::new("admin-open");
    let config = dir.path().join("petrel.toml");
    std::fs::write(&config, "[admin]\nbind = \"0.0.0.0:9100\"\n").unwrap();
    let output = std::process::Command::new(PETREL)
        .args(["serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`admin.token`"), "{stderr}");
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_redriven_into_their_stream() {
    let dir = TempDir::new("admin-dlq");
    let options = petrel::store::DiskOptions {
        segment_bytes: 1 << 20,
        max_disk_bytes: u64::MAX,
    };
    let store: std::sync::Arc<dyn petrel::store::Store> =
        std::sync::Arc::new(petrel::store::DiskStore::open(dir.path(), options).unwrap());
    let settings = Settings {
        durability: petrel::config::Durability::Sync,
        streams: vec![StreamConfig {
            max_attempts: 1,
            ..orders(1)
        }],
        admin: common::loopback_admin(None),
        ..Settings::ephemeral()
    };
    let broker = Broker::start_with_store(settings, store)
        .await
        .expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    publish_acknowledged(mqtt, DEVICE_1, 2).await;

    let mut member = raw::stream_member_v5(mqtt, "$share/g/$stream/orders").await;
    let refuse_then_take = |refuse: bool, packet: raw::Packet| {
        let publish = raw::Publish::parse(&packet, true);
        let id = publish.packet_id.expect("QoS 1");
        let ack = if refuse {
            raw::ack_with_reason(0x40, id, 0x80)
        } else {
            raw::ack(0x40, id)
        };
        (publish, ack)
    };
    // One attempt allowed: the refused first message is a dead letter.
    let (_, ack) = refuse_then_take(true, member.expect_kind(raw::PUBLISH).await);
    member.send(&ack).await;
    let (second, ack) = refuse_then_take(false, member.expect_kind(raw::PUBLISH).await);
    member.send(&ack).await;
    assert_eq!(second.payload, b"order");

    let queues = answer_when(&admin, None, "/v1/dlq", |q| q[0]["count"] == 1).await;
    assert_eq!(
        queues,
        json!([{"group": "g", "stream": "orders", "count": 1}])
    );
    let streams = answer_when(&admin, None, "/v1/streams", |s| {
        s[0]["groups"][0]["dead_letters"] == 1
    })
    .await;
    assert_eq!(streams[0]["groups"][0]["name"], "g");
    let letters = client::get(&admin, None, "/v1/dlq/g/orders").await.unwrap();
    let letters: Value = serde_json::from_slice(&letters).unwrap();
    assert_eq!(letters[0]["offset"], 0);
    assert_eq!(letters[0]["key"], "device-1");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["reason"], "0x80");
    assert_eq!(letters[0]["topic"], DEVICE_1);
    assert_eq!(letters[0]["payload"], "order");

    let done = client::post(&admin, None, "/v1/dlq/g/orders/redrive?key=device-1")
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&done).unwrap(),
        json!({"redriven": 1})
    );
    // Back in the stream at a new offset, and read again.
    let again = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    assert_eq!(again.payload, b"order");
    let offset = ("offset".to_string(), "2".to_string());
    assert!(again.user_properties().contains(&offset), "{again:?}");
    answer_when(&admin, None, "/v1/dlq", |q| q == &json!([])).await;
    answer_when(&admin, None, "/v1/streams", |s| {
        s[0]["groups"][0]["dead_letters"] == 0
    })
    .await;
    broker.shutdown().await;
}

/// The value of the sample `line_start` (metric name and labels) in a
/// Prometheus text exposition.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

async fn metrics_when(admin: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = client::get(admin, None, "/metrics")
            .await
            .expect("/metrics answers");
        let text = String::from_utf8(body.to_vec()).expect("text");
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed the expected state; last:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn metrics_count_retries_by_attempt_dead_letters_by_group_and_delay_lateness() {
    let settings = Settings {
        streams: vec![StreamConfig {
            max_attempts: 2,
            retry_backoff: vec!["20ms".into()],
            ..orders(1)
        }],
        admin: common::loopback_admin(None),
        ..Settings::ephemeral()
    };
    let broker = Broker::start(settings).await.expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    let before = metrics_when(&admin, |_| true).await;
    for family in [
        "# TYPE petrel_connections gauge",
        "# TYPE petrel_messages_received_total counter",
        "# TYPE petrel_delayed_lateness_seconds histogram",
    ] {
        assert!(before.contains(family), "{family} in\n{before}");
    }
    assert_eq!(sample(&before, "petrel_delayed_pending"), Some(0.0));

    let (mut watcher, _) = raw::connect_v5(mqtt, &raw::unique_id("late")).await;
    watcher
        .send(&raw::subscribe(1, Some(&[]), &[(b"later/#", 0)]))
        .await;
    watcher.expect_kind(raw::SUBACK).await;
    let mut delayer = raw::connect_v311(mqtt, &raw::unique_id("delay")).await;
    delayer
        .send(&publish_v311("$delayed/1/later/x", 1, 1, b"d"))
        .await;
    delayer.expect_kind(PUBACK).await;
    let pending = metrics_when(&admin, |t| sample(t, "petrel_delayed_pending") == Some(1.0)).await;
    assert_eq!(
        sample(&pending, "petrel_delayed_lateness_seconds_count"),
        Some(0.0)
    );
    watcher.expect_kind(raw::PUBLISH).await;
    metrics_when(&admin, |t| {
        sample(t, "petrel_delayed_lateness_seconds_count") == Some(1.0)
            && sample(t, "petrel_delayed_pending") == Some(0.0)
    })
    .await;

    publish_acknowledged(mqtt, DEVICE_1, 1).await;
    let mut member = raw::stream_member_v5(mqtt, "$share/g/$stream/orders").await;
    for _ in 0..2 {
        let delivery = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
        let id = delivery.packet_id.expect("QoS 1");
        member.send(&raw::ack_with_reason(0x40, id, 0x80)).await;
    }
    let text = metrics_when(&admin, |t| {
        sample(
            t,
            "petrel_stream_dead_lettered_total{stream=\"orders\",group=\"g\"}",
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "petrel_stream_retries_total{stream=\"orders\",group=\"g\",attempt=\"2\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "petrel_stream_deliveries_failed_total"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "petrel_stream_group_dead_letters{stream=\"orders\",group=\"g\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "petrel_stream_group_lag{stream=\"orders\",group=\"g\"}"
        ),
        Some(0.0),
        "the dead letter was read past"
    );
    assert_eq!(sample(&text, "petrel_stream_appends_total"), Some(1.0));
    broker.shutdown().await;
}

#[tokio::test]
async fn metrics_count_connections_sessions_messages_by_qos_bytes_and_the_journal() {
    let dir = TempDir::new("admin-metrics-disk");
    let settings = Settings {
        durability: petrel::config::Durability::Sync,
        data_dir: dir.path().to_path_buf(),
        admin: common::loopback_admin(None),
        ..Settings::ephemeral()
    };
    let broker = Broker::start(settings).await.expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    // A persistent session: its copies are journalled, so the journal
    // flushes.
    let persistent = raw::persistent_v311(&raw::unique_id("sub"));
    let (mut subscriber, _) = raw::connect_accepted(mqtt, &persistent).await;
    subscriber
        .send(&raw::subscribe(1, None, &[(b"m/#", 1)]))
        .await;
    subscriber.expect_kind(raw::SUBACK).await;
    publish_acknowledged(mqtt, "m/x", 3).await;
    for _ in 0..3 {
        let delivery = raw::Publish::parse(&subscriber.expect_kind(raw::PUBLISH).await, false);
        subscriber
            .send(&raw::ack(0x40, delivery.packet_id.expect("QoS 1")))
            .await;
    }
    let text = metrics_when(&admin, |t| {
        sample(t, "petrel_messages_sent_total{qos=\"1\"}") == Some(3.0)
            && sample(t, "petrel_inflight_messages") == Some(0.0)
    })
    .await;
    for (line, value) in [
        ("petrel_messages_received_total{qos=\"1\"}", 3.0),
        ("petrel_messages_received_total{qos=\"0\"}", 0.0),
        ("petrel_sessions{state=\"online\"}", 1.0),
        ("petrel_subscriptions", 1.0),
        ("petrel_connections", 1.0),
        ("petrel_connections_opened_total", 2.0),
        ("petrel_connections_maximum", 2.0),
        ("petrel_queued_messages", 0.0),
        ("petrel_sessions_persistent", 1.0),
    ] {
        assert_eq!(sample(&text, line), Some(value), "{line} in\n{text}");
    }
    let received = sample(&text, "petrel_received_bytes_total").unwrap();
    let sent = sample(&text, "petrel_sent_bytes_total").unwrap();
    assert!(
        received > 3.0 * 7.0 && sent > 3.0 * 7.0,
        "{received} {sent}"
    );
    let flushes = sample(&text, "petrel_journal_flush_seconds_count").unwrap();
    assert!(flushes >= 1.0, "a sync journal flushed: {flushes}");
    assert!(sample(&text, "petrel_disk_bytes{kind=\"log\"}").unwrap() > 0.0);
    broker.shutdown().await;
}
