//! The configured streams as the broker appends to them: which streams a
//! topic feeds, and the next offset of each partition.
//!
//! Offsets are dense per partition. A partition's lock is held from the
//! moment an offset is taken until the record carrying it is in the
//! journal, so a partition's records reach the log in offset order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{StreamSpec, partition_of};
use crate::protocol::Message;
use crate::store::Append;
use crate::topic;

pub struct Streams {
    streams: Vec<Stream>,
}

pub struct Stream {
    pub spec: StreamSpec,
    pub name: Arc<str>,
    /// The next offset of each partition.
    heads: Vec<Mutex<u64>>,
}

impl Streams {
    /// The streams of `specs`, each partition continuing after the last
    /// offset stored for it (`last_offsets`, by `stream/partition`).
    pub fn new(specs: Vec<StreamSpec>, last_offsets: &HashMap<String, u64>) -> Streams {
        let streams = specs
            .into_iter()
            .map(|spec| {
                let heads = (0..spec.partitions)
                    .map(|partition| {
                        let name = format!("{}/{partition}", spec.name);
                        Mutex::new(last_offsets.get(&name).map_or(0, |last| last + 1))
                    })
                    .collect();
                Stream {
                    name: spec.name.as_str().into(),
                    spec,
                    heads,
                }
            })
            .collect();
        Streams { streams }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.streams.iter()
    }

    /// Takes the next offset in each partition `message` is appended to
    /// and calls `write` with them while those partitions stay locked.
    pub fn append<R>(&self, message: &Message, write: impl FnOnce(Vec<Append>) -> R) -> R {
        // Locks are taken in stream order, so two publishes feeding the
        // same streams never wait on each other in a cycle.
        let mut held: Vec<(MutexGuard<'_, u64>, Append)> = Vec::new();
        for stream in &self.streams {
            let feeds = stream
                .spec
                .filters
                .iter()
                .any(|filter| topic::matches(filter, &message.topic));
            if !feeds {
                continue;
            }
            let partition = partition_of(stream.spec.key.key_of(message), stream.spec.partitions);
            let mut head = stream.heads[partition as usize]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let append = Append {
                stream: stream.name.clone(),
                partition,
                offset: *head,
            };
            *head += 1;
            held.push((head, append));
        }
        let appends = held.iter().map(|(_, append)| append.clone()).collect();
        write(appends)
    }
}

impl Stream {
    /// The next offset of each partition.
    pub fn ends(&self) -> Vec<u64> {
        self.heads
            .iter()
            .map(|head| *head.lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::stream::spec::{StreamConfig, check_all};
    use crate::topic::TopicLimits;

    fn spec(name: &str, filter: &str, partitions: u32) -> StreamSpec {
        let config = StreamConfig {
            name: name.into(),
            filters: vec![filter.into()],
            partitions,
            key: "topic:1".into(),
            retention: None,
            max_bytes: None,
            start: "latest".into(),
            max_attempts: 16,
            retry_backoff: vec!["1s".into()],
            max_inflight_per_partition: 1,
            ack_timeout: "30s".into(),
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
        let resumed = HashMap::from([("orders/1".to_string(), 41)]);
        let streams = Streams::new(
            vec![spec("orders", "orders/#", 8), spec("all", "#", 1)],
            &resumed,
        );
        let appended = |topic: &str| streams.append(&message(topic), |appends| appends);
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
        assert_eq!(streams.iter().next().unwrap().ends()[1], 44);
    }
}
