//! One shard: items packed into segments (see `item`), found through a compact hash index of their
//! places. A segment is a block of `seg_size` bytes that items are appended to; an item larger than half
//! a segment gets a block of its own (a "large" segment), so the rest never fragments. Segments form a
//! FIFO, oldest first; `space` recycles them (eviction, reclaiming expired memory, compaction).
//!
//! An item's place ([`Loc`]: segment id and byte offset) is its identity: the index holds only places
//! and finds keys through them, so each key is stored once. Overwritten and deleted items are marked
//! dead in place and their bytes come back when their segment is recycled (at once if it empties).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use kv_common::item_size;

use super::block::Block;
use super::classes::{class_of, ClassCounts};
use super::item::{item_len, Item, ItemMut, Meta, DEAD, FETCHED};
use super::memory::Budget;
use super::undo::UndoLog;
use super::Removal;

/// Where an item lives: segment id (high 32 bits) and byte offset in it.
pub(crate) type Loc = u64;

pub(super) fn loc(seg: u32, off: usize) -> Loc {
    (u64::from(seg) << 32) | off as u64
}

pub(super) fn seg_of(l: Loc) -> u32 {
    (l >> 32) as u32
}

pub(super) fn off_of(l: Loc) -> usize {
    (l & 0xffff_ffff) as usize
}

/// An indexed item: its place and its bucket in the index, valid until the index next changes.
#[derive(Clone, Copy)]
pub(crate) struct Hit {
    pub loc: Loc,
    slot: usize,
}

/// Items start at multiples of this, so the index can store offsets divided by it.
pub(super) const ALIGN: usize = 4;

pub(super) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// How a [`Loc`] is packed into the index's 32-bit entries: the low bits hold the offset / ALIGN within
/// a standard segment (large segments hold one item, at 0), the high bits the segment id. Four bytes an
/// entry instead of eight is most of what the index costs per item.
#[derive(Clone, Copy)]
struct Packing {
    off_bits: u32,
}

impl Packing {
    fn new(seg_size: usize) -> Packing {
        Packing { off_bits: (seg_size / ALIGN).trailing_zeros() }
    }

    /// Segment ids this packing can name.
    fn max_segs(self) -> usize {
        1 << (32 - self.off_bits)
    }

    fn pack(self, l: Loc) -> u32 {
        (seg_of(l) << self.off_bits) | (off_of(l) / ALIGN) as u32
    }

    fn unpack(self, x: u32) -> Loc {
        let mask = (1u32 << self.off_bits) - 1;
        loc(x >> self.off_bits, (x & mask) as usize * ALIGN)
    }
}

/// Item counters (memcached's `stats` names): kept per shard under its lock, summed by `Store::stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ItemCounters {
    pub curr_items: u64,
    /// Bytes of live items, headers included (`item_len`).
    pub bytes: u64,
    pub total_items: u64,
    pub evictions: u64,
    pub reclaimed: u64,
    pub expired_unfetched: u64,
    pub evicted_unfetched: u64,
    pub get_expired: u64,
    pub get_flushed: u64,
    /// Segments held (standard and large) and the bytes of their blocks.
    pub segments: u64,
    pub segment_bytes: u64,
    /// Live items moved to make room (second chances and compaction).
    pub moves: u64,
}

impl std::ops::AddAssign for ItemCounters {
    fn add_assign(&mut self, o: ItemCounters) {
        let ItemCounters {
            curr_items,
            bytes,
            total_items,
            evictions,
            reclaimed,
            expired_unfetched,
            evicted_unfetched,
            get_expired,
            get_flushed,
            segments,
            segment_bytes,
            moves,
        } = o;
        self.curr_items += curr_items;
        self.bytes += bytes;
        self.total_items += total_items;
        self.evictions += evictions;
        self.reclaimed += reclaimed;
        self.expired_unfetched += expired_unfetched;
        self.evicted_unfetched += evicted_unfetched;
        self.get_expired += get_expired;
        self.get_flushed += get_flushed;
        self.segments += segments;
        self.segment_bytes += segment_bytes;
        self.moves += moves;
    }
}

/// What removing items needs from the store: the memory budget, the time and flush moment that decide
/// which items are dead, and the way out for removals (the store's change stream).
pub(crate) struct Env<'a> {
    pub budget: &'a Budget,
    pub now: u64,
    /// flush_all moment (0 = none): once reached, items stored before it are dead.
    pub flush_at: u64,
    pub emit: &'a dyn Fn(&[u8], Removal),
}

