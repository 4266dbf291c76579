//! Bridges (`[[bridges]]`): the real `petrel` binary as an MQTT client of a
//! real Mosquitto (`/usr/sbin/mosquitto`) or of another petrel, over real
//! sockets on 127.0.0.1.
//!
//! What is covered, one scenario per behaviour of the bridge spec:
//! - `out` and `in` rules with prefixes, as MQTT v5 and as 3.1.1 bridges:
//!   topics rewritten (local prefix stripped, remote prefix added and the
//!   reverse), payloads intact, QoS min(published, rule), topics outside
//!   the rules not forwarded;
//! - retained messages crossing both ways and staying retained;
//! - a remote outage at QoS 1 and 2: what petrel acknowledged while the
//!   remote was down arrives afterwards, complete and in order (QoS 2
//!   exactly once), and the same across a SIGKILL of petrel; messages
//!   published the moment petrel accepts connections are kept too;
//! - two petrels bridged `both` ways on `#`: every message crosses once and
//!   none loops;
//! - TLS to the remote, verified with a CA, and mutual TLS;
//! - failover to the next address when the first refuses;
//! - `$SYS/broker/connection/{name}/state`, the admin API (`/v1/bridges`,
//!   `/v1/sessions`) and the metrics;
//! - invalid rules stopping `petrel serve` with an error naming the bridge
//!   and the rule;
//! - QoS 2 flows cut after the remote's PUBREC, by the remote closing the
//!   connection or by a SIGKILL of petrel: the bridge resumes with PUBREL,
//!   never the PUBLISH again (`bridge/qos2_cut.rs`, against a scripted
//!   remote, `bridge/remote.rs`);
//! - the outbound queue bound, `max_queued_bytes` with `queue_full =
//!   "drop_new"` and `"refuse"` (`bridge/queue_bound.rs`);
//! - 3.1.1 bridges and the bridge bit: a petrel's 3.1.1 bridge to another
//!   petrel, and Mosquitto's own bridge into petrel, without echoes or
//!   loops (`bridge/loops.rs`); a remote refusing the bridge bit gets a
//!   plain 3.1.1 CONNECT next (`bridge/bridge_bit.rs`).
//!
//! Every test starts its own brokers on free ports and uses topics of its
//! own, so the tests run in parallel. Nothing waits by sleeping: a step waits
//! for an event (a message, an acknowledgement, a process exit) with a
//! bounded timeout, and the only retries are loops that poll for a
//! condition until a deadline (a port accepting, an API answer, a probe
//! message crossing the bridge). The absence of a message is shown by a
//! marker published after it that arrives while it does not.
//!
//! `bridge/petrel.rs` runs the petrel binary with a bridge config,
//! `bridge/mosquitto.rs` runs Mosquitto, `bridge/client.rs` is the test
//! client (rumqttc, v5 or 3.1.1), `bridge/remote.rs` is a scripted MQTT 5
//! remote that the test drives packet by packet, `bridge/support.rs` has scratch
//! directories, ports, certificates and an HTTP GET. Brokers are killed
//! when a test ends; a failing test prints their logs (`BRIDGE_TEST_LOGS=1`
//! prints them for passing tests too, with `--nocapture`).
//!
//! Needs `/usr/sbin/mosquitto` (Mosquitto 2) and openssl (for the
//! certificates `certs/make-dev-certs.sh` makes).

#[path = "bridge/bridge_bit.rs"]
mod bridge_bit;
#[path = "bridge/client.rs"]
mod client;
mod common;
#[path = "bridge/loops.rs"]
mod loops;
#[path = "bridge/mosquitto.rs"]
mod mosquitto;
#[path = "bridge/petrel.rs"]
mod petrel_process;
#[path = "bridge/qos2_cut.rs"]
mod qos2_cut;
#[path = "bridge/queue_bound.rs"]
mod queue_bound;
#[path = "bridge/remote.rs"]
mod remote;
#[path = "bridge/support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use client::{Client, Msg, Protocol, Session};
use mosquitto::Mosquitto;
use petrel_process::{Bridge, Petrel, listener_config, serve_refuses, toml_string};
use support::{BULK_WAIT, Certs, WAIT, http_get, poll_until};

/// How long a probe waits to cross a bridge before the next one is sent.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Messages published while the remote is away in the outage tests.
const OUTAGE_MESSAGES: u32 = 500;

/// Fresh petrel starts `messages_published_as_soon_as_petrel_accepts_...`
/// tries.
const STARTS: u32 = 40;

// ---------------------------------------------------------------------------
// Helpers shared by the scenarios.
// ---------------------------------------------------------------------------

/// Probes end in `/probe`: they may arrive late (published while the bridge
/// was still connecting), and every check ignores them.
fn is_probe(msg: &Msg) -> bool {
    msg.topic.ends_with("/probe")
}

