//! The password file, in Mosquitto's format so that a file moves between the
//! two brokers: one `user:hash` per line; blank lines and lines starting with
//! `#` are ignored, and kept as they are when petrel rewrites the file.
//!
//! The hashes petrel reads:
//! - `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`, a PHC string: what
//!   `petrel passwd` writes (argon2i and argon2d strings verify too);
//! - `$7$<iterations>$<salt>$<hash>`, Mosquitto 2's default: PBKDF2 with
//!   HMAC-SHA-512 and a 64-byte output, salt and hash in padded base64;
//! - `$6$<salt>$<hash>`, Mosquitto 1.x: SHA-512 of the password followed by
//!   the salt.
//!
//! Lines petrel writes carry a third field, the SCRAM-SHA-256 credentials
//! that MQTT 5 enhanced authentication checks against:
//!
//! ```text
//! user:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>:$scram-sha-256$<iterations>$<salt>$<StoredKey>$<ServerKey>
//! ```
//!
//! with salt and keys in padded base64. No hash or base64 text contains `:`,
//! so the fields split unambiguously. A line without the third field (every
//! line Mosquitto writes) still checks passwords; its user just cannot use
//! SCRAM until `petrel passwd` sets the password again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};

use super::scram::{self, ScramCredentials, constant_time_eq};

const SCRAM_SCHEME: &str = "$scram-sha-256$";

/// Mosquitto's hashes are 64 bytes: SHA-512, or PBKDF2 asked for 64.
const MOSQUITTO_HASH_LEN: usize = 64;

/// Checked against when the user is unknown, so that the answer takes as
/// long as a wrong password for a user petrel created. Salt and hash are
/// arbitrary; no password matches them on purpose.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$cGV0cmVsIGRlY295IHNhbHQ\
                          $AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The outcome of checking a CONNECT's user name and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    WrongPassword,
    UnknownUser,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("password file {}, line {line}: {problem}", shown(.path))]
    Line {
        path: Option<PathBuf>,
        line: usize,
        problem: LineProblem,
    },
    #[error("cannot write password file {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "user name {0:?} cannot be stored: it must be non-empty, not start with '#' or a \
         blank, and contain no ':' or control characters"
    )]
    InvalidUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("cannot get random bytes for a salt: {0}")]
    Random(getrandom::Error),
}

fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(|| "(text)".to_string(), |path| path.display().to_string())
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected user:hash")]
    NoSeparator,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("user {user:?} is already defined on line {first}")]
    DuplicateUser { user: String, first: usize },
    #[error("unknown kind of hash (petrel reads $argon2id$, $7$ and $6$)")]
    UnknownHash,
    #[error("malformed {0} hash")]
    MalformedHash(&'static str),
    #[error("malformed SCRAM-SHA-256 credentials")]
    MalformedScram,
    #[error("unexpected text after the SCRAM-SHA-256 credentials")]
    ExtraField,
}

/// A password file in memory: every line in order, so that rewriting it
/// changes only the entries that were set or deleted.
#[derive(Debug, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// User name to index in `lines`.
    users: HashMap<String, usize>,
}

#[derive(Debug)]
enum Line {
    /// Blank or comment.
    Other(String),
    Entry(Entry),
}

#[derive(Debug)]
struct Entry {
    user: String,
    /// The line as read, or as rendered when set.
    text: String,
    hash: Hash,
    scram: Option<ScramCredentials>,
}

#[derive(Debug)]
enum Hash {
    Argon2(Box<PasswordHash>),
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    SaltedSha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// A password hashed for storage: argon2id for the password in CONNECT, and
/// SCRAM-SHA-256 credentials for enhanced authentication.
#[derive(Debug)]
pub struct Credentials {
    hash: PasswordHash,
    scram: ScramCredentials,
}

impl Credentials {
    /// Hashes with the argon2 crate's default argon2id parameters (19 MiB,
    /// two passes, one lane: OWASP's minimum) and
    /// [`scram::DEFAULT_ITERATIONS`]. Slow by design.
    pub fn new(password: &[u8]) -> Result<Credentials, PasswordFileError> {
        Credentials::with_cost(
            password,
            argon2::Params::default(),
            scram::DEFAULT_ITERATIONS,
        )
    }

