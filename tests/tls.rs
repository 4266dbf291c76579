//! The TLS building blocks of a listener (`petrel::transport::tls`) over real
//! loopback sockets, with certificates made by `certs/make-dev-certs.sh`.
//!
//! The server side is a bare accept loop that takes a fresh acceptor from a
//! `TlsAcceptorCell` per connection, as a listener does, reports what each
//! handshake gave, and then echoes bytes; the client side is tokio-rustls with
//! the development CA. The broker is not involved. Needs `bash` and `openssl`.

mod common;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use petrel::transport::tls::{TlsAcceptorCell, TlsError, TlsFiles, peer_identity, server_config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::WAIT;
use common::certs::{Certs, run_script};
use common::scratch::TempDir;

/// A CONNECT as an MQTT 3.1.1 client sends it first on a plain connection.
const MQTT_CONNECT: [u8; 14] = [
    0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
];

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What the server saw of one connection's handshake: the client's identity,
/// if it proved one, or why the handshake failed.
type Outcome = io::Result<Option<String>>;

/// An accept loop on 127.0.0.1, stopped when dropped.
struct Server {
    addr: SocketAddr,
    outcomes: mpsc::Receiver<Outcome>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(cell: Arc<TlsAcceptorCell>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, outcomes) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = cell.acceptor();
                let report = report.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(stream) => {
                            let identity = peer_identity(stream.get_ref().1);
                            let _ = report.send(Ok(identity)).await;
                            let (mut from, mut to) = tokio::io::split(stream);
                            let _ = tokio::io::copy(&mut from, &mut to).await;
                        }
                        Err(error) => {
                            let _ = report.send(Err(error)).await;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            outcomes,
            task,
        }
    }

    async fn load(files: TlsFiles) -> (Server, Arc<TlsAcceptorCell>) {
        let cell = Arc::new(TlsAcceptorCell::load(files).expect("TLS files load"));
        (Server::start(cell.clone()).await, cell)
    }

    async fn next_outcome(&mut self) -> Outcome {
        timeout(WAIT, self.outcomes.recv())
            .await
            .expect("the server finished a handshake in time")
            .expect("the accept loop is running")
    }

    /// The identity of the next client to complete a handshake.
    async fn accepted(&mut self) -> Option<String> {
        self.next_outcome()
            .await
            .expect("the server completed the handshake")
    }

