//! What happens when a connection ends: the will (with its delay), and the
//! session's expiry.

use std::sync::Arc;
use std::time::Duration;

use super::client::{Client, Close};
use super::{BrokerState, now_ms};
use crate::protocol::Will;
use crate::router::Message;
use crate::session::Session;

impl Client {
    /// Detaches from the session and applies the will and expiry rules.
    pub fn finish(self, close: Close) {
        let now = now_ms();
        let (was_current, expiry_secs) = {
            let mut state = self.session.lock();
            let was_current = Session::detach(&mut state, &self.session, self.connection_id);
            (was_current, state.expiry_secs)
        };
        let publish_will = match close {
            Close::ByClient { publish_will } => publish_will,
            Close::ByServer(_) | Close::Lost => true,
        };
        tracing::info!(client_id = %self.client_id(), ?close, "client disconnected");
        let will = self.will.filter(|_| publish_will);

        if !was_current {
            // Taken over. The session lives on in the new connection unless
            // clean start replaced it; a delayed will is cancelled by the new
            // connection [MQTT-3.1.3-9], so only an undelayed one goes out.
            if let Some(will) = will {
                let session_ended = !self
                    .broker
                    .sessions
                    .get(self.session.client_id())
                    .is_some_and(|current| Arc::ptr_eq(&current, &self.session));
                if will.delay_interval == 0 || session_ended {
                    publish_will_message(&self.broker, self.session.client_id(), will, now);
                }
            }
            return;
        }

        if expiry_secs == 0 {
            self.broker.end_session(&self.session);
            if let Some(will) = will {
                publish_will_message(&self.broker, self.session.client_id(), will, now);
            }
            return;
        }
        match will {
            Some(will) if will.delay_interval.min(expiry_secs) > 0 => {
                // Stored with the session, so a restart still sends it.
                self.broker
                    .persist_session(&self.session, Some(now), Some(&will));
                schedule_will(self.broker.clone(), self.session.clone(), will, now);
            }
            will => {
                self.broker.persist_session(&self.session, Some(now), None);
                if let Some(will) = will {
                    publish_will_message(&self.broker, self.session.client_id(), will, now);
                }
            }
        }
        schedule_expiry(self.broker.clone(), self.session.clone(), now);
    }
}

/// Publishes a disconnected session's will once its delay (capped by the
/// session's expiry) has passed since `disconnected_at_ms`, unless a client
/// reattached meanwhile [MQTT-3.1.3-9].
pub(super) fn schedule_will(
    broker: Arc<BrokerState>,
    session: Arc<Session>,
    will: Will,
    disconnected_at_ms: u64,
) {
    let (expiry_secs, generation) = {
        let state = session.lock();
        (state.expiry_secs, state.generation)
    };
    let delay_ms = u64::from(will.delay_interval.min(expiry_secs)) * 1000;
    let wait = Duration::from_millis((disconnected_at_ms + delay_ms).saturating_sub(now_ms()));
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if !still_detached(&session, generation) {
            return;
        }
        publish_will_message(&broker, session.client_id(), will, now_ms());
        let registered = broker
            .sessions
            .get(session.client_id())
            .is_some_and(|current| Arc::ptr_eq(&current, &session));
        if registered {
            broker.persist_session(&session, Some(disconnected_at_ms), None);
        }
    });
}

/// Whether no connection has attached since `generation`.
fn still_detached(session: &Session, generation: u64) -> bool {
    let state = session.lock();
    state.generation == generation && state.connection.is_none()
}

/// Ends a disconnected persistent session once its expiry interval has
/// passed since `disconnected_at_ms`, unless a client reattached meanwhile.
pub(super) fn schedule_expiry(
    broker: Arc<BrokerState>,
    session: Arc<Session>,
    disconnected_at_ms: u64,
) {
    let (expiry_secs, generation) = {
        let state = session.lock();
        (state.expiry_secs, state.generation)
    };
    if expiry_secs == u32::MAX {
        return;
    }
    let deadline = disconnected_at_ms + u64::from(expiry_secs) * 1000;
    let wait = Duration::from_millis(deadline.saturating_sub(now_ms()));
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if still_detached(&session, generation) {
            tracing::info!(client_id = %session.client_id(), "session expired");
            broker.end_session(&session);
        }
    });
}

pub(super) fn publish_will_message(
    broker: &BrokerState,
    publisher: &Arc<str>,
    will: Will,
    now: u64,
) {
    let mut properties = will.properties;
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| now + u64::from(secs) * 1000);
    let message = Arc::new(Message {
        topic: will.topic.as_str().into(),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at,
        publisher: Some(publisher.clone()),
    });
    tracing::debug!(client_id = %publisher, topic = %message.topic, "publishing will");
    if message.retain
        && let Err(error) = broker.retain(&message)
    {
        tracing::error!(%error, topic = %message.topic, "cannot store retained will");
    }
    if let Err(error) = broker.route(&message, None) {
        tracing::error!(%error, client_id = %publisher, "cannot store will copies: will not delivered");
    }
}
