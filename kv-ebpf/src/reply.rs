//! Turning the request into the reply: the reply text assembled in `Scratch::out` (or copied straight
//! from a slot for a 1-key `get`), the frame resized, the headers rewritten (addresses and ports
//! swapped, lengths and IPv4 checksum) and `END` appended; and the way back to the request, byte for
//! byte, when a slot copied straight into the packet turns out torn. A reply the XDP frame has no room
//! for is handed to the TC program, which sends the same bytes from the skb ([`serve_skb`]).

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT},
    helpers::generated as h,
    programs::{TcContext, XdpContext},
};
use core::ffi::c_void;
use kv_common::{Counter, FrameHeader, CACHE_ENTRY_BUF, END, UDP_FRAME_HEADER_LEN, XDP_REPLY_MAX, XDP_REQ_MAX};
use kv_ebpf::{
    headers::{Ipv4Hdr, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, IPV4_NO_OPTIONS, IP_HLEN, TEXT_OFF, UDP_HLEN},
    packet::{adjust_head, adjust_tail, as_bytes, buff_len, store, store_bytes, store_from, store_raw},
    tc_mark, volatile_read,
};

use crate::{
    handoff::hand_over,
    lookup::Hit,
    maps::{self, count},
    request::Req,
    scratch::{Scratch, CSUM_CHUNK, HDR_UDP, OUT_BUF, OUT_HALF_MASK, OUT_MASK, REPLY_OFF, UDP6_OFF, V4_HDRS},
};

/// [`END`] as an array, for a bounds-checked store of its exact length.
const END_BYTES: [u8; END.len()] = match END.first_chunk() {
    Some(end) => *end,
    None => unreachable!(),
};
/// Mask that bounds an offset into a slot's reply text for the verifier (≥ CACHE_ENTRY_BUF).
pub const ENTRY_MASK: usize = CACHE_ENTRY_BUF.next_power_of_two() - 1;
/// IPv4 flags of the reply: don't fragment.
const IPV4_DF: [u8; 2] = [0x40, 0];
/// TTL of the reply.
const REPLY_TTL: u8 = 64;

/// How the reply is sent.
pub enum Reply {
    /// The reply text (`len` bytes answering `keys` keys; `binary`: a binary-protocol response) was
    /// assembled in `scratch.out` after room for the headers.
    Scratch { len: usize, keys: u64, binary: bool },
}

/// Appends the reply of a key found live (`hit`) to `s.out` at `out`; returns the new end of the reply
/// text. Err if user space rewrote the slot during the copy.
#[inline(always)]
pub fn append_hit(s: &mut Scratch, hit: &Hit, cas: bool, out: usize) -> Result<usize, Counter> {
    let slot = hit.slot()?;
    let buf = slot.buf();
    let (hdr, total) = (hit.hdr, hit.total);
    let out = if cas {
        let out = copy(s, out, buf, hdr)?;
        let out = copy(s, out, slot.cas(), hit.cas_len)?;
        copy(s, out, buf.wrapping_add(hdr & ENTRY_MASK), total - hdr)?
    } else {
        copy(s, out, buf, total)?
    };
    if !hit.unchanged() {
        return Err(Counter::PassBusy);
    }
    Ok(out)
}

/// Appends `len` bytes from kernel memory `src` (a cache slot) to `s.out` at `out`.
#[inline(always)]
pub fn copy(s: &mut Scratch, out: usize, src: *const u8, len: usize) -> Result<usize, Counter> {
    // Leave room for END\r\n; the frame must fit one datagram.
    if out + len + END.len() > REPLY_OFF + XDP_REPLY_MAX {
        return Err(Counter::PassTooBig);
    }
    // Volatile reads keep the masks: the compiler can prove them redundant from the check above, but
    // the verifier tracks `out` and `len` separately and needs each bounded.
    let off = volatile_read(&out) & OUT_HALF_MASK;
    let n = volatile_read(&len) & OUT_HALF_MASK;
    if n == 0 {
        return Ok(out);
    }
    // SAFETY: the destination `s.out[off..off + n]` lies within `s.out` (both below OUT_BUF / 2); the
    // helper reads `src` fault-tolerantly, and a torn copy is caught by the caller's seqlock check.
    let r =
        unsafe { h::bpf_probe_read_kernel(s.out.as_mut_ptr().add(off) as *mut c_void, n as u32, src as *const c_void) };
    if r != 0 {
        return Err(Counter::PassMalformed);
    }
    Ok(out + n)
}

