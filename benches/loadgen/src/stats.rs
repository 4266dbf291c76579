//! Pure accounting for the load generator: the stamp carried in every
//! payload, the latency histogram, per-subscriber delivery tracking (lost,
//! duplicated, out of order) and the publisher's packet-id window.
//!
//! Nothing here does I/O or reads the clock, so every rule is unit-tested.

use bytes::{Buf, BufMut, BytesMut};

/// Bytes at the start of every benchmark payload: send time (ns since the
/// run's base instant), publisher id and sequence number, big endian.
pub const STAMP_LEN: usize = 8 + 4 + 8;

/// What a subscriber needs to know about one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u64,
}

impl Stamp {
    /// Appends the stamp, then zero padding up to `payload_len` bytes.
    pub fn write(&self, buf: &mut BytesMut, payload_len: usize) {
        buf.reserve(payload_len.max(STAMP_LEN));
        buf.put_u64(self.sent_ns);
        buf.put_u32(self.publisher);
        buf.put_u64(self.seq);
        buf.put_bytes(0, payload_len.saturating_sub(STAMP_LEN));
    }

    /// Reads the stamp from the start of a payload; `None` if it is too short.
    pub fn read(mut payload: &[u8]) -> Option<Stamp> {
        if payload.len() < STAMP_LEN {
            return None;
        }
        Some(Stamp {
            sent_ns: payload.get_u64(),
            publisher: payload.get_u32(),
            seq: payload.get_u64(),
        })
    }
}

/// Sub-buckets per power of two: 2^7 = 128, so a recorded value is reported
/// within 1/128 (< 0.8 %) of its true value.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped to 2^40 ns (about 18 minutes), far above any timeout.
const MAX_VALUE: u64 = (1 << 40) - 1;
pub(crate) const BUCKETS: usize = ((40 - SUB_BITS + 1) as usize + 1) * SUB as usize;

/// A log-linear histogram of non-negative integers (nanoseconds here), in
/// the spirit of HdrHistogram: constant memory, mergeable, bounded error.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    pub(crate) fn index(value: u64) -> usize {
        if value < SUB {
            return value as usize;
        }
        let exp = 63 - value.leading_zeros();
        let shift = exp - SUB_BITS;
        let sub = (value >> shift) - SUB;
        ((u64::from(shift) + 1) * SUB + sub) as usize
    }

    /// Largest value that lands in bucket `index`.
    pub(crate) fn upper(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB {
            return index;
        }
        let shift = index / SUB - 1;
        let sub = index % SUB;
        ((SUB + sub) << shift) + ((1u64 << shift) - 1)
    }

    pub fn record(&mut self, value: u64) {
        let value = value.min(MAX_VALUE);
        if let Some(slot) = self.counts.get_mut(Self::index(value)) {
            *slot += 1;
        }
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at quantile `q` (0.0..=1.0): the upper edge of the bucket
    /// holding the ceil(q * count)-th smallest value, capped by the maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::upper(index).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

/// Outcome of recording one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// First copy of this (source, sequence) seen by this subscriber.
    New,
    /// A copy this subscriber has already received.
    Duplicate,
    /// Not from a source this subscriber expects, or a sequence number
    /// beyond what was published.
    Foreign,
}

/// Tracks what one subscriber received from the sources it expects, each
/// numbering its messages from 0: publishers `first..first + count` in the
/// MQTT scenarios, keys in the stream scenario (where each key is numbered
/// by the one publisher that owns it).
#[derive(Debug, Clone)]
pub struct DeliveryTracker {
    first: u32,
    /// Messages each source sends.
    limits: Vec<u64>,
    seen: Vec<Vec<u64>>,
    next_expected: Vec<u64>,
    /// Sequence numbers below a source's `next_expected` not yet seen.
    holes: u64,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub foreign: u64,
}

impl DeliveryTracker {
    /// Publishers `first..first + count`, each sending `per_publisher`.
    pub fn new(first: u32, count: u32, per_publisher: u64) -> Self {
        Self::with_limits(first, vec![per_publisher; count as usize])
    }

    /// Sources `first..first + limits.len()`, source `first + i` sending
    /// `limits[i]` messages.
    pub fn with_limits(first: u32, limits: Vec<u64>) -> Self {
        DeliveryTracker {
            first,
            seen: limits
                .iter()
                .map(|&limit| vec![0; limit.div_ceil(64) as usize])
                .collect(),
            next_expected: vec![0; limits.len()],
            limits,
            holes: 0,
            received: 0,
            distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
        }
    }

