//! Interop tests: third-party MQTT clients, run as child processes, against a
//! real broker.
//!
//! The clients are Mosquitto's command-line tools (`mosquitto_pub`,
//! `mosquitto_sub`; Debian package mosquitto-clients), Python paho-mqtt 2.x
//! and MQTT.js 5.x (npm `mqtt`, pinned by
//! `tests/interop/node/package-lock.json` and installed there with
//! `npm ci --prefix tests/interop/node`), driven by
//! the scripts in `tests/interop/` (one event per stdout line, see
//! `paho_common.py` and `node/mqttjs_common.js`), and rumqttc, run in process
//! by `interop/rumqttc_driver.rs`, which prints the same lines. A missing
//! tool fails the tests that need it.
//!
//! The matrix in conformance/README.md ("Interop matrix") lists, for every
//! client and protocol version, the test that proves each basic behaviour.
//!
//! A subscriber counts as subscribed once its client has received the SUBACK:
//! the paho, MQTT.js and rumqttc drivers print `SUBSCRIBED`, and
//! `mosquitto_sub -d` prints `Subscribed (mid: N): <codes>`. mosquitto_sub
//! flushes stdout only after a message, so it runs under `stdbuf -oL` to make
//! that line visible at once.
//!
//! Every topic, client id and share group carries a per-test unique prefix, so
//! all tests can share one external broker (`PETREL_TEST_BROKER`).
//!
//! This file holds the scenarios and the test list; `interop/streams.rs`
//! those of clients reading streams as consumer groups (on a petrel of their
//! own, since a stream is configured at start), `interop/stream_group.rs`
//! what they publish and check; `interop/clients.rs` knows how to make each
//! client program do things, `interop/process.rs` runs a program and reads
//! what it prints.

#[path = "interop/clients.rs"]
mod clients;
mod common;
#[path = "interop/process.rs"]
mod process;
#[path = "interop/rumqttc_driver.rs"]
mod rumqttc_driver;
#[path = "interop/scram.rs"]
mod scram;
#[path = "interop/stream_group.rs"]
mod stream_group;
#[path = "interop/streams.rs"]
mod streams;
#[path = "interop/transports.rs"]
mod transports;

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use clients::{Client, Ctx, Family, PublishProperties, SubscribeExtras, Version, parse_properties};
use common::WAIT;
use process::Received;

// ---------------------------------------------------------------------------
// The scenarios. The list below runs each with every client family and
// protocol version it applies to (v5 features with v5 clients only).
// ---------------------------------------------------------------------------

/// Two messages at `qos` from `publisher` reach `subscriber` once each, in
/// order, with their payloads intact and at the QoS they were sent with. The
/// first payload is long enough to need a two-byte remaining length.
async fn round_trip(ctx: &Ctx, publisher: Client, subscriber: Client, qos: u8) {
    let topic = ctx.topic("round-trip");
    let first = format!(
        "qos{qos} from {} to {} {}",
        publisher.label(),
        subscriber.label(),
        "x".repeat(300)
    );
    let second = format!("second qos{qos} message");

    let mut sub = subscriber.subscribe(ctx, &[&topic], qos).await;
    publisher
        .publish(ctx, qos, false, &[(&topic, &first), (&topic, &second)])
        .await;

    let got = sub.messages(2, "the two published messages").await;
    assert_eq!(
        got,
        vec![
            Received::new(&topic, qos, false, &first),
            Received::new(&topic, qos, false, &second),
        ],
        "{} subscribed at QoS {qos} to {topic}; {} published two QoS {qos} messages there",
        subscriber.label(),
        publisher.label(),
    );
}

/// A 200 kB QoS 1 message from mosquitto_pub (read from its stdin) reaches
/// `subscriber` byte for byte: both directions of the broker must handle
/// packets that span many TCP reads and writes.
async fn large_payload_round_trip(ctx: &Ctx, publisher: Client, subscriber: Client) {
    const SIZE: usize = 200_000;
    let topic = ctx.topic("large");
    // Letters from a simple generator, so a lost or repeated chunk shows.
    let mut state: u32 = 0x2545_f491;
    let payload: String = (0..SIZE)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            char::from(b'a' + (state >> 24) as u8 % 26)
        })
        .collect();

    let mut sub = subscriber.subscribe(ctx, &[&topic], 1).await;
    publisher.publish_stdin(ctx, 1, &topic, &payload).await;

    let got = sub.next_message("the large message").await;
    assert_eq!(
        (got.topic.as_str(), got.qos, got.retain),
        (topic.as_str(), 1, false),
        "{} subscribed at QoS 1; {} published {SIZE} bytes at QoS 1",
        subscriber.label(),
        publisher.label()
    );
    if got.payload != payload {
        let first_difference = got
            .payload
            .bytes()
            .zip(payload.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.payload.len().min(SIZE));
        panic!(
            "{} received a {} byte payload instead of the {SIZE} bytes {} published; \
             first difference at byte {first_difference}",
            subscriber.label(),
            got.payload.len(),
            publisher.label()
        );
    }
}

