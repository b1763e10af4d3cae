//! The seqlock read of a cache slot: the key's hash, the two slot pairs it may live in, and the checks
//! (key, lengths, expiry, flush generation) made between reading the slot's sequence number and
//! checking it again after the copy.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use core::mem::offset_of;
use kv_common::{
    hash_finish, hash_init, hash_step, slot_pairs, slot_tag, CacheEntry, Counter, CACHE_ENTRY_BUF, CACHE_KEY_BUF,
    CAS_FIELD_LEN, CONFIG_FLUSH_GEN, ENTRY_KEY_OFF, MAX_KEY_LEN,
};
use kv_ebpf::{volatile_read, volatile_write};

use crate::{
    maps::{self, CACHE, CONFIG, SEQS},
    scratch::{Scratch, REQ_MASK, REQ_WORDS},
};

/// Words of a zero-padded key.
const KEY_WORDS: usize = CACHE_KEY_BUF / 8;
/// Mask that bounds a key length for the verifier (≥ MAX_KEY_LEN).
const KEY_LEN_MASK: usize = 0xff;
const _: () = assert!(MAX_KEY_LEN <= KEY_LEN_MASK && KEY_WORDS.is_power_of_two());

/// A slot of the `CACHE` map, which user space may rewrite at any time: it is never borrowed, only
/// read field by field with volatile loads, and what is read counts only once the slot's sequence
/// number is found unchanged afterwards ([`Hit::unchanged`]).
#[derive(Clone, Copy)]
pub struct Slot(*const CacheEntry);

/// A volatile load of one field of the slot's entry.
macro_rules! field {
    ($slot:expr, $($field:tt)+) => {
        // SAFETY: the pointer came from a CACHE lookup ([`Slot::at`]): a valid, aligned, never freed
        // array element. User space may be rewriting it; a volatile load of an integer field gives
        // some integer, and every value is bounded or validated by the seqlock before use.
        unsafe { core::ptr::read_volatile(&raw const (*$slot.0).$($field)+) }
    };
}

impl Slot {
    #[inline(always)]
    fn at(idx: u32) -> Option<Slot> {
        CACHE.get_ptr(idx).map(Slot)
    }

    #[inline(always)]
    fn key_len(self) -> usize {
        field!(self, key_len) as usize
    }

    /// Word `i` (masked into range) of the slot's key, as it lies in the reply text: the bytes after the
    /// key (` <flags> ...`) are the caller's to mask off.
    #[inline(always)]
    fn key_word(self, i: usize) -> u64 {
        let words = self.0.wrapping_byte_add(ENTRY_KEY_OFF);
        // SAFETY: the slot is valid (see `field!`) and holds KEY_WORDS 8-byte words from the 8-aligned
        // ENTRY_KEY_OFF (asserted in kv-common); `i` is masked into range.
        unsafe { core::ptr::read_volatile(words.cast::<u64>().add(i & (KEY_WORDS - 1))) }
    }

    /// Loads a byte of each cache line that the first [`PREFETCH_REPLY`] bytes of the reply text span
    /// (a slot starts on a line or half-way), and drops them: a prefetch.
    #[inline(always)]
    fn prefetch_reply(self) {
        let buf = self.buf();
        for off in [0, 64, 128, PREFETCH_REPLY - 1] {
            // SAFETY: `off` < CACHE_ENTRY_BUF (asserted below): a byte of the slot's valid reply buffer (see
            // `field!`), read volatile so that the compiler keeps the unused load; any value is fine.
            let _ = unsafe { core::ptr::read_volatile(buf.wrapping_add(off)) };
        }
    }

    /// The slot's reply text (`get` form), for the copying helpers (never to be borrowed).
    #[inline(always)]
    pub fn buf(self) -> *const u8 {
        self.0.wrapping_byte_add(offset_of!(CacheEntry, buf)).cast()
    }

    /// The slot's ` <cas>` field, for the copying helpers (never to be borrowed).
    #[inline(always)]
    pub fn cas(self) -> *const u8 {
        self.0.wrapping_byte_add(offset_of!(CacheEntry, cas)).cast()
    }

    /// The item's client flags (a binary hit's extras); counts only under the seqlock, as all reads.
    #[inline(always)]
    pub fn flags(self) -> u32 {
        field!(self, flags)
    }

    /// The item's CAS (a binary hit's header); counts only under the seqlock, as all reads.
    #[inline(always)]
    pub fn cas_unique(self) -> u64 {
        field!(self, cas_unique)
    }
}

/// A slot's sequence number, odd while user space rewrites the slot: a pointer from a `SEQS` lookup
/// (only built that way, in this module).
#[derive(Clone, Copy)]
pub struct Seq(*const u64);

