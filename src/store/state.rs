//! The state database: sled under `data_dir/db`, the small random-access
//! rows the commit log is folded into behind its writer.
//!
//! Trees: `sessions` (client id -> the session's own fields),
//! `subscriptions` (client id, filter -> options), `queues` (client id,
//! chunk -> up to 1024 stored QoS 1/2 copies: where each message is in the
//! log, how it is delivered, how far it was sent; see `queues`),
//! `inbound_qos2` (client id, packet id -> awaiting PUBREL), `retained`
//! (topic -> message) and `meta` (format, and the log position the rows are
//! complete up to). Keys owned by a session start with its client id and a
//! NUL byte, which no MQTT string may contain, so a prefix scan finds
//! exactly one session's rows. Values are postcard.
//!
//! Every change is a blind put or delete of one key (or one session's
//! prefix), or a copy stored or removed by its key, so applying a run of
//! records a second time leaves the rows as applying it once did:
//! replaying the log from the checkpoint after a crash is safe even where
//! sled had already kept later writes.
//!
//! Retained messages are kept whole here rather than as log positions: they
//! are replaced by topic, few, and read in full at every start, and keeping
//! them out of the log's reclaim means one old retained message never pins
//! a segment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::log::LogPos;
use super::queues::{Entry, QueueIndex};
use super::{Append, Committed, Copy, Record, SessionRecord, StoreError, partition_name};
use crate::protocol::{Message, QoS};
use crate::session::{Delivery, Spilled, SubscriptionEntry};

/// Bumped whenever the stored layout changes incompatibly.
const FORMAT: u8 = 2;

/// How much of the database sled keeps cached in memory: enough for the
/// rows being worked on, and small next to an offline backlog on disk.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// A stored copy: where its message is in the log and how it is delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyRow {
    pub pos: LogPos,
    /// The message's size, counted against the session's queue limits
    /// while the message itself stays in the log.
    pub size: u32,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

impl CopyRow {
    /// The delivery this row describes, with its message read back.
    pub fn delivery(self, seq: u64, message: Arc<Message>) -> Delivery {
        Delivery {
            message,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            seq: Some(seq),
            stream: None,
        }
    }
}

/// A durable record as the state database needs it: the copies of a
/// message keep only the message's size, so records waiting to be applied
/// hold no message bodies.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    Copies {
        copies: Vec<Copy>,
        size: u32,
        inbound_qos2: Option<(Arc<str>, u16)>,
        appends: Vec<Append>,
    },
    Other(Record),
}

impl From<Record> for Folded {
    fn from(record: Record) -> Folded {
        match record {
            Record::PutCopies {
                message,
                copies,
                inbound_qos2,
                appends,
            } => Folded::Copies {
                size: message
                    .as_ref()
                    .map_or(0, |m| u32::try_from(m.size()).unwrap_or(u32::MAX)),
                // Without its message a copy or an append has nothing to
                // point at.
                copies: if message.is_some() {
                    copies
                } else {
                    Vec::new()
                },
                appends: if message.is_some() {
                    appends
                } else {
                    Vec::new()
                },
                inbound_qos2,
            },
            other => Folded::Other(other),
        }
    }
}

/// Live copies per log segment: a segment no copy points into may go.
pub type SegmentRefs = BTreeMap<u32, u64>;

pub(super) fn add_ref(refs: &mut SegmentRefs, pos: LogPos, count: u64) {
    *refs.entry(pos.segment()).or_default() += count;
}

pub(super) fn drop_ref(refs: &mut SegmentRefs, pos: LogPos) {
    if let Some(count) = refs.get_mut(&pos.segment()) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            refs.remove(&pos.segment());
        }
    }
}

/// The rows as read back at start; messages are still in the log.
#[derive(Debug, Default)]
pub struct Rows {
    pub sessions: Vec<SessionRecord>,
    pub subscriptions: HashMap<String, Vec<(String, SubscriptionEntry)>>,
    pub retained: Vec<Message>,
    /// Per client id, in the order they were stored: the copies that come
    /// back whole.
    pub copies: HashMap<String, Vec<Entry>>,
    /// Per client id, the copies after those, as keys and sizes.
    pub spilled: HashMap<String, Vec<Spilled>>,
    pub inbound_qos2: HashMap<String, Vec<u16>>,
}

