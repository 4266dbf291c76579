//! The harness of the stream tests (`streams.rs`): the stream they read,
//! what is published to it, the clients reading it as group members, and
//! what such a group must have received.
//!
//! The stream takes `petrel-interop/{test}/{seed}/stream/{key}` (the topics
//! `Ctx` makes), keyed by topic level 4, in 8 partitions with one
//! unacknowledged delivery per partition at a time. Messages are
//! `{key}/{seq}`, published in rounds: each round one message per key.
//! Every member prints each message's properties, so the checks see the v5
//! user properties `stream`, `partition`, `offset` and `key`, and that a
//! 3.1.1 member gets none.
//!
//! A group is held to the owners petrel's documented assignment
//! (`petrel::stream::assign`: members sorted by id, partitions dealt in
//! ranges) gives at each stage of its membership: a key's messages reach
//! only the owners of its partition, in order across the hand-overs, and
//! each once, except the one delivery per partition that was unacknowledged
//! when it changed hands, which its next owner gets first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::ops::Range;
use std::task::Poll;

use petrel::stream::{StreamConfig, assign, partition_of};
use tokio::time::Instant;

use crate::RUMQTTC_V5;
use crate::clients::{Client, Ctx, PublishProperties, SubscribeExtras, Version, parse_properties};
use crate::common::WAIT;
use crate::process::{Proc, Read, Received};

pub const STREAM: &str = "interop";
const PARTITIONS: u32 = 8;
/// The topic level that is the key: `petrel-interop/{test}/{seed}/stream/{key}`.
const KEY_LEVEL: usize = 4;
/// Keys per round.
pub const KEYS: usize = 100;

pub fn interop_stream() -> StreamConfig {
    StreamConfig {
        partitions: PARTITIONS,
        key: format!("topic:{KEY_LEVEL}"),
        // Longer than any test, so only a member's leaving hands its
        // unacknowledged deliveries on.
        ack_timeout: "60s".into(),
        ..StreamConfig::new(STREAM, &["petrel-interop/+/+/stream/#"])
    }
}

/// The messages published to the stream, in the order petrel appended them.
pub struct Feed {
    prefix: String,
    keys: Vec<String>,
    index: HashMap<String, usize>,
    /// `(key, seq)` in publish order.
    pub published: Vec<(usize, u32)>,
    /// The v5 properties every message was published with, if any.
    properties: Option<PublishProperties>,
}

impl Feed {
    pub fn new(ctx: &Ctx, keys: usize) -> Feed {
        let prefix = ctx.topic("stream");
        let keys: Vec<String> = (0..keys).map(|k| format!("k{k:02}")).collect();
        let sample = format!("{prefix}/{}", keys[0]);
        assert_eq!(
            sample.split('/').nth(KEY_LEVEL),
            Some(keys[0].as_str()),
            "the stream's key is topic level {KEY_LEVEL} of {sample}"
        );
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        Feed {
            prefix,
            keys,
            index,
            published: Vec::new(),
            properties: None,
        }
    }

    fn topic(&self, key: usize) -> String {
        format!("{}/{}", self.prefix, self.keys[key])
    }

    fn payload(&self, key: usize, seq: u32) -> String {
        format!("{}/{seq}", self.keys[key])
    }

    pub fn partition(&self, key: usize) -> u32 {
        partition_of(&self.keys[key], PARTITIONS)
    }

    fn round(&self, seqs: Range<u32>) -> Vec<(usize, u32)> {
        seqs.flat_map(|seq| (0..self.keys.len()).map(move |key| (key, seq)))
            .collect()
    }

