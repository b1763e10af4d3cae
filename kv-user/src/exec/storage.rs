//! set, add, replace, append, prepend, cas, delete.

use bytes::BytesMut;

use super::{reject_too_large_noreply, reply, Ctx, Outcome};
use crate::protocol::command::{SetMode, StoreCmd};
use crate::protocol::reply as r;
use crate::stats::bump;
use crate::store::{DeleteOpts, DeleteStatus, SetRequest, SetStatus};

/// Counts cas_hits/cas_badval/cas_misses as memcached's do_store_item does for CAS stores.
pub(super) fn count_cas(ctx: &Ctx, status: SetStatus) {
    match status {
        SetStatus::Stored => bump(&ctx.stats.cas_hits, 1),
        SetStatus::Exists => bump(&ctx.stats.cas_badval, 1),
        SetStatus::NotFound => bump(&ctx.stats.cas_misses, 1),
        _ => {}
    }
}

pub(super) fn store(cmd: &StoreCmd<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let mode = cmd.mode;
    let mut req = SetRequest::new(mode, cmd.key, cmd.data, cmd.flags, cmd.exptime);
    req.compare_cas = cmd.cas_unique;
    let res = ctx.store.set(&req);
    if res.status == SetStatus::TooLarge {
        return reject_too_large_noreply(cmd.key, cmd.noreply, ctx, out);
    }
    ctx.stats.detail.record_set(cmd.key);
    bump(&ctx.stats.cmd_set, 1);
    if mode == SetMode::Cas {
        count_cas(ctx, res.status);
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

pub(super) fn delete(key: &[u8], noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    ctx.stats.detail.record_delete(key);
    let (status, seq) = ctx.store.delete(key, &DeleteOpts::default());
    if status == DeleteStatus::Deleted {
        bump(&ctx.stats.delete_hits, 1);
        reply(out, noreply, r::DELETED);
    } else {
        bump(&ctx.stats.delete_misses, 1);
        reply(out, noreply, r::NOT_FOUND);
    }
    Outcome::seq(seq)
}
