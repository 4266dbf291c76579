//! A consumer group reading one stream: its members, which member reads
//! which partition, and per partition the committed offset and the
//! messages handed out and not yet settled.
//!
//! No I/O and no clock: every call takes the time, reads messages through
//! a `PartitionSource`, and reports what must happen as `Effects` (messages
//! to hand to members' sessions, offsets to commit, log reads to make,
//! deliveries to take back), which the broker carries out while the group
//! stays locked, so a partition's messages reach its owner in offset order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::assign;
use super::registry::Bounds;
use super::spec::Ordering;
use crate::protocol::{Message, QoS, ReasonCode};
use crate::session::Session;
use crate::store::StreamEntry;

/// A connected client subscribed to the group.
#[derive(Clone)]
pub struct Member {
    pub client_id: Arc<str>,
    /// The connection that joined: only it can leave.
    pub connection: u64,
    /// The subscription's QoS, which deliveries go out at (a QoS 0
    /// subscription commits on send).
    pub qos: QoS,
    pub session: Arc<Session>,
}

/// Where the group reads messages: the partitions' bounds and their
/// newest messages, held in memory. Older ones come from the log by way
/// of `Effects::fetches`.
pub trait PartitionSource {
    fn bounds(&self, partition: u32) -> Bounds;
    fn read_memory(&self, partition: u32, from: u64, max: usize) -> Vec<StreamEntry>;
}

/// How the group behaves, from its stream's settings.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub max_inflight: usize,
    pub ack_timeout_ms: u64,
    /// Pauses after a negative acknowledgement, by attempt.
    pub retry_backoff: Vec<Duration>,
    /// Failed attempts after which a message is dead-lettered.
    pub max_attempts: u32,
    pub ordering: Ordering,
}

impl GroupSettings {
    /// The pause before the retry that follows failed attempt `attempts`
    /// (the last step repeats).
    fn backoff_ms(&self, attempts: u32) -> u64 {
        let backoff = &self.retry_backoff;
        backoff
            .get((attempts as usize).saturating_sub(1))
            .or(backoff.last())
            .map_or(0, |step| {
                u64::try_from(step.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// Under `relaxed` ordering, how many failed messages of one partition
/// may wait for their retry: beyond it the partition waits, as under
/// `strict`, so a consumer failing everything cannot grow the queue
/// without bound.
pub const MAX_RETRYING_PER_PARTITION: usize = 1024;

/// One message handed to a member.
pub struct Handout {
    pub session: Arc<Session>,
    pub qos: QoS,
    pub partition: u32,
    pub epoch: u32,
    pub entry: StreamEntry,
    /// Which delivery of this offset it is: 1, then one more after each
    /// failed attempt.
    pub attempt: u32,
}

/// A log read the group waits for: `fetched` takes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub partition: u32,
    pub from: u64,
    pub epoch: u32,
}

/// How a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A v5 negative acknowledgement, with its reason code.
    Refused(ReasonCode),
    /// Unacknowledged past the ack timeout.
    TimedOut,
    /// Its reader left (disconnected, unsubscribed, taken over).
    ReaderLeft,
}

impl Failure {
    /// As a dead letter's `reason` user property says it.
    pub fn describe(self) -> String {
        match self {
            Failure::Refused(code) => format!("0x{:02x}", code.0),
            Failure::TimedOut => "ack_timeout".into(),
            Failure::ReaderLeft => "reader_left".into(),
        }
    }
}

/// A delivery that failed (negative ack, ack timeout, its reader left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub partition: u32,
    pub offset: u64,
    pub attempts: u32,
    pub cause: Failure,
}

/// A message that failed `max_attempts` times: the partition moves on
/// without it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: u64,
    pub attempts: u32,
    pub cause: Failure,
    /// As the group's members received it.
    pub message: Arc<Message>,
}

/// Offsets retention dropped before the group read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub partition: u32,
    pub from: u64,
    pub to: u64,
}

