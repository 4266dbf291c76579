//! Rate limiting of failed authentications. A hash quick enough for every
//! genuine login is quick enough for many guesses too; this keeps guessing
//! online slow whatever the hash.
//!
//! Failures are counted per client id and per peer address, separately: an
//! attacker who rotates client ids is still one address, and one who
//! rotates addresses (a botnet) usually still guesses for one client id.
//! After `max_failures` within `window_ms`, a key is locked out; every
//! further failure once the lock-out ends locks it again for twice as long,
//! up to `max_backoff_ms`, until a quiet `max_backoff_ms` forgives it.
//!
//! The price of keying by client id: anyone can lock out a client id they
//! know by failing with it, for at most `max_backoff_ms` at a time.
//!
//! No I/O and no clock: the caller passes the time in, as milliseconds from
//! any fixed origin, so every schedule is a plain unit test.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures within the window that lock a key out.
    pub max_failures: u32,
    pub window_ms: u64,
    /// The first lock-out; each one after it is twice as long.
    pub initial_backoff_ms: u64,
    /// The longest lock-out, and the quiet time that forgives past ones.
    pub max_backoff_ms: u64,
    /// Keys tracked of each kind. A flood of new keys pushes out the ones
    /// that failed least recently, so memory stays bounded.
    pub max_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> ThrottleConfig {
        ThrottleConfig {
            max_failures: 5,
            window_ms: 60_000,
            initial_backoff_ms: 10_000,
            max_backoff_ms: 300_000,
            max_keys: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Refuse {
        by: ThrottledBy,
        retry_after_ms: u64,
    },
}

/// Which key a refusal came from, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    ClientId,
    Address,
}

/// The failures of every tracked client id and address. Owned by whoever
/// authenticates; it needs `&mut` only to record an outcome.
#[derive(Debug)]
pub struct AuthThrottle {
    config: ThrottleConfig,
    clients: Tracker<String>,
    addresses: Tracker<IpAddr>,
}

impl AuthThrottle {
    pub fn new(config: ThrottleConfig) -> AuthThrottle {
        AuthThrottle {
            config,
            clients: Tracker::default(),
            addresses: Tracker::default(),
        }
    }

    /// Whether to attempt authentication at all; asked before any password
    /// is checked, so a locked-out key costs no hashing either.
    pub fn check(&self, client_id: &str, address: IpAddr, now_ms: u64) -> Decision {
        let client = self.clients.locked_for(client_id, now_ms);
        let address = self.addresses.locked_for(&address_key(address), now_ms);
        match (client, address) {
            (None, None) => Decision::Allow,
            (Some(client), Some(address)) if address > client => Decision::Refuse {
                by: ThrottledBy::Address,
                retry_after_ms: address,
            },
            (Some(wait), _) => Decision::Refuse {
                by: ThrottledBy::ClientId,
                retry_after_ms: wait,
            },
            (None, Some(wait)) => Decision::Refuse {
                by: ThrottledBy::Address,
                retry_after_ms: wait,
            },
        }
    }

    pub fn record_failure(&mut self, client_id: &str, address: IpAddr, now_ms: u64) {
        let config = &self.config;
        self.clients.fail(client_id, config, now_ms);
        self.addresses.fail(&address_key(address), config, now_ms);
    }

    /// A client that proved its password is forgiven its past failures. Its
    /// address is not: many clients may share it behind one NAT, and one
    /// success among them says nothing about the rest.
    pub fn record_success(&mut self, client_id: &str) {
        self.clients.forget(client_id);
    }

    /// How many client ids and addresses are tracked.
    pub fn tracked(&self) -> (usize, usize) {
        (self.clients.records.len(), self.addresses.records.len())
    }
}

/// The key an address is counted under. An IPv6 host is usually given a
/// whole /64, so anything narrower would let it rotate past the limit;
/// IPv4-mapped addresses count as the IPv4 address they carry.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[derive(Debug)]
struct Tracker<K> {
    records: HashMap<K, Record>,
    /// Keys by the sequence number of their last failure, oldest first: who
    /// goes when the tracker is full.
    by_age: BTreeMap<u64, K>,
    sequence: u64,
}

