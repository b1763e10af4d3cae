//! Binary protocol requests: applied through the same store calls and counters as their text forms,
//! answered with binary responses (memcached 1.6 `proto_bin.c`).

use bytes::BytesMut;

use super::{arith, misc, stats, storage, Ctx, Outcome, VERSION};
use crate::protocol::binary::reply::{self as br, Body};
use crate::protocol::binary::{op, BinCmd, BinRequest, Echo, Status};
use crate::protocol::command::{Detail, StatsCmd, StoreCmd, TouchCmd};
use crate::stats::bump;
use crate::store::{ArithOpts, ArithStatus, DeleteOpts, DeleteStatus, FetchOpts, SetStatus};

/// Executes one binary request, appending its response (nothing for a quiet success) to `out`.
pub fn execute_binary(req: &BinRequest<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let (echo, quiet) = (req.echo, req.quiet);
    match req.cmd {
        BinCmd::Get { key, with_key, touch } => get(echo, quiet, key, with_key, touch, ctx, out),
        BinCmd::Touch(ref t) => touch(echo, t, ctx, out),
        BinCmd::Store { ref cmd, base } => store(echo, cmd, base, ctx, out),
        BinCmd::Delete { key, cas } => {
            let opts = DeleteOpts { compare_cas: (cas != 0).then_some(cas), ..DeleteOpts::default() };
            let (status, seq) = storage::apply_delete(key, &opts, ctx);
            match status {
                DeleteStatus::Deleted => success(out, echo, quiet, 0),
                DeleteStatus::NotFound => br::error(out, echo, Status::KeyNotFound),
                DeleteStatus::Exists => br::error(out, echo, Status::KeyExists),
            }
            Outcome::seq(seq)
        }
        BinCmd::Arith { ref cmd, cas, vivify } => {
            let opts = ArithOpts { compare_cas: cas, vivify, ..ArithOpts::new(cmd.incr, cmd.delta) };
            let res = ctx.store.arith(cmd.key, &opts);
            match res.status {
                ArithStatus::Ok => {
                    if !res.created {
                        arith::count(ctx, cmd.incr, true);
                    }
                    if !quiet {
                        br::header(out, echo, Status::Success, res.cas, Body { len: 8, ..Body::default() });
                        out.extend_from_slice(&res.value.to_be_bytes());
                    }
                }
                ArithStatus::NotFound => {
                    arith::count(ctx, cmd.incr, false);
                    br::error(out, echo, Status::KeyNotFound);
                }
                ArithStatus::Exists => br::error(out, echo, Status::KeyExists),
                ArithStatus::NonNumeric => br::error(out, echo, Status::NonNumeric),
            }
            Outcome::seq(res.seq)
        }
        BinCmd::Flush { delay } => {
            // noreply: the text reply is not wanted, only the flush and its counting.
            let o = misc::flush_all(delay, true, ctx, out);
            success(out, echo, quiet, 0);
            o
        }
        BinCmd::Noop => {
            br::ok(out, echo, 0);
            Outcome::default()
        }
        BinCmd::Version => {
            br::header(out, echo, Status::Success, 0, Body { len: VERSION.len() as u32, ..Body::default() });
            out.extend_from_slice(VERSION.as_bytes());
            Outcome::default()
        }
        BinCmd::Stat { key } => stat(echo, key, ctx, out),
        BinCmd::Quit => {
            success(out, echo, quiet, 0);
            Outcome { seq: 0, close: true }
        }
    }
}

/// A success without a body, unless the request was quiet.
fn success(out: &mut BytesMut, echo: Echo, quiet: bool, cas: u64) {
    if !quiet {
        br::ok(out, echo, cas);
    }
}

/// get/getk/gat/gatk and their quiet forms: a hit answers flags (extras), the key for the k forms, and
/// the value; a quiet miss is not answered; getk's miss carries the key instead of an error text.
fn get(
    echo: Echo,
    quiet: bool,
    key: &[u8],
    with_key: bool,
    touch: Option<i64>,
    ctx: &Ctx,
    out: &mut BytesMut,
) -> Outcome {
    let mut seq = 0;
    let hit = ctx.store.fetch_with(key, &FetchOpts { touch, ..FetchOpts::default() }, |f| {
        seq = f.seq;
        let Some(it) = f.item else { return false };
        br::get_hit(out, echo, it.cas, it.flags, with_key.then_some(key), it.value);
        true
    });
    let s = &ctx.stats;
    let (cmds, hits, misses) = match touch {
        Some(_) => (&s.cmd_touch, &s.touch_hits, &s.touch_misses),
        None => (&s.cmd_get, &s.get_hits, &s.get_misses),
    };
    bump(cmds, 1);
    bump(if hit { hits } else { misses }, 1);
    s.detail.record_get(key, hit);
    if !hit && !quiet {
        if with_key {
            let body = Body { keylen: key.len() as u16, len: key.len() as u32, ..Body::default() };
            br::header(out, echo, Status::KeyNotFound, 0, body);
            out.extend_from_slice(key);
        } else {
            br::error(out, echo, Status::KeyNotFound);
        }
    }
    Outcome::seq(seq)
}

