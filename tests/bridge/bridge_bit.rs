//! Mosquitto's bridge bit from the bridge's side: a 3.1.1 bridge announces
//! itself with protocol level 0x84, and goes on without it when the remote
//! refuses it, as Mosquitto's `try_private` does.

use crate::client::{Client, Protocol};
use crate::petrel_process::{Bridge, Petrel};
use crate::remote::{Packet, ScriptedRemote};

#[tokio::test]
async fn a_remote_refusing_the_bridge_bit_gets_a_plain_3_1_1_connect_and_the_bridge_connects() {
    let mut remote = ScriptedRemote::bind().await;
    let bridge = Bridge::new("plain", remote.addr(), Protocol::V311)
        .setting("restart_backoff", "[0.1, 0.5]")
        .rule("bit/#", "out", 1, "", "");
    let petrel = Petrel::start("bridge-bit", &[bridge]).await;
    let topic = "$SYS/broker/connection/plain/state";
    let mut watcher = Client::connect(petrel.addr(), Protocol::V5, "bridge-bit-watch").await;
    watcher.subscribe(topic, 1).await;

    let mut first = remote.accept().await;
    let connect = first.next("the first CONNECT").await;
    assert!(
        matches!(connect, Packet::Connect { level: 0x84, .. }),
        "a 3.1.1 bridge first sets the bridge bit: {connect:?}"
    );
    // 3.1.1's "unacceptable protocol version".
    first.connack_v311(0x01).await;

    let mut second = remote.accept().await;
    let connect = second.next("the second CONNECT").await;
    assert!(
        matches!(
            connect,
            Packet::Connect {
                level: 4,
                clean_start: false,
                ..
            }
        ),
        "refused, the bridge connects as a plain 3.1.1 client: {connect:?}"
    );
    second.connack_v311(0x00).await;
    watcher
        .expect("state \"1\" over the plain connection", |m| {
            m.topic == topic && m.text() == "1"
        })
        .await;
    assert!(
        petrel.log().contains("refused the bridge bit"),
        "the fallback is logged"
    );
}
