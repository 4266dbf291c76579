//! Consumer groups reading streams over MQTT: joining and leaving as
//! clients subscribe, connect and disconnect; handing each partition's
//! messages to its owner's session; committing offsets as deliveries are
//! acknowledged; ack timeouts and retention. `stream_tasks` runs the tasks
//! that make appends readable and read partitions from the log,
//! `stream_report` shows it all.
//!
//! Each group has its own lock, taken before any session's lock and never
//! while one is held. Everything a group decides is carried out with it
//! still locked, so one partition's messages reach their reader in offset
//! order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{BrokerState, TimerEvent};
use crate::protocol::{Message, QoS};
use crate::session::{Delivery, Session, StreamOrigin, StreamSettled};
use crate::store::{Committed, DeadLetterEntry, DeadLetterMark, Record, StreamEntry};
use crate::stream::group::{Effects, Group, GroupSettings, Member, PartitionSource};
use crate::stream::registry::{Bounds, Stream};
use crate::stream::spec::Start;
use crate::stream::subscription::{StreamOffset, StreamSubscription, stream_subscription};
use crate::topic;

/// Where a group's dead letters are published as they happen:
/// `$dlq/{group}/{stream}`.
pub const DEAD_LETTER_PREFIX: &str = "$dlq/";

/// The dead letters kept, per group and stream, oldest first: what
/// `dlq_retention` and `dlq_max_bytes` drop.
#[derive(Default)]
pub(super) struct DeadLetterIndex {
    queues: Mutex<HashMap<(Arc<str>, usize), DeadQueue>>,
}

#[derive(Default)]
struct DeadQueue {
    /// `(at, partition, offset, size)`, in the order they were given up.
    letters: VecDeque<(u64, u32, u64, u64)>,
    bytes: u64,
}

impl DeadLetterIndex {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Arc<str>, usize), DeadQueue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, group: Arc<str>, stream: usize, letter: (u64, u32, u64, u64)) {
        let mut queues = self.lock();
        let queue = queues.entry((group, stream)).or_default();
        queue.bytes += letter.3;
        queue.letters.push_back(letter);
    }

    fn count(&self, group: &str, stream: usize) -> usize {
        self.lock()
            .get(&(Arc::from(group), stream))
            .map_or(0, |queue| queue.letters.len())
    }

    fn remove(&self, group: &str, stream: usize, partition: u32, offset: u64) {
        let mut queues = self.lock();
        if let Some(queue) = queues.get_mut(&(Arc::from(group), stream))
            && let Some(at) = queue
                .letters
                .iter()
                .position(|l| l.1 == partition && l.2 == offset)
        {
            let gone = queue.letters.remove(at).expect("found above");
            queue.bytes -= gone.3;
        }
    }
}

/// How often retention is applied.
const RETENTION_EVERY_MS: u64 = 1000;

/// One group, as the broker holds it.
pub(super) struct GroupCell {
    pub(super) id: u32,
    pub(super) stream: usize,
    state: Mutex<GroupState>,
}

pub(super) struct GroupState {
    pub(super) group: Group,
    /// The earliest wake-up armed on the timer wheel.
    armed: Option<u64>,
}

impl GroupCell {
    pub(super) fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A read the group waits for, served on the blocking pool.
pub(super) enum StreamRead {
    /// Messages of a partition from the log.
    Fetch {
        group: u32,
        partition: u32,
        from: u64,
        epoch: u32,
    },
    /// The offsets a group resets to for a point in time.
    Seek { group: u32, time_ms: u64 },
}

/// The consumer groups.
pub(super) struct Consumers {
    /// By id; a removed group leaves its slot empty.
    groups: RwLock<Vec<Option<Arc<GroupCell>>>>,
    /// By stream index, then group name.
    names: Mutex<Vec<HashMap<Arc<str>, u32>>>,
    reads: UnboundedSender<StreamRead>,
    /// Taken by the task that serves the reads.
    pub(super) receiver: Mutex<Option<UnboundedReceiver<StreamRead>>>,
}

impl Consumers {
    pub(super) fn new(streams: usize) -> Consumers {
        let (reads, receiver) = unbounded_channel();
        Consumers {
            groups: RwLock::new(Vec::new()),
            names: Mutex::new(vec![HashMap::new(); streams]),
            reads,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    fn names(&self) -> MutexGuard<'_, Vec<HashMap<Arc<str>, u32>>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The group called `name` reading stream `stream`, if there is one.
    fn named(&self, stream: usize, name: &str) -> Option<Arc<GroupCell>> {
        let id = self.names()[stream].get(name).copied()?;
        self.get(id)
    }

    pub(super) fn get(&self, id: u32) -> Option<Arc<GroupCell>> {
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        groups.get(id as usize).cloned().flatten()
    }

    /// The groups reading stream `stream`.
    pub(super) fn of_stream(&self, stream: usize) -> Vec<Arc<GroupCell>> {
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        groups
            .iter()
            .flatten()
            .filter(|cell| cell.stream == stream)
            .cloned()
            .collect()
    }
}

/// A stream as its groups read it.
pub(super) struct Source<'s>(pub(super) &'s Stream);

impl PartitionSource for Source<'_> {
    fn bounds(&self, partition: u32) -> Bounds {
        self.0.bounds(partition)
    }

