//! Races, stalls and limits a hostile or careless client can hit, over real
//! sockets. Every wait is for a packet, a close or a process exit, bounded.

mod common;
mod raw;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::faulty_store::{Faults, FaultyStore};
use common::scratch::TempDir;
use raw::{
    CONNACK, Connect, DISCONNECT, Event, PUBACK, PUBLISH, Publish, RawClient, SUBACK, Will,
    publish_v5, publish_v311, subscribe, unique_id,
};
use tokio::io::AsyncWriteExt;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// Finding 1 over sockets: a run of retained values published while a
/// client subscribes to `r/#` together with 500 other filters. What the
/// client receives for the topic only moves forward (never an older value
/// after a newer one, never one twice) and ends on the newest (round 1:
/// stale in 9 of 200 trials).
#[tokio::test]
async fn a_subscriber_never_ends_on_a_stale_retained_value() {
    const VALUES: u16 = 20;
    let broker = common::IsolatedBroker::start(|_| {});
    let mut publisher = raw::connect_v311(broker.addr, &unique_id("pub")).await;
    let mut filters: Vec<Vec<u8>> = vec![b"r/#".to_vec()];
    filters.extend((0..500).map(|i| format!("other/{i}/#").into_bytes()));
    let list: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_slice(), 0)).collect();
    let subscribing = subscribe(1, None, &list);
    for trial in 0..200u16 {
        let topic = format!("r/{}/{trial}", unique_id("t"));
        let retained = |value: u16| {
            let mut packet = publish_v311(&topic, 1, value, value.to_string().as_bytes());
            packet[0] |= 1;
            packet
        };
        // The first value is retained before the subscription starts; the
        // rest race it.
        publisher.send(&retained(1)).await;
        publisher.expect_kind(PUBACK).await;
        let values: Vec<u8> = (2..=VALUES).flat_map(retained).collect();
        let mut subscriber = raw::connect_v311(broker.addr, &unique_id("sub")).await;
        subscriber.send(&subscribing).await;
        publisher.send(&values).await;
        for _ in 2..=VALUES {
            publisher.expect_kind(PUBACK).await;
        }
        subscriber.expect_kind(SUBACK).await;
        // A non-retained marker after all of them: everything before it for
        // the topic has arrived once it does.
        publisher.send(&publish_v311(&topic, 1, 1, b"marker")).await;
        publisher.expect_kind(PUBACK).await;
        let seen: Vec<u16> = subscriber
            .payloads_before_marker(&topic, b"marker")
            .await
            .into_iter()
            .map(|payload| String::from_utf8(payload).unwrap().parse().unwrap())
            .collect();
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "trial {trial}: went back or repeated: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&VALUES), "trial {trial}: {seen:?}");
    }
}

fn will_to(topic: &str) -> Will {
    Will {
        topic: topic.as_bytes().to_vec(),
        payload: b"gone".to_vec(),
        qos: 0,
        retain: false,
        properties: Vec::new(),
    }
}

