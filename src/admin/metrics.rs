//! `GET /metrics`: the broker's counters and gauges in the Prometheus text
//! format, encoded by `prometheus-client`. Plain counters and gauges are
//! read from the broker at each scrape (a collector), so the publish path
//! only ever bumps an atomic; labelled families and histograms are the
//! library's own, registered once.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::bridge::BridgeReport;
use crate::broker::{BrokerState, GroupLabels};

use super::ApiError;

/// What `/metrics` encodes: the collector over the broker, and its
/// labelled families.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(state: Arc<BrokerState>) -> Exposition {
        let mut registry = Registry::with_prefix("petrel");
        let labelled = &state.metrics().labelled;
        registry.register(
            "stream_retries",
            "Re-deliveries of stream messages after a failed attempt, by the attempt number they carry",
            labelled.stream_retries.clone(),
        );
        registry.register(
            "stream_dead_lettered",
            "Stream messages given up after max_attempts, by stream and group",
            labelled.stream_dead_lettered.clone(),
        );
        registry.register(
            "delayed_lateness_seconds",
            "How long after its due time a delayed message was published",
            labelled.delay_lateness.clone(),
        );
        let journal = state.journal().stats();
        registry.register(
            "journal_flush_seconds",
            "How long each flush of the commit log to disk (fdatasync) took",
            journal.flush_seconds.clone(),
        );
        registry.register(
            "journal_batch_records",
            "Records written per journal batch (per group commit under sync)",
            journal.batch_records.clone(),
        );
        registry.register_collector(Box::new(BrokerCollector(state)));
        Exposition { registry }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

pub async fn scrape(
    State(exposition): State<Arc<Exposition>>,
) -> Result<impl IntoResponse, ApiError> {
    let text = exposition
        .encode()
        .map_err(|_| ApiError::Encode("metrics"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    ))
}

/// Reads the broker's counters and gauges at each scrape.
struct BrokerCollector(Arc<BrokerState>);

