//! The journal: the ordered queue of records between the broker and its
//! store, and the tickets that say when a record is durable.
//!
//! The broker appends records while it holds the lock of the state they
//! describe, so they are queued in the order the changes happened, but it
//! never waits there: appending is an in-memory push. One writer thread
//! applies the records to the `Store` in that order and, under `sync`,
//! flushes once per batch (group commit): every record appended before a
//! flush started is covered by it. An acknowledgement that depends on a
//! record waits for its ticket, on the connection task, without blocking a
//! runtime thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::{Record, Store, StoreError};

/// The position of a record in the journal. `Ticket::NONE` is durable
/// from the start: nothing to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Ticket(pub u64);

impl Ticket {
    pub const NONE: Ticket = Ticket(0);
}

/// How records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Tickets are settled once a flush covers them (`durability = sync`).
    EveryBatch,
    /// Tickets are settled as soon as the records are written; the store
    /// is flushed at most this long after a write (`async`, `memory`).
    Background(Duration),
}

/// Records waiting for the writer: at most this many bytes' worth before
/// connections stop reading until it catches up.
const CONGESTED_BYTES: usize = 64 * 1024 * 1024;

/// How often the writer asks a store that reported itself full whether it
/// has space again, so publishes are accepted again without a restart.
const FULL_RETRY: Duration = Duration::from_millis(500);

/// How long the writer lets records gather after a batch when nothing waits
/// for them to be durable (`async`, `memory`).
const BACKGROUND_PAUSE: Duration = Duration::from_millis(2);

/// How long the writer sleeps when nothing happens.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Failed ranges remembered: far more than can be waited on at once.
const FAILED_RANGES_KEPT: usize = 1024;

#[derive(Debug, Clone, Default)]
struct Settled {
    /// Every record up to here has been dealt with: written and flushed,
    /// or failed.
    through: u64,
    /// The ranges of tickets whose write or flush failed, and whether for
    /// lack of space: what waits for them must never be sent.
    failed: VecDeque<(u64, u64, bool)>,
}

impl Settled {
    /// Whether `ticket` failed, and if so whether the disk was full.
    fn failure(&self, ticket: u64) -> Option<bool> {
        self.failed
            .iter()
            .find(|&&(first, last, _)| (first..=last).contains(&ticket))
            .map(|&(_, _, full)| full)
    }

    fn record(&mut self, first: u64, last: u64, failure: Option<bool>) {
        if let Some(full) = failure {
            if self.failed.len() == FAILED_RANGES_KEPT {
                self.failed.pop_front();
            }
            self.failed.push_back((first, last, full));
        }
        self.through = self.through.max(last);
    }
}

/// Records waiting for the writer. Tickets are consecutive, so the queued
/// records hold tickets `appended - records.len() + 1 ..= appended`.
#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    appended: u64,
    stop: bool,
}

/// Tasks polling for a ticket, woken (all of them) whenever tickets settle.
/// `epoch` counts the settlements, so a task registers once per wait.
#[derive(Default)]
struct Waiters {
    epoch: u64,
    wakers: Vec<Waker>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Weight of the queued records: changed under the queue's lock, read
    /// without it by every connection that is about to read its socket.
    queued_bytes: AtomicUsize,
    wake_writer: Condvar,
    settled: watch::Sender<Settled>,
    waiters: Mutex<Waiters>,
    /// The store said it is full: new durable messages are refused until a
    /// write succeeds again.
    full: AtomicBool,
    relieved: Notify,
    /// Notified when the store has space again after being full.
    space_back: Notify,
    /// Whether acknowledgements wait for their records at all (`sync`).
    waits: bool,
    stats: JournalStats,
}

/// How the writer's group commits go, for `/metrics`.
#[derive(Debug, Clone)]
pub struct JournalStats {
    /// Seconds each flush to disk (fdatasync) took.
    pub flush_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Records written per batch (per group commit under `sync`).
    pub batch_records: prometheus_client::metrics::histogram::Histogram,
}

impl Default for JournalStats {
    fn default() -> JournalStats {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        JournalStats {
            // 50 µs to about 1.6 s.
            flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 to 32768 records.
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
        }
    }
}