impl<K> Default for Tracker<K> {
    fn default() -> Tracker<K> {
        Tracker {
            records: HashMap::new(),
            by_age: BTreeMap::new(),
            sequence: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    window_start_ms: u64,
    failures: u32,
    /// Lock-outs since the key was last forgiven; sets the next one's length.
    lockouts: u32,
    blocked_until_ms: u64,
    last_failure_ms: u64,
    sequence: u64,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    fn locked_for<Q>(&self, key: &Q, now_ms: u64) -> Option<u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let record = self.records.get(key)?;
        (now_ms < record.blocked_until_ms).then(|| record.blocked_until_ms - now_ms)
    }

    fn fail<Q>(&mut self, key: &Q, config: &ThrottleConfig, now_ms: u64)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if config.max_keys == 0 {
            return;
        }
        self.sequence += 1;
        let sequence = self.sequence;
        match self.records.get(key) {
            Some(record) => {
                self.by_age.remove(&record.sequence);
            }
            None => {
                while self.records.len() >= config.max_keys {
                    let Some((_, oldest)) = self.by_age.pop_first() else {
                        break;
                    };
                    self.records.remove::<K>(&oldest);
                }
            }
        }
        let record = self
            .records
            .entry(key.to_owned())
            .or_insert_with(|| Record::new(now_ms));
        record.sequence = sequence;
        self.by_age.insert(sequence, key.to_owned());
        record.register_failure(config, now_ms);
    }

    fn forget<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(record) = self.records.remove(key) {
            self.by_age.remove(&record.sequence);
        }
    }
}

impl Record {
    fn new(now_ms: u64) -> Record {
        Record {
            window_start_ms: now_ms,
            failures: 0,
            lockouts: 0,
            blocked_until_ms: 0,
            last_failure_ms: now_ms,
            sequence: 0,
        }
    }

    fn register_failure(&mut self, config: &ThrottleConfig, now_ms: u64) {
        if now_ms < self.blocked_until_ms {
            // The caller authenticated despite the lock-out; that must not
            // lengthen it, or a retrying client would never get back in.
            return;
        }
        let quiet_since = self.blocked_until_ms.max(self.last_failure_ms);
        if now_ms.saturating_sub(quiet_since) >= config.max_backoff_ms {
            self.lockouts = 0;
            self.failures = 0;
            self.window_start_ms = now_ms;
        }
        if now_ms.saturating_sub(self.window_start_ms) >= config.window_ms {
            self.failures = 0;
            self.window_start_ms = now_ms;
        }
        self.last_failure_ms = now_ms;
        self.failures += 1;
        // Once locked out, the key has used up its allowance: one more
        // failure before it is forgiven locks it out again.
        if self.lockouts > 0 || self.failures >= config.max_failures {
            let doublings = self.lockouts.min(63);
            let backoff = config
                .initial_backoff_ms
                .saturating_mul(1u64 << doublings)
                .min(config.max_backoff_ms);
            self.blocked_until_ms = now_ms.saturating_add(backoff);
            self.lockouts = self.lockouts.saturating_add(1);
            self.failures = 0;
            self.window_start_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER_HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            max_failures: 3,
            window_ms: 1_000,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            max_keys: 4,
        }
    }

    fn refused(by: ThrottledBy, retry_after_ms: u64) -> Decision {
        Decision::Refuse { by, retry_after_ms }
    }

    /// Fails `client` from `address` until the throttle refuses it,
    /// returning how many failures that took.
    fn fail_until_refused(
        throttle: &mut AuthThrottle,
        client: &str,
        address: IpAddr,
        now: u64,
    ) -> u32 {
        let mut failures = 0;
        while throttle.check(client, address, now) == Decision::Allow {
            throttle.record_failure(client, address, now);
            failures += 1;
        }
        failures
    }

    #[test]
    fn max_failures_in_the_window_lock_out_for_the_backoff() {
        let mut throttle = AuthThrottle::new(config());
        throttle.record_failure("c", HOST, 0);
        throttle.record_failure("c", HOST, 10);
        assert_eq!(throttle.check("c", HOST, 20), Decision::Allow);
        throttle.record_failure("c", HOST, 20);
        assert_eq!(
            throttle.check("c", HOST, 20),
            refused(ThrottledBy::ClientId, 100)
        );
        assert_eq!(
            throttle.check("c", HOST, 119),
            refused(ThrottledBy::ClientId, 1)
        );
        assert_eq!(throttle.check("c", HOST, 120), Decision::Allow);
    }

    #[test]
    fn failures_further_apart_than_the_window_do_not_add_up() {
        let mut throttle = AuthThrottle::new(config());
        for now in [0, 600, 1_200, 1_800, 2_400] {
            throttle.record_failure("c", HOST, now);
            assert_eq!(throttle.check("c", HOST, now), Decision::Allow, "at {now}");
        }
    }

    #[test]
    fn each_lockout_doubles_the_backoff_up_to_the_cap() {
        let mut throttle = AuthThrottle::new(config());
        assert_eq!(fail_until_refused(&mut throttle, "c", HOST, 0), 3);
        let mut now = 0;
        for expected in [100, 200, 400, 800, 1_000, 1_000] {
            let Decision::Refuse { retry_after_ms, .. } = throttle.check("c", HOST, now) else {
                panic!("not locked out at {now}");
            };
            assert_eq!(retry_after_ms, expected);
            now += retry_after_ms;
            assert_eq!(fail_until_refused(&mut throttle, "c", HOST, now), 1);
        }
    }

