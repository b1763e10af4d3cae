//! The request: its headers, checked as the network stack and the server's socket would check them,
//! and its `get`/`gets` line, whose keys are looked up and appended to the reply as they are scanned.

use aya_ebpf::{helpers::generated as h, maps::lpm_trie::Key as LpmKey};
use core::ffi::c_void;
use kv_common::{Counter, FrameHeader, UDP_FRAME_HEADER_LEN, XDP_MAX_KEYS, XDP_REQ_MAX};
use kv_ebpf::{
    headers::{
        EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IP6_HLEN, IPPROTO_UDP, IPV4_FRAGMENT_MASK,
        IPV4_NO_OPTIONS, IP_HLEN, TEXT6_OFF, TEXT_OFF, UDP_HLEN,
    },
    packet::{load, load_prefix, Frame},
    volatile_read, volatile_write,
};

use crate::{
    lookup::{get_key, lookup, read_key, Hit, GET_KEY_OFF},
    maps::{self, ALLOW6},
    reply::{append_hit, finish, Reply},
    scratch::{ScanState, Scratch, REPLY_OFF, REQ_MASK},
};

/// Shortest request the program looks at: `get k\r\n`.
pub const MIN_REQ_LEN: usize = b"get k\r\n".len();

/// What the reply needs of the request's headers besides the headers themselves, which
/// [`read_request`] saves in `Scratch::hdrs` (addresses, ports and MACs are taken from there).
pub struct Req {
    pub req_id: u16,
    pub v6: bool,
    /// Bytes of memcached text after the frame header.
    pub text_len: usize,
}

impl Req {
    /// Offset of the memcached text in the frame (and length of the headers before it).
    #[inline(always)]
    pub fn text_off(&self) -> usize {
        if self.v6 {
            TEXT6_OFF
        } else {
            TEXT_OFF
        }
    }
}

/// Checks the Ethernet, IP, UDP and frame headers of a datagram for the server and returns what the
/// reply needs of them; the error is the reason to pass the frame.
pub fn parse_headers<F: Frame>(ctx: &F) -> Result<Req, Counter> {
    let eth = load::<EthHdr>(ctx, 0)?;
    let (udp_off, ip_payload) = if eth.ether_type == ETH_P_IPV4 {
        ipv4(ctx)?
    } else if eth.ether_type == ETH_P_IPV6 {
        ipv6(ctx)?
    } else {
        return Err(Counter::PassNotIpv4);
    };
    let v6 = udp_off != ETH_HLEN + IP_HLEN;
    let udp = load::<UdpHdr>(ctx, udp_off)?;
    if u16::from_be_bytes(udp.dst_port) != maps::port() {
        return Err(Counter::PassOtherPort);
    }
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    let pkt_len = ctx.data_end() - ctx.data();
    if udp_len < UDP_HLEN + UDP_FRAME_HEADER_LEN || ip_payload != udp_len || udp_off + udp_len > pkt_len {
        return Err(Counter::PassMalformed);
    }
    // The stack drops an IPv6 datagram without a UDP checksum (it is mandatory there); so must we.
    if v6 && udp.check == [0, 0] {
        return Err(Counter::PassMalformed);
    }
    let frame = FrameHeader::from_bytes(load(ctx, udp_off + UDP_HLEN)?);
    // A datagram count other than 1 is a multi-datagram request, which user space drops (as memcached
    // does); the sequence number is not looked at, by memcached either.
    if frame.total != 1 {
        return Err(Counter::PassMalformed);
    }
    // The source address read again where it is needed, rather than carried (16 bytes) from `ipv6`.
    let allowed = if v6 {
        ALLOW6.get(LpmKey::new(128, load::<[u8; 16]>(ctx, ETH_HLEN + IP6_SRC)?)).is_some()
    } else {
        maps::allowed_v4(load(ctx, ETH_HLEN + IP_SRC)?)
    };
    if !allowed {
        return Err(Counter::PassNotAllowed);
    }
    Ok(Req { req_id: frame.request_id, v6, text_len: udp_len - UDP_HLEN - UDP_FRAME_HEADER_LEN })
}

/// Offset of the source address in an IPv4 header.
const IP_SRC: usize = 12;
/// Offset of the source address in an IPv6 header.
const IP6_SRC: usize = 8;

