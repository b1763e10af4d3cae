//! The sharded in-memory item store.
//!
//! A key hashes to one of N shards (a power of two), each a mutex around a hash table + LRU list, so workers
//! only contend when they touch the same shard. Values are `Bytes`: a hit hands out a refcount, not a copy.
//! Memory is accounted per item as key + value + [`ITEM_OVERHEAD`] against one global limit; a store that
//! goes over it evicts from the LRU tail of its own shard first, then (after dropping its lock) from others.
//! Expired and flushed items are reclaimed lazily when looked up and when they reach an LRU tail.
//!
//! Every change (and read hit) leaves the store through one function, [`Store::emit`], as a [`Change`]:
//! the [`Journal`] logs what must be replayed and the [`Observer`] (the kernel path) follows all of it,
//! both while the shard lock is held, so the log's and the kernel's order per key is the store's order.
//! The journal's sequence number goes back to the caller to await durability.

mod changes;
mod read;
mod replay;
mod shard;
#[cfg(test)]
mod tests;
mod types;
mod write;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;
use parking_lot::{Mutex, MutexGuard};

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use changes::{Change, Observer, Removal};
pub use shard::{ItemCounters, ITEM_OVERHEAD};
pub use types::*;

use crate::record::{Journal, Record, Snapshot};
use shard::{Entry, Shard};

/// memcached's REALTIME_MAXDELTA: exptimes up to 30 days are relative, larger ones absolute Unix times.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// Converts a client exptime to absolute Unix seconds (0 = never) as memcached does: 0 never expires,
/// negative is already expired, up to 30 days is relative to `now`, anything larger is absolute.
pub fn abs_exptime(exptime: i64, now: u64) -> u64 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        // Unix second 1: always in the past, yet distinct from "never".
        1
    } else if exptime <= REALTIME_MAXDELTA {
        now.saturating_add(exptime as u64)
    } else {
        exptime as u64
    }
}

/// Parses a stored value as memcached's `safe_strtoull`: optional leading whitespace and `+`, decimal digits
/// that fit a u64, then the end or whitespace (incr pads shortened numbers with spaces).
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut i = 0;
    while i < v.len() && ws(v[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < v.len() && (v[i] == b'+' || v[i] == b'-') {
        negative = v[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while i < v.len() && v[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(v[i] - b'0'))?;
        i += 1;
    }
    if i == start || (i < v.len() && !ws(v[i])) || (negative && n != 0) {
        return None;
    }
    Some(n)
}

/// Sizing of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Total item memory in bytes (memcached's `limit_maxbytes`).
    pub memory_limit: u64,
    /// Largest item (key + value + overhead) accepted.
    pub item_size_max: usize,
    /// Number of shards; rounded up to a power of two.
    pub shards: usize,
}

enum Lookup {
    Live(u32),
    Missing,
}

pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    hasher: DefaultHashBuilder,
    /// Last CAS handed out; also raised to explicit (`E`) and replayed CAS values so new ones stay larger.
    cas: AtomicU64,
    mem_used: AtomicU64,
    mem_limit: u64,
    item_size_max: usize,
    /// flush_all moment (Unix secs, 0 = none): once reached, items stored before it are dead.
    flush_at: AtomicU64,
    /// Where the next cross-shard eviction starts, so it doesn't always hit shard 0.
    evict_cursor: AtomicUsize,
    journal: Arc<dyn Journal>,
    /// Follows every change besides the journal: the kernel path, when it is up.
    observer: Option<Arc<dyn Observer>>,
    clock: Arc<dyn Clock>,
}

impl Store {
    pub fn new(opts: StoreOptions, journal: Arc<dyn Journal>) -> Store {
        Store::with_clock(opts, journal, Arc::new(SystemClock))
    }

    pub fn with_clock(opts: StoreOptions, journal: Arc<dyn Journal>, clock: Arc<dyn Clock>) -> Store {
        let n = opts.shards.clamp(1, 1 << 16).next_power_of_two();
        Store {
            shards: (0..n).map(|_| Mutex::new(Shard::new())).collect(),
            shard_mask: n - 1,
            hasher: DefaultHashBuilder::default(),
            cas: AtomicU64::new(0),
            mem_used: AtomicU64::new(0),
            mem_limit: opts.memory_limit,
            item_size_max: opts.item_size_max,
            flush_at: AtomicU64::new(0),
            evict_cursor: AtomicUsize::new(0),
            journal,
            observer: None,
            clock,
        }
    }

    /// The store with `o` following its changes (see [`Observer`]); set before the store is shared.
    pub fn observed_by(mut self, o: Arc<dyn Observer>) -> Store {
        self.observer = Some(o);
        self
    }

    /// The one exit of every change: the observer sees it, then the journal logs what it must replay.
    /// Returns the journal's sequence number (0 if nothing was logged). Called under the shard lock.
    fn emit(&self, change: Change<'_>) -> u64 {
        if let Some(o) = &self.observer {
            o.observe(&change);
        }
        change.record().map_or(0, |r| self.journal.record(&r))
    }