/// Finding 7: a subscriber that stops reading while QoS 0 traffic flows is
/// closed by its keep alive (its will is the event the test waits for), and
/// counted; round 1 kept it forever.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_and_counted() {
    let broker = common::start_broker_with(|s| s.limits.write_timeout_secs = 2).await;
    let id = unique_id("stalled");
    let mut watcher = raw::connect_v311(broker.addr, &unique_id("watcher")).await;
    watcher
        .send(&subscribe(1, None, &[(b"gone/#".as_slice(), 0)]))
        .await;
    watcher.expect_kind(SUBACK).await;

    let mut connect = Connect::v311(&id);
    connect.keep_alive = 2;
    connect.will = Some(will_to(&format!("gone/{id}")));
    let (mut stalled, _) = raw::connect_accepted(broker.addr, &connect).await;
    stalled
        .send(&subscribe(1, None, &[(b"flood".as_slice(), 0)]))
        .await;
    stalled.expect_kind(SUBACK).await;
    // From here on the stalled client reads nothing.

    let mut flooder = raw::connect_v311(broker.addr, &unique_id("flood")).await;
    let payload = vec![b'x'; 1024];
    let burst: Vec<u8> = (0..64)
        .flat_map(|_| publish_v311("flood", 0, 0, &payload))
        .collect();
    let flood = async {
        loop {
            flooder.send(&burst).await;
        }
    };
    let will = async {
        let packet = watcher.expect_kind(PUBLISH).await;
        Publish::parse(&packet, false)
    };
    let will = tokio::select! {
        will = tokio::time::timeout(Duration::from_secs(20), will) => will.expect("the stalled subscriber is closed"),
        _ = flood => unreachable!("flooding never ends by itself"),
    };
    assert_eq!(will.topic, format!("gone/{id}").as_bytes());
    let metrics = broker.petrel().metrics();
    assert!(
        metrics.slow_consumers_closed() + metrics.messages_dropped() > 0,
        "the broker saw it could not keep up with this client"
    );
    drop(stalled);
}

/// Sends SIGTERM and waits up to `within` for the exit; `None` if it takes
/// longer.
async fn terminate(
    child: &mut tokio::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = child.id().expect("running");
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(within, child.wait())
        .await
        .ok()
        .map(|status| status.unwrap())
}

/// The real binary on a free port with `config`; returns it and its port.
async fn spawn_petrel(dir: &TempDir, config: &str) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("petrel.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\n{config}\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(PETREL)
        .arg("serve")
        .arg("-c")
        .arg(&file)
        .env_remove("PETREL_LOG")
        // Read as a setting by the broker, which refuses unknown ones.
        .env_remove("PETREL_TEST_BROKER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The broker is up once it answers a CONNECT.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            drop(stream);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "petrel did not start"
        );
        // Paces the retries; the wait ends on the connect, not on time.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, port)
}

/// Finding 7, shutdown: SIGTERM with a subscriber that stopped reading and
/// a flood still coming: petrel still exits within its shutdown grace
/// period, and the final flush runs (a queued message of an offline
/// persistent session survives, with the background flush far away).
#[tokio::test]
async fn sigterm_exits_promptly_with_a_stalled_subscriber_and_flushes() {
    let dir = TempDir::new("sigterm");
    let config = "durability = \"async\"\nflush_interval_ms = 600000";
    let (mut child, port) = spawn_petrel(&dir, config).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let offline = raw::persistent_v311("offline-reader");
    let (mut reader, _) = raw::connect_accepted(addr, &offline).await;
    reader
        .send(&subscribe(1, None, &[(b"kept".as_slice(), 1)]))
        .await;
    reader.expect_kind(SUBACK).await;
    drop(reader);

    let mut stalled = raw::connect_v311(addr, "stalled").await;
    stalled
        .send(&subscribe(1, None, &[(b"flood".as_slice(), 0)]))
        .await;
    stalled.expect_kind(SUBACK).await;
    let mut publisher = raw::connect_v311(addr, "publisher").await;
    // Once this is acknowledged the offline session holds it; under
    // `async` it reaches the disk only by the final flush.
    publisher
        .send(&publish_v311("kept", 1, 1, b"after restart"))
        .await;
    publisher.expect_kind(PUBACK).await;
    // The flood goes on until the broker closes the publisher: 128 MiB
    // first, so the stalled subscriber's socket buffers are long full, then
    // SIGTERM while it still flows. (Round 1 took 12 s to more than 60.)
    let payload = vec![b'x'; 1024];
    let burst: Vec<u8> = (0..256)
        .flat_map(|_| publish_v311("flood", 0, 0, &payload))
        .collect();
    for _ in 0..512 {
        publisher.send(&burst).await;
    }
    let flood = tokio::spawn(async move { while publisher.try_send(&burst).await.is_ok() {} });
    let exited = terminate(&mut child, Duration::from_secs(8))
        .await
        .expect("petrel exits within its 5 s shutdown grace period");
    assert!(exited.success(), "{exited:?}");
    flood.await.unwrap();
    drop(stalled);

    let (_child, port) = spawn_petrel(&dir, config).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (mut reader, _) = raw::connect_accepted(addr, &offline).await;
    let packet = reader.expect_kind(PUBLISH).await;
    assert_eq!(Publish::parse(&packet, false).payload, b"after restart");
}