impl Env<'_> {
    /// Why a stored item is dead already, if it is.
    pub fn dead_cause(&self, it: &Item<'_>) -> Option<Removal> {
        if it.expired(self.now) {
            Some(Removal::Expired)
        } else if self.flush_at != 0 && self.now >= self.flush_at && it.time() < self.flush_at {
            Some(Removal::Flushed)
        } else {
            None
        }
    }
}

pub(crate) struct Seg {
    pub block: Block,
    /// Bytes appended so far.
    pub used: usize,
    pub live: u32,
    pub live_bytes: usize,
    /// Latest exptime of any item written here (u64::MAX once one never expires).
    pub max_exp: u64,
    /// Latest store time of any item written here.
    pub newest: u64,
    pub large: bool,
}

impl Seg {
    fn new(block: Block, large: bool) -> Seg {
        Seg { block, used: 0, live: 0, live_bytes: 0, max_exp: 0, newest: 0, large }
    }

    /// Every item in it is dead by expiry or flush (nothing needs to be looked at one by one).
    pub fn all_dead(&self, env: &Env<'_>) -> bool {
        let expired = self.max_exp != u64::MAX && self.max_exp != 0 && self.max_exp <= env.now;
        let flushed = env.flush_at != 0 && env.now >= env.flush_at && self.newest < env.flush_at;
        self.live > 0 && (expired || flushed)
    }

    /// Offsets of the items written here, in order (dead ones included).
    pub fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let mut off = 0;
        std::iter::from_fn(move || {
            (off < self.used).then(|| {
                let at = off;
                off = align(at + Item::at(self.block.bytes(), at).len());
                at
            })
        })
    }
}

pub(crate) struct Shard {
    /// Its place in the store's shard array.
    pub id: usize,
    index: HashTable<u32>,
    pack: Packing,
    /// What the index's allocation was last charged to the budget.
    index_bytes: usize,
    pub(super) segs: Vec<Option<Seg>>,
    free_ids: Vec<u32>,
    /// Segment ids, oldest first.
    pub(super) fifo: VecDeque<u32>,
    /// The standard segment new items are appended to.
    pub(super) write: Option<u32>,
    pub(super) seg_size: usize,
    hasher: DefaultHashBuilder,
    pub counters: ItemCounters,
    /// Live items per memcached size class (operator stats).
    pub classes: ClassCounts,
    /// Before-images of writes whose records are not durable yet (see `undo`).
    pub(super) undo: UndoLog,
}

impl Shard {
    pub fn new(id: usize, seg_size: usize, hasher: DefaultHashBuilder) -> Shard {
        Shard {
            id,
            index: HashTable::new(),
            pack: Packing::new(seg_size),
            index_bytes: 0,
            segs: Vec::new(),
            free_ids: Vec::new(),
            fifo: VecDeque::new(),
            write: None,
            seg_size,
            hasher,
            counters: ItemCounters::default(),
            classes: ClassCounts::default(),
            undo: UndoLog::default(),
        }
    }

    pub(super) fn seg(&self, id: u32) -> &Seg {
        self.segs[id as usize].as_ref().expect("segment in use")
    }

    pub(super) fn seg_mut(&mut self, id: u32) -> &mut Seg {
        self.segs[id as usize].as_mut().expect("segment in use")
    }

    pub fn find(&self, hash: u64, key: &[u8]) -> Option<Loc> {
        self.find_hit(hash, key).map(|h| h.loc)
    }

    /// [`Shard::find`] with the item's index bucket, so removing it takes no second probe.
    pub fn find_hit(&self, hash: u64, key: &[u8]) -> Option<Hit> {
        let p = self.pack;
        let slot = self.index.find_bucket_index(hash, |&x| self.item(p.unpack(x)).key() == key)?;
        let &x = self.index.get_bucket(slot).expect("bucket just found");
        Some(Hit { loc: p.unpack(x), slot })
    }

