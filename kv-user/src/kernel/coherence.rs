//! Keeps the kernel cache (the XDP program's `CACHE` map) coherent with the store.
//!
//! The store hands every change to this [`Observer`] under the key's shard lock, so for each key the kernel map changes in
//! the store's order, and every write has updated or removed the kernel entry before its reply is sent.
//! Why a client can then never read, through XDP, a value older than an acknowledged write:
//!
//! 1. A write to key K (any command that changes or removes K) updates the store and, still under K's
//!    shard lock, rewrites K's kernel slot if it holds K, or makes it unreadable. The reply is sent only
//!    after those `bpf(2)` calls returned.
//! 2. The kernel cache is an array of slots (never freed or recycled, unlike hash map elements) with a
//!    sequence number each: a writer makes it odd, rewrites the slot, makes it even. XDP copies a slot and
//!    uses the copy only if it read the same even number before and after, so it never serves a mix of two
//!    states. A copy that could still be the old state was taken before the writer's first syscall
//!    returned, hence before the acknowledgement left: that read was concurrent with the write.
//! 3. Entries are only added on a user-space read hit, under the same shard lock, with the item's state as
//!    of that moment: a read cannot race a write into admitting a value the write already replaced. Keys of
//!    other shards that share K's slot can only replace it with themselves (XDP checks the key it copied).
//! 4. flush_all moves every entry to a dead generation with one array-map store before replying; a delayed
//!    flush also stops admissions until its deadline, so nothing stored before it survives it in the kernel.
//! 5. Expiry is enforced in the kernel by a monotonic deadline computed so that it falls no later than the
//!    moment the store considers the item expired; evictions and lazy reclaims remove the entry too.
//!
//! (2) relies on x86-64's store and load ordering (stores become visible in program order across the
//! writer's syscalls; the reader's loads are not reordered): the machines this runs on.
//!
//! If a kernel update ever fails, the whole kernel cache is flushed (one array write), which is always safe.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use kv_common::CACHE_ENTRY_BUF;

use super::admission::Admission;
use super::entry::{cache_entry, deadline_ns};
use super::slots::KernelCache;
use crate::record::Record;
use crate::store::{Change, Observer};

/// Counters surfaced in `stats`.
#[derive(Default)]
pub struct SyncStats {
    pub admissions: AtomicU64,
    pub updates: AtomicU64,
    pub invalidations: AtomicU64,
    pub flushes: AtomicU64,
    pub errors: AtomicU64,
}

pub struct KernelSync {
    cache: Arc<KernelCache>,
    /// Largest value the kernel serves; larger ones stay in user space.
    value_max: usize,
    admission: Admission,
    pub stats: SyncStats,
}

impl KernelSync {
    pub fn new(cache: Arc<KernelCache>, value_max: usize, admit_hits: u32) -> Self {
        KernelSync {
            cache,
            value_max: value_max.min(CACHE_ENTRY_BUF),
            admission: Admission::new(admit_hits),
            stats: SyncStats::default(),
        }
    }

    /// The kernel entry for an item's state, if the kernel should serve it.
    fn entry_for(&self, rec: &Record<'_>) -> Option<kv_common::CacheEntry> {
        let Record::Set { key, flags, exptime, cas, value, .. } = *rec else { return None };
        if value.len() > self.value_max {
            return None;
        }
        let expire_ns = match exptime {
            0 => 0,
            t => deadline_ns(t)?,
        };
        cache_entry(key, flags, cas, value, expire_ns, self.cache.gen())
    }

    /// Something went wrong with a single entry: dropping everything is always coherent.
    fn fail_safe(&self, what: &str, e: std::io::Error) {
        self.stats.errors.fetch_add(1, Relaxed);
        log::error!("kernel cache {what} failed ({e}); flushing the kernel cache");
        self.flush_or_abort();
    }

    fn flush_or_abort(&self) {
        if let Err(e) = self.cache.flush() {
            // Without the generation bump the kernel could serve stale data: stop the process rather.
            log::error!("kernel cache flush failed ({e}); aborting to stay coherent");
            std::process::abort();
        }
    }

    /// The item has a new state: replace a cached copy, never add one.
    fn changed(&self, item: &Record<'_>) {
        let Record::Set { key, .. } = *item else { return };
        match self.entry_for(item) {
            Some(e) => match self.cache.replace(key, &e) {
                Ok(true) => {
                    self.stats.updates.fetch_add(1, Relaxed);
                }
                Ok(false) => {}
                Err(err) => self.fail_safe("update", err),
            },
            None => self.removed(key),
        }
    }

    fn removed(&self, key: &[u8]) {
        match self.cache.remove(key) {
            Ok(true) => {
                self.stats.invalidations.fetch_add(1, Relaxed);
            }
            Ok(false) => {}
            Err(e) => self.fail_safe("delete", e),
        }
    }

    /// Offers a hot item (admission decided to): true if the cache holds it now.
    fn admit(&self, item: &Record<'_>) -> bool {
        let Record::Set { key, .. } = *item else { return false };
        // Cached already (and kept current by `changed`): nothing to write.
        if self.cache.contains(key) {
            return true;
        }
        let Some(e) = self.entry_for(item) else { return false };
        match self.cache.insert(key, &e) {
            Ok(()) => {
                self.stats.admissions.fetch_add(1, Relaxed);
                true
            }
            Err(err) => {
                // Nothing was added: no coherence problem, just no kernel hit for this key.
                self.stats.errors.fetch_add(1, Relaxed);
                log::debug!("kernel cache admission failed: {err}");
                false
            }
        }
    }
}

impl Observer for KernelSync {
    fn observe(&self, change: &Change<'_>) {
        match *change {
            Change::Stored(ref item) | Change::Touched(ref item) => self.changed(item),
            Change::Removed { key, .. } => self.removed(key),
            Change::Flushed { at, now, .. } => {
                self.admission.flushed(at, now);
                self.stats.flushes.fetch_add(1, Relaxed);
                self.flush_or_abort();
            }
            Change::ReadHit { ref item, now, mark } => self.admission.on_hit(mark, now, || self.admit(item)),
        }
    }
}
