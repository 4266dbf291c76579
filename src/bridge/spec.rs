//! A bridge as configured (`[[bridges]]`), checked, and its topic rules:
//! which local topics go to the remote and which remote topics come in,
//! under which names (Mosquitto's `topic pattern direction qos local_prefix
//! remote_prefix`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::{QoS, Version};
use crate::session::{QueueFull, QueueLimits};
use crate::stream::spec::ByteCount;
use crate::topic::{self, TopicLimits};

/// `[[bridges]]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub name: String,
    /// One `host:port`, or a list: the first is the primary, the others
    /// are tried in turn when it cannot be reached.
    pub address: Addresses,
    #[serde(default = "default_transport")]
    pub transport: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: Option<String>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub clean_start: bool,
    #[serde(default = "default_keepalive")]
    pub keepalive: u16,
    /// Seconds: the first retry after about `base`, doubling up to `cap`.
    #[serde(default = "default_restart_backoff")]
    pub restart_backoff: Vec<f64>,
    /// 3.1.1: announce a bridge the way Mosquitto's `try_private` does.
    #[serde(default = "default_try_private")]
    pub try_private: bool,
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: ByteCount,
    #[serde(default)]
    pub queue_full: QueueFull,
    #[serde(default)]
    pub topics: Vec<TopicRuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Addresses {
    One(String),
    Many(Vec<String>),
}

/// One `topics` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRuleConfig {
    pub pattern: String,
    #[serde(default = "default_direction")]
    pub direction: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_transport() -> String {
    "tcp".into()
}
fn default_protocol() -> String {
    "mqttv5".into()
}
fn default_keepalive() -> u16 {
    60
}
fn default_restart_backoff() -> Vec<f64> {
    vec![1.0, 60.0]
}
fn default_try_private() -> bool {
    true
}
fn default_max_inflight() -> u16 {
    100
}
fn default_max_queued_bytes() -> ByteCount {
    ByteCount::Text("1GiB".into())
}
fn default_direction() -> String {
    // Mosquitto's default.
    "out".into()
}

/// A checked bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeSpec {
    pub name: String,
    pub addresses: Vec<Address>,
    pub tls: Option<TlsFiles>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    pub protocol: Version,
    pub clean_start: bool,
    pub keepalive: u16,
    pub backoff: Backoff,
    pub try_private: bool,
    pub max_inflight: u16,
    pub queue: QueueLimits,
    pub rules: Vec<TopicRule>,
}

/// A remote address as configured: resolved at each connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What a TLS bridge verifies the remote with, and what it shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Reconnection delays: `base` doubling up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay before attempt `failures + 1` (after `failures` failed in
    /// a row), scaled by `jitter` in [0, 1): between half and all of the
    /// doubled base, so bridges that failed together do not return
    /// together.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doubled = self
            .base
            .saturating_mul(1u32 << failures.min(20))
            .min(self.cap);
        doubled.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Both,
}

/// One checked topic rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl TopicRule {
    /// The local subscription of an `out` rule.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The remote subscription of an `in` rule.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    pub fn goes_out(&self) -> bool {
        matches!(self.direction, Direction::Out | Direction::Both)
    }

    pub fn comes_in(&self) -> bool {
        matches!(self.direction, Direction::In | Direction::Both)
    }
}

impl BridgeSpec {
    /// The remote name of a local message's topic: by the first `out`
    /// rule that matches it, its local prefix replaced by the remote one.
    pub fn remote_topic(&self, local: &str) -> Option<String> {
        self.rules
            .iter()
            .filter(|rule| rule.goes_out())
            .find(|rule| topic::matches(&rule.local_filter(), local))
            .map(|rule| swap_prefix(local, &rule.local_prefix, &rule.remote_prefix))
    }

    /// The local name of a remote message's topic: by the first `in` rule
    /// that matches it.
    pub fn local_topic(&self, remote: &str) -> Option<String> {
        self.rules
            .iter()
            .filter(|rule| rule.comes_in())
            .find(|rule| topic::matches(&rule.remote_filter(), remote))
            .map(|rule| swap_prefix(remote, &rule.remote_prefix, &rule.local_prefix))
    }

