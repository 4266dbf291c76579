//! The broker core driven directly: packets and the time in, packets,
//! journal records and timers out. No sockets, no disk, no clock, no sleeps.

use std::sync::{Arc, Barrier};

use bytes::Bytes;

use super::*;
use crate::config::{Lifetime, Settings};
use crate::protocol::{
    Ack, Connect, Deliver, MessageProperties, Packet, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, Version, Will,
};
use crate::store::{Journal, Record, Snapshot, Ticket};

mod limits;

const T0: u64 = 1_700_000_000_000;

fn broker_with(adjust: impl FnOnce(&mut Settings)) -> Arc<BrokerState> {
    let mut settings = Settings::ephemeral();
    adjust(&mut settings);
    BrokerState::new(settings, Journal::manual(), true, Snapshot::default(), T0)
}

fn broker() -> Arc<BrokerState> {
    broker_with(|_| {})
}

/// A CONNECT with everything at its default but these; the core tests of
/// other modules start from it too.
pub(in crate::broker) fn connect_packet(
    version: Version,
    id: &str,
    clean_start: bool,
    expiry: u32,
) -> Connect {
    Connect {
        version,
        client_id: id.into(),
        clean_start,
        keep_alive: 60,
        username: None,
        password: None,
        will: None,
        session_expiry: expiry,
        receive_maximum: u16::MAX,
        maximum_packet_size: None,
        topic_alias_maximum: 0,
        request_response_information: false,
        request_problem_information: true,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
        bridge: false,
    }
}

fn will(topic: &str, delay: u32) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: MessageProperties::default(),
    }
}

fn connect(broker: &Arc<BrokerState>, packet: Connect, now: u64) -> (Client, bool) {
    let connected = Client::connect(broker, packet, now).expect("CONNECT accepted");
    let mut client = connected.client;
    client.resume(now);
    let output = client.take_output();
    let present = match &output.packets[0] {
        Packet::ConnAck(connack) => connack.session_present,
        other => panic!("CONNACK expected, got {other:?}"),
    };
    (client, present)
}

fn v5(broker: &Arc<BrokerState>, id: &str, clean_start: bool, expiry: u32) -> Client {
    connect(
        broker,
        connect_packet(Version::V5, id, clean_start, expiry),
        T0,
    )
    .0
}

/// A clean v5 client subscribed to `filter`, its SUBACK already read.
fn watching(broker: &Arc<BrokerState>, id: &str, filter: &str, qos: QoS) -> Client {
    let mut client = v5(broker, id, true, 0);
    client.handle(subscribe(1, &[filter], qos), T0).unwrap();
    written(&mut client, T0);
    client
}

/// Client "c" (session expiry 600 s) with a will on `wills/c` delayed by
/// `delay` seconds, its connection lost at T0; returns its CONNECT to come
/// back with.
fn lost_with_delayed_will(broker: &Arc<BrokerState>, delay: u32) -> Connect {
    let mut packet = connect_packet(Version::V5, "c", false, 600);
    packet.will = Some(will("wills/c", delay));
    let (client, _) = connect(broker, packet.clone(), T0);
    client.finish(Close::Lost, T0);
    packet
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static str, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        topic_alias: None,
        properties: MessageProperties::default(),
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

fn subscribe(packet_id: u16, filters: &[&str], qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|f| (f.to_string(), SubscriptionOptions::with_qos(qos)))
            .collect(),
        subscription_id: None,
        user_properties: Vec::new(),
    })
}

/// What a client would write now.
fn written(client: &mut Client, now: u64) -> Vec<Packet> {
    client.pump(now, usize::MAX).0.packets
}

fn delivered(packets: &[Packet]) -> Vec<&Deliver> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Deliver(d) => Some(d),
            _ => None,
        })
        .collect()
}

