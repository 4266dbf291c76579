//! The store on disk: the commit log under `data_dir/log` and the state
//! database under `data_dir/db` behind it.
//!
//! The journal's writer thread hands each record to `write`, which frames
//! it into the log, and calls `flush` once per batch: one fdatasync makes
//! the whole batch durable (group commit). Records are folded into the
//! state database only once they are durable in the log, by a checkpoint
//! thread that never holds up an acknowledgement; every couple of seconds
//! it flushes the database with the log position it is complete up to (the
//! checkpoint) and deletes the log segments that nothing needs any more.
//! At start the log is replayed from the checkpoint, so a crash loses
//! nothing that was flushed to the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::log::{CommitLog, LogPos, LogReader, segment_path};
use super::recovery::{LogSpan, ReplayMeter, ReplayProgress};
use super::state::{Folded, SegmentRefs, StateDb};
use super::{
    DeadLetterEntry, DeadLetterMark, Record, STREAM_BLOCK, Snapshot, Store, StoreError,
    StoredDelivery, StreamBlock, StreamEntry,
};
use crate::delay::Pending;
use crate::protocol::Message;
use crate::session::{Delivery, HELD_IN_MEMORY};

/// Records replayed into the state database at a time at start.
const REPLAY_RUN: usize = 4096;

/// How often the state database is flushed with a new checkpoint, and the
/// log segments behind it are reclaimed.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// How long the checkpoint thread waits before trying again after the
/// state database refused a write (a full disk).
const STATE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    /// Where the log starts a new segment file.
    pub segment_bytes: u32,
    /// Log and state together: past this, new durable messages are refused.
    pub max_disk_bytes: u64,
}

/// What the writer thread owns: the log being appended to and the records
/// written since its last sync.
struct Writer {
    log: CommitLog,
    /// As the state database will need them: without message bodies.
    unsynced: Vec<(LogPos, Folded)>,
    buffer: Vec<u8>,
    /// A sync made for a reader failed, taking back records the journal
    /// has not flushed yet: its next flush must fail too.
    lost_unflushed: bool,
}

/// Durable records on their way into the state database.
enum ToState {
    Records(Vec<(LogPos, Folded)>, LogPos),
    /// The live copies per segment, counted at start.
    Refs(SegmentRefs),
    /// Answered once everything sent before it is applied.
    Barrier(Sender<()>),
    /// Answered once everything sent before it is checkpointed.
    Checkpoint(Sender<()>),
}

pub struct DiskStore {
    writer: Arc<Mutex<Writer>>,
    reader: LogReader,
    state: Arc<StateDb>,
    to_state: Mutex<Option<Sender<ToState>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    disk: Arc<DiskUse>,
    log_dir: PathBuf,
    /// Whether the log has been replayed into the state database (the
    /// first `load`).
    recovered: AtomicBool,
    /// Live copies per log segment, as found at open and kept up to date
    /// through the replay; then the checkpoint thread's.
    refs: Mutex<SegmentRefs>,
}

/// Bytes on disk, kept where every publish can read them.
struct DiskUse {
    log: AtomicU64,
    state: AtomicU64,
    max: u64,
    /// Free space on the filesystem of the data directory.
    free: AtomicU64,
    /// Free space kept for the state database and the records that free
    /// space (acknowledgements, deletions): new messages stop short of it,
    /// so a disk filled by messages never leaves the database unable to
    /// write.
    reserve: u64,
    dir: PathBuf,
}

/// The most free space kept in reserve (10% of smaller filesystems).
const MAX_RESERVE: u64 = 64 * 1024 * 1024;

impl DiskUse {
    fn new(dir: &Path, log: u64, state: u64, max: u64) -> Result<DiskUse, StoreError> {
        let space = fs_space(dir).map_err(|error| StoreError::io(&error))?;
        Ok(DiskUse {
            log: AtomicU64::new(log),
            state: AtomicU64::new(state),
            max,
            free: AtomicU64::new(space.free),
            reserve: (space.total / 10).min(MAX_RESERVE),
            dir: dir.to_path_buf(),
        })
    }

