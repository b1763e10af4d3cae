//! memcached's slab classes as size bands. The store has no slabs (items are packed into segments),
//! but operator tools (`stats items`, `stats slabs`, `me`, `lru_crawler metadump`, memcached-tool)
//! speak in classes, so each item is counted in the class memcached 1.6 would put it in: the smallest
//! whose chunk holds the item's memcached size (`kv_common::item_size`), the largest class for
//! anything bigger (memcached chunks those across that class's chunks).

use std::ops::{AddAssign, Range};

/// memcached 1.6's default table (`-n 48 -f 1.25`, 1 MB pages, 512 KB largest chunk): what
/// `memcached -vv` prints. It does not depend on `-I`.
pub const CHUNK_SIZES: [u32; 39] = chunk_sizes();
/// Class ids run 1..=39 (memcached's `POWER_SMALLEST`..`power_largest`).
pub const CLASSES: Range<u8> = 1..CHUNK_SIZES.len() as u8 + 1;
/// memcached's slab page: what `chunks_per_page` divides.
pub const PAGE_SIZE: u32 = 1 << 20;
/// memcached's `MAX_NUMBER_OF_SLAB_CLASSES`: class ids it accepts in commands are below this.
pub const MAX_CLASS_ID: u32 = 64;

const fn chunk_sizes() -> [u32; 39] {
    // slabs_init: sizeof(item) + chunk_size, times the factor, 8-byte aligned, up to chunk_max.
    let (factor_num, factor_den, chunk_max) = (125u64, 100u64, PAGE_SIZE as u64 / 2);
    let mut out = [0u32; 39];
    let mut size = 96.0f64;
    let mut i = 0;
    while i < 38 {
        let mut s = size as u64;
        if !s.is_multiple_of(8) {
            s += 8 - s % 8;
        }
        out[i] = s as u32;
        size = s as f64 * factor_num as f64 / factor_den as f64;
        i += 1;
    }
    out[38] = chunk_max as u32;
    out
}

/// The class of an item of `size` bytes (memcached's size: `kv_common::item_size`).
pub fn class_of(size: u64) -> u8 {
    let i = CHUNK_SIZES.partition_point(|&c| u64::from(c) < size);
    (i.min(CHUNK_SIZES.len() - 1) + 1) as u8
}

/// The chunk size of class `id` (1..=39).
pub fn chunk_size(id: u8) -> u32 {
    CHUNK_SIZES[usize::from(id) - 1]
}

/// One counter per class; index 0 unused.
pub type PerClass = [u64; CHUNK_SIZES.len() + 1];

/// Per class: live items and their bytes (the store's `item_len`, as `bytes` counts them), and the
/// removals `stats items` reports per class (the store-wide counters of `ItemCounters` broken down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCounts {
    pub items: PerClass,
    pub bytes: PerClass,
    pub evicted: PerClass,
    pub evicted_unfetched: PerClass,
    pub reclaimed: PerClass,
    pub expired_unfetched: PerClass,
}

impl Default for ClassCounts {
    fn default() -> Self {
        let z = [0; CHUNK_SIZES.len() + 1];
        ClassCounts { items: z, bytes: z, evicted: z, evicted_unfetched: z, reclaimed: z, expired_unfetched: z }
    }
}

impl ClassCounts {
    /// Counts an item in (`add`) or out of its class.
    pub(super) fn note(&mut self, class: u8, len: usize, add: bool) {
        let c = usize::from(class);
        if add {
            self.items[c] += 1;
            self.bytes[c] += len as u64;
        } else {
            self.items[c] -= 1;
            self.bytes[c] -= len as u64;
        }
    }

    /// Zeroes the removal counters (`stats reset`); the live counts stay.
    pub(super) fn reset_removals(&mut self) {
        *self = ClassCounts { items: self.items, bytes: self.bytes, ..ClassCounts::default() };
    }

    fn fields(&mut self) -> [&mut PerClass; 6] {
        let ClassCounts { items, bytes, evicted, evicted_unfetched, reclaimed, expired_unfetched } = self;
        [items, bytes, evicted, evicted_unfetched, reclaimed, expired_unfetched]
    }
}

impl AddAssign<&ClassCounts> for ClassCounts {
    fn add_assign(&mut self, o: &ClassCounts) {
        let mut o = *o;
        for (mine, theirs) in self.fields().into_iter().zip(o.fields()) {
            mine.iter_mut().zip(theirs.iter()).for_each(|(a, b)| *a += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_memcached_default() {
        // From `memcached -vv` (1.6.18): the first, some middle and the last classes.
        assert_eq!(CHUNK_SIZES[..6], [96, 120, 152, 192, 240, 304]);
        assert_eq!(CHUNK_SIZES[20], 8880);
        assert_eq!(CHUNK_SIZES[37..], [394840, 524288]);
        assert_eq!((PAGE_SIZE / chunk_size(1), PAGE_SIZE / chunk_size(39)), (10922, 2));
    }

    #[test]
    fn classes_by_size() {
        // Sizes memcached 1.6.18 reported with `me` for these items.
        assert_eq!(class_of(65), 1);
        assert_eq!(class_of(96), 1);
        assert_eq!(class_of(97), 2);
        assert_eq!(class_of(265), 6);
        assert_eq!(class_of(524_286), 39);
        assert_eq!(class_of(1_000_069), 39);
    }
}
