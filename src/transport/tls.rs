//! TLS for listeners: turning certificate and key files into a rustls server
//! configuration, swapping that configuration when the files are renewed, and
//! reading a client certificate's identity.
//!
//! Everything here is synchronous file work and rustls configuration; the
//! handshake itself happens in the connection task through the
//! `tokio_rustls::TlsAcceptor` handed out by [`TlsAcceptorCell::acceptor`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The files one TLS listener is built from. Kept whole so that a reload
/// reads exactly what the listener started with.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key for the first certificate: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted. Without
    /// it the server does not ask clients for a certificate.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients that present no certificate. Needs `client_ca`.
    pub require_client_cert: bool,
}

/// Why a TLS configuration could not be built. Each variant names the file
/// at fault, since these surface at start-up or on a reload, where the
/// operator's next step is to look at that file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{} holds no certificate (expected a PEM CERTIFICATE block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no private key (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error("the private key in {} is not usable: {source}", path.display())]
    UnusableKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "the private key in {} does not belong to the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {} is not usable: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{} holds no CA certificate (expected PEM CERTIFICATE blocks)", path.display())]
    NoCaCertificate { path: PathBuf },
    #[error("CA certificate {index} in {} is not usable: {source}", path.display())]
    BadCaCertificate {
        path: PathBuf,
        /// Position in the bundle, counting from 1.
        index: usize,
        source: rustls::Error,
    },
    #[error("client certificates from {} cannot be verified: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("require_client_cert is set, but no client_ca names the CAs to check them against")]
    RequireClientCertWithoutCa,
    #[error("TLS protocol versions rejected by the crypto provider: {0}")]
    Protocol(rustls::Error),
}

/// Builds the server configuration for `files`, checking everything rustls
/// would otherwise only discover during a handshake: that the files hold
/// what they should and that the key belongs to the certificate.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    // Explicit, because the process-wide default provider is only chosen
    // automatically when exactly one crypto backend is compiled in, and a
    // dependency enabling another would turn that into a runtime panic.
    let provider = Arc::new(ring::default_provider());
    if files.require_client_cert && files.client_ca.is_none() {
        return Err(TlsError::RequireClientCertWithoutCa);
    }

    let chain = read_certs(&files.cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = read_key(&files.key)?;
    let certified = certified_key(&files.cert, &files.key, chain, key, &provider)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(read_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_cert_resolver(Arc::new(
        SingleCertAndKey::from(certified),
    ))))
}

/// The TLS configuration of a client of another broker (a bridge): the
/// remote is verified against the CAs in `ca`; with `identity` (certificate
/// chain, key) the bridge shows a certificate of its own (mutual TLS). The
/// files are checked as a server's are.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let roots = read_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: cert.to_path_buf(),
                });
            }
            let certified = certified_key(cert, key, chain, read_key(key)?, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    };
    Ok(Arc::new(config))
}

/// Pairs the chain with its key, telling a key that fails to load apart from
/// one that loads but belongs to another certificate, which
/// `with_single_cert` reports alike.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnusableKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key cannot tell its public half, so there is nothing
        // to compare; rustls accepts such keys too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        Err(source) => Err(TlsError::BadCertificate {
            path: cert_path.to_path_buf(),
            source,
        }),
    }
}

/// Every certificate in a PEM file, in order; other blocks (a key kept in
/// the same file, say) are skipped.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(path, error))?
        .map(|cert| cert.map_err(|error| pem_error(path, error)))
        .collect()
}

