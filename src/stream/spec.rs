//! A stream as configured (`[[streams]]`), checked: every bad value stops
//! the start with the stream and the key named.

use std::time::Duration;

use serde::Deserialize;

use super::KeySpec;
use crate::topic::{self, TopicLimits};

/// `[[streams]]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    pub filters: Vec<String>,
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    #[serde(default = "default_key")]
    pub key: String,
    pub retention: Option<String>,
    pub max_bytes: Option<ByteCount>,
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Vec<String>,
    #[serde(default = "default_max_inflight")]
    pub max_inflight_per_partition: u32,
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: String,
    /// `"strict"` or `"relaxed"`: what a partition does while one of its
    /// messages waits for a retry.
    #[serde(default = "default_ordering")]
    pub ordering: String,
    /// How long a group's dead letters are kept.
    #[serde(default = "default_dlq_retention")]
    pub dlq_retention: String,
    /// Bytes of dead letters kept per group: the oldest go first.
    #[serde(default = "default_dlq_max_bytes")]
    pub dlq_max_bytes: ByteCount,
}

/// A byte count: a number, or a string with a unit (`"512MiB"`, `"10GiB"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ByteCount {
    Bytes(u64),
    Text(String),
}

/// Where a group with no committed offsets starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// What a partition does while a failed message waits for its retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// The partition waits: a key's messages are handled in order.
    Strict,
    /// The message waits in the group's retry queue; the partition moves
    /// on, so later messages of its key may overtake it.
    Relaxed,
}

/// A checked stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub name: String,
    pub filters: Vec<String>,
    pub partitions: u32,
    pub key: KeySpec,
    pub retention: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub start: Start,
    pub max_attempts: u32,
    pub retry_backoff: Vec<Duration>,
    pub max_inflight_per_partition: u32,
    pub ack_timeout: Duration,
    pub ordering: Ordering,
    pub dlq_retention: Duration,
    pub dlq_max_bytes: u64,
}

/// Kept when neither `retention` nor `max_bytes` is given (Kafka's
/// default), so a stream never grows without bound by omission.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The most partitions a stream may have.
pub const MAX_PARTITIONS: u32 = 4096;

fn default_partitions() -> u32 {
    1
}
fn default_key() -> String {
    "client_id".into()
}
fn default_start() -> String {
    "latest".into()
}
fn default_dlq_retention() -> String {
    // RocketMQ's.
    "3d".into()
}
fn default_dlq_max_bytes() -> ByteCount {
    ByteCount::Text("1GiB".into())
}
fn default_max_attempts() -> u32 {
    16
}
fn default_retry_backoff() -> Vec<String> {
    [
        "1s", "5s", "10s", "30s", "1m", "2m", "3m", "4m", "5m", "6m", "7m", "8m", "9m", "10m",
        "20m", "30m",
    ]
    .map(String::from)
    .to_vec()
}
fn default_max_inflight() -> u32 {
    1
}
fn default_ack_timeout() -> String {
    "30s".into()
}
fn default_ordering() -> String {
    "strict".into()
}

/// What is wrong with one key of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub stream: String,
    pub key: &'static str,
    pub problem: String,
}

