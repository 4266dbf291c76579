//! SIGHUP on the real binary: the configuration is read again, the log
//! level applies at once, changes that need a restart are named in the
//! log, and a configuration that no longer loads changes nothing.

mod common;
mod raw;

use std::process::Stdio;
use std::time::Duration;

use common::ports::free_port;
use common::scratch::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

fn config(port: u16, level: &str, extra: &str) -> String {
    format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[log]\nlevel = \"{level}\"\n{extra}")
}

struct Petrel {
    child: Child,
    log: Lines<BufReader<ChildStdout>>,
}

impl Petrel {
    /// Reads log lines until one contains `wanted`; fails after 10 s.
    async fn log_line(&mut self, wanted: &str) -> String {
        timeout(Duration::from_secs(10), async {
            loop {
                let line = self
                    .log
                    .next_line()
                    .await
                    .unwrap()
                    .expect("petrel still runs");
                if line.contains(wanted) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {wanted:?}"))
    }

    fn hang_up(&self) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

async fn start(file: &std::path::Path, data: &std::path::Path) -> Petrel {
    let mut child = Command::new(PETREL)
        .args(["serve", "-c"])
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .env_remove("PETREL_LOG")
        .env_remove("PETREL_TEST_BROKER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = BufReader::new(child.stdout.take().unwrap()).lines();
    Petrel { child, log }
}

#[tokio::test]
async fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = TempDir::new("reload-sighup");
    let port = free_port();
    let file = dir.path().join("petrel.toml");
    std::fs::write(&file, config(port, "info", "")).unwrap();
    let mut petrel = start(&file, &dir.path().join("data")).await;
    petrel.log_line("listening").await;

    // Down to warn: a connection is no longer logged.
    std::fs::write(&file, config(port, "warn", "[limits]\nmax_inflight = 7\n")).unwrap();
    petrel.hang_up();
    let restart = petrel.log_line("applied only at the next start").await;
    assert!(restart.contains("limits"), "{restart}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    drop(raw::connect_v311(addr, "quiet").await);

    // Back up to info: the next connection is logged, the quiet one was not.
    std::fs::write(&file, config(port, "info", "[limits]\nmax_inflight = 7\n")).unwrap();
    petrel.hang_up();
    petrel.log_line("log level applied").await;
    drop(raw::connect_v311(addr, "loud").await);
    let connected = petrel.log_line("client connected").await;
    assert!(connected.contains("loud"), "{connected}");

    // A file that no longer loads changes nothing and says so.
    std::fs::write(&file, "this is not toml [").unwrap();
    petrel.hang_up();
    petrel.log_line("configuration not reloaded").await;
    drop(raw::connect_v311(addr, "still").await);
    assert!(petrel.log_line("client connected").await.contains("still"));
}
