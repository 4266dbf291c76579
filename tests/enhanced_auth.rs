//! v5 enhanced authentication end to end: a raw-socket client runs the
//! whole SCRAM-SHA-256 exchange (CONNECT, AUTH, AUTH, CONNACK) against a
//! petrel started with a password file written by `petrel::auth::password`,
//! then re-authenticates on the open connection (AUTH 0x19, AUTH, AUTH,
//! AUTH 0x00). Every refusal is checked by its exact packet.

mod common;
mod raw;

use std::net::SocketAddr;

use common::scratch::TempDir;
use common::{TestBroker, start_broker_with};
use petrel::auth::password::{Credentials, PasswordFile};
use petrel::auth::scram::{ScramClient, generate_nonce};
use raw::{CONNACK, Connack, Connect, DISCONNECT, RawClient, packet, string, unique_id};

const METHOD: &str = "SCRAM-SHA-256";
const AUTH: u8 = 0xF0;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;

const SUCCESS: u8 = 0x00;
const CONTINUE_AUTHENTICATION: u8 = 0x18;
const REAUTHENTICATE: u8 = 0x19;
const PROTOCOL_ERROR: u8 = 0x82;
const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
const NOT_AUTHORIZED: u8 = 0x87;
const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;

/// A petrel whose password file holds alice and bob, each with the
/// password `{user}-secret`, in a scratch directory as long as it runs.
struct Scram {
    broker: TestBroker,
    _dir: TempDir,
}