    /// Publishes one message per key for each of `seqs`, over one rumqttc
    /// connection; returns the range of `published` they took.
    pub async fn publish(&mut self, ctx: &Ctx, seqs: Range<u32>) -> Range<usize> {
        let round = self.round(seqs);
        let messages: Vec<(String, String)> = round
            .iter()
            .map(|&(key, seq)| (self.topic(key), self.payload(key, seq)))
            .collect();
        let refs: Vec<(&str, &str)> = messages
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_str()))
            .collect();
        RUMQTTC_V5.publish(ctx, 1, false, &refs).await;
        let start = self.published.len();
        self.published.extend(round);
        start..self.published.len()
    }

    /// `publish`, one message at a time by `publisher` with `properties`.
    pub async fn publish_with_properties(
        &mut self,
        ctx: &Ctx,
        publisher: Client,
        seqs: Range<u32>,
        properties: PublishProperties,
    ) -> Range<usize> {
        let start = self.published.len();
        for (key, seq) in self.round(seqs) {
            let (topic, payload) = (self.topic(key), self.payload(key, seq));
            publisher
                .publish_with_properties(ctx, 1, &topic, &payload, &properties)
                .await;
            self.published.push((key, seq));
        }
        self.properties = Some(properties);
        start..self.published.len()
    }

    /// The `(key, seq)` a delivery carries, if it is on one of the feed's
    /// topics with a payload that matches.
    fn identify(&self, message: &Received) -> Option<(usize, u32)> {
        let key = message
            .topic
            .strip_prefix(&self.prefix)?
            .strip_prefix('/')?;
        let &index = self.index.get(key)?;
        let (payload_key, seq) = message.payload.split_once('/')?;
        let seq = seq.parse().ok()?;
        (payload_key == key).then_some((index, seq))
    }

    /// Its offset in its partition: dense from 0 in publish order, the
    /// stream having been empty when the test began.
    fn offset(&self, key: usize, seq: u32) -> usize {
        let partition = self.partition(key);
        self.published
            .iter()
            .take_while(|&&m| m != (key, seq))
            .filter(|&&(k, _)| self.partition(k) == partition)
            .count()
    }

    /// Whether `members` (indexes) have printed every message of `wanted`.
    pub fn all_seen(&self, members: &[Member], of: &[usize], wanted: &[(usize, u32)]) -> bool {
        let seen: BTreeSet<(usize, u32)> = of
            .iter()
            .flat_map(|&i| &members[i].got)
            .filter_map(|(message, _)| self.identify(message))
            .collect();
        wanted.iter().all(|m| seen.contains(m))
    }

    /// What the `PROPS` line before a delivery must say: nothing for 3.1.1;
    /// for v5 the published properties, then the stream's user properties.
    fn check_properties(
        &self,
        version: Version,
        (key, seq): (usize, u32),
        line: Option<&str>,
    ) -> Result<(), String> {
        let line = line.ok_or("no PROPS line before it")?;
        let mut got = parse_properties(line);
        if let Version::V311 = version {
            if got.values().all(String::is_empty) {
                return Ok(());
            }
            return Err(format!("a 3.1.1 client got properties: `{line}`"));
        }
        let expiry = got.remove("ex").unwrap_or_default();
        let mut users: Vec<String> = Vec::new();
        let mut expected: BTreeMap<String, String> = ["ct", "rt", "cd", "pf"]
            .into_iter()
            .map(|name| (name.to_string(), String::new()))
            .collect();
        if let Some(p) = &self.properties {
            expected.insert("ct".into(), p.content_type.clone());
            expected.insert("rt".into(), p.response_topic.clone());
            expected.insert("cd".into(), p.correlation_data.clone());
            expected.insert("pf".into(), p.payload_format_indicator.to_string());
            users.extend(p.user.iter().map(|(name, value)| format!("{name}:{value}")));
            let remaining: u32 = expiry
                .parse()
                .map_err(|_| format!("message expiry missing: `{line}`"))?;
            let sent = p.message_expiry_secs;
            if !(sent - WAIT.as_secs() as u32..=sent).contains(&remaining) {
                return Err(format!("message expiry {sent} s arrived as {remaining} s"));
            }
        } else if !expiry.is_empty() {
            return Err(format!("a message expiry nobody set: `{line}`"));
        }
        users.push(format!("stream:{STREAM}"));
        users.push(format!("partition:{}", self.partition(key)));
        users.push(format!("offset:{}", self.offset(key, seq)));
        users.push(format!("key:{}", self.keys[key]));
        expected.insert("up".into(), users.join(" "));
        // A delivery again after a failed attempt (its member left or died
        // with it unacknowledged) also says which attempt it is.
        if let Some(up) = got.get_mut("up")
            && let Some((first, attempt)) = up.rsplit_once(" attempt:")
            && attempt.parse::<u32>().is_ok_and(|n| n >= 2)
        {
            *up = first.to_string();
        }
        if got != expected {
            return Err(format!("`{line}`, expected {expected:?}"));
        }
        Ok(())
    }
}

/// A group member: a client subscribed to a stream, and what it printed.
pub struct Member {
    pub client: Client,
    id: String,
    pub proc: Proc,
    /// Lines of `proc` already read into `got`.
    parsed: usize,
    /// Each message with the `PROPS` line printed before it.
    got: Vec<(Received, Option<String>)>,
    /// It has printed everything it will (it left, or was killed).
    pub ended: bool,
}

