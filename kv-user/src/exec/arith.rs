//! incr, decr.

use bytes::BytesMut;

use super::{put_u64, reply, Ctx, Outcome};
use crate::stats::bump;
use crate::store::{ArithOpts, ArithStatus};

pub(super) const NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value";

/// Counts incr/decr hits and misses.
pub(super) fn count(ctx: &Ctx, incr: bool, hit: bool) {
    let s = &ctx.stats;
    let c = match (incr, hit) {
        (true, true) => &s.incr_hits,
        (true, false) => &s.incr_misses,
        (false, true) => &s.decr_hits,
        (false, false) => &s.decr_misses,
    };
    bump(c, 1);
}

pub(super) fn arith(key: &[u8], incr: bool, delta: u64, noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let res = ctx.store.arith(key, &ArithOpts::new(incr, delta));
    match res.status {
        ArithStatus::Ok => {
            count(ctx, incr, true);
            if !noreply {
                put_u64(out, res.value);
                out.extend_from_slice(b"\r\n");
            }
        }
        ArithStatus::NotFound | ArithStatus::Exists => {
            count(ctx, incr, false);
            reply(out, noreply, b"NOT_FOUND");
        }
        ArithStatus::NonNumeric => reply(out, noreply, NON_NUMERIC),
    }
    Outcome::seq(res.seq)
}
