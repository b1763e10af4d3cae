use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::*;
use crate::record::NoJournal;

const T0: u64 = 1_700_000_000;

/// A record with owned bytes, to compare what the store journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owned {
    Set { key: Vec<u8>, flags: u32, exptime: u64, cas: u64, time: u64, value: Vec<u8> },
    Touch { key: Vec<u8>, exptime: u64, cas: u64 },
    Delete { key: Vec<u8> },
    FlushAll { at: u64, max_cas: u64 },
}

impl Owned {
    fn from(rec: &Record<'_>) -> Owned {
        match *rec {
            Record::Set { key, flags, exptime, cas, time, value } => {
                Owned::Set { key: key.to_vec(), flags, exptime, cas, time, value: value.to_vec() }
            }
            Record::Touch { key, exptime, cas } => Owned::Touch { key: key.to_vec(), exptime, cas },
            Record::Delete { key } => Owned::Delete { key: key.to_vec() },
            Record::FlushAll { at, max_cas } => Owned::FlushAll { at, max_cas },
        }
    }

    fn with<R>(&self, f: impl FnOnce(&Record<'_>) -> R) -> R {
        match self {
            Owned::Set { key, flags, exptime, cas, time, value } => {
                f(&Record::Set { key, flags: *flags, exptime: *exptime, cas: *cas, time: *time, value })
            }
            Owned::Touch { key, exptime, cas } => f(&Record::Touch { key, exptime: *exptime, cas: *cas }),
            Owned::Delete { key } => f(&Record::Delete { key }),
            Owned::FlushAll { at, max_cas } => f(&Record::FlushAll { at: *at, max_cas: *max_cas }),
        }
    }
}

#[derive(Default)]
pub(crate) struct Collect(Mutex<Vec<Owned>>);

impl Journal for Collect {
    fn record(&self, rec: &Record<'_>) -> u64 {
        let mut v = self.0.lock().unwrap();
        v.push(Owned::from(rec));
        v.len() as u64
    }
}

impl Collect {
    fn take(&self) -> Vec<Owned> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn opts(mb: u64) -> StoreOptions {
    StoreOptions { memory_limit: mb << 20, item_size_max: 1 << 20, shards: 16 }
}

fn setup() -> (Store, Arc<Collect>, Arc<ManualClock>) {
    let j = Arc::new(Collect::default());
    let c = Arc::new(ManualClock::new(T0));
    (Store::with_clock(opts(64), j.clone(), c.clone()), j, c)
}

fn set(s: &Store, key: &str, val: &str) -> SetOutcome {
    s.set(&SetRequest::new(SetMode::Set, key.as_bytes(), val.as_bytes(), 0, 0))
}

fn val(s: &Store, key: &str) -> Option<Vec<u8>> {
    s.get(key.as_bytes()).map(|i| i.value.to_vec())
}

#[test]
fn set_get_replace_add() {
    let (s, _, _) = setup();
    assert_eq!(val(&s, "a"), None);
    let r = s.set(&SetRequest::new(SetMode::Set, b"a", b"1", 7, 0));
    assert_eq!(r.status, SetStatus::Stored);
    let it = s.get(b"a").unwrap();
    assert_eq!((&it.value[..], it.flags, it.cas), (&b"1"[..], 7, r.cas));
    assert_eq!(s.set(&SetRequest::new(SetMode::Add, b"a", b"2", 0, 0)).status, SetStatus::NotStored);
    assert_eq!(s.set(&SetRequest::new(SetMode::Add, b"b", b"2", 0, 0)).status, SetStatus::Stored);
    assert_eq!(s.set(&SetRequest::new(SetMode::Replace, b"c", b"3", 0, 0)).status, SetStatus::NotStored);
    assert_eq!(s.set(&SetRequest::new(SetMode::Replace, b"a", b"3", 0, 0)).status, SetStatus::Stored);
    assert_eq!(val(&s, "a").unwrap(), b"3");
    assert_eq!(s.stats().curr_items, 2);
    assert_eq!(s.stats().total_items, 3);
}

#[test]
fn cas_unique_and_compare() {
    let (s, _, _) = setup();
    let mut seen = HashSet::new();
    for i in 0..100 {
        assert!(seen.insert(set(&s, &format!("k{}", i % 10), "v").cas));
    }
    let cas = s.get(b"k1").unwrap().cas;
    let mut req = SetRequest::new(SetMode::Cas, b"k1", b"new", 0, 0);
    req.compare_cas = cas + 1000;
    assert_eq!(s.set(&req).status, SetStatus::Exists);
    req.compare_cas = 0;
    assert_eq!(s.set(&req).status, SetStatus::Exists);
    req.compare_cas = cas;
    let r = s.set(&req);
    assert_eq!(r.status, SetStatus::Stored);
    assert_ne!(r.cas, cas);
    assert_eq!(s.set(&req).status, SetStatus::Exists, "old cas no longer matches");
    req.key = b"missing";
    assert_eq!(s.set(&req).status, SetStatus::NotFound);
}

#[test]
fn cas_stale_and_explicit() {
    let (s, _, _) = setup();
    let mut req = SetRequest::new(SetMode::Set, b"k", b"v1", 0, 100);
    req.new_cas = Some(50);
    assert_eq!(s.set(&req).cas, 50);
    // Explicit CAS raises the counter so later ones stay unique.
    assert!(set(&s, "other", "x").cas > 50);
    let mut stale = SetRequest::new(SetMode::Cas, b"k", b"v2", 0, 0);
    stale.compare_cas = 40;
    assert_eq!(s.set(&stale).status, SetStatus::Exists);
    stale.allow_stale = true;
    assert_eq!(s.set(&stale).status, SetStatus::Stored);
    let it = s.get(b"k").unwrap();
    assert!(it.stale);
    assert_eq!(it.exptime, T0 + 100, "stale store keeps the TTL");
}

#[test]
fn expiry_relative_absolute_negative() {
    let (s, _, c) = setup();
    s.set(&SetRequest::new(SetMode::Set, b"rel", b"v", 0, 10));
    s.set(&SetRequest::new(SetMode::Set, b"abs", b"v", 0, (T0 + 20) as i64));
    s.set(&SetRequest::new(SetMode::Set, b"past", b"v", 0, (T0 - 5) as i64));
    s.set(&SetRequest::new(SetMode::Set, b"neg", b"v", 0, -1));
    s.set(&SetRequest::new(SetMode::Set, b"never", b"v", 0, 0));
    s.set(&SetRequest::new(SetMode::Set, b"30d", b"v", 0, REALTIME_MAXDELTA));
    assert_eq!(s.get(b"30d").unwrap().exptime, T0 + REALTIME_MAXDELTA as u64);
    assert!(val(&s, "past").is_none());
    assert!(val(&s, "neg").is_none());
    assert!(val(&s, "rel").is_some());
    c.advance(9);
    assert!(val(&s, "rel").is_some());
    c.advance(1);
    assert!(val(&s, "rel").is_none());
    assert!(val(&s, "abs").is_some());
    c.advance(10);
    assert!(val(&s, "abs").is_none());
    assert!(val(&s, "never").is_some());
    let st = s.stats();
    assert_eq!(st.get_expired, 4);
    assert!(st.reclaimed >= 4);
}

#[test]
fn negative_exptime_replaces_old_item() {
    let (s, _, _) = setup();
    set(&s, "k", "v");
    assert_eq!(s.set(&SetRequest::new(SetMode::Set, b"k", b"w", 0, -1)).status, SetStatus::Stored);
    assert!(val(&s, "k").is_none());
}

#[test]
fn touch_and_fetch_opts() {
    let (s, j, c) = setup();
    set(&s, "k", "v");
    j.take();
    let f = s.fetch(b"k", &FetchOpts { touch: Some(5), ..FetchOpts::default() });
    assert_eq!(f.item.unwrap().exptime, T0 + 5);
    let cas = s.get(b"k").unwrap().cas;
    assert_eq!(j.take(), vec![Owned::Touch { key: b"k".to_vec(), exptime: T0 + 5, cas }]);
    c.advance(5);
    assert!(val(&s, "k").is_none());
    // h/l report the state before this access; u leaves it untouched.
    set(&s, "m", "v");
    let no_bump = FetchOpts { bump: false, ..FetchOpts::default() };
    assert!(!s.fetch(b"m", &no_bump).item.unwrap().fetched);
    assert!(!s.fetch(b"m", &FetchOpts::default()).item.unwrap().fetched);
    c.advance(3);
    let it = s.fetch(b"m", &FetchOpts::default()).item.unwrap();
    assert!(it.fetched);
    assert_eq!(it.last_access, T0 + 5);
}

#[test]
fn vivify_and_recache_tokens() {
    let (s, j, _) = setup();
    let viv = FetchOpts { vivify: Some(30), ..FetchOpts::default() };
    let f = s.fetch(b"k", &viv);
    assert!(f.created && f.won && !f.token_sent);
    assert_eq!(f.item.as_ref().unwrap().value.len(), 0);
    assert!(matches!(&j.take()[..], [Owned::Set { exptime, .. }] if *exptime == T0 + 30));
    let f = s.fetch(b"k", &viv);
    assert!(!f.created && !f.won && f.token_sent);
    // R: TTL below the threshold wins once.
    set(&s, "r", "v");
    s.fetch(b"r", &FetchOpts { touch: Some(10), ..FetchOpts::default() });
    let rc = FetchOpts { recache: Some(30), ..FetchOpts::default() };
    assert!(s.fetch(b"r", &rc).won);
    let f = s.fetch(b"r", &rc);
    assert!(!f.won && f.token_sent);
}

#[test]
fn delete_and_invalidate() {
    let (s, j, _) = setup();
    assert_eq!(s.delete(b"k", &DeleteOpts::default()).0, DeleteStatus::NotFound);
    let cas = set(&s, "k", "v").cas;
    let bad = DeleteOpts { compare_cas: Some(cas + 1), ..DeleteOpts::default() };
    assert_eq!(s.delete(b"k", &bad).0, DeleteStatus::Exists);
    let inv = DeleteOpts { invalidate: true, touch: Some(30), ..DeleteOpts::default() };
    assert_eq!(s.delete(b"k", &inv).0, DeleteStatus::Deleted);
    let f = s.fetch(b"k", &FetchOpts::default());
    let it = f.item.unwrap();
    assert!(it.stale && it.cas > cas && f.won);
    assert_eq!(it.exptime, T0 + 30);
    j.take();
    let (st, seq) = s.delete(b"k", &DeleteOpts::default());
    assert_eq!(st, DeleteStatus::Deleted);
    assert_eq!(j.take(), vec![Owned::Delete { key: b"k".to_vec() }]);
    assert!(seq > 0);
    assert!(s.is_empty());
}

#[test]
fn append_prepend() {
    let (s, _, _) = setup();
    assert_eq!(s.set(&SetRequest::new(SetMode::Append, b"k", b"x", 0, 0)).status, SetStatus::NotStored);
    s.set(&SetRequest::new(SetMode::Set, b"k", b"mid", 5, 100));
    let r = s.set(&SetRequest::new(SetMode::Append, b"k", b"_end", 9, 0));
    assert_eq!((r.status, r.size), (SetStatus::Stored, 7));
    s.set(&SetRequest::new(SetMode::Prepend, b"k", b"start_", 9, 0));
    let it = s.get(b"k").unwrap();
    assert_eq!(&it.value[..], b"start_mid_end");
    assert_eq!((it.flags, it.exptime), (5, T0 + 100), "flags and exptime kept");
    let mut req = SetRequest::new(SetMode::Append, b"k", b"!", 0, 0);
    req.compare_cas = it.cas + 1;
    assert_eq!(s.set(&req).status, SetStatus::Exists);
    req.compare_cas = it.cas;
    assert_eq!(s.set(&req).status, SetStatus::Stored);
    let mut viv = SetRequest::new(SetMode::Append, b"new", b"seed", 0, 0);
    viv.vivify = Some(50);
    assert_eq!(s.set(&viv).status, SetStatus::Stored);
    assert_eq!(s.get(b"new").unwrap().exptime, T0 + 50);
}

#[test]
fn incr_decr() {
    let (s, _, _) = setup();
    assert_eq!(s.arith(b"n", &ArithOpts::new(true, 1)).status, ArithStatus::NotFound);
    set(&s, "n", "18446744073709551615");
    let r = s.arith(b"n", &ArithOpts::new(true, 1));
    assert_eq!((r.status, r.value), (ArithStatus::Ok, 0), "wraps at 2^64");
    set(&s, "n", "10");
    assert_eq!(s.arith(b"n", &ArithOpts::new(false, 1)).value, 9);
    // memcached keeps the length, padding with spaces.
    assert_eq!(val(&s, "n").unwrap(), b"9 ");
    assert_eq!(s.arith(b"n", &ArithOpts::new(false, 100)).value, 0, "decr floors at 0");
    assert_eq!(s.arith(b"n", &ArithOpts::new(true, 12345)).value, 12345);
    assert_eq!(val(&s, "n").unwrap(), b"12345");
    for bad in ["hi", "", "12abc", "-1", "99999999999999999999999"] {
        set(&s, "t", bad);
        assert_eq!(s.arith(b"t", &ArithOpts::new(true, 1)).status, ArithStatus::NonNumeric, "{bad:?}");
    }
    let mut o = ArithOpts::new(true, 5);
    o.vivify = Some((0, 40));
    let r = s.arith(b"v", &o);
    assert!(r.created);
    assert_eq!(r.value, 40);
    let r = s.arith(b"v", &o);
    assert_eq!((r.value, r.created), (45, false));
    o.compare_cas = r.cas + 1;
    assert_eq!(s.arith(b"v", &o).status, ArithStatus::Exists);
    assert_eq!(parse_u64(b" 42 "), Some(42));
    assert_eq!(parse_u64(b"+7"), Some(7));
}

#[test]
fn lru_eviction_under_limit() {
    let j = Arc::new(Collect::default());
    let c = Arc::new(ManualClock::new(T0));
    let o = StoreOptions { memory_limit: 64 << 10, item_size_max: 8 << 10, shards: 1 };
    let s = Store::with_clock(o, j, c);
    let v = vec![b'x'; 1000];
    for i in 0..200 {
        s.set(&SetRequest::new(SetMode::Set, format!("k{i}").as_bytes(), &v, 0, 0));
        if i == 10 {
            // Touch k0 so it is recent and survives.
            assert!(s.get(b"k0").is_some());
        }
    }
    let st = s.stats();
    assert!(st.bytes <= 64 << 10);
    assert!(st.evictions > 0);
    assert_eq!(st.curr_items + st.evictions, 200);
    assert!(s.get(b"k199").is_some());
    assert!(s.get(b"k1").is_none(), "oldest evicted first");
    assert!(st.evicted_unfetched > 0);
}

#[test]
fn eviction_spills_to_other_shards() {
    let j = Arc::new(NoJournal);
    let o = StoreOptions { memory_limit: 256 << 10, item_size_max: 200 << 10, shards: 64 };
    let s = Store::new(o, j);
    let v = vec![b'x'; 150 << 10];
    for i in 0..10 {
        s.set(&SetRequest::new(SetMode::Set, format!("big{i}").as_bytes(), &v, 0, 0));
        assert!(s.stats().bytes <= 256 << 10);
    }
    assert!(s.get(b"big9").is_some());
}

#[test]
fn too_large() {
    let (s, _, _) = setup();
    let v = vec![0u8; 1 << 20];
    assert_eq!(s.set(&SetRequest::new(SetMode::Set, b"k", &v, 0, 0)).status, SetStatus::TooLarge);
    let v = vec![0u8; (1 << 20) - 200];
    set(&s, "k", "x");
    assert_eq!(s.set(&SetRequest::new(SetMode::Set, b"k", &v, 0, 0)).status, SetStatus::Stored);
    assert_eq!(s.set(&SetRequest::new(SetMode::Append, b"k", &v, 0, 0)).status, SetStatus::NotStored);
}

#[test]
fn flush_immediate() {
    let (s, j, _) = setup();
    let c1 = set(&s, "a", "1").cas;
    set(&s, "b", "2");
    j.take();
    s.flush_all(0);
    assert_eq!(j.take(), vec![Owned::FlushAll { at: T0, max_cas: c1 + 1 }]);
    assert!(val(&s, "a").is_none() && val(&s, "b").is_none());
    assert_eq!(s.stats().curr_items, 0);
    // Stored after the flush in the same second: alive.
    set(&s, "c", "3");
    assert!(val(&s, "c").is_some());
    s.flush_all(-1);
    assert!(val(&s, "c").is_none());
}

#[test]
fn flush_delayed() {
    let (s, j, c) = setup();
    set(&s, "a", "1");
    j.take();
    s.flush_all(10);
    assert_eq!(j.take(), vec![Owned::FlushAll { at: T0 + 10, max_cas: 0 }]);
    c.advance(5);
    set(&s, "b", "2");
    assert!(val(&s, "a").is_some() && val(&s, "b").is_some());
    c.advance(5);
    assert!(val(&s, "a").is_none() && val(&s, "b").is_none(), "stored before the moment: dead");
    set(&s, "c", "3");
    assert!(val(&s, "c").is_some());
    assert_eq!(s.stats().get_flushed, 2);
}

#[test]
fn journal_order_and_content() {
    let (s, j, c) = setup();
    let r1 = set(&s, "k", "v1");
    c.advance(1);
    let r2 = s.set(&SetRequest::new(SetMode::Append, b"k", b"+", 0, 0));
    let r3 = s.arith(b"n", &ArithOpts { vivify: Some((0, 1)), ..ArithOpts::new(true, 1) });
    let (_, r4) = s.delete(b"k", &DeleteOpts::default());
    // Failures journal nothing.
    assert_eq!(s.set(&SetRequest::new(SetMode::Add, b"n", b"x", 0, 0)).seq, 0);
    assert_eq!(s.delete(b"zz", &DeleteOpts::default()).1, 0);
    assert_eq!((r1.seq, r2.seq, r3.seq, r4), (1, 2, 3, 4));
    let k = b"k".to_vec();
    assert_eq!(
        j.take(),
        vec![
            Owned::Set { key: k.clone(), flags: 0, exptime: 0, cas: r1.cas, time: T0, value: b"v1".to_vec() },
            Owned::Set { key: k.clone(), flags: 0, exptime: 0, cas: r2.cas, time: T0 + 1, value: b"v1+".to_vec() },
            Owned::Set { key: b"n".to_vec(), flags: 0, exptime: 0, cas: r3.cas, time: T0 + 1, value: b"1".to_vec() },
            Owned::Delete { key: k },
        ]
    );
}

#[test]
fn replay_restores_state_and_cas() {
    let (s, j, c) = setup();
    set(&s, "a", "1");
    s.set(&SetRequest::new(SetMode::Set, b"short", b"x", 0, 5));
    set(&s, "b", "2");
    s.fetch(b"b", &FetchOpts { touch: Some(100), ..FetchOpts::default() });
    s.delete(b"a", &DeleteOpts::default());
    set(&s, "gone", "x");
    s.flush_all(0);
    set(&s, "after", "y");
    let last_cas = s.get(b"after").unwrap().cas;
    let log = j.take();
    c.advance(10);
    let r = Store::with_clock(opts(64), Arc::new(NoJournal), c.clone());
    for rec in &log {
        rec.with(|rec| r.apply(rec));
    }
    assert_eq!(r.len(), 1);
    assert_eq!(r.get(b"after").unwrap().cas, last_cas);
    assert!(set(&r, "new", "z").cas > last_cas);
    // An expired record is dropped, and removes the previous state of its key.
    let r2 = Store::with_clock(opts(64), Arc::new(NoJournal), c.clone());
    r2.apply(&Record::Set { key: b"k", flags: 0, exptime: 0, cas: 1, time: T0, value: b"v" });
    r2.apply(&Record::Set { key: b"k", flags: 0, exptime: T0 + 1, cas: 2, time: T0, value: b"w" });
    assert!(r2.is_empty());
}

#[test]
fn snapshot_round_trip() {
    let (s, _, c) = setup();
    for i in 0..50 {
        set(&s, &format!("k{i}"), &format!("v{i}"));
    }
    s.set(&SetRequest::new(SetMode::Set, b"exp", b"x", 3, 5));
    c.advance(6);
    s.flush_all(100);
    let mut recs = Vec::new();
    s.for_each_live(&mut |r| recs.push(Owned::from(r)));
    assert_eq!(recs[0], Owned::FlushAll { at: T0 + 106, max_cas: 0 });
    assert_eq!(recs.len(), 51, "expired item skipped");
    let r = Store::with_clock(opts(64), Arc::new(NoJournal), c.clone());
    for rec in &recs {
        rec.with(|rec| r.apply(rec));
    }
    for i in 0..50 {
        assert_eq!(val(&r, &format!("k{i}")).unwrap(), format!("v{i}").as_bytes());
    }
    c.advance(100);
    assert!(val(&r, "k1").is_none(), "pending flush carried over");
}

#[test]
fn concurrent_sets_are_consistent() {
    let s = Arc::new(Store::new(opts(64), Arc::new(NoJournal)));
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut cas = Vec::new();
                for i in 0..2000 {
                    cas.push(set(&s, &format!("t{t}k{i}"), "v").cas);
                }
                cas
            })
        })
        .collect();
    let mut all = HashSet::new();
    for h in hs {
        for c in h.join().unwrap() {
            assert!(all.insert(c));
        }
    }
    assert_eq!(s.stats().curr_items, 8000);
}
