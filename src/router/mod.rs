//! Where a published message goes: the subscription index (`+`, `#`,
//! `$share` groups) and the retained store.

mod index;
mod retained;

use std::sync::Arc;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::protocol::{MessageProperties, QoS};

pub use index::{Match, Subscriber, SubscriptionIndex};
pub use retained::RetainedStore;

/// An application message as the broker holds it once accepted: shared by
/// every session it is delivered to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Everything but the expiry interval, which is kept as `expires_at`.
    pub properties: MessageProperties,
    /// Wall-clock deadline in unix milliseconds, so it survives restarts.
    pub expires_at: Option<u64>,
    /// The publishing client, for No Local.
    pub publisher: Option<Arc<str>>,
}

impl Message {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }

    /// The Message Expiry Interval to forward: what is left, in whole seconds
    /// rounded up so a message never arrives claiming 0 while still valid.
    pub fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        self.expires_at.map(|at| {
            let left_ms = at.saturating_sub(now_ms);
            u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_counts_down_in_whole_seconds() {
        let message = Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: Some(10_000),
            publisher: None,
        };
        assert_eq!(message.remaining_expiry(5_000), Some(5));
        assert_eq!(message.remaining_expiry(8_500), Some(2));
        assert!(!message.is_expired(9_999));
        assert!(message.is_expired(10_000));
    }
}
