//! XDP program of the key-value cache: answers memcached UDP `get`/`gets` requests whose every key is a
//! live hit in the `CACHE` map, and binary-protocol `get`/`getk` hits, by rewriting the request packet
//! into the reply (XDP_TX). Anything it does not fully handle is passed to the network stack untouched
//! (XDP_PASS), counted by reason.
//!
//! - [`maps`]: the named maps and the globals the loader sets;
//! - [`request`]: header checks and the `get`/`gets` line, with the key scan;
//! - [`binary`]: a binary `get`/`getk` request and its reply;
//! - [`lookup`]: the seqlock read of a cache slot;
//! - [`reply`]: the reply written over the request (or the request restored);
//! - [`handoff`]: a reply the XDP frame had no room for, kept for `kv_tc`;
//! - [`scratch`]: the per-CPU working memory;
//! - [`tc`]: `kv_tc`, which answers from the skb what the XDP frame had no room for;
//! - the `kv_ebpf` library: frame layout and bounds-checked frame access.
//!
//! Built for `bpfel-unknown-none` by kv-user's build script; on the host it compiles to an empty binary
//! so that `cargo clippy --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_arch = "bpf")]
mod binary;
#[cfg(target_arch = "bpf")]
mod handoff;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod reply;
#[cfg(target_arch = "bpf")]
mod request;
#[cfg(target_arch = "bpf")]
mod scratch;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use kv_common::Counter;
    use kv_ebpf::headers::TEXT_OFF;

    use crate::{
        binary::{is_binary, parse_binary},
        maps::{self, count},
        reply::{serve_direct, serve_scratch},
        request::{direct_get, parse_get, read_request},
    };

    #[xdp]
    pub fn kv_xdp(ctx: XdpContext) -> u32 {
        count(Counter::Seen, 1);
        match try_kv_xdp(&ctx) {
            Ok(action) => action,
            Err(reason) => {
                count(reason, 1);
                if maps::log_enabled() {
                    aya_log_ebpf::debug!(&ctx, "xdp pass: reason {}", reason as u32);
                }
                xdp_action::XDP_PASS
            }
        }
    }

    fn try_kv_xdp(ctx: &XdpContext) -> Result<u32, Counter> {
        let (req, scratch) = read_request(ctx)?;
        // A frame with nothing after the datagram (no Ethernet padding) can be restored from what was
        // saved, so its reply may be copied straight from the slot into the packet (IPv4: an IPv6 reply
        // needs the UDP checksum over the assembled text).
        let exact = !req.v6 && ctx.data_end() - ctx.data() == TEXT_OFF + req.text_len;
        // Where every key hit but the frame cannot grow to the reply (a veth frame has only its
        // headroom), the serve_* functions hand it to the TC program, which can grow the skb.
        if exact {
            if let Some(found) = direct_get(scratch, req.text_len) {
                return serve_direct(ctx, &req, scratch, &found?);
            }
        }
        // Binary requests after the text fast path, which they cost nothing: its first check fails.
        let reply =
            if is_binary(scratch) { parse_binary(scratch, req.text_len)? } else { parse_get(scratch, req.text_len)? };
        serve_scratch(ctx, &req, scratch, reply)
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
