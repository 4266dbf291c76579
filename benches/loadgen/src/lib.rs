//! The load generator behind `petrel bench` (and the `petrel-bench` binary).
//!
//! It speaks MQTT 3.1.1 or 5.0 over raw TCP sockets (packets encoded and
//! decoded with `mqttbytes`), so it measures any broker the same way, and
//! the numbers in `docs/BENCHMARKS.md` come from it. Every payload carries a
//! send timestamp, a publisher id and a sequence number (in the stream
//! scenario also a key, numbered per key); subscribers turn them into
//! latency percentiles and lost / duplicated / reordered counts.
//!
//! Layout: `client` (one raw connection), `publisher` and `subscriber` (the
//! per-connection loops), `plan` (who publishes where and who listens to
//! what), `scenario` (running fan-in, fan-out, pairs, stream),
//! `keyed` (keys, their owners and the stream stamp), `refusing` (a
//! consumer group that refuses its deliveries, and a watcher on its dead
//! letters), `idle` (many idle connections and broker memory), `stats`
//! (pure accounting), `progress` (the live line on a terminal while a run
//! goes on) and `report` (text and JSON output).

mod client;
mod flow;
mod idle;
mod keyed;
mod plan;
mod progress;
mod publisher;
mod refusing;
mod report;
mod scenario;
mod stats;
mod subscriber;

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::Version;
use crate::keyed::KEY_STAMP_LEN;
use crate::stats::STAMP_LEN;

/// Which traffic pattern to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// P publishers, each on its own topic, one subscriber on a `+` wildcard.
    FanIn,
    /// One publisher, S subscribers on the same topic.
    FanOut,
    /// N publisher/subscriber pairs, each pair on its own topic.
    Pairs,
    /// N idle connections held open; reports broker memory per connection.
    Idle,
    /// P publishers spreading their messages over K keys into a stream,
    /// read by a consumer group of M members; checks each key's order.
    Stream,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Pairs => "pairs",
            Scenario::Idle => "idle",
            Scenario::Stream => "stream",
        }
    }
}

