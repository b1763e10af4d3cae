//! What a hostile process or a careless operator tries: a second instance on the same ports, workers
//! that cannot start, admin commands, and settings memcached refuses. Each test says what memcached
//! does; the shared parts also run against it (`KV_TEST_PEER=memcached`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{
    free_port, run_with_timeout, server_bin, server_command, targets_memcached, udp_request, Client, Server,
};

/// Runs the server under test with `extra` flags; it must exit (refuse to start) within 10 s. Returns
/// its exit code and stderr.
fn refused(extra: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let (status, _, stderr) =
        run_with_timeout(&mut server_command(free_port(), tmp.path(), &extra), Duration::from_secs(10));
    assert!(!status.success(), "started with {extra:?}");
    (status.code(), stderr)
}

/// kv-server with exactly these arguments, run to completion (it is expected to refuse to start).
fn kv_refused(args: &[&str]) -> String {
    let (status, _, stderr) = run_with_timeout(Command::new(server_bin()).args(args), Duration::from_secs(10));
    assert!(!status.success(), "started with {args:?}");
    stderr
}

fn bind_with(kind: socket2::Type, addr: SocketAddr, reuse_port: bool) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, kind, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(reuse_port)?;
    s.bind(&addr.into())
}

/// memcached 1.6.18 does not have this: a second memcached started with the same `-U` binds (both set
/// SO_REUSEADDR) and from then on receives every datagram. Here the port is the first process's alone.
#[test]
fn second_instance_is_refused_and_takes_no_datagrams() {
    kv_tests::kv_only!();
    let a = Server::start(&["--no-persist"]);
    a.client().set("hj", b"mine");
    let (port, other) = (a.port.to_string(), free_port().to_string());
    let common = ["-l", "127.0.0.1", "--no-bpf", "--no-persist"];
    let err = kv_refused(&[&common[..], &["-p", &other, "-U", &port]].concat());
    assert!(err.contains(&format!("UDP 127.0.0.1:{port}: address in use")), "{err}");
    let err = kv_refused(&[&common[..], &["-p", &port, "-U", &other]].concat());
    assert!(err.contains(&format!("TCP 127.0.0.1:{port}: address in use")), "{err}");
    // Nor can any other socket join, with SO_REUSEPORT (same user) or SO_REUSEADDR.
    for (kind, reuse_port) in
        [(socket2::Type::DGRAM, true), (socket2::Type::DGRAM, false), (socket2::Type::STREAM, true)]
    {
        let e = bind_with(kind, a.addr(), reuse_port).expect_err("bound the server's port");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{kind:?}, SO_REUSEPORT {reuse_port}");
    }
    // The count: 17 of 40 gets answered END while a second instance was up. Now none is.
    for id in 0..40 {
        assert_eq!(udp_request(a.addr(), id, b"get hj\r\n"), b"VALUE hj 0 4\r\nmine\r\nEND\r\n", "get {id}");
    }
}

/// With 45 file descriptors, 16 workers cannot all start: kv-server refuses to start and says which
/// worker and why (it used to keep running with the acceptor dying on the first dead worker).
/// memcached, as root, raises the limit to its connection limit itself and serves; either outcome is
/// accepted from memcached, and then every connection must be served.
#[test]
fn worker_that_cannot_start_fails_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = server_command(port, tmp.path(), &["-t".into(), "16".into(), "--no-persist".into()]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 45, rlim_max: 45 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn server");
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(!status.success());
            if !targets_memcached() {
                assert!(err.contains("starting 16 worker threads") && err.contains("Too many open files"), "{err}");
            }
            return;
        }
        // Up only if it is this child answering: a port from free_port() may meanwhile belong to another
        // test's server.
        if TcpStream::connect(addr).is_ok() && answering_pid(addr) == Some(child.id()) {
            break;
        }
        assert!(Instant::now() < deadline, "neither started nor refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = std::panic::catch_unwind(|| {
        assert!(targets_memcached(), "kv-server started although workers could not");
        let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(addr)).collect();
        for c in &mut clients {
            c.send(b"version\r\n");
            assert!(c.line().starts_with("VERSION "));
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    served.unwrap();
}

/// memcached refuses `-m 0` (through its -I rule), `-c 0`, `-t 0` and `-I` over half of `-m`; its
/// words are kept. kv-server exits with 2 and names the flag.
#[test]
fn settings_memcached_refuses_are_refused() {
    for (args, kv, memcached) in [
        (&["-m", "0"][..], "-m 0: the memory limit must be at least 1", "Cannot set item size limit higher than 1/2"),
        (&["-m", "1"], "Cannot set item size limit higher than 1/2 of memory max.", "Cannot set item size limit"),
        (&["-m", "4", "-I", "3m"], "-I 3145728 with -m 4", "Cannot set item size limit higher than 1/2"),
        (&["-c", "0"], "-c 0: Maximum connections must be greater than 0", "Maximum connections must be greater"),
        (&["-t", "0"], "-t 0: Number of threads must be greater than 0", "Number of threads must be greater than 0"),
    ] {
        let (code, err) = refused(args);
        if targets_memcached() {
            assert!(err.contains(memcached), "{args:?}: {err}");
        } else {
            assert_eq!(code, Some(2), "{args:?}");
            assert!(err.contains(kv), "{args:?}: {err}");
        }
    }
}

