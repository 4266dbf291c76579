//! The group state machine driven directly, with time passed in.

use super::*;
use crate::protocol::{Message, MessageProperties};
use crate::session::SessionConfig;

/// Partitions held in memory from `memory_start` on.
struct Log {
    partitions: Vec<Vec<StreamEntry>>,
    start: u64,
    memory_start: u64,
}

impl Log {
    fn new(partitions: usize, per_partition: u64) -> Log {
        let message = Arc::new(Message {
            topic: "orders/k".into(),
            payload: bytes::Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
        });
        let entries = (0..per_partition)
            .map(|offset| StreamEntry {
                offset,
                appended_at: offset,
                message: message.clone(),
            })
            .collect::<Vec<_>>();
        Log {
            partitions: vec![entries; partitions],
            start: 0,
            memory_start: 0,
        }
    }
}

impl PartitionSource for Log {
    fn bounds(&self, partition: u32) -> Bounds {
        Bounds {
            start: self.start,
            memory_start: self.memory_start,
            end: self.partitions[partition as usize].len() as u64,
        }
    }

    fn read_memory(&self, partition: u32, from: u64, max: usize) -> Vec<StreamEntry> {
        self.partitions[partition as usize]
            .iter()
            .filter(|e| e.offset >= from.max(self.memory_start))
            .take(max)
            .cloned()
            .collect()
    }
}

fn settings(max_inflight: usize) -> GroupSettings {
    GroupSettings {
        max_inflight,
        ack_timeout_ms: 30_000,
        retry_backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
        max_attempts: 3,
        ordering: Ordering::Strict,
    }
}

fn relaxed(max_inflight: usize) -> GroupSettings {
    GroupSettings {
        ordering: Ordering::Relaxed,
        ..settings(max_inflight)
    }
}

/// Refuses `offset` with PUBACK 0x80.
fn nack(group: &mut Group, offset: u64, epoch: u32, now: u64, log: &Log) -> Effects {
    let mut effects = Effects::default();
    group.settled(
        0,
        offset,
        epoch,
        Some(ReasonCode::UNSPECIFIED_ERROR),
        now,
        log,
        &mut effects,
    );
    effects
}

fn ack(group: &mut Group, offset: u64, epoch: u32, now: u64, log: &Log) -> Effects {
    let mut effects = Effects::default();
    group.settled(0, offset, epoch, None, now, log, &mut effects);
    effects
}

fn member(id: &str, connection: u64) -> Member {
    Member {
        client_id: id.into(),
        connection,
        qos: QoS::AtLeastOnce,
        session: Arc::new(Session::new(id.into(), SessionConfig::for_tests())),
    }
}

/// `(member, partition, offset)` of each hand-out.
fn handed(effects: &Effects) -> Vec<(String, u32, u64)> {
    effects
        .handouts
        .iter()
        .map(|h| {
            (
                h.session.client_id().to_string(),
                h.partition,
                h.entry.offset,
            )
        })
        .collect()
}

#[test]
fn members_split_the_partitions_and_each_gets_one_message_per_partition_at_a_time() {
    let log = Log::new(4, 3);
    let mut group = Group::new("g".into(), settings(1), &[0; 4]);
    let mut effects = Effects::default();
    group.join(member("b", 1), 0, &log, &mut effects);
    group.join(member("a", 2), 0, &log, &mut effects);
    // b first took all four; a's arrival moves 0 and 1 to a.
    let mut owners: Vec<(String, u32, u64)> = handed(&effects)
        .into_iter()
        .filter(|(who, _, _)| who == "a")
        .collect();
    owners.sort();
    assert_eq!(owners, [("a".into(), 0, 0), ("a".into(), 1, 0)]);
    assert_eq!(effects.withdrawals.len(), 2, "taken back from b");
    assert!(effects.failed.is_empty(), "b did not fail them");
    let reports = group.report();
    let owner_of = |p: usize| reports[p].owner.as_deref().map(str::to_string);
    assert_eq!(
        (0..4).map(owner_of).collect::<Vec<_>>(),
        [
            Some("a".into()),
            Some("a".into()),
            Some("b".into()),
            Some("b".into())
        ]
    );
    let mut next = Effects::default();
    group.fill_all(0, &log, &mut next);
    assert!(next.handouts.is_empty(), "one unacknowledged per partition");
}

