//! Sockets: the accept loop of each listener and one task per connection.

mod arrival;
mod connection;
pub mod tls;

pub use arrival::ArrivalOrder;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::BrokerState;

/// Accepts connections until shutdown, then waits for them to close, for at
/// most `grace` before they are cut.
pub async fn accept_loop(
    listener: TcpListener,
    broker: Arc<BrokerState>,
    order: Arc<ArrivalOrder>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut connections = JoinSet::new();
    let max_connections = broker.settings().limits.max_connections as u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Counted here, before the task exists, so a burst of
                    // connections cannot overshoot the limit.
                    if !broker.metrics().try_open_connection(max_connections) {
                        tracing::warn!(%peer, max_connections, "connection limit reached: socket closed");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection::serve(
                        stream,
                        peer,
                        broker.clone(),
                        order.clone(),
                        shutdown.clone(),
                    ));
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
