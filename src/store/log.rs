//! The commit log: records appended, in the order they arrive, to numbered
//! segment files `{segment:010}.log` under one directory, and read back by
//! the position where each starts (RocketMQ's CommitLog). One writer owns
//! `CommitLog`; any number of threads read through a `LogReader`.
//!
//! # Frame
//!
//! ```text
//! len: u32 LE | crc: u32 LE | timestamp_ms: u64 LE | synced_through: u32 LE | body (len bytes)
//! ```
//!
//! `crc` is CRC32C over everything after it. `synced_through` is the offset
//! up to which the segment had been fdatasync'ed when the record was framed
//! (0 in a fresh segment): a record that says so proves everything before
//! that offset reached the disk, which is what lets recovery tell a write
//! torn by a crash from damage to data that had been durable.
//!
//! # Recovery
//!
//! `open` scans only the last segment: a segment before it was synced when
//! the log moved past it, so damage there surfaces as `Corrupt` from `read`
//! and `scan`. The valid records end at the first bad frame, at offset X
//! (header cut short, length running past the end of the file, or a CRC
//! mismatch). When its length still fits in the file, the frames after it
//! are checked too: a valid one whose `synced_through` is past X shows the
//! bad frame had been synced, so the open fails with `Corrupt`. Otherwise,
//! or when the length does not fit (nothing later can be trusted), the bad
//! frame and everything after it is a write cut by a crash before its sync,
//! and the file is truncated to X. The kept part is fdatasync'ed before new
//! records claim it in their `synced_through`.
//!
//! # Readers
//!
//! Readers see only what the writer has synced: appended records are
//! buffered and a failed sync takes them back, so an unsynced position may
//! never hold the record it was given to.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::StoreError;

const HEADER: u32 = 20;
/// Buffered records are handed to the file past this, so memory stays
/// bounded however long the writer goes between syncs.
const WRITE_OUT_BYTES: usize = 1 << 20;
const SCAN_BUFFER: usize = 1 << 20;
const OPEN_FILES: usize = 8;

const CUT_SHORT: &str = "is cut short";
const PAST_END: &str = "runs past the end of its segment";
const BAD_CRC: &str = "fails its checksum";

/// Where a record starts: segment number in the high 32 bits, byte offset
/// in that segment in the low 32 bits, so positions order like the log.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LogPos(pub u64);

impl LogPos {
    pub fn new(segment: u32, offset: u32) -> LogPos {
        LogPos((u64::from(segment) << 32) | u64::from(offset))
    }