    /// The rustls error that ended the next handshake on the server side.
    async fn refused(&mut self) -> rustls::Error {
        match self.next_outcome().await {
            Ok(identity) => panic!("the server accepted a client (identity {identity:?})"),
            Err(error) => tls_error(&error)
                .unwrap_or_else(|| panic!("not a TLS failure: {error}"))
                .clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("the client handshake ended in time")
}

/// Sends `bytes` and reads them back from the echoing server.
async fn echo(stream: &mut TlsStream<TcpStream>, bytes: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    let mut back = vec![0; bytes.len()];
    timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("the echo arrived in time")?;
    Ok(back)
}

async fn assert_echoes(stream: &mut TlsStream<TcpStream>) {
    let back = echo(stream, &MQTT_CONNECT).await.expect("echo over TLS");
    assert_eq!(back, MQTT_CONNECT);
}

/// The rustls error inside an I/O error from tokio-rustls.
fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref()
}

fn client_refusal(result: io::Result<TlsStream<TcpStream>>) -> rustls::Error {
    match result {
        Ok(_) => panic!("the client accepted the server"),
        Err(error) => tls_error(&error)
            .unwrap_or_else(|| panic!("not a TLS failure: {error}"))
            .clone(),
    }
}

fn copy_server_files(from: &Certs, to: &Path) {
    std::fs::copy(from.file("server.crt"), to.join("server.crt")).unwrap();
    std::fs::copy(from.file("server.key"), to.join("server.key")).unwrap();
}

#[tokio::test]
async fn a_client_trusting_the_dev_ca_completes_the_handshake() {
    let certs = Certs::new("tls-trusted", &[]);
    let (mut server, _cell) = Server::load(certs.server()).await;

    let mut client = connect(server.addr, certs.client()).await.unwrap();

    assert_eq!(server.accepted().await, None);
    assert_echoes(&mut client).await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let certs = Certs::new("tls-server", &[]);
    let other = Certs::new("tls-other-ca", &[]);
    let (mut server, _cell) = Server::load(certs.server()).await;

    let refusal = client_refusal(connect(server.addr, other.client()).await);

    assert_eq!(
        refusal,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    server.refused().await;
}

#[tokio::test]
async fn required_client_certificate_refuses_a_client_without_one() {
    let certs = Certs::new("tls-mtls-none", &[]);
    let (mut server, _cell) = Server::load(certs.mutual(true)).await;

    // In TLS 1.3 the client's side of the handshake is over before the
    // server has judged its (missing) certificate, so the refusal reaches
    // the client as an alert on its first read.
    let outcome = match connect(server.addr, certs.client()).await {
        Ok(mut client) => echo(&mut client, &MQTT_CONNECT).await.map(drop),
        Err(error) => Err(error),
    };

    assert!(
        outcome.is_err(),
        "the client got an echo without a certificate"
    );
    assert_eq!(
        server.refused().await,
        rustls::Error::NoCertificatesPresented
    );
}

#[tokio::test]
async fn required_client_certificate_accepts_the_dev_client_and_names_it() {
    let certs = Certs::new("tls-mtls-device", &[]);
    let (mut server, _cell) = Server::load(certs.mutual(true)).await;

    let mut client = connect(server.addr, certs.client_with_cert(&certs))
        .await
        .unwrap();

    assert_eq!(server.accepted().await.as_deref(), Some("device-1"));
    assert_echoes(&mut client).await;
}

#[tokio::test]
async fn required_client_certificate_refuses_one_from_another_ca() {
    let certs = Certs::new("tls-mtls-server", &[]);
    let stranger = Certs::new("tls-mtls-stranger", &[]);
    let (mut server, _cell) = Server::load(certs.mutual(true)).await;

    let outcome = match connect(server.addr, stranger.client_with_cert(&certs)).await {
        Ok(mut client) => echo(&mut client, &MQTT_CONNECT).await.map(drop),
        Err(error) => Err(error),
    };

    assert!(
        outcome.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    assert_eq!(
        server.refused().await,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn optional_client_certificate_admits_clients_with_and_without_one() {
    let certs = Certs::new("tls-mtls-optional", &[]);
    let (mut server, _cell) = Server::load(certs.mutual(false)).await;

    let mut anonymous = connect(server.addr, certs.client()).await.unwrap();
    assert_eq!(server.accepted().await, None);
    assert_echoes(&mut anonymous).await;

    let mut device = connect(server.addr, certs.client_with_cert(&certs))
        .await
        .unwrap();
    assert_eq!(server.accepted().await.as_deref(), Some("device-1"));
    assert_echoes(&mut device).await;
}

#[tokio::test]
async fn the_client_cn_option_sets_the_identity_the_server_sees() {
    let certs = Certs::new("tls-client-cn", &["--client-cn", "sensor-7"]);
    let (mut server, _cell) = Server::load(certs.mutual(true)).await;

    let _client = connect(server.addr, certs.client_with_cert(&certs))
        .await
        .unwrap();

    assert_eq!(server.accepted().await.as_deref(), Some("sensor-7"));
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_the_client() {
    let certs = Certs::new("tls-expired", &["--expired"]);
    let files = TlsFiles {
        cert: certs.file("server-expired.crt"),
        ..certs.server()
    };
    let (mut server, _cell) = Server::load(files).await;

    let refusal = client_refusal(connect(server.addr, certs.client()).await);

    assert!(
        matches!(
            refusal,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{refusal:?}"
    );
    server.refused().await;
}

#[tokio::test]
async fn plaintext_mqtt_on_the_tls_port_fails_the_handshake() {
    let certs = Certs::new("tls-plaintext", &[]);
    let (mut server, _cell) = Server::load(certs.server()).await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&MQTT_CONNECT).await.unwrap();

    let refusal = server.refused().await;
    assert!(
        matches!(refusal, rustls::Error::InvalidMessage(_)),
        "{refusal:?}"
    );
    // Whatever comes back (a TLS alert at most) is no CONNACK.
    let mut reply = Vec::new();
    let _ = timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .expect("the server closed the connection");
    assert_ne!(reply.first(), Some(&0x20), "reply: {reply:02x?}");
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_leaves_open_connections_alone() {
    let first = Certs::new("tls-reload-first", &[]);
    let second = Certs::new("tls-reload-second", &[]);
    let live = TempDir::new("tls-reload-live");
    copy_server_files(&first, live.path());
    let files = TlsFiles {
        cert: live.path().join("server.crt"),
        key: live.path().join("server.key"),
        client_ca: None,
        require_client_cert: false,
    };
    let (mut server, cell) = Server::load(files).await;
    let mut before = connect(server.addr, first.client()).await.unwrap();
    server.accepted().await;

    copy_server_files(&second, live.path());
    cell.reload().expect("the renewed files load");

    let refusal = client_refusal(connect(server.addr, first.client()).await);
    assert_eq!(
        refusal,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    server.refused().await;
    let mut after = connect(server.addr, second.client()).await.unwrap();
    server.accepted().await;
    assert_echoes(&mut after).await;
    assert_echoes(&mut before).await;
}

#[tokio::test]
async fn a_failed_reload_keeps_the_old_certificate() {
    let first = Certs::new("tls-bad-reload-first", &[]);
    let second = Certs::new("tls-bad-reload-second", &[]);
    let live = TempDir::new("tls-bad-reload-live");
    copy_server_files(&first, live.path());
    let key = live.path().join("server.key");
    let files = TlsFiles {
        cert: live.path().join("server.crt"),
        key: key.clone(),
        client_ca: None,
        require_client_cert: false,
    };
    let (mut server, cell) = Server::load(files).await;
    let config = cell.config();

    std::fs::remove_file(&key).unwrap();
    let error = cell.reload().unwrap_err();
    assert!(
        matches!(&error, TlsError::Read { path, .. } if *path == key),
        "{error:?}"
    );
    // Half a renewal: the new certificate arrived, its key did not.
    std::fs::copy(second.file("server.crt"), live.path().join("server.crt")).unwrap();
    std::fs::copy(first.file("server.key"), &key).unwrap();
    let error = cell.reload().unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");

    assert!(Arc::ptr_eq(&config, &cell.config()));
    let mut client = connect(server.addr, first.client()).await.unwrap();
    server.accepted().await;
    assert_echoes(&mut client).await;
}

#[test]
fn a_key_that_belongs_to_another_certificate_is_refused_naming_both_files() {
    let certs = Certs::new("tls-mismatch", &[]);
    let files = TlsFiles {
        key: certs.file("client.key"),
        ..certs.server()
    };

    let error = server_config(&files).unwrap_err();

    assert!(
        matches!(&error, TlsError::KeyMismatch { cert, key }
            if *cert == files.cert && *key == files.key),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("client.key") && message.contains("server.crt"),
        "{message}"
    );
}

#[tokio::test]
async fn server_keys_in_sec1_and_pkcs1_encodings_load() {
    let certs = Certs::new("tls-encodings", &[]);
    let sec1 = certs.file("server-sec1.key");
    openssl(&[
        "pkey",
        "-in",
        certs.file("server.key").to_str().unwrap(),
        "-traditional",
        "-out",
        sec1.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read_to_string(&sec1)
            .unwrap()
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    let (mut server, _cell) = Server::load(TlsFiles {
        key: sec1,
        ..certs.server()
    })
    .await;
    let mut client = connect(server.addr, certs.client()).await.unwrap();
    server.accepted().await;
    assert_echoes(&mut client).await;

    // The script makes EC keys only; an RSA pair is made here for PKCS#1.
    let generated = certs.file("rsa-pkcs8.key");
    let rsa = certs.file("rsa.key");
    let rsa_cert = certs.file("rsa.crt");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        generated.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        generated.to_str().unwrap(),
        "-traditional",
        "-out",
        rsa.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read_to_string(&rsa)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        rsa.to_str().unwrap(),
        "-subj",
        "/CN=localhost",
        "-days",
        "1",
        "-out",
        rsa_cert.to_str().unwrap(),
    ]);
    let files = TlsFiles {
        cert: rsa_cert,
        key: rsa,
        client_ca: None,
        require_client_cert: false,
    };
    server_config(&files).expect("a PKCS#1 key loads");
}

#[test]
fn make_dev_certs_writes_private_keys_for_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let certs = Certs::new("tls-modes", &[]);
    for key in ["ca.key", "server.key", "client.key"] {
        let mode = std::fs::metadata(certs.file(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}: {mode:o}");
    }
}

#[test]
fn make_dev_certs_days_sets_the_validity() {
    let certs = Certs::new("tls-days", &["--days", "3"]);
    for file in ["ca.crt", "server.crt", "client.crt"] {
        let der = CertificateDer::from_pem_file(certs.file(file)).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let validity = cert.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
        assert_eq!(days, 3, "{file}");
    }
}

#[test]
fn make_dev_certs_rerun_replaces_the_whole_set() {
    let certs = Certs::new("tls-rerun", &["--expired"]);
    let ca_before = std::fs::read(certs.file("ca.crt")).unwrap();

    let listing = run_script(certs.0.path(), &[]);

    assert_ne!(std::fs::read(certs.file("ca.crt")).unwrap(), ca_before);
    // Signed by the CA that is now gone, so it must not linger.
    assert!(!certs.file("server-expired.crt").exists());
    for file in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ] {
        assert!(listing.contains(file), "{file} missing from: {listing}");
    }
    server_config(&certs.mutual(true)).expect("the new set is consistent");
}
