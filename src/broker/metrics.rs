//! Counters an operator reads to see what the broker did and refused.
//! Plain atomics where one number will do; the metrics library's labelled
//! families and histograms where a count splits by stream, group or
//! attempt, so `/metrics` exports them as they are.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Default)]
pub struct Metrics {
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_too_large: AtomicU64,
    messages_expired: AtomicU64,
    publishes_refused: AtomicU64,
    retained_refused: AtomicU64,
    connections_current: AtomicU64,
    connections_refused: AtomicU64,
    slow_consumers_closed: AtomicU64,
    sessions_expired: AtomicU64,
    stream_appends: AtomicU64,
    stream_deliveries_failed: AtomicU64,
    stream_messages_skipped: AtomicU64,
    delays_refused: AtomicU64,
    stream_dead_letters: AtomicU64,
    dead_letters_dropped: AtomicU64,
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

/// One log line per power of two keeps a flood of events from flooding the
/// log.
fn count_and_maybe_log(counter: &AtomicU64) -> Option<u64> {
    let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
    total.is_power_of_two().then_some(total)
}

impl Metrics {
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
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

    pub(crate) fn stream_dead_letter(&self, stream: &str, group: &str) {
        self.stream_dead_letters.fetch_add(1, Ordering::Relaxed);
        self.labelled
            .stream_dead_lettered
            .get_or_create(&GroupLabels {
                stream: stream.into(),
                group: group.into(),
            })
            .inc();
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

    pub(crate) fn message_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn messages_sent_add(&self, count: u64) {
        self.messages_sent.fetch_add(count, Ordering::Relaxed);
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
        let opened = self
            .connections_current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < max).then_some(current + 1)
            })
            .is_ok();
        if !opened {
            self.connection_refused();
        }
        opened
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
    pub(crate) fn session_expired(&self) {
        self.sessions_expired.fetch_add(1, Ordering::Relaxed);
    }
}
