//! Operator commands (me, lru_crawler, cache_memlimit, slabs, shutdown, stats items/slabs/sizes) and
//! memcached-tool against the server; `KV_TEST_PEER=memcached` runs the same checks on memcached 1.6.18.
//! Where 1.6.18 and 1.6.38 (kv-server's reference) differ, the test says so.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use kv_tests::{run_with_timeout, targets_memcached, udp_request, Client, Server};

/// `name=value` fields of a `me` or metadump line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace().filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn field_i64(f: &BTreeMap<String, String>, name: &str) -> i64 {
    f.get(name).unwrap_or_else(|| panic!("no {name} in {f:?}")).parse().unwrap()
}

#[test]
fn meta_debug() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("foo", b"bar");
    c.expect(b"set ttl 5 100 1\r\nx\r\n", b"STORED\r\n");
    c.send(b"me foo\r\n");
    let line = c.line();
    assert!(line.starts_with("ME foo exp=-1 la="), "{line}");
    let f = fields(&line);
    assert!(field_i64(&f, "la") <= 1, "{line}");
    // memcached 1.6.18 sizes: 48-byte header + 8 CAS + key + NUL + value + CRLF.
    assert_eq!((f["cas"].as_str(), f["fetch"].as_str(), f["cls"].as_str(), f["size"].as_str()), ("1", "no", "1", "65"));
    c.get("foo");
    c.send(b"me foo\r\n");
    assert_eq!(fields(&c.line())["fetch"], "yes");
    c.send(b"me ttl\r\n");
    let exp = field_i64(&fields(&c.line()), "exp");
    // 1.6.18 printed the remaining TTL negated (fixed in 1.6.24); kv-server prints it as 1.6.24+ does.
    let remaining = if targets_memcached() { -exp } else { exp };
    assert!((98..=100).contains(&remaining), "exp={exp}");
    c.expect(b"me nothing\r\n", b"EN\r\n");
    c.expect(b"me\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"me foo b\r\n", b"CLIENT_ERROR bad command line format\r\n");
    // A base64 key: memcached 1.6.18 echoes a key stored by `set` raw, kv-server as it was asked.
    c.send(b"me Zm9v b\r\n");
    let line = c.line();
    let echoed = if targets_memcached() { "ME foo " } else { "ME Zm9v " };
    assert!(line.starts_with(echoed) && line.ends_with(" cls=1 size=65\r\n"), "{line}");
    c.expect(b"mn\r\n", b"MN\r\n");
}

#[test]
fn metadump() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("a", b"x");
    c.expect(b"ms a%2Fb 1 T0\r\nx\r\n", b"HD\r\n");
    c.set("plain", b"x");
    c.set("big", &[b'y'; 200]);
    c.expect(b"set gone 0 -1 1\r\nx\r\n", b"STORED\r\n");
    c.send(b"lru_crawler metadump all\r\n");
    let dump = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    let mut lines: Vec<BTreeMap<String, String>> =
        dump.trim_end_matches("END\r\n").split_terminator('\n').map(fields).collect();
    lines.sort_by(|a, b| a["key"].cmp(&b["key"]));
    let got: Vec<(&str, &str, &str, &str)> =
        lines.iter().map(|f| (f["key"].as_str(), f["exp"].as_str(), f["cls"].as_str(), f["size"].as_str())).collect();
    // Keys are URI-encoded (`%` itself too); the expired item is left out.
    assert_eq!(
        got,
        [("a", "-1", "1", "61"), ("a%252Fb", "-1", "1", "65"), ("big", "-1", "6", "262"), ("plain", "-1", "1", "65")]
    );
    for f in &lines {
        assert_eq!(f["fetch"], "no");
        // flags= is 1.6.38's addition (1.6.18 has none).
        assert_eq!(f.get("flags").map(String::as_str), (!targets_memcached()).then_some("0"));
    }
    c.send(b"lru_crawler metadump 6\r\n");
    let six = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    assert!(six.starts_with("key=big ") && six.lines().count() == 2, "{six}");
    c.send(b"lru_crawler metadump hash\r\n");
    assert_eq!(String::from_utf8(c.read_until(b"END\r\n")).unwrap().lines().count(), 5);
    c.expect(b"lru_crawler metadump 2\r\n", b"END\r\n");
}

/// Requests with memcached 1.6.18's exact replies.
#[track_caller]
fn parity(c: &mut Client, cases: &[(&str, &str)]) {
    for &(req, want) in cases {
        c.expect(req.as_bytes(), want.as_bytes());
    }
}

