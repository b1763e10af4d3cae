//! The sharded in-memory item store.
//!
//! A key hashes to one of N shards (a power of two), each a mutex around a hash table + LRU list, so workers
//! only contend when they touch the same shard. Values are `Bytes`: a hit hands out a refcount, not a copy.
//! Memory is accounted per item as key + value + [`ITEM_OVERHEAD`] against one global limit; a store that
//! goes over it evicts from the LRU tail of its own shard first, then (after dropping its lock) from others.
//! Expired and flushed items are reclaimed lazily when looked up and when they reach an LRU tail.
//!
//! Every successful mutation is handed to the [`Journal`] while the shard lock is held, so the log's order per
//! key is the store's order; the returned sequence number goes back to the caller to await durability.

mod clock;
mod shard;
#[cfg(test)]
mod tests;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::DefaultHashBuilder;
use parking_lot::{Mutex, MutexGuard};

pub use clock::{Clock, ManualClock, SystemClock};
pub use shard::{ShardCounters, ITEM_OVERHEAD};

use crate::config::Config;
use crate::record::{Journal, Record, Snapshot};
use shard::{item_size, Entry, Shard};

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

impl StoreOptions {
    /// `-m`/`-I`/`-t` from the command line; shards = 4 × threads rounded up to a power of two, at least 64.
    pub fn from_config(c: &Config) -> StoreOptions {
        StoreOptions {
            memory_limit: c.memory_limit_mb.saturating_mul(1 << 20),
            item_size_max: c.item_size_max,
            shards: c.threads.saturating_mul(4).clamp(64, 4096),
        }
    }
}

/// A live item as seen by a read, with the metadata from *before* this access (mg `h`, `l`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    pub value: Bytes,
    pub flags: u32,
    pub cas: u64,
    /// Absolute Unix seconds, 0 = never (after any touch done by this access).
    pub exptime: u64,
    /// Last access time before this access.
    pub last_access: u64,
    /// Whether it had been fetched before this access.
    pub fetched: bool,
    /// Marked stale by `md I`.
    pub stale: bool,
}

/// Options of a read (get, gets, gat, touch, mg).
#[derive(Debug, Clone, Copy)]
pub struct FetchOpts {
    /// Bump in the LRU and mark fetched/accessed (false for mg `u`).
    pub bump: bool,
    /// New exptime (client form) on a hit: touch, gat, mg `T`.
    pub touch: Option<i64>,
    /// mg `N`: on a miss, create an empty item with this exptime (client form).
    pub vivify: Option<i64>,
    /// mg `E`: CAS of an item created by `vivify`.
    pub new_cas: Option<u64>,
    /// mg `R`: win the recache token if the remaining TTL is below this (client form).
    pub recache: Option<i64>,
}

impl Default for FetchOpts {
    fn default() -> Self {
        FetchOpts { bump: true, touch: None, vivify: None, new_cas: None, recache: None }
    }
}

/// Result of [`Store::fetch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    pub item: Option<ItemView>,
    /// Created by `vivify` (an empty item).
    pub created: bool,
    /// This client won the recache token (mg `W`).
    pub won: bool,
    /// Another client already holds the token (mg `Z`).
    pub token_sent: bool,
    /// Journal sequence number of a touch or vivify, else 0.
    pub seq: u64,
}

/// How a store combines with an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    /// Store only if the item exists and its CAS equals `compare_cas`.
    Cas,
}

#[derive(Debug, Clone, Copy)]
pub struct SetRequest<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    /// Client form (see [`abs_exptime`]).
    pub exptime: i64,
    pub mode: SetMode,
    /// `Cas`: required CAS (0 never matches). Append/Prepend: 0 = no check, else must match.
    pub compare_cas: u64,
    /// ms `E`: use this CAS instead of the next counter value.
    pub new_cas: Option<u64>,
    /// ms `I` with `Cas`: a CAS older than the item's is accepted but the new item is marked stale.
    pub allow_stale: bool,
    /// ms `N` with Append/Prepend: create on a miss with this exptime (client form).
    pub vivify: Option<i64>,
}

