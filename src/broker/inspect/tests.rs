//! The views and actions driven on the core directly, without sockets.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::Client;
use crate::config::Settings;
use crate::protocol::{
    Connect, MessageProperties, Packet, Publish, QoS, Subscribe, SubscriptionOptions, Version, Will,
};
use crate::session::{ConnectionSignal, Stop};
use crate::store::{Journal, Snapshot};

const T0: u64 = 1_700_000_000_000;

fn broker() -> Arc<BrokerState> {
    BrokerState::new(
        Settings::ephemeral(),
        Journal::manual(),
        true,
        Snapshot::default(),
        T0,
    )
}

fn connect_packet(id: &str, expiry: u32, username: Option<&str>) -> Connect {
    Connect {
        username: username.map(str::to_string),
        ..crate::broker::tests::connect_packet(Version::V5, id, true, expiry)
    }
}

fn connect_with(broker: &Arc<BrokerState>, packet: Connect) -> (Client, Arc<ConnectionSignal>) {
    let connected = Client::connect(broker, packet, T0).expect("CONNECT accepted");
    let mut client = connected.client;
    client.resume(T0);
    client.take_output();
    (client, connected.signal)
}

fn connect(broker: &Arc<BrokerState>, id: &str, expiry: u32) -> (Client, Arc<ConnectionSignal>) {
    connect_with(broker, connect_packet(id, expiry, None))
}

fn subscribe(client: &mut Client, filters: &[&str], qos: QoS) {
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: filters
            .iter()
            .map(|f| (f.to_string(), SubscriptionOptions::with_qos(qos)))
            .collect(),
        subscription_id: Some(7),
        user_properties: Vec::new(),
    });
    client.handle(packet, T0).unwrap();
    client.pump(T0, usize::MAX);
}

fn publish(client: &mut Client, topic: &str, payload: impl Into<Bytes>, retain: bool) {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain,
        topic: topic.into(),
        packet_id: 0,
        topic_alias: None,
        properties: MessageProperties::default(),
        payload: payload.into(),
    });
    client.handle(packet, T0).unwrap();
}

fn ids<T>(page: &Page<T>, id: impl Fn(&T) -> &str) -> Vec<String> {
    page.rows.iter().map(|row| id(row).to_string()).collect()
}

#[test]
fn clients_are_listed_by_id_within_the_limit_and_filtered_by_state_and_prefix() {
    let broker = broker();
    let (_b, _) = connect(&broker, "dev-b", 0);
    let (_a, _) = connect(&broker, "dev-a", 0);
    let (_x, _) = connect(&broker, "other", 0);
    let (gone, _) = connect(&broker, "dev-c", 600);
    gone.finish(crate::broker::Close::Lost, T0 + 5);

    let all = broker.clients(&SessionFilter::default(), 10);
    assert_eq!(all.total, 4);
    assert_eq!(
        ids(&all, |c| &c.client_id),
        ["dev-a", "dev-b", "dev-c", "other"]
    );
    let first_two = broker.clients(&SessionFilter::default(), 2);
    assert_eq!(first_two.total, 4, "the total counts beyond the page");
    assert_eq!(ids(&first_two, |c| &c.client_id), ["dev-a", "dev-b"]);

    let online_devices = SessionFilter {
        online: Some(true),
        prefix: Some("dev-"),
    };
    let page = broker.clients(&online_devices, 10);
    assert_eq!(ids(&page, |c| &c.client_id), ["dev-a", "dev-b"]);
    let offline = SessionFilter {
        online: Some(false),
        prefix: None,
    };
    let page = broker.clients(&offline, 10);
    assert_eq!(ids(&page, |c| &c.client_id), ["dev-c"]);
    assert_eq!(page.rows[0].disconnected_at, Some(T0 + 5));
    assert!(!page.rows[0].online);

    let sessions = broker.sessions(&offline, 10);
    let parked = &sessions.rows[0];
    assert!(parked.persistent);
    assert_eq!(parked.expiry_secs, Some(600));
    assert_eq!(parked.expires_at, Some(T0 + 5 + 600_000));
}

