//! Counters an operator reads to see what the broker did and refused.
//! Plain atomics where one number will do; the metrics library's labelled
//! families and histograms where a count splits by stream, group or
//! attempt, so `/metrics` exports them as they are.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::protocol::ReasonCode;
use crate::session::RateExceeded;

#[derive(Debug, Default)]
pub struct Metrics {
    /// By QoS 0, 1, 2.
    messages_received: [AtomicU64; 3],
    messages_sent: [AtomicU64; 3],
    dropped_queue_full: AtomicU64,
    dropped_too_large: AtomicU64,
    messages_expired: AtomicU64,
    publishes_refused: AtomicU64,
    retained_refused: AtomicU64,
    connections_current: AtomicU64,
    connections_opened: AtomicU64,
    connections_maximum: AtomicU64,
    connections_refused: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    slow_consumers_closed: AtomicU64,
    sessions_expired: AtomicU64,
    stream_appends: AtomicU64,
    stream_acknowledged: AtomicU64,
    stream_deliveries_failed: AtomicU64,
    stream_messages_skipped: AtomicU64,
    delays_refused: AtomicU64,
    stream_dead_letters: AtomicU64,
    dead_letters_dropped: AtomicU64,
    publish_rate_exceeded: AtomicU64,
    publish_bytes_rate_exceeded: AtomicU64,
    keep_alive_capped: AtomicU64,
    enhanced_auth_failures: AtomicU64,
    auth_bad_password: AtomicU64,
    auth_throttled: AtomicU64,
    auth_anonymous_refused: AtomicU64,
    acl_denied_publish: AtomicU64,
    acl_denied_subscribe: AtomicU64,
    acl_denied_delivery: AtomicU64,
    pub labelled: Labelled,
}

/// A consumer group of a stream.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub stream: String,
    pub group: String,
}

/// A re-delivery of a stream message: `attempt` 2 is the first retry.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub stream: String,
    pub group: String,
    pub attempt: u32,
}

/// The counts that split by label, and the histograms.
#[derive(Debug)]
pub struct Labelled {
    pub stream_retries: Family<RetryLabels, Counter>,
    pub stream_dead_lettered: Family<GroupLabels, Counter>,
    /// Seconds between a delayed message's due time and its publication.
    pub delay_lateness: Histogram,
}

impl Default for Labelled {
    fn default() -> Labelled {
        // 1 ms to about 16 s: the target is a p99 within 50 ms, and a
        // delay that fell due while the broker was down lands in +Inf.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15);
        Labelled {
            stream_retries: Family::default(),
            stream_dead_lettered: Family::default(),
            delay_lateness: Histogram::new(buckets),
        }
    }
}

/// A client's address in a log line, or `-` where the core was driven
/// without one (its tests).
pub(crate) struct Peer(pub Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => write!(f, "{peer}"),
            None => f.write_str("-"),
        }
    }
}

/// One log line per power of two keeps a flood of events from flooding the
/// log.
fn count_and_maybe_log(counter: &AtomicU64) -> Option<u64> {
    let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
    total.is_power_of_two().then_some(total)
}

