//! How far the replay at start has come. After a crash the log past the
//! checkpoint is replayed into the state database before the broker
//! serves anyone; when that is a large log, the start would otherwise sit
//! silent for as long as it takes, with nothing to tell an operator it is
//! working or how long is left.
//!
//! `ReplayMeter` is fed each record's position and asks for the time only
//! every few thousand records or at a new segment, so the replay of small
//! records does not read the clock per record. It does no I/O and is given
//! the time, so its reports are tested without waiting; `LogSpan::measure`
//! is the one place that looks at the segment files (their sizes).

use std::path::Path;
use std::time::Duration;

use super::log::{LogPos, segment_path};

/// How often a long replay says how far it has come.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Records between two looks at the clock; entering a segment looks too.
const CHECK_EVERY: u64 = 4096;

/// The byte range of one segment that a replay scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentSpan {
    segment: u32,
    start: u64,
    end: u64,
}

impl SegmentSpan {
    fn bytes(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// The part of the log a replay scans: from the checkpoint to the durable
/// end, over the segments still on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LogSpan {
    segments: Vec<SegmentSpan>,
}

impl LogSpan {
    /// The span of `dir` from `from` to `end`, where `first` is the oldest
    /// segment kept. A segment whose size cannot be read counts as empty:
    /// the scan itself reports what is wrong with it, and a progress report
    /// must never be what stops a start.
    pub(super) fn measure(dir: &Path, from: LogPos, first: u32, end: LogPos) -> LogSpan {
        let from = from.max(LogPos::new(first, 0));
        if from >= end {
            return LogSpan::default();
        }
        let segments = (from.segment()..=end.segment())
            .filter_map(|segment| {
                let start = if segment == from.segment() {
                    u64::from(from.offset())
                } else {
                    0
                };
                let end = if segment == end.segment() {
                    u64::from(end.offset())
                } else {
                    std::fs::metadata(segment_path(dir, segment)).ok()?.len()
                };
                Some(SegmentSpan {
                    segment,
                    start,
                    end: end.max(start),
                })
            })
            .collect();
        LogSpan { segments }
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(SegmentSpan::bytes).sum()
    }

    fn segments(&self) -> u32 {
        u32::try_from(self.segments.len()).unwrap_or(u32::MAX)
    }

    /// Segments wholly behind `pos`, and the bytes of the span before it.
    fn done_at(&self, pos: LogPos) -> (u32, u64) {
        let mut segments = 0;
        let mut bytes = 0;
        for span in &self.segments {
            if span.segment < pos.segment() {
                segments += 1;
                bytes += span.bytes();
            } else {
                if span.segment == pos.segment() {
                    bytes += u64::from(pos.offset())
                        .saturating_sub(span.start)
                        .min(span.bytes());
                }
                break;
            }
        }
        (segments, bytes)
    }
}

/// Where a replay stands, or (`finished`) what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayProgress {
    pub records: u64,
    /// Segments scanned to their end, of `segments`.
    pub segments_done: u32,
    pub segments: u32,
    /// Bytes of the span scanned, of `bytes`.
    pub bytes_done: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub finished: bool,
}

impl ReplayProgress {
    fn percent(&self) -> u64 {
        match self.bytes {
            0 => 100,
            total => (u128::from(self.bytes_done) * 100 / u128::from(total)) as u64,
        }
    }

    /// Says it in the broker's log: a line while the replay goes on, a
    /// summary at its end.
    pub(super) fn log(&self) {
        let duration_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        if self.finished {
            tracing::info!(
                records = self.records,
                bytes = self.bytes,
                segments = self.segments,
                duration_ms,
                "replayed the commit log past its checkpoint"
            );
        } else {
            tracing::info!(
                records = self.records,
                segments_done = self.segments_done,
                segments = self.segments,
                bytes_done = self.bytes_done,
                bytes = self.bytes,
                percent = self.percent(),
                duration_ms,
                "replaying the commit log past its checkpoint"
            );
        }
    }
}

