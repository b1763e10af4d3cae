//! `stats` and its subcommands (settings, items, slabs, sizes, reset, detail, cachedump, ...), in
//! memcached's names and order.

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::{put_u64, Ctx, Outcome, VERSION};
use crate::protocol::command::{Detail, StatsCmd};
use crate::protocol::reply::{self as r, CRLF};
use crate::stats::read;
use crate::store::{chunk_size, ItemMeta, CLASSES, PAGE_SIZE};

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
        StatsCmd::Conns => conns(ctx, out),
        // No external storage: as memcached built with extstore but running without it.
        StatsCmd::Extstore => {}
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

/// `stats cachedump <class> <limit>`: `ITEM <key> [<bytes> b; <exptime> s]` per item of the class
/// (see [`items`]), as memcached's `item_cachedump`: at most `limit` items (0: no limit) and 2 MB,
/// oldest first (memcached: the class's cold LRU, newest first). Keys that could not be written on a
/// text line (binary keys stored with `b`) are skipped, as memcached does.
fn cachedump(class: u32, limit: u32, ctx: &Ctx, out: &mut BytesMut) {
    const MAX_REPLY: usize = 2 << 20;
    let (start, mut shown) = (out.len(), 0u32);
    let mut shard = 0;
    let mut visit = |m: &ItemMeta<'_>| {
        let full = (limit != 0 && shown >= limit) || out.len() - start >= MAX_REPLY;
        if full || u32::from(m.class) != class || m.key.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n' | 0)) {
            return;
        }
        let mut line = Vec::with_capacity(m.key.len() + 40);
        line.extend_from_slice(b"ITEM ");
        line.extend_from_slice(m.key);
        line.extend_from_slice(format!(" [{} b; {} s]\r\n", m.value_len, m.exptime).as_bytes());
        if out.len() - start + line.len() <= MAX_REPLY {
            out.extend_from_slice(&line);
            shown += 1;
        }
    };
    while ctx.store.for_each_meta_in(shard, &mut visit) {
        shard += 1;
    }
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

fn yes_no(b: bool) -> &'static [u8] {
    if b {
        b"yes"
    } else {
        b"no"
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
    stat_str(out, "shutdown_command", yes_no(ctx.admin.shutdown_enabled));
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
    stat_str(out, "lru_crawler", yes_no(ctx.admin.crawler_enabled.load(Ordering::Relaxed)));
    stat_str(out, "lru_maintainer_thread", b"no");
    stat_str(out, "temporary_ttl", b"0");
    // Connections are never closed for idleness (memcached: 0 = off).
    stat_u64(out, "idle_timeout", 0);
    stat_str(out, "ssl_enabled", b"no");
    stat_str(out, "persistence", if c.no_persist { b"no".as_slice() } else { b"yes".as_slice() });
}

/// `items:<class>:<name>` / `<class>:<name>`.
fn class_stat(out: &mut BytesMut, prefix: &str, class: u8, name: &str, v: u64) {
    stat_u64(out, &format!("{prefix}{class}:{name}"), v);
}

/// The store has no slab classes (items of every size are packed into segments), so each item is
/// counted in the class memcached would give it by size (`store::class_of`): `number`,
/// `mem_requested` (the store's bytes for them, so the classes add up to `bytes`) and the eviction and
/// reclaim counters are exact per class. A class is listed while it holds items (as in memcached) or
/// has removals counted, so that sums over classes (what exporters compute) match the totals. Kept
/// store-wide only, on the first class listed and 0 on the others: outofmemory and moves_within_lru
/// (live items moved when their segment was recycled). Not listed, for lack of a measurement: age,
/// evicted_nonzero/evicted_time, the segmented-LRU lines (number_hot/warm/cold, hits_to_*) and the
/// crawler lines. tailrepairs is 0: no slab chunks to repair.
fn items(ctx: &Ctx, out: &mut BytesMut) {
    let k = ctx.store.class_counts();
    let st = ctx.store.stats();
    let totals =
        [("outofmemory", read(&ctx.stats.store_no_memory)), ("tailrepairs", 0), ("moves_within_lru", st.moves)];
    let listed = |c: usize| k.items[c] > 0 || k.evicted[c] > 0 || k.reclaimed[c] > 0;
    for (i, c) in CLASSES.filter(|&c| listed(usize::from(c))).enumerate() {
        let n = usize::from(c);
        let per_class = [
            ("number", k.items[n]),
            ("mem_requested", k.bytes[n]),
            ("evicted", k.evicted[n]),
            ("outofmemory", 0),
            ("tailrepairs", 0),
            ("reclaimed", k.reclaimed[n]),
            ("expired_unfetched", k.expired_unfetched[n]),
            ("evicted_unfetched", k.evicted_unfetched[n]),
            ("moves_within_lru", 0),
        ];
        for (name, v) in per_class {
            let v = match totals.iter().find(|(t, _)| *t == name) {
                Some((_, total)) if i == 0 => *total,
                _ => v,
            };
            class_stat(out, "items:", c, name, v);
        }
    }
}

