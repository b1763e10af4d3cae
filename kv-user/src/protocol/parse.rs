//! Request framing and the classic text commands.
//!
//! Behaviour follows memcached 1.6.38 `proto_text.c` (`try_read_command_ascii`,
//! `tokenize_command`, `process_command_ascii` and the `process_*_command` functions):
//!
//! * A line ends at the first `\n`; one `\r` before it is stripped when the line has more than one
//!   byte. The line is cut at the first NUL, as memcached's `strlen`-based tokenizer does.
//! * Tokens are separated by runs of `' '` only (tabs and control bytes are token bytes, as in
//!   memcached). At most 23 tokens are split off (`MAX_TOKENS` = 24 with the terminal token): a
//!   command with more tokens than it takes gets `ERROR`; get/gets/gat/gats take any number of keys.
//! * `noreply` is the last token; it also suppresses the error replies of the command it ends, as
//!   memcached's `out_string` does (the `Error` then has an empty `reply`).
//! * A storage line with bad numbers or a bad key gets `CLIENT_ERROR bad command line format` and
//!   its data block is NOT swallowed (memcached then reads the data as a command line). A value
//!   too large for `-I` gets `SERVER_ERROR object too large for cache` and `bytes + 2` is
//!   swallowed; for `set` (not add/replace/append/prepend/cas, as in memcached) the old item is
//!   removed, signalled by `too_large_key`. A data block not ending in `\r\n` gets
//!   `CLIENT_ERROR bad data chunk`; the whole line + `bytes` + 2 is consumed and nothing stored.
//! * More than 2048 bytes without a newline closes the connection without a reply, unless the
//!   buffer starts (after at most 100 spaces) with `get ` or `gets `: memcached grows its buffer
//!   without bound for such multigets; we allow them up to `max(item_size_max, 2048)` bytes and
//!   then reply `CLIENT_ERROR line too long` and close.
//! * An unknown command whose last token starts with `HTTP/` closes the connection silently.
//!
//! Deliberate deviations:
//! * Numbers are parsed strictly, as in memcached >= 1.6.39 (mcmc): decimal digits only, a leading
//!   `-` for signed fields, no `+`/whitespace, range-checked (flags and verbosity are u32, exptime
//!   and bytes i32, delta and cas u64). memcached 1.6.38's `strtol` path silently truncated
//!   out-of-range values.
//! * Operator commands (`lru_crawler`, `cache_memlimit`, `slabs`, `shutdown`): see `admin.rs`.
//!   Admin commands not in [`Command`] (`lru`, `watch`, `extstore`, ...) get `ERROR`.
//! * Meta: see `meta.rs`.

use super::command::{ArithCmd, Command, GatCmd, Keys, SetMode, StoreCmd, TouchCmd};
use super::{admin, meta, reply};

/// Longest key, as memcached's `KEY_MAX_LENGTH` (the wire contract's, shared with the XDP program).
pub use kv_common::MAX_KEY_LEN as KEY_MAX_LENGTH;
/// Bytes without a newline after which memcached gives up on a (non-multiget) connection.
pub const MAX_LINE_NO_NEWLINE: usize = 2048;

/// memcached's token array size, including the terminal token.
const MAX_TOKENS: usize = 24;
const MAX_LEADING_SPACES: usize = 100;

/// No reply: noreply, or a silent close.
const R_NONE: &[u8] = b"";

/// Parser limits from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `-I`: largest item (header + key + value), default 1 MiB.
    pub item_size_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { item_size_max: 1024 * 1024 }
    }
}

/// Result of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete request occupying `buf[..consumed]`.
    Command { cmd: Command<'a>, consumed: usize },
    /// Need more bytes: no complete line yet.
    Incomplete,
    /// Need more bytes: a storage command whose data block is not fully there; the request will be
    /// `total` bytes long (so a connection can size, and account for, the buffer it needs). `noreply`:
    /// an error about it (out of memory) is not sent.
    Partial { total: usize, noreply: bool },
    /// A bad request occupying `buf[..consumed]`: write `reply` (may be empty: noreply, or a silent
    /// close), then discard `swallow` more bytes (which may not have arrived yet), then close the
    /// connection if `close`. `too_large_key`: the request was refused as too large for `-I` and
    /// the old item under this key must be removed (memcached does so to avoid serving stale data).
    Error { reply: &'static [u8], consumed: usize, swallow: usize, close: bool, too_large_key: Option<&'a [u8]> },
}