/// Keep-alive pings are answered and the connection stays usable. Waits for
/// the client's own record of PINGRESPs (mosquitto_sub's minimum keep alive
/// is 5 s, so it waits for one; paho with 1 s waits for two).
async fn keepalive_pings_are_answered(ctx: &Ctx, client: Client) {
    let (keepalive, pings) = match client.family {
        Family::Mosquitto => (5, 1),
        Family::Paho => (1, 2),
        Family::MqttJs | Family::Rumqttc => {
            panic!("{} is not driven to log its pings", client.label())
        }
    };
    let topic = ctx.topic("alive");
    let extras = SubscribeExtras {
        keepalive: Some(keepalive),
        ..SubscribeExtras::default()
    };
    let mut sub = client.subscribe_with(ctx, &[&topic], 1, extras).await;
    for n in 1..=pings {
        sub.wait_for(
            &format!("PINGRESP {n} of {pings} (keep alive {keepalive} s)"),
            |l| l.contains("eceived PINGRESP"),
        )
        .await;
    }
    client
        .publish(ctx, 1, false, &[(&topic, "still here")])
        .await;
    assert_eq!(
        sub.next_message("a message after the pings").await,
        Received::new(&topic, 1, false, "still here"),
        "{} with keep alive {keepalive} s, after {pings} ping(s)",
        client.label()
    );
}

/// v5 PUBLISH properties reach a v5 subscriber unchanged: user properties in
/// order (a name may repeat), content type, response topic, correlation data
/// and payload format indicator as sent, and the message expiry interval at
/// most counted down by the time the message waited.
async fn publish_properties_reach_subscriber(ctx: &Ctx, publisher: Client, subscriber: Client) {
    const EXPIRY: u32 = 300;
    let topic = ctx.topic("props");
    let properties = PublishProperties {
        user: vec![
            ("k1".into(), "v1".into()),
            ("k2".into(), "second value".into()),
            ("k1".into(), "repeated".into()),
        ],
        content_type: "text/plain; charset=utf-8".into(),
        response_topic: ctx.topic("reply"),
        correlation_data: "request-42".into(),
        payload_format_indicator: 1,
        message_expiry_secs: EXPIRY,
    };
    let extras = SubscribeExtras {
        show_properties: true,
        ..SubscribeExtras::default()
    };
    let mut sub = subscriber.subscribe_with(ctx, &[&topic], 1, extras).await;
    publisher
        .publish_with_properties(ctx, 1, &topic, "with properties", &properties)
        .await;

    assert_eq!(
        sub.next_message("the message with properties").await,
        Received::new(&topic, 1, false, "with properties"),
    );
    let line = sub
        .wait_for("the message's properties", |l| l.starts_with("PROPS "))
        .await;
    let mut got = parse_properties(&line);
    let expiry = got.remove("ex").unwrap_or_default();
    let users: Vec<String> = properties
        .user
        .iter()
        .map(|(name, value)| format!("{name}:{value}"))
        .collect();
    let expected: BTreeMap<String, String> = [
        ("ct", properties.content_type.clone()),
        ("rt", properties.response_topic.clone()),
        ("cd", properties.correlation_data.clone()),
        ("pf", properties.payload_format_indicator.to_string()),
        ("up", users.join(" ")),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect();
    assert_eq!(
        got,
        expected,
        "{} published with {properties:?}; {} received `{line}`",
        publisher.label(),
        subscriber.label()
    );
    let remaining: u32 = expiry
        .parse()
        .unwrap_or_else(|_| panic!("message expiry interval missing or not a number: `{line}`"));
    assert!(
        (EXPIRY - WAIT.as_secs() as u32..=EXPIRY).contains(&remaining),
        "message expiry interval sent as {EXPIRY} s arrived as {remaining} s"
    );
}

/// The QoS of a delivered message is the lower of the publish QoS and the
/// subscription's: a QoS 1 subscriber gets QoS 0 as 0 and QoS 1 and 2 as 1.
async fn delivered_qos_is_the_lower_of_publish_and_subscription(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("downgrade");
    let mut sub = client.subscribe(ctx, &[&topic], 1).await;
    for qos in 0..=2 {
        let payload = format!("sent at qos{qos}");
        client.publish(ctx, qos, false, &[(&topic, &payload)]).await;
    }
    let mut got: Vec<(String, u8)> = sub
        .messages(3, "the three messages")
        .await
        .into_iter()
        .map(|m| (m.payload, m.qos))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("sent at qos0".to_string(), 0),
            ("sent at qos1".to_string(), 1),
            ("sent at qos2".to_string(), 1),
        ],
        "{} subscribed at QoS 1; one message was published at each QoS",
        client.label()
    );
}

