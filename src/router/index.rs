//! The subscription index: a topic trie sharded by first topic level.
//!
//! Each first level (`sensors`, `devices`, ...) owns its subtree inside one
//! DashMap entry, so a publish takes a shard read lock only for its own first
//! level, and publishes on different first levels never touch the same lock.
//! Filters that start with a wildcard (`+/...`, `#`) would otherwise sit in
//! two entries every publish reads; they are kept instead in a few stripes,
//! each a full copy behind its own lock: a publish reads the stripe of its
//! thread, and the rare SUBSCRIBE to such a filter writes them all. No lock
//! is held across an `.await`: every method here is synchronous.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

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

/// One level of the trie. Kept small: most nodes of a large index hold one
/// child or one subscriber, so lists are used until they grow long.
#[derive(Default)]
struct Node {
    direct: Direct,
    #[expect(
        clippy::box_collection,
        reason = "a pointer inline instead of a map: most nodes have no shared group"
    )]
    shared: Option<Box<HashMap<Box<str>, SharedGroup>>>,
    children: Children,
}

/// Lists longer than this become maps, so a popular filter or a wide level
/// stays fast to change.
const LIST_LIMIT: usize = 32;

/// Grows a short list by about half, not double: small nodes stay small.
fn push_compact<T>(list: &mut Vec<T>, item: T) {
    if list.len() == list.capacity() {
        list.reserve_exact(list.len() / 2 + 1);
    }
    list.push(item);
}

/// The non-shared subscribers of a node, one per client id. The map is
/// boxed so that the enum is no larger than the list.
#[expect(clippy::box_collection, reason = "keeps every node small")]
enum Direct {
    List(Vec<Subscriber>),
    Map(Box<HashMap<Arc<str>, Subscriber>>),
}

impl Default for Direct {
    fn default() -> Self {
        Direct::List(Vec::new())
    }
}

impl Direct {
    fn is_empty(&self) -> bool {
        match self {
            Direct::List(list) => list.is_empty(),
            Direct::Map(map) => map.is_empty(),
        }
    }

    /// Adds or replaces the subscriber of its client id; returns whether
    /// one existed.
    fn insert(&mut self, subscriber: Subscriber) -> bool {
        match self {
            Direct::List(list) => {
                let client_id = subscriber.session.client_id();
                if let Some(existing) = list.iter_mut().find(|s| s.session.client_id() == client_id)
                {
                    *existing = subscriber;
                    return true;
                }
                if list.len() < LIST_LIMIT {
                    push_compact(list, subscriber);
                    return false;
                }
                let mut map: HashMap<Arc<str>, Subscriber> = list
                    .drain(..)
                    .map(|s| (s.session.client_id().clone(), s))
                    .collect();
                map.insert(subscriber.session.client_id().clone(), subscriber);
                *self = Direct::Map(Box::new(map));
                false
            }
            Direct::Map(map) => map
                .insert(subscriber.session.client_id().clone(), subscriber)
                .is_some(),
        }
    }

    /// Removes `session`'s subscriber, if it is that session's.
    fn remove(&mut self, session: &Arc<Session>) -> bool {
        match self {
            Direct::List(list) => {
                let before = list.len();
                list.retain(|s| !Arc::ptr_eq(&s.session, session));
                list.len() != before
            }
            Direct::Map(map) => match map.get(session.client_id()) {
                Some(existing) if Arc::ptr_eq(&existing.session, session) => {
                    map.remove(session.client_id());
                    true
                }
                _ => false,
            },
        }
    }

    fn for_each(&self, f: impl FnMut(&Subscriber)) {
        match self {
            Direct::List(list) => list.iter().for_each(f),
            Direct::Map(map) => map.values().for_each(f),
        }
    }
}

/// The children of a node by level name. The map is boxed so that the enum
/// is no larger than the list.
#[expect(clippy::box_collection, reason = "keeps every node small")]
enum Children {
    List(Vec<(Box<str>, Node)>),
    Map(Box<HashMap<Box<str>, Node>>),
}

