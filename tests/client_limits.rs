//! Per-client limits over real sockets: the publish rate limits (v5
//! DISCONNECT 0x96, 3.1.1 close), the keep alive bound (v5 Server Keep
//! Alive, and the close when a client stays silent past it), and how each
//! breach shows on `/metrics`.

mod common;
mod raw;

use common::start_broker_with;
use petrel::admin::client;
use raw::{
    CONNACK, Connack, Connect, DISCONNECT, PUBACK, RawClient, connect_v5, connect_v311, publish_v5,
    publish_v311, unique_id,
};

const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
const SERVER_KEEP_ALIVE: u8 = 0x13;

/// The value of the sample `line_start` (name and labels) in a Prometheus
/// text exposition.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

async fn scrape(broker: &common::TestBroker) -> String {
    let admin = broker.petrel().admin_addr().expect("admin configured");
    let body = client::get(&admin.to_string(), None, "/metrics")
        .await
        .expect("/metrics answers");
    String::from_utf8(body.to_vec()).expect("text")
}

fn with_admin(settings: &mut petrel::Settings) {
    settings.admin = common::loopback_admin(None);
}

/// Three QoS 1 messages fit the burst; the fourth, sent at once, passes
/// `max_publish_rate`: it is not acknowledged, and the client gets
/// DISCONNECT 0x96 (Message rate too high). The breach is counted.
#[tokio::test]
async fn a_v5_client_publishing_too_fast_gets_disconnect_0x96() {
    let broker = start_broker_with(|settings| {
        settings.limits.max_publish_rate = 1;
        settings.limits.max_publish_burst = 3;
        with_admin(settings);
    })
    .await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("fast")).await;
    let mut burst = Vec::new();
    for id in 1..=4 {
        burst.extend(publish_v5("limits/rate", 1, id, &[], b"m"));
    }
    client.send(&burst).await;
    for id in 1..=3 {
        let ack = client.expect_kind(PUBACK).await;
        assert_eq!(ack.packet_id(), id);
    }
    client
        .expect_disconnect_then_close(&[MESSAGE_RATE_TOO_HIGH])
        .await;
    let metrics = scrape(&broker).await;
    assert_eq!(
        sample(
            &metrics,
            "petrel_publish_rate_exceeded_total{limit=\"messages\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "petrel_publish_rate_exceeded_total{limit=\"bytes\"}"
        ),
        Some(0.0)
    );
}

/// 3.1.1 has no DISCONNECT from the server: passing
/// `max_publish_bytes_rate` closes the connection with nothing before it.
#[tokio::test]
async fn a_v311_client_over_its_byte_rate_is_closed() {
    let broker = start_broker_with(|settings| {
        settings.limits.max_publish_bytes_rate = 1000;
        settings.limits.max_publish_bytes_burst = 1000;
    })
    .await;
    let mut client = connect_v311(broker.addr, &unique_id("bytes")).await;
    let mut burst = publish_v311("limits/bytes", 0, 0, &[b'x'; 600]);
    burst.extend(publish_v311("limits/bytes", 0, 0, &[b'x'; 600]));
    client.send(&burst).await;
    client.expect_closed().await;
    assert_eq!(broker.petrel().metrics().publish_bytes_rate_exceeded(), 1);
}

/// Publishing within the rate is never disturbed.
#[tokio::test]
async fn a_client_within_its_rate_is_served() {
    let broker = start_broker_with(|settings| {
        settings.limits.max_publish_rate = 1000;
        settings.limits.max_publish_bytes_rate = 1_000_000;
    })
    .await;
    let (mut client, _) = connect_v5(broker.addr, &unique_id("calm")).await;
    for id in 1..=20 {
        client
            .send(&publish_v5("limits/calm", 1, id, &[], b"m"))
            .await;
        assert_eq!(client.expect_kind(PUBACK).await.packet_id(), id);
    }
    client.ping().await;
}

/// `max_keepalive_secs`: a v5 client asking for no keep alive is told the
/// bound as Server Keep Alive, and is closed with 0x8D once silent for 1.5
/// times it; the lowering is counted.
#[tokio::test]
async fn max_keepalive_is_told_to_v5_clients_and_enforced() {
    let broker = start_broker_with(|settings| {
        settings.limits.max_keepalive_secs = 1;
        with_admin(settings);
    })
    .await;
    let connect = Connect {
        keep_alive: 0,
        ..Connect::v5(&unique_id("idle"))
    };
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    let connack = Connack::parse_v5(&client.expect_kind(CONNACK).await);
    assert_eq!(connack.property_u16(SERVER_KEEP_ALIVE), Some(1));
    // Silent from here: the broker closes it after 1.5 s.
    let packet = client.expect_kind(DISCONNECT).await;
    assert_eq!(packet.disconnect_reason(), KEEP_ALIVE_TIMEOUT);
    client.expect_closed().await;
    let metrics = scrape(&broker).await;
    assert_eq!(
        sample(&metrics, "petrel_keepalive_capped_total"),
        Some(1.0),
        "{metrics}"
    );
}

/// A 3.1.1 client cannot be told, but is held to the bound all the same.
#[tokio::test]
async fn max_keepalive_holds_v311_clients_to_the_bound() {
    let broker = start_broker_with(|settings| settings.limits.max_keepalive_secs = 1).await;
    let connect = Connect {
        keep_alive: 600,
        ..Connect::v311(&unique_id("idle"))
    };
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect.encode()).await;
    assert_eq!(client.expect_kind(CONNACK).await.body, [0, 0]);
    client.expect_closed().await;
}
