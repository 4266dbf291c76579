//! The real `petrel` binary with `[[bridges]]` in its config file: started
//! in a scratch directory on a port of its own, SIGKILLed and started again
//! on the same data directory and port, or run on a config it must refuse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::client::Protocol;
use crate::support::{POLL, TempDir, WAIT, accepts, free_port, loopback};

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// One `[[bridges]]` entry.
pub struct Bridge {
    name: String,
    /// The `address` value, in TOML syntax.
    address: String,
    protocol: Protocol,
    settings: Vec<String>,
    rules: Vec<String>,
}

impl Bridge {
    /// A bridge named `name` to `address` speaking `protocol`, retrying
    /// quickly (`restart_backoff = [1, 2]`) so that reconnects after an
    /// outage take about a second, not the default's up to 30.
    pub fn new(name: &str, address: SocketAddr, protocol: Protocol) -> Bridge {
        Bridge::with_addresses(name, &[address], protocol)
    }

    /// `new`, with `addresses` in failover order (written as a TOML array).
    pub fn with_addresses(name: &str, addresses: &[SocketAddr], protocol: Protocol) -> Bridge {
        let address = match addresses {
            [one] => toml_string(&one.to_string()),
            many => {
                let items: Vec<String> = many.iter().map(|a| toml_string(&a.to_string())).collect();
                format!("[{}]", items.join(", "))
            }
        };
        Bridge {
            name: name.to_string(),
            address,
            protocol,
            settings: vec!["restart_backoff = [1, 2]".to_string()],
            rules: Vec::new(),
        }
    }

    /// Adds a topic rule: `{ pattern, direction, qos, local_prefix,
    /// remote_prefix }`.
    pub fn rule(
        mut self,
        pattern: &str,
        direction: &str,
        qos: u8,
        local_prefix: &str,
        remote_prefix: &str,
    ) -> Bridge {
        self.rules.push(format!(
            "{{ pattern = {}, direction = {}, qos = {qos}, local_prefix = {}, remote_prefix = {} }}",
            toml_string(pattern),
            toml_string(direction),
            toml_string(local_prefix),
            toml_string(remote_prefix),
        ));
        self
    }

    /// Adds a rule written out as a TOML inline table, for rules the
    /// typed [`Bridge::rule`] cannot express (invalid ones).
    pub fn raw_rule(mut self, inline_table: &str) -> Bridge {
        self.rules.push(inline_table.to_string());
        self
    }

    /// Adds a `key = value` line (value already in TOML syntax), in place
    /// of any earlier one for `key` (`restart_backoff`, set by `new`).
    pub fn setting(mut self, key: &str, value: &str) -> Bridge {
        let line = format!("{key} = ");
        self.settings.retain(|setting| !setting.starts_with(&line));
        self.settings.push(format!("{key} = {value}"));
        self
    }

    pub fn toml(&self) -> String {
        let protocol = match self.protocol {
            Protocol::V5 => "mqttv5",
            Protocol::V311 => "mqttv311",
        };
        let mut text = format!(
            "\n[[bridges]]\nname = {}\naddress = {}\nprotocol = \"{protocol}\"\n",
            toml_string(&self.name),
            self.address,
        );
        for setting in &self.settings {
            text.push_str(setting);
            text.push('\n');
        }
        text.push_str("topics = [\n");
        for rule in &self.rules {
            text.push_str("  ");
            text.push_str(rule);
            text.push_str(",\n");
        }
        text.push_str("]\n");
        text
    }
}

/// A petrel with `durability = "sync"` (the default) and bridges. Dropping
/// it kills the process and removes its directory; during a panic its log is
/// printed first, so a failing test shows what petrel saw.
pub struct Petrel {
    name: String,
    dir: TempDir,
    port: u16,
    admin_port: Option<u16>,
    child: Option<Child>,
    starts: u32,
}

impl Petrel {
    /// Starts petrel with `bridges` and waits until it accepts connections.
    pub async fn start(name: &str, bridges: &[Bridge]) -> Petrel {
        let mut petrel = Petrel::launch(name, bridges, false);
        petrel.wait_accepting(POLL).await;
        petrel
    }

