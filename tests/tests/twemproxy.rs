//! Scale-out with an existing engine: twemproxy (`nutcracker`, a declared test dependency that
//! `cargo xtask test` installs) with ketama consistent hashing in front of three servers, driven by
//! a real client (pymemcache from `KV_PYTHON` or a `python3` that has it; else the harness's Rust
//! text-protocol client). Checks the spread over the instances, that every key reads back, that
//! killing one instance loses only its share once nutcracker ejects it, and that each instance's
//! UDP port serves the keys it holds (clients that hash on their own, e.g. libmemcached's ketama).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{free_port, run_with_timeout, udp_request, Client, Server};

const KEYS: usize = 3000;

fn key(i: usize) -> String {
    format!("tw:{i}")
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(v.len() + i % 50, b'x');
    v
}

/// Sets keys `tw:0..N` (`set` mode), or reads them all back one `get` at a time and prints one
/// letter per key (`get` mode): h = right value, m = miss, e = error, x = wrong value.
/// Must produce the same keys and values as `key()`/`value()`.
const PY_CLIENT: &str = r#"
import sys
from pymemcache.client.base import Client
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = Client(("127.0.0.1", port), connect_timeout=5, timeout=5, default_noreply=False)
val = lambda i: b"value-%d-" % i + b"x" * (i % 50)
if mode == "set":
    for i in range(n):
        assert c.set("tw:%d" % i, val(i)) is True, i
    print("SET OK")
else:
    out = []
    for i in range(n):
        try:
            v = c.get("tw:%d" % i)
        except Exception:
            # SERVER_ERROR from the proxy while the dead instance is not yet ejected.
            out.append("e")
            c.close()
            continue
        out.append("m" if v is None else "h" if v == val(i) else "x")
    print("".join(out))
"#;

enum Driver {
    Py(String),
    Rust,
}

impl Driver {
    /// pymemcache when available; `KV_PYTHON` set but without pymemcache is a broken setup.
    fn pick() -> Driver {
        let (python, required) = match std::env::var("KV_PYTHON") {
            Ok(p) => (p, true),
            Err(_) => ("python3".to_string(), false),
        };
        let ok = run_with_timeout(Command::new(&python).args(["-c", "import pymemcache"]), Duration::from_secs(30))
            .0
            .success();
        assert!(ok || !required, "KV_PYTHON={python} cannot import pymemcache");
        if ok {
            Driver::Py(python)
        } else {
            Driver::Rust
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Driver::Py(_) => "pymemcache",
            Driver::Rust => "harness Rust client (pymemcache unavailable)",
        }
    }

    fn py(python: &str, mode: &str, port: u16) -> String {
        let (st, out, err) = run_with_timeout(
            Command::new(python).args(["-c", PY_CLIENT, mode, &port.to_string(), &KEYS.to_string()]),
            Duration::from_secs(120),
        );
        assert!(st.success(), "pymemcache {mode} exited with {st}\nstdout:\n{out}\nstderr:\n{err}");
        out.trim().to_string()
    }

    fn set_all(&self, port: u16) {
        match self {
            Driver::Py(p) => assert_eq!(Self::py(p, "set", port), "SET OK"),
            Driver::Rust => {
                let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)));
                // Not `Client::set`: its 30 ms check for trailing bytes would make this take minutes.
                for i in 0..KEYS {
                    let v = value(i);
                    let mut req = format!("set {} 0 0 {}\r\n", key(i), v.len()).into_bytes();
                    req.extend_from_slice(&v);
                    req.extend_from_slice(b"\r\n");
                    c.send(&req);
                    assert_eq!(c.line(), "STORED\r\n", "set {} through the proxy", key(i));
                }
            }
        }
    }

    /// One letter per key, as in `PY_CLIENT`.
    fn read_all(&self, port: u16) -> Vec<u8> {
        let out = match self {
            Driver::Py(p) => Self::py(p, "get", port).into_bytes(),
            Driver::Rust => rust_read_all(port),
        };
        assert_eq!(out.len(), KEYS, "one result per key");
        out
    }
}

/// The Rust side of `read_all`: tolerates the proxy's SERVER_ERROR replies, unlike `Client::get`.
fn rust_read_all(port: u16) -> Vec<u8> {
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        BufReader::new(s)
    };
    let mut conn = connect();
    let mut out = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let one = |conn: &mut BufReader<TcpStream>| -> std::io::Result<u8> {
            conn.get_mut().write_all(format!("get {}\r\n", key(i)).as_bytes())?;
            let mut line = String::new();
            conn.read_line(&mut line)?;
            if line == "END\r\n" {
                return Ok(b'm');
            }
            let Some(len) = line.strip_prefix("VALUE ").and_then(|l| l.split(' ').nth(2)) else {
                return Ok(b'e');
            };
            let mut v = vec![0; len.trim().parse::<usize>().unwrap() + 2];
            conn.read_exact(&mut v)?;
            v.truncate(v.len() - 2);
            line.clear();
            conn.read_line(&mut line)?;
            Ok(if v == value(i) && line == "END\r\n" { b'h' } else { b'x' })
        };
        match one(&mut conn) {
            Ok(r) => out.push(r),
            Err(_) => {
                out.push(b'e');
                conn = connect();
            }
        }
    }
    out
}