/// A retained publish forwarded to an existing subscription arrives with the
/// retain flag cleared (3.1.1 always; v5 unless Retain As Published is set);
/// only delivery on subscribing sets it.
async fn retain_flag_cleared_for_existing_subscription(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("live-retained");
    let mut sub = client.subscribe(ctx, &[&topic], 1).await;
    client
        .publish(ctx, 1, true, &[(&topic, "retained live")])
        .await;
    let got = sub.next_message("the retained message").await;
    client.publish(ctx, 1, true, &[(&topic, "")]).await;
    assert_eq!(
        got,
        Received::new(&topic, 1, false, "retained live"),
        "{} subscribed, then a retained message was published on its topic",
        client.label()
    );
}

/// v5 No Local: a client does not get its own messages back through a
/// no-local subscription, but does get other clients' messages.
async fn no_local_subscription_skips_own_messages(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("no-local");
    let extras = SubscribeExtras {
        no_local: true,
        publish_after_subscribe: Some((topic.clone(), "own".into())),
        ..SubscribeExtras::default()
    };
    // Returns once its own message was acknowledged by the broker.
    let mut sub = client.subscribe_with(ctx, &[&topic], 1, extras).await;
    client.publish(ctx, 1, false, &[(&topic, "other")]).await;
    assert_eq!(
        sub.next_message("the other client's message").await,
        Received::new(&topic, 1, false, "other"),
        "{} subscribed with No Local and published `own` on the same topic, then \
         another client published `other`",
        client.label()
    );
}

/// v5 Retain As Published: a retained publish forwarded to an existing
/// subscription keeps its retain flag.
async fn retain_as_published_keeps_retain_flag(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("rap");
    let extras = SubscribeExtras {
        retain_as_published: true,
        ..SubscribeExtras::default()
    };
    let mut sub = client.subscribe_with(ctx, &[&topic], 1, extras).await;
    client.publish(ctx, 1, false, &[(&topic, "plain")]).await;
    client.publish(ctx, 1, true, &[(&topic, "retained")]).await;
    let got = sub.messages(2, "the two messages").await;
    client.publish(ctx, 1, true, &[(&topic, "")]).await;
    assert_eq!(
        got,
        vec![
            Received::new(&topic, 1, false, "plain"),
            Received::new(&topic, 1, true, "retained"),
        ],
        "{} subscribed with Retain As Published; a plain then a retained message followed",
        client.label()
    );
}

/// v5 Retain Handling 2: no retained messages on subscribing.
async fn retain_handling_2_sends_no_retained_messages(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("rh2");
    client.publish(ctx, 1, true, &[(&topic, "kept")]).await;
    let extras = SubscribeExtras {
        retain_handling: 2,
        ..SubscribeExtras::default()
    };
    let mut sub = client.subscribe_with(ctx, &[&topic], 1, extras).await;
    client.publish(ctx, 1, false, &[(&topic, "live")]).await;
    let got = sub.next_message("the live message").await;
    client.publish(ctx, 1, true, &[(&topic, "")]).await;
    assert_eq!(
        got,
        Received::new(&topic, 1, false, "live"),
        "{} subscribed with Retain Handling 2 to a topic with a retained message, then a \
         live message was published: the retained one must not be sent",
        client.label()
    );
}

/// v5 Retain Handling 1: retained messages only when the subscription is
/// new, so subscribing again to the same filter does not resend them.
async fn retain_handling_1_sends_retained_only_for_new_subscription(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("rh1");
    client.publish(ctx, 1, true, &[(&topic, "kept")]).await;
    let extras = SubscribeExtras {
        retain_handling: 1,
        resubscribe: true,
        ..SubscribeExtras::default()
    };
    // Returns after both SUBACKs.
    let mut sub = client.subscribe_with(ctx, &[&topic], 1, extras).await;
    client.publish(ctx, 1, false, &[(&topic, "live")]).await;
    let got = sub.messages(2, "the retained and the live message").await;
    client.publish(ctx, 1, true, &[(&topic, "")]).await;
    assert_eq!(
        got,
        vec![
            Received::new(&topic, 1, true, "kept"),
            Received::new(&topic, 1, false, "live"),
        ],
        "{} subscribed twice with Retain Handling 1 to a topic with a retained message, \
         then a live message was published: the retained one must come once",
        client.label()
    );
}

