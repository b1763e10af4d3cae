//! The hand-off of an assembled reply from `kv_xdp` to `kv_tc`. Where every key hit but the XDP frame
//! cannot grow to the reply (a veth frame has only its headroom), `kv_xdp` keeps the reply text it
//! assembled in this CPU's next `HANDOFF` entry and writes the entry's number beside the TC mark in the
//! frame's metadata. `kv_tc` runs later on the same CPU (the skb goes up the stack there, unless RPS
//! moves it) and sends that text instead of looking every key up again.
//!
//! Sound without locks: the map is per CPU and a program run is not preempted on its CPU, so an entry
//! is only ever written or read by one run at a time. An entry is taken only if its number, request id
//! and request length match the skb's, so a reused entry (more packets handed over than the ring holds
//! before TC sees them) or another CPU's packet falls back to assembling the reply again. The reply
//! was read under the slots' seqlocks when XDP assembled it, within the request's lifetime, which is
//! all a reply promises.

use aya_ebpf::{helpers::generated as h, programs::XdpContext};
use core::ffi::c_void;
use kv_common::{Counter, XDP_REPLY_MAX};

use crate::{
    maps::{self, count},
    reply::{hand_to_tc, Reply},
    request::Req,
    scratch::{Scratch, OUT_BUF, REPLY_OFF},
};

/// Entries per CPU: more than the packets one NAPI poll hands from XDP to TC (its budget is 64), so an
/// entry outlives its packet's way to `kv_tc` on the same CPU.
pub const HANDOFF_SLOTS: u32 = 128;
/// Room for a reply text and the zeros after it (an IPv6 checksum is summed over whole words): copies
/// are masked to it.
pub const HANDOFF_TEXT: usize = OUT_BUF / 2;
/// Zeros `reply::finish` leaves after a reply text, kept with it.
const PAD: usize = 3;
const _: () = assert!(XDP_REPLY_MAX + PAD <= HANDOFF_TEXT && REPLY_OFF + HANDOFF_TEXT <= OUT_BUF);

/// A reply waiting for `kv_tc`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    /// This CPU's hand-off number for the reply held (never 0 once written).
    seq: u32,
    /// The request's frame request id and text length, to match the skb against.
    req_id: u32,
    req_len: u32,
    /// The reply: text length (zeros not counted), keys answered, binary protocol or not.
    len: u32,
    keys: u32,
    binary: u32,
    text: [u8; HANDOFF_TEXT],
}

/// Keeps the reply assembled in `s.out` for `kv_tc` and marks the frame for it; returns the reason to
/// pass the frame with (`ToTc`, or `PassTooBig` where the driver keeps no metadata).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, req: &Req, s: &mut Scratch, reply: &Reply) -> Counter {
    let Reply::Scratch { len, keys, binary } = *reply;
    let seq = match s.handoffs.wrapping_add(1) {
        0 => 1,
        n => n,
    };
    let Some(e) = maps::handoff(seq) else {
        return hand_to_tc(ctx, 0);
    };
    let Some(n) = copy_len(len) else {
        return hand_to_tc(ctx, 0);
    };
    // SAFETY: `n` bytes fit both the entry's text and `s.out` from REPLY_OFF (asserted above); both
    // are this CPU's map values, which only this run touches.
    let r = unsafe {
        h::bpf_probe_read_kernel(e.text.as_mut_ptr() as *mut c_void, n, s.out.as_ptr().add(REPLY_OFF) as *const c_void)
    };
    if r != 0 {
        return hand_to_tc(ctx, 0);
    }
    (e.seq, e.req_id, e.req_len) = (seq, req.req_id as u32, req.text_len as u32);
    (e.len, e.keys, e.binary) = (len as u32, keys as u32, binary as u32);
    s.handoffs = seq;
    hand_to_tc(ctx, seq)
}

/// The reply `kv_xdp` kept for this request under hand-off number `seq` (0: none), copied into `s.out`
/// as if just assembled; None if that entry no longer holds it.
#[inline(always)]
pub fn take(s: &mut Scratch, seq: u32, req: &Req) -> Option<Reply> {
    if seq == 0 {
        return None;
    }
    let e = maps::handoff(seq)?;
    if e.seq != seq || e.req_id != req.req_id as u32 || e.req_len != req.text_len as u32 {
        return None;
    }
    let len = e.len as usize;
    let n = copy_len(len)?;
    // SAFETY: as in `hand_over`, the other way.
    let r = unsafe {
        h::bpf_probe_read_kernel(s.out.as_mut_ptr().add(REPLY_OFF) as *mut c_void, n, e.text.as_ptr() as *const c_void)
    };
    if r != 0 {
        return None;
    }
    e.seq = 0;
    count(Counter::TcHandoffs, 1);
    Some(Reply::Scratch { len, keys: e.keys as u64, binary: e.binary != 0 })
}

/// Bytes to copy for a reply text of `len` bytes (its zeros included), in [1, HANDOFF_TEXT] as the
/// verifier can follow (a compared bound on a copy of the value would not reach the helper's
/// register); None for a text longer than a reply can be.
#[inline(always)]
fn copy_len(len: usize) -> Option<u32> {
    if len > XDP_REPLY_MAX {
        return None;
    }
    let n = (((len + PAD) as u32).wrapping_sub(1) & (HANDOFF_TEXT as u32 - 1)) + 1;
    (n as usize == len + PAD).then_some(n)
}