    fn read_memory(&self, partition: u32, from: u64, max: usize) -> Vec<StreamEntry> {
        self.0.read_memory(partition, from, max)
    }
}

fn settings_of(stream: &Stream) -> GroupSettings {
    GroupSettings {
        max_inflight: stream.spec.max_inflight_per_partition as usize,
        ack_timeout_ms: u64::try_from(stream.spec.ack_timeout.as_millis()).unwrap_or(u64::MAX),
        retry_backoff: stream.spec.retry_backoff.clone(),
        max_attempts: stream.spec.max_attempts,
        ordering: stream.spec.ordering,
    }
}

/// The group a stream subscription reads in: its `$share` group, or the
/// subscriber's client id.
pub(super) fn group_name(subscription: &StreamSubscription<'_>, client_id: &str) -> Arc<str> {
    subscription.group.unwrap_or(client_id).into()
}

impl BrokerState {
    /// Rebuilds the groups whose offsets were committed, at start.
    pub(super) fn restore_groups(&self, committed: Vec<Committed>) {
        let mut by_group: HashMap<(usize, String), Vec<(u32, u64)>> = HashMap::new();
        for row in committed {
            match self.streams.find(&row.stream) {
                Some((index, _)) => by_group
                    .entry((index, row.group))
                    .or_default()
                    .push((row.partition, row.offset)),
                None => {
                    tracing::warn!(stream = %row.stream, group = %row.group, "offsets kept for a stream no longer configured")
                }
            }
        }
        for ((index, name), offsets) in by_group {
            let stream = self.streams.get(index);
            let mut starts = vec![0; stream.partition_count() as usize];
            for (partition, offset) in offsets {
                match starts.get_mut(partition as usize) {
                    Some(start) => *start = offset,
                    None => {
                        tracing::warn!(stream = %stream.name, group = %name, partition, "offset kept for a partition the stream no longer has")
                    }
                }
            }
            self.add_group(index, name.into(), &starts);
        }
    }

    fn add_group(&self, stream: usize, name: Arc<str>, offsets: &[u64]) -> Arc<GroupCell> {
        let settings = settings_of(self.streams.get(stream));
        let mut groups = self
            .consumers
            .groups
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let id = groups.len() as u32;
        let cell = Arc::new(GroupCell {
            id,
            stream,
            state: Mutex::new(GroupState {
                group: Group::new(name.clone(), settings, offsets),
                armed: None,
            }),
        });
        groups.push(Some(cell.clone()));
        drop(groups);
        self.consumers.names()[stream].insert(name, id);
        cell
    }

    /// The group `name` of stream `stream`, made at the stream's `start`
    /// (and that start committed) if it is new.
    fn group(&self, stream: usize, name: &Arc<str>) -> Arc<GroupCell> {
        if let Some(cell) = self.consumers.named(stream, name) {
            return cell;
        }
        let source = self.streams.get(stream);
        let offsets: Vec<u64> = (0..source.partition_count())
            .map(|partition| {
                let bounds = source.bounds(partition);
                match source.spec.start {
                    Start::Earliest => bounds.start,
                    Start::Latest => bounds.end,
                }
            })
            .collect();
        let cell = self.add_group(stream, name.clone(), &offsets);
        let mut state = cell.lock();
        let effects = Effects {
            commits: (0..).zip(offsets.iter().copied()).collect(),
            ..Effects::default()
        };
        self.carry_out(&cell, &mut state, effects);
        drop(state);
        cell
    }

