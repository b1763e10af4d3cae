//! Benchmark-only XDP reflector (`kv_reflect`), an object of its own so that the cache's object holds
//! only `kv_xdp` and its maps: the physical ceiling of answering from XDP on a path. Every IPv4 UDP
//! datagram to `KV_REFLECT_PORT` goes back to its sender unchanged but for swapped MAC addresses, IP
//! addresses and UDP ports and a UDP checksum of 0 (legal over IPv4; veth's offload would otherwise
//! leave a partial one). Lengths do not change, and the IPv4 header checksum is invariant under
//! swapping its two address words, so nothing else needs fixing. Everything else passes.
//!
//! Built for `bpfel-unknown-none` by kv-user's build script (see `kv_user::bpf::attach_reflector`); on
//! the host it compiles to an empty binary.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use kv_ebpf::{
        headers::{
            EthHdr, Ipv4Hdr, UdpHdr, ETH_HLEN, ETH_P_IPV4, IPPROTO_UDP, IPV4_FRAGMENT_MASK, IPV4_NO_OPTIONS, IP_HLEN,
        },
        packet::{ptr_at_mut, OutOfBounds},
        volatile_read,
    };

    /// UDP port the reflector answers; the loader overrides it. 0: reflect nothing (a pure
    /// pass-through program, as the peer veth needs for native XDP_TX replies to arrive).
    #[unsafe(no_mangle)]
    static KV_REFLECT_PORT: u16 = 0;

    #[xdp]
    pub fn kv_reflect(ctx: XdpContext) -> u32 {
        match try_reflect(&ctx) {
            Ok(true) => xdp_action::XDP_TX,
            Ok(false) | Err(OutOfBounds) => xdp_action::XDP_PASS,
        }
    }

    /// Ok(true) once the datagram was turned around.
    #[inline(always)]
    fn try_reflect(ctx: &XdpContext) -> Result<bool, OutOfBounds> {
        let port = volatile_read(&KV_REFLECT_PORT);
        if port == 0 {
            return Ok(false);
        }
        let eth = ptr_at_mut::<EthHdr>(ctx, 0)?;
        let ip = ptr_at_mut::<Ipv4Hdr>(ctx, ETH_HLEN)?;
        let udp = ptr_at_mut::<UdpHdr>(ctx, ETH_HLEN + IP_HLEN)?;
        // SAFETY: the three pointers were bounds-checked against `data_end` by `ptr_at_mut` and point
        // into the frame this run owns; the header types have alignment 1. Fields are read and swapped
        // in place through the raw pointers, never borrowed.
        unsafe {
            if (*eth).ether_type != ETH_P_IPV4 {
                return Ok(false);
            }
            // No IP options (the UDP header is then at a fixed offset), not a fragment, UDP.
            if (*ip).ver_ihl != IPV4_NO_OPTIONS
                || u16::from_be_bytes((*ip).frag_off) & IPV4_FRAGMENT_MASK != 0
                || (*ip).proto != IPPROTO_UDP
            {
                return Ok(false);
            }
            if u16::from_be_bytes((*udp).dst_port) != port {
                return Ok(false);
            }
            // Byte by byte: a whole-array swap goes through the stack.
            for i in 0..6 {
                core::ptr::swap(&raw mut (*eth).dst[i], &raw mut (*eth).src[i]);
            }
            for i in 0..4 {
                core::ptr::swap(&raw mut (*ip).src[i], &raw mut (*ip).dst[i]);
            }
            for i in 0..2 {
                core::ptr::swap(&raw mut (*udp).src_port[i], &raw mut (*udp).dst_port[i]);
            }
            (*udp).check = [0, 0];
        }
        Ok(true)
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
