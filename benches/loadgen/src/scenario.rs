//! Running a traffic scenario (fan-in, fan-out, pairs, stream) as `plan`
//! lays it out: connect and subscribe everyone (and a stream's refusing
//! group), start every publisher at once, wait for the deliveries, report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use crate::client::{Conn, Version};
use crate::plan::{Plan, expected_deliveries, plan};
use crate::progress::{Live, Reporter};
use crate::publisher::{self, Clock, PublisherSpec, PublisherStats};
use crate::refusing;
use crate::report::{TrafficReport, rate};
use crate::stats::{DeliveryTracker, Histogram, cpu_percent};
use crate::subscriber::{self, Endpoint, SubscriberSpec, SubscriberStats};
use crate::{BenchArgs, BenchError, Scenario, broker_cpu_ticks, broker_rss_kb, ping_every, run_id};

/// Read buffer size of a traffic connection.
const READ_CHUNK: usize = 64 * 1024;
/// Extra time granted to client tasks past the deadline before they are
/// abandoned (they stop by themselves at the deadline).
const JOIN_GRACE: Duration = Duration::from_secs(5);

type Ready = mpsc::Sender<Result<(), BenchError>>;
type SubTask = JoinHandle<Option<(SubscriberStats, Conn)>>;
type PubTask = JoinHandle<Option<(PublisherStats, Conn)>>;

/// Waits until `count` clients said they are ready; the first setup error
/// (or the deadline) fails the run.
async fn wait_ready(
    ready: &mut mpsc::Receiver<Result<(), BenchError>>,
    count: usize,
    deadline: Instant,
    phase: &'static str,
) -> Result<(), BenchError> {
    for _ in 0..count {
        match timeout_at(deadline, ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(BenchError::TaskLost(phase)),
            Err(_) => return Err(BenchError::Timeout(phase)),
        }
    }
    Ok(())
}

fn spawn_subscriber(
    spec: SubscriberSpec,
    name: String,
    args: (&BenchArgs, SocketAddr, Version),
    clock: Clock,
    ready: Ready,
    done: watch::Receiver<bool>,
    live: Option<Arc<Live>>,
) -> SubTask {
    let (args, addr, version) = args;
    let to = Endpoint {
        addr,
        version,
        keepalive: args.keepalive,
    };
    tokio::spawn(async move {
        let setup = subscriber::connect(name, &spec, to, READ_CHUNK);
        let mut conn = match timeout_at(clock.deadline, setup).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let _ = ready.send(Err(e)).await;
                return None;
            }
            Err(_) => {
                let _ = ready
                    .send(Err(BenchError::Timeout("connecting subscribers")))
                    .await;
                return None;
            }
        };
        let _ = ready.send(Ok(())).await;
        drop(ready);
        let stats = subscriber::run(&mut conn, &spec, clock, done, live).await;
        Some((stats, conn))
    })
}

fn spawn_publisher(
    spec: PublisherSpec,
    name: String,
    args: (&BenchArgs, SocketAddr, Version),
    clock: Clock,
    ready: Ready,
    mut go: watch::Receiver<bool>,
    live: Option<Arc<Live>>,
) -> PubTask {
    let (args, addr, version) = args;
    let keepalive = args.keepalive;
    tokio::spawn(async move {
        let setup = async {
            let mut conn = Conn::open(name, version, addr, None, READ_CHUNK).await?;
            let receive_max = conn.handshake(keepalive).await?;
            Ok::<_, BenchError>((conn, receive_max))
        };
        let (mut conn, receive_max) = match timeout_at(clock.deadline, setup).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = ready.send(Err(e)).await;
                return None;
            }
            Err(_) => {
                let _ = ready
                    .send(Err(BenchError::Timeout("connecting publishers")))
                    .await;
                return None;
            }
        };
        let _ = ready.send(Ok(())).await;
        drop(ready);
        // Start together: wait for the go signal (or give up at the deadline).
        while !*go.borrow_and_update() {
            match timeout_at(clock.deadline, go.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
        let stats = publisher::run(&mut conn, version, &spec, receive_max, clock, live).await;
        Some((stats, conn))
    })
}

/// Joins client tasks, giving up on any still running well past the deadline.
async fn join_all<T>(handles: Vec<JoinHandle<Option<T>>>, deadline: Instant) -> (Vec<T>, u32) {
    let mut done = Vec::with_capacity(handles.len());
    let mut lost = 0;
    for mut handle in handles {
        match timeout_at(deadline + JOIN_GRACE, &mut handle).await {
            Ok(Ok(Some(v))) => done.push(v),
            Ok(_) => lost += 1,
            Err(_) => {
                handle.abort();
                lost += 1;
            }
        }
    }
    (done, lost)
}