#[test]
fn lru_crawler_controls() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("k", b"v");
    parity(
        &mut c,
        &[
            ("lru_crawler metadump 0\r\n", "BADCLASS invalid class id\r\n"),
            ("lru_crawler metadump 64\r\n", "BADCLASS invalid class id\r\n"),
            ("lru_crawler metadump x\r\n", "BADCLASS invalid class id\r\n"),
            ("lru_crawler metadump\r\n", "ERROR\r\n"),
            ("lru_crawler tocrawl 10\r\n", "OK\r\n"),
            ("lru_crawler tocrawl x\r\n", "CLIENT_ERROR bad command line format\r\n"),
            ("lru_crawler sleep 2000000\r\n", "CLIENT_ERROR sleep must be one second or less\r\n"),
            ("lru_crawler sleep 100\r\n", "OK\r\n"),
            ("lru_crawler enable\r\n", "ERROR failed to start lru crawler thread\r\n"),
            ("lru_crawler disable\r\n", "OK\r\n"),
            ("lru_crawler disable\r\n", "OK\r\n"),
            ("lru_crawler metadump all\r\n", "CLIENT_ERROR lru crawler disabled\r\n"),
            ("lru_crawler crawl all\r\n", "CLIENT_ERROR lru crawler disabled\r\n"),
            ("lru_crawler enable\r\n", "OK\r\n"),
            ("lru_crawler bogus\r\n", "ERROR\r\n"),
            ("lru_crawler\r\n", "ERROR\r\n"),
            ("lru_crawler a b c d\r\n", "ERROR\r\n"),
        ],
    );
    // The crawler is asynchronous in memcached: retry while it is still busy with the last request.
    for (req, want) in
        [("lru_crawler crawl all\r\n", "OK\r\n"), ("lru_crawler crawl hash\r\n", "ERROR an unknown error happened\r\n")]
    {
        let t0 = Instant::now();
        loop {
            c.send(req.as_bytes());
            let got = c.line();
            if got.starts_with("BUSY") && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            assert_eq!(got, want, "{req}");
            break;
        }
    }
}

#[test]
fn cache_memlimit() {
    let s = Server::start(&["-m", "64"]);
    let mut c = s.client();
    c.expect(b"cache_memlimit 100\r\n", b"OK\r\n");
    let maxbytes = |c: &mut Client| -> String {
        c.send(b"stats settings\r\n");
        let all = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
        all.lines().find_map(|l| l.strip_prefix("STAT maxbytes ")).unwrap().to_string()
    };
    assert_eq!(maxbytes(&mut c), (100u64 << 20).to_string());
    parity(
        &mut c,
        &[
            ("cache_memlimit 7\r\n", "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"),
            ("cache_memlimit 1000000001\r\n", "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n"),
            ("cache_memlimit abc\r\n", "ERROR\r\n"),
            ("cache_memlimit -5\r\n", "ERROR\r\n"),
            ("cache_memlimit\r\n", "ERROR\r\n"),
            ("cache_memlimit 1 2 3\r\n", "ERROR\r\n"),
            ("cache_memlimit 100 x\r\n", "OK\r\n"),
            ("cache_memlimit 100 noreply\r\n", ""),
            ("cache_memlimit abc noreply\r\n", ""),
            ("cache_memlimit 8\r\n", "OK\r\n"),
        ],
    );
    assert_eq!(maxbytes(&mut c), (8u64 << 20).to_string());
}

