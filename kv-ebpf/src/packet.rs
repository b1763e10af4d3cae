//! Bounds-checked access to the frame of an XDP or TC program ([`Frame`]): the typed pointer helpers
//! [`ptr_at`] and [`ptr_at_mut`] (the verifier only accepts packet access it has seen checked against
//! `data_end`), safe loads and stores of [`Plain`] values built on them, copies a word at a time at any
//! alignment ([`copy_word`]), and safe wrappers of the XDP packet helpers.
//!
//! Frame memory is only ever reached through raw pointers from `ptr_at`, never borrowed: after
//! [`adjust_head`] or [`adjust_tail`] every packet pointer is stale, and must be derived again with
//! `ptr_at` (the verifier refuses the old ones).

use aya_ebpf::{
    helpers::generated as h,
    programs::{TcContext, XdpContext},
};
use core::ffi::c_void;

/// A packet access that would end past `data_end`.
#[derive(Clone, Copy, Debug)]
pub struct OutOfBounds;

/// An XDP helper returned this negative errno.
#[derive(Clone, Copy, Debug)]
pub struct HelperError(pub i64);

/// What the copying wrappers return for a length larger than their buffer (the helpers' own answer).
const EINVAL: HelperError = HelperError(-22);

/// Types that can be read from and written to packet memory as they are.
///
/// # Safety
/// The type has alignment 1 (packet data has no alignment guarantee), no padding, and every bit
/// pattern is a valid value.
pub unsafe trait Plain: Copy {}

// SAFETY: a byte array has alignment 1, no padding, and any contents are valid.
unsafe impl<const N: usize> Plain for [u8; N] {}

/// The bytes of a [`Plain`] value, as they are on the wire.
#[inline(always)]
pub fn as_bytes<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so all `size_of::<T>()` bytes of `*v` are initialised, and they
    // stay borrowed (immutably) for the slice's lifetime; `u8` has alignment 1.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A frame a program reads and writes directly: an XDP buffer, or the linear part of a TC program's skb
/// (which starts at the Ethernet header on ingress, as an XDP frame does).
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Copies `len` frame bytes from `offset` into `dst` (the helper also reaches non-linear data).
    fn load_bytes(&self, offset: u32, dst: &mut [u8], len: u32) -> Result<(), HelperError>;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: &mut [u8], len: u32) -> Result<(), HelperError> {
        if len as usize > dst.len() {
            return Err(EINVAL);
        }
        // SAFETY: the helper writes `len` bytes at `dst`, which holds at least that many (checked above);
        // it bounds the frame side itself.
        check(unsafe { h::bpf_xdp_load_bytes(self.ctx, offset, dst.as_mut_ptr() as *mut c_void, len) })
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: &mut [u8], len: u32) -> Result<(), HelperError> {
        if len as usize > dst.len() {
            return Err(EINVAL);
        }
        // SAFETY: as for XDP: `dst` holds `len` bytes; the helper bounds the skb side itself.
        check(unsafe {
            h::bpf_skb_load_bytes(self.skb.skb as *const c_void, offset, dst.as_mut_ptr() as *mut c_void, len)
        })
    }
}

/// Copies `len` bytes, `len` in [N, 2N], as two blocks of N bytes, a word at a time: the first from
/// offset 0, the second ending at `len` (overlapping the first unless `len` is 2N). A block is fully
/// unrolled and needs one bounds check, where a loop over words re-checks each word against
/// `data_end` (the packet side: `block` gives its pointer, checked for N bytes at an offset, or None).
/// Masked offsets keep the verifier's bounds on both sides without knowing `len`'s range.
///
/// # Safety
/// `src` must point to `len` readable bytes and `dst` (when not the packet) to `len` writable ones;
/// the block pointers must each hold N bytes.
#[inline(always)]
unsafe fn copy_blocks<const N: usize>(
    len: usize,
    src: impl Fn(usize) -> Option<*const u8>,
    dst: impl Fn(usize) -> Option<*mut u8>,
) -> Option<()> {
    // Through memory, so that the compiler keeps the mask (it could prove it redundant from the size
    // class; the verifier cannot).
    let tail = crate::volatile_read(&len.wrapping_sub(N)) & (2 * N - 1);
    for at in [0, tail] {
        let (from, to) = (src(at)?, dst(at)?);
        // SAFETY: both pointers hold N bytes (the caller's promise).
        unsafe { copy_words::<N>(to, from) };
    }
    Some(())
}

