//! The `$SYS/broker/...` topics: the broker's own figures, published every
//! `sys_interval` seconds under Mosquitto's topic names and payload formats,
//! so dashboards and scripts written for Mosquitto read petrel unchanged.
//!
//! A round reads a `Sample` (counters since start, gauges now), and
//! `SysTree` (no I/O, time passed in) turns it into the values that changed
//! since the last round: every value in the first round, then
//! `$SYS/broker/uptime` always and the rest only when their text changed,
//! as Mosquitto does. Each round starts with the uptime.
//!
//! The values are retained, but only in memory: they describe this run of
//! the broker, so writing them to the commit log every few seconds would
//! cost disk for nothing a restart could use (Mosquitto does not persist
//! them either). They go out at QoS 0, which also keeps copies for
//! persistent subscribers out of the journal; a lost value is replaced by
//! the next one. Delivery and retained-on-subscribe go through the ACL like
//! any message, so a client reads them only where the ACL lets it.
//!
//! Clients may not publish to `$SYS/...` (Mosquitto's rule, see
//! `reserved_for_the_broker`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::BrokerState;
use crate::protocol::{Message, MessageProperties, QoS};
use crate::timer::now_ms;

const UPTIME: &str = "$SYS/broker/uptime";

/// The topic bridges (Mosquitto's `notifications`) report their state on;
/// Mosquitto lets clients publish there and nowhere else under `$SYS`.
const BRIDGE_STATE: &str = "$SYS/broker/connection/+/state";

/// Whether only the broker may publish to `topic`: anything under `$SYS/`
/// but a bridge's state topic, also when a `$delayed/{s}/` prefix would
/// publish it later. Mosquitto compares the first four bytes (so it also
/// refuses `$SYSx`); petrel refuses the `$SYS` level, which is what that
/// rule is for.
pub(super) fn reserved_for_the_broker(topic: &str) -> bool {
    let target = match crate::delay::delayed_topic(topic) {
        Ok(Some(delayed)) => delayed.topic,
        Ok(None) | Err(_) => topic,
    };
    let in_sys = target == "$SYS" || target.starts_with("$SYS/");
    in_sys && !crate::topic::matches(BRIDGE_STATE, target)
}

/// What one round reads from the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Sessions with a connection attached.
    pub clients_connected: u64,
    /// Sessions, connected or not.
    pub clients_total: u64,
    /// The most network connections open at once since start.
    pub clients_maximum: u64,
    /// Sessions ended by their expiry since start.
    pub clients_expired: u64,
    /// PUBLISH packets received and sent since start.
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Messages dropped for a full queue or a receiver's packet size.
    pub messages_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Network connections accepted since start.
    pub connections_opened: u64,
    /// Subscription filters held by sessions (shared ones included).
    pub subscriptions: u64,
    /// Retained messages, `$SYS` ones included.
    pub retained: u64,
    /// Message copies waiting in or in flight from sessions' queues, plus
    /// the retained messages.
    pub stored: u64,
    /// The process's memory, where the platform tells.
    pub memory: Option<Memory>,
}

/// The process's resident memory, in bytes: petrel does not track its heap
/// as Mosquitto's memory-tracking build does, and resident memory is the
/// nearest figure the kernel gives for free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    pub current: u64,
    /// The peak since start (high-water mark).
    pub maximum: u64,
}

/// Reads `VmRSS` and `VmHWM` from the text of `/proc/self/status`.
fn parse_proc_status(text: &str) -> Option<Memory> {
    let kilobytes = |field: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|number| number.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        current: kilobytes("VmRSS:")?,
        maximum: kilobytes("VmHWM:")?,
    })
}

/// `None` off Linux, or when `/proc` is not mounted: the heap topics are
/// then left out, as Mosquitto leaves them out of builds without memory
/// tracking.
fn read_memory() -> Option<Memory> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| parse_proc_status(&text))
}

/// Mosquitto's load figure: a counter's rate per minute, averaged with
/// exponentially decaying weights over 1, 5 and 15 minutes (as `uptime`'s
/// load averages are). Each update folds in one interval's rate with the
/// weight `1 - e^(-interval/window)`, so a steady rate is approached by 63%
/// within one window whatever the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

impl LoadAverage {
    /// Folds in `delta` events counted over `elapsed_secs`. A zero or
    /// negative interval measured nothing and changes nothing.
    pub fn update(&mut self, delta: u64, elapsed_secs: f64) {
        if elapsed_secs <= 0.0 {
            return;
        }
        let rate = delta as f64 * 60.0 / elapsed_secs;
        for (average, window) in [
            (&mut self.one, 60.0),
            (&mut self.five, 300.0),
            (&mut self.fifteen, 900.0),
        ] {
            let decay = (-elapsed_secs / window).exp();
            *average = rate + decay * (*average - rate);
        }
    }
}