impl Member {
    fn parse(&mut self) {
        let lines = self.proc.lines();
        while let Some(line) = lines.get(self.parsed) {
            let properties = line.starts_with("PROPS ").then_some(line);
            let message_line = match properties {
                // Its message is not in yet.
                Some(_) if self.parsed + 1 == lines.len() => return,
                Some(_) => &lines[self.parsed + 1],
                None => line,
            };
            self.parsed += 1 + usize::from(properties.is_some());
            if let Some(message) = Received::parse(message_line) {
                self.got.push((message, properties.cloned()));
            }
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.client.label(), self.id)
    }
}

/// `client` connected as `ctx.client_id(role)` and subscribed to `filter`
/// at `qos`, printing properties. The group has it as a member once this
/// returns: petrel joins the group before it sends the SUBACK.
pub async fn join(
    ctx: &Ctx,
    client: Client,
    role: &str,
    filter: &str,
    qos: u8,
    extras: SubscribeExtras,
) -> Member {
    let id = ctx.client_id(role);
    let extras = SubscribeExtras {
        show_properties: true,
        ..extras
    };
    let proc = client.subscribe_as(ctx, &id, &[filter], qos, extras).await;
    Member {
        client,
        id,
        proc,
        parsed: 0,
        got: Vec::new(),
        ended: false,
    }
}

