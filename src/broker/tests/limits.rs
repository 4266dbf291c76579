//! Per-client limits driven through the core: the keep alive bound and the
//! publish rate limits, with time passed in.

use std::time::Duration;

use super::*;
use crate::broker::Origin;

fn connack(client: &mut Client) -> crate::protocol::ConnAck {
    match client.take_output().packets.first() {
        Some(Packet::ConnAck(connack)) => connack.clone(),
        other => panic!("CONNACK expected, got {other:?}"),
    }
}

fn keep_alive_of(broker: &Arc<BrokerState>, version: Version, asked: u16) -> (Client, Option<u16>) {
    let mut packet = connect_packet(version, "k", true, 0);
    packet.keep_alive = asked;
    let mut client = Client::connect(broker, packet, T0).unwrap().client;
    let told = connack(&mut client).properties.server_keep_alive;
    (client, told)
}

/// A keep alive above `max_keepalive_secs`, or 0 (none at all), is lowered
/// to the bound: v5 clients are told (Server Keep Alive), every client is
/// held to 1.5 times it, and each is counted.
#[test]
fn max_keepalive_lowers_and_counts_what_passes_it() {
    let broker = broker_with(|s| s.limits.max_keepalive_secs = 60);
    for asked in [0, 61, u16::MAX] {
        let (client, told) = keep_alive_of(&broker, Version::V5, asked);
        assert_eq!(told, Some(60), "asked {asked}");
        assert_eq!(client.keep_alive_limit(), Some(Duration::from_secs(90)));
    }
    let (client, told) = keep_alive_of(&broker, Version::V5, 30);
    assert_eq!(told, None, "within the bound: nothing to say");
    assert_eq!(client.keep_alive_limit(), Some(Duration::from_secs(45)));
    let (client, _) = keep_alive_of(&broker, Version::V311, 0);
    assert_eq!(client.keep_alive_limit(), Some(Duration::from_secs(90)));
    assert_eq!(broker.metrics.keep_alive_capped(), 4);

    let unbounded = super::broker();
    let (client, told) = keep_alive_of(&unbounded, Version::V5, 0);
    assert_eq!((told, client.keep_alive_limit()), (None, None));
}

/// Publishing faster than `max_publish_rate` ends the connection with 0x96
/// before the message that passed it is routed or acknowledged; tokens come
/// back at the rate.
#[test]
fn a_client_over_its_publish_rate_is_disconnected_and_its_message_dropped() {
    let broker = broker_with(|s| {
        s.limits.max_publish_rate = 2;
        s.limits.max_publish_burst = 3;
    });
    let mut watcher = watching(&broker, "w", "t", QoS::AtLeastOnce);
    let mut client = v5(&broker, "fast", true, 0);
    for (n, payload) in ["1", "2", "3"].into_iter().enumerate() {
        client
            .handle(
                publish("t", QoS::AtLeastOnce, n as u16 + 1, payload, false),
                T0,
            )
            .expect("within the burst");
    }
    // Half a second later one token is back (2 per second).
    client
        .handle(publish("t", QoS::AtLeastOnce, 4, "4", false), T0 + 500)
        .expect("a token came back");
    let over = client.handle(publish("t", QoS::AtLeastOnce, 5, "5", false), T0 + 500);
    assert_eq!(
        over,
        Err(Close::ByServer(ReasonCode::MESSAGE_RATE_TOO_HIGH))
    );
    let acks: Vec<u16> = client
        .take_output()
        .packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(ack) => Some(ack.packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [1, 2, 3, 4], "the fifth is not acknowledged");
    assert_eq!(
        payloads(&written(&mut watcher, T0 + 500)),
        ["1", "2", "3", "4"]
    );
    assert_eq!(broker.metrics.publish_rate_exceeded(), 1);
    assert_eq!(broker.metrics.publish_bytes_rate_exceeded(), 0);
}

/// `max_publish_bytes_rate` counts topic, payload and properties; a 3.1.1
/// client passing it is closed too (no DISCONNECT exists for it: the
/// connection's end sends none).
#[test]
fn a_client_over_its_byte_rate_is_disconnected() {
    let broker = broker_with(|s| {
        s.limits.max_publish_bytes_rate = 100;
        s.limits.max_publish_bytes_burst = 20;
    });
    let packet = connect_packet(Version::V311, "bytes", true, 0);
    let (mut client, _) = connect(&broker, packet, T0);
    // Topic "t" and ten bytes of payload: 11 of the 20.
    client
        .handle(publish("t", QoS::AtMostOnce, 0, "0123456789", false), T0)
        .unwrap();
    assert_eq!(
        client.handle(publish("t", QoS::AtMostOnce, 0, "0123456789", false), T0),
        Err(Close::ByServer(ReasonCode::MESSAGE_RATE_TOO_HIGH))
    );
    assert_eq!(broker.metrics.publish_bytes_rate_exceeded(), 1);
    // 100 bytes per second: after 20 ms the two bytes missing are back.
    let (mut client, _) = connect(&broker, connect_packet(Version::V311, "b2", true, 0), T0);
    client
        .handle(publish("t", QoS::AtMostOnce, 0, "0123456789", false), T0)
        .unwrap();
    client
        .handle(
            publish("t", QoS::AtMostOnce, 0, "0123456789", false),
            T0 + 20,
        )
        .expect("refilled");
}

/// Without limits configured a client carries no limit state at all.
#[test]
fn unlimited_clients_carry_no_limit_state() {
    let broker = super::broker();
    let client = v5(&broker, "free", true, 0);
    assert!(client.extras.is_none());
    let limited = broker_with(|s| s.limits.max_publish_rate = 10);
    let origin = Origin {
        peer: Some("192.0.2.7:50000".parse().unwrap()),
        authenticated: None,
        bridge: None,
    };
    let connected = Client::connect_from(
        &limited,
        connect_packet(Version::V5, "limited", true, 0),
        origin,
        T0,
    )
    .unwrap();
    let extras = connected.client.extras.as_ref().expect("limits allocated");
    assert!(extras.publish_limits.is_some());
    assert_eq!(extras.peer, Some("192.0.2.7:50000".parse().unwrap()));
}