    /// Hashes with chosen costs, for tests and for operators who tune them.
    pub fn with_cost(
        password: &[u8],
        argon2: argon2::Params,
        scram_iterations: u32,
    ) -> Result<Credentials, PasswordFileError> {
        let hash = Argon2::from(argon2)
            .hash_password(password)
            .map_err(PasswordFileError::Hash)?;
        let scram = ScramCredentials::generate(password, scram_iterations)
            .map_err(PasswordFileError::Random)?;
        Ok(Credentials { hash, scram })
    }
}

impl PasswordFile {
    pub fn new() -> PasswordFile {
        PasswordFile::default()
    }

    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PasswordFile::parse_named(&text, Some(path))
    }

    /// Reads a whole file's text. Every hash is checked for form here, so
    /// that a typo shows when the file is loaded, not when its user logs in.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        PasswordFile::parse_named(text, None)
    }

    fn parse_named(text: &str, path: Option<&Path>) -> Result<PasswordFile, PasswordFileError> {
        let mut file = PasswordFile::new();
        for (index, line) in text.lines().enumerate() {
            let failed = |problem| PasswordFileError::Line {
                path: path.map(Path::to_path_buf),
                line: index + 1,
                problem,
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                file.lines.push(Line::Other(line.to_string()));
                continue;
            }
            let entry = parse_entry(line).map_err(failed)?;
            if let Some(&first) = file.users.get(&entry.user) {
                return Err(failed(LineProblem::DuplicateUser {
                    user: entry.user,
                    first: first + 1,
                }));
            }
            file.users.insert(entry.user.clone(), index);
            file.lines.push(Line::Entry(entry));
        }
        Ok(file)
    }

    /// Checks a password. An argon2 check costs tens of milliseconds of CPU
    /// and megabytes of memory on purpose, to slow down guessing; run it off
    /// the async runtime's threads (`spawn_blocking`). An unknown user costs
    /// the same as a wrong password for a user petrel created, so the time
    /// taken does not tell which names exist; lines Mosquitto wrote check in
    /// far less.
    pub fn verify(&self, user: &str, password: &[u8]) -> Verdict {
        match self.entry(user) {
            Some(entry) if entry.hash.verify(password) => Verdict::Accepted,
            Some(_) => Verdict::WrongPassword,
            None => {
                if let Ok(decoy) = PasswordHash::new(DECOY_HASH) {
                    let outcome = Argon2::default().verify_password(password, &decoy);
                    std::hint::black_box(outcome.is_ok());
                }
                Verdict::UnknownUser
            }
        }
    }

    /// The user's SCRAM-SHA-256 credentials, if the line has them.
    pub fn scram_credentials(&self, user: &str) -> Option<ScramCredentials> {
        self.entry(user)?.scram.clone()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The user names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            Line::Entry(entry) => Some(entry.user.as_str()),
            Line::Other(_) => None,
        })
    }

    /// Adds the user at the end, or replaces its line where it stands.
    pub fn set(&mut self, user: &str, credentials: Credentials) -> Result<(), PasswordFileError> {
        check_user_name(user)?;
        let text = format!(
            "{user}:{}:{}",
            credentials.hash,
            format_scram(&credentials.scram)
        );
        let entry = Line::Entry(Entry {
            user: user.to_string(),
            text,
            hash: Hash::Argon2(Box::new(credentials.hash)),
            scram: Some(credentials.scram),
        });
        match self.users.get(user) {
            Some(&index) => self.lines[index] = entry,
            None => {
                self.users.insert(user.to_string(), self.lines.len());
                self.lines.push(entry);
            }
        }
        Ok(())
    }

    /// Removes the user's line; false if there was none.
    pub fn delete(&mut self, user: &str) -> bool {
        let Some(index) = self.users.remove(user) else {
            return false;
        };
        self.lines.remove(index);
        for later in self.users.values_mut().filter(|at| **at > index) {
            *later -= 1;
        }
        true
    }

    /// The file's text; line endings become `\n`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(match line {
                Line::Other(other) => other,
                Line::Entry(entry) => &entry.text,
            });
            text.push('\n');
        }
        text
    }

    /// Replaces the file at `path` in one step: a reader (a broker reloading)
    /// sees the old file or the new one, never half of one. The new file is
    /// readable by its owner only, whatever the old one's mode was.
    pub fn write(&self, path: &Path) -> Result<(), PasswordFileError> {
        let failed = |source| PasswordFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path does not name a file",
            ))
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut temporary = name.to_os_string();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = dir.join(temporary);
        let written = write_private(&temporary, self.render().as_bytes())
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(failed(error));
        }
        // Makes the rename survive a crash; the file itself was synced.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn entry(&self, user: &str) -> Option<&Entry> {
        match self.lines.get(*self.users.get(user)?)? {
            Line::Entry(entry) => Some(entry),
            Line::Other(_) => None,
        }
    }
}

