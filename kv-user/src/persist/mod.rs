//! Persistence: an append-only log of [`Record`]s with CRC32, group commit, crash recovery and online compaction.
//!
//! # Life cycle
//! [`Log::open`] takes the directory and opens the log ([`Phase::Opened`]: records are refused);
//! [`Log::recover`] replays it into the store and starts the writer ([`Phase::Running`]), so the store can be
//! built with the log as its journal before replay; [`Log::start_compactor`] adds the background compactor;
//! [`Log::close`] (or drop) stops everything ([`Phase::Stopping`], then [`Phase::Closed`] once the last records
//! are written and fsynced).
//!
//! # Modules
//! `lock` (the directory lock), `recovery` (replay, tail repair, upgrade of an older format), `writer` (append
//! buffer, group commit, the fsync thread, durability waits), `compaction`, `format` (the record format, its only
//! encoder and decoder), `walk` (reading a log file record by record), `history` (former logs kept for
//! point-in-time recovery, start-up repair of an interrupted swap), `rewind` (`--recover-to`), `tools`
//! (`kv-server log`); this module owns
//! the [`Log`] type, its life cycle and the public API.
//!
//! # Files (in the data directory)
//! - `kv.log`: the live log. `kv.log.tmp`: a compaction or format upgrade in progress (removed at start-up if left
//!   over).
//! - `LOCK`: held with `flock(LOCK_EX)` while a server owns the directory; contains its pid.
//! - `kv.log.dropped-<unix time>-at-<offset>`: a copy of bytes cut off at start-up because they were corrupt
//!   (or a torn tail over 64 KiB, which may hide a damaged length field), kept for the operator.
//! - `kv.log.base-<ns>`, `kv.log.hist-<base>-<end>`, `kv.log.undone-<T>-at-<time>/`: the history (`history`).
//!
//! # Format (all integers little-endian)
//! ```text
//! file   := header record*
//! header := magic "KVLOG\0\r\n" (8) | version u32 (= 2) | crc32(magic, version) u32
//! record := len u32 | crc u32 | type u8 | body[len] | stamp u64
//!           crc = crc32 of every byte of the record but the crc field (len, type, body, stamp)
//! body   := Set      (1): klen u8 | key | flags u32 | exptime u64 | cas u64 | time u64 | value (rest of body)
//!         | Touch    (2): klen u8 | key | exptime u64 | cas u64
//!         | Delete   (3): klen u8 | key
//!         | FlushAll (4): at u64 | max_cas u64
//! ```
//! Keys are at most 250 bytes and values at most 1 GiB; a longer `len` is treated as corruption before anything
//! is allocated. Exptimes are absolute, so replay of an old record cannot resurrect an expired item: the store's
//! apply drops it.
//!
//! The stamp is the wall-clock time the record was logged, in unix nanoseconds (read from the coarse clock: the
//! resolution of a timer tick). The writer stamps under its append lock and never below the last stamp (also
//! across restarts), so stamps never decrease along the log and "the log up to time T" is a prefix of it.
//! Compaction stamps its snapshot records with the time the snapshot started.
//!
//! Version 1 (no stamp; otherwise identical) is still read: start-up replays such a log and rewrites it in
//! version 2 (`recovery`), its records stamped 0 ("time unknown", older than any stamped record).

