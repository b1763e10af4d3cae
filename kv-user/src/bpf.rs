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

/// The benchmark reflector's own eBPF object (kv-ebpf's `kv-reflect` binary), as built for
/// bpfel-unknown-none: it holds only `kv_reflect`, no maps of the cache.
pub static REFLECT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kv-reflect"));

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
    /// The address the server listens on: datagrams to other addresses are left to the stack. None: any.
    pub listen: Option<std::net::Ipv4Addr>,
    /// Tests only: the program treats every reply it copies straight from a slot as torn, exercising
    /// the path that restores the request and passes it.
    pub test_tear: bool,
}

impl Default for KernelOpts {
    fn default() -> Self {
        Self { port: kv_common::DEFAULT_PORT, cache_entries: 16384, log: false, listen: None, test_tear: false }
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
        let tear = u8::from(opts.test_tear);
        // The packet's bytes read as a native integer, as the program compares them.
        let listen = opts.listen.map_or(0, |a| u32::from_ne_bytes(a.octets()));
        let slots = slots_for(opts.cache_entries);
        let mask = slots - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global("KV_PORT", &opts.port, true)
            .override_global("KV_LOG", &log, true)
            .override_global("KV_SLOT_MASK", &mask, true)
            .override_global("KV_TEST_TEAR", &tear, true)
            .override_global("KV_LISTEN_IP", &listen, true)
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
/// A key lives in one of the four slots of its two pairs ([`kv_common::slot_pairs`]), or nowhere.
/// Each slot has a sequence
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

/// A key's candidate slot indexes (2 or 4, ascending).
struct Slots {
    idx: [usize; 4],
    n: usize,
}

/// A key's candidate slots with their shadows locked.
struct Locked<'a> {
    slots: Slots,
    g: [Option<parking_lot::MutexGuard<'a, Shadow>>; 4],
}

impl Locked<'_> {
    fn iter(&self) -> impl Iterator<Item = (usize, &Shadow)> {
        self.slots.idx[..self.slots.n].iter().zip(&self.g).filter_map(|(&i, g)| Some((i, &**g.as_ref()?)))
    }

    fn get(&self, i: usize) -> &Shadow {
        self.g[i].as_ref().expect("locked candidate")
    }

    fn get_mut(&mut self, i: usize) -> (usize, &mut Shadow) {
        (self.slots.idx[i], self.g[i].as_mut().expect("locked candidate"))
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
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
    elem_cmd(BPF_MAP_UPDATE_ELEM, fd, key, value)
}

fn lookup(fd: &OwnedFd, key: *const u8, value: *mut u8) -> std::io::Result<()> {
    elem_cmd(BPF_MAP_LOOKUP_ELEM, fd, key, value)
}

fn elem_cmd(cmd: libc::c_long, fd: &OwnedFd, key: *const u8, value: *const u8) -> std::io::Result<()> {
    let attr =
        ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags: BPF_ANY };
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
    /// The distinct slots a key may live in, ascending (the lock order): its two pairs.
    fn slots(&self, key: &CacheKey) -> Slots {
        let (a, b) = kv_common::slot_pairs(key.hash(), self.mask);
        let (lo, hi) = (a.min(b) as usize, a.max(b) as usize);
        if lo == hi {
            Slots { idx: [lo, lo + 1, 0, 0], n: 2 }
        } else {
            Slots { idx: [lo, lo + 1, hi, hi + 1], n: 4 }
        }
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

    /// Locks the key's candidate slots, in ascending order (so writers of overlapping sets never deadlock).
    fn lock_slots(&self, key: &[u8]) -> Option<Locked<'_>> {
        let slots = self.slots(&CacheKey::new(key)?);
        let mut g: [Option<parking_lot::MutexGuard<'_, Shadow>>; 4] = Default::default();
        for (i, &idx) in slots.idx[..slots.n].iter().enumerate() {
            g[i] = Some(self.shadow[idx].lock());
        }
        Some(Locked { slots, g })
    }

    /// Puts the entry (built by [`cache_entry`] for `key`) into one of its slots: the one holding the key,
    /// else a free one in the emptier pair, else one freed by moving its key to a free slot of that key's
    /// other pair (one cuckoo step: at 60% load this leaves ~0.1% of keys out instead of ~2%), else the
    /// slot written longest ago.
    pub fn insert(&self, key: &[u8], entry: &CacheEntry) -> std::io::Result<()> {
        let mut l = self.lock_slots(key).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let held = l.iter().position(|(_, sh)| self.holds(sh, key));
        let free = || {
            let used = |pair: usize| l.iter().skip(pair * 2).take(2).filter(|(_, sh)| self.live(sh)).count();
            let pairs: &[usize] = if l.slots.n == 4 && used(1) < used(0) { &[1, 0] } else { &[0, 1] };
            pairs.iter().flat_map(|p| p * 2..p * 2 + 2).find(|&i| i < l.slots.n && !self.live(l.get(i)))
        };
        let pick = match held.or_else(free) {
            Some(i) => i,
            None => match self.relocate_one(&l)? {
                Some(i) => i,
                None => l.iter().enumerate().min_by_key(|(_, (_, sh))| sh.stamp).map_or(0, |(i, _)| i),
            },
        };
        let (idx, sh) = l.get_mut(pick);
        self.write(idx, sh, key, entry)
    }

    /// Moves the key of one of the locked (full) slots to a free slot of its other pair, returning the
    /// freed candidate. The moved key is answered from its new slot before its old one is overwritten, and
    /// its own writers are held off by the old slot's lock meanwhile. Slots outside the locked set are
    /// only try-locked: waiting for them could deadlock against a writer locking in ascending order.
    fn relocate_one(&self, l: &Locked<'_>) -> std::io::Result<Option<usize>> {
        for i in 0..l.slots.n {
            let (from, sh) = (l.slots.idx[i], l.get(i));
            let Some((k, _)) = sh.key.clone() else { continue };
            let Some(ck) = CacheKey::new(&k) else { continue };
            let theirs = self.slots(&ck);
            for &to in &theirs.idx[..theirs.n] {
                if to / 2 == from / 2 || l.slots.idx[..l.slots.n].contains(&to) {
                    continue;
                }
                let Some(mut dst) = self.shadow[to].try_lock() else { continue };
                if self.live(&dst) {
                    continue;
                }
                let mut entry = std::mem::MaybeUninit::<CacheEntry>::uninit();
                let fi = from as u32;
                lookup(&self.cache, &fi as *const u32 as _, entry.as_mut_ptr() as *mut u8)?;
                // SAFETY: the lookup filled the whole value (the map's value size is CacheEntry's).
                let entry = unsafe { entry.assume_init() };
                self.write(to, &mut dst, &k, &entry)?;
                // Keep the moved key's age, so that eviction order is unchanged by the move.
                dst.stamp = sh.stamp;
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Whether the slot answers for some key of the current generation.
    fn live(&self, sh: &Shadow) -> bool {
        sh.key.as_ref().is_some_and(|(_, gen)| *gen == self.gen())
    }

    /// Whether one of the key's slots currently answers for it.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.lock_slots(key).is_some_and(|l| l.iter().any(|(_, sh)| self.holds(sh, key)))
    }

    /// Rewrites the key's entry only if it is cached; Ok(false) if it was not.
    pub fn replace(&self, key: &[u8], entry: &CacheEntry) -> std::io::Result<bool> {
        let Some(mut l) = self.lock_slots(key) else { return Ok(false) };
        let found = l.iter().position(|(_, sh)| self.holds(sh, key));
        match found {
            Some(i) => {
                let (idx, sh) = l.get_mut(i);
                self.write(idx, sh, key, entry)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Stops the kernel answering for the key; Ok(false) if it was not cached.
    pub fn remove(&self, key: &[u8]) -> std::io::Result<bool> {
        let Some(mut l) = self.lock_slots(key) else { return Ok(false) };
        let found = l.iter().position(|(_, sh)| self.holds(sh, key));
        match found {
            Some(i) => {
                let (idx, sh) = l.get_mut(i);
                sh.key = None;
                self.begin(idx, sh)?;
                Ok(true)
            }
            None => Ok(false),
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
pub fn attach_reflector(iface: &str, mode: ModeArg, port: u16) -> Result<Reflector> {
    let mut ebpf = EbpfLoader::new()
        .override_global("KV_REFLECT_PORT", &port, true)
        .load(REFLECT_OBJECT)
        .context("loading the reflector's eBPF object into the kernel")?;
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