/// The load topics, each with the counter of `Sample::load_counters` it
/// averages, in that order.
const LOAD_TOPICS: [[&str; 3]; 5] = [
    [
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/received/5min",
        "$SYS/broker/load/messages/received/15min",
    ],
    [
        "$SYS/broker/load/messages/sent/1min",
        "$SYS/broker/load/messages/sent/5min",
        "$SYS/broker/load/messages/sent/15min",
    ],
    [
        "$SYS/broker/load/bytes/received/1min",
        "$SYS/broker/load/bytes/received/5min",
        "$SYS/broker/load/bytes/received/15min",
    ],
    [
        "$SYS/broker/load/bytes/sent/1min",
        "$SYS/broker/load/bytes/sent/5min",
        "$SYS/broker/load/bytes/sent/15min",
    ],
    [
        "$SYS/broker/load/connections/1min",
        "$SYS/broker/load/connections/5min",
        "$SYS/broker/load/connections/15min",
    ],
];

impl Sample {
    fn load_counters(&self) -> [u64; 5] {
        [
            self.messages_received,
            self.messages_sent,
            self.bytes_received,
            self.bytes_sent,
            self.connections_opened,
        ]
    }
}

/// The `$SYS` values between rounds: the previous sample, the load
/// averages, and the text last published on each topic.
pub(crate) struct SysTree {
    version: String,
    /// When the previous round ran (ms since start) and what it read.
    previous: Option<(u64, Sample)>,
    loads: [LoadAverage; 5],
    published: HashMap<&'static str, String>,
}

impl SysTree {
    pub fn new(version: String) -> SysTree {
        SysTree {
            version,
            previous: None,
            loads: [LoadAverage::default(); 5],
            published: HashMap::new(),
        }
    }

    /// One round at `now_ms` (milliseconds since the broker started): the
    /// topics to publish and their payloads, the uptime first.
    pub fn update(&mut self, now_ms: u64, sample: &Sample) -> Vec<(&'static str, String)> {
        // Counters are compared with the previous round; the first round
        // has none, and its loads are 0.00, as Mosquitto's are.
        if let Some((then, previous)) = self.previous {
            let elapsed_secs = now_ms.saturating_sub(then) as f64 / 1000.0;
            let deltas = sample
                .load_counters()
                .into_iter()
                .zip(previous.load_counters())
                .map(|(now, before)| now.saturating_sub(before));
            for (load, delta) in self.loads.iter_mut().zip(deltas) {
                load.update(delta, elapsed_secs);
            }
        }
        self.previous = Some((now_ms, *sample));

        let mut values: Vec<(&'static str, String)> = vec![
            ("$SYS/broker/version", self.version.clone()),
            (
                "$SYS/broker/clients/connected",
                sample.clients_connected.to_string(),
            ),
            (
                "$SYS/broker/clients/disconnected",
                (sample
                    .clients_total
                    .saturating_sub(sample.clients_connected))
                .to_string(),
            ),
            (
                "$SYS/broker/clients/total",
                sample.clients_total.to_string(),
            ),
            (
                "$SYS/broker/clients/maximum",
                sample.clients_maximum.to_string(),
            ),
            (
                "$SYS/broker/clients/expired",
                sample.clients_expired.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                sample.messages_received.to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                sample.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/received",
                sample.messages_received.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                sample.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped",
                sample.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                sample.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", sample.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                sample.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                sample.retained.to_string(),
            ),
            (
                "$SYS/broker/store/messages/count",
                sample.stored.to_string(),
            ),
        ];
        if let Some(memory) = sample.memory {
            values.push(("$SYS/broker/heap/current", memory.current.to_string()));
            values.push(("$SYS/broker/heap/maximum", memory.maximum.to_string()));
        }
        for (topics, load) in LOAD_TOPICS.iter().zip(&self.loads) {
            for (topic, average) in topics.iter().zip([load.one, load.five, load.fifteen]) {
                values.push((topic, format!("{average:.2}")));
            }
        }

        let uptime = format!("{} seconds", now_ms / 1000);
        let mut changed = vec![(UPTIME, uptime)];
        for (topic, text) in values {
            if self.published.get(topic) != Some(&text) {
                self.published.insert(topic, text.clone());
                changed.push((topic, text));
            }
        }
        changed
    }
}

