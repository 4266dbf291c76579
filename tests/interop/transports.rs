//! Third-party clients over every listener transport, each test on a
//! petrel of its own with a plain TCP listener first and the transports it
//! needs after it, using certificates made by `certs/make-dev-certs.sh`.
//!
//! - mosquitto_sub / mosquitto_pub over TLS with `--cafile`, over mutual
//!   TLS with `--cert`/`--key`, and with a certificate whose common name
//!   becomes the username (`use_identity_as_username`).
//! - paho-mqtt and MQTT.js (the scripts in `tests/interop/` and
//!   `tests/interop/node/`, given `--cafile`, `--cert`/`--key` and
//!   `--websocket`) over TLS, mutual TLS, WebSocket and secure WebSocket.
//! - rumqttc 5.0, in process, over TLS and mutual TLS (its 3.1.1 client is
//!   in tests/transports.rs).
//!
//! Every round trip is a real publish and subscribe through petrel: the
//! subscriber is subscribed (its SUBACK is in) before the publisher
//! connects, and the test fails unless each message arrives once, in
//! order, intact, at the QoS it was sent with. Clients connect to
//! 127.0.0.1, which the development server certificate names, so every TLS
//! client checks the broker's certificate and host in full.
//!
//! The last tests speak WebSocket by hand, for the framing rules of the
//! specifications' chapter 6 that a client library never breaks.
//! tests/transports.rs covers rumqttc 3.1.1 over TLS, mosquitto_pub with
//! `--cafile` and with a certificate, a raw WebSocket client, bad handshakes
//! and certificate reload; the matrix in conformance/README.md
//! ("Transports") names the test for every client and transport.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use petrel::config::{Listener, Transport};
use petrel::{Broker, Settings};
use rumqttc::TlsConfiguration;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{MOSQUITTO_V5, MOSQUITTO_V311, MQTTJS_V5, MQTTJS_V311, PAHO_V5, PAHO_V311};
use crate::clients::{Client, Ctx, Family, Version, require_tool};
use crate::common::certs::Certs;
use crate::common::mqtt::{Client5, Message as _, v5api};
use crate::common::scratch::TempDir;
use crate::common::{WAIT, wire};
use crate::process::{Proc, Received};

/// How a client reaches the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    Tcp,
    /// TLS; the client checks the broker's certificate against the CA.
    Tls,
    /// TLS where the broker requires a client certificate from the CA.
    MutualTls,
    /// Mutual TLS where the certificate's common name is the username
    /// (`use_identity_as_username`).
    CertUsername,
    /// WebSocket at `/mqtt`.
    Ws,
    /// WebSocket inside TLS.
    Wss,
}

/// Line format for mosquitto_sub: the lines the paho and MQTT.js scripts
/// print, which `Received::parse` reads.
const MOSQUITTO_SUB_FORMAT: &str = "MSG %t %q %r %p";

/// A petrel with a plain TCP listener first, then one listener per entry of
/// `over`, all on 127.0.0.1 with ephemeral ports, and the certificates its
/// TLS listeners use.
struct Net {
    broker: Broker,
    certs: Certs,
    /// Listener addresses: the plain TCP one, then those of `over` in order.
    addrs: Vec<(Over, SocketAddr)>,
}

impl Net {
    async fn start(test: &str, over: &[Over]) -> Net {
        Net::start_with(test, over, &[], |_| {}).await
    }

    /// `start`, with `make-dev-certs.sh` arguments and settings of the
    /// test's own.
    async fn start_with(
        test: &str,
        over: &[Over],
        cert_args: &[&str],
        adjust: impl FnOnce(&mut Settings),
    ) -> Net {
        let certs = Certs::new(test, cert_args);
        let mut settings = Settings::ephemeral();
        settings
            .listeners
            .extend(over.iter().map(|&over| listener(over, &certs)));
        adjust(&mut settings);
        let broker = Broker::start(settings).await.expect("broker starts");
        let addrs = [Over::Tcp].iter().chain(over).copied();
        Net {
            addrs: addrs.zip(broker.local_addrs()).collect(),
            broker,
            certs,
        }
    }