fn payloads(packets: &[Packet]) -> Vec<String> {
    delivered(packets)
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Retained on subscribe
// ---------------------------------------------------------------------------

/// A SUBSCRIBE with many filters races a run of retained publishes to one
/// topic, on two threads, many times: what the subscriber receives for the
/// topic only ever moves forward (never an older value after a newer one,
/// never one twice) and ends on the newest.
#[test]
fn a_subscriber_racing_retained_publishes_ends_on_the_newest_value_without_duplicates() {
    const VALUES: u32 = 200;
    let broker = broker();
    let mut publisher = v5(&broker, "publisher", true, 0);
    let filters: Vec<String> = (0..500).map(|i| format!("other/{i}/#")).collect();
    for trial in 0..100 {
        let topic = format!("r/{trial}/state");
        let filter = format!("r/{trial}/#");
        let mut subscriber = v5(&broker, &format!("subscriber-{trial}"), true, 0);
        // The raced filter first: the other 500 give a slow subscribe time
        // to let publishes in between.
        let mut all = vec![filter.as_str()];
        all.extend(filters.iter().map(String::as_str));
        let start = Barrier::new(2);
        std::thread::scope(|threads| {
            threads.spawn(|| {
                start.wait();
                for value in 1..=VALUES {
                    let packet = Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: true,
                        topic: topic.clone(),
                        packet_id: 0,
                        topic_alias: None,
                        properties: MessageProperties::default(),
                        payload: Bytes::from(value.to_string()),
                    });
                    publisher.handle(packet, T0).unwrap();
                }
            });
            start.wait();
            subscriber
                .handle(subscribe(1, &all, QoS::AtMostOnce), T0)
                .unwrap();
        });
        let mut seen = Vec::new();
        loop {
            let (output, more) = subscriber.pump(T0, usize::MAX);
            seen.extend(delivered(&output.packets).iter().map(|d| {
                String::from_utf8_lossy(&d.message.payload)
                    .parse::<u32>()
                    .unwrap()
            }));
            if !more {
                break;
            }
        }
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "trial {trial}: went back or repeated: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&VALUES), "trial {trial}");
        subscriber.finish(Close::Lost, T0);
    }
}

// ---------------------------------------------------------------------------
// 2 and 11. Taken-over connections
// ---------------------------------------------------------------------------

/// After a clean-start takeover, the old connection can neither subscribe
/// nor publish into the discarded session, nor overwrite the new session's
/// record, nor leave an index entry behind.
#[test]
fn a_connection_whose_session_was_replaced_by_clean_start_changes_nothing() {
    let broker = broker();
    let mut old = v5(&broker, "c", false, 600);
    old.handle(publish("q", QoS::ExactlyOnce, 9, "first", false), T0)
        .unwrap();
    broker.journal.take();
    let mut new = v5(&broker, "c", true, 600);
    let records = broker.journal.take();
    assert!(
        matches!(&records[..], [Record::DeleteSession(id), Record::PutSession(s)] if &**id == "c" && s.client_id == "c"),
        "the old record goes before the new one is written: {records:?}"
    );

    assert!(
        old.handle(subscribe(2, &["zombie/#"], QoS::AtLeastOnce), T0)
            .is_err()
    );
    assert!(
        old.handle(publish("q", QoS::ExactlyOnce, 10, "late", false), T0)
            .is_err()
    );
    assert!(broker.index.matches("zombie/x", None).is_empty());
    assert!(
        broker.journal.take().is_empty(),
        "nothing journalled for the old session"
    );
    old.finish(Close::ByServer(ReasonCode::SESSION_TAKEN_OVER), T0);
    assert!(broker.journal.take().is_empty());

    let session = broker.session("c").expect("the new session stays");
    assert!(Arc::ptr_eq(&session, new.session()));
    assert_eq!(session.lock().inbound_qos2_pending(), 0);
    new.handle(subscribe(1, &["t"], QoS::AtLeastOnce), T0)
        .unwrap();
    assert_eq!(broker.index.matches("t", None).len(), 1);
}

