//! History for point-in-time recovery: the generations of the log that compaction keeps instead of dropping,
//! and the marker that says from when the live log alone is exact.
//!
//! Files (names carry unix nanoseconds):
//! - `kv.log.base-<B>`: from moment `B` on, replaying `kv.log` up to a moment gives the state at that moment
//!   (before `B` its base image, a fuzzy compaction snapshot, may hold later writes). The largest one counts.
//! - `kv.log.hist-<B>-<E>`: a former `kv.log`, exact for moments from `B` to `E` (when compaction swapped it
//!   out: every record up to `E` is in it, none after). Deleted once `E` is older than the window.
//! - `kv.log.undone-<T>-at-<R>/`: what a recovery to `T` (at unix second `R`) set aside (`rewind`).
//!
//! New names are made with `link` or `create` and old ones removed only after the change they belong to is
//! committed (a `rename` over `kv.log`); [`tidy`] finishes or undoes an interrupted one at start-up, telling
//! them apart by inode: a name that is still the same file as `kv.log` belongs to a swap that never happened.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

use super::format::{parse_header, Entry, Version, FILE_HEADER_LEN};
use super::walk::{End, Walk};
use super::{sync_dir, Paths, Shared, LOG_FILE};

const HIST: &str = "kv.log.hist-";
const BASE: &str = "kv.log.base-";
pub(super) const UNDONE: &str = "kv.log.undone-";
/// An undone directory still being filled; removed at start-up.
pub(super) const STAGING: &str = ".tmp";

/// History settings and what the running log knows about its own file.
pub(super) struct History {
    /// How long (ns) a former log is kept after it stops being the live one; 0 keeps none.
    pub(super) window_ns: AtomicU64,
    /// The live log's `kv.log.base-*` moment.
    pub(super) base: AtomicU64,
}

impl History {
    pub(super) fn new(base: u64) -> History {
        History { window_ns: AtomicU64::new(0), base: AtomicU64::new(base) }
    }
}

/// A kept former log: exact for moments in `[base, end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Generation {
    pub(super) path: PathBuf,
    pub(super) base: u64,
    pub(super) end: u64,
}

impl Generation {
    pub(super) fn name(&self) -> String {
        file_name(&self.path)
    }
}

/// The history files of a data directory.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Oldest first.
    pub(super) hist: Vec<Generation>,
    /// `kv.log.base-*` moments, smallest first.
    pub(super) bases: Vec<(u64, PathBuf)>,
    pub(super) undone: Vec<PathBuf>,
    pub(super) staging: Vec<PathBuf>,
}

impl Listing {
    pub(super) fn read(dir: &Path) -> io::Result<Listing> {
        let mut l = Listing::default();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some((base, end)) = name.strip_prefix(HIST).and_then(|r| r.split_once('-')) {
                if let (Ok(base), Ok(end)) = (base.parse(), end.parse()) {
                    l.hist.push(Generation { path, base, end });
                }
            } else if let Some(Ok(b)) = name.strip_prefix(BASE).map(str::parse) {
                l.bases.push((b, path));
            } else if name.starts_with(UNDONE) && name.ends_with(STAGING) {
                l.staging.push(path);
            } else if name.starts_with(UNDONE) {
                l.undone.push(path);
            }
        }
        l.hist.sort_by_key(|g| (g.base, g.end));
        l.bases.sort();
        Ok(l)
    }
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(super) fn hist_name(base: u64, end: u64) -> String {
    format!("{HIST}{base}-{end}")
}

pub(super) fn base_name(base: u64) -> String {
    format!("{BASE}{base}")
}