/// `+` matches exactly one level and `#` the parent level and any number of
/// levels below; neither matches anything else.
async fn wildcard_subscriptions(ctx: &Ctx, client: Client) {
    let base = ctx.topic("wild");
    let plus = format!("{base}/plus/+/temp");
    let hash = format!("{base}/hash/#");
    let marker = format!("{base}/hash/zz-end");
    let matching: Vec<String> = ["plus/a/temp", "plus/b/temp", "hash", "hash/x", "hash/x/y/z"]
        .iter()
        .map(|t| format!("{base}/{t}"))
        .collect();
    let not_matching: Vec<String> = [
        "plus/a/b/temp",
        "plus/a/humidity",
        "plus/temp",
        "hashx/x",
        "other/hash/x",
    ]
    .iter()
    .map(|t| format!("{base}/{t}"))
    .collect();

    let mut sub = client.subscribe(ctx, &[&plus, &hash], 1).await;

    // Interleave so that a wrong match arrives before the marker does.
    let mut publishes: Vec<(&str, &str)> = Vec::new();
    for (yes, no) in matching.iter().zip(&not_matching) {
        publishes.push((no, "should not arrive"));
        publishes.push((yes, "should arrive"));
    }
    publishes.push((&marker, "end"));
    client.publish(ctx, 1, false, &publishes).await;

    let mut expected: BTreeSet<String> = matching.iter().cloned().collect();
    expected.insert(marker.clone());
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<Received> = Vec::new();
    while !expected.iter().all(|t| got.iter().any(|m| &m.topic == t)) {
        match sub.next_message_before(deadline).await {
            Some(message) => got.push(message),
            None => panic!(
                "timed out after {WAIT:?}: {} subscribed to {plus} and {hash} should get \
                 {expected:?}; got {got:#?}\n{}",
                client.label(),
                sub.report()
            ),
        }
    }
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    let unique: BTreeSet<String> = topics.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        unique,
        expected,
        "{} subscribed to {plus} and {hash} received messages on topics that match neither",
        client.label()
    );
    assert_eq!(
        topics.len(),
        unique.len(),
        "a message was delivered twice: {topics:#?}"
    );
    assert!(got.iter().all(|m| m.qos == 1), "all at QoS 1: {got:#?}");
}

/// A retained message published before anyone subscribes is delivered to a
/// later subscriber, with the retain flag set.
async fn retained_message_reaches_later_subscriber(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("retained");
    client.publish(ctx, 1, true, &[(&topic, "kept")]).await;

    let mut sub = client.subscribe(ctx, &[&topic], 1).await;
    let got = sub.next_message("the retained message").await;
    assert_eq!(
        got,
        Received::new(&topic, 1, true, "kept"),
        "{} published a retained QoS 1 message, then subscribed at QoS 1",
        client.label()
    );

    // Leave nothing behind on a shared external broker.
    client.publish(ctx, 1, true, &[(&topic, "")]).await;
}

/// A retained publish with an empty payload removes the retained message: a
/// later subscriber gets nothing on subscribing, so the first message it sees
/// is the live one published after its SUBACK.
async fn empty_retained_payload_clears_retained_message(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("cleared");
    client.publish(ctx, 1, true, &[(&topic, "stale")]).await;
    // First show the message was retained, so its absence later means
    // something.
    let mut first = client.subscribe(ctx, &[&topic], 1).await;
    assert_eq!(
        first.next_message("the retained message").await,
        Received::new(&topic, 1, true, "stale"),
        "{} published a retained QoS 1 message, then subscribed at QoS 1",
        client.label()
    );
    drop(first);
    client.publish(ctx, 1, true, &[(&topic, "")]).await;

    let mut sub = client.subscribe(ctx, &[&topic], 1).await;
    client.publish(ctx, 1, false, &[(&topic, "live")]).await;
    let got = sub.next_message("the live message").await;
    assert_eq!(
        got,
        Received::new(&topic, 1, false, "live"),
        "{} set a retained message, cleared it with an empty retained payload, subscribed, \
         then published a live message: the cleared message must not be delivered",
        client.label()
    );
}

/// A client that vanishes without DISCONNECT (its process is SIGKILLed) has
/// its will published.
async fn will_published_when_client_is_killed(ctx: &Ctx, client: Client) {
    let will_topic = ctx.topic("will");
    let payload = format!("{} went away", client.label());
    let mut watcher = client.subscribe(ctx, &[&will_topic], 1).await;

    let mut doomed = client
        .connect_with_will(ctx, &will_topic, &payload, 1)
        .await;
    doomed.kill().await;

    let got = watcher.next_message("the will message").await;
    assert_eq!(
        got,
        Received::new(&will_topic, 1, false, &payload),
        "{} connected with a QoS 1 will on {will_topic} and was killed with SIGKILL",
        client.label()
    );
}

