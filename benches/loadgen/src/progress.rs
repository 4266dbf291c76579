//! The live line of a traffic run. A run can take minutes, and its report
//! comes only at the end; someone watching a terminal wants to see before
//! then whether messages flow, how fast, and whether any go missing. So
//! while publishers and subscribers are at work, and only when stderr is
//! a terminal, one line on stderr is rewritten in place once a second:
//! time since the start, messages sent and received per second and the
//! p99 latency over the last second, and the messages lost so far. The
//! scripts under `benches/` read the report on stdout and send stderr to
//! a file, so for them nothing changes.
//!
//! Clients add to `Live` (relaxed atomics: a glimpse, not an account; the
//! report is the account). `Progress` turns readings into the line with no
//! I/O and no clock, so it is unit-tested; `Reporter` is the task that
//! reads the clock and writes to the terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::Scenario;
use crate::stats::{BUCKETS, DeliveryTracker, Histogram};

const EVERY: Duration = Duration::from_secs(1);

/// What the clients of a run have done so far, as they go.
#[derive(Debug)]
pub struct Live {
    sent: AtomicU64,
    received: AtomicU64,
    /// The subscribers' holes added up (see `Feed`); `None` when holes are
    /// not losses.
    lost: Option<AtomicI64>,
    /// Latencies since the last reading, by `Histogram` bucket.
    latency: Box<[AtomicU64]>,
}

impl Live {
    /// A `Live` for a run of `scenario`, when stderr is a terminal. Members
    /// of a shared subscription (fan-in with `group`) split each
    /// publisher's sequence between them, so a member's holes are its
    /// fellows' messages and the line counts no losses; a stream's members
    /// own whole keys, and every other subscriber hears all of a source.
    pub fn for_terminal(scenario: Scenario, group: bool) -> Option<Arc<Live>> {
        std::io::stderr()
            .is_terminal()
            .then(|| Arc::new(Live::new(holes_are_losses(scenario, group))))
    }

