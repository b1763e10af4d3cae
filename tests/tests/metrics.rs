//! `--metrics-addr`: the Prometheus endpoint moves with the traffic and agrees with `stats`; and the
//! `stats` names memcached exporters read are there (that test also runs against memcached).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kv_tests::netns::{udp_request_retry, XdpBed};
use kv_tests::{free_port, Client, Server};

struct Response {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request over a fresh connection; the server closes after answering.
fn http(addr: SocketAddr, request: &str) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the HTTP response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header/body separator");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    Response { status, headers: head.to_string(), body: body.to_string() }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"))
}

/// Scrapes /metrics: series (name with labels) → value.
fn scrape(addr: SocketAddr) -> (String, HashMap<String, u64>) {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.headers);
    assert!(r.headers.contains("Content-Type: text/plain; version=0.0.4"), "{}", r.headers);
    let series = r
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("value in {l:?}")))
        })
        .collect();
    (r.body, series)
}

fn stats(c: &mut Client, sub: &str) -> HashMap<String, String> {
    c.send(if sub.is_empty() { b"stats\r\n".to_vec() } else { format!("stats {sub}\r\n").into_bytes() }.as_slice());
    String::from_utf8(c.read_until(b"END\r\n"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, series: &str) -> u64 {
    let v = |m: &HashMap<String, u64>| *m.get(series).unwrap_or_else(|| panic!("no {series} in the scrape"));
    v(after) - v(before)
}

#[test]
fn metrics_move_with_traffic_and_agree_with_stats() {
    kv_tests::kv_only!();
    let mport = free_port();
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let srv = Server::start(&["--no-persist", &format!("--metrics-addr={maddr}")]);
    let (text, before) = scrape(maddr);
    for family in [
        "# TYPE kv_cmd_get_total counter",
        "# TYPE kv_get_hits_total counter",
        "# TYPE kv_get_misses_total counter",
        "# TYPE kv_evictions_total counter",
        "# TYPE kv_curr_items gauge",
        "# TYPE kv_bytes gauge",
        "# TYPE kv_curr_connections gauge",
        "# TYPE kv_limit_maxbytes gauge",
        "# HELP kv_get_hits_total ",
    ] {
        assert!(text.contains(family), "no {family:?} in\n{text}");
    }
    // --no-bpf: no kernel path, so no kernel metrics either.
    assert!(!text.contains("kv_xdp_"), "{text}");

    let mut c = srv.client();
    c.set("m1", b"hello");
    c.set("m2", b"world!");
    assert_eq!(c.get("m1").as_deref(), Some(&b"hello"[..]));
    assert_eq!(c.get("m2").as_deref(), Some(&b"world!"[..]));
    for k in ["nope1", "nope2", "nope3"] {
        assert_eq!(c.get(k), None);
    }
    let (_, after) = scrape(maddr);
    assert_eq!(delta(&before, &after, "kv_cmd_get_total"), 5);
    assert_eq!(delta(&before, &after, "kv_get_hits_total"), 2);
    assert_eq!(delta(&before, &after, "kv_get_misses_total"), 3);
    assert_eq!(delta(&before, &after, "kv_cmd_set_total"), 2);
    assert_eq!(delta(&before, &after, "kv_total_items_total"), 2);
    assert_eq!(after["kv_curr_items"], 2);
    assert!(after["kv_bytes"] > before["kv_bytes"], "bytes grew: {} -> {}", before["kv_bytes"], after["kv_bytes"]);
    assert_eq!(after["kv_limit_maxbytes"], 64 << 20);
    assert!(after["kv_curr_connections"] >= 1, "our client is connected");

    // No traffic in between: `stats` and a scrape report the same numbers.
    let s = stats(&mut c, "");
    let (_, now) = scrape(maddr);
    for (stat, series) in [
        ("cmd_get", "kv_cmd_get_total"),
        ("get_hits", "kv_get_hits_total"),
        ("get_misses", "kv_get_misses_total"),
        ("cmd_set", "kv_cmd_set_total"),
        ("curr_items", "kv_curr_items"),
        ("total_items", "kv_total_items_total"),
        ("bytes", "kv_bytes"),
        ("evictions", "kv_evictions_total"),
        ("limit_maxbytes", "kv_limit_maxbytes"),
        ("threads", "kv_threads"),
    ] {
        assert_eq!(s[stat].parse::<u64>().unwrap(), now[series], "stats {stat} vs {series}");
    }

    // Anything but GET /metrics.
    assert_eq!(get(maddr, "/").status, 404);
    assert_eq!(get(maddr, "/metrics/x").status, 404);
    assert_eq!(http(maddr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status, 405);
    assert_eq!(http(maddr, "nonsense\r\n\r\n").status, 400);
    // Still serving after the bad requests.
    assert_eq!(scrape(maddr).1["kv_curr_items"], 2);
}

/// The `stats` names memcached exporters read, with the values both servers must agree on after a known
/// sequence of commands. Runs against memcached too (`KV_TEST_PEER=memcached`).
#[test]
fn stats_parity_names_and_values() {
    let srv = Server::start(&["--no-persist"]);
    let mut c = srv.client();
    c.set("p1", b"v");
    assert_eq!(c.get("p1").as_deref(), Some(&b"v"[..]));
    assert_eq!(c.get("p-missing"), None);

    let g = stats(&mut c, "");
    for name in [
        "pid",
        "uptime",
        "time",
        "version",
        "rusage_user",
        "rusage_system",
        "max_connections",
        "curr_connections",
        "total_connections",
        "rejected_connections",
        "connection_structures",
        "cmd_get",
        "cmd_set",
        "cmd_flush",
        "cmd_touch",
        "get_hits",
        "get_misses",
        "get_expired",
        "get_flushed",
        "delete_hits",
        "delete_misses",
        "incr_hits",
        "incr_misses",
        "decr_hits",
        "decr_misses",
        "cas_hits",
        "cas_misses",
        "cas_badval",
        "touch_hits",
        "touch_misses",
        "store_too_large",
        "store_no_memory",
        "bytes_read",
        "bytes_written",
        "limit_maxbytes",
        "accepting_conns",
        "threads",
        "conn_yields",
        "bytes",
        "curr_items",
        "total_items",
        "expired_unfetched",
        "evicted_unfetched",
        "evictions",
        "reclaimed",
    ] {
        assert!(g.contains_key(name), "stats has no {name}");
    }
    for (name, v) in [("cmd_get", "2"), ("get_hits", "1"), ("get_misses", "1"), ("cmd_set", "1")] {
        assert_eq!(g[name], v, "stats {name}");
    }
    for (name, v) in [("curr_items", "1"), ("total_items", "1"), ("evictions", "0"), ("limit_maxbytes", "67108864")] {
        assert_eq!(g[name], v, "stats {name}");
    }
    assert_eq!(g["pid"], srv.child.id().to_string());
    assert!(g["rusage_user"].contains('.'), "seconds.micros: {}", g["rusage_user"]);

    let s = stats(&mut c, "settings");
    let want = [
        ("maxbytes", "67108864".to_string()),
        ("maxconns", "1024".to_string()),
        ("tcpport", srv.port.to_string()),
        ("udpport", srv.port.to_string()),
        ("verbosity", "0".to_string()),
        ("num_threads", "4".to_string()),
        ("item_size_max", "1048576".to_string()),
        ("evictions", "on".to_string()),
        ("cas_enabled", "yes".to_string()),
        ("auth_enabled_sasl", "no".to_string()),
        ("auth_enabled_ascii", "no".to_string()),
        ("ssl_enabled", "no".to_string()),
        ("idle_timeout", "0".to_string()),
    ];
    for (name, v) in &want {
        assert_eq!(s.get(*name), Some(v), "stats settings {name}");
    }

    // A one-byte value lands in memcached's first slab class, in kv-server too (classes are size bands).
    let i = stats(&mut c, "items");
    for name in ["number", "evicted", "outofmemory", "reclaimed", "expired_unfetched", "evicted_unfetched"] {
        assert!(i.contains_key(&format!("items:1:{name}")), "stats items has no items:1:{name}");
    }
    assert_eq!(i["items:1:number"], "1");
    assert_eq!(i["items:1:evicted"], "0");
    assert!(i["items:1:mem_requested"].parse::<u64>().unwrap() > 0);

    let sl = stats(&mut c, "slabs");
    for (name, v) in [("1:used_chunks", "1"), ("1:get_hits", "1"), ("1:cmd_set", "1"), ("active_slabs", "1")] {
        assert_eq!(sl.get(name).map(String::as_str), Some(v), "stats slabs {name}");
    }
    for name in ["1:chunk_size", "1:delete_hits", "1:cas_hits", "1:touch_hits", "total_malloced"] {
        assert!(sl.contains_key(name), "stats slabs has no {name}");
    }
}

/// With the kernel path up, the XDP and kernel-cache counters are exported, one `reason` label per pass
/// reason, and they agree with `stats` once the traffic stopped. Runs in network namespaces (the
/// server's own `lo` hosts the endpoint), like the other XDP tests.
#[test]
fn kernel_path_metrics() {
    kv_tests::kv_only!();
    let Some(bed) = XdpBed::start_or_skip("met", &["--metrics-addr", "127.0.0.1:9150"]) else { return };
    let maddr: SocketAddr = "127.0.0.1:9150".parse().unwrap();
    let (text, before) = bed.server_ns.run(|| scrape(maddr));
    for (_, name) in kv_common::COUNTERS {
        let series = match name.strip_prefix("xdp_pass_") {
            Some(reason) => format!("kv_xdp_passes_total{{reason=\"{reason}\"}}"),
            None => format!("kv_{name}_total"),
        };
        assert!(before.contains_key(&series), "no {series} in\n{text}");
    }
    for name in ["admissions", "updates", "invalidations", "flushes", "errors"] {
        assert!(before.contains_key(&format!("kv_kcache_{name}_total")), "no kcache {name} in\n{text}");
    }
    assert_eq!(text.matches("# TYPE kv_xdp_passes_total counter").count(), 1, "one family header");

    // A key read over UDP until the kernel answers it (admitted after 2 user-space hits).
    let mut c = bed.client();
    c.set("mk", b"kernel");
    let sock = bed.udp_socket();
    for id in 1..=4u16 {
        let r = udp_request_retry(&sock, bed.addr, id, b"get mk\r\n");
        assert_eq!(r.body, b"VALUE mk 0 6\r\nkernel\r\nEND\r\n");
    }
    let (_, after) = bed.server_ns.run(|| scrape(maddr));
    assert!(delta(&before, &after, "kv_xdp_hits_total") >= 1, "the kernel answered at least one get");
    assert!(delta(&before, &after, "kv_kcache_admissions_total") >= 1, "mk was admitted");
    // (Not xdp_packets: the `stats` request itself crosses the XDP program.)
    let s = bed.stats();
    for (stat, series) in [
        ("xdp_hits", "kv_xdp_hits_total".to_string()),
        ("xdp_pass_miss", "kv_xdp_passes_total{reason=\"miss\"}".to_string()),
        ("kcache_admissions", "kv_kcache_admissions_total".to_string()),
    ] {
        assert_eq!(s[stat].parse::<u64>().unwrap(), after[&series], "stats {stat} vs {series}");
    }
}

/// Slow clients cannot keep scrapes out. Sixteen clients trickling a request one byte a second used to
/// hold every slot (16, for up to 10 s each), so scrapes were closed unanswered; now each gets 2 s for
/// its request head. A request whose head ends in a bare LF empty line used to wait for the 10 s
/// timeout; it is answered. And with more idle connections than slots, a scrape waits its turn (first
/// come, first served) instead of being closed.
#[test]
fn scrapes_get_through_slow_clients() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::Instant;
    kv_tests::kv_only!();
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _srv = Server::start(&["--no-persist", &format!("--metrics-addr={maddr}")]);
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Reconnects whenever the server gives up on it, for as long as the test runs.
                while !stop.load(Relaxed) {
                    let Ok(mut s) = TcpStream::connect(maddr) else { continue };
                    for b in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n" {
                        if stop.load(Relaxed) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..8 {
        let t = Instant::now();
        let r = get(maddr, "/metrics");
        assert_eq!(r.status, 200, "scrape {i}");
        assert!(t.elapsed() < Duration::from_secs(1), "scrape {i} took {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(400));
    }
    let t = Instant::now();
    let r = http(maddr, "GET /metrics HTTP/1.1\nHost: lf\n\n");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("# TYPE kv_curr_items gauge"));
    assert!(t.elapsed() < Duration::from_secs(1), "bare-LF request took {:?}", t.elapsed());
    stop.store(true, Relaxed);
    for t in slow {
        t.join().unwrap();
    }
    // 100 connections that send nothing: more than the 64 slots.
    let idle: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(maddr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(get(maddr, "/metrics").status, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "scrape behind idle connections took {:?}", t.elapsed());
    drop(idle);
}