    /// Whether new messages fit: under `max_disk_bytes`, and above the
    /// reserve of free space.
    fn accepting(&self) -> bool {
        let used = self.log.load(Ordering::Relaxed) + self.state.load(Ordering::Relaxed);
        used < self.max && self.free.load(Ordering::Relaxed) > self.reserve
    }

    fn measure_free(&self) {
        if let Ok(space) = fs_space(&self.dir) {
            self.free.store(space.free, Ordering::Relaxed);
        }
    }
}

struct Space {
    total: u64,
    free: u64,
}

/// The size of the filesystem holding `dir` and what is free on it for
/// this process.
fn fs_space(dir: &Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `stat` is writable memory of
    // the type statvfs(3) fills in.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (32 or 64 bits).
    #[allow(clippy::unnecessary_cast)]
    let (block, blocks, available) = (
        stat.f_frsize as u64,
        stat.f_blocks as u64,
        stat.f_bavail as u64,
    );
    Ok(Space {
        total: blocks * block,
        free: available * block,
    })
}

impl DiskStore {
    /// Opens (or creates) the store under `data_dir`: the state database
    /// first, whose lock keeps a second petrel away from both, then the log,
    /// recovering its tail.
    pub fn open(data_dir: &Path, options: DiskOptions) -> Result<DiskStore, StoreError> {
        let (state, refs) = StateDb::open(data_dir)?;
        let state = Arc::new(state);
        let log_dir = data_dir.join("log");
        let log = CommitLog::open(&log_dir, options.segment_bytes)?;
        let reader = log.reader();
        let disk = Arc::new(DiskUse::new(
            &log_dir,
            log.disk_bytes(),
            state.disk_bytes(),
            options.max_disk_bytes,
        )?);
        let writer = Arc::new(Mutex::new(Writer {
            log,
            unsynced: Vec::new(),
            buffer: Vec::new(),
            lost_unflushed: false,
        }));
        let (to_state, from_log) = mpsc::channel();
        let checkpointer = Checkpointer {
            state: state.clone(),
            writer: writer.clone(),
            disk: disk.clone(),
            refs: SegmentRefs::new(),
        };
        let handle = std::thread::Builder::new()
            .name("petrel-checkpoint".into())
            .spawn(move || checkpointer.run(from_log))
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        Ok(DiskStore {
            writer,
            reader,
            state,
            to_state: Mutex::new(Some(to_state)),
            checkpointer: Mutex::new(Some(handle)),
            disk,
            log_dir,
            recovered: AtomicBool::new(false),
            refs: Mutex::new(refs),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, message: ToState) {
        if let Some(sender) = self
            .to_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = sender.send(message);
        }
    }

    /// Applies what the log holds past the checkpoint to the state
    /// database, so its rows are complete, saying in the log how far it has
    /// come while that takes long.
    fn replay(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.replay_with(&mut || started.elapsed(), &mut ReplayProgress::log)
    }

    /// `replay`, with the time since it started read from `elapsed` and
    /// its progress (about once a second) and summary handed to `report`.
    pub(super) fn replay_with(
        &self,
        elapsed: &mut dyn FnMut() -> Duration,
        report: &mut dyn FnMut(&ReplayProgress),
    ) -> Result<(), StoreError> {
        let from = self.state.checkpoint()?;
        let span = {
            let writer = self.writer();
            LogSpan::measure(
                &self.log_dir,
                from,
                writer.log.first_segment(),
                writer.log.end(),
            )
        };
        let mut meter = ReplayMeter::new(span);
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut run: Vec<(LogPos, Folded)> = Vec::with_capacity(REPLAY_RUN);
        let mut apply = |run: &mut Vec<(LogPos, Folded)>| {
            let applied = self
                .state
                .apply_all(run.iter().map(|(pos, change)| (*pos, change)), &mut refs);
            run.clear();
            applied
        };
        self.reader.scan(from, |found| {
            if let Some(progress) = meter.record(found.pos, elapsed) {
                report(&progress);
            }
            let record = Record::decode(&found.body, self.place(found.pos))?;
            run.push((found.pos, record.into()));
            if run.len() == REPLAY_RUN {
                apply(&mut run)?;
            }
            Ok(())
        })?;
        apply(&mut run)?;
        let end = self.writer().log.end();
        self.state.make_checkpoint(end)?;
        if meter.records() > 0 {
            report(&meter.finish(elapsed()));
        }
        Ok(())
    }

    /// Syncs the log and hands what it synced to the checkpoint thread.
    fn sync(&self, writer: &mut Writer) -> Result<(), StoreError> {
        let synced = writer.log.sync();
        let records = std::mem::take(&mut writer.unsynced);
        self.disk
            .log
            .store(writer.log.disk_bytes(), Ordering::Relaxed);
        self.disk.measure_free();
        synced?;
        // Sent under the writer's lock: a sync from another thread (a read
        // of spilled copies) must not overtake this batch on its way.
        if !records.is_empty() {
            let end = writer.log.end();
            self.send(ToState::Records(records, end));
        }
        Ok(())
    }

    /// Waits until every record written so far is durable and applied to
    /// the state database.
    fn settle_state(&self) -> Result<(), StoreError> {
        {
            let mut writer = self.writer();
            if let Err(error) = self.sync(&mut writer) {
                writer.lost_unflushed = true;
                return Err(error);
            }
        }
        let (done, applied) = mpsc::channel();
        self.send(ToState::Barrier(done));
        applied
            .recv()
            .map_err(|_| StoreError::Backend("the checkpoint thread has stopped".into()))
    }

    /// The message of the `PutCopies` record at `pos`, through `cache`.
    fn message_at(
        &self,
        pos: LogPos,
        cache: &mut HashMap<LogPos, Arc<Message>>,
    ) -> Result<Arc<Message>, StoreError> {
        if let Some(message) = cache.get(&pos) {
            return Ok(message.clone());
        }
        let found = self.reader.read(pos)?;
        match Record::decode(&found.body, self.place(pos))? {
            Record::PutCopies {
                message: Some(message),
                ..
            }
            | Record::PutDelayed { message, .. }
            | Record::PutDeadLetter { message, .. } => {
                cache.insert(pos, message.clone());
                Ok(message)
            }
            _ => Err(StoreError::Corrupt(format!(
                "{}: a stored copy points at a record that holds no message",
                self.place(pos)
            ))),
        }
    }

    /// A partition's stored offsets in runs of `STREAM_BLOCK`, each dated
    /// by its newest message's frame.
    fn partition_blocks(&self, partition: &str) -> Result<Vec<StreamBlock>, StoreError> {
        let mut runs: Vec<(StreamBlock, LogPos)> = Vec::new();
        self.state.visit_partition(partition, |entry| {
            let size = u64::from(entry.row.size);
            match runs.last_mut() {
                Some((block, newest)) if block.count < STREAM_BLOCK => {
                    block.count += 1;
                    block.bytes += size;
                    *newest = entry.row.pos;
                }
                _ => runs.push((
                    StreamBlock {
                        first: entry.seq,
                        count: 1,
                        bytes: size,
                        newest_ms: 0,
                    },
                    entry.row.pos,
                )),
            }
        })?;
        runs.into_iter()
            .map(|(mut block, newest)| {
                block.newest_ms = self.reader.read(newest)?.timestamp_ms;
                Ok(block)
            })
            .collect()
    }

    /// Names a log position for an error message; formatted only if one
    /// is made, not for every record read.
    fn place(&self, pos: LogPos) -> Place<'_> {
        Place {
            dir: &self.log_dir,
            pos,
        }
    }
}

