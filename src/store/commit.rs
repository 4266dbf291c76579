//! Group commit: when a write counts as durable.
//!
//! Under the `sync` durability mode a connection that has written to the
//! store holds back the acknowledgements that depend on those writes until a
//! flush covers them. One flusher thread serves every connection: a flush
//! covers every write that had returned when it started, so all the
//! acknowledgements that piled up during one flush are released by the next,
//! and the number of flushes stays independent of the message rate.
//!
//! Writes are counted, not named: `wrote` returns the count after a write
//! has returned, and a flush that reads the count N before it starts makes
//! the first N writes durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::{Store, StoreError};

pub struct GroupCommit {
    shared: Option<Arc<Shared>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    store: Arc<dyn Store>,
    written: AtomicU64,
    request: Mutex<Request>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
}

#[derive(Default)]
struct Request {
    pending: bool,
    stop: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    /// Writes made durable.
    through: u64,
    /// Writes whose flush failed: their acknowledgements must never go out.
    failed_through: u64,
}

impl GroupCommit {
    /// Writes are durable only once flushed; `durable` waits for a flush.
    pub fn on_demand(store: Arc<dyn Store>) -> GroupCommit {
        let shared = Arc::new(Shared {
            store,
            written: AtomicU64::new(0),
            request: Mutex::new(Request::default()),
            wake: Condvar::new(),
            flushed: watch::Sender::new(Flushed::default()),
        });
        let worker = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("petrel-flush".into())
            .spawn(move || worker.run())
            .expect("cannot start the flusher thread");
        GroupCommit {
            shared: Some(shared),
            flusher: Mutex::new(Some(flusher)),
        }
    }

    /// Acknowledgements never wait (the `async` and `memory` modes).
    pub fn never_waits() -> GroupCommit {
        GroupCommit {
            shared: None,
            flusher: Mutex::new(None),
        }
    }

    /// Counts a write that has returned; the result is what to pass to
    /// `durable` before sending anything that depends on it (0: nothing).
    pub fn wrote(&self) -> u64 {
        match &self.shared {
            Some(shared) => shared.written.fetch_add(1, Ordering::AcqRel) + 1,
            None => 0,
        }
    }

    /// Waits until write number `epoch` (from `wrote`) is on disk.
    pub async fn durable(&self, epoch: u64) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if epoch == 0 {
            return Ok(());
        }
        let mut flushed = shared.flushed.subscribe();
        let settled = |f: &Flushed| f.through >= epoch || f.failed_through >= epoch;
        if !settled(&flushed.borrow()) && !shared.request_flush() {
            return Err(StoreError::Backend("the store is closed".into()));
        }
        let outcome = *flushed
            .wait_for(settled)
            .await
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?;
        if outcome.through >= epoch {
            Ok(())
        } else {
            Err(StoreError::Backend(
                "flushing to disk failed; see the log".into(),
            ))
        }
    }

    /// Flushes what is left and stops the flusher thread.
    pub fn close(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        {
            let mut request = shared.lock_request();
            request.stop = true;
            request.pending = true;
        }
        shared.wake.notify_one();
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(flusher) = flusher {
            let _ = flusher.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock_request(&self) -> std::sync::MutexGuard<'_, Request> {
        self.request.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for a flush; false once the flusher has been told to stop.
    fn request_flush(&self) -> bool {
        let mut request = self.lock_request();
        if request.stop {
            return false;
        }
        request.pending = true;
        drop(request);
        self.wake.notify_one();
        true
    }

    fn run(&self) {
        loop {
            let stop = {
                let mut request = self.lock_request();
                while !request.pending {
                    request = self
                        .wake
                        .wait(request)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                request.pending = false;
                request.stop
            };
            let target = self.written.load(Ordering::Acquire);
            match self.store.flush() {
                Ok(()) => self
                    .flushed
                    .send_modify(|f| f.through = f.through.max(target)),
                Err(error) => {
                    tracing::error!(%error, "flush to disk failed: acknowledgements are held back");
                    self.flushed
                        .send_modify(|f| f.failed_through = f.failed_through.max(target));
                }
            }
            if stop {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_flush_covers_every_write_made_before_it() {
        let commit = GroupCommit::on_demand(Arc::new(MemoryStore::new()));
        let first = commit.wrote();
        let second = commit.wrote();
        commit.durable(second).await.unwrap();
        commit.durable(first).await.unwrap();
        commit.close();
    }

    #[tokio::test]
    async fn never_waits_without_a_flusher() {
        let commit = GroupCommit::never_waits();
        assert_eq!(commit.wrote(), 0);
        commit.durable(0).await.unwrap();
    }
}
