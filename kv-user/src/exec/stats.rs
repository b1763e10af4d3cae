//! `stats` and its subcommands (settings, items, slabs, sizes, reset, detail, cachedump, ...), in
//! memcached's names and order.

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::{put_u64, Ctx, Outcome, VERSION};
use crate::protocol::command::{Detail, StatsCmd};
use crate::protocol::reply::{self as r, CRLF};
use crate::record::{Record, Snapshot as _};
use crate::stats::read;

/// `STAT <name> `: the start of every `stats` line.
fn stat_head(out: &mut BytesMut, name: &str) {
    out.extend_from_slice(r::STAT);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b" ");
}

fn stat_u64(out: &mut BytesMut, name: &str, v: u64) {
    stat_str(out, name, itoa::Buffer::new().format(v).as_bytes());
}

fn stat_str(out: &mut BytesMut, name: &str, v: &[u8]) {
    stat_head(out, name);
    out.extend_from_slice(v);
    out.extend_from_slice(CRLF);
}

/// `seconds.micros` as memcached prints rusage.
fn stat_timeval(out: &mut BytesMut, name: &str, tv: libc::timeval) {
    stat_head(out, name);
    put_u64(out, tv.tv_sec.max(0) as u64);
    out.extend_from_slice(b".");
    let us = tv.tv_usec.clamp(0, 999_999) as u64;
    let mut b = itoa::Buffer::new();
    let digits = b.format(us).as_bytes();
    for _ in digits.len()..6 {
        out.extend_from_slice(b"0");
    }
    out.extend_from_slice(digits);
    out.extend_from_slice(CRLF);
}

fn rusage() -> (libc::timeval, libc::timeval) {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        let z = libc::timeval { tv_sec: 0, tv_usec: 0 };
        return (z, z);
    }
    (ru.ru_utime, ru.ru_stime)
}

pub(super) fn stats(cmd: StatsCmd, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    match cmd {
        StatsCmd::General => general(ctx, out),
        StatsCmd::Reset => {
            ctx.stats.reset();
            ctx.store.reset_stats();
            out.extend_from_slice(r::RESET);
            return Outcome::default();
        }
        StatsCmd::Settings => settings(ctx, out),
        StatsCmd::Items => items(ctx, out),
        StatsCmd::Slabs => slabs(ctx, out),
        // memcached without `-o track_sizes`.
        StatsCmd::Sizes => stat_str(out, "sizes_status", b"disabled"),
        // Not listed: connections are not registered anywhere; no external storage (as memcached
        // built with extstore but running without it).
        StatsCmd::Conns | StatsCmd::Extstore => {}
        StatsCmd::Detail(Detail::On | Detail::Off) => {
            ctx.stats.detail.set_enabled(cmd == StatsCmd::Detail(Detail::On));
            out.extend_from_slice(r::OK);
            return Outcome::default();
        }
        StatsCmd::Detail(Detail::Dump) => ctx.stats.detail.dump(&mut |b| out.extend_from_slice(b)),
        StatsCmd::CacheDump { class, limit } => cachedump(class, limit, ctx, out),
    }
    out.extend_from_slice(r::END);
    Outcome::default()
}

/// `stats cachedump <class> <limit>`: `ITEM <key> [<bytes> b; <exptime> s]` per item, as memcached's
/// `item_cachedump`: at most `limit` items (0: no limit) and 2 MB. Every item is in class 1 here (see
/// [`items`]), listed in no particular order (memcached: the class's cold LRU, newest first). Keys that
/// could not be written on a text line (binary keys stored with `b`) are skipped, as memcached does.
fn cachedump(class: u32, limit: u32, ctx: &Ctx, out: &mut BytesMut) {
    const MAX_REPLY: usize = 2 << 20;
    if class != 1 {
        return;
    }
    let (start, mut shown) = (out.len(), 0u32);
    ctx.store.for_each_live(&mut |rec| {
        let Record::Set { key, exptime, value, .. } = *rec else { return };
        let full = (limit != 0 && shown >= limit) || out.len() - start >= MAX_REPLY;
        if full || key.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n' | 0)) {
            return;
        }
        let mut line = Vec::with_capacity(key.len() + 40);
        line.extend_from_slice(b"ITEM ");
        line.extend_from_slice(key);
        line.extend_from_slice(format!(" [{} b; {exptime} s]\r\n", value.len()).as_bytes());
        if out.len() - start + line.len() <= MAX_REPLY {
            out.extend_from_slice(&line);
            shown += 1;
        }
    });
}

fn general(ctx: &Ctx, out: &mut BytesMut) {
    let s = &*ctx.stats;
    let (utime, stime) = rusage();
    stat_u64(out, "pid", u64::from(std::process::id()));
    stat_u64(out, "uptime", s.uptime());
    stat_u64(out, "time", ctx.store.now());
    stat_str(out, "version", VERSION.as_bytes());
    stat_str(out, "libevent", b"n/a");
    stat_u64(out, "pointer_size", (8 * std::mem::size_of::<usize>()) as u64);
    stat_timeval(out, "rusage_user", utime);
    stat_timeval(out, "rusage_system", stime);
    crate::stats::general_numbers(&ctx.stat_sources(), &mut |d, v| stat_u64(out, d.name, v));
    if let Some(log) = &ctx.log {
        // Redis's aof_last_write_status; `log_last_write_ok` above is the same as a number.
        stat_str(out, "log_last_write_status", if log.health().ok { b"ok" } else { b"err" });
    }
}

