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

#[test]
fn replays_every_record_type_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, _) = write_samples(dir.path(), 40);
    let (_log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs);
    assert_eq!(rec.records, 40);
    assert_eq!(rec.dropped_bytes, 0);
    assert_eq!(rec.dropped_reason, None);
}

#[test]
fn empty_dir_gets_a_fresh_log() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a/b");
    let (log, rec, got) = open_collect(&sub, FsyncPolicy::Always);
    assert!(got.is_empty());
    assert_eq!(rec, Recovery { bytes: FILE_HEADER_LEN as u64, ..Default::default() });
    drop(log);
    assert_eq!(fs::read(sub.join(LOG_FILE)).unwrap(), file_header());
}

#[test]
fn every_truncation_inside_the_last_two_records() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, bytes) = write_samples(dir.path(), 12);
    let b = boundaries(&bytes);
    let from = b[b.len() - 3];
    for cut in from..bytes.len() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(LOG_FILE), &bytes[..cut]).unwrap();
        let (log, rec, got) = open_collect(d.path(), FsyncPolicy::No);
        drop(log);
        let whole = b.iter().filter(|&&x| x <= cut).count() - 1;
        assert_eq!(got, recs[..whole], "cut at {cut}");
        let kept = b[whole];
        assert_eq!(rec.bytes, kept as u64);
        assert_eq!(rec.dropped_bytes, (cut - kept) as u64);
        assert_eq!(rec.dropped_reason.is_some(), cut != kept);
        assert_eq!(fs::metadata(d.path().join(LOG_FILE)).unwrap().len(), kept as u64, "cut at {cut}");
    }
}

#[test]
fn bit_flip_in_the_middle_keeps_the_prefix_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, mut bytes) = write_samples(dir.path(), 20);
    let b = boundaries(&bytes);
    bytes[b[8] + 11] ^= 0x10;
    fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    let (log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs[..8]);
    assert_eq!(rec.bytes, b[8] as u64);
    assert_eq!(rec.dropped_bytes, (bytes.len() - b[8]) as u64);
    let reason = rec.dropped_reason.unwrap();
    assert!(reason.contains(&format!("offset {}", b[8])) && reason.contains("crc"), "{reason}");
    // The dropped bytes are kept for the operator.
    let kept: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("kv.log.dropped-"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::read(dir.path().join(&kept[0])).unwrap(), bytes[b[8]..]);
    // The repaired log takes new records after the prefix.
    let seq = log.record(&sample(100).as_record());
    log.wait_durable_blocking(seq).unwrap();
    drop(log);
    let (_log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got.len(), 9);
    assert_eq!(got[8], sample(100));
    assert_eq!(rec.dropped_reason, None);
}

#[test]
fn zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, mut bytes) = write_samples(dir.path(), 10);
    let len = bytes.len();
    bytes.resize(len + 4096, 0);
    fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    let (_log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs);
    assert_eq!(rec.dropped_bytes, 4096);
    assert!(rec.dropped_reason.unwrap().contains("zero-filled"));
    assert_eq!(fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(), len as u64);
    // Harmless, so no copy is kept: only LOCK and the log.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn absurd_length_in_the_tail_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, mut bytes) = write_samples(dir.path(), 3);
    // A header claiming a body just under the limit, with only a few bytes behind it.
    bytes.extend_from_slice(&(MAX_BODY_LEN as u32).to_le_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4, 1, 9, 9]);
    fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    let (_log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs);
    assert_eq!(rec.dropped_bytes, 11);
    assert!(rec.dropped_reason.unwrap().contains("torn"));
}

#[test]
fn torn_or_foreign_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    fs::write(&path, &file_header()[..5]).unwrap();
    let (log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    drop(log);
    assert!(got.is_empty());
    assert_eq!(rec.dropped_bytes, 5);
    assert_eq!(fs::read(&path).unwrap(), file_header());

    fs::write(&path, b"not a log at all, keep me").unwrap();
    let err = open(dir.path(), FsyncPolicy::No, &mut |_| {}).err().unwrap();
    assert!(format!("{err:#}").contains("not a kv log"), "{err:#}");
    assert_eq!(fs::read(&path).unwrap(), b"not a log at all, keep me");
}

#[test]
fn leftover_compaction_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, _) = write_samples(dir.path(), 5);
    fs::write(dir.path().join(TMP_FILE), b"half a compaction").unwrap();
    let (_log, _, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs);
    assert!(!dir.path().join(TMP_FILE).exists());
}

#[test]
fn directory_lock_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::No);
    let err = open(dir.path(), FsyncPolicy::No, &mut |_| {}).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("in use") && msg.contains(&std::process::id().to_string()), "{msg}");
    drop(log);
    let (_log, _, _) = open_collect(dir.path(), FsyncPolicy::No);
}

