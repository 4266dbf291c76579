//! What an operator sees of the broker through the admin API: sessions and
//! the clients connected to them, their subscriptions, retained messages;
//! and the three things an operator does to them: disconnect a client,
//! delete a session, delete a retained message.
//!
//! Every view is a copy taken under the locks the publish path takes
//! anyway, one session at a time and never across an `.await`: a listing
//! is as consistent as a walk over a changing map can be, which is what
//! an operator looking at a live broker needs. Listings keep at most
//! `limit` rows in memory however many sessions match, so asking for the
//! first page of a million sessions costs a walk, not a copy of them all.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};

use super::BrokerState;
use crate::protocol::{Message, RetainHandling};
use crate::session::{AwaitedAck, Owner, Session, SessionState, SubscriptionEntry};
use crate::store::Record;

/// Rows a listing returns when the caller names no limit.
pub const DEFAULT_LIMIT: usize = 1000;

/// Characters of a retained payload a listing shows; the rest is cut.
const PAYLOAD_PREVIEW: usize = 200;

/// A client as `GET /v1/clients` lists it: the session under its id and
/// whether a connection serves it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    pub client_id: String,
    pub online: bool,
    /// The user it was admitted as; none when anonymous, or when the
    /// session was restored at start and nobody attached to it since.
    pub username: Option<String>,
    /// When its last connection ended (unix ms); none while connected.
    pub disconnected_at: Option<u64>,
    pub subscriptions: usize,
    /// Messages waiting to be sent, in memory or spilled to the log.
    pub queued: usize,
    /// Messages sent and not yet acknowledged.
    pub inflight: usize,
}

/// One client with its subscriptions (`GET /v1/clients/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDetail {
    pub client: ClientView,
    pub subscriptions: Vec<SubscriptionView>,
}

/// A session as `GET /v1/sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub client_id: String,
    pub online: bool,
    pub username: Option<String>,
    /// Whether it outlives its connection (expiry above 0), and so is
    /// kept in the store.
    pub persistent: bool,
    /// Seconds it outlives its connection; none: forever.
    pub expiry_secs: Option<u32>,
    pub disconnected_at: Option<u64>,
    /// When it expires unless a client attaches first (unix ms); none
    /// while connected or when it never expires.
    pub expires_at: Option<u64>,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
    /// Messages its full queue dropped.
    pub dropped: u32,
    /// Inbound QoS 2 messages awaiting the client's PUBREL.
    pub awaiting_pubrel: usize,
}

/// One session in full (`GET /v1/sessions/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDetail {
    pub session: SessionView,
    pub subscriptions: Vec<SubscriptionView>,
    /// What was sent and waits for its acknowledgement, oldest first.
    pub inflight: Vec<InflightView>,
    /// The will waiting for the connection to end or for its delay.
    pub will: Option<WillView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InflightView {
    pub packet_id: u16,
    pub topic: String,
    pub qos: u8,
    /// `puback`, `pubrec` or `pubcomp`.
    pub awaiting: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillView {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub delay_secs: u32,
    pub payload_bytes: usize,
}

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub client_id: String,
    /// As the client sent it, `$share/{group}/` included.
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages on every subscribe, 1: on a new
    /// subscription only, 2: never (MQTT 5 Retain Handling).
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// A filter and how many sessions subscribe with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterCount {
    pub filter: String,
    pub subscribers: usize,
}

/// Sessions and subscriptions counted in one walk, for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCensus {
    pub online: usize,
    pub offline: usize,
    pub subscriptions: usize,
    /// The filters with the most subscribers, most first (ties by filter).
    pub top_filters: Vec<FilterCount>,
}

/// A retained message as `GET /v1/retained` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedView {
    pub topic: String,
    pub qos: u8,
    pub payload_bytes: usize,
    /// The payload as text (invalid UTF-8 replaced), cut at 200
    /// characters.
    pub payload: String,
    pub payload_truncated: bool,
    /// When it expires (unix ms), for a message with an expiry interval.
    pub expires_at: Option<u64>,
    pub content_type: Option<String>,
}

/// A page of a listing: the first `limit` rows in order, and how many
/// matched in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub total: usize,
    pub rows: Vec<T>,
}

/// Which clients or sessions a listing takes.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter<'a> {
    /// Only connected ones (`Some(true)`) or only disconnected ones.
    pub online: Option<bool>,
    /// Only client ids starting with this.
    pub prefix: Option<&'a str>,
}