    pub fn segment(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn offset(self) -> u32 {
        self.0 as u32
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub pos: LogPos,
    pub timestamp_ms: u64,
    pub body: Vec<u8>,
}

struct Header {
    len: u32,
    crc: u32,
    timestamp_ms: u64,
    synced_through: u32,
}

impl Header {
    fn new(timestamp_ms: u64, synced_through: u32, body: &[u8]) -> Header {
        let mut header = Header {
            len: body.len() as u32,
            crc: 0,
            timestamp_ms,
            synced_through,
        };
        header.crc = crc32c::crc32c_append(header.crc_seed(), body);
        header
    }

    fn encode(&self) -> [u8; HEADER as usize] {
        let mut bytes = [0; HEADER as usize];
        bytes[..4].copy_from_slice(&self.len.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.crc.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        bytes[16..].copy_from_slice(&self.synced_through.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8; HEADER as usize]) -> Header {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Header {
            len: u32_at(0),
            crc: u32_at(4),
            timestamp_ms: u64::from(u32_at(8)) | (u64::from(u32_at(12)) << 32),
            synced_through: u32_at(16),
        }
    }

    /// The checksum of the header fields it covers, for the body to be fed
    /// after them in pieces as it is read.
    fn crc_seed(&self) -> u32 {
        crc32c::crc32c(&self.encode()[8..])
    }

    fn matches(&self, body: &[u8]) -> bool {
        crc32c::crc32c_append(self.crc_seed(), body) == self.crc
    }
}

enum Frame {
    End,
    Valid(Header, Vec<u8>),
    /// `resume` is where the next frame starts when the bad one's length
    /// fits in the segment, so the frames after it can still be checked.
    Bad {
        problem: &'static str,
        resume: Option<u64>,
    },
}

/// Reads the frame at `offset`, where `reader` stands, from a segment whose
/// records end at `limit`. The body is kept only when asked for, and
/// checked in pieces, so a damaged length cannot make it allocate.
fn next_frame(
    reader: &mut impl BufRead,
    offset: u64,
    limit: u64,
    keep_body: bool,
) -> io::Result<Frame> {
    if offset >= limit {
        return Ok(Frame::End);
    }
    if limit - offset < u64::from(HEADER) {
        return Ok(Frame::Bad {
            problem: CUT_SHORT,
            resume: None,
        });
    }
    let mut bytes = [0; HEADER as usize];
    reader.read_exact(&mut bytes)?;
    let header = Header::decode(&bytes);
    let end = offset + u64::from(HEADER) + u64::from(header.len);
    if end > limit {
        return Ok(Frame::Bad {
            problem: PAST_END,
            resume: None,
        });
    }
    let mut crc = header.crc_seed();
    let mut body = Vec::new();
    let mut left = header.len as usize;
    while left > 0 {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let taken = &chunk[..chunk.len().min(left)];
        crc = crc32c::crc32c_append(crc, taken);
        if keep_body {
            body.extend_from_slice(taken);
        }
        let taken = taken.len();
        reader.consume(taken);
        left -= taken;
    }
    if crc != header.crc {
        return Ok(Frame::Bad {
            problem: BAD_CRC,
            resume: Some(end),
        });
    }
    Ok(Frame::Valid(header, body))
}

/// What the writer and its readers share: how far the log is durable, the
/// oldest segment kept, and open read handles.
struct Shared {
    dir: PathBuf,
    durable: AtomicU64,
    first: AtomicU32,
    files: Mutex<HashMap<u32, Arc<File>>>,
}

/// The writing end of the log; a single thread appends and syncs.
pub struct CommitLog {
    dir: PathBuf,
    segment_bytes: u32,
    first_segment: u32,
    segment: u32,
    file: File,
    /// How much of the current segment is in its file, and how much of
    /// that is durable.
    written: u32,
    synced: u32,
    /// Framed records not yet in the file; they start at `written`.
    buffer: Vec<u8>,
    /// The current segment's directory entry may not be durable yet.
    dir_dirty: bool,
    /// Bytes of the segment files before the current one.
    sealed_bytes: u64,
    shared: Arc<Shared>,
}

impl CommitLog {
    /// Opens (creating) `dir` and recovers its last segment as the module
    /// documentation describes. A segment is rolled once the next record
    /// would take it past `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u32) -> Result<CommitLog, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            dir: dir.display().to_string(),
            reason,
        };
        fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let segments = list_segments(dir).map_err(|e| open_error(e.to_string()))?;
        let first = segments.first().copied().unwrap_or(0);
        let last = segments.last().copied().unwrap_or(0);
        let mut sealed_bytes = 0;
        for &segment in &segments[..segments.len().saturating_sub(1)] {
            let path = segment_path(dir, segment);
            let metadata =
                fs::metadata(&path).map_err(|e| open_error(format!("{}: {e}", path.display())))?;
            sealed_bytes += metadata.len();
        }
        let path = segment_path(dir, last);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| open_error(format!("{}: {e}", path.display())))?;
        let end = recover(&path, &file)?;
        // The last segment may have been created just before a crash.
        sync_dir(dir).map_err(|e| io_error(dir, e))?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            durable: AtomicU64::new(LogPos::new(last, end).0),
            first: AtomicU32::new(first),
            files: Mutex::default(),
        });
        Ok(CommitLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            first_segment: first,
            segment: last,
            file,
            written: end,
            synced: end,
            buffer: Vec::new(),
            dir_dirty: false,
            sealed_bytes,
            shared,
        })
    }

    /// Frames `body` into the write buffer and returns its position; it is
    /// durable, and visible to readers, once `sync` returns. A record larger
    /// than a segment gets one of its own. An error has the effect of a
    /// failed `sync`: the records since the last sync are gone.
    pub fn append(&mut self, timestamp_ms: u64, body: &[u8]) -> Result<LogPos, StoreError> {
        let frame = u32::try_from(body.len())
            .ok()
            .and_then(|len| len.checked_add(HEADER))
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "a record of {} bytes is too large for the log",
                    body.len()
                ))
            })?;
        let end = self.end_offset();
        if end > 0 && u64::from(end) + u64::from(frame) > u64::from(self.segment_bytes) {
            self.roll()?;
        }
        let pos = self.end();
        let header = Header::new(timestamp_ms, self.synced, body);
        self.buffer.extend_from_slice(&header.encode());
        self.buffer.extend_from_slice(body);
        if self.buffer.len() > WRITE_OUT_BYTES
            && let Err(error) = self.write_buffer()
        {
            self.discard_unsynced();
            return Err(error);
        }
        Ok(pos)
    }

    /// Writes what is buffered and fdatasyncs it, and the directory when a
    /// segment was created. On error the records since the last successful
    /// sync are discarded and the file is cut back to where that sync left
    /// it; the log stays usable and appends continue from there.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let result = self.write_and_sync();
        if result.is_err() {
            self.discard_unsynced();
        }
        result
    }

    /// The position the next record would get, unless it rolls the segment.
    pub fn end(&self) -> LogPos {
        LogPos::new(self.segment, self.end_offset())
    }

    /// The oldest segment still on disk.
    pub fn first_segment(&self) -> u32 {
        self.first_segment
    }

    /// Deletes every segment numbered below `segment`, never the one being
    /// written, and returns the bytes freed. The deletions are not synced:
    /// a segment that reappears after a crash only holds old records.
    pub fn remove_segments_before(&mut self, segment: u32) -> Result<u64, StoreError> {
        let stop = segment.min(self.segment);
        // Readers skip a missing segment below the first, so a scan racing
        // this moves on to the kept ones instead of failing.
        self.shared.first.fetch_max(stop, Ordering::AcqRel);
        self.shared.lock_files().retain(|&cached, _| cached >= stop);
        let mut freed = 0;
        while self.first_segment < stop {
            let path = segment_path(&self.dir, self.first_segment);
            let removed = fs::metadata(&path)
                .and_then(|metadata| fs::remove_file(&path).map(|()| metadata.len()));
            match removed {
                Ok(bytes) => {
                    freed += bytes;
                    self.sealed_bytes = self.sealed_bytes.saturating_sub(bytes);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path, error)),
            }
            self.first_segment += 1;
        }
        Ok(freed)
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.sealed_bytes + u64::from(self.written)
    }

    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    fn end_offset(&self) -> u32 {
        // `append` rolls before a frame could take a segment past u32::MAX.
        self.written + self.buffer.len() as u32
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.segment)
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        // Recovery scans only the last segment, so one must be durable
        // before a later one exists.
        self.sync()?;
        let next = self.segment.checked_add(1).ok_or_else(|| {
            StoreError::Backend("the commit log has used every segment number".into())
        })?;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        self.sealed_bytes += u64::from(self.written);
        self.segment = next;
        self.file = file;
        self.written = 0;
        self.synced = 0;
        self.dir_dirty = true;
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        // Positional writes: after a failed sync cut the file, the next
        // records go where the cut left off, whatever the cursor says.
        self.file
            .write_all_at(&self.buffer, u64::from(self.written))
            .map_err(|e| io_error(&self.path(), e))?;
        self.written = self.end_offset();
        self.buffer.clear();
        if self.buffer.capacity() > 2 * WRITE_OUT_BYTES {
            // A huge record should not pin its buffer for the life of the log.
            self.buffer = Vec::new();
        }
        Ok(())
    }

    fn write_and_sync(&mut self) -> Result<(), StoreError> {
        self.write_buffer()?;
        if self.written > self.synced {
            self.file
                .sync_data()
                .map_err(|e| io_error(&self.path(), e))?;
        }
        if self.dir_dirty {
            sync_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
            self.dir_dirty = false;
        }
        self.synced = self.written;
        let durable = LogPos::new(self.segment, self.synced);
        self.shared.durable.store(durable.0, Ordering::Release);
        Ok(())
    }

    /// Forgets the records since the last sync and cuts them from the file,
    /// so the next record does not follow a frame of unknown state.
    fn discard_unsynced(&mut self) {
        self.buffer.clear();
        self.written = self.synced;
        let cut = self
            .file
            .set_len(u64::from(self.synced))
            .and_then(|()| self.file.sync_data());
        if let Err(error) = cut {
            tracing::warn!(
                segment = %self.path().display(),
                offset = self.synced,
                %error,
                "cannot cut unsynced records from the commit log"
            );
        }
    }
}