/// Counts the records of a replay and decides when it reports.
#[derive(Debug)]
pub(super) struct ReplayMeter {
    span: LogSpan,
    records: u64,
    last: Option<LogPos>,
    unchecked: u64,
    check_every: u64,
    next_report: Duration,
}

impl ReplayMeter {
    pub(super) fn new(span: LogSpan) -> ReplayMeter {
        ReplayMeter::checking_every(span, CHECK_EVERY)
    }

    fn checking_every(span: LogSpan, check_every: u64) -> ReplayMeter {
        ReplayMeter {
            span,
            records: 0,
            last: None,
            unchecked: 0,
            check_every: check_every.max(1),
            next_report: REPORT_EVERY,
        }
    }

    /// Counts the record at `pos`. Every `check_every` records, and at
    /// the first record of a segment, asks `elapsed` for the time since
    /// the replay started; returns a report when a second has passed
    /// since the last one (the first after a second of replay).
    pub(super) fn record(
        &mut self,
        pos: LogPos,
        elapsed: &mut dyn FnMut() -> Duration,
    ) -> Option<ReplayProgress> {
        self.records += 1;
        self.unchecked += 1;
        let new_segment = self.last.is_none_or(|last| last.segment() != pos.segment());
        self.last = Some(pos);
        if self.unchecked < self.check_every && !new_segment {
            return None;
        }
        self.unchecked = 0;
        let now = elapsed();
        if now < self.next_report {
            return None;
        }
        self.next_report = now + REPORT_EVERY;
        let (segments_done, bytes_done) = self.span.done_at(pos);
        Some(ReplayProgress {
            records: self.records,
            segments_done,
            segments: self.span.segments(),
            bytes_done,
            bytes: self.span.bytes(),
            elapsed: now,
            finished: false,
        })
    }

    pub(super) fn records(&self) -> u64 {
        self.records
    }

