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
