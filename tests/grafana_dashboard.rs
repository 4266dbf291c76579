//! `docs/grafana-dashboard.json` against the broker it charts: a panel
//! querying a metric the broker does not expose stays empty without an
//! error, and one the dashboard forgets is never seen, so both are checked
//! against a real scrape of `/metrics` after enough traffic that every
//! labelled family has a sample.

mod common;
mod raw;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::WAIT;
use common::scratch::TempDir;
use petrel::admin::client;
use petrel::config::Durability;
use petrel::stream::StreamConfig;
use petrel::{Broker, Settings};
use raw::{PUBACK, publish_v311};
use serde_json::Value;
use tokio::time::Instant;

const DASHBOARD: &str = include_str!("../docs/grafana-dashboard.json");

/// How often the test scrapes again while it waits for the traffic to show.
const POLL: Duration = Duration::from_millis(20);

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panel list") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Every PromQL expression: the panels' targets and the variables' queries.
fn expressions(dashboard: &Value) -> Vec<&str> {
    let mut found = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            found.push(target["expr"].as_str().expect("a target has an expr"));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        found.extend(variable["query"]["query"].as_str());
        found.extend(variable["definition"].as_str());
    }
    found
}

/// The identifiers of `expr` (metric, label and function names), each with
/// where it starts.
fn tokens(expr: &str) -> Vec<(usize, &str)> {
    let mut found = Vec::new();
    let mut start = None;
    for (at, c) in expr.char_indices().chain([(expr.len(), ' ')]) {
        let part = c.is_ascii_alphanumeric() || c == '_' || c == ':';
        match (part, start) {
            (true, None) => start = Some(at),
            (false, Some(from)) => {
                found.push((from, &expr[from..at]));
                start = None;
            }
            _ => {}
        }
    }
    found
}

/// The metric names `expr` reads: the identifiers starting with `petrel_`.
fn metrics(expr: &str) -> Vec<&str> {
    tokens(expr)
        .into_iter()
        .map(|(_, token)| token)
        .filter(|token| token.starts_with("petrel_"))
        .collect()
}

/// Samples that only grow: a panel must chart their rate, not their value.
fn cumulative(name: &str) -> bool {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// `(`, `[` and `{` closed in order, outside quoted label values.
fn balanced(expr: &str) -> bool {
    let mut open = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let expected = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(expected) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty() && !quoted
}

#[test]
fn the_dashboard_imports_with_a_prometheus_datasource_input_and_panels_that_do_not_overlap() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "timeseries panels and $__rate_interval need a recent schema"
    );
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(
        inputs
            .iter()
            .any(|input| input["name"] == "DS_PROMETHEUS" && input["pluginId"] == "prometheus"),
        "{inputs:?}"
    );

    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "id of {title}");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|key| grid[key].as_u64().unwrap());
        assert!(
            x + w <= 24 && w > 0 && h > 0,
            "{title} within the 24 columns"
        );
        for cell in (x..x + w).flat_map(|column| (y..y + h).map(move |line| (column, line))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].is_string(),
            "{title} says what it shows"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} queries something");
        for source in
            std::iter::once(&panel["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
        {
            assert_eq!(source["uid"], "${DS_PROMETHEUS}", "datasource of {title}");
        }
        let refs: HashSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "refIds of {title}");
    }

    for expr in expressions(&dashboard) {
        assert!(balanced(expr), "unbalanced brackets in {expr}");
        assert!(!metrics(expr).is_empty(), "no petrel metric in {expr}");
        let tokens = tokens(expr);
        for (at, token) in &tokens {
            let before = expr[..*at].trim_end();
            let rated = before.ends_with("rate(") || before.ends_with("increase(");
            if token.starts_with("petrel_") {
                assert_eq!(
                    rated,
                    cumulative(token),
                    "{token} in {expr}: counters and histogram parts only ever as a rate"
                );
            }
            if matches!(*token, "rate" | "irate" | "increase") {
                assert!(
                    tokens
                        .iter()
                        .find(|(after, _)| after > at)
                        .is_some_and(|(_, next)| next.starts_with("petrel_")),
                    "{token} of no metric in {expr}"
                );
            }
        }
    }
}

/// A bridge to port 1 of the loopback, where nothing listens: its
/// families have a sample without a remote.
fn unreachable_bridge() -> petrel::bridge::BridgeConfig {
    let text = "name = \"uplink\"\naddress = \"127.0.0.1:1\"\n\
                topics = [{ pattern = \"sensors/#\", direction = \"out\" }]\n";
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|built| built.try_deserialize())
        .expect("a bridge table")
}

