//! Harness for the end-to-end tests in tests/tests/: starts the real `kv-server` binary on free
//! loopback ports with a temporary data directory and talks to it over real sockets.
//!
//! With `KV_TEST_PEER=memcached` the same tests run against the system's `memcached` instead (the
//! reference implementation every expectation was checked against); tests that only make sense
//! for kv-server (persistence, restarts, log files) start with `kv_only!()` and are skipped there.

mod crash;
pub mod lazyfs;
pub mod netns;

pub use crash::{crash_seeds, read_all, show, KeyState, Rng};

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The reliability suite's long form (`cargo xtask test --long` sets KV_LONG=1): tests scale their rounds
/// and counts with `long_or(short, long)`.
pub fn long() -> bool {
    std::env::var("KV_LONG").is_ok_and(|v| v == "1")
}

/// `short` normally, `long` under `cargo xtask test --long`.
pub fn long_or<T>(short: T, long_form: T) -> T {
    if long() {
        long_form
    } else {
        short
    }
}

/// True when the tests target the system's memcached (`KV_TEST_PEER=memcached`) instead of kv-server.
pub fn targets_memcached() -> bool {
    match std::env::var("KV_TEST_PEER") {
        Ok(p) if p == "memcached" => true,
        Ok(p) if p.is_empty() || p == "kv-server" || p == "kv" => false,
        Ok(p) => panic!("KV_TEST_PEER={p:?}: expected `memcached` or unset"),
        Err(_) => false,
    }
}

/// Returns early from a test (printing why) when the tests target memcached.
#[macro_export]
macro_rules! kv_only {
    () => {
        if $crate::targets_memcached() {
            eprintln!("SKIP: kv-server only");
            return;
        }
    };
}

/// The server binary: `KV_SERVER_BIN` (set by `cargo xtask test`) or target/release/kv-server.
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KV_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let bin = root.join("target/release/kv-server");
    assert!(bin.exists(), "{} missing: run `cargo xtask test` (it builds the server first)", bin.display());
    bin
}

/// A port free for both TCP and UDP on 127.0.0.1 (memcached clients expect the same number for both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A running server; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
}

impl Server {
    /// Starts with a fresh temporary data directory, BPF off, and `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing data directory (restart tests).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // free_port() can race with other tests grabbing the same port: retry on a new one if the
        // server exits right away.
        for _ in 0..5 {
            let port = free_port();
            let child = spawn(port, dir, &args);
            let mut s = Server { child, port, data_dir: dir.to_path_buf(), _tmp: None, args: args.clone() };
            if s.try_wait_ready() {
                return s;
            }
        }
        panic!("server with flags {args:?} exited right after start, 5 times");
    }

    /// Kills with SIGKILL (no clean shutdown) and starts again on the same port and directory.
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        self.child = spawn(self.port, &self.data_dir, &self.args);
        assert!(self.try_wait_ready(), "server exited right after restart");
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not exit within 10 s of SIGTERM");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Waits until the TCP port accepts; false if the process exited first.
    fn try_wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut conn) = TcpStream::connect(self.addr()) {
                // Another test's server may own this port (free_port() races): only `STAT pid` tells.
                match stats_pid(&mut conn) {
                    Some(pid) if pid == self.child.id() => return true,
                    Some(_) => {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        return false;
                    }
                    None => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server on port {} did not come up", self.port);
    }
}

/// The `pid` from `stats` on a fresh connection, if the server answers within a second.
fn stats_pid(conn: &mut TcpStream) -> Option<u32> {
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    conn.write_all(b"stats\r\n").ok()?;
    netns::read_stats(conn).ok()?.get("pid")?.parse().ok()
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    let mut cmd = server_command(port, dir, extra);
    let log = std::env::var_os("KV_TEST_LOG").is_some();
    cmd.stdin(Stdio::null())
        .stdout(if log { Stdio::inherit() } else { Stdio::null() })
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .expect("spawn server")
}

/// The command line that starts the server under test (kv-server, or memcached with
/// `KV_TEST_PEER=memcached`) on `port` for TCP and UDP, with `extra` flags; not started. For tests that
/// run it themselves, e.g. to see it refuse to start.
pub fn server_command(port: u16, dir: &Path, extra: &[String]) -> Command {
    let p = port.to_string();
    if targets_memcached() {
        let mut cmd = Command::new(std::env::var_os("KV_MEMCACHED_BIN").unwrap_or("memcached".into()));
        // memcached refuses to run as root without -u.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "root"]);
        }
        cmd.args(["-l", "127.0.0.1", "-p", &p, "-U", &p]).args(memcached_flags(extra));
        cmd
    } else {
        let mut cmd = Command::new(server_bin());
        cmd.args(["-l", "127.0.0.1", "-p", &p, "-U", &p, "--no-bpf", "--data-dir"]).arg(dir).args(extra);
        cmd
    }
}

