//! Durability under SIGKILL: the real `petrel` binary, `durability = "sync"`,
//! killed with SIGKILL while clients publish and receive, then started again
//! on the same data directory and port.
//!
//! The promise under test: once a QoS 1 message has its PUBACK or a QoS 2
//! message its PUBREC, it and every copy queued for persistent subscribers
//! are on disk, and persistent sessions (subscriptions, queued and inflight
//! messages, inbound QoS 2 identifiers awaiting PUBREL) survive the crash.
//! The clients are written as correct MQTT 3.1.1 clients (re-send on
//! reconnect, QoS 2 receiver state kept across connections), so every loss
//! or duplicate the test reports is the broker's.
//!
//! `crash/broker.rs` runs the binary, `crash/client.rs` is the connection
//! that survives crashes, `crash/publisher.rs` and `crash/subscriber.rs` are
//! the two client roles. Set `PETREL_CRASH_SEED` to replay a run's kill
//! timings.

#[path = "crash/broker.rs"]
mod broker;
#[path = "crash/client.rs"]
mod client;
#[path = "crash/publisher.rs"]
mod publisher;
mod raw;
#[path = "crash/rng.rs"]
mod rng;
#[path = "crash/subscriber.rs"]
mod subscriber;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout, timeout_at};

use broker::BrokerProcess;
use client::Conn;
use raw::{PUBACK, PUBLISH, Publish, SUBACK};
use rng::XorShift;
use subscriber::{Inbox, SharedInbox, lock};

/// How long a step that a healthy broker finishes in milliseconds may take.
const WAIT: Duration = Duration::from_secs(10);

const ROUNDS: usize = 5;
const PUBLISHERS: [(&str, u8); 4] = [("q1-0", 1), ("q1-1", 1), ("q2-0", 2), ("q2-1", 2)];
const SUBSCRIBERS: usize = 2;

/// Random time between traffic resuming and the next SIGKILL.
const KILL_AFTER_MS: (u64, u64) = (300, 1500);

/// Time the publishers get to finish their flows in progress once told to
/// stop.
const PUBLISHER_DRAIN: Duration = Duration::from_secs(10);

/// Bounds on waiting for the subscribers to receive every acknowledged
/// message: in all, and without a single new delivery.
const DELIVERY_DRAIN: Duration = Duration::from_secs(30);
const DELIVERY_STALL: Duration = Duration::from_secs(5);

/// Silence after the last expected message in which a late duplicate would
/// still be caught.
const QUIET: Duration = Duration::from_millis(500);

fn seed() -> u64 {
    if let Ok(seed) = std::env::var("PETREL_CRASH_SEED") {
        return seed.parse().expect("PETREL_CRASH_SEED is a u64");
    }
    XorShift::from_clock().next_u64()
}

