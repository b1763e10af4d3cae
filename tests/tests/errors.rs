//! Malformed input and resource limits: the exact error memcached 1.6.18 sends, and whether the
//! connection stays usable afterwards.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kv_tests::{Client, Server};

/// Reads until EOF (or reset) within `limit`; returns what arrived before it.
fn read_to_close(c: &mut Client, limit: Duration) -> Vec<u8> {
    c.stream.set_read_timeout(Some(limit)).unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match c.stream.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => {
                panic!("connection not closed after {:?} ({e}); got {:?}", t0.elapsed(), String::from_utf8_lossy(&out))
            }
        }
    }
}

#[test]
fn unknown_commands() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"bogus\r\n", b"ERROR\r\n");
    c.expect(b"bogus with args\r\n", b"ERROR\r\n");
    c.expect(b"GET k\r\n", b"ERROR\r\n"); // commands are case-sensitive
    c.expect(b"\r\n", b"ERROR\r\n");
    c.expect(b"set k 0 0\r\n", b"ERROR\r\n"); // too few tokens
    c.expect(b"get k\r\n", b"END\r\n");
    // Runs of spaces separate tokens.
    c.expect(b"set  k  0  0  1\r\nx\r\n", b"STORED\r\n");
    c.expect(b"get  k\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n");
    // A bare \n ends a line too.
    c.expect(b"get k\n", b"VALUE k 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn bad_command_lines() {
    let s = Server::start(&[]);
    let mut c = s.client();
    // Bad numbers: CLIENT_ERROR, and no data block is swallowed (the next line is a command).
    c.expect(b"set k abc 0 1\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
    c.expect(b"set k 0 abc 1\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"set k 0 0 abc\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"set k 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
    c.expect(b"cas k 0 0 1 abc\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"touch k abc\r\n", b"CLIENT_ERROR invalid exptime argument\r\n");
    // ... so a data block sent after a rejected line is read as a command line.
    c.expect(b"set k abc 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n");
    // Too many tokens: memcached answers a plain ERROR (not a CLIENT_ERROR).
    c.expect(b"set k 0 0 1 noreply extra\r\n", b"ERROR\r\n");
    c.expect(b"incr k 1 2 3\r\n", b"ERROR\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
    // get takes any number of keys.
    let many = " k".repeat(40);
    c.expect(format!("get{many}\r\n").as_bytes(), b"END\r\n");
    c.expect(b"set k 0 0 1\r\nx\r\n", b"STORED\r\n");
    c.expect(b"get k\r\n", b"VALUE k 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn bad_data_chunk() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("bd", b"old");
    // `bytes + 2` bytes are consumed as the block; they do not end in \r\n. Whatever follows is
    // parsed as the next command: here `mn`.
    c.expect(b"set bd 0 0 1\r\nxyzmn\r\n", b"CLIENT_ERROR bad data chunk\r\nMN\r\n");
    // The classic form: the leftover \r\n is an empty command line (ERROR).
    c.expect(b"set bd 0 0 1\r\nabc\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n");
    // Nothing was stored; the old value is untouched.
    c.expect(b"get bd\r\n", b"VALUE bd 0 3\r\nold\r\nEND\r\n");
    c.expect(b"set bd 0 0 1\r\nx\r\n", b"STORED\r\n");
}

#[test]
fn value_too_large() {
    let s = Server::start(&["-I", "1m"]);
    let mut c = s.client();
    c.set("big", b"small");
    let n = 1024 * 1024 + 1;
    let mut req = format!("set big 0 0 {n}\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'a', n));
    req.extend_from_slice(b"\r\nmn\r\n");
    // The data block is swallowed (`mn` is the next command) and the old value is gone.
    c.expect(&req, b"SERVER_ERROR object too large for cache\r\nMN\r\n");
    c.expect(b"get big\r\n", b"END\r\n");
    // Just below the limit is fine.
    let v = vec![b'b'; 1_000_000];
    c.set("big", &v);
    assert_eq!(c.get("big").unwrap(), v);
    // The meta protocol refuses it the same way.
    let mut req = format!("ms big {n} T0\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'a', n));
    req.extend_from_slice(b"\r\nmn\r\n");
    c.expect(&req, b"SERVER_ERROR object too large for cache\r\nMN\r\n");
    // noreply silences the error too.
    let mut req = format!("set big2 0 0 {n} noreply\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'a', n));
    req.extend_from_slice(b"\r\nmn\r\n");
    c.expect(&req, b"MN\r\n");
}

#[test]
fn value_too_large_small_limit() {
    let s = Server::start(&["-I", "512k"]);
    let mut c = s.client();
    let n = 512 * 1024;
    let mut req = format!("set lim 0 0 {n}\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'a', n));
    req.extend_from_slice(b"\r\n");
    // The limit counts memcached's item header too, so exactly -I bytes of data do not fit.
    c.expect(&req, b"SERVER_ERROR object too large for cache\r\n");
    c.set("lim", &vec![b'c'; 500_000]);
}

#[test]
fn overlong_line_without_newline_closes() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("keep", b"v");
    // More than 2048 bytes without a newline (and not a get): memcached drops the connection
    // without a reply. The write may fail once the server has closed.
    let _ = c.stream.write_all(&[b'a'; 8192]);
    std::thread::sleep(Duration::from_millis(50));
    let _ = c.stream.write_all(b"bbbb");
    let got = read_to_close(&mut c, Duration::from_secs(3));
    assert!(got.is_empty(), "unexpected reply {:?}", String::from_utf8_lossy(&got));
    // Same for a storage command with an absurd line.
    let mut c = s.client();
    let _ = c.stream.write_all(format!("set {}", "k".repeat(8192)).as_bytes());
    let got = read_to_close(&mut c, Duration::from_secs(3));
    assert!(got.is_empty(), "unexpected reply {:?}", String::from_utf8_lossy(&got));
    // The server is fine.
    s.client().expect(b"get keep\r\n", b"VALUE keep 0 1\r\nv\r\nEND\r\n");
}

#[test]
fn long_lines_that_are_fine() {
    let s = Server::start(&[]);
    let mut c = s.client();
    // A long line that does end in a newline is just an unknown command.
    let mut req = vec![b'a'; 3000];
    req.extend_from_slice(b"\r\nmn\r\n");
    c.expect(&req, b"ERROR\r\nMN\r\n");
    // A multiget longer than 2048 bytes, first without its newline: the server keeps waiting.
    c.set("k0007", b"seven");
    let keys: Vec<String> = (0..1500).map(|i| format!("k{i:04}")).collect();
    let line = format!("get {}", keys.join(" "));
    assert!(line.len() > 8000);
    c.send(line.as_bytes());
    c.assert_silent(Duration::from_millis(300));
    c.expect(b"\r\n", b"VALUE k0007 0 5\r\nseven\r\nEND\r\n");
}

#[test]
fn too_many_connections() {
    // memcached counts its own descriptors against -c (listeners, UDP sockets, per-thread pipes),
    // so with -c 32 it accepts only a few clients; kv-server accepts up to 32. Either way the
    // excess connections get exactly `ERROR Too many open connections` and are closed, while the
    // accepted ones keep working.
    let s = Server::start(&["-c", "32"]);
    let mut conns: Vec<Client> = (0..40).map(|_| s.client()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for mut c in conns.drain(..) {
        c.stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut b = [0u8; 256];
        match c.stream.read(&mut b) {
            Ok(n) => {
                let mut got = b[..n].to_vec();
                got.extend(read_to_close(&mut c, Duration::from_secs(2)));
                assert_eq!(String::from_utf8_lossy(&got), "ERROR Too many open connections\r\n");
                rejected += 1;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.expect(b"mn\r\n", b"MN\r\n");
                accepted.push(c);
            }
            Err(e) => panic!("connection {}: {e}", accepted.len() + rejected),
        }
    }
    assert!(!accepted.is_empty() && accepted.len() <= 32, "{} accepted with -c 32", accepted.len());
    assert_eq!(accepted.len() + rejected, 40);
    for c in accepted.iter_mut() {
        c.expect(b"mn\r\n", b"MN\r\n");
    }
    // Closing one frees a slot.
    accepted.pop();
    let t0 = Instant::now();
    loop {
        let mut c = s.client();
        c.send(b"mn\r\n");
        let mut b = [0u8; 64];
        let n = c.stream.read(&mut b).unwrap_or(0);
        if &b[..n] == b"MN\r\n" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "no slot after closing a connection: {:?}",
            String::from_utf8_lossy(&b[..n])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_disconnect_mid_value() {
    // A client that dies half-way through a data block leaves nothing behind.
    let s = Server::start(&[]);
    {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.write_all(b"set half 0 0 100\r\nonly part").unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    s.client().expect(b"get half\r\n", b"END\r\n");
}
