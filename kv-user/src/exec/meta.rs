//! Meta commands: mg, ms, md, ma, mn, me.
//!
//! Follows memcached 1.6's proto_parser.c. Returned flags (c f h k l O s t) come back in request order,
//! as memcached sends them, then Z X W.
//! `q` hides only the nominal reply (mg EN, ms/md/ma HD); errors are always sent.
//!
//! A base64 key (`b`) is echoed (`k`) re-encoded from its decoded bytes, followed by ` b`, as memcached
//! does for misses and for ms/md/ma. Deviation: on an mg hit memcached 1.6.18 decides by how the item
//! was stored (`ms` with `b` marks it binary; `set`, or `ms` without `b`, does not) rather than by the
//! request; the store keeps no such mark, so mg follows the request here too.

use bytes::BytesMut;

use super::arith::count as count_arith;
use super::storage::count_cas;
use super::{put_i64, put_u64, Ctx, Outcome};
use crate::protocol::command::MetaFlags;
use crate::protocol::reply::{self as r, CRLF};
use crate::protocol::{base64, KEY_MAX_LENGTH};
use crate::stats::{bump, Stats};
use crate::store::{ArithOpts, ArithStatus, DeleteOpts, DeleteStatus, FetchOpts, SetMode, SetRequest, SetStatus};

const MAX_OPAQUE: usize = 32;

/// Room for a decoded base64 key: the parser bounds the encoded key to 250 bytes.
type KeyBuf = [u8; KEY_MAX_LENGTH];

fn error(out: &mut BytesMut, line: &[u8]) -> Outcome {
    out.extend_from_slice(line);
    Outcome::default()
}

/// `mn` and `me`: a status code alone.
pub(super) fn code_only(code: &[u8], ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    bump(&ctx.stats.cmd_meta, 1);
    out.extend_from_slice(code);
    out.extend_from_slice(CRLF);
    Outcome::default()
}

/// Validates the flags shared by all meta commands and decodes a base64 key (`b`) into `buf`, with
/// the parser's decoder ([`base64`]): a key the parser accepted always decodes.
fn prepare<'k>(key: &'k [u8], flags: &MetaFlags<'_>, buf: &'k mut KeyBuf) -> Result<&'k [u8], &'static [u8]> {
    if flags.opaque.is_some_and(|o| o.len() > MAX_OPAQUE) {
        return Err(r::OPAQUE_TOO_LONG);
    }
    if !flags.base64_key {
        return Ok(key);
    }
    match base64::decode(key, buf) {
        Some(n) => Ok(&buf[..n]),
        None => Err(r::DECODE_KEY),
    }
}

/// Counts a meta command and runs `run` with its decoded key, or answers the flag or key error
/// (`error_for`: one message for every such error, as memcached's `ma` does).
fn keyed(
    key: &[u8],
    flags: &MetaFlags<'_>,
    ctx: &Ctx,
    out: &mut BytesMut,
    error_for: Option<&'static [u8]>,
    run: impl FnOnce(&[u8], &mut BytesMut) -> Outcome,
) -> Outcome {
    bump(&ctx.stats.cmd_meta, 1);
    let mut buf = [0; KEY_MAX_LENGTH];
    match prepare(key, flags, &mut buf) {
        Ok(key) => run(key, out),
        Err(e) => error(out, error_for.unwrap_or(e)),
    }
}

fn flag_u64(out: &mut BytesMut, f: u8, v: u64) {
    out.extend_from_slice(&[b' ', f]);
    put_u64(out, v);
}