    /// A connected client reads `subscription` at `qos`; `reset` moves its
    /// group first. Returns false for a stream that is not configured.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join_stream(
        &self,
        session: &Arc<Session>,
        connection: u64,
        subscription: &StreamSubscription<'_>,
        qos: QoS,
        reset: Option<StreamOffset>,
        now: u64,
    ) -> bool {
        let Some((index, stream)) = self.streams.find(subscription.stream) else {
            return false;
        };
        let name = group_name(subscription, session.client_id());
        let cell = self.group(index, &name);
        let source = Source(stream);
        let mut state = cell.lock();
        let mut effects = Effects::default();
        match reset {
            None => {}
            Some(StreamOffset::At(time_ms)) => {
                state.group.start_seek();
                let seek = StreamRead::Seek {
                    group: cell.id,
                    time_ms,
                };
                if self.consumers.reads.send(seek).is_err() {
                    state.group.reset(&[], now, &source, &mut effects);
                }
            }
            Some(edge) => {
                let offsets: Vec<u64> = (0..stream.partition_count())
                    .map(|partition| {
                        let bounds = stream.bounds(partition);
                        if edge == StreamOffset::Earliest {
                            bounds.start
                        } else {
                            bounds.end
                        }
                    })
                    .collect();
                state.group.reset(&offsets, now, &source, &mut effects);
            }
        }
        let member = Member {
            client_id: session.client_id().clone(),
            connection,
            qos,
            session: session.clone(),
        };
        tracing::info!(client_id = %session.client_id(), stream = %stream.name, group = %name, "joined consumer group");
        state.group.join(member, now, &source, &mut effects);
        self.carry_out(&cell, &mut state, effects);
        true
    }

    /// Joins the groups of every stream subscription `session` holds (a
    /// connection resuming it).
    pub(super) fn join_streams_of(&self, session: &Arc<Session>, connection: u64, now: u64) {
        for (raw, qos) in self.stream_filters(session) {
            self.with_stream_subscription(&raw, |read| {
                self.join_stream(session, connection, read, qos, None, now);
            });
        }
    }

    /// Leaves the groups `connection` of `session` joined (it ended).
    pub(super) fn leave_streams_of(&self, session: &Arc<Session>, connection: u64, now: u64) {
        for (raw, _) in self.stream_filters(session) {
            self.with_stream_subscription(&raw, |read| {
                self.leave_stream(session, connection, read, now);
            });
        }
    }

