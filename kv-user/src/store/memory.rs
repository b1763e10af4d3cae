//! The store's memory budget (`-m`): every block of item memory and every shard's index allocation is
//! charged here, so what the process holds for items is what `limit_maxbytes` says, not a per-item
//! estimate. Emptied standard blocks wait in a spare pool for reuse by any shard before new memory is
//! taken.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use super::block::Block;

pub(crate) struct Budget {
    /// Changed online by `cache_memlimit`.
    limit: AtomicU64,
    used: AtomicU64,
    /// Emptied standard blocks, still charged, waiting for any shard.
    spare: Mutex<Vec<Block>>,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { limit: AtomicU64::new(limit), used: AtomicU64::new(0), spare: Mutex::new(Vec::new()) }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// A new limit; the caller evicts down to it.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Relaxed);
    }

    /// Bytes charged: blocks in segments and in the spare pool, and the indexes.
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    pub fn over(&self) -> bool {
        self.used() > self.limit()
    }

    /// Charges `n` bytes if that stays within the limit.
    pub fn try_take(&self, n: u64) -> bool {
        self.used.fetch_update(Relaxed, Relaxed, |u| (u + n <= self.limit()).then_some(u + n)).is_ok()
    }

    /// Charges `n` bytes even past the limit (nothing was left to evict in this shard; the store then
    /// evicts elsewhere until it is back under).
    pub fn force_take(&self, n: u64) {
        self.used.fetch_add(n, Relaxed);
    }

    /// Re-charges an allocation that changed size from `old` to `new` bytes.
    pub fn adjust(&self, old: usize, new: usize) {
        if new >= old {
            self.used.fetch_add((new - old) as u64, Relaxed);
        } else {
            self.used.fetch_sub((old - new) as u64, Relaxed);
        }
    }

    /// Gives a block back to the system.
    pub fn free(&self, block: Block) {
        self.used.fetch_sub(block.len() as u64, Relaxed);
        drop(block);
    }

    /// Keeps an emptied standard block for reuse, unless the budget is over (then it is freed).
    pub fn put_spare(&self, block: Block) {
        if self.over() {
            self.free(block);
        } else {
            self.spare.lock().push(block);
        }
    }

    pub fn take_spare(&self) -> Option<Block> {
        self.spare.lock().pop()
    }

    /// Frees one spare block; false if there was none.
    pub fn shed_spare(&self) -> bool {
        match self.take_spare() {
            Some(b) => {
                self.free(b);
                true
            }
            None => false,
        }
    }

    /// Spare blocks held (for `stats slabs`).
    pub fn spare_count(&self) -> usize {
        self.spare.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stay_within_the_limit_unless_forced() {
        let b = Budget::new(10_000);
        assert!(b.try_take(6000));
        assert!(!b.try_take(6000));
        b.force_take(6000);
        assert!(b.over());
        b.put_spare(Block::new(4000));
        assert_eq!(b.spare_count(), 0, "over budget: freed, not kept");
        b.adjust(6000, 0);
        b.put_spare(Block::new(100));
        assert_eq!(b.spare_count(), 1);
        assert!(b.shed_spare());
        assert_eq!(b.used(), 6000 - 4000 - 100);
    }
}
