//! What happens when a connection ends and when the broker's timers fire:
//! the will (with its delay), the session's expiry, retained expiry.
//!
//! Every decision that a CONNECT could race with (end the session, publish
//! a delayed will) is taken under the lock the CONNECT's attach takes: the
//! session map entry and the session's own lock.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;

use super::client::{Client, Close};
use super::{BrokerState, TimerEvent};
use crate::protocol::{Message, Will};
use crate::session::{Owner, Session, SessionState};
use crate::store::Record;

impl Client {
    /// Detaches from the session and applies the will and expiry rules.
    pub fn finish(mut self, close: Close, now_ms: u64) {
        // Acknowledgements read before the end still commit.
        self.settle_streamed(now_ms);
        let publish_will = match close {
            Close::ByClient { publish_will } => publish_will,
            Close::ByServer(_) | Close::Lost | Close::Stalled => true,
        };
        tracing::info!(client_id = %self.client_id(), ?close, "client disconnected");
        let broker = &self.broker;
        broker.leave_streams_of(&self.session, self.connection_id, now_ms);
        let client_id = self.session.client_id().clone();
        let mut wills = Vec::new();
        match broker.sessions.entry(client_id.clone()) {
            Entry::Occupied(entry) if Arc::ptr_eq(entry.get(), &self.session) => {
                let mut state = self.session.lock();
                if !Session::detach(&mut state, &self.session, self.connection_id) {
                    // Taken over: the attach dealt with this connection's will.
                    return;
                }
                let will = state.will.take().filter(|_| publish_will);
                if state.expiry_secs == 0 {
                    drop(state);
                    let session = entry.remove();
                    broker.release_session();
                    broker.discard(&session);
                    wills.extend(will.map(|w| *w));
                } else {
                    drop(entry);
                    state.disconnected_at_ms = Some(now_ms);
                    wills.extend(
                        broker.arm_disconnected(&mut state, &client_id, will, now_ms, now_ms),
                    );
                    broker.persist_session(&self.session, &mut state);
                }
            }
            _ => {
                // The session was replaced (clean start) or ended while this
                // connection was closing; `discard` dealt with the will.
                let mut state = self.session.lock();
                Session::detach(&mut state, &self.session, self.connection_id);
            }
        }
        // This connection's own will: its rights are this client's.
        let owner = Owner::of(self.extras.as_ref().and_then(|e| e.username.as_ref()));
        for will in wills {
            broker.publish_will(&client_id, &owner, will, now_ms);
        }
    }
}

impl BrokerState {
    /// Arms what a session that disconnected at `disconnected_at` waits for:
    /// its will's delay (the will then kept with the session, so a restart
    /// still sends it) and its expiry. Returns the will if its delay has
    /// already passed at `now`.
    pub(super) fn arm_disconnected(
        &self,
        state: &mut SessionState,
        client_id: &Arc<str>,
        will: Option<Box<Will>>,
        disconnected_at: u64,
        now: u64,
    ) -> Option<Will> {
        let generation = state.generation;
        let mut due_now = None;
        if let Some(will) = will {
            let delay = u64::from(will.delay_interval.min(state.expiry_secs));
            let due = disconnected_at + delay * 1000;
            if due <= now {
                due_now = Some(*will);
            } else {
                state.will = Some(will);
                self.arm_session_timer(
                    state,
                    due,
                    TimerEvent::WillDelay {
                        client_id: client_id.clone(),
                        generation,
                    },
                );
            }
        }
        if state.expiry_secs != u32::MAX {
            let deadline = disconnected_at + u64::from(state.expiry_secs) * 1000;
            self.arm_session_timer(
                state,
                deadline,
                TimerEvent::SessionExpiry {
                    client_id: client_id.clone(),
                    generation,
                },
            );
        }
        due_now
    }

