//! Reading spilled messages back as a session's queue drains.
//!
//! A persistent session holds only its first few hundred waiting messages
//! in memory; the rest stay in the commit log. When a connected session's
//! held queue runs low, the core asks for the next ones by key, and this
//! task reads them on a blocking thread (never a runtime worker, never under
//! the session lock) and hands them back to the session.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;

use super::BrokerState;
use crate::session::{Delivery, Session, SessionState};
use crate::store::{Store, StoreError};

/// One session's request: the keys of its spilled messages to read.
pub(super) struct Refill {
    session: Arc<Session>,
    seqs: Vec<u64>,
}

pub(super) struct Refills {
    sender: UnboundedSender<Refill>,
    /// Taken by the task that serves them.
    receiver: Mutex<Option<UnboundedReceiver<Refill>>>,
}

impl Refills {
    pub(super) fn new() -> Refills {
        let (sender, receiver) = unbounded_channel();
        Refills {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl BrokerState {
    /// Asks for a locked session's spilled messages once its held queue
    /// runs low.
    pub(super) fn refill_if_low(&self, session: &Arc<Session>, state: &mut SessionState) {
        if let Some(seqs) = state.outbound.wants_refill() {
            let refill = Refill {
                session: session.clone(),
                seqs,
            };
            if self.refills.sender.send(refill).is_err() {
                state.outbound.refill_failed();
            }
        }
    }
}

/// Serves refills, one at a time, until `shutdown` turns true.
pub async fn serve_refills(broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let receiver = broker
        .refills
        .receiver
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let (Some(mut receiver), Some(store)) = (receiver, broker.journal.store()) else {
        return;
    };
    loop {
        let Refill { session, seqs } = tokio::select! {
            refill = receiver.recv() => match refill {
                Some(refill) => refill,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let read = read_back(&store, &broker, session.client_id(), &seqs).await;
        let mut state = session.lock();
        match read {
            Ok(found) => {
                state.outbound.refill(&seqs, found);
                broker.journal_changes(session.client_id(), &mut state);
            }
            Err(error) => {
                tracing::error!(client_id = %session.client_id(), %error, "cannot read queued messages back from the store");
                state.outbound.refill_failed();
            }
        }
        Session::wake(&state);
    }
}

/// Reads the copies `seqs` of `client_id` back, on the blocking pool. A
/// copy spilled a moment ago may not be in the state database yet: only
/// then does it wait for the journal and the checkpoint to catch up, and
/// look again.
async fn read_back(
    store: &Arc<dyn Store>,
    broker: &BrokerState,
    client_id: &Arc<str>,
    seqs: &[u64],
) -> Result<Vec<Delivery>, StoreError> {
    let mut found = blocking(store, client_id, seqs.to_vec(), false).await?;
    if found.len() < seqs.len() {
        let have: HashSet<u64> = found.iter().filter_map(|d| d.seq).collect();
        let missing: Vec<u64> = seqs.iter().copied().filter(|s| !have.contains(s)).collect();
        broker.journal.drained().await;
        found.extend(blocking(store, client_id, missing, true).await?);
    }
    Ok(found)
}

async fn blocking(
    store: &Arc<dyn Store>,
    client_id: &Arc<str>,
    seqs: Vec<u64>,
    settle_first: bool,
) -> Result<Vec<Delivery>, StoreError> {
    let (store, client_id) = (store.clone(), client_id.clone());
    tokio::task::spawn_blocking(move || {
        if settle_first {
            store.settle()?;
        }
        store.read_copies(&client_id, &seqs)
    })
    .await
    .map_err(|error| StoreError::Backend(error.to_string()))?
}
