//! Record stamps and the format version: old (version 1) logs are replayed and rewritten, new records are
//! stamped in log order.

use super::*;

/// `sample(0..20)` as the version 1 build wrote them (`write_samples(dir, 20)` before stamps existed).
const V1_LOG: &[u8] = include_bytes!("fixtures/v1.log");

fn stamps(bytes: &[u8]) -> Vec<u64> {
    assert_eq!(parse_header(bytes), Ok(Version::CURRENT));
    let b = boundaries(bytes);
    b[..b.len() - 1]
        .iter()
        .map(|&at| match decode(&bytes[at..]) {
            Decoded::Ok(e, _) => e.stamp_ns,
            other => panic!("{other:?} at {at}"),
        })
        .collect()
}

#[test]
fn a_version_1_log_replays_and_is_rewritten_in_the_current_format() {
    assert_eq!(parse_header(V1_LOG), Ok(Version::V1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    fs::write(&path, V1_LOG).unwrap();
    let want: Vec<Owned> = (0..20).map(sample).collect();
    let (log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, want);
    assert_eq!((rec.records, rec.upgraded_from, rec.dropped_bytes), (20, Some(1), 0));
    // Same records, 8 bytes more each, unknown time.
    let bytes = fs::read(&path).unwrap();
    assert_eq!(rec.bytes, bytes.len() as u64);
    assert_eq!(bytes.len(), V1_LOG.len() + 20 * STAMP_LEN);
    assert_eq!(stamps(&bytes), vec![0; 20]);
    assert!(!dir.path().join(TMP_FILE).exists());
    // New records land in the rewritten file, stamped.
    let (log2, rec, got) = append_and_reopen(log, dir.path(), &sample(100));
    assert_eq!(got[..20], want[..]);
    assert_eq!(got[20], sample(100));
    assert_eq!(rec.upgraded_from, None);
    assert!(rec.last_stamp_ns > 0);
    drop(log2);
    let s = stamps(&fs::read(&path).unwrap());
    assert_eq!(s.len(), 21);
    assert_eq!(s[20], rec.last_stamp_ns);
}

#[test]
fn a_damaged_version_1_log_keeps_its_valid_prefix() {
    let want: Vec<Owned> = (0..20).map(sample).collect();
    let mut at = FILE_HEADER_LEN;
    let mut b = vec![at];
    while let Decoded::Ok(_, n) = decode_as(Version::V1, &V1_LOG[at..]) {
        at += n;
        b.push(at);
    }
    assert_eq!((at, b.len()), (V1_LOG.len(), 21));

    // Torn inside the last record.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(LOG_FILE), &V1_LOG[..V1_LOG.len() - 5]).unwrap();
    let (_log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, want[..19]);
    assert_eq!((rec.upgraded_from, rec.dropped_bytes), (Some(1), (b[20] - b[19] - 5) as u64));
    assert_eq!(stamps(&fs::read(dir.path().join(LOG_FILE)).unwrap()).len(), 19);

    // A flipped bit in record 7: the first 7 survive, the rest is kept aside.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = V1_LOG.to_vec();
    bad[b[7] + 10] ^= 0x40;
    fs::write(dir.path().join(LOG_FILE), &bad).unwrap();
    let (_log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(got, want[..7]);
    assert!(rec.dropped_reason.unwrap().contains(&format!("offset {}", b[7])));
    let dropped: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("kv.log.dropped-"))
        .collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(fs::read(dir.path().join(&dropped[0])).unwrap(), bad[b[7]..]);
}

#[test]
fn records_are_stamped_with_the_wall_clock_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let before = crate::clock::unix_now_ns();
    let (_, bytes) = write_samples(dir.path(), 50);
    let after = crate::clock::unix_now_ns();
    let s = stamps(&bytes);
    assert_eq!(s.len(), 50);
    assert!(s.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    // The coarse clock lags the precise one by at most a tick.
    assert!(s[0] + 10_000_000 >= before && s[49] <= after, "{before} {s:?} {after}");
}

#[test]
fn stamps_never_go_below_the_last_one_in_the_log() {
    // A log whose last record claims to come from the future (a clock that was ahead, then stepped back).
    let dir = tempfile::tempdir().unwrap();
    let future = crate::clock::unix_now_ns() + 3_600_000_000_000;
    let mut bytes = file_header(Version::CURRENT).to_vec();
    encode(&sample(0).as_record(), future, &mut bytes).unwrap();
    fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    let (log, rec, _) = open_collect(dir.path(), FsyncPolicy::No);
    assert_eq!(rec.last_stamp_ns, future);
    drop(append_and_reopen(log, dir.path(), &sample(1)));
    assert_eq!(stamps(&fs::read(dir.path().join(LOG_FILE)).unwrap()), vec![future, future]);
}

#[test]
fn compaction_writes_the_current_format_stamped_in_order() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(LOG_FILE), V1_LOG).unwrap();
    let store = FakeStore::new(2);
    let (log, _) = open(dir.path(), FsyncPolicy::No, &mut |r| {
        let op = Owned::from(r);
        fold(&mut store.shard(op.key()).lock().unwrap(), r);
    })
    .unwrap();
    let t0 = crate::clock::unix_now_ns();
    let mut rng = 7u64;
    for n in 0..200 {
        store.apply(&log, &random_op(&mut rng, 1, n));
    }
    log.compact(&store).unwrap();
    store.apply(&log, &random_op(&mut rng, 1, 1000));
    drop(log);
    let s = stamps(&fs::read(dir.path().join(LOG_FILE)).unwrap());
    assert!(!s.is_empty() && s[0] + 10_000_000 >= t0, "{t0} {s:?}");
    assert!(s.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    let (_log, _, got) = open_state(dir.path());
    assert_eq!(got, store.state());
}
