//! The bridge's outbound queue bound (`max_queued_bytes`) with the remote
//! away: `queue_full = "drop_new"` keeps the first messages that fit and
//! drops, counts and never sends the rest; `queue_full = "refuse"` refuses
//! a QoS 1 publisher with v5 PUBACK 0x97 once the queue is full.

use std::net::SocketAddr;

use serde_json::Value;

use crate::client::{Client, Msg, Protocol};
use crate::mosquitto::Mosquitto;
use crate::petrel_process::{Bridge, Petrel};
use crate::support::{BULK_WAIT, WAIT, free_port, loopback, poll_until};
use crate::{
    admin_json, bridge_list, collect_until, has_topic, persistent_subscriber,
    persistent_subscriber_back, wait_for_bridge_session,
};

/// The bridge's `max_queued_bytes`.
const BOUND: u64 = 2000;

/// Messages published while the remote is away.
const PUBLISHED: u32 = 50;

/// The topic they are published on (and forwarded under).
const TOPIC: &str = "bounded/seq";

/// Payload bytes of each message.
const PAYLOAD_BYTES: usize = 100;

/// Message `i`: its number, a dot, padding to [`PAYLOAD_BYTES`].
fn payload(i: u32) -> Vec<u8> {
    let mut payload = format!("{i:03}.").into_bytes();
    payload.resize(PAYLOAD_BYTES, b'x');
    payload
}

/// The number of a message made by [`payload`].
fn number(msg: &Msg) -> u32 {
    msg.text()
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered payload: {msg:?}"))
}

/// How many messages fit under [`BOUND`] as the queue counts them (a
/// message's size is its topic, payload and properties, see
/// `Message::size`): 2000 / (11 + 100) = 18.
fn fitting() -> u64 {
    BOUND / (TOPIC.len() + PAYLOAD_BYTES) as u64
}

/// A bridge `name` to `remote`, `out` at QoS 1 on `bounded/#` unchanged,
/// queue bounded to [`BOUND`] bytes, full queue handled by `queue_full`.
fn bounded_bridge(name: &str, remote: SocketAddr, queue_full: &str) -> Bridge {
    Bridge::new(name, remote, Protocol::V5)
        .setting("max_queued_bytes", &BOUND.to_string())
        .setting("queue_full", &format!("\"{queue_full}\""))
        .rule("bounded/#", "out", 1, "", "")
}

/// The entry of bridge `name` in `GET /v1/bridges` once `ready` holds for
/// it (within [`WAIT`]); panics with the last answer otherwise.
async fn bridge_entry(
    petrel: &Petrel,
    name: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let admin = petrel.admin_addr();
    let mut last = Value::Null;
    let found = poll_until(WAIT, async || {
        last = admin_json(admin, "/v1/bridges").await;
        bridge_list(&last)
            .into_iter()
            .find(|bridge| bridge["name"] == name && ready(bridge))
    })
    .await;
    found.unwrap_or_else(|| {
        panic!("GET /v1/bridges never showed bridge {name:?} {what}; last answer: {last:#}")
    })
}