impl SessionFilter<'_> {
    fn admits(&self, session: &Session) -> bool {
        self.prefix
            .is_none_or(|prefix| session.client_id().starts_with(prefix))
            && self
                .online
                .is_none_or(|online| session.is_online() == online)
    }
}

/// What asking a client to disconnect found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Its connection was told to close (v5: DISCONNECT 0x98).
    Disconnected,
    /// The session exists, but no connection serves it.
    NotConnected,
    NoSuchClient,
}

impl BrokerState {
    /// Clients (sessions with their connection state) by client id.
    pub fn clients(&self, filter: &SessionFilter<'_>, limit: usize) -> Page<ClientView> {
        self.page_of_sessions(filter, limit, client_view)
    }

    /// One client, with its subscriptions.
    pub fn client(&self, client_id: &str) -> Option<ClientDetail> {
        let session = self.session(client_id)?;
        let state = session.lock();
        if state.ended {
            return None;
        }
        Some(ClientDetail {
            client: client_view(&session, &state),
            subscriptions: subscription_views(&session, &state),
        })
    }

    /// Sessions by client id.
    pub fn sessions(&self, filter: &SessionFilter<'_>, limit: usize) -> Page<SessionView> {
        self.page_of_sessions(filter, limit, session_view)
    }

    /// One session in full.
    pub fn session_detail(&self, client_id: &str) -> Option<SessionDetail> {
        let session = self.session(client_id)?;
        let state = session.lock();
        if state.ended {
            return None;
        }
        let inflight = state
            .outbound
            .inflight()
            .map(|sent| InflightView {
                packet_id: sent.packet_id,
                topic: sent.delivery.message.topic.to_string(),
                qos: sent.delivery.qos as u8,
                awaiting: match sent.awaiting {
                    AwaitedAck::PubAck => "puback",
                    AwaitedAck::PubRec => "pubrec",
                    AwaitedAck::PubComp => "pubcomp",
                }
                .to_string(),
            })
            .collect();
        Some(SessionDetail {
            session: session_view(&session, &state),
            subscriptions: subscription_views(&session, &state),
            inflight,
            will: state.will.as_ref().map(|will| WillView {
                topic: will.topic.clone(),
                qos: will.qos as u8,
                retain: will.retain,
                delay_secs: will.delay_interval,
                payload_bytes: will.payload.len(),
            }),
        })
    }

    /// Subscriptions by client id, then by filter: every session's, or
    /// one client's.
    pub fn subscriptions(&self, client_id: Option<&str>, limit: usize) -> Page<SubscriptionView> {
        let mut page = Smallest::new(limit);
        let mut add = |session: &Session| {
            let state = session.lock();
            if !state.ended {
                for view in subscription_views(session, &state) {
                    let key = (view.client_id.clone(), view.filter.clone());
                    page.offer(key, view);
                }
            }
        };
        match client_id {
            Some(id) => {
                if let Some(session) = self.session(id) {
                    add(&session);
                }
            }
            None => {
                for entry in self.sessions.iter() {
                    add(entry.value());
                }
            }
        }
        page.into_page()
    }

    /// Counts sessions online and offline and their subscriptions, and
    /// keeps the `top` filters with the most subscribers.
    pub fn session_census(&self, top: usize) -> SessionCensus {
        let mut census = SessionCensus::default();
        let mut by_filter: HashMap<Box<str>, usize> = HashMap::new();
        for entry in self.sessions.iter() {
            let session = entry.value();
            if session.is_online() {
                census.online += 1;
            } else {
                census.offline += 1;
            }
            let state = session.lock();
            for (filter, _) in state.subscriptions() {
                census.subscriptions += 1;
                match by_filter.get_mut(filter) {
                    Some(count) => *count += 1,
                    None => {
                        by_filter.insert(filter.into(), 1);
                    }
                }
            }
        }
        let mut counts: Vec<(Box<str>, usize)> = by_filter.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        census.top_filters = counts
            .into_iter()
            .take(top)
            .map(|(filter, subscribers)| FilterCount {
                filter: filter.into(),
                subscribers,
            })
            .collect();
        census
    }

