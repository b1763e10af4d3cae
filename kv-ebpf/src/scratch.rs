//! The per-CPU working memory of `kv_xdp` (the BPF stack is only 512 bytes): the request text, the
//! state of the key scan, and the reply frame being assembled. Only this program uses these types.

use kv_common::{CacheKey, UDP_FRAME_HEADER_LEN, XDP_REQ_MAX};
use kv_ebpf::headers::{ETH_HLEN, IP6_HLEN, TEXT6_OFF, TEXT_OFF, UDP_HLEN};

/// Size of the scratch buffer the reply is assembled in: a power of two (indices are masked with
/// `OUT_BUF - 1`, which the verifier can follow) and more than twice the largest frame, so that
/// `offset + length` can never leave it even though the verifier tracks the two bounds separately.
pub const OUT_BUF: usize = 4096;
/// Index mask of `Scratch::out`.
pub const OUT_MASK: usize = OUT_BUF - 1;
/// Bound of one copy into `Scratch::out` (offset and length each stay below it).
pub const OUT_HALF_MASK: usize = OUT_BUF / 2 - 1;
/// Index mask of `Scratch::req`.
pub const REQ_MASK: usize = XDP_REQ_MAX - 1;
/// 8-byte words `lookup::read_key` may read from 4 bytes before `req` (a power of two, more than the
/// `XDP_REQ_MAX + 4 + 8 + 256` bytes a key scan can reach from there).
pub const REQ_WORDS: usize = 512;
const _: () = assert!(REQ_WORDS.is_power_of_two() && REQ_WORDS * 8 >= XDP_REQ_MAX + 4 + 8 + 256);
const _: () = assert!(OUT_BUF.is_power_of_two() && XDP_REQ_MAX.is_power_of_two());

/// Where the reply text starts in `Scratch::out`, for either family: after the longer (IPv6) headers,
/// which are written right before it (the IPv4 ones 20 bytes further in).
pub const REPLY_OFF: usize = TEXT6_OFF;
/// Where an IPv6 reply's UDP header is in `Scratch::out` (its frame starts at 0).
pub const UDP6_OFF: usize = ETH_HLEN + IP6_HLEN;
/// Bytes per `bpf_csum_diff` call (its limit).
pub const CSUM_CHUNK: usize = 512;

/// State of the XDP program's key scan, shared between the program and its `bpf_loop` callback.
///
/// It lives in the per-CPU scratch map rather than on the BPF stack on purpose: the verifier does not
/// track the contents of map values, so every load from here is an unknown scalar and the state the
/// callback leaves behind is the same after every iteration. Mutable state on the caller's stack (a key
/// counter, an output offset) differs from one iteration to the next, and since kernel 6.8 the verifier
/// re-verifies a `bpf_loop` callback until the caller's state stops changing (a new state must lie within
/// an old one, whether or not it is marked precise): it never converged.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanState {
    /// Offset in `Scratch::req` of the key being scanned.
    pub key_start: u64,
    /// Set once the last key ended exactly at `body_end`.
    pub done: u64,
    /// Offset of the `\r\n` that ends the request.
    pub body_end: u64,
    /// Next free byte of `Scratch::out`.
    pub out: u64,
    /// Keys appended so far.
    pub keys: u64,
    /// 1 for `gets` (reply with CAS), 0 for `get`.
    pub cas: u64,
    /// 0 while fine, else the `Counter` to pass with.
    pub err: u64,
}

/// Per-CPU scratch space of the XDP program.
///
/// `hdrs` and `req` are contiguous: a request is read into them with one helper call, headers and text
/// (`request::read_request`), the IPv4 headers [`V4_HDRS`] bytes into `hdrs`. The reply's headers are
/// made from these (`reply::write_headers`), and a torn direct reply restored from them. They are placed
/// so that the key of `get <key>` (`req[4..]`) is 8-aligned, to be read a word at a time
/// (`lookup::get_key`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub scan: ScanState,
    /// This CPU's last `handoff` number.
    pub handoffs: u32,
    _pad0: u32,
    /// The key being looked up, as zero-padded words.
    pub key: CacheKey,
    _pad: [u8; 6],
    /// The request's Ethernet, IP, UDP and frame headers, ending where `req` starts.
    pub hdrs: [u8; TEXT6_OFF],
    /// The request text (after the frame header).
    pub req: [u8; XDP_REQ_MAX],
    _pad2: [u8; 4],
    /// The whole reply frame: Ethernet, IPv4, UDP and frame headers, then the reply text.
    pub out: [u8; OUT_BUF],
}
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Scratch, hdrs) + TEXT6_OFF == offset_of!(Scratch, req));
    assert!((offset_of!(Scratch, req) + crate::lookup::GET_KEY_OFF).is_multiple_of(8));
    assert!(offset_of!(Scratch, out).is_multiple_of(8));
    // `lookup::read_key` reads aligned words from `req[GET_KEY_OFF..]` back (see `REQ_WORDS`).
    assert!(offset_of!(Scratch, req) - crate::lookup::GET_KEY_OFF + REQ_WORDS * 8 <= size_of::<Scratch>());
};

/// Where an IPv4 request's headers start in `Scratch::hdrs` (IPv6 ones at 0): either way they end at
/// `req`, and the UDP and frame headers are at the same place, [`HDR_UDP`].
pub const V4_HDRS: usize = TEXT6_OFF - TEXT_OFF;
/// Where the request's UDP header is in `Scratch::hdrs`, for either family.
pub const HDR_UDP: usize = TEXT6_OFF - UDP_FRAME_HEADER_LEN - UDP_HLEN;

impl Scratch {
    /// `hdrs[V4_HDRS..]` and `req` as one buffer: an IPv4 request frame, headers then text.
    #[inline(always)]
    pub fn frame_v4(&mut self) -> &mut [u8] {
        // SAFETY: `hdrs` and `req` are adjacent fields of this `#[repr(C)]` struct (asserted above), so the
        // `TEXT_OFF + XDP_REQ_MAX` bytes from `hdrs[V4_HDRS]` are the end of one and all of the other,
        // borrowed mutably with `self`.
        unsafe { core::slice::from_raw_parts_mut(self.hdrs.as_mut_ptr().add(V4_HDRS), TEXT_OFF + XDP_REQ_MAX) }
    }

    /// `hdrs` and `req` as one buffer: an IPv6 request frame, headers then text.
    #[inline(always)]
    pub fn frame_v6(&mut self) -> &mut [u8] {
        // SAFETY: as for `frame_v4`, from the start of `hdrs`.
        unsafe { core::slice::from_raw_parts_mut(self.hdrs.as_mut_ptr(), TEXT6_OFF + XDP_REQ_MAX) }
    }

    /// The IPv4 request's headers, as read.
    #[inline(always)]
    pub fn hdrs_v4(&self) -> &[u8; TEXT_OFF] {
        self.hdrs.last_chunk().unwrap_or(&[0; TEXT_OFF])
    }
}
