//! The admin HTTP API (DESIGN §9): JSON under `/v1/...` on a listener of its
//! own (`[admin] bind`), read by the `petrel` commands that inspect a running
//! broker and by operators' scripts.
//!
//! Every answer is JSON, errors included (`{"error": "..."}`), so a caller
//! never has to tell an HTML error page from data. With `[admin] token` set,
//! every request, for a known path or not, must carry it as a bearer token;
//! only the status page at `/` (HTML holding no data) is served without.

pub mod bridges;
pub mod client;
pub mod clients;
pub mod dlq;
mod metrics;
pub mod render;
pub mod retained;
pub mod sessions;
pub mod status;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::BrokerState;

/// Why a request got no data: one variant per answer other than 200, mapped
/// to its status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("no stream named `{0}`")]
    NoStream(String),
    #[error("no client `{0}`")]
    NoClient(String),
    #[error("client `{0}` is not connected")]
    NotConnected(String),
    #[error("no session `{0}`")]
    NoSession(String),
    #[error("no retained message on `{0}`")]
    NoRetained(String),
    #[error("no bridge named `{0}`")]
    NoBridge(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no such endpoint: {0}")]
    NoEndpoint(Uri),
    #[error("{method} is not allowed on {uri}")]
    MethodNotAllowed { method: Method, uri: Uri },
    #[error("the store could not be read: {0}")]
    Store(String),
    #[error("the {0} could not be encoded")]
    Encode(&'static str),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NoStream(_)
            | ApiError::NoClient(_)
            | ApiError::NoSession(_)
            | ApiError::NoRetained(_)
            | ApiError::NoBridge(_)
            | ApiError::NoEndpoint(_) => StatusCode::NOT_FOUND,
            ApiError::NotConnected(_) => StatusCode::CONFLICT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(_) | ApiError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error answer.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(ErrorBody {
            error: self.to_string(),
        });
        match self {
            // RFC 6750: a 401 names the scheme the caller should use.
            ApiError::Unauthorized => {
                (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
            }
            _ => (status, body).into_response(),
        }
    }
}

/// The API's routes over the broker's state, behind the token when one is
/// configured, and the status page.
pub fn router(state: Arc<BrokerState>, token: Option<&str>) -> Router {
    let exposition = Arc::new(metrics::Exposition::new(state.clone()));
    let scrape = Router::new()
        .route("/metrics", get(metrics::scrape))
        .with_state(exposition);
    let console = Arc::new(status::Console::new(state.clone()));
    let inspection = Router::new()
        .route("/v1/overview", get(status::overview))
        .route("/v1/clients", get(clients::list))
        .route("/v1/clients/{id}", get(clients::one))
        .route("/v1/clients/{id}/disconnect", post(clients::disconnect))
        .route("/v1/sessions", get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::one).delete(sessions::delete),
        )
        .route("/v1/subscriptions", get(sessions::subscriptions))
        .route("/v1/retained", get(retained::list).delete(retained::delete))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(console);
    let api = Router::new()
        .route("/v1/streams", get(streams::list))
        .route("/v1/streams/{name}", get(streams::one))
        .route("/v1/bridges", get(bridges::list))
        .route("/v1/bridges/{name}", get(bridges::one))
        .route("/v1/dlq", get(dlq::list))
        .route("/v1/dlq/{group}/{stream}", get(dlq::show))
        .route("/v1/dlq/{group}/{stream}/redrive", post(dlq::redrive))
        .fallback(no_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(scrape)
        .merge(inspection);
    let api = match token {
        Some(token) => api.layer(middleware::from_fn_with_state(
            Arc::<str>::from(token),
            require_token,
        )),
        None => api,
    };
    // The status page lies outside the token's layer (see `status::page`).
    Router::new()
        .route("/", get(status::page))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(api)
}

/// Serves the API on `listener` until `shutdown` turns true, then gives
/// requests in progress up to `grace` before the listener's task ends
/// regardless, so a client that never finishes its request cannot hold up
/// the broker's shutdown.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let stopping = stopped(shutdown.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(stopping);
    let cut = async {
        stopped(shutdown).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => {
            if let Err(error) = served {
                tracing::error!(%error, "admin API stopped");
            }
        }
        () = cut => tracing::warn!("admin API requests still open after the shutdown grace were cut"),
    }
}

/// Resolves once the broker is shutting down (or its handle is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    match presented {
        Some(presented) if same_secret(presented.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// Compares every byte whatever the first difference, so the time an answer
/// takes does not tell a caller how much of a guessed token was right.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

async fn no_endpoint(uri: Uri) -> ApiError {
    ApiError::NoEndpoint(uri)
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method, uri }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn tokens_match_only_when_equal_in_full() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
