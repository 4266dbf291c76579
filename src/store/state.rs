//! The state database: sled under `data_dir/db`, the small random-access
//! rows the commit log is folded into behind its writer.
//!
//! Trees: `sessions` (client id -> the session's own fields),
//! `subscriptions` (client id, filter -> options), `deliveries` (client id,
//! seq -> where the message of a QoS 1/2 copy is in the log and how it is
//! delivered), `sent` (client id, seq -> packet id and awaited ack of a copy
//! already sent), `inbound_qos2` (client id, packet id -> awaiting PUBREL),
//! `retained` (topic -> message) and `meta` (format, and the log position
//! the rows are complete up to). Keys owned by a session start with its
//! client id and a NUL byte, which no MQTT string may contain, so a prefix
//! scan finds exactly one session's rows. Values are postcard.
//!
//! Every write is a blind put or delete of one key (or one session's
//! prefix), so applying a run of records a second time leaves the rows as
//! applying it once did: replaying the log from the checkpoint after a
//! crash is safe even where sled had already kept later writes.
//!
//! Retained messages are kept whole here rather than as log positions: they
//! are replaced by topic, few, and read in full at every start, and keeping
//! them out of the log's reclaim means one old retained message never pins
//! a segment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::log::LogPos;
use super::{Record, SessionRecord, StoreError};
use crate::protocol::{Message, QoS};
use crate::session::{Delivery, Sent, SubscriptionEntry};

/// Bumped whenever the stored layout changes incompatibly.
const FORMAT: u8 = 2;

/// How much of the database sled keeps cached in memory: enough for the
/// rows being worked on, and small next to an offline backlog on disk.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

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
        }
    }
}

/// Live copies per log segment: a segment no copy points into may go.
pub type SegmentRefs = BTreeMap<u32, u64>;

fn add_ref(refs: &mut SegmentRefs, pos: LogPos, count: u64) {
    *refs.entry(pos.segment()).or_default() += count;
}

fn drop_ref(refs: &mut SegmentRefs, pos: LogPos) {
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
    /// Per client id, by seq.
    pub copies: HashMap<String, Vec<(u64, CopyRow, Option<Sent>)>>,
    pub inbound_qos2: HashMap<String, Vec<u16>>,
}

pub struct StateDb {
    db: sled::Db,
    meta: sled::Tree,
    sessions: sled::Tree,
    subscriptions: sled::Tree,
    deliveries: sled::Tree,
    sent: sled::Tree,
    inbound_qos2: sled::Tree,
    retained: sled::Tree,
}

impl StateDb {
    /// Opens (or creates) the database under `data_dir`. Only `flush` makes
    /// writes durable: the log holds everything newer.
    pub fn open(data_dir: &Path) -> Result<StateDb, StoreError> {
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
        Ok(StateDb {
            meta,
            sessions: tree("sessions")?,
            subscriptions: tree("subscriptions")?,
            deliveries: tree("deliveries")?,
            sent: tree("sent")?,
            inbound_qos2: tree("inbound_qos2")?,
            retained: tree("retained")?,
            db,
        })
    }
}

fn backend(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) => StoreError::io(&io),
        sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
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