/// Polls `done` every few milliseconds until it holds or `within` passes.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn join<T>(handle: JoinHandle<T>, within: Duration, what: &str) -> T {
    match timeout(within, handle).await {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
        Err(_) => panic!("{what} did not finish within {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_repeated_sigkill_under_load() {
    let seed = seed();
    println!("seed {seed} (PETREL_CRASH_SEED={seed} replays the kill timings)");
    let mut rng = XorShift::new(seed);
    let mut broker = BrokerProcess::start("load").await;
    let addr = broker.addr();

    let (stop_subscribers, subscribers_stop) = watch::channel(false);
    let inboxes: Vec<SharedInbox> = (0..SUBSCRIBERS)
        .map(|_| Arc::new(Mutex::new(Inbox::default())))
        .collect();
    let subscriber_tasks: Vec<JoinHandle<()>> = inboxes
        .iter()
        .enumerate()
        .map(|(n, inbox)| {
            tokio::spawn(subscriber::run(
                addr,
                format!("crash-sub-{n}"),
                "crash/#",
                inbox.clone(),
                subscribers_stop.clone(),
            ))
        })
        .collect();
    assert!(
        wait_until(WAIT, || inboxes.iter().all(|inbox| lock(inbox).subscribed)).await,
        "the subscribers did not get their SUBACKs"
    );

    let (stop_publishers, publishers_stop) = watch::channel(None);
    let acked = Arc::new(AtomicU64::new(0));
    let publisher_tasks: Vec<JoinHandle<publisher::Report>> = PUBLISHERS
        .iter()
        .map(|&(name, qos)| {
            let spec = publisher::Spec {
                name: name.to_string(),
                qos,
                topic: format!("crash/q{qos}/{name}"),
            };
            tokio::spawn(publisher::run(
                addr,
                spec,
                publishers_stop.clone(),
                acked.clone(),
            ))
        })
        .collect();

    for round in 1..=ROUNDS {
        // Kill only while messages flow, not while clients still reconnect.
        let before = acked.load(Ordering::Relaxed);
        assert!(
            wait_until(WAIT, || acked.load(Ordering::Relaxed) > before + 10).await,
            "round {round}: no traffic acknowledged within {WAIT:?} of the (re)start"
        );
        let (low, high) = KILL_AFTER_MS;
        let kill_after = Duration::from_millis(low + rng.below(high - low + 1));
        sleep(kill_after).await;
        let acked_at_kill = acked.load(Ordering::Relaxed);
        let restart = broker.kill_and_restart().await;
        println!(
            "round {round}: SIGKILL after {kill_after:?} of traffic, {acked_at_kill} acknowledged \
             so far; listening again after {restart:?}"
        );
    }
    let before = acked.load(Ordering::Relaxed);
    assert!(
        wait_until(WAIT, || acked.load(Ordering::Relaxed) > before + 10).await,
        "no traffic acknowledged within {WAIT:?} of the last restart"
    );

    stop_publishers
        .send(Some(Instant::now() + PUBLISHER_DRAIN))
        .expect("publishers listen");
    let mut reports = Vec::new();
    for task in publisher_tasks {
        reports.push(join(task, PUBLISHER_DRAIN + WAIT, "a publisher").await);
    }

    let expected_q1 = acknowledged(&reports, 1);
    let expected_q2 = acknowledged(&reports, 2);
    let all_arrived = || {
        inboxes.iter().all(|inbox| {
            let inbox = lock(inbox);
            expected_q1.iter().all(|p| inbox.qos1.contains_key(p))
                && expected_q2.iter().all(|p| inbox.qos2.contains_key(p))
        })
    };
    let latest_delivery = || {
        inboxes
            .iter()
            .filter_map(|inbox| lock(inbox).last_delivery)
            .max()
    };
    let drain_started = Instant::now();
    let drain_deadline = drain_started + DELIVERY_DRAIN;
    loop {
        let now = Instant::now();
        let quiet_since = latest_delivery().map_or(drain_started, |at| at.max(drain_started));
        if now >= drain_deadline {
            break;
        }
        if all_arrived() {
            if now.duration_since(quiet_since) >= QUIET {
                break;
            }
        } else if now.duration_since(quiet_since) >= DELIVERY_STALL {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    println!(
        "delivery drain: {:?}{}",
        drain_started.elapsed(),
        if all_arrived() {
            ""
        } else {
            " (gave up: acknowledged messages still missing)"
        }
    );

    stop_subscribers.send(true).expect("subscribers listen");
    for task in subscriber_tasks {
        join(task, WAIT, "a subscriber").await;
    }
    let log = broker.log();
    drop(broker);

    let verdict = judge(&reports, &inboxes, &expected_q1, &expected_q2);
    println!("{}", verdict.summary);
    if !log.is_empty() {
        let lines: Vec<&str> = log.lines().collect();
        println!(
            "broker log ({} lines, last 20):\n{}",
            lines.len(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    assert!(
        verdict.failures.is_empty(),
        "durability violated (seed {seed}):\n  {}",
        verdict.failures.join("\n  ")
    );
}

/// Payloads of every message of `qos` whose PUBACK (QoS 1) or PUBREC (QoS 2)
/// arrived.
fn acknowledged(reports: &[publisher::Report], qos: u8) -> HashSet<String> {
    reports
        .iter()
        .filter(|report| report.qos == qos)
        .flat_map(|report| {
            report
                .acked
                .iter()
                .map(|&seq| publisher::payload(&report.name, seq))
        })
        .collect()
}

struct Verdict {
    summary: String,
    failures: Vec<String>,
}

fn judge(
    reports: &[publisher::Report],
    inboxes: &[SharedInbox],
    expected_q1: &HashSet<String>,
    expected_q2: &HashSet<String>,
) -> Verdict {
    let mut summary = String::new();
    let mut failures = Vec::new();
    let _ = writeln!(summary, "rounds: {ROUNDS} SIGKILLs");
    for qos in [1, 2] {
        let of_qos = reports.iter().filter(|r| r.qos == qos);
        let published: u64 = of_qos.clone().map(|r| r.published).sum();
        let acked: usize = of_qos.clone().map(|r| r.acked.len()).sum();
        let reconnects: u32 = of_qos.clone().map(|r| r.reconnects).sum();
        let _ = writeln!(
            summary,
            "QoS {qos}: published {published}, acknowledged {acked}, publisher reconnects {reconnects}"
        );
    }
    for report in reports {
        if report.sessions_lost > 0 {
            failures.push(format!(
                "publisher {}: session gone (session present = 0) after {} of {} reconnects",
                report.name, report.sessions_lost, report.reconnects
            ));
        }
        if report.unfinished > 0 {
            failures.push(format!(
                "publisher {}: {} flows still unacknowledged {PUBLISHER_DRAIN:?} after stopping",
                report.name, report.unfinished
            ));
        }
        failures.extend(report.anomalies.iter().cloned());
    }

    let published: HashSet<String> = reports
        .iter()
        .flat_map(|report| (0..report.published).map(|seq| publisher::payload(&report.name, seq)))
        .collect();
    for (n, inbox) in inboxes.iter().enumerate() {
        let inbox = lock(inbox);
        let name = format!("subscriber {n}");
        let missing_q1: Vec<&String> = expected_q1
            .iter()
            .filter(|p| !inbox.qos1.contains_key(*p))
            .collect();
        let missing_q2: Vec<&String> = expected_q2
            .iter()
            .filter(|p| !inbox.qos2.contains_key(*p))
            .collect();
        let q1_extra: u32 = inbox.qos1.values().map(|&c| c - 1).sum();
        let q2_twice: Vec<&String> = inbox
            .qos2
            .iter()
            .filter(|&(_, &count)| count > 1)
            .map(|(payload, _)| payload)
            .collect();
        let _ = writeln!(
            summary,
            "{name}: {} deliveries; QoS 1 {} distinct, {q1_extra} duplicates, {} acknowledged \
             missing; QoS 2 {} distinct, {} delivered more than once, {} acknowledged missing, \
             {} re-sends suppressed by the PUBREL set; {} reconnects",
            inbox.deliveries,
            inbox.qos1.len(),
            missing_q1.len(),
            inbox.qos2.len(),
            q2_twice.len(),
            missing_q2.len(),
            inbox.qos2_redelivered_and_suppressed,
            inbox.reconnects,
        );
        if inbox.sessions_lost > 0 {
            failures.push(format!(
                "{name}: session gone (session present = 0) after {} of {} reconnects",
                inbox.sessions_lost, inbox.reconnects
            ));
        }
        if !missing_q1.is_empty() {
            failures.push(format!(
                "{name}: {} of {} acknowledged QoS 1 messages never arrived, e.g. {:?}",
                missing_q1.len(),
                expected_q1.len(),
                sample(&missing_q1)
            ));
        }
        if !missing_q2.is_empty() {
            failures.push(format!(
                "{name}: {} of {} acknowledged QoS 2 messages never arrived, e.g. {:?}",
                missing_q2.len(),
                expected_q2.len(),
                sample(&missing_q2)
            ));
        }
        if !q2_twice.is_empty() {
            failures.push(format!(
                "{name}: {} QoS 2 messages delivered more than once, e.g. {:?}",
                q2_twice.len(),
                sample(&q2_twice)
            ));
        }
        let strangers: Vec<&String> = inbox
            .qos1
            .keys()
            .filter(|p| !p.starts_with("q1-") || !published.contains(*p))
            .chain(
                inbox
                    .qos2
                    .keys()
                    .filter(|p| !p.starts_with("q2-") || !published.contains(*p)),
            )
            .collect();
        if !strangers.is_empty() {
            failures.push(format!(
                "{name}: {} deliveries never published (or at the wrong QoS), e.g. {:?}",
                strangers.len(),
                sample(&strangers)
            ));
        }
        failures.extend(inbox.anomalies.iter().cloned());
    }
    Verdict { summary, failures }
}

fn sample<'a>(payloads: &[&'a String]) -> Vec<&'a str> {
    let mut sorted: Vec<&str> = payloads.iter().map(|p| p.as_str()).collect();
    sorted.sort_unstable();
    sorted.truncate(5);
    sorted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_for_an_offline_session_survive_sigkill() {
    const MESSAGES: u16 = 50;
    let mut broker = BrokerProcess::start("offline").await;
    let addr = broker.addr();
    let open = |id: &'static str, clean: bool| async move {
        Conn::open(addr, id, clean, Instant::now() + WAIT)
            .await
            .unwrap_or_else(|failure| panic!("{failure}"))
    };

    let (mut subscriber, _) = open("crash-offline-sub", false).await;
    subscriber
        .send(&raw::subscribe(1, None, &[(b"offline/#", 1)]))
        .await
        .expect("SUBSCRIBE written");
    let suback = subscriber.expect_within(WAIT).await;
    assert_eq!(
        (suback.kind(), suback.body.as_slice()),
        (SUBACK, &[0, 1, 1][..]),
        "SUBACK granting QoS 1 expected"
    );
    subscriber.disconnect().await;

    let (mut publisher, _) = open("crash-offline-pub", true).await;
    for id in 1..=MESSAGES {
        let publish = raw::publish_v311("offline/queued", 1, id, format!("m{id}").as_bytes());
        publisher.send(&publish).await.expect("PUBLISH written");
    }
    let mut unacked: HashSet<u16> = (1..=MESSAGES).collect();
    while !unacked.is_empty() {
        let ack = publisher.expect_within(WAIT).await;
        assert_eq!(ack.kind(), PUBACK, "PUBACK expected, got {ack:?}");
        assert!(unacked.remove(&ack.packet_id()), "stray {ack:?}");
    }

    broker.kill_and_restart().await;

    let (mut subscriber, present) = open("crash-offline-sub", false).await;
    assert!(
        present,
        "the persistent session did not survive SIGKILL (CONNACK session present = 0)"
    );
    let mut missing: HashSet<String> = (1..=MESSAGES).map(|id| format!("m{id}")).collect();
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let Ok(packet) = timeout_at(deadline, subscriber.recv()).await else {
            panic!(
                "{} of {MESSAGES} acknowledged messages never arrived after the restart",
                missing.len()
            );
        };
        let packet = packet.expect("the restarted broker kept the connection open");
        assert_eq!(packet.kind(), PUBLISH, "PUBLISH expected, got {packet:?}");
        let publish = Publish::parse(&packet, false);
        assert_eq!(publish.qos, 1, "delivered at the subscribed QoS");
        let packet_id = publish.packet_id.expect("QoS 1 has a packet id");
        missing.remove(String::from_utf8_lossy(&publish.payload).as_ref());
        subscriber
            .send(&raw::ack(0x40, packet_id))
            .await
            .expect("PUBACK written");
    }
    subscriber.disconnect().await;
}
