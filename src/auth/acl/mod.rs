//! Mosquitto's `acl_file` format, so ACL files written for Mosquitto can be
//! reused.
//!
//! ```text
//! # Before any `user` line: clients without a username.
//! topic read $SYS/#
//! # A user's section; the name is the rest of the line, spaces included.
//! user roger
//! topic foo/bar
//! topic deny foo/bar/secret
//! # Every client; %u is the username, %c the client id.
//! pattern write sensors/%u/#
//! ```
//!
//! Access words are `read`, `write`, `readwrite` (the default) and `deny`.
//! Comments are whole lines: `#` later in a line is part of the filter.
//!
//! Answers follow Mosquitto 2.0 (its `security_default.c`, checked against
//! Mosquitto 2.0.11 with `tests/interop/acl_parity.py`): the client's own
//! section (its `user` section, or the anonymous one) is searched first,
//! `deny` entries before grants, and a grant there is final; only when the
//! section decides nothing are the patterns searched, again `deny` first. A client
//! whose username or client id holds `+` or `#` gets nothing from patterns,
//! because substituting it would widen the pattern (CVE-2017-7650). A `/`
//! is allowed and spans levels, as in Mosquitto 2.0. Patterns that use `%u`
//! never apply to anonymous clients. An ACL with no entries denies
//! everything (CVE-2018-12550).
//!
//! Where petrel differs on purpose:
//! - SUBSCRIBE is checked. Mosquitto 2.0 grants every filter and filters
//!   at delivery; petrel grants a filter only if every topic it can match is
//!   readable, so a granted filter is never silently narrowed.
//! - `%c` and `%u` must be a whole level. Mosquitto 2.0.11 also replaces
//!   them inside a level (`pre%c`) although its manual says otherwise, and
//!   later releases leave them literal there; refusing the file at load
//!   avoids guessing which was meant.
//! - `topic read` with nothing after it is an error. Mosquitto reads it as
//!   the topic `read` with readwrite access.
//! - Indented `#` comments are comments; Mosquitto refuses them.
//!
//! The caller resolves `$share/{group}/` and `$stream/` prefixes and passes
//! the inner filter, and keeps broker-wide rules (no PUBLISH to `$SYS`) of
//! its own: this file knows only what the ACL says.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::topic::{self, TopicError, TopicLimits};

/// Entries are checked as filters; an entry longer or deeper than the
/// broker's own limits is harmless (it matches nothing), so only the
/// protocol's string limit applies here.
const ENTRY_LIMITS: TopicLimits = TopicLimits {
    max_length: 65_535,
    max_levels: usize::MAX,
};

/// Why an ACL file was refused. Line numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}line {line}: {problem}", file_prefix(file.as_deref()))]
    Line {
        /// `None` when the text did not come from a file.
        file: Option<PathBuf>,
        line: usize,
        problem: LineProblem,
    },
}

fn file_prefix(file: Option<&Path>) -> String {
    file.map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

/// What is wrong with one line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("unknown keyword {0:?} (expected topic, pattern or user)")]
    UnknownKeyword(String),
    #[error("unknown access {0:?} (expected read, write, readwrite or deny)")]
    UnknownAccess(String),
    #[error("no topic filter")]
    MissingTopic,
    #[error("no username")]
    MissingUsername,
    #[error("invalid topic filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: TopicError },
    #[error("%c and %u must be a whole level, not part of one, in {0:?}")]
    PartialSubstitution(String),
}

/// The client asking: the username from CONNECT (`None` when absent) and
/// the client id in use (assigned by the broker if the client sent none).
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone, Copy)]
enum Need {
    Read,
    Write,
}

/// One section's entries, split by what they grant so that a check walks
/// only the entries that can answer it.
#[derive(Debug, Clone)]
struct Rules<T> {
    deny: Vec<T>,
    read: Vec<T>,
    write: Vec<T>,
}

impl<T> Default for Rules<T> {
    fn default() -> Self {
        Rules {
            deny: Vec::new(),
            read: Vec::new(),
            write: Vec::new(),
        }
    }
}

impl<T: Clone> Rules<T> {
    fn add(&mut self, access: Access, entry: T) {
        match access {
            Access::Deny => self.deny.push(entry),
            Access::Read => self.read.push(entry),
            Access::Write => self.write.push(entry),
            Access::ReadWrite => {
                self.read.push(entry.clone());
                self.write.push(entry);
            }
        }
    }

