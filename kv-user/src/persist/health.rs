//! The log's health: whether it is failing, since when and why, which records failed for good, and the
//! numbers `stats` and `/metrics` show (like Redis's `aof_last_write_status`).
//!
//! A failed write or fsync starts an *episode*: every record from the first one not durable yet (`from`)
//! fails, including those appended later (the log is sequential). While it lasts the store refuses writes
//! ([`Journal::refusing`](crate::record::Journal::refusing)). The repairer (`repair`) undoes the failed
//! writes in the store, closes the episode's range of sequence numbers, and only then do their waiters get
//! the error: a client is told "failed" only once its write is invisible. Closed ranges stay failed for
//! good, even after the log works again and later records pass them.

use std::io;
use std::sync::atomic::Ordering;

use super::{lock, Shared};
use crate::clock::unix_now;
use crate::record::REFUSED_SEQ;
use crate::stats::{Desc, Kind, Source};

/// What the writer knows about failures; guarded by `Writer::failure`. Taking it orders a failure
/// against [`Shared::publish`], so no record is published durable once its episode has begun.
#[derive(Default)]
pub(super) struct Failure {
    /// Why the last write failed (kept after recovery for late waiters).
    pub(super) cause: String,
    /// First sequence number of the current episode (0: none).
    pub(super) from: u64,
    /// Closed episodes: every sequence number in these ranges failed.
    pub(super) ranges: Vec<(u64, u64)>,
}

/// A snapshot of the log's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The last write (or fsync) succeeded and the log accepts writes.
    pub ok: bool,
    /// Unix time the current episode began (0 when healthy).
    pub failing_since: u64,
    /// Why the last failure happened ("" if none ever did).
    pub last_error: String,
    /// Bytes recorded but not yet written (`Always`: not yet fsynced).
    pub bytes_pending: u64,
    /// Failed writes and fsyncs since start-up.
    pub write_errors: u64,
    /// Fresh logs written from memory to end an episode.
    pub rebuilds: u64,
}

fn failed_error(cause: &str) -> io::Error {
    io::Error::other(format!("log write failed: {cause}"))
}

impl Shared {
    /// A failed write or fsync: begins an episode unless one is on, and wakes the repairer.
    pub(super) fn poison(&self, what: &str, e: &io::Error) {
        let w = &self.writer;
        w.write_errors.fetch_add(1, Ordering::Relaxed);
        {
            let mut f = lock(&w.failure);
            if w.failed.load(Ordering::Acquire) {
                return;
            }
            f.cause = e.to_string();
            f.from = w.done.load(Ordering::Acquire) + 1;
            w.failing_since.store(unix_now(), Ordering::Relaxed);
            w.failed.store(true, Ordering::Release);
        }
        log::error!("persistence failed, refusing writes until the log is rebuilt: {what}: {e}");
        self.kick_repair();
        w.notify.notify_waiters();
    }

    pub(super) fn failed(&self) -> bool {
        self.writer.failed.load(Ordering::Acquire)
    }

    /// Records up to `seq` are durable, and the file up to `end` holds them, unless an episode began.
    pub(super) fn publish(&self, seq: u64, end: u64) {
        {
            let _f = lock(&self.writer.failure);
            if self.failed() {
                return;
            }
            self.writer.done.fetch_max(seq, Ordering::AcqRel);
            self.writer.durable_pos.store(end, Ordering::Release);
        }
        self.writer.notify.notify_waiters();
    }

    /// The error of `seq` if it is in a closed episode (or is [`REFUSED_SEQ`]).
    pub(super) fn failed_seq(&self, seq: u64) -> Option<io::Error> {
        if seq != REFUSED_SEQ && seq > self.writer.failed_hi.load(Ordering::Acquire) {
            return None;
        }
        let f = lock(&self.writer.failure);
        let cause = if f.cause.is_empty() { "the log is unavailable" } else { &f.cause };
        if seq == REFUSED_SEQ || f.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq)) {
            return Some(failed_error(cause));
        }
        None
    }

    /// The current failure as an error, if the log is failing.
    pub(super) fn failure_error(&self) -> Option<io::Error> {
        self.failed().then(|| failed_error(&lock(&self.writer.failure).cause))
    }

    /// Ends the episode's undo phase: its records `from..=hi` fail for good, and their waiters are told.
    pub(super) fn close_episode(&self, hi: u64) {
        {
            let mut f = lock(&self.writer.failure);
            if hi >= f.from && f.from > 0 {
                let r = (f.from, hi);
                f.ranges.push(r);
                self.writer.failed_hi.fetch_max(hi, Ordering::AcqRel);
            }
        }
        self.writer.notify.notify_waiters();
    }

    /// The log works again (a fresh log is in place).
    pub(super) fn heal(&self) {
        let w = &self.writer;
        let mut f = lock(&w.failure);
        f.from = 0;
        w.failing_since.store(0, Ordering::Relaxed);
        w.failed.store(false, Ordering::Release);
    }

    pub(super) fn health(&self) -> Health {
        let w = &self.writer;
        let pending = lock(&w.state).buf.len() as u64;
        let last_error = lock(&w.failure).cause.clone();
        Health {
            ok: !self.failed(),
            failing_since: w.failing_since.load(Ordering::Relaxed),
            last_error,
            bytes_pending: pending,
            write_errors: w.write_errors.load(Ordering::Relaxed),
            rebuilds: w.rebuilds.load(Ordering::Relaxed),
        }
    }
}

/// `stats` and `/metrics` lines about the log (`log_last_write_status` itself is printed by `stats` as
/// `ok`/`err`; this is its number).
impl Source for super::Log {
    fn stats(&self, add: &mut dyn FnMut(&Desc<'_>, u64)) {
        let h = self.health();
        let gauge = |name, help| Desc { name, kind: Kind::Gauge, help: Some(help) };
        add(
            &gauge("log_last_write_ok", "1 if the log's last write succeeded and it accepts writes, else 0."),
            h.ok.into(),
        );
        add(&gauge("log_failing_since", "Unix time the log began failing (0 when healthy)."), h.failing_since);
        add(
            &gauge("log_bytes_pending", "Bytes recorded in the log but not yet written (or fsynced)."),
            h.bytes_pending,
        );
        let counter = |name, help| Desc { name, kind: Kind::Counter, help: Some(help) };
        add(&counter("log_write_errors", "Failed log writes and fsyncs."), h.write_errors);
        add(&counter("log_rebuilds", "Fresh logs written from memory after a failure."), h.rebuilds);
    }
}
