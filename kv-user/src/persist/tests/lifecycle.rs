//! The directory lock and the open -> recover -> close life cycle.

use super::*;

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

#[test]
fn phases_move_forward_once() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, _) = write_samples(dir.path(), 5);
    let log = Log::open(&LogOptions { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::Everysec }).unwrap();
    assert_eq!(log.phase(), Phase::Opened);
    let err = log.compact(&FakeStore::new(1)).unwrap_err();
    assert!(err.to_string().contains("not recovered"), "{err}");
    assert!(log.start_compactor(Arc::new(FakeStore::new(1))).is_err());
    let mut got = Vec::new();
    let rec = log.recover(&mut |r| got.push(Owned::from(r))).unwrap();
    assert_eq!((got, rec.records), (recs, 5));
    assert_eq!(log.phase(), Phase::Running);
    assert!(log.recover(&mut |_| panic!("replayed twice")).is_err());
    log.start_compactor(Arc::new(FakeStore::new(1))).unwrap();
    log.close();
    assert_eq!(log.phase(), Phase::Closed);
    log.close();
    let err = log.compact(&FakeStore::new(1)).unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
}

/// The store is built with the log as its journal before replay; a record that slips in before `recover` is
/// a bug (a panic in debug builds) and must not reach the file.
#[test]
#[cfg_attr(debug_assertions, should_panic(expected = "before Log::recover"))]
fn record_before_recover_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, bytes) = write_samples(dir.path(), 5);
    let log = Log::open(&LogOptions { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::No }).unwrap();
    let seq = log.record(&sample(9).as_record());
    assert_eq!(seq, REJECTED_SEQ);
    assert!(rt().block_on(log.wait_durable(seq)).is_err());
    assert_eq!(log.stats().records, 0);
    let mut got = Vec::new();
    log.recover(&mut |r| got.push(Owned::from(r))).unwrap();
    assert_eq!(got, recs);
    assert_eq!(fs::read(dir.path().join(LOG_FILE)).unwrap(), bytes);
    let (_log, _, got) = append_and_reopen(log, dir.path(), &sample(10));
    assert_eq!(got, [recs, vec![sample(10)]].concat());
}

#[test]
fn close_before_recover_leaves_the_log_and_frees_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, bytes) = write_samples(dir.path(), 5);
    let log = Log::open(&LogOptions { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::Always }).unwrap();
    log.close();
    assert_eq!(log.phase(), Phase::Closed);
    assert!(log.recover(&mut |_| {}).is_err());
    drop(log);
    assert_eq!(fs::read(dir.path().join(LOG_FILE)).unwrap(), bytes);
    let (_log, _, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, recs);
}
