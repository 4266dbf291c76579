//! Benchmark results and their two renderings: aligned text for people, one
//! flat JSON object per run for scripts (`benches/compare.sh`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::Histogram;

/// Results of a fan-in, fan-out, pairs or stream run.
#[derive(Debug)]
pub struct TrafficReport {
    pub label: String,
    pub scenario: &'static str,
    pub protocol: u8,
    pub qos: u8,
    pub publishers: u32,
    pub subscribers: u32,
    /// The stream read, and the keys spread over (stream scenario).
    pub stream: Option<String>,
    pub keys: Option<u32>,
    /// The group the subscribers are members of: the consumer group, or
    /// the share name of a shared subscription.
    pub group: Option<String>,
    /// Whether subscribers kept persistent sessions (`--persistent`).
    pub persistent: bool,
    pub messages_per_publisher: u64,
    pub payload: usize,
    pub offered_rate: Option<u64>,
    pub max_inflight: u16,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub expected: u64,
    /// Every PUBLISH received, copies included.
    pub received: u64,
    /// Distinct (publisher, sequence) pairs received, summed per subscriber
    /// (a group's members counted together); (key, sequence) for a stream.
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// New messages older than one already seen from the same source by
    /// the same subscriber: per publisher, or per key for a stream (its
    /// order violations).
    pub out_of_order: u64,
    /// Messages with no valid stamp, from a publisher not expected, or
    /// (stream) left in the stream by another run.
    pub foreign: u64,
    pub wrong_qos: u64,
    /// Packets or acknowledgements a correct broker would not send.
    pub unexpected: u64,
    /// Messages sent per second, first to last send.
    pub publish_rate: Option<f64>,
    /// Acknowledgements per second, first send to last acknowledgement.
    pub ack_rate: Option<f64>,
    /// Deliveries per second over all subscribers, first to last receive.
    pub delivered_rate: Option<f64>,
    /// Send to receive, first copies only.
    pub latency: Histogram,
    /// PUBLISH to PUBACK / PUBCOMP.
    pub ack_latency: Histogram,
    pub elapsed: Duration,
    pub rss_before_kb: Option<u64>,
    pub rss_connected_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    /// The broker's CPU time while the publishers ran (their start to the
    /// last one's last acknowledgement), in percent of one core: the
    /// subscribers' drain at the end would dilute it with idle time.
    pub broker_cpu_pct: Option<f64>,
    /// The stream scenario's refusing group, when it had one.
    pub refusing: Option<RefusingReport>,
    pub timed_out: u32,
    pub errors: u32,
    pub first_error: Option<String>,
}

/// What a consumer group that refuses its deliveries, and the watcher on
/// its dead letters, saw over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusingReport {
    pub group: String,
    pub members: u32,
    /// Each key's messages numbered 0, every, 2 x every, ... were refused.
    pub every: u64,
    /// Every delivery, re-deliveries included.
    pub deliveries: u64,
    /// Deliveries the broker marked as a re-delivery (`attempt` > 1).
    pub retries: u64,
    pub refused: u64,
    pub acked: u64,
    /// Distinct messages handed to the group.
    pub distinct: u64,
    pub max_attempt: u32,
    pub foreign: u64,
    pub dead_letters: u64,
    pub dead_letters_distinct: u64,
    /// Dead letters for messages the members acknowledged.
    pub dead_letters_not_refused: u64,
    /// Dead letters for another reason than the members' refusal.
    pub dead_letters_other_reason: u64,
    pub dead_letter_max_attempts: u32,
    pub unexpected: u64,
    /// First to last delivery to any member: the stretch the group's
    /// rates, dead letters included, are over, since it may still be busy
    /// after the healthy group is done, or idle once it has dead-lettered
    /// everything. (Dead letters over their own span would turn a handful
    /// let go at once into a huge rate.)
    pub delivery_span: Option<Duration>,
    /// First to last dead letter.
    pub letter_span: Option<Duration>,
    pub errors: u32,
    pub first_error: Option<String>,
}

