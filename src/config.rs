//! Typed, validated settings.
//!
//! Settings come from one TOML file and then from `PETREL_*` environment
//! variables (`PETREL_LIMITS__MAX_INFLIGHT=50` overrides `limits.max_inflight`).
//! Unknown keys and out-of-range values stop the start with the key named, so a
//! typo never silently falls back to a default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::session::QueueFull;
use serde::Deserialize;

/// The largest topic a client may use. mqttbytes silently truncates the length
/// field of strings over 65,535 bytes, so every limit stays well below that.
const TOPIC_LENGTH_CEILING: usize = 65_535;

/// The longest `sys_interval`: a year is already "never" in practice, and
/// the timer that waits for it must not overflow.
const MAX_SYS_INTERVAL: u64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("invalid config: {0}")]
    Invalid(config::ConfigError),
    #[error("invalid config: `{key}` {problem}")]
    OutOfRange { key: &'static str, problem: String },
    #[error("invalid config: listener {index} ({bind}): `{key}` {problem}")]
    Listener {
        index: usize,
        bind: SocketAddr,
        key: &'static str,
        problem: String,
    },
    #[error("invalid config: stream `{stream}`: `{key}` {problem}")]
    Stream {
        stream: String,
        key: &'static str,
        problem: String,
    },
    #[error("invalid config: {0}")]
    Bridge(crate::bridge::spec::SpecError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listeners, in order; `--port` overrides the first one's port.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Listener>,
    /// Where durable state lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// What an acknowledgement promises; see `Durability`.
    #[serde(default)]
    pub durability: Durability,
    /// How often the `async` mode flushes to disk, in milliseconds.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Size at which the commit log starts a new segment file, in bytes.
    #[serde(default = "default_log_segment_bytes")]
    pub log_segment_bytes: u32,
    /// Bytes the log and the state database may take together; past it,
    /// new durable messages are refused (v5 0x97) until space is reclaimed.
    /// 0: bounded only by the disk, whose filling up is refused the same way.
    #[serde(default)]
    pub max_disk_bytes: u64,
    /// Whether clients without a username may connect (refused with
    /// CONNACK 0x87 / 3.1.1 code 5 when not).
    #[serde(default = "default_true")]
    pub allow_anonymous: bool,
    /// Users and their password hashes, in Mosquitto's `password_file`
    /// format (`petrel passwd` and `mosquitto_passwd` write it). When set, a
    /// CONNECT with a username must carry that user's password (else
    /// CONNACK 0x86 / 3.1.1 code 4); when not, a username is taken as
    /// given. Read at start (a bad line stops it) and on SIGHUP.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Who may publish and subscribe to what, in Mosquitto's `acl_file`
    /// format (see `auth::acl`). When not set, every client may do
    /// everything. Read at start (a bad line stops it) and on SIGHUP.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    /// Seconds between updates of the `$SYS/broker/...` topics (Mosquitto's
    /// names and meanings, retained in memory); 0 publishes none.
    #[serde(default = "default_sys_interval")]
    pub sys_interval: u64,
    #[serde(default)]
    pub limits: Limits,
    /// Streams fed by topic filters (DESIGN §5).
    #[serde(default)]
    pub streams: Vec<crate::stream::StreamConfig>,
    /// Connections to other brokers (DESIGN §8).
    #[serde(default)]
    pub bridges: Vec<crate::bridge::BridgeConfig>,
    #[serde(default)]
    pub log: Log,
    /// The admin HTTP API; off when the section is absent.
    #[serde(default)]
    pub admin: Option<Admin>,
}

/// `[[listeners]]`: an address and what is spoken on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub bind: SocketAddr,
    #[serde(default)]
    pub transport: Transport,
    /// PEM certificate chain (`tls`, `wss`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates are checked against.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate from `client_ca`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// The client certificate's common name is the username (and no
    /// password is asked for).
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// The HTTP path of the WebSocket endpoint (`ws`, `wss`).
    #[serde(default = "default_websocket_path")]
    pub path: String,
    /// New connections accepted per second on this listener (0: no
    /// limit); sockets beyond it are closed at once and counted.
    #[serde(default)]
    pub max_connection_rate: u32,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

fn default_websocket_path() -> String {
    "/mqtt".into()
}

impl Listener {
    /// Plain MQTT over TCP on `bind`.
    pub fn tcp(bind: SocketAddr) -> Listener {
        Listener {
            bind,
            transport: Transport::Tcp,
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: false,
            use_identity_as_username: false,
            path: default_websocket_path(),
            max_connection_rate: 0,
        }
    }

    /// The TLS files, for `tls` and `wss` listeners.
    pub fn tls_files(&self) -> Option<crate::transport::tls::TlsFiles> {
        if !self.transport.is_tls() {
            return None;
        }
        Some(crate::transport::tls::TlsFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            client_ca: self.client_ca.clone(),
            require_client_cert: self.require_client_cert,
        })
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let tls = self.transport.is_tls();
        if tls && self.cert.is_none() {
            return Err(("cert", "is required for a tls or wss listener".into()));
        }
        if tls && self.key.is_none() {
            return Err(("key", "is required for a tls or wss listener".into()));
        }
        if !tls {
            for (key, set) in [
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("client_ca", self.client_ca.is_some()),
                ("require_client_cert", self.require_client_cert),
                ("use_identity_as_username", self.use_identity_as_username),
            ] {
                if set {
                    return Err((key, "applies only to tls and wss listeners".into()));
                }
            }
        }
        if self.require_client_cert && self.client_ca.is_none() {
            return Err((
                "require_client_cert",
                "needs `client_ca` to check certificates against".into(),
            ));
        }
        if self.use_identity_as_username && !self.require_client_cert {
            return Err((
                "use_identity_as_username",
                "needs `require_client_cert = true`, or a client without a certificate would have no username".into(),
            ));
        }
        if !self.path.starts_with('/') {
            return Err(("path", "must start with '/'".into()));
        }
        Ok(())
    }
}