/// nutcracker, killed when dropped so a failing assertion leaves nothing behind.
struct Proxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(servers: &[&Server]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        // free_port() races with other tests: retry on new ports if nutcracker exits at once.
        for _ in 0..5 {
            let (port, stats) = (free_port(), free_port());
            let list: String =
                servers.iter().enumerate().map(|(i, s)| format!("    - 127.0.0.1:{}:1 kv{i}\n", s.port)).collect();
            // As docs/twemproxy.yml, but: eject on the first failure and do not retry within the
            // test (so the dead instance's keys settle into misses), and a timeout generous enough
            // for a loaded machine.
            let conf = format!(
                "kv:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  \
                 timeout: 3000\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  \
                 server_retry_timeout: 600000\n  servers:\n{list}"
            );
            let conf_path = dir.path().join("nutcracker.yml");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = Command::new("nutcracker")
                .arg("-c")
                .arg(&conf_path)
                .args(["-a", "127.0.0.1", "-s", &stats.to_string()])
                .arg("-p")
                .arg(dir.path().join("nutcracker.pid"))
                .arg("-o")
                .arg(dir.path().join("nutcracker.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nutcracker");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Proxy { child, port, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nutcracker did not come up, 5 times");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curr_items(s: &Server) -> usize {
    let mut c = s.client();
    c.send(b"stats\r\n");
    let text = String::from_utf8_lossy(&c.read_until(b"END\r\n")).into_owned();
    text.lines().find_map(|l| l.strip_prefix("STAT curr_items ")).expect("curr_items").trim().parse().unwrap()
}

fn require_nutcracker() {
    let st = Command::new("nutcracker").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "nutcracker (twemproxy) is not installed: it is a declared test dependency; \
         `cargo xtask test` installs it, or run `apt-get install nutcracker`"
    );
}

/// The checked-in example must stay a valid nutcracker config.
#[test]
fn documented_config_parses() {
    require_nutcracker();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/twemproxy.yml");
    assert!(conf.exists(), "{} is missing", conf.display());
    let (st, out, err) =
        run_with_timeout(Command::new("nutcracker").arg("-t").arg("-c").arg(&conf), Duration::from_secs(30));
    assert!(st.success(), "nutcracker -t rejects {}:\n{out}{err}", conf.display());
}

#[test]
fn ketama_spread_and_ejection() {
    require_nutcracker();
    let t0 = Instant::now();
    let driver = Driver::pick();
    eprintln!("twemproxy: client = {}", driver.name());
    let mut servers: Vec<Server> = (0..3).map(|_| Server::start(&[])).collect();
    let proxy = Proxy::start(&servers.iter().collect::<Vec<_>>());

    driver.set_all(proxy.port);
    let items: Vec<usize> = servers.iter().map(curr_items).collect();
    eprintln!("twemproxy: {KEYS} keys through the proxy, per instance {items:?}");
    assert_eq!(items.iter().sum::<usize>(), KEYS, "every key stored exactly once");
    for (i, n) in items.iter().enumerate() {
        assert!(*n * 100 > KEYS * 15, "instance {i} got only {n} of {KEYS} keys: {items:?}");
    }

    // Which instance holds each key, asked directly (the proxy's hashing is nutcracker's business).
    let mut owner = vec![usize::MAX; KEYS];
    for (si, s) in servers.iter().enumerate() {
        let mut c = s.client();
        for (i, o) in owner.iter_mut().enumerate() {
            if let Some(v) = c.get(&key(i)) {
                assert_eq!(v, value(i), "{} on instance {si}", key(i));
                assert_eq!(*o, usize::MAX, "{} on two instances", key(i));
                *o = si;
            }
        }
    }
    assert!(owner.iter().all(|&o| o != usize::MAX), "a key stored through the proxy is on no instance");

    let all = driver.read_all(proxy.port);
    let hits = all.iter().filter(|&&r| r == b'h').count();
    assert_eq!(hits, KEYS, "reads through the proxy: {}", String::from_utf8_lossy(&all));

    // A client hashing on its own reaches each instance's UDP port directly.
    for (si, s) in servers.iter().enumerate() {
        for (n, i) in (0..KEYS).filter(|&i| owner[i] == si).take(5).enumerate() {
            let v = value(i);
            let mut want = format!("VALUE {} 0 {}\r\n", key(i), v.len()).into_bytes();
            want.extend_from_slice(&v);
            want.extend_from_slice(b"\r\nEND\r\n");
            let got = udp_request(s.addr(), n as u16 + 1, format!("get {}\r\n", key(i)).as_bytes());
            assert_eq!(got, want, "UDP get {} from instance {si}", key(i));
        }
    }

    // Lose one instance: once nutcracker ejects it, only its keys are gone.
    let dead = 1;
    servers[dead].kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    let last = loop {
        let r = driver.read_all(proxy.port);
        rounds += 1;
        assert!(!r.contains(&b'x'), "a wrong value through the proxy after the kill");
        let settled = (0..KEYS).all(|i| r[i] == if owner[i] == dead { b'm' } else { b'h' });
        if settled || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let survivors_ok = (0..KEYS).filter(|&i| owner[i] != dead && last[i] == b'h').count();
    let survivors = owner.iter().filter(|&&o| o != dead).count();
    let lost = last.iter().filter(|&&r| r != b'h').count();
    let errors = last.iter().filter(|&&r| r == b'e').count();
    eprintln!(
        "twemproxy: killed instance {dead} ({} keys); after {rounds} read rounds: {survivors_ok}/{survivors} \
         survivor keys read back, {lost} lost ({:.1}%), {errors} still errors",
        items[dead],
        lost as f64 * 100.0 / KEYS as f64
    );
    assert_eq!(survivors_ok, survivors, "every key on a surviving instance reads back through the proxy");
    assert_eq!(lost, items[dead], "exactly the dead instance's share is lost");
    assert_eq!(errors, 0, "nutcracker ejected the dead instance (its keys are misses, not errors)");
    eprintln!("twemproxy: done in {:.1} s", t0.elapsed().as_secs_f64());
}
