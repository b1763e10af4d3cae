//! The slot writer: where a key's reply lives in the kernel cache, and how it is written so that the XDP
//! program never uses a torn copy (see [`KernelCache`]).

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Result};
use aya::maps::Map;
use aya::Ebpf;
use kv_common::{CacheEntry, CacheKey, CONFIG_FLUSH_GEN};

use super::sys::MapFd;

/// The kernel cache's one writer: placement, the per-slot seqlock and the shadow of what each slot holds.
///
/// A key lives in one of the four slots of its two pairs ([`kv_common::slot_pairs`]), or nowhere.
/// Each slot has a sequence
/// number in `SEQS` (beside the tag of the key it holds, [`kv_common::slot_tag`]) that a write makes odd,
/// then rewrites the slot, then makes even again; the XDP program
/// only uses a copy taken between two equal even numbers (a seqlock: no torn reads, and array slots are
/// never freed or recycled). User space is the only writer: a per-slot lock orders writers of one slot
/// (keys of different store shards can share a slot) and a shadow records which key each slot holds, so
/// invalidating a key that is not cached costs no syscall.
pub struct KernelCache {
    cache: MapFd<u32, CacheEntry>,
    seqs: MapFd<u32, u64>,
    config: MapFd<u32, u64>,
    /// Current flush generation, mirrored in `CONFIG[CONFIG_FLUSH_GEN]`.
    gen: AtomicU64,
    mask: u32,
    shadow: Box<[parking_lot::Mutex<Shadow>]>,
    stamp: AtomicU64,
}

#[derive(Default)]
struct Shadow {
    /// The slot's sequence number as last written.
    seq: u64,
    /// The tag in the slot's word ([`kv_common::slot_tag`] of the key it holds; 0: none).
    tag: u32,
    /// When it was last written (a counter): the older of a full pair is replaced.
    stamp: u64,
    /// The key the slot answers for, and the flush generation it was written in.
    key: Option<(Box<[u8]>, u64)>,
}

/// A key's candidate slot indexes (2 or 4, ascending), and its tag (from the same hash).
struct Slots {
    idx: [usize; 4],
    n: usize,
    tag: u32,
}

/// A key's candidate slots with their shadows locked.
struct Locked<'a> {
    slots: Slots,
    g: [Option<parking_lot::MutexGuard<'a, Shadow>>; 4],
}

impl Locked<'_> {
    fn iter(&self) -> impl Iterator<Item = (usize, &Shadow)> {
        self.slots.idx[..self.slots.n].iter().zip(&self.g).filter_map(|(&i, g)| Some((i, &**g.as_ref()?)))
    }

    fn get(&self, i: usize) -> &Shadow {
        self.g[i].as_ref().expect("locked candidate")
    }

    fn get_mut(&mut self, i: usize) -> (usize, &mut Shadow) {
        (self.slots.idx[i], self.g[i].as_mut().expect("locked candidate"))
    }
}

impl KernelCache {
    /// The writer of a loaded program's cache (`CACHE`, `SEQS`, `CONFIG`), empty at generation 0.
    pub(super) fn open(ebpf: &Ebpf) -> Result<KernelCache> {
        let map = |name: &str| match ebpf.map(name) {
            Some(Map::Array(d)) => Ok(d),
            _ => Err(anyhow!("{name}: array map missing")),
        };
        let slots = map("CACHE")?.info()?.max_entries();
        Ok(KernelCache {
            cache: MapFd::new(map("CACHE")?)?,
            seqs: MapFd::new(map("SEQS")?)?,
            config: MapFd::new(map("CONFIG")?)?,
            gen: AtomicU64::new(0),
            mask: slots - 1,
            shadow: (0..slots).map(|_| parking_lot::Mutex::new(Shadow::default())).collect(),
            stamp: AtomicU64::new(0),
        })
    }
    /// The distinct slots a key may live in, ascending (the lock order): its two pairs.
    fn slots(&self, key: &CacheKey) -> Slots {
        let hash = key.hash();
        let (a, b) = kv_common::slot_pairs(hash, self.mask);
        let (lo, hi) = (a.min(b) as usize, a.max(b) as usize);
        let tag = kv_common::slot_tag(hash);
        if lo == hi {
            Slots { idx: [lo, lo + 1, 0, 0], n: 2, tag }
        } else {
            Slots { idx: [lo, lo + 1, hi, hi + 1], n: 4, tag }
        }
    }

    /// Writes the slot's word in SEQS: its tag and sequence number.
    fn set_seq(&self, idx: usize, sh: &Shadow) -> std::io::Result<()> {
        self.seqs.update(&(idx as u32), &kv_common::seq_word(sh.tag, sh.seq))
    }

    /// Makes the slot unreadable (odd sequence number).
    fn begin(&self, idx: usize, sh: &mut Shadow) -> std::io::Result<()> {
        if sh.seq.is_multiple_of(2) {
            sh.seq += 1;
            self.set_seq(idx, sh)?;
        }
        Ok(())
    }