/// Copies `len` bytes, `len` in [8, 256], with [`copy_blocks`] of the size class of `len`; None if
/// `len` is out of that range or a block pointer is refused.
///
/// # Safety
/// As for [`copy_blocks`].
#[inline(always)]
unsafe fn copy_sized(
    len: usize,
    src: impl Fn(usize, usize) -> Option<*const u8>,
    dst: impl Fn(usize, usize) -> Option<*mut u8>,
) -> Option<()> {
    // SAFETY: the caller's promise, with `len` in each arm's [N, 2N].
    unsafe {
        match len {
            8..16 => copy_blocks::<8>(len, |at| src(at, 8), |at| dst(at, 8)),
            16..32 => copy_blocks::<16>(len, |at| src(at, 16), |at| dst(at, 16)),
            32..64 => copy_blocks::<32>(len, |at| src(at, 32), |at| dst(at, 32)),
            64..128 => copy_blocks::<64>(len, |at| src(at, 64), |at| dst(at, 64)),
            128..=256 => copy_blocks::<128>(len, |at| src(at, 128), |at| dst(at, 128)),
            _ => None,
        }
    }
}

/// Copies the eight bytes at `from + OFF` to `to + OFF` with one load and one store whatever their
/// alignment, the offset in the instructions themselves (a pointer moved by `OFF` would cost an
/// addition per word, and code the CPU must fetch): LLVM's BPF backend splits an unaligned access
/// (`read_unaligned`) into eight byte accesses, and an aligned one of unaligned memory would be
/// undefined behaviour. A BPF load or store has no alignment requirement of its own: the verifier
/// refuses a misaligned one only where the architecture needs alignment (there the program fails to
/// load; x86-64 does not). Not `pure`: never merged or dropped, as a volatile access, since a cache
/// slot may be rewritten meanwhile.
///
/// # Safety
/// `from + OFF` must point to eight readable bytes and `to + OFF` to eight writable ones that nothing
/// borrows, of packet, map or stack memory.
#[inline(always)]
unsafe fn copy_word<const OFF: usize>(to: *mut u8, from: *const u8) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: one `ldxdw` and one `stxdw` of the bytes the caller vouches for; they write only `v`
    // and those bytes.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({f} + {o})",
            "*(u64 *)({t} + {o}) = {v}",
            f = in(reg) from, t = in(reg) to, o = const OFF, v = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller vouches for the bytes.
    unsafe {
        to.add(OFF).cast::<u64>().write_unaligned(from.add(OFF).cast::<u64>().read_unaligned())
    }
}

/// Copies the first `N` bytes (`N` a multiple of 8, up to 128) from `from` to `to`, a word at a time
/// ([`copy_word`]), fully unrolled.
///
/// # Safety
/// As for [`copy_word`], for all `N` bytes.
#[inline(always)]
unsafe fn copy_words<const N: usize>(to: *mut u8, from: *const u8) {
    macro_rules! words {
        ($($o:literal)*) => {{
            // SAFETY: word `o` ends at `o + 8 <= N`, within the caller's `N` bytes.
            $( if $o < N { unsafe { copy_word::<$o>(to, from) } } )*
        }};
    }
    const { assert!(N.is_multiple_of(8) && N <= 128) };
    words!(0 8 16 24 32 40 48 56 64 72 80 88 96 104 112 120);
}

