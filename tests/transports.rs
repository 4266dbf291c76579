//! Every listener transport of a real broker over loopback sockets: TLS
//! (with and without client certificates), WebSocket and secure WebSocket,
//! with real clients (rumqttc over TLS, mosquitto_pub/sub with `--cafile`,
//! a WebSocket client speaking raw MQTT), and the bad inputs that must
//! close only their own connection. Needs `bash` and `openssl`.

mod common;
mod raw;

use std::net::SocketAddr;
use std::process::Stdio;

use common::WAIT;
use common::certs::Certs;
use futures_util::{SinkExt, StreamExt};
use petrel::config::{Listener, Transport};
use petrel::{Broker, Settings};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A broker with a plain TCP listener first, then `extra`.
async fn start(extra: Vec<Listener>, adjust: impl FnOnce(&mut Settings)) -> Broker {
    let mut settings = Settings::ephemeral();
    settings.listeners.extend(extra);
    adjust(&mut settings);
    Broker::start(settings).await.expect("broker starts")
}

fn tls_listener(certs: &Certs, transport: Transport) -> Listener {
    Listener {
        transport,
        cert: Some(certs.file("server.crt")),
        key: Some(certs.file("server.key")),
        ..Listener::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

fn ws_listener() -> Listener {
    Listener {
        transport: Transport::Ws,
        ..Listener::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// A rumqttc 3.1.1 client over TLS trusting `certs`' CA (and presenting
/// its client certificate when `with_cert`); returns once CONNACK came.
async fn rumqttc_tls(
    addr: SocketAddr,
    id: &str,
    certs: &Certs,
    with_cert: bool,
) -> (AsyncClient, rumqttc::EventLoop) {
    let config = if with_cert {
        certs.client_with_cert(certs)
    } else {
        certs.client()
    };
    let mut options = MqttOptions::new(id, "localhost", addr.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        TlsConfiguration::Rustls(config),
    ));
    let (client, mut events) = AsyncClient::new(options, 16);
    let connack = timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => return Ok(connack),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    connack.expect("connected over TLS");
    (client, events)
}

/// The next PUBLISH's topic and payload.
async fn next_publish(events: &mut rumqttc::EventLoop) -> (String, Vec<u8>) {
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) =
                events.poll().await.expect("connection stays up")
            {
                return (publish.topic, publish.payload.to_vec());
            }
        }
    })
    .await
    .expect("a PUBLISH in time")
}

/// Waits for the SUBACK of the subscription just sent.
async fn suback(events: &mut rumqttc::EventLoop) {
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.expect("connected") {
                return;
            }
        }
    })
    .await
    .expect("SUBACK in time");
}