/// Publishes QoS 1 probes on `topic` through `publisher` until
/// `subscriber` receives one on `arrives_as`: the bridge is connected and
/// the subscriptions it needs on both sides are in place. Probes that
/// arrive later are ignored by every check ([`is_probe`]).
async fn until_bridged(
    publisher: &mut Client,
    topic: &str,
    subscriber: &mut Client,
    arrives_as: &str,
) {
    assert!(topic.ends_with("/probe") && arrives_as.ends_with("/probe"));
    let deadline = Instant::now() + WAIT;
    for attempt in 1.. {
        publisher
            .publish(topic, 1, false, format!("probe {attempt}").as_bytes())
            .await;
        let retry = (Instant::now() + PROBE_INTERVAL).min(deadline);
        if subscriber
            .find_before(retry, |m| m.topic == arrives_as)
            .await
            .is_some()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no probe published on {topic} arrived as {arrives_as} within {WAIT:?} \
             ({attempt} sent): the bridge did not come up"
        );
    }
}

/// Takes the messages `client` receives (probes skipped) until `done` holds
/// for all taken so far or `within` passes, and returns them either way: the
/// assertions that follow show what came.
async fn collect_until(
    client: &mut Client,
    within: Duration,
    done: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got) {
        match client.next_message_before(deadline).await {
            Some(msg) if is_probe(&msg) => {}
            Some(msg) => got.push(msg),
            None => break,
        }
    }
    got
}

fn has_topic(msgs: &[Msg], topic: &str) -> bool {
    msgs.iter().any(|m| m.topic == topic)
}

/// A payload that is not text: a label, byte values a broker might
/// mangle (NUL, 0xFF, bytes above 0x7F, a line end), and enough bytes to
/// need a two-byte remaining length.
fn binary_payload(label: &str) -> Vec<u8> {
    let mut payload = label.as_bytes().to_vec();
    payload.extend_from_slice(&[0x00, 0xff, 0x80, 0x7f, b'\r', b'\n', 0xc3]);
    payload.extend((0..300u32).map(|i| (i % 251) as u8));
    payload
}

/// `(topic, qos, retain, payload)` of each message, sorted, for comparing
/// what arrived with what was expected regardless of order (MQTT orders
/// messages per topic and QoS only).
fn summary(msgs: impl IntoIterator<Item = Msg>) -> Vec<(String, u8, bool, Vec<u8>)> {
    let mut rows: Vec<_> = msgs
        .into_iter()
        .map(|m| (m.topic, m.qos, m.retain, m.payload))
        .collect();
    rows.sort();
    rows
}

/// Checks numbered payloads `0..n` against what arrived, in arrival order:
/// every number is there, the first arrivals are in order, and (when
/// `exactly_once`) none came twice. Returns what is wrong.
fn sequence_problems(arrived: &[u32], n: u32, exactly_once: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = vec![0u32; n as usize];
    let mut next_new = 0;
    for (position, &number) in arrived.iter().enumerate() {
        let Some(count) = seen.get_mut(number as usize) else {
            problems.push(format!("#{position}: {number} was never published"));
            continue;
        };
        if *count == 0 {
            if number != next_new {
                problems.push(format!(
                    "#{position}: {number} arrived (first time) where {next_new} was due"
                ));
            }
            next_new = number + 1;
        } else if exactly_once {
            problems.push(format!("#{position}: {number} arrived again"));
        }
        *count += 1;
    }
    let missing: Vec<u32> = (0..n).filter(|&i| seen[i as usize] == 0).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {n} never arrived: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    problems
}