//! # Durability
//! [`Journal::record`] only encodes into an in-memory buffer and returns a sequence number (cheap enough to call
//! under a shard lock). Whoever holds the I/O lock drains the whole buffer with one `write(2)` per batch. The
//! server awaits [`Log::wait_durable`] before replying:
//! - `Always`: resolves once the record is written *and* `fdatasync`ed. A writer thread does both; records
//!   appended while one fsync is in flight all go out in the next batch and share its fsync (group commit).
//! - `Everysec`: resolves once the record has been written to the file; a background thread fsyncs once a second.
//! - `No`: resolves once written; the OS decides when it reaches the disk.
//!
//! For `Everysec` and `No` the waiting task writes the buffer itself (a page-cache write; no hop to the writer
//! thread and back): a waiter first yields once so the other tasks ready on its runtime thread append theirs,
//! then the first to take the I/O lock writes everything pending and later ones find their record written. The writer thread then only picks up records nobody waits for, every few ms.
//!
//! # Failures
//! A failed write or fsync begins a failure episode (`health`): every record not yet durable, and every
//! later one, fails, and the store refuses writes. The repairer (`repair`, [`Log::start_repair`]) has the
//! store undo the failed writes before their clients are told (`SERVER_ERROR`), truncates the file to its
//! durable part, then writes a fresh log from memory (which now holds exactly the acknowledged state) and
//! switches to it, retrying until that works: writes resume by themselves once the disk has room again.
//! The old file is not retried: after a failed fsync the kernel may have dropped its dirty pages.
//!
//! # Compaction
//! [`Log::compact`] (`compaction`) writes the store's live items ([`Snapshot`]) to `kv.log.tmp`, then copies every byte the log
//! received after the snapshot started (records are state-based, so replaying them over the snapshot converges),
//! fsyncs, renames over `kv.log` (keeping the old one as history for [`Log::set_history`]'s window) and fsyncs
//! the directory. The final copy and the switch happen under the I/O lock,
//! which pauses the writers but not [`Journal::record`]; records appended meanwhile go to the new file.
//! Until the rename the old file is complete, so a crash at any point loses nothing acknowledged.
//! Trigger ([`Log::needs_compaction`], checked right after start-up and then once a second): the log is larger than
//! a minimum (64 MiB by default) and more than twice both the live data ([`Snapshot::live_bytes`]) and its size
//! right after the last compaction. After a restart only the live data counts: a large log replayed into little
//! live data is compacted at once.

mod compaction;
mod format;
mod health;
mod history;
mod lock;
mod recovery;
mod repair;
mod rewind;
#[cfg(test)]
mod tests;
pub mod tools;
mod walk;
mod writer;

pub use compaction::{CompactStats, DEFAULT_COMPACT_MIN_BYTES};
pub use format::{
    decode, decode_as, encode, file_header, frame_len, parse_header, Decoded, EncodeError, Entry, HeaderError, Version,
    FILE_HEADER_LEN, FORMAT_VERSION, MAGIC, MAX_BODY_LEN, MAX_KEY_LEN, MAX_VALUE_LEN, RECORD_HEADER_LEN, STAMP_LEN,
};
pub use health::Health;
pub use recovery::Recovery;
pub use rewind::{Outcome as RewindOutcome, Rewind};
pub use writer::REJECTED_SEQ;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::record::{Journal, Record, Snapshot, Undo};

const LOG_FILE: &str = "kv.log";
const TMP_FILE: &str = "kv.log.tmp";

const IO_CHUNK: usize = 1 << 20;

/// When the log is flushed to stable storage (see "Durability" above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before every reply to a write (group commit: concurrent writers share one fsync).
    Always,
    /// fsync in the background once a second.
    Everysec,
    /// Leave it to the OS.
    No,
}

/// What [`Log::open`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
}

/// Counters for `stats` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended since start-up.
    pub records: u64,
    /// `write(2)` batches and explicit fsyncs of the live log.
    pub writes: u64,
    pub fsyncs: u64,
    pub compactions: u64,
    /// Current size of the log, including bytes not yet written.
    pub log_bytes: u64,
    /// Highest sequence number that is durable in the sense of [`Log::wait_durable`].
    pub durable_seq: u64,
}

/// Where a [`Log`] is in its life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// [`Log::open`] took the directory and opened the file. Nothing is replayed yet; records are refused.
    Opened = 0,
    /// [`Log::recover`] replayed the log and started the writer: records are accepted.
    Running = 1,
    /// [`Log::close`] was called: the background threads wind down, the writer drains what was recorded.
    Stopping = 2,
    /// The writer's final drain and fsync are done; nothing more reaches the file, and waits on records not
    /// written by then fail.
    Closed = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Opened,
            1 => Phase::Running,
            2 => Phase::Stopping,
            _ => Phase::Closed,
        }
    }
}