async fn mosquitto_pub(args: &[&str]) -> std::process::Output {
    timeout(
        WAIT,
        Command::new("mosquitto_pub")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("mosquitto_pub finished in time")
    .expect("mosquitto_pub runs")
}

#[tokio::test]
async fn a_tls_listener_serves_rumqttc_and_mosquitto_pub_with_cafile() {
    let certs = Certs::new("transports-tls", &[]);
    let broker = start(vec![tls_listener(&certs, Transport::Tls)], |_| {}).await;
    let tls = broker.local_addrs()[1];
    let (client, mut events) = rumqttc_tls(tls, "tls-sub", &certs, false).await;
    client
        .subscribe("secure/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut events).await;
    let ca = certs.file("ca.crt");
    let published = mosquitto_pub(&[
        "-h",
        "localhost",
        "-p",
        &tls.port().to_string(),
        "--cafile",
        ca.to_str().unwrap(),
        "-q",
        "1",
        "-t",
        "secure/hello",
        "-m",
        "over tls",
    ])
    .await;
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert_eq!(
        next_publish(&mut events).await,
        ("secure/hello".into(), b"over tls".to_vec())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with() {
    let certs = Certs::new("transports-mtls", &[]);
    let listener = Listener {
        client_ca: Some(certs.file("ca.crt")),
        require_client_cert: true,
        ..tls_listener(&certs, Transport::Tls)
    };
    let broker = start(vec![listener], |_| {}).await;
    let tls = broker.local_addrs()[1];
    let ca = certs.file("ca.crt");
    let port = tls.port().to_string();
    let base = [
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        ca.to_str().unwrap(),
        "-t",
        "m",
        "-m",
        "x",
    ];
    let refused = mosquitto_pub(&base).await;
    assert!(!refused.status.success(), "no certificate: refused");
    let cert = certs.file("client.crt");
    let key = certs.file("client.key");
    let mut with_cert = base.to_vec();
    with_cert.extend([
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let accepted = mosquitto_pub(&with_cert).await;
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let (_client, _events) = rumqttc_tls(tls, "mtls", &certs, true).await;
    broker.shutdown().await;
}

/// Reads until the broker closes the connection; fails if it does not
/// within `WAIT`.
async fn closed_by_broker(stream: &mut TcpStream) {
    let mut scratch = [0u8; 1024];
    timeout(WAIT, async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the broker closed the connection in time");
}

#[tokio::test]
async fn plaintext_and_silence_on_a_tls_port_close_only_their_own_connections() {
    let certs = Certs::new("transports-bad-tls", &[]);
    let broker = start(vec![tls_listener(&certs, Transport::Tls)], |settings| {
        settings.limits.connect_timeout_secs = 1;
    })
    .await;
    let tls = broker.local_addrs()[1];
    let (client, mut events) = rumqttc_tls(tls, "bystander", &certs, false).await;
    client.subscribe("still/#", QoS::AtMostOnce).await.unwrap();
    suback(&mut events).await;

    let mut plaintext = TcpStream::connect(tls).await.unwrap();
    plaintext
        .write_all(&raw::Connect::v311("plain").encode())
        .await
        .unwrap();
    closed_by_broker(&mut plaintext).await;
    // A handshake that never starts is cut by the connect timeout.
    let mut silent = TcpStream::connect(tls).await.unwrap();
    closed_by_broker(&mut silent).await;
    assert_eq!(
        broker.metrics().connections_current(),
        1,
        "only the bystander is counted"
    );

    client
        .publish("still/here", QoS::AtMostOnce, false, "yes")
        .await
        .unwrap();
    assert_eq!(next_publish(&mut events).await.0, "still/here");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let certs = Certs::new("transports-mtls-ca", &[]);
    let stranger = Certs::new("transports-mtls-stranger", &[]);
    let listener = Listener {
        client_ca: Some(certs.file("ca.crt")),
        require_client_cert: true,
        ..tls_listener(&certs, Transport::Tls)
    };
    let broker = start(vec![listener], |_| {}).await;
    let tls = broker.local_addrs()[1];
    let tcp = TcpStream::connect(tls).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(stranger.client_with_cert(&certs));
    // TLS 1.3: the client learns of the refusal on its first read.
    let outcome = timeout(WAIT, async {
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(&raw::Connect::v311("x").encode()).await?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    })
    .await
    .expect("the handshake ended in time");
    assert!(!matches!(outcome, Ok(n) if n > 0), "served: {outcome:?}");
    broker.shutdown().await;
}

/// A WebSocket client asking for the `mqtt` subprotocol.
async fn websocket<S>(stream: S, url: &str) -> tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (socket, response) = timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("upgrade in time")
        .expect("upgraded");
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "mqtt"
    );
    socket
}

/// The next binary message's bytes.
async fn next_binary<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
            Some(Ok(_)) => {}
            other => panic!("no binary message: {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_carries_mqtt_in_binary_messages_split_anywhere() {
    let broker = start(vec![ws_listener()], |_| {}).await;
    let ws = broker.local_addrs()[1];
    let stream = TcpStream::connect(ws).await.unwrap();
    let mut socket = websocket(stream, &format!("ws://{ws}/mqtt")).await;
    // One CONNECT in two messages: MQTT is a byte stream inside WebSocket.
    let connect = raw::Connect::v311("ws-client").encode();
    let (head, tail) = connect.split_at(5);
    socket.send(Message::binary(head.to_vec())).await.unwrap();
    socket.send(Message::binary(tail.to_vec())).await.unwrap();
    assert_eq!(next_binary(&mut socket).await, [0x20, 0x02, 0x00, 0x00]);
    socket
        .send(Message::binary(raw::subscribe(1, None, &[(b"ws/#", 0)])))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut socket).await[0], 0x90, "SUBACK");
    let mut tcp = raw::connect_v311(broker.local_addrs()[0], "tcp-pub").await;
    tcp.send(&raw::publish_v311("ws/hi", 0, 0, b"across")).await;
    let publish = next_binary(&mut socket).await;
    assert_eq!(publish[0] >> 4, 3, "PUBLISH");
    assert!(publish.ends_with(b"across"));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_websocket_request_for_another_path_or_without_mqtt_is_refused() {
    let broker = start(vec![ws_listener()], |_| {}).await;
    let ws = broker.local_addrs()[1];
    let stream = TcpStream::connect(ws).await.unwrap();
    let mut request = format!("ws://{ws}/other").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let refused = timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("answered in time");
    assert!(refused.is_err(), "wrong path upgraded");
    let stream = TcpStream::connect(ws).await.unwrap();
    let plain = format!("ws://{ws}/mqtt").into_client_request().unwrap();
    let refused = timeout(WAIT, tokio_tungstenite::client_async(plain, stream))
        .await
        .expect("answered in time");
    assert!(refused.is_err(), "upgraded without the mqtt subprotocol");
    broker.shutdown().await;
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_only_its_connection() {
    let broker = start(vec![ws_listener()], |settings| {
        settings.limits.max_packet_size = 1024;
    })
    .await;
    let ws = broker.local_addrs()[1];
    let url = format!("ws://{ws}/mqtt");
    let mut bystander = websocket(TcpStream::connect(ws).await.unwrap(), &url).await;
    bystander
        .send(Message::binary(raw::Connect::v311("calm").encode()))
        .await
        .unwrap();
    next_binary(&mut bystander).await;

    let mut flooder = websocket(TcpStream::connect(ws).await.unwrap(), &url).await;
    let _ = flooder.send(Message::binary(vec![0u8; 64 * 1024])).await;
    let ended = timeout(WAIT, async {
        loop {
            match flooder.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the oversized message closed its connection");

    bystander
        .send(Message::binary(vec![0xC0, 0x00]))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut bystander).await, [0xD0, 0x00], "PINGRESP");
    broker.shutdown().await;
}

#[tokio::test]
async fn secure_websocket_serves_mqtt_over_tls() {
    let certs = Certs::new("transports-wss", &[]);
    let broker = start(vec![tls_listener(&certs, Transport::Wss)], |_| {}).await;
    let wss = broker.local_addrs()[1];
    let tcp = TcpStream::connect(wss).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(certs.client())
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut socket = websocket(tls, &format!("wss://localhost:{}/mqtt", wss.port())).await;
    socket
        .send(Message::binary(raw::Connect::v311("wss-client").encode()))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut socket).await, [0x20, 0x02, 0x00, 0x00]);
    broker.shutdown().await;
}

#[tokio::test]
async fn reloaded_certificates_serve_new_connections_and_leave_open_ones_alone() {
    let first = Certs::new("transports-reload-1", &[]);
    let second = Certs::new("transports-reload-2", &[]);
    let live = common::scratch::TempDir::new("transports-reload-live");
    for name in ["server.crt", "server.key"] {
        std::fs::copy(first.file(name), live.path().join(name)).unwrap();
    }
    let listener = Listener {
        transport: Transport::Tls,
        cert: Some(live.path().join("server.crt")),
        key: Some(live.path().join("server.key")),
        ..Listener::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let broker = start(vec![listener], |_| {}).await;
    let tls = broker.local_addrs()[1];
    let (before, mut before_events) = rumqttc_tls(tls, "before", &first, false).await;
    before.subscribe("r/#", QoS::AtMostOnce).await.unwrap();
    suback(&mut before_events).await;

    for name in ["server.crt", "server.key"] {
        std::fs::copy(second.file(name), live.path().join(name)).unwrap();
    }
    assert!(broker.reload_certificates().is_empty(), "reloaded");
    let (after, mut after_events) = rumqttc_tls(tls, "after", &second, false).await;
    after
        .publish("r/x", QoS::AtMostOnce, false, "new cert")
        .await
        .unwrap();
    // Keep the publisher's event loop turning so the PUBLISH goes out.
    let drive = tokio::spawn(async move { while after_events.poll().await.is_ok() {} });
    assert_eq!(
        next_publish(&mut before_events).await,
        ("r/x".into(), b"new cert".to_vec()),
        "the connection opened before the reload still works"
    );
    drive.abort();

    std::fs::remove_file(live.path().join("server.key")).unwrap();
    assert_eq!(
        broker.reload_certificates().len(),
        1,
        "a reload that fails is reported"
    );
    let _still = rumqttc_tls(tls, "kept", &second, false).await;
    broker.shutdown().await;
}
