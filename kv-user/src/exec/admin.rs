//! Operator commands: `me`, `lru_crawler`, `cache_memlimit`, `slabs`, `shutdown`, with memcached
//! 1.6's replies. The store has no LRU crawler thread and no slab pages: `lru_crawler crawl` reclaims
//! expired items at once (what memcached's crawler is for), its tuning knobs are accepted and kept
//! but change nothing, and `slabs` only answers (the parser settles its reply).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use bytes::BytesMut;

use super::{put_i64, put_u64, reply, Ctx, Outcome};
use crate::protocol::command::{Crawler, ShutdownMode};
use crate::protocol::reply::{self as r, CRLF};
use crate::protocol::{base64, KEY_MAX_LENGTH};
use crate::stats::bump;
use crate::store::{FetchOpts, ItemMeta, MAX_CLASS_ID};

/// Operator settings changed at run time.
#[derive(Debug)]
pub struct AdminState {
    /// `-A` / `--enable-shutdown`.
    pub shutdown_enabled: bool,
    /// `lru_crawler enable|disable`; on by default, as in memcached.
    pub crawler_enabled: AtomicBool,
    /// `lru_crawler tocrawl` / `sleep`: kept for parity, nothing reads them.
    pub crawler_tocrawl: AtomicU32,
    pub crawler_sleep: AtomicU32,
}

impl AdminState {
    pub fn new(shutdown_enabled: bool) -> AdminState {
        AdminState {
            shutdown_enabled,
            crawler_enabled: AtomicBool::new(true),
            crawler_tocrawl: AtomicU32::new(0),
            crawler_sleep: AtomicU32::new(100),
        }
    }
}

/// `me <key> [b]`: `ME <key> exp=<ttl> la=<idle> cas=<cas> fetch=<yes|no> cls=<class> size=<size>`,
/// or `EN`. Does not count as an access. exp is the remaining TTL (-1: never), as memcached >= 1.6.24
/// prints it (earlier releases printed its negation). A base64 key is echoed re-encoded.
pub(super) fn me(key: &[u8], is_base64: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    bump(&ctx.stats.cmd_meta, 1);
    let mut buf = [0u8; KEY_MAX_LENGTH];
    let key = match is_base64 {
        // The parser checked that it decodes.
        true => match base64::decode(key, &mut buf) {
            Some(n) => &buf[..n],
            None => return reply_line(out, r::BAD_FORMAT),
        },
        false => key,
    };
    let now = ctx.store.now();
    let opts = FetchOpts { bump: false, ..FetchOpts::default() };
    ctx.store.fetch_with(key, &opts, |f| {
        let Some(it) = f.item else {
            out.extend_from_slice(r::EN);
            out.extend_from_slice(CRLF);
            return;
        };
        out.extend_from_slice(r::ME);
        if is_base64 {
            base64::encode(key, out);
        } else {
            out.extend_from_slice(key);
        }
        let m = ItemMeta {
            exptime: it.exptime,
            last_access: it.last_access,
            cas: it.cas,
            fetched: it.fetched,
            ..ItemMeta::new(key, it.flags, it.value.len())
        };
        out.extend_from_slice(b" exp=");
        put_i64(out, if m.exptime == 0 { -1 } else { m.exptime.saturating_sub(now) as i64 });
        out.extend_from_slice(b" la=");
        put_u64(out, now.saturating_sub(m.last_access));
        meta_tail(&m, out);
        out.extend_from_slice(CRLF);
    });
    Outcome::default()
}

/// ` cas=<n> fetch=<yes|no> cls=<n> size=<n>`, shared by `me` and metadump lines.
fn meta_tail(m: &ItemMeta<'_>, out: &mut BytesMut) {
    out.extend_from_slice(b" cas=");
    put_u64(out, m.cas);
    out.extend_from_slice(if m.fetched { b" fetch=yes cls=" } else { b" fetch=no cls=" });
    put_u64(out, u64::from(m.class));
    out.extend_from_slice(b" size=");
    put_u64(out, m.size);
}

fn reply_line(out: &mut BytesMut, line: &[u8]) -> Outcome {
    out.extend_from_slice(line);
    Outcome::default()
}

/// Which classes a crawl covers: memcached's `lru_crawler_crawl` argument.
enum Classes {
    /// `all`, or a list: bit n for class n.
    Mask(u64),
    /// `hash`: the hash table instead of the LRUs (metadump only).
    Hash,
}

/// `all`, `hash`, or comma-separated class ids (1..=63); None for a bad one (`BADCLASS`).
fn classes(arg: &[u8]) -> Option<Classes> {
    match arg {
        b"all" => Some(Classes::Mask(u64::MAX)),
        b"hash" => Some(Classes::Hash),
        _ => arg
            .split(|&b| b == b',')
            .filter(|t| !t.is_empty())
            .try_fold(0u64, |mask, t| {
                let id = crate::store::parse_u64(t).filter(|&id| (1..u64::from(MAX_CLASS_ID)).contains(&id))?;
                (t.iter().all(u8::is_ascii_digit)).then_some(mask | 1 << id)
            })
            .map(Classes::Mask),
    }
}

