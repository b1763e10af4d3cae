//! Layout of the frames the programs look at: Ethernet, IPv4 without options or IPv6 without extension
//! headers, UDP, then memcached's UDP frame header ([`kv_common::FrameHeader`]). The header types are byte arrays only (alignment 1, no
//! padding, every bit pattern valid), so they can be read straight from packet memory at any offset.

use kv_common::UDP_FRAME_HEADER_LEN;

use crate::packet::{as_bytes, Plain};

/// Ethernet header (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// IPv4 header without options (IHL 5).
pub const IP_HLEN: usize = 20;
/// UDP header.
pub const UDP_HLEN: usize = 8;
/// Offset of the UDP payload (memcached's frame header) in a frame.
pub const UDP_PAYLOAD_OFF: usize = ETH_HLEN + IP_HLEN + UDP_HLEN;
/// Offset of the memcached text after Ethernet, IPv4 (no options), UDP and the frame header.
pub const TEXT_OFF: usize = UDP_PAYLOAD_OFF + UDP_FRAME_HEADER_LEN;

/// IPv6 header (extension headers are not looked at: such datagrams go to the stack).
pub const IP6_HLEN: usize = 40;
/// Offset of the memcached text in an IPv6 frame.
pub const TEXT6_OFF: usize = ETH_HLEN + IP6_HLEN + UDP_HLEN + UDP_FRAME_HEADER_LEN;

/// EtherType of IPv4, as on the wire.
pub const ETH_P_IPV4: [u8; 2] = 0x0800u16.to_be_bytes();
/// EtherType of IPv6, as on the wire.
pub const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();
/// Version 4, IHL 5 (20 bytes, no options).
pub const IPV4_NO_OPTIONS: u8 = 0x45;
/// IPv4 protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 flags/fragment-offset bits that mark a fragment: MF and the offset (DF is fine).
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// Defines a wire header: `#[repr(C)]` with byte fields only, `$len` bytes, [`Plain`].
macro_rules! header {
    ($(#[$doc:meta])* $name:ident[$len:expr] { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct $name {
            $(pub $field: $ty),*
        }
        const _: () = assert!(size_of::<$name>() == $len && align_of::<$name>() == 1);
        // SAFETY: `#[repr(C)]` with `u8` and `[u8; N]` fields only: alignment 1, no padding (the size
        // is asserted above), and every bit pattern is a valid value.
        unsafe impl Plain for $name {}
    };
}

header! {
    /// Ethernet header (no VLAN tag).
    EthHdr[ETH_HLEN] { dst: [u8; 6], src: [u8; 6], ether_type: [u8; 2] }
}

header! {
    /// IPv4 header without options; multi-byte fields big-endian.
    Ipv4Hdr[IP_HLEN] {
        ver_ihl: u8, tos: u8, tot_len: [u8; 2], id: [u8; 2], frag_off: [u8; 2], ttl: u8, proto: u8,
        check: [u8; 2], src: [u8; 4], dst: [u8; 4],
    }
}

header! {
    /// IPv6 header; multi-byte fields big-endian.
    Ipv6Hdr[IP6_HLEN] {
        ver_tc_flow: [u8; 4], payload_len: [u8; 2], next_hdr: u8, hop_limit: u8, src: [u8; 16], dst: [u8; 16],
    }
}

header! {
    /// UDP header; fields big-endian.
    UdpHdr[UDP_HLEN] { src_port: [u8; 2], dst_port: [u8; 2], len: [u8; 2], check: [u8; 2] }
}

impl Ipv4Hdr {
    /// The ones' complement sum of the header's ten 16-bit words, folded to 16 bits: 0xffff for a
    /// header whose checksum is right; with the checksum field 0, the complement of the checksum.
    #[inline(always)]
    pub fn csum_fold(&self) -> u16 {
        let b = as_bytes(self);
        let mut sum = 0u32;
        for i in 0..IP_HLEN / 2 {
            sum += u16::from_be_bytes([b[2 * i], b[2 * i + 1]]) as u32;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }
}
