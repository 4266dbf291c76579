//! The password file and the ACL file, end to end: a petrel started with
//! both, raw-socket clients of both protocol versions, and the exact
//! packets each decision produces (CONNACK codes, PUBACK/PUBREC and SUBACK
//! reason codes, what is and is not delivered).
//!
//! Absence is shown without waiting out a timer: after what must not
//! arrive, the same sender publishes a marker, and brokers deliver one
//! publisher's messages to one subscriber in order.

mod common;
mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::scratch::TempDir;
use common::{TestBroker, start_broker_with};
use petrel::Settings;
use petrel::auth::password::{Credentials, PasswordFile};
use petrel::stream::StreamConfig;
use raw::{
    CONNACK, Connect, PUBACK, PUBCOMP, PUBLISH, PUBREC, Packet, Publish, RawClient, SUBACK, Will,
    ack, packet, parse_properties, publish, subscribe, unique_id,
};

const SUCCESS: u8 = 0x00;
const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
const NOT_AUTHORIZED: u8 = 0x87;
/// 3.1.1 CONNACK return codes and the SUBACK failure code.
const V311_BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
const V311_NOT_AUTHORIZED: u8 = 0x05;
const V311_SUBACK_FAILURE: u8 = 0x80;

/// Every user's password: the tests are about who may do what, not about
/// guessing.
fn password_of(user: &str) -> String {
    format!("{user}-secret")
}

const USERS: [&str; 3] = ["alice", "bob", "admin"];

/// The ACL most tests run with. Everyone may use `marker/#`, which shows
/// that nothing else is coming; a section that grants it decides nothing
/// else, so it changes no other answer.
const ACL: &str = "\
# Anonymous clients.
topic read public/#
topic readwrite marker/#

user alice
topic readwrite marker/#
topic readwrite sensors/alice/#
topic deny sensors/alice/secret
topic read sensors/+/status
topic read orders/#
topic read $dlq/#

user bob
topic readwrite marker/#
topic readwrite sensors/bob/#
topic read orders/eu/#

user admin
topic readwrite #
";

/// A petrel with a password file (argon2 entries written by petrel, at a
/// low cost so the tests stay quick) and an ACL file, in a scratch
/// directory that lives as long as it does.
struct Secured {
    broker: TestBroker,
    dir: TempDir,
}

