//! Records kept in the process (the `memory` durability mode): nothing
//! survives the process, and messages are not journalled at all, but a broker
//! restarted in the same process on the same `MemoryStore` gets its
//! persistent sessions, their subscriptions and retained messages back.

use std::sync::Arc;

use dashmap::DashMap;

use super::{Record, SessionRecord, Snapshot, Store, StoreError};
use crate::protocol::Message;
use crate::session::SubscriptionEntry;

/// A session's own fields and its subscriptions, by filter.
type HeldSession = (SessionRecord, Vec<(Arc<str>, SubscriptionEntry)>);

#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<Arc<str>, HeldSession>,
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

    fn write(&self, record: Record) -> Result<(), StoreError> {
        match record {
            Record::PutSession(session) => {
                let client_id: Arc<str> = session.client_id.as_str().into();
                self.sessions.entry(client_id).or_default().0 = *session;
            }
            Record::DeleteSession(client_id) => {
                self.sessions.remove(&client_id);
            }
            Record::PutSubscription {
                client_id,
                filter,
                entry,
            } => {
                if let Some(mut session) = self.sessions.get_mut(&client_id) {
                    let subscriptions = &mut session.1;
                    subscriptions.retain(|(f, _)| *f != filter);
                    subscriptions.push((filter, entry));
                }
            }
            Record::DeleteSubscription { client_id, filter } => {
                if let Some(mut session) = self.sessions.get_mut(&client_id) {
                    session.1.retain(|(f, _)| *f != filter);
                }
            }
            Record::PutRetained(message) => {
                self.retained.insert(message.topic.clone(), message);
            }
            Record::DeleteRetained(topic) => {
                self.retained.remove(&topic);
            }
            Record::PutCopies { .. }
            | Record::MarkSent { .. }
            | Record::DeleteDelivery { .. }
            | Record::DeleteInboundQos2 { .. }
            | Record::CommitOffset { .. }
            | Record::TrimPartition { .. }
            | Record::DeleteGroup { .. }
            | Record::PutDelayed { .. }
            | Record::DeleteDelayed { .. }
            | Record::PutDeadLetter { .. }
            | Record::DeleteDeadLetter { .. } => {}
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn has_space(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        for entry in self.sessions.iter() {
            let (record, subscriptions) = entry.value();
            snapshot.sessions.push(record.clone());
            snapshot.subscriptions.insert(
                record.client_id.clone(),
                subscriptions
                    .iter()
                    .map(|(filter, entry)| (filter.to_string(), *entry))
                    .collect(),
            );
        }
        snapshot.retained = self.retained.iter().map(|e| e.value().clone()).collect();
        Ok(snapshot)
    }
}
