//! The tasks behind consumer groups: one makes appends readable as the
//! journal makes them durable, one serves the groups' reads of partitions
//! from the log on the blocking pool.

use std::sync::{Arc, PoisonError};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::BrokerState;
use super::consume::{Source, StreamRead};
use crate::store::{StoreError, StreamEntry, partition_name};
use crate::stream::group::Effects;
use crate::stream::registry::Stream;

/// Messages read from the log at once for a group behind the memory tail.
const READ_BATCH: usize = 512;

/// Log reads served at once (each on the blocking pool).
const READS_AT_ONCE: usize = 4;

/// Makes appends readable by the groups as the journal makes them durable,
/// until `shutdown` turns true.
pub async fn serve_stream_durability(
    broker: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    if broker.streams.is_empty() {
        return;
    }
    let mut settled = broker.journal.watch_settled();
    // Appends may have settled before this task first ran.
    let mut through = settled.current();
    loop {
        let readable = broker.streams.settle(through);
        if !readable.is_empty() {
            broker.appended(&readable, crate::timer::now_ms());
        }
        through = tokio::select! {
            through = settled.next() => match through {
                Some(through) => through,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
    }
}

/// Serves the groups' log reads, `READS_AT_ONCE` at a time, until
/// `shutdown` turns true. A group has at most one read per partition on
/// its way, and a reset makes the answers to earlier ones stale.
pub async fn serve_stream_reads(broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let receiver = broker
        .consumers
        .receiver
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(mut receiver) = receiver else {
        return;
    };
    let slots = Arc::new(Semaphore::new(READS_AT_ONCE));
    let mut reading = JoinSet::new();
    loop {
        let read = tokio::select! {
            read = receiver.recv() => match read {
                Some(read) => read,
                None => return,
            },
            Some(_) = reading.join_next() => continue,
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let broker = broker.clone();
        reading.spawn(async move {
            serve_read(&broker, read).await;
            drop(slot);
        });
    }
}

async fn serve_read(broker: &BrokerState, read: StreamRead) {
    match read {
        StreamRead::Fetch {
            group,
            partition,
            from,
            epoch,
        } => {
            let Some(cell) = broker.consumers.get(group) else {
                return;
            };
            let stream = broker.streams.get(cell.stream);
            let name = partition_name(&stream.name, partition);
            let entries = match read_partition(broker, &name, from, READ_BATCH).await {
                Ok(entries) => entries
                    .into_iter()
                    .map(|entry| StreamEntry {
                        message: stream.placed(partition, entry.offset, &entry.message),
                        ..entry
                    })
                    .collect(),
                Err(error) => {
                    tracing::error!(partition = %name, %error, "cannot read a stream partition from the store");
                    Vec::new()
                }
            };
            let now = crate::timer::now_ms();
            let mut state = cell.lock();
            let mut effects = Effects::default();
            state.group.fetched(
                partition,
                epoch,
                entries,
                now,
                &Source(stream),
                &mut effects,
            );
            broker.carry_out(&cell, &mut state, effects);
        }
        StreamRead::Seek { group, time_ms } => {
            let Some(cell) = broker.consumers.get(group) else {
                return;
            };
            let stream = broker.streams.get(cell.stream);
            let mut offsets = Vec::with_capacity(stream.partition_count() as usize);
            for partition in 0..stream.partition_count() {
                offsets.push(seek(broker, stream, partition, time_ms).await);
            }
            let now = crate::timer::now_ms();
            let mut state = cell.lock();
            let mut effects = Effects::default();
            state
                .group
                .reset(&offsets, now, &Source(stream), &mut effects);
            broker.carry_out(&cell, &mut state, effects);
        }
    }
}

/// The first offset of `partition` appended at or after `time_ms`: the
/// retention blocks narrow it to one block, whose messages are looked at.
async fn seek(broker: &BrokerState, stream: &Stream, partition: u32, time_ms: u64) -> u64 {
    let candidate = stream.offset_at(partition, time_ms);
    let bounds = stream.bounds(partition);
    if candidate >= bounds.end {
        return bounds.end;
    }
    let block = crate::store::STREAM_BLOCK as usize;
    let entries = if candidate >= bounds.memory_start {
        stream.read_memory(partition, candidate, block)
    } else {
        let name = partition_name(&stream.name, partition);
        read_partition(broker, &name, candidate, block)
            .await
            .unwrap_or_default()
    };
    entries
        .iter()
        .find(|entry| entry.appended_at >= time_ms)
        .map_or(candidate, |entry| entry.offset)
}

/// Reads a partition from the store on the blocking pool. Offsets
/// appended a moment ago may not be in the state database yet: when none
/// is found, it waits for the journal and the checkpoint to catch up and
/// looks again.
async fn read_partition(
    broker: &BrokerState,
    partition: &str,
    from: u64,
    max: usize,
) -> Result<Vec<StreamEntry>, StoreError> {
    let Some(store) = broker.journal.store() else {
        return Ok(Vec::new());
    };
    let read = |settle_first: bool| {
        let (store, partition) = (store.clone(), partition.to_string());
        tokio::task::spawn_blocking(move || {
            if settle_first {
                store.settle()?;
            }
            store.read_partition(&partition, from, max)
        })
    };
    let join = |joined: Result<_, tokio::task::JoinError>| {
        joined.map_err(|error| StoreError::Backend(error.to_string()))?
    };
    let found = join(read(false).await)?;
    if !found.is_empty() {
        return Ok(found);
    }
    broker.journal.drained().await;
    join(read(true).await)
}
