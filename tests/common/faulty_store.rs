//! A store that passes every call to a real one, except where a test's
//! `Faults` step in: a full, failing or slow disk on demand.

use std::sync::Arc;

use petrel::protocol::Message;
use petrel::session::{Delivery, Sent};
use petrel::store::{SessionRecord, Snapshot, Store, StoreError};

/// What a test changes about the disk; by default nothing.
pub trait Faults: Send + Sync + 'static {
    /// Runs before message copies are written; an error is returned instead.
    fn before_copies(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Runs before a flush; an error is returned instead.
    fn before_flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether the disk has space (also asked of the real store).
    fn has_space(&self) -> bool {
        true
    }
}

/// `inner` with `faults`. It keeps message copies whatever `inner` says, so
/// that a memory store stands in for a disk too.
pub struct FaultyStore<S, F> {
    pub inner: S,
    pub faults: F,
}

impl<S, F> FaultyStore<S, F> {
    pub fn new(inner: S, faults: F) -> Arc<FaultyStore<S, F>> {
        Arc::new(FaultyStore { inner, faults })
    }
}

impl<S: Store, F: Faults> Store for FaultyStore<S, F> {
    fn keeps_messages(&self) -> bool {
        true
    }
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.put_session(record)
    }
    fn delete_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.inner.delete_session(client_id)
    }
    fn put_retained(&self, message: &Message) -> Result<(), StoreError> {
        self.inner.put_retained(message)
    }
    fn delete_retained(&self, topic: &str) -> Result<(), StoreError> {
        self.inner.delete_retained(topic)
    }
    fn put_copies(
        &self,
        copies: &[(Arc<str>, Delivery)],
        inbound_qos2: Option<(&str, u16)>,
    ) -> Result<(), StoreError> {
        self.faults.before_copies()?;
        self.inner.put_copies(copies, inbound_qos2)
    }
    fn mark_sent(&self, client_id: &str, seq: u64, sent: Sent) -> Result<(), StoreError> {
        self.inner.mark_sent(client_id, seq, sent)
    }
    fn delete_delivery(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.inner.delete_delivery(client_id, seq)
    }
    fn delete_inbound_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.inner.delete_inbound_qos2(client_id, packet_id)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.faults.before_flush()?;
        self.inner.flush()
    }
    fn has_space(&self) -> bool {
        self.faults.has_space() && self.inner.has_space()
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
}