impl Drop for DiskStore {
    /// Stops the checkpoint thread after a final checkpoint.
    fn drop(&mut self) {
        drop(
            self.to_state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Store for DiskStore {
    fn keeps_messages(&self) -> bool {
        true
    }

    fn accepting(&self) -> bool {
        self.disk.accepting()
    }

    fn write(&self, record: Record) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let Writer {
            log,
            unsynced,
            buffer,
            ..
        } = &mut *writer;
        buffer.clear();
        record.encode_into(buffer)?;
        match log.append(crate::timer::now_ms(), buffer) {
            Ok(pos) => {
                unsynced.push((pos, record.into()));
                Ok(())
            }
            Err(error) => {
                // The log dropped what it had not synced yet.
                unsynced.clear();
                Err(error)
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let synced = self.sync(&mut writer);
        if std::mem::take(&mut writer.lost_unflushed) {
            return Err(StoreError::Backend(
                "an earlier sync of the log failed".into(),
            ));
        }
        synced
    }

    fn has_space(&self) -> bool {
        self.disk.measure_free();
        self.accepting() && probe_write(&self.log_dir).is_ok()
    }

    /// At start: replays the log past the checkpoint first. Later (tests
    /// looking at what is stored): waits for the state database to catch up.
    fn load(&self) -> Result<Snapshot, StoreError> {
        let first = !self.recovered.swap(true, Ordering::AcqRel);
        if first {
            self.replay()?;
        } else {
            self.settle_state()?;
        }
        let rows = self.state.load(HELD_IN_MEMORY)?;
        if first {
            let refs =
                std::mem::take(&mut *self.refs.lock().unwrap_or_else(PoisonError::into_inner));
            self.send(ToState::Refs(refs));
        }
        let (committed, stream_starts) = self.state.offsets()?;
        let mut snapshot = Snapshot {
            committed,
            stream_starts,
            sessions: rows.sessions,
            subscriptions: rows.subscriptions,
            retained: rows.retained.into_iter().map(Arc::new).collect(),
            inbound_qos2: rows.inbound_qos2,
            spilled: rows.spilled,
            ..Snapshot::default()
        };
        let mut cache = HashMap::new();
        for (id, due, pos) in self.state.delayed()? {
            let message = self.message_at(pos, &mut cache)?;
            snapshot.delayed.push(Pending { id, due, message });
        }
        for (place, row) in self.state.dead_letters()? {
            snapshot.dead_letters.push(DeadLetterMark {
                group: place.group,
                stream: place.stream,
                partition: place.partition,
                offset: place.offset,
                at: row.at,
                size: row.size,
            });
        }
        for (partition, _, last) in self.state.partition_bounds() {
            let blocks = self.partition_blocks(&partition)?;
            snapshot.stream_blocks.insert(partition.clone(), blocks);
            snapshot.stream_offsets.insert(partition, last);
        }
        for (client_id, copies) in rows.copies {
            let mut held = Vec::with_capacity(copies.len());
            for entry in copies {
                let message = self.message_at(entry.row.pos, &mut cache)?;
                held.push(StoredDelivery {
                    seq: entry.seq,
                    delivery: entry.row.delivery(entry.seq, message),
                    sent: entry.sent,
                });
            }
            snapshot.deliveries.insert(client_id, held);
        }
        Ok(snapshot)
    }

    fn settle(&self) -> Result<(), StoreError> {
        self.settle_state()
    }

    /// Checkpoints now, so that a restart has nothing to replay.
    fn close(&self) {
        let (done, checkpointed) = mpsc::channel();
        self.send(ToState::Checkpoint(done));
        let _ = checkpointed.recv();
    }

    fn read_partition(
        &self,
        partition: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let mut found = Vec::new();
        for entry in self.state.partition_entries(partition, from, max)? {
            let record = self.reader.read(entry.row.pos)?;
            match Record::decode(&record.body, self.place(entry.row.pos))? {
                Record::PutCopies {
                    message: Some(message),
                    ..
                } => found.push(StreamEntry {
                    offset: entry.seq,
                    appended_at: record.timestamp_ms,
                    message,
                }),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "{}: a stream offset points at a record that holds no message",
                        self.place(entry.row.pos)
                    )));
                }
            }
        }
        Ok(found)
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetterEntry>, StoreError> {
        self.settle_state()?;
        let mut cache = HashMap::new();
        let mut letters = Vec::new();
        for (place, row) in self.state.dead_letters()? {
            letters.push(DeadLetterEntry {
                message: self.message_at(row.pos, &mut cache)?,
                group: place.group,
                stream: place.stream,
                partition: place.partition,
                offset: place.offset,
                attempts: row.attempts,
                reason: row.reason,
                at: row.at,
            });
        }
        Ok(letters)
    }

    fn read_copies(&self, client_id: &str, seqs: &[u64]) -> Result<Vec<Delivery>, StoreError> {
        let mut cache = HashMap::new();
        let mut found = Vec::with_capacity(seqs.len());
        for entry in self.state.copies(client_id, seqs)? {
            let message = self.message_at(entry.row.pos, &mut cache)?;
            found.push(entry.row.delivery(entry.seq, message));
        }
        Ok(found)
    }
}

/// A log position as an error message names it.
struct Place<'a> {
    dir: &'a Path,
    pos: LogPos,
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log segment {} offset {}",
            segment_path(self.dir, self.pos.segment()).display(),
            self.pos.offset()
        )
    }
}

