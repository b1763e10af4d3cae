//! The layout of one item inside a segment: a packed 34-byte header, then the key, then the value.
//! No alignment and no per-item allocation: the header holds what the commands need and nothing the
//! segment or index already know (an item's place is its identity; its hash is recomputed when needed).
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | CAS |
//! | 8..12  | exptime: absolute Unix seconds, 0 = never |
//! | 12..16 | time: when it was stored (flush_all compares against it) |
//! | 16..20 | atime: last access |
//! | 20..24 | client flags |
//! | 24..28 | the observer's word (see `Change::ReadHit`) |
//! | 28..32 | value length |
//! | 32     | key length |
//! | 33     | state bits |

use crate::record::Record;

pub const HEADER: usize = 34;

/// Fetched before (mg `h`).
pub(crate) const FETCHED: u8 = 1;
/// Marked stale by `md I` (or a stale `ms I`).
pub(crate) const STALE: u8 = 2;
/// A client already got the recache "win" token (mg W/Z).
pub(crate) const TOKEN_SENT: u8 = 4;
/// Read since its segment was last considered for eviction: it gets a second chance.
pub(crate) const ACCESSED: u8 = 8;
/// Superseded or removed: the bytes stay until the segment is recycled.
pub(crate) const DEAD: u8 = 16;

/// Bytes an item occupies in a segment (what `bytes` and the memory limit count).
pub fn item_len(klen: usize, vlen: usize) -> usize {
    HEADER + klen + vlen
}

/// Times are u32 in the header (good until 2106); a larger absolute time is clamped.
fn t32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// What is written into a new item besides key and value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Meta {
    pub cas: u64,
    pub exptime: u64,
    pub time: u64,
    pub atime: u64,
    pub flags: u32,
    pub bits: u8,
}

/// A read-only view of an item (the slice starts at its header and holds at least the whole item).
#[derive(Clone, Copy)]
pub(crate) struct Item<'a>(&'a [u8]);

impl<'a> Item<'a> {
    pub fn at(seg: &'a [u8], off: usize) -> Item<'a> {
        Item(&seg[off..])
    }

    fn u32_at(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.0[i..i + 4].try_into().expect("4 bytes"))
    }

    pub fn cas(&self) -> u64 {
        u64::from_le_bytes(self.0[0..8].try_into().expect("8 bytes"))
    }
    pub fn exptime(&self) -> u64 {
        u64::from(self.u32_at(8))
    }
    pub fn time(&self) -> u64 {
        u64::from(self.u32_at(12))
    }
    pub fn atime(&self) -> u64 {
        u64::from(self.u32_at(16))
    }
    pub fn flags(&self) -> u32 {
        self.u32_at(20)
    }
    pub fn mark(&self) -> u32 {
        self.u32_at(24)
    }
    pub fn vlen(&self) -> usize {
        self.u32_at(28) as usize
    }
    pub fn klen(&self) -> usize {
        usize::from(self.0[32])
    }
    /// The memcached slab class the item is counted in (see `classes`).
    pub fn class(&self) -> u8 {
        super::classes::class_of(kv_common::item_size(self.klen(), self.flags(), self.vlen()))
    }
    pub fn bits(&self) -> u8 {
        self.0[33]
    }
    pub fn has(&self, bit: u8) -> bool {
        self.bits() & bit != 0
    }
    pub fn len(&self) -> usize {
        item_len(self.klen(), self.vlen())
    }
    /// The whole item as it lies in its segment (header, key, value).
    pub fn bytes(&self) -> &'a [u8] {
        &self.0[..self.len()]
    }
    pub fn key(&self) -> &'a [u8] {
        &self.0[HEADER..HEADER + self.klen()]
    }
    pub fn value(&self) -> &'a [u8] {
        let k = HEADER + self.klen();
        &self.0[k..k + self.vlen()]
    }
    pub fn expired(&self, now: u64) -> bool {
        let e = self.exptime();
        e != 0 && e <= now
    }

    /// The item's whole state as a journal record.
    pub fn record(&self) -> Record<'a> {
        Record::Set {
            key: self.key(),
            flags: self.flags(),
            exptime: self.exptime(),
            cas: self.cas(),
            time: self.time(),
            value: self.value(),
        }
    }
}

