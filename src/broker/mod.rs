//! The running broker: shared state, message routing, start and shutdown.
//!
//! `BrokerState` is shared by every connection task. It has no lock of its
//! own: sessions live in a DashMap, each session behind its own mutex, and the
//! subscription index and retained store shard their locks, so publishes from
//! different connections proceed in parallel on all cores.

mod client;
mod connect;
mod lifecycle;
mod metrics;
mod publish;
mod subscribe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Durability, Settings};
use crate::protocol::{QoS, Will};
use crate::router::{Message, RetainedStore, Subscriber, SubscriptionIndex};
use crate::session::{Change, Delivery, Enqueued, Session, SessionConfig, SessionState};
use crate::store::{
    GroupCommit, MemoryStore, SessionCopy, SessionRecord, SledStore, Store, StoreError,
};
use crate::topic::{self, TopicLimits};
use crate::transport;

pub use client::{Client, Close};
pub use connect::Connected;
pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot restore stored state: {0}")]
    Restore(#[from] StoreError),
}

/// What routing one inbound message did.
#[derive(Debug, Clone, Copy)]
pub struct Routed {
    /// Sessions it was delivered to.
    pub receivers: usize,
    /// The store write its acknowledgement must wait for (0: none).
    pub durable_after: u64,
}

/// Under `sync`, sled also flushes on its own at this interval, so writes
/// no acknowledgement waits for (session records at disconnect, delivery
/// state) do not wait for the next acknowledged publish.
const SYNC_BACKGROUND_FLUSH_MS: u64 = 1000;

