//! The broker core: shared state, and the per-client protocol logic that
//! changes it. No I/O here: no sockets, no disk, no clock reads, no tasks.
//! Every entry point takes the time as `now` (unix ms); what must reach the
//! disk is appended to the `Journal` (an in-memory queue) with a ticket for
//! the packets that must wait for it; what must happen later is armed on the
//! `Timers` wheel. `crate::server` runs the tasks that drive it.
//!
//! Locks, always taken in this order and never across an `.await`: the
//! retained store, a session map entry, a session, the subscription index.
//! Publishes on different topics share none of them but the index's read
//! locks.

mod bridges;
mod client;
mod connect;
mod consume;
mod delayed;
pub mod enhanced_auth;
pub mod inspect;
mod lifecycle;
mod metrics;
mod publish;
mod refill;
mod restore;
mod security;
mod stream_report;
mod stream_tasks;
mod subscribe;
mod sys;
mod tally;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::protocol::{Message, QoS};
use crate::router::{Retained, RetainedTrie, SubscriptionIndex};
use crate::session::{
    Change, ConnectionSignal, Delivery, Enqueued, QueueFull, QueueLimits, Session, SessionConfig,
    SessionState,
};
use crate::store::{Copy, Journal, Record, SessionRecord, Snapshot, Ticket};
use crate::stream::Streams;
use crate::timer::{TimerId, TimerWheel};
use crate::topic::TopicLimits;

pub use client::{Client, Close, Output};
pub use connect::{Connected, Origin, Refusal};
pub use metrics::{GroupLabels, Labelled, Metrics, RetryLabels};
pub use refill::serve_refills;
pub use security::{FileReload, Security, SecurityError, SecurityReload};
pub use stream_report::{GroupPartitionReport, GroupReport, PartitionReport, StreamReport};
pub use stream_tasks::{serve_stream_durability, serve_stream_reads};
pub use sys::serve_sys_tree;
pub use tally::SessionTally;

/// What routing one inbound message did.
#[derive(Debug, Clone, Copy)]
pub struct Routed {
    /// Sessions it was delivered to and stream partitions it was appended
    /// to: a v5 publisher hears "no matching subscribers" only when both
    /// are none.
    pub receivers: usize,
    /// The journal write its acknowledgement must wait for.
    pub ticket: Ticket,
}

/// Something the broker does at a time, rather than in answer to a packet.
#[derive(Debug, Clone)]
pub enum TimerEvent {
    /// A disconnected session reaches its expiry, unless a client attached
    /// since (`generation` changed).
    SessionExpiry {
        client_id: Arc<str>,
        generation: u64,
    },
    /// A disconnected session's will delay has passed.
    WillDelay {
        client_id: Arc<str>,
        generation: u64,
    },
    /// A retained message's expiry has passed.
    RetainedExpiry { topic: Arc<str>, expires_at: u64 },
    /// A connection's alarm (keep alive, write deadline): its task is woken
    /// to look at its own deadlines.
    ConnectionAlarm(Arc<ConnectionSignal>),
    /// A consumer group's ack timeouts or pauses may have passed.
    StreamGroup { group: u32 },
    /// Streams' retention is due.
    StreamRetention,
    /// The earliest delayed publish may be due.
    DelaysDue,
    /// A consumer group gave up on a stream message: published to its
    /// `$dlq/{group}/{stream}` topic.
    DeadLetter(Box<Message>),
}

/// The broker's timers: one wheel for all of them, and the wake-up of the
/// task that advances it when an earlier deadline is armed.
pub struct Timers {
    wheel: Mutex<TimerWheel<TimerEvent>>,
    changed: Notify,
}

impl Timers {
    fn new(now: u64) -> Timers {
        Timers {
            wheel: Mutex::new(TimerWheel::new(now)),
            changed: Notify::new(),
        }
    }

    fn arm(&self, deadline: u64, event: TimerEvent) -> TimerId {
        let mut wheel = self.wheel.lock().unwrap_or_else(PoisonError::into_inner);
        let earlier = wheel.next_deadline().is_none_or(|next| deadline < next);
        let id = wheel.arm(deadline, event);
        drop(wheel);
        if earlier {
            self.changed.notify_one();
        }
        id
    }

    /// Arms a connection's alarm; its task re-arms it as its deadlines move.
    pub fn arm_connection_alarm(&self, deadline: u64, signal: &Arc<ConnectionSignal>) -> TimerId {
        self.arm(deadline, TimerEvent::ConnectionAlarm(signal.clone()))
    }

    pub fn cancel(&self, id: TimerId) {
        self.wheel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel(id);
    }

    /// When the next timer is due, if any is armed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.wheel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_deadline()
    }

    /// Timers due by `now`.
    pub fn advance(&self, now: u64) -> Vec<TimerEvent> {
        self.wheel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .advance(now)
    }

    /// Armed timers.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.wheel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Resolves when a timer earlier than the last `next_deadline` was armed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