    fn new(counts_lost: bool) -> Live {
        Live {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            lost: counts_lost.then(|| AtomicI64::new(0)),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// A publisher sent `count` more messages.
    pub fn sent(&self, count: u64) {
        if count > 0 {
            self.sent.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// The totals so far and the p99 latency since the last reading, which
    /// starts a new interval.
    fn read(&self, elapsed: Duration) -> Reading {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|bucket| bucket.swap(0, Ordering::Relaxed))
            .collect();
        Reading {
            elapsed,
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lost: self
                .lost
                .as_ref()
                .map(|lost| lost.load(Ordering::Relaxed).max(0).unsigned_abs()),
            p99_ns: quantile(&counts, 0.99),
        }
    }
}

fn holes_are_losses(scenario: Scenario, group: bool) -> bool {
    !group || scenario == Scenario::Stream
}

/// One subscriber's side of `Live`: what it has told it so far, so that it
/// adds once per read chunk rather than once per message.
#[derive(Debug)]
pub struct Feed {
    live: Arc<Live>,
    distinct: u64,
    holes: u64,
}

impl Feed {
    pub fn new(live: Arc<Live>) -> Feed {
        Feed {
            live,
            distinct: 0,
            holes: 0,
        }
    }

    /// A first copy arrived `ns` after it was sent.
    pub fn latency(&self, ns: u64) {
        if let Some(bucket) = self.live.latency.get(Histogram::index(ns)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Passes on what `tracker` counted since the last call: new messages,
    /// and the change in its holes (messages overtaken by a later one from
    /// the same source that have not arrived: MQTT keeps a publisher's
    /// order on a topic, a stream a key's, so these are lost, or arrive
    /// out of order).
    pub fn update(&mut self, tracker: &DeliveryTracker) {
        let distinct = tracker.distinct;
        if distinct > self.distinct {
            self.live
                .received
                .fetch_add(distinct - self.distinct, Ordering::Relaxed);
            self.distinct = distinct;
        }
        let holes = tracker.holes();
        if let Some(lost) = &self.live.lost
            && holes != self.holes
        {
            let change = i64::try_from(holes).unwrap_or(i64::MAX)
                - i64::try_from(self.holes).unwrap_or(i64::MAX);
            lost.fetch_add(change, Ordering::Relaxed);
        }
        self.holes = holes;
    }
}

/// The upper edge of the bucket holding quantile `q` of `counts` (by
/// `Histogram` bucket), as `Histogram::quantile` reports it.
fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    counts.iter().enumerate().find_map(|(index, count)| {
        seen += count;
        (seen >= rank).then(|| Histogram::upper(index))
    })
}

/// One look at `Live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// Since the publishers started.
    elapsed: Duration,
    sent: u64,
    received: u64,
    lost: Option<u64>,
    /// Over the interval since the last reading.
    p99_ns: Option<u64>,
}

/// Turns successive readings into lines, rates over the time between them.
#[derive(Debug, Default)]
struct Progress {
    last: Option<Reading>,
}

impl Progress {
    fn line(&mut self, now: Reading) -> String {
        let (since, sent, received) = self
            .last
            .map_or((Duration::ZERO, 0, 0), |l| (l.elapsed, l.sent, l.received));
        self.last = Some(now);
        let secs = now.elapsed.saturating_sub(since).as_secs_f64();
        let per_sec = |now: u64, then: u64| {
            if secs > 0.0 {
                now.saturating_sub(then) as f64 / secs
            } else {
                0.0
            }
        };
        let mut line = format!(
            "{:>4}s  sent {:.0} msg/s  received {:.0} msg/s  p99 {}",
            now.elapsed.as_secs(),
            per_sec(now.sent, sent),
            per_sec(now.received, received),
            latency(now.p99_ns)
        );
        if let Some(lost) = now.lost {
            line.push_str(&format!("  lost {lost}"));
        }
        line
    }
}

fn latency(ns: Option<u64>) -> String {
    match ns {
        None => "-".to_string(),
        Some(ns) if ns < 1_000_000 => format!("{:.0} us", ns as f64 / 1e3),
        Some(ns) if ns < 1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        Some(ns) => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// Whether the terminal may still be written to, and whether a line is
/// on it, behind one lock so that no line follows the one that ends it.
#[derive(Debug)]
struct Terminal {
    open: bool,
    shown: bool,
}

/// The task that prints the live line. Dropping it ends the line, so the
/// report (or an error, when the run fails part way) starts on its own.
#[derive(Debug)]
pub struct Reporter {
    task: JoinHandle<()>,
    terminal: Arc<Mutex<Terminal>>,
}

impl Reporter {
    /// Prints a line a second after `start` and every second after that.
    pub fn start(live: Arc<Live>, start: Instant) -> Reporter {
        let terminal = Arc::new(Mutex::new(Terminal {
            open: true,
            shown: false,
        }));
        let shared = terminal.clone();
        let task = tokio::spawn(async move {
            let mut ticks = interval_at(start + EVERY, EVERY);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut progress = Progress::default();
            loop {
                ticks.tick().await;
                let line = progress.line(live.read(start.elapsed()));
                let mut terminal = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if !terminal.open {
                    return;
                }
                // Back to the start of the line, and clear what a longer
                // line before left. A terminal that fails to take it only
                // loses the line.
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}\x1b[K");
                let _ = err.flush();
                terminal.shown = true;
            }
        });
        Reporter { task, terminal }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
        let mut terminal = self.terminal.lock().unwrap_or_else(PoisonError::into_inner);
        if terminal.open && terminal.shown {
            let _ = writeln!(std::io::stderr());
        }
        terminal.open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(secs: u64, sent: u64, received: u64) -> Reading {
        Reading {
            elapsed: Duration::from_secs(secs),
            sent,
            received,
            lost: Some(0),
            p99_ns: None,
        }
    }

    #[test]
    fn rates_are_over_the_last_second_and_losses_over_the_run() {
        let mut progress = Progress::default();
        assert_eq!(
            progress.line(Reading {
                p99_ns: Some(1_840_000),
                ..reading(1, 1000, 900)
            }),
            "   1s  sent 1000 msg/s  received 900 msg/s  p99 1.84 ms  lost 0"
        );
        assert_eq!(
            progress.line(Reading {
                lost: Some(7),
                p99_ns: Some(850_000),
                ..reading(2, 1500, 1500)
            }),
            "   2s  sent 500 msg/s  received 600 msg/s  p99 850 us  lost 7"
        );
        // A tick the runtime was late for: the rate is over the real time.
        assert_eq!(
            progress.line(reading(4, 1500, 1700)),
            "   4s  sent 0 msg/s  received 100 msg/s  p99 -  lost 0"
        );
        assert_eq!(
            progress.line(Reading {
                p99_ns: Some(2_345_000_000),
                ..reading(5, 1500, 1700)
            }),
            "   5s  sent 0 msg/s  received 0 msg/s  p99 2.35 s  lost 0"
        );
    }

    #[test]
    fn a_line_without_a_loss_count_leaves_it_out() {
        let mut progress = Progress::default();
        let line = progress.line(Reading {
            lost: None,
            ..reading(1, 10, 10)
        });
        assert_eq!(line, "   1s  sent 10 msg/s  received 10 msg/s  p99 -");
    }

    #[test]
    fn a_reading_takes_the_latencies_of_its_second_only() {
        let live = Arc::new(Live::new(true));
        let feed = Feed::new(live.clone());
        for ns in 1..=100 {
            feed.latency(ns * 1000);
        }
        live.sent(300);
        let first = live.read(Duration::from_secs(1));
        assert_eq!(first.p99_ns, Some(99_327), "99 us, to within a bucket");
        assert_eq!(first.sent, 300);
        let second = live.read(Duration::from_secs(2));
        assert_eq!(second.p99_ns, None, "nothing arrived since");
        assert_eq!(second.sent, 300, "totals carry on");
    }

    #[test]
    fn subscribers_report_new_messages_and_holes_as_they_open_and_fill() {
        let live = Arc::new(Live::new(true));
        let mut a = Feed::new(live.clone());
        let mut b = Feed::new(live.clone());
        let mut tracker_a = DeliveryTracker::new(0, 1, 10);
        let mut tracker_b = DeliveryTracker::new(0, 1, 10);
        for seq in [0, 1, 4] {
            tracker_a.record(0, seq);
        }
        tracker_b.record(0, 2);
        a.update(&tracker_a);
        b.update(&tracker_b);
        let now = live.read(Duration::from_secs(1));
        assert_eq!((now.received, now.lost), (4, Some(2 + 2)));
        // The late ones arrive at a; a copy again changes nothing.
        tracker_a.record(0, 2);
        tracker_a.record(0, 3);
        tracker_a.record(0, 3);
        a.update(&tracker_a);
        let now = live.read(Duration::from_secs(2));
        assert_eq!((now.received, now.lost), (6, Some(2)));
    }

    #[test]
    fn members_of_a_shared_subscription_count_no_losses() {
        assert!(!holes_are_losses(Scenario::FanIn, true));
        assert!(holes_are_losses(Scenario::FanIn, false));
        assert!(holes_are_losses(Scenario::FanOut, false));
        assert!(holes_are_losses(Scenario::Pairs, false));
        assert!(holes_are_losses(Scenario::Stream, true));
        assert_eq!(Live::new(false).read(Duration::ZERO).lost, None);
    }

    #[test]
    fn the_quantile_of_bucket_counts_is_the_upper_edge_of_its_bucket() {
        let mut counts = vec![0; BUCKETS];
        counts[3] = 98;
        counts[Histogram::index(5_000)] = 2;
        assert_eq!(quantile(&counts, 0.98), Some(3));
        assert_eq!(quantile(&counts, 0.99), Some(5_023));
        assert_eq!(quantile(&vec![0; BUCKETS], 0.99), None);
    }
}