/// A broker on disk (so the storage metrics exist) with a stream, a bridge
/// and the admin listener.
async fn start(data: &TempDir) -> Broker {
    let settings = Settings {
        data_dir: data.path().to_path_buf(),
        durability: Durability::Sync,
        streams: vec![StreamConfig {
            max_attempts: 2,
            retry_backoff: vec!["20ms".into()],
            // The group, made after the message, still reads it.
            start: "earliest".into(),
            ..StreamConfig::new("orders", &["orders/#"])
        }],
        bridges: vec![unreachable_bridge()],
        admin: common::loopback_admin(None),
        ..Settings::ephemeral()
    };
    Broker::start(settings).await.expect("broker starts")
}

/// The names of the samples of a Prometheus text exposition, and of its
/// families (`# TYPE` lines).
fn exposition(text: &str) -> (BTreeSet<&str>, BTreeSet<&str>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            families.extend(family.split_whitespace().next());
        } else if !line.starts_with('#') && !line.is_empty() {
            samples.extend(line.split(['{', ' ']).next());
        }
    }
    (samples, families)
}

/// Publishes through every path the dashboard charts (a stream message
/// refused until it is dead-lettered, a delayed message) and scrapes
/// `/metrics` once the dead letter shows.
async fn scrape_after_traffic(broker: &Broker) -> String {
    let mqtt = broker.local_addrs()[0];
    let admin = broker.admin_addr().expect("admin listener").to_string();

    let (mut watcher, _) = raw::connect_v5(mqtt, &raw::unique_id("late")).await;
    watcher
        .send(&raw::subscribe(1, Some(&[]), &[(b"later/#", 0)]))
        .await;
    watcher.expect_kind(raw::SUBACK).await;
    let mut publisher = raw::connect_v311(mqtt, &raw::unique_id("pub")).await;
    publisher
        .send(&publish_v311("$delayed/0/later/x", 1, 1, b"d"))
        .await;
    publisher.expect_kind(PUBACK).await;
    watcher.expect_kind(raw::PUBLISH).await;

    publisher
        .send(&publish_v311("orders/device-1/new", 1, 2, b"order"))
        .await;
    publisher.expect_kind(PUBACK).await;
    // A v5 member refusing both attempts: a retry, then a dead letter.
    let mut member = raw::stream_member_v5(mqtt, "$share/g/$stream/orders").await;
    for _ in 0..2 {
        let delivery = raw::Publish::parse(&member.expect_kind(raw::PUBLISH).await, true);
        let id = delivery.packet_id.expect("QoS 1");
        member.send(&raw::ack_with_reason(0x40, id, 0x80)).await;
    }

    let deadline = Instant::now() + WAIT;
    loop {
        let body = client::get(&admin, None, "/metrics")
            .await
            .expect("/metrics answers");
        let text = String::from_utf8(body.to_vec()).expect("text");
        if text.contains("petrel_stream_dead_lettered_total{") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the dead letter never showed in /metrics:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_one_the_broker_exposes() {
    let data = TempDir::new("grafana-queried");
    let broker = start(&data).await;
    let text = scrape_after_traffic(&broker).await;
    let (samples, _) = exposition(&text);
    let dashboard = dashboard();
    let queried: BTreeSet<&str> = expressions(&dashboard)
        .into_iter()
        .flat_map(metrics)
        .collect();
    let unknown: Vec<&&str> = queried.difference(&samples).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics /metrics does not have: {unknown:?}\n{text}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn every_metric_family_the_broker_exposes_has_a_panel() {
    let data = TempDir::new("grafana-families");
    let broker = start(&data).await;
    let text = scrape_after_traffic(&broker).await;
    let (_, families) = exposition(&text);
    let dashboard = dashboard();
    let queried: HashSet<&str> = expressions(&dashboard)
        .into_iter()
        .flat_map(metrics)
        .collect();
    // A histogram's samples are its buckets, sum and count.
    let charted = |family: &&str| {
        ["", "_bucket", "_sum", "_count"]
            .iter()
            .any(|part| queried.contains(format!("{family}{part}").as_str()))
    };
    let missing: Vec<&&str> = families.iter().filter(|f| !charted(f)).collect();
    assert!(
        missing.is_empty(),
        "families no panel of docs/grafana-dashboard.json charts: {missing:?}"
    );
    broker.shutdown().await;
}
