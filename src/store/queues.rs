//! The index of the session queues (RocketMQ's ConsumeQueue, per session):
//! which stored copies each persistent session still has, where their
//! messages are in the commit log, and how far each was sent.
//!
//! A session's copies are kept in chunks of up to `CHUNK` entries in the
//! order they were stored, one sled row per chunk (client id, NUL, chunk
//! number). Rows are written at checkpoints, and only the chunks that
//! changed since the last one: an offline backlog costs one row write per
//! thousand messages, where a row per copy made sled rewrite pages (and
//! hold buffers) for every one. In memory each session keeps only its
//! newest chunk and the chunks changed since the last checkpoint; the rest
//! are read back when a change reaches them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::state::{CopyRow, SegmentRefs, add_ref, backend, decode, drop_ref, encode};
use crate::session::Sent;

/// Copies per chunk.
const CHUNK: usize = 1024;

/// Changed chunks other than sessions' newest, past which they are written
/// (and let go of) without waiting for the next checkpoint: a burst never
/// holds more than this many chunks in memory, and a subscriber that keeps
/// up drains most chunks before they are ever written.
const WRITE_AFTER_SEALED: usize = 64;

/// One stored copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub row: CopyRow,
    /// Set once it was sent: re-sent with DUP and this packet id.
    pub sent: Option<Sent>,
    /// Done, left in place until its chunk is written: removing from the
    /// front of a chunk would move every entry behind it.
    #[serde(skip)]
    pub removed: bool,
}

#[derive(Debug)]
struct Chunk {
    id: u32,
    /// Lowest and highest key in it: keys arrive nearly in order, so a
    /// key is looked for only in the chunks whose range holds it.
    first: u64,
    last: u64,
    /// None while only its row holds the entries.
    entries: Option<Vec<Entry>>,
    /// Entries not removed.
    alive: usize,
    /// Changed since its row was written.
    dirty: bool,
}

impl Chunk {
    fn holds(&self, seq: u64) -> bool {
        (self.first..=self.last).contains(&seq)
    }
}

#[derive(Debug, Default)]
struct SessionQueue {
    chunks: Vec<Chunk>,
    next_id: u32,
    /// The highest key stored so far: a lower (or equal) one may be there
    /// already (a replay after a crash, or two publishers racing).
    highest: u64,
}

pub struct QueueIndex {
    tree: sled::Tree,
    queues: HashMap<String, SessionQueue>,
    /// Changed chunks, other than sessions' newest, not yet written.
    sealed_changed: usize,
}

fn chunk_key(client_id: &str, id: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 5);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

impl QueueIndex {
    /// Reads every chunk row once, keeping in memory only each session's
    /// newest chunk; returns the live copies per log segment too.
    pub fn open(tree: sled::Tree) -> Result<(QueueIndex, SegmentRefs), StoreError> {
        let mut queues: HashMap<String, SessionQueue> = HashMap::new();
        let mut refs = SegmentRefs::new();
        // Keys sort by client id, then chunk number: a session's chunks
        // come oldest first.
        for row in tree.iter() {
            let (key, value) = row.map_err(backend)?;
            let owned = key.iter().position(|&b| b == 0).and_then(|nul| {
                let client_id = std::str::from_utf8(&key[..nul]).ok()?;
                let id = u32::from_be_bytes(key[nul + 1..].try_into().ok()?);
                Some((client_id.to_string(), id))
            });
            let Some((client_id, id)) = owned else {
                return Err(StoreError::Corrupt(format!(
                    "queues: malformed key {}",
                    String::from_utf8_lossy(&key)
                )));
            };
            let entries: Vec<Entry> = decode("queues", &key, &value)?;
            for entry in &entries {
                add_ref(&mut refs, entry.row.pos, 1);
            }
            let queue = queues.entry(client_id).or_default();
            queue.next_id = queue.next_id.max(id + 1);
            if let Some(older) = queue.chunks.last_mut() {
                older.entries = None;
            }
            if let Some(chunk) = Chunk::of(id, entries) {
                queue.highest = queue.highest.max(chunk.last);
                queue.chunks.push(chunk);
            }
        }
        let index = QueueIndex {
            tree,
            queues,
            sealed_changed: 0,
        };
        Ok((index, refs))
    }

