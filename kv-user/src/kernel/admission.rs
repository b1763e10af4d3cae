//! Which items the kernel cache takes: items read often enough in user space, offered again now and then
//! in case their slot went to another key, and none while a delayed flush_all is pending.
//!
//! The count lives in the word the store keeps with each item for its observer (`Change::ReadHit`'s
//! `mark`, zero for every newly stored item), so counting costs no lookup of its own.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Set in the mark once the cache took the item on its last offer.
const CACHED: u32 = 1 << 31;
/// An item the cache holds is offered again every this many hits (its slot may have gone to another key).
const REOFFER_EVERY: u32 = 64;

pub struct Admission {
    /// User-space hits before an item is offered.
    admit_hits: u32,
    /// No admissions before this Unix time (store clock): a delayed flush_all is pending.
    admit_after: AtomicU64,
}

impl Admission {
    pub fn new(admit_hits: u32) -> Self {
        Admission { admit_hits: admit_hits.max(1), admit_after: AtomicU64::new(0) }
    }

    /// Counts a read hit at the store's time `now` in the item's `mark` and, when the item should be
    /// offered, calls `offer` (which answers whether the cache holds it now).
    pub fn on_hit(&self, mark: &Cell<u32>, now: u64, offer: impl FnOnce() -> bool) {
        let m = mark.get();
        let hits = (m & !CACHED).saturating_add(1).min(!CACHED);
        let cached = m & CACHED != 0;
        let mut next = hits | (m & CACHED);
        if !cached || hits.is_multiple_of(REOFFER_EVERY) {
            let taken = hits >= self.admit_hits && now >= self.admit_after.load(Relaxed) && offer();
            next = hits | if taken { CACHED } else { 0 };
        }
        mark.set(next);
    }

    /// A flush_all at `at` issued at `now`: a delayed one stops admissions until it takes effect, so that
    /// nothing stored before it is cached after it.
    pub fn flushed(&self, at: u64, now: u64) {
        if at > now {
            self.admit_after.fetch_max(at, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hits offered to a cache that answers `admit`: every hit until it takes the item, then every 64th.
    #[test]
    fn read_hit_counting() {
        let a = Admission::new(1);
        let mark = Cell::new(0);
        let admit = Cell::new(false);
        let offered = Cell::new(Vec::new());
        let hits = |n: u32| {
            for _ in 0..n {
                let h = (mark.get() & !CACHED) + 1;
                a.on_hit(&mark, 0, || {
                    let mut v = offered.take();
                    v.push(h);
                    offered.set(v);
                    admit.get()
                });
            }
            offered.take()
        };
        // Not admitted: offered on every hit, with the running count.
        assert_eq!(hits(3), vec![1, 2, 3]);
        // Admitted at hit 4: next offered at 64 and 128 only.
        admit.set(true);
        assert_eq!(hits(127 - 3), vec![4, 64]);
        // Re-offered at 128 but refused (the kernel dropped it): offered on each hit again until taken.
        admit.set(false);
        assert_eq!(hits(2), vec![128, 129]);
        admit.set(true);
        assert_eq!(hits(192 - 129), vec![130, 192]);
        // A new item (the store zeroes its mark) counts from 1 again.
        mark.set(0);
        assert_eq!(hits(1), vec![1]);
    }

    #[test]
    fn admit_hits_and_delayed_flush() {
        let a = Admission::new(3);
        let mark = Cell::new(0);
        let offers = Cell::new(0);
        let hit = |now| {
            a.on_hit(&mark, now, || {
                offers.set(offers.get() + 1);
                true
            })
        };
        hit(100);
        hit(100);
        assert_eq!(offers.get(), 0, "below --kcache-admit-hits");
        a.flushed(200, 100);
        hit(150);
        assert_eq!(offers.get(), 0, "a delayed flush is pending");
        a.flushed(100, 150);
        hit(199);
        assert_eq!(offers.get(), 0, "an immediate flush does not lift a pending delayed one");
        hit(200);
        assert_eq!(offers.get(), 1);
        hit(201);
        assert_eq!(offers.get(), 1, "held: not offered again until the 64th hit");
    }
}