/// Results of an idle-connections run.
#[derive(Debug)]
pub struct IdleReport {
    pub label: String,
    pub protocol: u8,
    pub requested: u32,
    pub established: u32,
    pub failed: u32,
    /// Connections the broker closed while they were held.
    pub dropped: u32,
    pub connect_time: Duration,
    /// From opening the TCP connection to receiving CONNACK, per
    /// connection, in nanoseconds (waiting for a connect slot excluded).
    pub connect_latency: Histogram,
    pub hold: Duration,
    pub rss_before_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    pub first_error: Option<String>,
}

/// Events per second over a span; `None` when the span is empty.
pub fn rate(count: u64, span: Option<Duration>) -> Option<f64> {
    let secs = span?.as_secs_f64();
    (count > 0 && secs > 0.0).then(|| count as f64 / secs)
}

/// Broker memory growth per connection in bytes.
pub fn bytes_per_conn(before_kb: Option<u64>, after_kb: Option<u64>, conns: u64) -> Option<f64> {
    let (before, after) = (before_kb?, after_kb?);
    (conns > 0).then(|| (after as f64 - before as f64) * 1024.0 / conns as f64)
}

fn protocol_name(protocol: u8) -> &'static str {
    if protocol == 5 {
        "MQTT 5.0"
    } else {
        "MQTT 3.1.1"
    }
}

fn us(ns: Option<u64>) -> Option<f64> {
    ns.map(|v| v as f64 / 1000.0)
}

fn fmt_latency(ns: Option<u64>) -> String {
    match ns {
        None => "-".to_string(),
        Some(v) if v < 1_000_000 => format!("{:.0} us", v as f64 / 1e3),
        Some(v) => format!("{:.2} ms", v as f64 / 1e6),
    }
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.0} msg/s"))
}

fn fmt_kb(kb: Option<u64>) -> String {
    kb.map_or_else(|| "-".to_string(), |kb| format!("{kb} kB"))
}

impl TrafficReport {
    pub fn rss_per_conn_bytes(&self) -> Option<f64> {
        bytes_per_conn(
            self.rss_before_kb,
            self.rss_connected_kb,
            u64::from(self.publishers) + u64::from(self.subscribers),
        )
    }

