//! Loading, attaching and reading the eBPF side. The object is built by build.rs and embedded here.
//!
//! Dropping [`KernelPath`] detaches the program (aya owns the link) — the server keeps it alive for its
//! whole life and drops it on shutdown, including SIGINT/SIGTERM; a killed process loses its link fd and
//! the kernel detaches the program then.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key as LpmKey, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use kv_common::{CacheEntry, CacheKey, Counter, CACHE_ENTRY_BUF, CONFIG_FLUSH_GEN};

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
    /// Log every pass and its reason from the kernel (aya-log), for debugging (`-vv`).
    pub log: bool,
}

impl Default for KernelOpts {
    fn default() -> Self {
        Self { port: kv_common::DEFAULT_PORT, cache_entries: 16384, log: false }
    }
}

/// A loaded (and possibly attached) XDP program with its maps.
pub struct KernelPath {
    ebpf: Ebpf,
    pub iface: Option<String>,
    /// Drains aya-log records while the program is loaded with logging on.
    _logger: Option<LogDrain>,
}

/// A thread that forwards the program's aya-log records to the `log` crate until dropped.
struct LogDrain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogDrain {
    fn start(ebpf: &mut Ebpf, sink: &'static dyn log::Log) -> Result<Self> {
        let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, sink).context("starting aya-log")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("kv-bpf-log".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd: logger.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd; the timeout lets the thread notice `stop`.
                unsafe { libc::poll(&mut pfd, 1, 200) };
                logger.flush();
            }
        })?;
        Ok(LogDrain { stop, thread: Some(thread) })
    }
}

impl Drop for LogDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl KernelPath {
    /// Loads the program into the kernel without attaching it (enough for BPF_PROG_TEST_RUN).
    pub fn load(opts: KernelOpts) -> Result<Self> {
        Self::load_with_logger(opts, log::logger())
    }

    /// As [`load`](Self::load), sending kernel log records (with `opts.log`) to `sink`.
    pub fn load_with_logger(opts: KernelOpts, sink: &'static dyn log::Log) -> Result<Self> {
        let log = u8::from(opts.log);
        let mut ebpf = EbpfLoader::new()
            .override_global("KV_PORT", &opts.port, true)
            .override_global("KV_LOG", &log, true)
            .map_max_entries("CACHE", opts.cache_entries)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel")?;
        let logger = if opts.log { Some(LogDrain::start(&mut ebpf, sink)?) } else { None };
        program(&mut ebpf)?.load().context("verifying the XDP program")?;
        Ok(Self { ebpf, iface: None, _logger: logger })
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

    /// Lets UDP from `addr/prefix` (IPv4) be answered.
    pub fn allow(&mut self, addr: std::net::Ipv4Addr, prefix: u32) -> Result<()> {
        let map = self.ebpf.map_mut("ALLOW").context("ALLOW map missing")?;
        let mut trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(map)?;
        trie.insert(&LpmKey::new(prefix, addr.octets()), 1, 0)?;
        Ok(())
    }

    /// A shareable reader of the per-CPU counters.
    pub fn counters_handle(&self) -> Result<KernelCounters> {
        let data = MapData::from_fd(map_fd(&self.ebpf, "COUNTERS")?)?;
        Ok(KernelCounters { arr: PerCpuArray::try_from(Map::PerCpuArray(data))? })
    }

    /// A handle that writes the kernel cache from any thread.
    pub fn cache_handle(&self) -> Result<KernelCache> {
        Ok(KernelCache {
            cache: map_fd(&self.ebpf, "CACHE")?,
            config: map_fd(&self.ebpf, "CONFIG")?,
            gen: AtomicU64::new(0),
        })
    }
}

/// The XDP program's per-CPU counters, summed over CPUs.
pub struct KernelCounters {
    arr: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    pub fn get(&self, c: Counter) -> u64 {
        self.arr.get(&(c as u32), 0).map_or(0, |v| v.iter().sum())
    }
}

fn map_fd(ebpf: &Ebpf, name: &str) -> Result<OwnedFd> {
    let data: &MapData = match ebpf.map(name).with_context(|| format!("{name} map missing"))? {
        Map::LruHashMap(d) | Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) | Map::PerCpuArray(d) => d,
        _ => bail!("{name}: unexpected map type"),
    };
    Ok(data.fd().as_fd().try_clone_to_owned()?)
}

