//! Streams: MQTT topic filters feeding partitioned, append-only logs that
//! consumer groups read over MQTT with committed offsets (DESIGN §5).

pub mod assign;
pub mod group;
pub mod key;
pub mod registry;
pub mod spec;
pub mod subscription;

pub use assign::assign;
pub use key::{KeySpec, partition_of};
pub use registry::Streams;
pub use spec::{Ordering, StreamConfig, StreamSpec};
