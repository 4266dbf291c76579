//! A real Mosquitto (`/usr/sbin/mosquitto`) as the remote end of a bridge:
//! a plain listener for the test clients, optionally a TLS listener for the
//! bridge, persistence in a scratch directory, and stop / kill / restart on
//! the same ports.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::support::{
    Certs, POLL, TempDir, WAIT, accepts, current_user, free_port, loopback, signal,
};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The TLS listener of a Mosquitto.
pub struct TlsListener {
    pub port: u16,
    /// Whether the listener insists on a client certificate signed by the
    /// CA (mutual TLS).
    pub require_certificate: bool,
}

/// A running (or stopped) Mosquitto with its scratch directory. Dropping it
/// kills the process and removes the directory; during a panic its log is
/// printed first, so a failing test shows what Mosquitto saw.
pub struct Mosquitto {
    name: String,
    dir: TempDir,
    port: u16,
    tls: Option<TlsListener>,
    child: Option<Child>,
    starts: u32,
}

impl Mosquitto {
    /// A Mosquitto with one plain listener, persistence on (saved when it is
    /// stopped, see [`Mosquitto::stop`]), waiting until it accepts
    /// connections.
    pub async fn start(name: &str) -> Mosquitto {
        Mosquitto::start_with(name, None, "").await
    }

    /// `start`, with `extra` (whole lines of mosquitto.conf) at the end of
    /// the config: a `connection` section for a bridge of Mosquitto's own,
    /// for instance.
    pub async fn start_with_config(name: &str, extra: &str) -> Mosquitto {
        Mosquitto::start_with(name, None, extra).await
    }

    /// A Mosquitto with a plain listener and a TLS listener using `certs`'
    /// server certificate, asking for client certificates signed by its CA
    /// when `require_certificate`.
    pub async fn start_tls(name: &str, certs: &Certs, require_certificate: bool) -> Mosquitto {
        let tls = TlsListener {
            port: free_port(),
            require_certificate,
        };
        Mosquitto::start_with(name, Some((tls, certs)), "").await
    }

    async fn start_with(name: &str, tls: Option<(TlsListener, &Certs)>, extra: &str) -> Mosquitto {
        assert!(
            std::path::Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is needed by the bridge tests"
        );
        let dir = TempDir::new(&format!("{name}-mosquitto"));
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create Mosquitto's data directory");
        // Started as root, Mosquitto would switch to user "mosquitto", who
        // cannot read this scratch directory: stay who we are.
        let mut config = format!(
            "per_listener_settings false\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             max_queued_messages 100000\n\
             max_queued_bytes 0\n\
             user {}\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             log_timestamp_format %H:%M:%S\n\
             listener {port} 127.0.0.1\n",
            data.display(),
            current_user(),
        );
        let tls = tls.map(|(listener, certs)| {
            write!(
                config,
                "listener {} 127.0.0.1\n\
                 cafile {}\n\
                 certfile {}\n\
                 keyfile {}\n\
                 require_certificate {}\n",
                listener.port,
                certs.file("ca.crt").display(),
                certs.file("server.crt").display(),
                certs.file("server.key").display(),
                listener.require_certificate,
            )
            .expect("format the config");
            listener
        });
        config.push_str(extra);
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("write mosquitto.conf");
        let mut mosquitto = Mosquitto {
            name: name.to_string(),
            dir,
            port,
            tls,
            child: None,
            starts: 0,
        };
        mosquitto.spawn().await;
        mosquitto
    }

    /// The plain listener, for the test clients (and plain bridges).
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        loopback(self.tls.as_ref().expect("a Mosquitto with TLS").port)
    }

    /// SIGTERM, and waits until Mosquitto has exited: it saves its
    /// persistent sessions (subscriptions and queued messages) on the way
    /// out, so [`Mosquitto::restart`] brings them back. For the bridge the
    /// remote is just gone: its connection closes.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("a running Mosquitto");
        signal(child.id().expect("not yet reaped"), libc::SIGTERM);
        match timeout(WAIT, child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("cannot wait for Mosquitto: {e}"),
            Err(_) => panic!("Mosquitto did not exit within {WAIT:?} of SIGTERM"),
        }
    }

    /// SIGKILL: Mosquitto gets no chance to save anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// A new Mosquitto on the same config, ports and data directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "Mosquitto is still running");
        self.spawn().await;
    }

    /// Everything every Mosquitto process of this test wrote.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|n| std::fs::read_to_string(self.log_path(n)).ok())
            .collect()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("mosquitto-{start}.log"))
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("create the log");
        let log_too = log.try_clone().expect("share the log");
        let path = format!(
            "/usr/sbin:{}",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO}: {e}"));
        self.child = Some(child);
        let mut ports = vec![self.port];
        ports.extend(self.tls.as_ref().map(|tls| tls.port));
        let deadline = Instant::now() + WAIT;
        for port in ports {
            loop {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    panic!(
                        "Mosquitto {} exited at start ({status}):\n{}",
                        self.name,
                        self.log()
                    );
                }
                if accepts(loopback(port)).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Mosquitto {} did not listen on port {port} within {WAIT:?}:\n{}",
                    self.name,
                    self.log()
                );
                sleep(POLL).await;
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() || crate::support::show_logs() {
            eprintln!(
                "===== Mosquitto {} log =====\n{}===== end of Mosquitto {} log =====",
                self.name,
                self.log(),
                self.name
            );
        }
    }
}