    /// Calls `visit` with every session's entries, in the order they were
    /// stored, reading one chunk at a time.
    pub fn visit(&mut self, mut visit: impl FnMut(&str, Entry)) -> Result<(), StoreError> {
        for (client_id, queue) in &mut self.queues {
            for chunk in &mut queue.chunks {
                match &chunk.entries {
                    Some(entries) => entries
                        .iter()
                        .filter(|e| !e.removed)
                        .for_each(|e| visit(client_id, e.clone())),
                    None => read(&self.tree, client_id, chunk.id)?
                        .into_iter()
                        .for_each(|e| visit(client_id, e)),
                }
            }
        }
        Ok(())
    }

    /// Calls `visit` with every entry of one owner, in the order stored,
    /// reading one chunk at a time.
    pub fn visit_owner(
        &mut self,
        owner: &str,
        mut visit: impl FnMut(&Entry),
    ) -> Result<(), StoreError> {
        let Some(queue) = self.queues.get(owner) else {
            return Ok(());
        };
        for chunk in &queue.chunks {
            match &chunk.entries {
                Some(entries) => entries.iter().filter(|e| !e.removed).for_each(&mut visit),
                None => read(&self.tree, owner, chunk.id)?
                    .iter()
                    .for_each(&mut visit),
            }
        }
        Ok(())
    }

    /// Stores one copy for `client_id` (nothing if its key is there).
    pub fn put(
        &mut self,
        client_id: &str,
        entry: Entry,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        let queue = self.queues.entry(client_id.to_string()).or_default();
        if entry.seq <= queue.highest && find(&self.tree, client_id, queue, entry.seq)?.is_some() {
            return Ok(());
        }
        queue.highest = queue.highest.max(entry.seq);
        add_ref(refs, entry.row.pos, 1);
        let open = queue
            .chunks
            .last()
            .and_then(|c| c.entries.as_ref())
            .is_some_and(|e| e.len() < CHUNK);
        if !open {
            if queue.chunks.last().is_some_and(|newest| newest.dirty) {
                self.sealed_changed += 1;
            }
            queue.chunks.push(Chunk {
                id: queue.next_id,
                first: entry.seq,
                last: entry.seq,
                entries: Some(Vec::with_capacity(16)),
                alive: 0,
                dirty: true,
            });
            queue.next_id += 1;
        }
        let chunk = queue.chunks.last_mut().expect("just ensured");
        chunk.first = chunk.first.min(entry.seq);
        chunk.last = chunk.last.max(entry.seq);
        chunk.dirty = true;
        chunk.alive += 1;
        chunk
            .entries
            .as_mut()
            .expect("the newest chunk is loaded")
            .push(entry);
        self.write_if_many_changed()
    }

    fn write_if_many_changed(&mut self) -> Result<(), StoreError> {
        if self.sealed_changed >= WRITE_AFTER_SEALED {
            self.write_changed()?;
        }
        Ok(())
    }

    /// Marks chunk `index` of `queue` changed, counting it if it is not the
    /// newest.
    fn touch(sealed_changed: &mut usize, queue: &mut SessionQueue, index: usize) {
        let newest = index + 1 == queue.chunks.len();
        let chunk = &mut queue.chunks[index];
        if !chunk.dirty && !newest {
            *sealed_changed += 1;
        }
        chunk.dirty = true;
    }

    pub fn mark_sent(&mut self, client_id: &str, seq: u64, sent: Sent) -> Result<(), StoreError> {
        if let Some(queue) = self.queues.get_mut(client_id)
            && let Some((chunk, at)) = find(&self.tree, client_id, queue, seq)?
        {
            QueueIndex::touch(&mut self.sealed_changed, queue, chunk);
            queue.chunks[chunk].entries.as_mut().expect("found in it")[at].sent = Some(sent);
        }
        Ok(())
    }