/// A client that disconnects normally has its will discarded: the first
/// message on the will topic is a marker published afterwards.
async fn will_not_published_after_clean_disconnect(ctx: &Ctx, client: Client) {
    let will_topic = ctx.topic("will");
    let mut watcher = client.subscribe(ctx, &[&will_topic], 1).await;

    client
        .connect_with_will_then_disconnect(ctx, &will_topic, "must not be sent", 1)
        .await;
    client
        .publish(ctx, 1, false, &[(&will_topic, "marker")])
        .await;

    let got = watcher.next_message("the marker").await;
    assert_eq!(
        got,
        Received::new(&will_topic, 1, false, "marker"),
        "{} connected with a will on {will_topic} and disconnected normally: the will must \
         be discarded",
        client.label()
    );
}

/// A persistent session (clean session 0 / clean start 0 with a session
/// expiry) subscribed at QoS 1 gets, on reconnecting, the QoS 1 messages
/// published while it was offline, in order.
async fn persistent_session_receives_messages_queued_while_offline(ctx: &Ctx, client: Client) {
    let topic = ctx.topic("session");
    let id = ctx.client_id("sess");
    client.leave_persistent_session(ctx, &id, &topic).await;

    let payloads = ["queued-1", "queued-2", "queued-3"];
    let publishes: Vec<(&str, &str)> = payloads.iter().map(|p| (topic.as_str(), *p)).collect();
    client.publish(ctx, 1, false, &publishes).await;

    let mut resumed = client.resume_persistent_session(ctx, &id, &topic).await;
    let got = resumed
        .messages(payloads.len(), "the messages queued while offline")
        .await;
    let expected: Vec<Received> = payloads
        .iter()
        .map(|p| Received::new(&topic, 1, false, p))
        .collect();
    assert_eq!(
        got,
        expected,
        "{} (client id {id}) subscribed at QoS 1 to {topic} with a persistent session, \
         disconnected, three QoS 1 messages were published, then it reconnected",
        client.label()
    );
}

/// Two members of one share group split the messages: each gets some, none
/// gets a message twice or a message the other got, and all are delivered.
async fn shared_subscription_splits_messages(ctx: &Ctx, client: Client) {
    const COUNT: usize = 20;
    let jobs = ctx.topic("jobs");
    let done = ctx.topic("done");
    let shared = format!("$share/g{}/{jobs}", ctx.seed);

    // Both also subscribe (unshared) to `done`: a marker published after the
    // jobs tells each member that it has had its share.
    let mut a = client.subscribe(ctx, &[&shared, &done], 1).await;
    let mut b = client.subscribe(ctx, &[&shared, &done], 1).await;

    let payloads: Vec<String> = (0..COUNT).map(|i| format!("job-{i:02}")).collect();
    let publishes: Vec<(&str, &str)> = payloads
        .iter()
        .map(|p| (jobs.as_str(), p.as_str()))
        .collect();
    client.publish(ctx, 1, false, &publishes).await;
    client.publish(ctx, 1, false, &[(&done, "end")]).await;

    let deadline = Instant::now() + WAIT;
    let mut got: [Vec<Received>; 2] = [Vec::new(), Vec::new()];
    let all: BTreeSet<&str> = payloads.iter().map(String::as_str).collect();
    loop {
        let ended = |msgs: &Vec<Received>| msgs.iter().any(|m| m.topic == done);
        let delivered: BTreeSet<&str> = got
            .iter()
            .flatten()
            .filter(|m| m.topic == jobs)
            .map(|m| m.payload.as_str())
            .collect();
        if ended(&got[0]) && ended(&got[1]) && delivered == all {
            break;
        }
        let (message, from) = tokio::select! {
            m = a.next_message_before(deadline) => (m, 0),
            m = b.next_message_before(deadline) => (m, 1),
        };
        match message {
            Some(message) => got[from].push(message),
            None => panic!(
                "timed out after {WAIT:?}: two {} members of {shared} should share {COUNT} \
                 messages and both get the marker on {done}; missing {:?}\nfirst got {:#?}\n\
                 second got {:#?}\n{}\n{}",
                client.label(),
                all.difference(&delivered).collect::<Vec<_>>(),
                got[0],
                got[1],
                a.report(),
                b.report()
            ),
        }
    }

    let shares: Vec<Vec<&str>> = got
        .iter()
        .map(|msgs| {
            msgs.iter()
                .filter(|m| m.topic == jobs)
                .map(|m| m.payload.as_str())
                .collect()
        })
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for payload in shares.iter().flatten() {
        *counts.entry(payload).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "messages delivered more than once across {shared}: {duplicated:?}\nfirst: {:?}\n\
         second: {:?}",
        shares[0],
        shares[1]
    );
    assert!(
        !shares[0].is_empty() && !shares[1].is_empty(),
        "{COUNT} messages on {jobs} should be split across both members of {shared}; \
         first got {:?}, second got {:?}",
        shares[0],
        shares[1]
    );
    assert!(
        got.iter().flatten().all(|m| m.qos == 1 && !m.retain),
        "all at QoS 1, not retained: {got:#?}"
    );
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

const MOSQUITTO_V311: Client = Client {
    family: Family::Mosquitto,
    version: Version::V311,
};
const MOSQUITTO_V5: Client = Client {
    family: Family::Mosquitto,
    version: Version::V5,
};
const PAHO_V311: Client = Client {
    family: Family::Paho,
    version: Version::V311,
};
const PAHO_V5: Client = Client {
    family: Family::Paho,
    version: Version::V5,
};
const MQTTJS_V311: Client = Client {
    family: Family::MqttJs,
    version: Version::V311,
};
const MQTTJS_V5: Client = Client {
    family: Family::MqttJs,
    version: Version::V5,
};
const RUMQTTC_V311: Client = Client {
    family: Family::Rumqttc,
    version: Version::V311,
};
const RUMQTTC_V5: Client = Client {
    family: Family::Rumqttc,
    version: Version::V5,
};

macro_rules! interop_tests {
    ($($name:ident: $scenario:ident($($arg:expr),*);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let broker = common::start_broker().await;
            let ctx = Ctx::new(broker.addr, stringify!($name));
            $scenario(&ctx, $($arg),*).await;
        }
    )*};
}