    /// The summary of a replay that took `elapsed`: the whole span read.
    pub(super) fn finish(&self, elapsed: Duration) -> ReplayProgress {
        ReplayProgress {
            records: self.records,
            segments_done: self.span.segments(),
            segments: self.span.segments(),
            bytes_done: self.span.bytes(),
            bytes: self.span.bytes(),
            elapsed,
            finished: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::store::log::CommitLog;
    use crate::store::{DiskOptions, DiskStore, Record};

    fn span(segments: &[(u32, u64, u64)]) -> LogSpan {
        LogSpan {
            segments: segments
                .iter()
                .map(|&(segment, start, end)| SegmentSpan {
                    segment,
                    start,
                    end,
                })
                .collect(),
        }
    }

    /// A clock that moves on by `step` each time it is read, and counts
    /// the reads.
    fn ticking(step: Duration, reads: &mut u32) -> impl FnMut() -> Duration + '_ {
        let mut now = Duration::ZERO;
        move || {
            *reads += 1;
            now += step;
            now
        }
    }

    #[test]
    fn progress_is_the_bytes_and_whole_segments_behind_the_last_record() {
        // Segment 4 is replayed from the checkpoint at 100, segment 6 up
        // to the durable end at 300.
        let span = span(&[(4, 100, 1000), (5, 0, 1000), (6, 0, 300)]);
        assert_eq!((span.segments(), span.bytes()), (3, 2200));
        assert_eq!(span.done_at(LogPos::new(4, 100)), (0, 0));
        assert_eq!(span.done_at(LogPos::new(4, 600)), (0, 500));
        assert_eq!(span.done_at(LogPos::new(5, 0)), (1, 900));
        assert_eq!(span.done_at(LogPos::new(6, 200)), (2, 2100));
        let half = ReplayProgress {
            records: 1,
            segments_done: 1,
            segments: 3,
            bytes_done: 1100,
            bytes: 2200,
            elapsed: Duration::ZERO,
            finished: false,
        };
        assert_eq!(half.percent(), 50);
    }

    #[test]
    fn a_replay_reports_once_a_second_looking_at_the_clock_only_now_and_then() {
        let mut reads = 0;
        let mut clock = ticking(Duration::from_millis(400), &mut reads);
        let mut meter = ReplayMeter::checking_every(span(&[(0, 0, 1 << 20)]), 100);
        let mut reports = Vec::new();
        for i in 0..1000u32 {
            if let Some(progress) = meter.record(LogPos::new(0, i * 1000), &mut clock) {
                reports.push(progress);
            }
        }
        // Read at the first record (a new segment) and every 100th after:
        // 0.4 s, 0.8 s, ... 4.0 s; a report once a second has passed since
        // the last, the first after a second.
        let times: Vec<u128> = reports.iter().map(|p| p.elapsed.as_millis()).collect();
        assert_eq!(times, [1200, 2400, 3600]);
        assert_eq!(reports[0].records, 201);
        assert_eq!(reports[0].bytes_done, 200_000);
        assert!(reports.iter().all(|p| !p.finished && p.bytes == 1 << 20));
        drop(clock);
        assert_eq!(reads, 10);

        let summary = meter.finish(Duration::from_secs(5));
        assert!(summary.finished);
        assert_eq!((summary.records, summary.percent()), (1000, 100));
        assert_eq!((summary.segments_done, summary.segments), (1, 1));
    }

    #[test]
    fn a_replay_shorter_than_a_second_reports_only_its_summary() {
        let mut reads = 0;
        let mut clock = ticking(Duration::from_millis(1), &mut reads);
        let mut meter = ReplayMeter::new(span(&[(0, 0, 10), (1, 0, 10)]));
        for segment in 0..2 {
            for offset in 0..3 {
                assert_eq!(meter.record(LogPos::new(segment, offset), &mut clock), None);
            }
        }
        drop(clock);
        assert_eq!(reads, 2, "only where a segment starts");
        assert_eq!(meter.records(), 6);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("petrel-recovery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn replaying_a_log_of_several_segments_reports_its_progress_and_a_summary() {
        let dir = temp_dir("segments");
        // As a crash leaves it: records in the log, none in the state
        // database yet (no checkpoint).
        let mut log = CommitLog::open(&dir.join("log"), 4096).unwrap();
        let mut buffer = Vec::new();
        for i in 0..400 {
            buffer.clear();
            Record::DeleteRetained(Arc::from(format!("sensors/{i}").as_str()))
                .encode_into(&mut buffer)
                .unwrap();
            log.append(0, &buffer).unwrap();
        }
        log.sync().unwrap();
        let end = log.end();
        drop(log);
        assert!(end.segment() >= 3, "several segments: {end:?}");

        let options = DiskOptions {
            segment_bytes: 4096,
            max_disk_bytes: u64::MAX,
        };
        let store = DiskStore::open(&dir, options).unwrap();
        // Each look at the clock finds a second gone: a report at every
        // segment the replay enters.
        let mut reads = 0;
        let mut clock = ticking(Duration::from_secs(1), &mut reads);
        let mut reports = Vec::new();
        store
            .replay_with(&mut clock, &mut |progress| reports.push(*progress))
            .unwrap();

        let (summary, during) = reports.split_last().unwrap();
        let segments = end.segment() + 1;
        assert!(summary.finished);
        assert_eq!(summary.records, 400);
        assert_eq!(summary.segments, segments);
        let on_disk: u64 = std::fs::read_dir(dir.join("log"))
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(summary.bytes, on_disk, "the whole log, from offset 0");
        assert_eq!(
            during.len(),
            segments as usize,
            "one as each segment starts"
        );
        for (i, progress) in during.iter().enumerate() {
            assert!(!progress.finished);
            assert_eq!(progress.segments_done, i as u32);
            assert_eq!(progress.segments, segments);
            assert_eq!(progress.bytes, summary.bytes);
        }
        assert!(during.windows(2).all(|w| w[0].bytes_done < w[1].bytes_done));
        assert!(during.windows(2).all(|w| w[0].records < w[1].records));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
