//! Point-in-time recovery through the real binary (kv-server only): `--recover-to` a moment before a flush_all
//! or an overwrite, the plain restarts after it, the history kept across compactions, and the refusal of a
//! moment older than the history window.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_tests::{free_port, kv_only, run_with_timeout, server_bin, server_command, Client, Server};
use serde_json::Value;

/// Now, as `--recover-to` takes it, with the writes before and after it well apart: the log's clock is the
/// coarse one (a tick behind at most), so a gap of a few ticks keeps every stamp on its side.
fn moment() -> String {
    std::thread::sleep(Duration::from_millis(50));
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// A server whose log lines are collected (the start-up report is asserted on).
struct Logged {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Logged {
    fn start(dir: &Path, extra: &[&str]) -> Logged {
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = server_command(port, dir, &extra);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Logged { child, port, lines }
    }

    /// The log lines up to the one saying replay is done (the report comes before it); panics if none comes.
    fn startup_lines(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let done = l.contains(" items live");
            out.push(l);
            if done {
                return out;
            }
        }
        panic!("no start-up report; log lines: {out:#?}");
    }

    fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                drop(s);
                return Client::connect(([127, 0, 0, 1], self.port).into());
            }
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(mut self) {
        // SAFETY: kill(2) takes no memory; the pid is our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert_eq!(st.code(), Some(0));
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files of `dir` whose name starts with `prefix`, sorted.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// `kv-server log dump --json --data-dir dir --file file`: the operations, in order.
fn dumped_ops(dir: &Path, file: &Path) -> Vec<String> {
    let mut cmd = Command::new(server_bin());
    cmd.args(["log", "dump", "--json", "--data-dir"]).arg(dir).arg("--file").arg(file);
    let (st, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(st.success(), "{err}");
    let op = |l: &str| {
        let v: Value = serde_json::from_str(l).unwrap();
        format!("{} {}", v["op"].as_str().unwrap(), v["key"].as_str().unwrap_or(""))
    };
    out.lines().map(op).collect()
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    (tmp, dir)
}

#[test]
fn flush_all_is_undone_and_the_recovered_state_sticks() {
    kv_only!();
    let (_tmp, dir) = data_dir();
    let mut s = Server::start_in(&dir, &["--fsync", "always"]);
    let mut c = s.client();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        c.set(k, v.as_bytes());
    }
    let before = moment();
    c.expect(b"flush_all\r\n", b"OK\r\n");
    c.set("d", b"4");
    c.set("a", b"overwritten");
    assert_eq!(s.terminate(), Some(0));

    let r = Logged::start(&dir, &["--fsync", "always", "--recover-to", &before]);
    let lines = r.startup_lines();
    let report = lines.iter().find(|l| l.contains("recovered to ")).unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(report.contains("skipped 3 records (2 keys, 1 flush_all)"), "{report}");
    let mut c = r.client();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }
    assert_eq!(c.get("d"), None);
    c.set("e", b"5");
    r.terminate();

    // What was undone is kept aside, whole, and readable with the log tools.
    let undone = named(&dir, "kv.log.undone-");
    assert_eq!(undone.len(), 1, "{undone:?}");
    assert!(report.contains(&undone[0].display().to_string()), "{report}");
    let ops = dumped_ops(&dir, &undone[0].join("kv.log"));
    assert_eq!(ops, ["set a", "set b", "set c", "flush_all ", "set d", "set a"]);

    // The same flag again (a restart loop) changes nothing: the write made since stays.
    let r = Logged::start(&dir, &["--recover-to", &before]);
    let lines = r.startup_lines();
    assert!(lines.iter().any(|l| l.contains("was already applied")), "{lines:#?}");
    assert_eq!(r.client().get("e").as_deref(), Some(&b"5"[..]));
    r.terminate();

    // A plain restart: the recovered state plus the writes made since; the undone ones never come back.
    let s = Server::start_in(&dir, &[]);
    let mut c = s.client();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("e", "5")] {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }
    assert_eq!(c.get("d"), None);
    assert_eq!(named(&dir, "kv.log.undone-").len(), 1);
}