/// `(dev, ino)`, or `None` if there is no such file.
pub(super) fn identity(p: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Start-up repairs, before the log is opened: drops an unfinished undone directory, finishes or undoes an
/// interrupted recovery (`rewind`), drops history names an interrupted compaction swap left on the live log,
/// and makes sure the live log has a base marker. Returns the live log's base.
pub(super) fn tidy(paths: &Paths) -> anyhow::Result<u64> {
    let dir = &paths.dir;
    let ctx = || format!("cannot tidy the log history in {}", dir.display());
    let l = Listing::read(dir).with_context(ctx)?;
    let live = identity(&paths.log);
    for s in &l.staging {
        log::warn!("removing {}, left by an interrupted --recover-to", s.display());
        fs::remove_dir_all(s).with_context(ctx)?;
    }
    for u in &l.undone {
        if live.is_some() && identity(&u.join(LOG_FILE)) == live {
            // The rename that commits a recovery never happened: the directory only holds links.
            log::warn!("removing {}: its --recover-to was interrupted before it took effect", u.display());
            fs::remove_dir_all(u).with_context(ctx)?;
            continue;
        }
        // Committed: the history names it set aside must go (a crash may have left some).
        for e in fs::read_dir(u).with_context(ctx)? {
            let name = e.with_context(ctx)?.file_name();
            let here = dir.join(&name);
            if name != LOG_FILE && identity(&here).is_some() && identity(&here) == identity(&u.join(&name)) {
                fs::remove_file(&here).with_context(ctx)?;
            }
        }
    }
    for g in &l.hist {
        if live.is_some() && identity(&g.path) == live {
            log::warn!("removing {}: a compaction was interrupted before it replaced the log", g.path.display());
            fs::remove_file(&g.path).with_context(ctx)?;
        }
    }
    let l = Listing::read(dir).with_context(ctx)?;
    let base = match l.bases.last() {
        Some((b, _)) => *b,
        None => {
            // A new log starts empty: exact from the start. A log from before markers existed may start with a
            // compaction snapshot of unknown time: exact only from its last record on.
            let b = if live.is_some() { last_stamp(&paths.log).with_context(ctx)? } else { 0 };
            File::create(dir.join(base_name(b))).with_context(ctx)?;
            b
        }
    };
    for (b, p) in &l.bases {
        if *b < base {
            fs::remove_file(p).with_context(ctx)?;
        }
    }
    sync_dir(dir).with_context(ctx)?;
    Ok(base)
}

/// The first record of `path` and every later one, with its offset and length, until `f` returns false.
/// Returns the file's version and where the walk stopped (the end of the valid part if it ran to the end).
pub(super) fn walk_file(
    path: &Path,
    f: &mut dyn FnMut(u64, &Entry<'_>, usize) -> bool,
) -> io::Result<(Version, u64, Option<End>)> {
    let mut file = File::open(path)?;
    let mut h = Vec::with_capacity(FILE_HEADER_LEN);
    (&mut file).take(FILE_HEADER_LEN as u64).read_to_end(&mut h)?;
    let version = parse_header(&h).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    let mut walk = Walk::new(&file, version);
    while let Some((at, e, len)) = walk.next()? {
        if !f(at, &e, len) {
            return Ok((version, at, None));
        }
    }
    Ok((version, walk.offset(), walk.end()))
}

/// The largest stamp in the valid part of a log (0 for none, or a header that cannot be read: replay deals
/// with that).
fn last_stamp(path: &Path) -> io::Result<u64> {
    let mut last = 0;
    match walk_file(path, &mut |_, e, _| {
        last = last.max(e.stamp_ns);
        true
    }) {
        Ok(_) => Ok(last),
        Err(e) if e.kind() == io::ErrorKind::Other => Ok(0),
        Err(e) => Err(e),
    }
}

impl Shared {
    /// Compaction's last step before its rename over `kv.log`, with the writers held off: from `end` on the new
    /// log is exact, and the old one (every record up to `end`) is kept as history if a window is set. Returns
    /// the history name made, for [`Shared::history_swap_failed`].
    pub(super) fn history_before_swap(&self, end: u64) -> io::Result<Option<PathBuf>> {
        let dir = &self.paths.dir;
        // Made before the rename, a crash leaves a marker newer than the old log's base: that only narrows what
        // the old log is trusted for (the history before it covers the rest).
        OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(base_name(end)))?;
        let mut kept = None;
        if self.history.window_ns.load(Ordering::Relaxed) > 0 {
            let p = dir.join(hist_name(self.history.base.load(Ordering::Relaxed), end));
            fs::hard_link(&self.paths.log, &p)?;
            kept = Some(p);
        }
        sync_dir(dir)?;
        Ok(kept)
    }

    /// The rename failed: the name made for history is still the live log.
    pub(super) fn history_swap_failed(&self, kept: Option<PathBuf>) {
        if let Some(p) = kept {
            let _ = fs::remove_file(p);
        }
    }

    /// After the swap: the new log's base is `end`; older markers and history past the window go.
    pub(super) fn history_after_swap(&self, end: u64) {
        self.history.base.store(end, Ordering::Relaxed);
        if let Err(e) = self.expire_history() {
            log::warn!("cannot trim the log history in {}: {e}", self.paths.dir.display());
        }
    }

    /// Removes base markers older than the live one and history files whose last moment is older than the
    /// window (all of them with no window).
    pub(super) fn expire_history(&self) -> io::Result<()> {
        let l = Listing::read(&self.paths.dir)?;
        let base = self.history.base.load(Ordering::Relaxed);
        let horizon = crate::clock::unix_now_ns_coarse().saturating_sub(self.history.window_ns.load(Ordering::Relaxed));
        let mut changed = false;
        for (b, p) in l.bases.iter().filter(|(b, _)| *b < base) {
            log::debug!("removing the old base marker {} ({b})", p.display());
            fs::remove_file(p)?;
            changed = true;
        }
        for g in l.hist.iter().filter(|g| g.end < horizon) {
            log::info!("log history: removing {}, older than the history window", g.path.display());
            fs::remove_file(&g.path)?;
            changed = true;
        }
        if changed {
            sync_dir(&self.paths.dir)?;
        }
        Ok(())
    }
}
