//! The named maps of `kv_xdp` and the globals its loader sets (`EbpfLoader::override_global`), with the
//! small accessors the rest of the program uses.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key as LpmKey, Array, LpmTrie, PerCpuArray},
};
use kv_common::{CacheEntry, Counter, ALLOW_MAX, CONFIG_SLOTS, COUNTER_SLOTS};

use crate::{
    handoff::{Handoff, HANDOFF_SLOTS},
    scratch::Scratch,
};

/// UDP port of the server; the loader overrides it (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static KV_PORT: u16 = 11211;

/// IPv4 address the server listens on, as it appears in the packet (network order read as a native
/// u32); 0 = any. The loader overrides it.
#[unsafe(no_mangle)]
static KV_LISTEN_IP: u32 = 0;

/// Non-zero: IPv4 datagrams reach the server's socket (it listens on an IPv4 address, or on `::`
/// dual-stack). The loader overrides it.
#[unsafe(no_mangle)]
static KV_LISTEN_V4: u8 = 1;

/// Non-zero: IPv6 datagrams reach the server's socket (it listens on an IPv6 address).
#[unsafe(no_mangle)]
static KV_LISTEN_V6: u8 = 0;

/// IPv6 address the server listens on; all zero = any. The loader overrides it.
#[unsafe(no_mangle)]
static KV_LISTEN_IP6: [u8; 16] = [0; 16];

/// Non-zero: log every pass with its reason through aya-log (`-vv`). Hits are never logged: a log
/// record costs microseconds, more than the whole kernel hit path.
#[unsafe(no_mangle)]
static KV_LOG: u8 = 0;

/// Tests only (`KernelOpts::test_tear`): treat every direct reply as torn, to exercise the restore
/// path. Read-only data, so the verifier removes the check when it is 0.
#[unsafe(no_mangle)]
static KV_TEST_TEAR: u8 = 0;

/// Number of CACHE slots minus one (a power of two); the loader overrides it.
#[unsafe(no_mangle)]
static KV_SLOT_MASK: u32 = 16383;

/// The kernel cache: slots indexed by key hash, each a preformatted reply. User space keeps it
/// coherent with the store.
#[map(name = "CACHE")]
pub static CACHE: Array<CacheEntry> = Array::with_max_entries(16384, 0);

/// Per-slot sequence numbers of CACHE (odd while user space rewrites the slot).
#[map(name = "SEQS")]
pub static SEQS: Array<u64> = Array::with_max_entries(16384, 0);

/// Per-CPU counters, indexed by `kv_common::Counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Settings user space changes at run time: the flush generation.
#[map(name = "CONFIG")]
pub static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// IPv4 source prefixes allowed to use UDP (amplification guard); others go to user space, which
/// ignores them too.
#[map(name = "ALLOW")]
static ALLOW: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(ALLOW_MAX, BPF_F_NO_PREALLOC);

/// The last IPv4 source address `ALLOW` allowed on this CPU, with bit 32 set (0: none yet), so that a run
/// of requests from one client skips the trie lookup ([`allowed_v4`]). Sound because entries are only
/// ever added to `ALLOW` (by the loader), never removed: an address once allowed stays allowed. A loader
/// that removes entries must clear this map too.
#[map(name = "ALLOW_LAST")]
static ALLOW_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether UDP from this IPv4 source address may be answered: it is in a prefix of `ALLOW`.
#[inline(always)]
pub fn allowed_v4(src: [u8; 4]) -> bool {
    let key = u32::from_ne_bytes(src) as u64 | 1 << 32;
    let last = ALLOW_LAST.get_ptr_mut(0);
    // SAFETY: a valid element of a per-CPU map, which only this program run on this CPU touches.
    if last.is_some_and(|p| unsafe { *p } == key) {
        return true;
    }
    if ALLOW.get(LpmKey::new(32, src)).is_none() {
        return false;
    }
    if let Some(p) = last {
        // SAFETY: as above.
        unsafe { *p = key };
    }
    true
}

/// IPv6 source prefixes allowed to use UDP, as `ALLOW` is for IPv4.
#[map(name = "ALLOW6")]
pub static ALLOW6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(ALLOW_MAX, BPF_F_NO_PREALLOC);

/// Per-CPU working memory (see [`Scratch`]).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Replies `kv_xdp` assembled but could not grow its frame to, for `kv_tc` (see `handoff`).
#[map(name = "HANDOFF")]
static HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(HANDOFF_SLOTS, 0);

/// This CPU's `HANDOFF` entry for hand-off number `seq`.
#[inline(always)]
pub fn handoff(seq: u32) -> Option<&'static mut Handoff> {
    let p = HANDOFF.get_ptr_mut(seq % HANDOFF_SLOTS)?;
    // SAFETY: a valid, aligned value of a per-CPU map: no other CPU uses this copy and a program run is
    // not preempted on its CPU, so only this run touches it while the borrow lives.
    Some(unsafe { &mut *p })
}

/// A global the loader may have overridden. Volatile: the compiler must not fold the default in.
macro_rules! global {
    ($name:ident) => {
        // SAFETY: a plain load of an initialised static that nothing in the program writes (the loader
        // sets it before the program runs; it is read-only data to the program).
        unsafe { core::ptr::read_volatile(&$name) }
    };
}

#[inline(always)]
pub fn port() -> u16 {
    global!(KV_PORT)
}

#[inline(always)]
pub fn listen_ip() -> u32 {
    global!(KV_LISTEN_IP)
}

#[inline(always)]
pub fn listen_v4() -> bool {
    global!(KV_LISTEN_V4) != 0
}

#[inline(always)]
pub fn listen_v6() -> bool {
    global!(KV_LISTEN_V6) != 0
}

#[inline(always)]
pub fn listen_ip6() -> [u8; 16] {
    global!(KV_LISTEN_IP6)
}

#[inline(always)]
pub fn log_enabled() -> bool {
    global!(KV_LOG) != 0
}

#[inline(always)]
pub fn test_tear() -> bool {
    global!(KV_TEST_TEAR) != 0
}

#[inline(always)]
pub fn slot_mask() -> u32 {
    global!(KV_SLOT_MASK)
}

/// Adds `n` to this CPU's counter `c`.
#[inline(always)]
pub fn count(c: Counter, n: u64) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: a valid element of a per-CPU map: no other CPU writes this copy, and this program run
        // is not preempted on it, so a plain read-modify-write is race-free.
        unsafe { *v += n };
    }
}

/// This CPU's scratch memory, or None if the map lookup fails (it cannot for index 0).
///
/// Called once by the program and once per step by its `bpf_loop` callback (which gets no pointer from
/// the caller). The callback's borrow lives only inside `bpf_loop`, while the caller's is idle; the one
/// part it writes, `Scratch::scan`, the caller only accesses with volatile reads and writes, so the
/// compiler keeps no copy of it across the loop.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a valid, aligned value of a per-CPU map: no other CPU uses this copy and a program run is
    // not preempted on its CPU, so only this run (caller and callback, as above) touches it.
    Some(unsafe { &mut *p })
}