    pub fn item(&self, l: Loc) -> Item<'_> {
        Item::at(self.seg(seg_of(l)).block.bytes(), off_of(l))
    }

    pub fn item_mut(&mut self, l: Loc) -> ItemMut<'_> {
        ItemMut::at(self.seg_mut(seg_of(l)).block.bytes_mut(), off_of(l))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Records that the item at `l` may now live until `exptime` (after a touch).
    pub fn note_exptime(&mut self, l: Loc, exptime: u64) {
        let s = self.seg_mut(seg_of(l));
        s.max_exp = s.max_exp.max(if exptime == 0 { u64::MAX } else { exptime });
    }

    /// Records a store time written in place (incr/decr).
    pub fn note_time(&mut self, l: Loc, time: u64) {
        let s = self.seg_mut(seg_of(l));
        s.newest = s.newest.max(time);
    }

    /// Appends a new item (the caller removed any old one) and indexes it; may recycle memory first.
    pub fn insert(&mut self, hash: u64, key: &[u8], value: &[&[u8]], meta: &Meta, env: &Env<'_>) -> Loc {
        let vlen: usize = value.iter().map(|v| v.len()).sum();
        let len = item_len(key.len(), vlen);
        let (id, off) = self.place(len, env);
        let s = self.seg_mut(id);
        ItemMut::write(s.block.bytes_mut(), off, key, value, meta);
        s.used = align(off + len);
        s.live += 1;
        s.live_bytes += len;
        s.max_exp = s.max_exp.max(if meta.exptime == 0 { u64::MAX } else { meta.exptime });
        s.newest = s.newest.max(meta.time);
        let l = loc(id, off);
        let (segs, hasher, p) = (&self.segs, &self.hasher, self.pack);
        self.index.insert_unique(hash, p.pack(l), |&x| {
            let l = p.unpack(x);
            let s = segs[seg_of(l) as usize].as_ref().expect("indexed segment");
            hasher.hash_one(Item::at(s.block.bytes(), off_of(l)).key())
        });
        let now = self.index.allocation_size();
        if now != self.index_bytes {
            env.budget.adjust(self.index_bytes, now);
            self.index_bytes = now;
        }
        self.counters.curr_items += 1;
        self.counters.bytes += len as u64;
        self.classes.note(class_of(item_size(key.len(), meta.flags, vlen)), len, true);
        l
    }

    /// Removes the item at `l` (its key hashing to `hash`) from the index and marks it dead; a segment
    /// left empty is recycled.
    pub fn remove(&mut self, l: Loc, hash: u64, budget: &Budget) {
        let id = self.unindex(l, hash);
        self.release_if_empty(id, budget);
    }

    /// [`Shard::remove`] of an item found by [`Shard::find_hit`], the index unchanged since.
    pub fn remove_hit(&mut self, h: Hit, budget: &Budget) {
        if let Ok(e) = self.index.get_bucket_entry(h.slot) {
            debug_assert_eq!(self.pack.unpack(*e.get()), h.loc, "the index changed since the hit");
            e.remove();
        }
        let id = self.mark_dead(h.loc);
        self.release_if_empty(id, budget);
    }

    fn release_if_empty(&mut self, id: u32, budget: &Budget) {
        if self.seg(id).live == 0 && self.write != Some(id) {
            self.release(id, budget);
        }
    }

    /// Removes the item at `l` from the index and marks it dead; returns its segment (kept even if empty).
    pub(super) fn unindex(&mut self, l: Loc, hash: u64) -> u32 {
        let packed = self.pack.pack(l);
        if let Ok(e) = self.index.find_entry(hash, |&x| x == packed) {
            e.remove();
        }
        self.mark_dead(l)
    }

    /// Marks the item at `l`, already out of the index, dead; returns its segment.
    fn mark_dead(&mut self, l: Loc) -> u32 {
        let it = self.item(l);
        let (len, class) = (it.len(), it.class());
        self.classes.note(class, len, false);
        self.item_mut(l).set_bit(DEAD, true);
        self.counters.curr_items -= 1;
        self.counters.bytes -= len as u64;
        let id = seg_of(l);
        let s = self.seg_mut(id);
        s.live -= 1;
        s.live_bytes -= len;
        id
    }

    /// Counts the removal of a stored item of `class` found dead or evicted (the caller emits it),
    /// store-wide and in its class.
    pub(super) fn count_removal(&mut self, cause: Removal, fetched: bool, class: u8) {
        let (c, k, i) = (&mut self.counters, &mut self.classes, usize::from(class));
        let unfetched = u64::from(!fetched);
        match cause {
            Removal::Evicted => {
                c.evictions += 1;
                c.evicted_unfetched += unfetched;
                k.evicted[i] += 1;
                k.evicted_unfetched[i] += unfetched;
            }
            Removal::Expired => {
                c.reclaimed += 1;
                c.expired_unfetched += unfetched;
                k.reclaimed[i] += 1;
                k.expired_unfetched[i] += unfetched;
            }
            Removal::Flushed => {
                c.reclaimed += 1;
                k.reclaimed[i] += 1;
            }
            Removal::Deleted => {}
        }
    }

    /// Removes the item at `l` for `cause` (eviction or reclaim): emitted, counted, unindexed; its
    /// segment stays, even if empty, for the caller to recycle.
    pub(super) fn drop_item(&mut self, l: Loc, cause: Removal, env: &Env<'_>) {
        let it = self.item(l);
        let (fetched, hash, class) = (it.has(FETCHED), self.hasher.hash_one(it.key()), it.class());
        (env.emit)(it.key(), cause);
        self.count_removal(cause, fetched, class);
        self.unindex(l, hash);
    }

    /// Moves a live item within its segment to `to` (< its offset) and points the index at it.
    pub(super) fn move_item(&mut self, from: Loc, to: usize) {
        let it = self.item(from);
        let (hash, len) = (self.hasher.hash_one(it.key()), it.len());
        let id = seg_of(from);
        self.seg_mut(id).block.bytes_mut().copy_within(off_of(from)..off_of(from) + len, to);
        let (p, old) = (self.pack, self.pack.pack(from));
        if let Some(x) = self.index.find_mut(hash, |&x| x == old) {
            *x = p.pack(loc(id, to));
        }
        self.counters.moves += 1;
    }

    /// Live places in segment `id`, in order.
    pub(super) fn live_in(&self, id: u32) -> Vec<Loc> {
        let s = self.seg(id);
        s.offsets().filter(|&o| !Item::at(s.block.bytes(), o).has(DEAD)).map(|o| loc(id, o)).collect()
    }

    /// A new id for a segment of `block`, at the young end of the FIFO. The store sizes shards so the
    /// index can always name it (see `Store::new`).
    pub(super) fn new_seg(&mut self, block: Block, large: bool) -> u32 {
        assert!(!self.free_ids.is_empty() || self.segs.len() < self.pack.max_segs(), "segment ids exhausted");
        let seg = Seg::new(block, large);
        self.counters.segments += 1;
        self.counters.segment_bytes += seg.block.len() as u64;
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.segs[id as usize] = Some(seg);
                id
            }
            None => {
                self.segs.push(Some(seg));
                (self.segs.len() - 1) as u32
            }
        };
        self.fifo.push_back(id);
        id
    }

    /// Takes segment `id` out of the shard (it must hold no live item) and returns its block.
    pub(super) fn take_seg(&mut self, id: u32) -> Block {
        let s = self.segs[id as usize].take().expect("segment in use");
        debug_assert_eq!(s.live, 0);
        if let Some(i) = self.fifo.iter().position(|&x| x == id) {
            self.fifo.remove(i);
        }
        if self.write == Some(id) {
            self.write = None;
        }
        self.free_ids.push(id);
        self.counters.segments -= 1;
        self.counters.segment_bytes -= s.block.len() as u64;
        s.block
    }

    /// An emptied segment's memory goes back: a standard block to the store's spare pool for reuse, a
    /// large one to the system.
    pub(super) fn release(&mut self, id: u32, budget: &Budget) {
        let large = self.seg(id).large;
        let block = self.take_seg(id);
        if large {
            budget.free(block);
        } else {
            budget.put_spare(block);
        }
    }

    /// Every live item, oldest first (segment FIFO order, then write order within a segment).
    pub fn for_each(&self, mut f: impl FnMut(Item<'_>)) {
        for &id in &self.fifo {
            for l in self.live_in(id) {
                f(self.item(l));
            }
        }
    }

    /// Removes every live item for which `dead` says so (flush_all); returns how many.
    pub fn retain(&mut self, budget: &Budget, mut dead: impl FnMut(&Item<'_>) -> bool) -> u64 {
        let mut n = 0;
        let ids: Vec<u32> = self.fifo.iter().copied().collect();
        for id in ids {
            for l in self.live_in(id) {
                if dead(&self.item(l)) {
                    let hash = self.hasher.hash_one(self.item(l).key());
                    self.remove(l, hash, budget);
                    n += 1;
                }
            }
        }
        n
    }

    /// Whether an item of `len` bytes gets a block of its own.
    pub(super) fn is_large(&self, len: usize) -> bool {
        len > self.seg_size / 2
    }
}