impl BrokerState {
    /// Reads one round's figures. `session_tally` walks every session
    /// (each locked briefly), so this runs on the blocking pool: O(sessions)
    /// once per `sys_interval`.
    fn sys_sample(&self) -> Sample {
        let sessions = self.session_tally();
        let mut sample = Sample {
            clients_connected: sessions.online,
            clients_total: sessions.online + sessions.offline,
            subscriptions: sessions.subscriptions,
            stored: sessions.queued + sessions.inflight,
            ..Sample::default()
        };
        let metrics = &self.metrics;
        sample.retained = self.retained_count() as u64;
        sample.stored += sample.retained;
        sample.clients_maximum = metrics.connections_maximum();
        sample.clients_expired = metrics.sessions_expired();
        sample.messages_received = metrics.messages_received();
        sample.messages_sent = metrics.messages_sent();
        sample.messages_dropped = metrics.messages_dropped();
        sample.bytes_received = metrics.bytes_received();
        sample.bytes_sent = metrics.bytes_sent();
        sample.connections_opened = metrics.connections_opened();
        sample.memory = read_memory();
        sample
    }

    /// Publishes one `$SYS` value: retained in memory only (never
    /// journalled, see the module comment) within the retained limits, and
    /// routed at QoS 0 like any message, the ACL deciding who receives it.
    fn publish_sys(&self, topic: &str, payload: String, now: u64) {
        let message = Arc::new(Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
        });
        // As in `publish_internal`: routed with the retained store still
        // write-locked, so a concurrent SUBSCRIBE sees the value once.
        let mut trie = self.retained.write();
        if self.retained_fits(&trie, &message) {
            self.hold_retained(&mut trie, &message);
        } else {
            self.metrics.retained_refusal();
        }
        self.route(&message, None, now);
    }
}

impl BrokerState {
    /// `$SYS/broker/connection/{name}/state`: "1" while the bridge is
    /// connected, "0" while not, retained, as Mosquitto publishes it.
    pub fn publish_bridge_state(&self, name: &str, connected: bool, now: u64) {
        let topic = format!("$SYS/broker/connection/{name}/state");
        self.publish_sys(&topic, if connected { "1" } else { "0" }.into(), now);
    }
}