/// The classes of [`items`] with memcached's geometry: chunk_size and chunks_per_page are memcached's
/// for the class, used_chunks the items in it, and total_pages the pages memcached would need for them
/// (the store's real memory is segments: total_malloced, what `-m` bounds). Command counters are kept
/// server-wide only: on the first class listed, 0 on the others (as in [`items`]).
fn slabs(ctx: &Ctx, out: &mut BytesMut) {
    let counts = ctx.store.class_counts();
    let k = &*ctx.stats;
    let totals = [
        ("get_hits", read(&k.get_hits)),
        ("cmd_set", read(&k.cmd_set)),
        ("delete_hits", read(&k.delete_hits)),
        ("incr_hits", read(&k.incr_hits)),
        ("decr_hits", read(&k.decr_hits)),
        ("cas_hits", read(&k.cas_hits)),
        ("cas_badval", read(&k.cas_badval)),
        ("touch_hits", read(&k.touch_hits)),
    ];
    let mut active = 0;
    for c in CLASSES.filter(|&c| counts.items[usize::from(c)] > 0) {
        let n = counts.items[usize::from(c)];
        let per_page = u64::from(PAGE_SIZE / chunk_size(c));
        let pages = n.div_ceil(per_page);
        class_stat(out, "", c, "chunk_size", u64::from(chunk_size(c)));
        class_stat(out, "", c, "chunks_per_page", per_page);
        class_stat(out, "", c, "total_pages", pages);
        class_stat(out, "", c, "total_chunks", pages * per_page);
        class_stat(out, "", c, "used_chunks", n);
        class_stat(out, "", c, "free_chunks", pages * per_page - n);
        class_stat(out, "", c, "free_chunks_end", 0);
        class_stat(out, "", c, "mem_requested", counts.bytes[usize::from(c)]);
        for (name, v) in totals {
            class_stat(out, "", c, name, if active == 0 { v } else { 0 });
        }
        active += 1;
    }
    stat_u64(out, "active_slabs", active);
    stat_u64(out, "total_malloced", ctx.store.memory_used());
}

/// `stats conns`: each open socket by descriptor, in memcached's lines (`STAT <fd>:addr tcp:ip:port`, ...).
fn conns(ctx: &Ctx, out: &mut BytesMut) {
    use crate::conns::Transport;
    let line = |out: &mut BytesMut, fd: i32, name: &str, v: &dyn std::fmt::Display| {
        out.extend_from_slice(r::STAT);
        out.extend_from_slice(format!("{fd}:{name} {v}").as_bytes());
        out.extend_from_slice(CRLF);
    };
    let text = |t: Transport, a: std::net::SocketAddr| {
        let proto = if t == Transport::Udp { "udp" } else { "tcp" };
        // memcached brackets an IPv6 address: `tcp:[::1]:11211`.
        format!("{proto}:{a}")
    };
    for (fd, e) in ctx.conns.snapshot() {
        if e.transport == Transport::Udp {
            line(out, fd, "UDP", &"UDP");
        }
        line(out, fd, "addr", &text(e.transport, e.addr));
        if let Some(l) = e.listen_addr {
            line(out, fd, "listen_addr", &text(e.transport, l));
        }
        line(out, fd, "state", &e.state().name());
        line(out, fd, "secs_since_last_cmd", &e.secs_since_last_cmd());
    }
}