    /// Removes one copy (nothing if its key is not there).
    pub fn remove(
        &mut self,
        client_id: &str,
        seq: u64,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        if let Some(queue) = self.queues.get_mut(client_id)
            && let Some((chunk, at)) = find(&self.tree, client_id, queue, seq)?
        {
            QueueIndex::touch(&mut self.sealed_changed, queue, chunk);
            let chunk = &mut queue.chunks[chunk];
            let gone = &mut chunk.entries.as_mut().expect("found in it")[at];
            gone.removed = true;
            chunk.alive -= 1;
            drop_ref(refs, gone.row.pos);
            self.write_if_many_changed()?;
        }
        Ok(())
    }

    /// Removes every entry of `owner` below `start` (a trimmed partition):
    /// whole chunks below it go with their rows, a chunk it falls in is
    /// thinned in place.
    pub fn remove_before(
        &mut self,
        owner: &str,
        start: u64,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        let Some(queue) = self.queues.get_mut(owner) else {
            return Ok(());
        };
        let mut kept = Vec::with_capacity(queue.chunks.len());
        let newest = queue.chunks.len().saturating_sub(1);
        for (index, mut chunk) in std::mem::take(&mut queue.chunks).into_iter().enumerate() {
            if chunk.first >= start {
                kept.push(chunk);
                continue;
            }
            let below_all = chunk.last < start;
            let entries = load(&self.tree, owner, &mut chunk)?;
            for entry in entries.iter_mut().filter(|e| !e.removed && e.seq < start) {
                entry.removed = true;
                drop_ref(refs, entry.row.pos);
            }
            if below_all && index != newest {
                self.tree
                    .remove(chunk_key(owner, chunk.id))
                    .map_err(backend)?;
                continue;
            }
            chunk.alive = entries.iter().filter(|e| !e.removed).count();
            if !chunk.dirty && index != newest {
                self.sealed_changed += 1;
            }
            chunk.dirty = true;
            kept.push(chunk);
        }
        queue.chunks = kept;
        Ok(())
    }

    /// Removes every copy of a session.
    pub fn remove_session(
        &mut self,
        client_id: &str,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        let Some(mut queue) = self.queues.remove(client_id) else {
            return Ok(());
        };
        for chunk in &mut queue.chunks {
            for entry in load(&self.tree, client_id, chunk)? {
                if !entry.removed {
                    drop_ref(refs, entry.row.pos);
                }
            }
            self.tree
                .remove(chunk_key(client_id, chunk.id))
                .map_err(backend)?;
        }
        Ok(())
    }

    /// The entries of `seqs` that are stored for `client_id`.
    pub fn find(&mut self, client_id: &str, seqs: &[u64]) -> Result<Vec<Entry>, StoreError> {
        let mut found = Vec::with_capacity(seqs.len());
        if let Some(queue) = self.queues.get_mut(client_id) {
            for &seq in seqs {
                if let Some((chunk, at)) = find(&self.tree, client_id, queue, seq)? {
                    found.push(
                        queue.chunks[chunk].entries.as_ref().expect("found in it")[at].clone(),
                    );
                }
            }
        }
        Ok(found)
    }

    /// Writes the chunks changed since the last call (removing empty ones)
    /// and lets go of every chunk but each session's newest.
    pub fn write_changed(&mut self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (client_id, queue) in &mut self.queues {
            for chunk in &mut queue.chunks {
                if !chunk.dirty {
                    continue;
                }
                let entries = chunk.entries.as_mut().expect("a changed chunk is loaded");
                entries.retain(|e| !e.removed);
                let key = chunk_key(client_id, chunk.id);
                if entries.is_empty() {
                    batch.remove(key);
                } else {
                    batch.insert(key, encode(entries)?);
                }
                chunk.dirty = false;
            }
        }
        self.tree.apply_batch(batch).map_err(backend)?;
        self.sealed_changed = 0;
        self.unload_sealed();
        Ok(())
    }

