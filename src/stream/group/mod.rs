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
}

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
    /// Handed out and not yet settled, in offset order.
    inflight: VecDeque<Out>,
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

/// One message handed out.
struct Out {
    offset: u64,
    /// When (unix ms).
    at: u64,
    message: Arc<Message>,
}

impl Cursor {
    fn at(offset: u64) -> Cursor {
        Cursor {
            committed: offset,
            next: offset,
            inflight: VecDeque::new(),
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

    /// Moves `committed` up to the oldest message still out (or the next
    /// to hand out), and commits it.
    fn recommit(&mut self, partition: u32, effects: &mut Effects) {
        let committed = self.inflight.front().map_or(self.next, |out| out.offset);
        if committed > self.committed {
            self.committed = committed;
            self.attempts.retain(|(o, _)| *o >= committed);
            self.dead.retain(|o| *o >= committed);
            effects.commits.push((partition, committed));
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
                self.take_back(index, effects);
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
        self.take_back(index, effects);
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
    /// them again from their committed offsets.
    fn take_back(&mut self, index: usize, effects: &mut Effects) {
        let max_attempts = self.settings.max_attempts;
        let session = &self.members[index].session;
        for (partition, cursor) in self.cursors.iter_mut().enumerate() {
            if cursor.owner == Some(index) {
                let partition = partition as u32;
                fail_inflight(
                    cursor,
                    partition,
                    Failure::ReaderLeft,
                    max_attempts,
                    effects,
                );
                effects.withdrawals.push((session.clone(), partition));
                cursor.rewind();
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
    /// inflight limit.
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
        let bounds = source.bounds(partition);
        if cursor.next < bounds.start {
            self.skipped += bounds.start - cursor.next;
            effects.skipped.push(Skipped {
                partition,
                from: cursor.next,
                to: bounds.start,
            });
            cursor.next = bounds.start;
            cursor.read_ahead.clear();
            if cursor.inflight.is_empty() {
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
                entries.push(front);
            }
        }
        entries.retain(|entry| !cursor.dead.contains(&entry.offset));
        if entries.len() < room && cursor.next < bounds.end {
            if cursor.next >= bounds.memory_start {
                // Memory holds appends that are not durable yet too; dead
                // letters are read past.
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
                            .filter(|entry| !cursor.dead.contains(&entry.offset)),
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
        let member = &self.members[owner];
        for entry in entries {
            cursor.inflight.push_back(Out {
                offset: entry.offset,
                at: now,
                message: entry.message.clone(),
            });
            let failed = cursor
                .attempts
                .iter()
                .find(|(offset, _)| *offset == entry.offset)
                .map_or(0, |(_, count)| *count);
            effects.handouts.push(Handout {
                session: member.session.clone(),
                qos: member.qos,
                partition,
                epoch: cursor.epoch,
                entry,
                attempt: failed + 1,
            });
        }
        // Dead-lettered offsets read past may let the commit move on.
        cursor.recommit(partition, effects);
        if let Some(out) = cursor.inflight.front() {
            note_deadline(effects, out.at.saturating_add(timeout));
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
    /// commits it; refused fails it, and the partition pauses for the
    /// stream's backoff before reading it again.
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
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        if cursor.epoch != epoch {
            return;
        }
        let Some(at) = cursor.inflight.iter().position(|out| out.offset == offset) else {
            return;
        };
        match refused {
            Some(reason) => {
                let attempts = cursor.attempt(offset);
                let cause = Failure::Refused(reason);
                effects.failed.push(Failed {
                    partition,
                    offset,
                    attempts,
                    cause,
                });
                if attempts >= self.settings.max_attempts {
                    // Given up on: the partition moves on without it.
                    let out = cursor.inflight.remove(at).expect("found above");
                    effects.dead.push(DeadLetter {
                        partition,
                        offset,
                        attempts,
                        cause,
                        message: out.message,
                    });
                    cursor.dead.push(offset);
                    cursor.recommit(partition, effects);
                    self.fill(partition, now, source, effects);
                    return;
                }
                if let Some(owner) = cursor.owner {
                    effects
                        .withdrawals
                        .push((self.members[owner].session.clone(), partition));
                }
                let backoff = &self.settings.retry_backoff;
                let pause = backoff
                    .get(attempts as usize - 1)
                    .or(backoff.last())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                cursor.rewind();
                cursor.paused_until = now.saturating_add(pause);
            }
            None => {
                cursor.inflight.remove(at);
                cursor.recommit(partition, effects);
            }
        }
        self.fill(partition, now, source, effects);
    }

    /// Fails the deliveries left unacknowledged past the ack timeout, and
    /// resumes partitions whose pause is over.
    pub fn wake(&mut self, now: u64, source: &dyn PartitionSource, effects: &mut Effects) {
        let timeout = self.settings.ack_timeout_ms;
        let max_attempts = self.settings.max_attempts;
        for (partition, cursor) in self.cursors.iter_mut().enumerate() {
            let overdue = cursor
                .inflight
                .front()
                .is_some_and(|out| out.at.saturating_add(timeout) <= now);
            if overdue {
                fail_inflight(
                    cursor,
                    partition as u32,
                    Failure::TimedOut,
                    max_attempts,
                    effects,
                );
                if let Some(owner) = cursor.owner {
                    effects
                        .withdrawals
                        .push((self.members[owner].session.clone(), partition as u32));
                }
                cursor.rewind();
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

/// Counts a failed attempt for each delivery of `cursor` still out; those
/// at `max_attempts` are dead-lettered, to be read past once the cursor
/// rewinds.
fn fail_inflight(
    cursor: &mut Cursor,
    partition: u32,
    cause: Failure,
    max_attempts: u32,
    effects: &mut Effects,
) {
    let outs: Vec<(u64, Arc<Message>)> = cursor
        .inflight
        .iter()
        .map(|out| (out.offset, out.message.clone()))
        .collect();
    for (offset, message) in outs {
        let attempts = cursor.attempt(offset);
        effects.failed.push(Failed {
            partition,
            offset,
            attempts,
            cause,
        });
        if attempts >= max_attempts {
            effects.dead.push(DeadLetter {
                partition,
                offset,
                attempts,
                cause,
                message,
            });
            cursor.dead.push(offset);
        }
    }
}

fn note_deadline(effects: &mut Effects, at: u64) {
    effects.deadline = Some(effects.deadline.map_or(at, |d| d.min(at)));
}

#[cfg(test)]
mod tests;
