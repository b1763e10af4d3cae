//! A kernel cache entry for an item: its reply preformatted byte for byte as user space sends it, and
//! its expiry as a deadline on the clock the XDP program reads.

use crate::clock::{monotonic_ns, unix_now_ns};
use kv_common::{CacheEntry, ValueHeader, CACHE_ENTRY_BUF, CAS_FIELD_LEN, MAX_KEY_LEN};

/// Builds the kernel cache entry for an item with the formatter user-space replies use
/// ([`ValueHeader`]: `VALUE <key> <flags> <bytes>[ <cas>]\r\n`, then `<data>\r\n`), so the two are
/// byte-identical. The `get` form is stored whole; the ` <cas>` of the `gets` form is kept aside, to be
/// inserted at `hdr_len`. The key is the one in the reply text (`buf[6..]`), which the XDP program
/// compares. None if it does not fit an entry.
pub fn cache_entry(key: &[u8], flags: u32, cas: u64, value: &[u8], expire_ns: u64, gen: u64) -> Option<CacheEntry> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return None;
    }
    let h = ValueHeader::new(key, flags, value.len(), Some(cas))?;
    let (hdr_len, cas_field) = (h.hdr_len(), h.cas_field());
    let line = &h.as_bytes()[hdr_len + cas_field.len()..];
    let total = hdr_len + line.len() + value.len() + 2;
    if total > CACHE_ENTRY_BUF {
        return None;
    }
    let mut buf = [0u8; CACHE_ENTRY_BUF];
    let mut at = 0;
    for part in [&h.as_bytes()[..hdr_len], line, value, b"\r\n"] {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    let mut cas_part = [0u8; CAS_FIELD_LEN];
    cas_part.get_mut(..cas_field.len())?.copy_from_slice(cas_field);
    Some(CacheEntry {
        expire_ns,
        gen,
        flags,
        hdr_len: hdr_len as u16,
        total_len: total as u16,
        cas_len: cas_field.len() as u8,
        key_len: key.len() as u8,
        buf,
        cas: cas_part,
        _pad: [0; 1],
        cas_unique: cas,
    })
}

/// Safety margin between the kernel deadline and the store's: the two clocks are read a few instructions
/// apart, and the kernel must stop serving first.
const DEADLINE_MARGIN_NS: u64 = 5_000_000;

/// The monotonic instant at which Unix time reaches `exptime` (when the store starts calling the item
/// expired), minus a margin. None if that is already past.
pub(super) fn deadline_ns(exptime: u64) -> Option<u64> {
    let mono = monotonic_ns();
    let left = exptime.checked_mul(1_000_000_000)?.checked_sub(unix_now_ns())?;
    let left = left.checked_sub(DEADLINE_MARGIN_NS)?;
    Some(mono + left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_from_the_reply_text() {
        let e = cache_entry(b"some:key", 5, 9, b"value", 0, 3).unwrap();
        assert_eq!(e.key_len, 8);
        assert_eq!(&e.buf[..e.total_len as usize], b"VALUE some:key 5 5\r\nvalue\r\n");
        assert_eq!(&e.cas[..e.cas_len as usize], b" 9");
        assert_eq!((e.flags, e.cas_unique), (5, 9), "a binary hit's extras and CAS");
        let widest = cache_entry(&[b'k'; MAX_KEY_LEN], u32::MAX, u64::MAX, b"", 0, 0).unwrap();
        assert_eq!(&widest.cas[..widest.cas_len as usize], format!(" {}", u64::MAX).as_bytes());
        assert_eq!(widest.key_len as usize, MAX_KEY_LEN);
        // SAFETY: `CacheEntry` is plain `#[repr(C)]` data, all of it initialised (explicit padding).
        let bytes =
            unsafe { std::slice::from_raw_parts((&e as *const CacheEntry).cast::<u8>(), size_of::<CacheEntry>()) };
        assert_eq!(&bytes[kv_common::ENTRY_KEY_OFF..kv_common::ENTRY_KEY_OFF + 8], b"some:key");
        assert!(cache_entry(b"", 0, 0, b"v", 0, 0).is_none());
        assert!(cache_entry(&[b'k'; MAX_KEY_LEN + 1], 0, 0, b"v", 0, 0).is_none());
    }

    #[test]
    fn deadlines_fall_before_the_store_expiry() {
        let now_s = unix_now_ns() / 1_000_000_000;
        assert_eq!(deadline_ns(now_s), None, "already expired");
        assert_eq!(deadline_ns(1), None);
        let d = deadline_ns(now_s + 10).unwrap();
        let mono = monotonic_ns();
        // Between 9 and 10 seconds from now, never past the store's expiry.
        assert!(d > mono + 8_900_000_000 && d <= mono + 10_000_000_000, "{}", d - mono);
    }
}
