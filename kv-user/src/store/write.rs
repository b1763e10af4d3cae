//! Writes: the set family, delete, incr/decr/ma, flush_all.

use std::sync::atomic::Ordering;

use super::changes::{Change, Removal};
use kv_common::item_size;

use super::item::{Meta, FETCHED, STALE, TOKEN_SENT};
use super::{abs_exptime, parse_u64, ArithOpts, ArithOutcome, ArithStatus, DeleteOpts, DeleteStatus, Lookup};
use super::{SetMode, SetOutcome, SetRequest, SetStatus, Store};
use crate::record::REFUSED_SEQ;

/// What a successful set stores: the old value to combine with (append/prepend), flags, exptime, bits.
struct Plan {
    old: Option<Vec<u8>>,
    flags: u32,
    exptime: u64,
    bits: u8,
}

impl Store {
    /// set/add/replace/append/prepend/cas/ms.
    pub fn set(&self, req: &SetRequest<'_>) -> SetOutcome {
        let not = |status| SetOutcome { status, cas: 0, size: req.value.len(), seq: 0 };
        if item_size(req.key.len(), req.flags, req.value.len()) > self.item_size_max as u64 {
            return not(SetStatus::TooLarge);
        }
        let now = self.now();
        let (hash, si) = self.locate(req.key);
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        let mut g = self.shards[si].lock();
        if self.refused() {
            drop(g);
            return SetOutcome { seq: REFUSED_SEQ, ..not(SetStatus::NotStored) };
        }
        let fresh = |exptime| Ok(Plan { old: None, flags: req.flags, exptime, bits: 0 });
        let found = self.lookup(&mut g, hash, req.key, &env);
        let plan: Result<Plan, SetStatus> = match found {
            Lookup::Live(h) => {
                let (l, old) = (h.loc, g.item(h.loc));
                match req.mode {
                    SetMode::Add => {
                        // memcached bumps the existing item on a failed add.
                        g.item_mut(l).set_bit(super::item::ACCESSED, true);
                        Err(SetStatus::NotStored)
                    }
                    SetMode::Cas => {
                        let c = req.compare_cas;
                        if c != 0 && c == old.cas() {
                            fresh(abs_exptime(req.exptime, now))
                        } else if req.allow_stale && c != 0 && c < old.cas() {
                            // Accepted but stale: keeps the old TTL and token state.
                            let bits = STALE | (old.bits() & TOKEN_SENT);
                            Ok(Plan { old: None, flags: req.flags, exptime: old.exptime(), bits })
                        } else {
                            Err(SetStatus::Exists)
                        }
                    }
                    SetMode::Append | SetMode::Prepend => {
                        if req.compare_cas != 0 && req.compare_cas != old.cas() {
                            Err(SetStatus::Exists)
                        } else if item_size(req.key.len(), old.flags(), old.vlen() + req.value.len())
                            > self.item_size_max as u64
                        {
                            Err(SetStatus::NotStored)
                        } else {
                            let o = Some(old.value().to_vec());
                            Ok(Plan { old: o, flags: old.flags(), exptime: old.exptime(), bits: 0 })
                        }
                    }
                    SetMode::Set | SetMode::Replace => fresh(abs_exptime(req.exptime, now)),
                }
            }
            Lookup::Missing => match (req.mode, req.vivify) {
                (SetMode::Set | SetMode::Add, _) => fresh(abs_exptime(req.exptime, now)),
                (SetMode::Append | SetMode::Prepend, Some(v)) => fresh(abs_exptime(v, now)),
                (SetMode::Cas, _) => Err(SetStatus::NotFound),
                _ => Err(SetStatus::NotStored),
            },
        };
        let plan = match plan {
            Ok(p) => p,
            Err(status) => {
                self.finish(g);
                return not(status);
            }
        };
        let old_loc = if let Lookup::Live(h) = found { Some(h.loc) } else { None };
        self.before_write(&mut g, old_loc, req.key);
        // The old item goes without a removal: the Stored change below supersedes it.
        if let Lookup::Live(h) = found {
            g.remove_hit(h, &self.budget);
        }
        let old = plan.old.as_deref().unwrap_or(&[]);
        let parts: [&[u8]; 2] = if req.mode == SetMode::Prepend { [req.value, old] } else { [old, req.value] };
        let cas = self.cas_for(req.new_cas);
        let meta = Meta { cas, exptime: plan.exptime, time: now, atime: now, flags: plan.flags, bits: plan.bits };
        let l = g.insert(hash, req.key, &parts, &meta, &env);
        g.counters.total_items += 1;
        let it = g.item(l);
        let size = it.vlen();
        let seq = self.emit(Change::Stored(it.record()));
        self.after_write(&mut g, seq);
        self.finish(g);
        SetOutcome { status: SetStatus::Stored, cas, size, seq }
    }