/// Writes to the kernel cache with plain `bpf(2)` calls on its map fds. aya's typed maps need `&mut`,
/// which would put one lock around every writer; the syscalls themselves are thread-safe, and each
/// key's writes are already ordered by its store shard lock.
pub struct KernelCache {
    cache: OwnedFd,
    config: OwnedFd,
    /// Current flush generation, mirrored in `CONFIG[CONFIG_FLUSH_GEN]`.
    gen: AtomicU64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_ANY: u64 = 0;
const BPF_EXIST: u64 = 2;

/// The `bpf_attr` layout of the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, fd: &OwnedFd, key: *const u8, value: *const u8, flags: u64) -> std::io::Result<()> {
    let attr = ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags };
    // SAFETY: `attr` points at live key/value buffers of the map's key/value sizes for the call's duration.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, &attr as *const ElemAttr, std::mem::size_of::<ElemAttr>() as libc::c_uint)
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl KernelCache {
    /// Inserts or replaces the entry.
    pub fn insert(&self, key: &CacheKey, entry: &CacheEntry) -> std::io::Result<()> {
        bpf_elem(BPF_MAP_UPDATE_ELEM, &self.cache, key as *const _ as _, entry as *const _ as _, BPF_ANY)
    }

    /// Replaces the entry only if the key is cached; Ok(false) if it was not.
    pub fn replace(&self, key: &CacheKey, entry: &CacheEntry) -> std::io::Result<bool> {
        match bpf_elem(BPF_MAP_UPDATE_ELEM, &self.cache, key as *const _ as _, entry as *const _ as _, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the key; Ok(false) if it was not cached.
    pub fn remove(&self, key: &CacheKey) -> std::io::Result<bool> {
        match bpf_elem(BPF_MAP_DELETE_ELEM, &self.cache, key as *const _ as _, std::ptr::null(), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The generation new entries must carry.
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// Invalidates every entry at once by moving to a new generation.
    pub fn flush(&self) -> std::io::Result<()> {
        let next = self.gen.fetch_add(1, Ordering::AcqRel) + 1;
        let idx: u32 = CONFIG_FLUSH_GEN;
        bpf_elem(BPF_MAP_UPDATE_ELEM, &self.config, &idx as *const u32 as _, &next as *const u64 as _, BPF_ANY)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf.program_mut(XDP_PROGRAM).context("XDP program missing from the object")?;
    Ok(prog.try_into()?)
}

/// Builds the kernel cache entry for an item from the same formatting code as user-space replies
/// (`VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`), so the two are byte-identical.
/// None if it does not fit an entry.
pub fn cache_entry(key: &[u8], flags: u32, cas: u64, value: &[u8], expire_ns: u64, gen: u64) -> Option<CacheEntry> {
    let mut v = Vec::with_capacity(64 + key.len() + value.len());
    let (hdr_len, cas_len) = crate::exec::value_line(&mut v, key, flags, Some(cas), value);
    if v.len() > CACHE_ENTRY_BUF {
        return None;
    }
    let mut buf = [0u8; CACHE_ENTRY_BUF];
    buf[..v.len()].copy_from_slice(&v);
    Some(CacheEntry {
        expire_ns,
        gen,
        hdr_len: hdr_len as u16,
        cas_len: cas_len as u16,
        total_len: v.len() as u16,
        _pad: 0,
        buf,
    })
}

/// Name of the benchmark reflector program in kv-ebpf (see `cargo xtask bench`).
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
pub fn attach_reflector(iface: &str, mode: ModeArg, port: u16) -> Result<Reflector> {
    let mut ebpf = EbpfLoader::new()
        .override_global("KV_REFLECT_PORT", &port, true)
        // The object's other maps are created too; keep the unused cache tiny.
        .map_max_entries("CACHE", 1)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object into the kernel")?;
    let prog: &mut Xdp =
        ebpf.program_mut(REFLECT_PROGRAM).context("reflector program missing from the object")?.try_into()?;
    prog.load().context("verifying the reflector")?;
    let flags = match mode {
        ModeArg::Native => XdpMode::Driver,
        ModeArg::Generic => XdpMode::Skb,
    };
    prog.attach(iface, flags).with_context(|| format!("attaching the reflector to {iface} in {mode:?} mode"))?;
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

/// Whether tests that need BPF must fail rather than skip (`KV_REQUIRE_BPF=1`, set by CI).
pub fn bpf_required() -> bool {
    std::env::var("KV_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

#[cfg(test)]
pub(crate) mod tests;