    /// Current Unix time according to the store's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn limit_maxbytes(&self) -> u64 {
        self.mem_limit
    }

    pub fn item_size_max(&self) -> usize {
        self.item_size_max
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // Bits 32.. are independent of the table's bucket bits (low) and tag bits (top 7).
        (hash, ((hash >> 32) as usize) & self.shard_mask)
    }

    fn next_cas(&self) -> u64 {
        self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    fn cas_for(&self, explicit: Option<u64>) -> u64 {
        match explicit {
            Some(c) => {
                self.cas.fetch_max(c, Ordering::Relaxed);
                c
            }
            None => self.next_cas(),
        }
    }

    fn is_flushed(&self, e: &Entry, now: u64) -> bool {
        let at = self.flush_at.load(Ordering::Relaxed);
        at != 0 && now >= at && e.time < at
    }

    fn dead(&self, e: &Entry, now: u64) -> bool {
        e.expired(now) || self.is_flushed(e, now)
    }

    /// Finds a live item, reclaiming it if it is expired or flushed.
    fn lookup(&self, shard: &mut Shard, hash: u64, key: &[u8], now: u64) -> Lookup {
        let Some(idx) = shard.find(hash, key) else {
            return Lookup::Missing;
        };
        let e = shard.get(idx);
        if e.expired(now) {
            let unfetched = !e.fetched;
            self.emit(Change::Removed { key: &e.key, cause: Removal::Expired });
            shard.remove(idx);
            shard.counters.get_expired += 1;
            shard.counters.reclaimed += 1;
            if unfetched {
                shard.counters.expired_unfetched += 1;
            }
            Lookup::Missing
        } else if self.is_flushed(e, now) {
            self.emit(Change::Removed { key: &e.key, cause: Removal::Flushed });
            shard.remove(idx);
            shard.counters.get_flushed += 1;
            Lookup::Missing
        } else {
            Lookup::Live(idx)
        }
    }

    /// Applies the shard's byte delta to the global count and evicts from this shard's LRU tail (never
    /// `keep`) while over the limit. Returns whether the store is still over the limit.
    fn settle(&self, shard: &mut Shard, before: u64, keep: Option<u32>, now: u64) -> bool {
        let delta = shard.counters.bytes.wrapping_sub(before);
        let mut used = self.mem_used.fetch_add(delta, Ordering::Relaxed).wrapping_add(delta);
        while used > self.mem_limit {
            match shard.tail() {
                Some(t) if Some(t) != keep => {
                    let b = shard.counters.bytes;
                    self.evict(shard, t, now);
                    let freed = b - shard.counters.bytes;
                    used = self.mem_used.fetch_sub(freed, Ordering::Relaxed) - freed;
                }
                _ => break,
            }
        }
        used > self.mem_limit
    }

    fn evict(&self, shard: &mut Shard, idx: u32, now: u64) {
        let e = shard.get(idx);
        let (dead, unfetched, expired) = (self.dead(e, now), !e.fetched, e.expired(now));
        let cause = match (dead, expired) {
            (false, _) => Removal::Evicted,
            (true, true) => Removal::Expired,
            (true, false) => Removal::Flushed,
        };
        self.emit(Change::Removed { key: &e.key, cause });
        shard.remove(idx);
        let c = &mut shard.counters;
        if dead {
            c.reclaimed += 1;
            if expired && unfetched {
                c.expired_unfetched += 1;
            }
        } else {
            c.evictions += 1;
            if unfetched {
                c.evicted_unfetched += 1;
            }
        }
    }

    /// Evicts from other shards' tails until under the limit (an item bigger than its shard's share).
    fn evict_elsewhere(&self, skip: usize) {
        let n = self.shards.len();
        let start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        for off in 0..n {
            if self.mem_used.load(Ordering::Relaxed) <= self.mem_limit {
                return;
            }
            let i = (start + off) & self.shard_mask;
            if i == skip {
                continue;
            }
            let mut g = self.shards[i].lock();
            let bytes = g.counters.bytes;
            self.settle(&mut g, bytes, None, now);
        }
    }

    fn finish(&self, mut g: MutexGuard<'_, Shard>, si: usize, before: u64, keep: Option<u32>, now: u64) {
        let over = self.settle(&mut g, before, keep, now);
        drop(g);
        if over {
            self.evict_elsewhere(si);
        }
    }

    /// Item statistics, summed over the shards.
    pub fn stats(&self) -> ItemCounters {
        let mut items = ItemCounters::default();
        for sh in self.shards.iter() {
            items += sh.lock().counters;
        }
        items
    }

    /// `stats reset`: clears the cumulative counters (not curr_items/bytes).
    pub fn reset_stats(&self) {
        for sh in self.shards.iter() {
            let mut g = sh.lock();
            let c = &mut g.counters;
            *c = ItemCounters { curr_items: c.curr_items, bytes: c.bytes, ..ItemCounters::default() };
        }
    }

    /// Number of items held, including expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Snapshot for Store {
    fn for_each_live(&self, f: &mut dyn FnMut(&Record<'_>)) {
        let now = self.now();
        let at = self.flush_at.load(Ordering::Relaxed);
        if at > now {
            f(&Record::FlushAll { at, max_cas: 0 });
        }
        for s in self.shards.iter() {
            let g = s.lock();
            // Oldest first, so a replay rebuilds the same LRU order.
            for e in g.iter_lru() {
                if !self.dead(e, now) {
                    f(&e.as_record());
                }
            }
        }
    }
}
