//! Client ids and topic prefixes that no other test uses, so tests can run
//! side by side, also against one shared external broker
//! (`PETREL_TEST_BROKER`) that may still hold sessions from an earlier run.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A client id unique to this run, alphanumeric and at most 23 characters:
/// the longest and narrowest id a 3.1.1 server must accept.
pub fn unique_id(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let stamp = (now.as_nanos() as u64 ^ u64::from(std::process::id()) << 40) as u32;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("{tag}{stamp:08x}{n}")
}

/// A prefix no other test (or earlier run against the same broker) uses.
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{name}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client id that is unique in this process and short enough for any broker.
pub fn client_id(role: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{role}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
