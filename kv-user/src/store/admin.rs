//! What operator commands ask of the store: the memory limit changed online (`cache_memlimit`), item
//! metadata without touching the items (`lru_crawler metadump`) and the per-class counts (`stats items`,
//! `stats slabs`).

use kv_common::item_size;

use super::classes::{class_of, ClassCounts};
use super::item::FETCHED;
use super::Store;

/// An item's metadata as `me` and `lru_crawler metadump` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta<'a> {
    pub key: &'a [u8],
    /// Absolute Unix seconds, 0 = never.
    pub exptime: u64,
    /// Last access (Unix seconds): when it was stored or last read with a bump.
    pub last_access: u64,
    pub cas: u64,
    pub fetched: bool,
    pub flags: u32,
    pub value_len: usize,
    /// memcached's size for it (`ITEM_ntotal`) and its class.
    pub size: u64,
    pub class: u8,
}

impl ItemMeta<'_> {
    pub fn new(key: &[u8], flags: u32, vlen: usize) -> ItemMeta<'_> {
        let size = item_size(key.len(), flags, vlen);
        ItemMeta {
            key,
            exptime: 0,
            last_access: 0,
            cas: 0,
            fetched: false,
            flags,
            value_len: vlen,
            size,
            class: class_of(size),
        }
    }
}

impl Store {
    /// Sets the memory limit (`cache_memlimit`). Shrinking evicts at once, the oldest segment of each
    /// shard in turn, until the store is within the new limit (memcached gets there over time, as its
    /// page mover frees pages).
    pub fn set_memory_limit(&self, bytes: u64) {
        self.budget.set_limit(bytes);
        while self.budget.over() && self.budget.shed_spare() {}
        let now = self.now();
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        while self.budget.over() {
            let mut shed = false;
            for s in self.shards.iter() {
                shed |= s.lock().shed_oldest(&env);
                if !self.budget.over() {
                    return;
                }
            }
            if !shed {
                return;
            }
        }
    }

    /// Live items per class, summed over the shards.
    pub fn class_counts(&self) -> ClassCounts {
        let mut all = ClassCounts::default();
        for s in self.shards.iter() {
            all += &s.lock().classes;
        }
        all
    }

    /// Visits the live (not expired, not flushed) items of shard `shard`, oldest first, under its lock;
    /// a dump goes shard by shard so no lock is held for the whole store. False past the last shard.
    pub fn for_each_meta_in(&self, shard: usize, f: &mut dyn FnMut(&ItemMeta<'_>)) -> bool {
        let Some(s) = self.shards.get(shard) else {
            return false;
        };
        let now = self.now();
        let emit = |_: &[u8], _| {};
        let env = self.env(now, &emit);
        s.lock().for_each(|it| {
            if env.dead_cause(&it).is_none() {
                let m = ItemMeta {
                    exptime: it.exptime(),
                    last_access: it.atime(),
                    cas: it.cas(),
                    fetched: it.has(FETCHED),
                    ..ItemMeta::new(it.key(), it.flags(), it.vlen())
                };
                f(&m);
            }
        });
        true
    }
}
