//! Bench-only kernel pieces (`cargo xtask bench`, the `bench` feature): the bare XDP_TX reflector the
//! XDP path is compared with, and the kernel's per-program run-time statistics. The server never loads
//! or switches on any of this.

use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};

use super::loader::XdpMode;

/// The benchmark reflector's own eBPF object (kv-ebpf's `kv-reflect` binary), as built for
/// bpfel-unknown-none: it holds only `kv_reflect`, no maps of the cache.
pub static REFLECT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kv-reflect"));

/// Name of the benchmark reflector program in [`REFLECT_OBJECT`] (see `cargo xtask bench`).
pub const REFLECT_PROGRAM: &str = "kv_reflect";

/// The benchmark's bare XDP_TX reflector, attached to an interface until dropped. It sends every UDP
/// datagram to its port straight back (addresses and ports swapped): the ceiling of any reply from XDP
/// on that path. With port 0 it passes everything: the pass-through program a veth peer needs for
/// native XDP_TX replies to arrive.
pub struct Reflector {
    ebpf: Ebpf,
    pub iface: String,
}

/// Loads `kv_reflect` for UDP port `port` and attaches it to `iface` (in the calling thread's network
/// namespace).
pub fn attach_reflector(iface: &str, mode: XdpMode, port: u16) -> Result<Reflector> {
    let mut ebpf = EbpfLoader::new()
        .override_global("KV_REFLECT_PORT", &port, true)
        .load(REFLECT_OBJECT)
        .context("loading the reflector's eBPF object into the kernel")?;
    let prog: &mut Xdp =
        ebpf.program_mut(REFLECT_PROGRAM).context("reflector program missing from the object")?.try_into()?;
    prog.load().context("verifying the reflector")?;
    prog.attach(iface, mode.into()).with_context(|| format!("attaching the reflector to {iface} in {mode:?} mode"))?;
    Ok(Reflector { ebpf, iface: iface.to_string() })
}

impl Reflector {
    /// The kernel's id of the attached program (to find its run statistics).
    pub fn prog_id(&self) -> Result<u32> {
        let prog: &Xdp = self.ebpf.program(REFLECT_PROGRAM).context("reflector program missing")?.try_into()?;
        Ok(prog.info()?.id())
    }
}

/// Cumulative run statistics of one loaded BPF program. The kernel only counts while statistics are
/// enabled ([`enable_run_stats`] or `sysctl kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Run statistics of every loaded program named `name` (BPF names are cut at 15 bytes).
pub fn program_stats(name: &str) -> Result<Vec<ProgStats>> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.name_as_str() == Some(name) {
            out.push(ProgStats {
                id: info.id(),
                run_time_ns: info.run_time().as_nanos() as u64,
                run_cnt: info.run_count(),
            });
        }
    }
    Ok(out)
}

/// Run statistics of the loaded program with id `id`, None if there is none.
pub fn program_stats_by_id(id: u32) -> Result<Option<ProgStats>> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.id() == id {
            let (run_time_ns, run_cnt) = (info.run_time().as_nanos() as u64, info.run_count());
            return Ok(Some(ProgStats { id, run_time_ns, run_cnt }));
        }
    }
    Ok(None)
}

/// Turns on the kernel's per-program run-time statistics (BPF_ENABLE_STATS, the same switch as
/// `kernel.bpf_stats_enabled`) for as long as the returned fd is open; they cost about 60 ns per run,
/// so measure throughput with them off.
pub fn enable_run_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")
}