/// A connection taken over by a resume still applies the acknowledgements
/// it had received, so the new one does not re-send those messages; once
/// the new one resumed, the old one may apply nothing, and never pumps.
#[test]
fn a_taken_over_connection_drains_its_acknowledgements_and_then_stops() {
    let broker = broker();
    let mut sender = v5(&broker, "sender", true, 0);
    let mut old = v5(&broker, "c", false, 600);
    old.handle(subscribe(1, &["t"], QoS::AtLeastOnce), T0)
        .unwrap();
    written(&mut old, T0);
    for payload in ["a", "b", "c"] {
        sender
            .handle(publish("t", QoS::AtLeastOnce, 1, payload, false), T0)
            .unwrap();
    }
    let sent = written(&mut old, T0);
    let ids: Vec<u16> = delivered(&sent).iter().map(|d| d.packet_id).collect();
    assert_eq!(ids.len(), 3);

    let connected =
        Client::connect(&broker, connect_packet(Version::V5, "c", false, 600), T0).unwrap();
    let mut new = connected.client;
    assert!(
        connected.previous.is_some(),
        "the old connection is told to finish"
    );
    old.handle(Packet::PubAck(Ack::new(ids[0], ReasonCode::SUCCESS)), T0)
        .unwrap();
    sender
        .handle(publish("t", QoS::AtLeastOnce, 1, "d", false), T0)
        .unwrap();
    assert!(
        written(&mut old, T0).is_empty(),
        "a taken-over connection never pumps"
    );
    new.resume(T0);
    let resent = new.take_output().packets;
    let resent: Vec<u16> = delivered(&resent).iter().map(|d| d.packet_id).collect();
    assert_eq!(resent, ids[1..], "only the unacknowledged ones are re-sent");
    assert!(
        old.handle(Packet::PubAck(Ack::new(ids[1], ReasonCode::SUCCESS)), T0)
            .is_err(),
        "after the resume the old connection may change nothing"
    );
    assert_eq!(payloads(&written(&mut new, T0)), ["d"]);
}

// ---------------------------------------------------------------------------
// 3. Expiry and will delay against a resume
// ---------------------------------------------------------------------------

/// The expiry timer fires just as the client comes back: the resume wins, and
/// the late timer ends nothing.
#[test]
fn an_expiry_timer_that_fires_after_a_resume_ends_nothing() {
    let broker = broker();
    let mut client = v5(&broker, "c", false, 10);
    client
        .handle(subscribe(1, &["t"], QoS::AtLeastOnce), T0)
        .unwrap();
    client.finish(Close::Lost, T0);
    let due = broker.timers.advance(T0 + 10_000);
    assert!(
        matches!(&due[..], [TimerEvent::SessionExpiry { .. }]),
        "{due:?}"
    );
    // The CONNECT is handled between the timer firing and its handling.
    let (_client, present) = connect(
        &broker,
        connect_packet(Version::V5, "c", false, 10),
        T0 + 10_000,
    );
    assert!(present);
    for event in due {
        broker.on_timer(event, T0 + 10_000);
    }
    assert!(
        broker.session("c").is_some(),
        "the resumed session lives on"
    );
    assert_eq!(broker.index.matches("t", None).len(), 1);
}

/// Likewise a will delay: a client back within the delay cancels the will,
/// even if the timer already fired.
#[test]
fn a_will_delay_timer_that_fires_after_a_resume_publishes_nothing() {
    let broker = broker();
    let mut watcher = watching(&broker, "watcher", "wills/#", QoS::AtLeastOnce);
    let mut packet = lost_with_delayed_will(&broker, 5);
    let due = broker.timers.advance(T0 + 5_000);
    assert!(
        matches!(&due[..], [TimerEvent::WillDelay { .. }]),
        "{due:?}"
    );
    packet.will = None;
    connect(&broker, packet, T0 + 5_000);
    for event in due {
        broker.on_timer(event, T0 + 5_000);
    }
    assert!(written(&mut watcher, T0 + 5_000).is_empty(), "no will");
}

/// The same will, with nobody coming back, goes out once its delay passed.
#[test]
fn a_delayed_will_goes_out_when_its_delay_passes() {
    let broker = broker();
    let mut watcher = watching(&broker, "watcher", "wills/#", QoS::AtLeastOnce);
    lost_with_delayed_will(&broker, 5);
    for event in broker.timers.advance(T0 + 4_999) {
        broker.on_timer(event, T0 + 4_999);
    }
    assert!(written(&mut watcher, T0 + 4_999).is_empty());
    for event in broker.timers.advance(T0 + 5_000) {
        broker.on_timer(event, T0 + 5_000);
    }
    assert_eq!(payloads(&written(&mut watcher, T0 + 5_000)), ["gone"]);
}

// ---------------------------------------------------------------------------
// 4. Re-sent QoS 2 PUBLISH
// ---------------------------------------------------------------------------