/// The first private key in a PEM file, whichever of the three encodings.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => pem_error(path, other),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = read_certs(path)?;
    if certs.is_empty() {
        return Err(TlsError::NoCaCertificate {
            path: path.to_path_buf(),
        });
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        // One bad entry fails the whole bundle: silently trusting fewer CAs
        // than configured would show up only as refused clients.
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCaCertificate {
                path: path.to_path_buf(),
                index: index + 1,
                source,
            })?;
    }
    Ok(roots)
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(source) => TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// A listener's current TLS configuration, replaceable while it runs so that
/// renewed certificates take effect without a restart. Connections already
/// established keep the configuration they were accepted with.
#[derive(Debug)]
pub struct TlsAcceptorCell {
    files: TlsFiles,
    // A std lock is enough: it is held only to clone or replace an Arc,
    // never across an await.
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptorCell {
    /// Loads `files`; fails as [`server_config`] does.
    pub fn load(files: TlsFiles) -> Result<TlsAcceptorCell, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsAcceptorCell {
            files,
            current: RwLock::new(config),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor for the next connection. Take a fresh one per accepted
    /// socket so that a reload reaches new connections.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The configuration the next connection gets, for callers that drive
    /// rustls themselves rather than through [`TlsAcceptor`].
    pub fn config(&self) -> Arc<ServerConfig> {
        // The guarded value is a single Arc, always whole, so a panic in
        // another holder leaves nothing inconsistent behind.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files and switches to them only if they form a complete,
    /// consistent configuration; otherwise the old one stays in force and
    /// the error says what is wrong. Reads files synchronously, so call it
    /// from a blocking context when the files may be slow to read.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
        Ok(())
    }
}

/// The identity a client proved with its certificate: the first common name
/// (CN) in the subject, for listeners that use it as the MQTT username.
/// `None` when the client sent no certificate or its subject has no CN.
pub fn peer_identity(conn: &ServerConnection) -> Option<String> {
    let end_entity = conn.peer_certificates()?.first()?;
    common_name(end_entity)
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Self-signed, subject `O=petrel tests, CN=device-1, CN=second`.
    const TWO_COMMON_NAMES: &str = "-----BEGIN CERTIFICATE-----
MIIBczCCARkCFDeLgxf6cgi83KlZMVCp/VzJwCrqMAoGCCqGSM49BAMCMDsxFTAT
BgNVBAoMDHBldHJlbCB0ZXN0czERMA8GA1UEAwwIZGV2aWNlLTExDzANBgNVBAMM
BnNlY29uZDAgFw0yNjEyMDEyMTI5MDhaGA8yMTI2MTEwNzIxMjkwOFowOzEVMBMG
A1UECgwMcGV0cmVsIHRlc3RzMREwDwYDVQQDDAhkZXZpY2UtMTEPMA0GA1UEAwwG
c2Vjb25kMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEThb2dI/L2xnE8eBXRffp
SMZnoRFl4ieuo61N1mo+CTJ/DVFrZAUVfWVMWa8nwv8B9eOUYd/HgTer7E9U0XzH
9DAKBggqhkjOPQQDAgNIADBFAiAsxjCi3n5P3fwYMQ0DnOm9rIiUELTeI9N6WJXZ
LIIwrwIhAI8eX99hL7q/hiHX4l3xnm1ZGcC9hIdPmDDMnXQfg3d8
-----END CERTIFICATE-----
";

    /// Self-signed, subject `O=petrel tests, OU=no common name`.
    const NO_COMMON_NAME: &str = "-----BEGIN CERTIFICATE-----
MIIBXTCCAQMCFEi6VC3BXx64N4GliVFjVHxCXiEjMAoGCCqGSM49BAMCMDAxFTAT
BgNVBAoMDHBldHJlbCB0ZXN0czEXMBUGA1UECwwObm8gY29tbW9uIG5hbWUwIBcN
MjYxMjAxMjEyOTA4WhgPMjEyNjExMDcyMTI5MDhaMDAxFTATBgNVBAoMDHBldHJl
bCB0ZXN0czEXMBUGA1UECwwObm8gY29tbW9uIG5hbWUwWTATBgcqhkjOPQIBBggq
hkjOPQMBBwNCAAROFvZ0j8vbGcTx4FdF9+lIxmehEWXiJ66jrU3Waj4JMn8NUWtk
BRV9ZUxZryfC/wH145Rh38eBN6vsT1TRfMf0MAoGCCqGSM49BAMCA0gAMEUCIQCT
bY+7/LH1IbPxAOH8h06H6cOjhdcQ8Xq2NchEpCXwaAIgTQ/bvaWTG/xx9kmLdN3D
xFwVKAIdoFw+OzvlOmW0XkY=
-----END CERTIFICATE-----
";

    /// A PRIVATE KEY block whose content is no key at all.
    const NOT_A_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    /// A directory of files for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "petrel-tls-unit-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn missing(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(cert: PathBuf, key: PathBuf) -> TlsFiles {
        TlsFiles {
            cert,
            key,
            client_ca: None,
            require_client_cert: false,
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn identity_is_the_first_common_name_of_the_subject() {
        assert_eq!(
            common_name(&der(TWO_COMMON_NAMES)).as_deref(),
            Some("device-1")
        );
    }

    #[test]
    fn a_subject_without_common_name_gives_no_identity() {
        assert_eq!(common_name(&der(NO_COMMON_NAME)), None);
    }

    #[test]
    fn bytes_that_are_no_certificate_give_no_identity() {
        assert_eq!(
            common_name(&CertificateDer::from(vec![0x30, 0x03, 1])),
            None
        );
    }

    #[test]
    fn a_missing_certificate_file_is_named_in_the_error() {
        let scratch = Scratch::new();
        let cert = scratch.missing("server.crt");
        let error = server_config(&files(cert.clone(), scratch.file("k", NOT_A_KEY))).unwrap_err();
        assert!(
            matches!(&error, TlsError::Read { path, source }
                if *path == cert && source.kind() == std::io::ErrorKind::NotFound),
            "{error:?}"
        );
        assert!(error.to_string().contains("server.crt"), "{error}");
    }

    #[test]
    fn a_certificate_file_without_certificates_is_refused() {
        let scratch = Scratch::new();
        let cert = scratch.file("server.crt", NOT_A_KEY);
        let error = server_config(&files(cert.clone(), scratch.file("k", NOT_A_KEY))).unwrap_err();
        assert!(
            matches!(&error, TlsError::NoCertificate { path } if *path == cert),
            "{error:?}"
        );
        assert!(error.to_string().contains("server.crt"), "{error}");
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let scratch = Scratch::new();
        let key = scratch.file("server.key", TWO_COMMON_NAMES);
        let error =
            server_config(&files(scratch.file("c", TWO_COMMON_NAMES), key.clone())).unwrap_err();
        assert!(
            matches!(&error, TlsError::NoPrivateKey { path } if *path == key),
            "{error:?}"
        );
        assert!(error.to_string().contains("server.key"), "{error}");
    }

    #[test]
    fn a_key_block_that_does_not_parse_is_refused() {
        let scratch = Scratch::new();
        let key = scratch.file("server.key", NOT_A_KEY);
        let error =
            server_config(&files(scratch.file("c", TWO_COMMON_NAMES), key.clone())).unwrap_err();
        assert!(
            matches!(&error, TlsError::UnusableKey { path, .. } if *path == key),
            "{error:?}"
        );
    }

    #[test]
    fn broken_pem_is_refused_with_the_file_named() {
        let scratch = Scratch::new();
        let cert = scratch.file(
            "server.crt",
            "-----BEGIN CERTIFICATE-----\nAAAA\n(no end marker)\n",
        );
        let error = server_config(&files(cert.clone(), scratch.file("k", NOT_A_KEY))).unwrap_err();
        assert!(
            matches!(&error, TlsError::Pem { path, .. } if *path == cert),
            "{error:?}"
        );
    }

    #[test]
    fn a_client_ca_bundle_is_read_certificate_by_certificate() {
        let scratch = Scratch::new();
        let bundle = scratch.file("ca.crt", &format!("{TWO_COMMON_NAMES}{NO_COMMON_NAME}"));
        assert_eq!(read_roots(&bundle).unwrap().len(), 2);
    }

    #[test]
    fn requiring_client_certificates_needs_a_client_ca() {
        let scratch = Scratch::new();
        let mut files = files(scratch.missing("c"), scratch.missing("k"));
        files.require_client_cert = true;
        assert!(matches!(
            server_config(&files),
            Err(TlsError::RequireClientCertWithoutCa)
        ));
    }

    #[test]
    fn an_empty_client_ca_bundle_is_refused() {
        let scratch = Scratch::new();
        let ca = scratch.file("ca.crt", "");
        let error = read_roots(&ca).unwrap_err();
        assert!(
            matches!(&error, TlsError::NoCaCertificate { path } if *path == ca),
            "{error:?}"
        );
        assert!(error.to_string().contains("ca.crt"), "{error}");
    }
}
