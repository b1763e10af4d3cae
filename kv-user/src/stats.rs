//! Server-wide counters, named like memcached's `stats` output, and [`GENERAL`]: the one table of the
//! general stats numbers that `stats` prints and `/metrics` exports. All counters are relaxed atomics:
//! they are statistics, not synchronization.
//!
//! The network layer owns (bumps) `curr_connections` (inc on accept, dec on close), `total_connections`,
//! `rejected_connections`, `connection_structures`, `bytes_read`, `bytes_written` and `conn_yields`;
//! `exec` bumps the command counters. Item counters (curr_items, evictions, ...) live in the store.
//!
//! This module reads the store's numbers ([`ItemCounters`]) and a few settings, handed in as
//! [`Sources`]; it depends on nothing in `exec`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::store::ItemCounters;

/// Declares [`Stats`] with one `AtomicU64` per listed counter, and `Stats::new` zeroing them.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        #[derive(Debug)]
        pub struct Stats {
            /// Unix time the server started (`time` - `uptime`).
            pub started_unix: u64,
            started: Instant,
            /// `stats detail`: per-prefix counters, kept while enabled.
            pub detail: Prefixes,
            $($(#[$doc])* pub $field: AtomicU64,)*
        }

        impl Stats {
            pub fn new() -> Stats {
                Stats {
                    started_unix: crate::clock::unix_now(),
                    started: Instant::now(),
                    detail: Prefixes::default(),
                    $($field: AtomicU64::new(0),)*
                }
            }
        }
    };
}

counters! {
    // Connections: bumped by the network layer.
    curr_connections,
    total_connections,
    rejected_connections,
    connection_structures,
    bytes_read,
    bytes_written,
    conn_yields,
    // Commands: bumped by exec.
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    cmd_meta,
    get_hits,
    get_misses,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    store_too_large,
    store_no_memory,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Seconds since start.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// `stats reset`: zeroes the cumulative counters of [`GENERAL`], keeps the gauges (curr_connections,
    /// connection_structures), and forgets the prefixes of `stats detail` (whether it is on stays).
    pub fn reset(&self) {
        for def in GENERAL.iter().filter(|d| d.kind == Kind::Counter) {
            if let Read::Counter(counter) = def.read {
                counter(self).store(0, Ordering::Relaxed);
            }
        }
        self.detail.clear();
    }
}

/// memcached's prefix stats (`stats detail on|off|dump`, `stats_prefix.c`): while enabled, each get
/// (with hit), set and delete of a key with a `:` counts against the key's part before it. Recorded
/// where memcached records them: get/gets/gat/gats per key, the set family (even when not stored), and
/// delete (an oversized `ms`, refused by the parser like an oversized `set`, counts as a set too); other
/// meta commands and the kernel path's answers are not counted.
#[derive(Debug, Default)]
pub struct Prefixes {
    on: AtomicBool,
    /// prefix → gets, hits, sets, deletes.
    map: Mutex<HashMap<Box<[u8]>, [u64; 4]>>,
}

/// Prefixes tracked at most: memcached has no bound, but one client with `stats detail on` must not
/// grow the server without limit; further prefixes go uncounted (as memcached's failed allocations do).
const MAX_PREFIXES: usize = 10_000;
const PREFIX_DELIMITER: u8 = b':';

impl Prefixes {
    pub fn set_enabled(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn record_get(&self, key: &[u8], hit: bool) {
        self.record(key, 0, u64::from(hit));
    }

    pub fn record_set(&self, key: &[u8]) {
        self.record(key, 2, 0);
    }

    pub fn record_delete(&self, key: &[u8]) {
        self.record(key, 3, 0);
    }

    /// Adds 1 to counter `which` of the key's prefix (and `hit` to the hits); nothing when disabled or
    /// when the key has no delimiter.
    #[inline]
    fn record(&self, key: &[u8], which: usize, hit: u64) {
        if !self.enabled() {
            return;
        }
        let Some(end) = key.iter().position(|&b| b == PREFIX_DELIMITER) else { return };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let len = map.len();
        let counts = match map.get_mut(&key[..end]) {
            Some(c) => c,
            None if len < MAX_PREFIXES => map.entry(key[..end].into()).or_default(),
            None => return,
        };
        counts[which] += 1;
        counts[1] += hit;
    }

    /// `PREFIX <prefix> get <n> hit <n> set <n> del <n>\r\n` per prefix (sorted; memcached's order is its
    /// hash table's), without the closing `END`.
    pub fn dump(&self, out: &mut impl FnMut(&[u8])) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut prefixes: Vec<_> = map.iter().collect();
        prefixes.sort_unstable();
        for (prefix, [gets, hits, sets, dels]) in prefixes {
            out(b"PREFIX ");
            out(prefix);
            out(format!(" get {gets} hit {hits} set {sets} del {dels}\r\n").as_bytes());
        }
    }

