//! The store's request and outcome types: what a command asks of it and what it answers.

use bytes::Bytes;

/// A live item as seen by a read, with the metadata from *before* this access (mg `h`, `l`). The value
/// is borrowed from item memory in [`Store::fetch_with`](super::Store::fetch_with), owned otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView<V = Bytes> {
    pub value: V,
    pub flags: u32,
    pub cas: u64,
    /// Absolute Unix seconds, 0 = never (after any touch done by this access).
    pub exptime: u64,
    /// Last access time before this access.
    pub last_access: u64,
    /// Whether it had been fetched before this access.
    pub fetched: bool,
    /// Marked stale by `md I`.
    pub stale: bool,
}

/// Options of a read (get, gets, gat, touch, mg).
#[derive(Debug, Clone, Copy)]
pub struct FetchOpts {
    /// Bump in the LRU and mark fetched/accessed (false for mg `u`).
    pub bump: bool,
    /// New exptime (client form) on a hit: touch, gat, mg `T`.
    pub touch: Option<i64>,
    /// mg `N`: on a miss, create an empty item with this exptime (client form).
    pub vivify: Option<i64>,
    /// mg `E`: CAS of an item created by `vivify`.
    pub new_cas: Option<u64>,
    /// mg `R`: win the recache token if the remaining TTL is below this (client form).
    pub recache: Option<i64>,
}

impl Default for FetchOpts {
    fn default() -> Self {
        FetchOpts { bump: true, touch: None, vivify: None, new_cas: None, recache: None }
    }
}

/// Result of [`Store::fetch`](super::Store::fetch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched<V = Bytes> {
    pub item: Option<ItemView<V>>,
    /// Created by `vivify` (an empty item).
    pub created: bool,
    /// This client won the recache token (mg `W`).
    pub won: bool,
    /// Another client already holds the token (mg `Z`).
    pub token_sent: bool,
    /// Journal sequence number of a touch or vivify, else 0.
    pub seq: u64,
}

impl Fetched<&[u8]> {
    /// The same outcome with the value copied out of item memory.
    pub fn to_owned(&self) -> Fetched {
        Fetched {
            item: self.item.as_ref().map(|i| ItemView {
                value: Bytes::copy_from_slice(i.value),
                flags: i.flags,
                cas: i.cas,
                exptime: i.exptime,
                last_access: i.last_access,
                fetched: i.fetched,
                stale: i.stale,
            }),
            created: self.created,
            won: self.won,
            token_sent: self.token_sent,
            seq: self.seq,
        }
    }
}

/// How a store combines with an existing item (`Cas`: compares `SetRequest::compare_cas`).
pub use kv_common::SetMode;

#[derive(Debug, Clone, Copy)]
pub struct SetRequest<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    /// Client form (see [`abs_exptime`]).
    pub exptime: i64,
    pub mode: SetMode,
    /// `Cas`: required CAS (0 never matches). Append/Prepend: 0 = no check, else must match.
    pub compare_cas: u64,
    /// ms `E`: use this CAS instead of the next counter value.
    pub new_cas: Option<u64>,
    /// ms `I` with `Cas`: a CAS older than the item's is accepted but the new item is marked stale.
    pub allow_stale: bool,
    /// ms `N` with Append/Prepend: create on a miss with this exptime (client form).
    pub vivify: Option<i64>,
}

impl<'a> SetRequest<'a> {
    pub fn new(mode: SetMode, key: &'a [u8], value: &'a [u8], flags: u32, exptime: i64) -> Self {
        SetRequest { key, value, flags, exptime, mode, compare_cas: 0, new_cas: None, allow_stale: false, vivify: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetStatus {
    Stored,
    NotStored,
    Exists,
    NotFound,
    /// Larger than `item_size_max`: nothing was changed (the caller decides whether to drop the old item).
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOutcome {
    pub status: SetStatus,
    /// CAS of the stored item, 0 if not stored.
    pub cas: u64,
    /// Length of the resulting value (after append/prepend), or of the request's value if not stored.
    pub size: usize,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOpts {
    /// md `C`: only if the CAS matches.
    pub compare_cas: Option<u64>,
    /// md `I`: mark stale (new CAS, token reset) instead of removing.
    pub invalidate: bool,
    /// md `T` with `I`: new exptime (client form).
    pub touch: Option<i64>,
    /// md `E`: CAS to give the invalidated item.
    pub new_cas: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteStatus {
    Deleted,
    NotFound,
    Exists,
}

#[derive(Debug, Clone, Copy)]
pub struct ArithOpts {
    pub incr: bool,
    pub delta: u64,
    /// ma `C`: 0 = no check.
    pub compare_cas: u64,
    /// ma `E`.
    pub new_cas: Option<u64>,
    /// ma `N`/`J`: on a miss create the item with (exptime in client form, initial value).
    pub vivify: Option<(i64, u64)>,
    /// ma `T`: new exptime on success (client form).
    pub touch: Option<i64>,
    /// Keep the old length, padding a shorter number with spaces: what memcached's classic incr/decr do
    /// (in-place update); its `ma` replaces the item, so the number is stored bare.
    pub pad: bool,
}

impl ArithOpts {
    pub fn new(incr: bool, delta: u64) -> Self {
        ArithOpts { incr, delta, compare_cas: 0, new_cas: None, vivify: None, touch: None, pad: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithStatus {
    Ok,
    NotFound,
    NonNumeric,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArithOutcome {
    pub status: ArithStatus,
    /// The new number (or the initial one if created).
    pub value: u64,
    pub cas: u64,
    pub exptime: u64,
    pub created: bool,
    pub seq: u64,
}

impl ArithOutcome {
    pub(super) fn fail(status: ArithStatus) -> Self {
        ArithOutcome { status, value: 0, cas: 0, exptime: 0, created: false, seq: 0 }
    }
}