fn settings(ctx: &Ctx, out: &mut BytesMut) {
    let c = &*ctx.config;
    stat_u64(out, "maxbytes", ctx.store.limit_maxbytes());
    stat_u64(out, "maxconns", c.max_connections as u64);
    stat_u64(out, "tcpport", u64::from(c.port));
    stat_u64(out, "udpport", u64::from(c.udp_port));
    let inter = c.listen.to_string();
    stat_str(out, "inter", inter.as_bytes());
    stat_u64(out, "verbosity", u64::from(ctx.verbosity.load(Ordering::Relaxed)));
    stat_u64(out, "oldest", 0);
    stat_str(out, "evictions", b"on");
    stat_str(out, "domain_socket", b"NULL");
    stat_str(out, "umask", b"700");
    stat_str(out, "shutdown_command", b"no");
    stat_str(out, "growth_factor", b"1.25");
    stat_u64(out, "chunk_size", 48);
    stat_u64(out, "num_threads", c.threads as u64);
    stat_u64(out, "num_threads_per_udp", c.threads as u64);
    stat_str(out, "stat_key_prefix", b":");
    stat_str(out, "detail_enabled", if ctx.stats.detail.enabled() { b"yes".as_slice() } else { b"no".as_slice() });
    stat_u64(out, "reqs_per_event", 20);
    stat_str(out, "cas_enabled", b"yes");
    stat_u64(out, "tcp_backlog", 1024);
    stat_str(out, "binding_protocol", b"ascii");
    stat_str(out, "auth_enabled_sasl", b"no");
    stat_str(out, "auth_enabled_ascii", b"no");
    stat_u64(out, "item_size_max", ctx.store.item_size_max() as u64);
    stat_str(out, "maxconns_fast", b"yes");
    stat_str(out, "flush_enabled", b"yes");
    stat_str(out, "dump_enabled", b"yes");
    stat_str(out, "lru_crawler", b"no");
    stat_str(out, "lru_maintainer_thread", b"no");
    stat_str(out, "temporary_ttl", b"0");
    // Connections are never closed for idleness (memcached: 0 = off).
    stat_u64(out, "idle_timeout", 0);
    stat_str(out, "ssl_enabled", b"no");
    stat_str(out, "persistence", if c.no_persist { b"no".as_slice() } else { b"yes".as_slice() });
}

/// The store has no slab classes: items of every size are packed into segments. `stats items` and
/// `stats slabs` report them as one class, 1 (what memcached shows for small items), so tools that read
/// `items:<class>:...` see the totals. Omitted for lack of a measurement: age (the store does not track
/// the oldest item's age), evicted_nonzero, evicted_time, the segmented-LRU lines (number_hot/warm/cold,
/// hits_to_*) and the crawler lines. tailrepairs is 0 because there are no slab chunks to repair;
/// moves_within_lru counts live items moved when their segment was recycled.
fn items(ctx: &Ctx, out: &mut BytesMut) {
    let st = ctx.store.stats();
    if st.curr_items == 0 {
        return;
    }
    stat_u64(out, "items:1:number", st.curr_items);
    stat_u64(out, "items:1:mem_requested", st.bytes);
    stat_u64(out, "items:1:evicted", st.evictions);
    stat_u64(out, "items:1:outofmemory", read(&ctx.stats.store_no_memory));
    stat_u64(out, "items:1:tailrepairs", 0);
    stat_u64(out, "items:1:reclaimed", st.reclaimed);
    stat_u64(out, "items:1:expired_unfetched", st.expired_unfetched);
    stat_u64(out, "items:1:evicted_unfetched", st.evicted_unfetched);
    stat_u64(out, "items:1:moves_within_lru", st.moves);
}

/// One class (see [`items`]) whose "pages" are segments: chunk_size is the segment size (an item
/// larger than half of it has a block of its own, counted as a page too), total_pages the segments
/// held, used_chunks the items, free_chunks the emptied segments waiting for reuse; total_malloced is
/// all item memory held (segments, spare segments and the index), what `-m` bounds. Its command
/// counters are the server's.
fn slabs(ctx: &Ctx, out: &mut BytesMut) {
    let st = ctx.store.stats();
    if st.segments > 0 {
        stat_u64(out, "1:chunk_size", ctx.store.segment_size() as u64);
        stat_u64(out, "1:chunks_per_page", 1);
        stat_u64(out, "1:total_pages", st.segments);
        stat_u64(out, "1:total_chunks", st.segments);
        stat_u64(out, "1:used_chunks", st.curr_items);
        stat_u64(out, "1:free_chunks", ctx.store.spare_segments() as u64);
        stat_u64(out, "1:mem_requested", st.bytes);
        let c = &*ctx.stats;
        stat_u64(out, "1:get_hits", read(&c.get_hits));
        stat_u64(out, "1:cmd_set", read(&c.cmd_set));
        stat_u64(out, "1:delete_hits", read(&c.delete_hits));
        stat_u64(out, "1:incr_hits", read(&c.incr_hits));
        stat_u64(out, "1:decr_hits", read(&c.decr_hits));
        stat_u64(out, "1:cas_hits", read(&c.cas_hits));
        stat_u64(out, "1:cas_badval", read(&c.cas_badval));
        stat_u64(out, "1:touch_hits", read(&c.touch_hits));
    }
    stat_u64(out, "active_slabs", u64::from(st.segments > 0));
    stat_u64(out, "total_malloced", ctx.store.memory_used());
}