impl Default for Children {
    fn default() -> Self {
        Children::List(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Children::List(list) => list.is_empty(),
            Children::Map(map) => map.is_empty(),
        }
    }

    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Children::List(list) => list.iter().find(|(l, _)| &**l == level).map(|(_, n)| n),
            Children::Map(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Children::List(list) => list.iter_mut().find(|(l, _)| &**l == level).map(|(_, n)| n),
            Children::Map(map) => map.get_mut(level),
        }
    }

    fn get_or_default(&mut self, level: &str) -> &mut Node {
        let found = match self {
            Children::List(list) => list.iter().position(|(l, _)| &**l == level),
            Children::Map(_) => None,
        };
        if let Children::List(list) = self
            && found.is_none()
            && list.len() >= LIST_LIMIT
        {
            let map: HashMap<Box<str>, Node> = list.drain(..).collect();
            *self = Children::Map(Box::new(map));
        }
        match self {
            Children::List(list) => {
                let at = found.unwrap_or_else(|| {
                    push_compact(list, (level.into(), Node::default()));
                    list.len() - 1
                });
                &mut list[at].1
            }
            Children::Map(map) => map.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::List(list) => list.retain(|(l, _)| &**l != level),
            Children::Map(map) => {
                map.remove(level);
            }
        }
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_none() && self.children.is_empty()
    }

    /// Adds or replaces a subscription at the end of `levels`; returns
    /// whether one existed already.
    fn insert<'a>(
        &mut self,
        levels: impl Iterator<Item = &'a str>,
        group: Option<&str>,
        subscriber: Subscriber,
    ) -> bool {
        let mut node = self;
        for level in levels {
            node = node.children.get_or_default(level);
        }
        match group {
            None => node.direct.insert(subscriber),
            Some(group) => {
                let groups = node.shared.get_or_insert_default();
                let members = &mut groups.entry(group.into()).or_default().members;
                let client_id = subscriber.session.client_id();
                match members
                    .iter_mut()
                    .find(|m| m.session.client_id() == client_id)
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
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    /// Round-robin position; atomic because matching only holds a read lock.
    cursor: AtomicUsize,
}

/// Copies of the wildcard-rooted part of the trie.
const STRIPES: usize = 8;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The stripe this thread reads: threads are spread over the stripes in the
/// order they first publish.
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|stripe| {
        if stripe.get() == usize::MAX {
            stripe.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        stripe.get()
    })
}

pub struct SubscriptionIndex {
    roots: DashMap<Box<str>, Node>,
    /// Each stripe is a root node whose children are `+` and `#` only.
    wildcard: Box<[RwLock<Node>]>,
    /// Subscriptions held in `wildcard`, so publishes skip it when none.
    wildcard_count: AtomicUsize,
}

impl Default for SubscriptionIndex {
    fn default() -> Self {
        SubscriptionIndex {
            roots: DashMap::new(),
            wildcard: (0..STRIPES).map(|_| RwLock::default()).collect(),
            wildcard_count: AtomicUsize::new(0),
        }
    }
}

fn is_wildcard_root(first: &str) -> bool {
    first == "+" || first == "#"
}

impl SubscriptionIndex {
    pub fn new() -> SubscriptionIndex {
        SubscriptionIndex::default()
    }

    /// Adds or replaces a subscription; returns whether one existed already.
    pub fn subscribe(&self, filter: &str, group: Option<&str>, subscriber: Subscriber) -> bool {
        let mut levels = filter.split('/');
        let first = levels.next().unwrap_or_default();
        if is_wildcard_root(first) {
            let mut existed = false;
            for stripe in self.wildcard.iter() {
                let mut root = stripe.write().unwrap_or_else(|p| p.into_inner());
                existed = root.insert(filter.split('/'), group, subscriber.clone());
            }
            if !existed {
                self.wildcard_count.fetch_add(1, Ordering::Relaxed);
            }
            return existed;
        }
        let mut root = self.roots.entry(first.into()).or_default();
        root.insert(levels, group, subscriber)
    }

    /// Removes `session`'s subscription; returns whether it existed. Entries
    /// are matched by session, not client id, so an ended session can never
    /// remove the subscription of the new session with its client id.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, session: &Arc<Session>) -> bool {
        // `split` yields at least one level, even for an empty filter.
        let levels: Vec<&str> = filter.split('/').collect();
        let (first, rest) = (levels[0], &levels[1..]);
        if is_wildcard_root(first) {
            let mut removed = false;
            for stripe in self.wildcard.iter() {
                let mut root = stripe.write().unwrap_or_else(|p| p.into_inner());
                removed = remove_in(&mut root, &levels, group, session);
            }
            if removed {
                self.wildcard_count.fetch_sub(1, Ordering::Relaxed);
            }
            return removed;
        }
        let Some(mut root) = self.roots.get_mut(first) else {
            return false;
        };
        let removed = remove_in(&mut root, rest, group, session);
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
        let mut collector = Collector::new(publisher);
        let mut levels = topic.split('/');
        let first = levels.next().unwrap_or_default();
        let rest: Vec<&str> = levels.collect();
        if let Some(root) = self.roots.get(first) {
            collect(&root, &rest, &mut collector);
        }
        // A leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
        if !topic.starts_with('$') && self.wildcard_count.load(Ordering::Relaxed) > 0 {
            let stripe = self.wildcard[my_stripe()]
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(plus) = stripe.children.get("+") {
                collect(plus, &rest, &mut collector);
            }
            if let Some(hash) = stripe.children.get("#") {
                collector.add_node(hash);
            }
        }
        collector.finish()
    }
}