/// What a call on the group asks the broker to do, in this order:
/// withdrawals, commits, hand-outs, fetches; and a wake-up by
/// `deadline` (ack timeouts, the end of a pause).
#[derive(Default)]
pub struct Effects {
    /// Deliveries of these partitions to take back from a session.
    pub withdrawals: Vec<(Arc<Session>, u32)>,
    pub handouts: Vec<Handout>,
    /// New committed offsets: `(partition, next offset to read)`.
    pub commits: Vec<(u32, u64)>,
    pub fetches: Vec<Fetch>,
    pub failed: Vec<Failed>,
    pub dead: Vec<DeadLetter>,
    pub skipped: Vec<Skipped>,
    pub deadline: Option<u64>,
}

struct Cursor {
    /// The next offset the group reads after a restart or a failure:
    /// everything below is settled.
    committed: u64,
    /// The next offset to hand out.
    next: u64,
    /// Handed out and not yet settled: in offset order, except for
    /// retries under `relaxed` ordering.
    inflight: VecDeque<Out>,
    /// Under `relaxed` ordering, failed messages waiting for their retry
    /// while the partition moves on. `committed` stays at or below the
    /// oldest, so a restart reads them again.
    retrying: Vec<Retry>,
    /// Offsets at or above `committed` that were dead-lettered: read past,
    /// never handed out again.
    dead: Vec<u64>,
    /// The member reading it, by index into `members`.
    owner: Option<usize>,
    /// Bumped whenever what was handed out is taken back: reports about
    /// earlier hand-outs are then stale.
    epoch: u32,
    /// No hand-outs before this time (after a negative acknowledgement).
    paused_until: u64,
    /// Failed attempts of the offsets at or above `committed`.
    attempts: Vec<(u64, u32)>,
    /// Messages read from the log for this partition, from `next` on.
    read_ahead: VecDeque<StreamEntry>,
    /// A log read is on its way.
    fetching: bool,
}

/// A failed message waiting for its retry.
struct Retry {
    entry: StreamEntry,
    /// When it is handed out again (unix ms).
    due: u64,
}

/// One message handed out.
struct Out {
    entry: StreamEntry,
    /// When (unix ms).
    at: u64,
}

impl Cursor {
    fn at(offset: u64) -> Cursor {
        Cursor {
            committed: offset,
            next: offset,
            inflight: VecDeque::new(),
            retrying: Vec::new(),
            dead: Vec::new(),
            owner: None,
            epoch: 0,
            paused_until: 0,
            attempts: Vec::new(),
            read_ahead: VecDeque::new(),
            fetching: false,
        }
    }

    /// Takes back what was handed out: the partition is read again from
    /// its committed offset.
    fn rewind(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.next = self.committed;
        self.inflight.clear();
        self.read_ahead.clear();
    }

    /// Moves `committed` up to the oldest message still out or waiting for
    /// a retry (or the next to hand out), and commits it.
    fn recommit(&mut self, partition: u32, effects: &mut Effects) {
        let committed = self
            .inflight
            .iter()
            .map(|out| out.entry.offset)
            .chain(self.retrying.iter().map(|retry| retry.entry.offset))
            .fold(self.next, u64::min);
        if committed > self.committed {
            self.committed = committed;
            self.attempts.retain(|(o, _)| *o >= committed);
            self.dead.retain(|o| *o >= committed);
            effects.commits.push((partition, committed));
        }
    }

    /// Dead-lettered or waiting for a retry: reading the partition passes
    /// it by.
    fn parked(&self, offset: u64) -> bool {
        self.dead.contains(&offset) || self.retrying.iter().any(|r| r.entry.offset == offset)
    }

    /// Failed attempts of `offset` so far.
    fn failures(&self, offset: u64) -> u32 {
        self.attempts
            .iter()
            .find(|(o, _)| *o == offset)
            .map_or(0, |(_, count)| *count)
    }

    /// Takes back what is out after its deliveries failed: under `strict`
    /// ordering the partition is read again from its committed offset;
    /// under `relaxed` the failed messages wait in the retry queue and the
    /// partition goes on from where it was.
    fn withdraw(&mut self, ordering: Ordering) {
        match ordering {
            Ordering::Strict => self.rewind(),
            Ordering::Relaxed => {
                self.epoch = self.epoch.wrapping_add(1);
                self.inflight.clear();
            }
        }
    }

