//! The storage seam: what the broker records so that persistent sessions,
//! their messages and retained messages can be rebuilt after a restart.
//!
//! The broker keeps its live state in memory for speed and reports every
//! change that must survive as a `Record` to the `Journal`, whose writer
//! thread hands it to a `Store`; at start the broker rebuilds from
//! `Store::load`. Only persistent sessions (expiry > 0) are ever written.
//! `DiskStore` appends every record to the commit log (`log`), where each
//! message is written once, and folds them into a sled database of small
//! state rows (`state`) behind the log; `MemoryStore` keeps sessions and
//! retained messages in the process (the `memory` durability mode, and what
//! tests use to restart a broker on the same state).

mod disk;
mod journal;
pub mod log;
mod memory;
mod queues;
mod record;
mod recovery;
mod state;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::{Message, Will};
use crate::session::{Delivery, Sent, Spilled, SubscriptionEntry};

pub use disk::{DiskOptions, DiskStore};
pub use journal::{Flush, Journal, JournalStats, SettledWatch, Ticket};
pub use memory::MemoryStore;
pub use record::{Append, Copy, Record, partition_name};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another petrel process")]
    Locked(String),
    #[error("cannot open the database in {dir}: {reason}")]
    Open { dir: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The disk is full or over quota: publishes are refused with 0x97.
    #[error("no space left for stored data: {0}")]
    Full(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
}

impl StoreError {
    /// Classifies an I/O error from the backend.
    pub fn io(error: &std::io::Error) -> StoreError {
        // std maps ENOSPC and EDQUOT to these kinds.
        let full = matches!(
            error.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
            // sled re-wraps the OS error into one that keeps only its text.
            || error.to_string().contains("No space left on device");
        if full {
            StoreError::Full(error.to_string())
        } else {
            StoreError::Backend(error.to_string())
        }
    }
}

/// A persistent session's own fields as stored: who it is, how long it
/// lives after its connection ends, and the will that is still due. Its
/// subscriptions are stored one row each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub client_id: String,
    pub expiry_secs: u32,
    /// When its last connection ended, so expiry and will delay count
    /// across restarts; none while it was connected.
    pub disconnected_at_ms: Option<u64>,
    /// The will of the current connection, or one whose delay is running.
    pub will: Option<Will>,
}

/// A QoS 1/2 delivery kept for a persistent session until it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDelivery {
    pub seq: u64,
    pub delivery: Delivery,
    /// Set once it was sent: re-sent with DUP and this packet id.
    pub sent: Option<Sent>,
}

/// Everything a store holds, as read back at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<SessionRecord>,
    /// Per client id, by filter as sent.
    pub subscriptions: HashMap<String, Vec<(String, SubscriptionEntry)>>,
    pub retained: Vec<Arc<Message>>,
    /// Per client id, in the order they were queued: those sent and the
    /// first unsent ones, with their messages.
    pub deliveries: HashMap<String, Vec<StoredDelivery>>,
    /// Per client id, the unsent ones after those, left in the store.
    pub spilled: HashMap<String, Vec<Spilled>>,
    /// Per client id: inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: HashMap<String, Vec<u16>>,
    /// Per stream partition (`stream/partition`): the last offset stored.
    pub stream_offsets: HashMap<String, u64>,
    /// Per stream partition: the first offset retention kept, where it
    /// trimmed any.
    pub stream_starts: HashMap<String, u64>,
    /// Consumer groups' committed offsets.
    pub committed: Vec<Committed>,
    /// Per stream partition: its stored offsets in runs, oldest first.
    pub stream_blocks: HashMap<String, Vec<StreamBlock>>,
    /// Delayed publishes waiting, in due order.
    pub delayed: Vec<crate::delay::Pending>,
    /// The dead letters kept, without their messages.
    pub dead_letters: Vec<DeadLetterMark>,
}

/// A dead letter as retention sees it: which queue, where, when, how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMark {
    pub group: String,
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
    pub at: u64,
    pub size: u32,
}

/// How far a consumer group has read one partition: the next offset it
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub group: String,
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
}

/// Offsets per `StreamBlock`: retention drops whole blocks, so a partition
/// keeps at most this many messages past its limits.
pub const STREAM_BLOCK: u32 = 1024;

/// A run of a stream partition's offsets, as retention sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamBlock {
    pub first: u64,
    pub count: u32,
    /// The messages' sizes together.
    pub bytes: u64,
    /// When its newest message was appended (unix ms).
    pub newest_ms: u64,
}

/// A dead letter as read back: where it was in its stream, why it was
/// given up, and the message as the group's members received it.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    pub group: String,
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
    pub attempts: u32,
    pub reason: String,
    /// When it was given up (unix ms).
    pub at: u64,
    pub message: Arc<Message>,
}

/// One message of a stream partition as read back.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub offset: u64,
    /// When it was appended (unix ms).
    pub appended_at: u64,
    pub message: Arc<Message>,
}

impl Snapshot {
    /// The highest delivery key in use, so new keys continue after it.
    pub fn last_seq(&self) -> u64 {
        let held = self.deliveries.values().flatten().map(|stored| stored.seq);
        let spilled = self.spilled.values().flatten().map(|spilled| spilled.seq);
        held.chain(spilled).max().unwrap_or(0)
    }
}

pub trait Store: Send + Sync + 'static {
    /// Whether QoS 1/2 deliveries and inbound QoS 2 packet ids are kept.
    /// When not, the broker does not journal them at all.
    fn keeps_messages(&self) -> bool;
    /// Whether new durable messages fit within the configured disk limit.
    fn accepting(&self) -> bool {
        true
    }
    /// Takes one record, in journal order. It need not be durable until
    /// `flush` returns.
    fn write(&self, record: Record) -> Result<(), StoreError>;
    /// Makes every record written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// After writes failed for lack of space: whether a write succeeds now.
    fn has_space(&self) -> bool;
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Reads back the stored copies `seqs` of `client_id` that are in
    /// place (see `settle`).
    fn read_copies(&self, client_id: &str, seqs: &[u64]) -> Result<Vec<Delivery>, StoreError> {
        let _ = (client_id, seqs);
        Ok(Vec::new())
    }
    /// Reads up to `max` messages of a stream partition (`stream/partition`)
    /// from offset `from` on; offsets retention dropped are skipped.
    fn read_partition(
        &self,
        partition: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let _ = (partition, from, max);
        Ok(Vec::new())
    }
    /// Every dead letter stored, by group, stream, partition and offset.
    fn dead_letters(&self) -> Result<Vec<DeadLetterEntry>, StoreError> {
        Ok(Vec::new())
    }
    /// Waits until every record written so far can be read back by
    /// `read_copies` and `read_partition`.
    fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Finishes background work (after the last `flush`); blocks.
    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_is_full_and_other_io_errors_are_not() {
        let full = |error: std::io::Error| matches!(StoreError::io(&error), StoreError::Full(_));
        // ENOSPC and EDQUOT on Linux.
        assert!(full(std::io::Error::from_raw_os_error(28)));
        assert!(full(std::io::Error::from_raw_os_error(122)));
        assert!(full(std::io::Error::other(
            "No space left on device (os error 28)"
        )));
        // EIO.
        assert!(!full(std::io::Error::from_raw_os_error(5)));
    }
}