    pub fn expected(&self) -> u64 {
        self.limits.iter().sum()
    }

    #[cfg(test)]
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.distinct)
    }

    /// Messages overtaken by a later one from the same source that have
    /// not arrived (yet): where a source's order is kept, the losses so far.
    pub fn holes(&self) -> u64 {
        self.holes
    }

    pub fn complete(&self) -> bool {
        self.distinct >= self.expected()
    }

    /// Records one received message. A new message whose sequence number is
    /// lower than one already seen from the same source counts as out of
    /// order (MQTT keeps per-publisher order on one topic, a stream keeps
    /// per-key order); a copy already seen is a duplicate, never out of
    /// order, so redeliveries are told apart from reordering.
    pub fn record(&mut self, source: u32, seq: u64) -> Delivery {
        self.received += 1;
        let Some(slot) = source.checked_sub(self.first).map(|i| i as usize) else {
            self.foreign += 1;
            return Delivery::Foreign;
        };
        if self.limits.get(slot).is_none_or(|&limit| seq >= limit) {
            self.foreign += 1;
            return Delivery::Foreign;
        }
        let (Some(bits), Some(next)) = (self.seen.get_mut(slot), self.next_expected.get_mut(slot))
        else {
            self.foreign += 1;
            return Delivery::Foreign;
        };
        let word = (seq / 64) as usize;
        let mask = 1u64 << (seq % 64);
        let Some(cell) = bits.get_mut(word) else {
            self.foreign += 1;
            return Delivery::Foreign;
        };
        if *cell & mask != 0 {
            self.duplicates += 1;
            return Delivery::Duplicate;
        }
        *cell |= mask;
        self.distinct += 1;
        if seq < *next {
            self.out_of_order += 1;
            self.holes = self.holes.saturating_sub(1);
        } else {
            self.holes += seq - *next;
            *next = seq + 1;
        }
        Delivery::New
    }

    /// Counts a received message that belongs to no source here (another
    /// run's, or one whose stamp contradicts itself).
    pub fn reject(&mut self) {
        self.received += 1;
        self.foreign += 1;
    }

    /// Adds what another member of the same group received (a tracker
    /// built for the same sources): a message both received counts once,
    /// its second copy as a duplicate. Order is kept as each member counted
    /// it, since order is only promised to the reader of a key.
    pub fn absorb(&mut self, other: &DeliveryTracker) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.foreign += other.foreign;
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                let both = u64::from((*a & *b).count_ones());
                self.duplicates += both;
                self.distinct += u64::from(b.count_ones()) - both;
                *a |= *b;
            }
        }
        for (mine, theirs) in self.next_expected.iter_mut().zip(&other.next_expected) {
            *mine = (*mine).max(*theirs);
        }
        // Every sequence seen is below its source's next_expected.
        self.holes = self
            .next_expected
            .iter()
            .sum::<u64>()
            .saturating_sub(self.distinct);
    }
}

/// State of one packet id in a publisher's outbound window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Free,
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    AwaitComp,
}

/// What an acknowledgement did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEffect {
    /// The flow for this packet id finished; carries the send time.
    Completed { sent_ns: u64 },
    /// PUBREC accepted: the caller must send PUBREL.
    SendPubRel,
    /// The packet id was not in the state this acknowledgement answers.
    Unexpected,
}

/// Packet ids 1..=65535 in use by one publisher, with the send time of each
/// outstanding message for acknowledgement latency.
#[derive(Debug, Clone)]
pub struct InflightWindow {
    slots: Vec<(Slot, u64)>,
    next: u16,
    inflight: usize,
    limit: usize,
}

