//! The per-CPU working memory of `kv_xdp` (the BPF stack is only 512 bytes): the request text, the
//! state of the key scan, and the reply frame being assembled. Only this program uses these types.

use kv_common::{CacheKey, XDP_REQ_MAX};

use kv_ebpf::headers::{ETH_HLEN, IP6_HLEN, TEXT6_OFF, TEXT_OFF};

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
const _: () = assert!(OUT_BUF.is_power_of_two() && XDP_REQ_MAX.is_power_of_two());

/// Where the reply text starts in `Scratch::out`, for either family: after the longer (IPv6) headers,
/// which are written right before it (the IPv4 ones 20 bytes further in).
pub const REPLY_OFF: usize = TEXT6_OFF;
/// Where an IPv6 reply's UDP header is in `Scratch::out` (its frame starts at 0).
pub const UDP6_OFF: usize = ETH_HLEN + IP6_HLEN;
/// Bytes per `bpf_csum_diff` call (its limit).
pub const CSUM_CHUNK: usize = 512;

/// Room kept for the request's headers (`TEXT_OFF` of them are used).
const ORIG_BUF: usize = 64;

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
    /// Offset in `Scratch::req` of the first key; byte `i` of the loop is at `base + i`.
    pub base: u64,
    /// Offset of the key being scanned.
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
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub scan: ScanState,
    /// The key being looked up, as zero-padded words.
    pub key: CacheKey,
    /// The request text (after the frame header).
    pub req: [u8; XDP_REQ_MAX],
    /// The request's Ethernet, IPv4, UDP and frame headers, to restore a request whose reply was torn.
    pub orig: [u8; TEXT_OFF],
    _orig_pad: [u8; ORIG_BUF - TEXT_OFF],
    /// The whole reply frame: Ethernet, IPv4, UDP and frame headers, then the reply text.
    pub out: [u8; OUT_BUF],
}