    fn addr(&self, over: Over) -> SocketAddr {
        let found = self.addrs.iter().find(|(o, _)| *o == over);
        found.map(|(_, addr)| *addr).unwrap_or_else(|| {
            panic!("the test started no {over:?} listener");
        })
    }

    fn ca(&self) -> PathBuf {
        self.certs.file("ca.crt")
    }

    fn client_identity(&self) -> (PathBuf, PathBuf) {
        (self.certs.file("client.crt"), self.certs.file("client.key"))
    }

    /// `client` subscribed to `topic` at `qos` over `over`, returned once
    /// its SUBACK granted `qos`.
    async fn subscribe(&self, client: Client, over: Over, ctx: &Ctx, topic: &str, qos: u8) -> Proc {
        let id = ctx.client_id("sub");
        match client.family {
            Family::Mosquitto => {
                let mut cmd = self.mosquitto(client, "mosquitto_sub", over, &id);
                cmd.args(["-d", "-F", MOSQUITTO_SUB_FORMAT]);
                cmd.args(["-q", &qos.to_string(), "-t", topic]);
                let mut sub = Proc::spawn(format!("mosquitto_sub {id} over {over:?}"), cmd, None);
                let line = sub
                    .wait_for("its SUBACK", |l| l.starts_with("Subscribed (mid:"))
                    .await;
                assert!(
                    line.ends_with(&format!("): {qos}")),
                    "mosquitto_sub over {over:?} subscribing at QoS {qos}: {line}"
                );
                sub
            }
            Family::Paho | Family::MqttJs => {
                let (name, mut cmd) = self.script(client, "sub", over, &id);
                cmd.args(["--qos", &qos.to_string(), "--topic", topic]);
                let mut sub = Proc::spawn(name, cmd, None);
                let line = sub
                    .wait_for("SUBSCRIBED", |l| l.starts_with("SUBSCRIBED "))
                    .await;
                assert_eq!(
                    line,
                    format!("SUBSCRIBED {qos}"),
                    "{} over {over:?} subscribing at QoS {qos}",
                    client.label()
                );
                sub
            }
            Family::Rumqttc => panic!("rumqttc is not driven here (see tests/transports.rs)"),
        }
    }

    /// `client` publishes `messages` on `topic` in order at `qos` over
    /// `over`, on one connection; returns once the program has finished
    /// (for QoS 1 and 2, after every acknowledgement).
    async fn publish(
        &self,
        client: Client,
        over: Over,
        ctx: &Ctx,
        qos: u8,
        topic: &str,
        messages: &[&str],
    ) {
        let id = ctx.client_id("pub");
        match client.family {
            Family::Mosquitto => {
                // `-l`: one message per stdin line, over one connection.
                let mut cmd = self.mosquitto(client, "mosquitto_pub", over, &id);
                cmd.args(["-q", &qos.to_string(), "-t", topic, "-l"]);
                let input: String = messages.iter().map(|p| format!("{p}\n")).collect();
                let name = format!("mosquitto_pub -l {id} over {over:?}");
                Proc::spawn(name, cmd, Some(input)).finish().await;
            }
            Family::Paho | Family::MqttJs => {
                let (name, mut cmd) = self.script(client, "pub", over, &id);
                cmd.args(["--qos", &qos.to_string()]);
                for payload in messages {
                    cmd.args(["--msg", topic, payload]);
                }
                let output = Proc::spawn(name.clone(), cmd, None).finish().await;
                let done = format!("PUBLISHED {}", messages.len());
                assert!(
                    output.contains(&done),
                    "{name} did not report `{done}`: {output:?}"
                );
            }
            Family::Rumqttc => panic!("rumqttc is not driven here (see tests/transports.rs)"),
        }
    }