#[test]
fn an_acknowledgement_commits_and_hands_out_the_next_offset() {
    let log = Log::new(1, 3);
    let mut group = Group::new("g".into(), settings(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(handed(&effects), [("a".into(), 0, 0)]);
    let epoch = effects.handouts[0].epoch;
    let mut acked = Effects::default();
    group.settled(0, 0, epoch, None, 5, &log, &mut acked);
    assert_eq!(acked.commits, [(0, 1)]);
    assert_eq!(handed(&acked), [("a".into(), 0, 1)]);
    assert_eq!(acked.deadline, Some(5 + 30_000), "the ack timeout is armed");
}

#[test]
fn acknowledgements_out_of_order_commit_only_below_the_oldest_unacknowledged() {
    let log = Log::new(1, 5);
    let mut group = Group::new("g".into(), settings(3), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(effects.handouts.len(), 3);
    let mut later = Effects::default();
    group.settled(0, 1, 0, None, 1, &log, &mut later);
    assert!(later.commits.is_empty(), "offset 0 is still out");
    group.settled(0, 0, 0, None, 1, &log, &mut later);
    assert_eq!(later.commits, [(0, 2)]);
}

#[test]
fn a_negative_ack_pauses_the_partition_for_the_backoff_then_reads_it_again() {
    let log = Log::new(1, 3);
    let mut group = Group::new("g".into(), settings(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    let mut nacked = Effects::default();
    group.settled(
        0,
        0,
        0,
        Some(ReasonCode::UNSPECIFIED_ERROR),
        100,
        &log,
        &mut nacked,
    );
    assert_eq!(
        nacked.failed,
        [Failed {
            partition: 0,
            offset: 0,
            attempts: 1,
            cause: Failure::Refused(ReasonCode::UNSPECIFIED_ERROR)
        }]
    );
    assert!(nacked.handouts.is_empty(), "paused");
    assert_eq!(nacked.deadline, Some(1100), "first backoff step");
    let mut early = Effects::default();
    group.wake(1099, &log, &mut early);
    assert!(early.handouts.is_empty());
    let mut due = Effects::default();
    group.wake(1100, &log, &mut due);
    assert_eq!(handed(&due), [("a".into(), 0, 0)], "the same offset again");
    assert_eq!(due.handouts[0].attempt, 2, "its second attempt");
    assert_eq!(effects.handouts[0].attempt, 1);
    // A report about the first hand-out is stale now.
    let mut stale = Effects::default();
    group.settled(0, 0, 0, None, 1100, &log, &mut stale);
    assert!(stale.commits.is_empty());
    let mut second = Effects::default();
    group.settled(
        0,
        0,
        due.handouts[0].epoch,
        Some(ReasonCode(0x83)),
        1200,
        &log,
        &mut second,
    );
    assert_eq!(second.failed[0].attempts, 2);
    assert_eq!(second.deadline, Some(6200), "second backoff step");
}

#[test]
fn after_max_attempts_a_message_is_dead_lettered_and_the_partition_moves_on() {
    let log = Log::new(1, 3);
    let mut group = Group::new("g".into(), settings(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    let mut now = 0;
    let mut epoch = effects.handouts[0].epoch;
    for attempt in 1..=2 {
        let mut nacked = Effects::default();
        group.settled(0, 0, epoch, Some(ReasonCode(0x80)), now, &log, &mut nacked);
        assert!(nacked.dead.is_empty(), "attempt {attempt}");
        now = nacked.deadline.unwrap();
        let mut again = Effects::default();
        group.wake(now, &log, &mut again);
        assert_eq!(handed(&again), [("a".into(), 0, 0)]);
        assert_eq!(again.handouts[0].attempt, attempt + 1);
        epoch = again.handouts[0].epoch;
    }
    let mut last = Effects::default();
    group.settled(0, 0, epoch, Some(ReasonCode(0x83)), now, &log, &mut last);
    assert_eq!(last.dead.len(), 1);
    let dead = &last.dead[0];
    assert_eq!((dead.offset, dead.attempts), (0, 3));
    assert_eq!(dead.cause.describe(), "0x83");
    assert_eq!(last.commits, [(0, 1)], "read past it");
    assert_eq!(
        handed(&last),
        [("a".into(), 0, 1)],
        "no pause: the next one"
    );
}

#[test]
fn a_dead_letter_is_read_past_when_a_timeout_rewinds_the_partition() {
    let log = Log::new(1, 3);
    let mut group = Group::new(
        "g".into(),
        GroupSettings {
            max_attempts: 1,
            ..settings(2)
        },
        &[0],
    );
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(effects.handouts.len(), 2);
    let mut late = Effects::default();
    group.wake(30_000, &log, &mut late);
    let dead: Vec<u64> = late.dead.iter().map(|d| d.offset).collect();
    assert_eq!(dead, [0, 1], "one attempt each, both timed out");
    assert_eq!(late.dead[0].cause, Failure::TimedOut);
    assert_eq!(handed(&late), [("a".into(), 0, 2)], "only what is left");
    assert_eq!(late.commits, [(0, 2)]);
}

#[test]
fn a_delivery_left_past_the_ack_timeout_is_handed_out_again() {
    let log = Log::new(1, 2);
    let mut group = Group::new("g".into(), settings(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    let mut early = Effects::default();
    group.wake(29_999, &log, &mut early);
    assert!(early.failed.is_empty());
    let mut late = Effects::default();
    group.wake(30_000, &log, &mut late);
    assert_eq!(late.failed.len(), 1);
    assert_eq!(late.withdrawals.len(), 1, "taken back from a");
    assert_eq!(handed(&late), [("a".into(), 0, 0)]);
}

#[test]
fn a_member_that_leaves_fails_its_deliveries_and_its_partitions_go_to_the_others() {
    let log = Log::new(2, 2);
    let mut group = Group::new("g".into(), settings(1), &[0, 0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    group.join(member("b", 2), 0, &log, &mut effects);
    let mut stale_connection = Effects::default();
    assert!(
        !group.leave("b", Some(9), 0, &log, &mut stale_connection),
        "only the connection that joined leaves"
    );
    let mut left = Effects::default();
    assert!(group.leave("b", Some(2), 0, &log, &mut left));
    assert_eq!(left.failed.len(), 1, "b's delivery of partition 1 failed");
    assert_eq!(
        handed(&left),
        [("a".into(), 1, 0)],
        "and goes to a from offset 0"
    );
}

#[test]
fn a_rejoining_client_gets_its_unacknowledged_messages_again() {
    let log = Log::new(1, 2);
    let mut group = Group::new("g".into(), settings(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    let mut rejoined = Effects::default();
    group.join(member("a", 2), 0, &log, &mut rejoined);
    assert_eq!(rejoined.withdrawals.len(), 1);
    assert_eq!(handed(&rejoined), [("a".into(), 0, 0)]);
    assert_eq!(group.members().count(), 1);
}

#[test]
fn members_beyond_the_partition_count_stand_by_and_take_over() {
    let log = Log::new(1, 1);
    let mut group = Group::new("g".into(), settings(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    group.join(member("b", 2), 0, &log, &mut effects);
    assert!(handed(&effects).iter().all(|(who, _, _)| who == "a"));
    let mut left = Effects::default();
    group.leave("a", None, 0, &log, &mut left);
    assert_eq!(handed(&left), [("b".into(), 0, 0)]);
}

#[test]
fn a_group_behind_the_log_start_skips_to_it_and_says_so() {
    let mut log = Log::new(1, 10);
    log.start = 6;
    log.memory_start = 6;
    let mut group = Group::new("g".into(), settings(1), &[2]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(
        effects.skipped,
        [Skipped {
            partition: 0,
            from: 2,
            to: 6
        }]
    );
    assert_eq!(effects.commits, [(0, 6)]);
    assert_eq!(handed(&effects), [("a".into(), 0, 6)]);
    assert_eq!(group.skipped(), 4);
}

#[test]
fn offsets_below_memory_are_fetched_from_the_log_once() {
    let mut log = Log::new(1, 10);
    log.memory_start = 8;
    let mut group = Group::new("g".into(), settings(2), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(
        effects.fetches,
        [Fetch {
            partition: 0,
            from: 0,
            epoch: 0
        }]
    );
    let mut again = Effects::default();
    group.fill_all(0, &log, &mut again);
    assert!(again.fetches.is_empty(), "one read at a time");
    let read: Vec<StreamEntry> = log.partitions[0][..4].to_vec();
    let mut fetched = Effects::default();
    group.fetched(0, 0, read, 0, &log, &mut fetched);
    assert_eq!(handed(&fetched), [("a".into(), 0, 0), ("a".into(), 0, 1)]);
}

#[test]
fn a_reset_moves_every_partition_and_commits_it() {
    let log = Log::new(2, 5);
    let mut group = Group::new("g".into(), settings(1), &[0, 0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    group.start_seek();
    let mut held = Effects::default();
    group.fill_all(0, &log, &mut held);
    assert!(held.handouts.is_empty(), "nothing while seeking");
    let mut reset = Effects::default();
    group.reset(&[3, 4], 0, &log, &mut reset);
    assert_eq!(reset.commits, [(0, 3), (1, 4)]);
    assert_eq!(handed(&reset), [("a".into(), 0, 3), ("a".into(), 1, 4)]);
}

#[test]
fn relaxed_a_refused_message_waits_for_its_retry_while_the_partition_moves_on() {
    let log = Log::new(1, 4);
    let mut group = Group::new("g".into(), relaxed(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(handed(&effects), [("a".into(), 0, 0)]);

    let refused = nack(&mut group, 0, 0, 100, &log);
    assert_eq!(handed(&refused), [("a".into(), 0, 1)], "the next offset");
    assert!(
        refused.withdrawals.is_empty(),
        "offset 1 was not taken back"
    );
    assert_eq!(refused.deadline, Some(1100), "the first backoff step");
    assert!(refused.commits.is_empty(), "offset 0 is not settled");
    assert_eq!(group.report()[0].retrying, 1);

    assert_eq!(
        handed(&ack(&mut group, 1, 0, 200, &log)),
        [("a".into(), 0, 2)]
    );
    let acked = ack(&mut group, 2, 0, 300, &log);
    assert!(acked.commits.is_empty(), "held at the retried offset");
    assert_eq!(handed(&acked), [("a".into(), 0, 3)]);
    assert!(ack(&mut group, 3, 0, 400, &log).handouts.is_empty());

    let mut early = Effects::default();
    group.wake(1099, &log, &mut early);
    assert!(early.handouts.is_empty());
    let mut due = Effects::default();
    group.wake(1100, &log, &mut due);
    assert_eq!(handed(&due), [("a".into(), 0, 0)], "the retry");
    assert_eq!(due.handouts[0].attempt, 2);
    let settled = ack(&mut group, 0, due.handouts[0].epoch, 1200, &log);
    assert_eq!(settled.commits, [(0, 4)], "everything read is settled");
    assert_eq!(group.report()[0].retrying, 0);
}

#[test]
fn relaxed_after_max_attempts_the_retried_message_is_dead_lettered() {
    let log = Log::new(1, 2);
    let mut group = Group::new("g".into(), relaxed(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    nack(&mut group, 0, 0, 0, &log);
    ack(&mut group, 1, 0, 10, &log);
    let mut now = 10;
    for attempt in 2..=3 {
        let mut due = Effects::default();
        now += 5_000;
        group.wake(now, &log, &mut due);
        assert_eq!(handed(&due), [("a".into(), 0, 0)]);
        assert_eq!(due.handouts[0].attempt, attempt);
        let refused = nack(&mut group, 0, due.handouts[0].epoch, now, &log);
        if attempt == 3 {
            assert_eq!(refused.dead.len(), 1, "max_attempts is 3");
            assert_eq!(refused.dead[0].offset, 0);
            assert_eq!(refused.commits, [(0, 2)]);
        } else {
            assert!(refused.dead.is_empty());
        }
    }
}

#[test]
fn relaxed_a_timeout_or_a_departure_sends_the_deliveries_to_the_retry_queue() {
    let log = Log::new(1, 6);
    let mut group = Group::new("g".into(), relaxed(2), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    assert_eq!(handed(&effects).len(), 2);

    let mut timed_out = Effects::default();
    group.wake(30_000, &log, &mut timed_out);
    assert_eq!(timed_out.failed.len(), 2);
    assert_eq!(
        timed_out.withdrawals.len(),
        1,
        "taken back from the session"
    );
    assert_eq!(
        handed(&timed_out),
        [("a".into(), 0, 2), ("a".into(), 0, 3)],
        "the partition went on"
    );
    assert_eq!(group.report()[0].retrying, 2);

    let mut joined = Effects::default();
    group.join(member("b", 2), 30_001, &log, &mut joined);
    let mut left = Effects::default();
    assert!(group.leave("a", Some(1), 30_002, &log, &mut left));
    assert_eq!(
        left.failed.len(),
        2,
        "offsets 2 and 3 failed with their reader"
    );
    assert_eq!(
        handed(&left),
        [("b".into(), 0, 4), ("b".into(), 0, 5)],
        "the next owner goes on"
    );
    assert_eq!(group.report()[0].retrying, 4);
    assert_eq!(group.report()[0].committed, 0);
}

#[test]
fn relaxed_a_partition_stops_moving_on_when_its_retry_queue_is_full() {
    let total = MAX_RETRYING_PER_PARTITION as u64 + 2;
    let log = Log::new(1, total);
    let mut group = Group::new("g".into(), relaxed(1), &[0]);
    let mut effects = Effects::default();
    group.join(member("a", 1), 0, &log, &mut effects);
    let mut last = effects;
    for offset in 0..MAX_RETRYING_PER_PARTITION as u64 {
        assert_eq!(handed(&last), [("a".into(), 0, offset)]);
        last = nack(&mut group, offset, 0, 0, &log);
    }
    assert!(
        last.handouts.is_empty(),
        "the queue is full: the partition waits"
    );
    assert_eq!(group.report()[0].retrying, MAX_RETRYING_PER_PARTITION);
    let mut due = Effects::default();
    group.wake(1_000, &log, &mut due);
    assert_eq!(handed(&due), [("a".into(), 0, 0)], "retries still go out");
}
