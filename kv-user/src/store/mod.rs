//! The sharded in-memory item store.
//!
//! A key hashes to one of N shards (a power of two), each a mutex around its own segments and index, so
//! workers only contend when they touch the same shard. Items live packed in segments (`shard`, `item`):
//! no allocation per item, a 34-byte header, and memory taken in blocks charged against one budget
//! (`memory`), so `-m` bounds what the process holds for items. Room is made per shard (`space`):
//! emptied and expired memory is reused before new memory is taken, then the oldest segment is evicted
//! with a second chance for items read since. Expired and flushed items are also reclaimed lazily when
//! looked up.
//!
//! Every change (and read hit) leaves the store through one function, [`Store::emit`], as a [`Change`]:
//! the [`Journal`] logs what must be replayed and the [`Observer`] (the kernel path) follows all of it,
//! both while the shard lock is held, so the log's and the kernel's order per key is the store's order.
//! The journal's sequence number goes back to the caller to await durability.

mod admin;
mod block;
mod changes;
mod classes;
mod item;
mod memory;
#[cfg(test)]
mod model_tests;
mod read;
mod replay;
mod shard;
mod space;
#[cfg(test)]
mod tests;
mod types;
mod undo;
#[cfg(test)]
mod undo_tests;
mod write;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;
use parking_lot::{Mutex, MutexGuard};

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use admin::ItemMeta;
pub use changes::{Change, Observer, Removal};
pub use classes::{chunk_size, class_of, ClassCounts, CLASSES, MAX_CLASS_ID, PAGE_SIZE};
pub use item::HEADER as ITEM_HEADER;
pub use replay::Replayer;
pub use shard::ItemCounters;
pub use types::*;

use crate::record::{Journal, Record, Snapshot};
use item::FETCHED;
use memory::Budget;
use shard::{Env, Hit, Shard};

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
    Live(Hit),
    Missing,
}

/// Largest standard segment; items over half a segment get a block of their own.
const SEG_MAX: usize = 1 << 20;
const SEG_MIN: usize = 64;

/// Segment size for a store: about eight segments per shard so eviction stays fine-grained, between
/// `SEG_MIN` and `SEG_MAX`, a power of two.
fn seg_size(limit: u64, shards: usize) -> usize {
    let per = (limit / (shards as u64 * 8)).clamp(SEG_MIN as u64, SEG_MAX as u64) as usize;
    1 << (usize::BITS - 1 - per.leading_zeros())
}

pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    hasher: DefaultHashBuilder,
    /// Last CAS handed out; also raised to explicit (`E`) and replayed CAS values so new ones stay larger.
    cas: AtomicU64,
    budget: Budget,
    seg_size: usize,
    item_size_max: usize,
    /// flush_all moment (Unix secs, 0 = none): once reached, items stored before it are dead.
    flush_at: AtomicU64,
    /// Bytes held by [`Reservation`]s.
    reserved: AtomicU64,
    /// Where the next cross-shard eviction starts, so it doesn't always hit shard 0.
    evict_cursor: AtomicUsize,
    journal: Arc<dyn Journal>,
    /// The journal can fail after accepting a record: keep before-images and honour refusals (see `undo`).
    can_fail: bool,
    /// Follows every change besides the journal: the kernel path, when it is up.
    observer: Option<Arc<dyn Observer>>,
    clock: Arc<dyn Clock>,
}

impl Store {
    pub fn new(opts: StoreOptions, journal: Arc<dyn Journal>) -> Store {
        Store::with_clock(opts, journal, Arc::new(SystemClock))
    }

    pub fn with_clock(opts: StoreOptions, journal: Arc<dyn Journal>, clock: Arc<dyn Clock>) -> Store {
        // At most 8 GB a shard, so its segments can always be named in the index's 32-bit entries.
        let n = opts.shards.max((opts.memory_limit >> 33) as usize + 1).clamp(1, 1 << 16).next_power_of_two();
        let hasher = DefaultHashBuilder::default();
        let seg_size = seg_size(opts.memory_limit, n);
        Store {
            shards: (0..n).map(|i| Mutex::new(Shard::new(i, seg_size, hasher.clone()))).collect(),
            shard_mask: n - 1,
            hasher,
            cas: AtomicU64::new(0),
            budget: Budget::new(opts.memory_limit),
            seg_size,
            item_size_max: opts.item_size_max,
            flush_at: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            evict_cursor: AtomicUsize::new(0),
            can_fail: journal.can_fail(),
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
        self.observe(&change);
        change.record().map_or(0, |r| self.journal.record(&r))
    }

    /// The observer's half of [`Store::emit`], alone for what must not be journaled (an undo, or a
    /// flush_all journaled before it is applied).
    fn observe(&self, change: &Change<'_>) {
        if let Some(o) = &self.observer {
            o.observe(change);
        }
    }

    /// Current Unix time according to the store's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn limit_maxbytes(&self) -> u64 {
        self.budget.limit()
    }

    /// Bytes of item memory held (segments, spare blocks, indexes): memcached's `total_malloced`.
    pub fn memory_used(&self) -> u64 {
        self.budget.used()
    }

    /// Size of a standard segment (items above half of it get a block of their own).
    pub fn segment_size(&self) -> usize {
        self.seg_size
    }

