//! `/v1/retained`: retained messages by topic prefix, and deleting one.
//! Topics go in the query, never the path: they hold `/` and may hold
//! anything else a query value can carry.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::clients::bad_query;
use super::status::Console;
use crate::broker::inspect::{DEFAULT_LIMIT, RetainedView};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RetainedQuery {
    /// Topics starting with this (all when absent).
    prefix: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TopicQuery {
    topic: Option<String>,
}

/// The answer of `GET /v1/retained`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetainedList {
    pub total: usize,
    pub retained: Vec<RetainedView>,
}

/// The answer of `DELETE /v1/retained?topic=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetainedDeleted {
    pub topic: String,
    pub deleted: bool,
}

/// `GET /v1/retained[?prefix=&limit=]`, by topic.
pub(super) async fn list(
    State(console): State<Arc<Console>>,
    query: Result<Query<RetainedQuery>, QueryRejection>,
) -> Result<Json<RetainedList>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let page = console.broker.retained_messages(
        query.prefix.as_deref().unwrap_or(""),
        query.limit.unwrap_or(DEFAULT_LIMIT),
        crate::timer::now_ms(),
    );
    Ok(Json(RetainedList {
        total: page.total,
        retained: page.rows,
    }))
}

/// `DELETE /v1/retained?topic=T`: as a retained publish with an empty
/// payload would, without delivering anything.
pub(super) async fn delete(
    State(console): State<Arc<Console>>,
    query: Result<Query<TopicQuery>, QueryRejection>,
) -> Result<Json<RetainedDeleted>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let topic = query
        .topic
        .ok_or_else(|| ApiError::BadRequest("`topic` is required".into()))?;
    if !console.broker.delete_retained(&topic) {
        return Err(ApiError::NoRetained(topic));
    }
    console.actions.retained_deleted();
    Ok(Json(RetainedDeleted {
        topic,
        deleted: true,
    }))
}