/// A QoS 2 PUBLISH sent again before PUBREL is acknowledged only once the
/// first copy's write is durable, never ahead of it.
#[test]
fn a_resent_qos2_publish_is_acknowledged_only_when_the_first_copy_is_durable() {
    let broker = broker();
    let mut subscriber = v5(&broker, "subscriber", false, 600);
    subscriber
        .handle(subscribe(1, &["t"], QoS::ExactlyOnce), T0)
        .unwrap();
    let mut publisher = v5(&broker, "publisher", false, 600);
    publisher
        .handle(publish("t", QoS::ExactlyOnce, 7, "once", false), T0)
        .unwrap();
    let first = publisher.take_output();
    assert!(matches!(&first.packets[..], [Packet::PubRec(_)]));
    assert_ne!(first.ticket, Ticket::NONE);
    assert!(!broker.journal.is_durable(first.ticket));

    publisher
        .handle(publish("t", QoS::ExactlyOnce, 7, "once", false), T0)
        .unwrap();
    let again = publisher.take_output();
    assert!(
        matches!(&again.packets[..], [Packet::PubRec(ack)] if ack.reason == ReasonCode::SUCCESS)
    );
    assert!(
        again.ticket >= first.ticket,
        "the re-sent PUBREC waits for the first copy"
    );
    let copies = broker
        .journal
        .take()
        .into_iter()
        .filter(|r| matches!(r, Record::PutCopies { .. }))
        .count();
    assert_eq!(copies, 1, "routed once");
}

// ---------------------------------------------------------------------------
// 5. Retained messages: memory and disk agree; refusals change nothing
// ---------------------------------------------------------------------------

/// Two publishers race retained messages to one topic: the last record the
/// journal holds for the topic is the message memory holds.
#[test]
fn concurrent_retained_publishes_leave_memory_and_journal_agreeing() {
    let broker = broker();
    let mut publishers: Vec<Client> = (0..2)
        .map(|i| v5(&broker, &format!("p{i}"), true, 0))
        .collect();
    let payloads = ["from-0", "from-1"];
    for round in 0..200 {
        broker.journal.take();
        let start = Barrier::new(2);
        let start = &start;
        publishers = std::thread::scope(|threads| {
            let running: Vec<_> = publishers
                .into_iter()
                .zip(payloads)
                .map(|(mut client, payload)| {
                    threads.spawn(move || {
                        start.wait();
                        client
                            .handle(publish("r", QoS::AtMostOnce, 0, payload, true), T0)
                            .unwrap();
                        client
                    })
                })
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let last_on_disk = broker
            .journal
            .take()
            .into_iter()
            .rev()
            .find_map(|r| match r {
                Record::PutRetained(m) => Some(m.payload.clone()),
                _ => None,
            })
            .expect("retained written");
        let in_memory = broker.retained.read().get("r").unwrap().payload.clone();
        assert_eq!(last_on_disk, in_memory, "round {round}");
    }
}

/// A retained publish refused (the retained limit, or a full store) leaves
/// the retained message as it was, in memory and on disk.
#[test]
fn a_refused_retained_publish_replaces_nothing() {
    let broker = broker_with(|s| s.limits.max_retained_bytes = 12);
    let mut client = v5(&broker, "c", true, 0);
    client
        .handle(publish("r", QoS::AtLeastOnce, 1, "small", true), T0)
        .unwrap();
    broker.journal.take();
    client
        .handle(publish("r", QoS::AtLeastOnce, 2, "far too large", true), T0)
        .unwrap();
    let output = client.take_output();
    assert!(
        matches!(&output.packets[1], Packet::PubAck(ack) if ack.reason == ReasonCode::QUOTA_EXCEEDED)
    );
    broker.journal.set_full(true);
    client
        .handle(publish("r", QoS::AtLeastOnce, 3, "tiny", true), T0)
        .unwrap();
    let output = client.take_output();
    assert!(
        matches!(&output.packets[0], Packet::PubAck(ack) if ack.reason == ReasonCode::QUOTA_EXCEEDED)
    );
    assert_eq!(
        &broker.retained.read().get("r").unwrap().payload[..],
        b"small"
    );
    assert!(broker.journal.take().is_empty());
    assert_eq!(broker.metrics.publishes_refused(), 2);
}

// ---------------------------------------------------------------------------
// 6. One timer service
// ---------------------------------------------------------------------------

/// A device reconnecting again and again with a long expiry and a will
/// delay keeps at most its two timers armed, not one per disconnect.
#[test]
fn reconnecting_clients_do_not_pile_up_timers() {
    let broker = broker();
    let mut packet = connect_packet(Version::V5, "device", false, 86_400);
    packet.will = Some(will("wills/device", 3_600));
    for cycle in 0..10_000u64 {
        let now = T0 + cycle * 10_000;
        let (client, _) = connect(&broker, packet.clone(), now);
        client.finish(Close::Lost, now);
        assert!(
            broker.timers.len() <= 2,
            "cycle {cycle}: {}",
            broker.timers.len()
        );
    }
}

// ---------------------------------------------------------------------------
// 7. Bounded output per wake-up
// ---------------------------------------------------------------------------

#[test]
fn one_pump_takes_about_the_bytes_asked_for() {
    let broker = broker();
    let mut subscriber = watching(&broker, "s", "t", QoS::AtMostOnce);
    let mut publisher = v5(&broker, "p", true, 0);
    static PAYLOAD: [u8; 10_000] = [7; 10_000];
    for _ in 0..100 {
        publisher
            .handle(
                Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: "t".into(),
                    packet_id: 0,
                    topic_alias: None,
                    properties: MessageProperties::default(),
                    payload: Bytes::from_static(&PAYLOAD),
                }),
                T0,
            )
            .unwrap();
    }
    let (output, more) = subscriber.pump(T0, 64 * 1024);
    assert!(more);
    let bytes: usize = delivered(&output.packets)
        .iter()
        .map(|d| d.message.payload.len())
        .sum();
    assert!((64 * 1024..64 * 1024 + 10_100).contains(&bytes), "{bytes}");
}