/// A reading end of the log, cheap to clone and share between threads.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// Reads and checks the record at `pos`, which must be durable.
    pub fn read(&self, pos: LogPos) -> Result<LogRecord, StoreError> {
        let path = segment_path(&self.shared.dir, pos.segment());
        let durable = self.durable();
        if pos >= durable {
            return Err(StoreError::Corrupt(format!(
                "log segment {}: no record at offset {}, the log ends at segment {} offset {}",
                path.display(),
                pos.offset(),
                durable.segment(),
                durable.offset()
            )));
        }
        let file = self.file(pos.segment(), &path)?;
        let limit = self.limit(pos.segment(), durable, &file, &path)?;
        let offset = u64::from(pos.offset());
        let corrupt = |problem| corrupt(&path, offset, problem);
        if offset + u64::from(HEADER) > limit {
            return Err(corrupt(CUT_SHORT));
        }
        let mut bytes = [0; HEADER as usize];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| io_error(&path, e))?;
        let header = Header::decode(&bytes);
        if offset + u64::from(HEADER) + u64::from(header.len) > limit {
            return Err(corrupt(PAST_END));
        }
        let mut body = vec![0; header.len as usize];
        file.read_exact_at(&mut body, offset + u64::from(HEADER))
            .map_err(|e| io_error(&path, e))?;
        if !header.matches(&body) {
            return Err(corrupt(BAD_CRC));
        }
        Ok(LogRecord {
            pos,
            timestamp_ms: header.timestamp_ms,
            body,
        })
    }

    /// Calls `visit` for every durable record from `from` on, in order and
    /// across segments, checking each. A position at or past the end of a
    /// segment continues in the next one; one in a removed segment starts
    /// at the oldest kept.
    pub fn scan(
        &self,
        from: LogPos,
        mut visit: impl FnMut(LogRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let durable = self.durable();
        let mut pos = from.max(LogPos::new(self.shared.first.load(Ordering::Acquire), 0));
        while pos < durable {
            let segment = pos.segment();
            let path = segment_path(&self.shared.dir, segment);
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound
                        && segment < self.shared.first.load(Ordering::Acquire) =>
                {
                    pos = LogPos::new(segment + 1, 0);
                    continue;
                }
                Err(error) => return Err(io_error(&path, error)),
            };
            let limit = self.limit(segment, durable, &file, &path)?;
            let mut offset = u64::from(pos.offset());
            if offset < limit {
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| io_error(&path, e))?;
                let mut reader = BufReader::with_capacity(SCAN_BUFFER, file);
                loop {
                    match next_frame(&mut reader, offset, limit, true)
                        .map_err(|e| io_error(&path, e))?
                    {
                        Frame::End => break,
                        Frame::Bad { problem, .. } => return Err(corrupt(&path, offset, problem)),
                        Frame::Valid(header, body) => {
                            visit(LogRecord {
                                pos: LogPos::new(segment, offset as u32),
                                timestamp_ms: header.timestamp_ms,
                                body,
                            })?;
                            offset += u64::from(HEADER) + u64::from(header.len);
                        }
                    }
                }
            }
            if segment == durable.segment() {
                break;
            }
            pos = LogPos::new(segment + 1, 0);
        }
        Ok(())
    }

    fn durable(&self) -> LogPos {
        LogPos(self.shared.durable.load(Ordering::Acquire))
    }

    /// Where the records of `segment` end: the durable end in the segment
    /// being written, the file's end before it.
    fn limit(
        &self,
        segment: u32,
        durable: LogPos,
        file: &File,
        path: &Path,
    ) -> Result<u64, StoreError> {
        if segment == durable.segment() {
            return Ok(u64::from(durable.offset()));
        }
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        // Offsets are u32: anything past that cannot hold an addressable record.
        Ok(len.min(u64::from(u32::MAX)))
    }

    fn file(&self, segment: u32, path: &Path) -> Result<Arc<File>, StoreError> {
        // Opening under the lock is rare: only on a miss.
        let mut files = self.shared.lock_files();
        if let Some(file) = files.get(&segment) {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(File::open(path).map_err(|e| io_error(path, e))?);
        if files.len() >= OPEN_FILES
            && let Some(&oldest) = files.keys().min()
        {
            files.remove(&oldest);
        }
        files.insert(segment, Arc::clone(&file));
        Ok(file)
    }
}