fn delivery_key(client_id: &str, seq: u64) -> Vec<u8> {
    owned_key(client_id, &seq.to_be_bytes())
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

fn sent_key(client_id: &str, seq: u64) -> Vec<u8> {
    delivery_key(client_id, seq)
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
    pub fn set_checkpoint(&self, pos: LogPos) -> Result<(), StoreError> {
        self.meta
            .insert("checkpoint", &pos.0.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    /// Folds the record found at `pos` in the log into the rows, keeping
    /// `refs` (live copies per segment) up to date.
    pub fn apply(
        &self,
        pos: LogPos,
        record: &Record,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        match record {
            Record::PutSession(session) => {
                self.sessions
                    .insert(session.client_id.as_bytes(), encode(&**session)?)
                    .map_err(backend)?;
            }
            Record::DeleteSession(client_id) => self.delete_session(client_id, refs)?,
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
            Record::PutCopies {
                message,
                copies,
                inbound_qos2,
            } => {
                if let Some(message) = message.as_ref().filter(|_| !copies.is_empty()) {
                    let size = u32::try_from(message.size()).unwrap_or(u32::MAX);
                    let mut batch = sled::Batch::default();
                    for copy in copies {
                        let row = CopyRow {
                            pos,
                            size,
                            qos: copy.qos,
                            retain: copy.retain,
                            subscription_ids: copy.subscription_ids.clone(),
                        };
                        batch.insert(delivery_key(&copy.client_id, copy.seq), encode(&row)?);
                    }
                    self.deliveries.apply_batch(batch).map_err(backend)?;
                    add_ref(refs, pos, copies.len() as u64);
                }
                if let Some((client_id, packet_id)) = inbound_qos2 {
                    self.inbound_qos2
                        .insert(inbound_key(client_id, *packet_id), &[])
                        .map_err(backend)?;
                }
            }
            Record::MarkSent {
                client_id,
                seq,
                sent,
            } => {
                self.sent
                    .insert(sent_key(client_id, *seq), encode(sent)?)
                    .map_err(backend)?;
            }
            Record::DeleteDelivery { client_id, seq } => {
                // The copy goes first: a `sent` row left behind by a crash
                // between the two is an orphan that `load` discards.
                let key = delivery_key(client_id, *seq);
                if let Some(row) = self.deliveries.remove(&key).map_err(backend)? {
                    let row: CopyRow = decode("deliveries", &key, &row)?;
                    drop_ref(refs, row.pos);
                }
                self.sent.remove(&key).map_err(backend)?;
            }
            Record::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => {
                self.inbound_qos2
                    .remove(inbound_key(client_id, *packet_id))
                    .map_err(backend)?;
            }
        }
        Ok(())
    }

    fn delete_session(&self, client_id: &str, refs: &mut SegmentRefs) -> Result<(), StoreError> {
        self.sessions
            .remove(client_id.as_bytes())
            .map_err(backend)?;
        let prefix = owner_prefix(client_id);
        for (tree, holds_copies) in [
            (&self.subscriptions, false),
            (&self.deliveries, true),
            (&self.sent, false),
            (&self.inbound_qos2, false),
        ] {
            let mut batch = sled::Batch::default();
            for entry in tree.scan_prefix(&prefix) {
                let (key, value) = entry.map_err(backend)?;
                if holds_copies {
                    let row: CopyRow = decode("deliveries", &key, &value)?;
                    drop_ref(refs, row.pos);
                }
                batch.remove(key);
            }
            tree.apply_batch(batch).map_err(backend)?;
        }
        Ok(())
    }

    /// One stored copy, if it is still there.
    pub fn copy(&self, client_id: &str, seq: u64) -> Result<Option<CopyRow>, StoreError> {
        let key = delivery_key(client_id, seq);
        match self.deliveries.get(&key).map_err(backend)? {
            Some(value) => Ok(Some(decode("deliveries", &key, &value)?)),
            None => Ok(None),
        }
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    /// Bytes sled holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Reads every row back, dropping rows whose session is gone.
    pub fn load(&self) -> Result<Rows, StoreError> {
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
        let mut sent = HashMap::new();
        for entry in self.sent.iter() {
            let (key, value) = entry.map_err(backend)?;
            let state: Sent = decode("sent", &key, &value)?;
            sent.insert(key, state);
        }
        for entry in self.deliveries.iter() {
            let (key, value) = entry.map_err(backend)?;
            let owned = split_key(&key).filter(|(owner, _)| owners.contains(owner));
            let Some((client_id, seq)) = owned
                .and_then(|(owner, rest)| Some((owner, u64::from_be_bytes(rest.try_into().ok()?))))
            else {
                orphans.push((&self.deliveries, key));
                continue;
            };
            let row: CopyRow = decode("deliveries", &key, &value)?;
            let state = sent.remove(&key);
            rows.copies
                .entry(client_id)
                .or_default()
                .push((seq, row, state));
        }
        orphans.extend(sent.into_keys().map(|key| (&self.sent, key)));
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

/// Live copies per segment, counted from the rows read at start.
pub fn refs_of(rows: &Rows) -> SegmentRefs {
    let mut refs = SegmentRefs::new();
    for (_, row, _) in rows.copies.values().flatten() {
        add_ref(&mut refs, row.pos, 1);
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::session::AwaitedAck;
    use crate::store::Copy;

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
        }
    }

    fn session(client_id: &str) -> Record {
        Record::PutSession(Box::new(SessionRecord {
            client_id: client_id.into(),
            expiry_secs: 60,
            ..SessionRecord::default()
        }))
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn rows_keep_positions_state_and_counts_and_drop_orphans() {
        let dir = temp_dir("rows");
        let db = StateDb::open(&dir).unwrap();
        let mut refs = SegmentRefs::new();
        let at = |segment, offset| LogPos::new(segment, offset);
        db.apply(at(0, 0), &session("a"), &mut refs).unwrap();
        db.apply(at(0, 10), &copies(&[("a", 2), ("gone", 5)]), &mut refs)
            .unwrap();
        db.apply(at(1, 0), &copies(&[("a", 10)]), &mut refs)
            .unwrap();
        let sent = Sent {
            packet_id: 4,
            awaiting: AwaitedAck::PubComp,
        };
        let mark = Record::MarkSent {
            client_id: "a".into(),
            seq: 2,
            sent,
        };
        db.apply(at(1, 20), &mark, &mut refs).unwrap();
        assert_eq!(refs, SegmentRefs::from([(0, 2), (1, 1)]));

        let rows = db.load().unwrap();
        let kept = &rows.copies["a"];
        assert_eq!(kept.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 10]);
        assert_eq!(kept[0].1.pos, at(0, 10));
        assert_eq!(kept[0].2, Some(sent));
        assert_eq!(kept[1].2, None);
        assert_eq!(rows.inbound_qos2["a"], [9]);
        assert!(!rows.copies.contains_key("gone"), "orphan dropped");
        assert_eq!(refs_of(&rows), SegmentRefs::from([(0, 1), (1, 1)]));

        let mut refs = refs_of(&rows);
        let done = Record::DeleteDelivery {
            client_id: "a".into(),
            seq: 2,
        };
        db.apply(at(1, 30), &done, &mut refs).unwrap();
        assert_eq!(refs, SegmentRefs::from([(1, 1)]));
        db.apply(at(1, 40), &Record::DeleteSession("a".into()), &mut refs)
            .unwrap();
        assert!(refs.is_empty());
        let empty = db.load().unwrap();
        assert!(empty.sessions.is_empty() && empty.copies.is_empty());
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn applying_a_run_of_records_twice_leaves_the_rows_as_once() {
        let dir = temp_dir("replay");
        let db = StateDb::open(&dir).unwrap();
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
        for (offset, record) in run.iter().enumerate() {
            db.apply(LogPos::new(0, offset as u32), record, &mut refs)
                .unwrap();
        }
        let once = db.load().unwrap();
        for (offset, record) in run.iter().enumerate() {
            db.apply(LogPos::new(0, offset as u32), record, &mut refs)
                .unwrap();
        }
        let twice = db.load().unwrap();
        assert_eq!(once.copies, twice.copies);
        assert_eq!(once.subscriptions, twice.subscriptions);
        assert_eq!(once.copies["a"].len(), 1);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