    pub fn render(&self, json: bool) -> String {
        if json { self.json() } else { self.text() }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let rate = self
            .offered_rate
            .map_or_else(|| "unlimited".to_string(), |r| format!("{r} msg/s"));
        let _ = writeln!(
            out,
            "{}  [{}]  {}  QoS {}",
            self.scenario,
            self.label,
            protocol_name(self.protocol),
            self.qos
        );
        let sessions = if self.persistent { " (persistent)" } else { "" };
        let readers = match (&self.stream, &self.group) {
            (Some(stream), Some(group)) => format!(
                "stream {stream}, consumer group {group} of {} member(s){sessions}",
                self.subscribers
            ),
            (None, Some(group)) => format!(
                "{} member(s) of shared subscription group {group}{sessions}",
                self.subscribers
            ),
            _ => format!("{} subscriber(s){sessions}", self.subscribers),
        };
        let keys = self
            .keys
            .map_or_else(String::new, |keys| format!(" on {keys} keys"));
        let _ = writeln!(
            out,
            "  clients       {} publisher(s){keys} -> {readers}; {} messages each, {} B payload, offered rate {}, window {}",
            self.publishers, self.messages_per_publisher, self.payload, rate, self.max_inflight
        );
        let (published, delivered, order) = if self.stream.is_some() {
            ("appended ", "consumed ", "order violations (per key)")
        } else {
            ("published", "delivered", "out of order")
        };
        let _ = writeln!(
            out,
            "  {published}     {} of {} sent ({}), {} acknowledged ({}), {} rejected",
            self.sent,
            u64::from(self.publishers) * self.messages_per_publisher,
            fmt_rate(self.publish_rate),
            self.acked,
            fmt_rate(self.ack_rate),
            self.rejected
        );
        let _ = writeln!(
            out,
            "  {delivered}     {} of {} expected ({}), {} PUBLISH received, run took {:.2} s",
            self.delivered,
            self.expected,
            fmt_rate(self.delivered_rate),
            self.received,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  anomalies     lost {}, duplicated {}, {order} {}, foreign {}, wrong QoS {}, unexpected packets {}, timed out {}, errors {}",
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.foreign,
            self.wrong_qos,
            self.unexpected,
            self.timed_out,
            self.errors
        );
        let _ = writeln!(
            out,
            "  latency       p50 {}, p99 {}, p99.9 {}, max {}",
            fmt_latency(self.latency.quantile(0.5)),
            fmt_latency(self.latency.quantile(0.99)),
            fmt_latency(self.latency.quantile(0.999)),
            fmt_latency(self.latency.max())
        );
        if self.qos > 0 {
            let _ = writeln!(
                out,
                "  ack latency   p50 {}, p99 {}, p99.9 {}",
                fmt_latency(self.ack_latency.quantile(0.5)),
                fmt_latency(self.ack_latency.quantile(0.99)),
                fmt_latency(self.ack_latency.quantile(0.999))
            );
        }
        if self.rss_before_kb.is_some() {
            let per_conn = self
                .rss_per_conn_bytes()
                .map_or_else(|| "-".to_string(), |b| format!("{b:.0} B"));
            let _ = writeln!(
                out,
                "  broker RSS    {} before, {} connected ({} per connection), {} at end",
                fmt_kb(self.rss_before_kb),
                fmt_kb(self.rss_connected_kb),
                per_conn,
                fmt_kb(self.rss_end_kb)
            );
        }
        if let Some(cpu) = self.broker_cpu_pct {
            let _ = writeln!(
                out,
                "  broker CPU    {cpu:.0}% of one core while the publishers ran"
            );
        }
        if let Some(r) = &self.refusing {
            self.refusing_text(r, &mut out);
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "  first error   {e}");
        }
        out.trim_end().to_string()
    }

    fn refusing_text(&self, r: &RefusingReport, out: &mut String) {
        let per_sec = |count| fmt_rate(rate(count, r.delivery_span));
        let which = if r.every == 1 {
            "every message".to_string()
        } else {
            format!("every {}th message of each key", r.every)
        };
        let _ = writeln!(
            out,
            "  refusing      group {} of {} member(s) refusing {which}: {} deliveries ({}), {} retries ({}), {} refused, {} acknowledged, {} distinct messages, highest attempt {}",
            r.group,
            r.members,
            r.deliveries,
            per_sec(r.deliveries),
            r.retries,
            per_sec(r.retries),
            r.refused,
            r.acked,
            r.distinct,
            r.max_attempt
        );
        let _ = writeln!(
            out,
            "  dead letters  {} received ({}), {} distinct, highest attempts {}, {} not refused, {} for another reason, foreign {}, unexpected packets {}, errors {}",
            r.dead_letters,
            per_sec(r.dead_letters),
            r.dead_letters_distinct,
            r.dead_letter_max_attempts,
            r.dead_letters_not_refused,
            r.dead_letters_other_reason,
            r.foreign,
            r.unexpected,
            r.errors
        );
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "  refusing error {e}");
        }
    }

    fn refusing_json(r: &RefusingReport, j: &mut JsonObject) {
        let secs = |span: Option<Duration>| span.map(|s| s.as_secs_f64());
        j.text("refusing_group", &r.group);
        j.int("refusing_members", Some(u64::from(r.members)));
        j.int("refuse_every", Some(r.every));
        j.int("refusing_deliveries", Some(r.deliveries));
        j.int("refusing_retries", Some(r.retries));
        j.int("refusing_refused", Some(r.refused));
        j.int("refusing_acked", Some(r.acked));
        j.int("refusing_distinct", Some(r.distinct));
        j.int("refusing_max_attempt", Some(u64::from(r.max_attempt)));
        j.int("refusing_foreign", Some(r.foreign));
        j.float(
            "refusing_delivery_rate",
            rate(r.deliveries, r.delivery_span),
        );
        j.float("refusing_retry_rate", rate(r.retries, r.delivery_span));
        j.float("refusing_span_s", secs(r.delivery_span));
        j.int("dead_letters", Some(r.dead_letters));
        j.int("dead_letters_distinct", Some(r.dead_letters_distinct));
        j.int("dead_letters_not_refused", Some(r.dead_letters_not_refused));
        j.int(
            "dead_letters_other_reason",
            Some(r.dead_letters_other_reason),
        );
        j.int(
            "dead_letter_max_attempts",
            Some(u64::from(r.dead_letter_max_attempts)),
        );
        j.float("dead_letter_rate", rate(r.dead_letters, r.delivery_span));
        j.float("dead_letter_span_s", secs(r.letter_span));
        j.int("refusing_unexpected", Some(r.unexpected));
        j.int("refusing_errors", Some(u64::from(r.errors)));
        j.opt_text("refusing_first_error", r.first_error.as_deref());
    }

    fn json(&self) -> String {
        let mut j = JsonObject::new();
        j.text("label", &self.label);
        j.text("scenario", self.scenario);
        j.int("protocol", Some(u64::from(self.protocol)));
        j.int("qos", Some(u64::from(self.qos)));
        j.int("publishers", Some(u64::from(self.publishers)));
        j.int("subscribers", Some(u64::from(self.subscribers)));
        j.opt_text("stream", self.stream.as_deref());
        j.int("keys", self.keys.map(u64::from));
        j.opt_text("group", self.group.as_deref());
        j.bool("persistent", self.persistent);
        j.int("messages", Some(self.messages_per_publisher));
        j.int("payload", Some(self.payload as u64));
        j.int("rate", self.offered_rate);
        j.int("max_inflight", Some(u64::from(self.max_inflight)));
        j.int("sent", Some(self.sent));
        j.int("acked", Some(self.acked));
        j.int("rejected", Some(self.rejected));
        j.int("expected", Some(self.expected));
        j.int("received", Some(self.received));
        j.int("delivered", Some(self.delivered));
        j.int("lost", Some(self.lost));
        j.int("duplicated", Some(self.duplicated));
        j.int("out_of_order", Some(self.out_of_order));
        j.int("foreign", Some(self.foreign));
        j.int("wrong_qos", Some(self.wrong_qos));
        j.int("unexpected", Some(self.unexpected));
        j.float("publish_rate", self.publish_rate);
        j.float("ack_rate", self.ack_rate);
        j.float("delivered_rate", self.delivered_rate);
        j.float("p50_us", us(self.latency.quantile(0.5)));
        j.float("p99_us", us(self.latency.quantile(0.99)));
        j.float("p999_us", us(self.latency.quantile(0.999)));
        j.float("max_us", us(self.latency.max()));
        j.float("mean_us", self.latency.mean().map(|m| m / 1000.0));
        j.float("ack_p50_us", us(self.ack_latency.quantile(0.5)));
        j.float("ack_p99_us", us(self.ack_latency.quantile(0.99)));
        j.float("elapsed_s", Some(self.elapsed.as_secs_f64()));
        j.int("rss_before_kb", self.rss_before_kb);
        j.int("rss_connected_kb", self.rss_connected_kb);
        j.int("rss_end_kb", self.rss_end_kb);
        j.float("rss_per_conn_bytes", self.rss_per_conn_bytes());
        j.float("broker_cpu_pct", self.broker_cpu_pct);
        if let Some(r) = &self.refusing {
            Self::refusing_json(r, &mut j);
        }
        j.int("timed_out", Some(u64::from(self.timed_out)));
        j.int("errors", Some(u64::from(self.errors)));
        j.opt_text("first_error", self.first_error.as_deref());
        j.finish()
    }
}

