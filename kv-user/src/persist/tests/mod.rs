//! Fixtures shared by the persistence tests, and failure injection; the tests sit in one file per module.

mod compaction;
mod history;
mod lifecycle;
mod recovery;
mod repair;
mod stamps;
mod writer;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Failure injection for the fsync path.
#[derive(Default)]
pub(super) struct Hooks {
    sync_delay_ms: AtomicU64,
    fail_sync: AtomicBool,
}

impl Hooks {
    pub(super) fn before_sync(&self) -> io::Result<()> {
        let ms = self.sync_delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if self.fail_sync.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Set { key: Vec<u8>, flags: u32, exptime: u64, cas: u64, time: u64, value: Vec<u8> },
    Touch { key: Vec<u8>, exptime: u64, cas: u64 },
    Delete { key: Vec<u8> },
    FlushAll { at: u64, max_cas: u64 },
}

impl Owned {
    fn from(r: &Record<'_>) -> Self {
        match *r {
            Record::Set { key, flags, exptime, cas, time, value } => {
                Owned::Set { key: key.to_vec(), flags, exptime, cas, time, value: value.to_vec() }
            }
            Record::Touch { key, exptime, cas } => Owned::Touch { key: key.to_vec(), exptime, cas },
            Record::Delete { key } => Owned::Delete { key: key.to_vec() },
            Record::FlushAll { at, max_cas } => Owned::FlushAll { at, max_cas },
        }
    }

    fn as_record(&self) -> Record<'_> {
        match self {
            Owned::Set { key, flags, exptime, cas, time, value } => {
                Record::Set { key, flags: *flags, exptime: *exptime, cas: *cas, time: *time, value }
            }
            Owned::Touch { key, exptime, cas } => Record::Touch { key, exptime: *exptime, cas: *cas },
            Owned::Delete { key } => Record::Delete { key },
            Owned::FlushAll { at, max_cas } => Record::FlushAll { at: *at, max_cas: *max_cas },
        }
    }