impl InflightWindow {
    /// `limit` is clamped to 1..=65535.
    pub fn new(limit: usize) -> Self {
        InflightWindow {
            slots: vec![(Slot::Free, 0); 1 << 16],
            next: 0,
            inflight: 0,
            limit: limit.clamp(1, 65535),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight
    }

    pub fn has_room(&self) -> bool {
        self.inflight < self.limit
    }

    /// Takes the next free packet id, or `None` when the window is full.
    pub fn acquire(&mut self, sent_ns: u64) -> Option<u16> {
        if !self.has_room() {
            return None;
        }
        for _ in 0..65535 {
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            let slot = &mut self.slots[usize::from(self.next)];
            if slot.0 == Slot::Free {
                *slot = (Slot::AwaitAck, sent_ns);
                self.inflight += 1;
                return Some(self.next);
            }
        }
        None
    }

    fn finish(&mut self, pkid: u16) -> u64 {
        let slot = &mut self.slots[usize::from(pkid)];
        let sent = slot.1;
        *slot = (Slot::Free, 0);
        self.inflight -= 1;
        sent
    }

    /// PUBACK for a QoS 1 message, or a PUBREC carrying a failure reason
    /// (which also ends a QoS 2 flow).
    pub fn on_puback(&mut self, pkid: u16) -> AckEffect {
        match self.slots[usize::from(pkid)].0 {
            Slot::AwaitAck => AckEffect::Completed {
                sent_ns: self.finish(pkid),
            },
            _ => AckEffect::Unexpected,
        }
    }

    /// A successful PUBREC. A repeated PUBREC for a flow already waiting for
    /// PUBCOMP asks for PUBREL again, as the spec allows.
    pub fn on_pubrec(&mut self, pkid: u16) -> AckEffect {
        let slot = &mut self.slots[usize::from(pkid)];
        match slot.0 {
            Slot::AwaitAck => {
                slot.0 = Slot::AwaitComp;
                AckEffect::SendPubRel
            }
            Slot::AwaitComp => AckEffect::SendPubRel,
            Slot::Free => AckEffect::Unexpected,
        }
    }

    pub fn on_pubcomp(&mut self, pkid: u16) -> AckEffect {
        match self.slots[usize::from(pkid)].0 {
            Slot::AwaitComp => AckEffect::Completed {
                sent_ns: self.finish(pkid),
            },
            _ => AckEffect::Unexpected,
        }
    }
}

/// Resident set size in kB from the text of `/proc/PID/status`.
pub fn parse_vmrss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Clock ticks per second of the CPU times in `/proc/PID/stat` (Linux's
/// USER_HZ, 100 on x86-64 and arm64, whatever the kernel's own tick rate).
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time in clock ticks from the text of
/// `/proc/PID/stat`: fields 14 and 15, counted after the command name,
/// which is in parentheses and may itself hold spaces or parentheses.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // Field 3 (the state) is the first after the name.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Percent of one core used over `wall`, from two readings of
/// [`parse_cpu_ticks`].
pub fn cpu_percent(before: Option<u64>, after: Option<u64>, wall_secs: f64) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (wall_secs > 0.0).then(|| used as f64 / CLOCK_TICKS_PER_SEC as f64 / wall_secs * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_an_awkward_command_name() {
        let stat = "4242 (pet rel) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 5000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_cpu_ticks("4242 (petrel) S 1 2"), None);
        assert_eq!(cpu_percent(Some(100), Some(250), 3.0), Some(50.0));
        assert_eq!(cpu_percent(Some(100), None, 3.0), None);
    }

    #[test]
    fn stamp_round_trips_and_pads_to_payload_size() {
        let stamp = Stamp {
            sent_ns: 123_456_789,
            publisher: 7,
            seq: 42,
        };
        let mut buf = BytesMut::new();
        stamp.write(&mut buf, 64);
        assert_eq!(buf.len(), 64);
        assert_eq!(Stamp::read(&buf), Some(stamp));
    }

    #[test]
    fn stamp_is_never_truncated_by_a_small_payload_size() {
        let mut buf = BytesMut::new();
        Stamp {
            sent_ns: 1,
            publisher: 2,
            seq: 3,
        }
        .write(&mut buf, 4);
        assert_eq!(buf.len(), STAMP_LEN);
    }

    #[test]
    fn short_payload_has_no_stamp() {
        assert_eq!(Stamp::read(&[0u8; STAMP_LEN - 1]), None);
    }

    #[test]
    fn histogram_small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 0..100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(49));
        assert_eq!(h.quantile(0.99), Some(98));
        assert_eq!(h.quantile(1.0), Some(99));
        assert_eq!(h.quantile(0.0), Some(0));
    }

