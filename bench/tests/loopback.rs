//! End-to-end runs of the kv-load binary on loopback: against an in-process UDP reflector (always), and against
//! memcached when /usr/bin/memcached exists (skipped otherwise).

use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const FIELDS: [&str; 28] = [
    "proto",
    "mode",
    "workload",
    "get_ratio",
    "key_size_mean",
    "value_size_mean",
    "value_size_max",
    "req_key_size_mean",
    "req_value_size_mean",
    "oversize_sets",
    "threads",
    "conns",
    "depth",
    "duration_s",
    "requests",
    "rps",
    "keys_per_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
    "timeouts",
    "errors",
    "misses",
    "hits",
    "other",
    "idle_conns_opened",
    "offered_rps",
];

fn kv_load(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kv-load")).args(args).output().expect("run kv-load");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn run_json(args: &[&str]) -> Value {
    let (code, out, err) = kv_load(args);
    assert_eq!(code, Some(0), "kv-load {args:?} failed: {err}");
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {out}"));
    let obj = v.as_object().expect("object");
    for f in FIELDS {
        assert!(obj.contains_key(f), "missing field {f} in {out}");
    }
    assert_eq!(obj.len(), FIELDS.len(), "unexpected fields in {out}");
    v
}

fn free_port() -> u16 {
    // A port free for both TCP and UDP (memcached uses the same number for both).
    loop {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn udp_reflector_counts_echoes_as_other() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    let v = run_json(&[
        "--server",
        &addr,
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--depth",
        "8",
        "--get-ratio",
        "0.5",
        "--json",
    ]);
    let requests = v["requests"].as_u64().unwrap();
    assert!(requests > 100, "{v}");
    assert_eq!(v["hits"], 0);
    assert_eq!(v["misses"], 0);
    assert_eq!(v["errors"], 0);
    let other = v["other"].as_u64().unwrap();
    // About half are gets (echoed gets are "other"); the echoed sets count only as requests.
    assert!(other > requests / 4 && other < requests * 3 / 4, "{v}");
    assert_eq!(v["proto"], "udp");
    assert_eq!(v["offered_rps"], Value::Null);
}

#[test]
fn etc_refuses_a_fixed_value_size() {
    let (code, _, err) = kv_load(&["--server", "127.0.0.1:1", "--workload", "etc", "--value-size", "10"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--value-size does not apply"), "{err}");
}

#[test]
fn unreachable_server_fails_clearly() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    for proto in ["udp", "tcp"] {
        let (code, out, err) = kv_load(&["--server", &addr, "--proto", proto, "--duration", "0.2", "--json"]);
        assert_ne!(code, Some(0));
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("unreachable"), "{err}");
    }
}

struct Memcached(Child);
impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn against_memcached_if_installed() {
    let bin = "/usr/bin/memcached";
    if !std::path::Path::new(bin).exists() {
        eprintln!("skipped: {bin} not installed");
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let child = Command::new(bin)
        .args(["-u", "root", "-l", "127.0.0.1", "-p", &p, "-U", &p, "-t", "2", "-c", "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcached");
    let _mc = Memcached(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "memcached did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let short = ["--duration", "0.5", "--warmup", "0.2", "--keys", "1000", "--json"];
    let with = |extra: &[&str]| {
        let mut a = vec!["--server", addr.as_str()];
        a.extend_from_slice(extra);
        a.extend_from_slice(&short);
        run_json(&a)
    };

    let v = with(&["--proto", "udp", "--preload", "--depth", "16"]);
    assert!(v["requests"].as_u64().unwrap() > 1000, "{v}");
    assert_eq!(v["misses"], 0, "preloaded: {v}");
    assert_eq!(v["hits"], v["requests"], "{v}");

    let v = with(&["--proto", "tcp", "--depth", "4", "--multiget", "5", "--get-ratio", "0.9", "--idle-conns", "50"]);
    let (req, kps, rps) =
        (v["requests"].as_u64().unwrap(), v["keys_per_s"].as_f64().unwrap(), v["rps"].as_f64().unwrap());
    assert!(req > 1000 && kps > 3.0 * rps, "{v}");
    assert_eq!(v["errors"], 0);
    assert_eq!(v["idle_conns_opened"], 50);

    let v = with(&["--proto", "udp", "--multiget", "10", "--depth", "4"]);
    assert!(v["requests"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["hits"], v["requests"], "multiget completes on END, not per key message: {v}");

    // ETC: the preload stores exactly the keys the run reads (no misses), with sizes memcached accepts (no errors);
    // the sets rewrite the same keys.
    for proto in ["udp", "tcp"] {
        let v = with(&["--proto", proto, "--workload", "etc", "--preload", "--depth", "8"]);
        assert!(v["requests"].as_u64().unwrap() > 500, "{v}");
        assert_eq!(
            (v["misses"].as_u64(), v["errors"].as_u64(), v["other"].as_u64()),
            (Some(0), Some(0), Some(0)),
            "{v}"
        );
        assert_eq!(v["workload"], "etc");
        assert!((v["get_ratio"].as_f64().unwrap() - 30.0 / 31.0).abs() < 1e-9);
        let hits = v["hits"].as_u64().unwrap();
        assert!(hits < v["requests"].as_u64().unwrap(), "some sets: {v}");
        let (k, val) = (v["key_size_mean"].as_f64().unwrap(), v["value_size_mean"].as_f64().unwrap());
        assert!((33.0..40.0).contains(&k) && (120.0..280.0).contains(&val), "{v}");
    }

    let v = with(&["--proto", "tcp", "--mode", "open", "--rate", "2000"]);
    let req = v["requests"].as_u64().unwrap();
    assert!((700..=1100).contains(&req), "open loop at 2000/s for 0.5 s: {v}");
    assert_eq!(v["offered_rps"], 2000.0);
    assert_eq!(v["mode"], "open");
}

struct Ceiling(Child);
impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tcp_ceiling_answers_every_get_with_a_hit() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_tcp-ceiling"))
        .args(["--listen", &addr, "--threads", "2", "--key-len", "7", "--value-size", "32"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tcp-ceiling");
    let _c = Ceiling(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "tcp-ceiling did not start");
        thread::sleep(Duration::from_millis(20));
    }
    // Depth 1 and deep pipelines, multiget too.
    for depth in ["1", "16", "4096"] {
        let v = run_json(&[
            "--server",
            &addr,
            "--proto",
            "tcp",
            "--conns",
            "3",
            "--depth",
            depth,
            "--multiget",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
        ]);
        assert!(v["requests"].as_u64().unwrap() > 500, "{v}");
        assert_eq!(v["hits"], v["requests"], "{v}");
    }

    // A client that writes 400,000 gets before reading anything: the 23 MB of replies outgrow the socket buffers,
    // so the responder must wait for EPOLLOUT (reading nothing meanwhile) and still answer every line in order.
    let n = 400_000;
    let mut w = std::net::TcpStream::connect(&addr).unwrap();
    let mut r = w.try_clone().unwrap();
    let writer = thread::spawn(move || {
        use std::io::Write;
        w.write_all(&b"get k\r\n".repeat(n)).unwrap();
        w
    });
    thread::sleep(Duration::from_millis(300));
    let reply = kv_bench::ceiling::reply(7, 32);
    let mut got = vec![0u8; n * reply.len()];
    std::io::Read::read_exact(&mut r, &mut got).unwrap();
    assert!(got.chunks(reply.len()).all(|c| c == reply));
    drop(writer.join().unwrap());
}