impl Secured {
    async fn start(acl: &str, adjust: impl FnOnce(&mut Settings)) -> Secured {
        let dir = TempDir::new("security");
        let passwords = dir.path().join("passwd");
        write_password_file(&passwords, &USERS);
        let acl_path = dir.path().join("acl");
        std::fs::write(&acl_path, acl).unwrap();
        let broker = start_broker_with(|settings| {
            settings.password_file = Some(passwords);
            settings.acl_file = Some(acl_path);
            adjust(settings);
        })
        .await;
        Secured { broker, dir }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.addr
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn metrics(&self) -> &petrel::broker::Metrics {
        self.broker.petrel().metrics()
    }

    /// Replaces the ACL file and reloads it, as SIGHUP does.
    fn reload_acl(&self, acl: &str) -> petrel::broker::SecurityReload {
        std::fs::write(self.path("acl"), acl).unwrap();
        self.broker.petrel().state().reload_security()
    }
}

fn write_password_file(path: &Path, users: &[&str]) {
    let mut file = PasswordFile::new();
    for user in users {
        let cheap = argon2::Params::new(64, 1, 1, None).unwrap();
        let credentials =
            Credentials::with_cost(password_of(user).as_bytes(), cheap, 4096).unwrap();
        file.set(user, credentials).unwrap();
    }
    file.write(path).unwrap();
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum V {
    V311,
    V5,
}

impl V {
    fn connect(self, client_id: &str) -> Connect {
        match self {
            V::V311 => Connect::v311(client_id),
            V::V5 => Connect::v5(client_id),
        }
    }

    fn is_v5(self) -> bool {
        self == V::V5
    }
}

/// A CONNECT as `user` with that user's password (`None`: anonymous).
fn as_user(v: V, client_id: &str, user: Option<&str>) -> Connect {
    Connect {
        username: user.map(|u| u.as_bytes().to_vec()),
        password: user.map(|u| password_of(u).into_bytes()),
        ..v.connect(client_id)
    }
}

/// Sends `connect` and returns the client and the CONNACK's code (v5
/// reason code, or 3.1.1 return code).
async fn connack(addr: SocketAddr, connect: &Connect) -> (RawClient, u8) {
    let mut client = RawClient::connect(addr).await;
    client.send(&connect.encode()).await;
    let connack = client.expect_kind(CONNACK).await;
    (client, connack.body[1])
}

/// A client logged in as `user`, which the broker must accept.
async fn login(addr: SocketAddr, v: V, user: Option<&str>) -> RawClient {
    let connect = as_user(v, &unique_id("sec"), user);
    let (client, code) = connack(addr, &connect).await;
    assert_eq!(code, 0, "{user:?} refused");
    client
}

/// The return codes of a SUBACK (after the v5 properties, if any).
fn suback_codes(packet: &Packet, v: V) -> Vec<u8> {
    assert_eq!(packet.kind(), SUBACK, "not a SUBACK: {packet:?}");
    let after_id = &packet.body[2..];
    if v.is_v5() {
        let (_, used) = parse_properties(after_id);
        after_id[used..].to_vec()
    } else {
        after_id.to_vec()
    }
}

/// Subscribes to every filter at QoS 1 in one SUBSCRIBE; the SUBACK codes.
async fn subscribe_all(client: &mut RawClient, v: V, filters: &[&str]) -> Vec<u8> {
    let filters: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_bytes(), 1)).collect();
    let props: &[u8] = &[];
    client
        .send(&subscribe(7, v.is_v5().then_some(props), &filters))
        .await;
    suback_codes(&client.expect_kind(SUBACK).await, v)
}

/// Publishes at `qos` (1 or 2) and returns the PUBACK or PUBREC reason
/// (always 0 on 3.1.1, whose acks carry none), completing a QoS 2 flow the
/// broker accepted.
async fn publish_acked(client: &mut RawClient, v: V, topic: &str, qos: u8, id: u16) -> u8 {
    let props: &[u8] = &[];
    client
        .send(&publish(
            0x30 | (qos << 1),
            topic.as_bytes(),
            Some(id),
            v.is_v5().then_some(props),
            topic.as_bytes(),
        ))
        .await;
    let ack_kind = if qos == 2 { PUBREC } else { PUBACK };
    let answer = client.expect_kind(ack_kind).await;
    assert_eq!(answer.packet_id(), id);
    let reason = answer.ack_reason();
    if qos == 2 && reason < 0x80 {
        client.send(&ack(0x62, id)).await;
        client.expect_kind(PUBCOMP).await;
    }
    reason
}

/// The topics of the PUBLISHes `client` receives before one on `marker`
/// (acknowledging QoS 1 ones).
async fn topics_before(client: &mut RawClient, v: V, marker: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let publish = Publish::parse(&client.expect_kind(PUBLISH).await, v.is_v5());
        if let Some(id) = publish.packet_id {
            client.send(&ack(0x40, id)).await;
        }
        let topic = String::from_utf8(publish.topic).unwrap();
        if topic == marker {
            return topics;
        }
        topics.push(topic);
    }
}

