//! Loop prevention over MQTT 3.1.1 bridges, where only Mosquitto's bridge
//! bit (protocol level 0x84, `try_private`) keeps a broker from sending a
//! bridge's own messages back to it: a petrel's 3.1.1 bridge to another
//! petrel, and Mosquitto's own bridge into petrel.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::client::{Client, Protocol};
use crate::mosquitto::Mosquitto;
use crate::petrel_process::{Bridge, Petrel};
use crate::support::http_get;
use crate::support::{WAIT, poll_until};
use crate::{is_probe, until_bridged};

/// Asserts that `subscriber` (on broker `side`) received each of `topics`
/// exactly once, probes and `$` topics aside: more is an echo or a loop.
fn assert_each_once(side: &str, subscriber: &Client, topics: &[&str]) {
    let expected: BTreeMap<String, usize> = topics.iter().map(|t| (t.to_string(), 1)).collect();
    let mut counts = BTreeMap::new();
    for msg in subscriber.history() {
        if !is_probe(msg) && !msg.topic.starts_with('$') {
            *counts.entry(msg.topic.clone()).or_insert(0) += 1;
        }
    }
    let history = subscriber.history();
    assert_eq!(
        counts,
        expected,
        "a # subscriber on {side} must see every message exactly once (more is an \
         echo or a loop); the first of its {} messages: {:#?}",
        history.len(),
        &history[..history.len().min(30)]
    );
}

/// Petrel A with one bridge, `to-b`, to petrel B (with the admin API) on
/// `#` both ways at QoS 1 over `protocol`; a publisher and a `#`
/// subscriber on each, the bridge shown to be up both ways by probes.
pub struct TwoPetrels {
    pub a: Petrel,
    pub b: Petrel,
    pub_a: Client,
    sub_a: Client,
    pub_b: Client,
    sub_b: Client,
}

pub async fn two_petrels(tag: &str, protocol: Protocol) -> TwoPetrels {
    let b = Petrel::start_with_admin(&format!("{tag}-b"), &[]).await;
    let bridge = Bridge::new("to-b", b.addr(), protocol).rule("#", "both", 1, "", "");
    let a = Petrel::start(&format!("{tag}-a"), &[bridge]).await;
    let mut sub_a = Client::connect(a.addr(), Protocol::V5, &format!("{tag}-sub-a")).await;
    sub_a.subscribe("#", 1).await;
    let mut sub_b = Client::connect(b.addr(), Protocol::V5, &format!("{tag}-sub-b")).await;
    sub_b.subscribe("#", 1).await;
    let mut pub_a = Client::connect(a.addr(), Protocol::V5, &format!("{tag}-pub-a")).await;
    let mut pub_b = Client::connect(b.addr(), Protocol::V5, &format!("{tag}-pub-b")).await;
    let probe = |side: &str| format!("{tag}/{side}/probe");
    until_bridged(&mut pub_a, &probe("a"), &mut sub_b, &probe("a")).await;
    until_bridged(&mut pub_b, &probe("b"), &mut sub_a, &probe("b")).await;
    TwoPetrels {
        a,
        b,
        pub_a,
        sub_a,
        pub_b,
        sub_b,
    }
}

impl TwoPetrels {
    /// The no-loop check: one message published on each side, then markers
    /// back and forth over the bridge (the way an echo would travel, so an
    /// echo of anything before a marker arrives before it); every
    /// subscriber must have seen each of them exactly once. Topics are
    /// under `prefix`.
    pub async fn assert_each_crosses_once(&mut self, prefix: &str) {
        let topic = |name: &str| format!("{prefix}/{name}");
        let TwoPetrels {
            pub_a,
            sub_a,
            pub_b,
            sub_b,
            ..
        } = self;
        pub_a
            .publish(&topic("from-a"), 1, false, b"published on A")
            .await;
        pub_b
            .publish(&topic("from-b"), 1, false, b"published on B")
            .await;
        sub_b.expect_on(&topic("from-a")).await;
        sub_a.expect_on(&topic("from-b")).await;

        pub_b.publish(&topic("marker-1"), 1, false, b"B to A").await;
        sub_a.expect_on(&topic("marker-1")).await;
        pub_a.publish(&topic("marker-2"), 1, false, b"A to B").await;
        sub_b.expect_on(&topic("marker-2")).await;
        pub_b.publish(&topic("marker-3"), 1, false, b"B to A").await;
        sub_a.expect_on(&topic("marker-3")).await;
        // Published on B itself: B's own subscriber has it at once.
        sub_b.expect_on(&topic("marker-3")).await;

        let topics: Vec<String> = ["from-a", "from-b", "marker-1", "marker-2", "marker-3"]
            .into_iter()
            .map(topic)
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        assert_each_once("petrel A", sub_a, &topics);
        assert_each_once("petrel B", sub_b, &topics);
    }
}

