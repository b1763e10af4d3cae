//! Keeps the kernel cache (the XDP program's `CACHE` map) coherent with the store.
//!
//! The store calls this [`Mirror`] under the key's shard lock, so for each key the kernel map changes in
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

use kv_common::CACHE_ENTRY_BUF;

use crate::bpf::{cache_entry, KernelCache, KernelCounters};
use crate::exec::ExtraStats;
use crate::record::Record;
use crate::store::Mirror;

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
    cache: std::sync::Arc<KernelCache>,
    /// Largest value the kernel serves; larger ones stay in user space.
    value_max: usize,
    /// User-space hits before an item is admitted.
    admit_hits: u32,
    /// No admissions before this Unix time (a delayed flush_all is pending).
    admit_after: AtomicU64,
    pub stats: SyncStats,
}

impl KernelSync {
    pub fn new(cache: std::sync::Arc<KernelCache>, value_max: usize, admit_hits: u32) -> Self {
        KernelSync {
            cache,
            value_max: value_max.min(CACHE_ENTRY_BUF),
            admit_hits: admit_hits.max(1),
            admit_after: AtomicU64::new(0),
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
        if let Err(e) = self.cache.flush() {
            // Without the generation bump the kernel could serve stale data: stop the process rather.
            log::error!("kernel cache flush failed ({e}); aborting to stay coherent");
            std::process::abort();
        }
    }

    fn remove_key(&self, key: &[u8]) {
        match self.cache.remove(key) {
            Ok(true) => {
                self.stats.invalidations.fetch_add(1, Relaxed);
            }
            Ok(false) => {}
            Err(e) => self.fail_safe("delete", e),
        }
    }
}

impl Mirror for KernelSync {
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
            None => self.remove_key(key),
        }
    }

    fn removed(&self, key: &[u8]) {
        self.remove_key(key);
    }

    fn flushed(&self, at: u64, now: u64) {
        if at > now {
            self.admit_after.fetch_max(at, Relaxed);
        }
        self.stats.flushes.fetch_add(1, Relaxed);
        if let Err(e) = self.cache.flush() {
            log::error!("kernel cache flush failed ({e}); aborting to stay coherent");
            std::process::abort();
        }
    }

    fn read_hit(&self, item: &Record<'_>, hits: u32) -> bool {
        if hits < self.admit_hits || unix_now_ns() / 1_000_000_000 < self.admit_after.load(Relaxed) {
            return false;
        }
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

/// `stats` lines of the kernel path: the XDP counters and the synchronisation counters.
pub struct KernelStats {
    pub counters: KernelCounters,
    pub sync: std::sync::Arc<KernelSync>,
}

impl ExtraStats for KernelStats {
    fn stats(&self, add: &mut dyn FnMut(&str, u64)) {
        for (c, name) in kv_common::COUNTERS {
            add(name, self.counters.get(c));
        }
        let s = &self.sync.stats;
        add("kcache_admissions", s.admissions.load(Relaxed));
        add("kcache_updates", s.updates.load(Relaxed));
        add("kcache_invalidations", s.invalidations.load(Relaxed));
        add("kcache_flushes", s.flushes.load(Relaxed));
        add("kcache_errors", s.errors.load(Relaxed));
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Safety margin between the kernel deadline and the store's: the two clocks are read a few instructions
/// apart, and the kernel must stop serving first.
const DEADLINE_MARGIN_NS: u64 = 5_000_000;

/// The monotonic instant at which Unix time reaches `exptime` (when the store starts calling the item
/// expired), minus a margin. None if that is already past.
fn deadline_ns(exptime: u64) -> Option<u64> {
    let mono = monotonic_ns();
    let left = exptime.checked_mul(1_000_000_000)?.checked_sub(unix_now_ns())?;
    let left = left.checked_sub(DEADLINE_MARGIN_NS)?;
    Some(mono + left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_fall_before_the_store_expiry() {
        let now_s = unix_now_ns() / 1_000_000_000;
        assert_eq!(deadline_ns(now_s), None, "already expired");
        assert_eq!(deadline_ns(1), None);
        let d = deadline_ns(now_s + 10).unwrap();
        let mono = monotonic_ns();
        // Between 9 and 10 seconds from now, never past the store's expiry.
        assert!(d > mono + 8_900_000_000 && d <= mono + 10_000_000_000, "{}", d - mono);
    }
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod fuzz;
