//! A store that passes every call to a real one, except where a test's
//! `Faults` step in: a full, failing or slow disk on demand.

use std::sync::Arc;

use petrel::store::{Record, Snapshot, Store, StoreError};

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
    fn write(&self, record: Record) -> Result<(), StoreError> {
        if matches!(record, Record::PutCopies { .. }) {
            self.faults.before_copies()?;
        }
        self.inner.write(record)
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