/// kv-server only: an upper bound on `-t` (memcached warns above 64 and starts the threads), and
/// warnings for flags that other flags turn off.
#[test]
fn thread_bound_and_warnings_for_ignored_flags() {
    kv_tests::kv_only!();
    let (code, err) = refused(&["-t", "10000"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("-t 10000: at most 256 worker threads"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let port = free_port();
    let extra: Vec<String> = ["--no-persist", "--fsync", "always", "--xdp-mode", "native", "-t", "65"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut cmd = server_command(port, tmp.path(), &extra);
    let mut child = cmd.stderr(std::fs::File::create(&log).unwrap()).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "exited: {}", std::fs::read_to_string(&log).unwrap());
        assert!(Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    for w in [
        "--fsync always has no effect with --no-persist: nothing is written to disk",
        "--xdp-mode has no effect with --no-bpf: no XDP program is loaded",
        "-t 65: setting a high number of worker threads is not recommended",
    ] {
        assert!(text.lines().any(|l| l.contains("WARN") && l.contains(w)), "no warning {w:?} in\n{text}");
    }
}

/// Admin commands, byte for byte as memcached 1.6.18 and 1.6.38 answer them (neither started with
/// `-A`, which enables shutdown).
#[test]
fn admin_commands_as_memcached() {
    let s = Server::start(&[]);
    let mut c = s.client();
    for (req, want) in [
        ("shutdown", "ERROR: shutdown not enabled\r\n"),
        ("shutdown graceful", "ERROR: shutdown not enabled\r\n"),
        ("stats bogus", "ERROR\r\n"),
        ("stats detail", "CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
        ("stats detail maybe", "CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
        ("stats cachedump", "CLIENT_ERROR bad command line\r\n"),
        ("stats cachedump 1", "CLIENT_ERROR bad command line\r\n"),
        ("stats cachedump one 1", "CLIENT_ERROR bad command line format\r\n"),
        ("stats cachedump 64 0", "CLIENT_ERROR Illegal slab id\r\n"),
        ("stats cachedump 60 0", "END\r\n"),
        ("stats sizes", "STAT sizes_status disabled\r\nEND\r\n"),
        ("stats sizes x", "STAT sizes_status disabled\r\nEND\r\n"),
        ("stats reset now", "RESET\r\n"),
        ("stats detail on", "OK\r\n"),
    ] {
        c.expect(format!("{req}\r\n").as_bytes(), want.as_bytes());
    }
    // The listing is picked by the first argument; the rest is ignored.
    for sub in ["settings", "items", "slabs"] {
        c.send(format!("stats {sub}\r\n").as_bytes());
        let plain = c.read_until(b"END\r\n");
        c.send(format!("stats {sub} extra words\r\n").as_bytes());
        let extra = c.read_until(b"END\r\n");
        let names = |raw: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(raw).lines().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect()
        };
        assert_eq!(names(&extra), names(&plain), "stats {sub}");
    }
    c.send(b"stats settings\r\n");
    let settings = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    assert!(settings.contains("STAT detail_enabled yes\r\n"), "{settings}");
    assert!(settings.contains("STAT shutdown_command no\r\n"), "{settings}");
    // Prefix counters (memcached's stats_prefix.c): gets with hits, sets, deletes, per `prefix:`; kept
    // while off, forgotten by `stats reset`.
    let dump = "PREFIX pfx get 2 hit 1 set 1 del 1\r\nEND\r\n";
    for (req, want) in [
        ("set pfx:a 0 0 1\r\n1", "STORED\r\n"),
        ("get pfx:a pfx:b", "VALUE pfx:a 0 1\r\n1\r\nEND\r\n"),
        ("delete pfx:b", "NOT_FOUND\r\n"),
        ("set nodelimiter 0 0 1\r\n1", "STORED\r\n"),
        ("stats detail dump", dump),
        ("stats detail off", "OK\r\n"),
        ("get pfx:a", "VALUE pfx:a 0 1\r\n1\r\nEND\r\n"),
        ("stats detail dump", dump),
        ("stats reset", "RESET\r\n"),
        ("stats detail dump", "END\r\n"),
    ] {
        c.expect(format!("{req}\r\n").as_bytes(), want.as_bytes());
    }
    // cachedump: which items memcached lists depends on its LRU segments (only the cold one); the
    // format is the same everywhere, and the limit holds.
    c.send(b"stats cachedump 1 0\r\n");
    let dump = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    for l in dump.lines().filter(|l| *l != "END") {
        let (key, rest) = l.strip_prefix("ITEM ").and_then(|l| l.split_once(' ')).expect(l);
        assert!(["pfx:a", "nodelimiter"].contains(&key) && rest == "[1 b; 0 s]", "{l:?}");
    }
    if !targets_memcached() {
        assert_eq!(dump.lines().count(), 3, "{dump}");
    }
    c.send(b"stats cachedump 1 1\r\n");
    assert!(String::from_utf8(c.read_until(b"END\r\n")).unwrap().lines().count() <= 2);
}

/// The `pid` a server at `addr` reports in `stats`, if it answers within a second.
fn answering_pid(addr: SocketAddr) -> Option<u32> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    c.write_all(b"stats\r\n").ok()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !raw.ends_with(b"END\r\n") {
        let n = c.read(&mut chunk).ok().filter(|&n| n > 0)?;
        raw.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&raw).lines().find_map(|l| l.strip_prefix("STAT pid ")?.trim().parse().ok())
}
