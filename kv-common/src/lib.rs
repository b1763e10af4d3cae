//! Types shared by the eBPF programs (kv-ebpf) and the user-space server (kv-user).
//! Everything here is `no_std` and `#[repr(C)]` where it crosses the kernel boundary.
#![no_std]

/// Default memcached port, TCP and UDP.
pub const DEFAULT_PORT: u16 = 11211;
/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;
/// memcached's UDP frame header: request id, sequence number, datagram count, reserved (all big-endian u16).
pub const UDP_FRAME_HEADER_LEN: usize = 8;
/// Largest UDP reply payload per datagram, header included (memcached's UDP_MAX_PAYLOAD_SIZE).
pub const UDP_MAX_PAYLOAD: usize = 1400;

/// Index of each per-CPU counter in the `COUNTERS` array map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the XDP program looked at.
    Seen = 0,
    /// Packets handed to the network stack unchanged.
    Passed = 1,
}

/// Number of slots in the `COUNTERS` map.
pub const COUNTER_SLOTS: u32 = 2;

/// XDP verdicts (linux/bpf.h `enum xdp_action`), for user-space code that inspects test runs.
pub mod xdp_action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
}