    /// mosquitto_sub or mosquitto_pub (`program`) reaching the broker over
    /// `over` as `id`. They have no WebSocket support (Debian's
    /// mosquitto-clients 2.0 offers no such option).
    fn mosquitto(&self, client: Client, program: &str, over: Over, id: &str) -> Command {
        let path = require_tool(program, "install the Debian package mosquitto-clients");
        let mut cmd = if program == "mosquitto_sub" {
            // mosquitto_sub flushes stdout only after a message; its SUBACK
            // line must show at once.
            let stdbuf = require_tool("stdbuf", "install the Debian package coreutils");
            let mut cmd = Command::new(stdbuf);
            cmd.arg("-oL").arg(path);
            cmd
        } else {
            Command::new(path)
        };
        let version = match client.version {
            Version::V311 => "mqttv311",
            Version::V5 => "mqttv5",
        };
        let addr = self.addr(over);
        cmd.args(["-V", version, "-i", id]);
        cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
        match over {
            Over::Tcp => {}
            Over::Tls => {
                cmd.arg("--cafile").arg(self.ca());
            }
            Over::MutualTls | Over::CertUsername => {
                let (cert, key) = self.client_identity();
                cmd.arg("--cafile").arg(self.ca());
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
            Over::Ws | Over::Wss => panic!("mosquitto clients cannot speak WebSocket"),
        }
        cmd
    }

    /// The paho (`paho_<role>.py`) or MQTT.js (`node/mqttjs_<role>.js`)
    /// script for `role`, reaching the broker over `over` as `id`.
    fn script(&self, client: Client, role: &str, over: Over, id: &str) -> (String, Command) {
        let (name, mut cmd) = client.script_to(role, self.addr(over), id);
        if matches!(over, Over::Ws | Over::Wss) {
            cmd.arg("--websocket");
        }
        if matches!(
            over,
            Over::Tls | Over::MutualTls | Over::CertUsername | Over::Wss
        ) {
            cmd.arg("--cafile").arg(self.ca());
        }
        if matches!(over, Over::MutualTls | Over::CertUsername) {
            let (cert, key) = self.client_identity();
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        (format!("{name} over {over:?}"), cmd)
    }
}

/// The listener for `over`, on an ephemeral loopback port.
fn listener(over: Over, certs: &Certs) -> Listener {
    let plain = Listener::tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    let tls = |transport| Listener {
        transport,
        cert: Some(certs.file("server.crt")),
        key: Some(certs.file("server.key")),
        ..plain.clone()
    };
    match over {
        Over::Tcp => plain,
        Over::Tls => tls(Transport::Tls),
        Over::MutualTls => Listener {
            client_ca: Some(certs.file("ca.crt")),
            require_client_cert: true,
            ..tls(Transport::Tls)
        },
        Over::CertUsername => Listener {
            use_identity_as_username: true,
            ..listener(Over::MutualTls, certs)
        },
        Over::Ws => Listener {
            transport: Transport::Ws,
            ..plain.clone()
        },
        Over::Wss => tls(Transport::Wss),
    }
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

/// Two messages at `qos` from `publisher` reach `subscriber`, both over
/// `over`, once each, in order, intact and at `qos`. The first is long
/// enough to need a two-byte remaining length.
async fn round_trip_over(test: &str, over: Over, publisher: Client, subscriber: Client, qos: u8) {
    let net = Net::start(test, &[over]).await;
    let ctx = Ctx::new(net.addr(over), test);
    let topic = ctx.topic("round-trip");
    let first = format!(
        "qos{qos} over {over:?} from {} to {} {}",
        publisher.label(),
        subscriber.label(),
        "x".repeat(300)
    );
    let second = format!("second qos{qos} message over {over:?}");

    let mut sub = net.subscribe(subscriber, over, &ctx, &topic, qos).await;
    net.publish(publisher, over, &ctx, qos, &topic, &[&first, &second])
        .await;
    let got = sub.messages(2, "the two published messages").await;
    assert_eq!(
        got,
        vec![
            Received::new(&topic, qos, false, &first),
            Received::new(&topic, qos, false, &second),
        ],
        "{} subscribed over {over:?} at QoS {qos}; {} published two messages over {over:?}",
        subscriber.label(),
        publisher.label(),
    );
    drop(sub);
    net.broker.shutdown().await;
}

/// With `use_identity_as_username`, a client certificate is the whole
/// login: with anonymous clients refused and an ACL that lets only the
/// certificate's common name use the test's topics, mosquitto_sub and
/// mosquitto_pub connect without username or password, subscribe and
/// publish as that name, and the messages arrive. The same certificate on
/// a mutual TLS listener without the option logs in as nobody, and is
/// refused.
async fn certificate_name_is_the_username(test: &str, client: Client) {
    const NAME: &str = "sensor-7";
    let acl = TempDir::new(test);
    let acl_file = acl.path().join("acl");
    let rules = format!(
        "# Only the certificate's name may use the tests' topics.\n\
         user {NAME}\n\
         topic readwrite petrel-interop/#\n"
    );
    std::fs::write(&acl_file, rules).expect("write the ACL file");
    let net = Net::start_with(
        test,
        &[Over::CertUsername, Over::MutualTls],
        &["--client-cn", NAME],
        |settings| {
            settings.allow_anonymous = false;
            settings.acl_file = Some(acl_file.clone());
        },
    )
    .await;
    let ctx = Ctx::new(net.addr(Over::CertUsername), test);
    let topic = ctx.topic("identity");

    // SUBACK grants QoS 1 only if the ACL section of `NAME` applied.
    let mut sub = net
        .subscribe(client, Over::CertUsername, &ctx, &topic, 1)
        .await;

    let refused = mosquitto_pub_output(
        net.mosquitto(
            client,
            "mosquitto_pub",
            Over::MutualTls,
            &ctx.client_id("anon"),
        ),
        &topic,
    )
    .await;
    assert!(
        !refused.status.success(),
        "the certificate on a listener that does not take its name is anonymous, and anonymous \
         clients are refused; mosquitto_pub succeeded: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let why = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        why.contains("not authori"),
        "refused as not authorised: {why}"
    );

    net.publish(
        client,
        Over::CertUsername,
        &ctx,
        1,
        &topic,
        &["by certificate", "still by certificate"],
    )
    .await;
    assert_eq!(
        sub.messages(2, "the two messages").await,
        vec![
            Received::new(&topic, 1, false, "by certificate"),
            Received::new(&topic, 1, false, "still by certificate"),
        ],
        "{} with a certificate for {NAME} and no password, both ends",
        client.label()
    );
    drop(sub);
    net.broker.shutdown().await;
}

/// mosquitto_pub publishing one message on `topic` with `cmd`'s connection
/// arguments; its exit status and output, whatever they are.
async fn mosquitto_pub_output(mut cmd: Command, topic: &str) -> std::process::Output {
    cmd.args(["-q", "1", "-t", topic, "-m", "refused"]);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    timeout(WAIT, cmd.output())
        .await
        .expect("mosquitto_pub finished in time")
        .expect("mosquitto_pub runs")
}

/// One publisher over WebSocket reaches subscribers on every transport,
/// each another client and version: petrel routes between listeners, and
/// a payload far larger than a socket read or a WebSocket frame of the
/// clients' arrives intact on each.
async fn publish_over_websocket_reaches_every_transport(test: &str) {
    const LARGE: usize = 100_000;
    let net = Net::start(test, &[Over::Tls, Over::MutualTls, Over::Ws, Over::Wss]).await;
    let ctx = Ctx::new(net.addr(Over::Ws), test);
    let topic = ctx.topic("everywhere");
    // Letters from a simple generator, so a lost or repeated chunk shows.
    let mut state: u32 = 0x2545_f491;
    let large: String = (0..LARGE)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            char::from(b'a' + (state >> 24) as u8 % 26)
        })
        .collect();

    let subscribers = [
        (MOSQUITTO_V311, Over::Tcp),
        (MOSQUITTO_V5, Over::MutualTls),
        (PAHO_V311, Over::Tls),
        (PAHO_V5, Over::Wss),
        (MQTTJS_V311, Over::Wss),
        (MQTTJS_V5, Over::Ws),
    ];
    let mut subs = Vec::new();
    for (client, over) in subscribers {
        subs.push((
            client,
            over,
            net.subscribe(client, over, &ctx, &topic, 1).await,
        ));
    }
    net.publish(PAHO_V5, Over::Ws, &ctx, 1, &topic, &["small", &large])
        .await;
    for (client, over, sub) in &mut subs {
        let got = sub.messages(2, "the small and the large message").await;
        let summary: Vec<(&str, u8, bool, usize)> = got
            .iter()
            .map(|m| (m.topic.as_str(), m.qos, m.retain, m.payload.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (topic.as_str(), 1, false, "small".len()),
                (topic.as_str(), 1, false, LARGE)
            ],
            "{} over {over:?}: paho v5 published `small` and {LARGE} bytes over Ws at QoS 1",
            client.label()
        );
        assert!(
            got[0].payload == "small" && got[1].payload == large,
            "{} over {over:?} received other bytes than were published",
            client.label()
        );
    }
    drop(subs);
    net.broker.shutdown().await;
}

// ---------------------------------------------------------------------------
// The round trips: every client over every transport it has, both versions.
// 3.1.1 at QoS 1, 5.0 at QoS 2.
// ---------------------------------------------------------------------------

macro_rules! transport_tests {
    ($($name:ident: $scenario:ident($($arg:expr),*);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $scenario(stringify!($name), $($arg),*).await;
        }
    )*};
}