#[test]
fn uncreatable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = open(&file.join("data"), FsyncPolicy::No, &mut |_| {}).err().unwrap();
    assert!(format!("{err:#}").contains("cannot create data directory"), "{err:#}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

#[test]
fn always_resolves_only_once_written_and_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::Always);
    log.shared.hooks.sync_delay_ms.store(50, Ordering::Relaxed);
    rt().block_on(async {
        for i in 0..3 {
            let r = sample(i * 5);
            let seq = log.record(&r.as_record());
            let t = Instant::now();
            log.wait_durable(seq).await.unwrap();
            assert!(t.elapsed() >= Duration::from_millis(50), "resolved before the fsync finished");
            let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
            let b = boundaries(&bytes);
            let Decoded::Ok(last, _) = decode(&bytes[b[b.len() - 2]..]) else { panic!() };
            assert_eq!(Owned::from(&last), r);
        }
    });
    assert!(log.stats().fsyncs >= 3);
    assert_eq!(log.stats().durable_seq, 3);
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::Always);
    log.shared.hooks.sync_delay_ms.store(2, Ordering::Relaxed);
    let (tasks, per) = (32usize, 20usize);
    rt().block_on(async {
        let mut hs = Vec::new();
        for t in 0..tasks {
            let log = log.clone();
            hs.push(tokio::spawn(async move {
                for i in 0..per {
                    let key = format!("t{t}-{i}").into_bytes();
                    let seq = log.record(&Record::Delete { key: &key });
                    log.wait_durable(seq).await.unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
    });
    let st = log.stats();
    assert_eq!(st.records, (tasks * per) as u64);
    assert!(st.fsyncs * 2 < st.records, "{st:?}");
    drop(log);
    let (_log, _, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got.len(), tasks * per);
}

#[test]
fn failed_fsync_is_never_reported_as_success() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::Always);
    rt().block_on(async {
        let ok = log.record(&sample(0).as_record());
        log.wait_durable(ok).await.unwrap();
        log.shared.hooks.fail_sync.store(true, Ordering::Relaxed);
        let bad = log.record(&sample(1).as_record());
        let err = log.wait_durable(bad).await.unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        log.shared.hooks.fail_sync.store(false, Ordering::Relaxed);
        // Sticky: later records fail too; earlier ones stay acknowledged.
        let later = log.record(&sample(2).as_record());
        assert!(log.wait_durable(later).await.is_err());
        log.wait_durable(ok).await.unwrap();
    });
    assert!(log.compact(&FakeStore::new(1)).is_err());
}

#[test]
fn oversized_record_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::No);
    let key = vec![b'k'; 300];
    let seq = log.record(&Record::Delete { key: &key });
    assert_eq!(seq, REJECTED_SEQ);
    assert!(rt().block_on(log.wait_durable(seq)).is_err());
    assert_eq!(log.stats().records, 0);
}

#[test]
fn everysec_writes_promptly_and_fsyncs_in_background() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::Everysec);
    let seq = log.record(&sample(0).as_record());
    rt().block_on(log.wait_durable(seq)).unwrap();
    assert_eq!(log.stats().fsyncs, 0);
    assert!(fs::metadata(dir.path().join(LOG_FILE)).unwrap().len() > FILE_HEADER_LEN as u64);
    let t = Instant::now();
    while log.stats().fsyncs == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "no background fsync");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn close_flushes_and_later_waits_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::No);
    let recs: Vec<Owned> = (0..500).map(sample).collect();
    for r in &recs {
        log.record(&r.as_record());
    }
    log.close();
    assert!(log.stats().fsyncs >= 1);
    let late = log.record(&sample(1).as_record());
    assert!(rt().block_on(log.wait_durable(late)).is_err());
    drop(log);
    let (_log, _, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs);
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

#[test]
fn compaction_shrinks_and_preserves_state() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::Always);
    let store = FakeStore::new(4);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut last = 0;
    for n in 0..5000 {
        last = store.apply(&log, &random_op(&mut rng, 1, n)).unwrap_or(last);
    }
    log.wait_durable_blocking(last).unwrap();
    let before = fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
    let st = log.compact(&store).unwrap();
    assert_eq!(st.old_bytes, before);
    assert_eq!(st.live_records as usize, store.state().len());
    assert!(st.new_bytes < before / 4, "{st:?}");
    assert_eq!(fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(), st.new_bytes);
    // Appends continue in the new file.
    for n in 5000..5100 {
        store.apply(&log, &random_op(&mut rng, 1, n));
    }
    drop(log);
    let (_log, rec, got) = open_state(dir.path());
    assert_eq!(rec.dropped_bytes, 0);
    assert_eq!(got, store.state());
}

#[test]
fn compaction_while_appending_concurrently() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::No] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open_collect(dir.path(), policy);
        let store = Arc::new(FakeStore::new(8));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for t in 0..4usize {
            let (log, store, stop) = (log.clone(), store.clone(), stop.clone());
            writers.push(std::thread::spawn(move || {
                let mut rng = 0x1234_5678_9abc_def1u64 + t as u64 * 7919;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 2000 {
                    if let Some(seq) = store.apply(&log, &random_op(&mut rng, t, n * 4 + t as u64)) {
                        if n.is_multiple_of(50) {
                            log.wait_durable_blocking(seq).unwrap();
                        }
                    }
                    n += 1;
                }
            }));
        }
        let (mut compactions, mut carried) = (0, 0);
        let t0 = Instant::now();
        while compactions < 6 || t0.elapsed() < Duration::from_millis(300) {
            carried += log.compact(&*store).unwrap().tail_bytes;
            compactions += 1;
        }
        stop.store(true, Ordering::Relaxed);
        // The interesting path: records appended during the snapshot were carried over.
        assert!(carried > 0, "{policy:?}");
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(log.stats().compactions, compactions);
        drop(log);
        let (_log, rec, got) = open_state(dir.path());
        assert_eq!(rec.dropped_bytes, 0, "{policy:?}");
        assert_eq!(got, store.state(), "{policy:?}");
    }
}

#[test]
fn background_compactor_triggers_on_growth() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open_collect(dir.path(), FsyncPolicy::Everysec);
    log.set_compaction_min_bytes(16 << 10);
    let store = Arc::new(FakeStore::new(2));
    log.start_compactor(store.clone()).unwrap();
    assert!(!log.needs_compaction());
    let mut rng = 42u64;
    let mut n = 0;
    while !log.needs_compaction() {
        store.apply(&log, &random_op(&mut rng, 3, n));
        n += 1;
    }
    let t = Instant::now();
    while log.stats().compactions == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "compactor never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!log.needs_compaction());
    drop(log);
    let (_log, _, got) = open_state(dir.path());
    assert_eq!(got, store.state());
}
