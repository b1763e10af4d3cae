//! Writes: the set family, delete, incr/decr/ma, flush_all.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::changes::{Change, Removal};
use kv_common::item_size;

use super::shard::Entry;
use super::{abs_exptime, parse_u64, ArithOpts, ArithOutcome, ArithStatus, DeleteOpts, DeleteStatus, Lookup};
use super::{SetMode, SetOutcome, SetRequest, SetStatus, Store};

impl Store {
    /// set/add/replace/append/prepend/cas/ms.
    pub fn set(&self, req: &SetRequest<'_>) -> SetOutcome {
        let not = |status| SetOutcome { status, cas: 0, size: req.value.len(), seq: 0 };
        if item_size(req.key.len(), req.flags, req.value.len()) > self.item_size_max as u64 {
            return not(SetStatus::TooLarge);
        }
        let now = self.now();
        let (hash, si) = self.locate(req.key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let mut stale = false;
        let mut token_sent = false;
        // (value, flags, exptime) of the item to store, or the failure status.
        let plan: Result<(Bytes, u32, u64), SetStatus> = match self.lookup(&mut g, hash, req.key, now) {
            Lookup::Live(idx) => {
                let old = g.get(idx);
                match req.mode {
                    SetMode::Add => {
                        // memcached bumps the existing item on a failed add.
                        g.bump(idx);
                        Err(SetStatus::NotStored)
                    }
                    SetMode::Cas => {
                        let c = req.compare_cas;
                        if c != 0 && c == old.cas {
                            Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(req.exptime, now)))
                        } else if req.allow_stale && c != 0 && c < old.cas {
                            // Accepted but stale: keeps the old TTL and token state.
                            stale = true;
                            token_sent = old.token_sent;
                            Ok((Bytes::copy_from_slice(req.value), req.flags, old.exptime))
                        } else {
                            Err(SetStatus::Exists)
                        }
                    }
                    SetMode::Append | SetMode::Prepend => {
                        if req.compare_cas != 0 && req.compare_cas != old.cas {
                            Err(SetStatus::Exists)
                        } else if item_size(req.key.len(), old.flags, old.value.len() + req.value.len())
                            > self.item_size_max as u64
                        {
                            Err(SetStatus::NotStored)
                        } else {
                            let mut v = Vec::with_capacity(old.value.len() + req.value.len());
                            if req.mode == SetMode::Append {
                                v.extend_from_slice(&old.value);
                                v.extend_from_slice(req.value);
                            } else {
                                v.extend_from_slice(req.value);
                                v.extend_from_slice(&old.value);
                            }
                            Ok((Bytes::from(v), old.flags, old.exptime))
                        }
                    }
                    SetMode::Set | SetMode::Replace => {
                        Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(req.exptime, now)))
                    }
                }
            }
            Lookup::Missing => match (req.mode, req.vivify) {
                (SetMode::Set | SetMode::Add, _) => {
                    Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(req.exptime, now)))
                }
                (SetMode::Append | SetMode::Prepend, Some(v)) => {
                    Ok((Bytes::copy_from_slice(req.value), req.flags, abs_exptime(v, now)))
                }
                (SetMode::Cas, _) => Err(SetStatus::NotFound),
                _ => Err(SetStatus::NotStored),
            },
        };
        let (value, flags, exptime) = match plan {
            Ok(p) => p,
            Err(status) => {
                self.finish(g, si, before, None, now);
                return not(status);
            }
        };
        let cas = self.cas_for(req.new_cas);
        let mut e = Entry::new(hash, req.key, value, flags, exptime, cas, now);
        e.stale = stale;
        e.token_sent = token_sent;
        let size = e.value.len();
        let idx = match g.find(hash, req.key) {
            Some(idx) => {
                g.replace(idx, e);
                idx
            }
            None => g.insert(e),
        };
        g.counters.total_items += 1;
        let seq = self.emit(Change::Stored(g.get(idx).as_record()));
        self.finish(g, si, before, Some(idx), now);
        SetOutcome { status: SetStatus::Stored, cas, size, seq }
    }

    /// delete/md.
    pub fn delete(&self, key: &[u8], opts: &DeleteOpts) -> (DeleteStatus, u64) {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let res = match self.lookup(&mut g, hash, key, now) {
            Lookup::Missing => (DeleteStatus::NotFound, 0),
            Lookup::Live(idx) => {
                let cas = g.get(idx).cas;
                if opts.compare_cas.is_some_and(|c| c != cas) {
                    (DeleteStatus::Exists, 0)
                } else if opts.invalidate {
                    let new_cas = self.cas_for(opts.new_cas);
                    let e = g.get_mut(idx);
                    if let Some(t) = opts.touch {
                        e.exptime = abs_exptime(t, now);
                    }
                    e.stale = true;
                    // The next reader may win the recache token again.
                    e.token_sent = false;
                    e.cas = new_cas;
                    let seq = self.emit(Change::Stored(g.get(idx).as_record()));
                    (DeleteStatus::Deleted, seq)
                } else {
                    let e = g.remove(idx);
                    let seq = self.emit(Change::Removed { key: &e.key, cause: Removal::Deleted });
                    (DeleteStatus::Deleted, seq)
                }
            }
        };
        self.finish(g, si, before, None, now);
        res
    }

    /// Removes the key without statistics (an oversized set drops the old item); returns the journal seq.
    pub fn remove(&self, key: &[u8]) -> u64 {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let seq = match g.find(hash, key) {
            Some(idx) => {
                let e = g.remove(idx);
                self.emit(Change::Removed { key: &e.key, cause: Removal::Deleted })
            }
            None => 0,
        };
        self.finish(g, si, before, None, now);
        seq
    }

    /// incr/decr/ma. incr wraps at 2^64, decr stops at 0; a shorter result is space-padded to the old length
    /// as memcached's in-place update does.
    pub fn arith(&self, key: &[u8], opts: &ArithOpts) -> ArithOutcome {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let mut keep = None;
        let out = match self.lookup(&mut g, hash, key, now) {
            Lookup::Live(idx) => {
                let e = g.get(idx);
                if opts.compare_cas != 0 && opts.compare_cas != e.cas {
                    ArithOutcome::fail(ArithStatus::Exists)
                } else {
                    match parse_u64(&e.value) {
                        None => ArithOutcome::fail(ArithStatus::NonNumeric),
                        Some(n) => {
                            let n = if opts.incr { n.wrapping_add(opts.delta) } else { n.saturating_sub(opts.delta) };
                            let mut buf = itoa::Buffer::new();
                            let digits = buf.format(n).as_bytes();
                            let mut v = Vec::with_capacity(digits.len().max(e.value.len()));
                            v.extend_from_slice(digits);
                            if opts.pad && v.len() < e.value.len() {
                                v.resize(e.value.len(), b' ');
                            }
                            let cas = self.cas_for(opts.new_cas);
                            let old_size = e.size();
                            let e = g.get_mut(idx);
                            e.value = Bytes::from(v);
                            e.cas = cas;
                            e.time = now;
                            e.atime = now;
                            if let Some(t) = opts.touch {
                                e.exptime = abs_exptime(t, now);
                            }
                            let (new_size, exptime) = (e.size(), e.exptime);
                            g.resize(old_size, new_size);
                            g.bump(idx);
                            keep = Some(idx);
                            let seq = self.emit(Change::Stored(g.get(idx).as_record()));
                            ArithOutcome { status: ArithStatus::Ok, value: n, cas, exptime, created: false, seq }
                        }
                    }
                }
            }
            Lookup::Missing => match opts.vivify {
                None => ArithOutcome::fail(ArithStatus::NotFound),
                Some((ttl, initial)) => {
                    let cas = self.cas_for(opts.new_cas);
                    let mut buf = itoa::Buffer::new();
                    let value = Bytes::copy_from_slice(buf.format(initial).as_bytes());
                    let e = Entry::new(hash, key, value, 0, abs_exptime(ttl, now), cas, now);
                    let exptime = e.exptime;
                    let idx = g.insert(e);
                    g.counters.total_items += 1;
                    keep = Some(idx);
                    let seq = self.emit(Change::Stored(g.get(idx).as_record()));
                    ArithOutcome { status: ArithStatus::Ok, value: initial, cas, exptime, created: true, seq }
                }
            },
        };
        self.finish(g, si, before, keep, now);
        out
    }

    /// flush_all [delay]. Immediate (delay <= 0): everything stored now dies. Delayed: at now+delay, every
    /// item stored before that moment dies (memcached's oldest_live). Returns the journal seq.
    pub fn flush_all(&self, delay: i64) -> u64 {
        let now = self.now();
        let at = if delay > 0 { abs_exptime(delay, now) } else { now };
        let immediate = at <= now;
        let at = if immediate { now } else { at };
        // All shard locks (in index order, so no deadlock with single-shard holders): no mutation sits
        // between taking a CAS and journaling it, so `max_cas` splits the log exactly.
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        let max_cas = if immediate { self.cas.load(Ordering::Relaxed) } else { 0 };
        let seq = self.emit(Change::Flushed { at, now, max_cas });
        self.flush_at.store(at, Ordering::Relaxed);
        if immediate {
            for g in guards.iter_mut() {
                let before = g.counters.bytes;
                g.retain(|e| e.cas <= max_cas);
                self.mem_used.fetch_sub(before - g.counters.bytes, Ordering::Relaxed);
            }
        }
        seq
    }
}