    fn key(&self) -> &[u8] {
        match self {
            Owned::Set { key, .. } | Owned::Touch { key, .. } | Owned::Delete { key } => key,
            Owned::FlushAll { .. } => b"",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    flags: u32,
    exptime: u64,
    cas: u64,
    time: u64,
    value: Vec<u8>,
}

type State = HashMap<Vec<u8>, Item>;

/// The store's apply, minus expiry: what replay must reconstruct.
fn fold(state: &mut State, r: &Record<'_>) {
    match *r {
        Record::Set { key, flags, exptime, cas, time, value } => {
            state.insert(key.to_vec(), Item { flags, exptime, cas, time, value: value.to_vec() });
        }
        Record::Touch { key, exptime, cas } => {
            if let Some(it) = state.get_mut(key) {
                it.exptime = exptime;
                it.cas = cas;
            }
        }
        Record::Delete { key } => {
            state.remove(key);
        }
        Record::FlushAll { max_cas, .. } => state.retain(|_, it| it.cas > max_cas),
    }
}

/// [`Log::open`] then [`Log::recover`], as the server does.
fn open(dir: &Path, policy: FsyncPolicy, apply: &mut dyn FnMut(&Record<'_>)) -> anyhow::Result<(Arc<Log>, Recovery)> {
    let log = Log::open(&LogOptions { dir: dir.to_path_buf(), fsync: policy })?;
    let rec = log.recover(apply)?;
    Ok((log, rec))
}

fn open_collect(dir: &Path, policy: FsyncPolicy) -> (Arc<Log>, Recovery, Vec<Owned>) {
    let mut got = Vec::new();
    let (log, rec) = open(dir, policy, &mut |r| got.push(Owned::from(r))).unwrap();
    (log, rec, got)
}

fn open_state(dir: &Path) -> (Arc<Log>, Recovery, State) {
    let mut st = State::new();
    let (log, rec) = open(dir, FsyncPolicy::No, &mut |r| fold(&mut st, r)).unwrap();
    (log, rec, st)
}

fn sample(i: usize) -> Owned {
    let key = format!("key{}", i % 7).into_bytes();
    match i % 5 {
        0 | 1 => Owned::Set {
            key,
            flags: i as u32,
            exptime: if i.is_multiple_of(2) { 0 } else { 2_000_000_000 + i as u64 },
            cas: i as u64 + 1,
            time: 1_700_000_000 + i as u64,
            value: vec![b'a' + (i % 26) as u8; i * 3],
        },
        2 => Owned::Touch { key, exptime: 12345 + i as u64, cas: i as u64 },
        3 => Owned::Delete { key },
        _ => Owned::FlushAll { at: 1_700_000_000 + i as u64, max_cas: i as u64 },
    }
}

/// Writes `n` sample records with a durable close; returns them and the log's bytes.
fn write_samples(dir: &Path, n: usize) -> (Vec<Owned>, Vec<u8>) {
    let (log, _, _) = open_collect(dir, FsyncPolicy::No);
    let recs: Vec<Owned> = (0..n).map(sample).collect();
    for r in &recs {
        log.record(&r.as_record());
    }
    log.close();
    drop(log);
    (recs, fs::read(dir.join(LOG_FILE)).unwrap())
}

/// Appends `op` durably, closes the log and opens it again: what replay then finds.
fn append_and_reopen(log: Arc<Log>, dir: &Path, op: &Owned) -> (Arc<Log>, Recovery, Vec<Owned>) {
    let seq = log.record(&op.as_record());
    log.wait_durable_blocking(seq).unwrap();
    drop(log);
    open_collect(dir, FsyncPolicy::No)
}

/// Byte offsets at which each record of a log file starts, plus the end.
fn boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut at = FILE_HEADER_LEN;
    let mut v = vec![at];
    while let Decoded::Ok(_, n) = decode(&bytes[at..]) {
        at += n;
        v.push(at);
    }
    assert_eq!(at, bytes.len());
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

/// A sharded store: mutations are applied and logged under the shard lock, like the real one.
struct FakeStore {
    shards: Vec<Mutex<State>>,
}

impl FakeStore {
    fn new(n: usize) -> Self {
        FakeStore { shards: (0..n).map(|_| Mutex::new(State::new())).collect() }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<State> {
        let h = key.iter().fold(7usize, |h, &b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.shards[h % self.shards.len()]
    }

    /// Applies and logs `op` unless it would be a no-op (touch/delete of a missing key).
    fn apply(&self, log: &Log, op: &Owned) -> Option<u64> {
        let mut st = self.shard(op.key()).lock().unwrap();
        let present = st.contains_key(op.key());
        if matches!(op, Owned::Touch { .. } | Owned::Delete { .. }) && !present {
            return None;
        }
        fold(&mut st, &op.as_record());
        Some(log.record(&op.as_record()))
    }

    fn state(&self) -> State {
        let mut all = State::new();
        for s in &self.shards {
            all.extend(s.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        all
    }
}

impl Snapshot for FakeStore {
    fn for_each_live(&self, f: &mut dyn FnMut(&Record<'_>)) {
        for s in &self.shards {
            let st = s.lock().unwrap();
            for (key, it) in st.iter() {
                f(&Record::Set {
                    key,
                    flags: it.flags,
                    exptime: it.exptime,
                    cas: it.cas,
                    time: it.time,
                    value: &it.value,
                });
            }
        }
    }

    fn live_bytes(&self) -> u64 {
        let st = self.state();
        st.iter().map(|(k, it)| (k.len() + it.value.len() + 48) as u64).sum()
    }
}

fn random_op(rng: &mut u64, tag: usize, n: u64) -> Owned {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let key = format!("k{}", *rng % 200).into_bytes();
    match *rng % 10 {
        0..=5 => Owned::Set {
            key,
            flags: tag as u32,
            exptime: *rng % 3,
            cas: n,
            time: n,
            value: vec![tag as u8; (*rng % 100) as usize],
        },
        6 | 7 => Owned::Touch { key, exptime: n, cas: n },
        _ => Owned::Delete { key },
    }
}