    /// Retained messages whose topic starts with `prefix`, by topic,
    /// expired ones left out.
    pub fn retained_messages(&self, prefix: &str, limit: usize, now: u64) -> Page<RetainedView> {
        let Some(filter) = covering_filter(prefix) else {
            return Page {
                total: 0,
                rows: Vec::new(),
            };
        };
        let found = self.retained.read().matching(&filter, now);
        let mut page = Smallest::new(limit);
        for message in found {
            if message.topic.starts_with(prefix) {
                page.offer(message.topic.clone(), message);
            }
        }
        let Page { total, rows } = page.into_page();
        Page {
            total,
            rows: rows.iter().map(|m| retained_view(m)).collect(),
        }
    }

    /// Tells the connection serving `client_id` to close, as an
    /// administrative action (v5 DISCONNECT 0x98); its will goes out as for
    /// any connection the server closes, and a persistent session stays.
    pub fn disconnect_client(&self, client_id: &str) -> Kick {
        let Some(session) = self.session(client_id) else {
            return Kick::NoSuchClient;
        };
        let state = session.lock();
        match &state.connection {
            Some(link) if !state.ended => {
                link.signal.kick();
                tracing::info!(client_id, "client disconnected through the admin API");
                Kick::Disconnected
            }
            _ => Kick::NotConnected,
        }
    }

    /// Deletes the session of `client_id` as its expiry would: its
    /// subscriptions leave the index, its stored state goes (journalled),
    /// its will goes out; a connection serving it is closed first (v5
    /// DISCONNECT 0x98). Returns false when there is no such session.
    pub fn delete_session(&self, client_id: &str, now_ms: u64) -> bool {
        let client_id: Arc<str> = client_id.into();
        // Discarded with the map entry locked, as a clean start does, so
        // the session's DeleteSession record precedes the record of any
        // new session a CONNECT makes for this id.
        let Entry::Occupied(entry) = self.sessions.entry(client_id.clone()) else {
            return false;
        };
        let session = entry.get().clone();
        let online = {
            let state = session.lock();
            // Raised before `discard` raises "taken over", which the
            // connection would otherwise report instead.
            if let Some(link) = &state.connection {
                link.signal.kick();
            }
            state.connection.is_some()
        };
        let (_, will) = self.discard(&session);
        entry.remove();
        self.release_session();
        tracing::info!(client_id = %client_id, online, "session deleted through the admin API");
        if let Some((will, owner)) = will {
            self.publish_will(&client_id, &owner, will, now_ms);
        }
        true
    }

    /// Deletes the retained message of `topic`, as a retained publish with
    /// an empty payload would (journalled), without routing anything.
    /// Returns false when the topic retains nothing.
    pub fn delete_retained(&self, topic: &str) -> bool {
        let mut trie = self.retained.write();
        let Some(removed) = trie.remove(topic) else {
            return false;
        };
        self.journal
            .append(Record::DeleteRetained(removed.topic.clone()));
        drop(trie);
        tracing::info!(topic, "retained message deleted through the admin API");
        true
    }

    /// Walks the sessions `filter` admits and keeps the first `limit` by
    /// client id, each shown by `view` under its lock.
    fn page_of_sessions<T>(
        &self,
        filter: &SessionFilter<'_>,
        limit: usize,
        view: impl Fn(&Session, &SessionState) -> T,
    ) -> Page<T> {
        let mut page = Smallest::new(limit);
        for entry in self.sessions.iter() {
            let session = entry.value();
            if !filter.admits(session) {
                continue;
            }
            let client_id = session.client_id().clone();
            // Only rows that make the page are made.
            if !page.would_keep(&client_id) {
                page.count_only();
                continue;
            }
            let state = session.lock();
            let row = view(session, &state);
            drop(state);
            page.offer(client_id, row);
        }
        page.into_page()
    }
}

/// The filter whose matches include every topic starting with `prefix`:
/// the prefix's complete levels, then `#`. None when those levels hold a
/// wildcard, which no topic does.
///
/// As with a `#` subscription, topics starting with `$` (`$SYS/...`) are
/// left out unless the prefix names their first level in full (`$SYS`,
/// `$SYS/broker`): a leading wildcard never matches them, so there is no
/// filter to walk them by a part of that level.
fn covering_filter(prefix: &str) -> Option<String> {
    let whole = match prefix.rfind('/') {
        Some(end) => &prefix[..end],
        None if prefix.starts_with('$') => prefix,
        None => return Some("#".into()),
    };
    if whole.contains(['+', '#']) {
        return None;
    }
    Some(format!("{whole}/#"))
}

