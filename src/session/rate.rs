//! Token buckets for per-client publish limits: a rate (units per second)
//! and a burst (how many units may be spent at once after a quiet spell).
//! No clock here: every call takes `now` in milliseconds, so the tests
//! drive time by hand.

/// Tokens are kept in thousandths of a unit, so one millisecond of a rate
/// as low as one unit per second still refills something.
const MILLI: u64 = 1000;

/// A token bucket. It starts full. A take that is larger than the whole
/// burst (one message bigger than the byte burst) passes when the bucket
/// is full and leaves it in debt: refused forever would be wrong, and the
/// debt keeps the average at the rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    /// Units per second.
    rate: u64,
    /// The most tokens held, in thousandths.
    capacity: i128,
    /// Tokens held, in thousandths; negative while in debt.
    tokens: i128,
    /// When `tokens` was last brought up to date.
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` units per second up to `burst`
    /// units; a `burst` of 0 means one second's worth (`rate`).
    pub fn new(rate: u64, burst: u64, now_ms: u64) -> TokenBucket {
        let burst = if burst == 0 { rate } else { burst };
        let capacity = i128::from(burst) * i128::from(MILLI);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            updated_ms: now_ms,
        }
    }

    /// Takes `amount` units if the bucket holds them (or is full); false,
    /// taking nothing, if spending them now would pass the limit.
    pub fn try_take(&mut self, amount: u64, now_ms: u64) -> bool {
        self.refill(now_ms);
        let wanted = i128::from(amount) * i128::from(MILLI);
        let full = self.tokens == self.capacity;
        if self.tokens < wanted && !full {
            return false;
        }
        self.tokens -= wanted;
        true
    }

    fn refill(&mut self, now_ms: u64) {
        // A clock that went backwards refills nothing rather than
        // underflowing.
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        self.updated_ms = self.updated_ms.max(now_ms);
        // rate is per second and tokens are thousandths: one millisecond
        // adds `rate` thousandths.
        let added = i128::from(elapsed).saturating_mul(i128::from(self.rate));
        self.tokens = self.tokens.saturating_add(added).min(self.capacity);
    }
}

/// Which publish limit a client passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateExceeded {
    /// `limits.max_publish_rate`: PUBLISH packets per second.
    Messages,
    /// `limits.max_publish_bytes_rate`: bytes of topic, payload and
    /// properties per second.
    Bytes,
}

/// A client's publish limits: one bucket per configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishLimits {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

/// The configured rates and bursts; a rate of 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishRates {
    pub messages_per_sec: u64,
    pub messages_burst: u64,
    pub bytes_per_sec: u64,
    pub bytes_burst: u64,
}

impl PublishRates {
    pub fn is_limited(&self) -> bool {
        self.messages_per_sec > 0 || self.bytes_per_sec > 0
    }
}

impl PublishLimits {
    /// Full buckets for the limits `rates` sets; `None` when it sets none,
    /// so unlimited clients carry nothing.
    pub fn new(rates: PublishRates, now_ms: u64) -> Option<PublishLimits> {
        let bucket = |rate, burst| (rate > 0).then(|| TokenBucket::new(rate, burst, now_ms));
        rates.is_limited().then(|| PublishLimits {
            messages: bucket(rates.messages_per_sec, rates.messages_burst),
            bytes: bucket(rates.bytes_per_sec, rates.bytes_burst),
        })
    }

    /// Counts one PUBLISH of `size` bytes against both limits. When either
    /// refuses, neither is charged.
    pub fn admit(&mut self, size: usize, now_ms: u64) -> Result<(), RateExceeded> {
        let before = self.messages.clone();
        if let Some(messages) = &mut self.messages
            && !messages.try_take(1, now_ms)
        {
            return Err(RateExceeded::Messages);
        }
        if let Some(bytes) = &mut self.bytes
            && !bytes.try_take(size as u64, now_ms)
        {
            self.messages = before;
            return Err(RateExceeded::Bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_refuses() {
        let mut bucket = TokenBucket::new(10, 5, T0);
        for _ in 0..5 {
            assert!(bucket.try_take(1, T0));
        }
        assert!(!bucket.try_take(1, T0));
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let mut bucket = TokenBucket::new(10, 1, T0);
        assert!(bucket.try_take(1, T0));
        // 10 per second: one token every 100 ms.
        assert!(!bucket.try_take(1, T0 + 99));
        assert!(bucket.try_take(1, T0 + 100));
        assert!(!bucket.try_take(1, T0 + 150));
    }

    #[test]
    fn a_slow_rate_refills_in_fractions() {
        // One per second, refilled a thousandth at a time.
        let mut bucket = TokenBucket::new(1, 1, T0);
        assert!(bucket.try_take(1, T0));
        for ms in (100..1000).step_by(100) {
            assert!(!bucket.try_take(1, T0 + ms), "at {ms} ms");
        }
        assert!(bucket.try_take(1, T0 + 1000));
    }

    #[test]
    fn a_quiet_spell_refills_no_more_than_the_burst() {
        let mut bucket = TokenBucket::new(100, 3, T0);
        let later = T0 + 3_600_000;
        for _ in 0..3 {
            assert!(bucket.try_take(1, later));
        }
        assert!(!bucket.try_take(1, later));
    }

    #[test]
    fn burst_zero_means_one_seconds_worth() {
        let mut bucket = TokenBucket::new(4, 0, T0);
        for _ in 0..4 {
            assert!(bucket.try_take(1, T0));
        }
        assert!(!bucket.try_take(1, T0));
    }

    #[test]
    fn a_take_larger_than_the_burst_passes_once_and_leaves_a_debt() {
        // 1000 bytes/s, burst 1000: a 3000-byte message passes on a full
        // bucket, then nothing passes until the 2000-byte debt is repaid
        // and the bucket refilled.
        let mut bucket = TokenBucket::new(1000, 1000, T0);
        assert!(bucket.try_take(3000, T0));
        assert!(!bucket.try_take(1, T0 + 2000));
        assert!(bucket.try_take(1, T0 + 2001));
        // Not full any more: a large take waits for the tokens it needs.
        assert!(!bucket.try_take(3000, T0 + 2500));
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut bucket = TokenBucket::new(10, 1, T0);
        assert!(bucket.try_take(1, T0));
        assert!(!bucket.try_take(1, T0 - 10_000));
        assert!(bucket.try_take(1, T0 + 100));
    }

    #[test]
    fn huge_rates_and_bursts_do_not_overflow() {
        let mut bucket = TokenBucket::new(u64::MAX, u64::MAX, T0);
        assert!(bucket.try_take(u64::MAX, T0));
        assert!(bucket.try_take(u64::MAX, u64::MAX));
    }

    #[test]
    fn no_limits_configured_means_no_state() {
        assert_eq!(PublishLimits::new(PublishRates::default(), T0), None);
    }

    #[test]
    fn a_refused_publish_charges_neither_limit() {
        let rates = PublishRates {
            messages_per_sec: 10,
            messages_burst: 2,
            bytes_per_sec: 100,
            bytes_burst: 100,
        };
        let mut limits = PublishLimits::new(rates, T0).unwrap();
        assert_eq!(limits.admit(80, T0), Ok(()));
        // Over the byte burst: refused, and the message token stays.
        assert_eq!(limits.admit(30, T0), Err(RateExceeded::Bytes));
        assert_eq!(limits.admit(20, T0), Ok(()));
        assert_eq!(limits.admit(0, T0), Err(RateExceeded::Messages));
    }

    #[test]
    fn each_limit_works_alone() {
        let messages_only = PublishRates {
            messages_per_sec: 1,
            ..PublishRates::default()
        };
        let mut limits = PublishLimits::new(messages_only, T0).unwrap();
        assert_eq!(limits.admit(usize::MAX, T0), Ok(()));
        assert_eq!(limits.admit(0, T0), Err(RateExceeded::Messages));
        let bytes_only = PublishRates {
            bytes_per_sec: 10,
            ..PublishRates::default()
        };
        let mut limits = PublishLimits::new(bytes_only, T0).unwrap();
        for _ in 0..100 {
            assert_eq!(limits.admit(0, T0), Ok(()));
        }
        assert_eq!(limits.admit(10, T0), Ok(()));
        assert_eq!(limits.admit(1, T0), Err(RateExceeded::Bytes));
    }
}
