//! Compaction: rewriting the log as a snapshot of the store plus what was appended meanwhile, on demand
//! ([`Log::compact`](super::Log::compact)) or from a background thread when the log has grown enough.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::format::{encode, file_header, Version, FILE_HEADER_LEN};
use super::{copy_range, lock, sync_dir, Shared, IO_CHUNK};
use crate::record::Snapshot;

/// Default minimum log size before compaction is considered.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 << 20;

/// The outcome of one compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Live items (and pending flushes) written from the snapshot.
    pub live_records: u64,
    /// Snapshot records the format could not hold (skipped, logged).
    pub skipped: u64,
    /// Bytes of the snapshot part, header included.
    pub snapshot_bytes: u64,
    /// Bytes appended to the old log while the snapshot was taken, carried over.
    pub tail_bytes: u64,
    /// Log size before and after.
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// Compaction's own state.
pub(super) struct Compaction {
    /// Serializes compactions (and the repairer's rebuilds).
    pub(super) one: Mutex<()>,
    pub(super) min_bytes: AtomicU64,
    /// Log size after the last compaction (or a failed one), 0 from start-up: the log must double from it
    /// before the next one, so a compaction that carried over a large tail is not repeated at once.
    pub(super) base_size: AtomicU64,
    pub(super) count: AtomicU64,
}

impl Compaction {
    pub(super) fn new() -> Compaction {
        Compaction {
            one: Mutex::new(()),
            min_bytes: AtomicU64::new(DEFAULT_COMPACT_MIN_BYTES),
            base_size: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// The trigger: the log is over the minimum size and more than twice both the live data (`live_bytes`, the
    /// store's estimate) and its size after the last compaction. From start-up only the live data counts, so a
    /// log replayed into far fewer live bytes is compacted right away, not once it has doubled again.
    pub(super) fn needs_compaction(&self, live_bytes: u64) -> bool {
        let pos = lock(&self.writer.state).pos;
        let c = &self.compaction;
        let floor = live_bytes.max(c.base_size.load(Ordering::Relaxed));
        pos > c.min_bytes.load(Ordering::Relaxed) && pos / 2 > floor
    }

    pub(super) fn compact(&self, snap: &dyn Snapshot) -> io::Result<CompactStats> {
        let _one = lock(&self.compaction.one);
        if let Some(e) = self.unavailable() {
            return Err(e);
        }
        let started = Instant::now();
        // Everything from this offset on must be carried over: the snapshot may miss it. The snapshot's records
        // are stamped with this moment, taken in log order, so stamps never decrease along the new file either.
        let now = crate::clock::unix_now_ns_coarse();
        let (mark, stamp) = {
            let mut st = lock(&self.writer.state);
            (st.pos, st.next_stamp(now))
        };
        // Until our rename, this path is the writer's file.
        let old = File::open(&self.paths.log)?;
        let tmp = OpenOptions::new().write(true).create(true).truncate(true).open(&self.paths.tmp)?;
        let res = self.compact_into(snap, &old, tmp, mark, stamp);
        if res.is_err() {
            let _ = fs::remove_file(&self.paths.tmp);
        }
        if let Ok(st) = &res {
            log::info!(
                "log compacted: {} -> {} bytes ({} live items, {} bytes carried over) in {:?}",
                st.old_bytes,
                st.new_bytes,
                st.live_records,
                st.tail_bytes,
                started.elapsed()
            );
        }
        res
    }

    fn compact_into(
        &self,
        snap: &dyn Snapshot,
        old: &File,
        tmp: File,
        mark: u64,
        stamp: u64,
    ) -> io::Result<CompactStats> {
        let mut stats = CompactStats::default();
        let mut w = BufWriter::with_capacity(IO_CHUNK, &tmp);
        let written = self.write_snapshot(snap, &mut w, &mut stats, stamp)?;
        stats.snapshot_bytes = written;
        if self.life.stopping() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "compaction interrupted by shutdown"));
        }
        // Catch up with the old log in passes while the writer keeps going, so the locked part stays short.
        let mut copied = mark;
        for _ in 0..8 {
            let end = old.metadata()?.len();
            if end < copied + IO_CHUNK as u64 {
                break;
            }
            copy_range(old, copied, end, &mut w)?;
            copied = end;
        }
        w.flush()?;
        self.sync(&tmp)?;

