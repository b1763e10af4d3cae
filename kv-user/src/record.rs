//! The unit of persistence: one successful mutation, as the store applied it.
//!
//! Records are *state-based* (a `Set` carries the item's whole resulting state, not "incr by 3"),
//! so replaying any suffix of the log again after a snapshot converges to the same state. Compaction relies on that.

/// One mutation, borrowed from the store while its shard lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// The item now has exactly this state (set/add/replace/append/prepend/cas/incr/decr/ms/ma all log this).
    Set {
        key: &'a [u8],
        flags: u32,
        /// Absolute Unix time in seconds; 0 = never expires.
        exptime: u64,
        cas: u64,
        /// Unix time in seconds when the item was stored (memcached's `it->time`; delayed flush_all needs it).
        time: u64,
        value: &'a [u8],
    },
    /// Only the expiry changed (touch, gat, mg with T): avoids re-logging a large value.
    Touch { key: &'a [u8], exptime: u64, cas: u64 },
    /// The key is gone (delete, md, or an oversized set that removed the old item).
    Delete { key: &'a [u8] },
    /// flush_all. Immediate (`at` <= the time it was issued): every item with CAS <= `max_cas` is dead.
    /// Delayed (`flush_all 30`, `at` in the future): once Unix time reaches `at`, every item whose `time` is
    /// before `at` dies (memcached's `oldest_live`), including items stored after the command.
    FlushAll { at: u64, max_cas: u64 },
}

/// What a write refused up front returns as its sequence number (the journal is failing, see
/// [`Journal::refusing`]): nothing was applied, and waiting on it yields the journal's error.
pub const REFUSED_SEQ: u64 = u64::MAX - 1;

/// Receives every successful mutation, in the order the store applied it to each key.
///
/// The store calls `record` while it still holds the lock of the key's shard, so the log's order per key
/// is the store's order. Implementations must be cheap (append to an in-memory buffer) and never block on I/O.
///
/// A journal that can fail ([`Journal::can_fail`]) gets the store's cooperation to keep failed writes
/// invisible: the store keeps the state each key had before every write whose record is not durable yet,
/// so [`Undo::undo_from`] can restore it, and refuses writes (checked under the shard lock, before
/// anything is applied) while [`Journal::refusing`] says so.
pub trait Journal: Send + Sync {
    /// Appends the record; returns its sequence number, to be passed to the durability wait before replying.
    fn record(&self, rec: &Record<'_>) -> u64;

    /// Whether records can fail after `record` returned (then the store keeps undo state for them).
    fn can_fail(&self) -> bool {
        false
    }

    /// True while writes must be refused: the store then applies nothing and returns [`REFUSED_SEQ`].
    fn refusing(&self) -> bool {
        false
    }

    /// Every record up to this sequence number is durable for good: its undo state can go.
    fn durable_seq(&self) -> u64 {
        u64::MAX
    }

    /// Blocks until `seq` is durable (Ok) or the journal failed (Err), without waiting for the failed writes
    /// to be undone: for a write applied only once durable (flush_all), holding every shard lock.
    fn wait_applied(&self, _seq: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// Undoes the writes whose records failed, for a journal that can fail (the store implements it).
pub trait Undo: Snapshot {
    /// Restores, key by key, the state from before every write with a sequence number >= `from` (newest
    /// first, so each key ends as it was before its first failed write); returns how many were undone.
    /// The caller guarantees that no record >= `from` becomes durable and that the store refuses writes.
    fn undo_from(&self, from: u64) -> u64;
}

/// A journal that forgets everything (`--no-persist`, unit tests).
pub struct NoJournal;

impl Journal for NoJournal {
    fn record(&self, _rec: &Record<'_>) -> u64 {
        0
    }
}

/// A source of the live state, for compaction: the store visits every live item as a `Record::Set`
/// (plus one `Record::FlushAll` first if a delayed flush is pending), each under its shard's lock.
pub trait Snapshot: Send + Sync {
    fn for_each_live(&self, f: &mut dyn FnMut(&Record<'_>));
    /// About how many bytes the live items take (keys, values and per-item overhead), cheaply: the log
    /// compares its size with it to decide when to compact.
    fn live_bytes(&self) -> u64;
}