interop_tests! {
    mosquitto_clients_v311_qos0_round_trip: round_trip(MOSQUITTO_V311, MOSQUITTO_V311, 0);
    mosquitto_clients_v311_qos1_round_trip: round_trip(MOSQUITTO_V311, MOSQUITTO_V311, 1);
    mosquitto_clients_v311_qos2_round_trip: round_trip(MOSQUITTO_V311, MOSQUITTO_V311, 2);
    mosquitto_clients_v5_qos0_round_trip: round_trip(MOSQUITTO_V5, MOSQUITTO_V5, 0);
    mosquitto_clients_v5_qos1_round_trip: round_trip(MOSQUITTO_V5, MOSQUITTO_V5, 1);
    mosquitto_clients_v5_qos2_round_trip: round_trip(MOSQUITTO_V5, MOSQUITTO_V5, 2);
    paho_v311_qos0_round_trip: round_trip(PAHO_V311, PAHO_V311, 0);
    paho_v311_qos1_round_trip: round_trip(PAHO_V311, PAHO_V311, 1);
    paho_v311_qos2_round_trip: round_trip(PAHO_V311, PAHO_V311, 2);
    paho_v5_qos0_round_trip: round_trip(PAHO_V5, PAHO_V5, 0);
    paho_v5_qos1_round_trip: round_trip(PAHO_V5, PAHO_V5, 1);
    paho_v5_qos2_round_trip: round_trip(PAHO_V5, PAHO_V5, 2);

    paho_v5_publisher_reaches_mosquitto_v311_subscriber_at_qos2:
        round_trip(PAHO_V5, MOSQUITTO_V311, 2);
    mosquitto_v311_publisher_reaches_paho_v5_subscriber_at_qos1:
        round_trip(MOSQUITTO_V311, PAHO_V5, 1);
    paho_v311_publisher_reaches_mosquitto_v5_subscriber_at_qos2:
        round_trip(PAHO_V311, MOSQUITTO_V5, 2);

    mosquitto_clients_v311_200kb_payload_round_trip:
        large_payload_round_trip(MOSQUITTO_V311, MOSQUITTO_V311);
    mosquitto_clients_v5_200kb_payload_round_trip:
        large_payload_round_trip(MOSQUITTO_V5, MOSQUITTO_V5);
    paho_v311_subscriber_receives_200kb_payload_from_mosquitto_pub:
        large_payload_round_trip(MOSQUITTO_V311, PAHO_V311);
    paho_v5_subscriber_receives_200kb_payload_from_mosquitto_pub:
        large_payload_round_trip(MOSQUITTO_V5, PAHO_V5);

    mosquitto_clients_v311_keepalive_pings_are_answered:
        keepalive_pings_are_answered(MOSQUITTO_V311);
    mosquitto_clients_v5_keepalive_pings_are_answered: keepalive_pings_are_answered(MOSQUITTO_V5);
    paho_v311_keepalive_pings_are_answered: keepalive_pings_are_answered(PAHO_V311);
    paho_v5_keepalive_pings_are_answered: keepalive_pings_are_answered(PAHO_V5);

    mosquitto_clients_v5_publish_properties_reach_subscriber:
        publish_properties_reach_subscriber(MOSQUITTO_V5, MOSQUITTO_V5);
    paho_v5_publish_properties_reach_subscriber:
        publish_properties_reach_subscriber(PAHO_V5, PAHO_V5);
    paho_v5_publish_properties_reach_mosquitto_v5_subscriber:
        publish_properties_reach_subscriber(PAHO_V5, MOSQUITTO_V5);
    mosquitto_v5_publish_properties_reach_paho_v5_subscriber:
        publish_properties_reach_subscriber(MOSQUITTO_V5, PAHO_V5);

    mosquitto_clients_v311_delivered_qos_is_the_lower_of_publish_and_subscription:
        delivered_qos_is_the_lower_of_publish_and_subscription(MOSQUITTO_V311);
    mosquitto_clients_v5_delivered_qos_is_the_lower_of_publish_and_subscription:
        delivered_qos_is_the_lower_of_publish_and_subscription(MOSQUITTO_V5);
    paho_v311_delivered_qos_is_the_lower_of_publish_and_subscription:
        delivered_qos_is_the_lower_of_publish_and_subscription(PAHO_V311);
    paho_v5_delivered_qos_is_the_lower_of_publish_and_subscription:
        delivered_qos_is_the_lower_of_publish_and_subscription(PAHO_V5);

    mosquitto_clients_v311_retain_flag_cleared_for_existing_subscription:
        retain_flag_cleared_for_existing_subscription(MOSQUITTO_V311);
    mosquitto_clients_v5_retain_flag_cleared_for_existing_subscription:
        retain_flag_cleared_for_existing_subscription(MOSQUITTO_V5);
    paho_v311_retain_flag_cleared_for_existing_subscription:
        retain_flag_cleared_for_existing_subscription(PAHO_V311);
    paho_v5_retain_flag_cleared_for_existing_subscription:
        retain_flag_cleared_for_existing_subscription(PAHO_V5);

    paho_v5_no_local_subscription_skips_own_messages:
        no_local_subscription_skips_own_messages(PAHO_V5);
    paho_v5_retain_as_published_keeps_retain_flag: retain_as_published_keeps_retain_flag(PAHO_V5);
    paho_v5_retain_handling_2_sends_no_retained_messages:
        retain_handling_2_sends_no_retained_messages(PAHO_V5);
    paho_v5_retain_handling_1_sends_retained_only_for_new_subscription:
        retain_handling_1_sends_retained_only_for_new_subscription(PAHO_V5);

    mosquitto_clients_v311_wildcard_subscriptions_match_plus_and_hash:
        wildcard_subscriptions(MOSQUITTO_V311);
    mosquitto_clients_v5_wildcard_subscriptions_match_plus_and_hash:
        wildcard_subscriptions(MOSQUITTO_V5);
    paho_v311_wildcard_subscriptions_match_plus_and_hash: wildcard_subscriptions(PAHO_V311);
    paho_v5_wildcard_subscriptions_match_plus_and_hash: wildcard_subscriptions(PAHO_V5);

    mosquitto_clients_v311_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(MOSQUITTO_V311);
    mosquitto_clients_v5_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(MOSQUITTO_V5);
    paho_v311_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(PAHO_V311);
    paho_v5_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(PAHO_V5);

    mosquitto_clients_v311_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(MOSQUITTO_V311);
    mosquitto_clients_v5_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(MOSQUITTO_V5);
    paho_v311_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(PAHO_V311);
    paho_v5_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(PAHO_V5);

    mosquitto_clients_v311_will_published_when_client_is_killed:
        will_published_when_client_is_killed(MOSQUITTO_V311);
    mosquitto_clients_v5_will_published_when_client_is_killed:
        will_published_when_client_is_killed(MOSQUITTO_V5);
    paho_v311_will_published_when_client_is_killed:
        will_published_when_client_is_killed(PAHO_V311);
    paho_v5_will_published_when_client_is_killed:
        will_published_when_client_is_killed(PAHO_V5);

    mosquitto_clients_v311_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(MOSQUITTO_V311);
    mosquitto_clients_v5_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(MOSQUITTO_V5);
    paho_v311_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(PAHO_V311);
    paho_v5_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(PAHO_V5);

    mosquitto_clients_v311_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(MOSQUITTO_V311);
    mosquitto_clients_v5_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(MOSQUITTO_V5);
    paho_v311_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(PAHO_V311);
    paho_v5_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(PAHO_V5);

    mosquitto_clients_v311_shared_subscription_splits_messages_between_two_subscribers:
        shared_subscription_splits_messages(MOSQUITTO_V311);
    mosquitto_clients_v5_shared_subscription_splits_messages_between_two_subscribers:
        shared_subscription_splits_messages(MOSQUITTO_V5);
    paho_v311_shared_subscription_splits_messages_between_two_subscribers:
        shared_subscription_splits_messages(PAHO_V311);
    paho_v5_shared_subscription_splits_messages_between_two_subscribers:
        shared_subscription_splits_messages(PAHO_V5);

    mqttjs_v311_qos0_round_trip: round_trip(MQTTJS_V311, MQTTJS_V311, 0);
    mqttjs_v311_qos1_round_trip: round_trip(MQTTJS_V311, MQTTJS_V311, 1);
    mqttjs_v311_qos2_round_trip: round_trip(MQTTJS_V311, MQTTJS_V311, 2);
    mqttjs_v311_wildcard_subscriptions_match_plus_and_hash: wildcard_subscriptions(MQTTJS_V311);
    mqttjs_v311_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(MQTTJS_V311);
    mqttjs_v311_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(MQTTJS_V311);
    mqttjs_v311_will_published_when_client_is_killed:
        will_published_when_client_is_killed(MQTTJS_V311);
    mqttjs_v311_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(MQTTJS_V311);
    mqttjs_v311_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(MQTTJS_V311);
    mqttjs_v5_qos0_round_trip: round_trip(MQTTJS_V5, MQTTJS_V5, 0);
    mqttjs_v5_qos1_round_trip: round_trip(MQTTJS_V5, MQTTJS_V5, 1);
    mqttjs_v5_qos2_round_trip: round_trip(MQTTJS_V5, MQTTJS_V5, 2);
    mqttjs_v5_wildcard_subscriptions_match_plus_and_hash: wildcard_subscriptions(MQTTJS_V5);
    mqttjs_v5_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(MQTTJS_V5);
    mqttjs_v5_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(MQTTJS_V5);
    mqttjs_v5_will_published_when_client_is_killed: will_published_when_client_is_killed(MQTTJS_V5);
    mqttjs_v5_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(MQTTJS_V5);
    mqttjs_v5_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(MQTTJS_V5);
    rumqttc_v311_qos0_round_trip: round_trip(RUMQTTC_V311, RUMQTTC_V311, 0);
    rumqttc_v311_qos1_round_trip: round_trip(RUMQTTC_V311, RUMQTTC_V311, 1);
    rumqttc_v311_qos2_round_trip: round_trip(RUMQTTC_V311, RUMQTTC_V311, 2);
    rumqttc_v311_wildcard_subscriptions_match_plus_and_hash: wildcard_subscriptions(RUMQTTC_V311);
    rumqttc_v311_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(RUMQTTC_V311);
    rumqttc_v311_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(RUMQTTC_V311);
    rumqttc_v311_will_published_when_client_is_killed:
        will_published_when_client_is_killed(RUMQTTC_V311);
    rumqttc_v311_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(RUMQTTC_V311);
    rumqttc_v311_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(RUMQTTC_V311);
    rumqttc_v5_qos0_round_trip: round_trip(RUMQTTC_V5, RUMQTTC_V5, 0);
    rumqttc_v5_qos1_round_trip: round_trip(RUMQTTC_V5, RUMQTTC_V5, 1);
    rumqttc_v5_qos2_round_trip: round_trip(RUMQTTC_V5, RUMQTTC_V5, 2);
    rumqttc_v5_wildcard_subscriptions_match_plus_and_hash: wildcard_subscriptions(RUMQTTC_V5);
    rumqttc_v5_retained_message_reaches_later_subscriber:
        retained_message_reaches_later_subscriber(RUMQTTC_V5);
    rumqttc_v5_empty_retained_payload_clears_retained_message:
        empty_retained_payload_clears_retained_message(RUMQTTC_V5);
    rumqttc_v5_will_published_when_client_is_killed:
        will_published_when_client_is_killed(RUMQTTC_V5);
    rumqttc_v5_will_not_published_after_clean_disconnect:
        will_not_published_after_clean_disconnect(RUMQTTC_V5);
    rumqttc_v5_persistent_session_receives_qos1_queued_while_offline:
        persistent_session_receives_messages_queued_while_offline(RUMQTTC_V5);
    mqttjs_v5_publisher_reaches_rumqttc_v311_subscriber_at_qos2:
        round_trip(MQTTJS_V5, RUMQTTC_V311, 2);
    rumqttc_v5_publisher_reaches_mqttjs_v311_subscriber_at_qos1:
        round_trip(RUMQTTC_V5, MQTTJS_V311, 1);
    mqttjs_v311_publisher_reaches_paho_v5_subscriber_at_qos2:
        round_trip(MQTTJS_V311, PAHO_V5, 2);
    mosquitto_v5_publisher_reaches_mqttjs_v5_subscriber_at_qos2:
        round_trip(MOSQUITTO_V5, MQTTJS_V5, 2);
    rumqttc_v311_publisher_reaches_mosquitto_v5_subscriber_at_qos1:
        round_trip(RUMQTTC_V311, MOSQUITTO_V5, 1);
    paho_v311_publisher_reaches_rumqttc_v5_subscriber_at_qos2:
        round_trip(PAHO_V311, RUMQTTC_V5, 2);
}