#[test]
fn memlimit_shrink_evicts() {
    kv_tests::kv_only!(); // memcached frees pages over time, not at once
    let s = Server::start(&["-m", "64", "--no-persist"]);
    let mut c = s.client();
    // Pipelined with noreply; `mn` answers once all of them were applied.
    let mut req = Vec::new();
    for i in 0..4000 {
        req.extend_from_slice(format!("set k{i} 0 0 10000 noreply\r\n").as_bytes());
        req.extend_from_slice(&[b'v'; 10_000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"mn\r\n");
    c.send(&req);
    c.read_until(b"MN\r\n");
    c.expect(b"cache_memlimit 8\r\n", b"OK\r\n");
    c.send(b"stats\r\n");
    let st = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    let stat = |n: &str| -> u64 {
        st.lines().find_map(|l| l.strip_prefix(&format!("STAT {n} "))).unwrap().trim().parse().unwrap()
    };
    assert_eq!(stat("limit_maxbytes"), 8 << 20);
    assert!(stat("bytes") < 8 << 20 && stat("evictions") > 3000, "{st}");
    c.set("after", b"still works");
    assert_eq!(c.get("after").as_deref(), Some(&b"still works"[..]));
}

#[test]
fn slabs_parity() {
    let s = Server::start(&[]);
    let mut c = s.client();
    parity(
        &mut c,
        &[
            ("slabs automove invalid\r\n", "CLIENT_ERROR bad command line format\r\n"),
            ("slabs automove 0\r\n", "OK\r\n"),
            ("slabs automove 1\r\n", "OK\r\n"),
            ("slabs automove 2\r\n", "OK\r\n"),
            ("slabs automove 3\r\n", "ERROR\r\n"),
            ("slabs automove\r\n", "ERROR\r\n"),
            ("slabs automove ratio 0.5\r\n", "OK\r\n"),
            ("slabs automove ratio\r\n", "ERROR\r\n"),
            ("slabs automove ratio x 1\r\n", "ERROR\r\n"),
            ("slabs automove 1 noreply\r\n", ""),
            ("slabs reassign 1 2\r\n", "NOSPARE source class has no spare pages\r\n"),
            ("slabs reassign 1 1\r\n", "SAME src and dst class are identical\r\n"),
            ("slabs reassign 0 2\r\n", "NOSPARE source class has no spare pages\r\n"),
            ("slabs reassign x 2\r\n", "CLIENT_ERROR bad command line format\r\n"),
            ("slabs reassign -1 2\r\n", "BADCLASS invalid src or dst class id\r\n"),
            ("slabs reassign 1 99\r\n", "BADCLASS invalid src or dst class id\r\n"),
            ("slabs reassign 1\r\n", "ERROR\r\n"),
            ("slabs\r\n", "ERROR\r\n"),
            ("slabs bogus\r\n", "ERROR\r\n"),
            ("slabs reassign 1 2 3\r\n", "ERROR\r\n"),
            ("stats sizes\r\n", "STAT sizes_status disabled\r\nEND\r\n"),
            ("mn\r\n", "MN\r\n"),
        ],
    );
}

#[test]
fn shutdown() {
    let s = Server::start(&[]);
    let mut c = s.client();
    parity(
        &mut c,
        &[
            ("shutdown\r\n", "ERROR: shutdown not enabled\r\n"),
            ("shutdown graceful\r\n", "ERROR: shutdown not enabled\r\n"),
            ("shutdown x y\r\n", "ERROR: shutdown not enabled\r\n"),
        ],
    );
    let mut s = Server::start(&["-A"]);
    let mut c = s.client();
    c.expect(b"shutdown now\r\n", b"CLIENT_ERROR invalid shutdown mode\r\n");
    c.set("k", b"v");
    c.send(b"shutdown\r\n");
    assert!(c.closed(), "connection closed by shutdown");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "server still running 10 s after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    };
    // memcached exits 0 on SIGINT too.
    assert!(status.success(), "{status}");
}

#[test]
fn class_stats() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("a", b"x");
    c.set("b", b"x");
    c.set("big", &[b'y'; 200]);
    c.send(b"stats items\r\n");
    let items = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    assert!(items.contains("STAT items:1:number 2\r\n") && items.contains("STAT items:6:number 1\r\n"), "{items}");
    c.send(b"stats slabs\r\n");
    let slabs = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    for line in ["STAT 1:chunk_size 96\r\n", "STAT 1:chunks_per_page 10922\r\n", "STAT 6:chunk_size 304\r\n"] {
        assert!(slabs.contains(line), "{line:?} in {slabs}");
    }
    assert!(slabs.contains("STAT 1:used_chunks 2\r\n") && slabs.contains("STAT 6:used_chunks 1\r\n"), "{slabs}");
}

fn memcached_tool(s: &Server, mode: &str) -> String {
    let tool =
        std::env::var("KV_MEMCACHED_TOOL").unwrap_or_else(|_| "/usr/share/memcached/scripts/memcached-tool".into());
    let (st, out, err) = run_with_timeout(
        Command::new("perl").arg(&tool).arg(format!("127.0.0.1:{}", s.port)).arg(mode),
        Duration::from_secs(30),
    );
    assert!(st.success(), "memcached-tool {mode}: {st}\nstdout:\n{out}\nstderr:\n{err}");
    out
}

#[test]
fn memcached_tool_display_dump_stats() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let mut keys = Vec::new();
    for i in 0..50 {
        let k = format!("small{i}");
        c.set(&k, b"value");
        keys.push(k);
    }
    for i in 0..5 {
        let k = format!("large{i}");
        c.set(&k, &vec![b'L'; 5000]);
        keys.push(k);
    }
    c.expect(b"set ttl 3 1000 2\r\nhi\r\n", b"STORED\r\n");
    keys.push("ttl".into());

    let display = memcached_tool(&s, "display");
    // "  #  Item_Size  Max_age   Pages   Count   Full?  Evicted Evict_Time OOM", then one row per class.
    let rows: BTreeMap<u32, u64> = display
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].parse().unwrap(), cols[4].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.values().sum::<u64>(), 56, "{display}");
    assert_eq!(rows.get(&1), Some(&51), "{display}");
    assert_eq!(rows.get(&19), Some(&5), "5000-byte values: class 19 (5680 B)\n{display}");

    let dump = memcached_tool(&s, "dump");
    let mut dumped: Vec<&str> = dump.lines().filter_map(|l| l.strip_prefix("add ")?.split(' ').next()).collect();
    dumped.sort();
    keys.sort();
    assert_eq!(dumped, keys);
    assert!(dump.contains("add ttl 3 "), "flags and exptime carried: {dump}");
    assert!(dump.contains("\r\nvalue\r\n"));

    let stats = memcached_tool(&s, "stats");
    assert!(stats.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["curr_items", "56"]), "{stats}");
}