impl IdleReport {
    pub fn rss_per_conn_bytes(&self) -> Option<f64> {
        bytes_per_conn(
            self.rss_before_kb,
            self.rss_after_kb,
            u64::from(self.established),
        )
    }

    pub fn render(&self, json: bool) -> String {
        if json { self.json() } else { self.text() }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "idle  [{}]  {}",
            self.label,
            protocol_name(self.protocol)
        );
        let _ = writeln!(
            out,
            "  connections   {} of {} established in {:.2} s, {} failed, {} dropped during a {:.0} s hold",
            self.established,
            self.requested,
            self.connect_time.as_secs_f64(),
            self.failed,
            self.dropped,
            self.hold.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  connect       p50 {}, p99 {}, max {} (TCP connect to CONNACK)",
            fmt_latency(self.connect_latency.quantile(0.5)),
            fmt_latency(self.connect_latency.quantile(0.99)),
            fmt_latency(self.connect_latency.max())
        );
        if self.rss_before_kb.is_some() {
            let per_conn = self
                .rss_per_conn_bytes()
                .map_or_else(|| "-".to_string(), |b| format!("{b:.0} B"));
            let _ = writeln!(
                out,
                "  broker RSS    {} before, {} while holding: {} per connection",
                fmt_kb(self.rss_before_kb),
                fmt_kb(self.rss_after_kb),
                per_conn
            );
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "  first error   {e}");
        }
        out.trim_end().to_string()
    }

    fn json(&self) -> String {
        let mut j = JsonObject::new();
        j.text("label", &self.label);
        j.text("scenario", "idle");
        j.int("protocol", Some(u64::from(self.protocol)));
        j.int("connections", Some(u64::from(self.requested)));
        j.int("established", Some(u64::from(self.established)));
        j.int("failed", Some(u64::from(self.failed)));
        j.int("dropped", Some(u64::from(self.dropped)));
        j.float("connect_s", Some(self.connect_time.as_secs_f64()));
        j.float("connect_p50_us", us(self.connect_latency.quantile(0.5)));
        j.float("connect_p99_us", us(self.connect_latency.quantile(0.99)));
        j.float("hold_s", Some(self.hold.as_secs_f64()));
        j.int("rss_before_kb", self.rss_before_kb);
        j.int("rss_after_kb", self.rss_after_kb);
        j.float("rss_per_conn_bytes", self.rss_per_conn_bytes());
        j.int("errors", Some(u64::from(self.failed + self.dropped)));
        j.opt_text("first_error", self.first_error.as_deref());
        j.finish()
    }
}

