//! Persistence: an append-only log of [`Record`]s with CRC32, group commit, crash recovery and online compaction.
//!
//! # Files (in the data directory)
//! - `kv.log`: the live log. `kv.log.tmp`: a compaction in progress (removed at start-up if left over).
//! - `LOCK`: held with `flock(LOCK_EX)` while a server owns the directory; contains its pid.
//! - `kv.log.dropped-<unix time>-at-<offset>`: a copy of bytes cut off at start-up because they were corrupt
//!   (or a torn tail over 64 KiB, which may hide a damaged length field), kept for the operator.
//!
//! # Format (all integers little-endian)
//! ```text
//! file   := header record*
//! header := magic "KVLOG\0\r\n" (8) | version u32 (= 1) | crc32(magic, version) u32
//! record := len u32 | crc u32 | type u8 | body[len]       crc = crc32(len bytes, type, body)
//! body   := Set      (1): klen u8 | key | flags u32 | exptime u64 | cas u64 | time u64 | value (rest of body)
//!         | Touch    (2): klen u8 | key | exptime u64 | cas u64
//!         | Delete   (3): klen u8 | key
//!         | FlushAll (4): at u64 | max_cas u64
//! ```
//! Keys are at most 250 bytes and values at most 1 GiB; a longer `len` is treated as corruption before anything
//! is allocated. Exptimes are absolute, so replay of an old record cannot resurrect an expired item: the store's
//! apply drops it.
//!
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
//! A failed write or fsync poisons the log: every record not yet durable, and every later one, gets an error
//! (the server replies `SERVER_ERROR`). After a failed fsync the kernel may have dropped the dirty pages, so
//! retrying cannot be trusted; a restart recovers from what is on disk.
//!
//! # Compaction
//! [`Log::compact`] writes the store's live items ([`Snapshot`]) to `kv.log.tmp`, then copies every byte the log
//! received after the snapshot started (records are state-based, so replaying them over the snapshot converges),
//! fsyncs, renames over `kv.log` and fsyncs the directory. The final copy and the switch happen under the I/O lock,
//! which pauses the writers but not [`Journal::record`]; records appended meanwhile go to the new file.
//! Until the rename the old file is complete, so a crash at any point loses nothing acknowledged.
//! Trigger ([`Log::needs_compaction`]): the log is larger than a minimum (64 MiB by default) and more than twice
//! its size right after the last compaction (or after start-up).

mod format;
#[cfg(test)]
mod tests;

pub use format::{
    decode, encode, file_header, Decoded, EncodeError, FILE_HEADER_LEN, FORMAT_VERSION, MAGIC, MAX_BODY_LEN,
    MAX_KEY_LEN, MAX_VALUE_LEN, RECORD_HEADER_LEN,
};

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

use crate::config::FsyncPolicy;
use crate::record::{Journal, Record, Snapshot};

const LOG_FILE: &str = "kv.log";
const TMP_FILE: &str = "kv.log.tmp";
const LOCK_FILE: &str = "LOCK";

/// Default minimum log size before compaction is considered.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 << 20;
/// Returned by [`Journal::record`] for a record the format cannot hold; waiting on it yields an error.
pub const REJECTED_SEQ: u64 = u64::MAX;

const IO_CHUNK: usize = 1 << 20;
/// `Everysec`/`No`: how often the writer thread writes records nobody is waiting for (waiters write their own).
const FLUSH_TICK: Duration = Duration::from_millis(10);

/// What start-up found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records replayed.
    pub records: u64,
    /// Size of the log file after recovery (header included).
    pub bytes: u64,
    /// Bytes cut off the end (a torn or corrupt tail).
    pub dropped_bytes: u64,
    /// Why they were cut, with the offset; `None` if the log was intact.
    pub dropped_reason: Option<String>,
}

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

/// State shared between `record()` callers, the writer thread and compaction; guarded by `Shared::state`.
struct Pending {
    /// Encoded records not yet handed to the writer.
    buf: Vec<u8>,
    /// Sequence number of the next record (the first is 1, so 0 means "nothing to wait for").
    next_seq: u64,
    /// Length the log file will have once `buf` is written.
    pos: u64,
    records: u64,
    closing: bool,
}