transport_tests! {
    mosquitto_clients_v311_qos1_round_trip_over_tls:
        round_trip_over(Over::Tls, MOSQUITTO_V311, MOSQUITTO_V311, 1);
    mosquitto_clients_v5_qos2_round_trip_over_tls:
        round_trip_over(Over::Tls, MOSQUITTO_V5, MOSQUITTO_V5, 2);
    mosquitto_clients_v311_qos1_round_trip_over_mutual_tls:
        round_trip_over(Over::MutualTls, MOSQUITTO_V311, MOSQUITTO_V311, 1);
    mosquitto_clients_v5_qos2_round_trip_over_mutual_tls:
        round_trip_over(Over::MutualTls, MOSQUITTO_V5, MOSQUITTO_V5, 2);
    mosquitto_clients_v311_certificate_common_name_is_the_username_without_password:
        certificate_name_is_the_username(MOSQUITTO_V311);
    mosquitto_clients_v5_certificate_common_name_is_the_username_without_password:
        certificate_name_is_the_username(MOSQUITTO_V5);

    paho_v311_qos1_round_trip_over_tls: round_trip_over(Over::Tls, PAHO_V311, PAHO_V311, 1);
    paho_v5_qos2_round_trip_over_tls: round_trip_over(Over::Tls, PAHO_V5, PAHO_V5, 2);
    paho_v311_qos1_round_trip_over_mutual_tls:
        round_trip_over(Over::MutualTls, PAHO_V311, PAHO_V311, 1);
    paho_v5_qos2_round_trip_over_mutual_tls:
        round_trip_over(Over::MutualTls, PAHO_V5, PAHO_V5, 2);
    paho_v311_qos1_round_trip_over_websocket: round_trip_over(Over::Ws, PAHO_V311, PAHO_V311, 1);
    paho_v5_qos2_round_trip_over_websocket: round_trip_over(Over::Ws, PAHO_V5, PAHO_V5, 2);
    paho_v311_qos1_round_trip_over_secure_websocket:
        round_trip_over(Over::Wss, PAHO_V311, PAHO_V311, 1);
    paho_v5_qos2_round_trip_over_secure_websocket:
        round_trip_over(Over::Wss, PAHO_V5, PAHO_V5, 2);

    mqttjs_v311_qos1_round_trip_over_tls: round_trip_over(Over::Tls, MQTTJS_V311, MQTTJS_V311, 1);
    mqttjs_v5_qos2_round_trip_over_tls: round_trip_over(Over::Tls, MQTTJS_V5, MQTTJS_V5, 2);
    mqttjs_v311_qos1_round_trip_over_mutual_tls:
        round_trip_over(Over::MutualTls, MQTTJS_V311, MQTTJS_V311, 1);
    mqttjs_v5_qos2_round_trip_over_mutual_tls:
        round_trip_over(Over::MutualTls, MQTTJS_V5, MQTTJS_V5, 2);
    mqttjs_v311_qos1_round_trip_over_websocket:
        round_trip_over(Over::Ws, MQTTJS_V311, MQTTJS_V311, 1);
    mqttjs_v5_qos2_round_trip_over_websocket: round_trip_over(Over::Ws, MQTTJS_V5, MQTTJS_V5, 2);
    mqttjs_v311_qos1_round_trip_over_secure_websocket:
        round_trip_over(Over::Wss, MQTTJS_V311, MQTTJS_V311, 1);
    mqttjs_v5_qos2_round_trip_over_secure_websocket:
        round_trip_over(Over::Wss, MQTTJS_V5, MQTTJS_V5, 2);

    rumqttc_v5_qos2_round_trip_over_tls: rumqttc_v5_round_trip_over(Over::Tls);
    rumqttc_v5_qos2_round_trip_over_mutual_tls: rumqttc_v5_round_trip_over(Over::MutualTls);

    // Across clients and listeners of one broker.
    mqttjs_v5_over_websocket_reaches_paho_v311_over_secure_websocket:
        round_trip_across(Over::Ws, MQTTJS_V5, Over::Wss, PAHO_V311);
    paho_v5_over_secure_websocket_reaches_mosquitto_v5_over_mutual_tls:
        round_trip_across(Over::Wss, PAHO_V5, Over::MutualTls, MOSQUITTO_V5);
    a_publish_over_websocket_reaches_subscribers_on_every_transport:
        publish_over_websocket_reaches_every_transport();
}