/// Appends END to the reply text assembled in `s.out`, which ends at `out` and answers `keys` keys.
#[inline(always)]
pub fn finish(s: &mut Scratch, out: usize, keys: u64) -> Result<Reply, Counter> {
    if out < REPLY_OFF || out + END.len() > REPLY_OFF + XDP_REPLY_MAX {
        return Err(Counter::PassTooBig);
    }
    // END, then zeros to a whole 32-bit word for an IPv6 checksum (`udp6_checksum`).
    for (i, b) in END.iter().enumerate() {
        s.out[(out + i) & OUT_MASK] = *b;
    }
    for i in 0..3 {
        s.out[(out + END.len() + i) & OUT_MASK] = 0;
    }
    Ok(Reply::Scratch { len: out + END.len() - REPLY_OFF, keys, binary: false })
}

/// Sends the reply assembled in `s.out`: resize, headers, then the whole frame stored at once.
#[inline(always)]
pub fn serve_scratch(ctx: &XdpContext, req: &Req, s: &mut Scratch, reply: Reply) -> Result<u32, Counter> {
    let Reply::Scratch { len: text_len, .. } = reply;
    let frame_len = req.text_off() + text_len;
    resize(ctx, frame_len, buff_len(ctx) as i64).map_err(|_| hand_over(ctx, req, s, &reply))?;
    let start = write_headers(req, s, text_len) & START_MASK;
    // In [1, OUT_BUF / 2] by construction, as the helper needs (a compared bound on a copy of the
    // value would not reach the register the compiler passes).
    let len = ((frame_len as u32).wrapping_sub(1) & (OUT_BUF as u32 / 2 - 1)) + 1;
    // SAFETY: `len` bytes from `start` (≤ START_MASK) lie within `s.out` (OUT_BUF bytes).
    if len as usize != frame_len || unsafe { store_raw(ctx, 0, s.out.as_ptr().add(start), len) }.is_err() {
        // The frame was already resized: nothing sane to hand to the stack.
        return Ok(xdp_action::XDP_ABORTED);
    }
    count_hit(req, &reply);
    Ok(xdp_action::XDP_TX)
}

/// Bound of where a frame starts in `s.out` (0 or [`V4_START`]), for the verifier.
const START_MASK: usize = 31;
const _: () = assert!(V4_START <= START_MASK && START_MASK + OUT_BUF / 2 <= OUT_BUF);

#[inline(always)]
fn count_hit(req: &Req, reply: &Reply) {
    let Reply::Scratch { keys, binary, .. } = *reply;
    count(Counter::Hits, 1);
    count(Counter::HitKeys, keys);
    if req.v6 {
        count(Counter::Ipv6Hits, 1);
    }
    if binary {
        count(Counter::BinHits, 1);
    }
}

