//! A kernel cache entry for an item: its reply preformatted byte for byte as user space sends it, and
//! its expiry as a deadline on the clock the XDP program reads.

use kv_common::{CacheEntry, CacheKey, CACHE_ENTRY_BUF};

/// Builds the kernel cache entry for an item from the same formatting code as user-space replies
/// (`VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`), so the two are byte-identical.
/// None if it does not fit an entry.
pub fn cache_entry(key: &[u8], flags: u32, cas: u64, value: &[u8], expire_ns: u64, gen: u64) -> Option<CacheEntry> {
    let mut v = Vec::with_capacity(64 + key.len() + value.len());
    let (hdr_len, cas_len) = crate::exec::value_line(&mut v, key, flags, Some(cas), value);
    // The `get` form is the `gets` form without ` <cas>`: kept contiguous, the CAS aside.
    let mut cas_part = [0u8; 24];
    cas_part.get_mut(..cas_len)?.copy_from_slice(&v[hdr_len..hdr_len + cas_len]);
    v.drain(hdr_len..hdr_len + cas_len);
    if v.len() > CACHE_ENTRY_BUF {
        return None;
    }
    let mut buf = [0u8; CACHE_ENTRY_BUF];
    buf[..v.len()].copy_from_slice(&v);
    Some(CacheEntry {
        expire_ns,
        gen,
        hdr_len: hdr_len as u16,
        cas_len: cas_len as u16,
        total_len: v.len() as u16,
        _pad: 0,
        cas: cas_part,
        key: CacheKey::new(key)?,
        buf,
    })
}

pub(super) fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
