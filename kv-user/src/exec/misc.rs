//! flush_all, version, verbosity.

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::{reply, Ctx, Outcome, VERSION};
use crate::protocol::reply as r;
use crate::stats::bump;

pub(super) fn flush_all(delay: i64, noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    bump(&ctx.stats.cmd_flush, 1);
    let seq = ctx.store.flush_all(delay);
    reply(out, noreply, r::OK);
    Outcome::seq(seq)
}

pub(super) fn version(out: &mut BytesMut) -> Outcome {
    out.extend_from_slice(r::VERSION);
    out.extend_from_slice(VERSION.as_bytes());
    out.extend_from_slice(r::CRLF);
    Outcome::default()
}

pub(super) fn verbosity(level: u32, noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    ctx.verbosity.store(level, Ordering::Relaxed);
    reply(out, noreply, r::OK);
    Outcome::default()
}
