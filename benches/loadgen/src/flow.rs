//! End-to-end flow control: publishers send only while fewer than a set
//! number of their messages are on their way to a subscriber, so a run
//! measures the latency of a loaded but not overrun broker (no queue ever
//! overflows, nothing is dropped).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct EndToEnd {
    limit: u64,
    in_flight: AtomicU64,
    freed: Notify,
}

impl EndToEnd {
    pub fn new(limit: u64) -> EndToEnd {
        EndToEnd {
            limit,
            in_flight: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// Takes a slot for one message about to be published, if one is free.
    pub fn try_take(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.limit
    }

    /// A message reached its subscriber: its slot is free again.
    pub fn give_back(&self) {
        // Publishers wait only while the window is full, so only the slot
        // that ends a full window wakes them.
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == self.limit {
            self.freed.notify_waiters();
        }
    }

    /// Waits until a slot may be free.
    pub async fn freed(&self) {
        let freed = self.freed.notified();
        if self.has_room() {
            return;
        }
        freed.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back() {
        let window = EndToEnd::new(2);
        assert!(window.try_take());
        assert!(window.try_take());
        assert!(!window.try_take());
        window.give_back();
        assert!(window.try_take());
    }
}
