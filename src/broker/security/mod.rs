//! Who may connect and what they may do: the password file and the ACL
//! file as the broker holds them, the throttle of failed logins, and the
//! checks the packet handlers ask.
//!
//! Both files are read at start (a file that does not load stops the
//! start, naming the file and line) and again by `reload`, which keeps the
//! previous contents of a file that no longer loads. A reload applies to
//! what happens after it: new connections, and every publish, subscribe
//! and delivery from then on, including deliveries to subscriptions made
//! before it.
//!
//! The rules are shared behind an `RwLock<Arc<Rules>>`, but the publish
//! path does not take that lock: each thread keeps the `Arc` it last used
//! and takes the lock again only after a reload bumped `generation`. A
//! broker without `acl_file` reads one `Option` and asks nothing more.
//!
//! Admission is the one place in the core that waits and reads the clock:
//! a password hash costs tens of milliseconds of CPU on purpose, so it runs
//! on the blocking pool while the connection's task awaits it, and the
//! throttle counts failures against a monotonic clock (the throttle itself
//! takes the time as an argument and is tested without one).

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use super::BrokerState;
use super::client::Client;
use crate::auth::acl::{Acl, AclError, Who};
use crate::auth::password::{PasswordFile, PasswordFileError, Verdict};
use crate::auth::throttle::{AuthThrottle, Decision, ThrottleConfig};
use crate::config::Settings;
use crate::protocol::{Connect, Deliver, Message, QoS, ReasonCode};
use crate::router::Match;
use crate::session::{Outbound, Owner};