    fn granting(&self, need: Need) -> &[T] {
        match need {
            Need::Read => &self.read,
            Need::Write => &self.write,
        }
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.read.is_empty() && self.write.is_empty()
    }
}

/// A `pattern` entry; `%c` and `%u` occur only as whole levels.
#[derive(Debug, Clone)]
struct Pattern {
    filter: String,
    uses_client_id: bool,
    uses_username: bool,
}

impl Pattern {
    fn new(filter: &str) -> Result<Pattern, LineProblem> {
        let mut pattern = Pattern {
            filter: filter.to_string(),
            uses_client_id: false,
            uses_username: false,
        };
        for level in filter.split('/') {
            match level {
                "%c" => pattern.uses_client_id = true,
                "%u" => pattern.uses_username = true,
                _ if level.contains("%c") || level.contains("%u") => {
                    return Err(LineProblem::PartialSubstitution(filter.to_string()));
                }
                _ => {}
            }
        }
        Ok(pattern)
    }

    /// The filter for this client, or `None` if the pattern cannot apply
    /// to it (no username for `%u`; an empty value would make `a/%u/b`
    /// mean `a//b`, a different place).
    fn expand(&self, who: &Who) -> Option<String> {
        let username = match (self.uses_username, who.username) {
            (false, _) => "",
            (true, Some(name)) if !name.is_empty() => name,
            (true, _) => return None,
        };
        if self.uses_client_id && who.client_id.is_empty() {
            return None;
        }
        if !self.uses_client_id && !self.uses_username {
            return Some(self.filter.clone());
        }
        let levels: Vec<&str> = self
            .filter
            .split('/')
            .map(|level| match level {
                "%c" => who.client_id,
                "%u" => username,
                other => other,
            })
            .collect();
        Some(levels.join("/"))
    }
}

/// A parsed ACL file. Checks are pure lookups; reloading means parsing
/// again and swapping the value.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Option<Rules<String>>,
    users: HashMap<String, Rules<String>>,
    patterns: Rules<Pattern>,
}

impl Acl {
    /// Parses the text of an ACL file; errors carry the line but no file.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        parse(text).map_err(|(line, problem)| AclError::Line {
            file: None,
            line,
            problem,
        })
    }

    /// Reads and parses an ACL file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Acl, AclError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text).map_err(|(line, problem)| AclError::Line {
            file: Some(path.to_path_buf()),
            line,
            problem,
        })
    }

    /// Whether `who` may PUBLISH to the topic name `topic`.
    pub fn may_publish(&self, who: &Who, topic: &str) -> bool {
        let hit = |f: &str| topic::matches(f, topic);
        self.decide(who, Need::Write, hit, hit)
    }

    /// Whether a message on the topic name `topic` may be delivered to
    /// `who`. Asked at delivery even for granted subscriptions, as
    /// Mosquitto does, because a reloaded ACL changes the answer for
    /// subscriptions made before it.
    pub fn may_receive(&self, who: &Who, topic: &str) -> bool {
        let hit = |f: &str| topic::matches(f, topic);
        self.decide(who, Need::Read, hit, hit)
    }

    /// Whether `who` may SUBSCRIBE to the (valid, inner) filter `filter`:
    /// no `deny` entry that would answer may overlap it, and one readable
    /// entry must cover it whole. Sound but not complete: a filter whose
    /// topics are readable only through several entries together is
    /// refused, which errs towards the SUBACK saying no.
    pub fn may_subscribe(&self, who: &Who, filter: &str) -> bool {
        let denies = |f: &str| overlaps(f, filter);
        let grants = |f: &str| covers(f, filter);
        self.decide(who, Need::Read, denies, grants)
    }

    /// Mosquitto 2.0's order of evaluation (see the module doc), with the
    /// meaning of "this entry answers" left to the caller: `denies(f)` for
    /// a `deny` entry with filter `f`, `grants(f)` for a granting one.
    fn decide(
        &self,
        who: &Who,
        need: Need,
        denies: impl Fn(&str) -> bool,
        grants: impl Fn(&str) -> bool,
    ) -> bool {
        let section = match who.username {
            Some(name) => self.users.get(name),
            None => self.anonymous.as_ref(),
        };
        if let Some(rules) = section {
            if rules.deny.iter().any(|f| denies(f)) {
                return false;
            }
            if rules.granting(need).iter().any(|f| grants(f)) {
                return true;
            }
        }
        if self.patterns.is_empty() || is_dangerous(who) {
            return false;
        }
        let answers =
            |p: &Pattern, test: &dyn Fn(&str) -> bool| p.expand(who).is_some_and(|f| test(&f));
        if self.patterns.deny.iter().any(|p| answers(p, &denies)) {
            return false;
        }
        self.patterns
            .granting(need)
            .iter()
            .any(|p| answers(p, &grants))
    }
}