/// Frames up to this long are read by [`load_prefix`] without a helper call.
pub const INLINE_LOAD_MAX: usize = 128;

/// Copies the frame's first `len` bytes into `dst`: by direct packet access where `len` is in
/// [8, INLINE_LOAD_MAX] (two unrolled blocks of words, see `copy_blocks`), else (or where the frame's
/// linear part is shorter: a TC program's skb) with [`Frame::load_bytes`].
#[inline(always)]
pub fn load_prefix<F: Frame>(ctx: &F, dst: &mut [u8], len: u32) -> Result<(), HelperError> {
    let n = len as usize;
    #[allow(clippy::manual_range_contains)]
    if n < 8 || n > INLINE_LOAD_MAX || n > dst.len() {
        return ctx.load_bytes(0, dst, len);
    }
    let base = dst.as_mut_ptr();
    // SAFETY: the source blocks are checked against the frame by `block`; the destination blocks lie
    // within `dst`: each ends by `n` (a block of N starts at most at n - N), and n <= dst.len().
    let copied =
        unsafe { copy_sized(n, |at, size| block(ctx, at, size), |at, _| Some(base.add(at & (INLINE_LOAD_MAX - 1)))) };
    match copied {
        Some(()) => Ok(()),
        None => ctx.load_bytes(0, dst, len),
    }
}

/// The frame's bytes `[offset, offset + size)`, `size` one of the block sizes of `copy_sized`, if the
/// frame holds them: one bounds check for the whole block.
#[inline(always)]
fn block(ctx: &impl Frame, offset: usize, size: usize) -> Option<*const u8> {
    let p = match size {
        8 => ptr_at::<[u8; 8]>(ctx, offset).map(|p| p.cast()),
        16 => ptr_at::<[u8; 16]>(ctx, offset).map(|p| p.cast()),
        32 => ptr_at::<[u8; 32]>(ctx, offset).map(|p| p.cast()),
        64 => ptr_at::<[u8; 64]>(ctx, offset).map(|p| p.cast()),
        128 => ptr_at::<[u8; 128]>(ctx, offset).map(|p| p.cast()),
        _ => return None,
    };
    p.ok()
}

/// Pointer to a `T` at `offset` of the frame, if the frame holds all `size_of::<T>()` bytes of it.
#[inline(always)]
pub fn ptr_at<T: Plain>(ctx: &impl Frame, offset: usize) -> Result<*const T, OutOfBounds> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(OutOfBounds);
    }
    Ok((start + offset) as *const T)
}

/// Like [`ptr_at`], for writing.
#[inline(always)]
pub fn ptr_at_mut<T: Plain>(ctx: &impl Frame, offset: usize) -> Result<*mut T, OutOfBounds> {
    Ok(ptr_at::<T>(ctx, offset)?.cast_mut())
}

/// The `T` at `offset` of the frame.
#[inline(always)]
pub fn load<T: Plain>(ctx: &impl Frame, offset: usize) -> Result<T, OutOfBounds> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the `size_of::<T>()` bytes at `p` lie within the frame, which this
    // program run owns; `T: Plain` has alignment 1 and accepts any bytes.
    Ok(unsafe { p.read_unaligned() })
}

/// Copies `src` into the frame at `offset`.
#[inline(always)]
pub fn store<T: Plain>(ctx: &impl Frame, offset: usize, src: &T) -> Result<(), OutOfBounds> {
    let p = ptr_at_mut::<T>(ctx, offset)?;
    // SAFETY: `ptr_at_mut` checked that the bytes at `p` lie within the frame, which this program run
    // owns; `src` is a Rust object (stack or map value), so it cannot overlap the frame.
    unsafe { core::ptr::copy_nonoverlapping(src as *const T, p, 1) };
    Ok(())
}

/// Whole frame length, fragments included (`data_end - data` may not be used in arithmetic: the
/// verifier refuses pointer arithmetic on `data_end`).
#[inline(always)]
pub fn buff_len(ctx: &XdpContext) -> u64 {
    // SAFETY: `ctx.ctx` is the context the kernel passed to this program run.
    unsafe { h::bpf_xdp_get_buff_len(ctx.ctx) }
}

