//! The real `petrel` binary as a child process that a test can SIGKILL and
//! start again on the same data directory and port. Shared by the test
//! binaries that crash a broker; each uses a part, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use crate::rng::XorShift;

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
        BrokerProcess::start_with(name, "", |_| {}).await
    }

    /// `start`, with `settings` (top-level TOML lines) added to the config,
    /// and `prepare` run on the scratch directory before the first start.
    pub async fn start_with(
        name: &str,
        settings: &str,
        prepare: impl FnOnce(&Path),
    ) -> BrokerProcess {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "petrel-crash-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        let port = free_port();
        // Small log segments, so that kills land during segment rolls too.
        // A deep queue, so that no acknowledged message is ever dropped for
        // want of room (the queue policy) and mistaken for a lost one.
        let config = format!(
            "durability = \"sync\"\n\
             log_segment_bytes = 65536\n\
             {settings}\n\
             [[listeners]]\n\
             bind = \"127.0.0.1:{port}\"\n\
             [limits]\n\
             max_queued_messages = 1000000\n\
             [log]\n\
             level = \"warn\"\n"
        );
        std::fs::write(dir.join("petrel.toml"), config).expect("write the config file");
        prepare(&dir);
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

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// SIGKILL, and nothing else until `restart` or `start_fails`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new process on the same directory and port, once it accepts
    /// connections.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// Starts a process that is expected to refuse to start: waits for it
    /// to exit and returns what it wrote.
    pub fn start_fails(&mut self) -> String {
        self.starts += 1;
        let output = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run petrel");
        assert!(!output.status.success(), "petrel started on a damaged log");
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout)
    }

    /// SIGTERM, and the exit status once the process is gone.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running broker");
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill(1)");
        child.wait().expect("wait for petrel")
    }

    /// Everything the broker processes wrote (warnings and errors only).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|n| std::fs::read_to_string(self.log_path(n)).ok())
            .collect()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.join(format!("broker-{start}.log"))
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).expect("create the broker log");
        let log_too = log.try_clone().expect("share the broker log");
        let child = self
            .command()
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .expect("spawn petrel");
        self.child = Some(child);
        self.wait_until_listening().await;
    }

    fn command(&self) -> Command {
        let mut command = Command::new(PETREL);
        // Every PETREL_* variable is a setting to petrel: the harness's own
        // must not reach it.
        command
            .env_remove("PETREL_TEST_BROKER")
            .arg("serve")
            .arg("-c")
            .arg(self.dir.join("petrel.toml"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null());
        command
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
