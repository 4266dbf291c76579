//! petrel: an MQTT 3.1.1 and 5.0 broker.
//!
//! The layers, from the wire inwards: `transport` owns sockets and one task per
//! connection; `protocol` turns bytes into one internal packet model (and back)
//! and enforces the specs' packet rules; `broker` is the I/O-free core (the
//! per-client protocol logic over the shared state) built on `session` (per-
//! client state machines), `router` (subscriptions and retained messages) and
//! `timer` (one timing wheel for every timer); `store` journals what must
//! survive and writes it from its own thread; `server` runs the tasks that
//! drive all of it; `admin` is the HTTP API for inspecting a running broker
//! (and its client for the `petrel` commands). The load generator behind
//! `petrel bench` is the `petrel-bench` crate in `benches/loadgen`.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod config;
pub mod delay;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod stream;
pub mod timer;
pub mod topic;
pub mod transport;

pub use config::Settings;
pub use server::{Broker, BrokerError};