/// Remote (Mosquitto) down, `drop_new`, 50 QoS 1 messages of 100 bytes:
/// all are acknowledged; `GET /v1/bridges` shows the queue at most 2000
/// bytes with the first messages that fit, and the others counted as
/// dropped. Mosquitto back: its persistent subscriber gets exactly those
/// first messages, in order, and none of the dropped ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bridge_queue_drops_new_messages_and_sends_the_first_that_fit() {
    let tag = "bound-drop";
    let name = "bounded";
    let mut mosquitto = Mosquitto::start(tag).await;
    let subscriber_id = format!("{tag}-remote");
    persistent_subscriber(&mosquitto, &subscriber_id, "bounded/#").await;
    mosquitto.stop().await;

    let bridge = bounded_bridge(name, mosquitto.addr(), "drop_new");
    let petrel = Petrel::start_with_admin(tag, &[bridge]).await;
    wait_for_bridge_session(petrel.admin_addr(), name).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;
    // Every one acknowledged (publish_all waits for all 50 PUBACKs); a
    // message the full queue dropped may be acknowledged with any reason.
    let reasons = local
        .publish_all(
            1,
            false,
            (0..PUBLISHED).map(|i| (TOPIC.to_string(), payload(i))),
        )
        .await;

    let full = bridge_entry(&petrel, name, "with dropped > 0", |b| {
        b["dropped"].as_u64() > Some(0)
    })
    .await;
    let queued = full["queued_messages"].as_u64().unwrap_or_default();
    let queued_bytes = full["queued_bytes"].as_u64().unwrap_or(u64::MAX);
    let dropped = full["dropped"].as_u64().unwrap_or_default();
    assert!(
        queued_bytes <= BOUND && queued > 0 && queued + dropped == u64::from(PUBLISHED),
        "with the remote down nothing is in flight: GET /v1/bridges must show the \
         queue within max_queued_bytes = {BOUND} and every one of the {PUBLISHED} \
         messages either queued or dropped: {full:#}\n(PUBACK reasons other than \
         Success: {reasons:?})"
    );
    assert_eq!(
        queued,
        fitting(),
        "the queue must hold as many messages as fit in {BOUND} bytes (topic + \
         payload each, {} bytes): {full:#}",
        TOPIC.len() + PAYLOAD_BYTES
    );

    mosquitto.restart().await;
    let mut remote = persistent_subscriber_back(&mosquitto, &subscriber_id).await;
    bridge_entry(&petrel, name, "connected with its queue drained", |b| {
        b["connected"] == true && b["queued_messages"] == 0
    })
    .await;
    // Published once the queue has room again: it goes out behind
    // whatever the bridge sent, so a dropped message that went out after
    // all would arrive before it.
    local.publish("bounded/end", 1, false, b"end").await;
    let got = collect_until(&mut remote, BULK_WAIT, |msgs| {
        has_topic(msgs, "bounded/end")
    })
    .await;
    assert!(
        has_topic(&got, "bounded/end"),
        "the marker published after the queue drained never reached Mosquitto: {got:#?}"
    );
    let numbers: Vec<u32> = got
        .iter()
        .filter(|m| m.topic == TOPIC)
        .map(number)
        .collect();
    let expected: Vec<u32> = (0..u32::try_from(queued).unwrap_or(u32::MAX)).collect();
    assert_eq!(
        numbers, expected,
        "the remote subscriber must get exactly the {queued} messages that were \
         queued (the first ones), in order, once each, and none of the {dropped} \
         dropped ones"
    );
}

/// Remote down (nothing listens), `refuse`: QoS 1 messages published one
/// after the other are accepted (PUBACK Success) while they fit, and once
/// the queue is full every further one is refused with v5 PUBACK 0x97
/// (Quota exceeded), none dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bridge_queue_with_refuse_answers_quota_exceeded() {
    let tag = "bound-refuse";
    let name = "refusing";
    let nowhere = loopback(free_port());
    let bridge = bounded_bridge(name, nowhere, "refuse");
    let petrel = Petrel::start_with_admin(tag, &[bridge]).await;
    wait_for_bridge_session(petrel.admin_addr(), name).await;
    let mut local = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-local")).await;

    // One at a time, so each answer belongs to one known message.
    let mut answers = Vec::new();
    for i in 0..PUBLISHED {
        let refusals = local
            .publish_all(1, false, [(TOPIC.to_string(), payload(i))])
            .await;
        answers.push(refusals.into_iter().next());
    }
    let accepted = answers.iter().take_while(|a| a.is_none()).count();
    let refused_after: Vec<(usize, &Option<String>)> =
        answers.iter().enumerate().skip(accepted).collect();
    let all_quota_exceeded = refused_after
        .iter()
        .all(|(_, a)| a.as_deref().is_some_and(|r| r.contains("QuotaExceeded")));
    let report = bridge_entry(&petrel, name, "(any state)", |_| true).await;
    assert!(
        accepted > 0 && !refused_after.is_empty() && all_quota_exceeded,
        "with queue_full = \"refuse\" the first messages must be accepted (PUBACK \
         Success) and, once the {BOUND}-byte queue is full, every later one refused \
         with PUBACK 0x97 (QuotaExceeded); {accepted} accepted first, then: \
         {:?}\nGET /v1/bridges: {report:#}",
        &refused_after[..refused_after.len().min(5)]
    );
    assert_eq!(
        (
            report["queued_messages"].as_u64(),
            report["dropped"].as_u64()
        ),
        (Some(accepted as u64), Some(0)),
        "the accepted messages wait in the queue and nothing is dropped: a \
         refused message was never taken: {report:#}"
    );
}
