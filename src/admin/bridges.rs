//! `/v1/bridges`: every configured bridge (`[[bridges]]`) with its
//! connection, the address it uses, its last error, what waits for the
//! remote and what crossed, as `petrel ctl bridges` shows them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::ApiError;
use crate::bridge::BridgeReport;
use crate::broker::BrokerState;

/// The answer of `GET /v1/bridges`.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeList {
    pub bridges: Vec<BridgeReport>,
}

/// `GET /v1/bridges`: every bridge, in configuration order.
pub(super) async fn list(State(state): State<Arc<BrokerState>>) -> Json<BridgeList> {
    Json(BridgeList {
        bridges: state.bridge_reports(),
    })
}

/// `GET /v1/bridges/{name}`: one bridge.
pub(super) async fn one(
    State(state): State<Arc<BrokerState>>,
    Path(name): Path<String>,
) -> Result<Json<BridgeReport>, ApiError> {
    state
        .bridge_reports()
        .into_iter()
        .find(|report| report.name == name)
        .map(Json)
        .ok_or(ApiError::NoBridge(name))
}