/// Offset of the UDP header and IP payload length of an IPv4 datagram, checked as the stack and the
/// server's socket would check it.
#[inline(always)]
fn ipv4<F: Frame>(ctx: &F) -> Result<(usize, usize), Counter> {
    if !maps::listen_v4() {
        return Err(Counter::PassOtherPort);
    }
    let ip = load::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(Counter::PassMalformed);
    }
    if ip.ver_ihl != IPV4_NO_OPTIONS || u16::from_be_bytes(ip.frag_off) & IPV4_FRAGMENT_MASK != 0 {
        return Err(Counter::PassIpOptionsOrFragment);
    }
    if ip.proto != IPPROTO_UDP {
        return Err(Counter::PassNotUdp);
    }
    // The stack drops a header with a bad checksum; so must we, by leaving it to the stack.
    if ip.csum_fold() != 0xffff {
        return Err(Counter::PassMalformed);
    }
    // Only datagrams to the address the server listens on (0: any), as its socket would receive.
    let listen = maps::listen_ip();
    if listen != 0 && u32::from_ne_bytes(ip.dst) != listen {
        return Err(Counter::PassOtherPort);
    }
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip_len < IP_HLEN {
        return Err(Counter::PassMalformed);
    }
    Ok((ETH_HLEN + IP_HLEN, ip_len - IP_HLEN))
}

/// As [`ipv4`], for IPv6 without extension headers.
#[inline(always)]
fn ipv6<F: Frame>(ctx: &F) -> Result<(usize, usize), Counter> {
    if !maps::listen_v6() {
        return Err(Counter::PassOtherPort);
    }
    let ip = load::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    if ip.ver_tc_flow[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    // Extension headers (hop-by-hop options, routing, fragments, ...) are the stack's to interpret.
    match ip.next_hdr {
        IPPROTO_UDP => {}
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => return Err(Counter::PassIpOptionsOrFragment),
        _ => return Err(Counter::PassNotUdp),
    }
    let listen = maps::listen_ip6();
    if listen != [0; 16] && ip.dst != listen {
        return Err(Counter::PassOtherPort);
    }
    Ok((ETH_HLEN + IP6_HLEN, u16::from_be_bytes(ip.payload_len) as usize))
}

/// Reads a request: its headers ([`parse_headers`]) and its text, into scratch, for [`parse_get`].
#[inline(always)]
pub fn read_request<F: Frame>(ctx: &F) -> Result<(Req, &'static mut Scratch), Counter> {
    let req = parse_headers(ctx)?;
    let scratch = maps::scratch().ok_or(Counter::PassMalformed)?;
    let text_len = req.text_len;
    // Two comparisons, not a range check: LLVM folds that into one on a copy of the value, and the
    // verifier would not see the length passed below bounded.
    #[allow(clippy::manual_range_contains)]
    if text_len < MIN_REQ_LEN || text_len > XDP_REQ_MAX {
        return Err(Counter::PassNotGet);
    }
    let n = (text_len & (XDP_REQ_MAX * 2 - 1)) as u32;
    // The headers too, in the same copy: the reply's are made from them, and `serve_direct` restores a
    // torn reply's request from them.
    let loaded = if req.v6 {
        load_prefix(ctx, scratch.frame_v6(), TEXT6_OFF as u32 + n)
    } else {
        load_prefix(ctx, scratch.frame_v4(), TEXT_OFF as u32 + n)
    };
    loaded.map_err(|_| Counter::PassMalformed)?;
    Ok((req, scratch))
}

/// The most common request, `get <key>\r\n` with one key of key bytes only (`text_len` bytes in `s.req`),
/// looked up without the general [`parse_get`]: its key is read and checked a word at a time. For a
/// frame that is `exact`, whose reply is copied straight from the slot. Returns the hit, or the `Counter`
/// to pass with; None for any other request, which `parse_get` then handles.
///
/// Inlined: as a subprogram (returning a scalar, the hit through scratch) its call and return, through
/// the SRSO thunk on this kernel, cost 4-11% of a hit (docs/bench.md). Its temporaries add to the stack
/// frame of `kv_xdp`, which with `parse_get` and its `bpf_loop` callback must stay within 512 bytes: the
/// verifier checks that at every load.
#[inline(always)]
pub fn direct_get(s: &mut Scratch, text_len: usize) -> Option<Result<Hit, Counter>> {
    let r = &s.req;
    if r[..GET_KEY_OFF] != *b"get " || r[(text_len - 2) & REQ_MASK] != b'\r' || r[(text_len - 1) & REQ_MASK] != b'\n' {
        return None;
    }
    let hash = get_key(s, text_len)?;
    Some(lookup(s, hash))
}

/// Parses `get|gets <key>( <key>)*\r\n` from `s.req` (`text_len` bytes) and assembles the reply text in
/// `s.out` after room for the headers (a 1-key `get` answered straight from the slot is [`direct_get`]'s).
/// Any key that is not a live hit, or any syntax the user-space parser might treat differently, makes
/// the whole request pass.
///
/// The keys are read in a `bpf_loop` callback, one key per call (verified once, whatever the key count:
/// an open-coded loop over keys explodes the verifier's path count). All its mutable state is in
/// `s.scan`, in the scratch map, not on the stack: see [`ScanState`] for why. Inlined into each program:
/// a call would return the `Result` through the caller's stack, a pointer the verifier refuses to pass
/// to a subprogram without BTF for it.
#[inline(always)]
pub fn parse_get(s: &mut Scratch, text_len: usize) -> Result<Reply, Counter> {
    let r = &s.req;
    let (pos, cas) = if r[0] == b'g' && r[1] == b'e' && r[2] == b't' && r[3] == b' ' {
        (4u64, 0u64)
    } else if r[0] == b'g' && r[1] == b'e' && r[2] == b't' && r[3] == b's' && r[4] == b' ' {
        (5u64, 1u64)
    } else {
        return Err(Counter::PassNotGet);
    };
    // Exactly one command, ending the datagram with \r\n: the \r also ends the last key's scan.
    if r[(text_len - 2) & REQ_MASK] != b'\r' || r[(text_len - 1) & REQ_MASK] != b'\n' {
        return Err(Counter::PassNotGet);
    }
    // Volatile: the callback writes `s.scan` through its own map pointer, behind this `&mut`'s back.
    let init = ScanState {
        key_start: pos,
        done: 0,
        body_end: (text_len - 2) as u64,
        out: REPLY_OFF as u64,
        keys: 0,
        cas,
        err: 0,
    };
    volatile_write(&mut s.scan, init);
    // One call per key, and one more than the most keys, so that too many keys end in an error.
    // SAFETY: `scan_step` has the callback type bpf_loop expects (`long (*)(u64 index, void *ctx)`) and
    // ignores its context, so a null one is fine; the verifier checks the callback on its own.
    unsafe { h::bpf_loop(XDP_MAX_KEYS as u32 + 1, scan_step as *mut c_void, core::ptr::null_mut(), 0) };
    // Re-read after the loop; to the verifier these are unknown scalars, so bound everything used.
    let st = volatile_read(&s.scan);
    if st.err != 0 {
        return Err(counter_from(st.err));
    }
    // The callback stops at body_end after the last key; anything else means it did not finish.
    if st.keys == 0 || st.keys > XDP_MAX_KEYS as u64 || st.done == 0 {
        return Err(Counter::PassNotGet);
    }
    finish(s, st.out as usize, st.keys)
}

/// The reason `scan_step` stored in `ScanState::err` (or `direct_get` returned).
pub fn counter_from(v: u64) -> Counter {
    match v {
        x if x == Counter::PassMiss as u64 => Counter::PassMiss,
        x if x == Counter::PassExpired as u64 => Counter::PassExpired,
        x if x == Counter::PassTooBig as u64 => Counter::PassTooBig,
        x if x == Counter::PassFlushed as u64 => Counter::PassFlushed,
        x if x == Counter::PassBusy as u64 => Counter::PassBusy,
        x if x == Counter::PassMalformed as u64 => Counter::PassMalformed,
        _ => Counter::PassNotGet,
    }
}

/// One key of the list: read, looked up and its reply appended. Returns 1 to stop the loop. Reads and
/// writes only `s.scan` in the scratch map, whose contents the verifier does not track, so each field
/// is bounded here before use.
#[inline(never)]
extern "C" fn scan_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else {
        return 1;
    };
    match scan_key(s) {
        Ok(false) => 0,
        Ok(true) => {
            s.scan.done = 1;
            1
        }
        Err(c) => {
            s.scan.err = c as u64;
            1
        }
    }
}

