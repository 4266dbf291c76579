//! Arrival order across connections: a SUBSCRIBE (or UNSUBSCRIBE) that the
//! broker read before another client's PUBLISH takes effect before that
//! PUBLISH is routed, as it would on a broker that serves one socket at a
//! time.
//!
//! Every read from a socket takes a stamp from one counter. A read that
//! carries a whole SUBSCRIBE or UNSUBSCRIBE also registers its stamp as
//! pending until its packets are handled. A PUBLISH is routed only once no
//! read stamped before its own is pending; otherwise its connection waits
//! (asynchronously) for those to be handled. Reads without subscription
//! changes never wait and cost one atomic increment.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use crate::protocol::frame_header;

#[derive(Default)]
pub struct ArrivalOrder {
    next: AtomicU64,
    /// Registered before the stamp is taken, so that a later stamp always
    /// sees it (see `stamp`).
    pending_count: AtomicUsize,
    pending: Mutex<Vec<u64>>,
    handled: Notify,
}

/// The stamp of one read, and whether it holds others back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    seq: u64,
    pending: bool,
}

impl ArrivalOrder {
    /// Stamps a read; `changes_subscriptions` when its bytes hold a whole
    /// SUBSCRIBE or UNSUBSCRIBE, which then counts as pending until
    /// `handled`.
    pub fn stamp(&self, changes_subscriptions: bool) -> Stamp {
        if !changes_subscriptions {
            return Stamp {
                seq: self.next.fetch_add(1, Ordering::SeqCst),
                pending: false,
            };
        }
        // Counted first and stamped under the lock: a read stamped after
        // this one sees the count, then finds the stamp once it takes the
        // lock.
        self.pending_count.fetch_add(1, Ordering::SeqCst);
        let mut pending = self.lock();
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        pending.push(seq);
        Stamp { seq, pending: true }
    }

    /// Whether a PUBLISH read under `stamp` must wait for an earlier
    /// subscription change to be handled.
    pub fn must_wait(&self, stamp: Stamp) -> bool {
        self.pending_count.load(Ordering::SeqCst) > 0
            && self.lock().iter().any(|&seq| seq < stamp.seq)
    }

    /// Waits until no subscription change stamped before `stamp` is pending.
    pub async fn earlier_handled(&self, stamp: Stamp) {
        loop {
            let handled = self.handled.notified();
            if !self.must_wait(stamp) {
                return;
            }
            handled.await;
        }
    }

    /// The packets read under `stamp` are handled (or will never be).
    pub fn handled(&self, stamp: Stamp) {
        if !stamp.pending {
            return;
        }
        self.lock().retain(|&seq| seq != stamp.seq);
        self.pending_count.fetch_sub(1, Ordering::SeqCst);
        self.handled.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `buf` holds a whole SUBSCRIBE or UNSUBSCRIBE frame, looking only
/// at frame headers.
pub fn has_subscription_change(buf: &[u8]) -> bool {
    let mut at = 0;
    while let Ok(Some((first_byte, header, remaining))) = frame_header(&buf[at..]) {
        let end = at + header + remaining;
        if end > buf.len() {
            return false;
        }
        if matches!(first_byte >> 4, 8 | 10) {
            return true;
        }
        at = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_subscription_changes_are_found() {
        let publish = [0x30, 3, 0, 1, b't'];
        let subscribe = [0x82, 6, 0, 1, 0, 1, b't', 0];
        let unsubscribe = [0xA2, 5, 0, 1, 0, 1, b't'];
        assert!(!has_subscription_change(&publish));
        assert!(has_subscription_change(
            &[&publish[..], &subscribe].concat()
        ));
        assert!(has_subscription_change(&unsubscribe));
        assert!(
            !has_subscription_change(&subscribe[..5]),
            "a partial SUBSCRIBE holds nobody back"
        );
    }

    #[test]
    fn a_publish_waits_only_for_earlier_pending_changes() {
        let order = ArrivalOrder::default();
        let subscribe = order.stamp(true);
        let publish = order.stamp(false);
        let later_subscribe = order.stamp(true);
        assert!(order.must_wait(publish));
        order.handled(subscribe);
        assert!(!order.must_wait(publish), "a later change does not hold it");
        order.handled(later_subscribe);
        assert!(!order.must_wait(order.stamp(false)));
    }
}
