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

/// The parallel replay ends in the state the one-thread replay does: per key in log order, a flush_all between
/// what came before and after it.
#[test]
fn parallel_replay_matches_serial() {
    let (s, j, c) = setup();
    for round in 0..3 {
        for i in 0..400 {
            set(&s, &format!("k{i}"), &format!("v{i}-{round}"));
        }
        for i in (0..400).step_by(7) {
            s.delete(format!("k{i}").as_bytes(), &DeleteOpts::default());
        }
        s.fetch(b"k1", &FetchOpts { touch: Some(100 + round), ..FetchOpts::default() });
        if round == 1 {
            s.flush_all(0);
        }
    }
    let log = j.take();
    let serial = Store::with_clock(opts(64), Arc::new(NoJournal), c.clone());
    for rec in &log {
        rec.with(|rec| serial.apply(rec));
    }
    let parallel = Store::with_clock(opts(64), Arc::new(NoJournal), c.clone());
    std::thread::scope(|sc| {
        let mut r = super::Replayer::new(&parallel, sc, 3);
        for rec in &log {
            rec.with(|rec| r.apply(rec));
        }
        r.finish();
    });
    let dump = |st: &Store| {
        let mut v = Vec::new();
        st.for_each_live(&mut |r| v.push(Owned::from(r)));
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    };
    assert_eq!(dump(&parallel), dump(&serial));
    assert_eq!(parallel.len(), serial.len());
    assert!(parallel.len() > 300);
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

/// The change stream: every change of a key reaches the [`Observer`], under the key's shard lock, in order.
mod mirror {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock, Weak};

    use super::*;

    /// One change, with owned data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Changed(Owned),
        Removed(Vec<u8>),
        Flushed { at: u64, now: u64 },
        ReadHit(Owned, u32),
    }

    /// Records every change, counting each item's read hits in its mark. Also checks that each change is
    /// emitted under the lock of the key's shard (all shards for `Flushed`).
    #[derive(Default)]
    struct Rec {
        events: Mutex<Vec<Ev>>,
        store: OnceLock<Weak<Store>>,
        unlocked: Mutex<Vec<String>>,
    }

    impl Rec {
        fn check_locked(&self, key: Option<&[u8]>, what: &str) {
            let Some(s) = self.store.get().and_then(Weak::upgrade) else { return };
            let locked = match key {
                Some(k) => s.shards[s.locate(k).1].is_locked(),
                None => s.shards.iter().all(|m| m.is_locked()),
            };
            if !locked {
                let k = key.map(|k| String::from_utf8_lossy(k).into_owned());
                self.unlocked.lock().unwrap().push(format!("{what} {k:?} called without the shard lock"));
            }
        }

        fn push(&self, ev: Ev) {
            self.events.lock().unwrap().push(ev);
        }

        /// The events since the last call; also asserts that all of them were made under the shard lock.
        fn take(&self) -> Vec<Ev> {
            let unlocked = std::mem::take(&mut *self.unlocked.lock().unwrap());
            assert!(unlocked.is_empty(), "{unlocked:?}");
            std::mem::take(&mut *self.events.lock().unwrap())
        }
    }

    impl Observer for Rec {
        fn observe(&self, change: &Change<'_>) {
            match *change {
                Change::Stored(ref item) | Change::Touched(ref item) => {
                    let Record::Set { key, .. } = *item else { panic!("a non-Set state: {item:?}") };
                    self.check_locked(Some(key), "changed");
                    self.push(Ev::Changed(Owned::from(item)));
                }
                Change::Removed { key, .. } => {
                    self.check_locked(Some(key), "removed");
                    self.push(Ev::Removed(key.to_vec()));
                }
                Change::Flushed { at, now, .. } => {
                    self.check_locked(None, "flushed");
                    self.push(Ev::Flushed { at, now });
                }
                Change::ReadHit { ref item, mark, .. } => {
                    let Record::Set { key, .. } = *item else { panic!("read_hit with a non-Set record: {item:?}") };
                    self.check_locked(Some(key), "read_hit");
                    mark.set(mark.get() + 1);
                    self.push(Ev::ReadHit(Owned::from(item), mark.get()));
                }
            }
        }
    }

    fn st(key: &str, value: &[u8], flags: u32, cas: u64, exptime: u64, time: u64) -> Owned {
        Owned::Set { key: key.as_bytes().to_vec(), flags, exptime, cas, time, value: value.to_vec() }
    }

    fn ch(key: &str, value: &[u8], flags: u32, cas: u64, exptime: u64, time: u64) -> Ev {
        Ev::Changed(st(key, value, flags, cas, exptime, time))
    }

    fn rm(key: &str) -> Ev {
        Ev::Removed(key.as_bytes().to_vec())
    }

    /// The live item's state, read without side effects (no reclaim, no bump, no hit).
    fn peek(s: &Store, key: &[u8]) -> Option<Owned> {
        let now = s.now();
        let (hash, si) = s.locate(key);
        let g = s.shards[si].lock();
        let e = g.item(g.find(hash, key)?);
        let quiet = |_: &[u8], _| {};
        s.env(now, &quiet).dead_cause(&e).is_none().then(|| Owned::from(&e.record()))
    }

    fn cas_of(s: &Store, key: &str) -> u64 {
        match peek(s, key.as_bytes()) {
            Some(Owned::Set { cas, .. }) => cas,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn setup_with(o: StoreOptions) -> (Arc<Store>, Arc<Rec>, Arc<ManualClock>) {
        let c = Arc::new(ManualClock::new(T0));
        let m = Arc::new(Rec::default());
        let s = Arc::new(Store::with_clock(o, Arc::new(NoJournal), c.clone()).observed_by(m.clone()));
        m.store.set(Arc::downgrade(&s)).unwrap();
        (s, m, c)
    }

    fn setup() -> (Arc<Store>, Arc<Rec>, Arc<ManualClock>) {
        setup_with(opts(64))
    }

    fn req<'a>(mode: SetMode, key: &'a str, value: &'a [u8], flags: u32, exptime: i64) -> SetRequest<'a> {
        SetRequest::new(mode, key.as_bytes(), value, flags, exptime)
    }

    fn touch(t: i64, bump: bool) -> FetchOpts {
        FetchOpts { touch: Some(t), bump, ..FetchOpts::default() }
    }

    #[test]
    fn set_add_replace() {
        let (s, m, c) = setup();
        let r = s.set(&req(SetMode::Set, "a", b"1", 7, 100));
        assert_eq!(m.take(), vec![ch("a", b"1", 7, r.cas, T0 + 100, T0)]);
        let r2 = s.set(&req(SetMode::Set, "a", b"one", 8, 0));
        assert_eq!(m.take(), vec![ch("a", b"one", 8, r2.cas, 0, T0)]);
        assert_eq!(s.set(&req(SetMode::Add, "a", b"2", 0, 0)).status, SetStatus::NotStored);
        assert_eq!(s.set(&req(SetMode::Replace, "c", b"3", 0, 0)).status, SetStatus::NotStored);
        assert_eq!(m.take(), vec![], "failed add/replace");
        c.advance(1);
        let rb = s.set(&req(SetMode::Add, "b", b"2", 3, (T0 + 50) as i64));
        let ra = s.set(&req(SetMode::Replace, "a", b"3", 4, 20));
        assert_eq!(
            m.take(),
            vec![ch("b", b"2", 3, rb.cas, T0 + 50, T0 + 1), ch("a", b"3", 4, ra.cas, T0 + 21, T0 + 1)]
        );
        // A negative exptime stores an already expired item (exptime 1): still a change of the key.
        let ra = s.set(&req(SetMode::Set, "a", b"x", 0, -1));
        assert_eq!(m.take(), vec![ch("a", b"x", 0, ra.cas, 1, T0 + 1)]);
        assert_eq!(s.get(b"a"), None);
        assert_eq!(m.take(), vec![rm("a")]);
    }

    #[test]
    fn append_prepend() {
        let (s, m, c) = setup();
        assert_eq!(s.set(&req(SetMode::Append, "k", b"x", 0, 0)).status, SetStatus::NotStored);
        assert_eq!(s.set(&req(SetMode::Prepend, "k", b"x", 0, 0)).status, SetStatus::NotStored);
        assert_eq!(m.take(), vec![]);
        s.set(&req(SetMode::Set, "k", b"mid", 5, 100));
        m.take();
        c.advance(2);
        let r1 = s.set(&req(SetMode::Append, "k", b"_end", 9, 0));
        let r2 = s.set(&req(SetMode::Prepend, "k", b"start_", 9, 0));
        // Flags and exptime are kept; the item counts as stored now.
        assert_eq!(
            m.take(),
            vec![
                ch("k", b"mid_end", 5, r1.cas, T0 + 100, T0 + 2),
                ch("k", b"start_mid_end", 5, r2.cas, T0 + 100, T0 + 2)
            ]
        );
        let mut bad = req(SetMode::Append, "k", b"!", 0, 0);
        bad.compare_cas = r2.cas + 1;
        assert_eq!(s.set(&bad).status, SetStatus::Exists);
        let big = vec![b'x'; (1 << 20) - 60];
        assert_eq!(s.set(&req(SetMode::Append, "k", &big, 0, 0)).status, SetStatus::NotStored);
        assert_eq!(m.take(), vec![], "failed append");
        bad.compare_cas = r2.cas;
        let r3 = s.set(&bad);
        assert_eq!(m.take(), vec![ch("k", b"start_mid_end!", 5, r3.cas, T0 + 100, T0 + 2)]);
        // ms N with append: created on a miss.
        let mut viv = req(SetMode::Append, "new", b"seed", 6, 0);
        viv.vivify = Some(50);
        let r4 = s.set(&viv);
        assert_eq!(r4.status, SetStatus::Stored);
        assert_eq!(m.take(), vec![ch("new", b"seed", 6, r4.cas, T0 + 52, T0 + 2)]);
    }

    #[test]
    fn cas_and_ms_modes() {
        let (s, m, _) = setup();
        let mut cas = req(SetMode::Cas, "k", b"v", 0, 0);
        cas.compare_cas = 1;
        assert_eq!(s.set(&cas).status, SetStatus::NotFound);
        assert_eq!(m.take(), vec![], "cas on a missing key");
        // ms E: explicit CAS.
        let mut set = req(SetMode::Set, "k", b"v1", 1, 100);
        set.new_cas = Some(50);
        assert_eq!(s.set(&set).cas, 50);
        assert_eq!(m.take(), vec![ch("k", b"v1", 1, 50, T0 + 100, T0)]);
        let mut cas = req(SetMode::Cas, "k", b"v2", 2, 200);
        for wrong in [0, 49, 51] {
            cas.compare_cas = wrong;
            assert_eq!(s.set(&cas).status, SetStatus::Exists);
        }
        assert_eq!(m.take(), vec![], "cas mismatch");
        cas.compare_cas = 50;
        let r = s.set(&cas);
        assert_eq!(r.status, SetStatus::Stored);
        assert_eq!(m.take(), vec![ch("k", b"v2", 2, r.cas, T0 + 200, T0)]);
        // ms I: an older CAS is accepted, the item keeps its TTL.
        let mut stale = req(SetMode::Cas, "k", b"v3", 3, 5);
        stale.compare_cas = 40;
        stale.allow_stale = true;
        let r2 = s.set(&stale);
        assert_eq!(r2.status, SetStatus::Stored);
        assert_eq!(m.take(), vec![ch("k", b"v3", 3, r2.cas, T0 + 200, T0)]);
        // ms E with add/replace.
        let mut add = req(SetMode::Add, "a", b"x", 0, 0);
        add.new_cas = Some(1000);
        s.set(&add);
        let mut rep = req(SetMode::Replace, "a", b"y", 0, 0);
        rep.new_cas = Some(2000);
        s.set(&rep);
        assert_eq!(m.take(), vec![ch("a", b"x", 0, 1000, 0, T0), ch("a", b"y", 0, 2000, 0, T0)]);
    }

    #[test]
    fn incr_decr_ma() {
        let (s, m, c) = setup();
        assert_eq!(s.arith(b"n", &ArithOpts::new(true, 1)).status, ArithStatus::NotFound);
        assert_eq!(m.take(), vec![]);
        s.set(&req(SetMode::Set, "n", b"10", 4, 100));
        m.take();
        c.advance(3);
        let r1 = s.arith(b"n", &ArithOpts::new(false, 1));
        let r2 = s.arith(b"n", &ArithOpts::new(true, 12345));
        assert_eq!(
            m.take(),
            vec![ch("n", b"9 ", 4, r1.cas, T0 + 100, T0 + 3), ch("n", b"12354", 4, r2.cas, T0 + 100, T0 + 3)]
        );
        let mut bad = ArithOpts::new(true, 1);
        bad.compare_cas = r2.cas + 1;
        assert_eq!(s.arith(b"n", &bad).status, ArithStatus::Exists);
        s.set(&req(SetMode::Set, "t", b"hi", 0, 0));
        m.take();
        assert_eq!(s.arith(b"t", &ArithOpts::new(true, 1)).status, ArithStatus::NonNumeric);
        assert_eq!(s.arith(b"t", &ArithOpts::new(false, 1)).status, ArithStatus::NonNumeric);
        assert_eq!(m.take(), vec![], "failed arith");
        // ma with C, E, T and no padding.
        let mut ma = ArithOpts::new(false, 12300);
        ma.compare_cas = r2.cas;
        ma.new_cas = Some(7777);
        ma.touch = Some(30);
        ma.pad = false;
        let r3 = s.arith(b"n", &ma);
        assert_eq!((r3.status, r3.value, r3.cas), (ArithStatus::Ok, 54, 7777));
        assert_eq!(m.take(), vec![ch("n", b"54", 4, 7777, T0 + 33, T0 + 3)]);
        // ma N/J: created on a miss.
        let mut viv = ArithOpts::new(true, 5);
        viv.vivify = Some((60, 40));
        let r4 = s.arith(b"v", &viv);
        assert!(r4.created);
        assert_eq!(m.take(), vec![ch("v", b"40", 0, r4.cas, T0 + 63, T0 + 3)]);
    }

    #[test]
    fn touch_gat_mg_t() {
        let (s, m, c) = setup();
        let r = s.set(&req(SetMode::Set, "k", b"v", 3, 0));
        m.take();
        c.advance(1);
        // gat: the new exptime is mirrored first, then the read hit is offered with it.
        let f = s.fetch(b"k", &touch(30, true));
        assert_eq!(f.item.unwrap().exptime, T0 + 31);
        assert_eq!(
            m.take(),
            vec![ch("k", b"v", 3, r.cas, T0 + 31, T0), Ev::ReadHit(st("k", b"v", 3, r.cas, T0 + 31, T0), 1)]
        );
        // touch / mg u T: no hit, still a change.
        s.fetch(b"k", &touch(0, false));
        assert_eq!(m.take(), vec![ch("k", b"v", 3, r.cas, 0, T0)]);
        s.fetch(b"k", &touch((T0 + 500) as i64, false));
        assert_eq!(m.take(), vec![ch("k", b"v", 3, r.cas, T0 + 500, T0)]);
        assert_eq!(s.fetch(b"missing", &touch(10, true)).item, None);
        assert_eq!(m.take(), vec![], "touch of a missing key");
        // Touched into the past: the item is expired and reclaimed on the next lookup.
        s.fetch(b"k", &touch(-1, false));
        assert_eq!(m.take(), vec![ch("k", b"v", 3, r.cas, 1, T0)]);
        assert_eq!(s.get(b"k"), None);
        assert_eq!(m.take(), vec![rm("k")]);
    }

    #[test]
    fn delete_md_and_remove() {
        let (s, m, _) = setup();
        assert_eq!(s.delete(b"k", &DeleteOpts::default()).0, DeleteStatus::NotFound);
        let r = s.set(&req(SetMode::Set, "k", b"v", 2, 0));
        m.take();
        let bad = DeleteOpts { compare_cas: Some(r.cas + 1), ..DeleteOpts::default() };
        assert_eq!(s.delete(b"k", &bad).0, DeleteStatus::Exists);
        let bad_inv = DeleteOpts { compare_cas: Some(r.cas + 1), invalidate: true, ..DeleteOpts::default() };
        assert_eq!(s.delete(b"k", &bad_inv).0, DeleteStatus::Exists);
        assert_eq!(m.take(), vec![], "failed delete");
        // md I [T] [E]: a new CAS (and TTL), so a change.
        let inv = DeleteOpts { invalidate: true, touch: Some(30), ..DeleteOpts::default() };
        assert_eq!(s.delete(b"k", &inv).0, DeleteStatus::Deleted);
        let cas = cas_of(&s, "k");
        assert!(cas > r.cas);
        assert_eq!(m.take(), vec![ch("k", b"v", 2, cas, T0 + 30, T0)]);
        let inv = DeleteOpts { invalidate: true, new_cas: Some(999), ..DeleteOpts::default() };
        s.delete(b"k", &inv);
        assert_eq!(m.take(), vec![ch("k", b"v", 2, 999, T0 + 30, T0)]);
        let ok = DeleteOpts { compare_cas: Some(999), ..DeleteOpts::default() };
        assert_eq!(s.delete(b"k", &ok).0, DeleteStatus::Deleted);
        assert_eq!(m.take(), vec![rm("k")]);
        assert_eq!(s.delete(b"k", &DeleteOpts::default()).0, DeleteStatus::NotFound);
        assert_eq!(m.take(), vec![]);
        // An oversized set changes nothing itself; the caller then removes the old item.
        s.set(&req(SetMode::Set, "big", b"small", 0, 0));
        m.take();
        let huge = vec![0u8; 1 << 20];
        assert_eq!(s.set(&req(SetMode::Set, "big", &huge, 0, 0)).status, SetStatus::TooLarge);
        assert_eq!(m.take(), vec![]);
        s.remove(b"big");
        assert_eq!(m.take(), vec![rm("big")]);
        s.remove(b"big");
        assert_eq!(m.take(), vec![], "remove of a missing key");
    }

    #[test]
    fn mg_vivify() {
        let (s, m, _) = setup();
        let viv = FetchOpts { vivify: Some(30), new_cas: Some(77), ..FetchOpts::default() };
        let f = s.fetch(b"k", &viv);
        assert!(f.created);
        // The created item is not a read hit.
        assert_eq!(m.take(), vec![ch("k", b"", 0, 77, T0 + 30, T0)]);
        let f = s.fetch(b"k", &viv);
        assert!(!f.created);
        assert_eq!(m.take(), vec![Ev::ReadHit(st("k", b"", 0, 77, T0 + 30, T0), 1)]);
        assert_eq!(s.fetch(b"other", &FetchOpts::default()).item, None);
        assert_eq!(m.take(), vec![], "plain miss");
    }

    #[test]
    fn failed_operations_emit_nothing() {
        let (s, m, _) = setup();
        let r = s.set(&req(SetMode::Set, "k", b"v", 0, 0));
        s.set(&req(SetMode::Set, "n", b"5", 0, 0));
        m.take();
        let wrong = r.cas + 1000;
        let statuses = [
            s.set(&req(SetMode::Add, "k", b"x", 0, 0)).status,
            s.set(&req(SetMode::Replace, "zz", b"x", 0, 0)).status,
            s.set(&req(SetMode::Append, "zz", b"x", 0, 0)).status,
            s.set(&req(SetMode::Prepend, "zz", b"x", 0, 0)).status,
            s.set(&SetRequest { compare_cas: r.cas, ..req(SetMode::Cas, "zz", b"x", 0, 0) }).status,
            s.set(&SetRequest { compare_cas: wrong, ..req(SetMode::Cas, "k", b"x", 0, 0) }).status,
            s.set(&SetRequest { compare_cas: wrong, ..req(SetMode::Append, "k", b"x", 0, 0) }).status,
            s.set(&req(SetMode::Set, "k", &vec![0u8; 1 << 20], 0, 0)).status,
        ];
        use SetStatus::{Exists, NotFound, NotStored, TooLarge};
        assert_eq!(statuses, [NotStored, NotStored, NotStored, NotStored, NotFound, Exists, Exists, TooLarge]);
        let arith = [
            s.arith(b"zz", &ArithOpts::new(true, 1)).status,
            s.arith(b"k", &ArithOpts::new(true, 1)).status,
            s.arith(b"k", &ArithOpts::new(false, 1)).status,
            s.arith(b"n", &ArithOpts { compare_cas: wrong, ..ArithOpts::new(true, 1) }).status,
        ];
        use ArithStatus::NonNumeric;
        assert_eq!(arith, [ArithStatus::NotFound, NonNumeric, NonNumeric, ArithStatus::Exists]);
        let del = [
            s.delete(b"zz", &DeleteOpts::default()).0,
            s.delete(b"k", &DeleteOpts { compare_cas: Some(wrong), ..DeleteOpts::default() }).0,
            s.delete(b"zz", &DeleteOpts { invalidate: true, ..DeleteOpts::default() }).0,
        ];
        assert_eq!(del, [DeleteStatus::NotFound, DeleteStatus::Exists, DeleteStatus::NotFound]);
        assert_eq!(s.fetch(b"zz", &touch(10, true)).item, None);
        assert_eq!(s.fetch(b"zz", &FetchOpts { bump: false, ..FetchOpts::default() }).item, None);
        assert_eq!(s.remove(b"zz"), 0);
        assert_eq!(m.take(), vec![]);
        // Unchanged state.
        assert_eq!(peek(&s, b"k"), Some(st("k", b"v", 0, r.cas, 0, T0)));
    }

    /// Every read hit is emitted with the item's state and its mark (counted here by the recorder); the
    /// admission policy that reads the count is `kernel::admission`'s, tested there.
    #[test]
    fn read_hit_counting() {
        let (s, m, _) = setup();
        let r = s.set(&req(SetMode::Set, "k", b"v", 9, 0));
        m.take();
        let item = st("k", b"v", 9, r.cas, 0, T0);
        for _ in 0..3 {
            s.get(b"k").unwrap();
        }
        assert_eq!(m.take(), (1..=3).map(|h| Ev::ReadHit(item.clone(), h)).collect::<Vec<_>>());
        // mg u: no hit at all.
        s.fetch(b"k", &FetchOpts { bump: false, ..FetchOpts::default() });
        assert_eq!(m.take(), vec![]);
        // The mark lives with the item: the count goes on.
        s.get(b"k").unwrap();
        assert_eq!(m.take(), vec![Ev::ReadHit(item.clone(), 4)]);
        // Another key counts on its own.
        s.set(&req(SetMode::Set, "o", b"w", 0, 0));
        m.take();
        s.get(b"o").unwrap();
        assert!(matches!(&m.take()[..], [Ev::ReadHit(Owned::Set { key, .. }, 1)] if key == b"o"));
        // A new set starts a new item: its mark is zero again.
        let r2 = s.set(&req(SetMode::Set, "k", b"v2", 9, 0));
        assert_eq!(m.take(), vec![ch("k", b"v2", 9, r2.cas, 0, T0)]);
        s.get(b"k").unwrap();
        s.get(b"k").unwrap();
        let item2 = st("k", b"v2", 9, r2.cas, 0, T0);
        assert_eq!(m.take(), vec![Ev::ReadHit(item2.clone(), 1), Ev::ReadHit(item2, 2)]);
    }

    #[test]
    fn lru_eviction() {
        // Three 136-byte items (34-byte header, key, value) and their index fit; a fourth does not.
        let o = StoreOptions { memory_limit: 3 * 158 + 1, item_size_max: 1 << 10, shards: 1 };
        let (s, m, _) = setup_with(o);
        let v = vec![b'x'; 100];
        let mut cas = Vec::new();
        for k in ["k0", "k1", "k2"] {
            cas.push(s.set(&req(SetMode::Set, k, &v, 0, 0)).cas);
        }
        m.take();
        let r3 = s.set(&req(SetMode::Set, "k3", &v, 0, 0));
        assert_eq!(m.take(), vec![rm("k0"), ch("k3", &v, 0, r3.cas, 0, T0)], "evicted before its memory is reused");
        s.get(b"k1").unwrap();
        assert_eq!(m.take(), vec![Ev::ReadHit(st("k1", &v, 0, cas[1], 0, T0), 1)]);
        let r4 = s.set(&req(SetMode::Set, "k4", &v, 0, 0));
        assert_eq!(m.take(), vec![rm("k2"), ch("k4", &v, 0, r4.cas, 0, T0)], "k1 was read: a second chance");
        // Growing an item frees its old copy first: a little growth still fits...
        let r5 = s.set(&req(SetMode::Append, "k4", b"yy", 0, 0));
        let mut v2 = v.clone();
        v2.extend_from_slice(b"yy");
        assert_eq!(m.take(), vec![ch("k4", &v2, 0, r5.cas, 0, T0)]);
        // ...more evicts the oldest item not read since (k1 had its second chance).
        let r6 = s.set(&req(SetMode::Append, "k4", &v, 0, 0));
        v2.extend_from_slice(&v);
        assert_eq!(m.take(), vec![rm("k3"), ch("k4", &v2, 0, r6.cas, 0, T0)]);
        assert_eq!(s.stats().evictions, 3);
    }

    #[test]
    fn eviction_from_other_shards() {
        let o = StoreOptions { memory_limit: 256 << 10, item_size_max: 200 << 10, shards: 64 };
        let (s, m, _) = setup_with(o);
        let v = vec![b'x'; 150 << 10];
        let keys: Vec<String> = (0..10).map(|i| format!("big{i}")).collect();
        for k in &keys {
            s.set(&req(SetMode::Set, k, &v, 0, 0));
        }
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        for e in m.take() {
            match e {
                Ev::Removed(k) => removed.push(String::from_utf8(k).unwrap()),
                Ev::Changed(Owned::Set { key, .. }) => changed.push(String::from_utf8(key).unwrap()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(changed, keys);
        let gone: Vec<String> = keys.iter().filter(|k| peek(&s, k.as_bytes()).is_none()).cloned().collect();
        removed.sort();
        assert_eq!(removed, gone, "each evicted key removed exactly once");
        assert!(removed.len() >= 8);
    }

    #[test]
    fn expired_items_reclaimed_on_lookup() {
        let (s, m, c) = setup();
        for k in ["a", "b", "c", "d", "e", "f", "g"] {
            s.set(&req(SetMode::Set, k, b"1", 0, 10));
        }
        s.fetch(b"keep", &FetchOpts { vivify: Some(0), ..FetchOpts::default() });
        m.take();
        c.advance(9);
        s.get(b"a").unwrap();
        assert!(matches!(&m.take()[..], [Ev::ReadHit(..)]), "still alive");
        c.advance(1);
        assert_eq!(s.get(b"a"), None);
        assert_eq!(m.take(), vec![rm("a")]);
        // Found expired by a write: removed first, then the write's own outcome.
        let rb = s.set(&req(SetMode::Set, "b", b"2", 0, 0));
        assert_eq!(m.take(), vec![rm("b"), ch("b", b"2", 0, rb.cas, 0, T0 + 10)]);
        assert_eq!(s.set(&req(SetMode::Replace, "c", b"2", 0, 0)).status, SetStatus::NotStored);
        assert_eq!(m.take(), vec![rm("c")]);
        assert_eq!(s.delete(b"d", &DeleteOpts::default()).0, DeleteStatus::NotFound);
        assert_eq!(m.take(), vec![rm("d")]);
        assert_eq!(s.arith(b"e", &ArithOpts::new(true, 1)).status, ArithStatus::NotFound);
        assert_eq!(m.take(), vec![rm("e")]);
        assert_eq!(s.fetch(b"f", &touch(100, true)).item, None);
        assert_eq!(m.take(), vec![rm("f")]);
        let rg = s.set(&req(SetMode::Add, "g", b"new", 0, 0));
        assert_eq!(rg.status, SetStatus::Stored);
        assert_eq!(m.take(), vec![rm("g"), ch("g", b"new", 0, rg.cas, 0, T0 + 10)]);
        // A dead item at the oldest end is reclaimed to make room, also a removal (not an eviction).
        let o = StoreOptions { memory_limit: 2 * 158 + 10, item_size_max: 1 << 10, shards: 1 };
        let (s, m, c) = setup_with(o);
        let v = vec![b'x'; 100];
        s.set(&req(SetMode::Set, "x0", &v, 0, 5));
        s.set(&req(SetMode::Set, "x1", &v, 0, 0));
        m.take();
        c.advance(5);
        let r = s.set(&req(SetMode::Set, "x2", &v, 0, 0));
        assert_eq!(m.take(), vec![rm("x0"), ch("x2", &v, 0, r.cas, 0, T0 + 5)]);
        assert_eq!((s.stats().reclaimed, s.stats().evictions), (1, 0));
    }

    #[test]
    fn flush_all_immediate_and_delayed() {
        let (s, m, c) = setup();
        s.set(&req(SetMode::Set, "a", b"1", 0, 0));
        s.set(&req(SetMode::Set, "b", b"2", 0, 0));
        m.take();
        // Immediate: one flushed call covers every item (no per-key removals).
        s.flush_all(0);
        assert_eq!(m.take(), vec![Ev::Flushed { at: T0, now: T0 }]);
        assert_eq!(s.get(b"a"), None);
        assert_eq!(m.take(), vec![]);
        let rc = s.set(&req(SetMode::Set, "c", b"3", 0, 0));
        assert_eq!(m.take(), vec![ch("c", b"3", 0, rc.cas, 0, T0)]);
        c.advance(1);
        // Delayed: at = now + delay.
        s.flush_all(10);
        assert_eq!(m.take(), vec![Ev::Flushed { at: T0 + 11, now: T0 + 1 }]);
        c.advance(5);
        let rd = s.set(&req(SetMode::Set, "d", b"4", 0, 0));
        assert_eq!(m.take(), vec![ch("d", b"4", 0, rd.cas, 0, T0 + 6)]);
        s.get(b"c").unwrap();
        m.take();
        c.advance(5);
        // Reached: items stored before `at` are reclaimed lazily, each a removal.
        assert_eq!(s.get(b"c"), None);
        assert_eq!(s.get(b"d"), None);
        assert_eq!(m.take(), vec![rm("c"), rm("d")]);
        let re = s.set(&req(SetMode::Set, "e", b"5", 0, 0));
        s.get(b"e").unwrap();
        assert_eq!(
            m.take(),
            vec![ch("e", b"5", 0, re.cas, 0, T0 + 11), Ev::ReadHit(st("e", b"5", 0, re.cas, 0, T0 + 11), 1)]
        );
        // Negative delay, and an absolute time already past: immediate.
        s.flush_all(-1);
        s.flush_all(T0 as i64);
        assert_eq!(m.take(), vec![Ev::Flushed { at: T0 + 11, now: T0 + 11 }; 2]);
        // An absolute time in the future: delayed until then.
        s.flush_all((T0 + REALTIME_MAXDELTA as u64 * 2) as i64);
        assert_eq!(m.take(), vec![Ev::Flushed { at: T0 + REALTIME_MAXDELTA as u64 * 2, now: T0 + 11 }]);
    }

    /// A model of the kernel cache (what `KernelSync` does, with the real admission policy): entries are
    /// only added by an admitted read hit, a change replaces an existing entry only, flush drops
    /// everything and a delayed one blocks admissions until its moment; an entry is served until its
    /// exptime.
    struct Model {
        copies: Mutex<HashMap<Vec<u8>, Owned>>,
        admission: crate::kernel::Admission,
    }

    impl Observer for Model {
        fn observe(&self, change: &Change<'_>) {
            match *change {
                Change::Stored(ref item) | Change::Touched(ref item) => {
                    let Record::Set { key, .. } = *item else { panic!("{item:?}") };
                    if let Some(c) = self.copies.lock().unwrap().get_mut(key) {
                        *c = Owned::from(item);
                    }
                }
                Change::Removed { key, .. } => {
                    self.copies.lock().unwrap().remove(key);
                }
                Change::Flushed { at, now, .. } => {
                    self.admission.flushed(at, now);
                    self.copies.lock().unwrap().clear();
                }
                Change::ReadHit { ref item, now, mark } => {
                    let Record::Set { key, .. } = *item else { panic!("{item:?}") };
                    self.admission.on_hit(mark, now, || {
                        self.copies.lock().unwrap().insert(key.to_vec(), Owned::from(item));
                        true
                    });
                }
            }
        }
    }

    fn ignore<T>(_: T) {}

    /// Random operations against a small store (evictions, expiry, flushes) with a model kernel cache:
    /// after every operation, everything the model would still serve equals the store's live item.
    #[test]
    fn random_ops_keep_the_model_coherent() {
        for seed in 1..=4u64 {
            let c = Arc::new(ManualClock::new(T0));
            let o = StoreOptions { memory_limit: 500, item_size_max: 200, shards: 2 };
            let model = Arc::new(Model {
                copies: Mutex::new(HashMap::new()),
                admission: crate::kernel::Admission::new(1 + seed as u32 % 2),
            });
            let s = Store::with_clock(o, Arc::new(NoJournal), c.clone()).observed_by(model.clone());
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rnd = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let keys: Vec<String> = (0..8).map(|i| format!("key{i}")).collect();
            let mut served = 0u64;
            for step in 0..20_000 {
                let k = keys[rnd(keys.len() as u64) as usize].as_str();
                let kb = k.as_bytes();
                let value = if rnd(2) == 0 { format!("{}", rnd(1000)) } else { "v".repeat(rnd(40) as usize) };
                let v = value.as_bytes();
                let ttl = [0, 0, 0, 1, 2, 5, -1, 100][rnd(8) as usize];
                let live_cas = match peek(&s, kb) {
                    Some(Owned::Set { cas, .. }) => cas,
                    _ => 0,
                };
                let some_cas = if rnd(2) == 0 { live_cas } else { live_cas + 1 };
                let flags = rnd(4) as u32;
                let op = rnd(26);
                match op {
                    0..=2 => ignore(s.set(&req(SetMode::Set, k, v, flags, ttl))),
                    3 => ignore(s.set(&req(SetMode::Add, k, v, flags, ttl))),
                    4 => ignore(s.set(&req(SetMode::Replace, k, v, flags, ttl))),
                    5 => ignore(s.set(&req(SetMode::Append, k, v, flags, 0))),
                    6 => ignore(s.set(&SetRequest { vivify: Some(ttl), ..req(SetMode::Prepend, k, v, flags, 0) })),
                    7 => ignore(s.set(&SetRequest { compare_cas: some_cas, ..req(SetMode::Cas, k, v, flags, ttl) })),
                    8 => ignore(s.set(&SetRequest {
                        compare_cas: live_cas.saturating_sub(rnd(2)),
                        allow_stale: true,
                        ..req(SetMode::Cas, k, v, flags, ttl)
                    })),
                    9 => ignore(s.arith(kb, &ArithOpts::new(true, rnd(100)))),
                    10 => ignore(s.arith(kb, &ArithOpts::new(false, rnd(100)))),
                    11 => {
                        let o = ArithOpts {
                            compare_cas: if rnd(2) == 0 { 0 } else { some_cas },
                            vivify: (rnd(2) == 0).then_some((ttl, rnd(50))),
                            touch: (rnd(2) == 0).then_some(ttl),
                            pad: false,
                            ..ArithOpts::new(rnd(2) == 0, rnd(100))
                        };
                        ignore(s.arith(kb, &o))
                    }
                    12..=15 => ignore(s.get(kb)),
                    16 => ignore(s.fetch(kb, &touch(ttl, rnd(2) == 0))),
                    17 => ignore(s.fetch(kb, &FetchOpts { vivify: Some(ttl), ..FetchOpts::default() })),
                    18 => ignore(s.delete(kb, &DeleteOpts::default())),
                    19 => ignore(s.delete(
                        kb,
                        &DeleteOpts {
                            compare_cas: (rnd(2) == 0).then_some(some_cas),
                            invalidate: true,
                            touch: (rnd(2) == 0).then_some(ttl),
                            new_cas: None,
                        },
                    )),
                    20 => ignore(s.remove(kb)),
                    21 if rnd(20) == 0 => ignore(s.flush_all(0)),
                    22 if rnd(20) == 0 => ignore(s.flush_all(1 + rnd(3) as i64)),
                    23 | 24 => c.advance(rnd(2)),
                    _ => {}
                }
                let now = c.now();
                for (key, copy) in model.copies.lock().unwrap().iter() {
                    let Owned::Set { exptime, .. } = copy else { unreachable!() };
                    if *exptime != 0 && *exptime <= now {
                        continue;
                    }
                    served += 1;
                    assert_eq!(
                        peek(&s, key).as_ref(),
                        Some(copy),
                        "seed {seed} step {step} op {op}: the kernel would serve {:?}",
                        String::from_utf8_lossy(key)
                    );
                }
            }
            assert!(served > 1000, "the model served too little to mean anything ({served})");
            assert!(s.stats().evictions > 0);
        }
    }
}
