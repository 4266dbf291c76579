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
        counter(
            e,
            "slow_consumers_closed",
            "Connections closed because the client stopped reading",
            m.slow_consumers_closed(),
        )?;
        gauge(
            e,
            "sessions",
            "Sessions held, online and offline",
            as_gauge(state.session_count()),
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
        counter(
            e,
            "messages_received",
            "PUBLISH packets received from clients",
            m.messages_received(),
        )?;
        counter(
            e,
            "messages_sent",
            "PUBLISH packets sent to clients",
            m.messages_sent(),
        )?;
        {
            let mut dropped = e.encode_descriptor(
                "messages_dropped",
                "Messages not delivered to a session, by reason",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, count) in [
                ("queue_full", m.dropped_queue_full()),
                ("too_large", m.dropped_too_large()),
                ("expired", m.messages_expired()),
            ] {
                ConstCounter::new(count).encode(dropped.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            e,
            "publishes_refused",
            "Publishes refused: limits, a full store, a bad $delayed topic",
            m.publishes_refused(),
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
        encode_groups(state, e)
    }
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
