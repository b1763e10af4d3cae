//! The kernel path: the XDP program that answers UDP GET hits from the kernel cache (with its TC ingress
//! half for replies the XDP frame has no room for), and everything user space does for it. Each concern has one file:
//!
//! | concern | file |
//! |---|---|
//! | load, attach, detach the programs; their load-time settings | `loader.rs` |
//! | share an interface's XDP hook between instances (the dispatcher) | `shared.rs` |
//! | typed `bpf(2)` map-element commands | `sys.rs` |
//! | where a key's reply lives, seqlock writes, the cuckoo step | `slots.rs` |
//! | a cache entry: the reply bytes and the expiry deadline | `entry.rs` |
//! | which items are cached (admission) | `admission.rs` |
//! | keeping the cache coherent with the store (the store's observer) | `coherence.rs` |
//! | the program's counters and the kernel `stats` lines | `counters.rs` |
//! | bench-only: the bare reflector, run-time statistics | `bench.rs` |
//!
//! Dropping [`Kernel`] (or a [`KernelPath`]) detaches the program (aya owns the link): the server keeps
//! it for its whole life and drops it on shutdown, including SIGINT/SIGTERM; a killed process loses its
//! link fd and the kernel detaches the program then.

mod admission;
#[cfg(feature = "bench")]
pub mod bench;
mod coherence;
mod counters;
mod entry;
mod loader;
mod shared;
mod slots;
mod sys;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use anyhow::Result;

pub use admission::Admission;
pub use coherence::{KernelSync, SyncStats};
pub use counters::{KernelCounters, KernelStats};
pub use entry::cache_entry;
pub use loader::{slots_for, KernelOpts, KernelPath, XdpMode, EBPF_OBJECT, XDP_PROGRAM};
pub use shared::served_by;
pub use slots::KernelCache;

/// What the server runs the kernel path with.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// Interface the program is attached to, and how.
    pub iface: String,
    pub mode: XdpMode,
    /// What the program is specialised for at load time.
    pub load: KernelOpts,
    /// Source prefixes whose UDP requests are answered.
    pub allow: Vec<(std::net::IpAddr, u32)>,
    /// Largest value the kernel serves.
    pub value_max: usize,
    /// User-space hits before an item is admitted.
    pub admit_hits: u32,
}

/// The kernel path as the server runs it: the attached program, the store observer that keeps its cache
/// coherent, and its `stats` lines.
pub struct Kernel {
    pub path: KernelPath,
    pub sync: Arc<KernelSync>,
    pub stats: Arc<KernelStats>,
}

impl Kernel {
    /// Loads and attaches the program and prepares its (empty) cache.
    pub fn start(o: &KernelOptions) -> Result<Kernel> {
        let mut path = KernelPath::attach(&o.iface, o.mode, o.load)?;
        for &(addr, prefix) in &o.allow {
            path.allow(addr, prefix)?;
        }
        let sync = Arc::new(KernelSync::new(path.cache_handle()?, o.value_max, o.admit_hits));
        let stats = Arc::new(KernelStats { counters: path.counters_handle()?, sync: sync.clone() });
        Ok(Kernel { path, sync, stats })
    }
}

/// Whether tests that need BPF must fail rather than skip (`KV_REQUIRE_BPF=1`, set by CI).
pub fn bpf_required() -> bool {
    std::env::var("KV_REQUIRE_BPF").is_ok_and(|v| v == "1")
}