impl Parsed<'_> {
    /// Whether more bytes are needed (either kind).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Parsed::Incomplete | Parsed::Partial { .. })
    }
}

/// Whether an item with a key of `nkey` bytes, these client flags and a value of `value_len` bytes
/// fits in `-I` (kv_common::item_size, memcached's formula; the store checks appends with it too).
pub fn item_size_ok(nkey: usize, flags: u32, value_len: usize, limits: &Limits) -> bool {
    kv_common::item_size(nkey, flags, value_len) <= limits.item_size_max as u64
}

/// Parses one request from the front of `buf`. Never allocates, never panics.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return no_newline(buf, limits);
    };
    let mut line = &buf[..nl];
    if nl > 1 && line.last() == Some(&b'\r') {
        line = &line[..nl - 1];
    }
    if let Some(z) = line.iter().position(|&b| b == 0) {
        line = &line[..z];
    }
    parse_line(buf, line, nl + 1, limits)
}

/// Bounds the buffer of a line still waiting for its newline (memcached's check in
/// `try_read_command_ascii`).
fn no_newline<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    if buf.len() <= MAX_LINE_NO_NEWLINE {
        return Parsed::Incomplete;
    }
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    let rest = &buf[spaces..];
    if spaces > MAX_LEADING_SPACES || !(rest.starts_with(b"get ") || rest.starts_with(b"gets ")) {
        return close(R_NONE, buf.len());
    }
    if buf.len() > limits.item_size_max.max(MAX_LINE_NO_NEWLINE) {
        return close(reply::LINE_TOO_LONG, buf.len());
    }
    Parsed::Incomplete
}

fn close(reply: &'static [u8], consumed: usize) -> Parsed<'static> {
    Parsed::Error { reply, consumed, swallow: 0, close: true, too_large_key: None }
}

/// A plain error reply: nothing swallowed, connection kept.
pub(super) fn error(reply: &'static [u8], consumed: usize) -> Parsed<'static> {
    Parsed::Error { reply, consumed, swallow: 0, close: false, too_large_key: None }
}

/// Error reply of a classic command that may carry `noreply` (memcached's `out_string` skips it).
fn error_nr(reply: &'static [u8], consumed: usize, noreply: bool) -> Parsed<'static> {
    error(if noreply { R_NONE } else { reply }, consumed)
}

/// The request line split like memcached's `tokenize_command`: up to 23 tokens, kept as ranges so
/// the rest of the line (for multi-key commands) is still reachable.
pub(super) struct Tokens<'a> {
    line: &'a [u8],
    ranges: [(usize, usize); MAX_TOKENS - 1],
    n: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        let mut ranges = [(0, 0); MAX_TOKENS - 1];
        let mut n = 0;
        let mut i = 0;
        while i < line.len() && n < ranges.len() {
            if line[i] == b' ' {
                i += 1;
                continue;
            }
            let start = i;
            while i < line.len() && line[i] != b' ' {
                i += 1;
            }
            ranges[n] = (start, i);
            n += 1;
        }
        Tokens { line, ranges, n }
    }

    /// memcached's `ntokens`: the tokens split off plus the terminal token.
    pub(super) fn count(&self) -> usize {
        self.n + 1
    }

    /// Number of real tokens split off (at most 23).
    pub(super) fn len(&self) -> usize {
        self.n
    }

    /// Token `i`, or empty past the end (memcached's terminal token has length 0).
    pub(super) fn get(&self, i: usize) -> &'a [u8] {
        match self.ranges.get(i) {
            Some(&(s, e)) if i < self.n => self.line.get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The line from token `i` on, without trailing spaces; empty if there is no token `i`.
    fn rest_from(&self, i: usize) -> &'a [u8] {
        let start = match self.ranges.get(i) {
            Some(&(s, _)) if i < self.n => s,
            _ => return &[],
        };
        let rest = self.line.get(start..).unwrap_or(&[]);
        let end = rest.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        &rest[..end]
    }

    /// memcached's `set_noreply_maybe`: the last token is exactly `noreply`.
    pub(super) fn noreply(&self) -> bool {
        self.n > 0 && self.get(self.n - 1) == b"noreply"
    }
}

/// Where a data block of `vlen` bytes + `\r\n` starting at `start` stands.
pub(super) enum Block<'a> {
    /// Not all there yet; the block ends at this offset.
    Incomplete(usize),
    /// Complete but not terminated by `\r\n`; the block ends at this offset.
    Bad(usize),
    Ok(&'a [u8], usize),
}

pub(super) fn data_block(buf: &[u8], start: usize, vlen: usize) -> Block<'_> {
    let mid = start.saturating_add(vlen);
    let end = mid.saturating_add(2);
    match (buf.get(start..mid), buf.get(mid..end)) {
        (Some(data), Some(b"\r\n")) => Block::Ok(data, end),
        (Some(_), Some(_)) => Block::Bad(end),
        _ => Block::Incomplete(end),
    }
}

