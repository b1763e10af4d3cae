//! The key-value cache server: protocol parsing, storage, persistence, network front ends and the kernel path,
//! as separate layers with narrow interfaces (see docs/architecture.md).

pub mod bpf;
pub mod config;
pub mod exec;
pub mod record;
pub mod stats;
pub mod store;

// Until the protocol branch lands its `protocol/mod.rs`: exec only needs the parsed `Command` types.
pub mod protocol {
    pub mod command;
}
