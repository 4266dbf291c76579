//! The subscription index: a topic trie sharded by first topic level.
//!
//! Each first level (`sensors`, `+`, `#`, ...) owns its subtree inside one
//! DashMap entry, so a publish takes shard read locks only for its own first
//! level and the two leading-wildcard roots, and publishes on different first
//! levels never touch the same lock. No lock is held across an `.await`: every
//! method here is synchronous.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::protocol::{QoS, SubscriptionOptions};
use crate::session::Session;

/// One subscription of one session to one filter.
#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// Where one message goes for one session: overlapping subscriptions of the
/// session are folded into one delivery at the highest QoS, carrying every
/// matching subscription identifier.
pub struct Match {
    pub session: Arc<Session>,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Default)]
struct Node {
    direct: HashMap<Arc<str>, Subscriber>,
    shared: HashMap<String, SharedGroup>,
    children: HashMap<String, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty() && self.children.is_empty()
    }
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    /// Round-robin position; atomic because matching only holds a read lock.
    cursor: AtomicUsize,
}

#[derive(Default)]
pub struct SubscriptionIndex {
    roots: DashMap<String, Node>,
}

impl SubscriptionIndex {
    pub fn new() -> SubscriptionIndex {
        SubscriptionIndex::default()
    }

    /// Adds or replaces a subscription; returns whether one existed already.
    pub fn subscribe(&self, filter: &str, group: Option<&str>, subscriber: Subscriber) -> bool {
        let mut levels = filter.split('/');
        let first = levels.next().unwrap_or_default();
        let mut root = self.roots.entry(first.to_string()).or_default();
        let mut node: &mut Node = &mut root;
        for level in levels {
            node = node.children.entry(level.to_string()).or_default();
        }
        let client_id = subscriber.session.client_id().clone();
        match group {
            None => node.direct.insert(client_id, subscriber).is_some(),
            Some(group) => {
                let members = &mut node.shared.entry(group.to_string()).or_default().members;
                match members
                    .iter_mut()
                    .find(|m| m.session.client_id() == &client_id)
                {
                    Some(existing) => {
                        *existing = subscriber;
                        true
                    }
                    None => {
                        members.push(subscriber);
                        false
                    }
                }
            }
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, client_id: &str) -> bool {
        let mut levels = filter.split('/');
        let first = levels.next().unwrap_or_default();
        let rest: Vec<&str> = levels.collect();
        let Some(mut root) = self.roots.get_mut(first) else {
            return false;
        };
        let removed = remove_in(&mut root, &rest, group, client_id);
        let now_empty = root.is_empty();
        drop(root);
        if now_empty {
            self.roots.remove_if(first, |_, node| node.is_empty());
        }
        removed
    }

    /// Every session a message on `topic` goes to. `publisher` is left out of
    /// subscriptions that asked for No Local.
    pub fn matches(&self, topic: &str, publisher: Option<&str>) -> Vec<Match> {
        let mut collector = Collector {
            publisher,
            matches: Vec::new(),
        };
        let mut levels = topic.split('/');
        let first = levels.next().unwrap_or_default();
        let rest: Vec<&str> = levels.collect();
        if let Some(root) = self.roots.get(first) {
            collect(&root, &rest, &mut collector);
        }
        // A leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
        if !topic.starts_with('$') {
            if let Some(root) = self.roots.get("+") {
                collect(&root, &rest, &mut collector);
            }
            if let Some(root) = self.roots.get("#") {
                collector.add_node(&root);
            }
        }
        collector.matches
    }
}

fn remove_in(node: &mut Node, levels: &[&str], group: Option<&str>, client_id: &str) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match group {
            None => node.direct.remove(client_id).is_some(),
            Some(group) => {
                let Entry::Occupied(mut entry) = node.shared.entry(group.to_string()) else {
                    return false;
                };
                let members = &mut entry.get_mut().members;
                let before = members.len();
                members.retain(|m| &**m.session.client_id() != client_id);
                let removed = members.len() != before;
                if members.is_empty() {
                    entry.remove();
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*level) else {
        return false;
    };
    let removed = remove_in(child, rest, group, client_id);
    if child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

fn collect(node: &Node, levels: &[&str], out: &mut Collector) {
    // `#` also matches the parent level itself: `a/#` matches `a`.
    if let Some(hash) = node.children.get("#") {
        out.add_node(hash);
    }
    match levels.split_first() {
        None => out.add_node(node),
        Some((level, rest)) => {
            if let Some(child) = node.children.get(*level) {
                collect(child, rest, out);
            }
            if let Some(plus) = node.children.get("+") {
                collect(plus, rest, out);
            }
        }
    }
}

struct Collector<'a> {
    publisher: Option<&'a str>,
    matches: Vec<Match>,
}

impl Collector<'_> {
    fn add_node(&mut self, node: &Node) {
        for subscriber in node.direct.values() {
            let own = self.publisher == Some(&**subscriber.session.client_id());
            if subscriber.options.no_local && own {
                continue;
            }
            self.add(subscriber, true);
        }
        for group in node.shared.values() {
            if let Some(member) = pick_member(group) {
                self.add(member, false);
            }
        }
    }

    /// Folds `subscriber` into the session's existing match when `merge` is
    /// set; shared subscriptions always deliver their own copy.
    fn add(&mut self, subscriber: &Subscriber, merge: bool) {
        let existing = merge.then(|| {
            self.matches
                .iter_mut()
                .find(|m| Arc::ptr_eq(&m.session, &subscriber.session))
        });
        match existing.flatten() {
            Some(found) => {
                found.qos = found.qos.max(subscriber.options.qos);
                found.retain_as_published |= subscriber.options.retain_as_published;
                found.subscription_ids.extend(subscriber.id);
            }
            None => self.matches.push(Match {
                session: subscriber.session.clone(),
                qos: subscriber.options.qos,
                retain_as_published: subscriber.options.retain_as_published,
                subscription_ids: subscriber.id.into_iter().collect(),
            }),
        }
    }
}

/// Round robin over the group, skipping members that are offline while any
/// member is online.
fn pick_member(group: &SharedGroup) -> Option<&Subscriber> {
    let count = group.members.len();
    if count == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed);
    (0..count)
        .map(|offset| &group.members[(start + offset) % count])
        .find(|member| member.session.is_online())
        .or_else(|| group.members.get(start % count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionConfig;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), SessionConfig::for_tests()))
    }

    fn sub(session: &Arc<Session>, qos: QoS, id: Option<u32>) -> Subscriber {
        Subscriber {
            session: session.clone(),
            options: SubscriptionOptions::with_qos(qos),
            id,
        }
    }

    fn ids(matches: &[Match]) -> Vec<String> {
        let mut ids: Vec<String> = matches
            .iter()
            .map(|m| m.session.client_id().to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn wildcards_match_through_the_trie() {
        let index = SubscriptionIndex::new();
        let (a, b, c, d) = (session("a"), session("b"), session("c"), session("d"));
        index.subscribe("sport/#", None, sub(&a, QoS::AtMostOnce, None));
        index.subscribe("sport/+/score", None, sub(&b, QoS::AtMostOnce, None));
        index.subscribe("#", None, sub(&c, QoS::AtMostOnce, None));
        index.subscribe("+/tennis/+", None, sub(&d, QoS::AtMostOnce, None));
        assert_eq!(ids(&index.matches("sport", None)), ["a", "c"]);
        assert_eq!(
            ids(&index.matches("sport/tennis/score", None)),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(&index.matches("news", None)), ["c"]);
        assert!(index.matches("$SYS/tennis/x", None).is_empty());
    }

    #[test]
    fn overlapping_subscriptions_fold_into_one_match() {
        let index = SubscriptionIndex::new();
        let a = session("a");
        index.subscribe("a/#", None, sub(&a, QoS::AtMostOnce, Some(1)));
        index.subscribe("a/+", None, sub(&a, QoS::ExactlyOnce, Some(2)));
        let matches = index.matches("a/b", None);
        assert_eq!(matches.len(), 1);
        assert_eq!(matches[0].qos, QoS::ExactlyOnce);
        let mut sub_ids = matches[0].subscription_ids.clone();
        sub_ids.sort();
        assert_eq!(sub_ids, [1, 2]);
    }

    #[test]
    fn no_local_skips_the_publisher_only() {
        let index = SubscriptionIndex::new();
        let (a, b) = (session("a"), session("b"));
        let mut own = sub(&a, QoS::AtMostOnce, None);
        own.options.no_local = true;
        index.subscribe("t", None, own);
        index.subscribe("t", None, sub(&b, QoS::AtMostOnce, None));
        assert_eq!(ids(&index.matches("t", Some("a"))), ["b"]);
        assert_eq!(ids(&index.matches("t", Some("b"))), ["a", "b"]);
    }

    #[test]
    fn shared_groups_take_turns() {
        let index = SubscriptionIndex::new();
        let (a, b) = (session("a"), session("b"));
        index.subscribe("t", Some("g"), sub(&a, QoS::AtMostOnce, None));
        index.subscribe("t", Some("g"), sub(&b, QoS::AtMostOnce, None));
        let picks: Vec<String> = (0..4)
            .flat_map(|_| ids(&index.matches("t", None)))
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "a").count(), 2);
        assert_eq!(picks.iter().filter(|p| *p == "b").count(), 2);
    }

    #[test]
    fn unsubscribe_removes_and_prunes() {
        let index = SubscriptionIndex::new();
        let a = session("a");
        assert!(!index.subscribe("x/y/z", None, sub(&a, QoS::AtMostOnce, None)));
        assert!(index.subscribe("x/y/z", None, sub(&a, QoS::AtLeastOnce, None)));
        assert!(index.unsubscribe("x/y/z", None, "a"));
        assert!(!index.unsubscribe("x/y/z", None, "a"));
        assert!(index.roots.is_empty());
        index.subscribe("t", Some("g"), sub(&a, QoS::AtMostOnce, None));
        assert!(index.unsubscribe("t", Some("g"), "a"));
        assert!(index.roots.is_empty());
    }
}
