//! Group commit, the fsync policies, poisoning and close.

use super::*;

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
            assert_eq!(Owned::from(&last.rec), r);
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
