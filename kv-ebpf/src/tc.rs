//! `kv_tc`, the TC ingress half of the kernel path: it answers the requests `kv_xdp` could not grow
//! its frame for (a veth frame has only its 256 bytes of headroom), which `kv_xdp` marks in the frame's
//! metadata ([`tc_mark`]) and passes. The skb can grow, so the same reply, assembled by the same code
//! from the same slots under their seqlocks, is sent back out of the interface it came in on. Anything
//! else, and any request that no longer hits, goes on untouched: to the next program on the hook (tcx
//! runs them in order: another instance's `kv_tc`, a firewall), then the stack.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, helpers::generated as h, macros::classifier, programs::TcContext};
use kv_common::{Counter, XDP_REQ_MAX};
use kv_ebpf::{headers::TEXT6_OFF, tc_mark};

use crate::{
    binary::{is_binary, parse_binary},
    handoff,
    maps::{self, count},
    reply::serve_skb,
    request::{parse_get, read_request},
};

/// "Not answered here": tcx goes on to the next program (`TCX_NEXT`), a classic clsact filter to the
/// next filter; with none left the skb goes up the stack.
const NEXT: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn kv_tc(ctx: TcContext) -> i32 {
    if !marked(&ctx) {
        return NEXT;
    }
    match try_kv_tc(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason, 1);
            NEXT
        }
    }
}

/// Whether this instance's `kv_xdp` handed the frame over: its metadata starts with the mark for our
/// port.
#[inline(always)]
fn marked(ctx: &TcContext) -> bool {
    meta_word(ctx, 0) == Some(tc_mark(maps::port()))
}

/// Word `i` of the skb's metadata, if it has that many.
#[inline(always)]
fn meta_word(ctx: &TcContext, i: usize) -> Option<u32> {
    // SAFETY: reading two fields of this run's `__sk_buff` context.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    let at = meta + i * size_of::<u32>();
    if at + size_of::<u32>() > data {
        return None;
    }
    // SAFETY: the 4 bytes at `at` lie before `data` (checked above): the metadata of this skb.
    Some(unsafe { core::ptr::read_unaligned(at as *const u32) })
}

fn try_kv_tc(ctx: &TcContext) -> Result<i32, Counter> {
    // Read before the pull below, which may move the data (and its metadata).
    let seq = meta_word(ctx, 1).unwrap_or(0);
    // The headers must be in the linear part for direct access (they are after XDP; this is cheap then).
    // SAFETY: this run's skb; no packet pointer is held across the call.
    if unsafe { h::bpf_skb_pull_data(ctx.skb.skb, (TEXT6_OFF + XDP_REQ_MAX) as u32) } != 0 {
        // A frame shorter than that cannot be pulled that far; its headers are linear anyway.
        // SAFETY: as above.
        unsafe { h::bpf_skb_pull_data(ctx.skb.skb, 0) };
    }
    let (req, scratch) = read_request(ctx)?;
    let reply = match handoff::take(scratch, seq, &req) {
        Some(reply) => reply,
        None if is_binary(scratch) => parse_binary(scratch, req.text_len)?,
        None => parse_get(scratch, req.text_len)?,
    };
    serve_skb(ctx, &req, scratch, reply)
}
