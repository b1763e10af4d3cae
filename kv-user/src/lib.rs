//! The key-value cache server: protocol parsing, storage, persistence, network front ends and the kernel path,
//! as separate layers with narrow interfaces (see docs/architecture.md).

pub mod bpf;
pub mod config;
pub mod persist;
pub mod record;
