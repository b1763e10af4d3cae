//! The repairer: ends a failure episode (see `health`) without a restart.
//!
//! 1. Undo: the store restores every key written by a failed record ([`Undo::undo_from`]; it refuses new
//!    writes meanwhile), the file is truncated back to its durable part (so a crash now cannot replay a
//!    failed record), and the episode's range is closed: only now are the failed writes' clients told.
//! 2. Rebuild: the store now holds exactly the acknowledged state, so a fresh log is written from it
//!    (the compaction snapshot: header and live items), fsynced, renamed over `kv.log`, the directory
//!    fsynced, and the writer switched to it. Retried with a growing pause until it succeeds (the disk has
//!    room again, the device is writable again). The old file is never written again: after a failed
//!    fsync the kernel may have dropped its dirty pages, so what it holds is unknown.
//!
//! Then the log is healthy and writes are accepted again.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::compaction::CompactStats;
use super::{lock, sync_dir, Shared, IO_CHUNK};
use crate::record::Undo;

/// First and longest pause between rebuild attempts.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Wakes the repairer when an episode begins.
#[derive(Default)]
pub(super) struct Repair {
    kicked: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    pub(super) fn kick_repair(&self) {
        *lock(&self.repair.kicked) = true;
        self.repair.wake.notify_all();
    }

    /// The repairer thread: waits for a failure, undoes it, rebuilds the log; until the log stops.
    pub(super) fn repair_loop(&self, store: &dyn Undo) {
        loop {
            {
                let k = lock(&self.repair.kicked);
                let mut k = self
                    .repair
                    .wake
                    .wait_timeout_while(k, Duration::from_secs(1), |k| !*k && !self.life.stopping())
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                *k = false;
            }
            if self.failed() {
                self.undo_episode(store);
                self.rebuild_until_healthy(store);
            }
            if self.life.stopping() {
                return;
            }
        }
    }

    /// Step 1: undo, truncate, close the episode.
    fn undo_episode(&self, store: &dyn Undo) {
        let from = lock(&self.writer.failure).from;
        let undone = store.undo_from(from);
        // The store refuses writes now, and every record >= `from` has been undone: the range is final.
        let hi = lock(&self.writer.state).next_seq - 1;
        {
            let file = lock(&self.writer.io);
            let durable = self.writer.durable_pos.load(Ordering::Acquire);
            if let Err(e) = file.set_len(durable) {
                // The rebuild replaces the file anyway; until then a crash could replay failed records.
                log::error!("cannot truncate {} to its durable {durable} bytes: {e}", self.paths.log.display());
            }
        }
        self.close_episode(hi);
        log::warn!("log failure: undid {undone} writes (records {from}..={hi}); rebuilding the log from memory");
    }

    /// Step 2, retried until it works or the log stops.
    fn rebuild_until_healthy(&self, store: &dyn Undo) {
        let mut pause = RETRY_MIN;
        loop {
            if self.life.stopping() {
                return;
            }
            match self.rebuild(store) {
                Ok(bytes) => {
                    self.writer.rebuilds.fetch_add(1, Ordering::Relaxed);
                    log::info!("log rebuilt from memory ({bytes} bytes); accepting writes again");
                    return;
                }
                Err(e) => {
                    let _ = fs::remove_file(&self.paths.tmp);
                    log::debug!("log rebuild failed, retrying in {pause:?}: {e}");
                }
            }
            if self.life.sleep(pause) {
                return;
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Writes the store's live items as a fresh log and switches to it; returns its size.
    fn rebuild(&self, store: &dyn Undo) -> io::Result<u64> {
        let _one = lock(&self.compaction.one);
        let tmp = OpenOptions::new().write(true).create(true).truncate(true).open(&self.paths.tmp)?;
        let mut w = BufWriter::with_capacity(IO_CHUNK, &tmp);
        // Stamped in log order, like a compaction's snapshot: stamps never decrease along the new file.
        let stamp = lock(&self.writer.state).next_stamp(crate::clock::unix_now_ns_coarse());
        self.write_snapshot(store, &mut w, &mut CompactStats::default(), stamp)?;
        w.flush()?;
        drop(w);
        self.sync(&tmp)?;
        let len = tmp.metadata()?.len();
        let _swapping = self.begin_swap();
        let mut live = lock(&self.writer.io);
        if self.life.stopping() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "log stopping"));
        }
        // The new file is exact from `stamp` on; the old one, cut back to its durable part, stays history
        // (as a compaction's swap leaves it), so a recovery to a moment before the failure still finds it.
        let kept = self.history_before_swap(stamp)?;
        if let Err(e) = fs::rename(&self.paths.tmp, &self.paths.log) {
            self.history_swap_failed(kept);
            return Err(e);
        }
        // Until the directory is synced a crash may leave either file: retry (the rename again) until it is.
        sync_dir(&self.paths.dir)?;
        {
            let mut st = lock(&self.writer.state);
            // Only records of the closed episode can be pending: the store refused every later write.
            st.buf.clear();
            st.pos = len;
        }
        *live = Arc::new(tmp);
        self.writer.durable_pos.store(len, Ordering::Release);
        self.compaction.base_size.store(len, Ordering::Relaxed);
        drop(live);
        self.history_after_swap(stamp);
        self.heal();
        Ok(len)
    }
}
