//! `kv_tc`, the TC ingress half of the kernel path: it answers the requests `kv_xdp` could not grow
//! its frame for (a veth frame has only its 256 bytes of headroom), which `kv_xdp` marks in the frame's
//! metadata ([`TC_MARK`]) and passes. The skb can grow, so the same reply, assembled by the same code
//! from the same slots under their seqlocks, is sent back out of the interface it came in on. Anything
//! else, and any request that no longer hits, goes on to the stack untouched.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::generated as h, macros::classifier, programs::TcContext};
use kv_common::{Counter, XDP_REQ_MAX};
use kv_ebpf::{headers::TEXT_OFF, TC_MARK};

use crate::{
    maps::count,
    reply::{serve_skb, Reply},
    request::{parse_get, read_request},
};

#[classifier]
pub fn kv_tc(ctx: TcContext) -> i32 {
    if !marked(&ctx) {
        return TC_ACT_OK;
    }
    match try_kv_tc(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason, 1);
            TC_ACT_OK
        }
    }
}

/// Whether `kv_xdp` handed this frame over: its metadata is the mark.
#[inline(always)]
fn marked(ctx: &TcContext) -> bool {
    // SAFETY: reading two fields of this run's `__sk_buff` context.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    if meta + size_of::<u32>() > data {
        return false;
    }
    // SAFETY: the 4 bytes at `meta` lie before `data` (checked above): the metadata of this skb.
    unsafe { core::ptr::read_unaligned(meta as *const u32) == TC_MARK }
}

fn try_kv_tc(ctx: &TcContext) -> Result<i32, Counter> {
    // The headers must be in the linear part for direct access (they are after XDP; this is cheap then).
    // SAFETY: this run's skb; no packet pointer is held across the call.
    if unsafe { h::bpf_skb_pull_data(ctx.skb.skb, (TEXT_OFF + XDP_REQ_MAX) as u32) } != 0 {
        // A frame shorter than that cannot be pulled that far; its headers are linear anyway.
        // SAFETY: as above.
        unsafe { h::bpf_skb_pull_data(ctx.skb.skb, 0) };
    }
    let (req, scratch) = read_request(ctx)?;
    match parse_get(scratch, req.text_len, false)? {
        Reply::Scratch { len, keys } => serve_skb(ctx, &req, scratch, len, keys),
        // Only for a frame that may be answered straight from the slot, which this one may not.
        Reply::Direct(_) => Err(Counter::PassMalformed),
    }
}