    /// Writes `entry` into slot `idx`. On error the slot stays unreadable.
    /// `tag`: the key's ([`Slots::tag`]).
    fn write(&self, idx: usize, sh: &mut Shadow, key: &[u8], tag: u32, entry: &CacheEntry) -> std::io::Result<()> {
        sh.key = None;
        self.begin(idx, sh)?;
        self.cache.update(&(idx as u32), entry)?;
        sh.seq += 1;
        sh.tag = tag;
        self.set_seq(idx, sh)?;
        sh.key = Some((key.into(), entry.gen));
        sh.stamp = self.stamp.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn holds(&self, sh: &Shadow, key: &[u8]) -> bool {
        sh.key.as_ref().is_some_and(|(k, gen)| &**k == key && *gen == self.gen())
    }

    /// Locks the key's candidate slots, in ascending order (so writers of overlapping sets never deadlock).
    fn lock_slots(&self, key: &[u8]) -> Option<Locked<'_>> {
        let slots = self.slots(&CacheKey::new(key)?);
        let mut g: [Option<parking_lot::MutexGuard<'_, Shadow>>; 4] = Default::default();
        for (i, &idx) in slots.idx[..slots.n].iter().enumerate() {
            g[i] = Some(self.shadow[idx].lock());
        }
        Some(Locked { slots, g })
    }

    /// Puts the entry (built by [`cache_entry`] for `key`) into one of its slots: the one holding the key,
    /// else a free one in the emptier pair, else one freed by moving its key to a free slot of that key's
    /// other pair (one cuckoo step: at 60% load this leaves ~0.1% of keys out instead of ~2%), else the
    /// slot written longest ago.
    pub fn insert(&self, key: &[u8], entry: &CacheEntry) -> std::io::Result<()> {
        let mut l = self.lock_slots(key).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let held = l.iter().position(|(_, sh)| self.holds(sh, key));
        let free = || {
            let used = |pair: usize| l.iter().skip(pair * 2).take(2).filter(|(_, sh)| self.live(sh)).count();
            let pairs: &[usize] = if l.slots.n == 4 && used(1) < used(0) { &[1, 0] } else { &[0, 1] };
            pairs.iter().flat_map(|p| p * 2..p * 2 + 2).find(|&i| i < l.slots.n && !self.live(l.get(i)))
        };
        let pick = match held.or_else(free) {
            Some(i) => i,
            None => match self.relocate_one(&l)? {
                Some(i) => i,
                None => l.iter().enumerate().min_by_key(|(_, (_, sh))| sh.stamp).map_or(0, |(i, _)| i),
            },
        };
        let tag = l.slots.tag;
        let (idx, sh) = l.get_mut(pick);
        self.write(idx, sh, key, tag, entry)
    }

    /// Moves the key of one of the locked (full) slots to a free slot of its other pair, returning the
    /// freed candidate. The moved key is answered from its new slot before its old one is overwritten, and
    /// its own writers are held off by the old slot's lock meanwhile. Slots outside the locked set are
    /// only try-locked: waiting for them could deadlock against a writer locking in ascending order.
    fn relocate_one(&self, l: &Locked<'_>) -> std::io::Result<Option<usize>> {
        for i in 0..l.slots.n {
            let (from, sh) = (l.slots.idx[i], l.get(i));
            let Some((k, _)) = sh.key.clone() else { continue };
            let Some(ck) = CacheKey::new(&k) else { continue };
            let theirs = self.slots(&ck);
            for &to in &theirs.idx[..theirs.n] {
                if to / 2 == from / 2 || l.slots.idx[..l.slots.n].contains(&to) {
                    continue;
                }
                let Some(mut dst) = self.shadow[to].try_lock() else { continue };
                if self.live(&dst) {
                    continue;
                }
                let entry = self.cache.lookup(&(from as u32))?;
                self.write(to, &mut dst, &k, theirs.tag, &entry)?;
                // Keep the moved key's age, so that eviction order is unchanged by the move.
                dst.stamp = sh.stamp;
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Whether the slot answers for some key of the current generation.
    fn live(&self, sh: &Shadow) -> bool {
        sh.key.as_ref().is_some_and(|(_, gen)| *gen == self.gen())
    }

    /// Whether one of the key's slots currently answers for it.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.lock_slots(key).is_some_and(|l| l.iter().any(|(_, sh)| self.holds(sh, key)))
    }

    /// Rewrites the key's entry only if it is cached; Ok(false) if it was not.
    pub fn replace(&self, key: &[u8], entry: &CacheEntry) -> std::io::Result<bool> {
        let Some(mut l) = self.lock_slots(key) else { return Ok(false) };
        let found = l.iter().position(|(_, sh)| self.holds(sh, key));
        match found {
            Some(i) => {
                let tag = l.slots.tag;
                let (idx, sh) = l.get_mut(i);
                self.write(idx, sh, key, tag, entry)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Stops the kernel answering for the key; Ok(false) if it was not cached.
    pub fn remove(&self, key: &[u8]) -> std::io::Result<bool> {
        let Some(mut l) = self.lock_slots(key) else { return Ok(false) };
        let found = l.iter().position(|(_, sh)| self.holds(sh, key));
        match found {
            Some(i) => {
                let (idx, sh) = l.get_mut(i);
                sh.key = None;
                // Unreadable, and no longer tagged: the program then misses instead of finding it busy.
                // (The slot held the key, so its last write completed: `begin` writes the word.)
                sh.tag = 0;
                self.begin(idx, sh)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The generation new entries must carry.
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// Invalidates every entry at once by moving to a new generation.
    pub fn flush(&self) -> std::io::Result<()> {
        let next = self.gen.fetch_add(1, Ordering::AcqRel) + 1;
        self.config.update(&CONFIG_FLUSH_GEN, &next)
    }
}
