//! Records kept in the process (the `memory` durability mode): nothing
//! survives the process, and messages are not journalled at all, but a broker
//! restarted in the same process on the same `MemoryStore` gets its
//! persistent sessions and retained messages back.

use std::sync::Arc;

use dashmap::DashMap;

use super::{SessionRecord, Snapshot, Store, StoreError};
use crate::protocol::Message;
use crate::session::{Delivery, Sent};

#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<String, SessionRecord>,
    retained: DashMap<Arc<str>, Arc<Message>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn keeps_messages(&self) -> bool {
        false
    }

    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions
            .insert(record.client_id.clone(), record.clone());
        Ok(())
    }

    fn delete_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id);
        Ok(())
    }

    fn put_retained(&self, message: &Message) -> Result<(), StoreError> {
        self.retained
            .insert(message.topic.clone(), Arc::new(message.clone()));
        Ok(())
    }

    fn delete_retained(&self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic);
        Ok(())
    }

    fn put_copies(
        &self,
        _copies: &[(Arc<str>, Delivery)],
        _inbound_qos2: Option<(&str, u16)>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn mark_sent(&self, _client_id: &str, _seq: u64, _sent: Sent) -> Result<(), StoreError> {
        Ok(())
    }

    fn delete_delivery(&self, _client_id: &str, _seq: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn delete_inbound_qos2(&self, _client_id: &str, _packet_id: u16) -> Result<(), StoreError> {
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn has_space(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            sessions: self.sessions.iter().map(|e| e.value().clone()).collect(),
            retained: self.retained.iter().map(|e| e.value().clone()).collect(),
            ..Snapshot::default()
        })
    }
}
