//! The files that install petrel: the systemd unit passes
//! `systemd-analyze verify`, the configuration they ship loads, and the
//! container image runs petrel as an unprivileged user.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::scratch::TempDir;
use petrel::Settings;

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(repo_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        // .ci/run installs systemd; a machine without it cannot check.
        eprintln!("systemd-analyze is not installed: unit not verified");
        return;
    }
    // verify insists that ExecStart's program exists: point it at the
    // binary just built, and change nothing else.
    let unit = read("packaging/petrel.service");
    assert!(unit.contains("ExecStart=/usr/bin/petrel serve"), "{unit}");
    let dir = TempDir::new("packaging-unit");
    let path = dir.path().join("petrel.service");
    std::fs::write(&path, unit.replace("/usr/bin/petrel", PETREL)).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = String::from_utf8_lossy(&verified.stderr).into_owned()
        + &String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");
}

#[test]
fn the_unit_runs_as_its_own_user_with_a_state_directory_and_reloads_on_sighup() {
    let unit = read("packaging/petrel.service");
    for line in [
        "User=petrel",
        "StateDirectory=petrel",
        "--data-dir /var/lib/petrel",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l.contains(line)), "{line} in\n{unit}");
    }
}

#[test]
fn the_packaged_configuration_loads_and_listens_on_every_interface() {
    let settings =
        Settings::load(Some(&repo_file("packaging/petrel.toml"))).expect("packaging config loads");
    assert_eq!(settings.listeners[0].bind.to_string(), "0.0.0.0:1883");
    assert_eq!(settings.data_dir, PathBuf::from("/var/lib/petrel"));
    assert!(settings.admin.is_some_and(|a| a.bind.ip().is_loopback()));
}

#[test]
fn the_container_image_runs_petrel_unprivileged_with_the_packaged_configuration() {
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, last)| last)
        .expect("a multi-stage build");
    let lines: Vec<&str> = runtime.lines().map(str::trim).collect();
    let user = lines
        .iter()
        .position(|l| l.starts_with("USER "))
        .expect("the runtime stage names a USER");
    assert_ne!(lines[user], "USER root");
    let entry = lines
        .iter()
        .position(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert!(
        user < entry,
        "the entry point runs as the unprivileged user"
    );
    assert!(lines[entry].contains("\"serve\""), "{}", lines[entry]);
    assert!(runtime.contains("COPY packaging/petrel.toml /etc/petrel/petrel.toml"));
}