impl Seq {
    #[inline(always)]
    fn read(self) -> u64 {
        // SAFETY: a valid, aligned SEQS element (see `Seq`); user space updates it, so it is read
        // with a volatile load, which gives some u64.
        unsafe { core::ptr::read_volatile(self.0) }
    }
}

/// A live slot for a key, checked (key, lengths, expiry, generation) under a sequence number read
/// before; a copy made from it is only valid if the number is unchanged after the copy.
///
/// It holds the slot's index, not pointers: a `Hit` is returned through the stack, and the verifier
/// refuses a partial read of a spilled pointer, which the compiler may emit when it reads an enum or
/// `Result` holding one (re-deriving the pointer is an inlined array lookup).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hit {
    idx: u32,
    seq1: u64,
    /// `get` reply length, and where a `gets` reply inserts the CAS (`cas_len` bytes).
    pub total: usize,
    pub hdr: usize,
    pub cas_len: usize,
}

impl Hit {
    #[inline(always)]
    pub fn slot(&self) -> Result<Slot, Counter> {
        Slot::at(self.idx).ok_or(Counter::PassMiss)
    }

    /// Whether user space left the slot alone since it was checked: what was copied from it is one
    /// consistent state.
    #[inline(always)]
    pub fn unchanged(&self) -> bool {
        SEQS.get_ptr(self.idx).is_some_and(|p| Seq(p).read() == self.seq1)
    }
}

/// Finds the slot answering for one key (bytes `s.req[start..start+klen]`) and checks it is live. What
/// it reads may be torn: only a copy made before the sequence number is found unchanged counts.
#[inline(always)]
pub fn find_entry(s: &mut Scratch, start: usize, klen: usize) -> Result<Hit, Counter> {
    let start = start & REQ_MASK;
    let klen = klen & KEY_LEN_MASK;
    if klen == 0 || klen > MAX_KEY_LEN {
        return Err(Counter::PassNotGet);
    }
    volatile_write(&mut s.key.len, klen as u32);
    // The key as zero-padded little-endian words, hashed on the way (the same hash user space uses).
    let words = klen.div_ceil(8);
    let mut hash = hash_init(klen as u32);
    for i in 0..KEY_WORDS {
        if i >= words {
            break;
        }
        let at = start + i * 8;
        let mut w = u64::from_le_bytes([
            s.req[at & REQ_MASK],
            s.req[(at + 1) & REQ_MASK],
            s.req[(at + 2) & REQ_MASK],
            s.req[(at + 3) & REQ_MASK],
            s.req[(at + 4) & REQ_MASK],
            s.req[(at + 5) & REQ_MASK],
            s.req[(at + 6) & REQ_MASK],
            s.req[(at + 7) & REQ_MASK],
        ]);
        let tail = klen - i * 8;
        if tail < 8 {
            w &= (1u64 << (tail * 8)) - 1;
        }
        s.key.data_words()[i & (KEY_WORDS - 1)] = w;
        hash = hash_step(hash, w);
    }
    lookup(s, hash)
}

/// The key of a 1-key `get` (`get <key>\r\n`, `text_len` bytes in `s.req`) as zero-padded words in
/// `s.key`, read a word at a time from `s.req[4..]` (8-aligned, see [`Scratch`]), with its (unfinished)
/// hash; None if any of its bytes is not a key byte (a space: several keys; a control character):
/// the general scan decides then.
#[inline(always)]
pub fn get_key(s: &mut Scratch, text_len: usize) -> Option<u64> {
    let klen = text_len.wrapping_sub(b"get \r\n".len()) & KEY_LEN_MASK;
    if klen == 0 || klen > MAX_KEY_LEN || klen + b"get \r\n".len() != text_len {
        return None;
    }
    volatile_write(&mut s.key.len, klen as u32);
    let mut hash = hash_init(klen as u32);
    let src = s.req.as_ptr().wrapping_add(GET_KEY_OFF).cast::<u64>();
    // The words before the last, then the last one, zero-padded: a loop without per-word tail logic
    // compiles to a count-down the verifier sees end (it tracks the count's range shrinking).
    let full = (klen - 1) / 8;
    for i in 0..KEY_WORDS {
        if i >= full {
            break;
        }
        // SAFETY: `s.req[GET_KEY_OFF..]` is 8-aligned (asserted in `scratch`) and holds KEY_WORDS words
        // (XDP_REQ_MAX bytes); `i` is masked into range.
        let w = unsafe { src.add(i & (KEY_WORDS - 1)).read() };
        if non_key_bytes(w) != 0 {
            return None;
        }
        s.key.data_words()[i & (KEY_WORDS - 1)] = w;
        hash = hash_step(hash, w);
    }
    let last = full & (KEY_WORDS - 1);
    // SAFETY: as above.
    let w = unsafe { src.add(last).read() };
    let valid = tail_mask(klen - full * 8);
    let w = w & valid;
    if non_key_bytes(w) & valid != 0 {
        return None;
    }
    s.key.data_words()[last] = w;
    Some(hash_step(hash, w))
}