struct Shared {
    dir: PathBuf,
    path: PathBuf,
    tmp_path: PathBuf,
    policy: FsyncPolicy,
    state: Mutex<Pending>,
    wake_writer: Condvar,
    /// The live log file. Held by whoever writes a batch (the writer thread, or for `Everysec`/`No` a waiting
    /// task) and by compaction for the swap; lock order is `io` before `state`.
    io: Mutex<Arc<File>>,
    /// A compaction holds (or is about to take) `io` for its swap, which can take milliseconds: async waiters
    /// wait for its publish instead of blocking a runtime thread on the lock.
    swapping: AtomicBool,
    /// Highest seq written (and for `Always` fsynced).
    done: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<String>,
    notify: tokio::sync::Notify,
    /// Data written since the last fsync (Everysec).
    unsynced: AtomicBool,
    /// Stops the background threads.
    stop: Mutex<bool>,
    /// Set by close(); lets a compaction give up early.
    closing: AtomicBool,
    stop_cv: Condvar,
    compact_lock: Mutex<()>,
    compact_min: AtomicU64,
    /// Log size after the last compaction or start-up.
    base_size: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    compactions: AtomicU64,
    /// Dropping it releases the flock.
    _dir_lock: File,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// The append-only log. Cheap [`Journal::record`], async [`Log::wait_durable`], background writer threads.
pub struct Log {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take persistence down with it; the protected data stays consistent
    // because every critical section here is panic-free in practice.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Takes an exclusive, non-blocking flock on `dir/LOCK` and writes our pid into it.
fn lock_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut owner = String::new();
            let _ = f.read_to_string(&mut owner);
            bail!(
                "data directory {} is in use by another server (lock {} held by pid {})",
                dir.display(),
                path.display(),
                owner.trim()
            );
        }
        return Err(err).with_context(|| format!("cannot lock {}", path.display()));
    }
    f.set_len(0)?;
    f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
    Ok(f)
}

/// Creates an empty log (header only) atomically: a crash leaves either no log or a valid one.
fn create_log(dir: &Path, path: &Path, tmp: &Path) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
    f.write_all(&file_header())?;
    f.sync_all()?;
    fs::rename(tmp, path)?;
    sync_dir(dir)
}

/// Checks the file header. `Ok(false)` means the file is a torn prefix of a header (crash during creation).
fn check_header(file: &mut File, path: &Path) -> anyhow::Result<bool> {
    let mut h = Vec::with_capacity(FILE_HEADER_LEN);
    Read::by_ref(file).take(FILE_HEADER_LEN as u64).read_to_end(&mut h)?;
    let want = file_header();
    if h.len() < FILE_HEADER_LEN && want.starts_with(&h) {
        return Ok(false);
    }
    if h.len() < FILE_HEADER_LEN || h[..8] != MAGIC {
        bail!("{} is not a kv log file (bad magic); refusing to touch it", path.display());
    }
    if h[8..12] != want[8..12] {
        let v = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        bail!("{} has log format version {v}, this server reads version {FORMAT_VERSION}", path.display());
    }
    if h[12..] != want[12..] {
        bail!("{}: file header checksum mismatch; refusing to touch it", path.display());
    }
    Ok(true)
}

/// Outcome of scanning the records of a log.
struct Scan {
    records: u64,
    valid_end: u64,
    /// Reason and whether it was corruption (as opposed to a torn tail).
    stop: Option<(String, bool)>,
}

