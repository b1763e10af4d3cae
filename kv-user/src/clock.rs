//! The server's clocks, in one place: the store's injectable Unix-time [`Clock`] (so tests can move
//! time), and the wall and monotonic readings the kernel path and the log need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The wall clock at the store's one-second resolution: CLOCK_REALTIME_COARSE, the time of the last
/// timer tick, which the vDSO reads without the clock source (a few ns instead of a `clock_gettime`
/// that reads the TSC, or traps where the VM's clock source has no vDSO path). memcached's clock is
/// coarser still (a timer updates it once a second). It never runs ahead of CLOCK_REALTIME, so the
/// kernel path's deadlines, computed from the precise clock, still fall before the store's expiry.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        u64::try_from(realtime_coarse().tv_sec).unwrap_or(0)
    }
}

fn realtime_coarse() -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call; CLOCK_REALTIME_COARSE exists on every
    // Linux this runs on (2.6.32+).
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts
}

/// Unix time in nanoseconds at the resolution of the timer tick (1 to 4 ms), as cheap to read as
/// [`SystemClock`]: the log stamps every record with it.
pub fn unix_now_ns_coarse() -> u64 {
    let ts = realtime_coarse();
    u64::try_from(ts.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    unix_now_ns() / 1_000_000_000
}

/// Unix time in nanoseconds.
pub fn unix_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// CLOCK_MONOTONIC in nanoseconds: what the XDP program's `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A clock that only moves when told to (tests).
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now: u64) -> Self {
        ManualClock(AtomicU64::new(now))
    }
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::Relaxed);
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_clock_never_runs_ahead_and_lags_at_most_a_second() {
        for _ in 0..1000 {
            let coarse = SystemClock.now();
            let precise = unix_now();
            assert!(coarse <= precise && precise - coarse <= 1, "coarse {coarse}, precise {precise}");
        }
    }
}