    #[test]
    fn histogram_large_values_are_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, exact) in [
            (0.5, 50_000_000u64),
            (0.99, 99_000_000),
            (0.999, 99_900_000),
        ] {
            let got = h.quantile(q).unwrap_or(0);
            let err = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(err < 0.01, "q={q} got={got} exact={exact}");
            assert!(got >= exact, "upper edge must not under-report");
        }
        assert_eq!(h.max(), Some(100_000_000));
    }

    #[test]
    fn histogram_buckets_cover_every_value_monotonically() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1 << 20,
            (1 << 20) + 1,
            MAX_VALUE,
        ] {
            let i = Histogram::index(v);
            assert!(i < BUCKETS);
            assert!(i >= last);
            assert!(Histogram::upper(i) >= v);
            last = i;
        }
    }

    #[test]
    fn histogram_merge_adds_counts() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(0.5), Some(20));
        assert_eq!(a.max(), Some(1_000_000));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        assert_eq!(Histogram::new().quantile(0.5), None);
        assert_eq!(Histogram::new().mean(), None);
    }

    #[test]
    fn tracker_counts_lost_messages() {
        let mut t = DeliveryTracker::new(0, 2, 10);
        for seq in 0..10 {
            assert_eq!(t.record(0, seq), Delivery::New);
        }
        for seq in 0..7 {
            t.record(1, seq);
        }
        assert_eq!(t.expected(), 20);
        assert_eq!(t.distinct, 17);
        assert_eq!(t.lost(), 3);
        assert!(!t.complete());
    }

    #[test]
    fn holes_are_overtaken_messages_not_seen_and_fill_as_they_arrive() {
        let mut t = DeliveryTracker::new(0, 2, 10);
        for seq in [0, 3, 5] {
            t.record(0, seq);
        }
        t.record(1, 2);
        assert_eq!(t.holes(), 3 + 2, "1, 2, 4 from source 0; 0, 1 from 1");
        t.record(0, 4);
        t.record(0, 4);
        t.record(1, 0);
        assert_eq!(t.holes(), 3);
        // Not yet sent, or lost at the end: not holes.
        assert_eq!(t.lost(), 20 - 6);

        let mut other = DeliveryTracker::new(0, 2, 10);
        other.record(0, 1);
        other.record(1, 6);
        t.absorb(&other);
        assert_eq!(
            t.holes(),
            1 + 4,
            "2 from source 0; 1, 3, 4, 5 from source 1"
        );
    }

    #[test]
    fn tracker_counts_duplicates_once_per_extra_copy() {
        let mut t = DeliveryTracker::new(0, 1, 100);
        assert_eq!(t.record(0, 5), Delivery::New);
        assert_eq!(t.record(0, 5), Delivery::Duplicate);
        assert_eq!(t.record(0, 5), Delivery::Duplicate);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.distinct, 1);
        assert_eq!(t.received, 3);
    }

    #[test]
    fn tracker_flags_unknown_publishers_and_sequences_as_foreign() {
        let mut t = DeliveryTracker::new(3, 1, 10);
        assert_eq!(t.record(2, 0), Delivery::Foreign);
        assert_eq!(t.record(4, 0), Delivery::Foreign);
        assert_eq!(t.record(3, 10), Delivery::Foreign);
        assert_eq!(t.record(3, 9), Delivery::New);
        assert_eq!(t.foreign, 3);
        assert_eq!(t.distinct, 1);
    }

    #[test]
    fn tracker_detects_reordering_per_publisher() {
        let mut t = DeliveryTracker::new(0, 2, 10);
        t.record(0, 0);
        t.record(1, 0);
        t.record(0, 2);
        t.record(0, 1);
        t.record(1, 1);
        assert_eq!(t.out_of_order, 1);
    }

    #[test]
    fn tracker_is_complete_when_everything_arrived() {
        let mut t = DeliveryTracker::new(0, 1, 65);
        for seq in 0..65 {
            t.record(0, seq);
        }
        assert!(t.complete());
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn a_keys_lower_sequence_is_a_violation_but_a_redelivery_is_a_duplicate() {
        // Keys as sources: key 0 carries 4 messages, key 1 carries 2.
        let mut t = DeliveryTracker::with_limits(0, vec![4, 2]);
        assert_eq!(t.record(0, 0), Delivery::New);
        assert_eq!(t.record(0, 2), Delivery::New);
        assert_eq!(t.record(1, 0), Delivery::New);
        // Seq 1 after 2 on key 0, never seen before: the key's order broke.
        assert_eq!(t.record(0, 1), Delivery::New);
        assert_eq!(t.out_of_order, 1);
        // Seq 0 again (an unacknowledged message sent again): a duplicate.
        assert_eq!(t.record(0, 0), Delivery::Duplicate);
        assert_eq!(t.record(0, 3), Delivery::New);
        // Another key's lower sequence says nothing about key 0.
        assert_eq!(t.record(1, 1), Delivery::New);
        assert_eq!((t.out_of_order, t.duplicates), (1, 1));
        assert_eq!((t.distinct, t.received, t.lost()), (6, 7, 0));
        assert!(t.complete());
    }

    #[test]
    fn a_redelivered_run_of_messages_after_a_rewind_is_all_duplicates() {
        let mut t = DeliveryTracker::with_limits(0, vec![10]);
        for seq in 0..6 {
            t.record(0, seq);
        }
        // The partition went back to its committed offset (seq 3).
        for seq in 3..10 {
            t.record(0, seq);
        }
        assert_eq!((t.duplicates, t.out_of_order, t.distinct), (3, 0, 10));
    }

    #[test]
    fn sequences_beyond_a_keys_count_and_rejected_stamps_are_foreign() {
        let mut t = DeliveryTracker::with_limits(0, vec![2, 5]);
        assert_eq!(t.record(0, 2), Delivery::Foreign);
        assert_eq!(t.record(1, 4), Delivery::New);
        assert_eq!(t.record(2, 0), Delivery::Foreign);
        t.reject();
        assert_eq!((t.foreign, t.received, t.distinct), (3, 4, 1));
        assert_eq!(t.expected(), 7);
    }

    #[test]
    fn members_of_a_group_add_up_and_a_copy_both_received_is_a_duplicate() {
        let mut a = DeliveryTracker::with_limits(0, vec![3, 3]);
        let mut b = DeliveryTracker::with_limits(0, vec![3, 3]);
        // Key 0 was read by member a, then moved to member b, which got
        // seq 1 again (a hand-over redelivery) and seq 2.
        a.record(0, 0);
        a.record(0, 1);
        b.record(0, 1);
        b.record(0, 2);
        b.record(0, 2);
        b.record(1, 1);
        b.record(1, 0);
        a.absorb(&b);
        assert_eq!(a.distinct, 5, "key 1 seq 2 never arrived");
        assert_eq!(a.lost(), 1);
        assert_eq!(a.duplicates, 2, "one within b, one across members");
        assert_eq!(a.out_of_order, 1, "key 1 went backwards at b");
        assert_eq!(a.received, 7);
        assert!(!a.complete());
    }

    #[test]
    fn window_limits_outstanding_messages() {
        let mut w = InflightWindow::new(2);
        assert_eq!(w.acquire(0), Some(1));
        assert_eq!(w.acquire(0), Some(2));
        assert_eq!(w.acquire(0), None);
        assert_eq!(w.on_puback(1), AckEffect::Completed { sent_ns: 0 });
        assert_eq!(w.acquire(0), Some(3));
        assert_eq!(w.inflight(), 2);
    }

    #[test]
    fn window_rejects_acks_for_unknown_ids() {
        let mut w = InflightWindow::new(4);
        assert_eq!(w.on_puback(9), AckEffect::Unexpected);
        let id = w.acquire(5).unwrap_or(0);
        assert_eq!(w.on_puback(id), AckEffect::Completed { sent_ns: 5 });
        assert_eq!(w.on_puback(id), AckEffect::Unexpected);
    }

    #[test]
    fn window_runs_the_qos2_flow() {
        let mut w = InflightWindow::new(4);
        let id = w.acquire(7).unwrap_or(0);
        assert_eq!(w.on_pubcomp(id), AckEffect::Unexpected);
        assert_eq!(w.on_pubrec(id), AckEffect::SendPubRel);
        assert_eq!(w.on_pubrec(id), AckEffect::SendPubRel);
        assert_eq!(w.on_puback(id), AckEffect::Unexpected);
        assert_eq!(w.on_pubcomp(id), AckEffect::Completed { sent_ns: 7 });
        assert_eq!(w.inflight(), 0);
    }

    #[test]
    fn window_wraps_packet_ids_and_skips_zero_and_busy_ids() {
        let mut w = InflightWindow::new(3);
        let first = w.acquire(0).unwrap_or(0);
        for _ in 0..65534 {
            let id = w.acquire(0).unwrap_or(0);
            assert_ne!(id, 0);
            w.on_puback(id);
        }
        // Every other id has been used once; the next must skip `first`.
        let next = w.acquire(0).unwrap_or(0);
        assert_ne!(next, first);
        assert_ne!(next, 0);
    }

    #[test]
    fn vmrss_is_parsed_from_proc_status() {
        let status = "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmRSS:\t    9028 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kb(status), Some(9028));
        assert_eq!(parse_vmrss_kb("Name:\tx\n"), None);
    }
}
