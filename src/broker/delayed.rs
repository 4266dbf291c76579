//! Delayed publishes: `$delayed/{seconds}/{topic}` is stored (journalled
//! like any durable message) and published to `{topic}` when due, retained
//! and routed and appended to streams like any message. One timer on the
//! wheel stands for the earliest due delay; when it fires, everything due
//! goes out in due order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::consume::DEAD_LETTER_PREFIX;
use super::{BrokerState, TimerEvent};
use crate::delay::{DelayedTopic, Delays, Pending, delayed_topic};
use crate::protocol::{Message, ReasonCode};
use crate::store::{Record, Ticket};
use crate::topic;

/// The delays waiting, and the wake-up armed for the earliest.
#[derive(Default)]
pub(super) struct DelayState {
    delays: Delays,
    armed: Option<u64>,
}

pub(super) struct DelayQueue(Mutex<DelayState>);

impl DelayQueue {
    pub(super) fn new() -> DelayQueue {
        DelayQueue(Mutex::new(DelayState::default()))
    }

    fn lock(&self) -> MutexGuard<'_, DelayState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a delayed publish was not accepted: the reason code and the text of
/// a v5 reason string.
pub(super) struct DelayRefused {
    pub(super) reason: ReasonCode,
    pub(super) text: &'static str,
}

impl BrokerState {
    /// Delayed publishes waiting.
    pub fn delays_pending(&self) -> usize {
        self.delays.lock().delays.len()
    }

    /// Takes back the delays stored before a restart; what fell due while
    /// the broker was down goes out at the first tick, in due order.
    pub(super) fn restore_delays(&self, stored: Vec<Pending>, now: u64) {
        let highest = stored.iter().map(|p| p.id).max().unwrap_or(0);
        self.next_delay_id.fetch_max(highest + 1, Ordering::Relaxed);
        let mut state = self.delays.lock();
        for pending in stored {
            state.delays.insert(pending);
        }
        self.arm_delays(&mut state, now);
    }

    /// Stores `message`, published to `$delayed/...`, to go out to the
    /// delay's topic when due, with the publisher's QoS 2 packet id when it
    /// has one. Returns the ticket its acknowledgement waits for.
    pub(super) fn delay(
        &self,
        message: &Message,
        delayed: DelayedTopic<'_>,
        inbound_qos2: Option<(&Arc<str>, u16)>,
        now: u64,
    ) -> Result<Ticket, DelayRefused> {
        if topic::validate_name(delayed.topic, self.topic_limits()).is_err() {
            return Err(DelayRefused {
                reason: ReasonCode::TOPIC_NAME_INVALID,
                text: "the delayed topic is not a valid topic name",
            });
        }
        // Published later without the checks a client's publish gets: a
        // delay of a delay, or a dead letter, is refused now.
        if !matches!(delayed_topic(delayed.topic), Ok(None)) {
            return Err(DelayRefused {
                reason: ReasonCode::TOPIC_NAME_INVALID,
                text: "a delayed publish cannot itself be delayed",
            });
        }
        if delayed.topic.starts_with(DEAD_LETTER_PREFIX) {
            return Err(DelayRefused {
                reason: ReasonCode::NOT_AUTHORIZED,
                text: "only the broker publishes dead letters to $dlq/...",
            });
        }
        let limits = &self.settings.limits;
        if delayed.seconds > u64::from(limits.max_delay.seconds()) {
            self.metrics.delay_refused();
            return Err(DelayRefused {
                reason: ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                text: "the delay is longer than max_delay",
            });
        }
        if self.journal.accepting().is_err() {
            return Err(DelayRefused {
                reason: ReasonCode::QUOTA_EXCEEDED,
                text: "the broker's storage is full",
            });
        }
        let mut state = self.delays.lock();
        if state.delays.len() >= limits.max_pending_delays {
            drop(state);
            self.metrics.delay_refused();
            return Err(DelayRefused {
                reason: ReasonCode::QUOTA_EXCEEDED,
                text: "too many delayed messages are waiting",
            });
        }
        let pending = Pending {
            id: self.next_delay_id.fetch_add(1, Ordering::Relaxed),
            due: now.saturating_add(delayed.seconds.saturating_mul(1000)),
            message: Arc::new(Message {
                topic: delayed.topic.into(),
                ..message.clone()
            }),
        };
        // Journalled under the lock, so the store's rows and the queue in
        // memory agree on every id.
        let ticket = self.journal.append(Record::PutDelayed {
            id: pending.id,
            due: pending.due,
            message: pending.message.clone(),
            inbound_qos2: inbound_qos2.map(|(client_id, id)| (client_id.clone(), id)),
        });
        state.delays.insert(pending);
        self.arm_delays(&mut state, now);
        Ok(ticket)
    }

    /// Publishes every delay due by `now`, in due order, and arms the
    /// wake-up for the next.
    pub(super) fn delays_due(&self, now: u64) {
        let due = {
            let mut state = self.delays.lock();
            state.armed = None;
            let due = state.delays.take_due(now);
            self.arm_delays(&mut state, now);
            due
        };
        for pending in due {
            if pending.message.is_expired(now) {
                self.metrics.messages_expired_add(1);
            } else {
                self.metrics
                    .delay_published(now.saturating_sub(pending.due));
                self.publish_internal(Message::clone(&pending.message), now);
            }
            self.journal.append(Record::DeleteDelayed {
                id: pending.id,
                due: pending.due,
            });
        }
    }

    /// Arms the wake-up for the earliest delay unless one that early is
    /// armed already.
    fn arm_delays(&self, state: &mut DelayState, now: u64) {
        let Some(next) = state.delays.next_due() else {
            return;
        };
        let at = next.max(now);
        if state.armed.is_none_or(|armed| at < armed) {
            state.armed = Some(at);
            self.timers.arm(at, TimerEvent::DelaysDue);
        }
    }
}
