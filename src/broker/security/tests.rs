//! `Security` and the ACL's hold on the core: loading, reloads, the
//! per-thread copies, owners of restored sessions, the throttle's keys.

use super::*;
use std::io::Write;

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "petrel-security-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn who(username: Option<&str>) -> Who<'_> {
    Who {
        username,
        client_id: "c",
    }
}

#[test]
fn without_an_acl_nothing_is_asked() {
    let security = Security::load(&Settings::ephemeral()).unwrap();
    assert!(!security.has_acl());
    assert_eq!(security.may_publish(&who(None), "a"), None);
    assert_eq!(security.may_subscribe(&who(None), "#"), None);
}

#[test]
fn a_bad_line_at_start_names_the_key_the_file_and_the_line() {
    let files = Files::new("start");
    let mut settings = Settings::ephemeral();
    settings.acl_file = Some(files.write("acl", "topic read a\nfrobnicate b\n"));
    let error = Security::load(&settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("`acl_file`"), "{error}");
    assert!(error.contains("acl: line 2"), "{error}");

    settings.acl_file = None;
    settings.password_file = Some(files.write("passwd", "alice\n"));
    let error = Security::load(&settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("`password_file`"), "{error}");
    assert!(error.contains("passwd, line 1"), "{error}");
}

#[test]
fn unloadable_files_refuse_what_they_decide() {
    let mut settings = Settings::ephemeral();
    settings.acl_file = Some(PathBuf::from("/nonexistent/petrel-acl"));
    let security = Security::load_or_refuse(&settings);
    assert_eq!(security.may_publish(&who(None), "a"), Some(false));
}

#[test]
fn a_reload_applies_what_loads_and_keeps_what_does_not() {
    let files = Files::new("reload");
    let acl = files.write("acl", "topic readwrite a/#\n");
    let mut settings = Settings::ephemeral();
    settings.acl_file = Some(acl.clone());
    let security = Security::load(&settings).unwrap();
    assert_eq!(security.may_publish(&who(None), "a/1"), Some(true));
    assert_eq!(security.may_publish(&who(None), "b/1"), Some(false));

    files.write("acl", "topic readwrite b/#\n");
    let reload = security.reload();
    assert!(!reload.failed(), "{reload}");
    assert!(reload.to_string().contains("reloaded"), "{reload}");
    assert_eq!(security.may_publish(&who(None), "a/1"), Some(false));
    assert_eq!(security.may_publish(&who(None), "b/1"), Some(true));

    files.write("acl", "topic readwrite c/#\ntopic sideways d\n");
    let reload = security.reload();
    assert!(reload.failed());
    let line = reload.to_string();
    assert!(line.contains("not reloaded"), "{line}");
    assert!(line.contains("line 2"), "{line}");
    assert_eq!(security.may_publish(&who(None), "b/1"), Some(true));
    assert_eq!(security.may_publish(&who(None), "c/1"), Some(false));
}

#[test]
fn each_thread_sees_a_reload_on_its_next_check() {
    let files = Files::new("threads");
    let mut settings = Settings::ephemeral();
    settings.acl_file = Some(files.write("acl", "topic read a\n"));
    let security = Arc::new(Security::load(&settings).unwrap());
    let other = {
        let security = security.clone();
        std::thread::spawn(move || security.may_receive(&who(None), "a"))
    };
    assert_eq!(other.join().unwrap(), Some(true));
    assert_eq!(security.may_receive(&who(None), "a"), Some(true));
    files.write("acl", "topic read b\n");
    security.reload();
    assert_eq!(security.may_receive(&who(None), "a"), Some(false));
    let other = {
        let security = security.clone();
        std::thread::spawn(move || security.may_receive(&who(None), "a"))
    };
    assert_eq!(other.join().unwrap(), Some(false));
}

#[test]
fn two_brokers_on_one_thread_keep_their_own_rules() {
    let files = Files::new("two");
    let mut settings = Settings::ephemeral();
    settings.acl_file = Some(files.write("a", "topic read a\n"));
    let first = Security::load(&settings).unwrap();
    settings.acl_file = Some(files.write("b", "topic read b\n"));
    let second = Security::load(&settings).unwrap();
    for _ in 0..2 {
        assert_eq!(first.may_receive(&who(None), "a"), Some(true));
        assert_eq!(second.may_receive(&who(None), "a"), Some(false));
    }
}

/// A broker rebuilt from a store holding `watcher` (persistent,
/// subscribed to `wills/#`) and `gone`, whose will on `wills/gone` fell
/// due while the broker was down.
fn restarted(acl_file: Option<PathBuf>) -> Arc<BrokerState> {
    use crate::protocol::{MessageProperties, QoS, SubscriptionOptions, Will};
    use crate::session::SubscriptionEntry;
    use crate::store::{Journal, SessionRecord, Snapshot};
    const NOW: u64 = 1_700_000_000_000;
    let mut settings = Settings::ephemeral();
    settings.acl_file = acl_file;
    let record = |client_id: &str, will| SessionRecord {
        client_id: client_id.into(),
        expiry_secs: 3600,
        disconnected_at_ms: Some(NOW - 1000),
        will,
    };
    let will = Will {
        topic: "wills/gone".into(),
        payload: bytes::Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: 0,
        properties: MessageProperties::default(),
    };
    let mut snapshot = Snapshot {
        sessions: vec![record("watcher", None), record("gone", Some(will))],
        ..Snapshot::default()
    };
    let entry = SubscriptionEntry {
        options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        id: None,
    };
    snapshot
        .subscriptions
        .insert("watcher".into(), vec![("wills/#".into(), entry)]);
    BrokerState::new(settings, Journal::manual(), true, snapshot, NOW)
}

