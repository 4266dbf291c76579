//! Bridges (DESIGN §8): the broker as an MQTT client of another broker,
//! forwarding what matches its topic rules each way.
//!
//! What goes out waits in the bridge's own persistent session on this
//! broker (`$bridge/{name}`), so it is kept in the commit log like any
//! persistent session's queue while the remote is away, and across
//! restarts. While the remote is connected, the bridge's task attaches to
//! that session as an in-process client and relays between it and the
//! remote: `spec` is the configuration and its topic rules, `wire` the
//! remote's bytes, `link` the relay without I/O, `task` the I/O, `status`
//! what the admin API, /metrics and `$SYS` show.

pub mod link;
pub mod spec;
pub mod status;
mod task;
pub mod wire;

pub use spec::{BridgeConfig, BridgeSpec, LOCAL_CLIENT_PREFIX};
pub use status::{BridgeReport, BridgeStatus, QueueFigures};
pub use task::{Bridge, BridgeError};