/// `stats conns` lines by descriptor: `STAT <fd>:<name> <value>`.
fn stats_conns(c: &mut Client) -> BTreeMap<u32, BTreeMap<String, String>> {
    c.send(b"stats conns\r\n");
    let text = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    let mut by_fd: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines().filter(|l| *l != "END") {
        let rest = line.strip_prefix("STAT ").unwrap_or_else(|| panic!("{line:?}"));
        let (name, value) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let (fd, field) = name.split_once(':').unwrap_or_else(|| panic!("{line:?}"));
        by_fd.entry(fd.parse().unwrap()).or_default().insert(field.to_string(), value.to_string());
    }
    by_fd
}

/// Each socket with memcached's fields and states: the listener, the UDP socket, an idle connection,
/// one in the middle of an upload and the one asking. A closed connection leaves the list.
#[test]
fn stats_conns_lists_every_socket() {
    let s = Server::start(&[]);
    let port = s.port;
    let mut idle = s.client();
    idle.expect(b"mn\r\n", b"MN\r\n");
    let mut uploading = s.client();
    uploading.send(b"set k 0 0 10\r\nabc");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(udp_request(s.addr(), 7, b"mn\r\n"), b"MN\r\n");
    let mut c = s.client();
    let conns = stats_conns(&mut c);
    let find = |who: &Client| {
        let addr = format!("tcp:{}", who.stream.local_addr().unwrap());
        conns.values().find(|f| f["addr"] == addr).unwrap_or_else(|| panic!("{addr} not in {conns:?}")).clone()
    };
    let listening: Vec<_> = conns.values().filter(|f| f["state"] == "conn_listening").collect();
    assert_eq!(listening.len(), 1, "{conns:?}");
    assert_eq!(listening[0]["addr"], format!("tcp:127.0.0.1:{port}"));
    assert!(!listening[0].contains_key("listen_addr"));
    // memcached lists its UDP socket once per worker thread, kv-server its one socket.
    let udp: Vec<_> = conns.values().filter(|f| f.contains_key("UDP")).collect();
    assert!(!udp.is_empty(), "{conns:?}");
    for u in udp {
        assert_eq!((u["UDP"].as_str(), u["addr"].as_str()), ("UDP", format!("udp:127.0.0.1:{port}").as_str()));
        assert_eq!(u["state"], "conn_read");
    }
    // The datagram just sent counts as a command of the socket that read it.
    assert!(conns.values().any(|f| f.contains_key("UDP") && f["secs_since_last_cmd"].parse::<u64>().unwrap() <= 1));
    for (who, state) in [(&idle, "conn_read"), (&uploading, "conn_nread"), (&c, "conn_parse_cmd")] {
        let f = find(who);
        assert_eq!(f["state"], state, "{f:?}");
        assert_eq!(f["listen_addr"], format!("tcp:127.0.0.1:{port}"));
        let secs: u64 = f["secs_since_last_cmd"].parse().unwrap();
        // Whole seconds of a coarse clock: the asking connection may straddle a tick.
        assert!(if state == "conn_parse_cmd" { secs <= 1 } else { (1..=3).contains(&secs) }, "{f:?}");
    }
    assert_eq!(conns.values().filter(|f| f.contains_key("listen_addr")).count(), 3, "{conns:?}");
    // The upload completes; a closed connection leaves the list (the server notices within moments).
    uploading.expect(b"defghij\r\n", b"STORED\r\n");
    let gone = format!("tcp:{}", idle.stream.local_addr().unwrap());
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let conns = stats_conns(&mut c);
        let up = format!("tcp:{}", uploading.stream.local_addr().unwrap());
        assert_eq!(conns.values().find(|f| f["addr"] == up).expect("still open")["state"], "conn_read");
        if conns.values().all(|f| f["addr"] != gone) {
            break;
        }
        assert!(Instant::now() < deadline, "a closed connection is still listed: {conns:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