    /// Lets go of the entries of every chunk but each session's newest,
    /// forgetting empty chunks and sessions; their rows hold them.
    pub fn unload_sealed(&mut self) {
        self.queues.retain(|_, queue| {
            queue.chunks.retain(|chunk| chunk.dirty || chunk.alive > 0);
            let newest = queue.chunks.len().saturating_sub(1);
            for chunk in &mut queue.chunks[..newest] {
                if !chunk.dirty {
                    chunk.entries = None;
                }
            }
            !queue.chunks.is_empty()
        });
    }

    /// Each owner's lowest and highest stored key.
    pub fn bounds(&self) -> Vec<(String, u64, u64)> {
        self.queues
            .iter()
            .filter_map(|(owner, queue)| {
                let first = queue.chunks.iter().map(|c| c.first).min()?;
                let last = queue.chunks.iter().map(|c| c.last).max()?;
                Some((owner.clone(), first, last))
            })
            .collect()
    }

    /// Forgets the queues of sessions not in `keep` and removes their rows.
    pub fn remove_orphans(
        &mut self,
        keep: impl Fn(&str) -> bool,
        refs: &mut SegmentRefs,
    ) -> Result<(), StoreError> {
        let orphans: Vec<String> = self.queues.keys().filter(|c| !keep(c)).cloned().collect();
        for client_id in orphans {
            self.remove_session(&client_id, refs)?;
        }
        Ok(())
    }
}

impl Chunk {
    fn of(id: u32, entries: Vec<Entry>) -> Option<Chunk> {
        let first = entries.iter().map(|e| e.seq).min()?;
        let last = entries.iter().map(|e| e.seq).max()?;
        Some(Chunk {
            id,
            first,
            last,
            alive: entries.len(),
            entries: Some(entries),
            dirty: false,
        })
    }
}

/// The chunk's entries, read from its row if they are not in memory.
fn load<'c>(
    tree: &sled::Tree,
    client_id: &str,
    chunk: &'c mut Chunk,
) -> Result<&'c mut Vec<Entry>, StoreError> {
    if chunk.entries.is_none() {
        chunk.entries = Some(read(tree, client_id, chunk.id)?);
    }
    Ok(chunk.entries.as_mut().expect("just loaded"))
}

/// A chunk's entries as its row holds them.
fn read(tree: &sled::Tree, client_id: &str, id: u32) -> Result<Vec<Entry>, StoreError> {
    let key = chunk_key(client_id, id);
    match tree.get(&key).map_err(backend)? {
        Some(value) => decode("queues", &key, &value),
        None => Ok(Vec::new()),
    }
}