/// Whether the disk takes a small write again, after it was full.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join("space-probe");
    let result = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&[0; 4096])?;
        file.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// The thread that folds durable log records into the state database.
struct Checkpointer {
    state: Arc<StateDb>,
    writer: Arc<Mutex<Writer>>,
    disk: Arc<DiskUse>,
    refs: SegmentRefs,
}

impl Checkpointer {
    fn run(mut self, from_log: Receiver<ToState>) {
        let mut applied: Option<LogPos> = None;
        let mut last_checkpoint = Instant::now();
        loop {
            let wait = CHECKPOINT_INTERVAL.saturating_sub(last_checkpoint.elapsed());
            let stopping = match from_log.recv_timeout(wait) {
                Ok(ToState::Refs(refs)) => {
                    self.refs = refs;
                    false
                }
                Ok(ToState::Barrier(done)) => {
                    let _ = done.send(());
                    false
                }
                Ok(ToState::Checkpoint(done)) => {
                    if let Some(end) = applied.take() {
                        last_checkpoint = Instant::now();
                        self.checkpoint(end);
                    }
                    let _ = done.send(());
                    false
                }
                Ok(ToState::Records(records, end)) => {
                    self.apply(&records);
                    applied = Some(end);
                    false
                }
                // Space freed by others is noticed within an interval.
                Err(RecvTimeoutError::Timeout) => {
                    self.disk.measure_free();
                    false
                }
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if stopping || last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                // The next interval starts now whether or not there was
                // anything to checkpoint.
                last_checkpoint = Instant::now();
                if let Some(end) = applied.take() {
                    self.checkpoint(end);
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Applies a run of changes, retrying while the database refuses (a
    /// full disk): skipping them would leave the rows behind the checkpoint.
    fn apply(&mut self, changes: &[(LogPos, Folded)]) {
        let mut reported = false;
        while let Err(error) = self.state.apply_all(
            changes.iter().map(|(pos, change)| (*pos, change)),
            &mut self.refs,
        ) {
            if !reported {
                tracing::error!(%error, "cannot update the state database; retrying");
                reported = true;
            }
            std::thread::sleep(STATE_RETRY);
        }
    }

    /// Makes the rows durable up to `end` and deletes the log segments that
    /// are both behind the checkpoint and pointed at by no stored copy.
    fn checkpoint(&mut self, end: LogPos) {
        if let Err(error) = self.state.make_checkpoint(end) {
            tracing::error!(%error, "cannot checkpoint the state database; the log is kept");
            return;
        }
        self.disk
            .state
            .store(self.state.disk_bytes(), Ordering::Relaxed);
        let oldest_needed = self
            .refs
            .keys()
            .next()
            .copied()
            .unwrap_or(u32::MAX)
            .min(end.segment());
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if writer.log.first_segment() >= oldest_needed {
            return;
        }
        match writer.log.remove_segments_before(oldest_needed) {
            Ok(freed) => {
                tracing::debug!(freed, before = oldest_needed, "log segments reclaimed");
            }
            Err(error) => tracing::warn!(%error, "cannot delete old log segments"),
        }
        self.disk
            .log
            .store(writer.log.disk_bytes(), Ordering::Relaxed);
    }
}