fn remove_in(
    node: &mut Node,
    levels: &[&str],
    group: Option<&str>,
    session: &Arc<Session>,
) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match group {
            None => node.direct.remove(session),
            Some(group) => {
                let Some(groups) = &mut node.shared else {
                    return false;
                };
                let Some(shared) = groups.get_mut(group) else {
                    return false;
                };
                let before = shared.members.len();
                shared.members.retain(|m| !Arc::ptr_eq(&m.session, session));
                let removed = shared.members.len() != before;
                if shared.members.is_empty() {
                    groups.remove(group);
                }
                if groups.is_empty() {
                    node.shared = None;
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(level) else {
        return false;
    };
    let removed = remove_in(child, rest, group, session);
    if child.is_empty() {
        node.children.remove(level);
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
            if let Some(child) = node.children.get(level) {
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
    /// One per session with a matching non-shared subscription, folded.
    direct: Vec<Match>,
    /// One per matching shared group: never folded [MQTT-4.8.2].
    shared: Vec<Match>,
    /// Session -> its entry in `direct`, built once there are enough
    /// matches that looking through them would cost more than hashing, so
    /// folding stays linear in the number of matches.
    positions: HashMap<*const Session, usize>,
}

/// Up to this many sessions, folding searches the list itself.
const FOLD_SCAN: usize = 16;

impl Collector<'_> {
    fn new(publisher: Option<&str>) -> Collector<'_> {
        Collector {
            publisher,
            direct: Vec::new(),
            shared: Vec::new(),
            positions: HashMap::new(),
        }
    }

    fn add_node(&mut self, node: &Node) {
        node.direct.for_each(|subscriber| {
            let own = self.publisher == Some(&**subscriber.session.client_id());
            if !(subscriber.options.no_local && own) {
                self.add_direct(subscriber);
            }
        });
        for group in node.shared.iter().flat_map(|groups| groups.values()) {
            if let Some(member) = pick_member(group) {
                self.shared.push(new_match(member));
            }
        }
    }

    fn add_direct(&mut self, subscriber: &Subscriber) {
        match self.position(&subscriber.session) {
            Some(at) => {
                let found = &mut self.direct[at];
                found.qos = found.qos.max(subscriber.options.qos);
                found.retain_as_published |= subscriber.options.retain_as_published;
                found.subscription_ids.extend(subscriber.id);
            }
            None => {
                if !self.positions.is_empty() {
                    self.positions
                        .insert(Arc::as_ptr(&subscriber.session), self.direct.len());
                }
                self.direct.push(new_match(subscriber));
            }
        }
    }

    /// Where `session` already has a match, in constant time once the list
    /// is long.
    fn position(&mut self, session: &Arc<Session>) -> Option<usize> {
        if self.positions.is_empty() {
            if self.direct.len() < FOLD_SCAN {
                return self
                    .direct
                    .iter()
                    .position(|m| Arc::ptr_eq(&m.session, session));
            }
            for (at, m) in self.direct.iter().enumerate() {
                self.positions.insert(Arc::as_ptr(&m.session), at);
            }
        }
        self.positions.get(&Arc::as_ptr(session)).copied()
    }

    fn finish(mut self) -> Vec<Match> {
        self.direct.append(&mut self.shared);
        self.direct
    }
}

fn new_match(subscriber: &Subscriber) -> Match {
    Match {
        session: subscriber.session.clone(),
        qos: subscriber.options.qos,
        retain_as_published: subscriber.options.retain_as_published,
        subscription_ids: subscriber.id.into_iter().collect(),
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
        assert!(index.unsubscribe("x/y/z", None, &a));
        assert!(!index.unsubscribe("x/y/z", None, &a));
        assert!(index.roots.is_empty());
        index.subscribe("t", Some("g"), sub(&a, QoS::AtMostOnce, None));
        assert!(index.unsubscribe("t", Some("g"), &a));
        assert!(index.roots.is_empty());
        assert!(!index.subscribe("#", None, sub(&a, QoS::AtMostOnce, None)));
        assert!(index.subscribe("#", None, sub(&a, QoS::AtLeastOnce, None)));
        assert_eq!(index.wildcard_count.load(Ordering::Relaxed), 1);
        assert!(index.unsubscribe("#", None, &a));
        assert_eq!(index.wildcard_count.load(Ordering::Relaxed), 0);
        assert!(index.matches("x", None).is_empty());
        for stripe in index.wildcard.iter() {
            assert!(stripe.read().unwrap().is_empty(), "every stripe pruned");
        }
    }

    #[test]
    fn an_ended_session_cannot_remove_the_subscription_of_its_successor() {
        let index = SubscriptionIndex::new();
        let (old, new) = (session("c"), session("c"));
        index.subscribe("t", None, sub(&old, QoS::AtMostOnce, None));
        index.subscribe("t", None, sub(&new, QoS::AtMostOnce, None));
        assert!(!index.unsubscribe("t", None, &old));
        let matches = index.matches("t", None);
        assert_eq!(matches.len(), 1);
        assert!(Arc::ptr_eq(&matches[0].session, &new));
    }

    #[test]
    fn many_sessions_with_overlapping_subscriptions_fold_one_each() {
        let index = SubscriptionIndex::new();
        let sessions: Vec<_> = (0..100).map(|i| session(&format!("s{i}"))).collect();
        for (i, s) in sessions.iter().enumerate() {
            let id = i as u32 + 1;
            index.subscribe("a/#", None, sub(s, QoS::AtMostOnce, Some(id)));
            index.subscribe("a/+", None, sub(s, QoS::AtLeastOnce, Some(id + 1000)));
            index.subscribe("+/b", None, sub(s, QoS::ExactlyOnce, None));
        }
        index.subscribe(
            "a/b",
            Some("g"),
            sub(&sessions[0], QoS::AtMostOnce, Some(7)),
        );
        let matches = index.matches("a/b", None);
        assert_eq!(matches.len(), 101, "one per session, plus the shared copy");
        let direct: Vec<&Match> = matches
            .iter()
            .filter(|m| m.subscription_ids != [7])
            .collect();
        assert_eq!(direct.len(), 100);
        for m in direct {
            assert_eq!(m.qos, QoS::ExactlyOnce);
            assert_eq!(m.subscription_ids.len(), 2);
        }
    }

    /// The trie against brute-force matching over random subscriptions,
    /// subscribes and unsubscribes, enough of them that nodes outgrow
    /// their short lists.
    #[test]
    fn matches_what_filter_matching_says() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut random = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let levels = ["a", "b", "c", "$x", "+", "#", ""];
        let sessions: Vec<_> = (0..60).map(|i| session(&format!("s{i}"))).collect();
        let index = SubscriptionIndex::new();
        let mut model: Vec<(String, usize)> = Vec::new();
        for _ in 0..4_000 {
            let depth = 1 + random(3);
            let mut parts: Vec<&str> = (0..depth).map(|_| levels[random(levels.len())]).collect();
            if let Some(at) = parts.iter().position(|p| *p == "#") {
                parts.truncate(at + 1);
            }
            let filter = parts.join("/");
            let who = random(sessions.len());
            if random(4) == 0 {
                let removed = index.unsubscribe(&filter, None, &sessions[who]);
                let before = model.len();
                model.retain(|(f, s)| !(f == &filter && *s == who));
                assert_eq!(removed, model.len() != before, "unsubscribe {filter}");
            } else {
                index.subscribe(&filter, None, sub(&sessions[who], QoS::AtMostOnce, None));
                if !model.iter().any(|(f, s)| f == &filter && *s == who) {
                    model.push((filter, who));
                }
            }
        }
        for topic in ["a", "a/b", "b/c/a", "$x/a", "/a", "a/", "c/c/c", "$x", ""] {
            if topic.is_empty() {
                continue;
            }
            let mut expected: Vec<String> = model
                .iter()
                .filter(|(f, _)| crate::topic::matches(f, topic))
                .map(|(_, s)| format!("s{s}"))
                .collect();
            expected.sort();
            expected.dedup();
            assert_eq!(ids(&index.matches(topic, None)), expected, "{topic}");
        }
    }

    #[test]
    fn a_wide_level_keeps_working_past_its_short_list() {
        let index = SubscriptionIndex::new();
        let sessions: Vec<_> = (0..100).map(|i| session(&format!("s{i}"))).collect();
        for (i, s) in sessions.iter().enumerate() {
            index.subscribe(&format!("w/{i}"), None, sub(s, QoS::AtMostOnce, None));
        }
        for i in [0, 31, 32, 99] {
            assert_eq!(
                ids(&index.matches(&format!("w/{i}"), None)),
                [format!("s{i}")]
            );
        }
        for (i, s) in sessions.iter().enumerate() {
            assert!(index.unsubscribe(&format!("w/{i}"), None, s));
        }
        assert!(index.roots.is_empty());
    }
}