/// Finding 10: the broker closes a connection that still has unread input
/// (here: DISCONNECT 0x93 for a client past the Receive Maximum, which keeps
/// sending). The close is orderly: a client still writing when the broker
/// has given up on it gets no reset (round 1: broken pipe), and reads the
/// DISCONNECT and then the end of the stream.
#[tokio::test]
async fn last_words_reach_a_client_that_is_still_sending() {
    let broker = common::start_broker_with(|s| s.limits.receive_maximum = 2).await;
    let id = unique_id("excess");
    let mut watcher = raw::connect_v311(broker.addr, &unique_id("watcher")).await;
    watcher
        .send(&subscribe(1, None, &[(b"gone/#".as_slice(), 0)]))
        .await;
    watcher.expect_kind(SUBACK).await;
    let mut connect = Connect::v5(&id);
    connect.will = Some(will_to(&format!("gone/{id}")));
    let (mut client, _) = raw::connect_v5_with(broker.addr, &connect).await;
    let mut burst = Vec::new();
    for packet_id in 1..=3u16 {
        burst.extend(publish_v5("q2", 2, packet_id, &[], b"x"));
    }
    // More input behind the offending packet, which the broker will not
    // read before it closes.
    burst.extend((0..20_000).flat_map(|_| [0xC0u8, 0x00]));
    client.send(&burst).await;
    // The will says the broker has closed the connection.
    watcher.expect_kind(PUBLISH).await;
    client
        .try_send(&[0xC0, 0x00])
        .await
        .expect("the broker closed with FIN and reads what still comes, not RST");
    let mut saw_disconnect = false;
    loop {
        match client.next_event().await {
            Event::Packet(packet) if packet.kind() == DISCONNECT => {
                assert_eq!(packet.disconnect_reason(), 0x93);
                saw_disconnect = true;
            }
            Event::Packet(_) => {}
            Event::Closed => break,
            Event::Reset => {
                panic!("reset before the client read the close (DISCONNECT seen: {saw_disconnect})")
            }
        }
    }
    assert!(saw_disconnect);
}

/// Finding 11: a burst of connections never passes `max_connections`, even
/// before the first of them has sent anything.
#[tokio::test]
async fn a_burst_of_connections_never_passes_the_limit() {
    let broker = common::IsolatedBroker::start(|s| s.limits.max_connections = 5);
    let mut sockets = Vec::new();
    for _ in 0..40 {
        sockets.push(tokio::net::TcpStream::connect(broker.addr).await.unwrap());
    }
    let mut accepted = 0;
    for (i, mut socket) in sockets.into_iter().enumerate() {
        socket.set_nodelay(true).unwrap();
        let _ = socket
            .write_all(&Connect::v311(&format!("burst-{i}")).encode())
            .await;
        let mut client = RawClient::from_stream(socket);
        if let Event::Packet(packet) = client.next_event().await {
            assert_eq!(packet.kind(), 2);
            accepted += 1;
            std::mem::forget(client);
        }
    }
    assert_eq!(accepted, 5);
}

