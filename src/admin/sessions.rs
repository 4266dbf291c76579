//! `/v1/sessions` and `/v1/subscriptions`: sessions (connected or not)
//! with their state, deleting one, and subscriptions by client.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::clients::{Listing, bad_query, client_id};
use super::status::Console;
use crate::broker::inspect::{DEFAULT_LIMIT, SessionDetail, SessionView, SubscriptionView};

/// The answer of `GET /v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    pub total: usize,
    pub sessions: Vec<SessionView>,
}

/// The answer of `DELETE /v1/sessions/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub client_id: String,
    pub deleted: bool,
}

/// The answer of `GET /v1/subscriptions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionList {
    pub total: usize,
    pub subscriptions: Vec<SubscriptionView>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SubscriptionQuery {
    /// One client's subscriptions only.
    client: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/sessions[?online=&prefix=&limit=]`.
pub(super) async fn list(
    State(console): State<Arc<Console>>,
    query: Result<Query<Listing>, QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let listing = Listing::read(query)?;
    let page = console.broker.sessions(&listing.filter(), listing.limit());
    Ok(Json(SessionList {
        total: page.total,
        sessions: page.rows,
    }))
}

/// `GET /v1/sessions/{id}`: subscriptions, inflight messages, the will.
pub(super) async fn one(
    State(console): State<Arc<Console>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionDetail>, ApiError> {
    let id = client_id(path)?;
    console
        .broker
        .session_detail(&id)
        .map(Json)
        .ok_or(ApiError::NoSession(id))
}

/// `DELETE /v1/sessions/{id}`: ends the session as its expiry would,
/// closing its connection first if it has one.
pub(super) async fn delete(
    State(console): State<Arc<Console>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let id = client_id(path)?;
    if !console.broker.delete_session(&id, crate::timer::now_ms()) {
        return Err(ApiError::NoSession(id));
    }
    console.actions.session_deleted();
    Ok(Json(Deleted {
        client_id: id,
        deleted: true,
    }))
}

/// `GET /v1/subscriptions[?client=&limit=]`: by client id, then filter.
pub(super) async fn subscriptions(
    State(console): State<Arc<Console>>,
    query: Result<Query<SubscriptionQuery>, QueryRejection>,
) -> Result<Json<SubscriptionList>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    if let Some(id) = &query.client
        && console.broker.session(id).is_none()
    {
        return Err(ApiError::NoClient(id.clone()));
    }
    let page = console.broker.subscriptions(
        query.client.as_deref(),
        query.limit.unwrap_or(DEFAULT_LIMIT),
    );
    Ok(Json(SubscriptionList {
        total: page.total,
        subscriptions: page.rows,
    }))
}