pub struct BrokerState {
    settings: Settings,
    sessions: DashMap<Arc<str>, Arc<Session>>,
    /// Entries in `sessions`, kept beside it: counting the map would lock
    /// every shard, and `max_sessions` is checked with one shard locked.
    session_count: AtomicUsize,
    index: SubscriptionIndex,
    retained: Retained,
    metrics: Metrics,
    journal: Journal,
    /// Whether QoS 1/2 copies for persistent sessions are journalled (not in
    /// the `memory` mode, where nothing outlives the process).
    keeps_messages: bool,
    timers: Timers,
    /// Keys of stored deliveries; continues after the highest stored one.
    next_seq: AtomicU64,
    /// Sessions' requests to read their spilled messages back.
    refills: refill::Refills,
    /// The streams publishes are appended to.
    streams: Streams,
    /// The consumer groups reading them.
    consumers: consume::Consumers,
    /// Consumer groups' dead letters, for their retention.
    dead_letters: consume::DeadLetterIndex,
    /// Delayed publishes waiting for their time.
    delays: delayed::DelayQueue,
    /// Ids of delayed publishes; continues after the highest stored one.
    next_delay_id: AtomicU64,
    /// The password file, the ACL and the failed-login throttle.
    security: Security,
    /// What each configured bridge reports (its task writes it).
    bridges: Vec<Arc<crate::bridge::BridgeStatus>>,
    /// Whether any session's queue refuses publishes when full (the
    /// `queue_full` limit, or a bridge's own): only then is a QoS 1/2
    /// publish checked against its subscribers' queues first.
    some_queue_refuses: bool,
    shutting_down: AtomicBool,
}

impl BrokerState {
    /// The broker's state, rebuilt from `snapshot`: persistent sessions
    /// with their subscriptions, deliveries, inbound QoS 2 ids and wills,
    /// and retained messages. Expiry counts wall-clock time, so time spent
    /// stopped counts too.
    ///
    /// The password and ACL files are read here; one that does not load is
    /// logged and refuses what it decides (`Security::load_or_refuse`).
    /// `Broker::start` loads them first and stops instead.
    pub fn new(
        settings: Settings,
        journal: Journal,
        keeps_messages: bool,
        snapshot: Snapshot,
        now: u64,
    ) -> Arc<BrokerState> {
        let security = Security::load_or_refuse(&settings);
        BrokerState::with_security(settings, journal, keeps_messages, snapshot, now, security)
    }

    /// `new` with the security files already loaded.
    pub fn with_security(
        settings: Settings,
        journal: Journal,
        keeps_messages: bool,
        mut snapshot: Snapshot,
        now: u64,
        security: Security,
    ) -> Arc<BrokerState> {
        // Loading the settings checked the streams; settings made in code
        // are checked here.
        let topic_limits = TopicLimits {
            max_length: settings.limits.max_topic_length,
            max_levels: settings.limits.max_topic_levels,
        };
        let stream_specs = crate::stream::spec::check_all(&settings.streams, topic_limits)
            .unwrap_or_else(|error| {
                tracing::error!(stream = %error.stream, key = error.key, problem = %error.problem, "stream not configured");
                Vec::new()
            });
        // Bridges are checked where they are built (`Broker::start`); the
        // state needs only their names and queue policies.
        let some_queue_refuses = settings.limits.queue_full == QueueFull::Refuse
            || settings
                .bridges
                .iter()
                .any(|bridge| bridge.queue_full == QueueFull::Refuse);
        let bridges = settings
            .bridges
            .iter()
            .map(|bridge| Arc::new(crate::bridge::BridgeStatus::new(&bridge.name)))
            .collect();
        let state = Arc::new(BrokerState {
            bridges,
            some_queue_refuses,
            settings,
            sessions: DashMap::new(),
            session_count: AtomicUsize::new(0),
            index: SubscriptionIndex::new(),
            retained: Retained::new(),
            metrics: Metrics::default(),
            journal,
            keeps_messages,
            timers: Timers::new(now),
            next_seq: AtomicU64::new(snapshot.last_seq() + 1),
            refills: refill::Refills::new(),
            consumers: consume::Consumers::new(stream_specs.len()),
            dead_letters: consume::DeadLetterIndex::default(),
            delays: delayed::DelayQueue::new(),
            next_delay_id: AtomicU64::new(1),
            streams: Streams::new(stream_specs, &snapshot, !keeps_messages),
            security,
            shutting_down: AtomicBool::new(false),
        });
        state.restore_groups(std::mem::take(&mut snapshot.committed));
        state.arm_retention(now);
        state.restore_delays(std::mem::take(&mut snapshot.delayed), now);
        state.restore_dead_letters(std::mem::take(&mut snapshot.dead_letters));
        restore::restore(&state, snapshot, now);
        state
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configured streams and their partitions' next offsets.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.session_count.load(Ordering::Acquire)
    }

