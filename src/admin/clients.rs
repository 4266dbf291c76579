//! `/v1/clients`: who is connected or has a session, one client in detail,
//! and disconnecting one (v5: DISCONNECT 0x98, Administrative action).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::status::Console;
use crate::broker::inspect::{ClientDetail, ClientView, DEFAULT_LIMIT, Kick, SessionFilter};

/// The query of a listing of clients or sessions.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Listing {
    /// `true`: connected ones only; `false`: disconnected ones only.
    online: Option<bool>,
    /// Client ids starting with this.
    prefix: Option<String>,
    /// Rows at most (1000 unless given).
    limit: Option<usize>,
}

impl Listing {
    pub(super) fn read(query: Result<Query<Listing>, QueryRejection>) -> Result<Listing, ApiError> {
        query.map(|Query(listing)| listing).map_err(bad_query)
    }

    pub(super) fn filter(&self) -> SessionFilter<'_> {
        SessionFilter {
            online: self.online,
            prefix: self.prefix.as_deref(),
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }
}

/// A query axum could not read, as the API's JSON error rather than
/// axum's plain-text one.
pub(super) fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

/// A client id from the path, percent-decoded (so `a%2Fb` is `a/b`).
pub(super) fn client_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
}

/// The answer of `GET /v1/clients`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientList {
    /// Clients matching the query, beyond the page too.
    pub total: usize,
    /// The first `limit` of them, by client id.
    pub clients: Vec<ClientView>,
}

/// The answer of `POST /v1/clients/{id}/disconnect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disconnected {
    pub client_id: String,
    pub disconnected: bool,
}

/// `GET /v1/clients[?online=&prefix=&limit=]`.
pub(super) async fn list(
    State(console): State<Arc<Console>>,
    query: Result<Query<Listing>, QueryRejection>,
) -> Result<Json<ClientList>, ApiError> {
    let listing = Listing::read(query)?;
    let page = console.broker.clients(&listing.filter(), listing.limit());
    Ok(Json(ClientList {
        total: page.total,
        clients: page.rows,
    }))
}

/// `GET /v1/clients/{id}`: one client with its subscriptions.
pub(super) async fn one(
    State(console): State<Arc<Console>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ClientDetail>, ApiError> {
    let id = client_id(path)?;
    console
        .broker
        .client(&id)
        .map(Json)
        .ok_or(ApiError::NoClient(id))
}

/// `POST /v1/clients/{id}/disconnect`: closes the client's connection; its
/// session stays (see `DELETE /v1/sessions/{id}` for that).
pub(super) async fn disconnect(
    State(console): State<Arc<Console>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Disconnected>, ApiError> {
    let id = client_id(path)?;
    match console.broker.disconnect_client(&id) {
        Kick::Disconnected => {
            console.actions.disconnected();
            Ok(Json(Disconnected {
                client_id: id,
                disconnected: true,
            }))
        }
        Kick::NotConnected => Err(ApiError::NotConnected(id)),
        Kick::NoSuchClient => Err(ApiError::NoClient(id)),
    }
}