/// Reads what the members print until `done` holds, within one `WAIT`.
pub async fn read_until(members: &mut [Member], what: &str, done: impl Fn(&[Member]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        for member in members.iter_mut() {
            member.parse();
        }
        if done(members) {
            return;
        }
        let mut reads: Vec<_> = members
            .iter_mut()
            .enumerate()
            .filter(|(_, member)| !member.ended)
            .map(|(i, member)| Box::pin(async move { (i, member.proc.read_line(deadline).await) }))
            .collect();
        // The first member to print a line (`read_line` is cancel-safe).
        let next = poll_fn(|cx| {
            for read in reads.iter_mut() {
                if let Poll::Ready(line) = read.as_mut().poll(cx) {
                    return Poll::Ready(Some(line));
                }
            }
            if reads.is_empty() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        drop(reads);
        let failure = match next {
            Some((_, Read::Line)) => continue,
            Some((i, Read::Eof)) => {
                members[i].ended = true;
                continue;
            }
            Some((_, Read::Timeout)) => format!("timed out after {WAIT:?}"),
            None => "every member has ended".to_string(),
        };
        let reports: Vec<String> = members.iter_mut().map(|m| m.proc.report()).collect();
        panic!("{failure} waiting for {what}\n{}", reports.join("\n"))
    }
}

/// For each partition, the members (indexes) that owned it in turn as the
/// group went through `stages` (its members at each).
pub fn owners(members: &[Member], stages: &[&[usize]]) -> Vec<Vec<usize>> {
    let mut chains = vec![Vec::new(); PARTITIONS as usize];
    for stage in stages {
        let ids: Vec<&str> = stage.iter().map(|&i| members[i].id.as_str()).collect();
        for (id, partitions) in assign(&ids, PARTITIONS) {
            let owner = stage
                .iter()
                .copied()
                .find(|&i| members[i].id == id)
                .expect("partitions go to the members given");
            for partition in partitions {
                let chain: &mut Vec<usize> = &mut chains[partition as usize];
                if chain.last() == Some(&owner) {
                    continue;
                }
                // The checks read each owner's deliveries as one run.
                assert!(
                    !chain.contains(&owner),
                    "{id} gets partition {partition} back: the scenario must avoid that"
                );
                chain.push(owner);
            }
        }
    }
    chains
}

/// Checks what a group printed against `feed.published[read]`, delivered
/// at `qos`; `stages` are its members (indexes) in turn, from the first of
/// those messages on.
pub fn check_group(
    feed: &Feed,
    members: &mut [Member],
    stages: &[&[usize]],
    read: Range<usize>,
    qos: u8,
    scenario: &str,
) {
    let group: BTreeSet<usize> = stages.iter().copied().flatten().copied().collect();
    let chains = owners(members, stages);
    let mut problems: Vec<String> = Vec::new();
    // Key -> member -> seqs, in the order the member printed them.
    let mut by_key: BTreeMap<usize, BTreeMap<usize, Vec<u32>>> = BTreeMap::new();
    // (member, partition) -> the last message of the partition it printed.
    let mut last: BTreeMap<(usize, u32), (usize, u32)> = BTreeMap::new();
    for &index in &group {
        let member = &members[index];
        for (message, properties) in &member.got {
            let Some((key, seq)) = feed.identify(message) else {
                problems.push(format!(
                    "{} got what nobody published: {message:?}",
                    member.name()
                ));
                continue;
            };
            if (message.qos, message.retain) != (qos, false) {
                problems.push(format!(
                    "{} got {message:?}: QoS {qos}, not retained expected",
                    member.name()
                ));
            }
            let version = member.client.version;
            if let Err(problem) = feed.check_properties(version, (key, seq), properties.as_deref())
            {
                problems.push(format!(
                    "{} got {}: {problem}",
                    member.name(),
                    message.payload
                ));
            }
            by_key
                .entry(key)
                .or_default()
                .entry(index)
                .or_default()
                .push(seq);
            last.insert((index, feed.partition(key)), (key, seq));
        }
    }
    let mut expected: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for &(key, seq) in &feed.published[read] {
        expected.entry(key).or_default().push(seq);
    }
    // (partition, member) -> messages the member got first on taking the
    // partition over, which its previous owner had got already.
    let mut again: BTreeMap<(u32, usize), Vec<String>> = BTreeMap::new();
    for key in 0..feed.keys.len() {
        let name = &feed.keys[key];
        let partition = feed.partition(key);
        let chain = &chains[partition as usize];
        let got = by_key.remove(&key).unwrap_or_default();
        for (member, seqs) in &got {
            if !chain.contains(member) {
                problems.push(format!(
                    "{} got {name} {seqs:?} but never owned partition {partition}",
                    members[*member].name()
                ));
            }
        }
        // The last seq delivered, and to whom.
        let mut previous: Option<(u32, usize)> = None;
        let mut in_turn: Vec<u32> = Vec::new();
        for &owner in chain {
            for (n, &seq) in got.get(&owner).into_iter().flatten().enumerate() {
                let who = members[owner].name();
                match previous {
                    Some((p, _)) if seq < p => {
                        problems.push(format!("{name}: {who} got {seq} after {p} was delivered"))
                    }
                    // With one delivery unacknowledged per partition, only
                    // the last the previous owner got can come again.
                    Some((p, before)) if seq == p && n == 0 => {
                        if last.get(&(before, partition)) != Some(&(key, seq)) {
                            problems.push(format!(
                                "{name}: {who} got {seq} again, though {} had gone past it in \
                                 partition {partition}",
                                members[before].name()
                            ));
                        }
                        again
                            .entry((partition, owner))
                            .or_default()
                            .push(format!("{name}/{seq}"));
                    }
                    Some((p, _)) if seq == p => {
                        problems.push(format!("{name}: {who} got {seq} twice"))
                    }
                    _ => {}
                }
                previous = Some((seq, owner));
                in_turn.push(seq);
            }
        }
        in_turn.dedup();
        let want = expected.remove(&key).unwrap_or_default();
        if in_turn != want {
            let turns: Vec<String> = chain.iter().map(|&i| members[i].name()).collect();
            problems.push(format!(
                "{name} (partition {partition}, owned in turn by {turns:?}) was delivered \
                 {in_turn:?}; published {want:?}"
            ));
        }
    }
    for ((partition, member), messages) in &again {
        if messages.len() > 1 {
            problems.push(format!(
                "{} got {messages:?} again on taking over partition {partition}: only the one \
                 unacknowledged delivery may come again",
                members[*member].name()
            ));
        }
    }
    if !problems.is_empty() {
        let counts: Vec<String> = group
            .iter()
            .map(|&i| format!("{}: {} messages", members[i].name(), members[i].got.len()))
            .collect();
        let reports: Vec<String> = group.iter().map(|&i| members[i].proc.report()).collect();
        panic!(
            "{scenario}: {} problems, the first:\n{}\n{}\n{}",
            problems.len(),
            problems[..problems.len().min(30)].join("\n"),
            counts.join("\n"),
            reports.join("\n")
        );
    }
}

/// The filter that joins `group` (made unique to the test).
pub fn group_filter(ctx: &Ctx, group: &str) -> String {
    format!("$share/{group}{}/$stream/{STREAM}", ctx.seed)
}
