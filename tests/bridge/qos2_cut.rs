//! QoS 2 flows cut in the middle, with a scripted remote
//! ([`crate::remote`]) playing the remote broker packet by packet: once
//! the remote has sent PUBREC, the bridge owes PUBREL and must never send
//! the PUBLISH again, whichever side the connection was lost on.

use serde_json::Value;

use crate::client::{Client, Protocol};
use crate::petrel_process::{Bridge, Petrel};
use crate::remote::{Conn, Packet, ScriptedRemote};
use crate::support::{WAIT, poll_until};
use crate::{admin_json, assert_kept_for_the_bridge, bridge_list};

/// The local topic published to, and its name on the remote.
const LOCAL_TOPIC: &str = "q2/order";
const REMOTE_TOPIC: &str = "remote/q2/order";

/// A petrel with the admin API and bridge `name`, `out` at QoS 2 to a
/// scripted remote (`q2/#` as `remote/q2/#`), retrying after 0.1 to 0.5 s.
async fn petrel_bridged_to(remote: &ScriptedRemote, tag: &str, name: &str) -> Petrel {
    let bridge = Bridge::new(name, remote.addr(), Protocol::V5)
        .setting("restart_backoff", "[0.1, 0.5]")
        .rule("q2/#", "out", 2, "", "remote/");
    Petrel::start_with_admin(tag, &[bridge]).await
}

/// Publishes `payload` to petrel at QoS 2 (the flow with petrel complete)
/// and returns the packet id of the PUBLISH the remote then reads on
/// `conn`, checking that it is that message, at QoS 2, as mapped.
async fn publish_and_read(
    publisher: &mut Client,
    conn: &mut Conn,
    payload: &str,
    what: &str,
) -> u16 {
    let refusals = publisher
        .publish_all(
            2,
            false,
            [(LOCAL_TOPIC.to_string(), payload.as_bytes().to_vec())],
        )
        .await;
    assert_kept_for_the_bridge(&refusals, 2);
    let packet = conn.next(what).await;
    match &packet {
        Packet::Publish {
            qos: 2,
            dup: false,
            topic,
            payload: got,
            packet_id,
            ..
        } if topic == REMOTE_TOPIC && got == payload.as_bytes() => *packet_id,
        _ => panic!(
            "the remote must read {what}: a PUBLISH at QoS 2 on {REMOTE_TOPIC} with \
             payload {payload:?}, DUP clear; it read {packet:?} (all: {:?})",
            conn.seen()
        ),
    }
}

/// Asserts the bridge reconnected with clean start 0 (the remote keeps
/// the flows it had with it).
fn assert_resumes_the_session(connect: &Packet) {
    assert!(
        matches!(
            connect,
            Packet::Connect {
                clean_start: false,
                ..
            }
        ),
        "the bridge must reconnect with clean start 0: {connect:?}"
    );
}

/// The second message, after the first one's flow was finished: it goes
/// out as a new PUBLISH under another packet id than `first_id`, and its
/// flow completes (PUBREC, PUBREL, PUBCOMP). Had the first message been
/// sent again, its PUBLISH would come before this one.
async fn second_message_completes(publisher: &mut Client, conn: &mut Conn, first_id: u16) {
    let id = publish_and_read(
        publisher,
        conn,
        "second",
        "the second message (and nothing of the first one again)",
    )
    .await;
    assert_ne!(
        id, first_id,
        "the second message must go out under a new packet id, not the first one's"
    );
    conn.send_pubrec(id).await;
    let rel = conn.next("PUBREL of the second message").await;
    assert_eq!(
        rel,
        Packet::PubRel(id),
        "after PUBREC {id}, the bridge must send PUBREL {id}; seen: {:?}",
        conn.seen()
    );
    conn.send_pubcomp(id).await;
}

/// Waits until the bridge's session has nothing queued or in flight:
/// `GET /v1/bridges` shows `queued_messages` 0 and `GET
/// /v1/sessions/$bridge%2F{name}` no inflight message. Returns the bridge's
/// entry in `/v1/bridges`.
async fn wait_until_nothing_in_flight(petrel: &Petrel, name: &str) -> Value {
    let admin = petrel.admin_addr();
    let session_path = format!("/v1/sessions/%24bridge%2F{name}");
    let mut last = (Value::Null, Value::Null);
    let found = poll_until(WAIT, async || {
        let bridges = admin_json(admin, "/v1/bridges").await;
        let session = admin_json(admin, &session_path).await;
        let entry = bridge_list(&bridges)
            .into_iter()
            .find(|bridge| bridge["name"] == name);
        last = (bridges, session.clone());
        let entry = entry?;
        let empty = entry["queued_messages"] == 0
            && entry["queued_bytes"] == 0
            && session["inflight"].as_array().is_some_and(Vec::is_empty);
        empty.then_some(entry)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "the bridge's session must hold nothing once both flows are complete; \
             last GET /v1/bridges: {:#}\nlast GET {session_path}: {:#}",
            last.0, last.1
        )
    })
}

