//! Types shared by the eBPF programs (kv-ebpf) and the user-space server (kv-user).
//! Everything here is `no_std` and `#[repr(C)]` where it crosses the kernel boundary.
#![no_std]

mod binary;
mod counter;
mod wire;

pub use binary::{
    get_hit_prefix, BinHeader, BIN_GET_EXTRAS, BIN_GET_PREFIX_LEN, BIN_HEADER_LEN, BIN_OP_GET, BIN_OP_GETK,
    BIN_REQUEST_MAGIC, BIN_RESPONSE_MAGIC,
};
pub use counter::{Counter, COUNTERS, COUNTER_SLOTS};
pub use wire::{
    item_size, write_value_header, Decimal, FrameHeader, SetMode, ValueHeader, CAS_FIELD_LEN, END, ITEM_HEADER_SIZE,
    U32_MAX_DIGITS, U64_MAX_DIGITS, VALUE_HEADER_MAX,
};

/// Default memcached port, TCP and UDP.
pub const DEFAULT_PORT: u16 = 11211;
/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;
/// memcached's UDP frame header: request id, sequence number, datagram count, reserved (all big-endian u16).
pub const UDP_FRAME_HEADER_LEN: usize = 8;
/// Largest UDP reply datagram, frame header included (memcached's UDP_MAX_PAYLOAD_SIZE).
pub const UDP_MAX_PAYLOAD: usize = 1400;

/// Bytes of a request the XDP program looks at (`get`/`gets` line after the frame header): a power of
/// two above the reply limit, since a hit's reply repeats every key of the request and is longer.
pub const XDP_REQ_MAX: usize = 2048;
/// Keys one request may name for the XDP path: as many as can fit the datagram (each answered key
/// takes at least `VALUE k 0 0\r\n\r\n`, 16 bytes), so the reply's size is what limits a multiget.
pub const XDP_MAX_KEYS: usize = XDP_REPLY_MAX / 16;
/// Room for the reply text (everything after the frame header) in one datagram.
pub const XDP_REPLY_MAX: usize = UDP_MAX_PAYLOAD - UDP_FRAME_HEADER_LEN;
/// Bytes of preformatted reply one cache entry can hold: `VALUE <key> <flags> <bytes>\r\n<data>\r\n`,
/// leaving room for [`END`] in the datagram, rounded down to a multiple of 8 (1384).
pub const CACHE_ENTRY_BUF: usize = (XDP_REPLY_MAX - END.len()) / 8 * 8;
const _: () = assert!(CACHE_ENTRY_BUF == 1384);

/// Bytes of key storage (≥ 250, a multiple of 8).
pub const CACHE_KEY_BUF: usize = 256;

/// A key, zero-padded to whole 8-byte words, so that it can be hashed and compared word by word.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct CacheKey {
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; CACHE_KEY_BUF],
}

impl CacheKey {
    /// None for keys memcached would refuse (empty or longer than 250 bytes).
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return None;
        }
        let mut k = CacheKey { len: key.len() as u32, _pad: 0, data: [0; CACHE_KEY_BUF] };
        k.data[..key.len()].copy_from_slice(key);
        Some(k)
    }

    /// The key bytes as 8-byte words (`data` is 8-aligned).
    #[inline(always)]
    pub fn data_words(&mut self) -> &mut [u64; CACHE_KEY_BUF / 8] {
        // SAFETY: `data` is at offset 8 of an 8-aligned struct and 256 bytes long.
        unsafe { &mut *(self.data.as_mut_ptr() as *mut [u64; CACHE_KEY_BUF / 8]) }
    }

    #[inline(always)]
    pub fn data_words_ref(&self) -> &[u64; CACHE_KEY_BUF / 8] {
        // SAFETY: as above.
        unsafe { &*(self.data.as_ptr() as *const [u64; CACHE_KEY_BUF / 8]) }
    }

    /// The key's hash, as the XDP program computes it (see [`hash_step`]).
    pub fn hash(&self) -> u64 {
        let words = (self.len as usize).div_ceil(8);
        let mut h = hash_init(self.len);
        for i in 0..words {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.data[i * 8..i * 8 + 8]);
            h = hash_step(h, u64::from_le_bytes(w));
        }
        hash_finish(h)
    }
}

/// Start of the key hash (seeded with the length).
#[inline(always)]
pub const fn hash_init(len: u32) -> u64 {
    0x243f_6a88_85a3_08d3 ^ len as u64
}

