//! Start-up replay of the log into the store (nothing replayed is journaled or observed again).

use std::sync::atomic::Ordering;

use super::item::Meta;
use super::Store;
use crate::record::Record;

impl Store {
    /// Applies a replayed record at start-up (neither journaled nor observed). Keeps the CAS counter above
    /// every CAS seen and drops items that are already expired or flushed.
    pub fn apply(&self, rec: &Record<'_>) {
        let now = self.now();
        let quiet = |_: &[u8], _| {};
        let env = self.env(now, &quiet);
        match *rec {
            Record::Set { key, flags, exptime, cas, time, value } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                if let Some(h) = g.find_hit(hash, key) {
                    g.remove_hit(h, &self.budget);
                }
                let flushed = env.flush_at != 0 && now >= env.flush_at && time < env.flush_at;
                let expired = exptime != 0 && exptime <= now;
                if !flushed && !expired {
                    let meta = Meta { cas, exptime, time, atime: time, flags, bits: 0 };
                    g.insert(hash, key, &[value], &meta, &env);
                }
                self.finish(g);
            }
            Record::Touch { key, exptime, cas } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                if let Some(l) = g.find(hash, key) {
                    let mut e = g.item_mut(l);
                    e.set_exptime(exptime);
                    e.set_cas(cas);
                    g.note_exptime(l, exptime);
                    if g.item(l).expired(now) {
                        g.remove(l, hash, &self.budget);
                    }
                }
                self.finish(g);
            }
            Record::Delete { key } => {
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                if let Some(h) = g.find_hit(hash, key) {
                    g.remove_hit(h, &self.budget);
                }
                self.finish(g);
            }
            Record::FlushAll { at, max_cas } => {
                self.flush_at.store(at, Ordering::Relaxed);
                for s in self.shards.iter() {
                    s.lock().retain(&self.budget, |e| e.cas() <= max_cas || (at <= now && e.time() < at));
                }
            }
        }
    }
}