/// Replays records from `file` (positioned after the header), reading in chunks so memory stays bounded by the
/// largest record actually present.
fn scan(file: &mut File, apply: &mut dyn FnMut(&Record<'_>)) -> io::Result<Scan> {
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0usize;
    let mut offset = FILE_HEADER_LEN as u64;
    let mut records = 0u64;
    let mut eof = false;
    loop {
        match decode(&buf[start..]) {
            Decoded::Ok(rec, n) => {
                apply(&rec);
                records += 1;
                start += n;
                offset += n as u64;
            }
            Decoded::Incomplete if !eof => {
                buf.drain(..start);
                start = 0;
                let have = buf.len();
                buf.resize(have + IO_CHUNK, 0);
                let n = loop {
                    match file.read(&mut buf[have..]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                buf.truncate(have + n);
                eof = n == 0;
            }
            Decoded::Incomplete => {
                let left = buf.len() - start;
                let stop = (left > 0).then(|| (format!("torn record at offset {offset} ({left} bytes)"), false));
                return Ok(Scan { records, valid_end: offset, stop });
            }
            Decoded::Corrupt(why) => {
                let stop = Some((format!("corrupt record at offset {offset}: {why}"), true));
                return Ok(Scan { records, valid_end: offset, stop });
            }
        }
    }
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

/// A torn tail longer than this is treated like corruption (a copy is kept): one torn batch is rarely this big,
/// and a flipped length field can make a mid-file record look torn.
const SUSPICIOUS_TORN_BYTES: u64 = 64 << 10;

fn is_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut zero = true;
    let mut check = ZeroCheck(&mut zero);
    copy_range(file, from, to, &mut check)?;
    Ok(zero)
}

struct ZeroCheck<'a>(&'a mut bool);

impl Write for ZeroCheck<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        *self.0 &= b.iter().all(|&x| x == 0);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Cuts the log at `valid_end`, keeping a copy of suspicious bytes for the operator. Returns the number of bytes
/// dropped and the reason to report.
fn repair_tail(
    dir: &Path,
    path: &Path,
    file: &File,
    file_len: u64,
    valid_end: u64,
    reason: String,
    corrupt: bool,
) -> anyhow::Result<(u64, String)> {
    let dropped = file_len - valid_end;
    let ctx = || format!("cannot repair {}", path.display());
    let mut reason = reason;
    let mut keep_copy = corrupt || dropped > SUSPICIOUS_TORN_BYTES;
    // Preallocated or never-written pages after a crash: common and harmless.
    if keep_copy && is_zero(file, valid_end, file_len).with_context(ctx)? {
        reason = format!("zero-filled tail at offset {valid_end} ({dropped} bytes)");
        keep_copy = false;
    }
    if keep_copy {
        // Nothing after a bad record can be trusted (there is no resync marker), so acknowledged writes may be
        // lost here: say so loudly and keep the bytes.
        let keep = dir.join(format!("{LOG_FILE}.dropped-{}-at-{valid_end}", unix_now()));
        let saved =
            File::create(&keep).and_then(|mut out| copy_range(file, valid_end, file_len, &mut out).and(out.sync_all()));
        let copy = match saved {
            Ok(()) => format!("copy kept in {}", keep.display()),
            Err(e) => format!("could not keep a copy: {e}"),
        };
        log::warn!(
            "{}: {reason}; DROPPING {dropped} bytes from offset {valid_end} to {file_len} ({copy})",
            path.display()
        );
    } else {
        log::warn!("{}: {reason}; truncating to {valid_end} (dropping {dropped} bytes)", path.display());
    }
    file.set_len(valid_end).with_context(ctx)?;
    file.sync_all().with_context(ctx)?;
    Ok((dropped, reason))
}

thread_local! {
    /// Encoding happens outside the append lock; this avoids an allocation per record.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Swapped with the pending buffer by a waiter that writes it itself (`Everysec`/`No`).
    static BATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Opens (or creates) the log in `dir`, replays it into `apply`, repairs a torn or corrupt tail and starts the
/// writer (and, for `Everysec`, the fsync) thread.
pub fn open(
    dir: &Path,
    policy: FsyncPolicy,
    apply: &mut dyn FnMut(&Record<'_>),
) -> anyhow::Result<(Arc<Log>, Recovery)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let dir_lock = lock_dir(dir)?;
    let path = dir.join(LOG_FILE);
    let tmp_path = dir.join(TMP_FILE);
    if tmp_path.exists() {
        log::warn!("removing {} left by an interrupted compaction", tmp_path.display());
        fs::remove_file(&tmp_path).with_context(|| format!("cannot remove {}", tmp_path.display()))?;
    }
    if !path.exists() {
        create_log(dir, &path, &tmp_path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut recovery = Recovery::default();
    if !check_header(&mut file, &path)? {
        log::warn!("{}: torn file header ({file_len} bytes), starting an empty log", path.display());
        drop(file);
        create_log(dir, &path, &tmp_path)?;
        file = OpenOptions::new().read(true).write(true).open(&path)?;
        recovery.dropped_bytes = file_len;
        recovery.dropped_reason = Some(format!("torn file header ({file_len} bytes)"));
    } else {
        let s = scan(&mut file, apply).with_context(|| format!("cannot read {}", path.display()))?;
        recovery.records = s.records;
        if let Some((reason, corrupt)) = s.stop {
            let (dropped, reason) = repair_tail(dir, &path, &file, file_len, s.valid_end, reason, corrupt)?;
            recovery.dropped_bytes = dropped;
            recovery.dropped_reason = Some(reason);
        }
    }
    drop(file);
    // O_APPEND: every batch lands at the end whatever happened to the offset.
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    let len = file.metadata()?.len();
    recovery.bytes = len;

    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        path,
        tmp_path,
        policy,
        state: Mutex::new(Pending { buf: Vec::new(), next_seq: 1, pos: len, records: 0, closing: false }),
        wake_writer: Condvar::new(),
        io: Mutex::new(Arc::new(file)),
        swapping: AtomicBool::new(false),
        done: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        failure: Mutex::new(String::new()),
        notify: tokio::sync::Notify::new(),
        unsynced: AtomicBool::new(false),
        stop: Mutex::new(false),
        closing: AtomicBool::new(false),
        stop_cv: Condvar::new(),
        compact_lock: Mutex::new(()),
        compact_min: AtomicU64::new(DEFAULT_COMPACT_MIN_BYTES),
        base_size: AtomicU64::new(len),
        writes: AtomicU64::new(0),
        fsyncs: AtomicU64::new(0),
        compactions: AtomicU64::new(0),
        _dir_lock: dir_lock,
        #[cfg(test)]
        hooks: Default::default(),
    });
    let mut threads = Vec::new();
    let sh = shared.clone();
    threads.push(
        std::thread::Builder::new()
            .name("kv-log-writer".into())
            .spawn(move || sh.writer_loop())
            .context("cannot start the log writer thread")?,
    );
    if policy == FsyncPolicy::Everysec {
        let sh = shared.clone();
        let t = std::thread::Builder::new().name("kv-log-fsync".into()).spawn(move || sh.fsync_loop());
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                let log = Log { shared, threads: Mutex::new(threads), closed: AtomicBool::new(false) };
                log.close();
                return Err(e).context("cannot start the log fsync thread");
            }
        }
    }
    let log = Arc::new(Log { shared, threads: Mutex::new(threads), closed: AtomicBool::new(false) });
    Ok((log, recovery))
}

impl Shared {
    fn poison(&self, what: &str, e: &io::Error) {
        {
            let mut f = lock(&self.failure);
            if f.is_empty() {
                *f = format!("{what}: {e}");
            }
        }
        if !self.failed.swap(true, Ordering::AcqRel) {
            log::error!("persistence failed, refusing further writes until restart: {what}: {e}");
        }
        self.notify.notify_waiters();
    }

    fn failure(&self) -> io::Error {
        io::Error::other(format!("log unavailable: {}", lock(&self.failure)))
    }

    fn publish(&self, seq: u64) {
        self.done.fetch_max(seq, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// `Some` once the wait for `seq` is over.
    fn check(&self, seq: u64) -> Option<io::Result<()>> {
        if seq == REJECTED_SEQ {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidInput, "record too large for the log")));
        }
        if self.done.load(Ordering::Acquire) >= seq {
            return Some(Ok(()));
        }
        if self.failed.load(Ordering::Acquire) {
            return Some(Err(self.failure()));
        }
        None
    }

    fn sync(&self, f: &File) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.before_sync()?;
        f.sync_data()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn record(&self, rec: &Record<'_>) -> u64 {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            if let Err(e) = encode(rec, &mut s) {
                log::error!("cannot log a mutation: {e}");
                return REJECTED_SEQ;
            }
            let mut st = lock(&self.state);
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
                self.wake_writer.notify_one();
            }
            seq
        })
    }

    /// Writes everything pending (and for `Always` fsyncs it) and publishes it; the caller holds `io` (`file`).
    /// `batch` is an empty buffer to swap with the pending one; it comes back empty.
    fn write_pending(&self, file: &File, batch: &mut Vec<u8>) {
        let last = {
            let mut st = lock(&self.state);
            std::mem::swap(&mut st.buf, batch);
            st.next_seq - 1
        };
        if batch.is_empty() || self.failed.load(Ordering::Acquire) {
            // Drained by a compaction or another writer, or nothing can be made durable any more.
            batch.clear();
            return;
        }
        let res = (&*file).write_all(batch).map_err(|e| ("write", e)).and_then(|()| {
            self.writes.fetch_add(1, Ordering::Relaxed);
            match self.policy {
                FsyncPolicy::Always => self.sync(file).map_err(|e| ("fsync", e)),
                FsyncPolicy::Everysec => {
                    self.unsynced.store(true, Ordering::Release);
                    Ok(())
                }
                FsyncPolicy::No => Ok(()),
            }
        });
        match res {
            Ok(()) => self.publish(last),
            Err((what, e)) => self.poison(&format!("{what} {}", self.path.display()), &e),
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
        let file = match self.io.try_lock() {
            Ok(f) => f,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                if !block && self.swapping.load(Ordering::Acquire) {
                    return false;
                }
                lock(&self.io)
            }
        };
        if self.done.load(Ordering::Acquire) < seq {
            BATCH.with(|b| self.write_pending(&file, &mut b.borrow_mut()));
        }
        true
    }

    fn writer_loop(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut st = lock(&self.state);
                if self.policy == FsyncPolicy::Always {
                    while st.buf.is_empty() && !st.closing {
                        st = self.wake_writer.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                } else {
                    // Waiters write their own records; this only catches records nobody waits for.
                    st = self
                        .wake_writer
                        .wait_timeout_while(st, FLUSH_TICK, |st| st.buf.is_empty() && !st.closing)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if st.closing {
                    break;
                }
                if st.buf.is_empty() {
                    continue;
                }
            }
            let file = lock(&self.io);
            self.write_pending(&file, &mut batch);
        }
        // Closing: drain, and whatever the policy, what was written reaches the disk. Holding `io` keeps waiters
        // from writing after the final fsync; once `failed` is set they no longer try.
        let file = lock(&self.io);
        self.write_pending(&file, &mut batch);
        if !self.failed.load(Ordering::Acquire) && self.policy != FsyncPolicy::Always {
            if let Err(e) = self.sync(&file) {
                self.poison(&format!("fsync {}", self.path.display()), &e);
            }
        }
        // Late waiters (records appended after close) must not hang; not an error worth logging.
        {
            let mut f = lock(&self.failure);
            if f.is_empty() {
                *f = "closed".into();
            }
        }
        self.failed.store(true, Ordering::Release);
        drop(file);
        self.notify.notify_waiters();
    }

    /// Sleeps up to `d`; true if the log is stopping.
    fn sleep(&self, d: Duration) -> bool {
        let g = lock(&self.stop);
        let (g, _) = self.stop_cv.wait_timeout_while(g, d, |stop| !*stop).unwrap_or_else(|e| e.into_inner());
        *g
    }

    fn stopping(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn fsync_loop(&self) {
        while !self.sleep(Duration::from_secs(1)) {
            if self.unsynced.swap(false, Ordering::AcqRel) && !self.failed.load(Ordering::Acquire) {
                // A clone of the handle, so the writer keeps writing while this fsync runs.
                let file = lock(&self.io).clone();
                if let Err(e) = self.sync(&file) {
                    self.poison(&format!("fsync {}", self.path.display()), &e);
                }
            }
        }
    }

    fn needs_compaction(&self) -> bool {
        let pos = lock(&self.state).pos;
        pos > self.compact_min.load(Ordering::Relaxed) && pos > 2 * self.base_size.load(Ordering::Relaxed)
    }

    fn compact(&self, snap: &dyn Snapshot) -> io::Result<CompactStats> {
        let _one = lock(&self.compact_lock);
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failure());
        }
        let started = Instant::now();
        // Everything from this offset on must be carried over: the snapshot may miss it.
        let mark = lock(&self.state).pos;
        // Until our rename, this path is the writer's file.
        let old = File::open(&self.path)?;
        let tmp = OpenOptions::new().write(true).create(true).truncate(true).open(&self.tmp_path)?;
        let res = self.compact_into(snap, &old, tmp, mark);
        if res.is_err() {
            let _ = fs::remove_file(&self.tmp_path);
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

    fn compact_into(&self, snap: &dyn Snapshot, old: &File, tmp: File, mark: u64) -> io::Result<CompactStats> {
        let mut stats = CompactStats::default();
        let mut w = BufWriter::with_capacity(IO_CHUNK, &tmp);
        w.write_all(&file_header())?;
        let mut written = FILE_HEADER_LEN as u64;
        let mut err = None;
        let mut scratch = Vec::new();
        snap.for_each_live(&mut |rec| {
            if err.is_some() || self.stopping() {
                return;
            }
            scratch.clear();
            match encode(rec, &mut scratch) {
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
        if let Some(e) = err {
            return Err(e);
        }
        stats.snapshot_bytes = written;
        if self.stopping() {
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
        let _swapping = SwapGuard::new(self);
        let mut live = lock(&self.io);
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failure());
        }
        let (end, pending, last) = {
            let st = lock(&self.state);
            // Records not yet written are all older than `last`; they are either in the snapshot or copied below.
            (st.pos - st.buf.len() as u64, st.buf.clone(), st.next_seq - 1)
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
        fs::rename(&self.tmp_path, &self.path)?;
        // The new file is the log now: the writer must switch to it whatever happens next.
        let dir_synced = sync_dir(&self.dir);
        {
            let mut st = lock(&self.state);
            st.buf.drain(..pending.len());
            st.pos = new_len + st.buf.len() as u64;
        }
        *live = Arc::new(tmp);
        if let Err(e) = dir_synced {
            // Which file a crash would leave is unknown, so the carried-over records are not durable.
            self.poison(&format!("fsync directory {}", self.dir.display()), &e);
            return Err(e);
        }
        drop(live);
        self.publish(last);
        self.base_size.store(new_len, Ordering::Relaxed);
        self.compactions.fetch_add(1, Ordering::Relaxed);
        stats.tail_bytes = new_len - stats.snapshot_bytes;
        stats.old_bytes = end;
        stats.new_bytes = new_len;
        Ok(stats)
    }

    fn compactor_loop(&self, snap: &dyn Snapshot) {
        while !self.sleep(Duration::from_secs(1)) {
            if !self.needs_compaction() || self.failed.load(Ordering::Acquire) {
                continue;
            }
            if let Err(e) = self.compact(snap) {
                if !self.stopping() {
                    log::warn!("log compaction failed: {e}");
                    // Don't retry every second on e.g. ENOSPC: wait for the log to double again.
                    self.base_size.store(lock(&self.state).pos, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Marks a compaction swap for the duration; on the way out (success or not) wakes the waiters that stood
/// aside for it, so they write their records themselves.
struct SwapGuard<'a>(&'a Shared);

impl<'a> SwapGuard<'a> {
    fn new(sh: &'a Shared) -> Self {
        sh.swapping.store(true, Ordering::Release);
        SwapGuard(sh)
    }
}

impl Drop for SwapGuard<'_> {
    fn drop(&mut self) {
        self.0.swapping.store(false, Ordering::Release);
        self.0.notify.notify_waiters();
    }
}

impl Journal for Log {
    fn record(&self, rec: &Record<'_>) -> u64 {
        self.shared.record(rec)
    }
}

impl Log {
    /// Waits until record `seq` (from [`Journal::record`]) is durable: fsynced for `Always`, written to the file
    /// for `Everysec` and `No`. `seq == 0` returns at once. Errors if the log failed or was closed first, or for
    /// [`REJECTED_SEQ`]. Lock-free when already durable; otherwise waiters share one `Notify`.
    pub async fn wait_durable(&self, seq: u64) -> io::Result<()> {
        let sh = &*self.shared;
        let lead = sh.policy != FsyncPolicy::Always;
        let mut yielded = !lead;
        loop {
            if let Some(r) = sh.check(seq) {
                return r;
            }
            if !yielded {
                // Let the other tasks ready on this runtime thread append theirs first: one write covers them all.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            // Everysec/No: write it ourselves rather than waking the writer thread and waiting to be woken.
            if lead && sh.lead(seq, false) {
                continue;
            }
            let notified = sh.notify.notified();
            tokio::pin!(notified);
            // Register before re-checking so a publish in between is not missed.
            notified.as_mut().enable();
            if let Some(r) = sh.check(seq) {
                return r;
            }
            // A compaction clears `swapping` before its final notify: if it is over, write ourselves.
            if lead && !sh.swapping.load(Ordering::Acquire) {
                continue;
            }
            notified.await;
        }
    }

    /// Blocking variant of [`Log::wait_durable`] for non-async callers.
    pub fn wait_durable_blocking(&self, seq: u64) -> io::Result<()> {
        loop {
            if let Some(r) = self.shared.check(seq) {
                return r;
            }
            if self.shared.policy == FsyncPolicy::Always {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                self.shared.lead(seq, true);
            }
        }
    }

    /// True when the log has grown past the compaction threshold.
    pub fn needs_compaction(&self) -> bool {
        self.shared.needs_compaction()
    }

    /// Sets the minimum log size for [`Log::needs_compaction`] (default [`DEFAULT_COMPACT_MIN_BYTES`]).
    pub fn set_compaction_min_bytes(&self, bytes: u64) {
        self.shared.compact_min.store(bytes, Ordering::Relaxed);
    }

    /// Rewrites the log as `snapshot`'s live items plus whatever was appended meanwhile, and swaps it in
    /// atomically. Blocks for the duration (run it off the async runtime); serialized with other compactions.
    pub fn compact(&self, snapshot: &dyn Snapshot) -> io::Result<CompactStats> {
        self.shared.compact(snapshot)
    }

    /// Starts a thread that checks the threshold once a second and compacts from `snapshot`; it stops on close.
    pub fn start_compactor(&self, snapshot: Arc<dyn Snapshot>) -> io::Result<()> {
        let sh = self.shared.clone();
        let t =
            std::thread::Builder::new().name("kv-log-compact".into()).spawn(move || sh.compactor_loop(&*snapshot))?;
        lock(&self.threads).push(t);
        Ok(())
    }

    pub fn stats(&self) -> LogStats {
        let (records, log_bytes) = {
            let st = lock(&self.shared.state);
            (st.records, st.pos)
        };
        LogStats {
            records,
            writes: self.shared.writes.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            compactions: self.shared.compactions.load(Ordering::Relaxed),
            log_bytes,
            durable_seq: self.shared.done.load(Ordering::Acquire),
        }
    }

    /// Writes and fsyncs everything recorded so far and stops the background threads. Idempotent; also run on
    /// drop. Records appended afterwards are not logged (waiting on them fails).
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.closing.store(true, Ordering::Release);
        *lock(&self.shared.stop) = true;
        self.shared.stop_cv.notify_all();
        lock(&self.shared.state).closing = true;
        self.shared.wake_writer.notify_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            if t.join().is_err() {
                log::error!("a log thread panicked");
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}
