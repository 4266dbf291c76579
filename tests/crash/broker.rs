//! The real `petrel` binary as a child process that a test can SIGKILL and
//! start again on the same data directory and port.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use crate::XorShift;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// How long a start (including recovery of the data directory) may take
/// before the broker accepts connections.
const START: Duration = Duration::from_secs(10);

/// A running broker, its scratch directory (config, data, logs) and port.
/// Dropping it kills the process and removes the directory, so a failing
/// test leaves neither behind.
pub struct BrokerProcess {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl BrokerProcess {
    /// Starts a broker with `durability = "sync"` in a fresh directory and
    /// waits until it accepts connections.
    pub async fn start(name: &str) -> BrokerProcess {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "petrel-crash-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        let port = free_port();
        // A deep queue, so that no acknowledged message is ever dropped for
        // want of room (the queue policy) and mistaken for a lost one.
        let config = format!(
            "durability = \"sync\"\n\
             [[listeners]]\n\
             bind = \"127.0.0.1:{port}\"\n\
             [limits]\n\
             max_queued_messages = 1000000\n\
             [log]\n\
             level = \"warn\"\n"
        );
        std::fs::write(dir.join("petrel.toml"), config).expect("write the config file");
        let mut broker = BrokerProcess {
            dir,
            port,
            child: None,
            starts: 0,
        };
        broker.spawn().await;
        broker
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, so the broker gets no chance to flush or close anything,
    /// then a new process on the same directory and port.
    pub async fn kill_and_restart(&mut self) -> Duration {
        self.kill();
        let started = Instant::now();
        self.spawn().await;
        started.elapsed()
    }

    /// Everything the broker processes wrote (warnings and errors only).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|n| std::fs::read_to_string(self.log_path(n)).ok())
            .collect()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.join(format!("broker-{start}.log"))
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).expect("create the broker log");
        let log_too = log.try_clone().expect("share the broker log");
        // Every PETREL_* variable is a setting to petrel: the harness's own
        // must not reach it.
        let child = Command::new(PETREL)
            .env_remove("PETREL_TEST_BROKER")
            .arg("serve")
            .arg("-c")
            .arg(self.dir.join("petrel.toml"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .expect("spawn petrel");
        self.child = Some(child);
        self.wait_until_listening().await;
    }

    async fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "petrel exited at start ({status}):\n{}",
                    std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
                );
            }
            let probe = timeout(Duration::from_secs(1), TcpStream::connect(self.addr())).await;
            if let Ok(Ok(_)) = probe {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "petrel did not accept connections on {} within {START:?}",
                self.addr()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port below the ephemeral range. While the broker is down, clients
/// keep dialling its port; were it an ephemeral port, the kernel could give
/// one of those very sockets (or any other process's) that port as its local
/// port, and a loopback connect can then even connect to itself, leaving the
/// restarted broker unable to bind.
fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_start > LOWEST + 1000 {
        let mut rng = XorShift::from_clock();
        for _ in 0..200 {
            let port = LOWEST + (rng.below(u64::from(ephemeral_start - LOWEST)) as u16);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}
