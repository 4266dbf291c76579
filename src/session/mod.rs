//! Per-client session state that outlives a connection: subscriptions, the
//! outbound queue and inflight window, inbound QoS 2 packet ids awaiting
//! PUBREL, the will, the session's timers, and the link to the connection
//! currently serving it. Beside it, `rate`: the token buckets of a
//! connection's publish limits.
//!
//! Everything here is plain state without I/O. The broker core changes it
//! under the session's lock; the connection task serving the session is
//! woken through its `ConnectionSignal`.

mod outbound;
mod rate;

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::protocol::{SubscriptionOptions, Will};
use crate::store::Ticket;
use crate::timer::TimerId;

pub use outbound::{
    AckOutcome, AwaitedAck, Change, Delivery, Enqueued, HELD_IN_MEMORY, Inflight, Outbound,
    QueueFull, QueueLimits, Sent, Spilled, StreamOrigin, StreamSettled,
};
pub use rate::{PublishLimits, PublishRates, RateExceeded, TokenBucket};

#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub max_inflight: u16,
    pub queue: QueueLimits,
}

impl SessionConfig {
    #[cfg(test)]
    pub fn for_tests() -> SessionConfig {
        SessionConfig {
            max_inflight: 10,
            queue: QueueLimits::messages(100),
        }
    }
}

/// How the broker reaches the task serving a connection: a wake-up for
/// queued messages or a timer that came due, and the reasons it must close.
/// The task polls it; nothing here allocates per wake-up.
#[derive(Debug, Default)]
pub struct ConnectionSignal {
    flags: AtomicU8,
    waker: Mutex<Option<Waker>>,
    finished: Notify,
}

/// Something is waiting for the task: queued messages, acknowledgements.
const WOKEN: u8 = 1;
const TAKEN_OVER: u8 = 2;
const SHUTTING_DOWN: u8 = 4;
/// The connection's alarm (keep alive, write deadline) came due.
const ALARM: u8 = 8;
const FINISHED: u8 = 16;
/// An operator disconnected the client (admin API).
const KICKED: u8 = 32;

/// Why the broker asked a connection to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    TakenOver,
    ShuttingDown,
    /// An operator disconnected the client (v5: DISCONNECT 0x98).
    Kicked,
}

