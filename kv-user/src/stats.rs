//! Server-wide counters, named like memcached's `stats` output. All are relaxed atomics: they are
//! statistics, not synchronization.
//!
//! The network layer owns (bumps) `curr_connections` (inc on accept, dec on close), `total_connections`,
//! `rejected_connections`, `connection_structures`, `bytes_read`, `bytes_written` and `conn_yields`;
//! `exec` bumps the command counters. Item counters (curr_items, evictions, ...) live in the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct Stats {
    /// Unix time the server started (`time` - `uptime`).
    pub started_unix: u64,
    started: Instant,

    // Connections: bumped by the network layer.
    pub curr_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub connection_structures: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub conn_yields: AtomicU64,

    // Commands: bumped by exec.
    pub cmd_get: AtomicU64,
    pub cmd_set: AtomicU64,
    pub cmd_flush: AtomicU64,
    pub cmd_touch: AtomicU64,
    pub cmd_meta: AtomicU64,
    pub get_hits: AtomicU64,
    pub get_misses: AtomicU64,
    pub delete_misses: AtomicU64,
    pub delete_hits: AtomicU64,
    pub incr_misses: AtomicU64,
    pub incr_hits: AtomicU64,
    pub decr_misses: AtomicU64,
    pub decr_hits: AtomicU64,
    pub cas_misses: AtomicU64,
    pub cas_hits: AtomicU64,
    pub cas_badval: AtomicU64,
    pub touch_hits: AtomicU64,
    pub touch_misses: AtomicU64,
    pub store_too_large: AtomicU64,
    pub store_no_memory: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let z = || AtomicU64::new(0);
        Stats {
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            started: Instant::now(),
            curr_connections: z(),
            total_connections: z(),
            rejected_connections: z(),
            connection_structures: z(),
            bytes_read: z(),
            bytes_written: z(),
            conn_yields: z(),
            cmd_get: z(),
            cmd_set: z(),
            cmd_flush: z(),
            cmd_touch: z(),
            cmd_meta: z(),
            get_hits: z(),
            get_misses: z(),
            delete_misses: z(),
            delete_hits: z(),
            incr_misses: z(),
            incr_hits: z(),
            decr_misses: z(),
            decr_hits: z(),
            cas_misses: z(),
            cas_hits: z(),
            cas_badval: z(),
            touch_hits: z(),
            touch_misses: z(),
            store_too_large: z(),
            store_no_memory: z(),
        }
    }

    /// Seconds since start.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// `stats reset`: zeroes the cumulative counters, keeps the gauges (curr_connections,
    /// connection_structures).
    pub fn reset(&self) {
        for c in [
            &self.total_connections,
            &self.rejected_connections,
            &self.bytes_read,
            &self.bytes_written,
            &self.conn_yields,
            &self.cmd_get,
            &self.cmd_set,
            &self.cmd_flush,
            &self.cmd_touch,
            &self.cmd_meta,
            &self.get_hits,
            &self.get_misses,
            &self.delete_misses,
            &self.delete_hits,
            &self.incr_misses,
            &self.incr_hits,
            &self.decr_misses,
            &self.decr_hits,
            &self.cas_misses,
            &self.cas_hits,
            &self.cas_badval,
            &self.touch_hits,
            &self.touch_misses,
            &self.store_too_large,
            &self.store_no_memory,
        ] {
            c.store(0, Ordering::Relaxed);
        }
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

/// The numeric general `stats` lines from `max_connections` on, in memcached's order, then the kernel
/// path's lines. `stats` prints them and `/metrics` exports them: one source, so the two never disagree.
pub fn general_numbers(ctx: &crate::exec::Ctx, add: &mut dyn FnMut(&str, u64)) {
    let s = &*ctx.stats;
    let st = ctx.store.stats();
    add("max_connections", ctx.config.max_connections as u64);
    add("curr_connections", read(&s.curr_connections));
    add("total_connections", read(&s.total_connections));
    add("rejected_connections", read(&s.rejected_connections));
    add("connection_structures", read(&s.connection_structures));
    add("cmd_get", read(&s.cmd_get));
    add("cmd_set", read(&s.cmd_set));
    add("cmd_flush", read(&s.cmd_flush));
    add("cmd_touch", read(&s.cmd_touch));
    add("cmd_meta", read(&s.cmd_meta));
    add("get_hits", read(&s.get_hits));
    add("get_misses", read(&s.get_misses));
    add("get_expired", st.get_expired);
    add("get_flushed", st.get_flushed);
    add("delete_misses", read(&s.delete_misses));
    add("delete_hits", read(&s.delete_hits));
    add("incr_misses", read(&s.incr_misses));
    add("incr_hits", read(&s.incr_hits));
    add("decr_misses", read(&s.decr_misses));
    add("decr_hits", read(&s.decr_hits));
    add("cas_misses", read(&s.cas_misses));
    add("cas_hits", read(&s.cas_hits));
    add("cas_badval", read(&s.cas_badval));
    add("touch_hits", read(&s.touch_hits));
    add("touch_misses", read(&s.touch_misses));
    add("store_too_large", read(&s.store_too_large));
    add("store_no_memory", read(&s.store_no_memory));
    // No SASL: these are truly zero.
    add("auth_cmds", 0);
    add("auth_errors", 0);
    add("bytes_read", read(&s.bytes_read));
    add("bytes_written", read(&s.bytes_written));
    add("limit_maxbytes", ctx.store.limit_maxbytes());
    // Over the limit the acceptor rejects (maxconns_fast) but never stops accepting, so also no
    // listen_disabled_num: memcached's counter of listener pauses has no equivalent to report.
    add("accepting_conns", 1);
    add("threads", ctx.config.threads as u64);
    add("conn_yields", read(&s.conn_yields));
    add("bytes", st.bytes);
    add("curr_items", st.curr_items);
    add("total_items", st.total_items);
    add("expired_unfetched", st.expired_unfetched);
    add("evicted_unfetched", st.evicted_unfetched);
    add("evictions", st.evictions);
    add("reclaimed", st.reclaimed);
    // Not reported (no meaning here): the slab mover, LRU crawler and segmented-LRU counters
    // (slab_reassign_*, lru_crawler_*, crawler_*, moves_*, evicted_active), hash table internals
    // (hash_power_level, hash_bytes), memcached's buffer pools (read_buf_*, response_obj_*), and
    // malloc_fails (Rust aborts on allocation failure).
    if let Some(extra) = &ctx.extra_stats {
        extra.stats(add);
    }
}