/// A QoS 1 message from `publisher` over `from` reaches `subscriber` over
/// `to`, on one broker serving both listeners.
async fn round_trip_across(
    test: &str,
    from: Over,
    publisher: Client,
    to: Over,
    subscriber: Client,
) {
    let net = Net::start(test, &[from, to]).await;
    let ctx = Ctx::new(net.addr(to), test);
    let topic = ctx.topic("across");
    let payload = format!("from {} over {from:?}", publisher.label());
    let mut sub = net.subscribe(subscriber, to, &ctx, &topic, 1).await;
    net.publish(publisher, from, &ctx, 1, &topic, &[&payload])
        .await;
    assert_eq!(
        sub.next_message("the message").await,
        Received::new(&topic, 1, false, &payload),
        "{} over {to:?}",
        subscriber.label()
    );
    drop(sub);
    net.broker.shutdown().await;
}

/// rumqttc 5.0 in process over TLS or mutual TLS (its 3.1.1 client is
/// tested over both in tests/transports.rs): two QoS 2 messages reach a
/// rumqttc subscriber once each, in order, at QoS 2.
async fn rumqttc_v5_round_trip_over(test: &str, over: Over) {
    let net = Net::start(test, &[over]).await;
    let addr = net.addr(over);
    let tls = match over {
        Over::Tls => net.certs.client(),
        Over::MutualTls => net.certs.client_with_cert(&net.certs),
        _ => panic!("rumqttc is driven over TLS here, not {over:?}"),
    };
    let configure = |options: &mut v5api::MqttOptions| {
        options.set_transport(rumqttc::Transport::tls_with_config(
            TlsConfiguration::Rustls(tls.clone()),
        ));
    };
    let ctx = Ctx::new(addr, test);
    let topic = ctx.topic("round-trip");
    let messages = [
        format!("qos2 over {over:?} from rumqttc v5 {}", "x".repeat(300)),
        format!("second qos2 message over {over:?}"),
    ];
    let (mut sub, _) = Client5::connect(addr, &ctx.client_id("sub"), configure).await;
    sub.subscribe(&topic, v5api::QoS::ExactlyOnce).await;
    let (mut publisher, _) = Client5::connect(addr, &ctx.client_id("pub"), configure).await;
    for payload in &messages {
        publisher
            .publish(&topic, v5api::QoS::ExactlyOnce, payload)
            .await;
    }
    for payload in &messages {
        let got = sub.next_publish().await;
        assert_eq!(
            (got.topic_text(), got.qos, got.payload_text()),
            (topic.clone(), v5api::QoS::ExactlyOnce, payload.clone()),
            "rumqttc v5 over {over:?}"
        );
    }
    publisher.disconnect().await;
    sub.disconnect().await;
    net.broker.shutdown().await;
}

