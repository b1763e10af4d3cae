//! get, gets, gat, gats, touch.

use bytes::BytesMut;

use super::{put_u64, reply, Ctx, Outcome};
use crate::protocol::command::Keys;
use crate::stats::bump;
use crate::store::{FetchOpts, ItemView};

fn value_line(out: &mut BytesMut, key: &[u8], it: &ItemView, cas: bool) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" ");
    put_u64(out, u64::from(it.flags));
    out.extend_from_slice(b" ");
    put_u64(out, it.value.len() as u64);
    if cas {
        out.extend_from_slice(b" ");
        put_u64(out, it.cas);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&it.value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn get(keys: Keys<'_>, cas: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let (mut hits, mut misses) = (0, 0);
    for key in keys.iter() {
        match ctx.store.get(key) {
            Some(it) => {
                hits += 1;
                value_line(out, key, &it, cas);
            }
            None => misses += 1,
        }
    }
    // memcached counts cmd_get per key.
    bump(&ctx.stats.cmd_get, hits + misses);
    bump(&ctx.stats.get_hits, hits);
    bump(&ctx.stats.get_misses, misses);
    out.extend_from_slice(b"END\r\n");
    Outcome::default()
}

pub(super) fn gat(exptime: i64, keys: Keys<'_>, cas: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let opts = FetchOpts { touch: Some(exptime), ..FetchOpts::default() };
    let (mut hits, mut misses, mut seq) = (0, 0, 0);
    for key in keys.iter() {
        let f = ctx.store.fetch(key, &opts);
        seq = seq.max(f.seq);
        match f.item {
            Some(it) => {
                hits += 1;
                value_line(out, key, &it, cas);
            }
            None => misses += 1,
        }
    }
    // memcached counts gat as touches, not gets.
    bump(&ctx.stats.cmd_touch, hits + misses);
    bump(&ctx.stats.touch_hits, hits);
    bump(&ctx.stats.touch_misses, misses);
    out.extend_from_slice(b"END\r\n");
    Outcome::seq(seq)
}

pub(super) fn touch(key: &[u8], exptime: i64, noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let f = ctx.store.fetch(key, &FetchOpts { touch: Some(exptime), ..FetchOpts::default() });
    bump(&ctx.stats.cmd_touch, 1);
    if f.item.is_some() {
        bump(&ctx.stats.touch_hits, 1);
        reply(out, noreply, b"TOUCHED");
    } else {
        bump(&ctx.stats.touch_misses, 1);
        reply(out, noreply, b"NOT_FOUND");
    }
    Outcome::seq(f.seq)
}