/// ` k<key>` (base64-encoded plus ` b` for binary keys).
fn flag_key(out: &mut BytesMut, key: &[u8], flags: &MetaFlags<'_>) {
    if !flags.return_key {
        return;
    }
    out.extend_from_slice(b" k");
    if flags.base64_key {
        base64::encode(key, out);
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

fn flag_opaque(out: &mut BytesMut, flags: &MetaFlags<'_>) {
    if let Some(o) = flags.opaque {
        out.extend_from_slice(b" O");
        out.extend_from_slice(o);
    }
}

/// Remaining TTL as memcached reports it: -1 for never.
fn flag_ttl(out: &mut BytesMut, exptime: u64, now: u64) {
    out.extend_from_slice(b" t");
    if exptime == 0 {
        out.extend_from_slice(b"-1");
    } else {
        put_i64(out, exptime.saturating_sub(now) as i64);
    }
}

/// Values a reply can echo; `None` where the command has nothing to say (misses echo only k and O).
#[derive(Default)]
struct RetVals {
    cas: Option<u64>,
    flags: Option<u32>,
    hit: Option<bool>,
    last_access: Option<u64>,
    size: Option<u64>,
    /// (exptime, now)
    ttl: Option<(u64, u64)>,
}

/// Appends the requested return flags in the order the client listed them.
fn ret_flags(out: &mut BytesMut, key: &[u8], flags: &MetaFlags<'_>, v: &RetVals) {
    for &f in &flags.ret_order[..flags.ret_count as usize] {
        match f {
            b'c' => v.cas.into_iter().for_each(|c| flag_u64(out, b'c', c)),
            b'f' => v.flags.into_iter().for_each(|x| flag_u64(out, b'f', u64::from(x))),
            b'h' => v.hit.into_iter().for_each(|h| flag_u64(out, b'h', u64::from(h))),
            b'k' => flag_key(out, key, flags),
            b'l' => v.last_access.into_iter().for_each(|l| flag_u64(out, b'l', l)),
            b'O' => flag_opaque(out, flags),
            b's' => v.size.into_iter().for_each(|s| flag_u64(out, b's', s)),
            b't' => v.ttl.into_iter().for_each(|(e, now)| flag_ttl(out, e, now)),
            _ => {}
        }
    }
}

/// A status line with only the O and k flags (misses and failures).
fn status_line(out: &mut BytesMut, code: &[u8], key: &[u8], flags: &MetaFlags<'_>) {
    out.extend_from_slice(code);
    ret_flags(out, key, flags, &RetVals::default());
    out.extend_from_slice(CRLF);
}

/// An mg counts as a touch when it sets a TTL, else as a get (as memcached counts it).
fn count_fetch(s: &Stats, touched: bool, hit: bool) {
    let (cmd, hits, misses) =
        if touched { (&s.cmd_touch, &s.touch_hits, &s.touch_misses) } else { (&s.cmd_get, &s.get_hits, &s.get_misses) };
    bump(cmd, 1);
    bump(if hit { hits } else { misses }, 1);
}

pub(super) fn mg(key: &[u8], flags: &MetaFlags<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    keyed(key, flags, ctx, out, None, |key, out| {
        let opts = FetchOpts {
            bump: !flags.no_lru_bump,
            touch: flags.set_ttl,
            vivify: flags.vivify_ttl,
            new_cas: flags.explicit_cas,
            recache: flags.recache_ttl,
        };
        ctx.store.fetch_with(key, &opts, |f| {
            let touched = flags.set_ttl.is_some();
            let s = &ctx.stats;
            let Some(it) = f.item else {
                count_fetch(s, touched, false);
                if !flags.quiet {
                    status_line(out, r::EN, key, flags);
                }
                return Outcome::seq(f.seq);
            };
            count_fetch(s, touched, true);
            let now = ctx.store.now();
            // C: a matching CAS means the client's copy is current, so the value is not sent.
            let send_value = flags.return_value && flags.compare_cas != Some(it.cas);
            if send_value {
                out.extend_from_slice(r::VA);
                put_u64(out, it.value.len() as u64);
            } else {
                out.extend_from_slice(r::HD);
            }
            let vals = RetVals {
                cas: Some(it.cas),
                flags: Some(it.flags),
                hit: Some(it.fetched),
                last_access: Some(now.saturating_sub(it.last_access)),
                size: Some(it.value.len() as u64),
                ttl: Some((it.exptime, now)),
            };
            ret_flags(out, key, flags, &vals);
            if f.token_sent {
                out.extend_from_slice(b" Z");
            }
            if it.stale {
                out.extend_from_slice(b" X");
            }
            if f.won {
                out.extend_from_slice(b" W");
            }
            out.extend_from_slice(CRLF);
            if send_value {
                out.extend_from_slice(it.value);
                out.extend_from_slice(CRLF);
            }
            Outcome::seq(f.seq)
        })
    })
}

pub(super) fn ms(key: &[u8], data: &[u8], flags: &MetaFlags<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    keyed(key, flags, ctx, out, None, |key, out| {
        let mut mode = match flags.mode {
            None | Some(b'S') => SetMode::Set,
            Some(b'E') => SetMode::Add,
            Some(b'A') => SetMode::Append,
            Some(b'P') => SetMode::Prepend,
            Some(b'R') => SetMode::Replace,
            Some(_) => return error(out, r::MS_MODE),
        };
        // A CAS turns set/replace into a CAS store; append/prepend check it themselves; add ignores it.
        if flags.compare_cas.is_some() && matches!(mode, SetMode::Set | SetMode::Replace) {
            mode = SetMode::Cas;
        }
        let appending = matches!(mode, SetMode::Append | SetMode::Prepend);
        let req = SetRequest {
            key,
            value: data,
            flags: flags.client_flags.unwrap_or(0),
            exptime: flags.set_ttl.unwrap_or(0),
            mode,
            compare_cas: flags.compare_cas.unwrap_or(0),
            new_cas: flags.explicit_cas,
            allow_stale: flags.invalidate && mode == SetMode::Cas,
            vivify: if appending { flags.vivify_ttl } else { None },
        };
        let res = ctx.store.set(&req);
        if res.status == SetStatus::TooLarge {
            bump(&ctx.stats.store_too_large, 1);
            let seq = ctx.store.remove(key);
            error(out, r::TOO_LARGE);
            return Outcome::seq(seq);
        }
        bump(&ctx.stats.cmd_set, 1);
        if mode == SetMode::Cas {
            count_cas(ctx, res.status);
        }
        let code = match res.status {
            SetStatus::Stored if flags.quiet => return Outcome::seq(res.seq),
            SetStatus::Stored => r::HD,
            SetStatus::Exists => r::EX,
            SetStatus::NotFound => r::NF,
            SetStatus::NotStored | SetStatus::TooLarge => r::NS,
        };
        out.extend_from_slice(code);
        let vals = RetVals { cas: Some(res.cas), size: Some(res.size as u64), ..RetVals::default() };
        ret_flags(out, key, flags, &vals);
        out.extend_from_slice(CRLF);
        Outcome::seq(res.seq)
    })
}

pub(super) fn md(key: &[u8], flags: &MetaFlags<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    keyed(key, flags, ctx, out, None, |key, out| {
        if flags.remove_value {
            return md_remove_value(key, flags, ctx, out);
        }
        let opts = DeleteOpts {
            compare_cas: flags.compare_cas,
            invalidate: flags.invalidate,
            // T only means something together with I.
            touch: if flags.invalidate { flags.set_ttl } else { None },
            new_cas: flags.explicit_cas,
        };
        let (status, seq) = ctx.store.delete(key, &opts);
        let code = match status {
            DeleteStatus::Deleted => {
                if !flags.invalidate {
                    bump(&ctx.stats.delete_hits, 1);
                }
                if flags.quiet {
                    return Outcome::seq(seq);
                }
                r::HD
            }
            DeleteStatus::NotFound => {
                bump(&ctx.stats.delete_misses, 1);
                r::NF
            }
            DeleteStatus::Exists => {
                bump(&ctx.stats.delete_misses, 1);
                r::EX
            }
        };
        status_line(out, code, key, flags);
        Outcome::seq(seq)
    })
}

/// `md <key> x`, as memcached (>= 1.6.27) does it: the item is replaced by an empty one with the flags
/// of `F` and the TTL of `T` (0 and never without them) that keeps its CAS (or takes `E`'s); with `I`
/// that tombstone is then marked stale, which gives it a new CAS. Counts as a delete hit (without `I`).
///
/// The replacement is a CAS store on the CAS just read, so a concurrent write makes it retry rather
/// than be overwritten with the old CAS; after a few lost races it replaces whatever is there with a
/// fresh CAS. (memcached does both steps under the item lock; the store has no such combined write.)
fn md_remove_value(key: &[u8], flags: &MetaFlags<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    const CAS_TRIES: usize = 3;
    let miss = |out: &mut BytesMut, code| {
        bump(&ctx.stats.delete_misses, 1);
        status_line(out, code, key, flags);
        Outcome::default()
    };
    let mut req = SetRequest::new(SetMode::Cas, key, b"", flags.client_flags.unwrap_or(0), flags.set_ttl.unwrap_or(0));
    let mut tries = 0;
    let res = loop {
        // C: the client names the CAS, so there is nothing to read first (and no retry).
        let cas = match flags.compare_cas {
            Some(c) => c,
            None => match ctx.store.fetch(key, &FetchOpts { bump: false, ..FetchOpts::default() }).item {
                Some(it) => it.cas,
                None => return miss(out, r::NF),
            },
        };
        tries += 1;
        // A write that keeps losing races replaces whatever is there, with a fresh CAS; CAS 0 (stored
        // with `E0`) never matches a CAS store, and a replace keeping 0 protects nothing less.
        let fallback = flags.compare_cas.is_none() && tries > CAS_TRIES;
        let replace = fallback || (flags.compare_cas.is_none() && cas == 0);
        (req.mode, req.compare_cas) = if replace { (SetMode::Replace, 0) } else { (SetMode::Cas, cas) };
        req.new_cas = flags.explicit_cas.or((!fallback).then_some(cas));
        let res = ctx.store.set(&req);
        match res.status {
            SetStatus::Stored => break res,
            SetStatus::Exists if flags.compare_cas.is_some() => return miss(out, r::EX),
            SetStatus::Exists => {}
            SetStatus::NotFound | SetStatus::NotStored | SetStatus::TooLarge => return miss(out, r::NF),
        }
    };
    let mut seq = res.seq;
    if flags.invalidate {
        let opts = DeleteOpts {
            compare_cas: Some(res.cas),
            invalidate: true,
            touch: flags.set_ttl,
            new_cas: flags.explicit_cas,
        };
        // Lost to a concurrent write: that write stands, and the value was removed before it.
        seq = seq.max(ctx.store.delete(key, &opts).1);
    } else {
        bump(&ctx.stats.delete_hits, 1);
    }
    if !flags.quiet {
        status_line(out, r::HD, key, flags);
    }
    Outcome::seq(seq)
}

pub(super) fn ma(key: &[u8], flags: &MetaFlags<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    keyed(key, flags, ctx, out, Some(r::INVALID_OR_DUPLICATE_FLAG), |key, out| {
        let incr = match flags.mode {
            None | Some(b'I' | b'+') => true,
            Some(b'D' | b'-') => false,
            Some(_) => return error(out, r::MA_MODE),
        };
        let opts = ArithOpts {
            incr,
            delta: flags.delta.unwrap_or(1),
            compare_cas: flags.compare_cas.unwrap_or(0),
            new_cas: flags.explicit_cas,
            vivify: flags.vivify_ttl.map(|ttl| (ttl, flags.initial.unwrap_or(0))),
            touch: flags.set_ttl,
            pad: false,
        };
        let res = ctx.store.arith(key, &opts);
        match res.status {
            ArithStatus::Ok => {
                if !res.created {
                    count_arith(ctx, incr, true);
                }
                if flags.quiet {
                    return Outcome::seq(res.seq);
                }
                let mut num = itoa::Buffer::new();
                let num = num.format(res.value).as_bytes();
                if flags.return_value {
                    out.extend_from_slice(r::VA);
                    put_u64(out, num.len() as u64);
                } else {
                    out.extend_from_slice(r::HD);
                }
                let vals =
                    RetVals { cas: Some(res.cas), ttl: Some((res.exptime, ctx.store.now())), ..RetVals::default() };
                ret_flags(out, key, flags, &vals);
                out.extend_from_slice(CRLF);
                if flags.return_value {
                    out.extend_from_slice(num);
                    out.extend_from_slice(CRLF);
                }
            }
            ArithStatus::NonNumeric => {
                error(out, r::NON_NUMERIC);
            }
            ArithStatus::NotFound => {
                count_arith(ctx, incr, false);
                status_line(out, r::NF, key, flags);
            }
            ArithStatus::Exists => status_line(out, r::EX, key, flags),
        }
        Outcome::seq(res.seq)
    })
}