/// mqttbytes' v5 UNSUBSCRIBE decoder prints every packet id to stderr; the
/// broker reads UNSUBSCRIBE itself, so a client sending many writes nothing
/// there.
#[tokio::test]
async fn v5_unsubscribe_writes_nothing_to_stderr() {
    let dir = TempDir::new("stderr");
    let (mut child, port) =
        spawn_petrel(&dir, "durability = \"memory\"\n[log]\nlevel = \"warn\"").await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (mut client, _) = raw::connect_v5(addr, &unique_id("unsub")).await;
    for packet_id in 1..=50u16 {
        let mut body = packet_id.to_be_bytes().to_vec();
        body.push(0);
        body.extend(raw::string(b"a/b"));
        client.send(&raw::packet(0xA2, &body)).await;
        client.expect_kind(11).await;
    }
    let status = terminate(&mut child, Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(!stderr.contains("pkid"), "{stderr}");
}

/// Flushes that wait until the test opens the gate: a disk that takes its
/// time.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.opened.notify_all();
    }
}

impl Faults for Gate {
    fn before_flush(&self) -> Result<(), petrel::store::StoreError> {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        Ok(())
    }
}

/// Finding 7, acknowledgements: while the disk is slow, a client's
/// acknowledgements waiting for it stop at the Receive Maximum (100): the
/// broker handles 100 PUBLISHes and reads no further until some are
/// durable; then all of them are acknowledged.
#[tokio::test]
async fn acknowledgements_waiting_for_the_disk_stop_at_the_receive_maximum() {
    let store = FaultyStore::new(petrel::store::MemoryStore::new(), Gate::default());
    let shared: std::sync::Arc<dyn petrel::store::Store> = store.clone();
    let settings = petrel::Settings {
        durability: petrel::config::Durability::Sync,
        ..petrel::Settings::ephemeral()
    };
    let broker = petrel::Broker::start_with_store(settings, shared)
        .await
        .unwrap();
    let addr = broker.local_addrs()[0];
    let subscriber = raw::persistent_v311("durable-acks");
    let mut reader = RawClient::connect(addr).await;
    reader.send(&subscriber.encode()).await;
    // The CONNACK of a persistent session waits for the disk too.
    store.faults.set(true);
    reader.expect_kind(CONNACK).await;
    reader
        .send(&subscribe(1, None, &[(b"acks/#".as_slice(), 1)]))
        .await;
    reader.expect_kind(SUBACK).await;
    store.faults.set(false);

    let mut publisher = raw::connect_v311(addr, &unique_id("pub")).await;
    let burst: Vec<u8> = (1..=300u16)
        .flat_map(|id| publish_v311("acks/t", 1, id, b"x"))
        .collect();
    publisher.send(&burst).await;
    let metrics = broker.metrics();
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.messages_received() < 100 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(reached.is_ok(), "100 PUBLISHes handled");
    // Other connections are served meanwhile; this one has stopped.
    for _ in 0..20 {
        let mut probe = raw::connect_v311(addr, &unique_id("probe")).await;
        probe.ping().await;
    }
    assert_eq!(
        metrics.messages_received(),
        100,
        "no more read while 100 acknowledgements wait"
    );

    store.faults.set(true);
    for _ in 1..=300 {
        publisher.expect_kind(PUBACK).await;
    }
    assert_eq!(metrics.messages_received(), 300);
    drop((reader, publisher));
    broker.shutdown().await;
}

/// SIGTERM: a connected v5 client is told the server is shutting down
/// (DISCONNECT 0x8B) before petrel exits.
#[tokio::test]
async fn sigterm_tells_v5_clients_the_server_is_shutting_down() {
    let dir = TempDir::new("sigterm-v5");
    let (mut child, port) = spawn_petrel(&dir, "").await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (mut client, _) = raw::connect_v5(addr, "told").await;
    let exited = terminate(&mut child, Duration::from_secs(8))
        .await
        .expect("petrel exits within its shutdown grace period");
    assert!(exited.success(), "{exited:?}");
    let disconnect = client.expect_kind(raw::DISCONNECT).await;
    assert_eq!(disconnect.body.first(), Some(&0x8B), "{disconnect:?}");
}
