//! The status page at `/` rendered by a real browser: headless Chromium
//! loads it from a broker with traffic, runs its script, and the DOM it
//! leaves must show the broker's live numbers.

mod common;
mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use common::WAIT;
use common::scratch::TempDir;
use petrel::admin::client;
use petrel::stream::StreamConfig;
use petrel::{Broker, Settings};
use raw::{Connect, RawClient};
use serde_json::Value;
use tokio::process::Command;
use tokio::time::Instant;

/// How long Chromium may take to start, load and dump the page.
const BROWSER_WAIT: Duration = Duration::from_secs(60);

/// A v5 client subscribed to `filter` at QoS 1.
async fn subscriber(mqtt: SocketAddr, id: &str, filter: &str) -> RawClient {
    let (mut client, _) = raw::connect_v5_with(mqtt, &Connect::v5(id)).await;
    client
        .send(&raw::subscribe(1, Some(&[]), &[(filter.as_bytes(), 1)]))
        .await;
    client.expect_kind(raw::SUBACK).await;
    client
}

/// Asks `/v1/overview` until `ready` holds.
async fn overview_when(admin: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = client::get(admin, None, "/v1/overview")
            .await
            .expect("the overview answers");
        let overview: Value = serde_json::from_slice(&body).unwrap();
        if ready(&overview) {
            return overview;
        }
        assert!(
            Instant::now() < deadline,
            "the overview never showed the expected state: {overview:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The DOM of `url` after its scripts ran for five seconds of the
/// browser's virtual time; `None` when there is no `chromium` to run.
async fn rendered(url: &str) -> Option<String> {
    let profile = TempDir::new("chromium");
    let run = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(BROWSER_WAIT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Ok(Err(error)) => panic!("chromium does not run: {error}"),
        Err(_) => panic!("chromium did not dump the page within {BROWSER_WAIT:?}"),
    };
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("the DOM is UTF-8"))
}

#[tokio::test]
async fn the_status_page_renders_live_connections_subscriptions_stream_lag_and_dead_letters() {
    let settings = Settings {
        streams: vec![StreamConfig {
            partitions: 1,
            start: "earliest".into(),
            max_attempts: 1,
            ..StreamConfig::new("orders", &["orders/#"])
        }],
        admin: common::loopback_admin(None),
        ..Settings::ephemeral()
    };
    let broker = Broker::start(settings).await.expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let admin = broker.admin_addr().unwrap().to_string();

    let _a = subscriber(mqtt, "telemetry-a", "fleet/+/telemetry").await;
    let _b = subscriber(mqtt, "telemetry-b", "fleet/+/telemetry").await;
    let _c = subscriber(mqtt, "alerts", "alerts/#").await;
    let mut publisher = raw::connect_v311(mqtt, "publisher").await;
    for id in 1..=4 {
        publisher
            .send(&raw::publish_v311("orders/dev-1/new", 1, id, b"order"))
            .await;
        publisher.expect_kind(raw::PUBACK).await;
    }
    // The group's member refuses the first order (one attempt allowed: a
    // dead letter) and leaves the second unacknowledged, so the rest lag.
    let mut member = subscriber(mqtt, "member", "$share/billing/$stream/orders").await;
    let first = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
    member
        .send(&raw::ack_with_reason(0x40, first.packet_id.unwrap(), 0x80))
        .await;
    member.expect_kind(raw::PUBLISH).await;

    let overview = overview_when(&admin, |o| {
        o["dead_letters"][0]["count"] == 1 && o["streams"][0]["groups"][0]["inflight"] == 1
    })
    .await;
    let connections = overview["connections"].as_u64().unwrap();
    let lag = overview["streams"][0]["groups"][0]["lag"].as_u64().unwrap();
    assert_eq!(connections, 5);
    assert!(lag >= 2, "{overview:#}");

    let Some(dom) = rendered(&format!("http://{admin}/")).await else {
        println!("skipped: no `chromium` to render the page with (apt-get install chromium)");
        broker.shutdown().await;
        return;
    };
    for expected in [
        format!(r#"id="connections" data-value="{connections}">{connections}<"#),
        r#"id="sessions-online" data-value="5""#.to_string(),
        r#"id="messages-received" data-value="4""#.to_string(),
        r#"data-filter="fleet/+/telemetry">fleet/+/telemetry</td><td class="num">2</td>"#
            .to_string(),
        r#"data-stream="orders">orders</td>"#.to_string(),
        format!(r#"data-lag="{lag}">{lag}</td>"#),
        r#"<td>billing</td><td>orders</td><td class="num">1</td>"#.to_string(),
        format!(r#"<span id="version">{}</span>"#, env!("CARGO_PKG_VERSION")),
    ] {
        assert!(
            dom.contains(&expected),
            "the rendered page lacks {expected}:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"class="state ok""#),
        "the page reports a failed refresh:\n{dom}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn with_a_token_the_page_takes_it_from_the_fragment_or_asks_for_it() {
    let settings = Settings {
        admin: common::loopback_admin(Some("s3cret")),
        ..Settings::ephemeral()
    };
    let broker = Broker::start(settings).await.expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let admin = broker.admin_addr().unwrap().to_string();
    let _client = subscriber(mqtt, "only", "fleet/#").await;

    let Some(dom) = rendered(&format!("http://{admin}/#token=s3cret")).await else {
        println!("skipped: no `chromium` to render the page with (apt-get install chromium)");
        broker.shutdown().await;
        return;
    };
    for expected in [
        r#"id="connections" data-value="1">1<"#,
        r#"data-filter="fleet/#">fleet/#</td>"#,
        r#"class="state ok""#,
    ] {
        assert!(dom.contains(expected), "the page lacks {expected}:\n{dom}");
    }
    let asked = rendered(&format!("http://{admin}/")).await.unwrap();
    assert!(
        asked.contains(r#"<section id="token-form" class="shown">"#)
            && asked.contains(r#"class="state failed">token required<"#),
        "the page does not ask for the token:\n{asked}"
    );
    broker.shutdown().await;
}