/// How far the journal's records have settled (written and, under
/// `sync`, flushed, or failed), as it changes.
pub struct SettledWatch(watch::Receiver<Settled>);

impl SettledWatch {
    /// The ticket every record up to which has settled, now.
    pub fn current(&mut self) -> u64 {
        self.0.borrow_and_update().through
    }

    /// Waits for the next settlement and returns the ticket every record
    /// up to which has settled; none once the journal is gone.
    pub async fn next(&mut self) -> Option<u64> {
        self.0.changed().await.ok()?;
        Some(self.0.borrow_and_update().through)
    }
}

pub struct Journal {
    shared: Arc<Shared>,
    /// Asked whether it takes more messages; absent for manual journals.
    store: Option<Arc<dyn Store>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// A journal whose writer thread applies records to `store`.
    pub fn start(store: Arc<dyn Store>, flush: Flush) -> std::io::Result<Journal> {
        let shared = Journal::shared(flush == Flush::EveryBatch);
        let worker = shared.clone();
        let written_to = store.clone();
        let writer = std::thread::Builder::new()
            .name("petrel-journal".into())
            .spawn(move || worker.run(&*written_to, flush))?;
        Ok(Journal {
            shared,
            store: Some(store),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// A journal without a writer: records stay queued until `take` and
    /// tickets settle only through `settle`. For tests of the broker core,
    /// which run with no thread and no disk.
    pub fn manual() -> Journal {
        Journal {
            shared: Journal::shared(true),
            store: None,
            writer: Mutex::new(None),
        }
    }

    fn shared(waits: bool) -> Arc<Shared> {
        Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued_bytes: AtomicUsize::new(0),
            wake_writer: Condvar::new(),
            settled: watch::Sender::new(Settled::default()),
            waiters: Mutex::new(Waiters::default()),
            full: AtomicBool::new(false),
            relieved: Notify::new(),
            space_back: Notify::new(),
            waits,
            stats: JournalStats::default(),
        })
    }

    /// The writer's flush times and batch sizes.
    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// Queues a record; its ticket says when it is durable (always at once
    /// when acknowledgements do not wait for the disk).
    pub fn append(&self, record: Record) -> Ticket {
        let mut queue = self.shared.lock();
        queue.appended += 1;
        let ticket = queue.appended;
        self.shared
            .queued_bytes
            .fetch_add(record.weight(), Ordering::Relaxed);
        // The writer only waits on an empty queue: waking it costs a system
        // call, so only the first record after it emptied the queue does.
        let writer_waits = queue.records.is_empty();
        queue.records.push_back(record);
        drop(queue);
        if writer_waits {
            self.shared.wake_writer.notify_one();
        }
        if self.shared.waits {
            Ticket(ticket)
        } else {
            Ticket::NONE
        }
    }

    /// The store the writer writes to (none for manual journals).
    pub fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.clone()
    }

    /// Whether new durable messages may be accepted: not while the store
    /// reports it is full or over its disk limit (the publisher gets quota
    /// exceeded).
    pub fn accepting(&self) -> Result<(), StoreError> {
        if self.shared.full.load(Ordering::Acquire) {
            return Err(StoreError::Full("the store is full".into()));
        }
        if self.store.as_ref().is_some_and(|store| !store.accepting()) {
            return Err(StoreError::Full("max_disk_bytes is reached".into()));
        }
        Ok(())
    }

    /// Waits until durable publishes are accepted (the store is not full).
    pub async fn until_accepting(&self) {
        loop {
            let notified = self.shared.space_back.notified();
            if self.accepting().is_ok() {
                return;
            }
            notified.await;
        }
    }

    /// Whether so much waits for the writer that connections should stop
    /// reading until it catches up.
    pub fn congested(&self) -> bool {
        self.shared.queued_bytes.load(Ordering::Relaxed) > CONGESTED_BYTES
    }