    /// delete/md.
    pub fn delete(&self, key: &[u8], opts: &DeleteOpts) -> (DeleteStatus, u64) {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        let mut g = self.shards[si].lock();
        if self.refused() {
            drop(g);
            return (DeleteStatus::NotFound, REFUSED_SEQ);
        }
        let res = match self.lookup(&mut g, hash, key, &env) {
            Lookup::Missing => (DeleteStatus::NotFound, 0),
            Lookup::Live(h) => {
                let l = h.loc;
                let cas = g.item(l).cas();
                if opts.compare_cas.is_some_and(|c| c != cas) {
                    (DeleteStatus::Exists, 0)
                } else if opts.invalidate {
                    self.before_write(&mut g, Some(l), key);
                    let new_cas = self.cas_for(opts.new_cas);
                    let mut e = g.item_mut(l);
                    e.set_bit(STALE, true);
                    // The next reader may win the recache token again.
                    e.set_bit(TOKEN_SENT, false);
                    e.set_cas(new_cas);
                    if let Some(t) = opts.touch {
                        let exp = abs_exptime(t, now);
                        e.set_exptime(exp);
                        g.note_exptime(l, exp);
                    }
                    let seq = self.emit(Change::Stored(g.item(l).record()));
                    self.after_write(&mut g, seq);
                    (DeleteStatus::Deleted, seq)
                } else {
                    self.before_write(&mut g, Some(l), key);
                    let seq = self.emit(Change::Removed { key, cause: Removal::Deleted });
                    g.remove_hit(h, &self.budget);
                    self.after_write(&mut g, seq);
                    (DeleteStatus::Deleted, seq)
                }
            }
        };
        self.finish(g);
        res
    }

    /// Removes the key without statistics (an oversized set drops the old item); returns the journal seq.
    pub fn remove(&self, key: &[u8]) -> u64 {
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        if self.refused() {
            drop(g);
            return REFUSED_SEQ;
        }
        let seq = match g.find_hit(hash, key) {
            Some(h) => {
                self.before_write(&mut g, Some(h.loc), key);
                let seq = self.emit(Change::Removed { key, cause: Removal::Deleted });
                g.remove_hit(h, &self.budget);
                self.after_write(&mut g, seq);
                seq
            }
            None => 0,
        };
        self.finish(g);
        seq
    }