/// Reads the key that starts at `s.req[start]` up to the first byte that is not a key byte (its
/// delimiter) into `s.key` as zero-padded words, a word at a time, and returns its length and
/// (unfinished) hash. Err for a key longer than `MAX_KEY_LEN`. `s.req` must hold a non-key byte at or
/// before the end of the text (the request's `\r`), which stops the scan; a word may read past the text,
/// never past `Scratch` (see there).
#[inline(always)]
pub fn read_key(s: &mut Scratch, start: usize) -> Result<(usize, u64), Counter> {
    // The key's words are made from aligned words of `s.req` (an unaligned load would be compiled to eight
    // byte loads): word i of the key is the end of aligned word q + i and the start of the next one.
    let base = s.req.as_ptr().wrapping_sub(GET_KEY_OFF).cast::<u64>();
    let first = (start & REQ_MASK) + GET_KEY_OFF;
    let (q, shift) = (first / 8, (first % 8) * 8);
    // SAFETY: `base` is 8-aligned and every word index is masked below REQ_WORDS, which `Scratch` holds
    // from there (both asserted in `scratch`): the reads stay within the struct.
    let word = |i: usize| unsafe { base.add(i & (REQ_WORDS - 1)).read() };
    let mut lo = word(q);
    let mut klen = MAX_KEY_LEN + 1;
    // Enough words to reach the delimiter of the longest key.
    for i in 0..=MAX_KEY_LEN / 8 {
        let hi = word(q + i + 1);
        // Two shifts for the high part: one by 64 - shift would be by 64 (not 0) when shift is 0.
        let w = (lo >> shift) | ((hi << 1) << (63 - shift));
        lo = hi;
        let m = non_key_bytes(w);
        if m == 0 {
            s.key.data_words()[i & (KEY_WORDS - 1)] = w;
            continue;
        }
        let j = first_flagged_byte(m);
        if j != 0 {
            s.key.data_words()[i & (KEY_WORDS - 1)] = w & tail_mask(j);
        }
        klen = i * 8 + j;
        break;
    }
    if klen == 0 || klen > MAX_KEY_LEN {
        return Err(Counter::PassNotGet);
    }
    volatile_write(&mut s.key.len, klen as u32);
    let klen = volatile_read(&s.key.len) as usize & KEY_LEN_MASK;
    let words = klen.div_ceil(8);
    let mut hash = hash_init(klen as u32);
    for i in 0..KEY_WORDS {
        if i >= words {
            break;
        }
        hash = hash_step(hash, s.key.data_words()[i & (KEY_WORDS - 1)]);
    }
    Ok((klen, hash))
}

/// The index (0 to 7) of the lowest byte whose high bit is set in `m` (not 0), as [`non_key_bytes`]
/// flags them: below that bit every byte's bits are clear, so the bytes below it are counted.
#[inline(always)]
fn first_flagged_byte(m: u64) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let lowest = m & m.wrapping_neg();
    // (1 << 8j) - 1 is j bytes of 0xff; one bit of each summed into the top byte.
    ((((lowest >> 7).wrapping_sub(1) & ONES).wrapping_mul(ONES)) >> 56) as usize
}

/// The mask of the first `n` bytes (1 to 8) of a little-endian word.
#[inline(always)]
fn tail_mask(n: usize) -> u64 {
    u64::MAX >> ((64 - n * 8) & 63)
}

/// Offset in `Scratch::req` of the key of `get <key>`.
pub const GET_KEY_OFF: usize = b"get ".len();

/// The high bit of each byte of `w` that is a control character, a space or DEL (not a key byte:
/// `request::is_key_byte`), and possibly of bytes above such a byte (little-endian: later in the key),
/// so the word has a non-key byte exactly when the result is not 0. The usual SWAR tests: a byte
/// below 0x21 borrows in `w - 0x21..21` while its own high bit is clear; a byte equal to 0x7f is a zero
/// byte of `w ^ 0x7f..7f`. A borrow only moves towards higher bytes and only starts at a byte that
/// matches, so the caller may mask off bytes above the key.
#[inline(always)]
fn non_key_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = w.wrapping_sub(ONES * 0x21) & !w;
    let x = w ^ (ONES * 0x7f);
    let del = x.wrapping_sub(ONES) & !x;
    (below | del) & HIGH
}