    /// Waits until the journal is no longer congested.
    pub async fn relieved(&self) {
        loop {
            let notified = self.shared.relieved.notified();
            if !self.congested() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `ticket` is durable; an error means it never will be.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        if ticket == Ticket::NONE {
            return Ok(());
        }
        let mut settled = self.shared.settled.subscribe();
        settled
            .wait_for(|s| s.through >= ticket.0)
            .await
            .map_err(|_| StoreError::Backend("the journal has stopped".into()))?;
        self.outcome(ticket).expect("settled")
    }

    /// Follows how far the journal's records have settled.
    pub fn watch_settled(&self) -> SettledWatch {
        SettledWatch(self.shared.settled.subscribe())
    }

    /// Waits until every record appended so far has been written (and,
    /// under `sync`, flushed), whatever the durability mode.
    pub async fn drained(&self) {
        let appended = self.shared.lock().appended;
        let mut settled = self.shared.settled.subscribe();
        let _ = settled.wait_for(|s| s.through >= appended).await;
    }

    /// `durable` for tasks that poll by hand: `registered` keeps the epoch
    /// the task last registered in, so it is added to the waiters once per
    /// settlement however often it polls.
    pub fn poll_durable(
        &self,
        ticket: Ticket,
        registered: &mut u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), StoreError>> {
        if let Some(outcome) = self.outcome(ticket) {
            return Poll::Ready(outcome);
        }
        {
            let mut waiters = self.shared.lock_waiters();
            if *registered != waiters.epoch + 1 {
                waiters.wakers.push(cx.waker().clone());
                *registered = waiters.epoch + 1;
            }
        }
        // A settlement between the first look and the registration drained
        // the waiters before this one was added: look again.
        match self.outcome(ticket) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    /// The outcome of `ticket` once it has settled.
    fn outcome(&self, ticket: Ticket) -> Option<Result<(), StoreError>> {
        if ticket == Ticket::NONE {
            return Some(Ok(()));
        }
        let settled = self.shared.settled.borrow();
        (settled.through >= ticket.0).then(|| match settled.failure(ticket.0) {
            None => Ok(()),
            Some(true) => Err(StoreError::Full("the disk is full".into())),
            Some(false) => Err(StoreError::Backend(
                "writing to the store failed; see the log".into(),
            )),
        })
    }

    /// Whether `ticket` is durable already.
    pub fn is_durable(&self, ticket: Ticket) -> bool {
        matches!(self.outcome(ticket), Some(Ok(())))
    }

    /// Takes the queued records (manual journals).
    pub fn take(&self) -> Vec<Record> {
        let mut queue = self.shared.lock();
        self.shared.queued_bytes.store(0, Ordering::Relaxed);
        queue.records.drain(..).collect()
    }

    /// Marks everything up to `ticket` durable (manual journals).
    pub fn settle(&self, ticket: Ticket) {
        self.shared.settle(ticket.0, ticket.0, None);
    }

    /// Marks `ticket` failed, and everything before it settled (manual
    /// journals).
    pub fn fail(&self, ticket: Ticket) {
        self.shared.settle(ticket.0, ticket.0, Some(false));
    }

    /// Reports the store full or no longer full (manual journals).
    pub fn set_full(&self, full: bool) {
        self.shared.full.store(full, Ordering::Release);
    }

    /// Writes and flushes what is queued, then stops the writer.
    pub fn close(&self) {
        self.shared.lock().stop = true;
        self.shared.wake_writer.notify_one();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records how tickets `first..=last` ended (`failure`: none, or
    /// whether the disk was full) and wakes whoever waits.
    fn settle(&self, first: u64, last: u64, failure: Option<bool>) {
        self.settled.send_modify(|s| s.record(first, last, failure));
        let wakers = {
            let mut waiters = self.lock_waiters();
            waiters.epoch += 1;
            std::mem::take(&mut waiters.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// The writer thread: take everything queued, apply it in order, flush
    /// once (under `EveryBatch`), settle the tickets, repeat. While the
    /// store reports itself full, it also asks it every `FULL_RETRY`
    /// whether space came back.
    fn run(&self, store: &dyn Store, flush: Flush) {
        let mut last_probe = Instant::now();
        // Under `Background`: when the oldest write not yet flushed was made.
        let mut unflushed_since: Option<Instant> = None;
        loop {
            let flush_due = match (flush, unflushed_since) {
                (Flush::Background(interval), Some(since)) => Some(since + interval),
                _ => None,
            };
            let (batch, last, stop) = self.next_batch(flush_due);
            self.relieved.notify_waiters();
            if self.full.load(Ordering::Acquire) && last_probe.elapsed() >= FULL_RETRY {
                last_probe = Instant::now();
                if store.has_space() {
                    self.space_is_back();
                }
            }
            if !batch.is_empty() {
                let first = last + 1 - batch.len() as u64;
                self.stats.batch_records.observe(batch.len() as f64);
                let mut failure = None;
                for record in batch {
                    if let Err(error) = store.write(record) {
                        failure = Some(self.report(&error));
                    }
                }
                if flush == Flush::EveryBatch || stop {
                    if let Err(error) = self.timed_flush(store) {
                        failure = Some(self.report(&error));
                    }
                } else {
                    unflushed_since.get_or_insert_with(Instant::now);
                }
                self.settle(first, last, failure);
                if flush != Flush::EveryBatch && !stop {
                    // Nothing waits for these writes: letting records pile
                    // up a little makes batches larger and wake-ups (each a
                    // context switch on a busy machine) rarer.
                    std::thread::sleep(BACKGROUND_PAUSE);
                }
            }
            if flush_due.is_some_and(|due| Instant::now() >= due) {
                unflushed_since = None;
                if let Err(error) = self.timed_flush(store) {
                    self.report(&error);
                }
            }
            if stop && self.lock().records.is_empty() {
                if let Err(error) = store.flush() {
                    tracing::error!(%error, "final flush to disk failed");
                }
                return;
            }
        }
    }

    fn timed_flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let started = Instant::now();
        let flushed = store.flush();
        self.stats
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        flushed
    }

    /// Waits for records (or, while the store is full, for the next probe,
    /// or for a background flush that is due) and takes them all, with the
    /// ticket of the last one.
    fn next_batch(&self, flush_due: Option<Instant>) -> (VecDeque<Record>, u64, bool) {
        let mut queue = self.lock();
        if queue.records.is_empty() && !queue.stop {
            let mut timeout = if self.full.load(Ordering::Acquire) {
                FULL_RETRY
            } else {
                IDLE_WAIT
            };
            if let Some(due) = flush_due {
                timeout = timeout.min(due.saturating_duration_since(Instant::now()));
            }
            queue = self
                .wake_writer
                .wait_timeout_while(queue, timeout, |q| q.records.is_empty() && !q.stop)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.queued_bytes.store(0, Ordering::Relaxed);
        (
            std::mem::take(&mut queue.records),
            queue.appended,
            queue.stop,
        )
    }

    /// Logs a failed write or flush; returns whether the disk was full.
    fn report(&self, error: &StoreError) -> bool {
        let full = matches!(error, StoreError::Full(_));
        if full {
            if !self.full.swap(true, Ordering::AcqRel) {
                tracing::error!(%error, "the store is full: durable publishes are refused until space returns");
            }
        } else {
            tracing::error!(%error, "cannot write to the store: acknowledgements are held back");
        }
        full
    }

    fn space_is_back(&self) {
        self.full.store(false, Ordering::Release);
        tracing::warn!("the store has space again: durable publishes are accepted");
        self.space_back.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_ticket_settles_once_the_writer_has_applied_it() {
        let store = Arc::new(MemoryStore::new());
        let journal = Journal::start(store.clone(), Flush::EveryBatch).unwrap();
        let ticket = journal.append(Record::DeleteRetained("t".into()));
        journal.durable(ticket).await.unwrap();
        assert!(journal.is_durable(ticket));
        journal.close();
    }

    #[tokio::test]
    async fn manual_tickets_wait_for_settle_and_fail_with_fail() {
        let journal = Journal::manual();
        let first = journal.append(Record::DeleteRetained("a".into()));
        let second = journal.append(Record::DeleteRetained("b".into()));
        assert!(!journal.is_durable(first));
        journal.settle(first);
        journal.durable(first).await.unwrap();
        assert!(!journal.is_durable(second));
        journal.fail(second);
        assert!(journal.durable(second).await.is_err());
        assert_eq!(journal.take().len(), 2);
    }
}
