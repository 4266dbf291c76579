//! The admin API's clients, sessions, subscriptions and retained messages,
//! and `petrel ctl`, against a broker with real MQTT clients connected.

mod common;
mod raw;

use std::net::SocketAddr;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::WAIT;
use common::mqtt::{Client4, v4api};
use common::ports::free_port;
use common::scratch::TempDir;
use petrel::admin::client::{self, ClientError};
use petrel::stream::StreamConfig;
use petrel::{Broker, Settings};
use raw::{Connect, RawClient};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::Instant;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// How often a test asks the API again while it waits for a state.
const POLL: Duration = Duration::from_millis(20);

/// A client id that needs escaping in a path: `/`, a space, non-ASCII.
const ODD_ID: &str = "fleet/dev 7 é";
const ODD_ID_PATH: &str = "fleet%2Fdev%207%20%C3%A9";

async fn start(token: Option<&str>) -> Broker {
    let settings = Settings {
        streams: vec![StreamConfig {
            start: "earliest".into(),
            ..StreamConfig::new("orders", &["orders/#"])
        }],
        admin: common::loopback_admin(token),
        ..Settings::ephemeral()
    };
    Broker::start(settings).await.expect("broker starts")
}

fn admin_addr(broker: &Broker) -> String {
    broker.admin_addr().expect("admin configured").to_string()
}

async fn get(admin: &str, path: &str) -> Value {
    let body = client::get(admin, None, path)
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    serde_json::from_slice(&body).expect("JSON")
}