/// Finds the slot answering for the key in `s.key` (zero-padded words and length; `hash` its unfinished
/// hash) and checks it is live. What it reads may be torn: only a copy made before the sequence number
/// is found unchanged counts.
#[inline(always)]
pub fn lookup(s: &mut Scratch, hash: u64) -> Result<Hit, Counter> {
    // Re-read the length from memory: the key loops' exits taught the verifier a different exact word
    // count on each exit path; an unknown value lets those paths merge here instead of multiplying.
    let klen = volatile_read(&s.key.len) as usize & KEY_LEN_MASK;
    if klen == 0 {
        return Err(Counter::PassNotGet);
    }
    let full = (klen - 1) / 8;
    // The key lives in one of the four slots of its two pairs, or nowhere. The tags in the slots' words
    // of SEQS pick the slot; the full check under the seqlock below decides.
    let hash = hash_finish(hash);
    let (a, b) = slot_pairs(hash, maps::slot_mask());
    let tag = slot_tag(hash);
    // Touch the first pair's slots before their words in SEQS are read: the key usually lives in one of
    // them, and these loads do not depend on the words, so their misses (TLB and cache line: the slots
    // are spread over the whole map) overlap the words' instead of following them.
    touch(a);
    touch(a | 1);
    // Seqlock read: user space makes the sequence odd, rewrites the slot, makes it even again. What is
    // read between two equal even words is one consistent state; anything read here may be torn
    // until that final check, so every length is bounded before use. The word the tag was found in is
    // the first read.
    let (idx, seq1) = match way(a, tag) {
        Some(w) => w,
        None => way(b, tag).ok_or(Counter::PassMiss)?,
    };
    let slot = Slot::at(idx).ok_or(Counter::PassMiss)?;
    // The reply text's next lines, which the copy reads only much later: their misses now overlap the
    // first line's instead of following it.
    slot.prefetch_reply();
    if seq1 & 1 != 0 {
        return Err(Counter::PassBusy);
    }
    // The slot may hold another key with the same index, or none. Its key is in its reply text, followed
    // by the rest of the `VALUE` line: the last word is compared up to the key's end only. (The other
    // fields are read after the key: they share its cache line, and fewer values live across the loop.)
    if slot.key_len() != klen {
        return Err(Counter::PassMiss);
    }
    for i in 0..KEY_WORDS {
        if i >= full {
            break;
        }
        if slot.key_word(i) != s.key.data_words()[i & (KEY_WORDS - 1)] {
            return Err(Counter::PassMiss);
        }
    }
    let last = full & (KEY_WORDS - 1);
    if slot.key_word(last) & tail_mask(klen - full * 8) != s.key.data_words()[last] {
        return Err(Counter::PassMiss);
    }
    let hdr = field!(slot, hdr_len) as usize;
    let cas_len = field!(slot, cas_len) as usize;
    let total = field!(slot, total_len) as usize;
    let expire_ns = field!(slot, expire_ns);
    let gen = field!(slot, gen);
    if total > CACHE_ENTRY_BUF || hdr > total || cas_len > CAS_FIELD_LEN {
        return Err(Counter::PassBusy);
    }
    // The clock only for items that can expire.
    if expire_ns != 0 && now() >= expire_ns {
        return Err(Counter::PassExpired);
    }
    if CONFIG.get(CONFIG_FLUSH_GEN).is_none_or(|g| *g != gen) {
        return Err(Counter::PassFlushed);
    }
    Ok(Hit { idx, seq1, hdr, cas_len, total })
}

/// How much of a slot's reply text [`Slot::prefetch_reply`] brings in: a `VALUE` line with a short key
/// and a 100-byte value (a common size), whatever the slot's alignment to cache lines.
const PREFETCH_REPLY: usize = 160;
const _: () = assert!(PREFETCH_REPLY <= CACHE_ENTRY_BUF);

/// Loads slot `idx`'s first line (its key length) and drops the value: a prefetch.
#[inline(always)]
fn touch(idx: u32) {
    if let Some(slot) = Slot::at(idx) {
        // A volatile load: the compiler must not drop it as unused.
        let _ = slot.key_len();
    }
}

/// The slot of the pair at `base` whose word in SEQS carries this tag, with that word, if any.
#[inline(always)]
fn way(base: u32, tag: u32) -> Option<(u32, u64)> {
    for idx in [base, base | 1] {
        let word = Seq(SEQS.get_ptr(idx)?).read();
        if (word >> 32) as u32 == tag {
            return Some((idx, word));
        }
    }
    None
}

/// The kernel's monotonic clock, which user space converts item expiry times to.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}
