//! Delayed publish (DESIGN §6): a PUBLISH to `$delayed/{seconds}/{topic}`
//! is stored and published to `{topic}` when due, EMQX's syntax.
//!
//! No I/O here: the topic syntax, and the pending delays as the broker
//! holds them (due time, message), in due order.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::protocol::Message;

const PREFIX: &str = "$delayed/";

/// Why a `$delayed/...` topic is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    #[error("`$delayed/{0}/...`: the delay must be a whole number of seconds")]
    BadSeconds(String),
    #[error("`$delayed/...` names no topic to publish to")]
    NoTopic,
}

/// A delayed publish as its topic asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayedTopic<'t> {
    pub seconds: u64,
    pub topic: &'t str,
}

/// The delay and real topic of `topic`, if it is in the `$delayed/` space.
pub fn delayed_topic(topic: &str) -> Result<Option<DelayedTopic<'_>>, DelayError> {
    let Some(rest) = topic.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let (seconds, topic) = rest.split_once('/').unwrap_or((rest, ""));
    let digits = !seconds.is_empty() && seconds.bytes().all(|b| b.is_ascii_digit());
    let seconds = match seconds.parse::<u64>() {
        Ok(parsed) if digits => parsed,
        _ => return Err(DelayError::BadSeconds(seconds.to_string())),
    };
    if topic.is_empty() {
        return Err(DelayError::NoTopic);
    }
    Ok(Some(DelayedTopic { seconds, topic }))
}

/// One message waiting for its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: u64,
    /// Unix ms.
    pub due: u64,
    /// The message as it will be published, to its real topic.
    pub message: Arc<Message>,
}

/// The delays waiting, by `(due, id)`: what is due comes out in due order,
/// ties in arrival order.
#[derive(Debug, Default)]
pub struct Delays {
    pending: BTreeMap<(u64, u64), Arc<Message>>,
}

impl Delays {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn insert(&mut self, pending: Pending) {
        self.pending
            .insert((pending.due, pending.id), pending.message);
    }

    /// Takes every delay due by `now`, in due order.
    pub fn take_due(&mut self, now: u64) -> Vec<Pending> {
        let later = self.pending.split_off(&(now.saturating_add(1), 0));
        std::mem::replace(&mut self.pending, later)
            .into_iter()
            .map(|((due, id), message)| Pending { id, due, message })
            .collect()
    }

    /// When the next delay is due.
    pub fn next_due(&self) -> Option<u64> {
        self.pending.keys().next().map(|&(due, _)| due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};

    #[test]
    fn delayed_topics_read_as_emqx_writes_them() {
        assert_eq!(
            delayed_topic("$delayed/15/sensors/1"),
            Ok(Some(DelayedTopic {
                seconds: 15,
                topic: "sensors/1"
            }))
        );
        assert_eq!(delayed_topic("sensors/1"), Ok(None));
        assert_eq!(delayed_topic("$delayedx/1/t"), Ok(None));
        assert_eq!(
            delayed_topic("$delayed/0/t"),
            Ok(Some(DelayedTopic {
                seconds: 0,
                topic: "t"
            }))
        );
        for bad in [
            "$delayed/x/t",
            "$delayed/-1/t",
            "$delayed//t",
            "$delayed/+5/t",
            "$delayed/1.5/t",
        ] {
            assert!(
                matches!(delayed_topic(bad), Err(DelayError::BadSeconds(_))),
                "{bad}"
            );
        }
        assert_eq!(delayed_topic("$delayed/10/"), Err(DelayError::NoTopic));
        assert_eq!(delayed_topic("$delayed/10"), Err(DelayError::NoTopic));
    }

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
        })
    }

    #[test]
    fn due_delays_come_out_in_due_order_ties_in_arrival_order() {
        let mut delays = Delays::default();
        for (id, due, topic) in [
            (1, 500, "c"),
            (2, 100, "a"),
            (3, 500, "d"),
            (4, 900, "e"),
            (5, 100, "b"),
        ] {
            delays.insert(Pending {
                id,
                due,
                message: message(topic),
            });
        }
        assert_eq!(delays.next_due(), Some(100));
        let due: Vec<String> = delays
            .take_due(500)
            .iter()
            .map(|p| p.message.topic.to_string())
            .collect();
        assert_eq!(due, ["a", "b", "c", "d"]);
        assert_eq!(delays.len(), 1);
        assert_eq!(delays.next_due(), Some(900));
        assert!(delays.take_due(899).is_empty());
    }
}
