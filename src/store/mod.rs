//! The storage seam: what the broker records so that persistent sessions and
//! retained messages can be rebuilt after a restart.
//!
//! The broker keeps its live state in memory for speed and reports every
//! change that must survive to a `Store`; at start it rebuilds from
//! `Store::load`. `MemoryStore` keeps the records in the process (the
//! `memory` durability mode, and what tests use to restart a broker on the
//! same state); a disk-backed store implements the same trait.

mod memory;

use std::sync::Arc;

use crate::router::Message;
use crate::session::SubscriptionEntry;

pub use memory::MemoryStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// A persistent session as stored: who it is, how long it lives after its
/// connection ends, and what it subscribed to.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub client_id: String,
    pub expiry_secs: u32,
    /// When its last connection ended, so expiry counts across restarts.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<(String, SubscriptionEntry)>,
}

/// Everything a store holds, as read back at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<SessionRecord>,
    pub retained: Vec<Arc<Message>>,
}

pub trait Store: Send + Sync + 'static {
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError>;
    fn delete_session(&self, client_id: &str) -> Result<(), StoreError>;
    fn put_retained(&self, message: &Arc<Message>) -> Result<(), StoreError>;
    fn delete_retained(&self, topic: &str) -> Result<(), StoreError>;
    fn load(&self) -> Result<Snapshot, StoreError>;
}
