//! Persistence (kv-server only): the append-only log brings every acknowledged write back after a
//! crash, deletes and flushes included, and a torn tail does not stop the server from starting.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kv_tests::{kv_only, Server};

/// A key and the value written under it.
type Entry = (String, Vec<u8>);

/// One writer: sets `n` distinct keys over its own connection, one at a time, until done or the
/// connection dies. Returns the acknowledged (key, value) pairs and the one in flight when it died.
fn writer(addr: SocketAddr, id: usize, n: usize) -> (Vec<Entry>, Option<Entry>) {
    let mut acked = Vec::new();
    let Ok(stream) = TcpStream::connect(addr) else { return (acked, None) };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let salt = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    for i in 0..n {
        let key = format!("w{id}_{i}");
        let value = format!("value-{id}-{i}-{salt}-{}", "x".repeat(i % 50)).into_bytes();
        let mut req = format!("set {key} {i} 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n");
        if w.write_all(&req).is_err() {
            return (acked, Some((key, value)));
        }
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(_) if line == "STORED\r\n" => acked.push((key, value)),
            Ok(0) | Err(_) => return (acked, Some((key, value))),
            Ok(_) => panic!("writer {id}: unexpected reply {line:?} to set {key}"),
        }
    }
    (acked, None)
}

/// The log file: the largest regular file under `dir` that is not a lock file.
fn log_file(dir: &Path) -> PathBuf {
    fn walk(dir: &Path, out: &mut Vec<(u64, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                walk(&e.path(), out);
            } else if ty.is_file() && !e.file_name().to_string_lossy().to_ascii_lowercase().contains("lock") {
                out.push((e.metadata().unwrap().len(), e.path()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files.pop().unwrap_or_else(|| panic!("no log file in {}", dir.display())).1
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    kv_only!();
    let mut s = Server::start(&["--fsync", "always"]);
    let addr = s.addr();
    let writers: Vec<_> = (0..4).map(|id| std::thread::spawn(move || writer(addr, id, 20_000))).collect();
    // Far more writes than fit before the kill, so it lands mid-stream.
    std::thread::sleep(Duration::from_millis(300));
    s.crash_and_restart();
    let mut total = 0;
    let mut cut = 0;
    let mut c = s.client();
    for (id, w) in writers.into_iter().enumerate() {
        let (acked, in_flight) = w.join().unwrap();
        total += acked.len();
        // All of this writer's reads in one pipelined batch, compared byte for byte.
        let (mut req, mut want) = (Vec::new(), Vec::new());
        for (i, (key, value)) in acked.iter().enumerate() {
            req.extend_from_slice(format!("get {key}\r\n").as_bytes());
            want.extend_from_slice(format!("VALUE {key} {i} {}\r\n", value.len()).as_bytes());
            want.extend_from_slice(value);
            want.extend_from_slice(b"\r\nEND\r\n");
        }
        if !req.is_empty() {
            c.expect(&req, &want);
        }
        // The write that was cut off is either fully there or not at all.
        cut += usize::from(in_flight.is_some());
        if let Some((key, value)) = in_flight {
            if let Some(got) = c.get(&key) {
                assert_eq!(got, value, "writer {id}: torn value for {key}");
            }
        }
    }
    assert!(total > 0, "no write was acknowledged before the kill");
    assert!(cut > 0, "every writer finished before the kill: the crash did not interrupt writes");
    eprintln!("{total} acknowledged writes checked after SIGKILL");
}

#[test]
fn deletes_and_flushes_survive_restarts() {
    kv_only!();
    let mut s = Server::start(&["--fsync", "always"]);
    let mut c = s.client();
    for k in ["pa", "pb", "pc"] {
        c.set(k, k.as_bytes());
    }
    c.expect(b"delete pa\r\n", b"DELETED\r\n");
    c.expect(b"append pb 0 0 1\r\n+\r\n", b"STORED\r\n");
    c.expect(b"set pn 0 0 2\r\n41\r\n", b"STORED\r\n");
    c.expect(b"incr pn 1\r\n", b"42\r\n");
    c.expect(b"touch pc 1000\r\n", b"TOUCHED\r\n");
    s.crash_and_restart();
    let mut c = s.client();
    c.expect(b"get pa pb pc pn\r\n", b"VALUE pb 0 3\r\npb+\r\nVALUE pc 0 2\r\npc\r\nVALUE pn 0 2\r\n42\r\nEND\r\n");
    c.expect(b"flush_all\r\n", b"OK\r\n");
    c.set("pd", b"after flush");
    s.crash_and_restart();
    let mut c = s.client();
    c.expect(b"get pa pb pc pn pd\r\n", b"VALUE pd 0 11\r\nafter flush\r\nEND\r\n");
    // A clean shutdown (SIGTERM) and a start on the same directory.
    c.set("pe", b"clean");
    c.expect(b"delete pd\r\n", b"DELETED\r\n");
    assert_eq!(s.terminate(), Some(0), "exit status after SIGTERM");
    let s2 = Server::start_in(&s.data_dir, &["--fsync", "always"]);
    let mut c = s2.client();
    c.expect(b"get pa pb pc pd pe\r\n", b"VALUE pe 0 5\r\nclean\r\nEND\r\n");
}

#[test]
fn sigterm_flushes_everysec_writes() {
    kv_only!();
    let mut s = Server::start(&["--fsync", "everysec"]);
    let mut c = s.client();
    for i in 0..50 {
        c.set(&format!("es{i}"), format!("v{i}").as_bytes());
    }
    assert_eq!(s.terminate(), Some(0));
    let s2 = Server::start_in(&s.data_dir, &["--fsync", "everysec"]);
    let mut c = s2.client();
    for i in 0..50 {
        assert_eq!(c.get(&format!("es{i}")), Some(format!("v{i}").into_bytes()), "es{i}");
    }
}

/// Sets 100 keys with `--fsync always`, kills the server, lets `damage` change the log file, and
/// restarts; returns the restarted server.
fn torn_tail(damage: impl FnOnce(&Path)) -> Server {
    let mut s = Server::start(&["--fsync", "always"]);
    let mut c = s.client();
    for i in 0..100 {
        c.set(&format!("t{i}"), format!("value {i}").as_bytes());
    }
    drop(c);
    s.kill9();
    damage(&log_file(&s.data_dir));
    s.crash_and_restart();
    s
}

fn check_after_torn_tail(s: &mut Server, intact: usize) {
    let mut c = s.client();
    for i in 0..intact {
        assert_eq!(c.get(&format!("t{i}")), Some(format!("value {i}").into_bytes()), "t{i}");
    }
    // New writes work, and survive another crash (they were not appended after the garbage).
    c.set("after", b"torn");
    c.set("t0", b"new t0");
    s.crash_and_restart();
    let mut c = s.client();
    assert_eq!(c.get("after").as_deref(), Some(&b"torn"[..]));
    assert_eq!(c.get("t0").as_deref(), Some(&b"new t0"[..]));
    for i in 1..intact {
        assert_eq!(c.get(&format!("t{i}")), Some(format!("value {i}").into_bytes()), "t{i} after second restart");
    }
}

#[test]
fn torn_tail_garbage_appended() {
    kv_only!();
    let mut s = torn_tail(|log| {
        let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        f.write_all(b"\x07garbage\xff\x00\x13 not a record\r\nset x 0 0 1\r\n").unwrap();
    });
    check_after_torn_tail(&mut s, 100);
}

#[test]
fn torn_tail_truncated() {
    kv_only!();
    let mut s = torn_tail(|log| {
        let f = std::fs::OpenOptions::new().write(true).open(log).unwrap();
        let len = f.metadata().unwrap().len();
        assert!(len > 5, "log file {} is {len} bytes", log.display());
        f.set_len(len - 3).unwrap();
    });
    // The last record is torn; everything before it must be back.
    check_after_torn_tail(&mut s, 99);
    let mut c = s.client();
    if let Some(v) = c.get("t99") {
        assert_eq!(v, b"value 99", "a torn record must not come back altered");
    }
}

#[test]
fn expired_items_stay_dead_after_restart() {
    kv_only!();
    let mut s = Server::start(&["--fsync", "always"]);
    let mut c = s.client();
    c.expect(b"set short 0 1 1\r\ns\r\n", b"STORED\r\n");
    c.expect(b"set long 0 1000 1\r\nl\r\n", b"STORED\r\n");
    c.expect(b"set neg 0 -1 1\r\nn\r\n", b"STORED\r\n");
    let t0 = Instant::now();
    while c.get("short").is_some() {
        assert!(t0.elapsed() < Duration::from_secs(4), "exptime 1 never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.crash_and_restart();
    let mut c = s.client();
    c.expect(b"get short neg long\r\n", b"VALUE long 0 1\r\nl\r\nEND\r\n");
    // And again after a clean restart.
    assert_eq!(s.terminate(), Some(0));
    let s2 = Server::start_in(&s.data_dir, &["--fsync", "always"]);
    s2.client().expect(b"get short neg long\r\n", b"VALUE long 0 1\r\nl\r\nEND\r\n");
}

#[test]
fn no_persist_starts_empty() {
    kv_only!();
    let mut s = Server::start(&["--no-persist"]);
    s.client().set("np", b"v");
    s.crash_and_restart();
    s.client().expect(b"get np\r\n", b"END\r\n");
}
