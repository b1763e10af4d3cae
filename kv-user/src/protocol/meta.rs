//! Meta commands (mg ms md ma mn me), following memcached 1.6.38's `process_m*_command` and
//! `_meta_flag_preparse`:
//!
//! * At most 17 flags (memcached rejects `ntokens > 20`, counting command, key and terminal token;
//!   for ms also the datalen): `CLIENT_ERROR options flags are too long` (mg) /
//!   `CLIENT_ERROR options flags too long` (ms md ma).
//! * Only a flag token's first byte is the flag; a repeated flag or a first byte >= 127 is
//!   `CLIENT_ERROR duplicate flag`, an unknown one `CLIENT_ERROR invalid flag`. Numeric-token errors
//!   have their own messages; md and ma report every flag error as
//!   `CLIENT_ERROR invalid or duplicate flag`.
//! * Accepted flags: b c f h k l O q s t v u x E C N T R F I M D J, plus the proxy hints P and L,
//!   which are ignored. memcached accepts every known flag on every meta command; so do we.
//! * An `O` token longer than 32 bytes (with the `O`) is `CLIENT_ERROR opaque token too long`.
//!   memcached finds this while building the reply (for ma after applying the delta); we reject
//!   it up front.
//! * ms errors found after the datalen was read swallow `datalen + 2` bytes; too large values also
//!   remove the old item whatever the mode (`too_large_key`), except that a base64 key (`b`) is not
//!   reported there, as the executor could not tell it is encoded (the old item then stays).
//! * base64 keys (`b`) are validated with [`super::base64`] (memcached's rules) and returned
//!   encoded, with `base64_key` set; the executor decodes them with the same decoder.

use super::base64;
use super::command::{Command, MetaFlags};
use super::parse::{
    data_block, error, item_size_ok, parse_i32, parse_u32, parse_u64, Block, Limits, Parsed, Tokens, KEY_MAX_LENGTH,
};
use super::reply::{
    BAD_DATA_CHUNK, BAD_DELTA_VALUE, BAD_FORMAT, BAD_INITIAL_VALUE, BAD_TOKEN, DECODE_KEY, DUPLICATE_FLAG, ERROR,
    FLAGS_TOO_LONG, INVALID_FLAG, INVALID_OR_DUPLICATE_FLAG, MA_MODE, MG_FLAGS_TOO_LONG, MS_MODE, M_TOKEN_LENGTH,
    OPAQUE_TOO_LONG, TOO_LARGE,
};

/// memcached's `MFLAG_MAX_OPT_LENGTH`: the most tokens (memcached's count) a meta command may have.
const MFLAG_MAX_OPT_LENGTH: usize = 20;
/// memcached's `MFLAG_MAX_OPAQUE_LENGTH`, counting the `O`.
const MFLAG_MAX_OPAQUE_LENGTH: usize = 32;

/// Dispatches a two-byte command starting with `m`.
pub(super) fn parse_meta<'a>(buf: &'a [u8], toks: &Tokens<'a>, consumed: usize, limits: &Limits) -> Parsed<'a> {
    match toks.get(0).get(1) {
        Some(b'n') => Parsed::Command { cmd: Command::MetaNoop, consumed },
        Some(b'e') => debug(toks, consumed),
        Some(b's') => set(buf, toks, consumed, limits),
        Some(&c @ (b'g' | b'd' | b'a')) => key_flags(toks, consumed, c),
        _ => error(ERROR, consumed),
    }
}

fn command(cmd: Command<'_>, consumed: usize) -> Parsed<'_> {
    Parsed::Command { cmd, consumed }
}

/// mg, md, ma: `<cmd> <key> <flags>*`.
fn key_flags<'a>(toks: &Tokens<'a>, consumed: usize, which: u8) -> Parsed<'a> {
    if toks.count() < 3 {
        return error(ERROR, consumed);
    }
    let key = toks.get(1);
    if key.len() > KEY_MAX_LENGTH {
        return error(BAD_FORMAT, consumed);
    }
    if toks.count() > MFLAG_MAX_OPT_LENGTH {
        let reply = if which == b'g' { MG_FLAGS_TOO_LONG } else { FLAGS_TOO_LONG };
        return error(reply, consumed);
    }
    let flags = match preparse(toks, 2, key) {
        Ok(f) => f,
        Err(e) if which == b'g' => return error(e, consumed),
        Err(_) => return error(INVALID_OR_DUPLICATE_FLAG, consumed),
    };
    if which == b'a' && !matches!(flags.mode, None | Some(b'I' | b'+' | b'D' | b'-')) {
        return error(MA_MODE, consumed);
    }
    if opaque_too_long(&flags) {
        return error(OPAQUE_TOO_LONG, consumed);
    }
    let cmd = match which {
        b'g' => Command::MetaGet { key, flags },
        b'd' => Command::MetaDelete { key, flags },
        _ => Command::MetaArith { key, flags },
    };
    command(cmd, consumed)
}