/// Asks `GET path` until `ready` holds; fails after `WAIT` with the last
/// answer.
async fn answer_when(admin: &str, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = get(admin, path).await;
        if ready(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never showed the expected state; last: {answer:#}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The status and message of an answer that must be an error.
fn refusal(answer: Result<bytes::Bytes, ClientError>) -> (u16, String) {
    match answer {
        Err(ClientError::Refused {
            status, message, ..
        }) => (status.as_u16(), message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// A v5 client with a session that outlives the connection, subscribed to
/// `filters` at QoS 1 (subscription identifier 9).
async fn persistent_v5(mqtt: SocketAddr, id: &str, filters: &[&str]) -> RawClient {
    let connect = Connect {
        properties: raw::prop_u32(raw::SESSION_EXPIRY_INTERVAL, 3600),
        ..Connect::v5(id)
    };
    let (mut client, _) = raw::connect_v5_with(mqtt, &connect).await;
    let filters: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_bytes(), 1)).collect();
    // Subscription Identifier (0x0B) 9.
    client
        .send(&raw::subscribe(1, Some(&[0x0b, 9]), &filters))
        .await;
    client.expect_kind(raw::SUBACK).await;
    client
}

#[tokio::test]
async fn clients_are_listed_filtered_and_shown_with_their_subscriptions() {
    let broker = start(None).await;
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    let _odd = persistent_v5(mqtt, ODD_ID, &["sensors/+/temp", "alerts/#"]).await;
    let (mut plain, _) = Client4::connect(mqtt, "plain-311", |_| {}).await;
    plain.subscribe("sensors/#", v4api::QoS::AtMostOnce).await;
    let gone = persistent_v5(mqtt, "fleet/parked", &["alerts/#"]).await;
    drop(gone);

    let offline = answer_when(&admin, "/v1/clients?online=false", |c| c["total"] == 1).await;
    assert_eq!(offline["clients"][0]["client_id"], "fleet/parked");
    assert_eq!(offline["clients"][0]["online"], false);
    assert!(offline["clients"][0]["disconnected_at"].is_u64());

    let all = get(&admin, "/v1/clients").await;
    assert_eq!(all["total"], 3);
    let ids: Vec<&Value> = all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["client_id"])
        .collect();
    assert_eq!(ids, [ODD_ID, "fleet/parked", "plain-311"], "by client id");

    let fleet_online = get(&admin, "/v1/clients?online=true&prefix=fleet%2F").await;
    assert_eq!(fleet_online["total"], 1);
    assert_eq!(
        fleet_online["clients"][0],
        json!({
            "client_id": ODD_ID, "online": true, "username": null,
            "disconnected_at": null, "subscriptions": 2, "queued": 0, "inflight": 0,
        })
    );
    let limited = get(&admin, "/v1/clients?limit=1").await;
    assert_eq!(limited["total"], 3);
    assert_eq!(limited["clients"].as_array().unwrap().len(), 1);

    let detail = get(&admin, &format!("/v1/clients/{ODD_ID_PATH}")).await;
    assert_eq!(detail["client"]["client_id"], ODD_ID);
    assert_eq!(
        detail["subscriptions"],
        json!([
            {"client_id": ODD_ID, "filter": "alerts/#", "qos": 1, "no_local": false,
             "retain_as_published": false, "retain_handling": 0, "subscription_id": 9},
            {"client_id": ODD_ID, "filter": "sensors/+/temp", "qos": 1, "no_local": false,
             "retain_as_published": false, "retain_handling": 0, "subscription_id": 9},
        ])
    );

    let theirs = get(&admin, "/v1/subscriptions?client=plain-311").await;
    assert_eq!(theirs["total"], 1);
    assert_eq!(theirs["subscriptions"][0]["filter"], "sensors/#");
    assert_eq!(theirs["subscriptions"][0]["qos"], 0);
    let every = get(&admin, "/v1/subscriptions").await;
    assert_eq!(every["total"], 4);

    let (status, message) = refusal(client::get(&admin, None, "/v1/clients/nobody").await);
    assert_eq!((status, message.as_str()), (404, "no client `nobody`"));
    let (status, _) = refusal(client::get(&admin, None, "/v1/subscriptions?client=nobody").await);
    assert_eq!(status, 404);
    plain.disconnect().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn kicking_a_v5_client_sends_administrative_action_and_keeps_its_session() {
    let broker = start(None).await;
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    let mut kicked = persistent_v5(mqtt, ODD_ID, &["alerts/#"]).await;
    let mut old = raw::connect_v311(mqtt, "old-311").await;

    let done = client::post(
        &admin,
        None,
        &format!("/v1/clients/{ODD_ID_PATH}/disconnect"),
    )
    .await
    .expect("disconnected");
    let done: Value = serde_json::from_slice(&done).unwrap();
    assert_eq!(done, json!({"client_id": ODD_ID, "disconnected": true}));
    // DISCONNECT 0x98 (Administrative action), then the close.
    kicked.expect_disconnect_then_close(&[0x98]).await;
    // 3.1.1 has no DISCONNECT from the server: the connection just closes.
    client::post(&admin, None, "/v1/clients/old-311/disconnect")
        .await
        .expect("disconnected");
    old.expect_closed().await;

    let session = answer_when(&admin, &format!("/v1/sessions/{ODD_ID_PATH}"), |s| {
        s["session"]["online"] == false
    })
    .await;
    assert_eq!(session["subscriptions"][0]["filter"], "alerts/#");
    let overview = get(&admin, "/v1/overview").await;
    assert_eq!(overview["admin_actions"]["disconnects"], 2);

    let (status, message) = refusal(
        client::post(
            &admin,
            None,
            &format!("/v1/clients/{ODD_ID_PATH}/disconnect"),
        )
        .await,
    );
    assert_eq!(status, 409);
    assert_eq!(message, format!("client `{ODD_ID}` is not connected"));
    let (status, _) = refusal(client::post(&admin, None, "/v1/clients/nobody/disconnect").await);
    assert_eq!(status, 404);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_deleted_persistent_session_is_gone_and_a_reconnect_starts_afresh() {
    let broker = start(None).await;
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    let id = "parked-311";
    let (mut parked, present) = raw::connect_accepted(mqtt, &raw::persistent_v311(id)).await;
    assert!(!present);
    parked
        .send(&raw::subscribe(1, None, &[(b"alerts/#", 1)]))
        .await;
    parked.expect_kind(raw::SUBACK).await;
    parked.send(&[0xe0, 0x00]).await;
    parked.expect_closed().await;
    let session = answer_when(&admin, &format!("/v1/sessions/{id}"), |s| {
        s["session"]["online"] == false
    })
    .await;
    assert_eq!(session["session"]["persistent"], true);
    assert_eq!(session["session"]["subscriptions"], 1);

    let done = client::delete(&admin, None, &format!("/v1/sessions/{id}"))
        .await
        .expect("deleted");
    let done: Value = serde_json::from_slice(&done).unwrap();
    assert_eq!(done, json!({"client_id": id, "deleted": true}));
    let (status, _) = refusal(client::get(&admin, None, &format!("/v1/sessions/{id}")).await);
    assert_eq!(status, 404);
    assert_eq!(get(&admin, "/v1/sessions").await["total"], 0);
    let (_again, present) = raw::connect_accepted(mqtt, &raw::persistent_v311(id)).await;
    assert!(!present, "session present 0: the session was deleted");

    // A connected session's client is told why it goes.
    let mut online = persistent_v5(mqtt, ODD_ID, &["alerts/#"]).await;
    client::delete(&admin, None, &format!("/v1/sessions/{ODD_ID_PATH}"))
        .await
        .expect("deleted");
    online.expect_disconnect_then_close(&[0x98]).await;
    let connect = Connect {
        properties: raw::prop_u32(raw::SESSION_EXPIRY_INTERVAL, 3600),
        clean: false,
        ..Connect::v5(ODD_ID)
    };
    let (_back, connack) = raw::connect_v5_with(mqtt, &connect).await;
    assert!(!connack.session_present);
    assert_eq!(
        get(&admin, "/v1/overview").await["admin_actions"]["sessions_deleted"],
        2
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_messages_are_listed_by_prefix_and_deleted_by_topic() {
    let broker = start(None).await;
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    let mut publisher = raw::connect_v311(mqtt, "retainer").await;
    for (id, topic, payload) in [
        (1, "sites/α b/temp", "21.5"),
        (2, "sites/north/temp", "19"),
        (3, "other/x", "1"),
    ] {
        publisher
            .send(&raw::publish(
                0x33,
                topic.as_bytes(),
                Some(id),
                None,
                payload.as_bytes(),
            ))
            .await;
        publisher.expect_kind(raw::PUBACK).await;
    }
    let sites = get(&admin, "/v1/retained?prefix=sites%2F").await;
    assert_eq!(sites["total"], 2);
    assert_eq!(
        sites["retained"][0],
        json!({"topic": "sites/north/temp", "qos": 1, "payload_bytes": 2, "payload": "19",
               "payload_truncated": false, "expires_at": null, "content_type": null})
    );
    assert_eq!(sites["retained"][1]["topic"], "sites/α b/temp");
    assert_eq!(get(&admin, "/v1/retained").await["total"], 3);
    assert_eq!(
        get(&admin, "/v1/retained?limit=1").await["retained"][0]["topic"],
        "other/x"
    );

    let done = client::delete(&admin, None, "/v1/retained?topic=sites%2F%CE%B1%20b%2Ftemp")
        .await
        .expect("deleted");
    assert_eq!(
        serde_json::from_slice::<Value>(&done).unwrap(),
        json!({"topic": "sites/α b/temp", "deleted": true})
    );
    let (status, message) =
        refusal(client::delete(&admin, None, "/v1/retained?topic=sites%2F%CE%B1%20b%2Ftemp").await);
    assert_eq!(
        (status, message.as_str()),
        (404, "no retained message on `sites/α b/temp`")
    );

    // A new subscriber gets the one left, then the marker published after.
    let mut subscriber = raw::connect_v311(mqtt, "late-subscriber").await;
    subscriber
        .send(&raw::subscribe(1, None, &[(b"sites/#", 0)]))
        .await;
    subscriber.expect_kind(raw::SUBACK).await;
    publisher
        .send(&raw::publish_v311("sites/marker", 0, 0, b"marker"))
        .await;
    let mut seen = Vec::new();
    loop {
        let publish = raw::Publish::parse(&subscriber.expect_kind(raw::PUBLISH).await, false);
        if publish.topic == b"sites/marker" {
            break;
        }
        seen.push(String::from_utf8(publish.topic).unwrap());
    }
    assert_eq!(seen, ["sites/north/temp"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_overview_counts_connections_messages_subscriptions_and_stream_lag() {
    let broker = start(None).await;
    let mqtt = broker.local_addrs()[0];
    let admin = admin_addr(&broker);
    let _a = persistent_v5(mqtt, "watcher-a", &["sensors/#", "alerts/#"]).await;
    let _b = persistent_v5(mqtt, "watcher-b", &["sensors/#"]).await;
    let mut member = persistent_v5(mqtt, "member", &["$share/billing/$stream/orders"]).await;
    let mut publisher = raw::connect_v311(mqtt, "publisher").await;
    for id in 1..=3 {
        publisher
            .send(&raw::publish_v311("orders/dev-1/new", 1, id, b"order"))
            .await;
        publisher.expect_kind(raw::PUBACK).await;
    }
    // Handed out, never acknowledged: all three lag.
    member.expect_kind(raw::PUBLISH).await;

    let overview = answer_when(&admin, "/v1/overview", |o| {
        o["streams"][0]["groups"][0]["inflight"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(overview["connections"], 4);
    assert_eq!(overview["sessions_online"], 4);
    assert_eq!(overview["sessions_offline"], 0);
    assert_eq!(overview["subscriptions"], 4);
    assert_eq!(overview["messages_received"], 3);
    assert_eq!(
        overview["top_subscriptions"][0],
        json!({"filter": "sensors/#", "subscribers": 2})
    );
    let stream = &overview["streams"][0];
    assert_eq!(stream["name"], "orders");
    assert_eq!(stream["messages"], 3);
    assert_eq!(stream["groups"][0]["name"], "billing");
    assert_eq!(stream["groups"][0]["lag"], 3);
    assert_eq!(stream["groups"][0]["members"], 1);
    assert_eq!(overview["dead_letters"], json!([]));
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_configured_token_guards_the_new_routes_but_not_the_page() {
    let broker = start(Some("s3cret")).await;
    let admin = admin_addr(&broker);
    for (method, path) in [
        ("GET", "/v1/overview"),
        ("GET", "/v1/clients"),
        ("GET", "/v1/clients/x"),
        ("POST", "/v1/clients/x/disconnect"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/sessions/x"),
        ("GET", "/v1/subscriptions"),
        ("GET", "/v1/retained"),
        ("DELETE", "/v1/retained?topic=a"),
        ("GET", "/v1/bridges"),
        ("GET", "/v1/bridges/x"),
    ] {
        let answer = match method {
            "GET" => client::get(&admin, None, path).await,
            "POST" => client::post(&admin, None, path).await,
            _ => client::delete(&admin, None, path).await,
        };
        let (status, message) = refusal(answer);
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(message, "missing or wrong bearer token");
    }
    let overview = client::get(&admin, Some("s3cret"), "/v1/overview")
        .await
        .expect("the token lets the request in");
    assert!(serde_json::from_slice::<Value>(&overview).is_ok());
    let page = client::get(&admin, None, "/")
        .await
        .expect("the page is open");
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    for external in ["<link", "<script src", "<img", "url(", "@import", "<iframe"] {
        assert!(
            !page.contains(external),
            "the page loads nothing: {external}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_answered_with_json_errors() {
    let broker = start(None).await;
    let admin = admin_addr(&broker);
    let (status, message) = refusal(client::delete(&admin, None, "/v1/retained").await);
    assert_eq!(
        (status, message.as_str()),
        (400, "bad request: `topic` is required")
    );
    let (status, message) = refusal(client::get(&admin, None, "/v1/clients?limit=many").await);
    assert_eq!(status, 400);
    assert!(message.starts_with("bad request: "), "{message}");
    let (status, message) = refusal(client::get(&admin, None, "/v1/clients/%FF").await);
    assert_eq!(status, 400, "{message}");
    let (status, message) = refusal(client::post(&admin, None, "/v1/sessions").await);
    assert_eq!(
        (status, message.as_str()),
        (405, "POST is not allowed on /v1/sessions")
    );
    let (status, _) = refusal(client::post(&admin, None, "/").await);
    assert_eq!(status, 405);
    broker.shutdown().await;
}

/// A `petrel serve` child, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `petrel ctl` with `args`, pointed at `admin` through the environment.
async fn ctl(admin: &str, args: &[&str]) -> Output {
    Command::new(PETREL)
        .arg("ctl")
        .args(args)
        .env("PETREL_ADMIN", admin)
        .env("PETREL_ADMIN_TOKEN", "t0ken")
        .output()
        .await
        .expect("petrel runs")
}

/// `petrel ctl` that must succeed; its standard output.
async fn ctl_ok(admin: &str, args: &[&str]) -> String {
    let output = ctl(admin, args).await;
    assert!(
        output.status.success(),
        "petrel ctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The lines of `text` as whitespace-separated fields.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|line| line.split_whitespace().collect())
        .collect()
}

fn has_row(text: &str, expected: &[&str]) -> bool {
    rows(text).iter().any(|row| row == expected)
}

#[tokio::test]
async fn petrel_ctl_shows_tables_and_json_and_acts_on_a_serving_broker() {
    let dir = TempDir::new("ctl");
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("petrel.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ndurability = \"memory\"\n\n[[listeners]]\nbind = \"{mqtt}\"\n\n\
             [admin]\nbind = \"{admin}\"\ntoken = \"t0ken\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _serving = Serving(
        std::process::Command::new(PETREL)
            .args(["serve", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Covers the start: the command fails until the API answers.
    let deadline = Instant::now() + WAIT;
    while !ctl(&admin, &["clients"]).await.status.success() {
        assert!(Instant::now() < deadline, "the admin API never answered");
        tokio::time::sleep(POLL).await;
    }
    let mut device = persistent_v5(mqtt, "dev/1", &["cmd/dev/1/#"]).await;
    let mut publisher = raw::connect_v311(mqtt, "pub").await;
    publisher
        .send(&raw::publish(0x31, b"state/dev/1", None, None, b"online"))
        .await;
    let deadline = Instant::now() + WAIT;
    while !ctl_ok(&admin, &["retained"]).await.contains("state/dev/1") {
        assert!(
            Instant::now() < deadline,
            "the retained message never showed"
        );
        tokio::time::sleep(POLL).await;
    }

    let clients = ctl_ok(&admin, &["clients"]).await;
    for expected in [
        &[
            "CLIENT",
            "STATE",
            "USER",
            "SUBSCRIPTIONS",
            "QUEUED",
            "INFLIGHT",
            "DISCONNECTED",
        ][..],
        &["dev/1", "online", "-", "1", "0", "0", "-"],
        &["pub", "online", "-", "0", "0", "0", "-"],
    ] {
        assert!(has_row(&clients, expected), "no {expected:?} in\n{clients}");
    }
    let only = ctl_ok(&admin, &["clients", "--prefix", "dev/", "--online"]).await;
    assert_eq!(rows(&only).len(), 2, "{only}");
    let json: Value =
        serde_json::from_str(&ctl_ok(&admin, &["clients", "--json", "--offline"]).await).unwrap();
    assert_eq!(json, json!({"total": 0, "clients": []}));

    let detail = ctl_ok(&admin, &["client", "dev/1"]).await;
    assert!(detail.starts_with("client dev/1\n"), "{detail}");
    assert!(
        has_row(&detail, &["cmd/dev/1/#", "1", "no", "no", "0", "9"]),
        "{detail}"
    );
    let subscriptions = ctl_ok(&admin, &["subscriptions", "--client", "dev/1"]).await;
    assert!(
        has_row(
            &subscriptions,
            &["dev/1", "cmd/dev/1/#", "1", "no", "no", "0", "9"]
        ),
        "{subscriptions}"
    );
    let retained = ctl_ok(&admin, &["retained", "--prefix", "state/"]).await;
    assert!(
        has_row(&retained, &["state/dev/1", "0", "6", "-", "online"]),
        "{retained}"
    );
    let overview = ctl_ok(&admin, &["overview"]).await;
    assert!(has_row(&overview, &["connections", "2"]), "{overview}");

    assert_eq!(
        ctl_ok(&admin, &["kick", "dev/1"]).await,
        "disconnected dev/1\n"
    );
    device.expect_disconnect_then_close(&[0x98]).await;
    // Offline once the broker has seen the close; the expiry column shows
    // how long the session outlives it, the next when that ends.
    let offline_row = |sessions: &str| {
        rows(sessions)
            .into_iter()
            .find(|row| row.first() == Some(&"dev/1") && row.get(1) == Some(&"offline"))
            .map(|row| row.join(" "))
    };
    let deadline = Instant::now() + WAIT;
    let row = loop {
        let sessions = ctl_ok(&admin, &["sessions"]).await;
        if let Some(row) = offline_row(&sessions) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "dev/1 never went offline:\n{sessions}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(row.starts_with("dev/1 offline 1h "), "{row}");
    let session: Value =
        serde_json::from_str(&ctl_ok(&admin, &["session", "dev/1", "--json"]).await).unwrap();
    assert_eq!(session["session"]["expiry_secs"], 3600);

    assert_eq!(
        ctl_ok(&admin, &["drop-session", "dev/1"]).await,
        "deleted the session of dev/1\n"
    );
    assert_eq!(
        ctl_ok(&admin, &["drop-retained", "state/dev/1"]).await,
        "deleted the retained message on state/dev/1\n"
    );
    assert_eq!(
        ctl_ok(&admin, &["retained"]).await,
        "no retained messages\n"
    );
    let missing = ctl(&admin, &["session", "dev/1"]).await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("no session `dev/1`"),
        "{stderr}"
    );
}

/// A bridge to port 1 of the loopback, where nothing listens: it stays
/// disconnected, with the refused connection as its last error.
fn unreachable_bridge(name: &str) -> petrel::bridge::BridgeConfig {
    let text = format!(
        "name = \"{name}\"\naddress = \"127.0.0.1:1\"\n\
         topics = [{{ pattern = \"sensors/#\", direction = \"out\", qos = 1 }}]\n"
    );
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|built| built.try_deserialize())
        .expect("a bridge table")
}

#[tokio::test]
async fn bridges_are_listed_shown_by_name_measured_and_shown_by_petrel_ctl() {
    let mut test = common::start_broker_with(|settings| {
        settings.admin = common::loopback_admin(None);
        settings.bridges = vec![unreachable_bridge("uplink")];
    })
    .await;
    let admin = admin_addr(test.petrel());

    let list = answer_when(&admin, "/v1/bridges", |answer| {
        answer["bridges"][0]["last_error"]
            .as_str()
            .is_some_and(|error| !error.is_empty())
    })
    .await;
    let bridges = list["bridges"].as_array().expect("a list");
    assert_eq!(bridges.len(), 1, "{list:#}");
    let uplink = &bridges[0];
    assert_eq!(uplink["name"], "uplink");
    assert_eq!(uplink["connected"], false);
    assert_eq!(uplink["address"], "127.0.0.1:1");
    for count in ["reconnects", "sent", "received"] {
        assert_eq!(uplink[count], 0, "{count} in {uplink:#}");
    }
    let one = get(&admin, "/v1/bridges/uplink").await;
    assert_eq!(one["name"], "uplink");
    assert_eq!(one["connected"], false);
    let (status, message) = refusal(client::get(&admin, None, "/v1/bridges/nope").await);
    assert_eq!((status, message.as_str()), (404, "no bridge named `nope`"));

    let overview = get(&admin, "/v1/overview").await;
    assert_eq!(overview["bridges"][0]["name"], "uplink", "{overview:#}");
    assert_eq!(overview["bridges"][0]["connected"], false);

    let metrics = client::get(&admin, None, "/metrics")
        .await
        .expect("/metrics answers");
    let metrics = String::from_utf8(metrics.to_vec()).expect("text");
    for sample in [
        "petrel_bridge_connected{bridge=\"uplink\"} 0",
        "petrel_bridge_reconnects_total{bridge=\"uplink\"} 0",
        "petrel_bridge_queued_messages{bridge=\"uplink\"} 0",
        "petrel_bridge_queued_bytes{bridge=\"uplink\"} 0",
        "petrel_bridge_sent_total{bridge=\"uplink\"} 0",
        "petrel_bridge_received_total{bridge=\"uplink\"} 0",
        "petrel_bridge_dropped_total{bridge=\"uplink\"} 0",
    ] {
        assert!(
            metrics.lines().any(|line| line == sample),
            "no `{sample}` in\n{metrics}"
        );
    }

    let table = ctl_ok(&admin, &["bridges"]).await;
    let header = [
        "BRIDGE",
        "STATE",
        "ADDRESS",
        "RECONNECTS",
        "QUEUED",
        "QUEUED",
        "BYTES",
        "SENT",
        "RECEIVED",
        "DROPPED",
        "LAST",
        "ERROR",
    ];
    assert!(has_row(&table, &header), "{table}");
    assert!(
        rows(&table).iter().any(|row| row.starts_with(&[
            "uplink",
            "disconnected",
            "127.0.0.1:1",
            "0"
        ])),
        "{table}"
    );
    let json: Value = serde_json::from_str(&ctl_ok(&admin, &["bridges", "--json"]).await).unwrap();
    assert_eq!(json["bridges"][0]["name"], "uplink");
    let detail = ctl_ok(&admin, &["bridges", "uplink"]).await;
    assert!(detail.starts_with("bridge uplink\n"), "{detail}");
    assert!(has_row(&detail, &["state", "disconnected"]), "{detail}");
    let missing = ctl(&admin, &["bridges", "nope"]).await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("no bridge named `nope`"),
        "{stderr}"
    );

    test.petrel.take().expect("petrel").shutdown().await;
}
