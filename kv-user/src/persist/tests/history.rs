//! History and `--recover-to` at the file level: a rewind, and start-up after a crash at each step of a
//! rewind or a compaction's swap (the state is the old one or the new one, never a mix).

use super::*;
use crate::persist::history as h;

fn set(log: &Log, key: &str, v: &str) {
    let rec = Record::Set { key: key.as_bytes(), flags: 0, exptime: 0, cas: 1, time: 0, value: v.as_bytes() };
    log.wait_durable_blocking(log.record(&rec)).unwrap();
}

/// A log with k=old before the returned moment and k=new after it (the coarse clock's tick kept clear).
fn two_values(dir: &Path) -> u64 {
    let (log, _, _) = open_collect(dir, FsyncPolicy::Always);
    set(&log, "k", "old");
    std::thread::sleep(Duration::from_millis(30));
    let t = crate::clock::unix_now_ns_coarse();
    std::thread::sleep(Duration::from_millis(30));
    set(&log, "k", "new");
    log.close();
    t
}

fn value_of(dir: &Path) -> Option<Vec<u8>> {
    let (_log, _, st) = open_state(dir);
    st.get(&b"k"[..]).map(|it| it.value.clone())
}

fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

#[test]
fn rewind_sets_the_tail_aside_and_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = two_values(dir.path());
    let log = Log::open(&LogOptions { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::No }).unwrap();
    let r = log.rewind(t).unwrap();
    let rewind::Outcome::Rewound { records: 1, keys: 1, flushes: 0, undone, .. } = &r.outcome else {
        panic!("{r:?}");
    };
    // The old log, whole, beside it.
    assert_eq!(fs::read(undone.join(LOG_FILE)).unwrap().len() as u64, walk_len(&undone.join(LOG_FILE)));
    drop(log);
    assert_eq!(value_of(dir.path()).as_deref(), Some(&b"old"[..]));
    // The same moment again finds it applied: the log is left alone.
    let log = Log::open(&LogOptions { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::No }).unwrap();
    assert!(matches!(log.rewind(t).unwrap().outcome, rewind::Outcome::AlreadyApplied { .. }));
    // Older than the log's first record: still exact (a log that started empty is exact from the start).
    assert!(matches!(log.rewind(1).unwrap().outcome, rewind::Outcome::Rewound { records: 1, .. }));
    drop(log);
    assert_eq!(value_of(dir.path()), None);
}

fn walk_len(p: &Path) -> u64 {
    h::walk_file(p, &mut |_, _, _| true).unwrap().1
}

#[test]
fn a_recovery_interrupted_before_its_rename_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = two_values(d);
    // As far as a crash before the commit gets: the undone directory made, the prefix written aside.
    let undone = d.join(format!("{}{t}-at-1", h::UNDONE));
    fs::create_dir(&undone).unwrap();
    fs::hard_link(d.join(LOG_FILE), undone.join(LOG_FILE)).unwrap();
    fs::create_dir(d.join(format!("{}{t}-at-2{}", h::UNDONE, h::STAGING))).unwrap();
    fs::write(d.join(TMP_FILE), b"partial").unwrap();
    assert_eq!(value_of(d).as_deref(), Some(&b"new"[..]));
    assert!(names(d, h::UNDONE).is_empty(), "{:?}", names(d, ""));
    // Not recorded as applied: the recovery can be run again.
    let log = Log::open(&LogOptions { dir: d.to_path_buf(), fsync: FsyncPolicy::No }).unwrap();
    assert!(matches!(log.rewind(t).unwrap().outcome, rewind::Outcome::Rewound { .. }));
}

#[test]
fn a_recovery_interrupted_after_its_rename_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = two_values(d);
    let log = Log::open(&LogOptions { dir: d.to_path_buf(), fsync: FsyncPolicy::No }).unwrap();
    log.rewind(t).unwrap();
    drop(log);
    // A crash before the history names it set aside were removed: one is back, the same file.
    let undone = d.join(&names(d, h::UNDONE)[0]);
    let hist = h::hist_name(0, t + 5);
    fs::hard_link(undone.join(LOG_FILE), undone.join(&hist)).unwrap();
    fs::hard_link(undone.join(&hist), d.join(&hist)).unwrap();
    assert_eq!(value_of(d).as_deref(), Some(&b"old"[..]));
    assert!(names(d, "kv.log.hist-").is_empty());
    assert!(undone.join(&hist).exists(), "the copy set aside stays");
}

#[test]
fn a_compaction_interrupted_before_its_rename_leaves_no_history_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    two_values(d);
    fs::hard_link(d.join(LOG_FILE), d.join(h::hist_name(0, 42))).unwrap();
    fs::File::create(d.join(h::base_name(43))).unwrap();
    assert_eq!(value_of(d).as_deref(), Some(&b"new"[..]));
    assert!(names(d, "kv.log.hist-").is_empty());
    // The marker only narrows what the log is trusted for: the newest one counts, the older goes.
    assert_eq!(names(d, "kv.log.base-"), [h::base_name(43)]);
}

/// The log opened and replayed into a store to compact from.
fn replayed(d: &Path) -> (Arc<Log>, FakeStore) {
    let store = FakeStore::new(1);
    let (log, _) = open(d, FsyncPolicy::No, &mut |r| fold(&mut store.shards[0].lock().unwrap(), r)).unwrap();
    (log, store)
}

#[test]
fn compaction_keeps_the_former_log_for_the_window_and_a_rewind_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = two_values(d);
    let (log, store) = replayed(d);
    log.set_history(Duration::from_secs(3600)).unwrap();
    log.compact(&store).unwrap();
    let hist = names(d, "kv.log.hist-");
    assert_eq!(hist.len(), 1, "{:?}", names(d, ""));
    let base = names(d, "kv.log.base-");
    assert_eq!(base.len(), 1);
    assert!(hist[0].ends_with(&base[0]["kv.log.base-".len()..]), "{hist:?} ends where {base:?} begins");
    drop(log);
    let log = Log::open(&LogOptions { dir: d.to_path_buf(), fsync: FsyncPolicy::No }).unwrap();
    let r = log.rewind(t).unwrap();
    assert!(matches!(&r.outcome, rewind::Outcome::Rewound { from, .. } if from.ends_with(&hist[0])), "{r:?}");
    drop(log);
    assert_eq!(value_of(d).as_deref(), Some(&b"old"[..]));
    // No window: the next compaction keeps nothing.
    let (log, store) = replayed(d);
    log.set_history(Duration::ZERO).unwrap();
    log.compact(&store).unwrap();
    assert!(names(d, "kv.log.hist-").is_empty());
}
