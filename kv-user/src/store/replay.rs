//! Start-up replay of the log into the store (nothing replayed is journaled or observed again).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::shard::Entry;
use super::Store;
use crate::record::Record;

impl Store {
    /// Applies a replayed record at start-up (neither journaled nor observed). Keeps the CAS counter above
    /// every CAS seen and drops items that are already expired or flushed.
    pub fn apply(&self, rec: &Record<'_>) {
        let now = self.now();
        match *rec {
            Record::Set { key, flags, exptime, cas, time, value } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                let before = g.counters.bytes;
                let mut e = Entry::new(hash, key, Bytes::copy_from_slice(value), flags, exptime, cas, time);
                let existing = g.find(hash, key);
                let mut keep = None;
                if self.dead(&e, now) {
                    if let Some(idx) = existing {
                        g.remove(idx);
                    }
                } else {
                    e.atime = time;
                    let idx = match existing {
                        Some(idx) => {
                            g.replace(idx, e);
                            idx
                        }
                        None => g.insert(e),
                    };
                    keep = Some(idx);
                }
                self.finish(g, si, before, keep, now);
            }
            Record::Touch { key, exptime, cas } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                let before = g.counters.bytes;
                if let Some(idx) = g.find(hash, key) {
                    let e = g.get_mut(idx);
                    e.exptime = exptime;
                    e.cas = cas;
                    if e.expired(now) {
                        g.remove(idx);
                    }
                }
                self.finish(g, si, before, None, now);
            }
            Record::Delete { key } => {
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                let before = g.counters.bytes;
                if let Some(idx) = g.find(hash, key) {
                    g.remove(idx);
                }
                self.finish(g, si, before, None, now);
            }
            Record::FlushAll { at, max_cas } => {
                self.flush_at.store(at, Ordering::Relaxed);
                for s in self.shards.iter() {
                    let mut g = s.lock();
                    let before = g.counters.bytes;
                    g.retain(|e| e.cas <= max_cas || (at <= now && e.time < at));
                    self.mem_used.fetch_sub(before - g.counters.bytes, Ordering::Relaxed);
                }
            }
        }
    }
}