fn queued_for(broker: &BrokerState, client_id: &str) -> usize {
    broker.session(client_id).unwrap().lock().outbound.queued()
}

#[test]
fn a_will_restored_from_the_store_is_not_published_under_an_acl() {
    // The store keeps no usernames, so whose rights the will had is
    // unknown; without an ACL there is nothing to check.
    assert_eq!(queued_for(&restarted(None), "watcher"), 1);
    let files = Files::new("restored-will");
    let acl = files.write("acl", "topic readwrite #\n");
    let broker = restarted(Some(acl));
    assert_eq!(queued_for(&broker, "watcher"), 0);
    assert_eq!(broker.metrics().acl_denied_publishes(), 1);
}

#[test]
fn a_session_restored_without_an_owner_is_not_filtered_when_routing() {
    let files = Files::new("restored-owner");
    let broker = restarted(Some(files.write("acl", "topic read other/#\n")));
    let message = Arc::new(Message {
        topic: "wills/x".into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: false,
        expires_at: None,
        properties: Default::default(),
        publisher: None,
    });
    // Queued: its owner's rights are checked when it is sent.
    broker.route(&message, None, 0);
    assert_eq!(queued_for(&broker, "watcher"), 1);
    assert_eq!(broker.metrics().acl_denied_deliveries(), 0);
}

#[test]
fn clients_without_an_id_are_throttled_by_address_only() {
    let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    assert_eq!(throttle_key("", peer), "\x00192.0.2.1");
    assert_eq!(throttle_key("device-1", peer), "device-1");
}

fn connect_as(username: Option<&str>, password: Option<&[u8]>) -> Connect {
    Connect {
        username: username.map(str::to_string),
        password: password.map(bytes::Bytes::copy_from_slice),
        receive_maximum: 10,
        ..crate::broker::tests::connect_packet(crate::protocol::Version::V5, "device-1", true, 0)
    }
}

fn with_passwords(adjust: impl FnOnce(&mut Settings)) -> (Files, Arc<BrokerState>) {
    use crate::auth::password::Credentials;
    let files = Files::new("authenticate");
    let mut passwords = PasswordFile::new();
    let cheap = argon2::Params::new(64, 1, 1, None).unwrap();
    let credentials = Credentials::with_cost(b"right", cheap, 4096).unwrap();
    passwords.set("dora", credentials).unwrap();
    let path = files.dir.join("passwd");
    passwords.write(&path).unwrap();
    let mut settings = Settings::ephemeral();
    settings.password_file = Some(path);
    adjust(&mut settings);
    let broker = BrokerState::new(
        settings,
        crate::store::Journal::manual(),
        false,
        crate::store::Snapshot::default(),
        0,
    );
    (files, broker)
}

const PEER: &str = "192.0.2.1:1000";

#[tokio::test]
async fn a_certificate_identity_is_the_username_and_needs_no_password() {
    let (_files, broker) = with_passwords(|s| s.allow_anonymous = false);
    let peer = PEER.parse().unwrap();
    let admitted = broker
        .authenticate(&connect_as(None, None), peer, Some("sensor-7"))
        .await;
    assert_eq!(admitted, Ok(Some("sensor-7".into())));
    let admitted = broker
        .authenticate(
            &connect_as(Some("dora"), Some(b"wrong")),
            peer,
            Some("sensor-7"),
        )
        .await;
    assert_eq!(admitted, Ok(Some("sensor-7".into())));
}

#[tokio::test]
async fn passwords_are_checked_and_anonymous_clients_follow_allow_anonymous() {
    let (_files, broker) = with_passwords(|s| s.allow_anonymous = false);
    let peer = PEER.parse().unwrap();
    let check = |username, password| {
        let broker = broker.clone();
        async move {
            broker
                .authenticate(&connect_as(username, password), peer, None)
                .await
        }
    };
    assert_eq!(
        check(Some("dora"), Some(b"right".as_slice())).await,
        Ok(Some("dora".into()))
    );
    for (username, password) in [
        (Some("dora"), Some(b"wrong".as_slice())),
        (Some("dora"), None),
        (Some("nobody"), Some(b"right".as_slice())),
    ] {
        assert_eq!(
            check(username, password).await,
            Err(ReasonCode::BAD_USERNAME_OR_PASSWORD)
        );
    }
    assert_eq!(check(None, None).await, Err(ReasonCode::NOT_AUTHORIZED));
    let metrics = broker.metrics();
    assert_eq!(metrics.auth_bad_passwords(), 3);
    assert_eq!(metrics.auth_anonymous_refused_total(), 1);
}
