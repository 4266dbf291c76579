//! The store on disk: one sled database under `data_dir/db`.
//!
//! Trees: `sessions` (client id -> record with subscriptions and will),
//! `deliveries` (client id, seq -> QoS 1/2 message queued or in flight for a
//! persistent session), `sent` (client id, seq -> packet id and awaited ack of
//! a delivery already sent), `inbound_qos2` (client id, packet id -> awaiting
//! PUBREL) and `retained` (topic -> message). Keys owned by a session start
//! with its client id and a NUL byte, which no MQTT string may contain, so a
//! prefix scan finds exactly one session's entries. Values are postcard.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{SessionRecord, Snapshot, Store, StoreError, StoredDelivery};
use crate::protocol::Message;
use crate::session::{Delivery, Sent};

/// Bumped whenever the stored layout changes incompatibly.
const FORMAT: u8 = 1;

pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    sessions: sled::Tree,
    deliveries: sled::Tree,
    sent: sled::Tree,
    inbound_qos2: sled::Tree,
    retained: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the database under `data_dir`. With
    /// `background_flush_ms`, sled also flushes on its own at that interval
    /// (the `async` durability mode); otherwise only `flush` makes writes
    /// durable.
    pub fn open(
        data_dir: &Path,
        background_flush_ms: Option<u64>,
    ) -> Result<SledStore, StoreError> {
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
            .flush_every_ms(background_flush_ms)
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
        Ok(SledStore {
            meta,
            sessions: tree("sessions")?,
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

impl Store for SledStore {
    fn keeps_messages(&self) -> bool {
        true
    }

    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions
            .insert(record.client_id.as_bytes(), encode(record)?)
            .map_err(backend)?;
        Ok(())
    }

    fn delete_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions
            .remove(client_id.as_bytes())
            .map_err(backend)?;
        let prefix = owner_prefix(client_id);
        for tree in [&self.deliveries, &self.sent, &self.inbound_qos2] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(&prefix).keys() {
                batch.remove(key.map_err(backend)?);
            }
            tree.apply_batch(batch).map_err(backend)?;
        }
        Ok(())
    }

    fn put_retained(&self, message: &Message) -> Result<(), StoreError> {
        self.retained
            .insert(message.topic.as_bytes(), encode(message)?)
            .map_err(backend)?;
        Ok(())
    }

    fn delete_retained(&self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn put_copies(
        &self,
        copies: &[(Arc<str>, Delivery)],
        inbound_qos2: Option<(&str, u16)>,
    ) -> Result<(), StoreError> {
        let mut entries = Vec::with_capacity(copies.len());
        for (client_id, delivery) in copies {
            let seq = delivery
                .seq
                .ok_or_else(|| StoreError::Backend("delivery without a key".into()))?;
            entries.push((delivery_key(client_id, seq), encode(delivery)?));
        }
        let Some((client_id, packet_id)) = inbound_qos2 else {
            let mut batch = sled::Batch::default();
            for (key, value) in entries {
                batch.insert(key, value);
            }
            return self.deliveries.apply_batch(batch).map_err(backend);
        };
        let inbound = inbound_key(client_id, packet_id);
        (&self.deliveries, &self.inbound_qos2)
            .transaction(|(deliveries, inbound_qos2)| {
                for (key, value) in &entries {
                    deliveries.insert(key.as_slice(), value.as_slice())?;
                }
                inbound_qos2.insert(inbound.as_slice(), &[])?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|error| match error {
                TransactionError::Storage(error) => backend(error),
                TransactionError::Abort(()) => StoreError::Backend("transaction aborted".into()),
            })
    }

    fn mark_sent(&self, client_id: &str, seq: u64, sent: Sent) -> Result<(), StoreError> {
        self.sent
            .insert(delivery_key(client_id, seq), encode(&sent)?)
            .map_err(backend)?;
        Ok(())
    }

    fn delete_delivery(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        // The delivery goes first: a `sent` entry left behind by a crash
        // between the two is an orphan that `load` discards, while the
        // reverse order could leave a sent delivery looking unsent.
        let key = delivery_key(client_id, seq);
        self.deliveries.remove(&key).map_err(backend)?;
        self.sent.remove(&key).map_err(backend)?;
        Ok(())
    }

    fn delete_inbound_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.inbound_qos2
            .remove(inbound_key(client_id, packet_id))
            .map_err(backend)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    fn has_space(&self) -> bool {
        let probe = crate::timer::now_ms().to_be_bytes();
        self.meta.insert("space-probe", &probe).is_ok() && self.db.flush().is_ok()
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        let mut owners = HashSet::new();
        for entry in self.sessions.iter() {
            let (key, value) = entry.map_err(backend)?;
            let record: SessionRecord = decode("sessions", &key, &value)?;
            owners.insert(record.client_id.clone());
            snapshot.sessions.push(record);
        }
        for entry in self.retained.iter() {
            let (key, value) = entry.map_err(backend)?;
            let message: Message = decode("retained", &key, &value)?;
            snapshot.retained.push(Arc::new(message));
        }

        let mut orphans: Vec<(&sled::Tree, sled::IVec)> = Vec::new();
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
            let mut delivery: Delivery = decode("deliveries", &key, &value)?;
            delivery.seq = Some(seq);
            let state = sent.remove(&key);
            snapshot
                .deliveries
                .entry(client_id)
                .or_default()
                .push(StoredDelivery {
                    seq,
                    delivery,
                    sent: state,
                });
        }
        orphans.extend(sent.into_keys().map(|key| (&self.sent, key)));
        for entry in self.inbound_qos2.iter() {
            let (key, _) = entry.map_err(backend)?;
            let owned = split_key(&key).filter(|(owner, _)| owners.contains(owner));
            match owned.and_then(|(owner, rest)| Some((owner, <[u8; 2]>::try_from(rest).ok()?))) {
                Some((client_id, id)) => snapshot
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
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::session::AwaitedAck;

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t/1".into(),
                payload: bytes::Bytes::from_static(b"payload"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: MessageProperties::default(),
                expires_at: Some(1_700_000_000_000),
                publisher: Some("p".into()),
            }),
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![3],
            seq: Some(seq),
        }
    }

    fn record(client_id: &str) -> SessionRecord {
        SessionRecord {
            client_id: client_id.into(),
            expiry_secs: 60,
            disconnected_at_ms: None,
            subscriptions: Vec::new(),
            will: None,
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_keeps_order_state_and_drops_orphans() {
        let dir = temp_dir("round-trip");
        let store = SledStore::open(&dir, None).unwrap();
        store.put_session(&record("a")).unwrap();
        let (first, second, orphan) = (delivery(2), delivery(10), delivery(5));
        let copies = [
            (Arc::from("a"), second),
            (Arc::from("a"), first.clone()),
            (Arc::from("gone"), orphan),
        ];
        store.put_copies(&copies, Some(("a", 9))).unwrap();
        let sent = Sent {
            packet_id: 4,
            awaiting: AwaitedAck::PubComp,
        };
        store.mark_sent("a", 2, sent).unwrap();
        store.mark_sent("gone", 77, sent).unwrap();

        let snapshot = store.load().unwrap();
        let kept = &snapshot.deliveries["a"];
        assert_eq!(kept.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 10]);
        assert_eq!(kept[0].delivery, first);
        assert_eq!(kept[0].sent, Some(sent));
        assert_eq!(kept[1].sent, None);
        assert_eq!(snapshot.inbound_qos2["a"], [9]);
        assert!(!snapshot.deliveries.contains_key("gone"));
        assert_eq!(snapshot.last_seq(), 10);

        store.delete_session("a").unwrap();
        let empty = store.load().unwrap();
        assert!(empty.sessions.is_empty() && empty.deliveries.is_empty());
        assert!(
            store.sent.is_empty() && store.inbound_qos2.is_empty(),
            "orphans removed"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