#[test]
fn a_client_shows_its_user_and_subscriptions_and_a_session_its_inflight_messages() {
    let broker = broker();
    let (mut reader, _) = connect_with(&broker, connect_packet("reader", 0, Some("alice")));
    subscribe(&mut reader, &["b/#", "a/+"], QoS::AtLeastOnce);
    let (mut writer, _) = connect(&broker, "writer", 0);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/1".into(),
        packet_id: 1,
        topic_alias: None,
        properties: MessageProperties::default(),
        payload: Bytes::from_static(b"x"),
    });
    writer.handle(packet, T0).unwrap();
    reader.pump(T0, usize::MAX);

    let client = broker.client("reader").expect("listed");
    assert_eq!(client.client.username.as_deref(), Some("alice"));
    assert!(client.client.online);
    let filters: Vec<&str> = client
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["a/+", "b/#"]);
    assert_eq!(client.subscriptions[0].qos, 1);
    assert_eq!(client.subscriptions[0].subscription_id, Some(7));

    let session = broker.session_detail("reader").unwrap();
    assert_eq!(session.session.inflight, 1);
    assert_eq!(
        session.inflight,
        [InflightView {
            packet_id: 1,
            topic: "a/1".into(),
            qos: 1,
            awaiting: "puback".into(),
        }]
    );
    assert!(broker.client("nobody").is_none());

    let everyone = broker.subscriptions(None, 10);
    assert_eq!(everyone.total, 2);
    let theirs = broker.subscriptions(Some("writer"), 10);
    assert_eq!(theirs.total, 0);
}

#[test]
fn disconnecting_a_client_kicks_its_connection_and_keeps_its_session() {
    let broker = broker();
    let (_client, signal) = connect(&broker, "c", 600);
    assert_eq!(broker.disconnect_client("c"), Kick::Disconnected);
    assert_eq!(signal.stop(), Some(Stop::Kicked));
    assert!(broker.session("c").is_some());
    assert_eq!(broker.disconnect_client("nobody"), Kick::NoSuchClient);

    let (parked, _) = connect(&broker, "parked", 600);
    parked.finish(crate::broker::Close::Lost, T0);
    assert_eq!(broker.disconnect_client("parked"), Kick::NotConnected);
}

