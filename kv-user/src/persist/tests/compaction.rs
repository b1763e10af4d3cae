//! Compaction, on demand and in the background.

use super::*;

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
    assert!(!log.needs_compaction(store.live_bytes()));
    let mut rng = 42u64;
    let mut n = 0;
    while !log.needs_compaction(store.live_bytes()) {
        store.apply(&log, &random_op(&mut rng, 3, n));
        n += 1;
    }
    let t = Instant::now();
    while log.stats().compactions == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "compactor never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!log.needs_compaction(store.live_bytes()));
    drop(log);
    let (_log, _, got) = open_state(dir.path());
    assert_eq!(got, store.state());
}

/// Overwrites `keys` keys `rounds` times with 1 KiB values; returns the store and the log's size.
fn overwrite(dir: &Path, keys: usize, rounds: usize) -> (Arc<FakeStore>, u64) {
    let (log, _, _) = open_collect(dir, FsyncPolicy::No);
    let store = Arc::new(FakeStore::new(2));
    for n in 0..keys * rounds {
        let key = format!("key{}", n % keys).into_bytes();
        let op = Owned::Set { key, flags: 0, exptime: 0, cas: n as u64 + 1, time: 0, value: vec![b'v'; 1024] };
        store.apply(&log, &op);
    }
    log.close();
    (store, log.stats().log_bytes)
}

/// A restarted server whose log is mostly overwritten data: the compactor's first check, right after replay,
/// compacts it (the trigger used to start from the replayed size and wait for the log to double again).
#[test]
fn compacts_right_after_a_restart_when_the_log_dwarfs_the_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let (want, before) = overwrite(dir.path(), 40, 50);
    assert!(before > 2_000_000, "{before}");
    let store = Arc::new(FakeStore::new(2));
    let (log, _) = open(dir.path(), FsyncPolicy::No, &mut |r| {
        let op = Owned::from(r);
        fold(&mut store.shard(op.key()).lock().unwrap(), r);
    })
    .unwrap();
    assert_eq!(store.state(), want.state());
    log.set_compaction_min_bytes(64 << 10);
    assert!(log.needs_compaction(store.live_bytes()));
    let t = Instant::now();
    log.start_compactor(store.clone()).unwrap();
    while log.stats().compactions == 0 {
        // The first check is immediate; the loop's one-second sleep would come after it.
        assert!(t.elapsed() < Duration::from_millis(900), "no compaction right after start-up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = log.stats().log_bytes;
    assert!(after < before / 20, "{before} -> {after}");
    assert!(!log.needs_compaction(store.live_bytes()));
    drop(log);
    let (_log, _, got) = open_state(dir.path());
    assert_eq!(got, want.state());
}

/// A log that is mostly live data is left alone after a restart, however large.
#[test]
fn a_log_of_live_data_is_not_compacted_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (want, before) = overwrite(dir.path(), 1000, 1);
    let store = Arc::new(FakeStore::new(2));
    let (log, _) = open(dir.path(), FsyncPolicy::No, &mut |r| {
        let op = Owned::from(r);
        fold(&mut store.shard(op.key()).lock().unwrap(), r);
    })
    .unwrap();
    assert_eq!(store.state(), want.state());
    log.set_compaction_min_bytes(64 << 10);
    assert!(before > 64 << 10 && !log.needs_compaction(store.live_bytes()));
    log.start_compactor(store.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log.stats().compactions, 0);
}