    /// Counts a failed attempt of `entry`; at `max_attempts` it is
    /// dead-lettered, and otherwise, under `relaxed` ordering, it waits in
    /// the retry queue for its backoff step.
    fn fail(
        &mut self,
        partition: u32,
        entry: StreamEntry,
        cause: Failure,
        settings: &GroupSettings,
        now: u64,
        effects: &mut Effects,
    ) {
        let offset = entry.offset;
        let attempts = self.attempt(offset);
        effects.failed.push(Failed {
            partition,
            offset,
            attempts,
            cause,
        });
        if attempts >= settings.max_attempts {
            effects.dead.push(DeadLetter {
                partition,
                offset,
                attempts,
                cause,
                message: entry.message,
            });
            self.dead.push(offset);
        } else if settings.ordering == Ordering::Relaxed {
            self.retrying.push(Retry {
                entry,
                due: now.saturating_add(settings.backoff_ms(attempts)),
            });
        }
    }

    /// Fails every delivery still out (`withdraw` then takes them back).
    fn fail_inflight(
        &mut self,
        partition: u32,
        cause: Failure,
        settings: &GroupSettings,
        now: u64,
        effects: &mut Effects,
    ) {
        for out in std::mem::take(&mut self.inflight) {
            self.fail(partition, out.entry, cause, settings, now, effects);
        }
    }

    fn attempt(&mut self, offset: u64) -> u32 {
        match self.attempts.iter_mut().find(|(o, _)| *o == offset) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                self.attempts.push((offset, 1));
                1
            }
        }
    }
}

/// A partition as `petrel streams` shows it for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorReport {
    pub partition: u32,
    pub committed: u64,
    pub inflight: usize,
    /// Failed messages waiting for their retry (`relaxed` ordering).
    pub retrying: usize,
    pub owner: Option<Arc<str>>,
}

pub struct Group {
    pub name: Arc<str>,
    settings: GroupSettings,
    members: Vec<Member>,
    cursors: Vec<Cursor>,
    /// While a reset to a point in time is being looked up, nothing is
    /// handed out.
    seeking: bool,
    /// Messages retention dropped before the group read them.
    skipped: u64,
}

