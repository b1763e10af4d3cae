//! Undoing writes whose journal records failed (`undo`), against a journal that fails on command and an
//! observer standing in for the kernel cache.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::persist::REJECTED_SEQ;
use crate::record::{NoJournal, Undo, REFUSED_SEQ};

const T0: u64 = 1_700_000_000;

/// Numbers records from 1; everything up to `durable` is durable; `refusing` and `fail_waits` on command.
#[derive(Default)]
struct FlakyJournal {
    next: AtomicU64,
    durable: AtomicU64,
    refusing: AtomicBool,
    fail_waits: AtomicBool,
    /// Keys whose records are rejected outright (as too large for the log).
    reject: Mutex<Vec<Vec<u8>>>,
}

impl Journal for FlakyJournal {
    fn record(&self, rec: &Record<'_>) -> u64 {
        if let Record::Set { key, .. } = rec {
            if self.reject.lock().unwrap().iter().any(|k| k == key) {
                return REJECTED_SEQ;
            }
        }
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
    fn can_fail(&self) -> bool {
        true
    }
    fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }
    fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Relaxed)
    }
    fn wait_applied(&self, _seq: u64) -> io::Result<()> {
        if self.fail_waits.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected"));
        }
        Ok(())
    }
}

/// Key -> (value, cas, exptime).
type State = HashMap<Vec<u8>, (Vec<u8>, u64, u64)>;

/// What a kernel cache holding every key would hold: follows Stored/Touched/Removed/Flushed.
#[derive(Default)]
struct Mirror(Mutex<State>);

impl Observer for Mirror {
    fn observe(&self, change: &Change<'_>) {
        let mut m = self.0.lock().unwrap();
        match *change {
            Change::Stored(Record::Set { key, value, cas, exptime, .. })
            | Change::Touched(Record::Set { key, value, cas, exptime, .. }) => {
                m.insert(key.to_vec(), (value.to_vec(), cas, exptime));
            }
            Change::Removed { key, .. } => {
                m.remove(key);
            }
            Change::Flushed { .. } => m.clear(),
            _ => {}
        }
    }
}

struct Fixture {
    store: Arc<Store>,
    journal: Arc<FlakyJournal>,
    mirror: Arc<Mirror>,
}

fn fixture() -> Fixture {
    let journal = Arc::new(FlakyJournal::default());
    let mirror = Arc::new(Mirror::default());
    let opts = StoreOptions { memory_limit: 16 << 20, item_size_max: 1 << 20, shards: 4 };
    let store = Store::with_clock(opts, journal.clone(), Arc::new(ManualClock::new(T0))).observed_by(mirror.clone());
    Fixture { store: Arc::new(store), journal, mirror }
}

impl Fixture {
    fn set(&self, key: &str, value: &str) -> u64 {
        let r = self.store.set(&SetRequest::new(SetMode::Set, key.as_bytes(), value.as_bytes(), 0, 0));
        assert_eq!(r.status, SetStatus::Stored);
        r.seq
    }

