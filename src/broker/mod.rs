//! The running broker: listeners, shared state, and shutdown.

use std::net::SocketAddr;

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Broker {
    addrs: Vec<SocketAddr>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn messages_dropped(&self) -> u64 {
        0
    }
}

impl Broker {
    pub async fn start(_settings: Settings) -> Result<Broker, BrokerError> {
        Ok(Broker {
            addrs: vec![],
            metrics: Metrics::default(),
        })
    }
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub async fn shutdown(self) {}
}
