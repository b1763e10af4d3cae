//! What the XDP programs of this package share: the frame layout ([`headers`]) and bounds-checked
//! frame access ([`packet`]). The programs themselves are this package's binaries: `kv-ebpf`
//! (src/main.rs, the cache's `kv_xdp`) and `kv-reflect` (src/bin/kv-reflect.rs, the benchmark's
//! `kv_reflect`), each built into its own object for `bpfel-unknown-none` by kv-user's build script.
#![no_std]
// Inline assembly for word copies at any alignment (`packet::copy_word`); kv-ebpf is built
// with nightly for the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod headers;
pub mod packet;

/// What `kv_xdp` writes into a frame's metadata to hand it to `kv_tc` (with the UDP port in the low 16
/// bits, so that the `kv_tc` of another instance on the same interface leaves it alone): every key hit,
/// but the reply needs more room than the XDP frame has. Only a frame carrying it is looked at by `kv_tc`.
pub const TC_MARK: u32 = u32::from_le_bytes(*b"\0\0kv");

/// The mark for a request to `port`.
#[inline(always)]
pub const fn tc_mark(port: u16) -> u32 {
    TC_MARK | port as u32
}

/// The one panic handler of each program. Nothing in the programs may panic (the verifier would refuse
/// the endless loop): every index is masked or checked, so the compiler drops every panic path.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Reads `*r` with a volatile load: the compiler may neither fold a value it knows into it nor drop it.
/// This keeps bounds checks the verifier needs (it tracks registers, not what the compiler proved),
/// and re-reads memory that changed behind the compiler's back (a `bpf_loop` callback, the loader).
#[inline(always)]
pub fn volatile_read<T: Copy>(r: &T) -> T {
    // SAFETY: a reference is valid and aligned for reads.
    unsafe { core::ptr::read_volatile(r) }
}

/// Writes `*r` with a volatile store (see [`volatile_read`]).
#[inline(always)]
pub fn volatile_write<T: Copy>(r: &mut T, v: T) {
    // SAFETY: a mutable reference is valid and aligned for writes.
    unsafe { core::ptr::write_volatile(r, v) }
}