fn parse_line<'a>(buf: &'a [u8], line: &'a [u8], consumed: usize, limits: &Limits) -> Parsed<'a> {
    let toks = Tokens::new(line);
    // No valid command is shorter than two bytes.
    if toks.count() < 2 || toks.get(0).len() < 2 {
        return error(reply::ERROR, consumed);
    }
    let cmd = toks.get(0);
    if cmd.len() == 2 && cmd[0] == b'm' {
        return meta::parse_meta(buf, &toks, consumed, limits);
    }
    let ok = |cmd: Command<'a>| Parsed::Command { cmd, consumed };
    match cmd {
        b"get" | b"bget" => get(&toks, consumed, false, false),
        b"gets" => get(&toks, consumed, true, false),
        b"gat" => get(&toks, consumed, false, true),
        b"gats" => get(&toks, consumed, true, true),
        b"set" => storage(buf, &toks, consumed, limits, SetMode::Set),
        b"add" => storage(buf, &toks, consumed, limits, SetMode::Add),
        b"replace" => storage(buf, &toks, consumed, limits, SetMode::Replace),
        b"append" => storage(buf, &toks, consumed, limits, SetMode::Append),
        b"prepend" => storage(buf, &toks, consumed, limits, SetMode::Prepend),
        b"cas" => storage(buf, &toks, consumed, limits, SetMode::Cas),
        b"delete" => delete(&toks, consumed),
        b"incr" => arith(&toks, consumed, true),
        b"decr" => arith(&toks, consumed, false),
        b"touch" => touch(&toks, consumed),
        b"flush_all" => flush_all(&toks, consumed),
        b"verbosity" => verbosity(&toks, consumed),
        b"version" => ok(Command::Version),
        b"quit" => ok(Command::Quit),
        b"stats" => stats(&toks, consumed),
        b"shutdown" => admin::shutdown(&toks, consumed),
        b"lru_crawler" => admin::lru_crawler(&toks, consumed),
        b"cache_memlimit" => admin::cache_memlimit(&toks, consumed),
        b"slabs" => admin::slabs(&toks, consumed),
        _ => unknown(&toks, consumed),
    }
}

/// memcached's `process_stat`: the first argument picks the listing; an unknown one is `ERROR`.
fn stats<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    use super::command::{Detail, StatsCmd as S};
    /// memcached's `MAX_NUMBER_OF_SLAB_CLASSES`.
    const SLAB_CLASSES: u32 = 64;
    let cmd = match toks.get(1) {
        b"" => S::General,
        b"reset" => S::Reset,
        b"settings" => S::Settings,
        b"items" => S::Items,
        b"slabs" => S::Slabs,
        b"sizes" => S::Sizes,
        b"conns" => S::Conns,
        b"extstore" => S::Extstore,
        b"detail" => match toks.get(2) {
            b"on" => S::Detail(Detail::On),
            b"off" => S::Detail(Detail::Off),
            b"dump" => S::Detail(Detail::Dump),
            _ => return error(reply::DETAIL_USAGE, consumed),
        },
        b"cachedump" => {
            if toks.count() < 5 {
                return error(reply::BAD_COMMAND_LINE, consumed);
            }
            match (parse_u32(toks.get(2)), parse_u32(toks.get(3))) {
                (Some(class), Some(_)) if class >= SLAB_CLASSES => return error(reply::ILLEGAL_SLAB_ID, consumed),
                (Some(class), Some(limit)) => S::CacheDump { class, limit },
                _ => return error(reply::BAD_FORMAT, consumed),
            }
        }
        _ => return error(reply::ERROR, consumed),
    };
    Parsed::Command { cmd: Command::Stats(cmd), consumed }
}

