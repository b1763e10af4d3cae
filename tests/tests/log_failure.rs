//! Log write failures (kv-server only, root: the data directory is a small tmpfs that fills up).
//!
//! Concurrent writers fill a 2 MB tmpfs with `--fsync always`. Once the disk is full: every write is
//! answered `SERVER_ERROR log write failed: ...` on a connection that stays open, a rejected write is never
//! readable (each writer reads the key back right after), reads are served, a pipelined batch gets one
//! reply per request, and `stats` shows the failure. Then the tmpfs is remounted larger: writes resume by
//! themselves, and after a SIGKILL and restart every key holds exactly its last acknowledged value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kv_tests::netns::unavailable;
use kv_tests::{Client, Server};

const WRITERS: usize = 4;
const KEYS: usize = 150;

/// A tmpfs mounted on a fresh directory; unmounted (lazily) on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::create_dir(&path).unwrap();
        let ok = mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], &path);
        ok.then_some(Tmpfs { _dir: dir, path })
    }

    fn remount(&self, opts: &str) -> bool {
        mount(&["-o", &format!("remount,{opts}")], &self.path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn mount(args: &[&str], at: &Path) -> bool {
    Command::new("mount").args(args).arg(at).status().is_ok_and(|s| s.success())
}

/// A writer's view: per key, the last acknowledged value (None: never acknowledged).
type Acked = HashMap<String, Option<Vec<u8>>>;

#[derive(Default, Debug)]
struct Counts {
    attempted: u64,
    acked: u64,
    rejected: u64,
    /// Reads right after a rejected write that returned the last acknowledged value.
    checked_after_reject: u64,
}

fn set_req(key: &str, value: &[u8]) -> Vec<u8> {
    let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
    req
}

/// Writes its own keys until it has seen `rejections` failed writes (or the deadline passes).
fn writer(c: &mut Client, id: usize, acked: &mut Acked, counts: &mut Counts, rejections: u64, deadline: Instant) {
    let mut op = 0u64;
    while counts.rejected < rejections && Instant::now() < deadline {
        let key = format!("w{id}_{}", op as usize % KEYS);
        let value = format!("w{id}-op{op}-{}", "v".repeat(900)).into_bytes();
        op += 1;
        counts.attempted += 1;
        c.send(&set_req(&key, &value));
        let line = c.line();
        if line == "STORED\r\n" {
            counts.acked += 1;
            acked.insert(key, Some(value));
            continue;
        }
        assert!(line.starts_with("SERVER_ERROR log write failed: "), "set {key}: {line:?}");
        counts.rejected += 1;
        // The connection is still open, the read is served, and the rejected value is not there.
        let got = c.get(&key);
        assert_eq!(got, acked.get(&key).cloned().flatten(), "{key} after a rejected set");
        counts.checked_after_reject += 1;
    }
}

fn check_all(c: &mut Client, acked: &Acked, when: &str) {
    for (key, value) in acked {
        assert_eq!(&c.get(key), value, "{key} {when}");
    }
}

fn stat(c: &mut Client, name: &str) -> String {
    c.send(b"stats\r\n");
    let all = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    let prefix = format!("STAT {name} ");
    let line = all.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name} in {all}"));
    line[prefix.len()..].to_string()
}

#[test]
fn a_full_disk_rejects_writes_atomically_and_recovers_by_itself() {
    kv_tests::kv_only!();
    if unsafe { libc::geteuid() } != 0 {
        unavailable("a tmpfs data directory needs root");
        return;
    }
    let Some(fs) = Tmpfs::mount("2m") else {
        unavailable("cannot mount a tmpfs");
        return;
    };
    let mut server = Server::start_in(&fs.path, &["--fsync", "always"]);
    let addr = server.addr();

    // Fill the disk with concurrent writers until each has seen failures.
    let deadline = Instant::now() + Duration::from_secs(60);
    let results: Vec<(Acked, Counts)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..WRITERS)
            .map(|id| {
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    let (mut acked, mut counts) = (Acked::new(), Counts::default());
                    writer(&mut c, id, &mut acked, &mut counts, 20, deadline);
                    (acked, counts)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut acked = Acked::new();
    let mut total = Counts::default();
    for (a, c) in results {
        acked.extend(a);
        total.attempted += c.attempted;
        total.acked += c.acked;
        total.rejected += c.rejected;
        total.checked_after_reject += c.checked_after_reject;
    }
    eprintln!("while filling the disk: {total:?}");
    assert!(total.rejected >= WRITERS as u64 * 20, "the disk never filled up: {total:?}");

    let mut c = Client::connect(addr);
    check_all(&mut c, &acked, "while the log is failing");
    assert_eq!(stat(&mut c, "log_last_write_status"), "err");
    assert_eq!(stat(&mut c, "log_last_write_ok"), "0");
    assert!(stat(&mut c, "log_failing_since").parse::<u64>().unwrap() > 0);
    assert!(stat(&mut c, "log_write_errors").parse::<u64>().unwrap() > 0);

    // One pipelined batch: each request gets its own reply; failed writes change nothing.
    let (k0, v0) = acked.iter().find_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).expect("some write was acked");
    let mut batch = set_req("px", b"x");
    batch.extend_from_slice(format!("get {k0}\r\ndelete {k0}\r\nflush_all\r\nincr n 1\r\nmn\r\n").as_bytes());
    c.send(&batch);
    let got = String::from_utf8(c.read_until(b"MN\r\n")).unwrap();
    let err = "SERVER_ERROR log write failed: No space left on device (os error 28)\r\n";
    let value = String::from_utf8(v0.clone()).unwrap();
    let expect = format!("{err}VALUE {k0} 0 {}\r\n{value}\r\nEND\r\n{err}{err}{err}MN\r\n", v0.len());
    assert_eq!(got, expect);
    assert_eq!(c.get(&k0), Some(v0.clone()), "the failed delete and flush_all removed nothing");
    assert_eq!(c.get("px"), None);
    // The same over UDP, several requests in one datagram: each its own reply.
    let mut datagram = set_req("ux", b"x");
    datagram.extend_from_slice(format!("get {k0}\r\ndelete {k0}\r\nmn\r\n").as_bytes());
    let got = String::from_utf8(kv_tests::udp_request(addr, 0x4242, &datagram)).unwrap();
    assert_eq!(got, format!("{err}VALUE {k0} 0 {}\r\n{value}\r\nEND\r\n{err}MN\r\n", v0.len()));
    assert_eq!(c.get(&k0), Some(v0), "the failed UDP delete removed nothing");
    assert_eq!(c.get("ux"), None);

    // Room again: writes resume without a restart.
    assert!(fs.remount("size=64m"), "remount larger");
    let t = Instant::now();
    loop {
        c.send(&set_req("resume", b"1"));
        if c.line() == "STORED\r\n" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "writes did not resume after the disk freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("writes resumed {:?} after the remount", t.elapsed());
    acked.insert("resume".into(), Some(b"1".to_vec()));
    assert_eq!(stat(&mut c, "log_last_write_status"), "ok");
    assert_eq!(stat(&mut c, "log_failing_since"), "0");
    check_all(&mut c, &acked, "after the log was rebuilt");
    for i in 0..50 {
        let (k, v) = (format!("after{i}"), format!("a{i}").into_bytes());
        c.set(&k, &v);
        acked.insert(k, Some(v));
    }

    // Nothing acknowledged is lost and nothing rejected comes back across a crash.
    server.crash_and_restart();
    let mut c = Client::connect(server.addr());
    check_all(&mut c, &acked, "after kill -9 and restart");
    assert_eq!(c.get("px"), None);
}
