//! Time: the broker's one clock reading, and its one timer service (will
//! delays, session expiry, retained message expiry; later delayed publishes
//! and retries). The broker core never reads the clock; the tasks that
//! drive it pass `now` in.

mod wheel;

use std::time::{SystemTime, UNIX_EPOCH};

pub use wheel::{TimerId, TimerWheel};

/// Unix time in milliseconds. Deadlines are wall-clock so that they can be
/// stored and keep counting across a restart.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