/// The one place that says where the log is in its life, with a wake-up for the threads that sleep until it
/// stops.
struct Lifecycle {
    phase: AtomicU8,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Lifecycle {
    fn new() -> Lifecycle {
        Lifecycle { phase: AtomicU8::new(Phase::Opened as u8), lock: Mutex::new(()), changed: Condvar::new() }
    }

    fn get(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// `Stopping` or `Closed`.
    fn stopping(&self) -> bool {
        self.get() >= Phase::Stopping
    }

    /// Moves forward to `to` (never back) and wakes the sleepers; returns the phase it was in.
    fn advance(&self, to: Phase) -> Phase {
        let prev = {
            let _g = lock(&self.lock);
            self.phase.fetch_max(to as u8, Ordering::AcqRel)
        };
        self.changed.notify_all();
        Phase::from_u8(prev)
    }

    /// Sleeps up to `d`, waking early when the log starts stopping; true if it is.
    fn sleep(&self, d: Duration) -> bool {
        let g = lock(&self.lock);
        let _g = self.changed.wait_timeout_while(g, d, |_| !self.stopping()).unwrap_or_else(|e| e.into_inner());
        self.stopping()
    }
}

/// Where the log's files are.
struct Paths {
    dir: PathBuf,
    log: PathBuf,
    tmp: PathBuf,
}

/// State shared between the [`Log`] handle, its threads and the tasks waiting on it.
struct Shared {
    paths: Paths,
    policy: FsyncPolicy,
    life: Lifecycle,
    writer: writer::Writer,
    compaction: compaction::Compaction,
    repair: repair::Repair,
    history: history::History,
    /// Dropping it releases the directory.
    _dir_lock: lock::DirLock,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// The append-only log. Cheap [`Journal::record`], async [`Log::wait_durable`], background writer threads.
pub struct Log {
    shared: Arc<Shared>,
    /// The writer, fsync and compactor threads; joined by [`Log::close`].
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Log {
    /// Creates the directory if needed, takes its lock, removes a leftover compaction file and opens the log
    /// (creating an empty one if there is none). Records are refused until [`Log::recover`].
    pub fn open(opts: &LogOptions) -> anyhow::Result<Arc<Log>> {
        let dir = &opts.dir;
        create_dir_durably(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let dir_lock = lock::DirLock::acquire(dir)?;
        let paths = Paths { dir: dir.clone(), log: dir.join(LOG_FILE), tmp: dir.join(TMP_FILE) };
        let base = history::tidy(&paths)?;
        let file = recovery::open_log_file(&paths)?;
        let shared = Shared {
            paths,
            policy: opts.fsync,
            life: Lifecycle::new(),
            writer: writer::Writer::new(file),
            compaction: compaction::Compaction::new(),
            repair: Default::default(),
            history: history::History::new(base),
            _dir_lock: dir_lock,
            #[cfg(test)]
            hooks: Default::default(),
        };
        Ok(Arc::new(Log { shared: Arc::new(shared), threads: Mutex::new(Vec::new()) }))
    }

    /// `--recover-to`: makes the log end at `to_ns` (unix ns), setting aside what was logged after it, so that
    /// [`Log::recover`] restores the state as of that moment (`rewind`). Refuses a moment older than the history
    /// kept. Runs before [`Log::recover`].
    pub fn rewind(&self, to_ns: u64) -> anyhow::Result<Rewind> {
        let _threads = lock(&self.threads);
        if self.phase() != Phase::Opened {
            bail!("the log in {} is already replayed: too late to rewind it", self.shared.paths.dir.display());
        }
        self.shared.rewind(to_ns)
    }

    /// Keeps former logs for `window` after compaction replaces them (`history`; zero keeps none), and drops
    /// those already older than that.
    pub fn set_history(&self, window: Duration) -> io::Result<()> {
        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.shared.history.window_ns.store(ns, Ordering::Relaxed);
        self.shared.expire_history()
    }

    /// Replays the log into `apply`, repairs a torn or corrupt tail and starts the writer (and, for
    /// `Everysec`, the fsync) thread; from then on the log accepts records. Runs once, after [`Log::open`].
    pub fn recover(&self, apply: &mut dyn FnMut(&Record<'_>)) -> anyhow::Result<Recovery> {
        let sh = &self.shared;
        // Held throughout: close() waits for a recovery in progress rather than racing its thread start.
        let mut threads = lock(&self.threads);
        if sh.life.get() != Phase::Opened {
            bail!("cannot recover the log in {}: it is {:?}", sh.paths.dir.display(), sh.life.get());
        }
        let recovery = {
            let mut file = lock(&sh.writer.io);
            let (recovery, replaced) = recovery::replay(&sh.paths, &file, apply)?;
            if let Some(f) = replaced {
                *file = Arc::new(f);
            }
            recovery
        };
        {
            let mut st = lock(&sh.writer.state);
            st.pos = recovery.bytes;
            st.last_stamp = recovery.last_stamp_ns;
        }
        sh.writer.durable_pos.store(recovery.bytes, Ordering::Release);
        let mut started = self.spawn(&mut threads, "kv-log-writer", Shared::writer_loop);
        if started.is_ok() && sh.policy == FsyncPolicy::Everysec {
            started = self.spawn(&mut threads, "kv-log-fsync", Shared::fsync_loop);
        }
        drop(threads);
        if let Err(e) = started {
            self.close();
            return Err(e);
        }
        sh.life.advance(Phase::Running);
        Ok(recovery)
    }

    fn spawn(&self, threads: &mut Vec<JoinHandle<()>>, name: &str, run: fn(&Shared)) -> anyhow::Result<()> {
        let sh = self.shared.clone();
        let t = std::thread::Builder::new().name(name.into()).spawn(move || run(&sh));
        threads.push(t.with_context(|| format!("cannot start the log thread {name}"))?);
        Ok(())
    }

    /// Where the log is in its life.
    pub fn phase(&self) -> Phase {
        self.shared.life.get()
    }

    /// Waits until record `seq` (from [`Journal::record`]) is durable: fsynced for `Always`, written to the file
    /// for `Everysec` and `No`. `seq == 0` returns at once. Errors if the log failed or was closed first, or for
    /// [`REJECTED_SEQ`]. Lock-free when already durable; otherwise waiters share one `Notify`.
    pub async fn wait_durable(&self, seq: u64) -> io::Result<()> {
        self.shared.wait_durable(seq).await
    }

    /// Blocking variant of [`Log::wait_durable`] for non-async callers.
    pub fn wait_durable_blocking(&self, seq: u64) -> io::Result<()> {
        self.shared.wait_durable_blocking(seq)
    }

    /// True when the log has grown past the compaction threshold, given about `live_bytes` of live data
    /// ([`Snapshot::live_bytes`]).
    pub fn needs_compaction(&self, live_bytes: u64) -> bool {
        self.shared.needs_compaction(live_bytes)
    }

    /// Sets the minimum log size for [`Log::needs_compaction`] (default [`DEFAULT_COMPACT_MIN_BYTES`]).
    pub fn set_compaction_min_bytes(&self, bytes: u64) {
        self.shared.compaction.min_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Rewrites the log as `snapshot`'s live items plus whatever was appended meanwhile, and swaps it in
    /// atomically. Blocks for the duration (run it off the async runtime); serialized with other compactions.
    pub fn compact(&self, snapshot: &dyn Snapshot) -> io::Result<CompactStats> {
        self.shared.compact(snapshot)
    }

    /// Starts a thread that checks the threshold at once and then once a second, and compacts from `snapshot`;
    /// it stops on close. Call it after [`Log::recover`].
    pub fn start_compactor(&self, snapshot: Arc<dyn Snapshot>) -> io::Result<()> {
        let mut threads = lock(&self.threads);
        match self.phase() {
            Phase::Opened => Err(io::Error::other("the log compactor starts after recovery")),
            // close() has taken (or is about to take) the threads: nothing left to compact.
            Phase::Stopping | Phase::Closed => Ok(()),
            Phase::Running => {
                let sh = self.shared.clone();
                let run = move || sh.compactor_loop(&*snapshot);
                threads.push(std::thread::Builder::new().name("kv-log-compact".into()).spawn(run)?);
                Ok(())
            }
        }
    }

    /// Starts the repairer (see "Failures" above): after a failed write it has `store` undo the failed
    /// writes, then rebuilds the log from `store` until that works. Without it a failure lasts until restart
    /// and its waiters are told at once. Call it after [`Log::recover`].
    pub fn start_repair(&self, store: Arc<dyn Undo>) -> io::Result<()> {
        let mut threads = lock(&self.threads);
        match self.phase() {
            Phase::Opened => Err(io::Error::other("the log repairer starts after recovery")),
            Phase::Stopping | Phase::Closed => Ok(()),
            Phase::Running => {
                let sh = self.shared.clone();
                sh.writer.repairing.store(true, Ordering::Release);
                let run = move || sh.repair_loop(&*store);
                threads.push(std::thread::Builder::new().name("kv-log-repair".into()).spawn(run)?);
                Ok(())
            }
        }
    }

    /// Whether the log is failing, since when and why (`stats`, `/metrics`).
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    pub fn stats(&self) -> LogStats {
        let w = &self.shared.writer;
        let (records, log_bytes) = {
            let st = lock(&w.state);
            (st.records, st.pos)
        };
        LogStats {
            records,
            writes: w.writes.load(Ordering::Relaxed),
            fsyncs: w.fsyncs.load(Ordering::Relaxed),
            compactions: self.shared.compaction.count.load(Ordering::Relaxed),
            log_bytes,
            durable_seq: w.done.load(Ordering::Acquire),
        }
    }

    /// Writes and fsyncs everything recorded so far and stops the background threads. Idempotent; also run on
    /// drop. Records appended afterwards are not logged (waiting on them fails).
    pub fn close(&self) {
        let sh = &self.shared;
        if sh.life.advance(Phase::Stopping) >= Phase::Stopping {
            return;
        }
        sh.wake_writer_to_stop();
        sh.kick_repair();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            if t.join().is_err() {
                log::error!("a log thread panicked");
            }
        }
        // The writer thread's last step; here too for a log closed before recovery (no writer thread ran).
        sh.life.advance(Phase::Closed);
        sh.wake_waiters();
    }
}

impl Journal for Log {
    fn record(&self, rec: &Record<'_>) -> u64 {
        self.shared.record(rec)
    }

    fn can_fail(&self) -> bool {
        true
    }

    fn refusing(&self) -> bool {
        self.shared.failed()
    }

    fn durable_seq(&self) -> u64 {
        self.shared.writer.done.load(Ordering::Acquire)
    }

    fn wait_applied(&self, seq: u64) -> io::Result<()> {
        self.shared.wait_applied(seq)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take persistence down with it; the protected data stays consistent
    // because every critical section here is panic-free in practice.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, with the directory holding each new directory fsynced: a new name is durable only once
/// its directory is, so without it a power loss could take the whole data directory, log included, however
/// often the log itself was fsynced. (Found by tests/tests/power_loss.rs.)
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_durably(parent)?;
    match fs::create_dir(dir) {
        Err(e) if !(e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir()) => return Err(e),
        _ => {}
    }
    sync_dir(parent)
}

/// Copies `[from, to)` of `src` into `dst`.
fn copy_range(src: &File, from: u64, to: u64, dst: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; IO_CHUNK.min(to.saturating_sub(from) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], at)?;
        dst.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}