    /// Arms a session's will-delay or expiry timer and remembers it in the
    /// session, so that an attach can cancel it.
    fn arm_session_timer(&self, state: &mut SessionState, deadline: u64, event: TimerEvent) {
        let slot = match &event {
            TimerEvent::SessionExpiry { .. } => &mut state.expiry_timer,
            TimerEvent::WillDelay { .. } => &mut state.will_timer,
            TimerEvent::RetainedExpiry { .. }
            | TimerEvent::ConnectionAlarm(_)
            | TimerEvent::StreamGroup { .. }
            | TimerEvent::StreamRetention
            | TimerEvent::DelaysDue
            | TimerEvent::DeadLetter(_) => {
                unreachable!("not a session timer")
            }
        };
        let id = self.timers.arm(deadline, event);
        if let Some(old) = slot.replace(id) {
            self.timers.cancel(old);
        }
    }

    /// Handles a timer that came due.
    pub fn on_timer(&self, event: TimerEvent, now_ms: u64) {
        match event {
            TimerEvent::SessionExpiry {
                client_id,
                generation,
            } => self.expire_session(&client_id, generation, now_ms),
            TimerEvent::WillDelay {
                client_id,
                generation,
            } => self.will_delay_passed(&client_id, generation, now_ms),
            TimerEvent::ConnectionAlarm(signal) => signal.alarm(),
            TimerEvent::StreamGroup { group } => self.wake_group(group, now_ms),
            TimerEvent::StreamRetention => self.apply_retention(now_ms),
            TimerEvent::DelaysDue => self.delays_due(now_ms),
            TimerEvent::DeadLetter(letter) => self.publish_internal(*letter, now_ms),
            TimerEvent::RetainedExpiry { topic, expires_at } => {
                let mut trie = self.retained.write();
                let due = trie
                    .get(&topic)
                    .is_some_and(|m| m.expires_at == Some(expires_at) && m.is_expired(now_ms));
                if due {
                    trie.remove(&topic);
                    self.journal.append(Record::DeleteRetained(topic));
                }
            }
        }
    }

    /// Ends a disconnected session whose expiry has passed, unless a client
    /// attached since the timer was armed.
    fn expire_session(&self, client_id: &Arc<str>, generation: u64, now_ms: u64) {
        let Entry::Occupied(entry) = self.sessions.entry(client_id.clone()) else {
            return;
        };
        {
            let state = entry.get().lock();
            if state.generation != generation || state.connection.is_some() {
                return;
            }
        }
        let session = entry.remove();
        self.release_session();
        let (_, will) = self.discard(&session);
        tracing::info!(client_id = %client_id, "session expired");
        self.metrics.session_expired();
        if let Some((will, owner)) = will {
            self.publish_will(client_id, &owner, will, now_ms);
        }
    }

    /// Publishes a disconnected session's will once its delay has passed,
    /// unless a client attached meanwhile [MQTT-3.1.3-9].
    fn will_delay_passed(&self, client_id: &Arc<str>, generation: u64, now_ms: u64) {
        let Some(session) = self.session(client_id) else {
            return;
        };
        let (will, owner) = {
            let mut state = session.lock();
            if state.generation != generation || state.connection.is_some() || state.ended {
                return;
            }
            state.will_timer = None;
            let will = state.will.take();
            self.persist_session(&session, &mut state);
            (will, state.owner.clone())
        };
        if let Some(will) = will {
            self.publish_will(client_id, &owner, *will, now_ms);
        }
    }

    /// Publishes a will on behalf of `publisher`, if `owner` (whose client
    /// set it) may publish to its topic now.
    pub(super) fn publish_will(
        &self,
        publisher: &Arc<str>,
        owner: &Owner,
        will: Will,
        now_ms: u64,
    ) {
        let mut properties = will.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|secs| now_ms + u64::from(secs) * 1000);
        let message = Message {
            topic: will.topic.as_str().into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at,
            publisher: Some(publisher.clone()),
        };
        if !self.may_publish_will(owner, publisher, &message) {
            tracing::debug!(client_id = %publisher, topic = %message.topic, "will not published: the ACL denies it");
            return;
        }
        tracing::debug!(client_id = %publisher, topic = %message.topic, "publishing will");
        self.publish_internal(message, now_ms);
    }
}