/// Final avalanche (murmur3's fmix64): the slot index uses the low bits, and a multiply only carries
/// low bits upwards, so without it keys differing in their last bytes would crowd a few slots.
#[inline(always)]
pub const fn hash_finish(h: u64) -> u64 {
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One 8-byte little-endian word of the zero-padded key into the hash.
#[inline(always)]
pub const fn hash_step(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

/// The two pairs of cache slots a key with this hash may live in: `(a, a + 1)` and `(b, b + 1)`, from the
/// low and the high half of the hash (they may coincide). Two choices of a two-way set: at the load a
/// cache of this size sees (10k hot keys in 16k slots), a single two-way set per key left ~14% of the
/// keys without a slot, four candidates almost none (the "power of two choices").
#[inline(always)]
pub const fn slot_pairs(hash: u64, mask: u32) -> (u32, u32) {
    (hash as u32 & mask & !1, (hash >> 32) as u32 & mask & !1)
}

/// The tag of a key (of this hash) in its slot's word of `SEQS`: the high 32 bits of the word name the
/// key the slot holds, the low 32 bits are the slot's sequence number (odd while it is rewritten). The
/// XDP program picks the slot whose tag matches from the four candidates' words, which lie in one or two
/// cache lines, instead of reading each candidate slot (each in lines of its own); the full key check
/// under the seqlock still decides. Never 0, the tag of an empty slot.
#[inline(always)]
pub const fn slot_tag(hash: u64) -> u32 {
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 | 1
}

/// A slot's word in `SEQS`: tag and sequence number (see [`slot_tag`]).
#[inline(always)]
pub const fn seq_word(tag: u32, seq: u64) -> u64 {
    (tag as u64) << 32 | (seq & 0xffff_ffff)
}

/// One slot of the kernel cache: an array map, indexed by key hash (see [`slot_pairs`]). An array never
/// frees or reuses its elements, so the XDP program can copy a slot while user space rewrites it and
/// detect that with the slot's sequence number in `SEQS` (odd while a write is in progress), instead of
/// risking a hash map element being recycled under it.
///
/// The slot holds the reply for one key, preformatted by user space with the same code that formats
/// user-space replies: `buf[..total_len]` is the `get` reply `VALUE <key> <flags> <bytes>\r\n<data>\r\n`
/// (one copy for the common command), and a `gets` reply inserts `cas[..cas_len]` (` <cas>`) at
/// `hdr_len`, before the first `\r\n`. A binary `get`/`getk` hit takes the value from the same text
/// (`buf[hdr_len + 2..total_len - 2]`) and builds its header from `flags` and `cas_unique`.
///
/// The key is not stored apart: it is the reply's own `buf[6..6 + key_len]`, right after `VALUE `, which
/// lies 8-aligned in the slot ([`ENTRY_KEY_OFF`]) so that the XDP program compares it word by word. A hit
/// on a small item thus reads one or two cache lines of its slot (the fields, key and reply text are
/// contiguous), and the slots are 1440 bytes apart rather than 1696 (fewer pages, fewer TLB misses).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CacheEntry {
    /// Deadline on the kernel's monotonic clock (bpf_ktime_get_ns); 0 = never expires.
    pub expire_ns: u64,
    /// Flush generation the entry belongs to: it is dead once `CONFIG[CONFIG_FLUSH_GEN]` differs
    /// (flush_all empties the whole cache in O(1)).
    pub gen: u64,
    /// The item's client flags, for a binary hit's extras (the text reply has them in decimal).
    pub flags: u32,
    pub hdr_len: u16,
    pub total_len: u16,
    pub cas_len: u8,
    /// Length of the key this slot answers for (0 = empty slot); its bytes are `buf[6..6 + key_len]`.
    pub key_len: u8,
    pub buf: [u8; CACHE_ENTRY_BUF],
    /// ` <cas>` for `gets` (its first `cas_len` bytes), after the reply: only `gets` reads it.
    pub cas: [u8; CAS_FIELD_LEN],
    pub _pad: [u8; 1],
    /// The item's CAS, for a binary hit's header (the text reply has it in `cas`, in decimal).
    pub cas_unique: u64,
}

/// Where a slot's key starts in its [`CacheEntry`]: after `VALUE ` in the reply text, 8-aligned.
pub const ENTRY_KEY_OFF: usize = core::mem::offset_of!(CacheEntry, buf) + b"VALUE ".len();
const _: () = assert!(ENTRY_KEY_OFF.is_multiple_of(8) && ENTRY_KEY_OFF + CACHE_KEY_BUF <= size_of::<CacheEntry>());
// `key_len` and `cas_len` are bytes (CAS_FIELD_LEN is smaller than MAX_KEY_LEN).
const _: () = assert!(MAX_KEY_LEN <= u8::MAX as usize && CAS_FIELD_LEN < MAX_KEY_LEN);
const _: () = assert!(size_of::<CacheEntry>() == 1440 && align_of::<CacheEntry>() == 8);

/// Slots of the `CONFIG` array map.
pub const CONFIG_FLUSH_GEN: u32 = 0;
pub const CONFIG_SLOTS: u32 = 1;

/// Entries of the dispatcher's `PORTS` table: one per UDP port.
pub const DISPATCH_PORTS: u32 = 65536;
/// Instances one interface's dispatcher can hold (its `PROGS` slots).
pub const DISPATCH_SLOTS: u32 = 64;

/// Capacity of the `ALLOW` LPM trie (IPv4 source prefixes allowed to use UDP).
pub const ALLOW_MAX: u32 = 64;

/// XDP verdicts (linux/bpf.h `enum xdp_action`), for user-space code that inspects test runs.
pub mod xdp_action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding-sensitive invariants.
    unsafe impl aya::Pod for super::CacheKey {}
    unsafe impl aya::Pod for super::CacheEntry {}
}