/// Publishes each topic, then the marker, from `publisher` (QoS 1).
async fn publish_then_marker(publisher: &mut RawClient, v: V, topics: &[&str], marker: &str) {
    for (n, topic) in topics.iter().enumerate() {
        publish_acked(publisher, v, topic, 1, 100 + n as u16).await;
    }
    publish_acked(publisher, v, marker, 1, 99).await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_0x86_on_v5_and_code_4_on_3_1_1() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    // Four failures in all: a fifth from this address would lock it out.
    let wrong = |v| Connect {
        password: Some(b"not-her-password".to_vec()),
        ..as_user(v, &unique_id("wrong"), Some("alice"))
    };
    let unknown = as_user(V::V5, &unique_id("unknown"), Some("mallory"));
    let no_password = Connect {
        password: None,
        ..as_user(V::V5, &unique_id("nopw"), Some("alice"))
    };
    for (connect, refused) in [
        (wrong(V::V5), BAD_USERNAME_OR_PASSWORD),
        (unknown, BAD_USERNAME_OR_PASSWORD),
        (no_password, BAD_USERNAME_OR_PASSWORD),
        (wrong(V::V311), V311_BAD_USERNAME_OR_PASSWORD),
    ] {
        let (mut client, code) = connack(addr, &connect).await;
        assert_eq!(code, refused, "{connect:?}");
        client.expect_closed().await;
    }
    for v in [V::V5, V::V311] {
        login(addr, v, Some("alice")).await;
    }
    assert_eq!(secured.metrics().auth_bad_passwords(), 4);
    assert_eq!(secured.metrics().auth_throttled_total(), 0);
}

#[tokio::test]
async fn repeated_failures_lock_out_the_client_id_and_address_even_with_the_right_password() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let id = unique_id("guessed");
    for _ in 0..5 {
        let wrong = Connect {
            password: Some(b"guess".to_vec()),
            ..as_user(V::V5, &id, Some("alice"))
        };
        let (_, code) = connack(addr, &wrong).await;
        assert_eq!(code, BAD_USERNAME_OR_PASSWORD);
    }
    // Locked out: the right password is refused alike, with no hint that
    // it was right, for this client id and (all failures came from it)
    // for this address.
    let (_, code) = connack(addr, &as_user(V::V5, &id, Some("alice"))).await;
    assert_eq!(code, BAD_USERNAME_OR_PASSWORD);
    let other = as_user(V::V311, &unique_id("bystander"), Some("bob"));
    let (_, code) = connack(addr, &other).await;
    assert_eq!(code, V311_BAD_USERNAME_OR_PASSWORD);
    let metrics = secured.metrics();
    assert_eq!(metrics.auth_bad_passwords(), 5);
    assert_eq!(metrics.auth_throttled_total(), 2);
}

#[tokio::test]
async fn anonymous_clients_are_refused_with_0x87_only_when_anonymous_is_off() {
    let closed = Secured::start(ACL, |s| s.allow_anonymous = false).await;
    for (v, refused) in [(V::V5, NOT_AUTHORIZED), (V::V311, V311_NOT_AUTHORIZED)] {
        let (mut client, code) = connack(closed.addr(), &v.connect(&unique_id("anon"))).await;
        assert_eq!(code, refused, "{v:?}");
        client.expect_closed().await;
        login(closed.addr(), v, Some("bob")).await;
    }
    assert_eq!(closed.metrics().auth_anonymous_refused_total(), 2);

    let open = Secured::start(ACL, |_| {}).await;
    for v in [V::V5, V::V311] {
        login(open.addr(), v, None).await;
    }
    assert_eq!(open.metrics().auth_anonymous_refused_total(), 0);
}

#[tokio::test]
async fn without_a_password_file_a_username_is_taken_as_given() {
    let broker = start_broker_with(|_| {}).await;
    let connect = Connect {
        password: Some(b"anything".to_vec()),
        ..as_user(V::V5, &unique_id("free"), Some("whoever"))
    };
    let (_, code) = connack(broker.addr, &connect).await;
    assert_eq!(code, SUCCESS);
}

