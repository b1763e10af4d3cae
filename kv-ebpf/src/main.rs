//! XDP program of the key-value cache.
//!
//! For now it only counts and passes every packet: the in-kernel GET path lands in a later step.
//! Built for `bpfel-unknown-none` by kv-user's build script; on the host it compiles to an empty binary
//! so that `cargo clippy --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext};
    use kv_common::{Counter, COUNTER_SLOTS};

    /// Per-CPU packet counters, indexed by `kv_common::Counter`.
    #[map(name = "COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

    #[inline(always)]
    fn bump(c: Counter) {
        if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
            // Per-CPU slot: no other CPU writes it, so a plain add is race-free.
            unsafe { *v += 1 };
        }
    }

    #[xdp]
    pub fn kv_xdp(_ctx: XdpContext) -> u32 {
        bump(Counter::Seen);
        bump(Counter::Passed);
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
