//! incr, decr.

use bytes::BytesMut;

use super::{put_u64, reply, Ctx, Outcome};
use crate::protocol::command::ArithCmd;
use crate::protocol::reply as r;
use crate::stats::bump;
use crate::store::{ArithOpts, ArithStatus};

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

pub(super) fn arith(cmd: &ArithCmd<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let res = ctx.store.arith(cmd.key, &ArithOpts::new(cmd.incr, cmd.delta));
    match res.status {
        ArithStatus::Ok => {
            count(ctx, cmd.incr, true);
            if !cmd.noreply {
                put_u64(out, res.value);
                out.extend_from_slice(r::CRLF);
            }
        }
        ArithStatus::NotFound | ArithStatus::Exists => {
            count(ctx, cmd.incr, false);
            reply(out, cmd.noreply, r::NOT_FOUND);
        }
        ArithStatus::NonNumeric => reply(out, cmd.noreply, r::NON_NUMERIC),
    }
    Outcome::seq(res.seq)
}