#[tokio::test]
async fn a_password_file_made_by_mosquitto_passwd_admits_its_users() {
    let mosquitto_passwd = Path::new("/usr/bin/mosquitto_passwd");
    assert!(
        mosquitto_passwd.exists(),
        "mosquitto_passwd is needed (Debian package mosquitto)"
    );
    let dir = TempDir::new("mosquitto-passwd");
    let file = dir.path().join("passwd");
    let made = std::process::Command::new(mosquitto_passwd)
        .args(["-c", "-b"])
        .arg(&file)
        .args(["dora", "dora-pass"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dora:$7$"), "{text}");

    let broker = start_broker_with(|s| {
        s.password_file = Some(file.clone());
        s.allow_anonymous = false;
    })
    .await;
    let right = Connect {
        username: Some(b"dora".to_vec()),
        password: Some(b"dora-pass".to_vec()),
        ..Connect::v5(&unique_id("dora"))
    };
    assert_eq!(connack(broker.addr, &right).await.1, SUCCESS);
    let wrong = Connect {
        password: Some(b"dora-guess".to_vec()),
        ..right.clone()
    };
    assert_eq!(
        connack(broker.addr, &wrong).await.1,
        BAD_USERNAME_OR_PASSWORD
    );
}

#[tokio::test]
async fn a_bad_security_file_stops_the_start_naming_the_file_and_line() {
    let dir = TempDir::new("bad-acl");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic sideways a/b\n").unwrap();
    let mut settings = Settings::ephemeral();
    settings.acl_file = Some(acl.clone());
    let error = petrel::Broker::start(settings)
        .await
        .err()
        .expect("the start fails")
        .to_string();
    assert!(error.contains(&acl.display().to_string()), "{error}");
    assert!(error.contains("line 2"), "{error}");

    let mut settings = Settings::ephemeral();
    settings.password_file = Some(dir.path().join("missing"));
    let error = petrel::Broker::start(settings)
        .await
        .err()
        .expect("the start fails")
        .to_string();
    assert!(error.contains("password_file"), "{error}");
    assert!(error.contains("missing"), "{error}");
}

#[tokio::test]
async fn denied_publishes_get_0x87_on_v5_and_a_plain_ack_on_3_1_1_and_go_nowhere() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let mut watcher = login(addr, V::V5, Some("admin")).await;
    assert_eq!(
        subscribe_all(&mut watcher, V::V5, &["sensors/#", "marker/#"]).await,
        [1, 1]
    );
    for v in [V::V5, V::V311] {
        let marker = format!("marker/{}", unique_id("m"));
        let mut alice = login(addr, v, Some("alice")).await;
        let (denied, plain) = if v.is_v5() {
            (NOT_AUTHORIZED, SUCCESS)
        } else {
            (SUCCESS, SUCCESS)
        };
        assert_eq!(
            publish_acked(&mut alice, v, "sensors/alice/secret", 1, 1).await,
            denied
        );
        assert_eq!(
            publish_acked(&mut alice, v, "sensors/bob/temp", 2, 2).await,
            denied
        );
        assert_eq!(
            publish_acked(&mut alice, v, "sensors/alice/temp", 1, 3).await,
            plain
        );
        // QoS 0 is dropped without a word on both versions.
        alice
            .send(&publish(
                0x30,
                b"sensors/alice/secret",
                None,
                v.is_v5().then_some(&[]),
                b"q0",
            ))
            .await;
        publish_acked(&mut alice, v, &marker, 1, 4).await;
        assert_eq!(
            topics_before(&mut watcher, V::V5, &marker).await,
            ["sensors/alice/temp"],
            "{v:?}"
        );
    }
    assert_eq!(secured.metrics().acl_denied_publishes(), 6);
}

#[tokio::test]
async fn subscriptions_wider_than_what_the_user_may_read_are_refused() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let filters = [
        "sensors/alice/temp",
        "sensors/+/status",
        // Holds sensors/alice/secret, which alice may not read.
        "sensors/alice/#",
        // Wider than anything alice may read.
        "sensors/#",
        "sensors/bob/temp",
    ];
    for (v, no) in [(V::V5, NOT_AUTHORIZED), (V::V311, V311_SUBACK_FAILURE)] {
        let mut alice = login(addr, v, Some("alice")).await;
        assert_eq!(
            subscribe_all(&mut alice, v, &filters).await,
            [1, 1, no, no, no],
            "{v:?}"
        );
        // Anonymous clients have the section before any `user` line.
        let mut anonymous = login(addr, v, None).await;
        assert_eq!(
            subscribe_all(&mut anonymous, v, &["public/#", "public/+/x", "#"]).await,
            [1, 1, no],
            "{v:?}"
        );
    }
    assert_eq!(secured.metrics().acl_denied_subscribes(), 8);
}