fn is_dangerous(who: &Who) -> bool {
    let wild = |s: &str| s.contains(['+', '#']);
    who.username.is_some_and(wild) || wild(who.client_id)
}

fn parse(text: &str) -> Result<Acl, (usize, LineProblem)> {
    let mut acl = Acl::default();
    let mut user: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |problem| (index + 1, problem);
        let (keyword, rest) = split_word(line);
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(at(LineProblem::MissingUsername));
                }
                acl.users.entry(rest.to_string()).or_default();
                user = Some(rest.to_string());
            }
            "topic" | "pattern" => {
                let (access, filter) = access_and_filter(rest).map_err(at)?;
                topic::validate_filter(filter, ENTRY_LIMITS).map_err(|reason| {
                    at(LineProblem::InvalidFilter {
                        filter: filter.to_string(),
                        reason,
                    })
                })?;
                if keyword == "pattern" {
                    let pattern = Pattern::new(filter).map_err(at)?;
                    acl.patterns.add(access, pattern);
                } else {
                    let rules = match &user {
                        Some(name) => acl.users.entry(name.clone()).or_default(),
                        None => acl.anonymous.get_or_insert_with(Rules::default),
                    };
                    rules.add(access, filter.to_string());
                }
            }
            other => return Err(at(LineProblem::UnknownKeyword(other.to_string()))),
        }
    }
    Ok(acl)
}

/// The first word and the trimmed rest of an already trimmed line.
fn split_word(line: &str) -> (&str, &str) {
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    }
}

fn access_and_filter(rest: &str) -> Result<(Access, &str), LineProblem> {
    let (first, filter) = split_word(rest);
    let access = match first {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    };
    match (access, filter.is_empty()) {
        // Mosquitto would take a lone access word as the topic itself.
        (Some(_), true) => Err(LineProblem::MissingTopic),
        (None, true) if first.is_empty() => Err(LineProblem::MissingTopic),
        (None, true) => Ok((Access::ReadWrite, first)),
        (Some(access), false) => Ok((access, filter)),
        (None, false) => Err(LineProblem::UnknownAccess(first.to_string())),
    }
}

/// Whether every topic `requested` can match is also matched by `granted`
/// (both valid filters). `a/#` covers `a` because `a/#` matches `a`; `#`
/// and `+/...` never cover a filter that starts with a literal `$` level,
/// since they do not match such topics.
pub fn covers(granted: &str, requested: &str) -> bool {
    if starts_with_wildcard(granted) && starts_with_dollar(requested) {
        return false;
    }
    let mut g = granted.split('/');
    let mut r = requested.split('/');
    let mut first = true;
    loop {
        match (g.next(), r.next()) {
            (Some("#"), _) => return true,
            // `#` matches its parent level too, so `+/#` matches every topic
            // that a leading `#` does; deeper down, `x/+/#` misses `x`.
            (Some("+"), Some("#")) => return first && g.eq(["#"]),
            (Some("+"), Some(_)) => {}
            (Some(want), Some(level)) if want == level => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether some topic name is matched by both filters (both valid).
pub fn overlaps(a: &str, b: &str) -> bool {
    if (starts_with_wildcard(a) && starts_with_dollar(b))
        || (starts_with_wildcard(b) && starts_with_dollar(a))
    {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with(['+', '#'])
}

fn starts_with_dollar(filter: &str) -> bool {
    filter.starts_with('$')
}

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.username {
            Some(name) => write!(f, "user {name:?} (client {:?})", self.client_id),
            None => write!(f, "anonymous client {:?}", self.client_id),
        }
    }
}

#[cfg(test)]
mod tests;
