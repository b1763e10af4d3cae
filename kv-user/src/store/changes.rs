//! The one stream of changes the store emits: every change of its state (and every read hit), in the
//! order it applies them to each key, from [`Store::emit`](super::Store) only.
//!
//! Two parties follow it: the [`Journal`](crate::record::Journal) (what the log must replay, see
//! [`Change::record`]) and an [`Observer`] (the kernel path, which keeps its copies of hot items coherent
//! and decides which items to admit). Both are called while the key's shard lock is held (all shard
//! locks for `Flushed`), so each sees a key's changes in exactly the store's order, and a reply is sent
//! only after they returned.

use std::cell::Cell;

use crate::record::Record;

/// Why a key left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// delete, md, or an oversized set that drops the old item: journaled.
    Deleted,
    /// Evicted from an LRU tail to stay under the memory limit.
    Evicted,
    /// Reclaimed after its exptime.
    Expired,
    /// Reclaimed after a flush_all killed it.
    Flushed,
}

/// One change, borrowed from the store while it holds the key's shard lock.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// The item now has exactly this state (a `Record::Set`): any write that stores a value, and `md I`.
    Stored(Record<'a>),
    /// Only the item's exptime changed (touch, gat, mg `T`); `Record::Set` with the new state.
    Touched(Record<'a>),
    /// The key is gone.
    Removed { key: &'a [u8], cause: Removal },
    /// flush_all: everything stored before `at` (Unix seconds) is dead from `at` on; `now` is the store's
    /// time; an immediate flush (`at <= now`) kills every item with CAS <= `max_cas`.
    Flushed { at: u64, now: u64, max_cas: u64 },
    /// A user-space read hit on a live item (a `Record::Set`) at the store's time `now`. `mark` is a word
    /// the store keeps with the item for the observer, zero whenever a new item is stored; the store
    /// never interprets it (the kernel path counts hits in it to decide admission).
    ReadHit { item: Record<'a>, now: u64, mark: &'a Cell<u32> },
}

impl<'a> Change<'a> {
    /// What the log records of this change, if anything: evictions, reclaims and reads are not logged.
    pub fn record(&self) -> Option<Record<'a>> {
        match *self {
            Change::Stored(item) => Some(item),
            Change::Touched(Record::Set { key, exptime, cas, .. }) => Some(Record::Touch { key, exptime, cas }),
            Change::Touched(_) => None,
            Change::Removed { key, cause: Removal::Deleted } => Some(Record::Delete { key }),
            Change::Removed { .. } | Change::ReadHit { .. } => None,
            Change::Flushed { at, max_cas, .. } => Some(Record::FlushAll { at, max_cas }),
        }
    }
}

/// Follows the store's changes besides the journal (the kernel path). Called under the key's shard lock:
/// keep it short and never call back into the store.
pub trait Observer: Send + Sync {
    fn observe(&self, change: &Change<'_>);
}
