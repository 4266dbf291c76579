//! The configured streams as the broker appends to them: which streams a
//! topic feeds, each partition's offsets, its newest messages held in
//! memory, and its retention.
//!
//! Offsets are dense per partition. A partition's lock is held from the
//! moment an offset is taken until the record carrying it is in the
//! journal, so a partition's records reach the log in offset order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{StreamSpec, partition_of};
use crate::protocol::Message;
use crate::store::Ticket;
use crate::store::{
    Append, STREAM_BLOCK as BLOCK, Snapshot, StreamBlock as Block, StreamEntry, partition_name,
};
use crate::topic;

/// The newest messages of a partition held in memory when the log holds
/// them all: a group that keeps up reads only these. The bytes are shared
/// by a stream's partitions (each holds at least `TAIL_MIN_BYTES`), so many
/// partitions do not multiply the memory.
const TAIL_MESSAGES: usize = 16_384;
const TAIL_STREAM_BYTES: u64 = 64 << 20;
const TAIL_MIN_BYTES: u64 = 256 << 10;

pub struct Streams {
    streams: Vec<Stream>,
    /// Appends whose journal write has not settled, roughly in ticket
    /// order: `(ticket, stream, partition)`.
    unsettled: Mutex<VecDeque<(u64, usize, u32)>>,
}

/// What appending one message did.
#[derive(Debug, Default)]
pub struct Appended<R> {
    /// What the write returned.
    pub written: R,
    /// Partitions appended to.
    pub partitions: usize,
    /// Partitions whose new message groups may read already: the write
    /// needed no wait for the disk. The others become readable in
    /// `settle`.
    pub readable: Vec<(usize, u32)>,
}

pub struct Stream {
    pub spec: StreamSpec,
    pub name: Arc<str>,
    partitions: Vec<Mutex<Partition>>,
}

/// One partition: its offsets, the newest messages, the retention blocks.
#[derive(Debug)]
pub struct Partition {
    /// The next offset appended.
    pub end: u64,
    /// Offsets below this are durable (under `sync`), so groups may read
    /// them: a member never sees a message a crash could still take back
    /// and whose offset a later message could take.
    readable: u64,
    /// Appends waiting for their journal write: `(ticket, end after it)`.
    unsettled: VecDeque<(u64, u64)>,
    /// The first offset retention kept.
    pub start: u64,
    /// The newest messages, the last at `end - 1`, as group members
    /// receive them (`Stream::placed`).
    tail: VecDeque<StreamEntry>,
    tail_bytes: u64,
    /// The most the tail holds; unbounded when it is all there is (no log
    /// behind it, the `memory` mode): retention bounds it then.
    tail_max_bytes: u64,
    /// Offsets since `start` in runs of up to `BLOCK`, oldest first.
    blocks: VecDeque<Block>,
    bytes: u64,
}

/// Where a partition stands, as groups read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start: u64,
    /// The first offset held in memory.
    pub memory_start: u64,
    /// The end of what is readable (durable).
    pub end: u64,
}

/// What retention dropped from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub stream: Arc<str>,
    pub partition: u32,
    pub start: u64,
}