pub struct StateDb {
    db: sled::Db,
    meta: sled::Tree,
    sessions: sled::Tree,
    subscriptions: sled::Tree,
    /// Written by the checkpoint thread, read by refills.
    queues: Mutex<QueueIndex>,
    /// Stream partitions, by `stream/partition`: offset -> log position.
    partitions: Mutex<QueueIndex>,
    inbound_qos2: sled::Tree,
    retained: sled::Tree,
    /// Consumer groups' committed offsets (`c` group NUL partition) and
    /// partitions' retention starts (`s` partition), 8 bytes each.
    offsets: sled::Tree,
    /// Delayed publishes: due (8 bytes) and id (8 bytes), big-endian so
    /// rows sort in due order -> the message's log position and size.
    delayed: sled::Tree,
    /// Dead letters: group NUL stream NUL partition (4 bytes) offset (8
    /// bytes) -> `DeadRow`.
    dead: sled::Tree,
    /// Committed offsets folded since the last checkpoint, written with it:
    /// groups commit with every acknowledgement, and each write of a sled
    /// batch costs a write to its log, however small.
    commits: Mutex<HashMap<Vec<u8>, u64>>,
}

impl StateDb {
    /// Opens (or creates) the database under `data_dir`. Only `flush` makes
    /// writes durable: the log holds everything newer.
    /// Returns the live copies per log segment as well.
    pub fn open(data_dir: &Path) -> Result<(StateDb, SegmentRefs), StoreError> {
        let dir = data_dir.join("db");
        let open_error = |reason: String| StoreError::Open {
            dir: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&dir).map_err(|e| open_error(e.to_string()))?;
        // sled reads a damaged log as one that simply ends early, so a
        // database file that existed but yields no format mark is refused
        // rather than silently started empty.
        let existed = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
        let db = sled::Config::new()
            .path(&dir)
            .flush_every_ms(None)
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(data_dir.display().to_string())
                }
                sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
                other => open_error(other.to_string()),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(e.to_string()));
        let meta = tree("meta")?;
        match meta.get("format").map_err(backend)? {
            Some(format) if format.as_ref() != [FORMAT] => {
                return Err(open_error(format!(
                    "stored format {:?} is not the format {FORMAT} this petrel reads",
                    format.as_ref()
                )));
            }
            Some(_) => {}
            None if existed => {
                return Err(StoreError::Corrupt(format!(
                    "{} exists but holds no readable petrel data",
                    dir.join("db").display()
                )));
            }
            None => {
                meta.insert("format", &[FORMAT]).map_err(backend)?;
                db.flush().map_err(backend)?;
            }
        }
        let (mut queues, mut refs) = QueueIndex::open(tree("queues")?)?;
        let (partitions, partition_refs) = QueueIndex::open(tree("partitions")?)?;
        for (segment, count) in partition_refs {
            *refs.entry(segment).or_default() += count;
        }
        let delayed = tree("delayed")?;
        for row in delayed.iter() {
            let (key, value) = row.map_err(backend)?;
            let (pos, _) = delayed_row(&key, &value)?;
            add_ref(&mut refs, pos, 1);
        }
        let dead = tree("dead")?;
        for row in dead.iter() {
            let (key, value) = row.map_err(backend)?;
            let row: DeadRow = decode("dead", &key, &value)?;
            add_ref(&mut refs, row.pos, 1);
        }
        let sessions = tree("sessions")?;
        queues.remove_orphans(
            |client_id| sessions.contains_key(client_id).unwrap_or(true),
            &mut refs,
        )?;
        let state = StateDb {
            meta,
            sessions,
            subscriptions: tree("subscriptions")?,
            queues: Mutex::new(queues),
            partitions: Mutex::new(partitions),
            inbound_qos2: tree("inbound_qos2")?,
            retained: tree("retained")?,
            offsets: tree("offsets")?,
            delayed,
            dead,
            commits: Mutex::new(HashMap::new()),
            db,
        };
        Ok((state, refs))
    }
}

pub(super) fn backend(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) => StoreError::io(&io),
        sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(super) fn decode<T: DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "{tree} entry {}: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

fn owner_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 9);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key
}