#[inline(always)]
fn check(ret: i64) -> Result<(), HelperError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(HelperError(ret))
    }
}

/// Moves the frame's start by `delta` bytes (negative: grows it at the head). Stales packet pointers.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Result<(), HelperError> {
    // SAFETY: `ctx.ctx` is this run's context; no reference into the frame is held across the call
    // (packet access goes through raw pointers re-derived with `ptr_at`).
    check(unsafe { h::bpf_xdp_adjust_head(ctx.ctx, delta) })
}

/// Moves the frame's end by `delta` bytes (positive: grows it). Stales packet pointers.
#[inline(always)]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Result<(), HelperError> {
    // SAFETY: as for `adjust_head`.
    check(unsafe { h::bpf_xdp_adjust_tail(ctx.ctx, delta) })
}

/// Copies `len` bytes of `src` into the frame at `offset` (`bpf_xdp_store_bytes`).
#[inline(always)]
pub fn store_bytes(ctx: &XdpContext, offset: u32, src: &[u8], len: u32) -> Result<(), HelperError> {
    if len as usize > src.len() {
        return Err(EINVAL);
    }
    // SAFETY: the helper only reads `len` bytes at `src` (its argument is `*mut` by the C prototype
    // alone), and `src` holds that many (checked above); it bounds the frame side itself.
    unsafe { store_raw(ctx, offset, src.as_ptr(), len) }
}

/// [`store_bytes`] from a raw pointer: for memory that user space may rewrite meanwhile (a cache slot),
/// which must not be borrowed as a Rust reference.
///
/// # Safety
/// `src` must point to `len` readable bytes of map or stack memory.
#[inline(always)]
pub unsafe fn store_raw(ctx: &XdpContext, offset: u32, src: *const u8, len: u32) -> Result<(), HelperError> {
    // SAFETY: the caller vouches for `src`; the helper only reads it and bounds the frame side itself.
    check(unsafe { h::bpf_xdp_store_bytes(ctx.ctx, offset, src as *mut c_void, len) })
}

/// Replies up to this long are written by [`store_from`] without a helper call (a word per instruction:
/// a 1-key reply with a value of up to about 200 bytes).
pub const INLINE_STORE_MAX: usize = 256;

/// [`store_raw`] by direct packet access where `len` is in [8, INLINE_STORE_MAX] (two unrolled blocks
/// of words, see `copy_blocks`: a helper call costs more than the stores on kernels with return thunks).
///
/// # Safety
/// As for [`store_raw`]: `src` must point to `len` readable bytes of map or stack memory.
#[inline(always)]
pub unsafe fn store_from(ctx: &XdpContext, offset: usize, src: *const u8, len: usize) -> Result<(), HelperError> {
    #[allow(clippy::manual_range_contains)]
    if len < 8 || len > INLINE_STORE_MAX {
        // SAFETY: the caller's promise, passed on.
        return unsafe { store_raw(ctx, offset as u32, src, len as u32) };
    }
    // SAFETY: a source block of N starts at most at len - N, so it lies within the caller's `len`
    // readable bytes (which may be rewritten meanwhile: `copy_word` is never merged or dropped, and any
    // bytes are valid); the packet blocks are checked by `block`.
    let stored = unsafe {
        copy_sized(
            len,
            |at, _| Some(src.add(at & (INLINE_STORE_MAX - 1))),
            |at, size| block(ctx, offset + at, size).map(|p| p.cast_mut()),
        )
    };
    stored.ok_or(EINVAL)
}

/// A frame too short for what its headers announce is a malformed request.
impl From<OutOfBounds> for kv_common::Counter {
    fn from(_: OutOfBounds) -> Self {
        kv_common::Counter::PassMalformed
    }
}
