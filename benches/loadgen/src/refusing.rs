//! A consumer group that refuses what it is handed, run beside the stream
//! scenario's group that acknowledges everything. Its members answer
//! deliveries with reason 0x80 (v5 PUBACK, or PUBREC at QoS 2), so the
//! broker retries them after the stream's backoff and, after the last
//! attempt, dead-letters them to `$dlq/{group}/{stream}`, where a watcher
//! counts them. A retry storm is then something a run can measure: what it
//! costs the broker, and whether the healthy group notices.
//!
//! The accounting (`RefusalStats`, `DeadLetterStats`) is pure; the loops
//! below only move packets.

use std::time::Duration;

use mqttbytes::QoS;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::BenchError;
use crate::client::{Conn, Incoming, SessionMode, user_property};
use crate::publisher::Clock;
use crate::report::RefusingReport;
use crate::stats::{Delivery, DeliveryTracker};
use crate::subscriber::{Endpoint, Expect, Placed};

/// The refusal reason code as the broker's dead letters name it in their
/// `reason` user property.
const REFUSED_REASON: &str = "0x80";
/// Extra time granted to the loops past the deadline before they are
/// abandoned (they stop by themselves at the deadline).
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// The refusing group of one run.
#[derive(Debug, Clone)]
pub struct RefusingSpec {
    /// `$share/{group}/$stream/{stream}`.
    pub filter: String,
    /// `$dlq/{group}/{stream}`, where the broker publishes the group's
    /// dead letters.
    pub dead_letters: String,
    pub group: String,
    pub members: u32,
    pub qos: QoS,
    /// The same messages the healthy group expects.
    pub expect: Expect,
    /// Every delivery of a key's messages numbered 0, `every`, 2 x `every`,
    /// ... is refused; the rest are acknowledged.
    pub every: u64,
}

/// Whether message `seq` of a key is one the refusing group refuses.
pub fn refuses(every: u64, seq: u64) -> bool {
    seq.is_multiple_of(every.max(1))
}