fn owned_key(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = owner_prefix(client_id);
    key.extend_from_slice(suffix);
    key
}

/// A dead letter as the state database keeps it; the message stays in the
/// log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadRow {
    pub attempts: u32,
    pub reason: String,
    pub at: u64,
    pub pos: LogPos,
    pub size: u32,
}

/// Where a dead letter was: its group, stream, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadPlace {
    pub group: String,
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
}

fn dead_key(group: &str, stream: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut key = owned_key(group, stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn delayed_key(due: u64, id: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&due.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

/// A delayed row's log position and message size.
fn delayed_row(key: &[u8], value: &[u8]) -> Result<(LogPos, u32), StoreError> {
    let pos = value.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok());
    let size = value.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok());
    match (pos, size) {
        (Some(pos), Some(size)) if key.len() == 16 && value.len() == 12 => {
            Ok((LogPos(u64::from_be_bytes(pos)), u32::from_be_bytes(size)))
        }
        _ => Err(StoreError::Corrupt(format!(
            "delayed: malformed row {key:?}"
        ))),
    }
}

fn commit_key(group: &str, partition: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + partition.len() + 2);
    key.push(b'c');
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(partition.as_bytes());
    key
}

fn start_key(partition: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(partition.len() + 1);
    key.push(b's');
    key.extend_from_slice(partition.as_bytes());
    key
}

fn inbound_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    owned_key(client_id, &packet_id.to_be_bytes())
}

/// Splits an owned key into the client id and what follows the NUL.
fn split_key(key: &[u8]) -> Option<(String, &[u8])> {
    let nul = key.iter().position(|&b| b == 0)?;
    let client_id = std::str::from_utf8(&key[..nul]).ok()?.to_string();
    Some((client_id, &key[nul + 1..]))
}

impl StateDb {
    /// Where in the log the rows are complete up to: replay starts there.
    pub fn checkpoint(&self) -> Result<LogPos, StoreError> {
        let stored = self.meta.get("checkpoint").map_err(backend)?;
        Ok(match stored {
            Some(bytes) => LogPos(u64::from_be_bytes(bytes.as_ref().try_into().map_err(
                |_| StoreError::Corrupt("the log checkpoint is not 8 bytes".into()),
            )?)),
            None => LogPos::default(),
        })
    }

