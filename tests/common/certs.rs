//! Certificates made by `certs/make-dev-certs.sh` in a scratch directory,
//! and rustls client configurations that trust them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use petrel::transport::tls::TlsFiles;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::scratch::TempDir;

/// One run of `make-dev-certs.sh` in a directory of its own.
pub struct Certs(pub TempDir);

impl Certs {
    pub fn new(name: &str, args: &[&str]) -> Certs {
        let dir = TempDir::new(name);
        run_script(dir.path(), args);
        Certs(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Server certificate and key; clients are not asked for certificates.
    pub fn server(&self) -> TlsFiles {
        TlsFiles {
            cert: self.file("server.crt"),
            key: self.file("server.key"),
            client_ca: None,
            require_client_cert: false,
        }
    }

    /// Server certificate and key, checking client certificates against
    /// this run's CA.
    pub fn mutual(&self, require_client_cert: bool) -> TlsFiles {
        TlsFiles {
            client_ca: Some(self.file("ca.crt")),
            require_client_cert,
            ..self.server()
        }
    }

    /// A client that trusts this run's CA and has no certificate.
    pub fn client(&self) -> Arc<ClientConfig> {
        client_config(&self.file("ca.crt"), None)
    }

    /// A client that trusts `trusted`'s CA and presents this run's client
    /// certificate.
    pub fn client_with_cert(&self, trusted: &Certs) -> Arc<ClientConfig> {
        client_config(
            &trusted.file("ca.crt"),
            Some((&self.file("client.crt"), &self.file("client.key"))),
        )
    }
}

pub fn run_script(dir: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/make-dev-certs.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .arg(dir)
        .output()
        .expect("run make-dev-certs.sh");
    assert!(
        output.status.success(),
        "make-dev-certs.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}