/// Unix time in milliseconds: message and session expiry are wall-clock
/// deadlines so that they can be stored and survive a restart.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct BrokerState {
    pub settings: Settings,
    pub sessions: DashMap<Arc<str>, Arc<Session>>,
    pub index: SubscriptionIndex,
    pub retained: RetainedStore,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    /// When store writes count as durable (DESIGN §4 durability modes).
    pub commit: GroupCommit,
    /// Keys of stored deliveries; continues after the highest stored one.
    next_seq: AtomicU64,
    /// Flips to true once, when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl BrokerState {
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_length: self.settings.limits.max_topic_length,
            max_levels: self.settings.limits.max_topic_levels,
        }
    }

    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_inflight: self.settings.limits.max_inflight,
            max_queued: self.settings.limits.max_queued_messages,
        }
    }

    /// Delivers `message` to every matching subscription. QoS 1/2 copies for
    /// persistent sessions, and the publisher's QoS 2 packet id when given,
    /// are stored first, all or nothing: when that fails nothing is
    /// delivered, and the publisher must be refused.
    pub fn route(
        &self,
        message: &Arc<Message>,
        inbound_qos2: Option<(&str, u16)>,
    ) -> Result<Routed, StoreError> {
        let matches = self
            .index
            .matches(&message.topic, message.publisher.as_deref());
        let keeps_messages = self.store.keeps_messages();
        let deliveries: Vec<(Arc<Session>, Delivery)> = matches
            .into_iter()
            .map(|found| {
                let qos = message.qos.min(found.qos);
                let stored =
                    keeps_messages && qos != QoS::AtMostOnce && found.session.is_persistent();
                let delivery = Delivery {
                    message: message.clone(),
                    qos,
                    retain: message.retain && found.retain_as_published,
                    subscription_ids: found.subscription_ids,
                    seq: stored.then(|| self.next_seq.fetch_add(1, Ordering::Relaxed)),
                };
                (found.session, delivery)
            })
            .collect();
        let copies: Vec<SessionCopy<'_>> = deliveries
            .iter()
            .filter(|(_, delivery)| delivery.seq.is_some())
            .map(|(session, delivery)| SessionCopy {
                client_id: session.client_id(),
                delivery,
            })
            .collect();
        let mut durable_after = 0;
        if !copies.is_empty() || inbound_qos2.is_some() {
            self.store.put_copies(&copies, inbound_qos2)?;
            durable_after = self.commit.wrote();
        }
        let receivers = deliveries.len();
        for (session, delivery) in deliveries {
            self.deliver(&session, delivery);
        }
        Ok(Routed {
            receivers,
            durable_after,
        })
    }

    /// Queues one delivery for one session and wakes its connection.
    pub fn deliver(&self, session: &Session, delivery: Delivery) {
        let online = {
            let mut state = session.lock();
            match state.outbound.enqueue(delivery) {
                Enqueued::Queued => {}
                Enqueued::QueuedDroppingOlder | Enqueued::Dropped => {
                    self.metrics.message_dropped(session.client_id());
                }
            }
            self.journal(session.client_id(), &mut state);
            state.connection.is_some()
        };
        if online {
            session.wake();
        }
    }

    /// Writes changes to a session's stored deliveries. Returns the store
    /// write that packets going with them must wait for (0: none).
    ///
    /// Takes the changes from the locked `state`, so one session's changes
    /// reach the store in the order they happened. A failed write is logged:
    /// the delivery goes on, and only a crash before the next successful
    /// write could make it arrive again.
    pub fn journal(&self, client_id: &str, state: &mut SessionState) -> u64 {
        let changes = state.outbound.take_changes();
        if changes.is_empty() {
            return 0;
        }
        let mut must_wait = false;
        for change in &changes {
            let written = match *change {
                Change::Sent { seq, sent } => self.store.mark_sent(client_id, seq, sent),
                Change::Removed { seq } => self.store.delete_delivery(client_id, seq),
            };
            if let Err(error) = written {
                tracing::error!(%error, client_id, "cannot record delivery state");
            }
            must_wait |= change.must_be_durable_before_sending();
        }
        let written = self.commit.wrote();
        if must_wait { written } else { 0 }
    }

    /// Stores or clears a retained message, on disk first and then in
    /// memory. Returns the store write to wait for.
    pub fn retain(&self, message: &Arc<Message>) -> Result<u64, StoreError> {
        if message.payload.is_empty() {
            self.store.delete_retained(&message.topic)?;
        } else {
            self.store.put_retained(message)?;
        }
        self.retained.set(message.clone());
        Ok(self.commit.wrote())
    }

    /// Writes a persistent session's record, with the will still due, to the
    /// store. Returns the store write to wait for (0 when nothing was written).
    pub fn persist_session(
        &self,
        session: &Session,
        disconnected_at_ms: Option<u64>,
        will: Option<&Will>,
    ) -> u64 {
        let record = {
            let state = session.lock();
            if state.expiry_secs == 0 {
                return 0;
            }
            SessionRecord {
                client_id: session.client_id().to_string(),
                expiry_secs: state.expiry_secs,
                disconnected_at_ms,
                subscriptions: state
                    .subscriptions
                    .iter()
                    .map(|(filter, entry)| (filter.clone(), *entry))
                    .collect(),
                will: will.cloned(),
            }
        };
        match self.store.put_session(&record) {
            Ok(()) => self.commit.wrote(),
            Err(error) => {
                tracing::error!(%error, client_id = %record.client_id, "cannot store session");
                0
            }
        }
    }

    /// Removes a session and all its subscriptions, if `session` is still
    /// the one registered under its client id.
    pub fn end_session(&self, session: &Arc<Session>) {
        let removed = self
            .sessions
            .remove_if(session.client_id(), |_, current| {
                Arc::ptr_eq(current, session)
            })
            .is_some();
        if !removed {
            return;
        }
        connect::discard_session(self, session);
    }
}

