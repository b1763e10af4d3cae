//! Loading and attaching the XDP program and its TC ingress half. The object is built by build.rs and
//! embedded here.
//!
//! Dropping [`KernelPath`] detaches the program (aya owns the link) — the server keeps it alive for its
//! whole life and drops it on shutdown, including SIGINT/SIGTERM; a killed process loses its link fd and
//! the kernel detaches the program then.

use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use aya::{
    maps::{lpm_trie::Key as LpmKey, LpmTrie},
    programs::{tc::TcAttachType, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use kv_common::Counter;

use super::counters::KernelCounters;
use super::shared::SharedHook;
use super::slots::KernelCache;

/// Where the XDP program runs: in the driver (native) or after the stack built an skb (generic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

impl From<XdpMode> for aya::programs::XdpMode {
    fn from(m: XdpMode) -> Self {
        match m {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

/// The eBPF object file, as built for bpfel-unknown-none.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kv-ebpf"));

/// Name of the XDP entry point in kv-ebpf.
pub const XDP_PROGRAM: &str = "kv_xdp";
/// Name of its TC ingress half, which answers what the XDP frame has no room for.
pub const TC_PROGRAM: &str = "kv_tc";

/// What the program is specialised for at load time.
#[derive(Debug, Clone, Copy)]
pub struct KernelOpts {
    /// UDP port whose requests the program answers.
    pub port: u16,
    /// Slots of the kernel cache (rounded up to a power of two).
    pub cache_entries: u32,
    /// Log every pass and its reason from the kernel (aya-log), for debugging (`-vv`).
    pub log: bool,
    /// The address the server's UDP socket is bound to: datagrams it would not receive (another
    /// address, or the other family) are left to the stack. `::` takes both families (dual-stack);
    /// None: any address of either family.
    pub listen: Option<std::net::IpAddr>,
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
    /// This instance's place behind the interface's shared dispatcher (dropped first: it leaves the
    /// dispatcher before the program goes).
    hook: Option<SharedHook>,
    /// Why the program was attached directly rather than behind the shared dispatcher, if it was.
    pub unshared: Option<String>,
    ebpf: Ebpf,
    pub iface: Option<String>,
    /// Why the TC half is not attached next to the XDP program, if it is not (replies larger than the
    /// XDP frame can grow to then go to user space).
    pub tc_missing: Option<String>,
    /// Drains aya-log records while the program is loaded with logging on.
    _logger: Option<LogDrain>,
    /// The one writer of the kernel cache (its shadow must see every write).
    cache: Arc<KernelCache>,
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
        let (v4, v6, listen, listen6) = listen_globals(opts.listen);
        let slots = slots_for(opts.cache_entries);
        let mask = slots - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global("KV_PORT", &opts.port, true)
            .override_global("KV_LOG", &log, true)
            .override_global("KV_SLOT_MASK", &mask, true)
            .override_global("KV_TEST_TEAR", &tear, true)
            .override_global("KV_LISTEN_IP", &listen, true)
            .override_global("KV_LISTEN_V4", &v4, true)
            .override_global("KV_LISTEN_V6", &v6, true)
            .override_global("KV_LISTEN_IP6", &listen6, true)
            .map_max_entries("CACHE", slots)
            .map_max_entries("SEQS", slots)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel")?;
        let logger = if opts.log { Some(LogDrain::start(&mut ebpf, sink)?) } else { None };
        program(&mut ebpf)?.load().context("verifying the XDP program")?;
        tc_program(&mut ebpf)?.load().context("verifying the TC program")?;
        let cache = Arc::new(KernelCache::open(&ebpf)?);
        Ok(Self { hook: None, unshared: None, ebpf, iface: None, tc_missing: None, _logger: logger, cache })
    }

    /// Loads and attaches to `iface`: behind the interface's dispatcher, which instances on other ports
    /// share ([`SharedHook`]), or, where that is not possible (no CAP_SYS_ADMIN to open another
    /// instance's dispatcher), directly, as the only program on the interface.
    pub fn attach(iface: &str, mode: XdpMode, opts: KernelOpts) -> Result<Self> {
        let mut path = Self::load(opts)?;
        let prog = program(&mut path.ebpf)?;
        match SharedHook::join(iface, mode, opts.port, prog.fd()?) {
            Ok(hook) => path.hook = Some(hook),
            Err(shared) => {
                prog.attach(iface, mode.into()).with_context(|| {
                    format!("attaching XDP to {iface} in {mode:?} mode (sharing the interface failed too: {shared:#})")
                })?;
                path.unshared = Some(format!("{shared:#}"));
            }
        }
        path.iface = Some(iface.to_string());
        // TC ingress through tcx links (kernel 6.6+), which programs of other owners on the same hook
        // leave alone; dropped with the path, like the XDP link.
        if let Err(e) = tc_program(&mut path.ebpf)?.attach(iface, TcAttachType::Ingress) {
            path.tc_missing = Some(format!("{e:#}"));
        }
        Ok(path)
    }

    /// The XDP program, for test runs.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// Sum over CPUs of one counter.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        Ok(self.counters_handle()?.get(c))
    }

    /// Lets UDP from `addr/prefix` be answered.
    pub fn allow(&mut self, addr: IpAddr, prefix: u32) -> Result<()> {
        match addr {
            IpAddr::V4(a) => {
                let map = self.ebpf.map_mut("ALLOW").context("ALLOW map missing")?;
                let mut trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(map)?;
                trie.insert(&LpmKey::new(prefix, a.octets()), 1, 0)?;
            }
            IpAddr::V6(a) => {
                let map = self.ebpf.map_mut("ALLOW6").context("ALLOW6 map missing")?;
                let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(map)?;
                trie.insert(&LpmKey::new(prefix, a.octets()), 1, 0)?;
            }
        }
        Ok(())
    }

    /// A shareable reader of the per-CPU counters.
    pub fn counters_handle(&self) -> Result<KernelCounters> {
        KernelCounters::open(&self.ebpf)
    }

    /// The handle that writes the kernel cache, from any thread (always the same one).
    pub fn cache_handle(&self) -> Result<Arc<KernelCache>> {
        Ok(self.cache.clone())
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf.program_mut(XDP_PROGRAM).context("XDP program missing from the object")?;
    Ok(prog.try_into()?)
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let prog = ebpf.program_mut(TC_PROGRAM).context("TC program missing from the object")?;
    Ok(prog.try_into()?)
}

/// The program's listen globals for a socket bound to `listen`: whether IPv4 and IPv6 datagrams reach
/// it, and the one address of each family it takes (0: any). The IPv4 address is the packet's bytes read
/// as a native integer, as the program compares them.
fn listen_globals(listen: Option<IpAddr>) -> (u8, u8, u32, [u8; 16]) {
    match listen {
        None => (1, 1, 0, [0; 16]),
        Some(IpAddr::V4(a)) => (1, 0, u32::from_ne_bytes(a.octets()), [0; 16]),
        // `::` is bound dual-stack (server::udp::bind clears IPV6_V6ONLY).
        Some(IpAddr::V6(a)) if a.is_unspecified() => (1, 1, 0, [0; 16]),
        Some(IpAddr::V6(a)) => (0, 1, 0, a.octets()),
    }
}

/// Cache slots for a requested capacity: a power of two, at least 64.
pub fn slots_for(entries: u32) -> u32 {
    entries.clamp(64, 1 << 24).next_power_of_two()
}