/// Options of `petrel bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Broker host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker TCP port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Traffic pattern.
    #[arg(long, value_enum, default_value_t = Scenario::FanIn)]
    pub scenario: Scenario,
    /// MQTT protocol level: 4 (3.1.1) or 5 (5.0).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub protocol: u8,
    /// QoS of every PUBLISH and SUBSCRIBE [default: 1 for stream, else 0].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: Option<u8>,
    /// Publishers in the fan-in and stream scenarios.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub publishers: u32,
    /// Subscribers in the fan-out scenario.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers: u32,
    /// Publisher/subscriber pairs in the pairs scenario.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: u32,
    /// Keys the stream scenario's publishers spread their messages over,
    /// on topics `{stream}/k{key}/{run}`. Each key has one publisher, which
    /// numbers its messages, so there must be at least one per publisher.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub keys: u32,
    /// Members of the stream scenario's consumer group [default: 4]; in the
    /// fan-in scenario, members of a shared subscription
    /// `$share/{group}/...` that replace its single subscriber.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub members: Option<u32>,
    /// Stream the stream scenario publishes into and reads: the broker must
    /// feed it from filter `{stream}/#` with key `topic:1`.
    #[arg(long, default_value = "bench")]
    pub stream: String,
    /// Consumer group (`$share/{group}/$stream/{stream}`) of the stream
    /// scenario, or share name of fan-in's `--members`.
    #[arg(long, default_value = "bench")]
    pub group: String,
    /// Adds to the stream scenario a second consumer group,
    /// `$share/{name}/$stream/{stream}`, whose members refuse deliveries
    /// with reason 0x80 (a v5 PUBACK, or PUBREC at QoS 2), so that the
    /// broker retries them after the stream's backoff and dead-letters them
    /// beside the group that acknowledges everything. A watcher on
    /// `$dlq/{name}/{stream}` counts the dead letters. Needs --protocol 5
    /// and QoS 1 or 2.
    #[arg(long)]
    pub refusing_group: Option<String>,
    /// Members of --refusing-group [default: --members, or 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub refusing_members: Option<u32>,
    /// --refusing-group refuses every delivery of each key's messages
    /// numbered 0, N, 2N, ... and acknowledges the others [default: 1,
    /// refusing all].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub refuse_every: Option<u64>,
    /// Idle connections in the idle scenario.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Messages sent by each publisher.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Payload size in bytes (at least 20: timestamp, publisher id,
    /// sequence; 28 for stream, which adds a run tag and the key).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Offered load in messages per second over all publishers; unlimited
    /// when absent. Use the same value against two brokers to compare latency.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Outstanding QoS 1/2 messages per publisher, lowered to the broker's
    /// v5 receive maximum. Keep it within the broker's inflight limit for
    /// 3.1.1: Mosquitto silently discards QoS 2 messages beyond it.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_inflight: u16,
    /// Messages in flight end to end, over all publishers: a publisher sends
    /// only while fewer than this many published messages have not yet
    /// reached their subscriber (fan-in, pairs and stream). Keeps every
    /// queue short, so latency is that of a loaded broker, not of an
    /// overrun one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub e2e_window: Option<u64>,
    /// Keepalive announced in CONNECT, in seconds; clients ping at half of it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(2..))]
    pub keepalive: u16,
    /// Subscribers keep a persistent session (3.1.1 clean session 0; 5.0
    /// clean start 0 with a Session Expiry Interval), so the broker must
    /// store every message for them. Each starts from an empty session and
    /// ends it after the run; publishers stay clean. Ignored by `idle`.
    #[arg(long)]
    pub persistent: bool,
    /// Seconds the idle scenario holds its connections before measuring.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Seconds subscribers keep listening once publishers are done and no
    /// message arrives.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Hard limit on the whole run in seconds; what arrived by then is reported.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Broker process id: its VmRSS is read from /proc before and after
    /// connecting, for memory per connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Name printed in the report (e.g. petrel, mosquitto).
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why a benchmark could not run. Problems during the measured phase do not
/// abort the run; they are counted in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--payload must be at least {min} bytes (got {got})")]
    PayloadTooSmall { min: usize, got: usize },
    #[error(
        "--e2e-window applies to fan-in, pairs and stream, where each message has one subscriber"
    )]
    EndToEndFanOut,
    #[error("--members applies to the stream and fan-in scenarios")]
    MembersScenario,
    #[error(
        "--keys {keys} is fewer than --publishers {publishers}: each key has one publisher, which numbers its messages"
    )]
    TooFewKeys { keys: u32, publishers: u32 },
    #[error("--{option} `{name}` must be non-empty, without '/', '+' or '#'")]
    BadName { option: &'static str, name: String },
    #[error("--{0} applies to the stream scenario with --refusing-group")]
    RefusingOption(&'static str),
    #[error("--refusing-group must differ from --group (both are `{0}`)")]
    SameGroup(String),
    #[error(
        "refusing a delivery needs --protocol 5: a 3.1.1 acknowledgement carries no reason code"
    )]
    RefusalNeedsV5,
    #[error("refusing a delivery needs QoS 1 or 2: at QoS 0 a group commits on send")]
    RefusalNeedsQos,
    #[error("--drain must be a finite number of seconds >= 0 (got {0})")]
    BadDrain(f64),
    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("{host}:{port} resolves to no address")]
    NoAddress { host: String, port: u16 },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("I/O error on {client}: {source}")]
    Io {
        client: String,
        source: std::io::Error,
    },
    #[error("broker closed the connection of {client}")]
    Closed { client: String },
    #[error("broker refused {client} with CONNACK code {code:#04x}")]
    ConnectRefused { client: String, code: u8 },
    #[error("broker refused the subscription of {client} with code {code:#04x}")]
    SubscribeRefused { client: String, code: u8 },
    #[error("broker still had a session for {client} after a clean CONNECT ({attempts} attempts)")]
    SessionKept { client: String, attempts: u32 },
    #[error("broker sent DISCONNECT to {client} with reason {reason:#04x}")]
    Disconnected { client: String, reason: u8 },
    #[error("broker sent an unexpected {packet} to {client}")]
    UnexpectedPacket {
        client: String,
        packet: &'static str,
    },
    #[error("malformed packet from the broker on {client}: {error}")]
    Decode {
        client: String,
        error: mqttbytes::Error,
    },
    #[error("cannot encode a packet: {0}")]
    Encode(mqttbytes::Error),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("a client task ended before reporting: {0}")]
    TaskLost(&'static str),
    #[error("client task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot read /proc/{pid}/status of the broker: {source}")]
    RssRead { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/status of the broker has no VmRSS line")]
    RssMissing { pid: u32 },
    #[error("cannot read /proc/{pid}/stat of the broker: {source}")]
    CpuRead { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat of the broker has no CPU times")]
    CpuMissing { pid: u32 },
}

impl BenchArgs {
    /// The QoS level of the run: `--qos`, or the scenario's default (a
    /// stream's promises are about acknowledged messages, so 1).
    pub fn qos_level(&self) -> u8 {
        self.qos.unwrap_or(if self.scenario == Scenario::Stream {
            1
        } else {
            0
        })
    }

    /// Members of the group the subscribers form, if they form one.
    pub fn group_members(&self) -> Option<u32> {
        match self.scenario {
            Scenario::Stream => Some(self.members.unwrap_or(4)),
            Scenario::FanIn => self.members,
            _ => None,
        }
    }

    /// Refuses combinations of options that cannot run as asked.
    pub fn check(&self) -> Result<(), BenchError> {
        let min = if self.scenario == Scenario::Stream {
            KEY_STAMP_LEN
        } else {
            STAMP_LEN
        };
        if self.payload < min {
            return Err(BenchError::PayloadTooSmall {
                min,
                got: self.payload,
            });
        }
        if self.e2e_window.is_some() && self.scenario == Scenario::FanOut {
            return Err(BenchError::EndToEndFanOut);
        }
        if !self.drain.is_finite() || self.drain < 0.0 {
            return Err(BenchError::BadDrain(self.drain));
        }
        if self.members.is_some() && !matches!(self.scenario, Scenario::Stream | Scenario::FanIn) {
            return Err(BenchError::MembersScenario);
        }
        if self.scenario == Scenario::Stream && self.keys < self.publishers {
            return Err(BenchError::TooFewKeys {
                keys: self.keys,
                publishers: self.publishers,
            });
        }
        self.check_refusing()?;
        let mut names = vec![("stream", &self.stream), ("group", &self.group)];
        if let Some(refusing) = &self.refusing_group {
            names.push(("refusing-group", refusing));
        }
        for (option, name) in names {
            if name.is_empty() || name.contains(['/', '+', '#']) {
                return Err(BenchError::BadName {
                    option,
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_refusing(&self) -> Result<(), BenchError> {
        let Some(refusing) = &self.refusing_group else {
            if self.refusing_members.is_some() {
                return Err(BenchError::RefusingOption("refusing-members"));
            }
            if self.refuse_every.is_some() {
                return Err(BenchError::RefusingOption("refuse-every"));
            }
            return Ok(());
        };
        if self.scenario != Scenario::Stream {
            return Err(BenchError::RefusingOption("refusing-group"));
        }
        if *refusing == self.group {
            return Err(BenchError::SameGroup(refusing.clone()));
        }
        if self.protocol != 5 {
            return Err(BenchError::RefusalNeedsV5);
        }
        if self.qos_level() == 0 {
            return Err(BenchError::RefusalNeedsQos);
        }
        Ok(())
    }
}

/// Runs one benchmark and prints its report (text, or JSON with `--json`).
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    args.check()?;
    let addr = resolve(&args.host, args.port).await?;
    let version = if args.protocol == 5 {
        Version::V5
    } else {
        Version::V4
    };
    tracing::info!(%addr, scenario = args.scenario.name(), qos = args.qos_level(), "bench starting");
    let report = match args.scenario {
        Scenario::Idle => idle::run(&args, addr, version).await?.render(args.json),
        _ => scenario::run(&args, addr, version).await?.render(args.json),
    };
    println!("{report}");
    Ok(())
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, BenchError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| BenchError::Resolve {
            host: host.to_string(),
            port,
            source,
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| BenchError::NoAddress {
            host: host.to_string(),
            port,
        })
}

/// Broker resident memory in kB, when a broker pid was given.
fn broker_rss_kb(pid: Option<u32>) -> Result<Option<u64>, BenchError> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    // A tiny procfs read: blocking the runtime for it is harmless.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| BenchError::RssRead { pid, source })?;
    stats::parse_vmrss_kb(&status)
        .map(Some)
        .ok_or(BenchError::RssMissing { pid })
}

/// The broker's CPU time (user + system) in clock ticks, when a broker
/// pid was given.
fn broker_cpu_ticks(pid: Option<u32>) -> Result<Option<u64>, BenchError> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| BenchError::CpuRead { pid, source })?;
    stats::parse_cpu_ticks(&stat)
        .map(Some)
        .ok_or(BenchError::CpuMissing { pid })
}

/// A short id that keeps topics and client ids of concurrent or successive
/// runs apart.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

fn ping_every(keepalive: u16) -> Duration {
    Duration::from_secs(u64::from(keepalive / 2).max(1))
}