impl<'a> SetRequest<'a> {
    pub fn new(mode: SetMode, key: &'a [u8], value: &'a [u8], flags: u32, exptime: i64) -> Self {
        SetRequest { key, value, flags, exptime, mode, compare_cas: 0, new_cas: None, allow_stale: false, vivify: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetStatus {
    Stored,
    NotStored,
    Exists,
    NotFound,
    /// Larger than `item_size_max`: nothing was changed (the caller decides whether to drop the old item).
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOutcome {
    pub status: SetStatus,
    /// CAS of the stored item, 0 if not stored.
    pub cas: u64,
    /// Length of the resulting value (after append/prepend), or of the request's value if not stored.
    pub size: usize,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOpts {
    /// md `C`: only if the CAS matches.
    pub compare_cas: Option<u64>,
    /// md `I`: mark stale (new CAS, token reset) instead of removing.
    pub invalidate: bool,
    /// md `T` with `I`: new exptime (client form).
    pub touch: Option<i64>,
    /// md `E`: CAS to give the invalidated item.
    pub new_cas: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteStatus {
    Deleted,
    NotFound,
    Exists,
}

#[derive(Debug, Clone, Copy)]
pub struct ArithOpts {
    pub incr: bool,
    pub delta: u64,
    /// ma `C`: 0 = no check.
    pub compare_cas: u64,
    /// ma `E`.
    pub new_cas: Option<u64>,
    /// ma `N`/`J`: on a miss create the item with (exptime in client form, initial value).
    pub vivify: Option<(i64, u64)>,
    /// ma `T`: new exptime on success (client form).
    pub touch: Option<i64>,
    /// Keep the old length, padding a shorter number with spaces: what memcached's classic incr/decr do
    /// (in-place update); its `ma` replaces the item, so the number is stored bare.
    pub pad: bool,
}

impl ArithOpts {
    pub fn new(incr: bool, delta: u64) -> Self {
        ArithOpts { incr, delta, compare_cas: 0, new_cas: None, vivify: None, touch: None, pad: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithStatus {
    Ok,
    NotFound,
    NonNumeric,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArithOutcome {
    pub status: ArithStatus,
    /// The new number (or the initial one if created).
    pub value: u64,
    pub cas: u64,
    pub exptime: u64,
    pub created: bool,
    pub seq: u64,
}

impl ArithOutcome {
    fn fail(status: ArithStatus) -> Self {
        ArithOutcome { status, value: 0, cas: 0, exptime: 0, created: false, seq: 0 }
    }
}

/// Item statistics (memcached names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub curr_items: u64,
    pub bytes: u64,
    pub total_items: u64,
    pub evictions: u64,
    pub reclaimed: u64,
    pub expired_unfetched: u64,
    pub evicted_unfetched: u64,
    pub get_expired: u64,
    pub get_flushed: u64,
    pub limit_maxbytes: u64,
}

enum Lookup {
    Live(u32),
    Missing,
}

/// A read-side copy of hot items outside the store (the kernel cache), kept coherent with it.
///
/// Every call is made while the key's shard lock is held, so for each key the mirror sees changes in
/// exactly the order the store applies them, and a read hit can never re-admit a value that a concurrent
/// write already replaced. A mutation's reply is sent after the call returns, hence after the mirror
/// dropped or replaced the old value.
pub trait Mirror: Send + Sync {
    /// The item now has this state (`Record::Set`): replace a mirrored copy, never add one.
    fn changed(&self, item: &Record<'_>);
    /// The key is gone (delete, eviction, expiry or flush reclaimed it).
    fn removed(&self, key: &[u8]);
    /// flush_all: everything stored before `at` (Unix seconds) is dead from `at` on; `now` is the store's time.
    fn flushed(&self, at: u64, now: u64);
    /// A user-space read hit; `hits` counts this item's hits since it was stored. Returns whether the mirror
    /// now holds the item (admission is the mirror's choice).
    fn read_hit(&self, item: &Record<'_>, hits: u32) -> bool;
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
    clock: Arc<dyn Clock>,
    /// Set once the kernel path is up (after replay).
    mirror: std::sync::OnceLock<Arc<dyn Mirror>>,
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
            clock,
            mirror: std::sync::OnceLock::new(),
        }
    }

    /// Starts mirroring hot items (once; later calls are ignored).
    pub fn set_mirror(&self, m: Arc<dyn Mirror>) {
        let _ = self.mirror.set(m);
    }

    fn mirror_removed(&self, key: &[u8]) {
        if let Some(m) = self.mirror.get() {
            m.removed(key);
        }
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
            self.mirror_removed(&e.key);
            shard.remove(idx);
            shard.counters.get_expired += 1;
            shard.counters.reclaimed += 1;
            if unfetched {
                shard.counters.expired_unfetched += 1;
            }
            Lookup::Missing
        } else if self.is_flushed(e, now) {
            self.mirror_removed(&e.key);
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
        self.mirror_removed(&e.key);
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

    /// Journals the item's new state and updates the mirror, both under the shard lock.
    fn journal_set(&self, e: &Entry) -> u64 {
        let rec = e.as_record();
        if let Some(m) = self.mirror.get() {
            m.changed(&rec);
        }
        self.journal.record(&rec)
    }

    fn journal_delete(&self, key: &[u8]) -> u64 {
        self.mirror_removed(key);
        self.journal.record(&Record::Delete { key })
    }

    /// get/gets/gat/gats/touch/mg.
    pub fn fetch(&self, key: &[u8], opts: &FetchOpts) -> Fetched {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let mut out = Fetched::default();
        let mut keep = None;
        match self.lookup(&mut g, hash, key, now) {
            Lookup::Live(idx) => {
                let e = g.get_mut(idx);
                let token_before = e.token_sent;
                let view_fetched = e.fetched;
                let view_atime = e.atime;
                if let Some(t) = opts.touch {
                    e.exptime = abs_exptime(t, now);
                    if let Some(m) = self.mirror.get() {
                        m.changed(&e.as_record());
                    }
                    out.seq = self.journal.record(&Record::Touch { key: &e.key, exptime: e.exptime, cas: e.cas });
                }
                if let Some(r) = opts.recache {
                    if !token_before && e.exptime != 0 && e.exptime < abs_exptime(r, now) {
                        out.won = true;
                    }
                }
                if e.stale && !token_before {
                    out.won = true;
                }
                if out.won {
                    e.token_sent = true;
                }
                out.token_sent = token_before;
                if opts.bump {
                    e.atime = now;
                    e.fetched = true;
                    e.hits = e.hits.saturating_add(1);
                    // Offer hot items to the mirror; an item already there is re-offered now and then in
                    // case the kernel's own LRU dropped it.
                    if let Some(m) = self.mirror.get() {
                        if !e.in_mirror || e.hits.is_multiple_of(64) {
                            e.in_mirror = m.read_hit(&e.as_record(), e.hits);
                        }
                    }
                }
                out.item = Some(ItemView {
                    value: e.value.clone(),
                    flags: e.flags,
                    cas: e.cas,
                    exptime: e.exptime,
                    last_access: view_atime,
                    fetched: view_fetched,
                    stale: e.stale,
                });
                if opts.bump {
                    g.bump(idx);
                }
            }
            Lookup::Missing => {
                if let Some(v) = opts.vivify {
                    let cas = self.cas_for(opts.new_cas);
                    let mut e = Entry::new(hash, key, Bytes::new(), 0, abs_exptime(v, now), cas, now);
                    e.token_sent = true;
                    out.item = Some(ItemView {
                        value: Bytes::new(),
                        flags: 0,
                        cas,
                        exptime: e.exptime,
                        last_access: now,
                        fetched: false,
                        stale: false,
                    });
                    let idx = g.insert(e);
                    g.counters.total_items += 1;
                    out.seq = self.journal_set(g.get(idx));
                    out.created = true;
                    out.won = true;
                    keep = Some(idx);
                }
            }
        }
        self.finish(g, si, before, keep, now);
        out
    }

    /// Plain get: bumps and marks fetched.
    pub fn get(&self, key: &[u8]) -> Option<ItemView> {
        self.fetch(key, &FetchOpts::default()).item
    }

    /// set/add/replace/append/prepend/cas/ms.
    pub fn set(&self, req: &SetRequest<'_>) -> SetOutcome {
        let not = |status| SetOutcome { status, cas: 0, size: req.value.len(), seq: 0 };
        if item_size(req.key.len(), req.value.len()) > self.item_size_max as u64 {
            return not(SetStatus::TooLarge);
        }
        let now = self.now();
        let (hash, si) = self.locate(req.key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let mut stale = false;
        let mut token_sent = false;
        // (value, flags, exptime) of the item to store, or the failure status.
        let plan: Result<(Bytes, u32, u64), SetStatus> = match self.lookup(&mut g, hash, req.key, now) {
            Lookup::Live(idx) => {
                let old = g.get(idx);
                match req.mode {
                    SetMode::Add => {
                        // memcached bumps the existing item on a failed add.
                        g.bump(idx);
                        Err(SetStatus::NotStored)
                    }
                    SetMode::Cas => {
                        let c = req.compare_cas;
                        if c != 0 && c == old.cas {
                            Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(req.exptime, now)))
                        } else if req.allow_stale && c != 0 && c < old.cas {
                            // Accepted but stale: keeps the old TTL and token state.
                            stale = true;
                            token_sent = old.token_sent;
                            Ok((Bytes::copy_from_slice(req.value), req.flags, old.exptime))
                        } else {
                            Err(SetStatus::Exists)
                        }
                    }
                    SetMode::Append | SetMode::Prepend => {
                        if req.compare_cas != 0 && req.compare_cas != old.cas {
                            Err(SetStatus::Exists)
                        } else if item_size(req.key.len(), old.value.len() + req.value.len())
                            > self.item_size_max as u64
                        {
                            Err(SetStatus::NotStored)
                        } else {
                            let mut v = Vec::with_capacity(old.value.len() + req.value.len());
                            if req.mode == SetMode::Append {
                                v.extend_from_slice(&old.value);
                                v.extend_from_slice(req.value);
                            } else {
                                v.extend_from_slice(req.value);
                                v.extend_from_slice(&old.value);
                            }
                            Ok((Bytes::from(v), old.flags, old.exptime))
                        }
                    }
                    SetMode::Set | SetMode::Replace => {
                        Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(req.exptime, now)))
                    }
                }
            }
            Lookup::Missing => match (req.mode, req.vivify) {
                (SetMode::Set | SetMode::Add, _) => {
                    Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(req.exptime, now)))
                }
                (SetMode::Append | SetMode::Prepend, Some(v)) => {
                    Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(v, now)))
                }
                (SetMode::Cas, _) => Err(SetStatus::NotFound),
                _ => Err(SetStatus::NotStored),
            },
        };
        let (value, flags, exptime) = match plan {
            Ok(p) => p,
            Err(status) => {
                self.finish(g, si, before, None, now);
                return not(status);
            }
        };
        let cas = self.cas_for(req.new_cas);
        let mut e = Entry::new(hash, req.key, value, flags, exptime, cas, now);
        e.stale = stale;
        e.token_sent = token_sent;
        let size = e.value.len();
        let idx = match g.find(hash, req.key) {
            Some(idx) => {
                g.replace(idx, e);
                idx
            }
            None => g.insert(e),
        };
        g.counters.total_items += 1;
        let seq = self.journal_set(g.get(idx));
        self.finish(g, si, before, Some(idx), now);
        SetOutcome { status: SetStatus::Stored, cas, size, seq }
    }

    /// delete/md.
    pub fn delete(&self, key: &[u8], opts: &DeleteOpts) -> (DeleteStatus, u64) {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let res = match self.lookup(&mut g, hash, key, now) {
            Lookup::Missing => (DeleteStatus::NotFound, 0),
            Lookup::Live(idx) => {
                let cas = g.get(idx).cas;
                if opts.compare_cas.is_some_and(|c| c != cas) {
                    (DeleteStatus::Exists, 0)
                } else if opts.invalidate {
                    let new_cas = self.cas_for(opts.new_cas);
                    let e = g.get_mut(idx);
                    if let Some(t) = opts.touch {
                        e.exptime = abs_exptime(t, now);
                    }
                    e.stale = true;
                    // The next reader may win the recache token again.
                    e.token_sent = false;
                    e.cas = new_cas;
                    let seq = self.journal_set(g.get(idx));
                    (DeleteStatus::Deleted, seq)
                } else {
                    let e = g.remove(idx);
                    let seq = self.journal_delete(&e.key);
                    (DeleteStatus::Deleted, seq)
                }
            }
        };
        self.finish(g, si, before, None, now);
        res
    }

    /// Removes the key without statistics (an oversized set drops the old item); returns the journal seq.
    pub fn remove(&self, key: &[u8]) -> u64 {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let seq = match g.find(hash, key) {
            Some(idx) => {
                let e = g.remove(idx);
                self.journal_delete(&e.key)
            }
            None => 0,
        };
        self.finish(g, si, before, None, now);
        seq
    }

    /// incr/decr/ma. incr wraps at 2^64, decr stops at 0; a shorter result is space-padded to the old length
    /// as memcached's in-place update does.
    pub fn arith(&self, key: &[u8], opts: &ArithOpts) -> ArithOutcome {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let mut keep = None;
        let out = match self.lookup(&mut g, hash, key, now) {
            Lookup::Live(idx) => {
                let e = g.get(idx);
                if opts.compare_cas != 0 && opts.compare_cas != e.cas {
                    ArithOutcome::fail(ArithStatus::Exists)
                } else {
                    match parse_u64(&e.value) {
                        None => ArithOutcome::fail(ArithStatus::NonNumeric),
                        Some(n) => {
                            let n = if opts.incr { n.wrapping_add(opts.delta) } else { n.saturating_sub(opts.delta) };
                            let mut buf = itoa::Buffer::new();
                            let digits = buf.format(n).as_bytes();
                            let mut v = Vec::with_capacity(digits.len().max(e.value.len()));
                            v.extend_from_slice(digits);
                            if opts.pad && v.len() < e.value.len() {
                                v.resize(e.value.len(), b' ');
                            }
                            let cas = self.cas_for(opts.new_cas);
                            let old_size = e.size();
                            let e = g.get_mut(idx);
                            e.value = Bytes::from(v);
                            e.cas = cas;
                            e.time = now;
                            e.atime = now;
                            if let Some(t) = opts.touch {
                                e.exptime = abs_exptime(t, now);
                            }
                            let (new_size, exptime) = (e.size(), e.exptime);
                            g.resize(old_size, new_size);
                            g.bump(idx);
                            keep = Some(idx);
                            let seq = self.journal_set(g.get(idx));
                            ArithOutcome { status: ArithStatus::Ok, value: n, cas, exptime, created: false, seq }
                        }
                    }
                }
            }
            Lookup::Missing => match opts.vivify {
                None => ArithOutcome::fail(ArithStatus::NotFound),
                Some((ttl, initial)) => {
                    let cas = self.cas_for(opts.new_cas);
                    let mut buf = itoa::Buffer::new();
                    let value = Bytes::copy_from_slice(buf.format(initial).as_bytes());
                    let e = Entry::new(hash, key, value, 0, abs_exptime(ttl, now), cas, now);
                    let exptime = e.exptime;
                    let idx = g.insert(e);
                    g.counters.total_items += 1;
                    keep = Some(idx);
                    let seq = self.journal_set(g.get(idx));
                    ArithOutcome { status: ArithStatus::Ok, value: initial, cas, exptime, created: true, seq }
                }
            },
        };
        self.finish(g, si, before, keep, now);
        out
    }

    /// flush_all [delay]. Immediate (delay <= 0): everything stored now dies. Delayed: at now+delay, every
    /// item stored before that moment dies (memcached's oldest_live). Returns the journal seq.
    pub fn flush_all(&self, delay: i64) -> u64 {
        let now = self.now();
        let at = if delay > 0 { abs_exptime(delay, now) } else { now };
        let immediate = at <= now;
        let at = if immediate { now } else { at };
        // All shard locks (in index order, so no deadlock with single-shard holders): no mutation sits
        // between taking a CAS and journaling it, so `max_cas` splits the log exactly.
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        let max_cas = if immediate { self.cas.load(Ordering::Relaxed) } else { 0 };
        if let Some(m) = self.mirror.get() {
            m.flushed(at, now);
        }
        let seq = self.journal.record(&Record::FlushAll { at, max_cas });
        self.flush_at.store(at, Ordering::Relaxed);
        if immediate {
            for g in guards.iter_mut() {
                let before = g.counters.bytes;
                g.retain(|e| e.cas <= max_cas);
                self.mem_used.fetch_sub(before - g.counters.bytes, Ordering::Relaxed);
            }
        }
        seq
    }

    /// Applies a replayed record at start-up (not journaled again). Keeps the CAS counter above every CAS
    /// seen and drops items that are already expired or flushed.
    pub fn apply(&self, rec: &Record<'_>) {
        let now = self.now();
        match *rec {
            Record::Set { key, flags, exptime, cas, time, value } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                let before = g.counters.bytes;
                let mut e = Entry::new(hash, key, Bytes::copy_from_slice(value), flags, exptime, cas, time);
                let existing = g.find(hash, key);
                let mut keep = None;
                if self.dead(&e, now) {
                    if let Some(idx) = existing {
                        g.remove(idx);
                    }
                } else {
                    e.atime = time;
                    let idx = match existing {
                        Some(idx) => {
                            g.replace(idx, e);
                            idx
                        }
                        None => g.insert(e),
                    };
                    keep = Some(idx);
                }
                self.finish(g, si, before, keep, now);
            }
            Record::Touch { key, exptime, cas } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                let before = g.counters.bytes;
                if let Some(idx) = g.find(hash, key) {
                    let e = g.get_mut(idx);
                    e.exptime = exptime;
                    e.cas = cas;
                    if e.expired(now) {
                        g.remove(idx);
                    }
                }
                self.finish(g, si, before, None, now);
            }
            Record::Delete { key } => {
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                let before = g.counters.bytes;
                if let Some(idx) = g.find(hash, key) {
                    g.remove(idx);
                }
                self.finish(g, si, before, None, now);
            }
            Record::FlushAll { at, max_cas } => {
                self.flush_at.store(at, Ordering::Relaxed);
                for s in self.shards.iter() {
                    let mut g = s.lock();
                    let before = g.counters.bytes;
                    g.retain(|e| e.cas <= max_cas || (at <= now && e.time < at));
                    self.mem_used.fetch_sub(before - g.counters.bytes, Ordering::Relaxed);
                }
            }
        }
    }

    /// Aggregated item statistics.
    pub fn stats(&self) -> StoreStats {
        let mut s = StoreStats { limit_maxbytes: self.mem_limit, ..StoreStats::default() };
        for sh in self.shards.iter() {
            let c = sh.lock().counters;
            s.curr_items += c.curr_items;
            s.bytes += c.bytes;
            s.total_items += c.total_items;
            s.evictions += c.evictions;
            s.reclaimed += c.reclaimed;
            s.expired_unfetched += c.expired_unfetched;
            s.evicted_unfetched += c.evicted_unfetched;
            s.get_expired += c.get_expired;
            s.get_flushed += c.get_flushed;
        }
        s
    }

    /// `stats reset`: clears the cumulative counters (not curr_items/bytes).
    pub fn reset_stats(&self) {
        for sh in self.shards.iter() {
            let mut g = sh.lock();
            let c = &mut g.counters;
            *c = ShardCounters { curr_items: c.curr_items, bytes: c.bytes, ..ShardCounters::default() };
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