/// `[admin]`: where the admin HTTP API listens and what it asks of callers.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    /// Required unless `bind` is a loopback address, so the API is never
    /// open to the network without one.
    pub token: Option<String>,
}

/// Keeps the token out of anything that prints the settings.
impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the admin API listens when `[admin]` names no `bind`, and where
/// `petrel streams` looks for it unless told otherwise.
pub const DEFAULT_ADMIN_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

fn default_admin_bind() -> SocketAddr {
    DEFAULT_ADMIN_BIND
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections at once; further sockets are closed at accept.
    pub max_connections: usize,
    /// Seconds a socket may stay open without sending CONNECT.
    pub connect_timeout_secs: u64,
    /// Largest packet accepted from a client, in bytes (also sent to v5
    /// clients as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Unacknowledged outbound QoS 1/2 messages per client; the effective
    /// window is the smaller of this and the client's Receive Maximum.
    pub max_inflight: u16,
    /// Messages waiting per session beyond the inflight window. Under
    /// `sync`/`async` a persistent session keeps only the first few hundred
    /// in memory and the rest in the commit log; otherwise they are in memory.
    pub max_queued_messages: usize,
    /// Bytes of messages (topic, payload, properties) waiting per session.
    pub max_queued_bytes: usize,
    /// What a full queue does with a QoS 1/2 message: `drop_new`,
    /// `drop_oldest`, or `refuse` (the publisher gets v5 0x97).
    pub queue_full: QueueFull,
    /// Inbound QoS 2 messages a client may leave awaiting PUBREL (sent to v5
    /// clients as Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases a v5 client may set up towards the broker.
    pub max_topic_alias: u16,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions_per_client: usize,
    /// Upper bound on a client's keep alive; a v5 client asking for more (or
    /// for 0) is told this value as Server Keep Alive. 0 means no bound.
    pub max_keepalive_secs: u16,
    /// Upper bound on a v5 session expiry interval, in seconds.
    pub max_session_expiry_secs: u32,
    /// How long a persistent session outlives its connection when the
    /// protocol does not say (3.1.1 clean session 0), and the cap on what a
    /// v5 client asks for: Mosquitto's `persistent_client_expiration`.
    pub persistent_session_expiry: Lifetime,
    /// Sessions held at once, connected or not; a CONNECT that would create
    /// one more is refused (v5 0x97, 3.1.1 0x03).
    pub max_sessions: usize,
    /// Retained messages held at once; a retained publish to a new topic
    /// beyond it is refused (v5 0x97).
    pub max_retained_messages: usize,
    /// Bytes of retained messages (topics, payloads, properties) held at once.
    pub max_retained_bytes: usize,
    /// Seconds a connection may have output waiting without the client
    /// reading any of it before it is closed as a slow consumer.
    pub write_timeout_secs: u64,
    /// Topic aliases the broker sets up towards a v5 client that allows
    /// them (within the client's Topic Alias Maximum).
    pub max_outbound_topic_aliases: u16,
    /// The longest delay a `$delayed/{seconds}/...` publish may ask for;
    /// longer ones are refused (v5 0x83). EMQX's bound by default.
    pub max_delay: Lifetime,
    /// Delayed publishes waiting at once; further ones are refused (v5
    /// 0x97).
    pub max_pending_delays: usize,
    /// PUBLISH packets per second one connection may send (0: no limit).
    /// A client going faster than this allows is disconnected: v5 with
    /// DISCONNECT 0x96 (Message rate too high), 3.1.1 by closing. The
    /// PUBLISH that went over is not delivered, nor acknowledged, so a
    /// QoS 1/2 message is sent again when the client comes back.
    pub max_publish_rate: u32,
    /// PUBLISH packets a connection may send at once after a quiet spell,
    /// above `max_publish_rate` (the token bucket's size); 0: one
    /// second's worth.
    pub max_publish_burst: u32,
    /// Bytes (topic, payload and properties) per second one connection may
    /// publish (0: no limit); passing it disconnects as `max_publish_rate`
    /// does. A single message larger than the burst passes on a full
    /// bucket and the client then waits it off.
    pub max_publish_bytes_rate: u64,
    /// Bytes a connection may publish at once after a quiet spell; 0: one
    /// second's worth.
    pub max_publish_bytes_burst: u64,
}