impl StreamConfig {
    /// A stream fed by `filters`, with every other value at its default
    /// (as a `[[streams]]` table naming only these two would have them).
    pub fn new(name: &str, filters: &[&str]) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
            partitions: default_partitions(),
            key: default_key(),
            retention: None,
            max_bytes: None,
            start: default_start(),
            max_attempts: default_max_attempts(),
            retry_backoff: default_retry_backoff(),
            max_inflight_per_partition: default_max_inflight(),
            ack_timeout: default_ack_timeout(),
            ordering: default_ordering(),
            dlq_retention: default_dlq_retention(),
            dlq_max_bytes: default_dlq_max_bytes(),
        }
    }

    /// Checks every value; `limits` are the broker's topic limits.
    pub fn check(&self, limits: TopicLimits) -> Result<StreamSpec, SpecError> {
        let fail = |key: &'static str, problem: String| SpecError {
            stream: self.name.clone(),
            key,
            problem,
        };
        if self.name.is_empty() || self.name.contains(['/', '+', '#', '\0']) {
            return Err(fail(
                "name",
                "must be non-empty, without '/', '+', '#'".into(),
            ));
        }
        if self.filters.is_empty() {
            return Err(fail(
                "filters",
                "must name at least one topic filter".into(),
            ));
        }
        for filter in &self.filters {
            match topic::parse_filter(filter, limits) {
                Ok(parsed) if parsed.share_group.is_none() => {}
                Ok(_) => {
                    return Err(fail(
                        "filters",
                        format!("`{filter}`: not a shared subscription"),
                    ));
                }
                Err(error) => return Err(fail("filters", format!("`{filter}`: {error}"))),
            }
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(fail(
                "partitions",
                format!("must be between 1 and {MAX_PARTITIONS}"),
            ));
        }
        let key = KeySpec::parse(&self.key).map_err(|problem| fail("key", problem))?;
        let retention = self
            .retention
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|problem| fail("retention", problem))?;
        let max_bytes = self
            .max_bytes
            .as_ref()
            .map(ByteCount::bytes)
            .transpose()
            .map_err(|problem| fail("max_bytes", problem))?;
        let retention = match (retention, max_bytes) {
            (None, None) => Some(DEFAULT_RETENTION),
            (retention, _) => retention,
        };
        let start = match self.start.as_str() {
            "latest" => Start::Latest,
            "earliest" => Start::Earliest,
            other => {
                return Err(fail(
                    "start",
                    format!("`{other}` is not \"latest\" or \"earliest\""),
                ));
            }
        };
        if self.max_attempts == 0 {
            return Err(fail("max_attempts", "must be at least 1".into()));
        }
        let retry_backoff = self
            .retry_backoff
            .iter()
            .map(|step| parse_duration(step))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| fail("retry_backoff", problem))?;
        if retry_backoff.is_empty() {
            return Err(fail("retry_backoff", "must have at least one step".into()));
        }
        if self.max_inflight_per_partition == 0 {
            return Err(fail(
                "max_inflight_per_partition",
                "must be at least 1".into(),
            ));
        }
        let ack_timeout =
            parse_duration(&self.ack_timeout).map_err(|problem| fail("ack_timeout", problem))?;
        if ack_timeout.is_zero() {
            return Err(fail("ack_timeout", "must be more than 0".into()));
        }
        let ordering = match self.ordering.as_str() {
            "strict" => Ordering::Strict,
            "relaxed" => Ordering::Relaxed,
            other => {
                return Err(fail(
                    "ordering",
                    format!("`{other}` is not \"strict\" or \"relaxed\""),
                ));
            }
        };
        let dlq_retention = parse_duration(&self.dlq_retention)
            .map_err(|problem| fail("dlq_retention", problem))?;
        let dlq_max_bytes = self
            .dlq_max_bytes
            .bytes()
            .map_err(|problem| fail("dlq_max_bytes", problem))?;
        Ok(StreamSpec {
            name: self.name.clone(),
            filters: self.filters.clone(),
            partitions: self.partitions,
            key,
            retention,
            max_bytes,
            start,
            max_attempts: self.max_attempts,
            retry_backoff,
            max_inflight_per_partition: self.max_inflight_per_partition,
            ack_timeout,
            ordering,
            dlq_retention,
            dlq_max_bytes,
        })
    }
}

