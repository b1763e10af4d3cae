//! The per-interface dispatcher (`kv_dispatch`), an object of its own: an interface has one XDP hook, so
//! when several kv-servers (one UDP port each) share an interface, this program is what is attached, and
//! it tail-calls the `kv_xdp` of the instance serving the datagram's UDP port, each with its own cache.
//! `PORTS[port]` is that instance's slot in `PROGS` plus one (0: none), `OWNERS[slot]` who holds it,
//! `HOME` where the dispatcher is attached; anything else passes untouched.
//! The loader (kv_user::kernel::shared) keeps the tables; this program only reads them.
//!
//! Built for `bpfel-unknown-none` by kv-user's build script; on the host it compiles to an empty binary.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, ProgramArray},
        programs::XdpContext,
    };
    use kv_common::{DISPATCH_PORTS, DISPATCH_SLOTS};
    use kv_ebpf::{
        headers::{
            EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IP6_HLEN, IPPROTO_UDP, IPV4_NO_OPTIONS,
            IP_HLEN,
        },
        packet::{load, OutOfBounds},
    };

    /// UDP port → slot in `PROGS` plus one (0: no instance serves it).
    #[map(name = "PORTS")]
    static PORTS: Array<u32> = Array::with_max_entries(DISPATCH_PORTS, 0);

    /// Slot → the `kv_xdp` program of the instance that holds it.
    #[map(name = "PROGS")]
    static PROGS: ProgramArray = ProgramArray::with_max_entries(DISPATCH_SLOTS, 0);

    /// Where this dispatcher is attached (network namespace inode << 32 | ifindex), written by the
    /// loader: a bpf link reports only the ifindex, which repeats across namespaces.
    #[map(name = "HOME")]
    static HOME: Array<u64> = Array::with_max_entries(1, 0);

    /// Slot → its owner (pid << 32 | port), 0 while free: the loader's bookkeeping. Not read per packet:
    /// an instance fills its slot before it enters its port and takes its port out before it frees its
    /// slot, so a port always names a slot that is held (or being emptied: the tail call then fails).
    #[map(name = "OWNERS")]
    static OWNERS: Array<u64> = Array::with_max_entries(DISPATCH_SLOTS, 0);

    #[xdp]
    pub fn kv_dispatch(ctx: XdpContext) -> u32 {
        if let Ok(Some(slot)) = slot(&ctx) {
            // SAFETY: a tail call with this run's own context; on failure (an emptied slot) it returns
            // here and the frame passes.
            unsafe { PROGS.tail_call(&ctx, slot) };
        }
        xdp_action::XDP_PASS
    }

    /// The slot of the instance serving the frame's UDP destination port, if any.
    #[inline(always)]
    fn slot(ctx: &XdpContext) -> Result<Option<u32>, OutOfBounds> {
        let eth = load::<EthHdr>(ctx, 0)?;
        let udp_off = if eth.ether_type == ETH_P_IPV4 {
            // Only what kv_xdp could answer: no options (the UDP header at a fixed offset), UDP.
            let ip = load::<Ipv4Hdr>(ctx, ETH_HLEN)?;
            if ip.ver_ihl != IPV4_NO_OPTIONS || ip.proto != IPPROTO_UDP {
                return Ok(None);
            }
            ETH_HLEN + IP_HLEN
        } else if eth.ether_type == ETH_P_IPV6 {
            if load::<Ipv6Hdr>(ctx, ETH_HLEN)?.next_hdr != IPPROTO_UDP {
                return Ok(None);
            }
            ETH_HLEN + IP6_HLEN
        } else {
            return Ok(None);
        };
        let port = u16::from_be_bytes(load::<UdpHdr>(ctx, udp_off)?.dst_port);
        if port == 0 {
            // No socket receives port 0, so this branch costs a served datagram nothing; it keeps HOME and
            // OWNERS among the program's maps, where instances find them (by the program's map ids). Slot
            // DISPATCH_SLOTS does not exist: the tail call fails and the frame passes.
            return Ok(HOME.get(0).zip(OWNERS.get(0)).map(|_| DISPATCH_SLOTS));
        }
        Ok(PORTS.get(port as u32).and_then(|&s| s.checked_sub(1)))
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