/// Says goodbye politely so brokers do not log abrupt disconnects.
async fn disconnect_all(conns: Vec<Conn>) {
    let goodbyes = conns.into_iter().map(|mut conn| {
        tokio::spawn(async move {
            if conn.queue_disconnect().is_ok() {
                let _ = timeout(Duration::from_secs(1), conn.flush()).await;
            }
        })
    });
    for handle in goodbyes.collect::<Vec<_>>() {
        let _ = handle.await;
    }
}

/// Runs a fan-in, fan-out or pairs benchmark.
pub async fn run(
    args: &BenchArgs,
    addr: SocketAddr,
    version: Version,
) -> Result<TrafficReport, BenchError> {
    let run = run_id();
    let plan = plan(args, &run);
    let live = Live::for_terminal(args.scenario, plan.group);
    let base = Instant::now();
    let clock = Clock {
        base,
        deadline: base + Duration::from_secs(args.timeout),
        ping_every: ping_every(args.keepalive),
    };
    let rss_before_kb = broker_rss_kb(args.broker_pid)?;
    let n_subs = plan.subscribers.len();
    let n_pubs = plan.publishers.len();
    let (ready_tx, mut ready_rx) = mpsc::channel(n_subs + n_pubs);
    let (go_tx, go_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    // The refusing group is stopped once the healthy one is done: under
    // strict ordering it may never catch up, and the run has to end.
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = (args, addr, version);
    let to = Endpoint {
        addr,
        version,
        keepalive: args.keepalive,
    };

    let sub_names: Vec<String> = (0..n_subs).map(|i| format!("bench-{run}-s{i}")).collect();
    let subs: Vec<SubTask> = plan
        .subscribers
        .iter()
        .zip(&sub_names)
        .map(|(spec, name)| {
            spawn_subscriber(
                spec.clone(),
                name.clone(),
                ctx,
                clock,
                ready_tx.clone(),
                done_rx.clone(),
                live.clone(),
            )
        })
        .collect();
    if let Err(e) = wait_ready(&mut ready_rx, n_subs, clock.deadline, "subscribing").await {
        subs.iter().for_each(JoinHandle::abort);
        return Err(e);
    }
    tracing::info!(subscribers = n_subs, "subscribers ready");
    let refusers = plan.refusing.as_ref().map(|spec| {
        refusing::spawn(
            spec,
            &format!("bench-{run}"),
            to,
            clock,
            &ready_tx,
            &stop_rx,
        )
    });
    if let Some(refusers) = &refusers {
        let joined = wait_ready(
            &mut ready_rx,
            refusers.clients(),
            clock.deadline,
            "subscribing the refusing group",
        )
        .await;
        if let Err(e) = joined {
            subs.iter().for_each(JoinHandle::abort);
            refusers.abort();
            return Err(e);
        }
    }

    let pubs: Vec<PubTask> = plan
        .publishers
        .iter()
        .map(|spec| {
            let name = format!("bench-{run}-p{}", spec.id);
            spawn_publisher(
                spec.clone(),
                name,
                ctx,
                clock,
                ready_tx.clone(),
                go_rx.clone(),
                live.clone(),
            )
        })
        .collect();
    drop(ready_tx);
    if let Err(e) = wait_ready(
        &mut ready_rx,
        n_pubs,
        clock.deadline,
        "connecting publishers",
    )
    .await
    {
        subs.iter().for_each(JoinHandle::abort);
        pubs.iter().for_each(JoinHandle::abort);
        refusers.iter().for_each(refusing::Refusers::abort);
        return Err(e);
    }
    let rss_connected_kb = broker_rss_kb(args.broker_pid)?;
    tracing::info!(publishers = n_pubs, "publishers ready, starting");

    let cpu_start = broker_cpu_ticks(args.broker_pid)?;
    let start = Instant::now();
    let _ = go_tx.send(true);
    let reporter = live.map(|live| Reporter::start(live, start));
    let (pub_results, pubs_lost) = join_all(pubs, clock.deadline).await;
    let cpu_end = broker_cpu_ticks(args.broker_pid)?;
    let publishing = start.elapsed();
    let _ = done_tx.send(true);
    let (sub_results, subs_lost) = join_all(subs, clock.deadline).await;
    let elapsed = start.elapsed();
    drop(reporter);
    let _ = stop_tx.send(true);
    let rss_end_kb = broker_rss_kb(args.broker_pid)?;
    let mut refused = match refusers {
        Some(refusers) => Some(refusers.join(clock.deadline).await),
        None => None,
    };

    let mut conns = Vec::with_capacity(pub_results.len() + sub_results.len());
    let mut persistent_conns = Vec::new();
    let mut pub_stats = Vec::with_capacity(pub_results.len());
    for (stats, conn) in pub_results {
        pub_stats.push(stats);
        conns.push(conn);
    }
    let mut sub_stats = Vec::with_capacity(sub_results.len());
    for (stats, conn) in sub_results {
        sub_stats.push(stats);
        if args.persistent {
            persistent_conns.push(conn);
        } else {
            conns.push(conn);
        }
    }
    if let Some(refused) = &mut refused {
        conns.append(&mut refused.conns);
    }
    disconnect_all(conns).await;
    if args.persistent {
        subscriber::end_sessions(sub_names, persistent_conns, to).await;
    }

    let mut report = summarize(args, &plan, &pub_stats, &sub_stats);
    report.elapsed = elapsed;
    report.rss_before_kb = rss_before_kb;
    report.rss_connected_kb = rss_connected_kb;
    report.rss_end_kb = rss_end_kb;
    report.broker_cpu_pct = cpu_percent(cpu_start, cpu_end, publishing.as_secs_f64());
    if let (Some(refused), Some(spec)) = (&refused, &plan.refusing) {
        report.refusing = Some(refused.report(spec));
    }
    report.errors += pubs_lost + subs_lost;
    if pubs_lost + subs_lost > 0 && report.first_error.is_none() {
        report.first_error = Some(BenchError::TaskLost("running").to_string());
    }
    Ok(report)
}

fn span(first: Option<Instant>, last: Option<Instant>) -> Option<Duration> {
    Some(last?.saturating_duration_since(first?))
}

/// The subscribers' trackers as the report counts them: a group's members
/// folded into one, so that a message two members received counts once.
fn trackers(plan: &Plan, subs: &[SubscriberStats]) -> Vec<DeliveryTracker> {
    let mut all = subs.iter().map(|s| s.tracker.clone());
    if !plan.group {
        return all.collect();
    }
    let Some(mut merged) = all.next() else {
        return Vec::new();
    };
    for member in all {
        merged.absorb(&member);
    }
    vec![merged]
}

/// Folds per-client results into one report. Expected deliveries come from
/// the plan, so a subscriber that never reported counts as lost messages.
fn summarize(
    args: &BenchArgs,
    plan: &Plan,
    pubs: &[PublisherStats],
    subs: &[SubscriberStats],
) -> TrafficReport {
    let mut latency = Histogram::new();
    let mut ack_latency = Histogram::new();
    let expected = expected_deliveries(plan, pubs);
    let mut r = TrafficReport {
        label: args.label.clone(),
        scenario: args.scenario.name(),
        protocol: args.protocol,
        qos: args.qos_level(),
        publishers: plan.publishers.len() as u32,
        subscribers: plan.subscribers.len() as u32,
        stream: (args.scenario == Scenario::Stream).then(|| args.stream.clone()),
        keys: (args.scenario == Scenario::Stream).then_some(args.keys),
        group: plan.group.then(|| args.group.clone()),
        persistent: args.persistent,
        messages_per_publisher: args.messages,
        payload: args.payload,
        offered_rate: args.rate,
        max_inflight: args.max_inflight,
        sent: 0,
        acked: 0,
        rejected: 0,
        expected,
        received: 0,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        foreign: 0,
        wrong_qos: 0,
        unexpected: 0,
        publish_rate: None,
        ack_rate: None,
        delivered_rate: None,
        latency: Histogram::new(),
        ack_latency: Histogram::new(),
        elapsed: Duration::ZERO,
        rss_before_kb: None,
        rss_connected_kb: None,
        rss_end_kb: None,
        broker_cpu_pct: None,
        refusing: None,
        timed_out: 0,
        errors: 0,
        first_error: None,
    };
    let (mut first_send, mut last_send, mut last_ack) = (None::<Instant>, None::<Instant>, None);
    for p in pubs {
        r.sent += p.sent;
        r.acked += p.acked;
        r.rejected += p.rejected;
        r.unexpected += p.unexpected_acks + p.unexpected_packets;
        r.timed_out += u32::from(p.timed_out);
        ack_latency.merge(&p.ack_latency);
        first_send = min_opt(first_send, p.first_send);
        last_send = max_opt(last_send, p.last_send);
        last_ack = max_opt(last_ack, p.last_ack);
        note_error(&mut r, p.error.as_deref());
    }
    for t in trackers(plan, subs) {
        r.received += t.received;
        r.delivered += t.distinct;
        r.duplicated += t.duplicates;
        r.out_of_order += t.out_of_order;
        r.foreign += t.foreign;
    }
    let (mut first_rx, mut last_rx) = (None::<Instant>, None::<Instant>);
    for s in subs {
        r.received += s.unstamped;
        r.foreign += s.unstamped;
        r.wrong_qos += s.wrong_qos;
        r.unexpected += s.unexpected_packets;
        r.timed_out += u32::from(s.timed_out);
        latency.merge(&s.latency);
        first_rx = min_opt(first_rx, s.first_rx);
        last_rx = max_opt(last_rx, s.last_rx);
        note_error(&mut r, s.error.as_deref());
    }
    r.lost = expected.saturating_sub(r.delivered);
    r.publish_rate = rate(r.sent, span(first_send, last_send));
    r.ack_rate = rate(r.acked, span(first_send, last_ack));
    r.delivered_rate = rate(r.delivered, span(first_rx, last_rx));
    r.latency = latency;
    r.ack_latency = ack_latency;
    r
}

fn note_error(r: &mut TrafficReport, error: Option<&str>) {
    if let Some(e) = error {
        r.errors += 1;
        if r.first_error.is_none() {
            r.first_error = Some(e.to_string());
        }
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::SessionMode;
    use crate::plan::tests::{args, sent};
    use crate::subscriber::PERSISTENT_EXPIRY_SECS;

    #[test]
    fn persistent_applies_to_subscribers_only_and_clean_is_the_default() {
        let a = args(&["--scenario", "pairs", "--pairs", "2"]);
        let p = plan(&a, "r");
        assert!(
            p.subscribers
                .iter()
                .all(|s| s.session == SessionMode::Clean)
        );
        let a = args(&["--scenario", "fan-in", "--persistent"]);
        let p = plan(&a, "r");
        assert_eq!(
            p.subscribers[0].session,
            SessionMode::Persistent {
                expiry_secs: PERSISTENT_EXPIRY_SECS
            }
        );
        let r = summarize(&a, &p, &[], &[]);
        assert!(r.persistent);
        assert!(r.render(true).contains(r#""persistent":true"#));
    }

    fn member(received: &[(u32, u64)]) -> SubscriberStats {
        let mut tracker = DeliveryTracker::with_limits(0, vec![2, 2]);
        for &(key, seq) in received {
            tracker.record(key, seq);
        }
        SubscriberStats::new(tracker)
    }

    #[test]
    fn a_groups_report_counts_each_message_once_across_members() {
        let a = args(&[
            "--scenario",
            "stream",
            "--publishers",
            "2",
            "--keys",
            "2",
            "--members",
            "2",
            "--messages",
            "2",
        ]);
        let p = plan(&a, "r");
        // Key 1 moved from the first member to the second, which got its
        // seq 1 again; key 0 seq 1 never arrived; the second member saw
        // key 1 go backwards.
        let subs = [member(&[(0, 0), (1, 1)]), member(&[(1, 1), (1, 0)])];
        let r = summarize(&a, &p, &[sent(0, 2), sent(1, 2)], &subs);
        assert_eq!((r.expected, r.delivered, r.lost), (4, 3, 1));
        assert_eq!((r.duplicated, r.out_of_order, r.received), (1, 1, 4));
        let text = r.render(false);
        assert!(text.contains("order violations (per key) 1"), "{text}");
        assert!(
            text.contains("consumer group bench of 2 member(s)"),
            "{text}"
        );
        let json = r.render(true);
        assert!(json.contains(r#""out_of_order":1"#), "{json}");
        assert!(
            json.contains(r#""stream":"bench","keys":2,"group":"bench""#),
            "{json}"
        );
    }

    #[test]
    fn missing_subscriber_counts_its_messages_as_lost() {
        let a = args(&[
            "--scenario",
            "fan-out",
            "--subscribers",
            "2",
            "--messages",
            "10",
        ]);
        let p = plan(&a, "r");
        let r = summarize(&a, &p, &[sent(0, 10)], &[]);
        assert_eq!(r.expected, 20);
        assert_eq!(r.lost, 20);
    }
}
