//! Failure episodes end to end with the real store: failed writes are undone before their waiters hear of
//! it, writes are refused while failing, the log rebuilds itself from memory once the fault clears, and a
//! restart finds exactly the acknowledged state.

use super::*;
use crate::record::{Journal as _, REFUSED_SEQ};
use crate::store::{SetMode, SetRequest, Store, StoreOptions};

fn set(store: &Store, key: &str, value: &str) -> u64 {
    store.set(&SetRequest::new(SetMode::Set, key.as_bytes(), value.as_bytes(), 0, 0)).seq
}

fn value(store: &Store, key: &str) -> Option<Vec<u8>> {
    store.get(key.as_bytes()).map(|i| i.value.to_vec())
}

#[test]
fn a_failed_fsync_is_undone_refused_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&LogOptions { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::Always }).unwrap();
    let opts = StoreOptions { memory_limit: 8 << 20, item_size_max: 1 << 20, shards: 4 };
    let store = Arc::new(Store::new(opts, log.clone()));
    log.recover(&mut |r| store.apply(r)).unwrap();
    log.start_repair(store.clone()).unwrap();
    assert!(log.can_fail());
    log.wait_durable_blocking(set(&store, "a", "1")).unwrap();
    assert!(log.health().ok);

    log.shared.hooks.fail_sync.store(true, Ordering::Relaxed);
    let failed = set(&store, "a", "2");
    let err = log.wait_durable_blocking(failed).unwrap_err();
    assert_eq!(err.to_string(), "log write failed: injected fsync failure");
    assert_eq!(value(&store, "a").as_deref(), Some(&b"1"[..]), "undone before the waiter was told");
    let h = log.health();
    assert!(!h.ok && h.failing_since > 0 && h.write_errors >= 1, "{h:?}");

    // Refused up front while failing: nothing applied, the error at once.
    let seq = set(&store, "b", "x");
    assert_eq!(seq, REFUSED_SEQ);
    assert!(log.wait_durable_blocking(seq).unwrap_err().to_string().contains("injected fsync failure"));
    assert_eq!(value(&store, "b"), None);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!log.health().ok, "the rebuild fails while the fault lasts");

    log.shared.hooks.fail_sync.store(false, Ordering::Relaxed);
    let t = Instant::now();
    while !log.health().ok {
        assert!(t.elapsed() < Duration::from_secs(10), "the log did not repair itself");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(log.health().rebuilds, 1);
    log.wait_durable_blocking(set(&store, "c", "3")).unwrap();
    // A failed record stays failed after the repair, though later ones are durable.
    assert!(log.wait_durable_blocking(failed).is_err());
    log.close();
    drop((log, store));

    let (_log, _, recs) = open_collect(dir.path(), FsyncPolicy::No);
    let mut st = State::new();
    for r in &recs {
        fold(&mut st, &r.as_record());
    }
    let mut keys: Vec<_> = st.iter().map(|(k, it)| (k.clone(), it.value.clone())).collect();
    keys.sort();
    assert_eq!(keys, [(b"a".to_vec(), b"1".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
}