/// A writable view of an item's header and value.
pub(crate) struct ItemMut<'a>(&'a mut [u8]);

impl<'a> ItemMut<'a> {
    pub fn at(seg: &'a mut [u8], off: usize) -> ItemMut<'a> {
        ItemMut(&mut seg[off..])
    }

    /// Writes a whole new item; the slice must hold `item_len(key.len(), value_len)` bytes.
    pub fn write(seg: &'a mut [u8], off: usize, key: &[u8], value: &[&[u8]], meta: &Meta) -> ItemMut<'a> {
        let vlen: usize = value.iter().map(|v| v.len()).sum();
        let mut it = ItemMut(&mut seg[off..off + item_len(key.len(), vlen)]);
        it.0[28..32].copy_from_slice(&(vlen as u32).to_le_bytes());
        it.0[32] = u8::try_from(key.len()).expect("keys are at most 250 bytes");
        it.set_meta(meta);
        it.set_mark(0);
        it.0[HEADER..HEADER + key.len()].copy_from_slice(key);
        let mut at = HEADER + key.len();
        for part in value {
            it.0[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        it
    }

    pub fn view(&self) -> Item<'_> {
        Item(self.0)
    }

    fn put_u32(&mut self, i: usize, v: u32) {
        self.0[i..i + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_meta(&mut self, m: &Meta) {
        self.set_cas(m.cas);
        self.set_exptime(m.exptime);
        self.set_time(m.time);
        self.set_atime(m.atime);
        self.put_u32(20, m.flags);
        self.0[33] = m.bits;
    }

    pub fn set_cas(&mut self, cas: u64) {
        self.0[0..8].copy_from_slice(&cas.to_le_bytes());
    }
    pub fn set_exptime(&mut self, t: u64) {
        self.put_u32(8, t32(t));
    }
    pub fn set_time(&mut self, t: u64) {
        self.put_u32(12, t32(t));
    }
    pub fn set_atime(&mut self, t: u64) {
        self.put_u32(16, t32(t));
    }
    pub fn set_mark(&mut self, m: u32) {
        self.put_u32(24, m);
    }
    pub fn set_bit(&mut self, bit: u8, on: bool) {
        if on {
            self.0[33] |= bit;
        } else {
            self.0[33] &= !bit;
        }
    }

    /// Overwrites the value with one of the same length (incr/decr in place).
    pub fn value_mut(&mut self) -> &mut [u8] {
        let k = HEADER + self.view().klen();
        let v = self.view().vlen();
        &mut self.0[k..k + v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut seg = vec![0u8; 200];
        let meta = Meta { cas: 1 << 40, exptime: 1_800_000_000, time: 7, atime: 9, flags: 0xdead_beef, bits: STALE };
        let mut it = ItemMut::write(&mut seg, 10, b"key", &[b"val", b"ue"], &meta);
        it.set_mark(42);
        it.set_bit(ACCESSED, true);
        let v = Item::at(&seg, 10);
        assert_eq!((v.key(), v.value(), v.len()), (&b"key"[..], &b"value"[..], HEADER + 8));
        assert_eq!((v.cas(), v.exptime(), v.time(), v.atime(), v.flags()), (1 << 40, 1_800_000_000, 7, 9, 0xdead_beef));
        assert_eq!((v.mark(), v.has(STALE), v.has(ACCESSED), v.has(DEAD)), (42, true, true, false));
        assert!(v.expired(1_800_000_000) && !v.expired(1_799_999_999));
        assert_eq!(seg[..10], [0; 10], "nothing written before the item");
    }
}