/// Where `seq` is in `queue`: the chunk's index and the entry's.
fn find(
    tree: &sled::Tree,
    client_id: &str,
    queue: &mut SessionQueue,
    seq: u64,
) -> Result<Option<(usize, usize)>, StoreError> {
    for (index, chunk) in queue.chunks.iter_mut().enumerate() {
        if !chunk.holds(seq) {
            continue;
        }
        let entries = load(tree, client_id, chunk)?;
        // Keys arrive in order but for publishers racing each other: a
        // binary search finds almost every one, a scan the rest.
        let live = |e: &Entry| e.seq == seq && !e.removed;
        let at = match entries.binary_search_by_key(&seq, |e| e.seq) {
            Ok(at) if !entries[at].removed => Some(at),
            // A key stored again after it was removed sits further on.
            _ => entries.iter().position(live),
        };
        if let Some(at) = at {
            return Ok(Some((index, at)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use crate::session::AwaitedAck;
    use crate::store::log::LogPos;

    fn entry(seq: u64, segment: u32) -> Entry {
        Entry {
            seq,
            row: CopyRow {
                pos: LogPos::new(segment, seq as u32),
                size: 100,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
            },
            sent: None,
            removed: false,
        }
    }

    fn all(index: &mut QueueIndex) -> HashMap<String, Vec<Entry>> {
        let mut all: HashMap<String, Vec<Entry>> = HashMap::new();
        index
            .visit(|client_id, entry| all.entry(client_id.into()).or_default().push(entry))
            .unwrap();
        all
    }

    fn index(name: &str) -> (QueueIndex, sled::Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("petrel-queues-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = sled::Config::new().path(&dir).open().unwrap();
        let (index, _) = QueueIndex::open(db.open_tree("queues").unwrap()).unwrap();
        (index, db, dir)
    }

    #[test]
    fn a_trimmed_partition_loses_the_rows_below_its_start_and_their_segment_refs() {
        let (mut index, db, dir) = index("trim");
        let mut refs = SegmentRefs::new();
        let total = 3 * CHUNK as u64;
        for offset in 0..total {
            index
                .put("orders/0", entry(offset, (offset / 1000) as u32), &mut refs)
                .unwrap();
        }
        index.write_changed().unwrap();
        let start = CHUNK as u64 + 5;
        index.remove_before("orders/0", start, &mut refs).unwrap();
        index.write_changed().unwrap();
        assert_eq!(refs.values().sum::<u64>(), total - start);
        assert!(
            !refs.contains_key(&0),
            "segment 0 held only trimmed offsets"
        );
        assert_eq!(
            db.open_tree("queues").unwrap().len(),
            2,
            "the first chunk's row is gone"
        );
        let (mut reopened, counted) = QueueIndex::open(db.open_tree("queues").unwrap()).unwrap();
        assert_eq!(counted, refs);
        let kept = all(&mut reopened).remove("orders/0").unwrap();
        assert_eq!(kept.first().map(|e| e.seq), Some(start));
        assert_eq!(kept.len() as u64, total - start);
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_backlog_is_kept_in_chunk_rows_and_read_back_after_a_reopen() {
        let (mut index, db, dir) = index("reopen");
        let mut refs = SegmentRefs::new();
        let total = 3 * CHUNK as u64 + 10;
        for seq in 1..=total {
            index
                .put("a", entry(seq, (seq / 1000) as u32), &mut refs)
                .unwrap();
        }
        let sent = Sent {
            packet_id: 7,
            awaiting: AwaitedAck::PubAck,
        };
        index.mark_sent("a", 1, sent).unwrap();
        index.remove("a", 2, &mut refs).unwrap();
        index.write_changed().unwrap();
        assert_eq!(
            db.open_tree("queues").unwrap().len(),
            4,
            "one row per chunk"
        );
        let loaded: usize = index
            .queues
            .values()
            .flat_map(|q| &q.chunks)
            .filter(|c| c.entries.is_some())
            .count();
        assert_eq!(loaded, 1, "only the newest chunk stays in memory");

        // A change reaching an unloaded chunk reads it back.
        index.remove("a", 3, &mut refs).unwrap();
        index.write_changed().unwrap();
        assert_eq!(refs.values().sum::<u64>(), total - 2);

        let (mut reopened, counted) = QueueIndex::open(db.open_tree("queues").unwrap()).unwrap();
        assert_eq!(
            counted, refs,
            "the live copies per segment are counted again"
        );
        let entries = &all(&mut reopened)["a"];
        assert_eq!(entries.len() as u64, total - 2);
        assert_eq!(entries[0].sent, Some(sent));
        assert_eq!(entries[1].seq, 4);
        assert_eq!(reopened.find("a", &[4, 2, total]).unwrap().len(), 2);
        drop((index, reopened, db));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn putting_a_stored_key_again_changes_nothing_and_removing_all_forgets_the_session() {
        let (mut index, db, dir) = index("idempotent");
        let mut refs = SegmentRefs::new();
        for seq in [5, 3, 9] {
            index.put("a", entry(seq, 0), &mut refs).unwrap();
        }
        index.put("a", entry(3, 0), &mut refs).unwrap();
        assert_eq!(all(&mut index)["a"].len(), 3);
        assert_eq!(refs, SegmentRefs::from([(0, 3)]));
        index.remove_session("a", &mut refs).unwrap();
        assert!(refs.is_empty());
        index.write_changed().unwrap();
        assert!(all(&mut index).is_empty());
        drop((index, db));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
