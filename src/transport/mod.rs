//! Sockets: the accept loop of each listener and one task per connection.

mod connection;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::broker::BrokerState;

/// Accepts connections until shutdown, then waits for them to close.
pub async fn accept_loop(listener: TcpListener, broker: Arc<BrokerState>) {
    let mut shutdown = broker.shutdown.clone();
    let mut connections = JoinSet::new();
    let max_connections = broker.settings.limits.max_connections as u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if broker.metrics.connections_current() >= max_connections {
                        broker.metrics.connection_refused();
                        tracing::warn!(%peer, max_connections, "connection limit reached: socket closed");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection::serve(stream, peer, broker.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning on the same error.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while connections.join_next().await.is_some() {}
}
