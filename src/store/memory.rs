//! Records kept in the process: nothing survives the process, but a broker
//! restarted in the same process on the same `MemoryStore` gets its
//! persistent sessions and retained messages back.

use std::sync::Arc;

use dashmap::DashMap;

use super::{SessionRecord, Snapshot, Store, StoreError};
use crate::router::Message;

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
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions
            .insert(record.client_id.clone(), record.clone());
        Ok(())
    }

    fn delete_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id);
        Ok(())
    }

    fn put_retained(&self, message: &Arc<Message>) -> Result<(), StoreError> {
        self.retained.insert(message.topic.clone(), message.clone());
        Ok(())
    }

    fn delete_retained(&self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic);
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            sessions: self.sessions.iter().map(|e| e.value().clone()).collect(),
            retained: self.retained.iter().map(|e| e.value().clone()).collect(),
        })
    }
}