#[test]
fn deleting_a_connected_session_kicks_it_journals_the_end_and_publishes_its_will() {
    let broker = broker();
    let (mut watcher, _) = connect(&broker, "watcher", 0);
    subscribe(&mut watcher, &["wills/#", "data/#"], QoS::AtMostOnce);
    let mut packet = connect_packet("doomed", 600, None);
    packet.will = Some(Will {
        topic: "wills/doomed".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        delay_interval: 0,
        properties: MessageProperties::default(),
    });
    let (mut doomed, signal) = connect_with(&broker, packet);
    subscribe(&mut doomed, &["data/#"], QoS::AtLeastOnce);
    broker.journal().take();
    let sessions_before = broker.session_count();

    assert!(broker.delete_session("doomed", T0));
    // "Administrative action", not "session taken over".
    assert_eq!(signal.stop(), Some(Stop::Kicked));
    assert!(broker.session("doomed").is_none());
    assert_eq!(broker.session_count(), sessions_before - 1);
    let records = broker.journal().take();
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::DeleteSession(id) if &**id == "doomed")),
        "{records:?}"
    );
    let delivered = watcher.pump(T0, usize::MAX).0.packets;
    let topics: Vec<String> = delivered
        .iter()
        .filter_map(|p| match p {
            Packet::Deliver(d) => Some(d.message.topic.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["wills/doomed"]);
    // Its subscription left the index: a publish reaches the watcher only.
    assert_eq!(broker.census_of("data/#"), 1);
    assert!(!broker.delete_session("doomed", T0));

    // The connection's own end changes nothing more.
    doomed.finish(
        crate::broker::Close::ByServer(crate::protocol::ReasonCode::ADMINISTRATIVE_ACTION),
        T0,
    );
    assert!(broker.session("doomed").is_none());
    assert_eq!(broker.session_count(), sessions_before - 1);
}

#[test]
fn deleting_a_retained_message_journals_it_without_routing_anything() {
    let broker = broker();
    let (mut publisher, _) = connect(&broker, "publisher", 0);
    publish(&mut publisher, "state/a", "1", true);
    publish(&mut publisher, "state/b", "2", true);
    let (mut watcher, _) = connect(&broker, "watcher", 0);
    subscribe(&mut watcher, &["state/#"], QoS::AtMostOnce);
    watcher.pump(T0, usize::MAX);
    broker.journal().take();

    assert!(broker.delete_retained("state/a"));
    assert!(!broker.delete_retained("state/a"));
    assert_eq!(
        broker.journal().take().len(),
        1,
        "one DeleteRetained record"
    );
    assert!(watcher.pump(T0, usize::MAX).0.packets.is_empty());
    let left = broker.retained_messages("", 10, T0);
    assert_eq!(ids(&left, |m| &m.topic), ["state/b"]);
}

#[test]
fn retained_messages_are_listed_by_topic_prefix_dollar_topics_by_their_whole_first_level() {
    let broker = broker();
    let (mut publisher, _) = connect(&broker, "publisher", 0);
    for topic in ["sensors/1", "sensors/2/t", "sensible", "other", "$app/x"] {
        publish(&mut publisher, topic, "v", true);
    }
    let listed = |prefix: &str| ids(&broker.retained_messages(prefix, 10, T0), |m| &m.topic);
    assert_eq!(listed("sens"), ["sensible", "sensors/1", "sensors/2/t"]);
    assert_eq!(listed("sensors/"), ["sensors/1", "sensors/2/t"]);
    assert_eq!(listed("sensors/2"), ["sensors/2/t"]);
    assert_eq!(listed("$app/"), ["$app/x"]);
    assert_eq!(listed("$app"), ["$app/x"]);
    assert_eq!(listed("$ap"), Vec::<String>::new());
    assert_eq!(listed("a/+/"), Vec::<String>::new());
    let page = broker.retained_messages("", 2, T0);
    assert_eq!(page.total, 4, "`$` topics need their first level");
    assert_eq!(ids(&page, |m| &m.topic), ["other", "sensible"]);
}

#[test]
fn a_long_payload_is_cut_in_the_listing() {
    let broker = broker();
    let (mut publisher, _) = connect(&broker, "publisher", 0);
    publish(&mut publisher, "big", "é".repeat(300), true);
    let view = &broker.retained_messages("big", 1, T0).rows[0];
    assert_eq!(view.payload_bytes, 600);
    assert_eq!(view.payload.chars().count(), PAYLOAD_PREVIEW);
    assert!(view.payload_truncated);
}

#[test]
fn the_census_counts_sessions_and_ranks_filters_by_subscribers() {
    let broker = broker();
    let mut clients = Vec::new();
    for (id, filters) in [
        ("a", &["x/#", "y"][..]),
        ("b", &["x/#"][..]),
        ("c", &["x/#", "z"][..]),
    ] {
        let (mut client, _) = connect(&broker, id, 600);
        subscribe(&mut client, filters, QoS::AtMostOnce);
        clients.push(client);
    }
    clients
        .pop()
        .unwrap()
        .finish(crate::broker::Close::Lost, T0);
    let census = broker.session_census(2);
    assert_eq!((census.online, census.offline), (2, 1));
    assert_eq!(census.subscriptions, 5);
    assert_eq!(
        census.top_filters,
        [
            FilterCount {
                filter: "x/#".into(),
                subscribers: 3
            },
            FilterCount {
                filter: "y".into(),
                subscribers: 1
            },
        ]
    );
}

impl BrokerState {
    /// Sessions a message on a topic of `filter` reaches, through the index.
    fn census_of(&self, filter: &str) -> usize {
        let topic = filter.trim_end_matches("/#").to_string() + "/t";
        self.index.matches(&topic, None).len()
    }
}
