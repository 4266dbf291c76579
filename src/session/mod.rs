//! Per-client session state that outlives a connection: subscriptions, the
//! outbound queue and inflight window, inbound QoS 2 packet ids awaiting
//! PUBREL, and the link to the connection currently serving it.
//!
//! Everything here is plain state without I/O; the transport task that serves
//! the session reads and writes the socket and calls in.

mod outbound;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::protocol::{ReasonCode, SubscriptionOptions};

pub use outbound::{AckOutcome, AwaitedAck, Change, Delivery, Enqueued, Inflight, Outbound, Sent};

#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub max_inflight: u16,
    pub max_queued: usize,
}

impl SessionConfig {
    #[cfg(test)]
    pub fn for_tests() -> SessionConfig {
        SessionConfig {
            max_inflight: 10,
            max_queued: 100,
        }
    }
}

/// The connection currently serving a session.
#[derive(Debug)]
pub struct ConnectionLink {
    pub id: u64,
    /// Tells the connection to close because another one took over.
    pub kick: oneshot::Sender<Takeover>,
}

/// Sent to a connection that is being taken over: it handles what it has
/// already received (acknowledgements above all), closes with `reason`, and
/// then signals `done` so the new connection resumes an up-to-date session.
#[derive(Debug)]
pub struct Takeover {
    pub reason: ReasonCode,
    pub done: oneshot::Sender<()>,
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
    pub subscriptions: HashMap<String, SubscriptionEntry>,
    pub outbound: Outbound,
    /// Inbound QoS 2 packet ids already routed and awaiting PUBREL: a
    /// re-sent PUBLISH with one of these ids is not routed again.
    inbound_qos2: HashSet<u16>,
    /// Seconds the session outlives its connection; `u32::MAX` is forever.
    pub expiry_secs: u32,
    pub connection: Option<ConnectionLink>,
    /// Bumped on every connect, so timers armed for an earlier connection
    /// (will delay, session expiry) can tell they are stale.
    pub generation: u64,
}

impl SessionState {
    /// Records an inbound QoS 2 packet id; false if it is already awaiting
    /// PUBREL (the PUBLISH is a re-send and must not be routed again).
    pub fn receive_qos2(&mut self, packet_id: u16) -> bool {
        self.inbound_qos2.insert(packet_id)
    }

    /// Releases an inbound QoS 2 packet id; false if it was unknown.
    pub fn release_qos2(&mut self, packet_id: u16) -> bool {
        self.inbound_qos2.remove(&packet_id)
    }

    pub fn inbound_qos2_pending(&self) -> usize {
        self.inbound_qos2.len()
    }

    /// Sets the inbound QoS 2 packet ids read back from the store.
    pub fn restore_inbound_qos2(&mut self, ids: impl IntoIterator<Item = u16>) {
        self.inbound_qos2.extend(ids);
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
    wake: Notify,
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
            wake: Notify::new(),
            state: Mutex::new(SessionState {
                subscriptions: HashMap::new(),
                outbound: Outbound::new(config.max_inflight, config.max_queued),
                inbound_qos2: HashSet::new(),
                expiry_secs: 0,
                connection: None,
                generation: 0,
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

    /// Attaches a connection, returning the link of the one it replaces.
    pub fn attach(
        state: &mut SessionState,
        session: &Session,
        link: ConnectionLink,
    ) -> Option<ConnectionLink> {
        state.generation += 1;
        session.online.store(true, Ordering::Release);
        state.connection.replace(link)
    }

    /// Detaches connection `id` if it is still the current one; returns
    /// whether it was.
    pub fn detach(state: &mut SessionState, session: &Session, id: u64) -> bool {
        if state.connection.as_ref().is_some_and(|link| link.id == id) {
            state.connection = None;
            session.online.store(false, Ordering::Release);
            return true;
        }
        false
    }

    /// Wakes the connection task to write what is waiting.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos2_ids_are_routed_once_until_released() {
        let session = Session::new("c".into(), SessionConfig::for_tests());
        let mut state = session.lock();
        assert!(state.receive_qos2(5));
        assert!(!state.receive_qos2(5));
        assert!(state.release_qos2(5));
        assert!(!state.release_qos2(5));
        assert!(state.receive_qos2(5));
    }

    #[test]
    fn only_the_current_connection_detaches() {
        let session = Session::new("c".into(), SessionConfig::for_tests());
        let mut state = session.lock();
        let (kick, _) = oneshot::channel();
        assert!(Session::attach(&mut state, &session, ConnectionLink { id: 1, kick }).is_none());
        let (kick, _) = oneshot::channel();
        let old = Session::attach(&mut state, &session, ConnectionLink { id: 2, kick });
        assert_eq!(old.map(|l| l.id), Some(1));
        assert!(!Session::detach(&mut state, &session, 1));
        assert!(session.is_online());
        assert!(Session::detach(&mut state, &session, 2));
        assert!(!session.is_online());
        assert_eq!(state.generation, 2);
    }
}