    fn clear(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// `counter.fetch_add(n, Relaxed)`, shorter at call sites.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// `counter.load(Relaxed)`.
#[inline]
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A source of additional general `stats` lines (the kernel path's counters), each with its own
/// description: the source owns its names and help texts.
pub trait Source: Send + Sync {
    fn stats(&self, add: &mut dyn FnMut(&Desc<'_>, u64));
}

/// Whether a number only grows (until `stats reset`) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The settings among the general numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_connections: u64,
    pub threads: u64,
    /// `-m` in bytes.
    pub limit_maxbytes: u64,
}

/// Everything the general numbers are read from.
pub struct Sources<'a> {
    pub counters: &'a Stats,
    pub store: ItemCounters,
    pub settings: Settings,
    /// The log's health lines (`log_*`), after the table's; None with `--no-persist`.
    pub log: Option<&'a dyn Source>,
    /// Lines printed last (the kernel path's, once it is up).
    pub extra: Option<&'a dyn Source>,
}

/// Where a general number comes from.
#[derive(Clone, Copy)]
pub enum Read {
    /// One of the server's counters (zeroed by `stats reset` when the stat is a [`Kind::Counter`]).
    Counter(fn(&Stats) -> &AtomicU64),
    /// The store's numbers.
    Store(fn(&ItemCounters) -> u64),
    Setting(fn(&Settings) -> u64),
    /// Always this value.
    Fixed(u64),
}

/// One general stat: its `stats` name, its kind and `/metrics` help text, and where it is read.
#[derive(Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    /// None: `/metrics` says "memcached `stats` field <name>."
    pub help: Option<&'static str>,
    pub read: Read,
}

impl Def {
    pub fn value(&self, src: &Sources<'_>) -> u64 {
        match self.read {
            Read::Counter(c) => read(c(src.counters)),
            Read::Store(f) => f(&src.store),
            Read::Setting(f) => f(&src.settings),
            Read::Fixed(v) => v,
        }
    }
}

/// A line as both outputs see it: the table's description for table stats and known extra lines; a
/// counter without help text for any other extra line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc<'a> {
    pub name: &'a str,
    pub kind: Kind,
    pub help: Option<&'static str>,
}

use Kind::{Counter, Gauge};

/// A table entry read from the [`Stats`] field of the same name.
macro_rules! counter {
    ($field:ident, $kind:expr, $help:expr) => {
        Def { name: stringify!($field), kind: $kind, help: $help, read: Read::Counter(|s| &s.$field) }
    };
}

/// A table entry read from the [`ItemCounters`] field of the same name.
macro_rules! store {
    ($field:ident, $kind:expr, $help:expr) => {
        Def { name: stringify!($field), kind: $kind, help: $help, read: Read::Store(|s| s.$field) }
    };
}

/// The numeric general `stats` lines from `max_connections` on, in memcached's order. `stats` prints
/// them (after pid, uptime, time, version, libevent, pointer_size and rusage) and `/metrics` exports
/// them (`kv_<name>`, `_total` on counters).
///
/// Not reported (no meaning here): the slab mover, LRU crawler and segmented-LRU counters
/// (slab_reassign_*, lru_crawler_*, crawler_*, moves_*, evicted_active), hash table internals
/// (hash_power_level, hash_bytes), memcached's buffer pools (read_buf_*, response_obj_*), and
/// malloc_fails (Rust aborts on allocation failure). Over the connection limit the acceptor rejects
/// (maxconns_fast) but never stops accepting: accepting_conns is always 1, and there is no
/// listen_disabled_num (memcached's counter of listener pauses has no equivalent).
pub const GENERAL: &[Def] = &[
    Def { name: "max_connections", kind: Gauge, help: None, read: Read::Setting(|s| s.max_connections) },
    counter!(curr_connections, Gauge, Some("Open client connections.")),
    counter!(total_connections, Counter, Some("Connections accepted since start.")),
    counter!(rejected_connections, Counter, Some("Connections refused over the connection limit.")),
    counter!(connection_structures, Gauge, None),
    counter!(cmd_get, Counter, Some("Keys requested by get commands.")),
    counter!(cmd_set, Counter, Some("Storage commands.")),
    counter!(cmd_flush, Counter, None),
    counter!(cmd_touch, Counter, None),
    counter!(cmd_meta, Counter, None),
    counter!(get_hits, Counter, Some("Keys requested and found.")),
    counter!(get_misses, Counter, Some("Keys requested and not found.")),
    store!(get_expired, Counter, None),
    store!(get_flushed, Counter, None),
    counter!(delete_misses, Counter, None),
    counter!(delete_hits, Counter, None),
    counter!(incr_misses, Counter, None),
    counter!(incr_hits, Counter, None),
    counter!(decr_misses, Counter, None),
    counter!(decr_hits, Counter, None),
    counter!(cas_misses, Counter, None),
    counter!(cas_hits, Counter, None),
    counter!(cas_badval, Counter, None),
    counter!(touch_hits, Counter, None),
    counter!(touch_misses, Counter, None),
    counter!(store_too_large, Counter, None),
    counter!(store_no_memory, Counter, None),
    // No SASL: these are truly zero.
    Def { name: "auth_cmds", kind: Counter, help: None, read: Read::Fixed(0) },
    Def { name: "auth_errors", kind: Counter, help: None, read: Read::Fixed(0) },
    counter!(bytes_read, Counter, None),
    counter!(bytes_written, Counter, None),
    Def {
        name: "limit_maxbytes",
        kind: Gauge,
        help: Some("Memory limit for items, in bytes."),
        read: Read::Setting(|s| s.limit_maxbytes),
    },
    Def { name: "accepting_conns", kind: Gauge, help: None, read: Read::Fixed(1) },
    Def { name: "threads", kind: Gauge, help: None, read: Read::Setting(|s| s.threads) },
    counter!(conn_yields, Counter, None),
    store!(bytes, Gauge, Some("Bytes charged against the memory limit by the stored items.")),
    store!(curr_items, Gauge, Some("Items stored.")),
    store!(total_items, Counter, None),
    store!(expired_unfetched, Counter, None),
    store!(evicted_unfetched, Counter, None),
    store!(evictions, Counter, Some("Live items evicted to free memory.")),
    store!(reclaimed, Counter, None),
];

/// The description of the general stat `name` (see [`Desc`]): the table's, else a counter without help.
pub fn describe(name: &str) -> Desc<'_> {
    match GENERAL.iter().find(|d| d.name == name) {
        Some(d) => Desc { name, kind: d.kind, help: d.help },
        None => Desc { name, kind: Kind::Counter, help: None },
    }
}

