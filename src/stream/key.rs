//! Which partition a message goes to: its key, and a stable hash of it.
//!
//! The key is chosen per stream: a topic level, a v5 user property, or the
//! publishing client's id. The partition is `fnv1a_64(key) % partitions`
//! (FNV-1a, 64 bits, offset basis 0xcbf29ce484222325, prime 0x100000001b3,
//! over the key's UTF-8 bytes). It never changes between versions: tests
//! pin its values, so a key's partition is the same on every broker and
//! across restarts.
//!
//! Growing a stream's partitions changes `partitions`, so a key may map to
//! another partition from then on. Its messages from the growth point on
//! keep their order (they all go to the new partition); messages appended
//! before the growth stay where they were and are consumed there.

use std::fmt;

use crate::protocol::Message;

/// How a stream picks a message's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// Topic level `N` (0-based); a topic with fewer levels has the empty
    /// key.
    TopicLevel(usize),
    /// The value of the first v5 user property with this name; none has
    /// the empty key.
    Property(String),
    /// The publishing client's id.
    ClientId,
}

impl KeySpec {
    /// Reads `topic:N`, `property:NAME` or `client_id`.
    pub fn parse(text: &str) -> Result<KeySpec, String> {
        if text == "client_id" {
            return Ok(KeySpec::ClientId);
        }
        if let Some(level) = text.strip_prefix("topic:") {
            return level.parse().map(KeySpec::TopicLevel).map_err(|_| {
                format!("`{text}`: the topic level must be a number, as in \"topic:1\"")
            });
        }
        if let Some(name) = text.strip_prefix("property:") {
            if name.is_empty() {
                return Err(format!(
                    "`{text}`: name the user property, as in \"property:device\""
                ));
            }
            return Ok(KeySpec::Property(name.to_string()));
        }
        Err(format!(
            "`{text}` is not \"topic:N\", \"property:NAME\" or \"client_id\""
        ))
    }

    /// The key of `message` under this spec.
    pub fn key_of<'m>(&self, message: &'m Message) -> &'m str {
        match self {
            KeySpec::TopicLevel(level) => message.topic.split('/').nth(*level).unwrap_or(""),
            KeySpec::Property(name) => message
                .properties
                .user_properties
                .iter()
                .find(|(key, _)| key == name)
                .map_or("", |(_, value)| value.as_str()),
            KeySpec::ClientId => message.publisher.as_deref().unwrap_or(""),
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::TopicLevel(level) => write!(f, "topic:{level}"),
            KeySpec::Property(name) => write!(f, "property:{name}"),
            KeySpec::ClientId => f.write_str("client_id"),
        }
    }
}

/// FNV-1a, 64 bits, over `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The partition of `key` in a stream of `partitions` partitions.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (fnv1a_64(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{MessageProperties, QoS};

    fn message(topic: &str, properties: &[(&str, &str)], publisher: &str) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties {
                user_properties: properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..MessageProperties::default()
            },
            expires_at: None,
            publisher: Some(publisher.into()),
        }
    }

    #[test]
    fn the_hash_is_fnv1a_64_and_its_partitions_never_change() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        // Pinned (computed with an independent implementation): a key's
        // partition is part of the product's contract.
        let pinned = [
            ("", 8, 5),
            ("device-1", 8, 1),
            ("device-2", 8, 0),
            ("truck/42", 8, 3),
            ("orders-eu", 16, 5),
            ("orders-eu", 1, 0),
        ];
        for (key, partitions, partition) in pinned {
            assert_eq!(
                partition_of(key, partitions),
                partition,
                "partition of {key:?} among {partitions}"
            );
        }
    }

    #[test]
    fn keys_come_from_a_topic_level_a_user_property_or_the_client_id() {
        let m = message(
            "orders/eu/42",
            &[("device", "d-7"), ("device", "other")],
            "pub-1",
        );
        assert_eq!(KeySpec::parse("topic:1").unwrap().key_of(&m), "eu");
        assert_eq!(KeySpec::parse("topic:9").unwrap().key_of(&m), "");
        assert_eq!(KeySpec::parse("property:device").unwrap().key_of(&m), "d-7");
        assert_eq!(KeySpec::parse("property:absent").unwrap().key_of(&m), "");
        assert_eq!(KeySpec::parse("client_id").unwrap().key_of(&m), "pub-1");
        for bad in ["topic:x", "topic:", "property:", "device", ""] {
            assert!(KeySpec::parse(bad).is_err(), "{bad:?} refused");
        }
        assert_eq!(KeySpec::parse("topic:3").unwrap().to_string(), "topic:3");
    }
}
