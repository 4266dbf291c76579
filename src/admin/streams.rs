//! `/v1/streams`: every stream with its partitions and consumer groups
//! (DESIGN §5, "Inspection"), as `petrel streams` shows them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use super::ApiError;
use crate::broker::{BrokerState, StreamReport};

/// `GET /v1/streams`: every stream, in configuration order.
pub(super) async fn list(State(state): State<Arc<BrokerState>>) -> Json<Vec<StreamReport>> {
    Json(state.stream_reports())
}

/// `GET /v1/streams/{name}`: one stream.
pub(super) async fn one(
    State(state): State<Arc<BrokerState>>,
    Path(name): Path<String>,
) -> Result<Json<StreamReport>, ApiError> {
    state
        .stream_report(&name)
        .map(Json)
        .ok_or(ApiError::NoStream(name))
}
