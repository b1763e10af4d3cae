//! set, add, replace, append, prepend, cas, delete.

use bytes::BytesMut;

use super::{reject_too_large_noreply, reply, Ctx, Outcome};
use crate::protocol::command::{SetMode, StoreCmd};
use crate::protocol::reply as r;
use crate::stats::bump;
use crate::store::{DeleteOpts, DeleteStatus, SetOutcome, SetRequest, SetStatus};

/// Counts cas_hits/cas_badval/cas_misses as memcached's do_store_item does for CAS stores.
pub(super) fn count_cas(ctx: &Ctx, status: SetStatus) {
    match status {
        SetStatus::Stored => bump(&ctx.stats.cas_hits, 1),
        SetStatus::Exists => bump(&ctx.stats.cas_badval, 1),
        SetStatus::NotFound => bump(&ctx.stats.cas_misses, 1),
        _ => {}
    }
}

/// Applies a classic storage command (text or binary) and counts it; a `TooLarge` outcome is not
/// counted, its handling differs by protocol.
pub(super) fn apply_store(cmd: &StoreCmd<'_>, ctx: &Ctx) -> SetOutcome {
    let mut req = SetRequest::new(cmd.mode, cmd.key, cmd.data, cmd.flags, cmd.exptime);
    req.compare_cas = cmd.cas_unique;
    let res = ctx.store.set(&req);
    if res.status != SetStatus::TooLarge {
        ctx.stats.detail.record_set(cmd.key);
        bump(&ctx.stats.cmd_set, 1);
        if cmd.mode == SetMode::Cas {
            count_cas(ctx, res.status);
        }
    }
    res
}

pub(super) fn store(cmd: &StoreCmd<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let res = apply_store(cmd, ctx);
    if res.status == SetStatus::TooLarge {
        return reject_too_large_noreply(cmd.key, cmd.noreply, ctx, out);
    }
    let line = match res.status {
        SetStatus::Stored => r::STORED,
        SetStatus::NotStored | SetStatus::TooLarge => r::NOT_STORED,
        SetStatus::Exists => r::EXISTS,
        SetStatus::NotFound => r::NOT_FOUND,
    };
    reply(out, cmd.noreply, line);
    Outcome::seq(res.seq)
}

/// Applies a classic delete (text, or binary with its optional CAS) and counts it as memcached does.
pub(super) fn apply_delete(key: &[u8], opts: &DeleteOpts, ctx: &Ctx) -> (DeleteStatus, u64) {
    ctx.stats.detail.record_delete(key);
    let (status, seq) = ctx.store.delete(key, opts);
    match status {
        DeleteStatus::Deleted => bump(&ctx.stats.delete_hits, 1),
        DeleteStatus::NotFound => bump(&ctx.stats.delete_misses, 1),
        DeleteStatus::Exists => {}
    }
    (status, seq)
}

pub(super) fn delete(key: &[u8], noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let (status, seq) = apply_delete(key, &DeleteOpts::default(), ctx);
    reply(out, noreply, if status == DeleteStatus::Deleted { r::DELETED } else { r::NOT_FOUND });
    Outcome::seq(seq)
}
