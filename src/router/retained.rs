//! Retained messages: the last retained message per topic, in a trie by
//! topic level, so a wildcard subscription walks only the branches its
//! filter can match instead of every retained message.
//!
//! The store sits behind one `RwLock` (`Retained`), taken for writing by a
//! retained publish for as long as it takes to replace the message and route
//! it, and for reading by a SUBSCRIBE while it registers the subscription and
//! queues what it matches: so a subscriber sees each retained publish either
//! as the retained message or as a live one after it, never both and never
//! an older one after a newer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::protocol::Message;

#[derive(Default)]
struct Node {
    message: Option<Arc<Message>>,
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }
}

#[derive(Default)]
pub struct RetainedTrie {
    root: Node,
    count: usize,
    bytes: usize,
}

impl RetainedTrie {
    /// Stores `message`, or clears its topic when the payload is empty;
    /// returns whether the topic held a message before.
    pub fn set(&mut self, message: Arc<Message>) -> bool {
        let topic = message.topic.clone();
        if message.payload.is_empty() {
            return self.remove(&topic).is_some();
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        self.bytes += message.size();
        self.count += 1;
        let old = node.message.replace(message);
        if let Some(old) = &old {
            self.bytes -= old.size();
            self.count -= 1;
        }
        old.is_some()
    }

    /// Removes the message of `topic`, pruning empty branches.
    pub fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = remove_in(&mut self.root, &levels)?;
        self.count -= 1;
        self.bytes -= removed.size();
        Some(removed)
    }

    /// The message retained on exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Retained messages matching `filter` that have not expired.
    pub fn matching(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut found = Vec::new();
        collect(&self.root, &levels, true, &mut found);
        found.retain(|m| !m.is_expired(now_ms));
        found
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held by retained messages (topics, payloads, properties).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn remove_in(node: &mut Node, levels: &[&str]) -> Option<Arc<Message>> {
    let Some((level, rest)) = levels.split_first() else {
        return node.message.take();
    };
    let child = node.children.get_mut(*level)?;
    let removed = remove_in(child, rest);
    if child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

/// Walks the branches `levels` (a filter) can match. `first` is true at the
/// top, where a wildcard never matches a `$` topic [MQTT-4.7.2-1].
fn collect(node: &Node, levels: &[&str], first: bool, found: &mut Vec<Arc<Message>>) {
    let Some((level, rest)) = levels.split_first() else {
        found.extend(node.message.clone());
        return;
    };
    match *level {
        "#" => {
            // `a/#` matches `a` itself too.
            found.extend(node.message.clone());
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    collect_all(child, found);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    collect(child, rest, false, found);
                }
            }
        }
        exact => {
            if let Some(child) = node.children.get(exact) {
                collect(child, rest, false, found);
            }
        }
    }
}

fn collect_all(node: &Node, found: &mut Vec<Arc<Message>>) {
    found.extend(node.message.clone());
    for child in node.children.values() {
        collect_all(child, found);
    }
}

/// The retained store behind its one lock (see the module note).
#[derive(Default)]
pub struct Retained {
    trie: RwLock<RetainedTrie>,
}

impl Retained {
    pub fn new() -> Retained {
        Retained::default()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, RetainedTrie> {
        self.trie
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, RetainedTrie> {
        self.trie
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    fn topics(mut found: Vec<Arc<Message>>) -> Vec<String> {
        found.sort_by(|a, b| a.topic.cmp(&b.topic));
        found.iter().map(|m| m.topic.to_string()).collect()
    }

    #[test]
    fn set_replace_and_clear_keep_count_and_bytes() {
        let mut store = RetainedTrie::default();
        assert!(!store.set(retained("a/b", b"1", None)));
        assert!(store.set(retained("a/b", b"22", None)));
        assert_eq!(store.len(), 1);
        assert_eq!(store.bytes(), "a/b".len() + 2);
        assert_eq!(&store.matching("a/b", 0)[0].payload[..], b"22");
        assert!(store.set(retained("a/b", b"", None)));
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
        assert!(store.root.children.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn wildcard_lookup_walks_only_matching_branches_and_skips_expired() {
        let mut store = RetainedTrie::default();
        for topic in ["a/b", "a/c/d", "a", "b/b", "$SYS/x", "/x"] {
            store.set(retained(topic, b"1", None));
        }
        store.set(retained("a/e", b"1", Some(100)));
        assert_eq!(topics(store.matching("a/+", 0)), ["a/b", "a/e"]);
        assert_eq!(topics(store.matching("a/+", 100)), ["a/b"]);
        assert_eq!(topics(store.matching("a/#", 100)), ["a", "a/b", "a/c/d"]);
        assert_eq!(
            topics(store.matching("#", 100)),
            ["/x", "a", "a/b", "a/c/d", "b/b"]
        );
        assert_eq!(topics(store.matching("+/b", 0)), ["a/b", "b/b"]);
        assert_eq!(topics(store.matching("+/x", 0)), ["/x"]);
        assert_eq!(topics(store.matching("$SYS/#", 0)), ["$SYS/x"]);
        assert_eq!(topics(store.matching("a/c/d", 0)), ["a/c/d"]);
        assert!(store.get("a/c").is_none());
    }

    /// The trie against the plain filter matcher over random topics.
    #[test]
    fn matches_what_topic_matching_says() {
        let mut store = RetainedTrie::default();
        let names = ["a", "b", "$s", ""];
        let mut all = Vec::new();
        for x in names {
            for y in names {
                for depth in 1..=3 {
                    let topic = [x, y, "c"][..depth].join("/");
                    if crate::topic::validate_name(
                        &topic,
                        crate::topic::TopicLimits {
                            max_length: 64,
                            max_levels: 8,
                        },
                    )
                    .is_ok()
                    {
                        store.set(retained(&topic, b"1", None));
                        all.push(topic);
                    }
                }
            }
        }
        for filter in [
            "#", "+", "+/+", "a/#", "+/b/#", "$s/#", "+/+/c", "/#", "+/", "a/+/c",
        ] {
            let mut expected: Vec<String> = all
                .iter()
                .filter(|t| crate::topic::matches(filter, t))
                .cloned()
                .collect();
            expected.sort();
            expected.dedup();
            assert_eq!(topics(store.matching(filter, 0)), expected, "{filter}");
        }
    }
}