// ---------------------------------------------------------------------------
// 8. Bounded sessions and retained messages
// ---------------------------------------------------------------------------

/// A 3.1.1 persistent session lives `persistent_session_expiry` after its
/// connection ends, and `max_session_expiry_secs` caps it too.
#[test]
fn persistent_311_sessions_expire() {
    for (persistent, max) in [(Lifetime::Seconds(2), u32::MAX), (Lifetime::Never, 2)] {
        let broker = broker_with(|s| {
            s.limits.persistent_session_expiry = persistent;
            s.limits.max_session_expiry_secs = max;
        });
        let (client, _) = connect(
            &broker,
            connect_packet(Version::V311, "device", false, 0),
            T0,
        );
        client.finish(Close::Lost, T0);
        for event in broker.timers.advance(T0 + 1_999) {
            broker.on_timer(event, T0 + 1_999);
        }
        assert!(broker.session("device").is_some());
        for event in broker.timers.advance(T0 + 2_000) {
            broker.on_timer(event, T0 + 2_000);
        }
        assert!(broker.session("device").is_none(), "{persistent:?} / {max}");
        assert_eq!(broker.session_count(), 0);
        assert!(
            broker
                .journal
                .take()
                .iter()
                .any(|r| matches!(r, Record::DeleteSession(_))),
            "purged from disk"
        );
    }
}

/// v5 asks for longer than allowed: it gets the cap, told in CONNACK.
#[test]
fn persistent_session_expiry_caps_v5_requests() {
    let broker = broker_with(|s| s.limits.persistent_session_expiry = Lifetime::Seconds(60));
    let connected =
        Client::connect(&broker, connect_packet(Version::V5, "c", false, 3_600), T0).unwrap();
    let mut client = connected.client;
    let Packet::ConnAck(connack) = &client.take_output().packets[0] else {
        panic!("CONNACK expected");
    };
    assert_eq!(connack.properties.session_expiry_interval, Some(60));
}

/// `max_sessions` refuses a CONNECT that would create one more session,
/// but not one that resumes an existing session.
#[test]
fn max_sessions_refuses_new_sessions_only() {
    let broker = broker_with(|s| s.limits.max_sessions = 2);
    let a = v5(&broker, "a", false, 600);
    a.finish(Close::Lost, T0);
    v5(&broker, "b", false, 600);
    let refused = Client::connect(&broker, connect_packet(Version::V5, "c", true, 0), T0)
        .err()
        .expect("a third session is refused");
    assert_eq!(refused.reason, ReasonCode::QUOTA_EXCEEDED);
    let refused = Client::connect(&broker, connect_packet(Version::V311, "c", true, 0), T0)
        .err()
        .expect("a third session is refused");
    assert_eq!(
        refused.connack.map(|c| c.reason.v311_connack_code()),
        Some(0x03)
    );
    let (_a, present) = connect(&broker, connect_packet(Version::V5, "a", false, 600), T0);
    assert!(present, "resuming is not creating");
}