/// Every general number: the [`GENERAL`] table in order, then the log's and the extra source's lines.
pub fn general_numbers(src: &Sources<'_>, add: &mut dyn FnMut(&Desc<'_>, u64)) {
    for d in GENERAL {
        add(&Desc { name: d.name, kind: d.kind, help: d.help }, d.value(src));
    }
    if let Some(log) = src.log {
        log.stats(add);
    }
    if let Some(extra) = src.extra {
        extra.stats(add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(counters: &Stats) -> Sources<'_> {
        let store = ItemCounters { curr_items: 3, evictions: 2, ..ItemCounters::default() };
        let settings = Settings { max_connections: 10, threads: 4, limit_maxbytes: 64 << 20 };
        Sources { counters, store, settings, log: None, extra: None }
    }

    #[test]
    fn names_are_unique_and_in_memcached_order() {
        let names: Vec<&str> = GENERAL.iter().map(|d| d.name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "{n} twice");
        }
        assert_eq!(names.first(), Some(&"max_connections"));
        assert_eq!(names.last(), Some(&"reclaimed"));
        let pos = |n| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("cmd_get") < pos("get_hits") && pos("get_misses") < pos("get_expired"));
        assert!(pos("bytes_written") < pos("limit_maxbytes") && pos("threads") < pos("conn_yields"));
    }

    #[test]
    fn values_come_from_their_sources() {
        let s = Stats::new();
        bump(&s.cmd_get, 5);
        bump(&s.curr_connections, 2);
        let src = sources(&s);
        let mut got = Vec::new();
        general_numbers(&src, &mut |d, v| got.push((d.name.to_string(), d.kind, v)));
        let find = |n: &str| got.iter().find(|(name, _, _)| name == n).map(|&(_, k, v)| (k, v)).unwrap();
        assert_eq!(find("cmd_get"), (Kind::Counter, 5));
        assert_eq!(find("curr_connections"), (Kind::Gauge, 2));
        assert_eq!(find("max_connections"), (Kind::Gauge, 10));
        assert_eq!(find("threads"), (Kind::Gauge, 4));
        assert_eq!(find("curr_items"), (Kind::Gauge, 3));
        assert_eq!(find("evictions"), (Kind::Counter, 2));
        assert_eq!(find("accepting_conns"), (Kind::Gauge, 1));
        assert_eq!(find("auth_cmds"), (Kind::Counter, 0));
        assert_eq!(got.len(), GENERAL.len());
    }

    #[test]
    fn reset_zeroes_the_counters_and_keeps_the_gauges() {
        let s = Stats::new();
        let all = |s: &Stats| -> Vec<(&'static str, u64)> {
            GENERAL
                .iter()
                .filter_map(|d| if let Read::Counter(c) = d.read { Some((d.name, read(c(s)))) } else { None })
                .collect()
        };
        for d in GENERAL {
            if let Read::Counter(c) = d.read {
                bump(c(&s), 7);
            }
        }
        assert_eq!(all(&s).len(), 27, "every counter of Stats is in the table");
        s.reset();
        let kept: Vec<_> = all(&s).into_iter().filter(|&(_, v)| v != 0).collect();
        assert_eq!(kept, [("curr_connections", 7), ("connection_structures", 7)]);
    }

    #[test]
    fn prefixes_count_while_enabled_and_reset_forgets_them() {
        let s = Stats::new();
        let dump = |s: &Stats| {
            let mut out = Vec::new();
            s.detail.dump(&mut |b| out.extend_from_slice(b));
            String::from_utf8(out).unwrap()
        };
        s.detail.record_set(b"a:1");
        assert_eq!(dump(&s), "", "off: nothing counted");
        s.detail.set_enabled(true);
        s.detail.record_set(b"a:1");
        s.detail.record_get(b"a:2", true);
        s.detail.record_get(b"a:", false);
        s.detail.record_delete(b"b:x:y");
        s.detail.record_get(b"nodelimiter", true);
        s.detail.record_get(b":empty", true);
        assert_eq!(
            dump(&s),
            "PREFIX  get 1 hit 1 set 0 del 0\r\nPREFIX a get 2 hit 1 set 1 del 0\r\n\
             PREFIX b get 0 hit 0 set 0 del 1\r\n"
        );
        s.detail.set_enabled(false);
        s.detail.record_set(b"a:1");
        assert!(dump(&s).contains("PREFIX a get 2 hit 1 set 1 del 0"), "kept while off");
        s.reset();
        assert_eq!(dump(&s), "");
        s.detail.set_enabled(true);
        for i in 0..MAX_PREFIXES + 5 {
            s.detail.record_set(format!("p{i}:k").as_bytes());
        }
        assert_eq!(dump(&s).lines().count(), MAX_PREFIXES, "bounded");
    }

    #[test]
    fn extra_lines_are_described() {
        assert_eq!(describe("cmd_get"), Desc { name: "cmd_get", kind: Kind::Counter, help: GENERAL[5].help });
        assert_eq!(describe("bytes").kind, Kind::Gauge);
        assert_eq!(describe("xdp_pass_miss"), Desc { name: "xdp_pass_miss", kind: Kind::Counter, help: None });
        struct Extra;
        impl Source for Extra {
            fn stats(&self, add: &mut dyn FnMut(&Desc<'_>, u64)) {
                add(&describe("xdp_hits"), 4);
                add(&describe("kcache_errors"), 1);
            }
        }
        let s = Stats::new();
        let src = Sources { extra: Some(&Extra), ..sources(&s) };
        let mut got = Vec::new();
        general_numbers(&src, &mut |d, v| got.push((d.name.to_string(), v)));
        assert_eq!(got.len(), GENERAL.len() + 2);
        assert_eq!(got[GENERAL.len()..], [("xdp_hits".to_string(), 4), ("kcache_errors".to_string(), 1)]);
    }
}
