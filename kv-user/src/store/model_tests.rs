//! Model check of the segment store: random operations (sizes around every boundary: tiny, half a
//! segment, large blocks) on a store far smaller than the data, against a plain map that applies the
//! same operations and drops exactly the keys the store's change stream says it removed. After every
//! step the key it touched (every 64 steps, every key) reads the same from both, the item and byte counts agree, and the memory charged stays
//! within the limit.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::record::NoJournal;

const T0: u64 = 1_700_000_000;

/// Follows the change stream: which keys the store removed on its own (evicted, expired, flushed).
#[derive(Default)]
struct Removals(Mutex<Vec<Vec<u8>>>);

impl Observer for Removals {
    fn observe(&self, change: &Change<'_>) {
        if let Change::Removed { key, cause } = change {
            if *cause != Removal::Deleted {
                self.0.lock().unwrap().push(key.to_vec());
            }
        }
    }
}

enum Effect {
    Put(Vec<u8>, u64),
    Remove,
    Append(Vec<u8>),
    Expire(u64),
    Clear,
    Nothing,
}

/// The value and absolute exptime the model holds per key.
type Model = HashMap<Vec<u8>, (Vec<u8>, u64)>;

fn peek(s: &Store, key: &[u8]) -> Option<Vec<u8>> {
    s.fetch_with(key, &FetchOpts { bump: false, ..FetchOpts::default() }, |f| f.item.map(|i| i.value.to_vec()))
}

fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move |n| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    }
}

fn run(seed: u64, limit: u64, shards: usize, steps: u32) {
    let clock = Arc::new(ManualClock::new(T0));
    let removed = Arc::new(Removals::default());
    let item_max = (limit / 4) as usize;
    let o = StoreOptions { memory_limit: limit, item_size_max: item_max, shards };
    let s = Store::with_clock(o, Arc::new(NoJournal), clock.clone()).observed_by(removed.clone());
    let seg = s.segment_size();
    let mut rnd = xorshift(seed);
    let keys: Vec<Vec<u8>> = (0..400).map(|i| format!("key:{i}").into_bytes()).collect();
    let mut model = Model::new();
    let mut evicted_seen = 0;
    for step in 0..steps {
        let key = &keys[rnd(keys.len() as u64) as usize];
        // Sizes cluster at the edges: empty, small, around half a segment (the large-item cut), big.
        let len = match rnd(6) {
            0 => 0,
            1 | 2 => rnd(64) as usize,
            3 => (seg / 2).saturating_sub(48) + rnd(96) as usize,
            4 => rnd(seg as u64 * 2) as usize,
            _ => rnd(item_max as u64 / 2) as usize,
        };
        let value: Vec<u8> = (0..len).map(|i| b'a' + ((i as u64 + step as u64) % 26) as u8).collect();
        let ttl = [0i64, 0, 0, 1, 3][rnd(5) as usize];
        let now = clock.now();
        // What the operation did, applied to the model after the removals it emitted (a write that
        // finds its key expired first removes the old item, then stores the new one).
        let effect = match rnd(12) {
            0..=4 => {
                if s.set(&SetRequest::new(SetMode::Set, key, &value, 0, ttl)).status == SetStatus::Stored {
                    Effect::Put(value, abs_exptime(ttl, now))
                } else {
                    s.remove(key);
                    Effect::Remove
                }
            }
            5 => {
                let tail = &value[..len.min(100)];
                match s.set(&SetRequest::new(SetMode::Append, key, tail, 0, 0)).status {
                    SetStatus::Stored => Effect::Append(tail.to_vec()),
                    _ => Effect::Nothing,
                }
            }
            6 => {
                s.delete(key, &DeleteOpts::default());
                Effect::Remove
            }
            7 => {
                let r = s.set(&SetRequest::new(SetMode::Set, key, b"12345", 0, 0));
                assert_eq!(r.status, SetStatus::Stored);
                let a = s.arith(key, &ArithOpts::new(rnd(2) == 0, rnd(100_000)));
                assert_eq!(a.status, ArithStatus::Ok);
                let mut v = a.value.to_string().into_bytes();
                v.resize(v.len().max(5), b' ');
                Effect::Put(v, 0)
            }
            8 => match s.fetch(key, &FetchOpts { touch: Some(ttl), ..FetchOpts::default() }).item {
                Some(_) => Effect::Expire(abs_exptime(ttl, now)),
                None => Effect::Nothing,
            },
            9 if rnd(50) == 0 => {
                s.flush_all(0);
                Effect::Clear
            }
            10 => {
                clock.advance(rnd(2));
                Effect::Nothing
            }
            _ => {
                let _ = s.get(key);
                Effect::Nothing
            }
        };
        // Whatever the store removed on its own leaves the model too; then both must agree exactly.
        let gone: Vec<Vec<u8>> = std::mem::take(&mut *removed.0.lock().unwrap());
        evicted_seen += gone.len();
        for k in gone {
            model.remove(&k);
        }
        match effect {
            Effect::Put(v, exp) => drop(model.insert(key.clone(), (v, exp))),
            Effect::Remove => drop(model.remove(key)),
            Effect::Append(tail) => model.get_mut(key).expect("appended to a key the model holds").0.extend(tail),
            Effect::Expire(exp) => model.get_mut(key).expect("touched a key the model holds").1 = exp,
            Effect::Clear => model.clear(),
            Effect::Nothing => {}
        }
        let now = clock.now();
        model.retain(|_, (_, exp)| *exp == 0 || *exp > now);
        // Every key now and then; the one this step touched always.
        let check: &[Vec<u8>] = if step % 64 == 0 { &keys } else { std::slice::from_ref(key) };
        for k in check {
            let want = model.get(k).map(|(v, _)| v.clone());
            assert_eq!(peek(&s, k), want, "seed {seed} step {step}: {}", String::from_utf8_lossy(k));
        }
        for k in std::mem::take(&mut *removed.0.lock().unwrap()) {
            assert!(!model.contains_key(&k), "seed {seed} step {step}: a live key was removed");
        }
        if check.len() > 1 {
            // Every expired key was just looked up, so reclaimed: the counts are exact.
            let st = s.stats();
            assert_eq!(st.curr_items as usize, model.len(), "seed {seed} step {step}: item count");
            let bytes: usize = model.iter().map(|(k, (v, _))| item::item_len(k.len(), v.len())).sum();
            assert_eq!(st.bytes as usize, bytes, "seed {seed} step {step}: byte count");
        }
        assert!(s.memory_used() <= limit, "seed {seed} step {step}: {} charged over {limit}", s.memory_used());
    }
    assert!(evicted_seen > 100, "seed {seed}: the store never ran out of memory ({evicted_seen} removals)");
}

#[test]
fn random_operations_match_a_plain_map() {
    for seed in 1..=3 {
        run(seed, 256 << 10, 4, 6000);
    }
    // One shard and a tiny limit: segments of a few hundred bytes, most items large.
    run(7, 24 << 10, 1, 6000);
    // Many shards: a store at its limit evicts across shards.
    run(9, 1 << 20, 64, 4000);
}