// ---------------------------------------------------------------------------
// WebSocket framing by hand (MQTT 3.1.1 and 5.0, chapter 6).
// ---------------------------------------------------------------------------

/// A WebSocket connection to `addr`'s `/mqtt` offering the `mqtt`
/// subprotocol, which the broker must select, read as one MQTT byte stream
/// that must come in binary messages only.
struct WsMqtt {
    socket: WebSocketStream<TcpStream>,
    /// Bytes received and not yet taken as packets.
    pending: bytes::BytesMut,
}

impl WsMqtt {
    async fn open(addr: SocketAddr) -> WsMqtt {
        let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (socket, response) = timeout(WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("upgrade in time")
            .expect("upgraded");
        // [MQTT-6.0.0-4]: the server selects the subprotocol offered.
        assert_eq!(
            response.headers().get("Sec-WebSocket-Protocol"),
            Some(&HeaderValue::from_static("mqtt")),
            "the upgrade's subprotocol"
        );
        WsMqtt {
            socket,
            pending: bytes::BytesMut::new(),
        }
    }

    async fn send(&mut self, message: Message) {
        self.socket.send(message).await.expect("sent");
    }

    /// The next MQTT packet (first byte, body), wherever the broker's
    /// messages split the stream.
    async fn next_packet(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(frame) = wire::split_frame(&mut self.pending) {
                return (frame.first, frame.body.to_vec());
            }
            match timeout(WAIT, self.socket.next()).await {
                Ok(Some(Ok(Message::Binary(bytes)))) => self.pending.extend_from_slice(&bytes),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("no binary message with the next packet: {other:?}"),
            }
        }
    }