#[tokio::test]
async fn shared_subscriptions_are_checked_on_their_inner_filter() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let mut alice = login(addr, V::V5, Some("alice")).await;
    let codes = subscribe_all(
        &mut alice,
        V::V5,
        &[
            "$share/g/sensors/alice/temp",
            "$share/g/sensors/bob/temp",
            "$share/g/sensors/#",
            "marker/#",
        ],
    )
    .await;
    assert_eq!(codes, [1, NOT_AUTHORIZED, NOT_AUTHORIZED, 1]);
    let mut admin = login(addr, V::V5, Some("admin")).await;
    let marker = format!("marker/{}", unique_id("m"));
    publish_then_marker(
        &mut admin,
        V::V5,
        &["sensors/alice/temp", "sensors/bob/temp"],
        &marker,
    )
    .await;
    assert_eq!(
        topics_before(&mut alice, V::V5, &marker).await,
        ["sensors/alice/temp"]
    );
}

#[tokio::test]
async fn stream_subscriptions_need_read_access_to_every_filter_of_the_stream() {
    let secured = Secured::start(ACL, |s| {
        s.streams = vec![
            StreamConfig::new("orders", &["orders/#"]),
            StreamConfig::new("eu", &["orders/eu/#"]),
            StreamConfig::new("mixed", &["orders/eu/#", "sensors/bob/#"]),
        ];
    })
    .await;
    let addr = secured.addr();
    let filters = [
        "$stream/orders",
        "$share/g/$stream/orders",
        "$stream/eu",
        "$share/g/$stream/eu",
        "$stream/mixed",
    ];
    let mut alice = login(addr, V::V5, Some("alice")).await;
    assert_eq!(
        subscribe_all(&mut alice, V::V5, &filters).await,
        [1, 1, 1, 1, NOT_AUTHORIZED]
    );
    let mut bob = login(addr, V::V311, Some("bob")).await;
    let no = V311_SUBACK_FAILURE;
    assert_eq!(
        subscribe_all(&mut bob, V::V311, &filters).await,
        [no, no, 1, 1, 1]
    );
}

#[tokio::test]
async fn dead_letter_topics_need_read_access_as_any_topic_does() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let mut alice = login(addr, V::V5, Some("alice")).await;
    assert_eq!(
        subscribe_all(&mut alice, V::V5, &["$dlq/g/orders", "$dlq/#"]).await,
        [1, 1]
    );
    let mut bob = login(addr, V::V5, Some("bob")).await;
    assert_eq!(
        subscribe_all(&mut bob, V::V5, &["$dlq/g/orders"]).await,
        [NOT_AUTHORIZED]
    );
}