    /// Records that the rows hold everything before `pos`; durable with the
    /// next `flush`, together with the rows written before it.
    fn set_checkpoint(&self, pos: LogPos) -> Result<(), StoreError> {
        self.meta
            .insert("checkpoint", &pos.0.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    /// Folds a run of records, each with the position it was found at in
    /// the log, into the rows, keeping `refs` (live copies per segment) up
    /// to date. Copies go to the queue index; inbound QoS 2 ids, one per
    /// message, are gathered into one batch; the rare other changes
    /// (sessions, subscriptions, retained) are applied in place.
    pub fn apply_all<'c>(
        &self,
        changes: impl IntoIterator<Item = (LogPos, &'c Folded)>,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        let mut inbound = sled::Batch::default();
        for (pos, change) in changes {
            let record = match change {
                Folded::Copies {
                    copies,
                    size,
                    inbound_qos2,
                    appends,
                } => {
                    if !appends.is_empty() {
                        let mut partitions = self.partitions();
                        for append in appends {
                            let entry = Entry {
                                seq: append.offset,
                                row: CopyRow {
                                    pos,
                                    size: *size,
                                    qos: QoS::AtMostOnce,
                                    retain: false,
                                    subscription_ids: Vec::new(),
                                },
                                sent: None,
                                removed: false,
                            };
                            partitions.put(&append.partition_name(), entry, refs)?;
                        }
                    }
                    let mut queues = self.queues();
                    for copy in copies {
                        let entry = Entry {
                            seq: copy.seq,
                            row: CopyRow {
                                pos,
                                size: *size,
                                qos: copy.qos,
                                retain: copy.retain,
                                subscription_ids: copy.subscription_ids.clone(),
                            },
                            sent: None,
                            removed: false,
                        };
                        queues.put(&copy.client_id, entry, refs)?;
                    }
                    if let Some((client_id, packet_id)) = inbound_qos2 {
                        inbound.insert(inbound_key(client_id, *packet_id), &[]);
                    }
                    continue;
                }
                Folded::Other(record) => record,
            };
            match record {
                Record::PutSession(session) => {
                    self.sessions
                        .insert(session.client_id.as_bytes(), encode(&**session)?)
                        .map_err(backend)?;
                }
                Record::DeleteSession(client_id) => {
                    self.inbound_qos2
                        .apply_batch(std::mem::take(&mut inbound))
                        .map_err(backend)?;
                    self.delete_session(client_id, refs)?;
                }
                Record::PutSubscription {
                    client_id,
                    filter,
                    entry,
                } => {
                    self.subscriptions
                        .insert(owned_key(client_id, filter.as_bytes()), encode(entry)?)
                        .map_err(backend)?;
                }
                Record::DeleteSubscription { client_id, filter } => {
                    self.subscriptions
                        .remove(owned_key(client_id, filter.as_bytes()))
                        .map_err(backend)?;
                }
                Record::PutRetained(message) => {
                    self.retained
                        .insert(message.topic.as_bytes(), encode(&**message)?)
                        .map_err(backend)?;
                }
                Record::DeleteRetained(topic) => {
                    self.retained.remove(topic.as_bytes()).map_err(backend)?;
                }
                Record::PutCopies { .. } => unreachable!("folded into Folded::Copies"),
                Record::MarkSent {
                    client_id,
                    seq,
                    sent,
                } => self.queues().mark_sent(client_id, *seq, *sent)?,
                Record::DeleteDelivery { client_id, seq } => {
                    self.queues().remove(client_id, *seq, refs)?;
                }
                Record::DeleteInboundQos2 {
                    client_id,
                    packet_id,
                } => inbound.remove(inbound_key(client_id, *packet_id)),
                Record::CommitOffset {
                    group,
                    stream,
                    partition,
                    offset,
                } => {
                    let key = commit_key(group, &partition_name(stream, *partition));
                    self.commits().insert(key, *offset);
                }
                Record::TrimPartition {
                    stream,
                    partition,
                    start,
                } => {
                    let name = partition_name(stream, *partition);
                    self.partitions().remove_before(&name, *start, refs)?;
                    self.offsets
                        .insert(start_key(&name), &start.to_be_bytes())
                        .map_err(backend)?;
                }
                Record::PutDelayed {
                    id,
                    due,
                    message,
                    inbound_qos2,
                } => {
                    let size = u32::try_from(message.size()).unwrap_or(u32::MAX);
                    let mut value = pos.0.to_be_bytes().to_vec();
                    value.extend_from_slice(&size.to_be_bytes());
                    let previous = self
                        .delayed
                        .insert(delayed_key(*due, *id), value)
                        .map_err(backend)?;
                    if previous.is_none() {
                        add_ref(refs, pos, 1);
                    }
                    if let Some((client_id, packet_id)) = inbound_qos2 {
                        inbound.insert(inbound_key(client_id, *packet_id), &[]);
                    }
                }
                Record::DeleteDelayed { id, due } => {
                    let key = delayed_key(*due, *id);
                    if let Some(value) = self.delayed.remove(key).map_err(backend)? {
                        let (pos, _) = delayed_row(&key, &value)?;
                        drop_ref(refs, pos);
                    }
                }
                Record::PutDeadLetter {
                    group,
                    stream,
                    partition,
                    offset,
                    attempts,
                    reason,
                    at,
                    message,
                } => {
                    let key = dead_key(group, stream, *partition, *offset);
                    let row = DeadRow {
                        attempts: *attempts,
                        reason: reason.clone(),
                        at: *at,
                        pos,
                        size: u32::try_from(message.size()).unwrap_or(u32::MAX),
                    };
                    let previous = self.dead.insert(&key, encode(&row)?).map_err(backend)?;
                    if let Some(old) = previous {
                        let old: DeadRow = decode("dead", &key, &old)?;
                        drop_ref(refs, old.pos);
                    }
                    add_ref(refs, pos, 1);
                }
                Record::DeleteDeadLetter {
                    group,
                    stream,
                    partition,
                    offset,
                } => {
                    let key = dead_key(group, stream, *partition, *offset);
                    if let Some(old) = self.dead.remove(&key).map_err(backend)? {
                        let old: DeadRow = decode("dead", &key, &old)?;
                        drop_ref(refs, old.pos);
                    }
                }
                Record::DeleteGroup { group, stream } => {
                    let mut prefix = commit_key(group, stream);
                    prefix.push(b'/');
                    self.commits().retain(|key, _| !key.starts_with(&prefix));
                    let mut batch = sled::Batch::default();
                    for key in self.offsets.scan_prefix(&prefix).keys() {
                        batch.remove(key.map_err(backend)?);
                    }
                    self.offsets.apply_batch(batch).map_err(backend)?;
                }
            }
        }
        self.inbound_qos2.apply_batch(inbound).map_err(backend)?;
        Ok(())
    }

    fn commits(&self) -> MutexGuard<'_, HashMap<Vec<u8>, u64>> {
        self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the committed offsets folded since the last call, one row
    /// per group and partition.
    fn write_commits(&self) -> Result<(), StoreError> {
        let commits = std::mem::take(&mut *self.commits());
        if commits.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, offset) in commits {
            batch.insert(key, &offset.to_be_bytes());
        }
        self.offsets.apply_batch(batch).map_err(backend)
    }

    fn queues(&self) -> MutexGuard<'_, QueueIndex> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn partitions(&self) -> MutexGuard<'_, QueueIndex> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Each stream partition's first and last offset, by `stream/partition`.
    pub fn partition_bounds(&self) -> Vec<(String, u64, u64)> {
        self.partitions().bounds()
    }

    /// The stored entries of a stream partition from offset `from` on, at
    /// most `max`.
    pub fn partition_entries(
        &self,
        partition: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let offsets: Vec<u64> = (from..from.saturating_add(max as u64)).collect();
        self.partitions().find(partition, &offsets)
    }

    /// Calls `visit` with every stored entry of a stream partition, in
    /// offset order.
    pub fn visit_partition(
        &self,
        partition: &str,
        visit: impl FnMut(&Entry),
    ) -> Result<(), StoreError> {
        self.partitions().visit_owner(partition, visit)
    }

    /// The dead letters stored, by group, stream, partition and offset.
    pub fn dead_letters(&self) -> Result<Vec<(DeadPlace, DeadRow)>, StoreError> {
        let mut letters = Vec::new();
        for row in self.dead.iter() {
            let (key, value) = row.map_err(backend)?;
            let parsed = split_key(&key).and_then(|(group, rest)| {
                let nul = rest.iter().position(|&b| b == 0)?;
                let stream = std::str::from_utf8(&rest[..nul]).ok()?.to_string();
                let place = &rest[nul + 1..];
                let partition = u32::from_be_bytes(place.get(..4)?.try_into().ok()?);
                let offset = u64::from_be_bytes(place.get(4..12)?.try_into().ok()?);
                Some((group, stream, partition, offset))
            });
            let Some((group, stream, partition, offset)) = parsed else {
                return Err(StoreError::Corrupt(format!("dead: malformed key {key:?}")));
            };
            let row: DeadRow = decode("dead", &key, &value)?;
            let place = DeadPlace {
                group,
                stream,
                partition,
                offset,
            };
            letters.push((place, row));
        }
        Ok(letters)
    }

    /// The delayed publishes stored, in due order: id, due and where the
    /// message is in the log.
    pub fn delayed(&self) -> Result<Vec<(u64, u64, LogPos)>, StoreError> {
        let mut rows = Vec::new();
        for row in self.delayed.iter() {
            let (key, value) = row.map_err(backend)?;
            let (pos, _) = delayed_row(&key, &value)?;
            let due = u64::from_be_bytes(key[..8].try_into().expect("a 16-byte key"));
            let id = u64::from_be_bytes(key[8..].try_into().expect("a 16-byte key"));
            rows.push((id, due, pos));
        }
        Ok(rows)
    }

    /// Committed offsets and retention starts, as stored.
    pub fn offsets(&self) -> Result<(Vec<Committed>, HashMap<String, u64>), StoreError> {
        self.write_commits()?;
        let mut committed = Vec::new();
        let mut starts = HashMap::new();
        for row in self.offsets.iter() {
            let (key, value) = row.map_err(backend)?;
            let offset = <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes);
            let text = std::str::from_utf8(&key[1..]).ok();
            match (key.first(), text, offset) {
                (Some(b's'), Some(partition), Ok(start)) => {
                    starts.insert(partition.to_string(), start);
                }
                (Some(b'c'), Some(text), Ok(offset)) => {
                    let parsed = text.split_once('\0').and_then(|(group, name)| {
                        let (stream, partition) = name.rsplit_once('/')?;
                        Some((group, stream, partition.parse().ok()?))
                    });
                    let Some((group, stream, partition)) = parsed else {
                        return Err(StoreError::Corrupt(format!(
                            "offsets: malformed key {text}"
                        )));
                    };
                    committed.push(Committed {
                        group: group.to_string(),
                        stream: stream.to_string(),
                        partition,
                        offset,
                    });
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "offsets: malformed row {}",
                        String::from_utf8_lossy(&key)
                    )));
                }
            }
        }
        Ok((committed, starts))
    }

    fn delete_session(&self, client_id: &str, refs: &mut SegmentRefs) -> Result<(), StoreError> {
        self.sessions
            .remove(client_id.as_bytes())
            .map_err(backend)?;
        self.queues().remove_session(client_id, refs)?;
        let prefix = owner_prefix(client_id);
        for tree in [&self.subscriptions, &self.inbound_qos2] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(&prefix).keys() {
                batch.remove(key.map_err(backend)?);
            }
            tree.apply_batch(batch).map_err(backend)?;
        }
        Ok(())
    }

    /// The stored copies `seqs` of `client_id` that are there.
    pub fn copies(&self, client_id: &str, seqs: &[u64]) -> Result<Vec<Entry>, StoreError> {
        self.queues().find(client_id, seqs)
    }

    /// Writes what changed in the queue index, records that the rows hold
    /// everything before `pos`, and makes it all durable.
    pub fn make_checkpoint(&self, pos: LogPos) -> Result<(), StoreError> {
        self.queues().write_changed()?;
        self.partitions().write_changed()?;
        self.write_commits()?;
        self.set_checkpoint(pos)?;
        self.flush()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    /// Bytes sled holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Reads every row back, dropping rows whose session is gone. Of each
    /// session's copies, those sent and the first `hold` unsent ones come
    /// back whole, the rest as keys and sizes only.
    pub fn load(&self, hold: usize) -> Result<Rows, StoreError> {
        let mut rows = Rows::default();
        let mut owners = HashSet::new();
        for entry in self.sessions.iter() {
            let (key, value) = entry.map_err(backend)?;
            let record: SessionRecord = decode("sessions", &key, &value)?;
            owners.insert(record.client_id.clone());
            rows.sessions.push(record);
        }
        for entry in self.retained.iter() {
            let (key, value) = entry.map_err(backend)?;
            rows.retained.push(decode("retained", &key, &value)?);
        }
        let mut orphans: Vec<(&sled::Tree, sled::IVec)> = Vec::new();
        for entry in self.subscriptions.iter() {
            let (key, value) = entry.map_err(backend)?;
            let owned = split_key(&key).filter(|(owner, _)| owners.contains(owner));
            let filter =
                owned.and_then(|(owner, rest)| Some((owner, std::str::from_utf8(rest).ok()?)));
            match filter {
                Some((client_id, filter)) => {
                    let entry: SubscriptionEntry = decode("subscriptions", &key, &value)?;
                    rows.subscriptions
                        .entry(client_id)
                        .or_default()
                        .push((filter.to_string(), entry));
                }
                None => orphans.push((&self.subscriptions, key)),
            }
        }
        {
            let mut queues = self.queues();
            let mut unsent: HashMap<String, usize> = HashMap::new();
            queues.visit(|client_id, entry| {
                if !owners.contains(client_id) {
                    return;
                }
                let unsent = unsent.entry(client_id.to_string()).or_default();
                if entry.sent.is_none() {
                    *unsent += 1;
                    if *unsent > hold {
                        rows.spilled
                            .entry(client_id.to_string())
                            .or_default()
                            .push(Spilled {
                                seq: entry.seq,
                                size: entry.row.size,
                            });
                        return;
                    }
                }
                rows.copies
                    .entry(client_id.to_string())
                    .or_default()
                    .push(entry);
            })?;
        }
        for entry in self.inbound_qos2.iter() {
            let (key, _) = entry.map_err(backend)?;
            let owned = split_key(&key).filter(|(owner, _)| owners.contains(owner));
            match owned.and_then(|(owner, rest)| Some((owner, <[u8; 2]>::try_from(rest).ok()?))) {
                Some((client_id, id)) => rows
                    .inbound_qos2
                    .entry(client_id)
                    .or_default()
                    .push(u16::from_be_bytes(id)),
                None => orphans.push((&self.inbound_qos2, key)),
            }
        }
        for (tree, key) in orphans {
            tree.remove(key).map_err(backend)?;
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::session::{AwaitedAck, Sent};

    fn copies(message_for: &[(&str, u64)]) -> Record {
        Record::PutCopies {
            message: Some(Arc::new(Message {
                topic: "t/1".into(),
                payload: bytes::Bytes::from_static(b"payload"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: MessageProperties::default(),
                expires_at: None,
                publisher: Some("p".into()),
            })),
            copies: message_for
                .iter()
                .map(|&(client_id, seq)| Copy {
                    client_id: client_id.into(),
                    seq,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: vec![3],
                })
                .collect(),
            inbound_qos2: Some(("a".into(), 9)),
            appends: Vec::new(),
        }
    }

    fn session(client_id: &str) -> Record {
        Record::PutSession(Box::new(SessionRecord {
            client_id: client_id.into(),
            expiry_secs: 60,
            ..SessionRecord::default()
        }))
    }

    fn apply(
        db: &StateDb,
        pos: LogPos,
        change: &Folded,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        db.apply_all([(pos, change)], refs)
    }

    /// Opens a database this process just closed: sled's I/O threads may
    /// hold its lock for a moment after the last handle is dropped.
    fn reopen(dir: &Path) -> (StateDb, SegmentRefs) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match StateDb::open(dir) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                opened => return opened.unwrap(),
            }
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn rows_keep_positions_state_and_counts_and_drop_orphans() {
        let dir = temp_dir("rows");
        let (db, _) = StateDb::open(&dir).unwrap();
        let mut refs = SegmentRefs::new();
        let at = |segment, offset| LogPos::new(segment, offset);
        apply(&db, at(0, 0), &session("a").into(), &mut refs).unwrap();
        apply(
            &db,
            at(0, 10),
            &copies(&[("a", 2), ("gone", 5)]).into(),
            &mut refs,
        )
        .unwrap();
        apply(&db, at(1, 0), &copies(&[("a", 10)]).into(), &mut refs).unwrap();
        let sent = Sent {
            packet_id: 4,
            awaiting: AwaitedAck::PubComp,
        };
        let mark = Record::MarkSent {
            client_id: "a".into(),
            seq: 2,
            sent,
        };
        apply(&db, at(1, 20), &mark.into(), &mut refs).unwrap();
        assert_eq!(refs, SegmentRefs::from([(0, 2), (1, 1)]));
        db.make_checkpoint(at(1, 30)).unwrap();
        drop(db);

        let (db, mut refs) = reopen(&dir);
        assert_eq!(refs, SegmentRefs::from([(0, 1), (1, 1)]), "orphan dropped");
        assert_eq!(db.checkpoint().unwrap(), at(1, 30));
        let rows = db.load(1).unwrap();
        let kept = &rows.copies["a"];
        assert_eq!(kept.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 10]);
        assert_eq!(kept[0].row.pos, at(0, 10));
        assert_eq!(kept[0].sent, Some(sent));
        assert_eq!(kept[1].sent, None);
        assert!(rows.spilled.is_empty(), "sent copies are always held");
        assert_eq!(rows.inbound_qos2["a"], [9]);
        assert!(!rows.copies.contains_key("gone"));

        let done = Record::DeleteDelivery {
            client_id: "a".into(),
            seq: 2,
        };
        apply(&db, at(1, 30), &done.into(), &mut refs).unwrap();
        assert_eq!(refs, SegmentRefs::from([(1, 1)]));
        apply(
            &db,
            at(1, 40),
            &Record::DeleteSession("a".into()).into(),
            &mut refs,
        )
        .unwrap();
        assert!(refs.is_empty());
        let empty = db.load(1).unwrap();
        assert!(empty.sessions.is_empty() && empty.copies.is_empty());
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn delayed_rows_come_back_in_due_order_and_hold_their_segments() {
        let dir = temp_dir("delayed");
        let (db, _) = StateDb::open(&dir).unwrap();
        let mut refs = SegmentRefs::new();
        let delayed = |id, due| {
            Folded::from(Record::PutDelayed {
                id,
                due,
                message: Arc::new(Message {
                    topic: "t".into(),
                    payload: bytes::Bytes::from_static(b"x"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: MessageProperties::default(),
                    expires_at: None,
                    publisher: None,
                }),
                inbound_qos2: None,
            })
        };
        apply(&db, LogPos::new(0, 0), &delayed(1, 900), &mut refs).unwrap();
        apply(&db, LogPos::new(1, 0), &delayed(2, 100), &mut refs).unwrap();
        apply(&db, LogPos::new(1, 50), &delayed(3, 500), &mut refs).unwrap();
        let gone = Folded::from(Record::DeleteDelayed { id: 1, due: 900 });
        apply(&db, LogPos::new(2, 0), &gone, &mut refs).unwrap();
        assert_eq!(refs, SegmentRefs::from([(1, 2)]), "segment 0 is free");
        let order: Vec<(u64, u64)> = db
            .delayed()
            .unwrap()
            .iter()
            .map(|&(id, due, _)| (id, due))
            .collect();
        assert_eq!(order, [(2, 100), (3, 500)]);
        drop(db);
        let (_, counted) = StateDb::open(&dir).unwrap();
        assert_eq!(counted, refs, "counted again at open");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn committed_offsets_keep_the_last_per_partition_and_go_with_their_group() {
        let dir = temp_dir("offsets");
        let (db, _) = StateDb::open(&dir).unwrap();
        let commit = |group: &str, partition, offset| {
            Folded::from(Record::CommitOffset {
                group: group.into(),
                stream: "orders".into(),
                partition,
                offset,
            })
        };
        let run = [
            commit("billing", 0, 1),
            commit("billing", 0, 2),
            commit("billing", 1, 7),
            commit("alone", 0, 3),
            Folded::from(Record::DeleteGroup {
                group: "alone".into(),
                stream: "orders".into(),
            }),
            commit("billing", 0, 3),
            Folded::from(Record::TrimPartition {
                stream: "orders".into(),
                partition: 1,
                start: 1024,
            }),
        ];
        let mut refs = SegmentRefs::new();
        let at = LogPos::new(0, 0);
        db.apply_all(run.iter().map(|change| (at, change)), &mut refs)
            .unwrap();
        let (mut committed, starts) = db.offsets().unwrap();
        committed.sort_by_key(|c| c.partition);
        let kept: Vec<(&str, u32, u64)> = committed
            .iter()
            .map(|c| (c.group.as_str(), c.partition, c.offset))
            .collect();
        assert_eq!(kept, [("billing", 0, 3), ("billing", 1, 7)]);
        assert_eq!(starts, HashMap::from([("orders/1".to_string(), 1024)]));
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn applying_a_run_of_records_twice_leaves_the_rows_as_once() {
        let dir = temp_dir("replay");
        let (db, _) = StateDb::open(&dir).unwrap();
        let run = [
            session("a"),
            Record::PutSubscription {
                client_id: "a".into(),
                filter: "x/#".into(),
                entry: SubscriptionEntry {
                    options: crate::protocol::SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                    id: None,
                },
            },
            copies(&[("a", 1)]),
            Record::DeleteDelivery {
                client_id: "a".into(),
                seq: 1,
            },
            copies(&[("a", 2)]),
        ];
        let mut refs = SegmentRefs::new();
        let mut apply_run = || {
            for (offset, record) in run.iter().enumerate() {
                let at = LogPos::new(0, offset as u32);
                apply(&db, at, &record.clone().into(), &mut refs).unwrap();
            }
            db.load(0).unwrap()
        };
        let once = apply_run();
        let twice = apply_run();
        assert_eq!(once.spilled, twice.spilled);
        assert_eq!(once.subscriptions, twice.subscriptions);
        assert_eq!(once.spilled["a"].len(), 1);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