/// Ok(true) once the last key was appended, Ok(false) to go on. A key ends at a single space before the
/// next key or at the `\r` that ends the line; an empty key (a double or trailing space), a control
/// character or too many keys make the request user space's.
#[inline(always)]
fn scan_key(s: &mut Scratch) -> Result<bool, Counter> {
    let start = s.scan.key_start as usize & REQ_MASK;
    let body_end = s.scan.body_end as usize & REQ_MASK;
    let keys = s.scan.keys;
    if keys >= XDP_MAX_KEYS as u64 || start >= body_end {
        return Err(Counter::PassNotGet);
    }
    let (klen, hash) = read_key(s, start)?;
    let delim = start + klen;
    let last = delim >= body_end;
    if !last && s.req[delim & REQ_MASK] != b' ' {
        return Err(Counter::PassNotGet);
    }
    let out = s.scan.out as usize;
    if !(REPLY_OFF..=REPLY_OFF + kv_common::XDP_REPLY_MAX).contains(&out) {
        return Err(Counter::PassMalformed);
    }
    let hit = lookup(s, hash)?;
    let out = append_hit(s, &hit, s.scan.cas != 0, out)?;
    s.scan.out = out as u64;
    s.scan.keys = keys + 1;
    s.scan.key_start = (delim + 1) as u64;
    Ok(last)
}
