//! Appending: the in-memory buffer behind [`Journal::record`](crate::record::Journal::record), group commit
//! (one `write(2)`, and for `Always` one fsync, per batch), the writer and fsync threads, and the durability
//! waits. A failed write or fsync begins a failure episode (`health`, `repair`).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::Duration;

use super::format::encode_unstamped;
use super::health::Failure;
use super::{lock, FsyncPolicy, Phase, Shared, IO_CHUNK};
use crate::record::Record;

/// Returned by [`Journal::record`](crate::record::Journal::record) for a record the format cannot hold (or one
/// recorded before [`Log::recover`](super::Log::recover)); waiting on it yields an error.
pub const REJECTED_SEQ: u64 = u64::MAX;

/// `Everysec`/`No`: how often the writer thread writes records nobody is waiting for (waiters write their own).
const FLUSH_TICK: Duration = Duration::from_millis(10);

thread_local! {
    /// Encoding happens outside the append lock; this avoids an allocation per record.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Swapped with the pending buffer by a waiter that writes it itself (`Everysec`/`No`).
    static BATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// State shared between `record()` callers, the writer thread and compaction; guarded by `Writer::state`.
pub(super) struct Pending {
    /// Encoded records not yet handed to the writer.
    pub(super) buf: Vec<u8>,
    /// Sequence number of the next record (the first is 1, so 0 means "nothing to wait for").
    pub(super) next_seq: u64,
    /// Length the log file will have once `buf` is written.
    pub(super) pos: u64,
    pub(super) records: u64,
    /// The last stamp given (unix ns): stamps follow the log's order even if the clock steps back.
    pub(super) last_stamp: u64,
}

impl Pending {
    /// The stamp for a record appended now (`now_ns` from the wall clock): never below the last one.
    pub(super) fn next_stamp(&mut self, now_ns: u64) -> u64 {
        self.last_stamp = self.last_stamp.max(now_ns);
        self.last_stamp
    }
}

/// The append side of the log.
pub(super) struct Writer {
    pub(super) state: Mutex<Pending>,
    wake: Condvar,
    /// The live log file. Held by whoever writes a batch (the writer thread, or for `Everysec`/`No` a waiting
    /// task), by recovery, and by compaction for the swap; lock order is `io` before `state`.
    pub(super) io: Mutex<Arc<File>>,
    /// A compaction holds (or is about to take) `io` for its swap, which can take milliseconds: async waiters
    /// wait for its publish instead of blocking a runtime thread on the lock.
    swapping: AtomicBool,
    /// Highest seq written (and for `Always` fsynced).
    pub(super) done: AtomicU64,
    /// A failure episode is on (not a lifecycle phase: a failed log still runs, and may recover).
    pub(super) failed: AtomicBool,
    pub(super) failure: Mutex<Failure>,
    /// Highest sequence number of a closed failure episode: a fast "not failed" for every later one.
    pub(super) failed_hi: AtomicU64,
    /// Length of the live file's part that holds durable records (what a failure truncates back to).
    pub(super) durable_pos: AtomicU64,
    pub(super) failing_since: AtomicU64,
    pub(super) write_errors: AtomicU64,
    pub(super) rebuilds: AtomicU64,
    /// The repairer runs: waiters on failed records wait for it to undo them before they are told.
    pub(super) repairing: AtomicBool,
    pub(super) notify: tokio::sync::Notify,
    /// Data written since the last fsync (Everysec).
    unsynced: AtomicBool,
    pub(super) writes: AtomicU64,
    pub(super) fsyncs: AtomicU64,
}

impl Writer {
    /// `file` is the log, opened for appending; nothing is pending until recovery sets `pos`.
    pub(super) fn new(file: File) -> Writer {
        Writer {
            state: Mutex::new(Pending { buf: Vec::new(), next_seq: 1, pos: 0, records: 0, last_stamp: 0 }),
            wake: Condvar::new(),
            io: Mutex::new(Arc::new(file)),
            swapping: AtomicBool::new(false),
            done: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(Failure::default()),
            failed_hi: AtomicU64::new(0),
            durable_pos: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            repairing: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            unsynced: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// Why nothing more can be made durable: the log failed, is closed, or is not recovered yet.
    pub(super) fn unavailable(&self) -> Option<io::Error> {
        if let Some(e) = self.failure_error() {
            return Some(e);
        }
        match self.life.get() {
            Phase::Opened => Some(io::Error::other("log unavailable: not recovered yet")),
            Phase::Closed => Some(io::Error::other("log unavailable: closed")),
            Phase::Running | Phase::Stopping => None,
        }
    }

    /// `Some` once the wait for `seq` is over.
    fn check(&self, seq: u64) -> Option<io::Result<()>> {
        if seq == REJECTED_SEQ {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidInput, "record too large for the log")));
        }
        if let Some(e) = self.failed_seq(seq) {
            return Some(Err(e));
        }
        if self.writer.done.load(Ordering::Acquire) >= seq {
            return Some(Ok(()));
        }
        if self.failed() && self.writer.repairing.load(Ordering::Acquire) && self.life.get() != Phase::Closed {
            // The repairer undoes this record's write, then closes its episode: the error comes then.
            return None;
        }
        self.unavailable().map(Err)
    }

    pub(super) fn sync(&self, f: &File) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.before_sync()?;
        f.sync_data()?;
        self.writer.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn record(&self, rec: &Record<'_>) -> u64 {
        if self.life.get() == Phase::Opened {
            // Replay has not run: appending now would put this record before the log's own tail.
            log::error!("a mutation was recorded before the log was recovered; it is not logged");
            debug_assert!(false, "Journal::record called before Log::recover");
            return REJECTED_SEQ;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            let unstamped = match encode_unstamped(rec, &mut s) {
                Ok(u) => u,
                Err(e) => {
                    log::error!("cannot log a mutation: {e}");
                    return REJECTED_SEQ;
                }
            };
            let now = crate::clock::unix_now_ns_coarse();
            let mut st = lock(&self.writer.state);
            unstamped.stamp(&mut s, st.next_stamp(now));
            let seq = st.next_seq;
            st.next_seq += 1;
            st.records += 1;
            st.pos += s.len() as u64;
            let wake = st.buf.is_empty();
            st.buf.extend_from_slice(&s);
            drop(st);
            if s.capacity() > IO_CHUNK {
                *s = Vec::new();
            }
            // The writer only sleeps (untimed) when the buffer is empty. For `Everysec`/`No` the waiters write
            // their records themselves, so no wake-up (a futex syscall) is spent on it.
            if wake && self.policy == FsyncPolicy::Always {
                self.writer.wake.notify_one();
            }
            seq
        })
    }

    /// Writes everything pending (and for `Always` fsyncs it) and publishes it; the caller holds `io` (`file`).
    /// `batch` is an empty buffer to swap with the pending one; it comes back empty.
    fn write_pending(&self, file: &File, batch: &mut Vec<u8>) {
        let (last, end) = {
            let mut st = lock(&self.writer.state);
            std::mem::swap(&mut st.buf, batch);
            (st.next_seq - 1, st.pos)
        };
        if batch.is_empty() || self.failed() || self.life.get() == Phase::Closed {
            // Drained by a compaction or another writer, or nothing can be made durable any more.
            batch.clear();
            return;
        }
        let res = (&*file).write_all(batch).map_err(|e| ("write", e)).and_then(|()| {
            self.writer.writes.fetch_add(1, Ordering::Relaxed);
            match self.policy {
                FsyncPolicy::Always => self.sync(file).map_err(|e| ("fsync", e)),
                FsyncPolicy::Everysec => {
                    self.writer.unsynced.store(true, Ordering::Release);
                    Ok(())
                }
                FsyncPolicy::No => Ok(()),
            }
        });
        match res {
            Ok(()) => self.publish(last, end),
            Err((what, e)) => self.poison(&format!("{what} {}", self.paths.log.display()), &e),
        }
        batch.clear();
        if batch.capacity() > 16 * IO_CHUNK {
            *batch = Vec::new();
        }
    }

    /// `Everysec`/`No`: makes `seq` written by writing the pending buffer from this thread ("leader" group
    /// write: one `write(2)` covers every record pending, whoever appended it). Waits for a batch in progress
    /// (one page-cache write) on the lock. During a compaction swap it returns false unless `block`.
    fn lead(&self, seq: u64, block: bool) -> bool {
        let file = match self.writer.io.try_lock() {
            Ok(f) => f,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                if !block && self.writer.swapping.load(Ordering::Acquire) {
                    return false;
                }
                lock(&self.writer.io)
            }
        };
        if self.writer.done.load(Ordering::Acquire) < seq {
            BATCH.with(|b| self.write_pending(&file, &mut b.borrow_mut()));
        }
        true
    }

    /// See [`Log::wait_durable`](super::Log::wait_durable).
    pub(super) async fn wait_durable(&self, seq: u64) -> io::Result<()> {
        let lead = self.policy != FsyncPolicy::Always;
        let mut yielded = !lead;
        loop {
            if let Some(r) = self.check(seq) {
                return r;
            }
            if !yielded {
                // Let the other tasks ready on this runtime thread append theirs first: one write covers them all.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            // Everysec/No: write it ourselves rather than waking the writer thread and waiting to be woken
            // (not while failing: nothing is written then; the repairer's notification comes instead).
            if lead && !self.failed() && self.lead(seq, false) {
                continue;
            }
            let notified = self.writer.notify.notified();
            tokio::pin!(notified);
            // Register before re-checking so a publish in between is not missed.
            notified.as_mut().enable();
            if let Some(r) = self.check(seq) {
                return r;
            }
            // A compaction clears `swapping` before its final notify: if it is over, write ourselves.
            if lead && !self.failed() && !self.writer.swapping.load(Ordering::Acquire) {
                continue;
            }
            notified.await;
        }
    }

    /// See [`Log::wait_durable_blocking`](super::Log::wait_durable_blocking).
    pub(super) fn wait_durable_blocking(&self, seq: u64) -> io::Result<()> {
        loop {
            if let Some(r) = self.check(seq) {
                return r;
            }
            if self.failed() {
                std::thread::sleep(Duration::from_millis(1));
            } else if self.policy == FsyncPolicy::Always {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                self.lead(seq, true);
            }
        }
    }

    /// See [`Journal::wait_applied`](crate::record::Journal::wait_applied): durable, or failed (whether or
    /// not its write was undone yet).
    pub(super) fn wait_applied(&self, seq: u64) -> io::Result<()> {
        loop {
            if seq == 0 || self.writer.done.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if let Some(e) = self.unavailable() {
                return Err(e);
            }
            if self.policy == FsyncPolicy::Always {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                self.lead(seq, true);
            }
        }
    }

    /// Wakes the writer thread for [`Phase::Stopping`]. It waits on the append buffer's lock, not the
    /// lifecycle's: taking that lock first means it is either waiting (and woken) or about to see the phase.
    pub(super) fn wake_writer_to_stop(&self) {
        debug_assert!(self.life.stopping());
        drop(lock(&self.writer.state));
        self.writer.wake.notify_all();
    }

    pub(super) fn writer_loop(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut st = lock(&self.writer.state);
                let idle = |st: &mut Pending| st.buf.is_empty() && !self.life.stopping();
                st = if self.policy == FsyncPolicy::Always {
                    self.writer.wake.wait_while(st, idle).unwrap_or_else(|e| e.into_inner())
                } else {
                    // Waiters write their own records; this only catches records nobody waits for.
                    self.writer.wake.wait_timeout_while(st, FLUSH_TICK, idle).unwrap_or_else(|e| e.into_inner()).0
                };
                if self.life.stopping() {
                    break;
                }
                if st.buf.is_empty() {
                    continue;
                }
            }
            let file = lock(&self.writer.io);
            self.write_pending(&file, &mut batch);
        }
        // Stopping: drain, and whatever the policy, what was written reaches the disk. Holding `io` keeps waiters
        // from writing after the final fsync; once the log is `Closed` they no longer try.
        let file = lock(&self.writer.io);
        self.write_pending(&file, &mut batch);
        if !self.failed() && self.policy != FsyncPolicy::Always {
            if let Err(e) = self.sync(&file) {
                self.poison(&format!("fsync {}", self.paths.log.display()), &e);
            }
        }
        // Late waiters (records appended after close) must not hang; they get "closed".
        self.life.advance(Phase::Closed);
        drop(file);
        self.writer.notify.notify_waiters();
    }

    pub(super) fn fsync_loop(&self) {
        while !self.life.sleep(Duration::from_secs(1)) {
            if self.writer.unsynced.swap(false, Ordering::AcqRel) && !self.failed() {
                // A clone of the handle, so the writer keeps writing while this fsync runs.
                let file = lock(&self.writer.io).clone();
                if let Err(e) = self.sync(&file) {
                    self.poison(&format!("fsync {}", self.paths.log.display()), &e);
                }
            }
        }
    }

    /// Marks a compaction swap until the guard is dropped.
    pub(super) fn begin_swap(&self) -> SwapGuard<'_> {
        self.writer.swapping.store(true, Ordering::Release);
        SwapGuard(self)
    }

    pub(super) fn wake_waiters(&self) {
        self.writer.notify.notify_waiters();
    }
}

/// On the way out of a compaction swap (success or not) wakes the waiters that stood aside for it, so they
/// write their records themselves.
pub(super) struct SwapGuard<'a>(&'a Shared);

impl Drop for SwapGuard<'_> {
    fn drop(&mut self) {
        self.0.writer.swapping.store(false, Ordering::Release);
        self.0.writer.notify.notify_waiters();
    }
}