/// Checks every stream and that their names differ.
pub fn check_all(
    streams: &[StreamConfig],
    limits: TopicLimits,
) -> Result<Vec<StreamSpec>, SpecError> {
    let mut specs: Vec<StreamSpec> = Vec::with_capacity(streams.len());
    for stream in streams {
        let spec = stream.check(limits)?;
        if specs.iter().any(|other| other.name == spec.name) {
            return Err(SpecError {
                stream: spec.name,
                key: "name",
                problem: "is used by another stream".into(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

impl ByteCount {
    pub(crate) fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            ByteCount::Bytes(bytes) => return Ok(*bytes),
            ByteCount::Text(text) => text.trim(),
        };
        let (number, unit) = number_and_unit(text).ok_or_else(|| {
            format!("`{text}` is not a size like 1048576, \"512MiB\" or \"10GiB\"")
        })?;
        let scale: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ));
            }
        };
        number
            .checked_mul(scale)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

/// The leading digits of `text` as a number, and the unit after them.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// A duration: `"250ms"`, `"30s"`, `"5m"`, `"12h"`, `"3d"`, `"2w"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration like \"250ms\", \"30s\" or \"3d\""))?;
    let millis: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        "" => return Err(format!("`{text}`: give a unit (ms, s, m, h, d, w)")),
        other => return Err(format!("unknown unit `{other}` (ms, s, m, h, d, w)")),
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TopicLimits {
        TopicLimits {
            max_length: 4096,
            max_levels: 128,
        }
    }

    fn orders() -> StreamConfig {
        toml_stream(
            r#"
            name = "orders"
            filters = ["orders/#"]
            partitions = 8
            key = "topic:1"
            retention = "3d"
            start = "earliest"
            "#,
        )
    }

    #[test]
    fn a_stream_made_in_code_has_the_defaults_of_a_minimal_table() {
        let minimal = toml_stream("name = \"orders\"\nfilters = [\"orders/#\"]\n");
        let made = StreamConfig::new("orders", &["orders/#"]);
        assert_eq!(made.check(limits()), minimal.check(limits()));
    }

    fn toml_stream(text: &str) -> StreamConfig {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_design_example_reads_with_its_defaults() {
        let spec = orders().check(limits()).unwrap();
        assert_eq!(spec.partitions, 8);
        assert_eq!(spec.key, KeySpec::TopicLevel(1));
        assert_eq!(spec.retention, Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(spec.start, Start::Earliest);
        assert_eq!(spec.max_attempts, 16);
        assert_eq!(spec.retry_backoff.len(), 16);
        assert_eq!(spec.retry_backoff[4], Duration::from_secs(60));
        assert_eq!(spec.max_inflight_per_partition, 1);
        assert_eq!(spec.ack_timeout, Duration::from_secs(30));
        assert_eq!(spec.ordering, Ordering::Strict);

        let minimal = toml_stream("name = \"m\"\nfilters = [\"m/#\"]");
        let spec = minimal.check(limits()).unwrap();
        assert_eq!((spec.partitions, spec.key.clone()), (1, KeySpec::ClientId));
        assert_eq!(
            spec.retention,
            Some(DEFAULT_RETENTION),
            "never unbounded by omission"
        );
        let sized = toml_stream("name = \"s\"\nfilters = [\"s\"]\nmax_bytes = \"10GiB\"");
        let spec = sized.check(limits()).unwrap();
        assert_eq!((spec.retention, spec.max_bytes), (None, Some(10 << 30)));
    }

    #[test]
    fn every_bad_value_is_refused_with_its_key_named() {
        type Spoil = fn(&mut StreamConfig);
        let cases: [(&str, Spoil); 13] = [
            ("name", |s| s.name = "a/b".into()),
            ("filters", |s| s.filters.clear()),
            ("filters", |s| s.filters = vec!["a/#/b".into()]),
            ("filters", |s| s.filters = vec!["$share/g/a".into()]),
            ("partitions", |s| s.partitions = 0),
            ("key", |s| s.key = "topic:one".into()),
            ("retention", |s| s.retention = Some("3".into())),
            ("max_bytes", |s| {
                s.max_bytes = Some(ByteCount::Text("10 parsecs".into()))
            }),
            ("start", |s| s.start = "beginning".into()),
            ("ack_timeout", |s| s.ack_timeout = "0s".into()),
            ("ordering", |s| s.ordering = "loose".into()),
            ("dlq_retention", |s| s.dlq_retention = "soon".into()),
            ("dlq_max_bytes", |s| {
                s.dlq_max_bytes = ByteCount::Text("lots".into())
            }),
        ];
        for (key, spoil) in cases {
            let mut stream = orders();
            spoil(&mut stream);
            let error = stream.check(limits()).unwrap_err();
            assert_eq!((&error.stream, error.key), (&stream.name, key), "{error:?}");
        }
        let twice = check_all(&[orders(), orders()], limits()).unwrap_err();
        assert_eq!(twice.key, "name");
    }

    #[test]
    fn durations_and_sizes_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert_eq!(ByteCount::Text("512MiB".into()).bytes(), Ok(512 << 20));
        assert_eq!(ByteCount::Text("1GB".into()).bytes(), Ok(1_000_000_000));
        assert_eq!(ByteCount::Bytes(42).bytes(), Ok(42));
    }
}
