//! Reads: get, gets, gat, gats, touch, mg (which may also touch or create).

use bytes::Bytes;

use super::changes::Change;
use super::shard::Entry;
use super::{abs_exptime, FetchOpts, Fetched, ItemView, Lookup, Store};

impl Store {
    /// get/gets/gat/gats/touch/mg.
    pub fn fetch(&self, key: &[u8], opts: &FetchOpts) -> Fetched {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let mut g = self.shards[si].lock();
        let before = g.counters.bytes;
        let mut out = Fetched::default();
        let mut keep = None;
        match self.lookup(&mut g, hash, key, now) {
            Lookup::Live(idx) => {
                let e = g.get_mut(idx);
                let token_before = e.token_sent;
                let view_fetched = e.fetched;
                let view_atime = e.atime;
                if let Some(t) = opts.touch {
                    e.exptime = abs_exptime(t, now);
                    out.seq = self.emit(Change::Touched(e.as_record()));
                }
                if let Some(r) = opts.recache {
                    if !token_before && e.exptime != 0 && e.exptime < abs_exptime(r, now) {
                        out.won = true;
                    }
                }
                if e.stale && !token_before {
                    out.won = true;
                }
                if out.won {
                    e.token_sent = true;
                }
                out.token_sent = token_before;
                if opts.bump {
                    e.atime = now;
                    e.fetched = true;
                    self.emit(Change::ReadHit { item: e.as_record(), now, mark: &e.mark });
                }
                out.item = Some(ItemView {
                    value: e.value.clone(),
                    flags: e.flags,
                    cas: e.cas,
                    exptime: e.exptime,
                    last_access: view_atime,
                    fetched: view_fetched,
                    stale: e.stale,
                });
                if opts.bump {
                    g.bump(idx);
                }
            }
            Lookup::Missing => {
                if let Some(v) = opts.vivify {
                    let cas = self.cas_for(opts.new_cas);
                    let mut e = Entry::new(hash, key, Bytes::new(), 0, abs_exptime(v, now), cas, now);
                    e.token_sent = true;
                    out.item = Some(ItemView {
                        value: Bytes::new(),
                        flags: 0,
                        cas,
                        exptime: e.exptime,
                        last_access: now,
                        fetched: false,
                        stale: false,
                    });
                    let idx = g.insert(e);
                    g.counters.total_items += 1;
                    out.seq = self.emit(Change::Stored(g.get(idx).as_record()));
                    out.created = true;
                    out.won = true;
                    keep = Some(idx);
                }
            }
        }
        self.finish(g, si, before, keep, now);
        out
    }

    /// Plain get: bumps and marks fetched.
    pub fn get(&self, key: &[u8]) -> Option<ItemView> {
        self.fetch(key, &FetchOpts::default()).item
    }
}
