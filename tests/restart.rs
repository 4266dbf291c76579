//! The storage seam: a broker restarted on the same store gets back its
//! persistent sessions, their subscriptions, and retained messages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use petrel::store::MemoryStore;
use petrel::{Broker, Settings};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::time::timeout;

async fn next_packet(events: &mut EventLoop) -> Packet {
    loop {
        match timeout(common::WAIT, events.poll()).await {
            Ok(Ok(Event::Incoming(packet))) => return packet,
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(error)) => panic!("connection failed: {error}"),
            Err(_) => panic!("no packet within {:?}", common::WAIT),
        }
    }
}

fn client(broker: &Broker, id: &str, clean: bool) -> (AsyncClient, EventLoop) {
    let addr = broker.local_addrs()[0];
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_clean_session(clean);
    options.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(options, 16)
}

#[tokio::test]
async fn restart_on_the_same_store_restores_sessions_subscriptions_and_retained() {
    let store = Arc::new(MemoryStore::new());
    let first = Broker::start_with_store(Settings::ephemeral(), store.clone())
        .await
        .unwrap();

    let (subscriber, mut sub_events) = client(&first, "keeper", false);
    assert!(matches!(
        next_packet(&mut sub_events).await,
        Packet::ConnAck(_)
    ));
    subscriber
        .subscribe("plant/+/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(matches!(
        next_packet(&mut sub_events).await,
        Packet::SubAck(_)
    ));
    let (publisher, mut pub_events) = client(&first, "setter", true);
    assert!(matches!(
        next_packet(&mut pub_events).await,
        Packet::ConnAck(_)
    ));
    publisher
        .publish("plant/config", QoS::AtLeastOnce, true, "v1")
        .await
        .unwrap();
    assert!(matches!(
        next_packet(&mut pub_events).await,
        Packet::PubAck(_)
    ));
    subscriber.disconnect().await.unwrap();
    publisher.disconnect().await.unwrap();
    drop((sub_events, pub_events));
    first.shutdown().await;

    let second = Broker::start_with_store(Settings::ephemeral(), store)
        .await
        .unwrap();
    let (subscriber, mut sub_events) = client(&second, "keeper", false);
    match next_packet(&mut sub_events).await {
        Packet::ConnAck(ack) => assert!(ack.session_present, "session restored"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let (publisher, mut pub_events) = client(&second, "setter", true);
    assert!(matches!(
        next_packet(&mut pub_events).await,
        Packet::ConnAck(_)
    ));
    publisher
        .publish("plant/7/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    assert!(matches!(
        next_packet(&mut pub_events).await,
        Packet::PubAck(_)
    ));
    match next_packet(&mut sub_events).await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "plant/7/temp");
            assert_eq!(&p.payload[..], b"21.5");
        }
        other => panic!("expected the message through the restored subscription, got {other:?}"),
    }

    subscriber
        .subscribe("plant/config", QoS::AtMostOnce)
        .await
        .unwrap();
    loop {
        match next_packet(&mut sub_events).await {
            Packet::Publish(p) if p.topic == "plant/config" => {
                assert!(p.retain);
                assert_eq!(&p.payload[..], b"v1");
                break;
            }
            Packet::SubAck(_) | Packet::PubAck(_) => {}
            other => panic!("expected the restored retained message, got {other:?}"),
        }
    }
    second.shutdown().await;
}
