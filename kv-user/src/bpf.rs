//! Loading, attaching and reading the eBPF side. The object is built by build.rs and embedded here.
//!
//! Dropping [`KernelPath`] detaches the program (aya owns the link) — the server keeps it alive for its
//! whole life and drops it on shutdown, including SIGINT/SIGTERM; a killed process loses its link fd and
//! the kernel detaches the program then.

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use kv_common::{CacheEntry, CacheKey, Counter, CACHE_ENTRY_BUF};

use crate::config::XdpMode as ModeArg;

/// The eBPF object file, as built for bpfel-unknown-none.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kv-ebpf"));

/// Name of the XDP entry point in kv-ebpf.
pub const XDP_PROGRAM: &str = "kv_xdp";

/// What the program is specialised for at load time.
#[derive(Debug, Clone, Copy)]
pub struct KernelOpts {
    /// UDP port whose requests the program answers.
    pub port: u16,
    /// Capacity of the kernel cache (LRU hash map entries).
    pub cache_entries: u32,
}

impl Default for KernelOpts {
    fn default() -> Self {
        Self { port: kv_common::DEFAULT_PORT, cache_entries: 16384 }
    }
}

/// A loaded (and possibly attached) XDP program with its maps.
pub struct KernelPath {
    ebpf: Ebpf,
    pub iface: Option<String>,
}

impl KernelPath {
    /// Loads the program into the kernel without attaching it (enough for BPF_PROG_TEST_RUN).
    pub fn load(opts: KernelOpts) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global("KV_PORT", &opts.port, true)
            .map_max_entries("CACHE", opts.cache_entries)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel")?;
        program(&mut ebpf)?.load().context("verifying the XDP program")?;
        Ok(Self { ebpf, iface: None })
    }

    /// Loads and attaches to `iface`.
    pub fn attach(iface: &str, mode: ModeArg, opts: KernelOpts) -> Result<Self> {
        let mut path = Self::load(opts)?;
        let flags = match mode {
            ModeArg::Native => XdpMode::Driver,
            ModeArg::Generic => XdpMode::Skb,
        };
        program(&mut path.ebpf)?
            .attach(iface, flags)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))?;
        path.iface = Some(iface.to_string());
        Ok(path)
    }

    /// The XDP program, for test runs.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// Sum over CPUs of one counter.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        let map = self.ebpf.map("COUNTERS").context("COUNTERS map missing")?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(arr.get(&(c as u32), 0)?.iter().sum())
    }

    /// The kernel cache map.
    pub fn cache(&mut self) -> Result<BpfHashMap<&mut MapData, CacheKey, CacheEntry>> {
        let map = self.ebpf.map_mut("CACHE").context("CACHE map missing")?;
        Ok(BpfHashMap::try_from(map)?)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf.program_mut(XDP_PROGRAM).context("XDP program missing from the object")?;
    Ok(prog.try_into()?)
}

/// Builds the kernel cache entry for an item: the exact bytes user space would send for it
/// (`VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`). None if it does not fit an entry.
pub fn cache_entry(key: &[u8], flags: u32, cas: u64, value: &[u8], expire_ns: u64) -> Option<CacheEntry> {
    let mut v = Vec::with_capacity(48 + key.len() + value.len());
    v.extend_from_slice(b"VALUE ");
    v.extend_from_slice(key);
    v.push(b' ');
    v.extend_from_slice(itoa::Buffer::new().format(flags).as_bytes());
    v.push(b' ');
    v.extend_from_slice(itoa::Buffer::new().format(value.len()).as_bytes());
    let hdr_len = v.len();
    v.push(b' ');
    v.extend_from_slice(itoa::Buffer::new().format(cas).as_bytes());
    let cas_len = v.len() - hdr_len;
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(value);
    v.extend_from_slice(b"\r\n");
    if v.len() > CACHE_ENTRY_BUF {
        return None;
    }
    let mut buf = [0u8; CACHE_ENTRY_BUF];
    buf[..v.len()].copy_from_slice(&v);
    Some(CacheEntry {
        expire_ns,
        hdr_len: hdr_len as u16,
        cas_len: cas_len as u16,
        total_len: v.len() as u16,
        _pad: 0,
        buf,
    })
}

/// Whether tests that need BPF must fail rather than skip (`KV_REQUIRE_BPF=1`, set by CI).
pub fn bpf_required() -> bool {
    std::env::var("KV_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests;
