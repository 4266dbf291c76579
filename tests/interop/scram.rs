//! MQTT.js logging in with v5 enhanced authentication (SCRAM-SHA-256,
//! `node/mqttjs_scram.js`) against a petrel of its own with a password
//! file: MQTT.js carries the AUTH exchange through its `handleAuth` hook,
//! and the script checks the broker's proof (server-final) in the CONNACK.
//! Re-authentication is covered by tests/enhanced_auth.rs only: MQTT.js has
//! no public way to send AUTH 0x19.

use std::path::PathBuf;

use petrel::auth::password::{Credentials, PasswordFile};
use tokio::process::Command;

use crate::clients::node;
use crate::common::scratch::TempDir;
use crate::common::{TestBroker, start_broker_with};
use crate::process::Proc;

/// A petrel whose password file has alice, password `alice-secret`.
async fn broker_with_alice() -> (TestBroker, TempDir) {
    let dir = TempDir::new("interop-scram");
    let path = dir.path().join("passwd");
    let mut file = PasswordFile::new();
    let cheap = argon2::Params::new(64, 1, 1, None).unwrap();
    let credentials = Credentials::with_cost(b"alice-secret", cheap, 4096).unwrap();
    file.set("alice", credentials).unwrap();
    file.write(&path).unwrap();
    let broker = start_broker_with(|settings| settings.password_file = Some(path)).await;
    (broker, dir)
}

/// Runs the MQTT.js SCRAM login to its end; returns what it printed.
async fn mqttjs_scram(broker: &TestBroker, client_id: &str, password: &str) -> Vec<String> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node/mqttjs_scram.js");
    let mut cmd = Command::new(node());
    cmd.arg(script);
    cmd.args(["--host", &broker.addr.ip().to_string()]);
    cmd.args(["--port", &broker.addr.port().to_string()]);
    cmd.args(["--version", "5", "--client-id", client_id]);
    cmd.args(["--user", "alice", "--password", password]);
    Proc::spawn(format!("mqttjs_scram.js {client_id}"), cmd, None)
        .finish()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_v5_scram_sha_256_login_proves_both_sides() {
    let (broker, _dir) = broker_with_alice().await;
    let lines = mqttjs_scram(&broker, "mqttjs-scram-ok", "alice-secret").await;
    assert_eq!(lines, ["CONNECTED session_present=0", "SERVER_PROOF ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_v5_scram_sha_256_wrong_password_is_refused_with_0x87() {
    let (broker, _dir) = broker_with_alice().await;
    let lines = mqttjs_scram(&broker, "mqttjs-scram-bad", "guess").await;
    assert_eq!(lines, ["REFUSED 135"]);
}
