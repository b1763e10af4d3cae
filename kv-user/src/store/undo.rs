//! Undoing writes whose journal record failed, so a client told "failed" never reads what it wrote.
//!
//! Writes are applied under the key's shard lock and journaled there; the reply waits for durability. For
//! a journal that can fail, each shard keeps, per write not yet durable, the key's state from before it
//! (a *before-image*: the old item's bytes as they lay in its segment, or just the key if it had none),
//! tagged with the write's sequence number. Entries go once their record is durable (checked on the
//! shard's next write and once a second). When the journal fails, every record from some sequence number
//! on fails (the log is sequential), so [`Undo::undo_from`] restores, newest first, each shard's entries
//! from there: every key ends as it was before its first failed write, and no durable write is undone.
//!
//! The restored state reaches the observer (the kernel cache) as an ordinary change, so it stays coherent;
//! it is not journaled (it is what the log already holds). Before-images are copies (one `memcpy` of the
//! old item per write, into a buffer reused across writes), not charged to `-m`: they live only while
//! records are in flight. flush_all keeps none: it is applied only once its record is durable.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use super::changes::{Change, Removal};
use super::item::{Item, Meta, DEAD};
use super::shard::{off_of, seg_of, Loc, Shard};
use super::Store;
use crate::record::{Undo, REFUSED_SEQ};

/// One before-image in [`UndoLog::bytes`].
#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    at: usize,
    len: usize,
    /// The key had an item (the bytes are the item); otherwise they are the key.
    present: bool,
}

/// A shard's before-images, oldest first (sequence numbers only grow within a shard: they are taken
/// under its lock).
#[derive(Default)]
pub(crate) struct UndoLog {
    entries: VecDeque<Entry>,
    bytes: Vec<u8>,
    /// Bytes at the front of `bytes` no entry refers to any more.
    head: usize,
    /// Captured for the write in progress, waiting for its sequence number.
    staged: Option<Entry>,
}

/// Pruned bytes are dropped from the front of the buffer only past this much (and half of it).
const SHIFT_AT: usize = 1 << 20;
/// An idle log's buffer is freed if it grew past this.
const KEEP: usize = 64 << 10;

impl UndoLog {
    fn stage(&mut self, bytes: &[u8], present: bool) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.staged = Some(Entry { seq: 0, at, len: bytes.len(), present });
    }

    /// Keeps the staged image for `seq`, or drops it if nothing was journaled (seq 0).
    fn commit(&mut self, seq: u64) {
        let Some(mut e) = self.staged.take() else { return };
        if seq == 0 {
            self.bytes.truncate(e.at);
            return;
        }
        e.seq = seq;
        self.entries.push_back(e);
    }

    /// Forgets the images of writes that are durable (`seq <= durable`).
    pub(crate) fn prune(&mut self, durable: u64) {
        while self.entries.front().is_some_and(|e| e.seq <= durable) {
            self.entries.pop_front();
        }
        match self.entries.front() {
            None if self.staged.is_none() => {
                self.bytes.clear();
                self.head = 0;
                if self.bytes.capacity() > KEEP {
                    self.bytes = Vec::new();
                    self.entries = VecDeque::new();
                }
            }
            None => {}
            Some(e) => self.head = e.at,
        }
        if self.head > SHIFT_AT && self.head > self.bytes.len() / 2 {
            let head = std::mem::take(&mut self.head);
            self.bytes.drain(..head);
            for e in self.entries.iter_mut().chain(self.staged.as_mut()) {
                e.at -= head;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Shard {
    /// Captures the state of `key` (its item at `l`, if any) before a write changes it.
    fn stage_before(&mut self, l: Option<Loc>, key: &[u8]) {
        match l {
            Some(l) => {
                // Through the fields, not `item()`: the segment is read while the undo log is written.
                let seg = self.segs[seg_of(l) as usize].as_ref().expect("segment in use");
                self.undo.stage(Item::at(seg.block.bytes(), off_of(l)).bytes(), true);
            }
            None => self.undo.stage(key, false),
        }
    }
}

impl Store {
    /// Under the shard lock, before a write applies anything: true if it must be refused (the journal is
    /// failing); the caller then returns [`REFUSED_SEQ`] without changing anything.
    pub(super) fn refused(&self) -> bool {
        self.can_fail && self.journal.refusing()
    }

    /// Under the shard lock, before a write changes `key` (whose live item is at `l`, if any): keeps its
    /// state for [`Undo::undo_from`] until the write's record is durable.
    pub(super) fn before_write(&self, g: &mut Shard, l: Option<Loc>, key: &[u8]) {
        if self.can_fail {
            g.undo.prune(self.journal.durable_seq());
            g.stage_before(l, key);
        }
    }

    /// After the write's record was journaled as `seq`: keeps the staged image with it. A record the
    /// journal rejected outright (too large for it) is undone at once: its client will be told it failed.
    pub(super) fn after_write(&self, g: &mut Shard, seq: u64) {
        if !self.can_fail {
            return;
        }
        g.undo.commit(seq);
        if seq == crate::persist::REJECTED_SEQ {
            self.undo_shard(g, seq);
        }
    }

    /// Prunes every shard's before-images of durable writes (housekeeping: a shard without writes keeps
    /// its last ones otherwise).
    pub(super) fn prune_undo(&self) {
        if self.can_fail {
            let durable = self.journal.durable_seq();
            for s in self.shards.iter() {
                s.lock().undo.prune(durable);
            }
        }
    }

    /// Restores the before-images of shard `g`'s writes with seq >= `from`, newest first.
    fn undo_shard(&self, g: &mut Shard, from: u64) -> u64 {
        let mut log = std::mem::take(&mut g.undo);
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(self.now(), &emit);
        let mut n = 0;
        while log.entries.back().is_some_and(|e| e.seq >= from) {
            let e = log.entries.pop_back().expect("checked");
            let image = &log.bytes[e.at..e.at + e.len];
            let key = if e.present { Item::at(image, 0).key() } else { image };
            let hash = self.hasher.hash_one(key);
            if let Some(h) = g.find_hit(hash, key) {
                g.remove_hit(h, &self.budget);
            }
            if e.present {
                let it = Item::at(image, 0);
                let meta = Meta {
                    cas: it.cas(),
                    exptime: it.exptime(),
                    time: it.time(),
                    atime: it.atime(),
                    flags: it.flags(),
                    bits: it.bits() & !DEAD,
                };
                let l = g.insert(hash, key, &[it.value()], &meta, &env);
                self.observe(&Change::Stored(g.item(l).record()));
            } else {
                self.observe(&Change::Removed { key, cause: Removal::Deleted });
            }
            n += 1;
        }
        log.bytes.truncate(log.entries.back().map_or(0, |e| e.at + e.len));
        g.undo = log;
        n
    }
}

impl Undo for Store {
    fn undo_from(&self, from: u64) -> u64 {
        debug_assert!(from < REFUSED_SEQ);
        let mut n = 0;
        for s in self.shards.iter() {
            let mut g = s.lock();
            n += self.undo_shard(&mut g, from);
            self.finish(g);
        }
        n
    }
}