/// An expired retained message leaves memory and disk when it expires,
/// not only when someone asks for it.
#[test]
fn expired_retained_messages_are_purged_from_memory_and_disk() {
    let broker = broker();
    let mut client = v5(&broker, "c", true, 0);
    let mut packet = publish("r", QoS::AtMostOnce, 0, "short-lived", true);
    if let Packet::Publish(p) = &mut packet {
        p.properties.message_expiry_interval = Some(5);
    }
    client.handle(packet, T0).unwrap();
    broker.journal.take();
    assert_eq!(broker.retained_count(), 1);
    for event in broker.timers.advance(T0 + 5_000) {
        broker.on_timer(event, T0 + 5_000);
    }
    assert_eq!(broker.retained_count(), 0);
    let records = broker.journal.take();
    assert!(matches!(&records[..], [Record::DeleteRetained(topic)] if &**topic == "r"));
}

/// The retained count limit refuses a new topic but lets an existing one
/// be replaced.
#[test]
fn max_retained_messages_refuses_new_topics_only() {
    let broker = broker_with(|s| s.limits.max_retained_messages = 1);
    let mut client = v5(&broker, "c", true, 0);
    client
        .handle(publish("a", QoS::AtLeastOnce, 1, "1", true), T0)
        .unwrap();
    client
        .handle(publish("b", QoS::AtLeastOnce, 2, "1", true), T0)
        .unwrap();
    client
        .handle(publish("a", QoS::AtLeastOnce, 3, "2", true), T0)
        .unwrap();
    let reasons: Vec<ReasonCode> = client
        .take_output()
        .packets
        .iter()
        .map(|p| match p {
            Packet::PubAck(ack) => ack.reason,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ReasonCode::NO_MATCHING_SUBSCRIBERS,
            ReasonCode::QUOTA_EXCEEDED,
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        ]
    );
    assert_eq!(&broker.retained.read().get("a").unwrap().payload[..], b"2");
}

/// The v5 CONNECT's user properties stay with the connection.
#[test]
fn connect_user_properties_are_kept_with_the_connection() {
    let broker = broker();
    let mut packet = connect_packet(Version::V5, "c", true, 0);
    packet.user_properties = vec![("site".into(), "north".into())];
    let (client, _) = connect(&broker, packet, T0);
    assert_eq!(
        client.connect_user_properties(),
        [("site".to_string(), "north".to_string())]
    );
    let (other, _) = connect(&broker, connect_packet(Version::V5, "d", true, 0), T0);
    assert!(other.connect_user_properties().is_empty());
}

#[test]
fn a_publish_feeding_a_stream_is_appended_once_at_its_keys_next_offset_whatever_its_qos() {
    let broker = broker_with(|settings| {
        settings.streams = vec![crate::stream::StreamConfig {
            partitions: 8,
            key: "topic:1".into(),
            ..crate::stream::StreamConfig::new("orders", &["orders/#"])
        }];
    });
    let mut publisher = v5(&broker, "pub", true, 0);
    publisher.take_output();
    for (packet_id, qos) in [
        (0, QoS::AtMostOnce),
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
    ] {
        publisher
            .handle(
                publish("orders/device-1/new", qos, packet_id, "o", false),
                T0,
            )
            .unwrap();
    }
    publisher
        .handle(
            publish("telemetry/device-1", QoS::AtLeastOnce, 3, "t", false),
            T0,
        )
        .unwrap();
    let appends: Vec<(u32, u64, bool)> = broker
        .journal
        .take()
        .into_iter()
        .filter_map(|record| match record {
            Record::PutCopies {
                message, appends, ..
            } => Some(
                appends
                    .into_iter()
                    .map(move |a| (a.partition, a.offset, message.is_some())),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    // "device-1" is in partition 1 of 8 (FNV-1a 64, pinned in stream::key).
    assert_eq!(
        appends,
        [(1, 0, true), (1, 1, true), (1, 2, true)],
        "each QoS appended once, in order, with its message; other topics not at all"
    );
}