/// Waits until `GET /v1/subscriptions?client={client_id}` on `petrel`
/// lists the client's subscription to `#`, and asserts petrel serves it as
/// a bridge's (the bridge bit accepted): No Local and Retain As Published.
async fn assert_served_as_a_bridge(petrel: &Petrel, client_id: &str) {
    let admin = petrel.admin_addr();
    let path = format!("/v1/subscriptions?client={client_id}");
    let mut last = Value::Null;
    let subscription = poll_until(WAIT, async || {
        let (status, body) = http_get(admin, &path).await.ok()?;
        last = serde_json::from_str(&body).unwrap_or(Value::String(body));
        if status != 200 {
            return None;
        }
        last["subscriptions"]
            .as_array()?
            .iter()
            .find(|s| s["filter"] == "#")
            .cloned()
    })
    .await
    .unwrap_or_else(|| {
        panic!("GET {path} never listed the bridge's subscription to #; last answer: {last:#}")
    });
    assert!(
        subscription["no_local"] == true && subscription["retain_as_published"] == true,
        "a 3.1.1 client with the bridge bit must be served as a bridge (its \
         subscriptions with No Local and Retain As Published): {subscription:#}"
    );
}

/// Petrel A has one MQTT 3.1.1 bridge to petrel B, `{ pattern = "#",
/// direction = "both", qos = 1 }`, with the bridge bit (the default
/// `try_private`), which B accepts. A message published on A reaches B
/// once, one published on B reaches A once, and neither comes back.
///
/// The quiet period is measured as in
/// `two_petrels_bridged_both_ways_deliver_once_and_do_not_loop`: markers
/// sent back and forth over the same bridge connection, in the direction
/// an echo would take, arrive after any echo of what came before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_petrels_bridged_both_ways_over_v311_deliver_once_and_do_not_loop() {
    let mut petrels = two_petrels("loop311", Protocol::V311).await;
    assert_served_as_a_bridge(&petrels.b, "petrel-bridge-to-b").await;
    assert!(
        !petrels.a.log().contains("refused the bridge bit"),
        "petrel B must accept the bridge bit (protocol level 0x84) of petrel A's \
         3.1.1 bridge; A's log:\n{}",
        petrels.a.log()
    );

    petrels.assert_each_crosses_once("loop311").await;
}

/// Mosquitto's own bridge (`connection`, 3.1.1, `try_private true`,
/// `topic # both 1`) into petrel. A message published on Mosquitto reaches
/// a subscriber on petrel once; one published on petrel reaches a
/// subscriber on Mosquitto once; and Mosquitto's subscriber sees the
/// message published on Mosquitto once: petrel honours the bridge bit and
/// sends nothing the bridge brought back over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquittos_own_v311_bridge_into_petrel_delivers_once_and_gets_no_echo() {
    let tag = "mosq-bridge";
    let bridge_client_id = "mosq-to-petrel";
    let petrel = Petrel::start_with_admin(tag, &[]).await;
    let connection = format!(
        "\nconnection to-petrel\n\
         address {}\n\
         remote_clientid {bridge_client_id}\n\
         bridge_protocol_version mqttv311\n\
         try_private true\n\
         restart_timeout 1 2\n\
         topic # both 1\n",
        petrel.addr()
    );
    let mosquitto = Mosquitto::start_with_config(tag, &connection).await;

    let mut sub_p = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-sub-p")).await;
    sub_p.subscribe("#", 1).await;
    let mut sub_m = Client::connect(mosquitto.addr(), Protocol::V5, &format!("{tag}-sub-m")).await;
    sub_m.subscribe("#", 1).await;
    let mut pub_p = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-pub-p")).await;
    let mut pub_m = Client::connect(mosquitto.addr(), Protocol::V5, &format!("{tag}-pub-m")).await;
    until_bridged(&mut pub_m, "mq/m/probe", &mut sub_p, "mq/m/probe").await;
    until_bridged(&mut pub_p, "mq/p/probe", &mut sub_m, "mq/p/probe").await;
    assert_served_as_a_bridge(&petrel, bridge_client_id).await;

    pub_m
        .publish("mq/from-mosquitto", 1, false, b"published on Mosquitto")
        .await;
    pub_p
        .publish("mq/from-petrel", 1, false, b"published on petrel")
        .await;
    sub_p.expect_on("mq/from-mosquitto").await;
    // Either may reach Mosquitto's subscriber first.
    for topic in ["mq/from-mosquitto", "mq/from-petrel"] {
        if !sub_m.history().iter().any(|m| m.topic == topic) {
            sub_m.expect_on(topic).await;
        }
    }

    // An echo of Mosquitto's message would go petrel -> Mosquitto: a
    // marker published on petrel after it arrived there comes behind it.
    pub_p.publish("mq/marker-1", 1, false, b"P to M").await;
    sub_m.expect_on("mq/marker-1").await;
    pub_m.publish("mq/marker-2", 1, false, b"M to P").await;
    sub_p.expect_on("mq/marker-2").await;
    pub_p.publish("mq/marker-3", 1, false, b"P to M").await;
    sub_m.expect_on("mq/marker-3").await;
    sub_p.expect_on("mq/marker-3").await;

    let topics = [
        "mq/from-mosquitto",
        "mq/from-petrel",
        "mq/marker-1",
        "mq/marker-2",
        "mq/marker-3",
    ];
    assert_each_once("petrel", &sub_p, &topics);
    assert_each_once("Mosquitto", &sub_m, &topics);
}
