//! Loading, attaching and reading the eBPF side. The object is built by build.rs and embedded here.
//!
//! Dropping [`KernelPath`] detaches the program (aya owns the link) — the server keeps it alive for its
//! whole life and drops it on shutdown, including SIGINT/SIGTERM; a killed process loses its link fd and
//! the kernel detaches the program then.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key as LpmKey, LpmTrie, Map, MapData, PerCpuArray},
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
    /// Slots of the kernel cache (rounded up to a power of two).
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
    /// The one writer of the kernel cache (its shadow must see every write).
    cache: std::sync::OnceLock<std::sync::Arc<KernelCache>>,
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
        let slots = slots_for(opts.cache_entries);
        let mask = slots - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global("KV_PORT", &opts.port, true)
            .override_global("KV_LOG", &log, true)
            .override_global("KV_SLOT_MASK", &mask, true)
            .map_max_entries("CACHE", slots)
            .map_max_entries("SEQS", slots)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel")?;
        let logger = if opts.log { Some(LogDrain::start(&mut ebpf, sink)?) } else { None };
        program(&mut ebpf)?.load().context("verifying the XDP program")?;
        Ok(Self { ebpf, iface: None, _logger: logger, cache: std::sync::OnceLock::new() })
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

    /// The handle that writes the kernel cache, from any thread (always the same one).
    pub fn cache_handle(&self) -> Result<std::sync::Arc<KernelCache>> {
        if let Some(c) = self.cache.get() {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(self.new_cache_handle()?);
        Ok(self.cache.get_or_init(|| c).clone())
    }

    fn new_cache_handle(&self) -> Result<KernelCache> {
        let slots = match self.ebpf.map("CACHE") {
            Some(Map::Array(d)) => d.info()?.max_entries(),
            _ => bail!("CACHE map missing"),
        };
        Ok(KernelCache {
            cache: map_fd(&self.ebpf, "CACHE")?,
            seqs: map_fd(&self.ebpf, "SEQS")?,
            config: map_fd(&self.ebpf, "CONFIG")?,
            gen: AtomicU64::new(0),
            mask: slots - 1,
            shadow: (0..slots).map(|_| parking_lot::Mutex::new(Shadow::default())).collect(),
            stamp: AtomicU64::new(0),
        })
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf.program_mut(XDP_PROGRAM).context("XDP program missing from the object")?;
    Ok(prog.try_into()?)
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

/// Cache slots for a requested capacity: a power of two, at least 64.
pub fn slots_for(entries: u32) -> u32 {
    entries.clamp(64, 1 << 24).next_power_of_two()
}

fn map_fd(ebpf: &Ebpf, name: &str) -> Result<OwnedFd> {
    let data: &MapData = match ebpf.map(name).with_context(|| format!("{name} map missing"))? {
        Map::LruHashMap(d) | Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) | Map::PerCpuArray(d) => d,
        _ => bail!("{name}: unexpected map type"),
    };
    Ok(data.fd().as_fd().try_clone_to_owned()?)
}

/// Writes the kernel cache with plain `bpf(2)` calls on its map fds (aya's typed maps need `&mut`).
///
/// The cache is two-way set associative: a key lives in one of the two slots at `hash & mask & !1`, or
/// nowhere. Each slot has a sequence
/// number in `SEQS` that a write makes odd, then rewrites the slot, then makes even again; the XDP program
/// only uses a copy taken between two equal even numbers (a seqlock: no torn reads, and array slots are
/// never freed or recycled). User space is the only writer: a per-slot lock orders writers of one slot
/// (keys of different store shards can share a slot) and a shadow records which key each slot holds, so
/// invalidating a key that is not cached costs no syscall.
pub struct KernelCache {
    cache: OwnedFd,
    seqs: OwnedFd,
    config: OwnedFd,
    /// Current flush generation, mirrored in `CONFIG[CONFIG_FLUSH_GEN]`.
    gen: AtomicU64,
    mask: u32,
    shadow: Box<[parking_lot::Mutex<Shadow>]>,
    stamp: AtomicU64,
}

#[derive(Default)]
struct Shadow {
    /// The slot's sequence number as last written.
    seq: u64,
    /// When it was last written (a counter): the older of a full pair is replaced.
    stamp: u64,
    /// The key the slot answers for, and the flush generation it was written in.
    key: Option<(Box<[u8]>, u64)>,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_ANY: u64 = 0;

/// The `bpf_attr` layout of the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn update(fd: &OwnedFd, key: *const u8, value: *const u8) -> std::io::Result<()> {
    let attr =
        ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags: BPF_ANY };
    // SAFETY: `attr` points at live key/value buffers of the map's key/value sizes for the call's duration.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl KernelCache {
    /// The pair of slots a key may live in (two-way set associative): `base` and `base + 1`.
    fn pair(&self, key: &CacheKey) -> usize {
        (key.hash() as u32 & self.mask & !1) as usize
    }

    fn set_seq(&self, idx: usize, seq: u64) -> std::io::Result<()> {
        let idx = idx as u32;
        update(&self.seqs, &idx as *const u32 as _, &seq as *const u64 as _)
    }

    /// Makes the slot unreadable (odd sequence number).
    fn begin(&self, idx: usize, sh: &mut Shadow) -> std::io::Result<()> {
        if sh.seq.is_multiple_of(2) {
            sh.seq += 1;
            self.set_seq(idx, sh.seq)?;
        }
        Ok(())
    }

    /// Writes `entry` into slot `idx`. On error the slot stays unreadable.
    fn write(&self, idx: usize, sh: &mut Shadow, key: &[u8], entry: &CacheEntry) -> std::io::Result<()> {
        sh.key = None;
        self.begin(idx, sh)?;
        let i = idx as u32;
        update(&self.cache, &i as *const u32 as _, entry as *const CacheEntry as _)?;
        sh.seq += 1;
        self.set_seq(idx, sh.seq)?;
        sh.key = Some((key.into(), entry.gen));
        sh.stamp = self.stamp.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn holds(&self, sh: &Shadow, key: &[u8]) -> bool {
        sh.key.as_ref().is_some_and(|(k, gen)| &**k == key && *gen == self.gen())
    }

    /// Locks the key's pair of slots (always the lower one first).
    fn lock_pair(&self, key: &[u8]) -> Option<(usize, [parking_lot::MutexGuard<'_, Shadow>; 2])> {
        let base = self.pair(&CacheKey::new(key)?);
        Some((base, [self.shadow[base].lock(), self.shadow[base + 1].lock()]))
    }

    /// Puts the entry (built by [`cache_entry`] for `key`) into one of its two slots: the one holding the
    /// key, else an empty one, else the one written longest ago.
    pub fn insert(&self, key: &[u8], entry: &CacheEntry) -> std::io::Result<()> {
        let (base, mut g) =
            self.lock_pair(key).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let way = if self.holds(&g[0], key) {
            0
        } else if self.holds(&g[1], key) {
            1
        } else if !self.live(&g[0]) {
            0
        } else if !self.live(&g[1]) {
            1
        } else {
            usize::from(g[1].stamp < g[0].stamp)
        };
        self.write(base + way, &mut g[way], key, entry)
    }

    /// Whether the slot answers for some key of the current generation.
    fn live(&self, sh: &Shadow) -> bool {
        sh.key.as_ref().is_some_and(|(_, gen)| *gen == self.gen())
    }

    /// Whether one of the key's slots currently answers for it.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.lock_pair(key).is_some_and(|(_, g)| g.iter().any(|sh| self.holds(sh, key)))
    }

    /// Rewrites the key's entry only if it is cached; Ok(false) if it was not.
    pub fn replace(&self, key: &[u8], entry: &CacheEntry) -> std::io::Result<bool> {
        let Some((base, mut g)) = self.lock_pair(key) else { return Ok(false) };
        for (way, sh) in g.iter_mut().enumerate() {
            if self.holds(sh, key) {
                self.write(base + way, sh, key, entry)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stops the kernel answering for the key; Ok(false) if it was not cached.
    pub fn remove(&self, key: &[u8]) -> std::io::Result<bool> {
        let Some((base, mut g)) = self.lock_pair(key) else { return Ok(false) };
        for (way, sh) in g.iter_mut().enumerate() {
            if self.holds(sh, key) {
                sh.key = None;
                self.begin(base + way, sh)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The generation new entries must carry.
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// Invalidates every entry at once by moving to a new generation.
    pub fn flush(&self) -> std::io::Result<()> {
        let next = self.gen.fetch_add(1, Ordering::AcqRel) + 1;
        let idx: u32 = CONFIG_FLUSH_GEN;
        update(&self.config, &idx as *const u32 as _, &next as *const u64 as _)
    }
}

/// Builds the kernel cache entry for an item from the same formatting code as user-space replies
/// (`VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`), so the two are byte-identical.
/// None if it does not fit an entry.
pub fn cache_entry(key: &[u8], flags: u32, cas: u64, value: &[u8], expire_ns: u64, gen: u64) -> Option<CacheEntry> {
    let mut v = Vec::with_capacity(64 + key.len() + value.len());
    let (hdr_len, cas_len) = crate::exec::value_line(&mut v, key, flags, Some(cas), value);
    // The `get` form is the `gets` form without ` <cas>`: kept contiguous, the CAS aside.
    let mut cas_part = [0u8; 24];
    cas_part.get_mut(..cas_len)?.copy_from_slice(&v[hdr_len..hdr_len + cas_len]);
    v.drain(hdr_len..hdr_len + cas_len);
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
        cas: cas_part,
        key: CacheKey::new(key)?,
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