impl Scram {
    async fn start() -> Scram {
        let dir = TempDir::new("enhanced-auth");
        let path = dir.path().join("passwd");
        let mut file = PasswordFile::new();
        for user in ["alice", "bob"] {
            // A cheap argon2 cost: these tests run SCRAM, not the password
            // in CONNECT.
            let cheap = argon2::Params::new(64, 1, 1, None).unwrap();
            let password = format!("{user}-secret");
            let credentials = Credentials::with_cost(password.as_bytes(), cheap, 4096).unwrap();
            file.set(user, credentials).unwrap();
        }
        file.write(&path).unwrap();
        let broker = start_broker_with(|settings| settings.password_file = Some(path)).await;
        Scram { broker, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.addr
    }

    fn auth_failures(&self) -> u64 {
        self.broker.petrel().metrics().enhanced_auth_failures()
    }
}

/// A string or binary property.
fn property(id: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(string(value));
    out
}

fn method_and_data(method: &str, data: &[u8]) -> Vec<u8> {
    let mut properties = property(AUTHENTICATION_METHOD, method.as_bytes());
    properties.extend(property(AUTHENTICATION_DATA, data));
    properties
}

/// A v5 CONNECT naming `method`, with `data` as the first step.
fn connect(client_id: &str, method: &str, data: &[u8]) -> Connect {
    Connect {
        properties: method_and_data(method, data),
        ..Connect::v5(client_id)
    }
}

/// A client's AUTH.
fn auth(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(raw::properties(&method_and_data(method, data)));
    packet(AUTH, &body)
}

/// An AUTH from the broker: its reason code, method and data.
fn read_auth(packet: &raw::Packet) -> (u8, String, Vec<u8>) {
    assert_eq!(packet.first, AUTH, "AUTH expected, got {packet:?}");
    let (properties, _) = raw::parse_properties(&packet.body[1..]);
    let value = |id: u8| {
        properties
            .iter()
            .find(|(found, _)| *found == id)
            .map(|(_, value)| value[2..].to_vec())
            .unwrap_or_else(|| panic!("property {id:#04x} missing from {packet:?}"))
    };
    let method = String::from_utf8(value(AUTHENTICATION_METHOD)).unwrap();
    (packet.body[0], method, value(AUTHENTICATION_DATA))
}

/// Runs one SCRAM exchange on `client`: `first` opens it (a CONNECT or an
/// AUTH 0x19 carrying `client-first`), the broker challenges, the client
/// answers. Returns the broker's last packet and the client state that
/// checks the server's proof.
async fn run_exchange(
    client: &mut RawClient,
    first: impl FnOnce(&[u8]) -> Vec<u8>,
    user: &str,
    password: &str,
) -> (raw::Packet, petrel::auth::scram::ScramClientFinal) {
    let nonce = generate_nonce().unwrap();
    let (scram, client_first) = ScramClient::start(user, password.as_bytes(), &nonce);
    client.send(&first(&client_first)).await;
    let challenge = client.expect_packet().await;
    let (reason, method, server_first) = read_auth(&challenge);
    assert_eq!(reason, CONTINUE_AUTHENTICATION, "[MQTT-4.12.0-2]");
    assert_eq!(method, METHOD, "[MQTT-4.12.0-5]");
    let (scram, client_final) = scram.respond(&server_first).unwrap();
    client
        .send(&auth(CONTINUE_AUTHENTICATION, METHOD, &client_final))
        .await;
    (client.expect_packet().await, scram)
}

/// Connects with SCRAM; returns the client and its CONNACK, whatever the
/// outcome.
async fn scram_connect(addr: SocketAddr, user: &str, password: &str) -> (RawClient, raw::Packet) {
    scram_connect_as(addr, &unique_id("scram"), user, password).await
}

/// `scram_connect` with client id `id`.
async fn scram_connect_as(
    addr: SocketAddr,
    id: &str,
    user: &str,
    password: &str,
) -> (RawClient, raw::Packet) {
    let mut client = RawClient::connect(addr).await;
    let (last, scram) = run_exchange(
        &mut client,
        |client_first| connect(id, METHOD, client_first).encode(),
        user,
        password,
    )
    .await;
    assert_eq!(last.kind(), CONNACK, "{last:?}");
    let connack = Connack::parse_v5(&last);
    if connack.reason == SUCCESS {
        let server_final = &connack.property(AUTHENTICATION_DATA).expect("server-final")[2..];
        scram
            .finish(server_final)
            .expect("the broker proves it knows the credentials");
    }
    (client, last)
}

/// Connected with SCRAM as `user`.
async fn authenticated(addr: SocketAddr, user: &str) -> RawClient {
    let (client, connack) = scram_connect(addr, user, &format!("{user}-secret")).await;
    let connack = Connack::parse_v5(&connack);
    assert_eq!(connack.reason, SUCCESS);
    client
}

#[tokio::test]
async fn scram_login_succeeds_and_the_connack_carries_the_servers_proof() {
    let scram = Scram::start().await;
    let (mut client, connack) = scram_connect(scram.addr(), "alice", "alice-secret").await;
    let connack = Connack::parse_v5(&connack);
    assert_eq!(connack.reason, SUCCESS);
    assert_eq!(
        &connack.property(AUTHENTICATION_METHOD).unwrap()[2..],
        METHOD.as_bytes(),
        "a successful CONNACK repeats the method [MQTT-4.12.0-5]"
    );
    client.ping().await;
    assert_eq!(scram.auth_failures(), 0);
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_gets_connack_0x87_then_close() {
    let scram = Scram::start().await;
    for (user, password) in [("alice", "guess"), ("mallory", "mallory-secret")] {
        let (mut client, connack) = scram_connect(scram.addr(), user, password).await;
        assert_eq!(
            connack.body[..2],
            [0x00, NOT_AUTHORIZED],
            "{user}: {connack:?}"
        );
        client.expect_closed().await;
    }
    assert_eq!(scram.auth_failures(), 2);
}

/// A failed SCRAM proof counts towards the failed-login lock-out as a
/// wrong password does: after five, even the right password is refused
/// (0x86) before any exchange.
#[tokio::test]
async fn failed_proofs_lock_the_client_out_like_wrong_passwords() {
    let scram = Scram::start().await;
    let id = unique_id("guess");
    for _ in 0..5 {
        let (mut client, connack) = scram_connect_as(scram.addr(), &id, "alice", "guess").await;
        assert_eq!(connack.body[..2], [0x00, NOT_AUTHORIZED], "{connack:?}");
        client.expect_closed().await;
    }
    let mut client = RawClient::connect(scram.addr()).await;
    let (_, client_first) = ScramClient::start("alice", b"alice-secret", "bm9uY2U");
    client
        .send(&connect(&id, METHOD, &client_first).encode())
        .await;
    client
        .expect_v5_connack_then_close(BAD_USERNAME_OR_PASSWORD)
        .await;
}

#[tokio::test]
async fn an_unknown_method_gets_connack_0x8c_then_close() {
    let scram = Scram::start().await;
    let mut client = RawClient::connect(scram.addr()).await;
    client
        .send(&connect(&unique_id("m"), "SCRAM-SHA-1", b"n,,n=alice,r=abc").encode())
        .await;
    client
        .expect_v5_connack_then_close(BAD_AUTHENTICATION_METHOD)
        .await;
}

#[tokio::test]
async fn without_a_password_file_scram_is_not_offered() {
    let broker = start_broker_with(|_| {}).await;
    let mut client = RawClient::connect(broker.addr).await;
    let (_, client_first) = ScramClient::start("alice", b"alice-secret", "bm9uY2U");
    client
        .send(&connect(&unique_id("n"), METHOD, &client_first).encode())
        .await;
    client
        .expect_v5_connack_then_close(BAD_AUTHENTICATION_METHOD)
        .await;
}

/// [MQTT-3.1.2-30]: until the CONNACK a client that named a method sends
/// only AUTH or DISCONNECT.
#[tokio::test]
async fn a_publish_in_the_middle_of_the_exchange_is_a_protocol_error() {
    let scram = Scram::start().await;
    let mut client = RawClient::connect(scram.addr()).await;
    let (_, client_first) = ScramClient::start("alice", b"alice-secret", "bm9uY2U");
    client
        .send(&connect(&unique_id("p"), METHOD, &client_first).encode())
        .await;
    read_auth(&client.expect_packet().await);
    client
        .send(&raw::publish_v5("t", 0, 0, &[], b"early"))
        .await;
    client.expect_v5_connack_then_close(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn reauthentication_succeeds_with_the_servers_proof_in_auth_0x00() {
    let scram = Scram::start().await;
    let mut client = authenticated(scram.addr(), "alice").await;
    let (last, proof) = run_exchange(
        &mut client,
        |client_first| auth(REAUTHENTICATE, METHOD, client_first),
        "alice",
        "alice-secret",
    )
    .await;
    let (reason, method, server_final) = read_auth(&last);
    assert_eq!((reason, method.as_str()), (SUCCESS, METHOD));
    proof.finish(&server_final).expect("server-final verifies");
    client.ping().await;
    // And again: a connection may re-authenticate as often as it likes.
    let (last, _) = run_exchange(
        &mut client,
        |client_first| auth(REAUTHENTICATE, METHOD, client_first),
        "alice",
        "alice-secret",
    )
    .await;
    assert_eq!(read_auth(&last).0, SUCCESS);
}

#[tokio::test]
async fn a_failed_reauthentication_gets_disconnect_0x87() {
    let scram = Scram::start().await;
    let mut client = authenticated(scram.addr(), "alice").await;
    let (last, _) = run_exchange(
        &mut client,
        |client_first| auth(REAUTHENTICATE, METHOD, client_first),
        "alice",
        "wrong",
    )
    .await;
    assert_eq!(
        (last.kind(), last.disconnect_reason()),
        (DISCONNECT, NOT_AUTHORIZED),
        "{last:?}"
    );
    client.expect_closed().await;
    assert_eq!(scram.auth_failures(), 1);
}

/// A connection keeps the user it proved: re-authenticating as another
/// user, even with that user's right password, is refused.
#[tokio::test]
async fn reauthenticating_as_another_user_gets_disconnect_0x87() {
    let scram = Scram::start().await;
    let mut client = authenticated(scram.addr(), "alice").await;
    let (_, client_first) = ScramClient::start("bob", b"bob-secret", "bm9uY2U");
    client
        .send(&auth(REAUTHENTICATE, METHOD, &client_first))
        .await;
    client.expect_disconnect_then_close(&[NOT_AUTHORIZED]).await;
}

/// [MQTT-4.12.1-1]: re-authentication uses the CONNECT's method.
#[tokio::test]
async fn reauthenticating_with_another_method_gets_disconnect_0x82() {
    let scram = Scram::start().await;
    let mut client = authenticated(scram.addr(), "alice").await;
    client
        .send(&auth(REAUTHENTICATE, "SCRAM-SHA-1", b"n,,n=alice,r=abc"))
        .await;
    client.expect_disconnect_then_close(&[PROTOCOL_ERROR]).await;
}

/// AUTH 0x18 with no exchange under way, and AUTH 0x19 in the middle of
/// one, are protocol errors.
#[tokio::test]
async fn auth_out_of_turn_gets_disconnect_0x82() {
    let scram = Scram::start().await;
    let mut client = authenticated(scram.addr(), "alice").await;
    client
        .send(&auth(CONTINUE_AUTHENTICATION, METHOD, b"c=biws"))
        .await;
    client.expect_disconnect_then_close(&[PROTOCOL_ERROR]).await;

    let mut client = authenticated(scram.addr(), "bob").await;
    let (_, client_first) = ScramClient::start("bob", b"bob-secret", "bm9uY2U");
    client
        .send(&auth(REAUTHENTICATE, METHOD, &client_first))
        .await;
    read_auth(&client.expect_packet().await);
    client
        .send(&auth(REAUTHENTICATE, METHOD, &client_first))
        .await;
    client.expect_disconnect_then_close(&[PROTOCOL_ERROR]).await;
}