impl ConnectionSignal {
    /// Raises `flag` and wakes the task, unless a wake-up is already on its
    /// way (a burst of deliveries wakes the task once).
    fn raise(&self, flag: u8) {
        let before = self.flags.fetch_or(flag | WOKEN, Ordering::AcqRel);
        if before & WOKEN == 0 {
            let waker = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Wakes the task to write what is waiting.
    pub fn wake(&self) {
        self.raise(WOKEN);
    }

    /// Another connection took the session over.
    pub fn take_over(&self) {
        self.raise(TAKEN_OVER);
    }

    /// The broker is shutting down.
    pub fn shut_down(&self) {
        self.raise(SHUTTING_DOWN);
    }

    /// An operator disconnected the client.
    pub fn kick(&self) {
        self.raise(KICKED);
    }

    /// The connection's alarm came due.
    pub fn alarm(&self) {
        self.raise(ALARM);
    }

    /// Ready once woken since the last time it was: the task then looks at
    /// everything (queue, `stop`, `take_alarm`). Registers `cx` otherwise.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flags.fetch_and(!WOKEN, Ordering::AcqRel) & WOKEN != 0 {
            return Poll::Ready(());
        }
        {
            let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        if self.flags.fetch_and(!WOKEN, Ordering::AcqRel) & WOKEN != 0 {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// What the task has been asked to stop for, if anything.
    pub fn stop(&self) -> Option<Stop> {
        let flags = self.flags.load(Ordering::Acquire);
        // Before a takeover: deleting a session through the admin API both
        // kicks its connection and discards the session (which raises
        // `take_over`), and the client should hear why.
        if flags & KICKED != 0 {
            Some(Stop::Kicked)
        } else if flags & TAKEN_OVER != 0 {
            Some(Stop::TakenOver)
        } else if flags & SHUTTING_DOWN != 0 {
            Some(Stop::ShuttingDown)
        } else {
            None
        }
    }

    /// Whether the alarm came due since the last call.
    pub fn take_alarm(&self) -> bool {
        self.flags.fetch_and(!ALARM, Ordering::AcqRel) & ALARM != 0
    }

    /// The task is gone: a connection waiting to take over may go on.
    pub fn finish(&self) {
        self.flags.fetch_or(FINISHED, Ordering::AcqRel);
        self.finished.notify_waiters();
    }

    /// Waits until the task has finished.
    pub async fn finished(&self) {
        loop {
            let notified = self.finished.notified();
            if self.flags.load(Ordering::Acquire) & FINISHED != 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The connection currently serving a session.
#[derive(Debug, Clone)]
pub struct ConnectionLink {
    pub id: u64,
    pub signal: Arc<ConnectionSignal>,
}

/// Whose ACL rights apply to what a session receives and to its will: the
/// client that last attached to it. A different user may resume a
/// session, so this follows every attach rather than the session's first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Owner {
    /// Restored from the store and not attached to since: the store keeps
    /// no usernames, so whose rights apply is unknown until a client
    /// attaches (what is queued meanwhile is checked when it is sent).
    #[default]
    Unknown,
    Anonymous,
    User(Arc<str>),
    /// One of the broker's own bridges: the broker itself, which every
    /// ACL lets read and publish.
    Bridge,
}

impl Owner {
    pub fn of(username: Option<&Arc<str>>) -> Owner {
        username.map_or(Owner::Anonymous, |name| Owner::User(name.clone()))
    }
}

/// A subscription as the session remembers it, by its filter as sent
/// (including any `$share/{group}/` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEntry {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug)]
pub struct SessionState {
    /// By filter as sent. A list, not a map: most sessions hold a handful,
    /// and a parked session should cost little.
    subscriptions: Vec<(Box<str>, SubscriptionEntry)>,
    pub outbound: Outbound,
    /// Inbound QoS 2 packet ids already routed and awaiting PUBREL, with
    /// the ticket of the write that made the message durable: a re-sent
    /// PUBLISH is acknowledged again only once that write is.
    inbound_qos2: Vec<(u16, Ticket)>,
    /// Seconds the session outlives its connection; `u32::MAX` is forever.
    pub expiry_secs: u32,
    pub connection: Option<ConnectionLink>,
    /// A connection that was taken over and is finishing: until it has, it
    /// may still apply the acknowledgements it had already received.
    pub draining: Option<NonZeroU64>,
    /// Bumped on every connect, so timers armed for an earlier connection
    /// (will delay, session expiry) can tell they are stale.
    pub generation: u64,
    /// Set once the session is discarded (clean start, expiry, end of an
    /// expiry-0 session): a connection still holding it may change nothing.
    pub ended: bool,
    /// The will of the current connection, or one whose delay is running.
    pub will: Option<Box<Will>>,
    /// When the last connection ended; none while connected.
    pub disconnected_at_ms: Option<u64>,
    /// Whose ACL rights apply to the session (set on every attach).
    pub owner: Owner,
    /// Whether the store holds a record of this session, to be deleted
    /// when it ends.
    pub stored: bool,
    pub expiry_timer: Option<TimerId>,
    pub will_timer: Option<TimerId>,
}

impl SessionState {
    /// Records an inbound QoS 2 packet id; `Err` with the ticket of the
    /// first copy if it is already awaiting PUBREL (the PUBLISH is a
    /// re-send and must not be routed again).
    pub fn receive_qos2(&mut self, packet_id: u16) -> Result<(), Ticket> {
        match self.inbound_qos2.iter().find(|(id, _)| *id == packet_id) {
            Some(&(_, ticket)) => Err(ticket),
            None => {
                self.inbound_qos2.push((packet_id, Ticket::NONE));
                Ok(())
            }
        }
    }

    /// Keeps the ticket of the write that stored the message of `packet_id`.
    pub fn set_qos2_ticket(&mut self, packet_id: u16, ticket: Ticket) {
        if let Some(entry) = self
            .inbound_qos2
            .iter_mut()
            .find(|(id, _)| *id == packet_id)
        {
            entry.1 = ticket;
        }
    }

    /// Releases an inbound QoS 2 packet id; false if it was unknown.
    pub fn release_qos2(&mut self, packet_id: u16) -> bool {
        let before = self.inbound_qos2.len();
        self.inbound_qos2.retain(|(id, _)| *id != packet_id);
        self.inbound_qos2.len() != before
    }

    pub fn inbound_qos2_pending(&self) -> usize {
        self.inbound_qos2.len()
    }

    /// Sets the inbound QoS 2 packet ids read back from the store.
    pub fn restore_inbound_qos2(&mut self, ids: impl IntoIterator<Item = u16>) {
        self.inbound_qos2
            .extend(ids.into_iter().map(|id| (id, Ticket::NONE)));
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, &SubscriptionEntry)> {
        self.subscriptions
            .iter()
            .map(|(filter, entry)| (&**filter, entry))
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn has_subscription(&self, filter: &str) -> bool {
        self.subscription(filter).is_some()
    }

    pub fn subscription(&self, filter: &str) -> Option<&SubscriptionEntry> {
        self.subscriptions
            .iter()
            .find(|(f, _)| &**f == filter)
            .map(|(_, entry)| entry)
    }

    /// Adds or replaces a subscription; returns whether it existed.
    pub fn subscribe(&mut self, filter: &str, entry: SubscriptionEntry) -> bool {
        match self.subscriptions.iter_mut().find(|(f, _)| &**f == filter) {
            Some(existing) => {
                existing.1 = entry;
                true
            }
            None => {
                self.subscriptions.push((filter.into(), entry));
                false
            }
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|(f, _)| &**f != filter);
        self.subscriptions.len() != before
    }

    /// Removes every subscription, returning their filters.
    pub fn take_subscriptions(&mut self) -> Vec<Box<str>> {
        self.subscriptions
            .drain(..)
            .map(|(filter, _)| filter)
            .collect()
    }

    /// Whether `connection` is the one serving the session now.
    pub fn is_current(&self, connection: u64) -> bool {
        !self.ended && self.connection.as_ref().is_some_and(|l| l.id == connection)
    }

    /// Whether `connection` may still apply acknowledgements: it is current,
    /// or taken over and finishing what it had received.
    pub fn may_acknowledge(&self, connection: u64) -> bool {
        self.is_current(connection)
            || (!self.ended && self.draining.is_some_and(|id| id.get() == connection))
    }

    /// Cancels nothing itself: hands back the timers to cancel.
    pub fn take_timers(&mut self) -> impl Iterator<Item = TimerId> {
        self.expiry_timer
            .take()
            .into_iter()
            .chain(self.will_timer.take())
    }
}

pub struct Session {
    client_id: Arc<str>,
    /// Mirrors `state.connection.is_some()` without taking the lock, for
    /// shared-subscription member choice on the publish path.
    online: AtomicBool,
    /// Mirrors `state.expiry_secs != 0`, so the publish path can tell which
    /// copies must be stored before it takes any session lock.
    persistent: AtomicBool,
    /// A std mutex: it is only ever held for short synchronous updates and
    /// never across an `.await`, so an async mutex would only add cost.
    state: Mutex<SessionState>,
}

impl Session {
    pub fn new(client_id: Arc<str>, config: SessionConfig) -> Session {
        Session {
            client_id,
            online: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                subscriptions: Vec::new(),
                outbound: Outbound::new(config.max_inflight, config.queue),
                inbound_qos2: Vec::new(),
                expiry_secs: 0,
                connection: None,
                draining: None,
                generation: 0,
                ended: false,
                will: None,
                disconnected_at_ms: None,
                owner: Owner::Unknown,
                stored: false,
                expiry_timer: None,
                will_timer: None,
            }),
        }
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Whether the session outlives its connection, so that its state is
    /// written to the store.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Acquire)
    }

    pub fn set_expiry(state: &mut SessionState, session: &Session, expiry_secs: u32) {
        state.expiry_secs = expiry_secs;
        session
            .persistent
            .store(expiry_secs != 0, Ordering::Release);
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way later code relies on, so a poisoned lock is still used.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches a connection, returning the link of the one it replaces
    /// (which may still drain its acknowledgements).
    pub fn attach(
        state: &mut SessionState,
        session: &Session,
        link: ConnectionLink,
    ) -> Option<ConnectionLink> {
        state.generation += 1;
        state.disconnected_at_ms = None;
        session.online.store(true, Ordering::Release);
        state.outbound.set_connected(true);
        let replaced = state.connection.replace(link);
        state.draining = replaced.as_ref().and_then(|old| NonZeroU64::new(old.id));
        replaced
    }

    /// Detaches connection `id` if it is still the current one; returns
    /// whether it was.
    pub fn detach(state: &mut SessionState, session: &Session, id: u64) -> bool {
        if state.draining.is_some_and(|draining| draining.get() == id) {
            state.draining = None;
        }
        if state.connection.as_ref().is_some_and(|link| link.id == id) {
            state.connection = None;
            session.online.store(false, Ordering::Release);
            state.outbound.set_connected(false);
            return true;
        }
        false
    }

    /// Marks the session discarded: no connection still holding it may
    /// change it, and its task is told to close.
    pub fn end(state: &mut SessionState, session: &Session) -> Option<ConnectionLink> {
        state.ended = true;
        state.draining = None;
        session.online.store(false, Ordering::Release);
        state.connection.take()
    }

    /// Wakes the connection serving the session, if any.
    pub fn wake(state: &SessionState) {
        if let Some(link) = &state.connection {
            link.signal.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: u64) -> ConnectionLink {
        ConnectionLink {
            id,
            signal: Arc::default(),
        }
    }

    #[test]
    fn qos2_ids_are_routed_once_until_released() {
        let session = Session::new("c".into(), SessionConfig::for_tests());
        let mut state = session.lock();
        assert_eq!(state.receive_qos2(5), Ok(()));
        state.set_qos2_ticket(5, Ticket(9));
        assert_eq!(state.receive_qos2(5), Err(Ticket(9)));
        assert!(state.release_qos2(5));
        assert!(!state.release_qos2(5));
        assert_eq!(state.receive_qos2(5), Ok(()));
    }

    #[test]
    fn only_the_current_connection_detaches() {
        let session = Session::new("c".into(), SessionConfig::for_tests());
        let mut state = session.lock();
        assert!(Session::attach(&mut state, &session, link(1)).is_none());
        let old = Session::attach(&mut state, &session, link(2));
        assert_eq!(old.map(|l| l.id), Some(1));
        assert!(state.may_acknowledge(1), "a taken-over connection drains");
        assert!(!state.is_current(1));
        assert!(!Session::detach(&mut state, &session, 1));
        assert!(!state.may_acknowledge(1));
        assert!(session.is_online());
        assert!(Session::detach(&mut state, &session, 2));
        assert!(!session.is_online());
        assert_eq!(state.generation, 2);
    }

    #[test]
    fn an_ended_session_accepts_nothing_from_its_old_connection() {
        let session = Session::new("c".into(), SessionConfig::for_tests());
        let mut state = session.lock();
        Session::attach(&mut state, &session, link(1));
        let old = Session::end(&mut state, &session);
        assert_eq!(old.map(|l| l.id), Some(1));
        assert!(!state.is_current(1));
        assert!(!state.may_acknowledge(1));
    }
}
