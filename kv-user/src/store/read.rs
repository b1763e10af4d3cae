//! Reads: get, gets, gat, gats, touch, mg (which may also touch or create).

use std::cell::Cell;

use super::changes::Change;
use super::item::{Meta, ACCESSED, FETCHED, STALE, TOKEN_SENT};
use super::{abs_exptime, FetchOpts, Fetched, ItemView, Lookup, Store};
use crate::record::REFUSED_SEQ;

impl Store {
    /// get/gets/gat/gats/touch/mg: `reply` sees the outcome, with the value borrowed from item memory,
    /// while the shard is locked (so the caller copies it once, straight into its reply).
    pub fn fetch_with<R>(&self, key: &[u8], opts: &FetchOpts, reply: impl FnOnce(Fetched<&[u8]>) -> R) -> R {
        let now = self.now();
        let (hash, si) = self.locate(key);
        let emit = |k: &[u8], c| self.removed(k, c);
        let env = self.env(now, &emit);
        let mut g = self.shards[si].lock();
        let mut out = Fetched::default();
        if (opts.touch.is_some() || opts.vivify.is_some()) && self.refused() {
            // A read that may write (touch, vivify) is refused whole while the journal is failing.
            out.seq = REFUSED_SEQ;
            let r = reply(out);
            drop(g);
            return r;
        }
        let found = match self.lookup(&mut g, hash, key, &env) {
            Lookup::Live(h) => Some(h.loc),
            Lookup::Missing => match opts.vivify {
                None => None,
                Some(v) => {
                    let cas = self.cas_for(opts.new_cas);
                    let meta =
                        Meta { cas, exptime: abs_exptime(v, now), time: now, atime: now, flags: 0, bits: TOKEN_SENT };
                    self.before_write(&mut g, None, key);
                    let l = g.insert(hash, key, &[], &meta, &env);
                    g.counters.total_items += 1;
                    out.seq = self.emit(Change::Stored(g.item(l).record()));
                    self.after_write(&mut g, out.seq);
                    out.created = true;
                    out.won = true;
                    let it = g.item(l);
                    out.item = Some(ItemView {
                        value: &[][..],
                        flags: 0,
                        cas,
                        exptime: it.exptime(),
                        last_access: now,
                        fetched: false,
                        stale: false,
                    });
                    None
                }
            },
        };
        if let Some(l) = found {
            let it = g.item(l);
            let token_before = it.has(TOKEN_SENT);
            let (view_fetched, view_atime) = (it.has(FETCHED), it.atime());
            if let Some(t) = opts.touch {
                let exp = abs_exptime(t, now);
                self.before_write(&mut g, Some(l), key);
                g.item_mut(l).set_exptime(exp);
                g.note_exptime(l, exp);
                out.seq = self.emit(Change::Touched(g.item(l).record()));
                self.after_write(&mut g, out.seq);
            }
            let it = g.item(l);
            if let Some(r) = opts.recache {
                if !token_before && it.exptime() != 0 && it.exptime() < abs_exptime(r, now) {
                    out.won = true;
                }
            }
            if it.has(STALE) && !token_before {
                out.won = true;
            }
            out.token_sent = token_before;
            let mut m = g.item_mut(l);
            if out.won {
                m.set_bit(TOKEN_SENT, true);
            }
            if opts.bump {
                m.set_atime(now);
                m.set_bit(FETCHED | ACCESSED, true);
                let it = g.item(l);
                let mark = Cell::new(it.mark());
                self.emit(Change::ReadHit { item: it.record(), now, mark: &mark });
                if mark.get() != it.mark() {
                    g.item_mut(l).set_mark(mark.get());
                }
            }
            let it = g.item(l);
            out.item = Some(ItemView {
                value: it.value(),
                flags: it.flags(),
                cas: it.cas(),
                exptime: it.exptime(),
                last_access: view_atime,
                fetched: view_fetched,
                stale: it.has(STALE),
            });
        }
        let r = reply(out);
        self.finish(g);
        r
    }

    /// [`Store::fetch_with`] with the value copied out (tests, rare paths).
    pub fn fetch(&self, key: &[u8], opts: &FetchOpts) -> Fetched {
        self.fetch_with(key, opts, |f| f.to_owned())
    }

    /// Plain get: bumps and marks fetched.
    pub fn get(&self, key: &[u8]) -> Option<ItemView> {
        self.fetch(key, &FetchOpts::default()).item
    }
}