/// kv-server flags translated for memcached: the common ones (-m -c -t -I -v) pass through, the
/// kv-only ones (--fsync, --data-dir, --no-persist, --no-bpf, ...) are dropped.
fn memcached_flags(extra: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = extra.iter();
    while let Some(f) = it.next() {
        match f.as_str() {
            "-m" | "-c" | "-t" | "-I" => {
                out.push(f.clone());
                out.push(it.next().expect("flag value").clone());
            }
            "-v" | "-vv" | "-vvv" | "-A" => out.push(f.clone()),
            "--fsync" | "--data-dir" | "--iface" | "--xdp-mode" => {
                it.next();
            }
            other if other.starts_with("--") => {} // --no-persist, --no-bpf, --fsync=always, ...
            other => panic!("flag {other:?} has no memcached translation"),
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking text-protocol client with timeouts, for exact byte-level assertions.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    /// Closes with an RST instead of a FIN (SO_LINGER 0), as a crashed client's kernel would.
    pub fn reset(self) {
        use std::os::fd::AsRawFd as _;
        let l = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on a valid socket with a correctly sized option.
        let r = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads exactly `n` bytes (panics on timeout or EOF).
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
        buf
    }

    /// Sends `req` and asserts the reply is exactly `expected` (and nothing more arrives soon after).
    #[track_caller]
    pub fn expect(&mut self, req: &[u8], expected: &[u8]) {
        self.send(req);
        let got = self.read_n(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "request {:?}",
            String::from_utf8_lossy(req)
        );
        self.assert_silent(Duration::from_millis(30));
    }

    /// Reads until the bytes received end with `suffix` (e.g. `END\r\n` after `stats`).
    pub fn read_until(&mut self, suffix: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !out.ends_with(suffix) {
            let n = self.stream.read(&mut b).unwrap_or_else(|e| {
                panic!(
                    "reading until {:?}: {e}; got {:?}",
                    String::from_utf8_lossy(suffix),
                    String::from_utf8_lossy(&out)
                )
            });
            assert!(n > 0, "EOF before {:?}; got {:?}", String::from_utf8_lossy(suffix), String::from_utf8_lossy(&out));
            out.extend_from_slice(&b[..n]);
        }
        out
    }

    /// Stores `key` = `value` with a plain `set` and asserts `STORED`.
    #[track_caller]
    pub fn set(&mut self, key: &str, value: &[u8]) {
        let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        self.expect(&req, b"STORED\r\n");
    }

    /// The value under `key` (None on a miss), read with a plain `get`.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.send(format!("get {key}\r\n").as_bytes());
        let header = self.line();
        if header == "END\r\n" {
            return None;
        }
        let parts: Vec<&str> = header.trim_end().split(' ').collect();
        assert!(parts.len() >= 4 && parts[0] == "VALUE" && parts[1] == key, "bad get header {header:?}");
        let len: usize = parts[3].parse().unwrap();
        let mut v = self.read_n(len + 2);
        assert_eq!(&v[len..], b"\r\n", "value terminator");
        v.truncate(len);
        assert_eq!(self.line(), "END\r\n");
        Some(v)
    }

    /// Reads one line including its \r\n.
    pub fn line(&mut self) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while !out.ends_with(b"\r\n") {
            self.stream.read_exact(&mut b).expect("reading a line");
            out.push(b[0]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Asserts nothing arrives within `d` (noreply, or no trailing garbage).
    #[track_caller]
    pub fn assert_silent(&mut self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 64];
        let r = self.stream.read(&mut b);
        self.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match r {
            Ok(0) => panic!("connection closed"),
            Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&b[..n])),
            Err(_) => {}
        }
    }

    /// True once the server has closed the connection (EOF within 2 s).
    pub fn closed(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 256];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

/// memcached's UDP framing: sends one request datagram and collects the reply datagrams for it.
pub fn udp_request(server: SocketAddr, req_id: u16, payload: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(&netns::udp_frame(req_id, payload), server).unwrap();
    udp_collect(&sock, req_id)
}

/// Receives every datagram of one reply, checks the headers and reassembles it in sequence order.
pub fn udp_collect(sock: &UdpSocket, req_id: u16) -> Vec<u8> {
    let mut parts = netns::UdpParts::default();
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("UDP reply");
        assert_eq!(netns::UdpParts::request_id(&buf[..n]), req_id, "request id echoed");
        if let Some(body) = parts.add(&buf[..n]) {
            return body;
        }
    }
}

/// Runs `cmd` to completion, killing it after `limit`; returns (exit status, stdout, stderr).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
            panic!("{cmd:?} did not finish within {limit:?}\nstdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, t_out.join().unwrap(), t_err.join().unwrap())
}
