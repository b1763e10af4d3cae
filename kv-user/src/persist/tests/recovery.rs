//! Replay and tail repair.

use super::*;

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
    assert_eq!(fs::read(sub.join(LOG_FILE)).unwrap(), file_header(Version::CURRENT));
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
    let (_log, rec, got) = append_and_reopen(log, dir.path(), &sample(100));
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
    // Harmless, so no copy is kept: only LOCK, the log and its base marker (`history`).
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
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
    fs::write(&path, &file_header(Version::CURRENT)[..5]).unwrap();
    let (log, rec, got) = open_collect(dir.path(), FsyncPolicy::No);
    drop(log);
    assert!(got.is_empty());
    assert_eq!(rec.dropped_bytes, 5);
    assert_eq!(fs::read(&path).unwrap(), file_header(Version::CURRENT));

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