#[test]
fn an_overwrite_is_undone_and_a_moment_after_the_log_is_a_plain_start() {
    kv_only!();
    let (_tmp, dir) = data_dir();
    let mut s = Server::start_in(&dir, &["--fsync", "always"]);
    let mut c = s.client();
    c.set("k", b"good");
    c.set("other", b"x");
    let before = moment();
    c.set("k", b"bad");
    assert_eq!(s.terminate(), Some(0));

    // A moment after the last record: nothing to undo, and the log line says so.
    let r = Logged::start(&dir, &["--recover-to", "2100-01-01T00:00:00Z"]);
    let lines = r.startup_lines();
    assert!(lines.iter().any(|l| l.contains("nothing was logged after it") && l.contains("plain start")), "{lines:#?}");
    assert_eq!(r.client().get("k").as_deref(), Some(&b"bad"[..]));
    r.terminate();

    let r = Logged::start(&dir, &["--recover-to", &before]);
    let lines = r.startup_lines();
    assert!(lines.iter().any(|l| l.contains("skipped 1 records (1 keys, 0 flush_all)")), "{lines:#?}");
    let mut c = r.client();
    assert_eq!(c.get("k").as_deref(), Some(&b"good"[..]));
    c.set("new", b"n");
    r.terminate();

    let s = Server::start_in(&dir, &[]);
    let mut c = s.client();
    assert_eq!(c.get("k").as_deref(), Some(&b"good"[..]));
    assert_eq!(c.get("other").as_deref(), Some(&b"x"[..]));
    assert_eq!(c.get("new").as_deref(), Some(&b"n"[..]));
}

/// Overwrites one key with 1 KiB values until `hist` former logs are kept (one per compaction, with
/// `--compact-min-size 4k`).
fn compact_until(c: &mut Client, dir: &Path, hist: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while named(dir, "kv.log.hist-").len() < hist {
        assert!(Instant::now() < deadline, "no compaction: {:?}", std::fs::read_dir(dir).unwrap().collect::<Vec<_>>());
        c.set("big", format!("{i:01024}").as_bytes());
        i += 1;
        if i % 40 == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn history_survives_compaction_within_the_window_and_older_moments_are_refused() {
    kv_only!();
    let (_tmp, dir) = data_dir();
    let flags = ["--fsync", "always", "--history", "4s", "--compact-min-size", "4k"];
    let mut s = Server::start_in(&dir, &flags);
    let mut c = s.client();
    let oldest = moment();
    c.set("x", b"before");
    let before = moment();
    c.expect(b"flush_all\r\n", b"OK\r\n");
    c.set("x", b"after");
    compact_until(&mut c, &dir, 1);
    assert_eq!(s.terminate(), Some(0));

    // The live log starts with a snapshot taken after the moment: the kept former log restores it.
    let r = Logged::start(&dir, &[&flags[..], &["--recover-to", &before]].concat());
    let lines = r.startup_lines();
    let report = lines.iter().find(|l| l.contains("recovered to ")).unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(report.contains("from kv.log.hist-"), "{report}");
    let mut c = r.client();
    assert_eq!(c.get("x").as_deref(), Some(&b"before"[..]));
    assert_eq!(c.get("big"), None);
    // Two more compactions, the second once the first's former log is older than the window: it goes.
    compact_until(&mut c, &dir, 1);
    let first = named(&dir, "kv.log.hist-");
    std::thread::sleep(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if !first[0].exists() {
            break;
        }
        assert!(Instant::now() < deadline, "{first:?} not removed past the window");
        c.set("big", format!("{i:01024}").as_bytes());
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert_eq!(named(&dir, "kv.log.hist-").len(), 1, "the next former log is kept");
    r.terminate();

    // (Not `before` again: a recovery to that very moment was applied already, so it would be a plain start.)
    let mut cmd = server_command(free_port(), &dir, &["--recover-to".to_string(), oldest]);
    let (st, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert!(!st.success(), "{err}");
    assert!(err.contains("cannot recover to") && err.contains("the oldest moment the log can restore is"), "{err}");
    // Refused before anything changed.
    let s = Server::start_in(&dir, &[]);
    let mut c = s.client();
    assert_eq!(c.get("x").as_deref(), Some(&b"before"[..]));
    assert!(c.get("big").is_some());
}