impl Shared {
    fn lock_files(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<File>>> {
        // The map holds only open handles: a panic elsewhere cannot leave
        // it half-updated.
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Finds where the valid records of the last segment end, cutting a torn
/// tail, and makes what is kept durable.
fn recover(path: &Path, file: &File) -> Result<u32, StoreError> {
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let Ok(addressable) = u32::try_from(len) else {
        return Err(StoreError::Corrupt(format!(
            "log segment {}: {len} bytes is more than a segment can address",
            path.display()
        )));
    };
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, file);
    let mut offset = 0;
    let mut torn: Option<(u64, &str)> = None;
    loop {
        match next_frame(&mut reader, offset, len, false).map_err(|e| io_error(path, e))? {
            Frame::End => break,
            Frame::Valid(header, _) => {
                if let Some((at, problem)) = torn
                    && u64::from(header.synced_through) > at
                {
                    return Err(StoreError::Corrupt(format!(
                        "log segment {}: record at offset {at} {problem}, though later records say it was on disk",
                        path.display()
                    )));
                }
                offset += u64::from(HEADER) + u64::from(header.len);
            }
            Frame::Bad { problem, resume } => {
                torn.get_or_insert((offset, problem));
                match resume {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    let end = match torn {
        None => addressable,
        Some((at, problem)) => {
            file.set_len(at).map_err(|e| io_error(path, e))?;
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                cut_bytes = len - at,
                "cut a write torn by a crash from the end of the commit log: its record {problem}"
            );
            at as u32
        }
    };
    file.sync_data().map_err(|e| io_error(path, e))?;
    Ok(end)
}

pub(super) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.log"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u32>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name
            .to_str()
            .and_then(|name| name.strip_suffix(".log"))
            .filter(|stem| stem.len() == 10 && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u32>().ok());
        segments.extend(number);
    }
    segments.sort_unstable();
    Ok(segments)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Names the file in an I/O error, keeping the kind that tells a full disk.
fn io_error(path: &Path, error: io::Error) -> StoreError {
    StoreError::io(&io::Error::new(
        error.kind(),
        format!("{}: {error}", path.display()),
    ))
}

fn corrupt(path: &Path, offset: u64, problem: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "log segment {}: record at offset {offset} {problem}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn body(i: u64) -> Vec<u8> {
        format!("record {i}").into_bytes()
    }

    fn frame(timestamp_ms: u64, synced_through: u32, body: &[u8]) -> Vec<u8> {
        let header = Header::new(timestamp_ms, synced_through, body);
        [header.encode().as_slice(), body].concat()
    }

    fn scan_all(reader: &LogReader, from: LogPos) -> Vec<LogRecord> {
        let mut records = Vec::new();
        reader
            .scan(from, |record| {
                records.push(record);
                Ok(())
            })
            .unwrap();
        records
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let len = file.metadata().unwrap().len();
        file.write_all_at(bytes, len).unwrap();
    }

    fn flip_byte(path: &Path, at: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    }

    fn corrupt_message(result: Result<impl Sized, StoreError>) -> String {
        match result {
            Err(StoreError::Corrupt(message)) => message,
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("expected corruption, got a success"),
        }
    }

    #[test]
    fn synced_records_read_back_scan_in_order_and_survive_a_reopen() {
        let dir = temp_dir("round-trip");
        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        let positions: Vec<LogPos> = (0..10).map(|i| log.append(i, &body(i)).unwrap()).collect();
        log.sync().unwrap();
        let reader = log.reader();
        let expected = LogRecord {
            pos: positions[3],
            timestamp_ms: 3,
            body: body(3),
        };
        assert_eq!(reader.read(positions[3]).unwrap(), expected);
        let scanned = scan_all(&reader, LogPos::default());
        assert_eq!(scanned.iter().map(|r| r.pos).collect::<Vec<_>>(), positions);
        assert_eq!(scanned[9].body, body(9));

        let end = log.end();
        drop(log);
        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(log.end(), end);
        assert_eq!(log.disk_bytes(), u64::from(end.offset()));
        assert_eq!(log.append(10, &body(10)).unwrap(), end);
        log.sync().unwrap();
        let tail = scan_all(&log.reader(), positions[8]);
        assert_eq!(
            tail.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readers_see_only_synced_records_and_unsynced_ones_die_with_the_writer() {
        let dir = temp_dir("unsynced");
        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        log.append(1, b"synced").unwrap();
        log.sync().unwrap();
        let pending = log.append(2, b"pending").unwrap();
        let reader = log.reader();
        assert!(matches!(reader.read(pending), Err(StoreError::Corrupt(_))));
        assert_eq!(scan_all(&reader, LogPos::default()).len(), 1);
        drop(log);

        let log = CommitLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(log.end(), pending);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_segments_roll_and_a_record_larger_than_a_segment_gets_its_own() {
        let dir = temp_dir("roll");
        let mut log = CommitLog::open(&dir, 4096).unwrap();
        let mut positions: Vec<LogPos> = (0..200)
            .map(|i| log.append(i, &[i as u8; 100]).unwrap())
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(
            positions
                .iter()
                .all(|pos| pos.offset() + HEADER + 100 <= 4096)
        );
        let big = log.append(200, &[7; 10_000]).unwrap();
        let after = log.append(201, b"after").unwrap();
        log.sync().unwrap();
        assert_eq!(big, LogPos::new(positions[199].segment() + 1, 0));
        assert_eq!(after, LogPos::new(big.segment() + 1, 0));
        positions.extend([big, after]);

        let files = list_segments(&dir).unwrap();
        assert_eq!(files, (0..=after.segment()).collect::<Vec<_>>());
        let on_disk: u64 = files
            .iter()
            .map(|&segment| fs::metadata(segment_path(&dir, segment)).unwrap().len())
            .sum();
        assert_eq!(log.disk_bytes(), on_disk);

        let scanned = scan_all(&log.reader(), LogPos::default());
        assert_eq!(scanned.iter().map(|r| r.pos).collect::<Vec<_>>(), positions);
        assert_eq!(scanned[200].body.len(), 10_000);
        // A position at a segment's end continues in the next one.
        let from_end = scan_all(&log.reader(), LogPos::new(big.segment(), 10_000 + HEADER));
        assert_eq!(from_end.iter().map(|r| r.pos).collect::<Vec<_>>(), [after]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_after_it() {
        let dir = temp_dir("torn");
        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        log.append(1, b"a").unwrap();
        log.append(2, b"b").unwrap();
        log.sync().unwrap();
        let end = log.end();
        drop(log);

        // A damaged record, and one after it that claims no more was synced:
        // both belong to the write the crash cut.
        let path = segment_path(&dir, 0);
        let mut damaged = frame(3, end.offset(), b"damaged");
        damaged[HEADER as usize + 2] ^= 0xff;
        append_bytes(&path, &damaged);
        append_bytes(&path, &frame(4, end.offset(), b"after"));

        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(log.end(), end);
        assert_eq!(fs::metadata(&path).unwrap().len(), u64::from(end.offset()));
        assert_eq!(log.append(5, b"c").unwrap(), end);
        log.sync().unwrap();
        let bodies: Vec<Vec<u8>> = scan_all(&log.reader(), LogPos::default())
            .into_iter()
            .map(|r| r.body)
            .collect();
        assert_eq!(bodies, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_half_written_frame_at_the_end_is_cut() {
        let dir = temp_dir("half-frame");
        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        log.append(1, b"a").unwrap();
        log.sync().unwrap();
        let end = log.end();
        drop(log);

        let path = segment_path(&dir, 0);
        append_bytes(
            &path,
            &frame(2, end.offset(), b"half written")[..HEADER as usize + 3],
        );
        let log = CommitLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(log.end(), end);
        append_bytes(&path, &frame(2, end.offset(), b"header")[..7]);
        drop(log);
        let log = CommitLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(log.end(), end);
        assert_eq!(scan_all(&log.reader(), LogPos::default()).len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_that_later_records_say_was_synced_fails_the_open() {
        let dir = temp_dir("damaged-synced");
        let mut log = CommitLog::open(&dir, 1 << 20).unwrap();
        log.append(1, b"first").unwrap();
        log.sync().unwrap();
        let victim = log.append(2, b"victim").unwrap();
        log.sync().unwrap();
        log.append(3, b"witness").unwrap();
        log.sync().unwrap();
        drop(log);

        flip_byte(
            &segment_path(&dir, 0),
            u64::from(victim.offset() + HEADER + 1),
        );
        let message = corrupt_message(CommitLog::open(&dir, 1 << 20));
        assert!(message.contains("0000000000.log"), "{message}");
        assert!(
            message.contains(&format!("offset {} ", victim.offset())),
            "{message}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_in_an_earlier_segment_fails_read_and_scan() {
        let dir = temp_dir("damaged-earlier");
        let mut log = CommitLog::open(&dir, 4096).unwrap();
        let positions: Vec<LogPos> = (0..100)
            .map(|i| log.append(i, &[1; 100]).unwrap())
            .collect();
        log.sync().unwrap();
        drop(log);

        let victim = positions[1];
        assert_eq!(victim.segment(), 0);
        flip_byte(
            &segment_path(&dir, 0),
            u64::from(victim.offset() + HEADER + 3),
        );
        // Only the last segment is checked at open.
        let log = CommitLog::open(&dir, 4096).unwrap();
        let reader = log.reader();
        assert_eq!(reader.read(positions[0]).unwrap().timestamp_ms, 0);
        let expected = format!(
            "0000000000.log: record at offset {} {BAD_CRC}",
            victim.offset()
        );
        let message = corrupt_message(reader.read(victim));
        assert!(message.contains(&expected), "{message}");

        let mut visited = 0;
        let message = corrupt_message(reader.scan(LogPos::default(), |_| {
            visited += 1;
            Ok(())
        }));
        assert!(message.contains(&expected), "{message}");
        assert_eq!(visited, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removing_old_segments_frees_their_bytes_but_never_the_current_one() {
        let dir = temp_dir("remove");
        let mut log = CommitLog::open(&dir, 4096).unwrap();
        let positions: Vec<LogPos> = (0..100)
            .map(|i| log.append(i, &[1; 100]).unwrap())
            .collect();
        log.sync().unwrap();
        let current = log.end().segment();
        assert!(current >= 2);
        let reader = log.reader();
        reader.read(positions[0]).unwrap();

        let before = log.disk_bytes();
        let first_len = fs::metadata(segment_path(&dir, 0)).unwrap().len();
        assert_eq!(log.remove_segments_before(1).unwrap(), first_len);
        assert_eq!(log.disk_bytes(), before - first_len);
        assert_eq!(log.first_segment(), 1);
        assert!(!segment_path(&dir, 0).exists());
        assert!(reader.read(positions[0]).is_err());

        log.remove_segments_before(u32::MAX).unwrap();
        assert_eq!(log.first_segment(), current);
        assert_eq!(list_segments(&dir).unwrap(), [current]);
        assert_eq!(log.disk_bytes(), u64::from(log.end().offset()));
        let kept = scan_all(&reader, LogPos::default());
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|r| r.pos.segment() == current));
        drop(log);
        assert_eq!(
            CommitLog::open(&dir, 4096).unwrap().first_segment(),
            current
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_sync_reports_a_full_disk_and_appends_continue_from_the_synced_end() {
        let dir = temp_dir("full");
        let mut log = CommitLog::open(&dir, 4 << 20).unwrap();
        log.append(1, b"kept").unwrap();
        log.sync().unwrap();
        let synced = log.end();
        let segment = std::mem::replace(
            &mut log.file,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );

        log.append(2, b"lost").unwrap();
        assert!(matches!(log.sync(), Err(StoreError::Full(_))));
        assert_eq!(log.end(), synced);
        // Past the write-out threshold the error comes from append itself.
        assert!(matches!(
            log.append(3, &vec![0; WRITE_OUT_BYTES + 1]),
            Err(StoreError::Full(_))
        ));
        assert_eq!(log.end(), synced);

        log.file = segment;
        assert_eq!(log.append(4, b"next").unwrap(), synced);
        log.sync().unwrap();
        let kept: Vec<u64> = scan_all(&log.reader(), LogPos::default())
            .iter()
            .map(|r| r.timestamp_ms)
            .collect();
        assert_eq!(kept, [1, 4]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