    /// incr/decr/ma. incr wraps at 2^64, decr stops at 0; a shorter result is space-padded to the old length
    /// as memcached's in-place update does (then it is rewritten in place).
    pub fn arith(&self, key: &[u8], opts: &ArithOpts) -> ArithOutcome {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        let mut g = self.shards[si].lock();
        if self.refused() {
            drop(g);
            return ArithOutcome { seq: REFUSED_SEQ, ..ArithOutcome::fail(ArithStatus::NotFound) };
        }
        let out = match self.lookup(&mut g, hash, key, &env) {
            Lookup::Live(h) => {
                let (l, e) = (h.loc, g.item(h.loc));
                if opts.compare_cas != 0 && opts.compare_cas != e.cas() {
                    ArithOutcome::fail(ArithStatus::Exists)
                } else {
                    match parse_u64(e.value()) {
                        None => ArithOutcome::fail(ArithStatus::NonNumeric),
                        Some(n) => {
                            let n = if opts.incr { n.wrapping_add(opts.delta) } else { n.saturating_sub(opts.delta) };
                            let mut buf = itoa::Buffer::new();
                            let digits = buf.format(n).as_bytes();
                            let old_len = e.vlen();
                            let len = if opts.pad { digits.len().max(old_len) } else { digits.len() };
                            let cas = self.cas_for(opts.new_cas);
                            let exptime = opts.touch.map_or(e.exptime(), |t| abs_exptime(t, now));
                            let (bits, flags) = (e.bits(), e.flags());
                            self.before_write(&mut g, Some(l), key);
                            let l = if len == old_len {
                                let mut m = g.item_mut(l);
                                let v = m.value_mut();
                                v[..digits.len()].copy_from_slice(digits);
                                v[digits.len()..].fill(b' ');
                                m.set_cas(cas);
                                m.set_time(now);
                                m.set_atime(now);
                                m.set_exptime(exptime);
                                g.note_exptime(l, exptime);
                                g.note_time(l, now);
                                l
                            } else {
                                let bits = bits & (FETCHED | STALE | TOKEN_SENT);
                                let meta = Meta { cas, exptime, time: now, atime: now, flags, bits };
                                g.remove_hit(h, &self.budget);
                                g.insert(hash, key, &[digits], &meta, &env)
                            };
                            let seq = self.emit(Change::Stored(g.item(l).record()));
                            self.after_write(&mut g, seq);
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
                    let exptime = abs_exptime(ttl, now);
                    let meta = Meta { cas, exptime, time: now, atime: now, flags: 0, bits: 0 };
                    self.before_write(&mut g, None, key);
                    let l = g.insert(hash, key, &[buf.format(initial).as_bytes()], &meta, &env);
                    g.counters.total_items += 1;
                    let seq = self.emit(Change::Stored(g.item(l).record()));
                    self.after_write(&mut g, seq);
                    ArithOutcome { status: ArithStatus::Ok, value: initial, cas, exptime, created: true, seq }
                }
            },
        };
        self.finish(g);
        out
    }

    /// flush_all [delay]. Immediate (delay <= 0): everything stored now dies. Delayed: at now+delay, every
    /// item stored before that moment dies (memcached's oldest_live). Returns the journal seq.
    ///
    /// With a journal that can fail it is applied only once its record is durable, still holding every
    /// shard lock (it cannot be undone: that would take a copy of the store). That blocks the calling
    /// thread for one log write (and fsync with `--fsync always`); flush_all is rare and already stops
    /// every shard while it runs. If the record fails nothing is applied.
    pub fn flush_all(&self, delay: i64) -> u64 {
        let now = self.now();
        let at = if delay > 0 { abs_exptime(delay, now) } else { now };
        let immediate = at <= now;
        let at = if immediate { now } else { at };
        // All shard locks (in index order, so no deadlock with single-shard holders): no mutation sits
        // between taking a CAS and journaling it, so `max_cas` splits the log exactly.
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        if self.refused() {
            return REFUSED_SEQ;
        }
        let max_cas = if immediate { self.cas.load(Ordering::Relaxed) } else { 0 };
        let change = Change::Flushed { at, now, max_cas };
        let seq = if self.can_fail {
            let seq = change.record().map_or(0, |r| self.journal.record(&r));
            if self.journal.wait_applied(seq).is_err() {
                // The caller's durability wait reports the failure.
                return seq;
            }
            self.observe(&change);
            seq
        } else {
            self.emit(change)
        };
        self.flush_at.store(at, Ordering::Relaxed);
        if immediate {
            for g in guards.iter_mut() {
                g.retain(&self.budget, |it| it.cas() <= max_cas);
            }
        }
        seq
    }
}