/// Rebuilds persistent sessions (subscriptions, stored deliveries, inbound
/// QoS 2 packet ids, wills still due) and retained messages from the store.
/// Expiry counts wall-clock time, so time spent stopped counts too.
fn restore(broker: &Arc<BrokerState>, now: u64) -> Result<(), StoreError> {
    let mut snapshot = broker.store.load()?;
    broker
        .next_seq
        .store(snapshot.last_seq() + 1, Ordering::Relaxed);
    for message in std::mem::take(&mut snapshot.retained) {
        if !message.is_expired(now) {
            broker.retained.set(message);
        }
    }
    let mut wills = Vec::new();
    let mut ended_wills = Vec::new();
    for record in std::mem::take(&mut snapshot.sessions) {
        let expired = record.disconnected_at_ms.is_some_and(|at| {
            record.expiry_secs != u32::MAX
                && at.saturating_add(u64::from(record.expiry_secs) * 1000) <= now
        });
        let client_id: Arc<str> = record.client_id.as_str().into();
        if expired {
            broker.store.delete_session(&record.client_id)?;
            // A will still due when the session ended goes out now.
            if let Some(will) = record.will {
                ended_wills.push((client_id, will));
            }
            continue;
        }
        let session = Arc::new(Session::new(client_id.clone(), broker.session_config()));
        {
            let mut state = session.lock();
            Session::set_expiry(&mut state, &session, record.expiry_secs);
            for (raw, entry) in &record.subscriptions {
                let Ok(parsed) = topic::parse_filter(raw, broker.topic_limits()) else {
                    continue;
                };
                state.subscriptions.insert(raw.clone(), *entry);
                broker.index.subscribe(
                    parsed.filter,
                    parsed.share_group,
                    Subscriber {
                        session: session.clone(),
                        options: entry.options,
                        id: entry.id,
                    },
                );
            }
            if let Some(stored) = snapshot.deliveries.remove(&record.client_id) {
                state
                    .outbound
                    .restore(stored.into_iter().map(|s| (s.delivery, s.sent)));
            }
            if let Some(ids) = snapshot.inbound_qos2.remove(&record.client_id) {
                state.restore_inbound_qos2(ids);
            }
        }
        broker.sessions.insert(client_id, session.clone());
        // A session still connected when the broker stopped counts as
        // disconnected from now on.
        let disconnected_at = match record.disconnected_at_ms {
            Some(at) => at,
            None => {
                broker.persist_session(&session, Some(now), record.will.as_ref());
                now
            }
        };
        if let Some(will) = record.will {
            wills.push((session.clone(), will, disconnected_at));
        }
        lifecycle::schedule_expiry(broker.clone(), session, disconnected_at);
    }
    for (client_id, will) in ended_wills {
        lifecycle::publish_will_message(broker, &client_id, will, now);
    }
    for (session, will, disconnected_at) in wills {
        lifecycle::schedule_will(broker.clone(), session, will, disconnected_at);
    }
    Ok(())
}

/// A running broker. Dropping it without `shutdown` leaves the tasks running
/// until the runtime ends.
pub struct Broker {
    state: Arc<BrokerState>,
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Broker {
    /// Opens the store the durability mode asks for (sled under `data_dir`,
    /// or memory), rebuilds what it holds, binds every listener and starts
    /// serving.
    pub async fn start(settings: Settings) -> Result<Broker, BrokerError> {
        let store: Arc<dyn Store> = match settings.durability {
            Durability::Memory => Arc::new(MemoryStore::new()),
            Durability::Sync => Arc::new(SledStore::open(
                &settings.data_dir,
                Some(SYNC_BACKGROUND_FLUSH_MS),
            )?),
            Durability::Async => Arc::new(SledStore::open(
                &settings.data_dir,
                Some(settings.flush_interval_ms),
            )?),
        };
        Broker::start_with_store(settings, store).await
    }

    /// Starts on the given store, first rebuilding what it holds.
    pub async fn start_with_store(
        settings: Settings,
        store: Arc<dyn Store>,
    ) -> Result<Broker, BrokerError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut listeners = Vec::new();
        for listener in &settings.listeners {
            let socket = tokio::net::TcpListener::bind(listener.bind)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: listener.bind,
                    source,
                })?;
            listeners.push(socket);
        }
        let addrs = listeners
            .iter()
            .zip(&settings.listeners)
            .map(|(socket, listener)| socket.local_addr().unwrap_or(listener.bind))
            .collect();
        let commit = match settings.durability {
            Durability::Sync => GroupCommit::on_demand(store.clone()),
            Durability::Async | Durability::Memory => GroupCommit::never_waits(),
        };
        let state = Arc::new(BrokerState {
            settings,
            sessions: DashMap::new(),
            index: SubscriptionIndex::new(),
            retained: RetainedStore::new(),
            metrics: Metrics::default(),
            commit,
            store,
            next_seq: AtomicU64::new(1),
            shutdown: shutdown_rx,
        });
        restore(&state, now_ms())?;
        let mut tasks = JoinSet::new();
        for socket in listeners {
            tasks.spawn(transport::accept_loop(socket, state.clone()));
        }
        Ok(Broker {
            state,
            addrs,
            shutdown,
            tasks,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// Stops accepting, tells v5 clients the server is shutting down, and
    /// waits for the connections to close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.state.commit.close();
        if let Err(error) = self.state.store.flush() {
            tracing::error!(%error, "final flush to disk failed");
        }
    }
}