/// touch: a hit answers the flags and CAS, not the value.
fn touch(echo: Echo, t: &TouchCmd<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let f = ctx.store.fetch_with(t.key, &FetchOpts { touch: Some(t.exptime), ..FetchOpts::default() }, |f| {
        let hit = f.item.map(|it| {
            br::header(out, echo, Status::Success, it.cas, Body { extlen: 4, keylen: 0, len: 4 });
            out.extend_from_slice(&it.flags.to_be_bytes());
        });
        (hit.is_some(), f.seq)
    });
    let (hit, seq) = f;
    bump(&ctx.stats.cmd_touch, 1);
    bump(if hit { &ctx.stats.touch_hits } else { &ctx.stats.touch_misses }, 1);
    if !hit {
        br::error(out, echo, Status::KeyNotFound);
    }
    Outcome::seq(seq)
}

/// set/add/replace/append/prepend: a refusal is worded by the opcode, as `complete_update_bin` does.
fn store(echo: Echo, cmd: &StoreCmd<'_>, base: u8, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let res = storage::apply_store(cmd, ctx);
    match res.status {
        SetStatus::Stored => success(out, echo, cmd.noreply, res.cas),
        SetStatus::Exists => br::error(out, echo, Status::KeyExists),
        SetStatus::NotFound => br::error(out, echo, Status::KeyNotFound),
        // TooLarge here: an append that would outgrow -I (the parser refuses the rest).
        SetStatus::NotStored | SetStatus::TooLarge => {
            let status = match base {
                op::ADD => Status::KeyExists,
                op::REPLACE => Status::KeyNotFound,
                _ => Status::NotStored,
            };
            br::error(out, echo, status);
        }
    }
    Outcome::seq(res.seq)
}

/// For a set the parser refused as too large: `Too large.`, and the old item goes (as in text).
pub fn reject_too_large(echo: Echo, key: Option<&[u8]>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let o = match key {
        Some(key) => super::reject_too_large_noreply(key, true, ctx, out),
        None => Outcome::default(),
    };
    br::error(out, echo, Status::TooLarge);
    o
}

/// stat: memcached's `process_bin_stat` picks the listing by the key; each line becomes a response
/// with the stat's name as key and its value as value, and an empty response ends the listing.
fn stat(echo: Echo, key: &[u8], ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    let cmd = match key {
        b"" => StatsCmd::General,
        _ if key.starts_with(b"reset") => StatsCmd::Reset,
        _ if key.starts_with(b"settings") => StatsCmd::Settings,
        _ if key.starts_with(b"detail on") => StatsCmd::Detail(Detail::On),
        _ if key.starts_with(b"detail off") => StatsCmd::Detail(Detail::Off),
        _ if key.starts_with(b"detail dump") => StatsCmd::Detail(Detail::Dump),
        b"items" => StatsCmd::Items,
        b"slabs" => StatsCmd::Slabs,
        b"sizes" => StatsCmd::Sizes,
        b"conns" => StatsCmd::Conns,
        _ => {
            br::error(out, echo, Status::KeyNotFound);
            return Outcome::default();
        }
    };
    let mut text = BytesMut::new();
    let o = stats::stats(cmd, ctx, &mut text);
    let mut entry = |name: &[u8], value: &[u8]| {
        let body = Body { keylen: name.len() as u16, len: (name.len() + value.len()) as u32, ..Body::default() };
        br::header(out, echo, Status::Success, 0, body);
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    };
    if cmd == StatsCmd::Detail(Detail::Dump) {
        let dump = text.strip_suffix(crate::protocol::reply::END).unwrap_or(&text);
        entry(b"detailed", dump);
    } else {
        for line in text[..].split(|&b| b == b'\n').filter_map(|l| l.strip_prefix(b"STAT ")) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let sp = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
            entry(&line[..sp], line.get(sp + 1..).unwrap_or_default());
        }
    }
    entry(b"", b"");
    o
}
