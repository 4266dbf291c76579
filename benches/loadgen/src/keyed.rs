//! Keyed traffic for the stream scenario: which keys each publisher owns,
//! how its messages rotate over them, and the stamp that lets a group
//! member check each key's order.
//!
//! A stream promises order per key, not per publisher, so every key has
//! exactly one publisher (key `k` belongs to publisher `k % publishers`)
//! that numbers the key's messages 0, 1, 2, ...: a member that sees a
//! key's sequence go backwards, other than by a redelivery, has caught the
//! stream out. Pure logic, no I/O.

use bytes::{Buf, BufMut, BytesMut};

/// Bytes at the start of every stream-scenario payload: send time, run
/// tag, publisher, key and the key's sequence number, big endian.
pub const KEY_STAMP_LEN: usize = 8 + 4 + 4 + 4 + 8;

/// What a group member needs to know about one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStamp {
    /// Nanoseconds since the run's base instant.
    pub sent_ns: u64,
    /// Tells this run's messages from those an earlier run left in the
    /// stream, which a reused group may still hand out.
    pub run: u32,
    pub publisher: u32,
    pub key: u32,
    pub seq: u64,
}

impl KeyStamp {
    /// Appends the stamp, then zero padding up to `payload_len` bytes.
    pub fn write(&self, buf: &mut BytesMut, payload_len: usize) {
        buf.reserve(payload_len.max(KEY_STAMP_LEN));
        buf.put_u64(self.sent_ns);
        buf.put_u32(self.run);
        buf.put_u32(self.publisher);
        buf.put_u32(self.key);
        buf.put_u64(self.seq);
        buf.put_bytes(0, payload_len.saturating_sub(KEY_STAMP_LEN));
    }

    /// Reads the stamp from the start of a payload; `None` if it is too short.
    pub fn read(mut payload: &[u8]) -> Option<KeyStamp> {
        if payload.len() < KEY_STAMP_LEN {
            return None;
        }
        Some(KeyStamp {
            sent_ns: payload.get_u64(),
            run: payload.get_u32(),
            publisher: payload.get_u32(),
            key: payload.get_u32(),
            seq: payload.get_u64(),
        })
    }
}

/// The keys one publisher owns among `keys` keys shared by `publishers`
/// publishers: those with `key % publishers == publisher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub publisher: u32,
    pub publishers: u32,
    pub keys: u32,
}

impl KeyOwner {
    /// How many keys this publisher owns.
    pub fn owned(&self) -> u32 {
        let publishers = self.publishers.max(1);
        self.keys / publishers + u32::from(self.publisher < self.keys % publishers)
    }

    /// The key of the publisher's `local`-th owned key.
    pub fn key(&self, local: u32) -> u32 {
        self.publisher + local * self.publishers
    }

    /// Where the publisher's `n`-th message (from 0) goes: the local index
    /// of its key and its sequence number on that key. Messages rotate over
    /// the owned keys, so every key gets an even share.
    pub fn place(&self, n: u64) -> (u32, u64) {
        let owned = u64::from(self.owned().max(1));
        ((n % owned) as u32, n / owned)
    }
}

/// The publisher that owns `key`.
pub fn owner_of(key: u32, publishers: u32) -> u32 {
    key % publishers.max(1)
}

/// Messages key `k` carries (index `k`) when each of `publishers`
/// publishers sends `messages` messages over `keys` keys.
pub fn messages_per_key(keys: u32, publishers: u32, messages: u64) -> Vec<u64> {
    let publishers = publishers.max(1);
    (0..keys)
        .map(|key| {
            let owner = KeyOwner {
                publisher: owner_of(key, publishers),
                publishers,
                keys,
            };
            let owned = u64::from(owner.owned());
            let local = u64::from(key / publishers);
            messages / owned + u64::from(local < messages % owned)
        })
        .collect()
}

/// A number standing for a run id in payloads (FNV-1a, 32 bits).
pub fn run_tag(run: &str) -> u32 {
    run.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_stamp_round_trips_and_pads_to_payload_size() {
        let stamp = KeyStamp {
            sent_ns: 987_654_321,
            run: 0xdead_beef,
            publisher: 3,
            key: 1003,
            seq: 77,
        };
        let mut buf = BytesMut::new();
        stamp.write(&mut buf, 64);
        assert_eq!(buf.len(), 64);
        assert_eq!(KeyStamp::read(&buf), Some(stamp));
        assert_eq!(KeyStamp::read(&buf[..KEY_STAMP_LEN - 1]), None);
    }

    #[test]
    fn every_key_has_exactly_one_owner() {
        let (keys, publishers) = (10, 4);
        let mut owners = vec![Vec::new(); keys as usize];
        for publisher in 0..publishers {
            let owner = KeyOwner {
                publisher,
                publishers,
                keys,
            };
            for local in 0..owner.owned() {
                owners[owner.key(local) as usize].push(publisher);
            }
        }
        for (key, owned_by) in owners.iter().enumerate() {
            assert_eq!(owned_by, &[owner_of(key as u32, publishers)], "key {key}");
        }
    }

    #[test]
    fn messages_rotate_over_the_owned_keys_numbered_per_key() {
        let owner = KeyOwner {
            publisher: 1,
            publishers: 4,
            keys: 10,
        };
        assert_eq!(owner.owned(), 3, "keys 1, 5 and 9");
        let placed: Vec<(u32, u64)> = (0..7)
            .map(|n| {
                let (local, seq) = owner.place(n);
                (owner.key(local), seq)
            })
            .collect();
        assert_eq!(
            placed,
            [(1, 0), (5, 0), (9, 0), (1, 1), (5, 1), (9, 1), (1, 2)]
        );
    }

    #[test]
    fn messages_per_key_add_up_to_what_was_published() {
        let (keys, publishers, messages) = (10, 4, 7);
        let per_key = messages_per_key(keys, publishers, messages);
        assert_eq!(
            per_key.iter().sum::<u64>(),
            u64::from(publishers) * messages
        );
        // Publisher 1 owns keys 1, 5, 9 and sends 7 messages: 3, 2, 2.
        assert_eq!((per_key[1], per_key[5], per_key[9]), (3, 2, 2));
        for publisher in 0..publishers {
            let owner = KeyOwner {
                publisher,
                publishers,
                keys,
            };
            for n in 0..messages {
                let (local, seq) = owner.place(n);
                assert!(seq < per_key[owner.key(local) as usize]);
            }
        }
    }

    #[test]
    fn run_tags_tell_runs_apart() {
        assert_ne!(run_tag("1a2b3c"), run_tag("1a2b3d"));
        assert_eq!(run_tag("1a2b3c"), run_tag("1a2b3c"));
    }
}