impl std::fmt::Debug for BrokerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter family with a single label.
fn labelled_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value, count) in values {
        ConstCounter::new(*count).encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// One gauge family with a single label.
fn labelled_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (value, count) in values {
        ConstGauge::new(as_gauge(*count)).encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

fn as_gauge(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        let m = state.metrics();
        let e = &mut encoder;
        gauge(
            e,
            "connections",
            "Connections open now",
            as_gauge(m.connections_current()),
        )?;
        counter(
            e,
            "connections_refused",
            "Connections refused by max_connections or max_sessions",
            m.connections_refused(),
        )?;
        labelled_counter(
            e,
            "auth_failures",
            "CONNECTs refused by authentication, by reason",
            "reason",
            &[
                ("bad_password", m.auth_bad_passwords()),
                ("throttled", m.auth_throttled_total()),
                ("anonymous", m.auth_anonymous_refused_total()),
            ],
        )?;
        labelled_counter(
            e,
            "acl_denials",
            "Operations the ACL denied, by kind (delivery: one per message and subscriber)",
            "action",
            &[
                ("publish", m.acl_denied_publishes()),
                ("subscribe", m.acl_denied_subscribes()),
                ("delivery", m.acl_denied_deliveries()),
            ],
        )?;
        counter(
            e,
            "slow_consumers_closed",
            "Connections closed because the client stopped reading",
            m.slow_consumers_closed(),
        )?;
        counter(
            e,
            "connections_opened",
            "Connections accepted since start",
            m.connections_opened(),
        )?;
        gauge(
            e,
            "connections_maximum",
            "The most connections open at once since start",
            as_gauge(m.connections_maximum()),
        )?;
        let tally = state.session_tally();
        labelled_gauge(
            e,
            "sessions",
            "Sessions held, by whether a client is connected to them",
            "state",
            &[("online", tally.online), ("offline", tally.offline)],
        )?;
        gauge(
            e,
            "sessions_persistent",
            "Sessions that outlive their connection (expiry above 0)",
            as_gauge(tally.persistent),
        )?;
        gauge(
            e,
            "subscriptions",
            "Subscriptions held by all sessions",
            as_gauge(tally.subscriptions),
        )?;
        gauge(
            e,
            "inflight_messages",
            "Deliveries sent to clients and not yet acknowledged",
            as_gauge(tally.inflight),
        )?;
        gauge(
            e,
            "queued_messages",
            "Deliveries waiting in session queues, in memory or spilled to the log",
            as_gauge(tally.queued),
        )?;
        counter(
            e,
            "sessions_expired",
            "Sessions ended by their expiry",
            m.sessions_expired(),
        )?;
        gauge(
            e,
            "retained_messages",
            "Retained messages held",
            as_gauge(state.retained_count()),
        )?;
        gauge(
            e,
            "retained_bytes",
            "Bytes of the retained messages held",
            as_gauge(state.retained_bytes()),
        )?;
        labelled_counter(
            e,
            "messages_received",
            "PUBLISH packets received from clients, by QoS",
            "qos",
            &[
                ("0", m.messages_received_at(0)),
                ("1", m.messages_received_at(1)),
                ("2", m.messages_received_at(2)),
            ],
        )?;
        labelled_counter(
            e,
            "messages_sent",
            "PUBLISH packets sent to clients, by QoS",
            "qos",
            &[
                ("0", m.messages_sent_at(0)),
                ("1", m.messages_sent_at(1)),
                ("2", m.messages_sent_at(2)),
            ],
        )?;
        counter(
            e,
            "received_bytes",
            "MQTT bytes read from client connections",
            m.bytes_received(),
        )?;
        counter(
            e,
            "sent_bytes",
            "MQTT bytes written to client connections",
            m.bytes_sent(),
        )?;
        labelled_counter(
            e,
            "messages_dropped",
            "Messages not delivered to a session, by reason",
            "reason",
            &[
                ("queue_full", m.dropped_queue_full()),
                ("too_large", m.dropped_too_large()),
                ("expired", m.messages_expired()),
            ],
        )?;
        counter(
            e,
            "publishes_refused",
            "Publishes refused: limits, a full store, a bad $delayed topic",
            m.publishes_refused(),
        )?;
        labelled_counter(
            e,
            "publish_rate_exceeded",
            "Clients disconnected for publishing faster than a limit (v5 0x96), by limit",
            "limit",
            &[
                ("messages", m.publish_rate_exceeded()),
                ("bytes", m.publish_bytes_rate_exceeded()),
            ],
        )?;
        counter(
            e,
            "keepalive_capped",
            "CONNECTs whose keep alive max_keepalive_secs lowered",
            m.keep_alive_capped(),
        )?;
        counter(
            e,
            "enhanced_auth_failures",
            "Enhanced authentications refused, at CONNECT or re-authentication",
            m.enhanced_auth_failures(),
        )?;
        counter(
            e,
            "retained_refused",
            "Retained messages not kept because of the retained limits",
            m.retained_refused(),
        )?;
        counter(
            e,
            "stream_appends",
            "Messages appended to stream partitions",
            m.stream_appends(),
        )?;
        counter(
            e,
            "stream_acknowledged",
            "Stream deliveries acknowledged by group members (QoS 0: sent)",
            m.stream_acknowledged(),
        )?;
        counter(
            e,
            "stream_deliveries_failed",
            "Stream deliveries refused, timed out or left by their reader",
            m.stream_deliveries_failed(),
        )?;
        counter(
            e,
            "stream_messages_skipped",
            "Stream messages retention dropped before a group read them",
            m.stream_messages_skipped(),
        )?;
        counter(
            e,
            "dead_letters_dropped",
            "Dead letters dropped by dlq_retention or dlq_max_bytes",
            m.dead_letters_dropped(),
        )?;
        gauge(
            e,
            "delayed_pending",
            "Delayed messages waiting for their due time",
            as_gauge(state.delays_pending()),
        )?;
        counter(
            e,
            "delayed_refused",
            "Delayed publishes refused by max_delay or max_pending_delays",
            m.delays_refused(),
        )?;
        let settings = state.settings();
        if settings.durability != crate::config::Durability::Memory {
            let dir = &settings.data_dir;
            labelled_gauge(
                e,
                "disk_bytes",
                "Bytes on disk under data_dir: the commit log's segments, the state database",
                "kind",
                &[
                    ("log", dir_bytes(&dir.join("log"))),
                    ("state", dir_bytes(&dir.join("db"))),
                ],
            )?;
        }
        encode_bridges(&state.bridge_reports(), e)?;
        encode_groups(state, e)
    }
}

/// Per bridge (label `bridge`): its connection, what waits for the remote,
/// what crossed and what was lost.
fn encode_bridges(
    reports: &[BridgeReport],
    e: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let each = |pick: fn(&BridgeReport) -> u64| -> Vec<(&str, u64)> {
        reports
            .iter()
            .map(|report| (report.name.as_str(), pick(report)))
            .collect()
    };
    labelled_gauge(
        e,
        "bridge_connected",
        "1 while the bridge is connected to its remote broker, 0 while not",
        "bridge",
        &each(|r| u64::from(r.connected)),
    )?;
    labelled_counter(
        e,
        "bridge_reconnects",
        "Connections of the bridge to its remote made after the first",
        "bridge",
        &each(|r| r.reconnects),
    )?;
    labelled_gauge(
        e,
        "bridge_queued_messages",
        "Messages waiting for the bridge's remote: queued and unacknowledged",
        "bridge",
        &each(|r| r.queued_messages),
    )?;
    labelled_gauge(
        e,
        "bridge_queued_bytes",
        "Bytes of the messages waiting for the bridge's remote",
        "bridge",
        &each(|r| r.queued_bytes),
    )?;
    labelled_counter(
        e,
        "bridge_sent",
        "Messages the bridge forwarded to its remote",
        "bridge",
        &each(|r| r.sent),
    )?;
    labelled_counter(
        e,
        "bridge_received",
        "Messages the bridge received from its remote and published here",
        "bridge",
        &each(|r| r.received),
    )?;
    labelled_counter(
        e,
        "bridge_dropped",
        "Messages the bridge lost: to a full queue, refused by the remote, or unsendable",
        "bridge",
        &each(|r| r.dropped),
    )
}

/// What the files under `dir` take, summed (0 when it cannot be read).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Per stream and group: lag, inflight, waiting retries, dead letters kept.
fn encode_groups(state: &BrokerState, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let reports = state.stream_reports();
    let rows: Vec<(GroupLabels, [u64; 4])> = reports
        .iter()
        .flat_map(|stream| {
            stream.groups.iter().map(|group| {
                let sum = |pick: fn(&crate::broker::GroupPartitionReport) -> u64| {
                    group.partitions.iter().map(pick).sum::<u64>()
                };
                let labels = GroupLabels {
                    stream: stream.name.clone(),
                    group: group.name.clone(),
                };
                let values = [
                    sum(|p| p.lag),
                    sum(|p| p.inflight as u64),
                    sum(|p| p.retrying as u64),
                    group.dead_letters as u64,
                ];
                (labels, values)
            })
        })
        .collect();
    let columns = [
        (
            "stream_group_lag",
            "Messages appended and not yet committed by the group",
        ),
        (
            "stream_group_inflight",
            "Stream messages handed to the group's members and not yet settled",
        ),
        (
            "stream_group_retrying",
            "Failed stream messages waiting for their retry (ordering = relaxed)",
        ),
        (
            "stream_group_dead_letters",
            "Dead letters kept in the group's queue",
        ),
    ];
    for (column, (name, help)) in columns.into_iter().enumerate() {
        let mut family = e.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, values) in &rows {
            ConstGauge::new(as_gauge(values[column])).encode(family.encode_family(labels)?)?;
        }
    }
    Ok(())
}
