//! The `petrel serve` command as an operator runs it: config file, flags and
//! environment overrides, and refusal of bad settings.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/ports.rs"]
mod ports;

use ports::free_port;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("petrel-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` with its output discarded; stopped when dropped.
fn running(mut command: Command) -> Running {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

/// Runs `command`, which must fail, and returns what it wrote to stderr.
fn refused(mut command: Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Connects with a 3.1.1 CONNECT, retrying while the broker starts, and
/// returns the CONNACK return code.
fn connack_code(port: u16) -> u8 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let connect = [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'c',
            ];
            stream.write_all(&connect).unwrap();
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).unwrap();
            assert_eq!(connack[..2], [0x20, 0x02], "CONNACK expected");
            return connack[3];
        }
        assert!(Instant::now() < deadline, "broker did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_an_unknown_key_and_names_it() {
    let dir = scratch_dir("unknown");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[limits]\nmax_inflihgt = 3\n").unwrap();
    let mut command = Command::new(PETREL);
    command.args(["serve", "-c"]).arg(&config);
    let stderr = refused(command);
    assert!(stderr.contains("max_inflihgt"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_environment_value_and_names_the_key() {
    let mut command = Command::new(PETREL);
    command
        .args(["serve", "-c", "config/petrel.toml"])
        .env("PETREL_LIMITS__MAX_INFLIGHT", "0");
    let stderr = refused(command);
    assert!(stderr.contains("limits.max_inflight"), "{stderr}");
}

#[test]
fn serve_port_flag_and_environment_override_the_config() {
    let dir = scratch_dir("override");
    let port = free_port();
    let mut command = Command::new(PETREL);
    command
        .args(["serve", "-c", "config/petrel.toml", "-p", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("PETREL_ALLOW_ANONYMOUS", "false");
    let _running = running(command);
    // Anonymous clients are refused (3.1.1 code 0x05), so the environment
    // override took effect on the port given by the flag.
    assert_eq!(connack_code(port), 0x05);
    assert!(dir.join("data").is_dir(), "--data-dir is created");
}

#[test]
fn serve_starts_from_any_directory_on_the_embedded_default() {
    let dir = scratch_dir("elsewhere");
    let port = free_port();
    let mut command = Command::new(PETREL);
    command
        .args(["serve", "-p", &port.to_string()])
        .current_dir(&dir);
    let _running = running(command);
    assert_eq!(connack_code(port), 0x00);
    assert!(
        dir.join("data").is_dir(),
        "the embedded default keeps data under ./data of the working directory"
    );
}

#[test]
fn serve_refuses_a_named_config_file_that_does_not_exist() {
    let dir = scratch_dir("missing");
    let mut command = Command::new(PETREL);
    command
        .args(["serve", "-c", "nowhere.toml"])
        .current_dir(&dir);
    let stderr = refused(command);
    assert!(stderr.contains("nowhere.toml"), "{stderr}");
}

#[test]
fn serve_runs_on_the_default_config() {
    let dir = scratch_dir("default");
    let port = free_port();
    let mut command = Command::new(PETREL);
    command
        .args(["serve", "-p", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        // The log filter override is not a setting and must not be refused
        // as one.
        .env("PETREL_LOG", "petrel=debug");
    let _running = running(command);
    assert_eq!(connack_code(port), 0x00);
}