#[tokio::test]
async fn a_reload_changes_what_new_operations_and_deliveries_are_allowed() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    for v in [V::V5, V::V311] {
        let mut alice = login(addr, v, Some("alice")).await;
        assert_eq!(
            subscribe_all(&mut alice, v, &["sensors/+/status", "marker/#"]).await,
            [1, 1]
        );
        let narrower = ACL.replace(
            "topic read sensors/+/status",
            "topic read sensors/alice/status",
        );
        let reload = secured.reload_acl(&narrower);
        assert!(!reload.failed(), "{reload}");
        assert!(reload.to_string().contains("acl_file"), "{reload}");

        // Granted before the reload, delivered by the rules after it.
        let mut admin = login(addr, V::V5, Some("admin")).await;
        let marker = format!("marker/{}", unique_id("m"));
        publish_then_marker(
            &mut admin,
            V::V5,
            &["sensors/bob/status", "sensors/alice/status"],
            &marker,
        )
        .await;
        assert_eq!(
            topics_before(&mut alice, v, &marker).await,
            ["sensors/alice/status"],
            "{v:?}"
        );
        let no = if v.is_v5() {
            NOT_AUTHORIZED
        } else {
            V311_SUBACK_FAILURE
        };
        assert_eq!(
            subscribe_all(&mut alice, v, &["sensors/+/status", "sensors/alice/status"]).await,
            [no, 1]
        );

        // A file that no longer loads leaves the rules as they were.
        let reload = secured.reload_acl("user alice\ntopic sideways x\n");
        assert!(reload.failed());
        assert!(reload.to_string().contains("line 2"), "{reload}");
        assert_eq!(
            subscribe_all(&mut alice, v, &["sensors/alice/status"]).await,
            [1]
        );
        secured.reload_acl(ACL);
    }
    assert_eq!(secured.metrics().acl_denied_deliveries(), 2);
}

#[tokio::test]
async fn a_password_file_reload_admits_new_users_and_drops_removed_ones() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    login(addr, V::V5, Some("bob")).await;
    write_password_file(&secured.path("passwd"), &["alice", "carol"]);
    let reload = secured.broker.petrel().state().reload_security();
    assert!(reload.to_string().contains("2 users"), "{reload}");
    login(addr, V::V5, Some("carol")).await;
    let (_, code) = connack(addr, &as_user(V::V5, &unique_id("bob"), Some("bob"))).await;
    assert_eq!(code, BAD_USERNAME_OR_PASSWORD);
}

#[tokio::test]
async fn a_session_resumed_by_another_user_gets_only_what_that_user_may_read() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let id = unique_id("shared-device");
    let persistent = |user| Connect {
        clean: false,
        properties: raw::prop_u32(raw::SESSION_EXPIRY_INTERVAL, 600),
        ..as_user(V::V5, &id, Some(user))
    };
    let (mut alice, code) = connack(addr, &persistent("alice")).await;
    assert_eq!(code, SUCCESS);
    assert_eq!(
        subscribe_all(&mut alice, V::V5, &["sensors/alice/temp", "marker/#"]).await,
        [1, 1]
    );
    // Sent to alice, left unacknowledged: in flight, to be sent again.
    let mut admin = login(addr, V::V5, Some("admin")).await;
    publish_acked(&mut admin, V::V5, "sensors/alice/temp", 1, 1).await;
    alice.expect_kind(PUBLISH).await;
    alice.send(&packet(0xE0, &[0x00])).await;
    alice.expect_closed().await;

    // Queued for the offline session while alice owned it.
    let marker = format!("marker/{}", unique_id("m"));
    publish_then_marker(&mut admin, V::V5, &["sensors/alice/temp"], &marker).await;

    let (mut bob, code) = connack(addr, &persistent("bob")).await;
    assert_eq!(code, SUCCESS);
    assert_eq!(
        topics_before(&mut bob, V::V5, &marker).await,
        Vec::<String>::new()
    );
    // And what comes now is not even queued for bob.
    let marker = format!("marker/{}", unique_id("m"));
    publish_then_marker(&mut admin, V::V5, &["sensors/alice/temp"], &marker).await;
    assert_eq!(
        topics_before(&mut bob, V::V5, &marker).await,
        Vec::<String>::new()
    );
    assert_eq!(secured.metrics().acl_denied_deliveries(), 3);
}