    /// Emptied segments waiting for reuse.
    pub fn spare_segments(&self) -> usize {
        self.budget.spare_count()
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

    /// The removal path of `Env`: every eviction and reclaim is emitted here.
    fn removed(&self, key: &[u8], cause: Removal) {
        self.emit(Change::Removed { key, cause });
    }

    fn env<'a>(&'a self, now: u64, emit: &'a dyn Fn(&[u8], Removal)) -> Env<'a> {
        Env { budget: &self.budget, now, flush_at: self.flush_at.load(Ordering::Relaxed), emit }
    }

    /// Finds a live item, reclaiming it if it is expired or flushed.
    fn lookup(&self, shard: &mut Shard, hash: u64, key: &[u8], env: &Env<'_>) -> Lookup {
        let Some(h) = shard.find_hit(hash, key) else {
            return Lookup::Missing;
        };
        let it = shard.item(h.loc);
        let Some(cause) = env.dead_cause(&it) else {
            return Lookup::Live(h);
        };
        let (fetched, class) = (it.has(FETCHED), it.class());
        self.emit(Change::Removed { key, cause });
        shard.remove_hit(h, &self.budget);
        if cause == Removal::Expired {
            shard.counters.get_expired += 1;
            shard.count_removal(cause, fetched, class);
        } else {
            shard.counters.get_flushed += 1;
        }
        Lookup::Missing
    }

    /// Releases the shard, then brings the store back under its budget if this operation pushed it over
    /// (an index grew, or a shard with nothing left to evict took memory): spare blocks go first, then
    /// the oldest segments of the other shards in turn, this one's last.
    fn finish(&self, g: MutexGuard<'_, Shard>) {
        let own = g.id;
        drop(g);
        self.evict_over_budget(own);
    }

    /// Frees spare blocks, then evicts the oldest segments of every shard in turn (`last` last) until
    /// the store is within its budget or holds nothing more.
    fn evict_over_budget(&self, last: usize) {
        if !self.budget.over() {
            return;
        }
        while self.budget.over() && self.budget.shed_spare() {}
        let n = self.shards.len();
        let start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        let others = (0..n).map(|off| (start + off) & self.shard_mask).filter(|&i| i != last);
        for i in others.chain([last]) {
            let mut g = self.shards[i].lock();
            while self.budget.over() && g.shed_oldest(&env) {}
            if !self.budget.over() {
                return;
            }
        }
    }

    /// Charges `n` bytes to the memory budget for a value still arriving (a connection buffering a large
    /// set), evicting the oldest segments as needed, so stalled uploads cannot push the process past
    /// `-m`. Pending uploads may hold at most half of the limit together; `None` when that or the whole
    /// budget is spent (the client then gets memcached's out-of-memory error).
    pub fn reserve(self: &Arc<Self>, n: u64) -> Option<Reservation> {
        let cap = self.budget.limit() / 2;
        self.reserved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| (r + n <= cap).then_some(r + n)).ok()?;
        let now = self.now();
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        let start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        let mut i = 0;
        while !self.budget.try_take(n) {
            if self.budget.shed_spare() {
                continue;
            }
            if i == self.shards.len() {
                // Nothing left to evict (the memory is held by other reservations).
                self.reserved.fetch_sub(n, Ordering::Relaxed);
                return None;
            }
            let mut g = self.shards[(start + i) & self.shard_mask].lock();
            if !g.shed_oldest(&env) {
                i += 1;
            }
        }
        Some(Reservation { store: self.clone(), n })
    }

    /// Reclaims every segment whose items have all expired or been flushed, in every shard (memcached's
    /// LRU crawler, without looking at items: segments carry their latest exptime). Run about once a
    /// second, so memory of expired items is reused even when no write reaches their shard. Returns the
    /// segments reclaimed.
    pub fn reclaim_expired(&self) -> usize {
        self.prune_undo();
        let now = self.now();
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        self.shards.iter().map(|s| s.lock().reclaim_dead(&env)).sum()
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
            *c = ItemCounters {
                curr_items: c.curr_items,
                bytes: c.bytes,
                segments: c.segments,
                segment_bytes: c.segment_bytes,
                ..ItemCounters::default()
            };
            g.classes.reset_removals();
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

/// Memory held for a value still arriving (see [`Store::reserve`]); given back when dropped.
pub struct Reservation {
    store: Arc<Store>,
    n: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.n
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.store.reserved.fetch_sub(self.n, Ordering::Relaxed);
        self.store.budget.adjust(self.n as usize, 0);
    }
}

impl Snapshot for Store {
    fn for_each_live(&self, f: &mut dyn FnMut(&Record<'_>)) {
        let now = self.now();
        let at = self.flush_at.load(Ordering::Relaxed);
        if at > now {
            f(&Record::FlushAll { at, max_cas: 0 });
        }
        let emit = |_: &[u8], _| {};
        let env = self.env(now, &emit);
        for s in self.shards.iter() {
            // Oldest first, so a replay rebuilds the same eviction order.
            s.lock().for_each(|it| {
                if env.dead_cause(&it).is_none() {
                    f(&it.record());
                }
            });
        }
    }

    /// `bytes` of `stats`: items with their headers, about what their records take in the log.
    fn live_bytes(&self) -> u64 {
        self.stats().bytes
    }
}