/// Answers a 1-key `get` hit over IPv4: resize, headers, then the slot's reply and `END` copied from the map
/// into the packet. If user space rewrote the slot meanwhile (the sequence number moved), the reply
/// may be torn: the request is put back byte for byte and passed, as if it had never been touched.
pub fn serve_direct(ctx: &XdpContext, req: &Req, s: &mut Scratch, hit: &Hit) -> Result<u32, Counter> {
    let text = hit.total + END.len();
    if text > XDP_REPLY_MAX {
        return Err(Counter::PassTooBig);
    }
    let slot = hit.slot()?;
    // The request's headers and text are already saved in `s.hdrs` and `s.req` (`read_request`).
    let frame_len = TEXT_OFF + text;
    // The frame is exactly the request (`exact`, and this program gets no multi-buffer frames): its
    // length is known without `bpf_xdp_get_buff_len`.
    let grown = resize(ctx, frame_len, (TEXT_OFF + req.text_len) as i64).map_err(|_| hand_to_tc(ctx, 0))?;
    write_headers(req, s, text);
    // In [1, CACHE_ENTRY_BUF]: the verifier checks the copy against the slot's bounds. Two comparisons on
    // the register passed to the helper (LLVM would fold a range check into one on a copy of it).
    let total = volatile_read(&hit.total);
    #[allow(clippy::manual_range_contains)]
    let ok = total >= 1
        && total <= CACHE_ENTRY_BUF
        // SAFETY: the headers, `s.out[V4_START..REPLY_OFF]`: within `s.out`.
        && unsafe { store_from(ctx, 0, s.out.as_ptr().add(V4_START), TEXT_OFF) }.is_ok()
        // SAFETY: `total` bytes of the slot's reply text: within its buffer (checked just above).
        && unsafe { store_from(ctx, TEXT_OFF, slot.buf(), total) }.is_ok()
        && store(ctx, TEXT_OFF + total, &END_BYTES).is_ok();
    let torn = !hit.unchanged() || maps::test_tear();
    if ok && !torn {
        count(Counter::Hits, 1);
        count(Counter::HitKeys, 1);
        return Ok(xdp_action::XDP_TX);
    }
    // Undo: the original length, then the saved headers and request text.
    let text_len = req.text_len;
    let undone = match grown {
        Grown::Head(d) => adjust_head(ctx, d),
        Grown::Tail(d) => adjust_tail(ctx, -d),
        Grown::No => Ok(()),
    }
    .is_ok();
    let n = ((text_len as u32).wrapping_sub(1) & (XDP_REQ_MAX as u32 - 1)) + 1;
    if undone
        && n as usize == text_len
        && store_bytes(ctx, 0, s.hdrs_v4(), TEXT_OFF as u32).is_ok()
        && store_bytes(ctx, TEXT_OFF as u32, &s.req, n).is_ok()
    {
        return Err(Counter::PassTorn);
    }
    Ok(xdp_action::XDP_ABORTED)
}

/// How `resize` changed the frame, to undo it.
#[derive(Clone, Copy)]
enum Grown {
    No,
    Head(i32),
    Tail(i32),
}

/// Makes the frame, now `cur` bytes, exactly `frame_len` bytes: grow at the head where the driver has
/// headroom (native veth has 256 bytes and no tailroom; generic mode guarantees the same headroom), else
/// at the tail. Fails, the frame untouched, where it has no room for that: the caller hands it to TC.
fn resize(ctx: &XdpContext, frame_len: usize, cur: i64) -> Result<Grown, ()> {
    let delta = (frame_len as i64 - cur) as i32;
    if delta == 0 {
        return Ok(Grown::No);
    }
    if delta > 0 && adjust_head(ctx, -delta).is_ok() {
        return Ok(Grown::Head(delta));
    }
    if adjust_tail(ctx, delta).is_ok() {
        return Ok(Grown::Tail(delta));
    }
    Err(())
}

/// Marks the untouched frame for the TC program ([`tc_mark`], then the [`hand_over`] number `seq` or 0,
/// in its metadata) and returns the reason to pass it with: `ToTc`, or `PassTooBig` where the driver
/// keeps no metadata.
pub fn hand_to_tc(ctx: &XdpContext, seq: u32) -> Counter {
    const META: usize = 2 * size_of::<u32>();
    // SAFETY: this run's context; no packet pointer is held across the call.
    if unsafe { h::bpf_xdp_adjust_meta(ctx.ctx, -(META as i32)) } != 0 {
        return Counter::PassTooBig;
    }
    let meta = ctx.metadata();
    if meta + META > ctx.data() {
        return Counter::PassTooBig;
    }
    // SAFETY: the 8 metadata bytes at `meta` lie before `data` (checked above), in this run's buffer.
    unsafe { core::ptr::write_unaligned(meta as *mut [u32; 2], [tc_mark(maps::port()), seq]) };
    Counter::ToTc
}

