//! get, gets, gat, gats, touch.

use bytes::BytesMut;
use kv_common::write_value_header;

use super::{reply, Ctx, Outcome};
use crate::protocol::command::{GatCmd, Keys, TouchCmd};
use crate::protocol::reply as r;
use crate::stats::bump;
use crate::store::{FetchOpts, ItemView};

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`, the header written straight into `out`
/// by the formatter the kernel cache entries are built with, so both send the same bytes.
fn item_line(out: &mut BytesMut, key: &[u8], it: &ItemView<&[u8]>, cas: bool) {
    write_value_header(key, it.flags, it.value.len(), cas.then_some(it.cas), &mut |b| out.extend_from_slice(b));
    out.extend_from_slice(it.value);
    out.extend_from_slice(r::CRLF);
}

/// Where a resumable multiget starts and stops (see [`value_lines`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    /// Byte offset into the keys to start at.
    pub from: usize,
    /// Stop before the next key once `out` holds this many bytes.
    pub stop_at: usize,
}

/// Appends the `VALUE` line of each key `line` finds (it writes the line, straight from item memory,
/// and says whether it found the key), from byte `span.from` of the keys on, stopping
/// before a key once `out` holds `span.stop_at` bytes: then returns the offset to resume from, and END
/// is written only by the call that finishes. This lets a connection send a multiget's reply as it goes
/// (memcached sends it straight from the items) instead of holding all of it: `get big big big ...`
/// could otherwise ask for gigabytes. Returns (hits, misses, resume offset).
fn value_lines(
    keys: Keys<'_>,
    span: Span,
    ctx: &Ctx,
    out: &mut BytesMut,
    mut line: impl FnMut(&[u8], &mut BytesMut) -> bool,
) -> (u64, u64, Option<usize>) {
    let (mut hits, mut misses) = (0, 0);
    for (at, key) in keys.iter_from(span.from) {
        if out.len() >= span.stop_at {
            return (hits, misses, Some(at));
        }
        let hit = line(key, out);
        ctx.stats.detail.record_get(key, hit);
        if hit {
            hits += 1;
        } else {
            misses += 1;
        }
    }
    out.extend_from_slice(r::END);
    (hits, misses, None)
}

/// get/gets, resumable (see [`value_lines`]).
pub(super) fn get(keys: Keys<'_>, cas: bool, span: Span, ctx: &Ctx, out: &mut BytesMut) -> (Outcome, Option<usize>) {
    let opts = FetchOpts::default();
    let (hits, misses, resume) = value_lines(keys, span, ctx, out, |key, out| {
        ctx.store.fetch_with(key, &opts, |f| f.item.map(|it| item_line(out, key, &it, cas)).is_some())
    });
    // memcached counts cmd_get per key.
    bump(&ctx.stats.cmd_get, hits + misses);
    bump(&ctx.stats.get_hits, hits);
    bump(&ctx.stats.get_misses, misses);
    (Outcome::default(), resume)
}

/// gat/gats, resumable as [`get`].
pub(super) fn gat(cmd: &GatCmd<'_>, span: Span, ctx: &Ctx, out: &mut BytesMut) -> (Outcome, Option<usize>) {
    let opts = FetchOpts { touch: Some(cmd.exptime), ..FetchOpts::default() };
    let mut seq = 0;
    let (hits, misses, resume) = value_lines(cmd.keys, span, ctx, out, |key, out| {
        ctx.store.fetch_with(key, &opts, |f| {
            seq = seq.max(f.seq);
            f.item.map(|it| item_line(out, key, &it, cmd.cas)).is_some()
        })
    });
    // memcached counts gat as touches, not gets.
    bump(&ctx.stats.cmd_touch, hits + misses);
    bump(&ctx.stats.touch_hits, hits);
    bump(&ctx.stats.touch_misses, misses);
    (Outcome::seq(seq), resume)
}

pub(super) fn touch(cmd: &TouchCmd<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let f = ctx.store.fetch(cmd.key, &FetchOpts { touch: Some(cmd.exptime), ..FetchOpts::default() });
    bump(&ctx.stats.cmd_touch, 1);
    if f.item.is_some() {
        bump(&ctx.stats.touch_hits, 1);
        reply(out, cmd.noreply, r::TOUCHED);
    } else {
        bump(&ctx.stats.touch_misses, 1);
        reply(out, cmd.noreply, r::NOT_FOUND);
    }
    Outcome::seq(f.seq)
}