    /// `start`, with the admin API on a loopback port of its own.
    pub async fn start_with_admin(name: &str, bridges: &[Bridge]) -> Petrel {
        let mut petrel = Petrel::launch(name, bridges, true);
        petrel.wait_accepting(POLL).await;
        petrel
    }

    /// Starts petrel with `bridges` and returns once it accepts
    /// connections, asking every millisecond: the caller's next connection
    /// comes as early as a client's could.
    pub async fn start_eagerly(name: &str, bridges: &[Bridge]) -> Petrel {
        let mut petrel = Petrel::launch(name, bridges, false);
        petrel.wait_accepting(Duration::from_millis(1)).await;
        petrel
    }

    fn launch(name: &str, bridges: &[Bridge], admin: bool) -> Petrel {
        let dir = TempDir::new(&format!("{name}-petrel"));
        let port = free_port();
        let admin_port = admin.then(free_port);
        let mut config = format!(
            "durability = \"sync\"\n\
             \n\
             [[listeners]]\n\
             bind = \"127.0.0.1:{port}\"\n\
             \n\
             [limits]\n\
             max_queued_messages = 1000000\n\
             \n\
             [log]\n\
             level = \"info\"\n"
        );
        if let Some(admin_port) = admin_port {
            config.push_str(&format!("\n[admin]\nbind = \"127.0.0.1:{admin_port}\"\n"));
        }
        for bridge in bridges {
            config.push_str(&bridge.toml());
        }
        std::fs::write(dir.path().join("petrel.toml"), config).expect("write petrel.toml");
        let mut petrel = Petrel {
            name: name.to_string(),
            dir,
            port,
            admin_port,
            child: None,
            starts: 0,
        };
        petrel.spawn();
        petrel
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin_port.expect("petrel started with the admin API"))
    }

    /// SIGKILL: petrel gets no chance to flush or close anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// A new process on the same config, data directory and port, once it
    /// accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "petrel is still running");
        self.spawn();
        self.wait_accepting(POLL).await;
    }

    /// Everything every process of this petrel wrote.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|n| std::fs::read_to_string(self.log_path(n)).ok())
            .collect()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("petrel-{start}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("create the log");
        let log_too = log.try_clone().expect("share the log");
        let mut command = petrel_command(self.dir.path().join("petrel.toml"));
        command
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .stdout(log)
            .stderr(log_too)
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("spawn petrel"));
    }

    /// Waits until the process accepts connections, trying every `poll`.
    async fn wait_accepting(&mut self, poll: Duration) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "petrel {} exited at start ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            if accepts(self.addr()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "petrel {} did not accept connections on {} within {WAIT:?}:\n{}",
                self.name,
                self.addr(),
                self.log()
            );
            sleep(poll).await;
        }
    }
}

impl Drop for Petrel {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() || crate::support::show_logs() {
            eprintln!(
                "===== petrel {} log =====\n{}===== end of petrel {} log =====",
                self.name,
                self.log(),
                self.name
            );
        }
    }
}

/// `petrel serve -c config`, without the harness's own PETREL_* variables
/// (every one is a setting to petrel).
fn petrel_command(config: PathBuf) -> Command {
    let mut command = Command::new(PETREL);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PETREL_") {
            command.env_remove(key);
        }
    }
    command
        .arg("serve")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null());
    command
}

/// Runs `petrel serve -c FILE` on `config` (a whole config file), which
/// must refuse to start: returns the exit code and everything it wrote to
/// stdout and stderr. Fails the test if petrel is still running after
/// [`WAIT`] (it started).
pub async fn serve_refuses(name: &str, config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new(&format!("{name}-refused"));
    let file = dir.path().join("petrel.toml");
    std::fs::write(&file, config).expect("write petrel.toml");
    let mut command = petrel_command(file);
    command
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn petrel");
    let output = timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("petrel started on an invalid config (still running after {WAIT:?}):\n{config}")
        })
        .expect("wait for petrel");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "petrel exited successfully on an invalid config:\n{config}\noutput:\n{text}"
    );
    (output.status.code(), text)
}

/// The listener section a config for [`serve_refuses`] needs.
pub fn listener_config() -> String {
    format!(
        "[[listeners]]\nbind = \"127.0.0.1:{}\"\n\n[log]\nlevel = \"info\"\n",
        free_port()
    )
}
