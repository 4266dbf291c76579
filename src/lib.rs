//! petrel: an MQTT 3.1.1 and 5.0 broker.
//!
//! The layers, from the wire inwards: `transport` owns sockets and one task per
//! connection; `protocol` turns bytes into one internal packet model (and back)
//! and enforces the specs' packet rules; `session` holds the per-client state
//! machines without any I/O; `router` matches topics to subscriptions and keeps
//! retained messages; `store` is the seam to durable storage; `broker` ties
//! them together. The load generator behind `petrel bench` is the
//! `petrel-bench` crate in `benches/loadgen`.

pub mod broker;
pub mod config;
pub mod protocol;
pub mod router;
pub mod session;
pub mod store;
pub mod topic;
pub mod transport;

pub use broker::{Broker, BrokerError};
pub use config::Settings;
