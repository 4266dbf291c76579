//! Sockets: the accept loop of each listener (TCP, TLS, WebSocket, secure
//! WebSocket) and one task per connection, generic over the stream.

mod arrival;
mod connection;
mod socket;
pub mod tls;
mod websocket;

pub use arrival::ArrivalOrder;
pub use socket::{Framed, Socket};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::BrokerState;
use crate::config::{Listener, Transport};
use crate::timer::now_ms;
use connection::Peer;
use tls::TlsAcceptorCell;
use websocket::WsBytes;

/// What one listener speaks, as its accept loop needs it.
pub struct Endpoint {
    pub transport: Transport,
    /// The certificates of a `tls` or `wss` listener; reloadable.
    pub tls: Option<Arc<TlsAcceptorCell>>,
    pub use_identity_as_username: bool,
    /// The WebSocket path.
    pub path: String,
    pub max_connection_rate: u32,
}

impl Endpoint {
    pub fn new(listener: &Listener, tls: Option<Arc<TlsAcceptorCell>>) -> Endpoint {
        Endpoint {
            transport: listener.transport,
            tls,
            use_identity_as_username: listener.use_identity_as_username,
            path: listener.path.clone(),
            max_connection_rate: listener.max_connection_rate,
        }
    }
}

/// New connections per one-second window, for `max_connection_rate`.
#[derive(Debug, Default)]
struct AcceptRate {
    window_start_ms: u64,
    accepted: u32,
}

impl AcceptRate {
    /// Whether one more connection fits in the current second.
    fn admit(&mut self, max_per_second: u32, now_ms: u64) -> bool {
        if max_per_second == 0 {
            return true;
        }
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.accepted = 0;
        }
        if self.accepted < max_per_second {
            self.accepted += 1;
            true
        } else {
            false
        }
    }
}

/// Accepts connections until shutdown, then waits for them to close, for at
/// most `grace` before they are cut.
pub async fn accept_loop(
    listener: TcpListener,
    endpoint: Endpoint,
    broker: Arc<BrokerState>,
    order: Arc<ArrivalOrder>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let endpoint = Arc::new(endpoint);
    let mut connections = JoinSet::new();
    let max_connections = broker.settings().limits.max_connections as u64;
    let mut rate = AcceptRate::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !rate.admit(endpoint.max_connection_rate, now_ms()) {
                        broker.metrics().connection_refused();
                        tracing::warn!(%peer, max_connection_rate = endpoint.max_connection_rate, "listener connection rate exceeded: socket closed");
                        continue;
                    }
                    // Counted here, before the task exists, so a burst of
                    // connections cannot overshoot the limit.
                    if !broker.metrics().try_open_connection(max_connections) {
                        tracing::warn!(%peer, max_connections, "connection limit reached: socket closed");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    if endpoint.transport == Transport::Tcp {
                        // Spawned as it is: a plain connection's task stays
                        // the small one idle connections are measured by.
                        let peer = Peer { addr: peer, identity: None };
                        connections.spawn(connection::serve(
                            stream,
                            peer,
                            broker.clone(),
                            order.clone(),
                            shutdown.clone(),
                        ));
                    } else {
                        connections.spawn(serve_handshaken(
                            stream,
                            peer,
                            endpoint.clone(),
                            broker.clone(),
                            order.clone(),
                            shutdown.clone(),
                        ));
                    }
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning on the same error.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still open after the shutdown grace period: cut"
        );
        connections.shutdown().await;
    }
}

/// Runs the transport's handshakes (TLS, WebSocket upgrade) within the
/// connect timeout, then serves the connection. A failed handshake closes
/// only this connection, with a log line.
async fn serve_handshaken(
    stream: TcpStream,
    addr: SocketAddr,
    endpoint: Arc<Endpoint>,
    broker: Arc<BrokerState>,
    order: Arc<ArrivalOrder>,
    shutdown: watch::Receiver<bool>,
) {
    let plain = Peer {
        addr,
        identity: None,
    };
    let limits = &broker.settings().limits;
    let handshake_time = Duration::from_secs(limits.connect_timeout_secs);
    // A WebSocket message carries at least one MQTT packet's bytes.
    let max_message = limits.max_packet_size as usize + 8;
    let handshake = async {
        match (&endpoint.tls, endpoint.transport) {
            (None, Transport::Ws) => {
                let socket = websocket::upgrade(stream, &endpoint.path, max_message)
                    .await
                    .map_err(|error| format!("WebSocket upgrade failed: {error}"))?;
                Ok(Accepted::WebSocket(
                    Framed::new(WsBytes::new(socket)),
                    plain,
                ))
            }
            (Some(tls), transport) => {
                let secured = tls
                    .acceptor()
                    .accept(stream)
                    .await
                    .map_err(|error| format!("TLS handshake failed: {error}"))?;
                let identity = match endpoint.use_identity_as_username {
                    false => None,
                    true => {
                        let identity = tls::peer_identity(secured.get_ref().1).ok_or(
                            "the client certificate has no common name to use as the username",
                        )?;
                        Some(Arc::from(identity))
                    }
                };
                let peer = Peer { addr, identity };
                if transport == Transport::Wss {
                    let socket = websocket::upgrade(secured, &endpoint.path, max_message)
                        .await
                        .map_err(|error| format!("WebSocket upgrade failed: {error}"))?;
                    Ok(Accepted::SecureWs(Framed::new(WsBytes::new(socket)), peer))
                } else {
                    Ok(Accepted::Tls(Framed::new(secured), peer))
                }
            }
            (None, _) => Err("a tls or wss listener without certificates".to_string()),
        }
    };
    // Boxed: the handshake's state is large and needed only until it
    // ends; the task that goes on serving stays small.
    match Box::pin(tokio::time::timeout(handshake_time, handshake)).await {
        Ok(Ok(Accepted::WebSocket(socket, peer))) => {
            connection::serve(socket, peer, broker, order, shutdown).await
        }
        Ok(Ok(Accepted::Tls(socket, peer))) => {
            connection::serve(socket, peer, broker, order, shutdown).await
        }
        Ok(Ok(Accepted::SecureWs(socket, peer))) => {
            connection::serve(socket, peer, broker, order, shutdown).await
        }
        Ok(Err(error)) => {
            tracing::info!(peer = %addr, transport = ?endpoint.transport, %error, "connection closed");
            broker.metrics().connection_closed();
        }
        Err(_) => {
            tracing::info!(peer = %addr, transport = ?endpoint.transport, "handshake not finished within the connect timeout: connection closed");
            broker.metrics().connection_closed();
        }
    }
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A connection whose handshakes are done, by what it is served over.
enum Accepted {
    WebSocket(Box<Framed<WsBytes<TcpStream>>>, Peer),
    Tls(Box<Framed<TlsStream>>, Peer),
    SecureWs(Box<Framed<WsBytes<TlsStream>>>, Peer),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_admits_its_connection_rate_per_second() {
        let mut rate = AcceptRate::default();
        let admitted = (0..5).filter(|_| rate.admit(3, 10_000)).count();
        assert_eq!(admitted, 3);
        assert!(!rate.admit(3, 10_999));
        assert!(rate.admit(3, 11_000), "a new second");
        assert!(
            (0..100).all(|_| AcceptRate::default().admit(0, 0)),
            "0: no limit"
        );
    }
}