/// Publishes the `$SYS` topics every `sys_interval` seconds, the first
/// round at once, until `shutdown` turns true; does nothing when
/// `sys_interval` is 0.
pub async fn serve_sys_tree(broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let seconds = broker.settings.sys_interval;
    if seconds == 0 {
        return;
    }
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(seconds));
    // A round that ran late is not made up for: the loads measure the
    // time that actually passed.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tree = SysTree::new(format!("petrel {}", env!("CARGO_PKG_VERSION")));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let reader = broker.clone();
        let Ok(sample) = tokio::task::spawn_blocking(move || reader.sys_sample()).await else {
            return;
        };
        let since_start = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        for (topic, payload) in tree.update(since_start, &sample) {
            broker.publish_sys(topic, payload, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-6,
            "{actual} is not {expected}"
        );
    }

    #[test]
    fn one_interval_at_a_steady_rate_moves_each_average_by_its_window_weight() {
        let mut load = LoadAverage::default();
        // 60 events in 10 s: 360 a minute.
        load.update(60, 10.0);
        assert_close(load.one, 360.0 * (1.0 - (-10.0f64 / 60.0).exp()));
        assert_close(load.one, 55.266_579_039);
        assert_close(load.five, 11.802_203_826);
        assert_close(load.fifteen, 3.977_859_854);
    }

    #[test]
    fn a_steady_rate_for_one_window_reaches_63_percent_of_it() {
        let mut load = LoadAverage::default();
        for _ in 0..6 {
            load.update(60, 10.0);
        }
        // 360 * (1 - 1/e) after one minute, whatever the interval.
        assert_close(load.one, 227.563_401_178);
        assert_close(load.five, 65.256_928_892);
        assert_close(load.fifteen, 23.217_485_389);
        let mut once = LoadAverage::default();
        once.update(360, 60.0);
        assert_close(once.one, load.one);
        assert_close(once.fifteen, load.fifteen);
    }

    #[test]
    fn silence_decays_each_average_by_its_own_window() {
        let mut load = LoadAverage {
            one: 360.0,
            five: 360.0,
            fifteen: 360.0,
        };
        load.update(0, 60.0);
        assert_close(load.one, 132.436_598_822);
        assert_close(load.five, 294.743_071_108);
        assert_close(load.fifteen, 336.782_514_611);
    }

    #[test]
    fn a_long_steady_rate_converges_on_it_and_an_empty_interval_changes_nothing() {
        let mut load = LoadAverage::default();
        // Ten hours: the 15-minute average's memory of the start is gone.
        for _ in 0..3600 {
            load.update(5, 10.0);
        }
        assert_close(load.one, 30.0);
        assert_close(load.fifteen, 30.0);
        let before = load;
        load.update(100, 0.0);
        assert_eq!(load, before);
    }

    fn sample() -> Sample {
        Sample {
            clients_connected: 2,
            clients_total: 5,
            clients_maximum: 3,
            messages_received: 10,
            bytes_received: 400,
            retained: 7,
            stored: 9,
            memory: Some(Memory {
                current: 4096,
                maximum: 8192,
            }),
            ..Sample::default()
        }
    }

    fn value<'a>(round: &'a [(&str, String)], topic: &str) -> Option<&'a str> {
        round
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_first_round_publishes_everything_in_mosquittos_formats() {
        let mut tree = SysTree::new("petrel 1.2.3".into());
        let round = tree.update(2_500, &sample());
        assert_eq!(round[0], (UPTIME, "2 seconds".to_string()));
        assert_eq!(value(&round, "$SYS/broker/version"), Some("petrel 1.2.3"));
        assert_eq!(value(&round, "$SYS/broker/clients/connected"), Some("2"));
        assert_eq!(value(&round, "$SYS/broker/clients/disconnected"), Some("3"));
        assert_eq!(value(&round, "$SYS/broker/clients/total"), Some("5"));
        assert_eq!(value(&round, "$SYS/broker/clients/maximum"), Some("3"));
        assert_eq!(value(&round, "$SYS/broker/messages/received"), Some("10"));
        assert_eq!(
            value(&round, "$SYS/broker/retained messages/count"),
            Some("7")
        );
        assert_eq!(value(&round, "$SYS/broker/store/messages/count"), Some("9"));
        assert_eq!(value(&round, "$SYS/broker/heap/current"), Some("4096"));
        assert_eq!(value(&round, "$SYS/broker/heap/maximum"), Some("8192"));
        for topics in LOAD_TOPICS {
            for topic in topics {
                assert_eq!(value(&round, topic), Some("0.00"), "{topic}");
            }
        }
        let topics: std::collections::HashSet<_> = round.iter().map(|(t, _)| *t).collect();
        assert_eq!(topics.len(), round.len(), "a topic twice: {round:?}");
    }

    #[test]
    fn later_rounds_publish_the_uptime_and_only_what_changed() {
        let mut tree = SysTree::new("petrel 1.2.3".into());
        tree.update(0, &sample());
        let same = tree.update(
            10_000,
            &Sample {
                messages_received: 10,
                ..sample()
            },
        );
        assert_eq!(same, vec![(UPTIME, "10 seconds".to_string())]);

        let busier = Sample {
            clients_connected: 3,
            messages_received: 70,
            ..sample()
        };
        let round = tree.update(20_000, &busier);
        assert_eq!(round[0], (UPTIME, "20 seconds".to_string()));
        assert_eq!(value(&round, "$SYS/broker/clients/connected"), Some("3"));
        assert_eq!(value(&round, "$SYS/broker/clients/disconnected"), Some("2"));
        assert_eq!(value(&round, "$SYS/broker/messages/received"), Some("70"));
        // 60 messages in 10 s.
        assert_eq!(
            value(&round, "$SYS/broker/load/messages/received/1min"),
            Some("55.27")
        );
        assert_eq!(
            value(&round, "$SYS/broker/load/messages/received/15min"),
            Some("3.98")
        );
        assert_eq!(value(&round, "$SYS/broker/version"), None);
        assert_eq!(value(&round, "$SYS/broker/clients/total"), None);
        assert_eq!(value(&round, "$SYS/broker/load/bytes/sent/1min"), None);
    }

    #[test]
    fn memory_is_read_from_proc_status_and_left_out_when_absent() {
        let status = "Name:\tpetrel\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        assert_eq!(
            parse_proc_status(status),
            Some(Memory {
                current: 10240 * 1024,
                maximum: 20480 * 1024,
            })
        );
        assert_eq!(parse_proc_status("Name:\tpetrel\n"), None);
        let mut tree = SysTree::new("petrel".into());
        let round = tree.update(
            0,
            &Sample {
                memory: None,
                ..sample()
            },
        );
        assert_eq!(value(&round, "$SYS/broker/heap/current"), None);
    }

    #[test]
    fn clients_may_not_publish_under_sys_but_bridges_may_report_their_state() {
        for topic in [
            "$SYS",
            "$SYS/broker/uptime",
            "$SYS/anything/else",
            "$delayed/5/$SYS/broker/uptime",
            "$SYS/broker/connection/a/state/extra",
        ] {
            assert!(reserved_for_the_broker(topic), "{topic}");
        }
        for topic in [
            "$SYS/broker/connection/edge-1/state",
            "$delayed/5/$SYS/broker/connection/edge-1/state",
            "$SYSTEM/x",
            "sys/broker",
            "a/$SYS/b",
            "$dlq/group/stream",
        ] {
            assert!(!reserved_for_the_broker(topic), "{topic}");
        }
    }
}
