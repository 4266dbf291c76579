//! `petrel passwd` as an operator runs it, and password files moving between
//! petrel and Mosquitto's `mosquitto_passwd` in both directions.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::scratch::TempDir;
use petrel::auth::password::{PasswordFile, Verdict};

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");
const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

fn petrel_passwd(args: &[&str]) -> Output {
    Command::new(PETREL)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn succeeds(args: &[&str]) {
    let output = petrel_passwd(args);
    assert!(
        output.status.success(),
        "petrel passwd {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `petrel passwd`, which must exit with code 1; returns its stderr.
fn fails(args: &[&str]) -> String {
    let output = petrel_passwd(args);
    assert_eq!(output.status.code(), Some(1), "petrel passwd {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `mosquitto_passwd`, or `None` (with the reason printed) where it is not
/// installed.
fn mosquitto_passwd() -> Option<Command> {
    if Path::new(MOSQUITTO_PASSWD).exists() {
        Some(Command::new(MOSQUITTO_PASSWD))
    } else {
        eprintln!("skipped: {MOSQUITTO_PASSWD} is not installed");
        None
    }
}

/// A file with Mosquitto 2's default hash for `m2`/`pass2` and its 1.x hash
/// for `m1`/`pass1`, written by the real tool.
fn mosquitto_file(dir: &TempDir) -> Option<PathBuf> {
    let path = dir.path().join("mosquitto.pw");
    for args in [
        vec!["-c", "-b", text(&path), "m2", "pass2"],
        vec!["-H", "sha512", "-b", text(&path), "m1", "pass1"],
    ] {
        let status = mosquitto_passwd()?.args(&args).status().unwrap();
        assert!(status.success(), "mosquitto_passwd {args:?}");
    }
    Some(path)
}

#[test]
fn created_file_verifies_and_carries_scram_credentials() {
    let dir = TempDir::new("passwd-create");
    let path = dir.path().join("pw");
    succeeds(&["-c", "-b", text(&path), "alice", "s3cret"]);

    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("alice", b"s3cret"), Verdict::Accepted);
    assert_eq!(file.verify("alice", b"s3cret "), Verdict::WrongPassword);
    assert_eq!(file.scram_credentials("alice").unwrap().iterations, 4096);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("alice:$argon2id$")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn second_user_is_added_and_delete_removes_only_its_user() {
    let dir = TempDir::new("passwd-add");
    let path = dir.path().join("pw");
    std::fs::write(&path, "# brokers' users\n").unwrap();
    succeeds(&["-b", text(&path), "alice", "a"]);
    succeeds(&["-b", text(&path), "bob", "b"]);

    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.users().collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(file.verify("alice", b"a"), Verdict::Accepted);
    assert_eq!(file.verify("bob", b"b"), Verdict::Accepted);

    succeeds(&["-D", text(&path), "alice"]);
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.users().collect::<Vec<_>>(), ["bob"]);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("# brokers' users\nbob:")
    );
}

#[test]
fn changing_a_password_replaces_the_old_one() {
    let dir = TempDir::new("passwd-change");
    let path = dir.path().join("pw");
    succeeds(&["-c", "-b", text(&path), "alice", "old"]);
    succeeds(&["-b", text(&path), "alice", "new"]);
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.users().count(), 1);
    assert_eq!(file.verify("alice", b"new"), Verdict::Accepted);
    assert_eq!(file.verify("alice", b"old"), Verdict::WrongPassword);
}

#[test]
fn password_is_read_from_standard_input_when_it_is_not_a_terminal() {
    let dir = TempDir::new("passwd-stdin");
    let path = dir.path().join("pw");
    let mut child = Command::new(PETREL)
        .args(["passwd", "-c", text(&path), "carol"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"from a pipe\n").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("carol", b"from a pipe"), Verdict::Accepted);
}

#[test]
fn mistakes_fail_with_a_message_naming_the_file() {
    let dir = TempDir::new("passwd-errors");
    let path = dir.path().join("pw");
    let missing = fails(&["-b", text(&path), "alice", "a"]);
    assert!(
        missing.contains(text(&path)) && missing.contains("-c"),
        "{missing}"
    );
    assert!(!path.exists());

    succeeds(&["-c", "-b", text(&path), "alice", "a"]);
    let before = std::fs::read(&path).unwrap();
    let unknown = fails(&["-D", text(&path), "bob"]);
    assert!(
        unknown.contains(text(&path)) && unknown.contains("bob"),
        "{unknown}"
    );
    let colon = fails(&["-b", text(&path), "a:b", "x"]);
    assert!(
        colon.contains(text(&path)) && colon.contains("':'"),
        "{colon}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is untouched"
    );

    std::fs::write(&path, "alice:plaintext\n").unwrap();
    let broken = fails(&["-b", text(&path), "bob", "b"]);
    assert!(
        broken.contains(text(&path)) && broken.contains("line 1"),
        "{broken}"
    );
}

#[test]
fn file_written_by_mosquitto_passwd_verifies_unchanged() {
    let dir = TempDir::new("passwd-mosquitto");
    let Some(path) = mosquitto_file(&dir) else {
        return;
    };
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("m2", b"pass2"), Verdict::Accepted);
    assert_eq!(file.verify("m2", b"pass1"), Verdict::WrongPassword);
    assert_eq!(file.verify("m1", b"pass1"), Verdict::Accepted);
    assert_eq!(file.verify("m1", b"pass2"), Verdict::WrongPassword);
    assert_eq!(file.verify("m3", b"pass2"), Verdict::UnknownUser);
    assert_eq!(file.scram_credentials("m2"), None);
}

#[test]
fn file_mixing_mosquitto_and_petrel_entries_loads() {
    let dir = TempDir::new("passwd-mixed");
    let Some(path) = mosquitto_file(&dir) else {
        return;
    };
    let mosquitto_lines = std::fs::read_to_string(&path).unwrap();
    succeeds(&["-b", text(&path), "p", "petrel's"]);

    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.starts_with(&mosquitto_lines),
        "Mosquitto's lines are kept as they were"
    );
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("m2", b"pass2"), Verdict::Accepted);
    assert_eq!(file.verify("m1", b"pass1"), Verdict::Accepted);
    assert_eq!(file.verify("p", b"petrel's"), Verdict::Accepted);
    assert!(file.scram_credentials("p").is_some());
}