impl Metrics {
    pub fn messages_received(&self) -> u64 {
        (0..3).map(|qos| self.messages_received_at(qos)).sum()
    }
    pub fn messages_sent(&self) -> u64 {
        (0..3).map(|qos| self.messages_sent_at(qos)).sum()
    }
    /// PUBLISH packets received at QoS `qos` (0, 1 or 2).
    pub fn messages_received_at(&self, qos: usize) -> u64 {
        self.messages_received[qos].load(Ordering::Relaxed)
    }
    /// PUBLISH packets sent at QoS `qos` (0, 1 or 2).
    pub fn messages_sent_at(&self, qos: usize) -> u64 {
        self.messages_sent[qos].load(Ordering::Relaxed)
    }
    /// Messages dropped: a full session queue could not keep them, or they
    /// were too large for their receiver.
    pub fn messages_dropped(&self) -> u64 {
        self.dropped_queue_full() + self.dropped_too_large()
    }
    pub fn dropped_queue_full(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
    }
    pub fn dropped_too_large(&self) -> u64 {
        self.dropped_too_large.load(Ordering::Relaxed)
    }
    /// Messages whose expiry passed before they could be delivered.
    pub fn messages_expired(&self) -> u64 {
        self.messages_expired.load(Ordering::Relaxed)
    }
    /// Publishes refused: a limit or a full store (v5 0x97), a bad
    /// `$delayed/...` topic (0x90), a delay past its bounds.
    pub fn publishes_refused(&self) -> u64 {
        self.publishes_refused.load(Ordering::Relaxed)
    }
    /// Retained messages not kept because of the retained limits.
    pub fn retained_refused(&self) -> u64 {
        self.retained_refused.load(Ordering::Relaxed)
    }
    pub fn connections_current(&self) -> u64 {
        self.connections_current.load(Ordering::Relaxed)
    }
    /// Connections refused at accept (`max_connections`) or at CONNECT
    /// (`max_sessions`).
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }
    /// Connections closed because the client stopped reading.
    pub fn slow_consumers_closed(&self) -> u64 {
        self.slow_consumers_closed.load(Ordering::Relaxed)
    }
    /// Sessions ended by their expiry.
    pub fn sessions_expired(&self) -> u64 {
        self.sessions_expired.load(Ordering::Relaxed)
    }

    /// Messages appended to stream partitions (one per partition).
    pub fn stream_appends(&self) -> u64 {
        self.stream_appends.load(Ordering::Relaxed)
    }
    /// Stream deliveries that failed: negatively acknowledged, left past
    /// the ack timeout, or unacknowledged when their reader left.
    pub fn stream_deliveries_failed(&self) -> u64 {
        self.stream_deliveries_failed.load(Ordering::Relaxed)
    }
    /// Messages retention dropped before a group read them.
    pub fn stream_messages_skipped(&self) -> u64 {
        self.stream_messages_skipped.load(Ordering::Relaxed)
    }

    /// Delayed publishes refused for `max_delay` or `max_pending_delays`.
    pub fn delays_refused(&self) -> u64 {
        self.delays_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn delay_refused(&self) {
        if let Some(total) = count_and_maybe_log(&self.delays_refused) {
            tracing::warn!(
                total,
                "delayed publish refused: max_delay or max_pending_delays"
            );
        }
    }

    /// Stream messages consumer groups gave up on after `max_attempts`.
    pub fn stream_dead_letters(&self) -> u64 {
        self.stream_dead_letters.load(Ordering::Relaxed)
    }

    /// Dead letters dropped by `dlq_retention` or `dlq_max_bytes`.
    pub fn dead_letters_dropped(&self) -> u64 {
        self.dead_letters_dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn dead_letter_dropped(&self) {
        self.dead_letters_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dead letter; returns the total so far.
    pub(crate) fn stream_dead_letter(&self, stream: &str, group: &str) -> u64 {
        let total = self.stream_dead_letters.fetch_add(1, Ordering::Relaxed) + 1;
        self.labelled
            .stream_dead_lettered
            .get_or_create(&GroupLabels {
                stream: stream.into(),
                group: group.into(),
            })
            .inc();
        total
    }

    pub(crate) fn stream_retry(&self, stream: &str, group: &str, attempt: u32) {
        self.labelled
            .stream_retries
            .get_or_create(&RetryLabels {
                stream: stream.into(),
                group: group.into(),
                attempt,
            })
            .inc();
    }

    pub(crate) fn delay_published(&self, late_ms: u64) {
        self.labelled
            .delay_lateness
            .observe(late_ms as f64 / 1000.0);
    }

    /// Stream deliveries members acknowledged (or were sent at QoS 0).
    pub fn stream_acknowledged(&self) -> u64 {
        self.stream_acknowledged.load(Ordering::Relaxed)
    }
    pub(crate) fn stream_acknowledged_add(&self, count: u64) {
        self.stream_acknowledged.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn stream_appends_add(&self, count: u64) {
        self.stream_appends.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn stream_delivery_failed(&self) {
        self.stream_deliveries_failed
            .fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn stream_messages_skipped_add(&self, count: u64) {
        self.stream_messages_skipped
            .fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn message_received(&self, qos: crate::protocol::QoS) {
        self.messages_received[qos as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// PUBLISH packets sent, by QoS.
    pub(crate) fn messages_sent_add(&self, by_qos: [u64; 3]) {
        for (counter, count) in self.messages_sent.iter().zip(by_qos) {
            if count > 0 {
                counter.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
    /// A message too large for its receiver.
    pub(crate) fn message_dropped(&self, client_id: &str) {
        if let Some(total) = count_and_maybe_log(&self.dropped_too_large) {
            tracing::warn!(
                client_id,
                total,
                "message too large for the client: dropped"
            );
        }
    }
    /// A message a session's full queue did not keep; `session_total`
    /// counts that session's, logged at each power of two as well.
    pub(crate) fn queue_full_drop(&self, client_id: &str, session_total: u32) {
        let total = count_and_maybe_log(&self.dropped_queue_full);
        if total.is_some() || session_total.is_power_of_two() {
            tracing::warn!(
                client_id,
                session_total,
                total = self.dropped_queue_full(),
                "session queue full: message dropped"
            );
        }
    }
    pub(crate) fn messages_expired_add(&self, count: u64) {
        self.messages_expired.fetch_add(count, Ordering::Relaxed);
    }
    /// A publish refused, `why` in a few words.
    pub(crate) fn publish_refused(&self, client_id: &str, why: &str) {
        if let Some(total) = count_and_maybe_log(&self.publishes_refused) {
            tracing::warn!(client_id, total, why, "publish refused");
        }
    }
    pub(crate) fn retained_refusal(&self) {
        if let Some(total) = count_and_maybe_log(&self.retained_refused) {
            tracing::warn!(total, "retained message not kept: retained limit reached");
        }
    }
    /// Counts an open connection; false (and counted as refused) when that
    /// would pass `max`.
    pub(crate) fn try_open_connection(&self, max: u64) -> bool {
        let opened =
            self.connections_current
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                    (current < max).then_some(current + 1)
                });
        match opened {
            Ok(before) => {
                self.connections_opened.fetch_add(1, Ordering::Relaxed);
                self.connections_maximum
                    .fetch_max(before + 1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.connection_refused();
                false
            }
        }
    }

    /// Connections accepted since start.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }
    /// The most connections open at once since start.
    pub fn connections_maximum(&self) -> u64 {
        self.connections_maximum.load(Ordering::Relaxed)
    }
    /// Bytes read from and written to client connections (after TLS and
    /// WebSocket framing is removed: MQTT bytes).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
    pub(crate) fn bytes_received_add(&self, count: u64) {
        self.bytes_received.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn bytes_sent_add(&self, count: u64) {
        self.bytes_sent.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn slow_consumer_closed(&self, client_id: &str) {
        if let Some(total) = count_and_maybe_log(&self.slow_consumers_closed) {
            tracing::warn!(client_id, total, "closing a client that stopped reading");
        }
    }
    /// Clients disconnected for passing `max_publish_rate`.
    pub fn publish_rate_exceeded(&self) -> u64 {
        self.publish_rate_exceeded.load(Ordering::Relaxed)
    }
    /// Clients disconnected for passing `max_publish_bytes_rate`.
    pub fn publish_bytes_rate_exceeded(&self) -> u64 {
        self.publish_bytes_rate_exceeded.load(Ordering::Relaxed)
    }
    /// A client disconnected for publishing too fast. Logged every time:
    /// each one ends a connection, so they come no faster than connections.
    pub(crate) fn publish_rate_breach(
        &self,
        exceeded: RateExceeded,
        client_id: &str,
        peer: Option<SocketAddr>,
    ) {
        let (counter, limit) = match exceeded {
            RateExceeded::Messages => (&self.publish_rate_exceeded, "max_publish_rate"),
            RateExceeded::Bytes => (&self.publish_bytes_rate_exceeded, "max_publish_bytes_rate"),
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            client_id,
            peer = %Peer(peer),
            limit,
            total,
            "publishing too fast: disconnected"
        );
    }

    /// CONNECTs whose keep alive `max_keepalive_secs` lowered.
    pub fn keep_alive_capped(&self) -> u64 {
        self.keep_alive_capped.load(Ordering::Relaxed)
    }
    /// Logged with the client's connection (`client connected`).
    pub(crate) fn keep_alive_cap(&self) {
        self.keep_alive_capped.fetch_add(1, Ordering::Relaxed);
    }

    /// Enhanced authentications refused: at CONNECT (CONNACK 0x87 or 0x8C)
    /// or when re-authenticating (DISCONNECT 0x87).
    pub fn enhanced_auth_failures(&self) -> u64 {
        self.enhanced_auth_failures.load(Ordering::Relaxed)
    }
    pub(crate) fn enhanced_auth_failure(
        &self,
        client_id: &str,
        peer: Option<SocketAddr>,
        reason: ReasonCode,
        why: &str,
    ) {
        let total = self.enhanced_auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // `info`, as refused passwords are: a guesser must not flood the
        // warnings.
        tracing::info!(
            client_id,
            peer = %Peer(peer),
            %reason,
            why,
            total,
            "enhanced authentication refused"
        );
    }

    /// CONNECTs refused for an unknown user or a wrong password (0x86).
    pub fn auth_bad_passwords(&self) -> u64 {
        self.auth_bad_password.load(Ordering::Relaxed)
    }
    /// CONNECTs refused because their client id or address was locked out
    /// after failed logins (0x86, no password checked).
    pub fn auth_throttled_total(&self) -> u64 {
        self.auth_throttled.load(Ordering::Relaxed)
    }
    /// CONNECTs without a username refused by `allow_anonymous = false`.
    pub fn auth_anonymous_refused_total(&self) -> u64 {
        self.auth_anonymous_refused.load(Ordering::Relaxed)
    }
    // Each refusal is logged where it is decided, with the client.
    pub(crate) fn auth_bad_password(&self) {
        self.auth_bad_password.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn auth_throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn auth_anonymous_refused(&self) {
        self.auth_anonymous_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// PUBLISHes (and wills) the ACL denied.
    pub fn acl_denied_publishes(&self) -> u64 {
        self.acl_denied_publish.load(Ordering::Relaxed)
    }
    /// Subscription filters the ACL refused.
    pub fn acl_denied_subscribes(&self) -> u64 {
        self.acl_denied_subscribe.load(Ordering::Relaxed)
    }
    /// Messages not delivered to a subscriber because the ACL denies it
    /// the topic.
    pub fn acl_denied_deliveries(&self) -> u64 {
        self.acl_denied_delivery.load(Ordering::Relaxed)
    }
    pub(crate) fn acl_publish_denied(&self, client_id: &str, topic: &str) {
        tracing::debug!(client_id, topic, "publish denied by the ACL");
        if let Some(total) = count_and_maybe_log(&self.acl_denied_publish) {
            tracing::info!(client_id, topic, total, "publish denied by the ACL");
        }
    }
    pub(crate) fn acl_subscribe_denied(&self, client_id: &str, filter: &str) {
        tracing::debug!(client_id, filter, "subscription denied by the ACL");
        if let Some(total) = count_and_maybe_log(&self.acl_denied_subscribe) {
            tracing::info!(client_id, filter, total, "subscription denied by the ACL");
        }
    }
    pub(crate) fn acl_delivery_denied(&self, client_id: &str, topic: &str) {
        tracing::debug!(client_id, topic, "delivery denied by the ACL");
        if let Some(total) = count_and_maybe_log(&self.acl_denied_delivery) {
            tracing::info!(client_id, topic, total, "delivery denied by the ACL");
        }
    }

    pub(crate) fn session_expired(&self) {
        self.sessions_expired.fetch_add(1, Ordering::Relaxed);
    }
}