/// Whether a user name would read back as itself: the parser splits lines
/// at the first `:`, trims blanks and skips `#` lines.
pub fn check_user_name(user: &str) -> Result<(), PasswordFileError> {
    let storable = !user.is_empty()
        && !user.starts_with('#')
        && user.trim() == user
        && !user.chars().any(|c| c == ':' || c.is_control());
    if storable {
        Ok(())
    } else {
        Err(PasswordFileError::InvalidUser(user.to_string()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // A leftover from a crashed run may have another mode; start afresh.
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn parse_entry(line: &str) -> Result<Entry, LineProblem> {
    let (user, rest) = line.split_once(':').ok_or(LineProblem::NoSeparator)?;
    let user = user.trim();
    if user.is_empty() {
        return Err(LineProblem::EmptyUser);
    }
    let mut fields = rest.split(':');
    let hash = Hash::parse(fields.next().unwrap_or("").trim())?;
    let scram = fields
        .next()
        .map(|field| parse_scram(field.trim()))
        .transpose()?;
    if fields.next().is_some() {
        return Err(LineProblem::ExtraField);
    }
    Ok(Entry {
        user: user.to_string(),
        text: line.to_string(),
        hash,
        scram,
    })
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, LineProblem> {
        if text.starts_with("$argon2") {
            let hash = PasswordHash::new(text)
                .ok()
                .filter(usable_by_argon2)
                .ok_or(LineProblem::MalformedHash("argon2"))?;
            Ok(Hash::Argon2(Box::new(hash)))
        } else if let Some(rest) = text.strip_prefix("$7$") {
            let malformed = LineProblem::MalformedHash("$7$ (PBKDF2-SHA512)");
            let [iterations, salt, hash] = dollar_fields(rest).ok_or(malformed.clone())?;
            let iterations = iterations
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(malformed.clone())?;
            let (salt, hash) = mosquitto_salt_and_hash(salt, hash).ok_or(malformed)?;
            Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            let malformed = LineProblem::MalformedHash("$6$ (salted SHA-512)");
            let [salt, hash] = dollar_fields(rest).ok_or(malformed.clone())?;
            let (salt, hash) = mosquitto_salt_and_hash(salt, hash).ok_or(malformed)?;
            Ok(Hash::SaltedSha512 { salt, hash })
        } else {
            Err(LineProblem::UnknownHash)
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            // The argon2 crate compares its outputs in constant time.
            Hash::Argon2(hash) => Argon2::default().verify_password(password, &**hash).is_ok(),
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut computed = [0u8; MOSQUITTO_HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                constant_time_eq(&computed, hash)
            }
            Hash::SaltedSha512 { salt, hash } => {
                let computed = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                constant_time_eq(&computed, hash)
            }
        }
    }
}

/// Whether the argon2 crate will run this PHC string: checked on load, as
/// verification cannot say "malformed" apart from "wrong password".
fn usable_by_argon2(hash: &PasswordHash) -> bool {
    argon2::Algorithm::try_from(hash.algorithm.as_str()).is_ok()
        && argon2::Params::try_from(hash).is_ok()
        && hash
            .version
            .is_none_or(|version| argon2::Version::try_from(version).is_ok())
        && hash.salt.is_some()
        && hash.hash.is_some()
}

/// Exactly `N` `$`-separated fields.
fn dollar_fields<const N: usize>(text: &str) -> Option<[&str; N]> {
    let fields: Vec<&str> = text.split('$').collect();
    fields.try_into().ok()
}

fn mosquitto_salt_and_hash(salt: &str, hash: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let salt = STANDARD.decode(salt).ok().filter(|salt| !salt.is_empty())?;
    let hash = STANDARD
        .decode(hash)
        .ok()
        .filter(|hash| hash.len() == MOSQUITTO_HASH_LEN)?;
    Some((salt, hash))
}

fn parse_scram(text: &str) -> Result<ScramCredentials, LineProblem> {
    let parsed = || {
        let [iterations, salt, stored_key, server_key] =
            dollar_fields(text.strip_prefix(SCRAM_SCHEME)?)?;
        Some(ScramCredentials {
            iterations: iterations.parse().ok().filter(|&n| n > 0)?,
            salt: STANDARD.decode(salt).ok().filter(|salt| !salt.is_empty())?,
            stored_key: STANDARD.decode(stored_key).ok()?.try_into().ok()?,
            server_key: STANDARD.decode(server_key).ok()?.try_into().ok()?,
        })
    };
    parsed().ok_or(LineProblem::MalformedScram)
}

fn format_scram(credentials: &ScramCredentials) -> String {
    format!(
        "{SCRAM_SCHEME}{}${}${}${}",
        credentials.iterations,
        STANDARD.encode(&credentials.salt),
        STANDARD.encode(credentials.stored_key),
        STANDARD.encode(credentials.server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by Mosquitto 2.0's mosquitto_passwd, password "pass".
    const MOSQUITTO_2: &str = "user:$7$101$/D3WR9Qs7FZFgzt0$0S/hTSY/X9kx4n/ZvCy7wrWroTyGqLnHTwvc\
                               oDH20yVhc/Zwi10oJHnEvwu6P6u3QWo+Jvx1PZ+tv/cnT/wM3A==";
    // Its `-H sha512`, Mosquitto 1.x's format, password "pass".
    const MOSQUITTO_1: &str = "old:$6$JXKCSjbRcWINVRwb$yQYUUL41xkHqssT/WPZGpzQ5k5B8C1LzcI0HaqXXO\
                               FYS69ZS9hMK52IfIiM8Clw1i8P8rkmcZS4VHzbWUz8ztg==";

    /// Cheap costs: the tests check the file, not argon2's strength.
    fn credentials(password: &str) -> Credentials {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        Credentials::with_cost(password.as_bytes(), params, 16).unwrap()
    }

    fn problem(text: &str) -> LineProblem {
        match PasswordFile::parse(text) {
            Err(PasswordFileError::Line { problem, .. }) => problem,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn mosquitto_hashes_verify() {
        let file = PasswordFile::parse(&format!("{MOSQUITTO_2}\n{MOSQUITTO_1}\n")).unwrap();
        assert_eq!(file.verify("user", b"pass"), Verdict::Accepted);
        assert_eq!(file.verify("user", b"Pass"), Verdict::WrongPassword);
        assert_eq!(file.verify("old", b"pass"), Verdict::Accepted);
        assert_eq!(file.verify("old", b"pas"), Verdict::WrongPassword);
        assert_eq!(file.scram_credentials("user"), None);
    }

    #[test]
    fn set_entries_verify_and_carry_scram_credentials() {
        let mut file = PasswordFile::new();
        file.set("alice", credentials("secret")).unwrap();
        let file = PasswordFile::parse(&file.render()).unwrap();
        assert_eq!(file.verify("alice", b"secret"), Verdict::Accepted);
        assert_eq!(file.verify("alice", b"secreT"), Verdict::WrongPassword);
        let scram = file.scram_credentials("alice").unwrap();
        assert_eq!(scram, ScramCredentials::derive(b"secret", &scram.salt, 16));
        assert!(
            file.render()
                .starts_with("alice:$argon2id$v=19$m=8,t=1,p=1$")
        );
        assert!(file.render().contains(":$scram-sha-256$16$"));
    }

    #[test]
    fn unknown_user_is_told_apart_from_a_wrong_password() {
        let file = PasswordFile::parse(MOSQUITTO_2).unwrap();
        assert_eq!(file.verify("nobody", b"pass"), Verdict::UnknownUser);
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
    }

    #[test]
    fn comments_blank_lines_and_other_entries_survive_set_and_delete() {
        let text = format!("# users\n\n{MOSQUITTO_2}\n  # indented comment\n{MOSQUITTO_1}\n");
        let mut file = PasswordFile::parse(&text).unwrap();
        file.set("user", credentials("new")).unwrap();
        file.set("carol", credentials("c")).unwrap();
        assert!(file.delete("old"));
        assert!(!file.delete("old"));
        let rendered = file.render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[..2], ["# users", ""]);
        assert!(lines[2].starts_with("user:$argon2id$"));
        assert_eq!(lines[3], "  # indented comment");
        assert!(lines[4].starts_with("carol:$argon2id$"));
        assert_eq!(lines.len(), 5);
        let file = PasswordFile::parse(&rendered).unwrap();
        assert_eq!(file.users().collect::<Vec<_>>(), ["user", "carol"]);
        assert_eq!(file.verify("user", b"new"), Verdict::Accepted);
        assert_eq!(file.verify("carol", b"c"), Verdict::Accepted);
    }

    #[test]
    fn crlf_lines_and_blanks_around_fields_are_read() {
        let text = format!(" {}\r\n", MOSQUITTO_2.replacen(':', " : ", 1));
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.verify("user", b"pass"), Verdict::Accepted);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let text = "# ok\nalice:$argon2id$nonsense\n";
        let error = PasswordFile::parse(text).unwrap_err();
        assert!(matches!(error, PasswordFileError::Line { line: 2, .. }));
        assert_eq!(
            error.to_string(),
            "password file (text), line 2: malformed argon2 hash"
        );
        assert_eq!(problem("alice"), LineProblem::NoSeparator);
        assert_eq!(problem(":$6$"), LineProblem::EmptyUser);
        assert_eq!(problem("alice:plaintext"), LineProblem::UnknownHash);
        assert_eq!(problem("alice:"), LineProblem::UnknownHash);
        assert!(matches!(
            problem("a:$7$0$AAAA$AAAA"),
            LineProblem::MalformedHash(_)
        ));
        assert!(matches!(
            problem("a:$7$101$AAAA$AAAA"),
            LineProblem::MalformedHash(_)
        ));
        assert!(matches!(
            problem("a:$6$AAAA"),
            LineProblem::MalformedHash(_)
        ));
        let with_scram = |scram: &str| format!("{MOSQUITTO_2}:{scram}");
        assert_eq!(problem(&with_scram("")), LineProblem::MalformedScram);
        assert_eq!(
            problem(&with_scram("$scram-sha-256$4096$AAAA$AAAA$AAAA")),
            LineProblem::MalformedScram
        );
        assert_eq!(problem(&with_scram("$x:y")), LineProblem::MalformedScram);
        let twice = format!("{MOSQUITTO_2}\n{MOSQUITTO_2}\n");
        assert_eq!(
            problem(&twice),
            LineProblem::DuplicateUser {
                user: "user".into(),
                first: 1
            }
        );
    }

    #[test]
    fn extra_field_after_scram_is_refused() {
        let mut file = PasswordFile::new();
        file.set("alice", credentials("secret")).unwrap();
        let text = format!("{}:more", file.render().trim_end());
        assert_eq!(problem(&text), LineProblem::ExtraField);
    }

    #[test]
    fn names_that_would_not_read_back_are_refused() {
        let mut file = PasswordFile::new();
        for user in ["", "a:b", "#a", " a", "a ", "a\nb"] {
            assert!(
                matches!(
                    file.set(user, credentials("x")),
                    Err(PasswordFileError::InvalidUser(_))
                ),
                "{user:?}"
            );
        }
        assert_eq!(file.users().count(), 0);
    }

    #[test]
    fn write_replaces_the_file_privately_and_load_names_it() {
        let dir = std::env::temp_dir().join(format!("petrel-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(&path, "stale:plaintext\n").unwrap();
        let mut file = PasswordFile::new();
        file.set("alice", credentials("secret")).unwrap();
        file.write(&path).unwrap();
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.verify("alice", b"secret"), Verdict::Accepted);
        assert!(!loaded.contains("stale"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );

        std::fs::write(&path, "# fine\nbroken\n").unwrap();
        let error = PasswordFile::load(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()) && error.contains("line 2"));
        let missing = PasswordFile::load(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, PasswordFileError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
