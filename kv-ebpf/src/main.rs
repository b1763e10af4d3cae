//! XDP program of the key-value cache: answers memcached UDP `get`/`gets` requests whose every key is a
//! live hit in the `CACHE` map, by rewriting the request packet into the reply (XDP_TX). Anything it does
//! not fully handle is passed to the network stack untouched (XDP_PASS), counted by reason.
//!
//! - [`maps`]: the named maps and the globals the loader sets;
//! - [`request`]: header checks and the `get`/`gets` line, with the key scan;
//! - [`lookup`]: the seqlock read of a cache slot;
//! - [`reply`]: the reply written over the request (or the request restored);
//! - [`scratch`]: the per-CPU working memory;
//! - the `kv_ebpf` library: frame layout and bounds-checked frame access.
//!
//! Built for `bpfel-unknown-none` by kv-user's build script; on the host it compiles to an empty binary
//! so that `cargo clippy --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![deny(clippy::undocumented_unsafe_blocks)]

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
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use kv_common::{Counter, XDP_REQ_MAX};
    use kv_ebpf::{headers::TEXT_OFF, packet::load_bytes};

    use crate::{
        maps::{self, count},
        reply::{serve_direct, serve_scratch, Reply},
        request::{parse_get, parse_headers, MIN_REQ_LEN},
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
        load_bytes(ctx, TEXT_OFF as u32, &mut scratch.req, n).map_err(|_| Counter::PassMalformed)?;
        // A frame with nothing after the datagram (no Ethernet padding) can be restored from what was
        // saved, so its reply may be copied straight from the slot into the packet.
        let exact = ctx.data_end() - ctx.data() == TEXT_OFF + text_len;
        match parse_get(scratch, text_len, exact)? {
            Reply::Direct(hit) => serve_direct(ctx, &req, scratch, &hit),
            Reply::Scratch { len, keys } => serve_scratch(ctx, &req, scratch, len, keys),
        }
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
