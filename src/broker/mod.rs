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
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::router::{Message, RetainedStore, Subscriber, SubscriptionIndex};
use crate::session::{Delivery, Enqueued, Session, SessionConfig};
use crate::store::{MemoryStore, SessionRecord, Store, StoreError};
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

    /// Delivers `message` to every matching subscription; returns how many
    /// sessions it went to.
    pub fn route(&self, message: &Arc<Message>) -> usize {
        let matches = self
            .index
            .matches(&message.topic, message.publisher.as_deref());
        let count = matches.len();
        for found in matches {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(found.qos),
                retain: message.retain && found.retain_as_published,
                subscription_ids: found.subscription_ids,
            };
            self.deliver(&found.session, delivery);
        }
        count
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
            state.connection.is_some()
        };
        if online {
            session.wake();
        }
    }

    /// Stores or clears a retained message, in memory and in the store.
    pub fn retain(&self, message: &Arc<Message>) {
        let result = if self.retained.set(message.clone()) {
            self.store.put_retained(message)
        } else {
            self.store.delete_retained(&message.topic)
        };
        if let Err(error) = result {
            tracing::error!(%error, topic = %message.topic, "cannot store retained message");
        }
    }

    /// Writes a persistent session's record to the store.
    pub fn persist_session(&self, session: &Session, disconnected_at_ms: Option<u64>) {
        let record = {
            let state = session.lock();
            if state.expiry_secs == 0 {
                return;
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
            }
        };
        if let Err(error) = self.store.put_session(&record) {
            tracing::error!(%error, client_id = %record.client_id, "cannot store session");
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

/// Rebuilds persistent sessions and retained messages from the store.
fn restore(broker: &Arc<BrokerState>, now: u64) -> Result<(), StoreError> {
    {
        let this = broker;
        let snapshot = this.store.load()?;
        for message in snapshot.retained {
            if !message.is_expired(now) {
                this.retained.set(message);
            }
        }
        for record in snapshot.sessions {
            let expired = record.disconnected_at_ms.is_some_and(|at| {
                record.expiry_secs != u32::MAX
                    && at.saturating_add(u64::from(record.expiry_secs) * 1000) <= now
            });
            if expired {
                this.store.delete_session(&record.client_id)?;
                continue;
            }
            let client_id: Arc<str> = record.client_id.as_str().into();
            let session = Arc::new(Session::new(client_id.clone(), this.session_config()));
            {
                let mut state = session.lock();
                state.expiry_secs = record.expiry_secs;
                for (raw, entry) in &record.subscriptions {
                    let Ok(parsed) = topic::parse_filter(raw, this.topic_limits()) else {
                        continue;
                    };
                    state.subscriptions.insert(raw.clone(), *entry);
                    this.index.subscribe(
                        parsed.filter,
                        parsed.share_group,
                        Subscriber {
                            session: session.clone(),
                            options: entry.options,
                            id: entry.id,
                        },
                    );
                }
            }
            this.sessions.insert(client_id, session.clone());
            if let Some(at) = record.disconnected_at_ms {
                lifecycle::schedule_expiry(broker.clone(), session, at);
            }
        }
        Ok(())
    }
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
    /// Binds every listener and starts serving, with state kept in memory.
    pub async fn start(settings: Settings) -> Result<Broker, BrokerError> {
        Broker::start_with_store(settings, Arc::new(MemoryStore::new())).await
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
        let state = Arc::new(BrokerState {
            settings,
            sessions: DashMap::new(),
            index: SubscriptionIndex::new(),
            retained: RetainedStore::new(),
            metrics: Metrics::default(),
            store,
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
    }
}