fn unknown(toks: &Tokens<'_>, consumed: usize) -> Parsed<'static> {
    // memcached only reaches its HTTP check for commands outside its first-letter dispatch.
    let first = toks.get(0).first().copied().unwrap_or(0);
    if !b"gsacidt".contains(&first) && toks.get(toks.len().saturating_sub(1)).starts_with(b"HTTP/") {
        return close(R_NONE, consumed);
    }
    error(reply::ERROR, consumed)
}

fn get<'a>(toks: &Tokens<'a>, consumed: usize, cas: bool, touch: bool) -> Parsed<'a> {
    if toks.count() < 3 {
        return error(reply::ERROR, consumed);
    }
    let mut exptime = 0;
    let mut first_key = 1;
    if touch {
        match parse_i32(toks.get(1)) {
            Some(e) => exptime = i64::from(e),
            None => return error(reply::BAD_EXPTIME, consumed),
        }
        first_key = 2;
    }
    let keys = Keys { raw: toks.rest_from(first_key) };
    if keys.iter().any(|k| k.len() > KEY_MAX_LENGTH) {
        return error(reply::BAD_FORMAT, consumed);
    }
    let cmd = if touch { Command::Gat(GatCmd { exptime, keys, cas }) } else { Command::Get { keys, cas } };
    Parsed::Command { cmd, consumed }
}

fn storage<'a>(buf: &'a [u8], toks: &Tokens<'a>, consumed: usize, limits: &Limits, mode: SetMode) -> Parsed<'a> {
    let is_cas = mode == SetMode::Cas;
    let base = if is_cas { 7 } else { 6 };
    if toks.count() != base && toks.count() != base + 1 {
        return error(reply::ERROR, consumed);
    }
    let noreply = toks.noreply();
    let key = toks.get(1);
    if key.len() > KEY_MAX_LENGTH {
        return error_nr(reply::BAD_FORMAT, consumed, noreply);
    }
    let (Some(flags), Some(exptime), Some(vlen)) =
        (parse_u32(toks.get(2)), parse_i32(toks.get(3)), parse_i32(toks.get(4)))
    else {
        return error_nr(reply::BAD_FORMAT, consumed, noreply);
    };
    let cas_unique = if is_cas {
        match parse_u64(toks.get(5)) {
            Some(c) => c,
            None => return error_nr(reply::BAD_FORMAT, consumed, noreply),
        }
    } else {
        0
    };
    // memcached: `vlen < 0 || vlen > INT_MAX - 2`.
    let Ok(vlen) = usize::try_from(vlen) else {
        return error_nr(reply::BAD_FORMAT, consumed, noreply);
    };
    if vlen > i32::MAX as usize - 2 {
        return error_nr(reply::BAD_FORMAT, consumed, noreply);
    }
    if !item_size_ok(key.len(), flags, vlen, limits) {
        return Parsed::Error {
            reply: if noreply { R_NONE } else { reply::TOO_LARGE },
            consumed,
            swallow: vlen + 2,
            close: false,
            too_large_key: (mode == SetMode::Set).then_some(key),
        };
    }
    match data_block(buf, consumed, vlen) {
        Block::Incomplete(total) => Parsed::Partial { total, noreply },
        Block::Bad(end) => error_nr(reply::BAD_DATA_CHUNK, end, noreply),
        Block::Ok(data, end) => Parsed::Command {
            cmd: Command::Store(StoreCmd { mode, key, flags, exptime: i64::from(exptime), cas_unique, data, noreply }),
            consumed: end,
        },
    }
}