/// Connection 1: CONNACK (session present 0), the PUBLISH of a QoS 2
/// message, PUBREC, and the remote closes the connection. Connection 2:
/// CONNECT with clean start 0, CONNACK with session present 1, and the
/// bridge's first packet is PUBREL for the same packet id, not the PUBLISH
/// again. After PUBCOMP, a second message has its own flow, and the
/// bridge's session ends up empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_cut_after_pubrec_by_the_remote_resumes_with_pubrel() {
    let tag = "q2-cut-remote";
    let name = "cut-remote";
    let mut remote = ScriptedRemote::bind().await;
    let petrel = petrel_bridged_to(&remote, tag, name).await;

    let mut conn = remote.accept().await;
    conn.handshake(false).await;
    let mut publisher = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-pub")).await;
    let first_id = publish_and_read(&mut publisher, &mut conn, "first", "the first message").await;
    conn.send_pubrec(first_id).await;
    let after_close = conn.close().await;
    assert!(
        after_close
            .iter()
            .all(|p| matches!(p, Packet::PubRel(id) if *id == first_id) || *p == Packet::PingReq),
        "after PUBREC {first_id} the bridge may only send PUBREL {first_id} before it \
         sees the connection end; it sent {after_close:?}"
    );

    let mut conn = remote.accept().await;
    let connect = conn.handshake(true).await;
    assert_resumes_the_session(&connect);
    let first = conn.next("the first packet after the reconnect").await;
    assert_eq!(
        first,
        Packet::PubRel(first_id),
        "resuming a session in which the remote had sent PUBREC {first_id}, the \
         bridge's first packet must be PUBREL {first_id} (a PUBLISH would be the \
         message sent again)"
    );
    conn.send_pubcomp(first_id).await;

    second_message_completes(&mut publisher, &mut conn, first_id).await;
    let entry = wait_until_nothing_in_flight(&petrel, name).await;
    assert_eq!(
        entry["sent"], 2,
        "two messages completed their QoS 2 flow with the remote, each once: {entry:#}"
    );
}

/// Connection 1 as above up to PUBREC; once petrel has made it durable
/// (the session shows the message awaiting PUBCOMP, and the PUBREL, which
/// petrel sends only once the change is on disk, has reached the remote,
/// which does not answer it), petrel is SIGKILLed and started again on the
/// same data directory. On its new connection the bridge's first packet
/// is PUBREL for the same packet id, not the PUBLISH again; after PUBCOMP
/// nothing of the first message comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_cut_after_pubrec_by_a_petrel_sigkill_resumes_with_pubrel() {
    let tag = "q2-cut-petrel";
    let name = "cut-petrel";
    let mut remote = ScriptedRemote::bind().await;
    let mut petrel = petrel_bridged_to(&remote, tag, name).await;

    let mut conn = remote.accept().await;
    conn.handshake(false).await;
    let mut publisher = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-pub")).await;
    let first_id = publish_and_read(&mut publisher, &mut conn, "first", "the first message").await;
    conn.send_pubrec(first_id).await;

    let admin = petrel.admin_addr();
    let session_path = format!("/v1/sessions/%24bridge%2F{name}");
    let mut last = Value::Null;
    let awaiting = poll_until(WAIT, async || {
        last = admin_json(admin, &session_path).await;
        last["inflight"]
            .as_array()?
            .iter()
            .any(|sent| sent["packet_id"] == first_id && sent["awaiting"] == "pubcomp")
            .then_some(())
    })
    .await;
    assert!(
        awaiting.is_some(),
        "after PUBREC {first_id}, GET {session_path} must show the message awaiting \
         PUBCOMP; last answer: {last:#}"
    );
    let rel = conn.next("PUBREL of the first message").await;
    assert_eq!(
        rel,
        Packet::PubRel(first_id),
        "after PUBREC {first_id}, the bridge must send PUBREL {first_id}; seen: {:?}",
        conn.seen()
    );

    petrel.kill().await;
    drop(conn);
    drop(publisher);
    petrel.restart().await;

    let mut conn = remote.accept().await;
    let connect = conn.handshake(true).await;
    assert_resumes_the_session(&connect);
    let first = conn.next("the first packet after petrel's restart").await;
    assert_eq!(
        first,
        Packet::PubRel(first_id),
        "after a SIGKILL once the remote's PUBREC {first_id} was on disk, the \
         restarted bridge's first packet must be PUBREL {first_id} (a PUBLISH would \
         be the message sent again)"
    );
    conn.send_pubcomp(first_id).await;

    let mut publisher = Client::connect(petrel.addr(), Protocol::V5, &format!("{tag}-pub2")).await;
    second_message_completes(&mut publisher, &mut conn, first_id).await;
    wait_until_nothing_in_flight(&petrel, name).await;
}
