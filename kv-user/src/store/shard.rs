//! One shard: a hash table of slot indices into a slab of entries, threaded on an intrusive LRU list.
//! Indices instead of pointers keep it safe; the table stores only `u32`s and finds keys through the slab,
//! so each key is kept once.

use bytes::Bytes;
use hashbrown::HashTable;

pub(crate) const NIL: u32 = u32::MAX;

/// Bytes charged against the memory limit per item on top of key and value, close to memcached's item
/// header + CAS + CRLF.
pub const ITEM_OVERHEAD: usize = 56;

pub(crate) struct Entry {
    pub hash: u64,
    pub key: Box<[u8]>,
    pub value: Bytes,
    pub flags: u32,
    /// Absolute Unix seconds, 0 = never.
    pub exptime: u64,
    pub cas: u64,
    /// When it was stored (flush_all compares against this).
    pub time: u64,
    /// Last access.
    pub atime: u64,
    pub fetched: bool,
    /// Marked stale by `md I` (or a stale `ms I`).
    pub stale: bool,
    /// A client already got the recache "win" token (mg W/Z).
    pub token_sent: bool,
    /// The observer's word for this item (see `Change::ReadHit`); zero for a new item.
    pub mark: std::cell::Cell<u32>,
    prev: u32,
    next: u32,
}

impl Entry {
    /// The item's whole state as a journal record.
    pub fn as_record(&self) -> crate::record::Record<'_> {
        crate::record::Record::Set {
            key: &self.key,
            flags: self.flags,
            exptime: self.exptime,
            cas: self.cas,
            time: self.time,
            value: &self.value,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(hash: u64, key: &[u8], value: Bytes, flags: u32, exptime: u64, cas: u64, now: u64) -> Entry {
        Entry {
            hash,
            key: key.into(),
            value,
            flags,
            exptime,
            cas,
            time: now,
            atime: now,
            fetched: false,
            stale: false,
            token_sent: false,
            mark: std::cell::Cell::new(0),
            prev: NIL,
            next: NIL,
        }
    }

    pub fn size(&self) -> u64 {
        charge(self.key.len(), self.value.len())
    }

    pub fn expired(&self, now: u64) -> bool {
        self.exptime != 0 && self.exptime <= now
    }
}

/// What an item counts against the memory limit (`-m`); the item size limit (`-I`) is checked with
/// memcached's formula, kv_common::item_size.
pub fn charge(klen: usize, vlen: usize) -> u64 {
    (ITEM_OVERHEAD + klen + vlen) as u64
}

/// Item counters (memcached's `stats` names): kept per shard under its lock, summed by `Store::stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ItemCounters {
    pub curr_items: u64,
    pub bytes: u64,
    pub total_items: u64,
    pub evictions: u64,
    pub reclaimed: u64,
    pub expired_unfetched: u64,
    pub evicted_unfetched: u64,
    pub get_expired: u64,
    pub get_flushed: u64,
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
    }
}

pub(crate) struct Shard {
    table: HashTable<u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
    pub counters: ItemCounters,
}

impl Shard {
    pub fn new() -> Shard {
        Shard {
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            counters: ItemCounters::default(),
        }
    }

    pub fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.table.find(hash, |&i| slots[i as usize].as_ref().is_some_and(|e| &*e.key == key)).copied()
    }

    pub fn get(&self, idx: u32) -> &Entry {
        // Indices handed out by `find`/`insert` always point at occupied slots while the lock is held.
        self.slots[idx as usize].as_ref().expect("occupied slot")
    }

    pub fn get_mut(&mut self, idx: u32) -> &mut Entry {
        self.slots[idx as usize].as_mut().expect("occupied slot")
    }

    pub fn tail(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Inserts a new key (the caller checked it is absent) at the LRU head.
    pub fn insert(&mut self, entry: Entry) -> u32 {
        let hash = entry.hash;
        let size = entry.size();
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.table.insert_unique(hash, idx, |&i| slots[i as usize].as_ref().map_or(0, |e| e.hash));
        self.link_front(idx);
        self.counters.curr_items += 1;
        self.counters.bytes += size;
        idx
    }

    /// Replaces the value/metadata of an existing slot in place; returns the old size.
    pub fn replace(&mut self, idx: u32, mut entry: Entry) -> u64 {
        let slot = self.slots[idx as usize].as_mut().expect("occupied slot");
        let old = slot.size();
        entry.prev = slot.prev;
        entry.next = slot.next;
        *slot = entry;
        let new = slot.size();
        self.counters.bytes = self.counters.bytes - old + new;
        self.bump(idx);
        old
    }

    /// Called after changing an entry's value length in place.
    pub fn resize(&mut self, old: u64, new: u64) {
        self.counters.bytes = self.counters.bytes - old + new;
    }

    pub fn remove(&mut self, idx: u32) -> Entry {
        self.unlink(idx);
        let entry = self.slots[idx as usize].take().expect("occupied slot");
        if let Ok(e) = self.table.find_entry(entry.hash, |&i| i == idx) {
            e.remove();
        }
        self.free.push(idx);
        self.counters.curr_items -= 1;
        self.counters.bytes -= entry.size();
        entry
    }

    pub fn bump(&mut self, idx: u32) {
        if self.head != idx {
            self.unlink(idx);
            self.link_front(idx);
        }
    }

    /// Indices from least to most recently used.
    pub fn iter_lru(&self) -> impl Iterator<Item = &Entry> + '_ {
        let mut cur = self.tail;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let e = self.get(cur);
            cur = e.prev;
            Some(e)
        })
    }

    /// Removes every entry matching `dead`; returns how many.
    pub fn retain(&mut self, mut dead: impl FnMut(&Entry) -> bool) -> u64 {
        let mut n = 0;
        let mut cur = self.tail;
        while cur != NIL {
            let e = self.get(cur);
            let prev = e.prev;
            if dead(e) {
                self.remove(cur);
                n += 1;
            }
            cur = prev;
        }
        n
    }

    fn link_front(&mut self, idx: u32) {
        let old_head = self.head;
        {
            let e = self.get_mut(idx);
            e.prev = NIL;
            e.next = old_head;
        }
        if old_head != NIL {
            self.get_mut(old_head).prev = idx;
        } else {
            self.tail = idx;
        }
        self.head = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let e = self.get(idx);
            (e.prev, e.next)
        };
        if prev != NIL {
            self.get_mut(prev).next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.get_mut(next).prev = prev;
        } else {
            self.tail = prev;
        }
        let e = self.get_mut(idx);
        e.prev = NIL;
        e.next = NIL;
    }
}