/// The delivery attempt a stream delivery is: the v5 user property
/// `attempt` the broker adds to re-deliveries (2 for the first), 1 when
/// absent.
pub fn attempt_of(user: &[(String, String)]) -> u32 {
    user_property(user, "attempt")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// What one refusing member observed.
#[derive(Debug)]
pub struct RefusalStats {
    /// Distinct messages handed to this member, whatever the attempt.
    pub tracker: DeliveryTracker,
    /// Every PUBLISH, re-deliveries included.
    pub deliveries: u64,
    /// Deliveries carrying `attempt` > 1.
    pub retries: u64,
    pub max_attempt: u32,
    pub refused: u64,
    pub acked: u64,
    /// Deliveries of messages another run left in the stream, or without
    /// a stamp: acknowledged, so that they do not add to the storm.
    pub foreign: u64,
    pub unexpected_packets: u64,
    pub first_rx: Option<Instant>,
    pub last_rx: Option<Instant>,
    pub error: Option<String>,
}

impl RefusalStats {
    pub fn new(tracker: DeliveryTracker) -> RefusalStats {
        RefusalStats {
            tracker,
            deliveries: 0,
            retries: 0,
            max_attempt: 0,
            refused: 0,
            acked: 0,
            foreign: 0,
            unexpected_packets: 0,
            first_rx: None,
            last_rx: None,
            error: None,
        }
    }

    /// Counts one delivery; returns whether to refuse it.
    pub fn on_delivery(&mut self, placed: Placed, attempt: u32, every: u64) -> bool {
        self.deliveries += 1;
        self.max_attempt = self.max_attempt.max(attempt);
        if attempt > 1 {
            self.retries += 1;
        }
        let refuse = match placed {
            Placed::Source { source, seq, .. } => {
                if self.tracker.record(source, seq) == Delivery::Foreign {
                    self.foreign += 1;
                    false
                } else {
                    refuses(every, seq)
                }
            }
            Placed::Foreign | Placed::Unstamped => {
                self.foreign += 1;
                false
            }
        };
        if refuse {
            self.refused += 1;
        } else {
            self.acked += 1;
        }
        refuse
    }
}

/// What the watcher on the refusing group's dead-letter topic observed.
#[derive(Debug)]
pub struct DeadLetterStats {
    /// Distinct messages dead-lettered.
    pub tracker: DeliveryTracker,
    /// Every dead letter received, copies included.
    pub letters: u64,
    /// Letters for messages of another run, or without a stamp.
    pub foreign: u64,
    /// Letters for messages the members acknowledged: a broker that
    /// dead-letters those has lost track of an acknowledgement.
    pub not_refused: u64,
    /// Letters whose `reason` is not the members' 0x80 (`ack_timeout`,
    /// `reader_left`).
    pub other_reason: u64,
    /// The largest `attempts` user property seen.
    pub max_attempts: u32,
    pub unexpected_packets: u64,
    pub first_rx: Option<Instant>,
    pub last_rx: Option<Instant>,
    pub error: Option<String>,
}

impl DeadLetterStats {
    pub fn new(tracker: DeliveryTracker) -> DeadLetterStats {
        DeadLetterStats {
            tracker,
            letters: 0,
            foreign: 0,
            not_refused: 0,
            other_reason: 0,
            max_attempts: 0,
            unexpected_packets: 0,
            first_rx: None,
            last_rx: None,
            error: None,
        }
    }

    pub fn on_letter(&mut self, placed: Placed, user: &[(String, String)], every: u64) {
        self.letters += 1;
        let attempts = user_property(user, "attempts").and_then(|v| v.parse().ok());
        self.max_attempts = self.max_attempts.max(attempts.unwrap_or(0));
        if user_property(user, "reason") != Some(REFUSED_REASON) {
            self.other_reason += 1;
        }
        match placed {
            Placed::Source { source, seq, .. } => {
                if self.tracker.record(source, seq) == Delivery::Foreign {
                    self.foreign += 1;
                } else if !refuses(every, seq) {
                    self.not_refused += 1;
                }
            }
            Placed::Foreign | Placed::Unstamped => self.foreign += 1,
        }
    }
}

type Ready = mpsc::Sender<Result<(), BenchError>>;
type MemberTask = JoinHandle<Option<(RefusalStats, Conn)>>;
type WatcherTask = JoinHandle<Option<(DeadLetterStats, Conn)>>;

/// The refusing group's members and its dead-letter watcher, running.
pub struct Refusers {
    members: Vec<MemberTask>,
    watcher: WatcherTask,
}

/// What the refusing group and the watcher saw, once stopped.
pub struct Refused {
    pub members: Vec<RefusalStats>,
    pub letters: Option<DeadLetterStats>,
    pub conns: Vec<Conn>,
    /// Clients that never reported.
    pub lost: u32,
}

impl Refused {
    /// Folds the members' and the watcher's counts into one report; a
    /// message two members were handed counts once.
    pub fn report(&self, spec: &RefusingSpec) -> RefusingReport {
        let mut r = RefusingReport {
            group: spec.group.clone(),
            members: spec.members,
            every: spec.every,
            deliveries: 0,
            retries: 0,
            refused: 0,
            acked: 0,
            distinct: 0,
            max_attempt: 0,
            foreign: 0,
            dead_letters: 0,
            dead_letters_distinct: 0,
            dead_letters_not_refused: 0,
            dead_letters_other_reason: 0,
            dead_letter_max_attempts: 0,
            unexpected: 0,
            delivery_span: None,
            letter_span: None,
            errors: self.lost,
            first_error: None,
        };
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        let mut errors = Vec::new();
        let mut handed: Option<DeliveryTracker> = None;
        for m in &self.members {
            r.deliveries += m.deliveries;
            r.retries += m.retries;
            r.refused += m.refused;
            r.acked += m.acked;
            r.foreign += m.foreign;
            r.unexpected += m.unexpected_packets;
            r.max_attempt = r.max_attempt.max(m.max_attempt);
            match &mut handed {
                Some(all) => all.absorb(&m.tracker),
                None => handed = Some(m.tracker.clone()),
            }
            errors.extend(m.error.clone());
            first = earliest(first, m.first_rx);
            last = last.max(m.last_rx);
        }
        r.distinct = handed.map_or(0, |t| t.distinct);
        r.delivery_span = span(first, last);
        if let Some(d) = &self.letters {
            r.dead_letters = d.letters;
            r.dead_letters_distinct = d.tracker.distinct;
            r.dead_letters_not_refused = d.not_refused;
            r.dead_letters_other_reason = d.other_reason;
            r.dead_letter_max_attempts = d.max_attempts;
            r.foreign += d.foreign;
            r.unexpected += d.unexpected_packets;
            r.letter_span = span(d.first_rx, d.last_rx);
            errors.extend(d.error.clone());
        }
        r.errors += errors.len() as u32;
        r.first_error = errors.into_iter().next();
        if r.first_error.is_none() && self.lost > 0 {
            r.first_error = Some(BenchError::TaskLost("refusing").to_string());
        }
        r
    }
}

impl Refusers {
    /// Clients that report on `ready` once subscribed.
    pub fn clients(&self) -> usize {
        self.members.len() + 1
    }

    pub fn abort(&self) {
        self.members.iter().for_each(JoinHandle::abort);
        self.watcher.abort();
    }

    /// Waits for every client to stop (they stop when `stop` turns true,
    /// or at the deadline).
    pub async fn join(self, deadline: Instant) -> Refused {
        let mut out = Refused {
            members: Vec::with_capacity(self.members.len()),
            letters: None,
            conns: Vec::with_capacity(self.members.len() + 1),
            lost: 0,
        };
        for handle in self.members {
            match finish(handle, deadline).await {
                Some((stats, conn)) => {
                    out.members.push(stats);
                    out.conns.push(conn);
                }
                None => out.lost += 1,
            }
        }
        match finish(self.watcher, deadline).await {
            Some((stats, conn)) => {
                out.letters = Some(stats);
                out.conns.push(conn);
            }
            None => out.lost += 1,
        }
        out
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn span(first: Option<Instant>, last: Option<Instant>) -> Option<Duration> {
    Some(last?.saturating_duration_since(first?))
}

async fn finish<T>(mut handle: JoinHandle<Option<T>>, deadline: Instant) -> Option<T> {
    match timeout_at(deadline + JOIN_GRACE, &mut handle).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => None,
        Err(_) => {
            handle.abort();
            None
        }
    }
}

/// Connects and subscribes the refusing members (`{prefix}-r{i}`) and the
/// watcher (`{prefix}-dlq`), each reporting on `ready`, and runs them until
/// `stop`.
pub fn spawn(
    spec: &RefusingSpec,
    prefix: &str,
    to: Endpoint,
    clock: Clock,
    ready: &Ready,
    stop: &watch::Receiver<bool>,
) -> Refusers {
    let members = (0..spec.members)
        .map(|i| {
            let spec = spec.clone();
            let name = format!("{prefix}-r{i}");
            let (ready, mut stop) = (ready.clone(), stop.clone());
            tokio::spawn(async move {
                let mut conn = subscribed(name, &spec.filter, spec.qos, to, clock, ready).await?;
                let mut stats = RefusalStats::new(spec.expect.tracker());
                let every = spec.every;
                let served = serve(&mut conn, clock, &mut stop, |conn, packet| match packet {
                    Incoming::Publish {
                        qos,
                        pkid,
                        payload,
                        user,
                    } => {
                        let placed = spec.expect.place(&payload);
                        let now = Instant::now();
                        stats.first_rx.get_or_insert(now);
                        stats.last_rx = Some(now);
                        let refuse = stats.on_delivery(placed, attempt_of(&user), every);
                        acknowledge(conn, qos, pkid, refuse)
                    }
                    other => answer(conn, other, &mut stats.unexpected_packets),
                })
                .await;
                if let Err(e) = served {
                    stats.error = Some(e.to_string());
                }
                Some((stats, conn))
            })
        })
        .collect();
    let watcher = {
        let spec = spec.clone();
        let name = format!("{prefix}-dlq");
        let (ready, mut stop) = (ready.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = subscribed(name, &spec.dead_letters, spec.qos, to, clock, ready).await?;
            let mut stats = DeadLetterStats::new(spec.expect.tracker());
            let served = serve(&mut conn, clock, &mut stop, |conn, packet| match packet {
                Incoming::Publish {
                    qos,
                    pkid,
                    payload,
                    user,
                } => {
                    let now = Instant::now();
                    stats.first_rx.get_or_insert(now);
                    stats.last_rx = Some(now);
                    stats.on_letter(spec.expect.place(&payload), &user, spec.every);
                    acknowledge(conn, qos, pkid, false)
                }
                other => answer(conn, other, &mut stats.unexpected_packets),
            })
            .await;
            if let Err(e) = served {
                stats.error = Some(e.to_string());
            }
            Some((stats, conn))
        })
    };
    Refusers { members, watcher }
}

/// A clean session subscribed to `filter`; the outcome goes to `ready`.
async fn subscribed(
    name: String,
    filter: &str,
    qos: QoS,
    to: Endpoint,
    clock: Clock,
    ready: Ready,
) -> Option<Conn> {
    let setup = async {
        let mut conn = Conn::open(name, to.version, to.addr, None, 64 * 1024).await?;
        conn.connect(to.keepalive, SessionMode::Clean).await?;
        conn.subscribe(filter, qos).await?;
        Ok::<_, BenchError>(conn)
    };
    let outcome = match timeout_at(clock.deadline, setup).await {
        Ok(outcome) => outcome,
        Err(_) => Err(BenchError::Timeout("subscribing the refusing group")),
    };
    match outcome {
        Ok(conn) => {
            let _ = ready.send(Ok(())).await;
            Some(conn)
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            None
        }
    }
}

fn acknowledge(conn: &mut Conn, qos: QoS, pkid: u16, refuse: bool) -> Result<(), BenchError> {
    match qos {
        QoS::AtMostOnce => Ok(()),
        _ if refuse => conn.queue_refusal(pkid, qos),
        QoS::AtLeastOnce => conn.queue_puback(pkid),
        QoS::ExactlyOnce => conn.queue_pubrec(pkid),
    }
}

/// Everything but PUBLISH: a PUBREL gets its PUBCOMP (refused QoS 2
/// deliveries get none, having no flow left), a DISCONNECT ends the loop.
fn answer(conn: &mut Conn, packet: Incoming, unexpected: &mut u64) -> Result<(), BenchError> {
    match packet {
        Incoming::PubRel { pkid } => conn.queue_pubcomp(pkid),
        Incoming::PingResp => Ok(()),
        Incoming::Disconnect { .. } => Err(conn.unexpected(&packet)),
        _ => {
            *unexpected += 1;
            Ok(())
        }
    }
}

/// Feeds every packet to `on_packet` and writes what it queued, until
/// `stop`, the deadline or an error.
async fn serve<F>(
    conn: &mut Conn,
    clock: Clock,
    stop: &mut watch::Receiver<bool>,
    mut on_packet: F,
) -> Result<(), BenchError>
where
    F: FnMut(&mut Conn, Incoming) -> Result<(), BenchError>,
{
    let mut next_ping = Instant::now() + clock.ping_every;
    loop {
        while let Some(packet) = conn.decode()? {
            on_packet(conn, packet)?;
        }
        let now = Instant::now();
        if now >= next_ping {
            conn.queue_pingreq()?;
            next_ping = now + clock.ping_every;
        }
        if conn.has_pending_writes() {
            match timeout_at(clock.deadline, conn.flush()).await {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            }
        }
        if *stop.borrow() || Instant::now() >= clock.deadline {
            return Ok(());
        }
        tokio::select! {
            result = conn.fill() => result?,
            changed = stop.changed() => {
                if changed.is_err() {
                    // The run ended without a signal.
                    return Ok(());
                }
            }
            _ = sleep_until(next_ping.min(clock.deadline)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: u32, seq: u64) -> Placed {
        Placed::Source {
            source: key,
            seq,
            sent_ns: 0,
        }
    }

    fn user(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn refuse_every_picks_each_keys_messages_by_number() {
        assert!((0..5).all(|seq| refuses(1, seq)));
        let picked: Vec<u64> = (0..7).filter(|&seq| refuses(3, seq)).collect();
        assert_eq!(picked, [0, 3, 6]);
    }

    #[test]
    fn attempt_is_one_unless_the_broker_says_otherwise() {
        assert_eq!(attempt_of(&[]), 1);
        assert_eq!(attempt_of(&user(&[("stream", "s"), ("attempt", "3")])), 3);
        assert_eq!(attempt_of(&user(&[("attempt", "x")])), 1);
    }

    #[test]
    fn a_refusing_member_counts_retries_and_refuses_only_its_picks() {
        let mut stats = RefusalStats::new(DeliveryTracker::with_limits(0, vec![4, 4]));
        assert!(stats.on_delivery(at(0, 0), 1, 2));
        assert!(stats.on_delivery(at(0, 0), 2, 2));
        assert!(!stats.on_delivery(at(0, 1), 1, 2));
        assert!(stats.on_delivery(at(1, 2), 3, 2));
        assert!(!stats.on_delivery(Placed::Foreign, 1, 2));
        assert!(!stats.on_delivery(at(7, 0), 1, 2), "a key beyond the run's");
        assert_eq!(
            (stats.deliveries, stats.retries, stats.max_attempt),
            (6, 2, 3)
        );
        assert_eq!((stats.refused, stats.acked, stats.foreign), (3, 3, 2));
        assert_eq!(stats.tracker.distinct, 3);
    }

    #[test]
    fn a_refusing_groups_report_counts_a_message_handed_to_two_members_once() {
        let tracker = || DeliveryTracker::with_limits(0, vec![4]);
        let mut first = RefusalStats::new(tracker());
        first.on_delivery(at(0, 0), 1, 1);
        first.on_delivery(at(0, 0), 2, 1);
        let mut second = RefusalStats::new(tracker());
        second.on_delivery(at(0, 0), 3, 1);
        second.on_delivery(at(0, 1), 1, 1);
        second.error = Some("closed".to_string());
        let mut letters = DeadLetterStats::new(tracker());
        letters.on_letter(at(0, 0), &user(&[("attempts", "3"), ("reason", "0x80")]), 1);
        let spec = RefusingSpec {
            filter: String::new(),
            dead_letters: String::new(),
            group: "nack".to_string(),
            members: 2,
            qos: QoS::AtLeastOnce,
            expect: Expect::Publishers {
                first: 0,
                count: 1,
                per_publisher: 4,
            },
            every: 1,
        };
        let refused = Refused {
            members: vec![first, second],
            letters: Some(letters),
            conns: Vec::new(),
            lost: 1,
        };
        let r = refused.report(&spec);
        assert_eq!((r.deliveries, r.retries, r.refused), (4, 2, 4));
        assert_eq!((r.distinct, r.max_attempt), (2, 3));
        assert_eq!((r.dead_letters, r.dead_letters_distinct), (1, 1));
        assert_eq!(r.errors, 2, "one lost client, one error");
        assert_eq!(r.first_error.as_deref(), Some("closed"));
    }

    #[test]
    fn dead_letters_are_checked_against_what_was_refused() {
        let mut stats = DeadLetterStats::new(DeliveryTracker::with_limits(0, vec![4]));
        let refused = user(&[("attempts", "3"), ("reason", "0x80")]);
        stats.on_letter(at(0, 0), &refused, 2);
        stats.on_letter(at(0, 0), &refused, 2);
        stats.on_letter(at(0, 1), &refused, 2);
        stats.on_letter(
            at(0, 2),
            &user(&[("attempts", "1"), ("reason", "reader_left")]),
            2,
        );
        stats.on_letter(Placed::Unstamped, &[], 2);
        assert_eq!((stats.letters, stats.tracker.distinct), (5, 3));
        assert_eq!(stats.tracker.duplicates, 1);
        assert_eq!(
            (stats.not_refused, stats.other_reason, stats.foreign),
            (1, 2, 1)
        );
        assert_eq!(stats.max_attempts, 3);
    }
}