    /// Counts one more session, unless that would pass `max_sessions`.
    fn reserve_session(&self) -> bool {
        let max = self.settings.limits.max_sessions;
        self.session_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < max).then_some(count + 1)
            })
            .is_ok()
    }

    /// Counts a session removed from the map.
    fn release_session(&self) {
        self.session_count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Marks the broker as shutting down and tells every connected client's
    /// task to close (v5: DISCONNECT 0x8B).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for entry in self.sessions.iter() {
            if let Some(link) = &entry.value().lock().connection {
                link.signal.shut_down();
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_length: self.settings.limits.max_topic_length,
            max_levels: self.settings.limits.max_topic_levels,
        }
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_inflight: self.settings.limits.max_inflight,
            queue: QueueLimits {
                max_messages: self.settings.limits.max_queued_messages,
                max_bytes: self.settings.limits.max_queued_bytes,
                when_full: self.settings.limits.queue_full,
            },
        }
    }

    /// Delivers `message` to every matching subscription. QoS 1/2 copies
    /// for persistent sessions, and the publisher's QoS 2 packet id when
    /// given, are journalled as one record before any copy is queued, so a
    /// copy's later changes always follow it in the journal.
    fn route(
        &self,
        message: &Arc<Message>,
        inbound_qos2: Option<(&Arc<str>, u16)>,
        now: u64,
    ) -> Routed {
        let mut matches = self
            .index
            .matches(&message.topic, message.publisher.as_deref());
        // Counted before the ACL leaves any out: as with Mosquitto, a
        // publisher hears "no matching subscribers" only when nobody
        // subscribed, not when a subscriber may not read the topic.
        let matched = matches.len();
        if self.security.has_acl() {
            self.drop_unreadable(&mut matches, &message.topic);
        }
        let deliveries: Vec<(Arc<Session>, Delivery)> = matches
            .into_iter()
            .map(|found| {
                let qos = message.qos.min(found.qos);
                let stored = qos != QoS::AtMostOnce && self.stores_for(&found.session);
                let delivery = Delivery {
                    message: message.clone(),
                    qos,
                    retain: message.retain && found.retain_as_published,
                    subscription_ids: found.subscription_ids,
                    seq: stored.then(|| self.next_seq.fetch_add(1, Ordering::Relaxed)),
                    stream: None,
                };
                (found.session, delivery)
            })
            .collect();
        let copies: Vec<Copy> = deliveries
            .iter()
            .filter_map(|(session, delivery)| Copy::of(session.client_id(), delivery))
            .collect();
        let appended = self.streams.append(message, now, |appends| {
            if copies.is_empty() && appends.is_empty() && inbound_qos2.is_none() {
                return Ticket::NONE;
            }
            self.journal.append(Record::PutCopies {
                message: (!copies.is_empty() || !appends.is_empty()).then(|| message.clone()),
                copies,
                inbound_qos2: inbound_qos2.map(|(client_id, id)| (client_id.clone(), id)),
                appends,
            })
        });
        for (session, delivery) in deliveries {
            self.deliver(&session, delivery);
        }
        if appended.partitions > 0 {
            self.metrics.stream_appends_add(appended.partitions as u64);
            // Durable appends reach the groups when the journal settles
            // them (`serve_stream_durability`); these need no wait.
            self.appended(&appended.readable, now);
        }
        Routed {
            receivers: matched + appended.partitions,
            ticket: appended.written,
        }
    }

    /// Queues one delivery for one session and wakes its connection.
    fn deliver(&self, session: &Session, delivery: Delivery) {
        let mut state = session.lock();
        self.enqueue(session, &mut state, delivery);
    }

    /// Queues a delivery into a locked session.
    fn enqueue(&self, session: &Session, state: &mut SessionState, delivery: Delivery) {
        if state.ended {
            return;
        }
        match state.outbound.enqueue(delivery) {
            Enqueued::Queued => {}
            Enqueued::QueuedDroppingOlder | Enqueued::Dropped => {
                self.metrics
                    .queue_full_drop(session.client_id(), state.outbound.dropped());
            }
        }
        self.journal_changes(session.client_id(), state);
        Session::wake(state);
    }

    /// Journals the changes to a session's stored deliveries. Returns the
    /// ticket that packets going with them must wait for.
    ///
    /// Called with the session locked, so one session's changes reach the
    /// journal in the order they happened.
    fn journal_changes(&self, client_id: &Arc<str>, state: &mut SessionState) -> Ticket {
        let changes = state.outbound.take_changes();
        let mut must_wait = Ticket::NONE;
        for change in changes {
            let record = match change {
                Change::Sent { seq, sent } => Record::MarkSent {
                    client_id: client_id.clone(),
                    seq,
                    sent,
                },
                Change::Removed { seq } => Record::DeleteDelivery {
                    client_id: client_id.clone(),
                    seq,
                },
            };
            let ticket = self.journal.append(record);
            if change.must_be_durable_before_sending() {
                must_wait = ticket;
            }
        }
        must_wait
    }

    /// Journals a persistent session's own fields (expiry, the will still
    /// due) from its locked state. Returns the ticket to wait for.
    fn persist_session(&self, session: &Session, state: &mut SessionState) -> Ticket {
        if !Self::persists(state) {
            return Ticket::NONE;
        }
        state.stored = true;
        let record = SessionRecord {
            client_id: session.client_id().to_string(),
            expiry_secs: state.expiry_secs,
            disconnected_at_ms: state.disconnected_at_ms,
            will: state.will.as_deref().cloned(),
        };
        self.journal.append(Record::PutSession(Box::new(record)))
    }

    /// Journals one subscription of a persistent session as it now stands
    /// in its locked state: its row, or its removal. Returns the ticket.
    fn persist_subscription(
        &self,
        session: &Session,
        state: &SessionState,
        filter: &str,
    ) -> Ticket {
        if !Self::persists(state) {
            return Ticket::NONE;
        }
        let client_id = session.client_id().clone();
        let filter: Arc<str> = filter.into();
        self.journal.append(match state.subscription(&filter) {
            Some(entry) => Record::PutSubscription {
                client_id,
                filter,
                entry: *entry,
            },
            None => Record::DeleteSubscription { client_id, filter },
        })
    }

    fn persists(state: &SessionState) -> bool {
        state.expiry_secs != 0 && !state.ended
    }

    /// Replaces or clears the retained message of `message.topic`, with the
    /// retained store write-locked: memory and journal change together, in
    /// the same order for concurrent publishes to one topic.
    fn retain(&self, trie: &mut RetainedTrie, message: &Arc<Message>) -> Ticket {
        let ticket = if message.payload.is_empty() {
            self.journal
                .append(Record::DeleteRetained(message.topic.clone()))
        } else {
            self.journal.append(Record::PutRetained(message.clone()))
        };
        self.hold_retained(trie, message);
        ticket
    }

    /// The in-memory half of `retain`: the trie, and the expiry timer of a
    /// message that has one. Restoring at start needs only this half.
    fn hold_retained(&self, trie: &mut RetainedTrie, message: &Arc<Message>) {
        trie.set(message.clone());
        if let Some(expires_at) = message.expires_at.filter(|_| !message.payload.is_empty()) {
            self.timers.arm(
                expires_at,
                TimerEvent::RetainedExpiry {
                    topic: message.topic.clone(),
                    expires_at,
                },
            );
        }
    }

    /// Whether a retained message may replace what `topic` holds without
    /// passing the retained limits.
    fn retained_fits(&self, trie: &RetainedTrie, message: &Message) -> bool {
        if message.payload.is_empty() {
            return true;
        }
        let limits = &self.settings.limits;
        let old = trie.get(&message.topic);
        let count = trie.len() + usize::from(old.is_none());
        let bytes = trie.bytes() + message.size() - old.map_or(0, |m| m.size());
        count <= limits.max_retained_messages && bytes <= limits.max_retained_bytes
    }

    /// Publishes a message on the broker's own account (a will): retained
    /// and routed like any publish, within the same limits.
    fn publish_internal(&self, message: Message, now: u64) {
        let message = Arc::new(message);
        // As in `store_and_route`: a retained message is routed with the
        // retained store still write-locked (the guard lives to the end).
        let mut retained = message.retain.then(|| self.retained.write());
        if let Some(trie) = retained.as_mut() {
            if self.retained_fits(trie, &message) {
                self.retain(trie, &message);
            } else {
                self.metrics.retained_refusal();
            }
        }
        self.route(&message, None, now);
    }

    /// Whether a QoS 1/2 copy of `message` would find full the queue of a
    /// subscriber whose `queue_full` is `refuse`: the publish is refused
    /// first.
    fn a_queue_is_full(&self, message: &Message) -> bool {
        let size = message.size();
        self.index
            .matches(&message.topic, message.publisher.as_deref())
            .into_iter()
            .filter(|found| found.qos != QoS::AtMostOnce)
            .any(|found| found.session.lock().outbound.refuses(size))
    }

    /// Whether QoS 1/2 state of `session` (copies for it, its inbound QoS 2
    /// packet ids) is journalled.
    fn stores_for(&self, session: &Session) -> bool {
        self.keeps_messages && session.is_persistent()
    }

    /// The session registered under `client_id`, if any.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions
            .get(client_id)
            .map(|entry| entry.value().clone())
    }
}