    /// Waits until the broker ends the connection: a Close message, the
    /// end of the stream or a reset, after any binary messages.
    async fn expect_closed(&mut self) {
        let ended = timeout(WAIT, async {
            loop {
                match self.socket.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the broker did not close within {WAIT:?}");
    }
}

fn connect_bytes(v5: bool, id: &str) -> Vec<u8> {
    if v5 {
        wire::connect_v5_bytes(id, true, 60, None, None, None)
    } else {
        wire::connect_v4_bytes(id, true, 60)
    }
}

fn subscribe_bytes(v5: bool, filter: &str) -> Vec<u8> {
    let qos = mqttbytes::QoS::AtMostOnce;
    if v5 {
        let mut subscribe = mqttbytes::v5::Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        wire::encode(|b| subscribe.write(b))
    } else {
        let mut subscribe = mqttbytes::v4::Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        wire::encode(|b| subscribe.write(b))
    }
}

fn publish_bytes(v5: bool, topic: &str, payload: &[u8]) -> Vec<u8> {
    let qos = mqttbytes::QoS::AtMostOnce;
    if v5 {
        let publish = mqttbytes::v5::Publish::new(topic, qos, payload.to_vec());
        wire::encode(|b| publish.write(b))
    } else {
        let publish = mqttbytes::v4::Publish::new(topic, qos, payload.to_vec());
        wire::encode(|b| publish.write(b))
    }
}

/// CONNECT, SUBSCRIBE and a PUBLISH to the client's own filter, as one
/// byte stream cut into binary messages of 7 bytes, so messages end inside
/// fixed headers, inside bodies and across packets: the broker answers
/// CONNACK and SUBACK and delivers the message back whole [MQTT-6.0.0-2].
async fn packets_cross_websocket_message_boundaries(v5: bool) {
    let net = Net::start("ws-boundaries", &[Over::Ws]).await;
    let mut ws = WsMqtt::open(net.addr(Over::Ws)).await;
    let payload = vec![b'p'; 300];
    let mut stream = connect_bytes(v5, "ws-boundaries");
    stream.extend(subscribe_bytes(v5, "ws/boundaries"));
    stream.extend(publish_bytes(v5, "ws/boundaries", &payload));
    for chunk in stream.chunks(7) {
        ws.send(Message::binary(chunk.to_vec())).await;
    }
    let (connack, body) = ws.next_packet().await;
    assert_eq!(
        (connack >> 4, body[1]),
        (2, 0),
        "CONNACK accepted: {body:?}"
    );
    let (suback, body) = ws.next_packet().await;
    assert_eq!(
        (suback >> 4, body.last()),
        (9, Some(&0)),
        "SUBACK granting QoS 0"
    );
    let (publish, body) = ws.next_packet().await;
    assert_eq!(publish >> 4, 3, "PUBLISH");
    assert!(body.ends_with(&payload), "the 300-byte payload, whole");
    net.broker.shutdown().await;
}

/// A text message is no MQTT: the broker closes the connection
/// [MQTT-6.0.0-1], and another WebSocket client on the same listener is
/// served as before.
async fn text_message_closes_the_connection(v5: bool) {
    let net = Net::start("ws-text", &[Over::Ws]).await;
    let addr = net.addr(Over::Ws);
    let mut bystander = WsMqtt::open(addr).await;
    bystander
        .send(Message::binary(connect_bytes(v5, "ws-bystander")))
        .await;
    assert_eq!(bystander.next_packet().await.0 >> 4, 2, "CONNACK");

    let mut texter = WsMqtt::open(addr).await;
    texter
        .send(Message::binary(connect_bytes(v5, "ws-texter")))
        .await;
    assert_eq!(texter.next_packet().await.0 >> 4, 2, "CONNACK");
    texter.send(Message::text("PINGREQ")).await;
    texter.expect_closed().await;

    bystander.send(Message::binary(vec![0xC0, 0x00])).await;
    assert_eq!(
        bystander.next_packet().await,
        (0xD0, Vec::new()),
        "PINGRESP"
    );
    net.broker.shutdown().await;
}

#[tokio::test]
async fn v311_mqtt_packets_may_cross_websocket_message_boundaries_anywhere() {
    packets_cross_websocket_message_boundaries(false).await;
}

#[tokio::test]
async fn v5_mqtt_packets_may_cross_websocket_message_boundaries_anywhere() {
    packets_cross_websocket_message_boundaries(true).await;
}

#[tokio::test]
async fn v311_a_websocket_text_message_closes_the_connection() {
    text_message_closes_the_connection(false).await;
}

#[tokio::test]
async fn v5_a_websocket_text_message_closes_the_connection() {
    text_message_closes_the_connection(true).await;
}