impl Limits {
    /// The publish limits, as every connection's token buckets take them.
    pub fn publish_rates(&self) -> crate::session::PublishRates {
        crate::session::PublishRates {
            messages_per_sec: u64::from(self.max_publish_rate),
            messages_burst: u64::from(self.max_publish_burst),
            bytes_per_sec: self.max_publish_bytes_rate,
            bytes_burst: self.max_publish_bytes_burst,
        }
    }
}

/// The longest delay EMQX takes for `$delayed/...` (about 49.7 days).
pub const MAX_DELAY_SECS: u32 = 4_294_967;

/// A lifetime in seconds, or `never` ending. Written as a number of
/// seconds or with a unit: `"90s"`, `"30m"`, `"12h"`, `"7d"`, `"2w"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Never,
    Seconds(u32),
}

impl Lifetime {
    /// The lifetime as a session expiry interval (`u32::MAX`: never).
    pub fn seconds(self) -> u32 {
        match self {
            Lifetime::Never => u32::MAX,
            Lifetime::Seconds(secs) => secs,
        }
    }

    fn parse(text: &str) -> Result<Lifetime, String> {
        let text = text.trim();
        if text == "never" {
            return Ok(Lifetime::Never);
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!("`{text}` is not a duration like 3600, \"90s\", \"7d\" or \"never\"")
        })?;
        let scale = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            other => return Err(format!("unknown unit `{other}` (s, m, h, d, w)")),
        };
        Lifetime::scaled(number, scale, text)
    }

    /// `number` units of `scale` seconds; `text` names it in the error.
    fn scaled(number: u64, scale: u64, text: &str) -> Result<Lifetime, String> {
        number
            .checked_mul(scale)
            .filter(|&secs| secs < u64::from(u32::MAX))
            .map(|secs| Lifetime::Seconds(secs as u32))
            .ok_or_else(|| format!("`{text}` is too long; use \"never\""))
    }
}