    /// Calls `read` with the stream subscription the filter `raw` (as a
    /// client sent it, already accepted once) makes, if it makes one.
    pub(super) fn with_stream_subscription(
        &self,
        raw: &str,
        read: impl FnOnce(&StreamSubscription<'_>),
    ) {
        if let Ok(parsed) = topic::parse_filter(raw, self.topic_limits())
            && let Ok(Some(subscription)) = stream_subscription(&parsed)
        {
            read(&subscription);
        }
    }

    /// The stream subscriptions of a session, with their QoS.
    fn stream_filters(&self, session: &Session) -> Vec<(String, QoS)> {
        if self.streams.is_empty() {
            return Vec::new();
        }
        let state = session.lock();
        state
            .subscriptions()
            .filter(|(raw, _)| is_stream_filter(raw))
            .map(|(raw, entry)| (raw.to_string(), entry.options.qos))
            .collect()
    }

    /// `connection` of `session` stops reading `subscription` (an
    /// UNSUBSCRIBE, or the connection ended): what it had not acknowledged
    /// goes to the partitions' next owners.
    pub(super) fn leave_stream(
        &self,
        session: &Arc<Session>,
        connection: u64,
        subscription: &StreamSubscription<'_>,
        now: u64,
    ) {
        let Some((index, stream)) = self.streams.find(subscription.stream) else {
            return;
        };
        let name = group_name(subscription, session.client_id());
        let Some(cell) = self.consumers.named(index, &name) else {
            return;
        };
        let mut state = cell.lock();
        let mut effects = Effects::default();
        let left = state.group.leave(
            session.client_id(),
            Some(connection),
            now,
            &Source(stream),
            &mut effects,
        );
        if left {
            tracing::info!(client_id = %session.client_id(), stream = %stream.name, group = %name, "left consumer group");
        }
        self.carry_out(&cell, &mut state, effects);
    }

    /// Forgets the group of a reader of its own whose session ended, with
    /// its offsets.
    pub(super) fn forget_own_group(&self, client_id: &Arc<str>, stream: &str) {
        let Some((index, stream)) = self.streams.find(stream) else {
            return;
        };
        let removed = self.consumers.names()[index].remove(&**client_id);
        if let Some(id) = removed {
            self.consumers
                .groups
                .write()
                .unwrap_or_else(PoisonError::into_inner)[id as usize] = None;
            if self.keeps_messages {
                self.journal.append(Record::DeleteGroup {
                    group: client_id.clone(),
                    stream: stream.name.clone(),
                });
            }
        }
    }

    /// Hands newly appended messages of `(stream, partition)` to the
    /// groups reading them.
    pub(super) fn appended(&self, fed: &[(usize, u32)], now: u64) {
        for &(index, partition) in fed {
            let stream = self.streams.get(index);
            for cell in self.consumers.of_stream(index) {
                let mut state = cell.lock();
                let mut effects = Effects::default();
                state
                    .group
                    .fill(partition, now, &Source(stream), &mut effects);
                self.carry_out(&cell, &mut state, effects);
            }
        }
    }

    /// Appends dead letters to their streams again (each to its key's
    /// partition, at a new offset, for every group of the stream) and
    /// drops them from the dead-letter queue. Returns how many went.
    pub fn redrive(&self, letters: &[DeadLetterEntry], now: u64) -> usize {
        let mut count = 0;
        for letter in letters {
            let Some((index, stream)) = self.streams.find(&letter.stream) else {
                continue;
            };
            let message = Arc::new(stream.unplaced(&letter.message));
            let appended = self
                .streams
                .append_where(&message, now, Some(index), |appends| {
                    self.journal.append(Record::PutCopies {
                        message: Some(message.clone()),
                        copies: Vec::new(),
                        inbound_qos2: None,
                        appends,
                    })
                });
            self.journal.append(Record::DeleteDeadLetter {
                group: letter.group.as_str().into(),
                stream: stream.name.clone(),
                partition: letter.partition,
                offset: letter.offset,
            });
            self.dead_letters
                .remove(&letter.group, index, letter.partition, letter.offset);
            self.metrics.stream_appends_add(appended.partitions as u64);
            self.appended(&appended.readable, now);
            count += 1;
        }
        count
    }

    /// Takes a session's reports on stream deliveries (taken from its
    /// outbound queue with the session unlocked): each group's run of
    /// reports under one lock, carried out together.
    pub(super) fn streams_settled(&self, settled: Vec<StreamSettled>, now: u64) {
        let mut reports = settled.into_iter().peekable();
        while let Some(first) = reports.next() {
            let id = first.origin.group;
            let mut run = vec![first];
            while let Some(next) = reports.next_if(|r| r.origin.group == id) {
                run.push(next);
            }
            let Some(cell) = self.consumers.get(id) else {
                continue;
            };
            let stream = self.streams.get(cell.stream);
            let mut state = cell.lock();
            let mut effects = Effects::default();
            let acknowledged = run.iter().filter(|r| r.refused.is_none()).count();
            self.metrics.stream_acknowledged_add(acknowledged as u64);
            for report in run {
                let origin = report.origin;
                state.group.settled(
                    origin.partition,
                    origin.offset,
                    origin.epoch,
                    report.refused,
                    now,
                    &Source(stream),
                    &mut effects,
                );
            }
            self.carry_out(&cell, &mut state, effects);
        }
    }

    /// A group's wake-up: ack timeouts and the end of pauses.
    pub(super) fn wake_group(&self, id: u32, now: u64) {
        let Some(cell) = self.consumers.get(id) else {
            return;
        };
        let stream = self.streams.get(cell.stream);
        let mut state = cell.lock();
        if state.armed.is_some_and(|at| at <= now) {
            state.armed = None;
        }
        let mut effects = Effects::default();
        state.group.wake(now, &Source(stream), &mut effects);
        self.carry_out(&cell, &mut state, effects);
    }

    /// Arms the first retention pass, when any stream is configured.
    pub(super) fn arm_retention(&self, now: u64) {
        if !self.streams.is_empty() {
            self.timers
                .arm(now + RETENTION_EVERY_MS, TimerEvent::StreamRetention);
        }
    }

    /// The dead letters `group` keeps for stream `stream`.
    pub(super) fn dead_letters_of(&self, group: &str, stream: usize) -> usize {
        self.dead_letters.count(group, stream)
    }

    /// Takes back the dead letters kept before a restart.
    pub(super) fn restore_dead_letters(&self, mut marks: Vec<DeadLetterMark>) {
        marks.sort_by_key(|mark| mark.at);
        for mark in marks {
            if let Some((index, _)) = self.streams.find(&mark.stream) {
                self.dead_letters.add(
                    mark.group.as_str().into(),
                    index,
                    (mark.at, mark.partition, mark.offset, u64::from(mark.size)),
                );
            }
        }
    }

    /// Drops the dead letters older than their stream's `dlq_retention`,
    /// and the oldest of a group while it keeps more than `dlq_max_bytes`.
    fn trim_dead_letters(&self, now: u64) {
        let mut dropped = Vec::new();
        {
            let mut queues = self.dead_letters.lock();
            for ((group, index), queue) in queues.iter_mut() {
                let spec = &self.streams.get(*index).spec;
                let retention = u64::try_from(spec.dlq_retention.as_millis()).unwrap_or(u64::MAX);
                while let Some(&(at, partition, offset, size)) = queue.letters.front() {
                    let too_old = at.saturating_add(retention) <= now;
                    if !too_old && queue.bytes <= spec.dlq_max_bytes {
                        break;
                    }
                    queue.letters.pop_front();
                    queue.bytes -= size;
                    dropped.push((group.clone(), *index, partition, offset));
                }
            }
            queues.retain(|_, queue| !queue.letters.is_empty());
        }
        for (group, index, partition, offset) in dropped {
            let stream = self.streams.get(index);
            tracing::info!(stream = %stream.name, %group, partition, offset, "dead letter dropped by dlq_retention or dlq_max_bytes");
            self.metrics.dead_letter_dropped();
            if self.keeps_messages {
                self.journal.append(Record::DeleteDeadLetter {
                    group,
                    stream: stream.name.clone(),
                    partition,
                    offset,
                });
            }
        }
    }

    /// Applies every stream's retention, then arms the next pass.
    pub(super) fn apply_retention(&self, now: u64) {
        self.trim_dead_letters(now);
        for (index, stream) in self.streams.iter().enumerate() {
            let trimmed = stream.trim(now);
            if trimmed.is_empty() {
                continue;
            }
            for trim in &trimmed {
                tracing::debug!(stream = %trim.stream, partition = trim.partition, start = trim.start, "retention trimmed");
                if self.keeps_messages {
                    self.journal.append(Record::TrimPartition {
                        stream: trim.stream.clone(),
                        partition: trim.partition,
                        start: trim.start,
                    });
                }
            }
            for cell in self.consumers.of_stream(index) {
                let mut state = cell.lock();
                let mut effects = Effects::default();
                for trim in &trimmed {
                    state
                        .group
                        .fill(trim.partition, now, &Source(stream), &mut effects);
                }
                self.carry_out(&cell, &mut state, effects);
            }
        }
        self.timers
            .arm(now + RETENTION_EVERY_MS, TimerEvent::StreamRetention);
    }

    /// Carries out what a group decided, with the group still locked.
    pub(super) fn carry_out(&self, cell: &GroupCell, state: &mut GroupState, effects: Effects) {
        let stream = self.streams.get(cell.stream);
        let group = &state.group.name;
        for (session, partition) in effects.withdrawals {
            let mut held = session.lock();
            held.outbound.withdraw_streamed(|origin| {
                origin.group == cell.id && origin.partition == partition
            });
        }
        // A dead letter is journalled before the commit that reads past it,
        // so no crash can lose both; it goes out to `$dlq/{group}/{stream}`
        // from the timer task, with no lock held.
        for dead in effects.dead {
            let reason = dead.cause.describe();
            let now = crate::timer::now_ms();
            let total = self.metrics.stream_dead_letter(&stream.name, group);
            self.dead_letters.add(
                group.clone(),
                cell.stream,
                (now, dead.partition, dead.offset, dead.message.size() as u64),
            );
            // A consumer failing everything dead-letters thousands a second:
            // each is logged at debug, the running total at powers of two.
            tracing::debug!(stream = %stream.name, %group, partition = dead.partition, offset = dead.offset, attempts = dead.attempts, %reason, "stream message dead-lettered");
            if total.is_power_of_two() {
                tracing::warn!(stream = %stream.name, %group, total, last_reason = %reason, "stream messages dead-lettered");
            }
            if self.keeps_messages {
                self.journal.append(Record::PutDeadLetter {
                    group: group.clone(),
                    stream: stream.name.clone(),
                    partition: dead.partition,
                    offset: dead.offset,
                    attempts: dead.attempts,
                    reason: reason.clone(),
                    at: now,
                    message: dead.message.clone(),
                });
            }
            let mut letter = Message::clone(&dead.message);
            letter.topic = format!("{DEAD_LETTER_PREFIX}{group}/{}", stream.name).into();
            letter.retain = false;
            letter.publisher = None;
            letter.properties.user_properties.extend([
                ("attempts".to_string(), dead.attempts.to_string()),
                ("reason".to_string(), reason),
            ]);
            self.timers
                .arm(now, TimerEvent::DeadLetter(Box::new(letter)));
        }
        // Commits are journalled before the next messages go out: a member
        // that received offset n+1 knows the commit of n precedes anything
        // it does next in the journal.
        if self.keeps_messages {
            // Only each partition's last commit of the run is journalled.
            let mut commits = effects.commits;
            let mut seen = HashSet::new();
            commits.reverse();
            commits.retain(|(partition, _)| seen.insert(*partition));
            commits.reverse();
            for (partition, offset) in commits {
                self.journal.append(Record::CommitOffset {
                    group: group.clone(),
                    stream: stream.name.clone(),
                    partition,
                    offset,
                });
            }
        }
        let mut handouts = effects.handouts.into_iter().peekable();
        while let Some(first) = handouts.next() {
            let session = first.session.clone();
            let mut held = session.lock();
            let mut next = Some(first);
            while let Some(handout) = next {
                if handout.attempt > 1 {
                    self.metrics
                        .stream_retry(&stream.name, group, handout.attempt);
                }
                if !held.ended {
                    let delivery = Delivery {
                        message: match handout.attempt {
                            1 => handout.entry.message,
                            attempt => with_attempt(&handout.entry.message, attempt),
                        },
                        qos: handout.qos,
                        retain: false,
                        subscription_ids: Vec::new(),
                        seq: None,
                        stream: Some(Box::new(StreamOrigin {
                            group: cell.id,
                            partition: handout.partition,
                            offset: handout.entry.offset,
                            epoch: handout.epoch,
                        })),
                    };
                    held.outbound.enqueue_streamed(delivery);
                }
                next = handouts.next_if(|h| Arc::ptr_eq(&h.session, &session));
            }
            Session::wake(&held);
        }
        for fetch in effects.fetches {
            let read = StreamRead::Fetch {
                group: cell.id,
                partition: fetch.partition,
                from: fetch.from,
                epoch: fetch.epoch,
            };
            if self.consumers.reads.send(read).is_err() {
                tracing::error!(stream = %stream.name, %group, "stream reads are no longer served");
            }
        }
        for failed in effects.failed {
            self.metrics.stream_delivery_failed();
            tracing::debug!(stream = %stream.name, %group, partition = failed.partition, offset = failed.offset, attempts = failed.attempts, cause = ?failed.cause, "stream delivery failed");
        }
        for skipped in effects.skipped {
            let count = skipped.to - skipped.from;
            self.metrics.stream_messages_skipped_add(count);
            tracing::warn!(stream = %stream.name, %group, partition = skipped.partition, from = skipped.from, to = skipped.to, skipped = count, total = state.group.skipped(), "group fell behind retention and continues from the log start");
        }
        if let Some(deadline) = effects.deadline
            && state.armed.is_none_or(|armed| deadline < armed)
        {
            state.armed = Some(deadline);
            self.timers
                .arm(deadline, TimerEvent::StreamGroup { group: cell.id });
        }
    }
}

/// A re-delivered stream message: the placed message with the v5 user
/// property `attempt` (2 for the first re-delivery).
fn with_attempt(placed: &Message, attempt: u32) -> Arc<Message> {
    let mut again = placed.clone();
    again
        .properties
        .user_properties
        .push(("attempt".to_string(), attempt.to_string()));
    Arc::new(again)
}

/// Whether a filter as sent reads a stream (cheap; parse to be sure).
pub(super) fn is_stream_filter(raw: &str) -> bool {
    raw.contains("$stream/")
}