/// `lru_crawler ...`. `metadump` may be cut into several replies (see [`metadump`]): it returns where
/// to resume, as multigets do.
pub(super) fn lru_crawler(
    cmd: Crawler<'_>,
    from: usize,
    stop_at: usize,
    ctx: &Ctx,
    out: &mut BytesMut,
) -> (Outcome, Option<usize>) {
    let a = &ctx.admin;
    let line = match cmd {
        Crawler::Crawl(_) | Crawler::Metadump(_) if !a.crawler_enabled.load(Relaxed) => r::CRAWLER_DISABLED,
        Crawler::Crawl(arg) => match classes(arg) {
            None => r::CRAWLER_BADCLASS,
            Some(Classes::Hash) => r::CRAWLER_UNKNOWN,
            Some(Classes::Mask(0)) => r::CRAWLER_NOTSTARTED,
            Some(Classes::Mask(_)) => {
                // Expired items die segment by segment here, whatever their class.
                ctx.store.reclaim_expired();
                r::OK
            }
        },
        Crawler::Metadump(arg) => match classes(arg) {
            None => r::CRAWLER_BADCLASS,
            Some(Classes::Mask(0)) => r::CRAWLER_NOTSTARTED,
            Some(Classes::Hash) => return metadump(u64::MAX, from, stop_at, ctx, out),
            Some(Classes::Mask(m)) => return metadump(m, from, stop_at, ctx, out),
        },
        Crawler::Tocrawl(n) => {
            a.crawler_tocrawl.store(n, Relaxed);
            r::OK
        }
        Crawler::Sleep(us) => {
            a.crawler_sleep.store(us, Relaxed);
            r::OK
        }
        // memcached fails to start a second crawler thread.
        Crawler::Enable if a.crawler_enabled.swap(true, Relaxed) => r::CRAWLER_START_FAILED,
        Crawler::Enable => r::OK,
        Crawler::Disable => {
            a.crawler_enabled.store(false, Relaxed);
            r::OK
        }
    };
    (reply_line(out, line), None)
}

/// `lru_crawler metadump`: one line per live item of the chosen classes, `key=<uri-encoded key>
/// exp=<abs exptime | -1> la=<abs last access> cas=<n> fetch=<yes|no> cls=<n> size=<n> flags=<n>`,
/// each ending in a bare `\n` as memcached's do, then `END\r\n`. Walks the store shard by shard
/// (`from` is the next shard); once `out` holds `stop_at` bytes it returns the shard to resume at.
fn metadump(mask: u64, from: usize, stop_at: usize, ctx: &Ctx, out: &mut BytesMut) -> (Outcome, Option<usize>) {
    let mut shard = from;
    loop {
        let more = ctx.store.for_each_meta_in(shard, &mut |m| {
            if mask & (1 << m.class) != 0 {
                metadump_line(m, out);
            }
        });
        if !more {
            out.extend_from_slice(r::END);
            return (Outcome::default(), None);
        }
        shard += 1;
        if out.len() >= stop_at {
            return (Outcome::default(), Some(shard));
        }
    }
}

fn metadump_line(m: &ItemMeta<'_>, out: &mut BytesMut) {
    out.extend_from_slice(b"key=");
    uriencode(m.key, out);
    out.extend_from_slice(b" exp=");
    put_i64(out, if m.exptime == 0 { -1 } else { m.exptime as i64 });
    out.extend_from_slice(b" la=");
    put_u64(out, m.last_access);
    meta_tail(m, out);
    out.extend_from_slice(b" flags=");
    put_u64(out, u64::from(m.flags));
    out.extend_from_slice(b"\n");
}

/// memcached's `uriencode`: every byte but ASCII letters, digits and `-._~` as `%XX`.
fn uriencode(key: &[u8], out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.extend_from_slice(&[b]);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// `cache_memlimit <mb>`: the new limit applies at once; shrinking evicts down to it.
pub(super) fn cache_memlimit(mb: u32, noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    ctx.store.set_memory_limit(u64::from(mb) << 20);
    log::info!("maxbytes adjusted to {mb}m");
    reply(out, noreply, r::OK);
    Outcome::default()
}

/// `shutdown [graceful]`: with `-A`, the connection closes and the process stops as on SIGINT (both
/// modes: the signal path already finishes in-flight work and closes the log cleanly).
pub(super) fn shutdown(mode: ShutdownMode, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    if !ctx.admin.shutdown_enabled {
        return reply_line(out, r::SHUTDOWN_NOT_ENABLED);
    }
    if mode == ShutdownMode::Invalid {
        return reply_line(out, r::SHUTDOWN_MODE);
    }
    log::info!("shutdown requested by a client");
    // SAFETY: raise() only queues a signal for this process; the SIGINT handler installed by
    // server::shutdown_signals turns it into the clean shutdown.
    unsafe { libc::raise(libc::SIGINT) };
    Outcome { seq: 0, close: true }
}