/// Answers from the skb a request the XDP program handed over ([`hand_to_tc`]), its reply assembled
/// again in `s.out`: the skb grown to the reply, the whole frame stored, and sent back out of the
/// interface it came in on.
#[inline(always)]
pub fn serve_skb(ctx: &TcContext, req: &Req, s: &mut Scratch, reply: Reply) -> Result<i32, Counter> {
    let Reply::Scratch { len: text_len, .. } = reply;
    let frame_len = req.text_off() + text_len;
    let start = write_headers(req, s, text_len) & START_MASK;
    // In [1, OUT_BUF / 2], as for `serve_scratch`.
    let len = ((frame_len as u32).wrapping_sub(1) & (OUT_BUF as u32 / 2 - 1)) + 1;
    if len as usize != frame_len {
        return Err(Counter::PassTooBig);
    }
    let skb = ctx.skb.skb;
    // SAFETY: this run's skb; no packet pointer is held across the call (it may reallocate the data).
    if unsafe { h::bpf_skb_change_tail(skb, len, 0) } != 0 {
        return Err(Counter::PassTooBig);
    }
    // SAFETY: `len` bytes from `start` (≤ START_MASK) lie within `s.out`; the helper bounds the skb side.
    let stored = unsafe { h::bpf_skb_store_bytes(skb, 0, s.out.as_ptr().add(start) as *const c_void, len, 0) };
    if stored != 0 {
        // The skb was already resized: nothing sane to hand to the stack.
        return Ok(TC_ACT_SHOT);
    }
    count_hit(req, &reply);
    count(Counter::TcHits, 1);
    // SAFETY: reading the ingress interface index of this run's skb.
    let ifindex = unsafe { (*skb).ifindex };
    // SAFETY: a helper that only records where to send the skb once the program returns.
    Ok(unsafe { h::bpf_redirect(ifindex, 0) } as i32)
}

/// Start in `s.out` of an IPv4 reply frame, whose headers end where the reply text starts.
const V4_START: usize = REPLY_OFF - TEXT_OFF;