    #[test]
    fn a_quiet_max_backoff_forgives_past_lockouts() {
        let mut throttle = AuthThrottle::new(config());
        fail_until_refused(&mut throttle, "c", HOST, 0);
        fail_until_refused(&mut throttle, "c", HOST, 100);
        // Locked until 300; quiet for max_backoff after that.
        assert_eq!(fail_until_refused(&mut throttle, "c", HOST, 1_299), 1);
        assert_eq!(fail_until_refused(&mut throttle, "c", HOST, 3_000), 3);
        assert_eq!(
            throttle.check("c", HOST, 3_000),
            refused(ThrottledBy::ClientId, 100)
        );
    }

    #[test]
    fn failures_during_a_lockout_do_not_lengthen_it() {
        let mut throttle = AuthThrottle::new(config());
        fail_until_refused(&mut throttle, "c", HOST, 0);
        throttle.record_failure("c", HOST, 50);
        assert_eq!(throttle.check("c", HOST, 100), Decision::Allow);
    }

    #[test]
    fn client_ids_and_addresses_are_counted_separately() {
        let mut throttle = AuthThrottle::new(config());
        // Rotating client ids from one address locks the address.
        for client in ["a", "b", "c"] {
            throttle.record_failure(client, HOST, 0);
        }
        assert_eq!(
            throttle.check("d", HOST, 0),
            refused(ThrottledBy::Address, 100)
        );
        assert_eq!(throttle.check("a", OTHER_HOST, 0), Decision::Allow);
        // Rotating addresses for one client id locks the client id.
        let mut throttle = AuthThrottle::new(config());
        for last in 1..=3 {
            throttle.record_failure("victim", IpAddr::from([10, 0, 0, last]), 0);
        }
        assert_eq!(
            throttle.check("victim", OTHER_HOST, 0),
            refused(ThrottledBy::ClientId, 100)
        );
        assert_eq!(throttle.check("other", OTHER_HOST, 0), Decision::Allow);
    }

    #[test]
    fn the_longer_of_two_lockouts_is_reported() {
        let mut throttle = AuthThrottle::new(config());
        for client in ["a", "b", "c"] {
            throttle.record_failure(client, HOST, 0);
        }
        throttle.record_failure("d", HOST, 100);
        fail_until_refused(&mut throttle, "x", OTHER_HOST, 100);
        assert_eq!(
            throttle.check("x", HOST, 100),
            refused(ThrottledBy::Address, 200)
        );
        assert_eq!(
            throttle.check("x", OTHER_HOST, 100),
            refused(ThrottledBy::ClientId, 100)
        );
    }

    #[test]
    fn success_forgives_the_client_id_but_not_the_address() {
        let mut throttle = AuthThrottle::new(config());
        throttle.record_failure("c", HOST, 0);
        throttle.record_failure("c", HOST, 0);
        throttle.record_success("c");
        throttle.record_failure("c", OTHER_HOST, 0);
        assert_eq!(throttle.check("c", OTHER_HOST, 0), Decision::Allow);
        throttle.record_failure("d", HOST, 0);
        assert_eq!(
            throttle.check("e", HOST, 0),
            refused(ThrottledBy::Address, 100)
        );
    }

    #[test]
    fn ipv6_hosts_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let mut throttle = AuthThrottle::new(config());
        for host in 1..=3u16 {
            let address = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host]);
            throttle.record_failure(&format!("c{host}"), address, 0);
        }
        let same_64 = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 9]);
        let next_64 = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert_eq!(
            throttle.check("new", same_64, 0),
            refused(ThrottledBy::Address, 100)
        );
        assert_eq!(throttle.check("new", next_64, 0), Decision::Allow);

        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        for client in ["a", "b", "c"] {
            throttle.record_failure(client, mapped, 0);
        }
        assert_eq!(
            throttle.check("new", HOST, 0),
            refused(ThrottledBy::Address, 100)
        );
    }

    #[test]
    fn tracked_keys_are_capped_and_the_least_recently_failed_go_first() {
        let mut throttle = AuthThrottle::new(config());
        fail_until_refused(&mut throttle, "locked", HOST, 0);
        for n in 0..3u8 {
            throttle.record_failure(&format!("other{n}"), IpAddr::from([10, 0, 0, n]), 1);
        }
        assert_eq!(throttle.tracked(), (4, 4));
        assert_ne!(throttle.check("locked", OTHER_HOST, 1), Decision::Allow);
        throttle.record_failure("one more", IpAddr::from([10, 0, 1, 0]), 2);
        assert_eq!(throttle.tracked(), (4, 4));
        assert_eq!(throttle.check("locked", OTHER_HOST, 2), Decision::Allow);
        assert_eq!(throttle.check("other", HOST, 2), Decision::Allow);
    }
}