    /// Every record so far is durable.
    fn sync(&self) {
        self.journal.durable.store(self.journal.next.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The first sequence number the next write gets.
    fn next_seq(&self) -> u64 {
        self.journal.next.load(Ordering::Relaxed) + 1
    }

    /// Key -> (value, cas, exptime) of every live key.
    fn state(&self) -> State {
        let mut m = HashMap::new();
        self.store.for_each_live(&mut |r| {
            if let Record::Set { key, value, cas, exptime, .. } = *r {
                m.insert(key.to_vec(), (value.to_vec(), cas, exptime));
            }
        });
        m
    }

    /// The kernel stand-in agrees with the store on every key it holds.
    fn assert_coherent(&self) {
        let state = self.state();
        for (k, v) in self.mirror.0.lock().unwrap().iter() {
            assert_eq!(state.get(k), Some(v), "observer holds {k:?} as {v:?}");
        }
    }
}

/// Every kind of write, applied after the durable state and then undone, leaves exactly the durable state
/// (values, CAS, exptimes), and the observer follows the restore.
#[test]
fn undo_restores_the_durable_state_for_every_write() {
    let f = fixture();
    for (k, v) in [("over", "1"), ("del", "2"), ("app", "3"), ("num", "99"), ("short", "100"), ("touch", "t")] {
        f.set(k, v);
    }
    f.set("stale", "s");
    f.sync();
    let before = f.state();
    let from = f.next_seq();

    f.set("over", "new");
    f.set("fresh", "x");
    f.store.delete(b"del", &DeleteOpts::default());
    f.store.set(&SetRequest::new(SetMode::Append, b"app", b"+more", 0, 0));
    f.store.arith(b"num", &ArithOpts::new(true, 1)); // 99 -> 100: a longer value, a new item
    f.store.arith(b"short", &ArithOpts::new(false, 1)); // 100 -> 99 padded: in place
    f.store.fetch(b"touch", &FetchOpts { touch: Some(100), ..FetchOpts::default() });
    f.store.delete(b"stale", &DeleteOpts { invalidate: true, ..DeleteOpts::default() });
    f.store.fetch(b"viv", &FetchOpts { vivify: Some(10), ..FetchOpts::default() });
    let mut vivify = ArithOpts::new(true, 1);
    vivify.vivify = Some((0, 5));
    f.store.arith(b"ma", &vivify);
    f.store.remove(b"over");
    f.set("over", "again"); // several failed writes to one key: back to before the first
    assert_ne!(f.state(), before);
    f.assert_coherent();

    let undone = f.store.undo_from(from);
    assert_eq!(undone, 12);
    assert_eq!(f.state(), before);
    f.assert_coherent();
    assert!(f.mirror.0.lock().unwrap().get(&b"fresh"[..]).is_none(), "a created key leaves the kernel too");
    assert_eq!(f.store.get(b"stale").map(|i| i.stale), Some(false), "md I undone");
    assert_eq!(f.store.undo_from(from), 0, "nothing twice");
}

/// Only records from the failed one on are undone: a durable write to the same key stays.
#[test]
fn durable_writes_are_not_undone() {
    let f = fixture();
    f.set("k", "v1");
    f.set("k", "v2");
    f.sync();
    let from = f.next_seq();
    f.set("k", "v3");
    f.set("other", "o");
    f.store.undo_from(from);
    assert_eq!(f.store.get(b"k").unwrap().value, &b"v2"[..]);
    assert!(f.store.get(b"other").is_none());
    f.assert_coherent();
}

/// Before-images go once durable (on the shard's next write, or by housekeeping), so memory held for
/// undo stays bounded by what is in flight.
#[test]
fn durable_images_are_pruned() {
    let f = fixture();
    for i in 0..100 {
        f.set(&format!("k{i}"), "v");
    }
    let held = |f: &Fixture| f.store.shards.iter().map(|s| s.lock().undo.len()).sum::<usize>();
    assert_eq!(held(&f), 100);
    f.sync();
    f.store.reclaim_expired();
    assert_eq!(held(&f), 0);
    // Without a journal that can fail nothing is kept at all.
    let plain =
        Store::new(StoreOptions { memory_limit: 1 << 20, item_size_max: 1 << 16, shards: 1 }, Arc::new(NoJournal));
    plain.set(&SetRequest::new(SetMode::Set, b"a", b"b", 0, 0));
    assert_eq!(plain.shards[0].lock().undo.len(), 0);
}

/// While the journal refuses, no write changes anything and each reports [`REFUSED_SEQ`]; reads go on.
#[test]
fn refused_writes_change_nothing() {
    let f = fixture();
    f.set("k", "v");
    f.sync();
    let before = f.state();
    f.journal.refusing.store(true, Ordering::Relaxed);
    let set = f.store.set(&SetRequest::new(SetMode::Set, b"k", b"new", 0, 0));
    assert_eq!(set.seq, REFUSED_SEQ);
    assert_eq!(f.store.delete(b"k", &DeleteOpts::default()).1, REFUSED_SEQ);
    assert_eq!(f.store.remove(b"k"), REFUSED_SEQ);
    assert_eq!(f.store.arith(b"k", &ArithOpts::new(true, 1)).seq, REFUSED_SEQ);
    assert_eq!(f.store.fetch(b"k", &FetchOpts { touch: Some(5), ..FetchOpts::default() }).seq, REFUSED_SEQ);
    assert_eq!(f.store.flush_all(0), REFUSED_SEQ);
    assert_eq!(f.state(), before);
    assert_eq!(f.store.get(b"k").unwrap().value, &b"v"[..], "reads are served");
    assert_eq!(f.journal.next.load(Ordering::Relaxed), 1, "nothing journaled");
}

/// flush_all is applied only once its record is durable: a failed one removes nothing.
#[test]
fn a_failed_flush_all_removes_nothing() {
    let f = fixture();
    f.set("a", "1");
    f.set("b", "2");
    f.sync();
    f.journal.fail_waits.store(true, Ordering::Relaxed);
    let seq = f.store.flush_all(0);
    assert!(seq > 0 && seq < REFUSED_SEQ);
    assert_eq!(f.state().len(), 2);
    assert_eq!(f.mirror.0.lock().unwrap().len(), 2, "the kernel stand-in was not flushed");
    f.journal.fail_waits.store(false, Ordering::Relaxed);
    f.store.flush_all(0);
    assert!(f.state().is_empty());
}

/// A record the journal rejects outright is undone before the write returns.
#[test]
fn a_rejected_record_is_undone_at_once() {
    let f = fixture();
    f.set("big", "old");
    f.journal.reject.lock().unwrap().push(b"big".to_vec());
    let r = f.store.set(&SetRequest::new(SetMode::Set, b"big", b"new", 0, 0));
    assert_eq!(r.seq, REJECTED_SEQ);
    assert_eq!(f.store.get(b"big").unwrap().value, &b"old"[..]);
    f.assert_coherent();
}

/// Many writers, with failures starting at random points: after the undo, the store equals the state
/// of the durable records replayed in order.
#[test]
fn concurrent_writers_undo_to_the_durable_prefix() {
    for round in 0..5u64 {
        let f = fixture();
        let log = Arc::new(Mutex::new(Vec::<(u64, String, Option<String>)>::new()));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (f, log) = (&f, log.clone());
                s.spawn(move || {
                    for i in 0..300u64 {
                        let key = format!("k{}", (i * 7 + t + round) % 23);
                        let (seq, v) = if i % 5 == 0 {
                            (f.store.delete(key.as_bytes(), &DeleteOpts::default()).1, None)
                        } else {
                            let v = format!("{t}-{i}");
                            (f.set(&key, &v), Some(v))
                        };
                        if seq > 0 {
                            log.lock().unwrap().push((seq, key, v));
                        }
                    }
                });
            }
        });
        let mut log = std::mem::take(&mut *log.lock().unwrap());
        log.sort();
        let from = log[log.len() / (round as usize + 2)].0;
        f.store.undo_from(from);
        let mut expect = HashMap::new();
        for (seq, key, v) in log.into_iter().filter(|e| e.0 < from) {
            let _ = seq;
            match v {
                Some(v) => expect.insert(key.into_bytes(), v.into_bytes()),
                None => expect.remove(key.as_bytes()),
            };
        }
        let got: HashMap<_, _> = f.state().into_iter().map(|(k, (v, _, _))| (k, v)).collect();
        assert_eq!(got, expect, "round {round}");
        f.assert_coherent();
    }
}
