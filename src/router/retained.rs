//! Retained messages: the last retained message per topic.

use std::sync::Arc;

use dashmap::DashMap;

use super::Message;
use crate::topic;

#[derive(Default)]
pub struct RetainedStore {
    by_topic: DashMap<Arc<str>, Arc<Message>>,
}

impl RetainedStore {
    pub fn new() -> RetainedStore {
        RetainedStore::default()
    }

    /// Stores `message`, or clears the topic when its payload is empty.
    /// Returns whether the topic now holds a message.
    pub fn set(&self, message: Arc<Message>) -> bool {
        if message.payload.is_empty() {
            self.by_topic.remove(&message.topic);
            false
        } else {
            self.by_topic.insert(message.topic.clone(), message);
            true
        }
    }

    /// Retained messages matching `filter` that have not expired.
    pub fn matching(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        if !filter.contains(['+', '#']) {
            return self
                .by_topic
                .get(filter)
                .map(|entry| entry.value().clone())
                .filter(|m| !m.is_expired(now_ms))
                .into_iter()
                .collect();
        }
        self.by_topic
            .iter()
            .filter(|entry| topic::matches(filter, entry.key()))
            .map(|entry| entry.value().clone())
            .filter(|m| !m.is_expired(now_ms))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use bytes::Bytes;

    fn retained(topic: &str, payload: &'static [u8], expires_at: Option<u64>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at,
            publisher: None,
        })
    }

    #[test]
    fn set_replace_and_clear() {
        let store = RetainedStore::new();
        assert!(store.set(retained("a/b", b"1", None)));
        assert!(store.set(retained("a/b", b"2", None)));
        assert_eq!(&store.matching("a/b", 0)[0].payload[..], b"2");
        assert!(!store.set(retained("a/b", b"", None)));
        assert!(store.is_empty());
    }

    #[test]
    fn wildcard_lookup_and_expiry() {
        let store = RetainedStore::new();
        store.set(retained("a/b", b"1", None));
        store.set(retained("a/c", b"1", Some(100)));
        store.set(retained("$SYS/x", b"1", None));
        assert_eq!(store.matching("a/+", 0).len(), 2);
        assert_eq!(store.matching("a/+", 100).len(), 1);
        assert_eq!(store.matching("#", 0).len(), 2);
        assert_eq!(store.matching("$SYS/#", 0).len(), 1);
    }
}
