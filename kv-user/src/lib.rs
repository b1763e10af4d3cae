//! The key-value cache server: protocol parsing, storage, persistence, network front ends and the kernel path,
//! as separate layers with narrow interfaces (see docs/architecture.md).

pub mod cidr;
pub mod clock;
pub mod config;
pub mod conns;
pub mod exec;
pub mod kernel;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod record;
pub mod server;
pub mod stats;
pub mod store;
