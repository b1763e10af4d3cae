//! `--recover-to T`: before replay, makes the log the state as of `T` and sets aside what came after.
//!
//! The newest generation exact at `T` (the live log, or a kept `kv.log.hist-*`) is cut after its last record
//! logged at or before `T`, and that prefix becomes `kv.log`: replay then yields the state at `T`, and the
//! history before `T` stays usable (a later recovery to a moment between `T` and now finds the state at `T`).
//! Everything it replaces (the live log, the generations from the chosen one on, their base markers) is
//! hard-linked into `kv.log.undone-<T>-at-<R>/` first, so nothing is deleted and `kv-server log dump --file`
//! reads it. The `rename` of the prefix over `kv.log` commits; [`super::history::tidy`] finishes or undoes an
//! interrupted recovery at the next start. The undone directory also records that `T` was applied: starting
//! again with the same `--recover-to T` (a restart loop) is a plain start.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};

use super::history::{base_name, file_name, identity, walk_file, Generation, Listing, STAGING, UNDONE};
use super::tools::format_stamp;
use super::{copy_range, sync_dir, Shared, LOG_FILE};
use crate::record::Record;

/// What `--recover-to` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    /// The moment asked for, unix ns.
    pub to_ns: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was logged after the moment (it is after the log's end, or in the future): a plain start.
    NothingAfter { last_ns: u64 },
    /// A recovery to this very moment was already applied (it left this directory): a plain start.
    AlreadyApplied { undone: PathBuf },
    /// The log now ends at the moment; what followed it is in `undone`.
    Rewound {
        /// The file whose prefix became the log.
        from: PathBuf,
        /// Records set aside (logged after the moment), the keys they name, the flush_all among them, and
        /// when the first and last were logged.
        records: u64,
        keys: u64,
        flushes: u64,
        first_ns: u64,
        last_ns: u64,
        undone: PathBuf,
    },
}

fn when(ns: u64) -> String {
    format_stamp(ns).unwrap_or_else(|| "the beginning".into())
}

impl fmt::Display for Rewind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = when(self.to_ns);
        match &self.outcome {
            Outcome::NothingAfter { last_ns } => write!(
                f,
                "--recover-to {t}: nothing was logged after it (last record: {}): plain start",
                format_stamp(*last_ns).unwrap_or_else(|| "none with a time".into())
            ),
            Outcome::AlreadyApplied { undone } => write!(
                f,
                "--recover-to {t} was already applied ({} exists): plain start, with the writes made since; remove \
                 the flag",
                undone.display()
            ),
            Outcome::Rewound { from, records, keys, flushes, first_ns, last_ns, undone } => write!(
                f,
                "recovered to {t} from {}: skipped {records} records ({keys} keys, {flushes} flush_all) logged from \
                 {} to {}; they are kept in {} (kv-server log dump --file {}/{LOG_FILE})",
                file_name(from),
                when(*first_ns),
                when(*last_ns),
                undone.display(),
                undone.display()
            ),
        }
    }
}

/// The file to cut and where.
struct Plan {
    /// `None`: the live log.
    from: Option<Generation>,
    /// Offset of the first record after the moment.
    cut: u64,
    /// Generations after `from`, set aside whole.
    newer: Vec<Generation>,
}

/// Counts the records set aside.
#[derive(Default)]
struct Skipped {
    records: u64,
    keys: HashSet<Vec<u8>>,
    flushes: u64,
    first_ns: Option<u64>,
    last_ns: u64,
}

impl Skipped {
    /// Records of `path` logged after `after` (earlier ones are copies of what an older file already holds).
    fn add_file(&mut self, path: &Path, after: u64) -> anyhow::Result<()> {
        walk_file(path, &mut |_, e, _| {
            if e.stamp_ns > after {
                self.records += 1;
                self.first_ns.get_or_insert(e.stamp_ns);
                self.last_ns = e.stamp_ns;
                match e.rec {
                    Record::Set { key, .. } | Record::Touch { key, .. } | Record::Delete { key } => {
                        self.keys.insert(key.to_vec());
                    }
                    Record::FlushAll { .. } => self.flushes += 1,
                }
            }
            true
        })
        .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(())
    }
}

