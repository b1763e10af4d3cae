//! The XDP program's per-CPU counters: their indices in the `COUNTERS` array map and their stat names.

/// Index of each per-CPU counter in the `COUNTERS` array map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the XDP program looked at.
    Seen = 0,
    /// Requests answered from the kernel cache (XDP_TX).
    Hits,
    /// Keys answered from the kernel cache.
    HitKeys,
    /// Passed: neither IPv4 nor IPv6 (ARP, VLAN-tagged, ...).
    PassNotIpv4,
    /// Passed: IPv4 options or a fragment.
    PassIpOptionsOrFragment,
    /// Passed: not UDP.
    PassNotUdp,
    /// Passed: UDP to another port, or to an address other than the one the server listens on.
    PassOtherPort,
    /// Passed: lengths that do not add up, truncated, or a multi-datagram frame.
    PassMalformed,
    /// Passed: a command other than get/gets (text) or get/getk (binary), or a syntax the XDP path does
    /// not handle exactly.
    PassNotGet,
    /// Passed: a key not in the kernel cache.
    PassMiss,
    /// Passed: a key whose kernel entry has expired.
    PassExpired,
    /// Passed: the reply would not fit one datagram, or no program could grow the frame to it.
    PassTooBig,
    /// Passed: a key whose kernel entry predates the last flush_all.
    PassFlushed,
    /// Passed: the source address is not in the UDP allowlist (user space ignores it too).
    PassNotAllowed,
    /// Passed: the key's slot was being rewritten by user space while it was read.
    PassBusy,
    /// Passed: the slot was rewritten while its reply was copied into the packet; the request was
    /// restored byte for byte first.
    PassTorn,
    /// Every key hit, but the frame had no room to grow to the reply (a veth frame has only its
    /// headroom): handed to the TC program, which answers from the skb (or passes with a reason).
    ToTc,
    /// Requests the TC program answered (also counted in `Hits`).
    TcHits,
    /// Requests over IPv6 answered in the kernel (also counted in `Hits`).
    Ipv6Hits,
    /// Binary-protocol `get`/`getk` requests answered in the kernel (also counted in `Hits`).
    BinHits,
    /// TC replies sent as the XDP program had assembled them, without looking the keys up again (also
    /// counted in `TcHits`).
    TcHandoffs,
}

/// Number of slots in the `COUNTERS` map.
pub const COUNTER_SLOTS: u32 = 21;

/// All counters with their stat names, for `stats`, in index order (`COUNTERS[c as usize].0 == c`).
pub const COUNTERS: [(Counter, &str); COUNTER_SLOTS as usize] = [
    (Counter::Seen, "xdp_packets"),
    (Counter::Hits, "xdp_hits"),
    (Counter::HitKeys, "xdp_hit_keys"),
    (Counter::PassNotIpv4, "xdp_pass_not_ipv4"),
    (Counter::PassIpOptionsOrFragment, "xdp_pass_ip_options_or_fragment"),
    (Counter::PassNotUdp, "xdp_pass_not_udp"),
    (Counter::PassOtherPort, "xdp_pass_other_port"),
    (Counter::PassMalformed, "xdp_pass_malformed"),
    (Counter::PassNotGet, "xdp_pass_not_get"),
    (Counter::PassMiss, "xdp_pass_miss"),
    (Counter::PassExpired, "xdp_pass_expired"),
    (Counter::PassTooBig, "xdp_pass_too_big"),
    (Counter::PassFlushed, "xdp_pass_flushed"),
    (Counter::PassNotAllowed, "xdp_pass_not_allowed"),
    (Counter::PassBusy, "xdp_pass_busy"),
    (Counter::PassTorn, "xdp_pass_torn"),
    (Counter::ToTc, "xdp_to_tc"),
    (Counter::TcHits, "xdp_tc_hits"),
    (Counter::Ipv6Hits, "xdp_hits_ipv6"),
    (Counter::BinHits, "xdp_hits_binary"),
    (Counter::TcHandoffs, "xdp_tc_handoffs"),
];

impl Counter {
    /// Every counter, in index order.
    pub fn all() -> impl ExactSizeIterator<Item = Counter> + Clone {
        COUNTERS.iter().map(|&(c, _)| c)
    }

    /// The counter's stat name (`xdp_...`).
    pub const fn name(self) -> &'static str {
        COUNTERS[self as usize].1
    }
}

/// The counter with this `COUNTERS` map index; the index itself back if there is none.
impl TryFrom<u32> for Counter {
    type Error = u32;

    fn try_from(v: u32) -> Result<Counter, u32> {
        Ok(match v {
            0 => Counter::Seen,
            1 => Counter::Hits,
            2 => Counter::HitKeys,
            3 => Counter::PassNotIpv4,
            4 => Counter::PassIpOptionsOrFragment,
            5 => Counter::PassNotUdp,
            6 => Counter::PassOtherPort,
            7 => Counter::PassMalformed,
            8 => Counter::PassNotGet,
            9 => Counter::PassMiss,
            10 => Counter::PassExpired,
            11 => Counter::PassTooBig,
            12 => Counter::PassFlushed,
            13 => Counter::PassNotAllowed,
            14 => Counter::PassBusy,
            15 => Counter::PassTorn,
            16 => Counter::ToTc,
            17 => Counter::TcHits,
            18 => Counter::Ipv6Hits,
            19 => Counter::BinHits,
            20 => Counter::TcHandoffs,
            _ => return Err(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_in_index_order_and_round_trips() {
        assert_eq!(Counter::all().len(), COUNTER_SLOTS as usize);
        for (i, (c, name)) in COUNTERS.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
            assert_eq!(Counter::try_from(i as u32), Ok(*c));
            assert_eq!(c.name(), *name);
            assert!(name.starts_with("xdp_"));
        }
        assert!(Counter::all().eq(COUNTERS.iter().map(|(c, _)| *c)));
        assert_eq!(Counter::try_from(COUNTER_SLOTS), Err(COUNTER_SLOTS));
        assert_eq!(Counter::try_from(u32::MAX), Err(u32::MAX));
    }
}