/// ms `<key> <datalen> <flags>*\r\n<data>\r\n`.
fn set<'a>(buf: &'a [u8], toks: &Tokens<'a>, consumed: usize, limits: &Limits) -> Parsed<'a> {
    if toks.count() < 3 {
        return error(ERROR, consumed);
    }
    let key = toks.get(1);
    if key.len() > KEY_MAX_LENGTH || toks.count() == 3 {
        return error(BAD_FORMAT, consumed);
    }
    if toks.count() > MFLAG_MAX_OPT_LENGTH {
        return error(FLAGS_TOO_LONG, consumed);
    }
    let Some(vlen) =
        parse_i32(toks.get(2)).and_then(|v| usize::try_from(v).ok()).filter(|&v| v <= i32::MAX as usize - 2)
    else {
        return error(BAD_FORMAT, consumed);
    };
    // From here on memcached knows the length and swallows the data block on error.
    let swallow = |reply: &'static [u8], too_large_key: Option<&'a [u8]>| Parsed::Error {
        reply,
        consumed,
        swallow: vlen + 2,
        close: false,
        too_large_key,
    };
    let flags = match preparse(toks, 3, key) {
        Ok(f) => f,
        Err(e) => return swallow(e, None),
    };
    if !matches!(flags.mode, None | Some(b'E' | b'A' | b'P' | b'R' | b'S')) {
        return swallow(MS_MODE, None);
    }
    if opaque_too_long(&flags) {
        return swallow(OPAQUE_TOO_LONG, None);
    }
    let nkey = if flags.base64_key { base64::decoded_len(key).unwrap_or(key.len()) } else { key.len() };
    if !item_size_ok(nkey, flags.client_flags.unwrap_or(0), vlen, limits) {
        return swallow(TOO_LARGE, (!flags.base64_key).then_some(key));
    }
    match data_block(buf, consumed, vlen) {
        Block::Incomplete(total) => Parsed::Partial { total, noreply: false },
        // ms always reports this one, q or not.
        Block::Bad(end) => error(BAD_DATA_CHUNK, end),
        Block::Ok(data, end) => command(Command::MetaSet { key, data, flags }, end),
    }
}

/// me `<key> [b]`: the executor answers it; only the key is checked here.
fn debug<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let key = toks.get(1);
    if toks.count() < 3 || key.len() > KEY_MAX_LENGTH {
        return error(BAD_FORMAT, consumed);
    }
    // memcached reads only a `b` right after the key; other tokens are ignored.
    let base64 = toks.count() >= 4 && toks.get(2) == b"b";
    if base64 && base64::decoded_len(key).is_none() {
        return error(BAD_FORMAT, consumed);
    }
    command(Command::MetaDebug { key, base64 }, consumed)
}

fn opaque_too_long(flags: &MetaFlags<'_>) -> bool {
    flags.opaque.is_some_and(|o| 1 + o.len() > MFLAG_MAX_OPAQUE_LENGTH)
}

/// memcached's `_meta_flag_preparse`: flags from token `start` on. Duplicate and unknown flags stop
/// at once; token errors are remembered (the last message wins, `F` has none of its own) and
/// reported after all flags were seen.
fn preparse<'a>(toks: &Tokens<'a>, start: usize, key: &[u8]) -> Result<MetaFlags<'a>, &'static [u8]> {
    let mut f = MetaFlags::default();
    let mut seen = 0u128;
    let mut failed: Option<&'static [u8]> = None;
    let mut errstr = BAD_FORMAT;
    for i in start..toks.len() {
        let tok = toks.get(i);
        let Some((&flag, arg)) = tok.split_first() else {
            continue;
        };
        if flag >= 127 || seen & (1 << flag) != 0 {
            return Err(DUPLICATE_FLAG);
        }
        seen |= 1 << flag;
        if b"cfhklOst".contains(&flag) && (f.ret_count as usize) < f.ret_order.len() {
            f.ret_order[f.ret_count as usize] = flag;
            f.ret_count += 1;
        }
        let mut bad = |msg: Option<&'static [u8]>| {
            if let Some(m) = msg {
                errstr = m;
            }
            failed = Some(errstr);
        };
        match flag {
            b'b' => {
                if base64::decoded_len(key).is_none() {
                    bad(Some(DECODE_KEY));
                }
                f.base64_key = true;
            }
            b'N' => f.vivify_ttl = or_bad(parse_i32(arg).map(i64::from), &mut bad, Some(BAD_TOKEN)),
            b'T' => f.set_ttl = or_bad(parse_i32(arg).map(i64::from), &mut bad, Some(BAD_TOKEN)),
            b'R' => f.recache_ttl = or_bad(parse_i32(arg).map(i64::from), &mut bad, Some(BAD_TOKEN)),
            b'l' => f.return_last_access = true,
            b'O' => f.opaque = Some(arg),
            b'P' | b'L' => {}
            b'k' => f.return_key = true,
            b's' => f.return_size = true,
            b't' => f.return_ttl = true,
            b'c' => f.return_cas = true,
            b'f' => f.return_flags = true,
            b'v' => f.return_value = true,
            b'h' => f.return_hit = true,
            b'u' => f.no_lru_bump = true,
            b'q' => f.quiet = true,
            b'x' => f.remove_value = true,
            b'F' => f.client_flags = or_bad(parse_u32(arg), &mut bad, None),
            b'C' => f.compare_cas = or_bad(parse_u64(arg), &mut bad, Some(BAD_TOKEN)),
            b'E' => f.explicit_cas = or_bad(parse_u64(arg), &mut bad, Some(BAD_TOKEN)),
            b'M' => match arg {
                [m] => f.mode = Some(*m),
                _ => bad(Some(M_TOKEN_LENGTH)),
            },
            b'J' => f.initial = or_bad(parse_u64(arg), &mut bad, Some(BAD_INITIAL_VALUE)),
            b'D' => f.delta = or_bad(parse_u64(arg), &mut bad, Some(BAD_DELTA_VALUE)),
            b'I' => f.invalidate = true,
            _ => return Err(INVALID_FLAG),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(f),
    }
}

/// A numeric flag's value; on a malformed one, None (the flag stays unset: each flag comes once) after
/// reporting `msg` through `bad`.
fn or_bad<T>(v: Option<T>, bad: &mut impl FnMut(Option<&'static [u8]>), msg: Option<&'static [u8]>) -> Option<T> {
    if v.is_none() {
        bad(msg);
    }
    v
}
