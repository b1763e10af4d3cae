//! Thin libc helpers: clocks, ppoll with a nanosecond timeout, the open-file limit, timer slack.

use std::io;
use std::time::Instant;

/// Monotonic nanoseconds since `base`.
#[inline]
pub fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// poll(2) with a nanosecond timeout (ppoll); EINTR counts as "nothing ready".
pub fn ppoll(fds: &mut [libc::pollfd], timeout_ns: u64) -> io::Result<usize> {
    let ts = libc::timespec { tv_sec: (timeout_ns / 1_000_000_000) as _, tv_nsec: (timeout_ns % 1_000_000_000) as _ };
    // SAFETY: fds is a valid slice of pollfd for its length; ts lives across the call; no signal mask.
    let r = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Raise RLIMIT_NOFILE: to `want` if privileged enough (raising the hard limit, capped by fs.nr_open), else to the
/// hard limit. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let hard: u64 = lim.rlim_max;
        if want > hard {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(hard);
            let target = want.min(nr_open).max(hard);
            let raised = libc::rlimit { rlim_cur: target, rlim_max: target };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return target;
            }
        }
        let soft = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return hard;
        }
        lim.rlim_cur
    }
}

/// Ask for precise timer wake-ups on this thread (default slack is 50 us), for the open-loop schedule.
pub fn set_min_timer_slack() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}