/// A flat JSON object written by hand (the crate has no JSON dependency).
struct JsonObject {
    out: String,
}

impl JsonObject {
    fn new() -> Self {
        JsonObject {
            out: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn int(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        match value {
            Some(v) => {
                let _ = write!(self.out, "{v}");
            }
            None => self.out.push_str("null"),
        }
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn float(&mut self, key: &str, value: Option<f64>) {
        self.key(key);
        match value {
            Some(v) if v.is_finite() => {
                let _ = write!(self.out, "{v:.3}");
            }
            _ => self.out.push_str("null"),
        }
    }

    fn text(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push('"');
        for c in value.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", u32::from(c));
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn opt_text(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.text(key, v),
            None => {
                self.key(key);
                self.out.push_str("null");
            }
        }
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_needs_a_non_empty_span() {
        assert_eq!(rate(100, Some(Duration::from_secs(2))), Some(50.0));
        assert_eq!(rate(100, Some(Duration::ZERO)), None);
        assert_eq!(rate(0, Some(Duration::from_secs(1))), None);
        assert_eq!(rate(5, None), None);
    }

    #[test]
    fn memory_per_connection_is_the_growth_divided_by_connections() {
        assert_eq!(bytes_per_conn(Some(1000), Some(2000), 1024), Some(1000.0));
        assert_eq!(bytes_per_conn(Some(1000), None, 10), None);
        assert_eq!(bytes_per_conn(Some(1000), Some(900), 100), Some(-1024.0));
        assert_eq!(bytes_per_conn(Some(1), Some(2), 0), None);
    }

    #[test]
    fn json_strings_are_escaped_and_missing_values_are_null() {
        let mut j = JsonObject::new();
        j.text("a", "say \"hi\"\n\\");
        j.int("b", None);
        j.float("c", Some(1.5));
        j.float("d", Some(f64::NAN));
        j.opt_text("e", None);
        assert_eq!(
            j.finish(),
            r#"{"a":"say \"hi\"\n\\","b":null,"c":1.500,"d":null,"e":null}"#
        );
    }

    #[test]
    fn latency_is_printed_in_a_readable_unit() {
        assert_eq!(fmt_latency(Some(850_000)), "850 us");
        assert_eq!(fmt_latency(Some(3_456_000)), "3.46 ms");
        assert_eq!(fmt_latency(None), "-");
    }

    #[test]
    fn idle_report_json_has_memory_per_connection() {
        let r = IdleReport {
            label: "petrel".to_string(),
            protocol: 4,
            requested: 10,
            established: 10,
            failed: 0,
            dropped: 0,
            connect_time: Duration::from_millis(500),
            connect_latency: Histogram::new(),
            hold: Duration::from_secs(5),
            rss_before_kb: Some(1000),
            rss_after_kb: Some(1100),
            first_error: None,
        };
        let json = r.render(true);
        assert!(json.contains(r#""rss_per_conn_bytes":10240.000"#), "{json}");
        assert!(json.contains(r#""established":10"#), "{json}");
    }
}