        // The swap. Holding `io` waits out the current batch and keeps writers off the old file.
        let _swapping = self.begin_swap();
        let mut live = lock(&self.writer.io);
        if let Some(e) = self.unavailable() {
            return Err(e);
        }
        let (end, pending, last, swap_stamp) = {
            let mut st = lock(&self.writer.state);
            // Records not yet written are all older than `last`; they are either in the snapshot or copied below.
            // Every record carried over is stamped at most `swap_stamp`, every later one at least.
            let now = crate::clock::unix_now_ns_coarse();
            (st.pos - st.buf.len() as u64, st.buf.clone(), st.next_seq - 1, st.next_stamp(now))
        };
        let old_len = old.metadata()?.len();
        if old_len != end {
            return Err(io::Error::other(format!("log is {old_len} bytes, expected {end}; compaction aborted")));
        }
        copy_range(old, copied, end, &mut w)?;
        w.write_all(&pending)?;
        w.flush()?;
        drop(w);
        self.sync(&tmp)?;
        let new_len = tmp.metadata()?.len();
        let kept = self.history_before_swap(swap_stamp)?;
        if let Err(e) = fs::rename(&self.paths.tmp, &self.paths.log) {
            self.history_swap_failed(kept);
            return Err(e);
        }
        // The new file is the log now: the writer must switch to it whatever happens next.
        let dir_synced = sync_dir(&self.paths.dir);
        {
            let mut st = lock(&self.writer.state);
            st.buf.drain(..pending.len());
            st.pos = new_len + st.buf.len() as u64;
        }
        *live = Arc::new(tmp);
        // What a failure would truncate back to: the carried-over pending records are not durable yet.
        self.writer.durable_pos.store(new_len - pending.len() as u64, Ordering::Release);
        if let Err(e) = dir_synced {
            // Which file a crash would leave is unknown, so the carried-over records are not durable.
            self.poison(&format!("fsync directory {}", self.paths.dir.display()), &e);
            return Err(e);
        }
        drop(live);
        self.history_after_swap(swap_stamp);
        self.publish(last, new_len);
        self.compaction.base_size.store(new_len, Ordering::Relaxed);
        self.compaction.count.fetch_add(1, Ordering::Relaxed);
        stats.tail_bytes = new_len - stats.snapshot_bytes;
        stats.old_bytes = end;
        stats.new_bytes = new_len;
        Ok(stats)
    }

    /// Writes the file header and `snap`'s live items, each stamped `stamp`, to `w`; returns the bytes written.
    pub(super) fn write_snapshot(
        &self,
        snap: &dyn Snapshot,
        w: &mut impl Write,
        stats: &mut CompactStats,
        stamp: u64,
    ) -> io::Result<u64> {
        w.write_all(&file_header(Version::CURRENT))?;
        let mut written = FILE_HEADER_LEN as u64;
        let mut err = None;
        let mut scratch = Vec::new();
        snap.for_each_live(&mut |rec| {
            if err.is_some() || self.life.stopping() {
                return;
            }
            scratch.clear();
            match encode(rec, stamp, &mut scratch) {
                Ok(()) => match w.write_all(&scratch) {
                    Ok(()) => {
                        written += scratch.len() as u64;
                        stats.live_records += 1;
                    }
                    Err(e) => err = Some(e),
                },
                Err(e) => {
                    stats.skipped += 1;
                    log::error!("compaction: skipping an item the log cannot hold: {e}");
                }
            }
        });
        err.map_or(Ok(written), Err)
    }

    /// Checks the trigger at once (right after replay, a log much larger than the live data is compacted before
    /// it grows further), then once a second.
    pub(super) fn compactor_loop(&self, snap: &dyn Snapshot) {
        loop {
            let live = snap.live_bytes();
            if !self.failed() && self.needs_compaction(live) {
                log::info!(
                    "compacting the log: {} bytes for about {live} bytes of live items",
                    lock(&self.writer.state).pos
                );
                if let Err(e) = self.compact(snap) {
                    if !self.life.stopping() {
                        log::warn!("log compaction failed: {e}");
                        // Don't retry every second on e.g. ENOSPC: wait for the log to double again.
                        self.compaction.base_size.store(lock(&self.writer.state).pos, Ordering::Relaxed);
                    }
                }
            }
            if self.life.sleep(Duration::from_secs(1)) {
                break;
            }
        }
    }
}
