//! Making room in a shard: where a new item goes, and which memory is recycled for it.
//!
//! In order of preference, a new standard segment comes from: the oldest segment if at most a quarter
//! of it is still live (compacted in place: overwrite and delete churn reuses memory instead of taking
//! more); this shard's segments whose items are all expired or flushed (found from per-segment bounds,
//! without looking at items); the store's spare pool; new memory within the budget; and finally
//! eviction of the oldest segment. Eviction gives a second chance: live items read since their segment
//! was last considered (`ACCESSED`) move to the front of the same block, up to half of it, and the
//! block becomes the new write segment (a segment-granular CLOCK, as Segcache's merge eviction keeps
//! popular items). Every removed item is emitted before its bytes are overwritten, so the kernel cache
//! never serves memory that was reused.

use super::block::Block;
use super::item::ACCESSED;
use super::shard::{align, off_of, Env, Shard};
use super::Removal;

impl Shard {
    /// A place for an item of `len` bytes: (segment id, offset).
    pub(super) fn place(&mut self, len: usize, env: &Env<'_>) -> (u32, usize) {
        if self.is_large(len) {
            let block = self.large_block(len, env);
            return (self.new_seg(block, true), 0);
        }
        if let Some(w) = self.write {
            let s = self.seg(w);
            if s.used + len <= s.block.len() {
                return (w, s.used);
            }
        }
        let w = self.new_write_seg(env);
        self.write = Some(w);
        (w, self.seg(w).used)
    }

    fn new_write_seg(&mut self, env: &Env<'_>) -> u32 {
        if let Some(&front) = self.fifo.front() {
            let s = self.seg(front);
            if !s.large && s.live_bytes <= self.seg_size / 4 {
                self.recycle(front, false, env);
                return front;
            }
        }
        self.reclaim_dead(env);
        if let Some(b) = env.budget.take_spare() {
            return self.new_seg(b, false);
        }
        if env.budget.try_take(self.seg_size as u64) {
            return self.new_seg(Block::new(self.seg_size), false);
        }
        loop {
            let Some(&front) = self.fifo.front() else {
                env.budget.force_take(self.seg_size as u64);
                return self.new_seg(Block::new(self.seg_size), false);
            };
            if !self.seg(front).large {
                self.recycle(front, true, env);
                return front;
            }
            if self.second_chance(front) {
                continue;
            }
            self.shed_oldest(env);
            if env.budget.try_take(self.seg_size as u64) {
                return self.new_seg(Block::new(self.seg_size), false);
            }
        }
    }

    /// A large segment read since it was last considered goes to the young end once, bit cleared.
    fn second_chance(&mut self, id: u32) -> bool {
        let Some(&l) = self.live_in(id).first() else {
            return false;
        };
        if !self.item(l).has(ACCESSED) {
            return false;
        }
        self.item_mut(l).set_bit(ACCESSED, false);
        self.fifo.retain(|&x| x != id);
        self.fifo.push_back(id);
        true
    }

    /// A block of its own for a large item, charged to the budget: dead memory is reclaimed and spare
    /// blocks freed first, then the oldest segments are evicted whole until it fits.
    fn large_block(&mut self, len: usize, env: &Env<'_>) -> Block {
        let block = Block::new(len);
        let n = block.len() as u64;
        if env.budget.try_take(n) {
            return block;
        }
        self.reclaim_dead(env);
        while !env.budget.try_take(n) {
            if env.budget.shed_spare() {
                continue;
            }
            let Some(&front) = self.fifo.front() else {
                env.budget.force_take(n);
                break;
            };
            if self.seg(front).large && self.second_chance(front) {
                continue;
            }
            self.shed_oldest(env);
        }
        block
    }

    /// Compacts segment `id` in place and makes it the write segment at the young end. Dead items go;
    /// with `evict`, so do live ones not read since the last pass and any beyond half the block.
    fn recycle(&mut self, id: u32, evict: bool, env: &Env<'_>) {
        let cap = if evict { self.seg_size / 2 } else { usize::MAX };
        let mut to = 0;
        let (mut max_exp, mut newest) = (0, 0);
        for l in self.live_in(id) {
            let it = self.item(l);
            let len = it.len();
            if let Some(cause) = env.dead_cause(&it) {
                self.drop_item(l, cause, env);
                continue;
            }
            if evict && (!it.has(ACCESSED) || to + len > cap) {
                self.drop_item(l, Removal::Evicted, env);
                continue;
            }
            let e = it.exptime();
            max_exp = max_exp.max(if e == 0 { u64::MAX } else { e });
            newest = newest.max(it.time());
            if evict {
                self.item_mut(l).set_bit(ACCESSED, false);
            }
            if off_of(l) != to {
                self.move_item(l, to);
            }
            to = align(to + len);
        }
        let s = self.seg_mut(id);
        (s.used, s.max_exp, s.newest) = (to, max_exp, newest);
        self.fifo.retain(|&x| x != id);
        self.fifo.push_back(id);
        self.write = Some(id);
    }

    /// Recycles the segments whose items are all expired or flushed: standard blocks to the spare pool,
    /// large ones to the system. Looks at segment bounds only, not at items. Returns how many.
    pub(super) fn reclaim_dead(&mut self, env: &Env<'_>) -> usize {
        let dead: Vec<u32> = self.fifo.iter().copied().filter(|&id| self.seg(id).all_dead(env)).collect();
        for &id in &dead {
            for l in self.live_in(id) {
                let cause = env.dead_cause(&self.item(l)).expect("every item of an all-dead segment is dead");
                self.drop_item(l, cause, env);
            }
            self.release(id, env.budget);
        }
        dead.len()
    }

    /// Evicts this shard's oldest segment whole (dead items reclaimed, live ones evicted) and gives its
    /// block back to the system; false when the shard holds none.
    pub(super) fn shed_oldest(&mut self, env: &Env<'_>) -> bool {
        let Some(&front) = self.fifo.front() else {
            return false;
        };
        for l in self.live_in(front) {
            let cause = env.dead_cause(&self.item(l)).unwrap_or(Removal::Evicted);
            self.drop_item(l, cause, env);
        }
        env.budget.free(self.take_seg(front));
        true
    }
}
