//! The client side of the admin API, for the `petrel` commands that talk to
//! a running broker: one request on one short-lived connection.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one request may take, connecting included, before the command
/// gives up: the API answers from memory, so a broker that takes longer is
/// not going to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the admin API at {addr}: {source} (is petrel serving with an [admin] section there?)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the admin API at {addr} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { addr: String },
    #[error("cannot send the request: {0} (address and token must be printable ASCII)")]
    Request(hyper::http::Error),
    #[error("the admin API at {addr} broke off the exchange: {source}")]
    Exchange { addr: String, source: hyper::Error },
    #[error("the admin API at {addr} answered {status}: {message}")]
    Refused {
        addr: String,
        status: StatusCode,
        message: String,
    },
}

/// GETs `path` from the admin API at `addr` (`HOST:PORT`), with `token` as
/// the bearer token when given, and returns the body of a 2xx answer. Any
/// other status is an error carrying the API's own message.
pub async fn get(addr: &str, token: Option<&str>, path: &str) -> Result<Bytes, ClientError> {
    send(Method::GET, addr, token, path).await
}

/// `get`, as a POST with an empty body (an action such as a re-drive).
pub async fn post(addr: &str, token: Option<&str>, path: &str) -> Result<Bytes, ClientError> {
    send(Method::POST, addr, token, path).await
}

/// `get`, as a DELETE (removing a session or a retained message).
pub async fn delete(addr: &str, token: Option<&str>, path: &str) -> Result<Bytes, ClientError> {
    send(Method::DELETE, addr, token, path).await
}

async fn send(
    method: Method,
    addr: &str,
    token: Option<&str>,
    path: &str,
) -> Result<Bytes, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(method, addr, token, path))
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_string(),
        })?
}

async fn exchange(
    method: Method,
    addr: &str,
    token: Option<&str>,
    path: &str,
) -> Result<Bytes, ClientError> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(ClientError::Request)?;
    let broke_off = |source| ClientError::Exchange {
        addr: addr.to_string(),
        source,
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broke_off)?;
    // The connection is driven by its own task until the answer is read
    // and `sender` dropped; its errors surface through `send_request`.
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(broke_off)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(broke_off)?
        .to_bytes();
    if status.is_success() {
        return Ok(body);
    }
    Err(ClientError::Refused {
        addr: addr.to_string(),
        status,
        message: error_message(&body),
    })
}

/// The `error` of the API's JSON error body, or the body as text when it is
/// not one (something else answered on that port).
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}