impl<'de> Deserialize<'de> for Lifetime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Lifetime, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(secs) => Lifetime::scaled(secs, 1, &secs.to_string()),
            Raw::Text(text) => Lifetime::parse(&text),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            connect_timeout_secs: 10,
            max_packet_size: 1024 * 1024,
            max_inflight: 20,
            max_queued_messages: 1_000_000,
            max_queued_bytes: 1 << 30,
            queue_full: QueueFull::DropNew,
            receive_maximum: 100,
            max_topic_alias: 10,
            max_topic_length: 4096,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            max_keepalive_secs: 0,
            max_session_expiry_secs: u32::MAX,
            persistent_session_expiry: Lifetime::Never,
            max_sessions: 1_000_000,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1 << 30,
            write_timeout_secs: 30,
            max_outbound_topic_aliases: 16,
            max_delay: Lifetime::Seconds(MAX_DELAY_SECS),
            max_pending_delays: 1_000_000,
            max_publish_rate: 0,
            max_publish_burst: 0,
            max_publish_bytes_rate: 0,
            max_publish_bytes_burst: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter such as `info` or `petrel=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// When persistent sessions' messages reach the disk, and so what a PUBACK
/// or PUBREC promises.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// PUBACK / PUBREC only after the message and its stored copies are
    /// flushed (group commit). Survives `kill -9` and power loss.
    #[default]
    Sync,
    /// Acknowledgements at once; a background flush every
    /// `flush_interval_ms`. A crash loses at most that window.
    Async,
    /// Nothing on disk: everything is lost when the process ends.
    Memory,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

fn default_listeners() -> Vec<Listener> {
    vec![Listener::tcp(SocketAddr::from(([127, 0, 0, 1], 1883)))]
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

fn default_flush_interval_ms() -> u64 {
    100
}

fn default_log_segment_bytes() -> u32 {
    64 * 1024 * 1024
}

fn default_true() -> bool {
    true
}

fn default_sys_interval() -> u64 {
    10
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listeners: default_listeners(),
            data_dir: default_data_dir(),
            durability: Durability::default(),
            flush_interval_ms: default_flush_interval_ms(),
            log_segment_bytes: default_log_segment_bytes(),
            max_disk_bytes: 0,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            sys_interval: default_sys_interval(),
            limits: Limits::default(),
            streams: Vec::new(),
            bridges: Vec::new(),
            log: Log::default(),
            admin: None,
        }
    }
}

/// The log filter override read by the logger, not a setting: it must not
/// reach the settings as a `log` value.
pub const LOG_FILTER_VARIABLE: &str = "PETREL_LOG";

/// The admin API address the `petrel` commands that talk to a running
/// broker read. Not a setting: an operator who exports it and then runs
/// `petrel serve` in the same shell must not have it refused as `admin`.
pub const ADMIN_ADDRESS_VARIABLE: &str = "PETREL_ADMIN";

/// The admin API token those commands send; not a setting either.
pub const ADMIN_TOKEN_VARIABLE: &str = "PETREL_ADMIN_TOKEN";

/// The process environment minus the variables that are not settings.
fn setting_variables() -> std::collections::HashMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| {
            ![
                LOG_FILTER_VARIABLE,
                ADMIN_ADDRESS_VARIABLE,
                ADMIN_TOKEN_VARIABLE,
            ]
            .contains(&name.as_str())
        })
        .collect()
}

/// The configuration compiled into the binary: what `petrel serve` runs on
/// when no file is named, wherever it is started from.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/petrel.toml");

impl Settings {
    /// Loads `path`, or the embedded default when none is named, then
    /// applies `PETREL_*` environment overrides. A named file that cannot be
    /// read is an error, never a silent fall back to the default.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let builder = config::Config::builder();
        let builder = match path {
            Some(path) => {
                builder.add_source(config::File::from(path).format(config::FileFormat::Toml))
            }
            None => builder.add_source(config::File::from_str(
                EMBEDDED_DEFAULT,
                config::FileFormat::Toml,
            )),
        };
        let built = builder
            .add_source(
                config::Environment::with_prefix("PETREL")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(setting_variables())),
            )
            .build()
            .map_err(|source| ConfigError::Read {
                path: path.map_or_else(|| PathBuf::from("(embedded default)"), Path::to_path_buf),
                source,
            })?;
        let settings: Settings = built.try_deserialize().map_err(ConfigError::Invalid)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Settings for a broker on an ephemeral loopback port with nothing on
    /// disk, as tests want it. No `$SYS` topics: their retained messages
    /// would count against the retained limits and counts tests check, and
    /// the tests that want them set `sys_interval`.
    pub fn ephemeral() -> Settings {
        Settings {
            listeners: vec![Listener::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))],
            durability: Durability::Memory,
            sys_interval: 0,
            ..Settings::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let out_of_range = |key: &'static str, problem: &str| {
            Err(ConfigError::OutOfRange {
                key,
                problem: problem.to_string(),
            })
        };
        if self.listeners.is_empty() {
            return out_of_range("listeners", "must name at least one listener");
        }
        for (key, path) in [
            ("password_file", &self.password_file),
            ("acl_file", &self.acl_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return out_of_range(key, "must name a file");
            }
        }
        for (index, listener) in self.listeners.iter().enumerate() {
            listener
                .check()
                .map_err(|(key, problem)| ConfigError::Listener {
                    index,
                    bind: listener.bind,
                    key,
                    problem,
                })?;
        }
        let topic_limits = crate::topic::TopicLimits {
            max_length: limits.max_topic_length,
            max_levels: limits.max_topic_levels,
        };
        crate::stream::spec::check_all(&self.streams, topic_limits).map_err(|error| {
            ConfigError::Stream {
                stream: error.stream,
                key: error.key,
                problem: error.problem,
            }
        })?;
        crate::bridge::spec::check_all(&self.bridges, topic_limits).map_err(ConfigError::Bridge)?;
        if limits.max_packet_size < 64 || limits.max_packet_size > 268_435_455 {
            return out_of_range("limits.max_packet_size", "must be 64 ..= 268435455");
        }
        if limits.max_inflight == 0 {
            return out_of_range("limits.max_inflight", "must be at least 1");
        }
        if limits.receive_maximum == 0 {
            return out_of_range("limits.receive_maximum", "must be at least 1");
        }
        if limits.max_queued_messages == 0 {
            return out_of_range("limits.max_queued_messages", "must be at least 1");
        }
        if limits.max_queued_bytes == 0 {
            return out_of_range("limits.max_queued_bytes", "must be at least 1");
        }
        if self.log_segment_bytes < 64 * 1024 {
            return out_of_range("log_segment_bytes", "must be at least 65536");
        }
        if self.flush_interval_ms == 0 {
            return out_of_range("flush_interval_ms", "must be at least 1");
        }
        if self.sys_interval > MAX_SYS_INTERVAL {
            return out_of_range(
                "sys_interval",
                "must be at most 31536000 (a year); 0 is off",
            );
        }
        if limits.max_topic_length == 0 || limits.max_topic_length > TOPIC_LENGTH_CEILING {
            return out_of_range("limits.max_topic_length", "must be 1 ..= 65535");
        }
        if limits.max_topic_levels == 0 {
            return out_of_range("limits.max_topic_levels", "must be at least 1");
        }
        if limits.connect_timeout_secs == 0 {
            return out_of_range("limits.connect_timeout_secs", "must be at least 1");
        }
        if limits.max_connections == 0 {
            return out_of_range("limits.max_connections", "must be at least 1");
        }
        if limits.max_subscriptions_per_client == 0 {
            return out_of_range("limits.max_subscriptions_per_client", "must be at least 1");
        }
        if limits.max_sessions == 0 {
            return out_of_range("limits.max_sessions", "must be at least 1");
        }
        if limits.write_timeout_secs == 0 {
            return out_of_range("limits.write_timeout_secs", "must be at least 1");
        }
        if limits.max_publish_burst > 0 && limits.max_publish_rate == 0 {
            return out_of_range(
                "limits.max_publish_burst",
                "needs `limits.max_publish_rate`, or it limits nothing",
            );
        }
        if limits.max_publish_bytes_burst > 0 && limits.max_publish_bytes_rate == 0 {
            return out_of_range(
                "limits.max_publish_bytes_burst",
                "needs `limits.max_publish_bytes_rate`, or it limits nothing",
            );
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return out_of_range("log.level", "is not a valid log filter");
        }
        if let Some(admin) = &self.admin {
            match &admin.token {
                Some(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) => {
                    return out_of_range(
                        "admin.token",
                        "must be printable ASCII without spaces, as an HTTP header carries it",
                    );
                }
                None if !admin.bind.ip().is_loopback() => {
                    return Err(ConfigError::OutOfRange {
                        key: "admin.token",
                        problem: format!(
                            "must be set when `admin.bind` ({}) is not a loopback address",
                            admin.bind
                        ),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(text: &str) -> Result<Settings, ConfigError> {
        let mut file = tempfile_in_target(text);
        file.flush().unwrap();
        Settings::load(Some(&file.path))
    }

    struct TempFile {
        path: PathBuf,
        file: std::fs::File,
    }
    impl Write for TempFile {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.file.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn tempfile_in_target(text: &str) -> TempFile {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "petrel-config-test-{}-{n}.toml",
            std::process::id()
        ));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        TempFile { path, file }
    }

    #[test]
    fn shipped_default_config_loads() {
        let settings = Settings::load(Some(Path::new("config/petrel.toml"))).unwrap();
        assert_eq!(settings.listeners[0].bind.port(), 1883);
        assert!(settings.allow_anonymous);
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn embedded_default_matches_the_built_in_defaults() {
        let embedded = Settings::load(None).unwrap();
        let built_in = Settings::default();
        assert_eq!(embedded.listeners[0].bind, built_in.listeners[0].bind);
        assert_eq!(embedded.data_dir, built_in.data_dir);
        assert_eq!(embedded.durability, built_in.durability);
        assert_eq!(embedded.sys_interval, built_in.sys_interval);
        assert_eq!(
            format!("{:?}", embedded.limits),
            format!("{:?}", built_in.limits)
        );
    }

    #[test]
    fn sys_interval_is_10_by_default_off_for_tests_and_at_most_a_year() {
        assert_eq!(Settings::load(None).unwrap().sys_interval, 10);
        assert_eq!(Settings::ephemeral().sys_interval, 0);
        assert_eq!(load_str("sys_interval = 0\n").unwrap().sys_interval, 0);
        let err = load_str("sys_interval = 31536001\n").unwrap_err();
        assert!(err.to_string().contains("sys_interval"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = load_str("[limits]\nmax_inflihgt = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_inflihgt"), "{err}");
    }

    #[test]
    fn bad_value_is_rejected_with_its_key() {
        let err = load_str("[limits]\nmax_inflight = \"many\"\n").unwrap_err();
        assert!(err.to_string().contains("max_inflight"), "{err}");
        let err = load_str("[limits]\nmax_inflight = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_inflight"), "{err}");
        let err = load_str("[limits]\nmax_topic_length = 70000\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_topic_length"), "{err}");
    }

    #[test]
    fn streams_are_read_and_a_bad_one_is_refused_with_its_name_and_key() {
        let text = "[[streams]]\nname = \"orders\"\nfilters = [\"orders/#\"]\npartitions = 8\nkey = \"topic:1\"\n";
        let settings = load_str(text).unwrap();
        assert_eq!(settings.streams[0].partitions, 8);
        let err = load_str(&text.replace("partitions = 8", "partitions = 0")).unwrap_err();
        assert!(
            err.to_string().contains("stream `orders`: `partitions`"),
            "{err}"
        );
        let err = load_str(&format!("{text}retention = \"3 days\"\n")).unwrap_err();
        assert!(err.to_string().contains("`retention`"), "{err}");
    }

    #[test]
    fn lifetimes_read_numbers_units_and_never() {
        let limits =
            |text: &str| load_str(&format!("[limits]\npersistent_session_expiry = {text}\n"));
        let lifetime = |text: &str| limits(text).unwrap().limits.persistent_session_expiry;
        assert_eq!(lifetime("3600"), Lifetime::Seconds(3600));
        assert_eq!(lifetime("\"90s\""), Lifetime::Seconds(90));
        assert_eq!(lifetime("\"2h\""), Lifetime::Seconds(7200));
        assert_eq!(lifetime("\"7d\""), Lifetime::Seconds(604_800));
        assert_eq!(lifetime("\"never\""), Lifetime::Never);
        for bad in ["\"5 parsecs\"", "\"soon\"", "\"99999999w\""] {
            let err = limits(bad).unwrap_err();
            assert!(
                err.to_string().contains("persistent_session_expiry"),
                "{err}"
            );
        }
    }

    #[test]
    fn admin_is_off_unless_its_section_is_present() {
        assert!(Settings::load(None).unwrap().admin.is_none());
        let admin = load_str("[admin]\n").unwrap().admin.unwrap();
        assert_eq!(admin.bind, DEFAULT_ADMIN_BIND);
        assert_eq!(admin.token, None);
        let admin = load_str("[admin]\nbind = \"0.0.0.0:9200\"\ntoken = \"s3cret\"\n")
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.bind.port(), 9200);
        assert_eq!(admin.token.as_deref(), Some("s3cret"));
        assert!(!format!("{admin:?}").contains("s3cret"));
    }

    #[test]
    fn admin_open_to_the_network_without_a_token_is_refused() {
        for bind in ["0.0.0.0:9100", "[::]:9100", "192.0.2.7:9100"] {
            let err = load_str(&format!("[admin]\nbind = \"{bind}\"\n")).unwrap_err();
            assert!(err.to_string().contains("`admin.token`"), "{err}");
        }
        assert!(load_str("[admin]\nbind = \"[::1]:9100\"\n").is_ok());
        for token in ["\"\"", "\"two words\""] {
            let err = load_str(&format!("[admin]\ntoken = {token}\n")).unwrap_err();
            assert!(err.to_string().contains("`admin.token`"), "{err}");
        }
        let err = load_str("[admin]\nport = 9100\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn publish_limits_are_off_by_default_and_a_burst_needs_its_rate() {
        let limits = Settings::load(None).unwrap().limits;
        assert!(!limits.publish_rates().is_limited());
        let limits = load_str(
            "[limits]\nmax_publish_rate = 50\nmax_publish_bytes_rate = 10000\nmax_publish_bytes_burst = 65536\n",
        )
        .unwrap()
        .limits;
        let rates = limits.publish_rates();
        assert_eq!(
            (rates.messages_per_sec, rates.messages_burst),
            (50, 0),
            "burst 0: one second's worth"
        );
        assert_eq!((rates.bytes_per_sec, rates.bytes_burst), (10_000, 65_536));
        for (key, text) in [
            ("limits.max_publish_burst", "max_publish_burst = 5"),
            (
                "limits.max_publish_bytes_burst",
                "max_publish_bytes_burst = 5",
            ),
        ] {
            let err = load_str(&format!("[limits]\n{text}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn security_files_are_off_unless_named_and_an_empty_name_is_refused() {
        let settings = Settings::load(None).unwrap();
        assert_eq!(settings.password_file, None);
        assert_eq!(settings.acl_file, None);
        assert_eq!(Settings::ephemeral().password_file, None);
        assert_eq!(Settings::ephemeral().acl_file, None);
        let settings =
            load_str("password_file = \"/etc/petrel/passwd\"\nacl_file = \"/etc/petrel/acl\"\n")
                .unwrap();
        assert_eq!(
            settings.password_file.as_deref(),
            Some(Path::new("/etc/petrel/passwd"))
        );
        assert_eq!(
            settings.acl_file.as_deref(),
            Some(Path::new("/etc/petrel/acl"))
        );
        for key in ["password_file", "acl_file"] {
            let err = load_str(&format!("{key} = \"\"\n")).unwrap_err();
            assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = Settings::load(Some(Path::new("/nonexistent/petrel.toml"))).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/petrel.toml"),
            "{err}"
        );
    }
}