#[tokio::test]
async fn wills_go_out_only_where_their_client_may_publish() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let mut watcher = login(addr, V::V5, Some("admin")).await;
    assert_eq!(
        subscribe_all(&mut watcher, V::V5, &["sensors/#", "marker/#"]).await,
        [1, 1]
    );
    for topic in ["sensors/bob/will", "sensors/alice/will"] {
        let connect = Connect {
            will: Some(Will {
                topic: topic.as_bytes().to_vec(),
                payload: b"gone".to_vec(),
                qos: 1,
                retain: false,
                properties: Vec::new(),
            }),
            ..as_user(V::V5, &unique_id("mortal"), Some("alice"))
        };
        let (mut alice, code) = connack(addr, &connect).await;
        assert_eq!(code, SUCCESS);
        // DISCONNECT 0x04: the will is published (or not) before the
        // broker closes the connection.
        alice.send(&packet(0xE0, &[0x04])).await;
        alice.expect_closed().await;
    }
    let mut admin = login(addr, V::V5, Some("admin")).await;
    let marker = format!("marker/{}", unique_id("m"));
    publish_acked(&mut admin, V::V5, &marker, 1, 1).await;
    assert_eq!(
        topics_before(&mut watcher, V::V5, &marker).await,
        ["sensors/alice/will"]
    );
    assert_eq!(secured.metrics().acl_denied_publishes(), 1);
}

#[tokio::test]
async fn a_publisher_whose_only_subscriber_may_not_read_hears_success_as_from_mosquitto() {
    let secured = Secured::start(ACL, |_| {}).await;
    let addr = secured.addr();
    let mut alice = login(addr, V::V5, Some("alice")).await;
    assert_eq!(
        subscribe_all(&mut alice, V::V5, &["sensors/+/status"]).await,
        [1]
    );
    secured.reload_acl(&ACL.replace("topic read sensors/+/status", ""));
    let mut admin = login(addr, V::V5, Some("admin")).await;
    assert_eq!(
        publish_acked(&mut admin, V::V5, "sensors/bob/status", 1, 1).await,
        SUCCESS
    );
    assert_eq!(
        publish_acked(&mut admin, V::V5, "sensors/nobody/listens", 1, 2).await,
        NO_MATCHING_SUBSCRIBERS
    );
}

#[tokio::test]
async fn authentication_failures_and_acl_denials_are_exported_by_kind() {
    let secured = Secured::start(ACL, |s| {
        s.allow_anonymous = false;
        s.admin = common::loopback_admin(None);
    })
    .await;
    let addr = secured.addr();
    let wrong = Connect {
        password: Some(b"nope".to_vec()),
        ..as_user(V::V5, &unique_id("wrong"), Some("bob"))
    };
    assert_eq!(connack(addr, &wrong).await.1, BAD_USERNAME_OR_PASSWORD);
    assert_eq!(
        connack(addr, &V::V5.connect(&unique_id("anon"))).await.1,
        NOT_AUTHORIZED
    );
    let mut bob = login(addr, V::V5, Some("bob")).await;
    assert_eq!(
        subscribe_all(&mut bob, V::V5, &["sensors/alice/temp"]).await,
        [NOT_AUTHORIZED]
    );
    assert_eq!(
        publish_acked(&mut bob, V::V5, "sensors/alice/temp", 1, 1).await,
        NOT_AUTHORIZED
    );

    let admin = secured.broker.petrel().admin_addr().unwrap().to_string();
    let body = petrel::admin::client::get(&admin, None, "/metrics")
        .await
        .expect("/metrics answers");
    let text = String::from_utf8(body.to_vec()).unwrap();
    for sample in [
        "petrel_auth_failures_total{reason=\"bad_password\"} 1",
        "petrel_auth_failures_total{reason=\"throttled\"} 0",
        "petrel_auth_failures_total{reason=\"anonymous\"} 1",
        "petrel_acl_denials_total{action=\"publish\"} 1",
        "petrel_acl_denials_total{action=\"subscribe\"} 1",
        "petrel_acl_denials_total{action=\"delivery\"} 0",
    ] {
        assert!(
            text.lines().any(|line| line == sample),
            "{sample} in:\n{text}"
        );
    }
}
