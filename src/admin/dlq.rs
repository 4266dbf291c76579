//! `/v1/dlq`: consumer groups' dead letters (DESIGN §6): which groups have
//! some, what they are, and re-driving them into their stream.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::broker::BrokerState;
use crate::store::DeadLetterEntry;

/// A group's dead letters in one stream, counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterQueue {
    pub group: String,
    pub stream: String,
    pub count: usize,
}

/// One dead letter as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub attempts: u32,
    pub reason: String,
    /// When it was given up (unix ms).
    pub at: u64,
    pub topic: String,
    /// The payload as text (invalid UTF-8 replaced).
    pub payload: String,
}

/// Which dead letters a re-drive takes: all, or those of one key, one
/// partition, or an offset range (inclusive), together.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Selection {
    pub key: Option<String>,
    pub partition: Option<u32>,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// What a re-drive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: usize,
}

/// Every dead letter the store holds.
async fn stored(state: &BrokerState) -> Result<Vec<DeadLetterEntry>, ApiError> {
    let Some(store) = state.journal().store() else {
        return Ok(Vec::new());
    };
    tokio::task::spawn_blocking(move || store.dead_letters())
        .await
        .map_err(|error| ApiError::Store(error.to_string()))?
        .map_err(|error| ApiError::Store(error.to_string()))
}

fn key_of(entry: &DeadLetterEntry) -> String {
    entry
        .message
        .properties
        .user_properties
        .iter()
        .rev()
        .find(|(name, _)| name == "key")
        .map_or_else(String::new, |(_, value)| value.clone())
}

/// `GET /v1/dlq`: the groups with dead letters, by group and stream.
pub(super) async fn list(
    State(state): State<Arc<BrokerState>>,
) -> Result<Json<Vec<DeadLetterQueue>>, ApiError> {
    let mut queues: Vec<DeadLetterQueue> = Vec::new();
    for entry in stored(&state).await? {
        match queues
            .iter_mut()
            .find(|q| q.group == entry.group && q.stream == entry.stream)
        {
            Some(queue) => queue.count += 1,
            None => queues.push(DeadLetterQueue {
                group: entry.group,
                stream: entry.stream,
                count: 1,
            }),
        }
    }
    Ok(Json(queues))
}

/// `GET /v1/dlq/{group}/{stream}`: one group's dead letters of one stream.
pub(super) async fn show(
    State(state): State<Arc<BrokerState>>,
    Path((group, stream)): Path<(String, String)>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let letters = stored(&state)
        .await?
        .into_iter()
        .filter(|entry| entry.group == group && entry.stream == stream)
        .map(|entry| DeadLetter {
            key: key_of(&entry),
            partition: entry.partition,
            offset: entry.offset,
            attempts: entry.attempts,
            reason: entry.reason,
            at: entry.at,
            topic: entry.message.topic.to_string(),
            payload: String::from_utf8_lossy(&entry.message.payload).into_owned(),
        })
        .collect();
    Ok(Json(letters))
}

/// `POST /v1/dlq/{group}/{stream}/redrive[?key=&partition=&from=&to=]`:
/// appends the selected dead letters to the stream again and drops them
/// from the queue.
pub(super) async fn redrive(
    State(state): State<Arc<BrokerState>>,
    Path((group, stream)): Path<(String, String)>,
    Query(selection): Query<Selection>,
) -> Result<Json<Redriven>, ApiError> {
    if state.streams().find(&stream).is_none() {
        return Err(ApiError::NoStream(stream));
    }
    let chosen: Vec<DeadLetterEntry> = stored(&state)
        .await?
        .into_iter()
        .filter(|entry| entry.group == group && entry.stream == stream)
        .filter(|entry| {
            selection
                .key
                .as_ref()
                .is_none_or(|key| *key == key_of(entry))
        })
        .filter(|entry| selection.partition.is_none_or(|p| p == entry.partition))
        .filter(|entry| selection.from.is_none_or(|from| entry.offset >= from))
        .filter(|entry| selection.to.is_none_or(|to| entry.offset <= to))
        .collect();
    let redriven = state.redrive(&chosen, crate::timer::now_ms());
    Ok(Json(Redriven { redriven }))
}