impl Group {
    /// A group whose partitions start at `offsets`.
    pub fn new(name: Arc<str>, settings: GroupSettings, offsets: &[u64]) -> Group {
        Group {
            name,
            settings,
            members: Vec::new(),
            cursors: offsets.iter().map(|&offset| Cursor::at(offset)).collect(),
            seeking: false,
            skipped: 0,
        }
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter()
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn report(&self) -> Vec<CursorReport> {
        self.cursors
            .iter()
            .enumerate()
            .map(|(partition, cursor)| CursorReport {
                partition: partition as u32,
                committed: cursor.committed,
                inflight: cursor.inflight.len(),
                retrying: cursor.retrying.len(),
                owner: cursor
                    .owner
                    .map(|index| self.members[index].client_id.clone()),
            })
            .collect()
    }

    /// Adds `member`, replacing an earlier connection of the same client
    /// (whose deliveries are taken back), and deals the partitions again.
    pub fn join(
        &mut self,
        member: Member,
        now: u64,
        source: &dyn PartitionSource,
        effects: &mut Effects,
    ) {
        match self
            .members
            .iter()
            .position(|m| m.client_id == member.client_id)
        {
            Some(index) => {
                self.take_back(index, now, effects);
                self.members[index] = member;
            }
            None => self.members.push(member),
        }
        self.rebalance(now, source, effects);
    }

    /// Removes the member if `connection` is the one that joined: what it
    /// had not acknowledged fails and goes to the partitions' next owners.
    /// Returns whether it was a member.
    pub fn leave(
        &mut self,
        client_id: &str,
        connection: Option<u64>,
        now: u64,
        source: &dyn PartitionSource,
        effects: &mut Effects,
    ) -> bool {
        let Some(index) = self.members.iter().position(|m| {
            &*m.client_id == client_id && connection.is_none_or(|c| c == m.connection)
        }) else {
            return false;
        };
        self.take_back(index, now, effects);
        self.members.remove(index);
        for cursor in &mut self.cursors {
            if let Some(owner) = cursor.owner.filter(|&owner| owner > index) {
                cursor.owner = Some(owner - 1);
            }
        }
        self.rebalance(now, source, effects);
        true
    }

    /// Fails every delivery member `index` has out (its reader left) and
    /// takes its partitions back, ownerless: whoever owns them next reads
    /// them again from their committed offsets (`strict`), or goes on
    /// where it was while the failed messages wait for a retry
    /// (`relaxed`).
    fn take_back(&mut self, index: usize, now: u64, effects: &mut Effects) {
        let settings = &self.settings;
        let session = &self.members[index].session;
        for (partition, cursor) in self.cursors.iter_mut().enumerate() {
            if cursor.owner == Some(index) {
                let partition = partition as u32;
                cursor.fail_inflight(partition, Failure::ReaderLeft, settings, now, effects);
                effects.withdrawals.push((session.clone(), partition));
                cursor.withdraw(settings.ordering);
                cursor.owner = None;
            }
        }
    }

    /// Deals the partitions to the members as they now are: a partition
    /// that changes hands is taken back from its old owner and read again
    /// from its committed offset by the new one.
    fn rebalance(&mut self, now: u64, source: &dyn PartitionSource, effects: &mut Effects) {
        let ids: Vec<&str> = self.members.iter().map(|m| &*m.client_id).collect();
        let mut owners = vec![None; self.cursors.len()];
        for (member, partitions) in assign(&ids, self.cursors.len() as u32) {
            let index = self.members.iter().position(|m| &*m.client_id == member);
            for partition in partitions {
                owners[partition as usize] = index;
            }
        }
        for (partition, (cursor, owner)) in self.cursors.iter_mut().zip(owners).enumerate() {
            if cursor.owner == owner {
                continue;
            }
            // Taken from a member that is still there: not a failed
            // delivery, so no attempt is counted.
            if let Some(old) = cursor.owner {
                effects
                    .withdrawals
                    .push((self.members[old].session.clone(), partition as u32));
                cursor.rewind();
            }
            cursor.owner = owner;
        }
        self.fill_all(now, source, effects);
    }

    /// Hands out what every partition has room for.
    pub fn fill_all(&mut self, now: u64, source: &dyn PartitionSource, effects: &mut Effects) {
        for partition in 0..self.cursors.len() as u32 {
            self.fill(partition, now, source, effects);
        }
    }

    /// Hands the owner of `partition` its next messages, up to the
    /// inflight limit: retries that are due first, then the partition's
    /// next offsets.
    pub fn fill(
        &mut self,
        partition: u32,
        now: u64,
        source: &dyn PartitionSource,
        effects: &mut Effects,
    ) {
        let max_inflight = self.settings.max_inflight;
        let timeout = self.settings.ack_timeout_ms;
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        let Some(owner) = cursor.owner else {
            return;
        };
        if self.seeking {
            return;
        }
        if now < cursor.paused_until {
            note_deadline(effects, cursor.paused_until);
            return;
        }
        let room = max_inflight.saturating_sub(cursor.inflight.len());
        if room == 0 {
            return;
        }
        let mut entries = take_due_retries(cursor, now, room, effects);
        if cursor.retrying.len() < MAX_RETRYING_PER_PARTITION {
            let fresh = read_next(cursor, partition, room - entries.len(), source, effects);
            self.skipped += fresh.skipped;
            entries.extend(fresh.entries);
        }
        let member = &self.members[owner];
        for entry in entries {
            let attempt = cursor.failures(entry.offset) + 1;
            cursor.inflight.push_back(Out {
                entry: entry.clone(),
                at: now,
            });
            effects.handouts.push(Handout {
                session: member.session.clone(),
                qos: member.qos,
                partition,
                epoch: cursor.epoch,
                entry,
                attempt,
            });
        }
        // Dead-lettered offsets read past may let the commit move on.
        cursor.recommit(partition, effects);
        if let Some(oldest) = cursor.inflight.iter().map(|out| out.at).min() {
            note_deadline(effects, oldest.saturating_add(timeout));
        }
    }

    /// Takes the answer to a `Fetch`.
    pub fn fetched(
        &mut self,
        partition: u32,
        epoch: u32,
        entries: Vec<StreamEntry>,
        now: u64,
        source: &dyn PartitionSource,
        effects: &mut Effects,
    ) {
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        cursor.fetching = false;
        if cursor.epoch == epoch {
            if entries.is_empty() {
                // The log no longer has them: what is in memory is next.
                let memory_start = source.bounds(partition).memory_start;
                if cursor.next < memory_start {
                    self.skipped += memory_start - cursor.next;
                    effects.skipped.push(Skipped {
                        partition,
                        from: cursor.next,
                        to: memory_start,
                    });
                    cursor.next = memory_start;
                    if cursor.inflight.is_empty() {
                        cursor.committed = memory_start;
                        effects.commits.push((partition, memory_start));
                    }
                }
            }
            cursor.read_ahead = entries.into();
        }
        self.fill(partition, now, source, effects);
    }

    /// A member's report on one delivery: acknowledged (or sent at QoS 0)
    /// commits it; refused fails it, and it is read again after the
    /// stream's backoff step: under `strict` ordering the partition pauses
    /// until then, under `relaxed` it waits in the retry queue.
    #[allow(clippy::too_many_arguments)]
    pub fn settled(
        &mut self,
        partition: u32,
        offset: u64,
        epoch: u32,
        refused: Option<ReasonCode>,
        now: u64,
        source: &dyn PartitionSource,
        effects: &mut Effects,
    ) {
        let settings = &self.settings;
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        if cursor.epoch != epoch {
            return;
        }
        let Some(at) = cursor
            .inflight
            .iter()
            .position(|out| out.entry.offset == offset)
        else {
            return;
        };
        let Some(out) = cursor.inflight.remove(at) else {
            return;
        };
        if let Some(reason) = refused {
            cursor.fail(
                partition,
                out.entry,
                Failure::Refused(reason),
                settings,
                now,
                effects,
            );
            let given_up = cursor.dead.contains(&offset);
            if settings.ordering == Ordering::Strict && !given_up {
                // The key's later messages wait for this one.
                if let Some(owner) = cursor.owner {
                    effects
                        .withdrawals
                        .push((self.members[owner].session.clone(), partition));
                }
                cursor.rewind();
                cursor.paused_until =
                    now.saturating_add(settings.backoff_ms(cursor.failures(offset)));
            }
        }
        cursor.recommit(partition, effects);
        self.fill(partition, now, source, effects);
    }

    /// Fails the deliveries left unacknowledged past the ack timeout, and
    /// resumes partitions whose pause is over or whose retries are due.
    pub fn wake(&mut self, now: u64, source: &dyn PartitionSource, effects: &mut Effects) {
        let settings = &self.settings;
        let timeout = settings.ack_timeout_ms;
        for (partition, cursor) in self.cursors.iter_mut().enumerate() {
            let overdue = cursor
                .inflight
                .iter()
                .any(|out| out.at.saturating_add(timeout) <= now);
            if overdue {
                let partition = partition as u32;
                cursor.fail_inflight(partition, Failure::TimedOut, settings, now, effects);
                if let Some(owner) = cursor.owner {
                    effects
                        .withdrawals
                        .push((self.members[owner].session.clone(), partition));
                }
                cursor.withdraw(settings.ordering);
            }
        }
        self.fill_all(now, source, effects);
    }

    /// Moves every partition to `offsets` (a reset asked for by a member),
    /// taking back what was handed out; ends a seek.
    pub fn reset(
        &mut self,
        offsets: &[u64],
        now: u64,
        source: &dyn PartitionSource,
        effects: &mut Effects,
    ) {
        self.seeking = false;
        for (partition, (cursor, &offset)) in self.cursors.iter_mut().zip(offsets).enumerate() {
            if let Some(owner) = cursor.owner {
                effects
                    .withdrawals
                    .push((self.members[owner].session.clone(), partition as u32));
            }
            cursor.committed = offset;
            cursor.attempts.clear();
            cursor.dead.clear();
            cursor.retrying.clear();
            cursor.paused_until = 0;
            cursor.rewind();
            effects.commits.push((partition as u32, offset));
        }
        self.fill_all(now, source, effects);
    }

    /// Holds every hand-out until `reset` (a point in time is looked up).
    pub fn start_seek(&mut self) {
        self.seeking = true;
    }
}

/// Takes the retries that are due, oldest offset first, up to `room`;
/// notes when the next falls due.
fn take_due_retries(
    cursor: &mut Cursor,
    now: u64,
    room: usize,
    effects: &mut Effects,
) -> Vec<StreamEntry> {
    if cursor.retrying.is_empty() {
        return Vec::new();
    }
    cursor.retrying.sort_by_key(|retry| retry.entry.offset);
    let mut due = Vec::new();
    let mut index = 0;
    while index < cursor.retrying.len() {
        if due.len() < room && cursor.retrying[index].due <= now {
            due.push(cursor.retrying.remove(index).entry);
        } else {
            index += 1;
        }
    }
    if let Some(next) = cursor.retrying.iter().map(|retry| retry.due).min() {
        note_deadline(effects, next.max(now));
    }
    due
}

/// What `read_next` found.
struct Fresh {
    entries: Vec<StreamEntry>,
    /// Offsets retention dropped before they were read.
    skipped: u64,
}

/// Reads up to `room` of the partition's next offsets from what was read
/// ahead or from memory, passing dead letters and waiting retries by; asks
/// for a log read when the next offset is only on disk.
fn read_next(
    cursor: &mut Cursor,
    partition: u32,
    room: usize,
    source: &dyn PartitionSource,
    effects: &mut Effects,
) -> Fresh {
    let mut fresh = Fresh {
        entries: Vec::new(),
        skipped: 0,
    };
    if room == 0 {
        return fresh;
    }
    let bounds = source.bounds(partition);
    if cursor.next < bounds.start {
        fresh.skipped = bounds.start - cursor.next;
        effects.skipped.push(Skipped {
            partition,
            from: cursor.next,
            to: bounds.start,
        });
        cursor.next = bounds.start;
        cursor.read_ahead.clear();
        if cursor.inflight.is_empty() && cursor.retrying.is_empty() {
            cursor.committed = bounds.start;
            effects.commits.push((partition, bounds.start));
        }
    }
    let mut entries: Vec<StreamEntry> = Vec::new();
    while entries.len() < room {
        let Some(front) = cursor.read_ahead.pop_front() else {
            break;
        };
        if front.offset >= cursor.next {
            cursor.next = front.offset + 1;
            if !cursor.parked(front.offset) {
                entries.push(front);
            }
        }
    }
    if entries.len() < room && cursor.next < bounds.end {
        if cursor.next >= bounds.memory_start {
            // Memory holds appends that are not durable yet too.
            while entries.len() < room && cursor.next < bounds.end {
                let readable = usize::try_from(bounds.end - cursor.next).unwrap_or(usize::MAX);
                let want = (room - entries.len()).min(readable);
                let read = source.read_memory(partition, cursor.next, want);
                let Some(last) = read.last() else {
                    break;
                };
                cursor.next = last.offset + 1;
                entries.extend(
                    read.into_iter()
                        .filter(|entry| !cursor.parked(entry.offset)),
                );
            }
        } else if !cursor.fetching {
            cursor.fetching = true;
            effects.fetches.push(Fetch {
                partition,
                from: cursor.next,
                epoch: cursor.epoch,
            });
        }
    }
    fresh.entries = entries;
    fresh
}

fn note_deadline(effects: &mut Effects, at: u64) {
    effects.deadline = Some(effects.deadline.map_or(at, |d| d.min(at)));
}

#[cfg(test)]
mod tests;
