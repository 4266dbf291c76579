//! The status page at `/` and the `GET /v1/overview` it reads: one
//! self-contained HTML page (`status.html`, no external assets) that asks
//! for the overview every few seconds and works out message rates from the
//! counters' differences, keeping the last minutes in the browser.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerState;
use crate::broker::inspect::FilterCount;

/// The page, compiled in so the binary serves it from anywhere.
const PAGE: &str = include_str!("status.html");

/// Filters the overview ranks by subscribers.
const TOP_FILTERS: usize = 10;

/// What the inspection routes share: the broker, when the API started (so
/// with the broker), and the operator's actions counted.
pub(super) struct Console {
    pub(super) broker: Arc<BrokerState>,
    started_ms: u64,
    pub(super) actions: Actions,
}

impl Console {
    pub(super) fn new(broker: Arc<BrokerState>) -> Console {
        Console {
            broker,
            started_ms: crate::timer::now_ms(),
            actions: Actions::default(),
        }
    }
}

/// Actions taken through the API since start.
#[derive(Debug, Default)]
pub(super) struct Actions {
    disconnects: AtomicU64,
    sessions_deleted: AtomicU64,
    retained_deleted: AtomicU64,
}

impl Actions {
    pub(super) fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn session_deleted(&self) {
        self.sessions_deleted.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn retained_deleted(&self) {
        self.retained_deleted.fetch_add(1, Ordering::Relaxed);
    }
}

/// The answer of `GET /v1/overview`: everything the status page shows.
/// Counters count since start; the page (or any caller) takes rates from
/// two of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    pub version: String,
    pub uptime_secs: u64,
    /// When the overview was taken (unix ms).
    pub now: u64,
    pub connections: u64,
    pub connections_opened: u64,
    pub sessions_online: usize,
    pub sessions_offline: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The filters with the most subscribers, most first.
    pub top_subscriptions: Vec<FilterCount>,
    pub streams: Vec<StreamLag>,
    /// Consumer groups with dead letters.
    pub dead_letters: Vec<DeadLetterCount>,
    /// The configured bridges, in configuration order (absent from the
    /// answers of brokers older than bridges).
    #[serde(default)]
    pub bridges: Vec<BridgeSummary>,
    pub admin_actions: AdminActions,
}

/// A stream and how far each of its groups is behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamLag {
    pub name: String,
    pub partitions: usize,
    /// Messages appended and still kept, over all partitions.
    pub messages: u64,
    pub groups: Vec<GroupLag>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupLag {
    pub name: String,
    pub members: usize,
    /// Appended and not yet committed, over all partitions.
    pub lag: u64,
    pub inflight: usize,
    pub dead_letters: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterCount {
    pub group: String,
    pub stream: String,
    pub count: usize,
}

/// A bridge as the status page shows it (`GET /v1/bridges` has it all).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeSummary {
    pub name: String,
    pub connected: bool,
    pub address: Option<String>,
    pub last_error: Option<String>,
    pub queued_messages: u64,
    pub sent: u64,
    pub received: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminActions {
    pub disconnects: u64,
    pub sessions_deleted: u64,
    pub retained_deleted: u64,
}

/// `GET /`: the status page. Served without the bearer token: it holds
/// no data, and a browser cannot attach one to a navigation. The data it
/// asks for does need it (the page takes it from the address's `#token=`
/// fragment, which browsers never send, or asks for it).
pub(super) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

/// `GET /v1/overview`.
pub(super) async fn overview(State(console): State<Arc<Console>>) -> Json<Overview> {
    let broker = &console.broker;
    let metrics = broker.metrics();
    let now = crate::timer::now_ms();
    let census = broker.session_census(TOP_FILTERS);
    let mut dead_letters = Vec::new();
    let streams = broker
        .stream_reports()
        .into_iter()
        .map(|stream| {
            let groups = stream
                .groups
                .iter()
                .map(|group| {
                    if group.dead_letters > 0 {
                        dead_letters.push(DeadLetterCount {
                            group: group.name.clone(),
                            stream: stream.name.clone(),
                            count: group.dead_letters,
                        });
                    }
                    GroupLag {
                        name: group.name.clone(),
                        members: group.members.len(),
                        lag: group.partitions.iter().map(|p| p.lag).sum(),
                        inflight: group.partitions.iter().map(|p| p.inflight).sum(),
                        dead_letters: group.dead_letters,
                    }
                })
                .collect();
            StreamLag {
                partitions: stream.partitions.len(),
                messages: stream.partitions.iter().map(|p| p.end - p.start).sum(),
                name: stream.name,
                groups,
            }
        })
        .collect();
    let bridges = broker
        .bridge_reports()
        .into_iter()
        .map(|bridge| BridgeSummary {
            name: bridge.name,
            connected: bridge.connected,
            address: bridge.address,
            last_error: bridge.last_error,
            queued_messages: bridge.queued_messages,
            sent: bridge.sent,
            received: bridge.received,
            dropped: bridge.dropped,
        })
        .collect();
    let actions = &console.actions;
    Json(Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: now.saturating_sub(console.started_ms) / 1000,
        now,
        connections: metrics.connections_current(),
        connections_opened: metrics.connections_opened(),
        sessions_online: census.online,
        sessions_offline: census.offline,
        subscriptions: census.subscriptions,
        retained: broker.retained_count(),
        messages_received: metrics.messages_received(),
        messages_sent: metrics.messages_sent(),
        messages_dropped: metrics.messages_dropped(),
        bytes_received: metrics.bytes_received(),
        bytes_sent: metrics.bytes_sent(),
        top_subscriptions: census.top_filters,
        streams,
        dead_letters,
        bridges,
        admin_actions: AdminActions {
            disconnects: actions.disconnects.load(Ordering::Relaxed),
            sessions_deleted: actions.sessions_deleted.load(Ordering::Relaxed),
            retained_deleted: actions.retained_deleted.load(Ordering::Relaxed),
        },
    })
}