impl Shared {
    /// Makes `kv.log` end at moment `t` (see the module doc). Runs before replay, with the directory locked.
    pub(super) fn rewind(&self, t: u64) -> anyhow::Result<Rewind> {
        let dir = &self.paths.dir;
        let l = Listing::read(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        let done = format!("{UNDONE}{t}-at-");
        if let Some(u) = l.undone.iter().find(|u| file_name(u).starts_with(&done)) {
            return Ok(Rewind { to_ns: t, outcome: Outcome::AlreadyApplied { undone: u.clone() } });
        }
        let live_base = self.history.base.load(Ordering::Relaxed);
        let (plan, last_ns) = self.plan(&l, live_base, t)?;
        let undone = dir.join(format!("{done}{}", crate::clock::unix_now()));
        let Some(plan) = plan else {
            // Recorded all the same, so a restart with the same flag after new writes does not undo them.
            fs::create_dir(&undone).and_then(|()| sync_dir(dir)).context("cannot record the --recover-to")?;
            return Ok(Rewind { to_ns: t, outcome: Outcome::NothingAfter { last_ns } });
        };
        let mut skipped = Skipped::default();
        let from = plan.from.as_ref().map_or(&self.paths.log, |g| &g.path).clone();
        skipped.add_file(&from, t)?;
        for g in &plan.newer {
            skipped.add_file(&g.path, g.base.max(t))?;
        }
        if plan.from.is_some() {
            skipped.add_file(&self.paths.log, live_base.max(t))?;
        }
        let ctx = || format!("cannot recover {} to {}", dir.display(), when(t));
        let base = plan.from.as_ref().map_or(live_base, |g| g.base);
        self.set_aside(&l, &plan, base, &undone).with_context(ctx)?;
        self.commit_prefix(&from, plan.cut).with_context(ctx)?;
        // Committed. What was set aside leaves the history (tidy would finish this after a crash).
        for name in plan.newer.iter().chain(&plan.from).map(Generation::name) {
            fs::remove_file(dir.join(name)).with_context(ctx)?;
        }
        for (_, p) in l.bases.iter().filter(|(b, _)| *b > base) {
            fs::remove_file(p).with_context(ctx)?;
        }
        sync_dir(dir).with_context(ctx)?;
        self.history.base.store(base, Ordering::Relaxed);
        Ok(Rewind {
            to_ns: t,
            outcome: Outcome::Rewound {
                from,
                records: skipped.records,
                keys: skipped.keys.len() as u64,
                flushes: skipped.flushes,
                first_ns: skipped.first_ns.unwrap_or(0),
                last_ns: skipped.last_ns,
                undone,
            },
        })
    }

    /// The newest file exact at `t` and where to cut it; `None` if nothing was logged after `t` (with the last
    /// stamp). Refuses a moment no file is exact for.
    fn plan(&self, l: &Listing, live_base: u64, t: u64) -> anyhow::Result<(Option<Plan>, u64)> {
        let from = if live_base <= t {
            None
        } else {
            match l.hist.iter().rposition(|g| g.base <= t && t <= g.end) {
                Some(i) => Some(i),
                None => {
                    let oldest = l.hist.iter().map(|g| g.base).chain([live_base]).min().unwrap_or(live_base);
                    bail!(
                        "cannot recover to {}: the oldest moment the log can restore is {} (former logs are kept \
                         for the --history window, then deleted)",
                        when(t),
                        when(oldest)
                    )
                }
            }
        };
        let path = from.map_or(&self.paths.log, |i| &l.hist[i].path);
        let (mut stopped, mut last) = (false, 0);
        // Stopped at the first record after `t`, or the end of the valid part.
        let (_, cut, _) = walk_file(path, &mut |_, e, _| {
            stopped = e.stamp_ns > t;
            last = if stopped { last } else { e.stamp_ns };
            !stopped
        })
        .with_context(|| format!("cannot read {}", path.display()))?;
        if from.is_none() && !stopped {
            return Ok((None, last));
        }
        let newer = from.map_or(Vec::new(), |i| l.hist[i + 1..].to_vec());
        Ok((Some(Plan { from: from.map(|i| l.hist[i].clone()), cut, newer }), last))
    }

    /// Links everything the recovery replaces into a new `undone` directory (made whole under a temporary name,
    /// then renamed), and makes sure a base marker for `base` exists.
    fn set_aside(&self, l: &Listing, plan: &Plan, base: u64, undone: &Path) -> std::io::Result<()> {
        let dir = &self.paths.dir;
        let staging = PathBuf::from(format!("{}{STAGING}", undone.display()));
        fs::create_dir(&staging)?;
        fs::hard_link(&self.paths.log, staging.join(LOG_FILE))?;
        for g in plan.newer.iter().chain(&plan.from) {
            fs::hard_link(&g.path, staging.join(g.name()))?;
        }
        for (_, p) in l.bases.iter().filter(|(b, _)| *b > base) {
            fs::hard_link(p, staging.join(file_name(p)))?;
        }
        sync_dir(&staging)?;
        fs::rename(&staging, undone)?;
        // A marker no newer than the live one's: harmless if the recovery does not commit.
        OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(base_name(base)))?;
        sync_dir(dir)
    }

    /// Writes `from`'s first `cut` bytes as the new `kv.log` (the commit point) and switches the writer to it.
    fn commit_prefix(&self, from: &Path, cut: u64) -> std::io::Result<()> {
        let src = File::open(from)?;
        let mut tmp = OpenOptions::new().write(true).create(true).truncate(true).open(&self.paths.tmp)?;
        copy_range(&src, 0, cut, &mut tmp)?;
        tmp.sync_all()?;
        drop(tmp);
        debug_assert_ne!(identity(&self.paths.tmp), identity(from));
        fs::rename(&self.paths.tmp, &self.paths.log)?;
        sync_dir(&self.paths.dir)?;
        let f = OpenOptions::new().read(true).append(true).open(&self.paths.log)?;
        *super::lock(&self.writer.io) = std::sync::Arc::new(f);
        Ok(())
    }
}