/// On a terminal the password is asked for twice and not echoed.
#[cfg(unix)]
#[test]
fn terminal_prompt_does_not_echo_the_password() {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::mpsc;

    let dir = TempDir::new("passwd-tty");
    let path = dir.path().join("pw");
    let (mut controller, terminal) = {
        let (mut controller, mut terminal) = (0, 0);
        // SAFETY: both pointers are to live ints; name, termios and window
        // size may be null.
        let opened = unsafe {
            libc::openpty(
                &mut controller,
                &mut terminal,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty just opened both descriptors and nothing else owns them.
        unsafe {
            (
                std::fs::File::from(OwnedFd::from_raw_fd(controller)),
                OwnedFd::from_raw_fd(terminal),
            )
        }
    };
    let mut child = Command::new(PETREL)
        .args(["passwd", "-c", text(&path), "dave"])
        .stdin(terminal.try_clone().unwrap())
        .stderr(terminal.try_clone().unwrap())
        .stdout(terminal)
        .spawn()
        .unwrap();
    // The controller side reads what the terminal shows, on a thread, so the
    // test can wait for each prompt with a deadline.
    let (shown_tx, shown) = mpsc::channel::<Vec<u8>>();
    let mut reader = controller.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 256];
        while let Ok(n @ 1..) = reader.read(&mut buffer) {
            if shown_tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let mut wait_for = |expected: &str| {
        while !String::from_utf8_lossy(&screen).contains(expected) {
            let chunk = shown.recv_timeout(common::WAIT).unwrap_or_else(|_| {
                panic!("no {expected:?} on the terminal: {screen:?}");
            });
            screen.extend(chunk);
        }
    };
    wait_for("Password: ");
    controller.write_all(b"typed unseen\n").unwrap();
    wait_for("Reenter password: ");
    controller.write_all(b"typed unseen\n").unwrap();
    assert!(child.wait().unwrap().success());
    // With the child gone no one holds the terminal side, so the reader
    // ends once it has passed on everything shown.
    while let Ok(chunk) = shown.recv_timeout(common::WAIT) {
        screen.extend(chunk);
    }
    assert!(
        !String::from_utf8_lossy(&screen).contains("unseen"),
        "{screen:?}"
    );
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("dave", b"typed unseen"), Verdict::Accepted);
}