/// Writes the Ethernet, IP, UDP and frame headers of the reply (back to the sender, answering with
/// `text_len` bytes of text) into `s.out`, right before the reply text at [`REPLY_OFF`], from the
/// request's headers in `s.hdrs` (addresses, ports and MACs swapped); returns where in `s.out` the frame
/// starts (IPv6 headers are 20 bytes longer). An IPv6 reply gets its UDP checksum (mandatory there) over
/// the text, which [`finish`] zero-padded to whole 32-bit words.
#[inline(always)]
fn write_headers(r: &Req, s: &mut Scratch, text_len: usize) -> usize {
    let udp_len = (UDP_HLEN + UDP_FRAME_HEADER_LEN + text_len) as u16;
    let frame = FrameHeader { request_id: r.req_id, seq: 0, total: 1, reserved: 0 };
    let (h, o) = (&s.hdrs, &mut s.out);
    o[REPLY_OFF - UDP_FRAME_HEADER_LEN..REPLY_OFF].copy_from_slice(&frame.to_bytes());
    // Ports swapped; UDP checksum 0 for now: "none" over IPv4 (veth's offload would otherwise leave it
    // partial).
    o[UDP6_OFF..UDP6_OFF + 2].copy_from_slice(&h[HDR_UDP + 2..HDR_UDP + 4]);
    o[UDP6_OFF + 2..UDP6_OFF + 4].copy_from_slice(&h[HDR_UDP..HDR_UDP + 2]);
    o[UDP6_OFF + 4..UDP6_OFF + 6].copy_from_slice(&udp_len.to_be_bytes());
    o[UDP6_OFF + 6..UDP6_OFF + 8].copy_from_slice(&[0, 0]);
    // Ethernet: destination and source swapped.
    let (start, eth) = if r.v6 { (0, 0) } else { (V4_START, V4_HDRS) };
    o[start..start + 6].copy_from_slice(&h[eth + 6..eth + 12]);
    o[start + 6..start + 12].copy_from_slice(&h[eth..eth + 6]);
    if r.v6 {
        o[12..14].copy_from_slice(&ETH_P_IPV6);
        // Version 6, traffic class and flow label 0, payload length, next header, hop limit.
        o[14..22].copy_from_slice(&[0x60, 0, 0, 0, (udp_len >> 8) as u8, udp_len as u8, IPPROTO_UDP, REPLY_TTL]);
        // Source and destination swapped.
        const SRC: usize = ETH_HLEN + 8;
        const DST: usize = SRC + 16;
        o[SRC..DST].copy_from_slice(&h[DST..DST + 16]);
        o[DST..DST + 16].copy_from_slice(&h[SRC..DST]);
        let check = udp6_checksum(s, udp_len as usize);
        s.out[UDP6_OFF + 6..UDP6_OFF + 8].copy_from_slice(&check.to_be_bytes());
        return 0;
    }
    o[V4_START + 12..V4_START + 14].copy_from_slice(&ETH_P_IPV4);
    const IP: usize = V4_HDRS + ETH_HLEN;
    let mut ip = Ipv4Hdr {
        ver_ihl: IPV4_NO_OPTIONS,
        tos: 0,
        tot_len: (udp_len + IP_HLEN as u16).to_be_bytes(),
        id: [0, 0],
        frag_off: IPV4_DF,
        ttl: REPLY_TTL,
        proto: IPPROTO_UDP,
        check: [0, 0],
        src: [h[IP + 16], h[IP + 17], h[IP + 18], h[IP + 19]],
        dst: [h[IP + 12], h[IP + 13], h[IP + 14], h[IP + 15]],
    };
    ip.check = (!ip.csum_fold()).to_be_bytes();
    o[V4_START + ETH_HLEN..UDP6_OFF].copy_from_slice(as_bytes(&ip));
    V4_START
}

/// The UDP checksum of an IPv6 reply whose headers (UDP checksum 0) are in `s.out` from 0 and its
/// `udp_len - 8` bytes of payload after them, zero-padded to a multiple of 4: the pseudo-header summed
/// here, the datagram by `bpf_csum_diff` in chunks of at most 512 bytes (the helper's limit).
#[inline(always)]
fn udp6_checksum(s: &mut Scratch, udp_len: usize) -> u16 {
    let mut sum = udp_len as u64 + IPPROTO_UDP as u64;
    // The source and destination addresses, as the reply's IPv6 header has them.
    let addrs = &s.out[ETH_HLEN + 8..ETH_HLEN + 40];
    for i in 0..16 {
        sum += u16::from_be_bytes([addrs[2 * i], addrs[2 * i + 1]]) as u64;
    }
    let padded = (udp_len + 3) & !3;
    let mut data = 0u64;
    for i in 0..3 {
        let off = i * CSUM_CHUNK;
        if off >= padded {
            break;
        }
        let n = (padded - off).min(CSUM_CHUNK) & 0x3fc;
        // SAFETY: `n` bytes from `UDP6_OFF + off` (at most 54 + 1024 + 1020) lie within `s.out`; the helper
        // only reads them (`to` is `*mut` by the C prototype alone).
        let r = unsafe {
            h::bpf_csum_diff(core::ptr::null_mut(), 0, s.out.as_mut_ptr().add(UDP6_OFF + off) as *mut u32, n as u32, 0)
        };
        // The helper's sum is of 16-bit words as this little-endian machine loads them: byte-swapped.
        data += (r as u64) & 0xffff_ffff;
    }
    let data = fold(data).swap_bytes();
    let check = !fold(sum + data as u64);
    // 0 means "no checksum", which IPv6 forbids: its other representation.
    if check == 0 {
        0xffff
    } else {
        check
    }
}

/// Ones' complement fold of a sum of 16-bit words.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    for _ in 0..4 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