impl Streams {
    /// The streams of `specs`, each partition continuing where the store
    /// left it. `tail_is_everything`: no log holds the messages (the
    /// `memory` mode).
    pub fn new(specs: Vec<StreamSpec>, stored: &Snapshot, tail_is_everything: bool) -> Streams {
        let streams = specs
            .into_iter()
            .map(|spec| {
                let partitions = (0..spec.partitions)
                    .map(|partition| {
                        let name = partition_name(&spec.name, partition);
                        let stored_end =
                            stored.stream_offsets.get(&name).map_or(0, |last| last + 1);
                        let start = stored.stream_starts.get(&name).copied().unwrap_or(0);
                        let end = stored_end.max(start);
                        let blocks: VecDeque<Block> = stored
                            .stream_blocks
                            .get(&name)
                            .map(|blocks| {
                                blocks
                                    .iter()
                                    .copied()
                                    .filter(|b| b.first >= start)
                                    .collect()
                            })
                            .unwrap_or_default();
                        Mutex::new(Partition {
                            end,
                            readable: end,
                            unsettled: VecDeque::new(),
                            start,
                            tail: VecDeque::new(),
                            tail_bytes: 0,
                            tail_max_bytes: if tail_is_everything {
                                u64::MAX
                            } else {
                                (TAIL_STREAM_BYTES / u64::from(spec.partitions)).max(TAIL_MIN_BYTES)
                            },
                            bytes: blocks.iter().map(|b| b.bytes).sum(),
                            blocks,
                        })
                    })
                    .collect();
                Stream {
                    name: spec.name.as_str().into(),
                    spec,
                    partitions,
                }
            })
            .collect();
        Streams {
            streams,
            unsettled: Mutex::new(VecDeque::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.streams.iter()
    }

    /// The stream called `name`, with its index.
    pub fn find(&self, name: &str) -> Option<(usize, &Stream)> {
        self.streams
            .iter()
            .enumerate()
            .find(|(_, stream)| &*stream.name == name)
    }

    pub fn get(&self, index: usize) -> &Stream {
        &self.streams[index]
    }

    /// Takes the next offset in each partition `message` is appended to,
    /// keeps it among the partition's newest messages, and calls `write`
    /// with the appends while those partitions stay locked. `write`
    /// returns the journal ticket the appends are durable with.
    pub fn append(
        &self,
        message: &Arc<Message>,
        now_ms: u64,
        write: impl FnOnce(Vec<Append>) -> Ticket,
    ) -> Appended<Ticket> {
        self.append_where(message, now_ms, None, write)
    }

    /// `append`, into stream `only` alone (a dead letter re-driven), or
    /// into every stream whose filters match.
    pub fn append_where(
        &self,
        message: &Arc<Message>,
        now_ms: u64,
        only: Option<usize>,
        write: impl FnOnce(Vec<Append>) -> Ticket,
    ) -> Appended<Ticket> {
        // Locks are taken in stream order, so two publishes feeding the
        // same streams never wait on each other in a cycle.
        let mut held: Vec<(MutexGuard<'_, Partition>, Append, usize)> = Vec::new();
        for (index, stream) in self.streams.iter().enumerate() {
            let feeds = match only {
                Some(only) => index == only,
                None => stream
                    .spec
                    .filters
                    .iter()
                    .any(|filter| topic::matches(filter, &message.topic)),
            };
            if !feeds {
                continue;
            }
            let partition = partition_of(stream.spec.key.key_of(message), stream.spec.partitions);
            let mut state = stream.lock(partition);
            let append = Append {
                stream: stream.name.clone(),
                partition,
                offset: state.end,
            };
            let placed = stream.placed(partition, state.end, message);
            state.push(placed, message.size() as u64, now_ms);
            held.push((state, append, index));
        }
        let appends = held.iter().map(|(_, append, _)| append.clone()).collect();
        let ticket = write(appends);
        let mut appended = Appended {
            written: ticket,
            partitions: held.len(),
            readable: Vec::new(),
        };
        if ticket == Ticket::NONE {
            for (state, append, index) in &mut held {
                state.readable = state.end;
                appended.readable.push((*index, append.partition));
            }
        } else if !held.is_empty() {
            let mut unsettled = self.lock_unsettled();
            for (state, append, index) in &mut held {
                let end = state.end;
                state.unsettled.push_back((ticket.0, end));
                unsettled.push_back((ticket.0, *index, append.partition));
            }
        }
        appended
    }

    fn lock_unsettled(&self) -> MutexGuard<'_, VecDeque<(u64, usize, u32)>> {
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes readable what the journal settled through ticket `through`;
    /// returns the partitions that have new readable messages.
    pub fn settle(&self, through: u64) -> Vec<(usize, u32)> {
        let mut touched: Vec<(usize, u32)> = Vec::new();
        {
            let mut unsettled = self.lock_unsettled();
            while let Some(&(ticket, stream, partition)) = unsettled.front() {
                if ticket > through {
                    break;
                }
                unsettled.pop_front();
                if !touched.contains(&(stream, partition)) {
                    touched.push((stream, partition));
                }
            }
        }
        for &(stream, partition) in &touched {
            let mut state = self.streams[stream].lock(partition);
            while let Some(&(ticket, end)) = state.unsettled.front() {
                if ticket > through {
                    break;
                }
                state.readable = end;
                state.unsettled.pop_front();
            }
        }
        touched
    }
}

impl Stream {
    /// `message` as a group member receives it from `partition` at
    /// `offset`: with v5 user properties saying where in the stream it is
    /// (3.1.1 clients get no properties at all). Made once per append (or
    /// log read), whatever number of groups read it.
    pub fn placed(&self, partition: u32, offset: u64, message: &Message) -> Arc<Message> {
        let mut placed = message.clone();
        let key = self.spec.key.key_of(message).to_string();
        placed.properties.user_properties.extend([
            ("stream".to_string(), self.name.to_string()),
            ("partition".to_string(), partition.to_string()),
            ("offset".to_string(), offset.to_string()),
            ("key".to_string(), key),
        ]);
        Arc::new(placed)
    }

    /// The message `placed` was made from: without the user properties
    /// `placed` added.
    pub fn unplaced(&self, placed: &Message) -> Message {
        let mut message = placed.clone();
        let properties = &mut message.properties.user_properties;
        let added = ["stream", "partition", "offset", "key"];
        if properties.len() >= added.len()
            && properties[properties.len() - added.len()..]
                .iter()
                .zip(added)
                .all(|((name, _), wanted)| name == wanted)
        {
            properties.truncate(properties.len() - added.len());
        }
        message
    }

    fn lock(&self, partition: u32) -> MutexGuard<'_, Partition> {
        self.partitions[partition as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub fn bounds(&self, partition: u32) -> Bounds {
        self.lock(partition).bounds()
    }

    /// The next offset of `partition`, durable or not yet.
    pub fn end(&self, partition: u32) -> u64 {
        self.lock(partition).end
    }

    /// The next offset of each partition.
    pub fn ends(&self) -> Vec<u64> {
        (0..self.partition_count())
            .map(|partition| self.lock(partition).end)
            .collect()
    }

    /// Up to `max` messages held in memory from `from` on.
    pub fn read_memory(&self, partition: u32, from: u64, max: usize) -> Vec<StreamEntry> {
        self.lock(partition).read_memory(from, max)
    }

    /// The first offset of `partition` appended at or after `time_ms`, as
    /// far as the blocks tell: the first offset of the oldest block whose
    /// newest message is that recent.
    pub fn offset_at(&self, partition: u32, time_ms: u64) -> u64 {
        let state = self.lock(partition);
        state
            .blocks
            .iter()
            .find(|block| block.newest_ms >= time_ms)
            .map_or(state.end, |block| block.first)
    }

    /// Applies retention at `now_ms`: drops the oldest blocks that are
    /// older than `retention` or that `max_bytes` has no room for.
    pub fn trim(&self, now_ms: u64) -> Vec<Trimmed> {
        let retention = self.spec.retention.map(duration_ms);
        let mut trimmed = Vec::new();
        for partition in 0..self.partition_count() {
            let mut state = self.lock(partition);
            let start = state.trim(now_ms, retention, self.spec.max_bytes);
            if let Some(start) = start {
                trimmed.push(Trimmed {
                    stream: self.name.clone(),
                    partition,
                    start,
                });
            }
        }
        trimmed
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Partition {
    fn bounds(&self) -> Bounds {
        Bounds {
            start: self.start,
            memory_start: self.end - self.tail.len() as u64,
            end: self.readable,
        }
    }

    /// Appends `placed`, a message of `size` bytes as stored.
    fn push(&mut self, placed: Arc<Message>, size: u64, now_ms: u64) {
        let offset = self.end;
        self.end += 1;
        self.tail_bytes += placed.size() as u64;
        self.tail.push_back(StreamEntry {
            offset,
            appended_at: now_ms,
            message: placed,
        });
        if self.tail_max_bytes != u64::MAX {
            while self.tail.len() > TAIL_MESSAGES || self.tail_bytes > self.tail_max_bytes {
                let Some(gone) = self.tail.pop_front() else {
                    break;
                };
                self.tail_bytes -= gone.message.size() as u64;
            }
        }
        match self.blocks.back_mut() {
            Some(block) if block.count < BLOCK => {
                block.count += 1;
                block.bytes += size;
                block.newest_ms = now_ms;
            }
            _ => self.blocks.push_back(Block {
                first: offset,
                count: 1,
                bytes: size,
                newest_ms: now_ms,
            }),
        }
        self.bytes += size;
    }

    fn read_memory(&self, from: u64, max: usize) -> Vec<StreamEntry> {
        let memory_start = self.end - self.tail.len() as u64;
        let skip = from.saturating_sub(memory_start) as usize;
        self.tail.iter().skip(skip).take(max).cloned().collect()
    }

    /// Drops what retention no longer keeps; the new start if it moved.
    fn trim(&mut self, now_ms: u64, retention: Option<u64>, max_bytes: Option<u64>) -> Option<u64> {
        let before = self.start;
        while let Some(oldest) = self.blocks.front() {
            let too_old = retention.is_some_and(|r| oldest.newest_ms.saturating_add(r) <= now_ms);
            let too_big = max_bytes.is_some_and(|max| self.bytes > max);
            if !too_old && !too_big {
                break;
            }
            self.bytes -= oldest.bytes;
            self.start = oldest.first + u64::from(oldest.count);
            self.blocks.pop_front();
        }
        while self.tail.front().is_some_and(|e| e.offset < self.start) {
            let gone = self.tail.pop_front().expect("just looked");
            self.tail_bytes -= gone.message.size() as u64;
        }
        (self.start != before).then_some(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::stream::spec::{StreamConfig, check_all};
    use crate::topic::TopicLimits;
    use std::collections::HashMap;

    fn spec(name: &str, filter: &str, partitions: u32) -> StreamSpec {
        let config = StreamConfig {
            partitions,
            key: "topic:1".into(),
            ..StreamConfig::new(name, &[filter])
        };
        let limits = TopicLimits {
            max_length: 4096,
            max_levels: 128,
        };
        check_all(&[config], limits).unwrap().remove(0)
    }

    fn message(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: Some("p".into()),
        }
    }

    #[test]
    fn a_message_gets_the_next_offset_of_its_keys_partition_in_each_stream_it_feeds() {
        let stored = Snapshot {
            stream_offsets: HashMap::from([("orders/1".to_string(), 41)]),
            ..Snapshot::default()
        };
        let streams = Streams::new(
            vec![spec("orders", "orders/#", 8), spec("all", "#", 1)],
            &stored,
            false,
        );
        let appended = |topic: &str| {
            let mut seen = Vec::new();
            streams.append(&Arc::new(message(topic)), 0, |appends| {
                seen = appends;
                Ticket::NONE
            });
            seen
        };
        let first = appended("orders/device-1/x");
        assert_eq!(first.len(), 2, "both streams fed");
        assert_eq!(
            (first[0].partition, first[0].offset),
            (1, 42),
            "continues after 41"
        );
        assert_eq!((&*first[1].stream, first[1].offset), ("all", 0));
        let second = appended("orders/device-1/y");
        assert_eq!(
            (second[0].partition, second[0].offset),
            (1, 43),
            "same key, same partition"
        );
        let other = appended("telemetry/t");
        assert_eq!(other.len(), 1, "only the catch-all stream");
        let orders = streams.iter().next().unwrap();
        assert_eq!(orders.ends()[1], 44);
        let held: Vec<u64> = orders
            .read_memory(1, 0, 10)
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(held, [42, 43], "the newest messages are held in memory");
        assert_eq!(
            orders.bounds(1),
            Bounds {
                start: 0,
                memory_start: 42,
                end: 44
            }
        );
    }

    #[test]
    fn an_append_is_readable_once_its_journal_write_settles() {
        let streams = Streams::new(
            vec![spec("orders", "orders/#", 1)],
            &Snapshot::default(),
            false,
        );
        let append =
            |ticket: u64| streams.append(&Arc::new(message("orders/a/x")), 0, |_| Ticket(ticket));
        let first = append(7);
        assert_eq!(first.partitions, 1);
        assert!(first.readable.is_empty(), "waits for ticket 7");
        append(8);
        let orders = streams.iter().next().unwrap();
        assert_eq!((orders.bounds(0).end, orders.end(0)), (0, 2));
        assert_eq!(streams.settle(7), [(0, 0)]);
        assert_eq!(orders.bounds(0).end, 1);
        assert!(streams.settle(7).is_empty(), "nothing new");
        streams.settle(9);
        assert_eq!(orders.bounds(0).end, 2);
        let at_once = streams.append(&Arc::new(message("orders/a/x")), 0, |_| Ticket::NONE);
        assert_eq!(at_once.readable, [(0, 0)], "no wait, no durability asked");
        assert_eq!(orders.bounds(0).end, 3);
    }

    #[test]
    fn retention_drops_whole_blocks_by_age_and_by_bytes() {
        let mut partition = Partition {
            end: 0,
            readable: 0,
            unsettled: VecDeque::new(),
            start: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_max_bytes: u64::MAX,
            blocks: VecDeque::new(),
            bytes: 0,
        };
        let one = Arc::new(message("orders/a"));
        let size = one.size() as u64;
        for at in 0..3 * u64::from(BLOCK) {
            partition.push(one.clone(), size, at);
        }
        let block = u64::from(BLOCK);
        assert_eq!(
            partition.trim(block - 1 + 1000, Some(1000), None),
            Some(block)
        );
        assert_eq!(
            partition.trim(block + 1000, Some(1000), None),
            None,
            "the next block holds newer ones"
        );
        assert_eq!(partition.bounds().memory_start, block);
        assert_eq!(
            partition.trim(0, None, Some(size * block)),
            Some(2 * block),
            "bytes: one block's worth kept"
        );
        assert_eq!(partition.read_memory(0, 1)[0].offset, 2 * block);
    }
}
