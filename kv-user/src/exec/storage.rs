//! set, add, replace, append, prepend, cas, delete.

use bytes::BytesMut;

use super::{reject_too_large_noreply, reply, Ctx, Outcome};
use crate::protocol::command::StoreMode;
use crate::stats::bump;
use crate::store::{DeleteOpts, DeleteStatus, SetMode, SetRequest, SetStatus};

/// Counts cas_hits/cas_badval/cas_misses as memcached's do_store_item does for CAS stores.
pub(super) fn count_cas(ctx: &Ctx, status: SetStatus) {
    match status {
        SetStatus::Stored => bump(&ctx.stats.cas_hits, 1),
        SetStatus::Exists => bump(&ctx.stats.cas_badval, 1),
        SetStatus::NotFound => bump(&ctx.stats.cas_misses, 1),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn store(
    mode: StoreMode,
    key: &[u8],
    flags: u32,
    exptime: i64,
    cas_unique: u64,
    data: &[u8],
    noreply: bool,
    ctx: &Ctx,
    out: &mut BytesMut,
) -> Outcome {
    let mode = match mode {
        StoreMode::Set => SetMode::Set,
        StoreMode::Add => SetMode::Add,
        StoreMode::Replace => SetMode::Replace,
        StoreMode::Append => SetMode::Append,
        StoreMode::Prepend => SetMode::Prepend,
        StoreMode::Cas => SetMode::Cas,
    };
    let mut req = SetRequest::new(mode, key, data, flags, exptime);
    req.compare_cas = cas_unique;
    let res = ctx.store.set(&req);
    if res.status == SetStatus::TooLarge {
        return reject_too_large_noreply(key, noreply, ctx, out);
    }
    bump(&ctx.stats.cmd_set, 1);
    if mode == SetMode::Cas {
        count_cas(ctx, res.status);
    }
    let line: &[u8] = match res.status {
        SetStatus::Stored => b"STORED",
        SetStatus::NotStored | SetStatus::TooLarge => b"NOT_STORED",
        SetStatus::Exists => b"EXISTS",
        SetStatus::NotFound => b"NOT_FOUND",
    };
    reply(out, noreply, line);
    Outcome::seq(res.seq)
}

pub(super) fn delete(key: &[u8], noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let (status, seq) = ctx.store.delete(key, &DeleteOpts::default());
    if status == DeleteStatus::Deleted {
        bump(&ctx.stats.delete_hits, 1);
        reply(out, noreply, b"DELETED");
    } else {
        bump(&ctx.stats.delete_misses, 1);
        reply(out, noreply, b"NOT_FOUND");
    }
    Outcome::seq(seq)
}