/// A password file or ACL file that does not load.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The error names the file and, for a bad entry, the line.
    #[error("`password_file`: {0}")]
    PasswordFile(#[from] PasswordFileError),
    #[error("`acl_file`: {0}")]
    AclFile(#[from] AclError),
}

/// The contents of the configured files, replaced whole by a reload.
#[derive(Debug, Default)]
struct Rules {
    /// `Some` whenever `password_file` is configured.
    passwords: Option<Arc<PasswordFile>>,
    /// `Some` whenever `acl_file` is configured.
    acl: Option<Arc<Acl>>,
}

/// The broker's authentication and authorisation state.
pub struct Security {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    allow_anonymous: bool,
    rules: RwLock<Arc<Rules>>,
    /// Bumped by every reload, after `rules` changed, so a thread's cached
    /// copy knows it is stale.
    generation: AtomicU64,
    /// Tells apart the brokers of one process (tests run several) in the
    /// per-thread cache.
    id: u64,
    /// Held only to check or record one outcome, never across an `.await`.
    throttle: Mutex<AuthThrottle>,
    /// The throttle's time origin: a monotonic clock, so a wall-clock step
    /// neither lifts nor lengthens a lock-out.
    started: Instant,
}

/// The rules a thread last used (see the module doc).
struct Cached {
    security: u64,
    generation: u64,
    rules: Arc<Rules>,
}

thread_local! {
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

static NEXT_SECURITY_ID: AtomicU64 = AtomicU64::new(1);

impl Security {
    /// Reads the files `settings` names.
    pub fn load(settings: &Settings) -> Result<Security, SecurityError> {
        let passwords = match &settings.password_file {
            Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
            None => None,
        };
        let acl = match &settings.acl_file {
            Some(path) => Some(Arc::new(Acl::load(path)?)),
            None => None,
        };
        Ok(Security::with_rules(settings, Rules { passwords, acl }))
    }

    /// Reads the files, or, when one does not load, logs why and holds
    /// rules that refuse whatever the configured files decide: no user of
    /// an empty password file gets in, and an empty ACL denies everything.
    /// For a broker built without `Broker::start`, which checks first.
    pub fn load_or_refuse(settings: &Settings) -> Security {
        Security::load(settings).unwrap_or_else(|error| {
            tracing::error!(%error, "security files not loaded: refusing what they decide");
            Security::with_rules(
                settings,
                Rules {
                    passwords: settings
                        .password_file
                        .as_ref()
                        .map(|_| Arc::new(PasswordFile::new())),
                    acl: settings.acl_file.as_ref().map(|_| Arc::new(Acl::default())),
                },
            )
        })
    }

    fn with_rules(settings: &Settings, rules: Rules) -> Security {
        Security {
            password_file: settings.password_file.clone(),
            acl_file: settings.acl_file.clone(),
            allow_anonymous: settings.allow_anonymous,
            rules: RwLock::new(Arc::new(rules)),
            generation: AtomicU64::new(0),
            id: NEXT_SECURITY_ID.fetch_add(1, Ordering::Relaxed),
            throttle: Mutex::new(AuthThrottle::new(ThrottleConfig::default())),
            started: Instant::now(),
        }
    }

    /// Whether an ACL file is configured: when not, nothing is checked.
    pub fn has_acl(&self) -> bool {
        self.acl_file.is_some()
    }

    /// The password file as last loaded, for the SCRAM exchanges of
    /// enhanced authentication (`broker::enhanced_auth`).
    pub fn password_file(&self) -> Option<Arc<PasswordFile>> {
        self.current().passwords.clone()
    }

    /// Counts the outcome of a login checked outside `authenticate` (an
    /// enhanced authentication exchange) in the throttle, so a SCRAM guess
    /// costs what a wrong password does.
    pub fn record_login(&self, client_id: &str, peer: SocketAddr, succeeded: bool) {
        let key = throttle_key(client_id, peer);
        let mut throttle = self.throttle();
        if succeeded {
            throttle.record_success(&key);
        } else {
            throttle.record_failure(&key, peer.ip(), self.now_ms());
        }
    }

    fn current(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `check` against the ACL, or returns `None` without an ACL.
    fn with_acl<R>(&self, check: impl FnOnce(&Acl) -> R) -> Option<R> {
        if !self.has_acl() {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        CACHED.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                // Asked again from inside `check` on this thread: the
                // shared copy answers.
                return self.current().acl.as_deref().map(check);
            };
            let fresh = slot
                .as_ref()
                .is_some_and(|c| c.security == self.id && c.generation == generation);
            if !fresh {
                // `generation` was read before the rules: if a reload comes
                // in between, the next call fetches again.
                *slot = Some(Cached {
                    security: self.id,
                    generation,
                    rules: self.current(),
                });
            }
            slot.as_ref()
                .and_then(|cached| cached.rules.acl.as_deref())
                .map(check)
        })
    }

    /// Whether `who` may publish to `topic`; `None` without an ACL.
    pub fn may_publish(&self, who: &Who, topic: &str) -> Option<bool> {
        self.with_acl(|acl| acl.may_publish(who, topic))
    }

    /// Whether a message on `topic` may be delivered to `who`.
    pub fn may_receive(&self, who: &Who, topic: &str) -> Option<bool> {
        self.with_acl(|acl| acl.may_receive(who, topic))
    }

    /// Whether `who` may subscribe to the inner filter `filter` (no
    /// `$share/{group}/` prefix).
    pub fn may_subscribe(&self, who: &Who, filter: &str) -> Option<bool> {
        self.with_acl(|acl| acl.may_subscribe(who, filter))
    }

    /// Reads both configured files again. Each file is replaced only if it
    /// loads; one that does not keeps what was loaded before, and the
    /// report says why.
    pub fn reload(&self) -> SecurityReload {
        let passwords = self
            .password_file
            .as_ref()
            .map(|path| (path.clone(), PasswordFile::load(path)));
        let acl = self
            .acl_file
            .as_ref()
            .map(|path| (path.clone(), Acl::load(path)));
        let mut held = self.rules.write().unwrap_or_else(PoisonError::into_inner);
        let mut rules = Rules {
            passwords: held.passwords.clone(),
            acl: held.acl.clone(),
        };
        let password_file = match passwords {
            None => FileReload::NotConfigured,
            Some((path, Ok(file))) => {
                let users = file.users().count();
                rules.passwords = Some(Arc::new(file));
                FileReload::Applied {
                    path,
                    detail: match users {
                        1 => "1 user".to_string(),
                        n => format!("{n} users"),
                    },
                }
            }
            Some((path, Err(error))) => FileReload::Kept {
                path,
                error: error.to_string(),
            },
        };
        let acl_file = match acl {
            None => FileReload::NotConfigured,
            Some((path, Ok(acl))) => {
                rules.acl = Some(Arc::new(acl));
                FileReload::Applied {
                    path,
                    detail: "rules replaced".into(),
                }
            }
            Some((path, Err(error))) => FileReload::Kept {
                path,
                error: error.to_string(),
            },
        };
        *held = Arc::new(rules);
        drop(held);
        self.generation.fetch_add(1, Ordering::Release);
        SecurityReload {
            password_file,
            acl_file,
        }
    }

    /// Milliseconds on the throttle's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, AuthThrottle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a reload did with each file, for the log line of whoever asked.
#[derive(Debug)]
pub struct SecurityReload {
    pub password_file: FileReload,
    pub acl_file: FileReload,
}

#[derive(Debug)]
pub enum FileReload {
    NotConfigured,
    /// The file loaded and is in use; `detail` says what it holds.
    Applied {
        path: PathBuf,
        detail: String,
    },
    /// The file did not load; what was loaded before stays in use.
    Kept {
        path: PathBuf,
        error: String,
    },
}

impl SecurityReload {
    /// Whether a configured file failed to load (the log line is then a
    /// warning).
    pub fn failed(&self) -> bool {
        [&self.password_file, &self.acl_file]
            .into_iter()
            .any(|file| matches!(file, FileReload::Kept { .. }))
    }
}

impl fmt::Display for SecurityReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |name: &str, file: &FileReload| match file {
            FileReload::NotConfigured => None,
            FileReload::Applied { path, detail } => {
                Some(format!("{name} {}: reloaded ({detail})", path.display()))
            }
            FileReload::Kept { path, error } => Some(format!(
                "{name} {}: not reloaded, the previous contents stay in use: {error}",
                path.display()
            )),
        };
        let parts: Vec<String> = [
            show("password_file", &self.password_file),
            show("acl_file", &self.acl_file),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            f.write_str("no password_file or acl_file configured: nothing to reload")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The key a CONNECT's failures are counted under for its client id. An
/// empty client id (one the broker will assign) names no client: all of
/// them sharing one key would let a single guesser lock out every client
/// that sends none, so those count under their address alone.
fn throttle_key(client_id: &str, peer: SocketAddr) -> String {
    if client_id.is_empty() {
        format!("\0{}", peer.ip())
    } else {
        client_id.to_string()
    }
}

impl BrokerState {
    /// Decides whether a CONNECT may go on, before it touches any session.
    /// Returns the username whose ACL rights the client gets (`None`:
    /// anonymous), or the CONNACK reason to refuse it with.
    ///
    /// In order: a client identified by its certificate (`cert_identity`,
    /// the listener's `use_identity_as_username`) gets that name and is
    /// asked nothing more, the TLS handshake having proved it (nor is it
    /// throttled: guessing under its client id must not lock it out); a
    /// client id or address locked out by the throttle is refused as a
    /// wrong password would be (0x86); a CONNECT naming an authentication
    /// method is left to enhanced authentication; a CONNECT without a
    /// username is anonymous, allowed only with `allow_anonymous` (else
    /// 0x87); with a password file, the password must match the user's
    /// entry (else 0x86, counted towards the lock-out); without one, the
    /// username is taken as given.
    pub async fn authenticate(
        self: &Arc<Self>,
        connect: &Connect,
        peer: SocketAddr,
        cert_identity: Option<&str>,
    ) -> Result<Option<Arc<str>>, ReasonCode> {
        let security = &self.security;
        if let Some(identity) = cert_identity {
            return Ok(Some(identity.into()));
        }
        let key = throttle_key(&connect.client_id, peer);
        // Only password checks (and SCRAM's, against the same file) record
        // failures: without a password file there is nothing to look up,
        // and no lock for every CONNECT to take.
        let decision = match security.password_file {
            Some(_) => security
                .throttle()
                .check(&key, peer.ip(), security.now_ms()),
            None => Decision::Allow,
        };
        if let Decision::Refuse { by, retry_after_ms } = decision {
            self.metrics.auth_throttled();
            tracing::info!(
                client_id = %connect.client_id,
                %peer,
                ?by,
                retry_after_ms,
                "CONNECT refused: too many failed logins"
            );
            return Err(ReasonCode::BAD_USERNAME_OR_PASSWORD);
        }
        if connect.authentication_method.is_some() {
            // Enhanced authentication (SCRAM) checks the user against the
            // same password file in its own exchange, and may carry the
            // username there rather than in CONNECT; a method the broker
            // does not know is refused by `Client::connect`.
            return Ok(connect.username.as_deref().map(Arc::from));
        }
        let Some(username) = connect.username.as_deref() else {
            if security.allow_anonymous {
                return Ok(None);
            }
            self.metrics.auth_anonymous_refused();
            return Err(ReasonCode::NOT_AUTHORIZED);
        };
        let rules = security.current();
        let Some(passwords) = rules.passwords.clone() else {
            return Ok(Some(username.into()));
        };
        let verdict = match connect.password.clone() {
            // A user with an entry must send its password, as with
            // Mosquitto; nothing to hash then.
            None => Verdict::WrongPassword,
            Some(password) => {
                let user = username.to_string();
                tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
                    .await
                    .map_err(|_| ReasonCode::UNSPECIFIED_ERROR)?
            }
        };
        match verdict {
            Verdict::Accepted => {
                security.throttle().record_success(&key);
                Ok(Some(username.into()))
            }
            Verdict::WrongPassword | Verdict::UnknownUser => {
                security
                    .throttle()
                    .record_failure(&key, peer.ip(), security.now_ms());
                self.metrics.auth_bad_password();
                tracing::info!(
                    client_id = %connect.client_id,
                    %peer,
                    username,
                    known_user = verdict == Verdict::WrongPassword,
                    "CONNECT refused: bad username or password"
                );
                Err(ReasonCode::BAD_USERNAME_OR_PASSWORD)
            }
        }
    }

    /// Reads the password file and the ACL file again (see
    /// [`Security::reload`]); the SIGHUP handler's entry point.
    pub fn reload_security(&self) -> SecurityReload {
        let reload = self.security.reload();
        if reload.failed() {
            tracing::warn!(%reload, "security files reloaded with errors");
        } else {
            tracing::info!(%reload, "security files reloaded");
        }
        reload
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Leaves out of `matches` the sessions whose owner may not read
    /// `topic`, counting each. A session restored from the store and not
    /// attached to since has no known owner: its copy is queued and checked
    /// when it is sent.
    pub(super) fn drop_unreadable(&self, matches: &mut Vec<Match>, topic: &str) {
        let metrics = &self.metrics;
        self.security.with_acl(|acl| {
            matches.retain(|found| {
                let state = found.session.lock();
                let client_id = found.session.client_id();
                let username = match &state.owner {
                    Owner::Unknown | Owner::Bridge => return true,
                    Owner::Anonymous => None,
                    Owner::User(name) => Some(&**name),
                };
                let allowed = acl.may_receive(
                    &Who {
                        username,
                        client_id,
                    },
                    topic,
                );
                drop(state);
                if !allowed {
                    metrics.acl_delivery_denied(client_id, topic);
                }
                allowed
            });
        });
    }

    /// Whether a will may be published on its client's account: checked
    /// when it goes out, with the rights the client has then. A will
    /// restored from the store has no known owner and is not published
    /// under an ACL (the store keeps no usernames).
    pub(super) fn may_publish_will(&self, owner: &Owner, publisher: &str, will: &Message) -> bool {
        let username = match owner {
            Owner::Bridge => return true,
            Owner::Unknown if self.security.has_acl() => {
                self.metrics.acl_publish_denied(publisher, &will.topic);
                tracing::warn!(
                    client_id = publisher,
                    topic = %will.topic,
                    "will not published: its client's username was not kept across the restart"
                );
                return false;
            }
            Owner::Unknown | Owner::Anonymous => None,
            Owner::User(name) => Some(&**name),
        };
        let who = Who {
            username,
            client_id: publisher,
        };
        match self.security.may_publish(&who, &will.topic) {
            Some(false) => {
                self.metrics.acl_publish_denied(publisher, &will.topic);
                false
            }
            Some(true) | None => true,
        }
    }
}

impl Client {
    /// The client as the ACL knows it.
    pub(super) fn who(&self) -> Who<'_> {
        Who {
            username: self.username(),
            client_id: self.client_id(),
        }
    }

    /// Whether this client may publish to `topic` (a `$delayed/{s}/{t}`
    /// topic is checked as `t`, where it will be published); counted when
    /// not.
    pub(super) fn may_publish(&self, topic: &str) -> bool {
        if !self.broker.security.has_acl() || self.is_bridge() {
            return true;
        }
        let target = match crate::delay::delayed_topic(topic) {
            Ok(Some(delayed)) => delayed.topic,
            Ok(None) | Err(_) => topic,
        };
        let allowed = self
            .broker
            .security
            .may_publish(&self.who(), target)
            .unwrap_or(true);
        if !allowed {
            self.broker
                .metrics
                .acl_publish_denied(self.client_id(), target);
        }
        allowed
    }

    /// Whether a message on `topic` may go to this client now; counted
    /// when not.
    pub(super) fn may_receive(&self, topic: &str) -> bool {
        if !self.broker.security.has_acl() || self.is_bridge() {
            return true;
        }
        let allowed = self
            .broker
            .security
            .may_receive(&self.who(), topic)
            .unwrap_or(true);
        if !allowed {
            self.broker
                .metrics
                .acl_delivery_denied(self.client_id(), topic);
        }
        allowed
    }

    /// Whether this client may subscribe to `filter` (the inner filter of
    /// a `$share/{group}/...`), or, for a `$stream/{name}` subscription, to
    /// the stream: a reader of a stream receives whatever its filters
    /// match, so every one of them must be readable. Counted when not.
    pub(super) fn may_subscribe(&self, filter: &str, stream: Option<&str>) -> bool {
        let security = &self.broker.security;
        if !security.has_acl() || self.is_bridge() {
            return true;
        }
        let who = self.who();
        let allowed = match stream.and_then(|name| self.broker.streams().find(name)) {
            Some((_, stream)) => stream
                .spec
                .filters
                .iter()
                .all(|f| security.may_subscribe(&who, f).unwrap_or(true)),
            None => security.may_subscribe(&who, filter).unwrap_or(true),
        };
        if !allowed {
            self.broker
                .metrics
                .acl_subscribe_denied(self.client_id(), filter);
        }
        allowed
    }
}

/// Ends the flow of a message taken from the queue for sending that the
/// client may no longer read (queued before a reload, before another user
/// resumed the session, or restored without an owner), as if the client
/// had refused it: a consumer group counts a failed attempt.
pub(super) fn withdraw(outbound: &mut Outbound, publish: &Deliver) {
    match publish.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            outbound.on_puback(publish.packet_id, ReasonCode::NOT_AUTHORIZED);
        }
        QoS::ExactlyOnce => {
            outbound.on_pubrec(publish.packet_id, ReasonCode::NOT_AUTHORIZED);
        }
    }
}

#[cfg(test)]
mod tests;