fn username(owner: &Owner) -> Option<String> {
    match owner {
        Owner::User(name) => Some(name.to_string()),
        Owner::Anonymous | Owner::Unknown | Owner::Bridge => None,
    }
}

fn client_view(session: &Session, state: &SessionState) -> ClientView {
    ClientView {
        client_id: session.client_id().to_string(),
        online: session.is_online(),
        username: username(&state.owner),
        disconnected_at: state.disconnected_at_ms,
        subscriptions: state.subscription_count(),
        queued: state.outbound.queued(),
        inflight: state.outbound.inflight().count(),
    }
}

fn session_view(session: &Session, state: &SessionState) -> SessionView {
    let forever = state.expiry_secs == u32::MAX;
    SessionView {
        client_id: session.client_id().to_string(),
        online: session.is_online(),
        username: username(&state.owner),
        persistent: session.is_persistent(),
        expiry_secs: (!forever).then_some(state.expiry_secs),
        disconnected_at: state.disconnected_at_ms,
        expires_at: state
            .disconnected_at_ms
            .filter(|_| !forever)
            .map(|at| at + u64::from(state.expiry_secs) * 1000),
        subscriptions: state.subscription_count(),
        queued: state.outbound.queued(),
        inflight: state.outbound.inflight().count(),
        dropped: state.outbound.dropped(),
        awaiting_pubrel: state.inbound_qos2_pending(),
    }
}

fn subscription_views(session: &Session, state: &SessionState) -> Vec<SubscriptionView> {
    let mut views: Vec<SubscriptionView> = state
        .subscriptions()
        .map(|(filter, entry)| subscription_view(session.client_id(), filter, entry))
        .collect();
    views.sort_by(|a, b| a.filter.cmp(&b.filter));
    views
}

fn subscription_view(client_id: &str, filter: &str, entry: &SubscriptionEntry) -> SubscriptionView {
    let options = &entry.options;
    SubscriptionView {
        client_id: client_id.to_string(),
        filter: filter.to_string(),
        qos: options.qos as u8,
        no_local: options.no_local,
        retain_as_published: options.retain_as_published,
        retain_handling: match options.retain_handling {
            RetainHandling::OnSubscribe => 0,
            RetainHandling::OnNewSubscription => 1,
            RetainHandling::Never => 2,
        },
        subscription_id: entry.id,
    }
}

fn retained_view(message: &Message) -> RetainedView {
    let text = String::from_utf8_lossy(&message.payload);
    let truncated = text.chars().count() > PAYLOAD_PREVIEW;
    RetainedView {
        topic: message.topic.to_string(),
        qos: message.qos as u8,
        payload_bytes: message.payload.len(),
        payload: text.chars().take(PAYLOAD_PREVIEW).collect(),
        payload_truncated: truncated,
        expires_at: message.expires_at,
        content_type: message.properties.content_type.clone(),
    }
}

/// The `limit` rows with the smallest keys among those offered, and how
/// many were offered: a max-heap whose largest key leaves when it is full.
struct Smallest<K: Ord, T> {
    limit: usize,
    total: usize,
    heap: BinaryHeap<Keyed<K, T>>,
}

struct Keyed<K, T>(K, T);

impl<K: Ord, T> PartialEq for Keyed<K, T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Ord, T> Eq for Keyed<K, T> {}

impl<K: Ord, T> PartialOrd for Keyed<K, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord, T> Ord for Keyed<K, T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl<K: Ord, T> Smallest<K, T> {
    fn new(limit: usize) -> Smallest<K, T> {
        Smallest {
            limit,
            total: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// Whether a row with `key` would be kept, were it offered now.
    fn would_keep(&self, key: &K) -> bool {
        self.heap.len() < self.limit || self.heap.peek().is_some_and(|top| *key < top.0)
    }

    /// Counts a row that is not kept.
    fn count_only(&mut self) {
        self.total += 1;
    }

    fn offer(&mut self, key: K, row: T) {
        self.total += 1;
        if !self.would_keep(&key) {
            return;
        }
        self.heap.push(Keyed(key, row));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    fn into_page(self) -> Page<T> {
        Page {
            total: self.total,
            rows: self
                .heap
                .into_sorted_vec()
                .into_iter()
                .map(|Keyed(_, row)| row)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