    pub fn local_client_id(&self) -> String {
        local_client_id(&self.name)
    }
}

/// Client ids the broker keeps for its bridges' sessions: refused to
/// clients.
pub const LOCAL_CLIENT_PREFIX: &str = "$bridge/";

/// The client id of bridge `name`'s own session on this broker, which
/// holds what waits for the remote.
pub fn local_client_id(name: &str) -> String {
    format!("{LOCAL_CLIENT_PREFIX}{name}")
}

fn swap_prefix(topic: &str, from: &str, to: &str) -> String {
    let rest = topic.strip_prefix(from).unwrap_or(topic);
    format!("{to}{rest}")
}

/// What is wrong with one bridge: its position and name, the key, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub index: usize,
    pub bridge: String,
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bridges[{}] `{}`: `{}` {}",
            self.index, self.bridge, self.key, self.problem
        )
    }
}

/// Checks every bridge; names must be unique.
pub fn check_all(
    configs: &[BridgeConfig],
    limits: TopicLimits,
) -> Result<Vec<BridgeSpec>, SpecError> {
    let mut specs: Vec<BridgeSpec> = Vec::with_capacity(configs.len());
    for (index, config) in configs.iter().enumerate() {
        let spec = config.check(index, limits)?;
        if specs.iter().any(|other| other.name == spec.name) {
            return Err(SpecError {
                index,
                bridge: spec.name,
                key: "name".into(),
                problem: "is used by another bridge".into(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

impl BridgeConfig {
    /// Checks every value; `index` is the bridge's place in the file.
    pub fn check(&self, index: usize, limits: TopicLimits) -> Result<BridgeSpec, SpecError> {
        let fail = |key: &str, problem: String| SpecError {
            index,
            bridge: self.name.clone(),
            key: key.to_string(),
            problem,
        };
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(fail(
                "name",
                "must be non-empty letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let tls = match self.transport.as_str() {
            "tcp" => None,
            "tls" => Some(TlsFiles {
                ca: self
                    .ca
                    .clone()
                    .ok_or_else(|| fail("ca", "is required with transport = \"tls\"".into()))?,
                identity: match (&self.cert, &self.key) {
                    (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                    (None, None) => None,
                    _ => return Err(fail("cert", "and `key` go together".into())),
                },
            }),
            other => {
                return Err(fail(
                    "transport",
                    format!("`{other}`: not \"tcp\" or \"tls\""),
                ));
            }
        };
        if tls.is_none() && (self.ca.is_some() || self.cert.is_some() || self.key.is_some()) {
            return Err(fail(
                "ca",
                "`ca`, `cert` and `key` need transport = \"tls\"".into(),
            ));
        }
        let written = match &self.address {
            Addresses::One(one) => std::slice::from_ref(one),
            Addresses::Many(many) => many.as_slice(),
        };
        if written.is_empty() {
            return Err(fail("address", "must name at least one host:port".into()));
        }
        let default_port = if tls.is_some() { 8883 } else { 1883 };
        let addresses = written
            .iter()
            .map(|text| {
                parse_address(text, default_port).map_err(|problem| fail("address", problem))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match self.protocol.as_str() {
            "mqttv5" => Version::V5,
            "mqttv311" => Version::V311,
            other => {
                return Err(fail(
                    "protocol",
                    format!("`{other}`: not \"mqttv5\" or \"mqttv311\""),
                ));
            }
        };
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("petrel-bridge-{}", self.name));
        if client_id.is_empty() || client_id.len() > 65_535 {
            return Err(fail("client_id", "must be 1 to 65535 bytes".into()));
        }
        if self.password.is_some() && self.username.is_none() && protocol == Version::V311 {
            return Err(fail("password", "needs a `username` under mqttv311".into()));
        }
        let backoff = match self.restart_backoff.as_slice() {
            [base, cap] if *base > 0.0 && cap >= base && cap.is_finite() => Backoff {
                base: Duration::from_secs_f64(*base),
                cap: Duration::from_secs_f64(*cap),
            },
            _ => {
                return Err(fail(
                    "restart_backoff",
                    "must be [base, cap] in seconds, 0 < base <= cap".into(),
                ));
            }
        };
        if self.max_inflight == 0 {
            return Err(fail("max_inflight", "must be at least 1".into()));
        }
        let max_bytes = self
            .max_queued_bytes
            .bytes()
            .map_err(|problem| fail("max_queued_bytes", problem))?;
        if max_bytes == 0 {
            return Err(fail("max_queued_bytes", "must be at least 1".into()));
        }
        if self.topics.is_empty() {
            return Err(fail("topics", "must hold at least one rule".into()));
        }
        let rules = self
            .topics
            .iter()
            .enumerate()
            .map(|(at, rule)| {
                rule.check(limits)
                    .map_err(|problem| fail(&format!("topics[{at}]"), problem))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BridgeSpec {
            name: self.name.clone(),
            addresses,
            tls,
            username: self.username.clone(),
            password: self.password.clone(),
            client_id,
            protocol,
            clean_start: self.clean_start,
            keepalive: self.keepalive,
            backoff,
            try_private: self.try_private,
            max_inflight: self.max_inflight,
            queue: QueueLimits {
                max_messages: usize::MAX,
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                when_full: self.queue_full,
            },
            rules,
        })
    }
}

impl TopicRuleConfig {
    fn check(&self, limits: TopicLimits) -> Result<TopicRule, String> {
        let direction = match self.direction.as_str() {
            "in" => Direction::In,
            "out" => Direction::Out,
            "both" => Direction::Both,
            other => {
                return Err(format!(
                    "direction `{other}`: not \"in\", \"out\" or \"both\""
                ));
            }
        };
        let qos =
            QoS::from_bits(self.qos).ok_or_else(|| format!("qos {}: not 0, 1 or 2", self.qos))?;
        for (key, prefix) in [
            ("local_prefix", &self.local_prefix),
            ("remote_prefix", &self.remote_prefix),
        ] {
            if prefix.contains(['+', '#', '\0']) {
                return Err(format!("{key} `{prefix}`: no wildcards in a prefix"));
            }
        }
        if self.pattern.is_empty() && self.local_prefix.is_empty() && self.remote_prefix.is_empty()
        {
            return Err("an empty pattern needs a prefix, which is then the whole topic".into());
        }
        if self.pattern.starts_with("$share/") {
            return Err(format!(
                "pattern `{}`: not a shared subscription",
                self.pattern
            ));
        }
        let rule = TopicRule {
            pattern: self.pattern.clone(),
            direction,
            qos,
            local_prefix: self.local_prefix.clone(),
            remote_prefix: self.remote_prefix.clone(),
        };
        for (side, filter) in [
            ("local", rule.local_filter()),
            ("remote", rule.remote_filter()),
        ] {
            topic::validate_filter(&filter, limits).map_err(|error| {
                format!(
                    "pattern `{}`: {side} filter `{filter}` {error}",
                    rule.pattern
                )
            })?;
        }
        Ok(rule)
    }
}

/// `host:port`, `[v6]:port` or a bare host (the transport's default port).
fn parse_address(text: &str, default_port: u16) -> Result<Address, String> {
    let bad = || format!("`{text}`: not host:port");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(bad()),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?,
        None => default_port,
    };
    Ok(Address {
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TopicLimits = TopicLimits {
        max_length: 4096,
        max_levels: 128,
    };

    fn parse(toml_rules: &str) -> Result<BridgeSpec, SpecError> {
        let text = format!("name = \"up\"\naddress = \"127.0.0.1:1884\"\n{toml_rules}");
        let config: BridgeConfig = toml_from(&text);
        config.check(0, LIMITS)
    }

    fn toml_from(text: &str) -> BridgeConfig {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|built| built.try_deserialize())
            .expect("a bridge table")
    }

    #[test]
    fn out_rules_swap_the_local_prefix_for_the_remote_one_as_mosquitto_does() {
        let spec = parse(
            "topics = [{ pattern = \"sensors/#\", direction = \"out\", qos = 1, local_prefix = \"site/\", remote_prefix = \"edge1/\" }]",
        )
        .unwrap();
        assert_eq!(spec.rules[0].local_filter(), "site/sensors/#");
        assert_eq!(
            spec.remote_topic("site/sensors/a/temp").as_deref(),
            Some("edge1/sensors/a/temp")
        );
        assert_eq!(spec.remote_topic("sensors/a"), None);
        // An `out` rule brings nothing in.
        assert_eq!(spec.local_topic("edge1/sensors/a"), None);
    }

    #[test]
    fn in_rules_swap_the_remote_prefix_for_the_local_one_and_the_first_match_decides() {
        let spec = parse(
            "topics = [\n\
             { pattern = \"cmd/#\", direction = \"in\", qos = 2, local_prefix = \"remote/\", remote_prefix = \"hq/\" },\n\
             { pattern = \"#\", direction = \"both\", local_prefix = \"all/\" },\n\
             ]",
        )
        .unwrap();
        assert_eq!(spec.rules[0].remote_filter(), "hq/cmd/#");
        assert_eq!(
            spec.local_topic("hq/cmd/reboot").as_deref(),
            Some("remote/cmd/reboot")
        );
        assert_eq!(
            spec.local_topic("hq/other").as_deref(),
            Some("all/hq/other")
        );
        assert_eq!(spec.remote_topic("all/x/y").as_deref(), Some("x/y"));
    }

    #[test]
    fn an_empty_pattern_maps_one_whole_topic_onto_another() {
        let spec = parse(
            "topics = [{ pattern = \"\", direction = \"out\", local_prefix = \"here/status\", remote_prefix = \"there/status\" }]",
        )
        .unwrap();
        assert_eq!(
            spec.remote_topic("here/status").as_deref(),
            Some("there/status")
        );
        assert_eq!(spec.remote_topic("here/status/x"), None);
    }

    #[test]
    fn a_bad_rule_is_refused_with_the_bridge_and_the_rule_named() {
        for (rule, problem) in [
            ("{ pattern = \"a/#\", qos = 3 }", "qos 3"),
            (
                "{ pattern = \"a/#\", local_prefix = \"x/#/\" }",
                "no wildcards",
            ),
            ("{ pattern = \"a/#/b\" }", "misplaced wildcard"),
            ("{ pattern = \"a\", direction = \"sideways\" }", "sideways"),
            ("{ pattern = \"\" }", "needs a prefix"),
        ] {
            let text = format!("topics = [{{ pattern = \"ok/#\" }}, {rule}]");
            let error = parse(&text).unwrap_err();
            assert_eq!(error.key, "topics[1]", "{rule}");
            assert!(error.problem.contains(problem), "{rule}: {}", error.problem);
            assert!(
                error
                    .to_string()
                    .starts_with("bridges[0] `up`: `topics[1]`"),
                "{error}"
            );
        }
    }

    #[test]
    fn addresses_take_a_default_port_and_keep_their_order() {
        let config = toml_from(
            "name = \"up\"\naddress = [\"a.example\", \"[::1]:1999\", \"10.0.0.2:1884\"]\ntopics = [{ pattern = \"#\" }]",
        );
        let spec = config.check(0, LIMITS).unwrap();
        let shown: Vec<String> = spec.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a.example:1883", "[::1]:1999", "10.0.0.2:1884"]);
        for bad in ["\"host:0\"", "\"host:x\"", "[]", "\":1883\""] {
            let config = toml_from(&format!(
                "name = \"up\"\naddress = {bad}\ntopics = [{{ pattern = \"#\" }}]"
            ));
            assert_eq!(config.check(0, LIMITS).unwrap_err().key, "address", "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_takes_at_most_half() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        };
        assert_eq!(backoff.delay(0, 0.999_999).as_millis(), 999);
        assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(10, 0.0), Duration::from_secs(15));
        assert_eq!(backoff.delay(u32::MAX, 0.0), Duration::from_secs(15));
    }

    #[test]
    fn names_must_be_unique() {
        let one = toml_from("name = \"up\"\naddress = \"h:1\"\ntopics = [{ pattern = \"#\" }]");
        let error = check_all(&[one.clone(), one], LIMITS).unwrap_err();
        assert_eq!((error.index, error.key.as_str()), (1, "name"));
    }
}