/// The numbered payloads of `msgs` on `topic`, in arrival order.
fn numbers_on(msgs: &[Msg], topic: &str) -> Vec<u32> {
    msgs.iter()
        .filter(|m| m.topic == topic)
        .map(|m| {
            m.text()
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {m:?}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. `out` rules: petrel -> Mosquitto, with prefixes, QoS 0, 1, 2.
// ---------------------------------------------------------------------------

/// Messages published on petrel under `site/sensors/#` (rule QoS 1) and
/// `site/alarms/#` (rule QoS 2) reach a Mosquitto subscriber as
/// `edge1/sensors/...` and `edge1/alarms/...`, at min(published QoS, rule
/// QoS), payload intact; topics outside the rules do not cross.
async fn out_rule_forwards_prefixed_topics_at_min_qos(protocol: Protocol) {
    let tag = format!("out-{protocol}");
    let mosquitto = Mosquitto::start(&tag).await;
    let bridge = Bridge::new("uplink", mosquitto.addr(), protocol)
        .rule("sensors/#", "out", 1, "site/", "edge1/")
        .rule("alarms/#", "out", 2, "site/", "edge1/");
    let petrel = Petrel::start(&tag, &[bridge]).await;

    let mut remote = Client::connect(mosquitto.addr(), protocol, &format!("{tag}-remote")).await;
    remote.subscribe("edge1/#", 2).await;
    let mut local = Client::connect(petrel.addr(), protocol, &format!("{tag}-local")).await;
    for rule in ["sensors", "alarms"] {
        let (from, to) = (format!("site/{rule}/probe"), format!("edge1/{rule}/probe"));
        until_bridged(&mut local, &from, &mut remote, &to).await;
    }

    // Outside every rule: without the local prefix, another subtree, a
    // near miss of the pattern, the remote's own naming.
    for topic in [
        "sensors/a/temp",
        "site/other/a",
        "site/sensorsx/a",
        "edge1/sensors/a/temp",
    ] {
        local.publish(topic, 1, false, b"must not cross").await;
    }
    let mut expected = Vec::new();
    for (topic, rule_qos) in [("sensors/a/temp", 1), ("alarms/door/open", 2)] {
        for qos in 0..=2u8 {
            let payload = binary_payload(&format!("{topic} at QoS {qos}"));
            local
                .publish(&format!("site/{topic}"), qos, false, &payload)
                .await;
            expected.push(Msg {
                topic: format!("edge1/{topic}"),
                qos: qos.min(rule_qos),
                retain: false,
                dup: false,
                payload,
            });
        }
    }
    local.publish("site/sensors/end", 1, false, b"end").await;

    let count = expected.len();
    let mut got = collect_until(&mut remote, WAIT, |msgs| {
        has_topic(msgs, "edge1/sensors/end") && msgs.len() > count
    })
    .await;
    got.retain(|m| m.topic != "edge1/sensors/end");
    assert_eq!(
        summary(got),
        summary(expected),
        "the Mosquitto subscriber on edge1/# must get exactly the six messages \
         under the rules, rewritten to edge1/..., at min(published QoS, rule QoS)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_rule_forwards_prefixed_topics_at_min_qos_v5() {
    out_rule_forwards_prefixed_topics_at_min_qos(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_rule_forwards_prefixed_topics_at_min_qos_v311() {
    out_rule_forwards_prefixed_topics_at_min_qos(Protocol::V311).await;
}

// ---------------------------------------------------------------------------
// 2. `in` rules: Mosquitto -> petrel, with prefixes, QoS 0, 1, 2.
// ---------------------------------------------------------------------------

/// Messages published on Mosquitto under `edge1/cmd/#` (rule QoS 1) and
/// `edge1/cfg/#` (rule QoS 2) reach a petrel subscriber as `remote/cmd/...`
/// and `remote/cfg/...`, at min(published QoS, rule QoS), payload intact;
/// topics outside the rules do not cross.
async fn in_rule_forwards_remote_topics_under_local_prefix(protocol: Protocol) {
    let tag = format!("in-{protocol}");
    let mosquitto = Mosquitto::start(&tag).await;
    let bridge = Bridge::new("downlink", mosquitto.addr(), protocol)
        .rule("cmd/#", "in", 1, "remote/", "edge1/")
        .rule("cfg/#", "in", 2, "remote/", "edge1/");
    let petrel = Petrel::start(&tag, &[bridge]).await;

    let mut local = Client::connect(petrel.addr(), protocol, &format!("{tag}-local")).await;
    local.subscribe("#", 2).await;
    let mut remote = Client::connect(mosquitto.addr(), protocol, &format!("{tag}-remote")).await;
    for rule in ["cmd", "cfg"] {
        let (from, to) = (
            format!("edge1/{rule}/probe"),
            format!("remote/{rule}/probe"),
        );
        until_bridged(&mut remote, &from, &mut local, &to).await;
    }

    for topic in [
        "cmd/x/go",
        "edge1/other/x",
        "edge1/cmdx/y",
        "remote/cmd/x/go",
    ] {
        remote.publish(topic, 1, false, b"must not cross").await;
    }
    let mut expected = Vec::new();
    for (topic, rule_qos) in [("cmd/x/go", 1), ("cfg/x/rate", 2)] {
        for qos in 0..=2u8 {
            let payload = binary_payload(&format!("{topic} at QoS {qos}"));
            remote
                .publish(&format!("edge1/{topic}"), qos, false, &payload)
                .await;
            expected.push(Msg {
                topic: format!("remote/{topic}"),
                qos: qos.min(rule_qos),
                retain: false,
                dup: false,
                payload,
            });
        }
    }
    remote.publish("edge1/cmd/end", 1, false, b"end").await;

    let count = expected.len();
    let mut got = collect_until(&mut local, WAIT, |msgs| {
        has_topic(msgs, "remote/cmd/end") && msgs.len() > count
    })
    .await;
    got.retain(|m| m.topic != "remote/cmd/end" && !m.topic.starts_with("$SYS/"));
    assert_eq!(
        summary(got),
        summary(expected),
        "the petrel subscriber on # must get exactly the six messages under the \
         rules, rewritten to remote/..., at min(published QoS, rule QoS)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_rule_forwards_remote_topics_under_local_prefix_v5() {
    in_rule_forwards_remote_topics_under_local_prefix(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_rule_forwards_remote_topics_under_local_prefix_v311() {
    in_rule_forwards_remote_topics_under_local_prefix(Protocol::V311).await;
}

// ---------------------------------------------------------------------------
// 3. Retained messages, both ways.
// ---------------------------------------------------------------------------

/// A retained message published on petrel is retained on Mosquitto under
/// the remote prefix, and one published on Mosquitto is retained on petrel
/// under the local prefix: a client subscribing after it crossed gets it
/// with the retain flag.
async fn retained_messages_stay_retained_across(protocol: Protocol) {
    let tag = format!("retain-{protocol}");
    let mosquitto = Mosquitto::start(&tag).await;
    let bridge = Bridge::new("retainer", mosquitto.addr(), protocol)
        .rule("state/#", "out", 1, "site/", "edge1/")
        .rule("config/#", "in", 1, "site/", "edge1/");
    let petrel = Petrel::start(&tag, &[bridge]).await;

    let mut local = Client::connect(petrel.addr(), protocol, &format!("{tag}-local")).await;
    local.subscribe("site/#", 1).await;
    let mut remote = Client::connect(mosquitto.addr(), protocol, &format!("{tag}-remote")).await;
    remote.subscribe("edge1/#", 1).await;
    until_bridged(
        &mut local,
        "site/state/probe",
        &mut remote,
        "edge1/state/probe",
    )
    .await;
    until_bridged(
        &mut remote,
        "edge1/config/probe",
        &mut local,
        "site/config/probe",
    )
    .await;

    // Out: retained on petrel, seen crossing, then asked for on Mosquitto.
    local
        .publish("site/state/door", 1, true, b"open since 06:00")
        .await;
    remote.expect_on("edge1/state/door").await;
    let mut late = Client::connect(mosquitto.addr(), protocol, &format!("{tag}-late-r")).await;
    late.subscribe("edge1/state/door", 1).await;
    let retained = late.expect_on("edge1/state/door").await;
    assert!(
        retained.retain && retained.text() == "open since 06:00",
        "a late subscriber on Mosquitto must get the retained message that \
         crossed from petrel, with the retain flag: {retained:?}"
    );

    // In: retained on Mosquitto, seen crossing, then asked for on petrel.
    remote
        .publish("edge1/config/rate", 1, true, b"5 per minute")
        .await;
    local.expect_on("site/config/rate").await;
    let mut late = Client::connect(petrel.addr(), protocol, &format!("{tag}-late-l")).await;
    late.subscribe("site/config/rate", 1).await;
    let retained = late.expect_on("site/config/rate").await;
    assert!(
        retained.retain && retained.text() == "5 per minute",
        "a late subscriber on petrel must get the retained message that \
         crossed from Mosquitto, with the retain flag: {retained:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_stay_retained_across_v5() {
    retained_messages_stay_retained_across(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_stay_retained_across_v311() {
    retained_messages_stay_retained_across(Protocol::V311).await;
}

// ---------------------------------------------------------------------------
// 4. and 5. Durability: the remote away, petrel killed.
// ---------------------------------------------------------------------------

/// A Mosquitto subscriber with a persistent session on `filter` at QoS 2,
/// disconnected again: Mosquitto queues what arrives for it meanwhile, and
/// keeps the session across a stop and start (persistence on).
async fn persistent_subscriber(mosquitto: &Mosquitto, id: &str, filter: &str) {
    let mut remote =
        Client::connect_with(mosquitto.addr(), Protocol::V5, id, Session::Persistent).await;
    remote.subscribe(filter, 2).await;
    remote.disconnect().await;
}

/// The persistent subscriber again, after a Mosquitto restart.
async fn persistent_subscriber_back(mosquitto: &Mosquitto, id: &str) -> Client {
    let remote =
        Client::connect_with(mosquitto.addr(), Protocol::V5, id, Session::Persistent).await;
    assert!(
        remote.session_present,
        "test setup: Mosquitto lost the persistent subscriber's session over its restart"
    );
    remote
}

/// Asserts that petrel's acknowledgements of messages under an `out` rule
/// said Success: `NoMatchingSubscribers` (v5 0x10) means the bridge's
/// session did not take the message, which is then lost.
fn assert_kept_for_the_bridge(refusals: &[String], qos: u8) {
    assert!(
        refusals.is_empty(),
        "petrel must acknowledge every QoS {qos} message under an out rule with \
         Success (the bridge's session takes it); {} were not: {:#?}",
        refusals.len(),
        &refusals[..refusals.len().min(5)]
    );
}

/// Waits until `GET /v1/sessions` lists the bridge's local session
/// `$bridge/{name}` with its subscriptions.
async fn wait_for_bridge_session(admin: SocketAddr, name: &str) {
    let client_id = format!("$bridge/{name}");
    let mut last = Value::Null;
    let found = poll_until(WAIT, async || {
        last = admin_json(admin, "/v1/sessions").await;
        last["sessions"]
            .as_array()?
            .iter()
            .any(|row| {
                row["client_id"] == client_id.as_str() && row["subscriptions"].as_u64() > Some(0)
            })
            .then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "GET /v1/sessions never listed {client_id} with a subscription; last answer: {last:#}"
    );
}

/// Collects the numbered messages on `topic` and the marker on
/// `marker_topic` (published after them), then asserts the sequence.
async fn assert_all_arrive_in_order(remote: &mut Client, topic: &str, marker_topic: &str, qos: u8) {
    let n = OUTAGE_MESSAGES;
    let got = collect_until(remote, BULK_WAIT, |msgs| {
        let mut distinct = std::collections::BTreeSet::new();
        distinct.extend(msgs.iter().filter(|m| m.topic == topic).map(Msg::text));
        has_topic(msgs, marker_topic) && distinct.len() == n as usize
    })
    .await;
    let numbers = numbers_on(&got, topic);
    let problems = sequence_problems(&numbers, n, qos == 2);
    assert!(
        problems.is_empty(),
        "the {n} QoS {qos} messages acknowledged by petrel must all reach the \
         remote subscriber{}, first arrivals in order; {} arrived, problems: {problems:#?}",
        if qos == 2 { " exactly once" } else { "" },
        numbers.len()
    );
    let wrong_qos: Vec<&Msg> = got
        .iter()
        .filter(|m| m.topic == topic && m.qos != qos)
        .take(5)
        .collect();
    assert!(
        wrong_qos.is_empty(),
        "forwarded at QoS {qos} (rule and publish QoS), Mosquitto delivers at \
         QoS {qos}: {wrong_qos:?}"
    );
}

/// Petrel bridged `out` at `qos` to a Mosquitto with a persistent
/// subscriber; Mosquitto goes away; 500 numbered messages published to
/// petrel at `qos` and acknowledged; Mosquitto comes back on the same port;
/// every message reaches the subscriber, first arrivals in order (QoS 2:
/// exactly once).
async fn messages_published_during_remote_outage_arrive_in_order(qos: u8) {
    let tag = format!("outage-q{qos}");
    let mut mosquitto = Mosquitto::start(&tag).await;
    let subscriber_id = format!("{tag}-remote");
    persistent_subscriber(&mosquitto, &subscriber_id, "edge4/#").await;
    let bridge = Bridge::new("outage", mosquitto.addr(), Protocol::V5)
        .rule("orders/#", "out", qos, "", "edge4/");
    let petrel = Petrel::start(&tag, &[bridge]).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;

    // The bridge works before the outage.
    let mut watcher =
        Client::connect(mosquitto.addr(), Protocol::V5, &format!("{tag}-watch")).await;
    watcher.subscribe("edge4/#", 2).await;
    until_bridged(
        &mut local,
        "orders/probe",
        &mut watcher,
        "edge4/orders/probe",
    )
    .await;
    drop(watcher);
    let state = "$SYS/broker/connection/outage/state";
    let mut state_watcher =
        Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-state")).await;
    state_watcher.subscribe(state, 1).await;
    state_watcher
        .expect("bridge state \"1\"", |m| m.payload == b"1")
        .await;

    // Published once petrel knows the remote is gone: nothing in flight,
    // everything waits in the bridge's queue.
    mosquitto.stop().await;
    state_watcher
        .expect("bridge state \"0\" after Mosquitto stopped", |m| {
            m.payload == b"0"
        })
        .await;
    let messages =
        (0..OUTAGE_MESSAGES).map(|i| ("orders/seq".to_string(), i.to_string().into_bytes()));
    let refusals = local.publish_all(qos, false, messages).await;
    assert_kept_for_the_bridge(&refusals, qos);
    mosquitto.restart().await;
    let mut remote = persistent_subscriber_back(&mosquitto, &subscriber_id).await;
    local.publish("orders/end", qos, false, b"end").await;

    assert_all_arrive_in_order(&mut remote, "edge4/orders/seq", "edge4/orders/end", qos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_published_during_remote_outage_all_arrive_in_order() {
    messages_published_during_remote_outage_arrive_in_order(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_messages_published_during_remote_outage_arrive_exactly_once_in_order() {
    messages_published_during_remote_outage_arrive_in_order(2).await;
}

/// With the remote down, 500 QoS 1 messages acknowledged by petrel are in
/// the bridge's durable session: petrel SIGKILLed and started again on the
/// same data directory, then the remote started, delivers all of them, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_survive_petrel_sigkill_and_arrive_in_order() {
    let tag = "sigkill";
    let mut mosquitto = Mosquitto::start(tag).await;
    let subscriber_id = format!("{tag}-remote");
    persistent_subscriber(&mosquitto, &subscriber_id, "edge5/#").await;
    mosquitto.stop().await;

    let bridge = Bridge::new("durable", mosquitto.addr(), Protocol::V5)
        .rule("jobs/#", "out", 1, "", "edge5/");
    let mut petrel = Petrel::start_with_admin(tag, &[bridge]).await;
    // What this test is about is the queue surviving the kill, not how
    // soon after its start petrel's bridge subscriptions exist (see
    // `messages_published_as_soon_as_petrel_accepts_are_kept_for_the_bridge`).
    wait_for_bridge_session(petrel.admin_addr(), "durable").await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;
    let messages =
        (0..OUTAGE_MESSAGES).map(|i| ("jobs/seq".to_string(), i.to_string().into_bytes()));
    let refusals = local.publish_all(1, false, messages).await;
    assert_kept_for_the_bridge(&refusals, 1);
    drop(local);

    petrel.kill().await;
    petrel.restart().await;
    mosquitto.restart().await;
    let mut remote = persistent_subscriber_back(&mosquitto, &subscriber_id).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local2")).await;
    local.publish("jobs/end", 1, false, b"end").await;

    assert_all_arrive_in_order(&mut remote, "edge5/jobs/seq", "edge5/jobs/end", 1).await;
}

/// Petrel, started with a bridge whose remote is down, is published to as
/// soon as it accepts connections: every QoS 1 message under the `out` rule
/// must be taken by the bridge's session (v5 PUBACK Success, not 0x10 No
/// matching subscribers), since a message it does not take is lost. The
/// bridge's subscriptions have to exist before the listeners accept.
///
/// The window is short, so the test tries several fresh starts; with the
/// subscriptions in place first it passes every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_as_soon_as_petrel_accepts_are_kept_for_the_bridge() {
    let tag = "early";
    // Nothing listens there: the remote stays down.
    let remote = support::loopback(support::free_port());
    let mut refused = Vec::new();
    for start in 1..=STARTS {
        let bridge = Bridge::new("early", remote, Protocol::V5).rule("jobs/#", "out", 1, "", "");
        let petrel = Petrel::start_eagerly(tag, &[bridge]).await;
        let id = format!("{tag}-{start}");
        let mut local = Client::connect(petrel.addr(), Protocol::V5, &id).await;
        let messages = (0..20u32).map(|i| ("jobs/early".to_string(), i.to_string().into_bytes()));
        let refusals = local.publish_all(1, false, messages).await;
        if !refusals.is_empty() {
            refused.push(format!(
                "start {start}: {} of 20 refused, first: {}",
                refusals.len(),
                refusals[0]
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "messages under an out rule published right after petrel accepted \
         connections were not taken by the bridge's session (lost):\n{}",
        refused.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 6. Two petrels, `#` both ways: once each, no loop.
// ---------------------------------------------------------------------------

/// Petrel A has one bridge to petrel B with `{ pattern = "#", direction =
/// "both", qos = 1 }`. A message published on A reaches B once, one
/// published on B reaches A once, and nothing comes back: a loop would
/// bounce every message between A and B without end.
///
/// The quiet period after the messages is measured by markers sent back
/// and forth over the same bridge connection, in the direction an echo
/// would take: an echo of a message leaves before a marker published after
/// the message arrived, so it would arrive before that marker. Three
/// marker hops (B to A, A to B, B to A) give every echo of the messages and
/// of the first two markers time to show up on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_petrels_bridged_both_ways_deliver_once_and_do_not_loop() {
    let mut petrels = loops::two_petrels("loop", Protocol::V5).await;
    petrels.assert_each_crosses_once("loop").await;
}

// ---------------------------------------------------------------------------
// 7. TLS to the remote.
// ---------------------------------------------------------------------------

/// A bridge with `transport = "tls"` to Mosquitto's TLS listener, verifying
/// it with `ca` (and, for mutual TLS, presenting `cert`/`key` to a listener
/// that requires a client certificate): messages flow out, in order.
async fn bridge_over_tls_forwards(mutual: bool) {
    let tag = if mutual { "mtls" } else { "tls" };
    let certs = Certs::new(tag, &[]);
    let mosquitto = Mosquitto::start_tls(tag, &certs, mutual).await;
    let ca = certs.file("ca.crt");
    let mut bridge = Bridge::new("secure", mosquitto.tls_addr(), Protocol::V5)
        .setting("transport", "\"tls\"")
        .setting("ca", &toml_string(&ca.to_string_lossy()))
        .rule("sensors/#", "out", 1, "", "tls/");
    if mutual {
        bridge = bridge
            .setting(
                "cert",
                &toml_string(&certs.file("client.crt").to_string_lossy()),
            )
            .setting(
                "key",
                &toml_string(&certs.file("client.key").to_string_lossy()),
            );
    }
    let petrel = Petrel::start(tag, &[bridge]).await;

    let mut remote =
        Client::connect(mosquitto.addr(), Protocol::V5, &format!("{tag}-remote")).await;
    remote.subscribe("tls/#", 1).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;
    until_bridged(
        &mut local,
        "sensors/probe",
        &mut remote,
        "tls/sensors/probe",
    )
    .await;

    let messages = (0..20u32).map(|i| ("sensors/seq".to_string(), i.to_string().into_bytes()));
    local.publish_all(1, false, messages).await;
    let got = collect_until(&mut remote, WAIT, |msgs| msgs.len() >= 20).await;
    assert_eq!(
        numbers_on(&got, "tls/sensors/seq"),
        (0..20).collect::<Vec<u32>>(),
        "all 20 messages must cross the TLS bridge once, in order: {got:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_over_tls_verifies_the_remote_with_the_ca() {
    bridge_over_tls_forwards(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_over_mutual_tls_presents_its_client_certificate() {
    bridge_over_tls_forwards(true).await;
}

// ---------------------------------------------------------------------------
// Failover between addresses.
// ---------------------------------------------------------------------------

/// A bridge whose first address refuses connections connects to the second
/// one, and messages flow there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_fails_over_to_its_second_address_when_the_first_refuses() {
    let tag = "failover";
    let mosquitto = Mosquitto::start(tag).await;
    // Nothing listens there: connections are refused.
    let dead = support::loopback(support::free_port());
    let bridge = Bridge::with_addresses("spare", &[dead, mosquitto.addr()], Protocol::V5).rule(
        "sensors/#",
        "out",
        1,
        "",
        "spare/",
    );
    let petrel = Petrel::start(tag, &[bridge]).await;
    let mut remote =
        Client::connect(mosquitto.addr(), Protocol::V5, &format!("{tag}-remote")).await;
    remote.subscribe("spare/#", 1).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;
    until_bridged(
        &mut local,
        "sensors/probe",
        &mut remote,
        "spare/sensors/probe",
    )
    .await;
    local.publish("sensors/t", 1, false, b"via the spare").await;
    let msg = remote.expect_on("spare/sensors/t").await;
    assert_eq!(msg.text(), "via the spare");
}

// ---------------------------------------------------------------------------
// 8. $SYS/broker/connection/{name}/state.
// ---------------------------------------------------------------------------

/// `$SYS/broker/connection/{name}/state` on petrel is retained "1" while
/// the bridge is connected, "0" once the remote is gone (and retained so),
/// and "1" again when the bridge is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_connection_state_is_retained_1_when_connected_and_0_when_the_remote_is_down() {
    let tag = "sys-state";
    let topic = "$SYS/broker/connection/edge-link/state";
    let mut mosquitto = Mosquitto::start(tag).await;
    let bridge =
        Bridge::new("edge-link", mosquitto.addr(), Protocol::V5).rule("s/#", "out", 1, "", "");
    let petrel = Petrel::start(tag, &[bridge]).await;

    let mut watcher = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-watch")).await;
    watcher.subscribe(topic, 1).await;
    watcher
        .expect("state \"1\" while connected", |m| {
            m.topic == topic && m.payload == b"1"
        })
        .await;
    let mut late = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-late-1")).await;
    late.subscribe(topic, 1).await;
    let state = late.expect_on(topic).await;
    assert!(
        state.retain && state.payload == b"1",
        "a new subscriber must get the retained state \"1\" while the bridge is \
         connected: {state:?}"
    );

    mosquitto.kill().await;
    watcher
        .expect("state \"0\" after the remote was killed", |m| {
            m.topic == topic && m.payload == b"0"
        })
        .await;
    let mut late = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-late-0")).await;
    late.subscribe(topic, 1).await;
    let state = late.expect_on(topic).await;
    assert!(
        state.retain && state.payload == b"0",
        "a new subscriber must get the retained state \"0\" while the remote is \
         down: {state:?}"
    );

    mosquitto.restart().await;
    watcher
        .expect("state \"1\" after the remote came back", |m| {
            m.topic == topic && m.payload == b"1"
        })
        .await;
}

// ---------------------------------------------------------------------------
// 9. Invalid rules stop the start.
// ---------------------------------------------------------------------------

/// A config whose second bridge, "broken", has a valid first rule and an
/// invalid second one: `petrel serve -c FILE` exits non-zero, and what it
/// writes names the bridge and the rule (`topics[1]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_stop_the_start_naming_the_bridge_and_the_rule() {
    let cases = [
        (
            "QoS 3",
            r#"{ pattern = "sensors/#", direction = "out", qos = 3 }"#,
        ),
        (
            "# in the local prefix",
            r#"{ pattern = "sensors/#", direction = "out", qos = 1, local_prefix = "site/#/" }"#,
        ),
        (
            "+ in the remote prefix",
            r#"{ pattern = "sensors/#", direction = "in", qos = 1, remote_prefix = "edge/+/" }"#,
        ),
        (
            "a pattern with # before its end",
            r#"{ pattern = "sensors/#/temp", direction = "out", qos = 1 }"#,
        ),
        (
            "an unknown direction",
            r#"{ pattern = "sensors/#", direction = "sideways", qos = 1 }"#,
        ),
    ];
    let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut failures = Vec::new();
    for (what, bad_rule) in cases {
        let good = Bridge::new("fine", remote, Protocol::V5).rule("a/#", "out", 1, "", "");
        let broken = Bridge::new("broken", remote, Protocol::V5)
            .rule("b/#", "in", 1, "", "")
            .raw_rule(bad_rule);
        let config = format!("{}{}{}", listener_config(), good.toml(), broken.toml());
        let (code, output) = serve_refuses("invalid-rule", &config).await;
        let names_bridge = output.contains("broken");
        let names_rule = output.contains("topics[1]");
        if !(names_bridge && names_rule) {
            failures.push(format!(
                "{what}: exit code {code:?}, names the bridge: {names_bridge}, names \
                 the rule (topics[1]): {names_rule}; output:\n{output}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "every invalid rule must stop the start with an error naming bridge \
         \"broken\" and its rule topics[1]:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 10. Admin API and metrics.
// ---------------------------------------------------------------------------

/// A petrel with the admin API and bridge "stats" (out `sensors/#`, in
/// `cmd/#`) to a Mosquitto, after traffic both ways.
struct AdminScene {
    _mosquitto: Mosquitto,
    petrel: Petrel,
}

async fn admin_scene(tag: &str) -> AdminScene {
    let mosquitto = Mosquitto::start(tag).await;
    let bridge = Bridge::new("stats", mosquitto.addr(), Protocol::V5)
        .rule("sensors/#", "out", 1, "", "adm/")
        .rule("cmd/#", "in", 1, "", "adm/");
    let petrel = Petrel::start_with_admin(tag, &[bridge]).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;
    local.subscribe("cmd/#", 1).await;
    let mut remote =
        Client::connect(mosquitto.addr(), Protocol::V5, &format!("{tag}-remote")).await;
    remote.subscribe("adm/#", 1).await;
    until_bridged(
        &mut local,
        "sensors/probe",
        &mut remote,
        "adm/sensors/probe",
    )
    .await;
    until_bridged(&mut remote, "adm/cmd/probe", &mut local, "cmd/probe").await;
    local.publish("sensors/t", 1, false, b"21.5").await;
    remote.expect_on("adm/sensors/t").await;
    remote.publish("adm/cmd/go", 1, false, b"go").await;
    local.expect_on("cmd/go").await;
    AdminScene {
        _mosquitto: mosquitto,
        petrel,
    }
}

/// `GET path` on the admin API, parsed; panics on anything but 200 + JSON.
async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(admin, path)
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("GET {path}: {error}: {body}"))
}

/// The bridges of a `GET /v1/bridges` answer: a JSON list (or, leniently,
/// an object holding one under "bridges").
fn bridge_list(answer: &Value) -> Vec<Value> {
    answer
        .as_array()
        .or_else(|| answer["bridges"].as_array())
        .unwrap_or_else(|| panic!("GET /v1/bridges is not a list: {answer:#}"))
        .clone()
}

/// `GET /v1/bridges` lists bridge "stats" as connected, with every field
/// of the spec, and `sent` and `received` above zero after traffic both
/// ways; `GET /v1/bridges/stats` shows the same bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_the_bridge_connected_with_traffic_counts() {
    let scene = admin_scene("admin-api").await;
    let admin = scene.petrel.admin_addr();
    let mut last = Value::Null;
    let stats = poll_until(WAIT, async || {
        last = admin_json(admin, "/v1/bridges").await;
        bridge_list(&last).into_iter().find(|bridge| {
            bridge["name"] == "stats"
                && bridge["connected"] == true
                && bridge["sent"].as_u64() > Some(0)
                && bridge["received"].as_u64() > Some(0)
        })
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "GET /v1/bridges never showed bridge \"stats\" connected with sent > 0 \
             and received > 0; last answer: {last:#}"
        )
    });
    for field in [
        "address",
        "last_error",
        "reconnects",
        "queued_messages",
        "queued_bytes",
        "dropped",
    ] {
        assert!(
            stats.get(field).is_some(),
            "GET /v1/bridges: bridge \"stats\" has no field {field}: {stats:#}"
        );
    }
    let one = admin_json(admin, "/v1/bridges/stats").await;
    assert_eq!(one["name"], "stats", "GET /v1/bridges/stats: {one:#}");
    assert_eq!(one["connected"], true, "GET /v1/bridges/stats: {one:#}");
}

/// The value of the sample `name{bridge="stats"}` in a Prometheus scrape.
fn stats_sample(scrape: &str, name: &str) -> Option<f64> {
    let start = format!("{name}{{bridge=\"stats\"}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&start)?.trim().parse().ok())
}

/// `/metrics` has the bridge's gauges and counters (connected 1, sent and
/// received above zero after traffic), and the bridge's durable local
/// session `$bridge/stats` is listed by `GET /v1/sessions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_metrics_and_its_local_session_are_exposed() {
    let scene = admin_scene("admin-metrics").await;
    let admin = scene.petrel.admin_addr();
    let mut last = String::new();
    let scraped = poll_until(WAIT, async || {
        let (status, body) = http_get(admin, "/metrics").await.ok()?;
        last = body.clone();
        let ready = status == 200
            && stats_sample(&body, "petrel_bridge_connected") == Some(1.0)
            && stats_sample(&body, "petrel_bridge_sent_total") > Some(0.0)
            && stats_sample(&body, "petrel_bridge_received_total") > Some(0.0);
        ready.then_some(body)
    })
    .await
    .unwrap_or_else(|| {
        let bridge_lines: Vec<&str> = last.lines().filter(|l| l.contains("bridge")).collect();
        panic!(
            "/metrics never showed bridge \"stats\" connected with sent and received \
             above zero; its bridge lines: {bridge_lines:#?}"
        )
    });
    for name in [
        "petrel_bridge_reconnects_total",
        "petrel_bridge_queued_messages",
        "petrel_bridge_queued_bytes",
        "petrel_bridge_dropped_total",
    ] {
        assert!(
            stats_sample(&scraped, name).is_some(),
            "/metrics has no {name}{{bridge=\"stats\"}}"
        );
    }

    let sessions = admin_json(admin, "/v1/sessions").await;
    let listed = sessions["sessions"]
        .as_array()
        .is_some_and(|rows| rows.iter().any(|row| row["client_id"] == "$bridge/stats"));
    assert!(
        listed,
        "GET /v1/sessions must list the bridge's local session $bridge/stats: {sessions:#}"
    );
}