fn delete<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let n = toks.count();
    if !(3..=5).contains(&n) {
        return error(reply::ERROR, consumed);
    }
    let mut noreply = false;
    if n > 3 {
        // Only a legacy hold time of 0 is still accepted.
        let hold_is_zero = toks.get(2) == b"0";
        noreply = toks.noreply();
        let valid = (n == 4 && (hold_is_zero || noreply)) || (n == 5 && hold_is_zero && noreply);
        if !valid {
            return error_nr(reply::DELETE_USAGE, consumed, noreply);
        }
    }
    let key = toks.get(1);
    if key.len() > KEY_MAX_LENGTH {
        return error_nr(reply::BAD_FORMAT, consumed, noreply);
    }
    Parsed::Command { cmd: Command::Delete { key, noreply }, consumed }
}

/// The key and `noreply` of `<cmd> <key> <arg> [noreply]` (incr, decr, touch), or the error for a wrong
/// token count or a key that is too long.
#[allow(clippy::result_large_err)] // it is the reply itself, returned at once
fn key_and_arg<'a>(toks: &Tokens<'a>, consumed: usize) -> Result<(&'a [u8], bool), Parsed<'static>> {
    if toks.count() != 4 && toks.count() != 5 {
        return Err(error(reply::ERROR, consumed));
    }
    let noreply = toks.noreply();
    let key = toks.get(1);
    if key.len() > KEY_MAX_LENGTH {
        return Err(error_nr(reply::BAD_FORMAT, consumed, noreply));
    }
    Ok((key, noreply))
}

fn arith<'a>(toks: &Tokens<'a>, consumed: usize, incr: bool) -> Parsed<'a> {
    let (key, noreply) = match key_and_arg(toks, consumed) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let Some(delta) = parse_u64(toks.get(2)) else {
        return error_nr(reply::BAD_DELTA_ARGUMENT, consumed, noreply);
    };
    Parsed::Command { cmd: Command::Arith(ArithCmd { key, incr, delta, noreply }), consumed }
}

fn touch<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let (key, noreply) = match key_and_arg(toks, consumed) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let Some(exptime) = parse_i32(toks.get(2)) else {
        return error_nr(reply::BAD_EXPTIME, consumed, noreply);
    };
    Parsed::Command { cmd: Command::Touch(TouchCmd { key, exptime: i64::from(exptime), noreply }), consumed }
}

fn flush_all<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let n = toks.count();
    if !(2..=4).contains(&n) {
        return error(reply::ERROR, consumed);
    }
    let noreply = toks.noreply();
    let mut delay = 0;
    if n != if noreply { 3 } else { 2 } {
        match parse_i32(toks.get(1)) {
            Some(d) => delay = i64::from(d),
            None => return error_nr(reply::BAD_EXPTIME, consumed, noreply),
        }
    }
    Parsed::Command { cmd: Command::FlushAll { delay, noreply }, consumed }
}

fn verbosity<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    if toks.count() != 3 && toks.count() != 4 {
        return error(reply::ERROR, consumed);
    }
    let noreply = toks.noreply();
    let Some(level) = parse_u32(toks.get(1)) else {
        return error_nr(reply::BAD_FORMAT, consumed, noreply);
    };
    Parsed::Command { cmd: Command::Verbosity { level, noreply }, consumed }
}

/// Decimal digits only, range-checked (memcached's mcmc `toktou64`).
pub(super) fn parse_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() {
        return None;
    }
    t.iter().try_fold(0u64, |acc, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

pub(super) fn parse_u32(t: &[u8]) -> Option<u32> {
    parse_u64(t).and_then(|v| u32::try_from(v).ok())
}

/// Optional leading `-`, then decimal digits, range-checked to i32.
pub(super) fn parse_i32(t: &[u8]) -> Option<i32> {
    let (neg, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, t),
    };
    let mag = i64::from(u32::try_from(parse_u64(digits)?).ok()?);
    i32::try_from(if neg { -mag } else { mag }).ok()
}
