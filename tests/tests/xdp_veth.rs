//! The XDP path end to end over a real veth pair: kv-server in one network namespace with native XDP on
//! its veth, the client in another. UDP `get`/`gets` hits must come back from the kernel, byte-identical
//! to what user space would send, and every write over TCP must be visible to the very next UDP read.
//!
//! Whether a reply came from the kernel is read straight from the server program's `COUNTERS` map (the
//! hit counter rises by one per request answered with XDP_TX), so these tests do not depend on `stats`
//! except where `stats` itself is under test.

use std::net::UdpSocket;
use std::time::Duration;

use kv_common::Counter;
use kv_tests::netns::{udp_request_retry, UdpReply, XdpBed};

const NOT_ADMITTED: &str = "the kernel never answered a UDP get for this hot key: hot keys are not admitted";
const NO_XDP_STATS: &str = "`stats` has no `STAT xdp_hits` line";

/// Sends requests with increasing ids over one client-namespace socket.
struct Udp<'a> {
    bed: &'a XdpBed,
    sock: UdpSocket,
    next_id: u16,
}

impl<'a> Udp<'a> {
    fn new(bed: &'a XdpBed) -> Self {
        Udp { bed, sock: bed.udp_socket(), next_id: 0x100 }
    }

    /// One request; returns the reply and whether the kernel answered it (its hit counter rose).
    fn request(&mut self, payload: &[u8]) -> (UdpReply, bool) {
        self.next_id = self.next_id.wrapping_add(1);
        let before = self.bed.kernel_hits();
        let reply = udp_request_retry(&self.sock, self.bed.addr, self.next_id, payload);
        (reply, self.bed.kernel_hits() > before)
    }

    /// Repeats `payload` until the kernel answers it (at most `max` requests, pausing a little after the
    /// first few so that an asynchronous admission can happen), asserting every reply is `expected` in one
    /// datagram. Returns whether the kernel answered one.
    #[track_caller]
    fn warm(&mut self, payload: &[u8], expected: &[u8], max: usize) -> bool {
        for i in 0..max {
            let (r, hit) = self.request(payload);
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                String::from_utf8_lossy(expected),
                "reply {i} to {:?} (kernel: {hit})",
                String::from_utf8_lossy(payload)
            );
            assert_eq!(r.datagrams, 1, "one datagram");
            if hit {
                return true;
            }
            if i >= 10 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        false
    }
}

fn get_reply(key: &str, value: &[u8]) -> Vec<u8> {
    let mut v = format!("VALUE {key} 0 {}\r\n", value.len()).into_bytes();
    v.extend_from_slice(value);
    v.extend_from_slice(b"\r\nEND\r\n");
    v
}

/// The server's XDP counters as reported by `stats` (name → value), for messages.
fn xdp_stats(bed: &XdpBed) -> Vec<(String, String)> {
    let mut v: Vec<_> = bed.stats().into_iter().filter(|(k, _)| k.starts_with("xdp_")).collect();
    v.sort();
    v
}

/// Harness self-test, independent of the server's admission logic: an entry written straight into the
/// server's kernel cache is answered by the kernel, and the reply crosses the veth into the client
/// namespace (this needs the pass-through XDP program on the client's veth).
#[test]
fn harness_kernel_replies_reach_the_client_namespace() {
    let Some(bed) = XdpBed::start_or_skip("hx", &[]) else { return };
    let mut udp = Udp::new(&bed);
    let seen = bed.kernel_counter(Counter::Seen);
    let (r, hit) = udp.request(b"get probe\r\n");
    assert_eq!(r.body, b"END\r\n", "user space knows no `probe`");
    assert!(!hit, "a miss is passed to user space");
    assert!(bed.kernel_counter(Counter::Seen) > seen, "the request went through the server's XDP program");
    bed.kernel_cache_insert(b"probe", 7, 42, b"from-the-kernel").expect("writing the kernel cache");
    for _ in 0..20 {
        let (r, hit) = udp.request(b"get probe\r\n");
        assert!(hit, "answered by the kernel");
        assert_eq!(String::from_utf8_lossy(&r.body), "VALUE probe 7 15\r\nfrom-the-kernel\r\nEND\r\n");
        let (r, hit) = udp.request(b"gets probe\r\n");
        assert!(hit, "answered by the kernel");
        assert_eq!(String::from_utf8_lossy(&r.body), "VALUE probe 7 15 42\r\nfrom-the-kernel\r\nEND\r\n");
    }
    bed.kernel_cache_remove(b"probe").unwrap();
    let (r, hit) = udp.request(b"get probe\r\n");
    assert_eq!((r.body.as_slice(), hit), (&b"END\r\n"[..], false));
    // Replies much larger than the request: the frame must grow by more than a native veth's headroom.
    // The kernel either answers correctly or passes the request (user space has no such key: END).
    for len in [200usize, 600, 1300] {
        let value: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        bed.kernel_cache_insert(b"grow", 0, 1, &value).expect("writing the kernel cache");
        let too_big = bed.kernel_counter(Counter::PassTooBig);
        let (r, hit) = udp.request(b"get grow\r\n");
        if hit {
            assert_eq!(r.body, get_reply("grow", &value), "{len}-byte value from the kernel");
        } else {
            assert_eq!(r.body, b"END\r\n");
            assert_eq!(bed.kernel_counter(Counter::PassTooBig), too_big + 1, "passed as too big");
        }
        eprintln!("{len}-byte value for a 16-byte request: {}", if hit { "kernel" } else { "passed (too big)" });
        bed.kernel_cache_remove(b"grow").unwrap();
    }
}

#[test]
fn udp_get_hits_are_answered_in_the_kernel() {
    let Some(bed) = XdpBed::start_or_skip("hit", &[]) else { return };
    bed.client().set("k", b"hello");
    let mut udp = Udp::new(&bed);
    let expected = b"VALUE k 0 5\r\nhello\r\nEND\r\n";
    let mut kernel_answers = 0;
    let mut sent = 0;
    // 20 gets, or more (up to 200) until the kernel has answered some.
    while sent < 20 || (kernel_answers == 0 && sent < 200) {
        let (r, hit) = udp.request(b"get k\r\n");
        sent += 1;
        assert_eq!(String::from_utf8_lossy(&r.body), String::from_utf8_lossy(expected), "reply to get {sent}");
        assert_eq!(r.datagrams, 1);
        kernel_answers += hit as usize;
        if sent >= 20 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let hits = bed.kernel_hits();
    let stats = xdp_stats(&bed);
    eprintln!("{sent} gets, {kernel_answers} answered by the kernel; kernel hit counter {hits}; stats {stats:?}");
    // Replies are all correct; what follows depends on kv-user's kernel cache synchronisation.
    assert!(kernel_answers > 0, "{NOT_ADMITTED} ({sent} gets)");
    let reported = bed.stat("xdp_hits").unwrap_or_else(|| panic!("{NO_XDP_STATS}"));
    assert!(reported >= hits, "STAT xdp_hits {reported} < kernel counter {hits}");
    for (_, name) in kv_common::COUNTERS {
        assert!(stats.iter().any(|(k, _)| k == name), "stats lacks STAT {name}: {stats:?}");
    }
}

#[test]
fn tcp_set_is_visible_to_the_next_udp_get() {
    let Some(bed) = XdpBed::start_or_skip("set", &[]) else { return };
    let mut tcp = bed.client();
    tcp.set("k", b"v-initial");
    let mut udp = Udp::new(&bed);
    let hot = udp.warm(b"get k\r\n", &get_reply("k", b"v-initial"), 200);
    let mut kernel_answers = 0;
    for i in 0..200 {
        let value = format!("v-{i}-{}", "x".repeat(i % 17));
        tcp.set("k", value.as_bytes());
        // The very next get, then a few more (which may bring the key back into the kernel cache).
        for j in 0..4 {
            let (r, hit) = udp.request(b"get k\r\n");
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                String::from_utf8_lossy(&get_reply("k", value.as_bytes())),
                "get {j} after set {i} (answered by the kernel: {hit})"
            );
            kernel_answers += hit as usize;
        }
    }
    eprintln!("warm-up reached the kernel: {hot}; gets after sets answered by the kernel: {kernel_answers} of 800");
    assert!(hot, "{NOT_ADMITTED}");
    assert!(kernel_answers > 0, "{NOT_ADMITTED} (after rewrites)");
}

#[test]
fn gets_and_multiget_over_xdp() {
    let Some(bed) = XdpBed::start_or_skip("mget", &[]) else { return };
    let mut tcp = bed.client();
    for (k, v) in [("ma", "alpha"), ("mb", "bravo-2"), ("mc", "c")] {
        tcp.set(k, v.as_bytes());
    }
    let mut udp = Udp::new(&bed);
    let mut hot = Vec::new();
    for k in ["ma", "mb", "mc"] {
        tcp.send(format!("get {k}\r\n").as_bytes());
        let want = tcp.read_until(b"END\r\n");
        hot.push(udp.warm(format!("get {k}\r\n").as_bytes(), &want, 200));
    }
    // gets: the CAS unique must be the one TCP reports.
    tcp.send(b"gets ma\r\n");
    let tcp_gets = tcp.read_until(b"END\r\n");
    assert!(String::from_utf8_lossy(&tcp_gets).starts_with("VALUE ma 0 5 "), "{tcp_gets:?}");
    let gets_hot = udp.warm(b"gets ma\r\n", &tcp_gets, 200);
    // A 3-key multiget: one datagram, the same bytes as over TCP.
    tcp.send(b"get ma mb mc\r\n");
    let tcp_multi = tcp.read_until(b"END\r\n");
    assert_eq!(
        String::from_utf8_lossy(&tcp_multi),
        "VALUE ma 0 5\r\nalpha\r\nVALUE mb 0 7\r\nbravo-2\r\nVALUE mc 0 1\r\nc\r\nEND\r\n"
    );
    let multi_hot = udp.warm(b"get ma mb mc\r\n", &tcp_multi, 200);
    tcp.send(b"gets ma mb mc\r\n");
    let tcp_multi_gets = tcp.read_until(b"END\r\n");
    let multi_gets_hot = udp.warm(b"gets ma mb mc\r\n", &tcp_multi_gets, 200);
    let hit_keys = bed.kernel_counter(Counter::HitKeys);
    eprintln!(
        "kernel answered: get {hot:?}, gets {gets_hot}, multiget {multi_hot}, multi-gets {multi_gets_hot}; \
         kernel hit keys {hit_keys}"
    );
    assert!(hot.iter().all(|h| *h) && gets_hot && multi_hot && multi_gets_hot, "{NOT_ADMITTED}");
}

#[test]
fn large_values_and_misses_still_work() {
    let Some(bed) = XdpBed::start_or_skip("big", &[]) else { return };
    let mut tcp = bed.client();
    let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    tcp.set("big", &big);
    // Fits a kernel cache entry, but not the ~256 bytes a native veth frame can grow by.
    let medium: Vec<u8> = (0..600u32).map(|i| b'A' + (i % 26) as u8).collect();
    tcp.set("medium", &medium);
    let mut udp = Udp::new(&bed);
    let hits = bed.kernel_hits();
    for i in 0..20 {
        let (r, hit) = udp.request(b"get big\r\n");
        assert_eq!(r.body, get_reply("big", &big), "big value, get {i}");
        assert!(r.datagrams >= 3, "3000 bytes span datagrams, got {}", r.datagrams);
        assert!(!hit, "a multi-datagram reply cannot come from the kernel");
    }
    assert_eq!(bed.kernel_hits(), hits, "no kernel hit for a value that spans datagrams");
    let mut medium_in_kernel = 0;
    for i in 0..40 {
        let (r, hit) = udp.request(b"get medium\r\n");
        assert_eq!(r.body, get_reply("medium", &medium), "medium value, get {i}");
        assert_eq!(r.datagrams, 1);
        medium_in_kernel += hit as usize;
    }
    let misses = bed.kernel_counter(Counter::PassMiss);
    for i in 0..20 {
        let (r, hit) = udp.request(format!("get nothing-{i}\r\n").as_bytes());
        assert_eq!(String::from_utf8_lossy(&r.body), "END\r\n");
        assert!(!hit);
        let (r, _) = udp.request(b"get nothing-here big-not\r\n");
        assert_eq!(String::from_utf8_lossy(&r.body), "END\r\n");
    }
    assert!(bed.kernel_counter(Counter::PassMiss) >= misses + 20, "misses went through XDP and were passed");
    eprintln!(
        "medium (600 B) gets answered by the kernel: {medium_in_kernel} of 40; pass_too_big {}; stats {:?}",
        bed.kernel_counter(Counter::PassTooBig),
        xdp_stats(&bed)
    );
}

#[test]
fn delete_and_flush_invalidate() {
    let Some(bed) = XdpBed::start_or_skip("del", &[]) else { return };
    let mut tcp = bed.client();
    let mut udp = Udp::new(&bed);
    tcp.set("d", b"doomed");
    let hot_before_delete = udp.warm(b"get d\r\n", &get_reply("d", b"doomed"), 200);
    tcp.expect(b"delete d\r\n", b"DELETED\r\n");
    for i in 0..20 {
        let (r, hit) = udp.request(b"get d\r\n");
        assert_eq!(String::from_utf8_lossy(&r.body), "END\r\n", "get {i} after delete (kernel: {hit})");
    }
    tcp.set("f", b"flushed");
    let hot_before_flush = udp.warm(b"get f\r\n", &get_reply("f", b"flushed"), 200);
    tcp.expect(b"flush_all\r\n", b"OK\r\n");
    for i in 0..20 {
        let (r, hit) = udp.request(b"get f\r\n");
        assert_eq!(String::from_utf8_lossy(&r.body), "END\r\n", "get {i} after flush_all (kernel: {hit})");
        let (r, _) = udp.request(b"gets f\r\n");
        assert_eq!(String::from_utf8_lossy(&r.body), "END\r\n", "gets {i} after flush_all");
    }
    // A key written again after the flush is served (not hidden by a stale tombstone).
    tcp.set("f", b"again");
    let _ = udp.warm(b"get f\r\n", &get_reply("f", b"again"), 5);
    eprintln!("kernel answered before delete: {hot_before_delete}, before flush: {hot_before_flush}");
    assert!(hot_before_delete && hot_before_flush, "{NOT_ADMITTED}");
}

#[test]
fn udp_from_outside_the_allowlist_gets_no_answer() {
    let Some(bed) = XdpBed::start_or_skip("deny", &["--udp-allow", "192.0.2.0/24"]) else { return };
    let mut tcp = bed.client();
    tcp.set("den", b"v");
    let sock = bed.udp_socket();
    let refused = bed.kernel_counter(Counter::PassNotAllowed);
    for id in 0..5u16 {
        let r = kv_tests::netns::try_udp_request(&sock, bed.addr, id, b"get den\r\n", Duration::from_millis(300));
        assert!(r.is_none(), "an answer went to a source outside the allowlist: {r:?}");
    }
    assert!(bed.kernel_counter(Counter::PassNotAllowed) >= refused + 5, "XDP left them to user space");
    // TCP is not affected.
    assert_eq!(tcp.get("den").as_deref(), Some(&b"v"[..]));
}

/// Replies longer than a veth frame can grow to in XDP (its 256 bytes of headroom): the bench's 10-key
/// multiget, 24 keys, and one key with a 1,000-byte value. The XDP program hands them to its TC half,
/// which must answer each whole, with the bytes TCP sends.
#[test]
fn replies_larger_than_the_xdp_frame_are_answered_by_tc() {
    let Some(bed) = XdpBed::start_or_skip("mget24", &[]) else { return };
    let mut tcp = bed.client();
    let keys: Vec<String> = (0..24).map(|i| format!("key:{}", 1000 + i)).collect();
    for k in &keys {
        tcp.set(k, &[b'v'; 32]);
    }
    tcp.set("big", &[b'b'; 1000]);
    let mut udp = Udp::new(&bed);
    for k in keys.iter().map(String::as_str).chain(["big"]) {
        tcp.send(format!("get {k}\r\n").as_bytes());
        let want = tcp.read_until(b"END\r\n");
        udp.warm(format!("get {k}\r\n").as_bytes(), &want, 200);
    }
    let mut requests: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (n, verb) in [(10, "get"), (24, "get"), (24, "gets")] {
        let req = format!("{verb} {}\r\n", keys[..n].join(" ")).into_bytes();
        tcp.send(&req);
        requests.push((req, tcp.read_until(b"END\r\n")));
    }
    requests.push((b"get big\r\n".to_vec(), get_reply("big", &[b'b'; 1000])));
    for (req, want) in &requests {
        assert!(udp.warm(req, want, 50), "{:?}: {NOT_ADMITTED}; {:?}", String::from_utf8_lossy(req), xdp_stats(&bed));
    }
    // Every one answered by the kernel from now on. Mostly by TC: the XDP program answers the few whose
    // frame happened to get a page-pool buffer with enough tailroom.
    // Per request, what TC answered and how many of those it sent as XDP had assembled them: (multi-key
    // requests, `get big`).
    let tc_counts = || (bed.kernel_counter(Counter::TcHits), bed.kernel_counter(Counter::TcHandoffs));
    let hits = bed.kernel_hits();
    let (mut multi, mut big) = ((0, 0), (0, 0));
    for _ in 0..10 {
        for (req, want) in &requests {
            let before = tc_counts();
            let (r, _) = udp.request(req);
            assert_eq!(String::from_utf8_lossy(&r.body), String::from_utf8_lossy(want));
            let after = tc_counts();
            let sum = if req.starts_with(b"get big") { &mut big } else { &mut multi };
            (sum.0, sum.1) = (sum.0 + after.0 - before.0, sum.1 + after.1 - before.1);
        }
    }
    let (hits, tc) = (bed.kernel_hits() - hits, multi.0 + big.0);
    eprintln!(
        "40 large replies: {hits} from the kernel, {tc} of them by TC; of its {} multi-key answers {} as XDP \
         assembled them; stats {:?}",
        multi.0,
        multi.1,
        xdp_stats(&bed)
    );
    assert_eq!(hits, 40, "every large reply from the kernel");
    assert!(tc > 20, "the TC program answered only {tc} of 40 large replies");
    // On a veth without RPS the skb reaches TC on the CPU its XDP run was on, so every assembled reply is
    // taken as it was. `get big`, a 1-key get, XDP copies straight from the slot into the frame: it
    // assembles nothing, and TC looks the key up once.
    assert_eq!(multi.1, multi.0, "TC looked the keys up again instead of taking XDP's reply");
    assert_eq!(big.1, 0, "a 1-key get has no assembled reply to hand over");
}

/// IPv6: gets and multigets from an IPv6 client are answered in the kernel (`xdp_hits_ipv6` rises), with
/// the bytes TCP sends; the reply's UDP checksum is checked by the client's stack, which drops a bad one.
#[test]
fn ipv6_gets_are_answered_in_the_kernel() {
    let bed = match XdpBed::start_ipv6("ipv6", &[]) {
        Ok(b) => b,
        Err(e) => return kv_tests::netns::unavailable(&format!("no IPv6 XDP testbed: {e:#}")),
    };
    let mut tcp = bed.client();
    let keys: Vec<String> = (0..12).map(|i| format!("v6key:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        tcp.set(k, &vec![b'a' + i as u8; 3 * i + 1]);
    }
    let sock = bed.udp_socket6();
    let to = bed.addr6.unwrap();
    let mut id = 0x600u16;
    let mut request = |payload: &[u8]| {
        id += 1;
        let before = bed.kernel_counter(Counter::Ipv6Hits);
        let r = udp_request_retry(&sock, to, id, payload);
        (r.body, bed.kernel_counter(Counter::Ipv6Hits) > before)
    };
    let mut answered = Vec::new();
    for req in keys
        .iter()
        .map(|k| format!("get {k}\r\n"))
        .chain([format!("get {}\r\n", keys[..3].join(" ")), format!("gets {}\r\n", keys.join(" "))])
    {
        tcp.send(req.as_bytes());
        let want = tcp.read_until(b"END\r\n");
        let mut hot = false;
        for i in 0..100 {
            let (body, kernel) = request(req.as_bytes());
            assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&want), "reply {i} to {req:?}");
            if kernel {
                hot = true;
                break;
            }
        }
        answered.push(hot);
    }
    let stats = xdp_stats(&bed);
    eprintln!("answered over IPv6 in the kernel: {answered:?}; stats {stats:?}");
    assert!(answered.iter().all(|a| *a), "{NOT_ADMITTED}; {stats:?}");
    let v6_hits: u64 = stats.iter().find(|(k, _)| k == "xdp_hits_ipv6").map_or(0, |(_, v)| v.parse().unwrap());
    assert!(v6_hits >= 14, "stats xdp_hits_ipv6 = {v6_hits}");
}

/// Two servers on one interface (ports 11211 and 11311) share its XDP hook through the dispatcher: both
/// answer hits in the kernel, each from its own cache; one killed with SIGKILL leaves the other's kernel
/// path working and, restarted, takes its port back; the last one out detaches. A lone instance has the
/// hook to its own program, without the dispatcher.
#[test]
fn two_instances_share_an_interface() {
    let Some(mut bed) = XdpBed::start_or_skip("two", &[]) else { return };
    let ip = bed.addr.ip().to_string();
    let spawn = |ns: &kv_tests::netns::Netns, iface: &str, port: u16| {
        let p = port.to_string();
        ns.command(kv_tests::server_bin())
            .args(["-l", &ip, "-p", &p, "-U", &p, "--iface", iface, "--xdp-mode", "native"])
            .args(["--no-persist", "--udp-allow", "10.77.0.0/16"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting an instance")
    };
    let ready = |bed: &XdpBed, addr: std::net::SocketAddr| {
        (0..250).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            bed.client_ns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok())
        })
    };
    let hits = |bed: &XdpBed, port: u16| -> u64 {
        let id = kv_tests::netns::instance_prog_id(&bed.server_ns, &bed.veth.if_a, port).expect("its program");
        kv_tests::netns::program_counter(id, Counter::Hits).expect("its counters")
    };
    let (port1, port2) = (bed.addr.port(), 11311u16);
    let addr1 = bed.addr;
    let addr2 = std::net::SocketAddr::new(bed.addr.ip(), port2);
    // The program on the hook: a lone instance's own, else the dispatcher (neither instance's).
    let attached = |bed: &XdpBed| kv_tests::netns::xdp_prog_id(&bed.server_ns, &bed.veth.if_a).unwrap();
    let own = |bed: &XdpBed, port: u16| {
        Some(kv_tests::netns::instance_prog_id(&bed.server_ns, &bed.veth.if_a, port).expect("its program"))
    };
    assert_eq!(attached(&bed), own(&bed, port1), "a lone instance runs behind the dispatcher");
    let mut second = spawn(&bed.server_ns, &bed.veth.if_a, port2);
    assert!(ready(&bed, addr2), "the second instance did not start");
    let shared = attached(&bed);
    assert!(
        shared.is_some() && shared != own(&bed, port1) && shared != own(&bed, port2),
        "two instances, but the hook runs {shared:?}, not the dispatcher"
    );
    bed.client().set("one", b"first");
    bed.client_ns.run(|| kv_tests::Client::connect(addr2)).set("two", b"second");
    let sock = bed.udp_socket();
    let mut id = 0x700u16;
    let mut udp_get = |to: std::net::SocketAddr, key: &str| {
        id += 1;
        udp_request_retry(&sock, to, id, format!("get {key}\r\n").as_bytes()).body
    };
    // Each instance's hits come from its own kernel cache.
    let (mut hot1, mut hot2) = (false, false);
    for _ in 0..100 {
        let (h1, h2) = (hits(&bed, port1), hits(&bed, port2));
        assert_eq!(udp_get(addr1, "one"), get_reply("one", b"first"));
        assert_eq!(udp_get(addr2, "two"), get_reply("two", b"second"));
        hot1 |= hits(&bed, port1) > h1;
        hot2 |= hits(&bed, port2) > h2;
        if hot1 && hot2 {
            break;
        }
    }
    assert!(hot1 && hot2, "kernel hits: first instance {hot1}, second {hot2}");
    // Neither sees the other's keys, in the kernel or in user space.
    assert_eq!(udp_get(addr2, "one"), b"END\r\n");
    assert_eq!(udp_get(addr1, "two"), b"END\r\n");
    // A reply too large for an XDP frame on a veth goes through the second instance's own TC program.
    let keys: Vec<String> = (0..12).map(|i| format!("multi-{i:02}-{}", "k".repeat(20))).collect();
    let mut c2 = bed.client_ns.run(|| kv_tests::Client::connect(addr2));
    let mut want = Vec::new();
    for k in &keys {
        let v = format!("{k}={}", "v".repeat(24));
        c2.set(k, v.as_bytes());
        want.extend_from_slice(format!("VALUE {k} 0 {}\r\n{v}\r\n", v.len()).as_bytes());
    }
    want.extend_from_slice(b"END\r\n");
    let tc_hits = |bed: &XdpBed| {
        let id = kv_tests::netns::instance_prog_id(&bed.server_ns, &bed.veth.if_a, port2).expect("its program");
        kv_tests::netns::program_counter(id, Counter::TcHits).expect("its counters")
    };
    let multiget = format!("get {}", keys.join(" "));
    let by_tc = (0..100).any(|_| {
        let t = tc_hits(&bed);
        assert_eq!(udp_get(addr2, &multiget[4..]), want);
        tc_hits(&bed) > t
    });
    assert!(by_tc, "the second instance's TC program never answered a 12-key get");
    // The first one dies without a word: the second keeps its kernel path.
    bed.server.kill().expect("SIGKILL");
    bed.server.wait().expect("reaping the first instance");
    let before = hits(&bed, port2);
    for _ in 0..5 {
        assert_eq!(udp_get(addr2, "two"), get_reply("two", b"second"));
    }
    assert_eq!(hits(&bed, port2), before + 5, "the second instance's kernel path after the first was killed");
    // Its sweeper (once a second) frees the dead one's slot and takes the hook to its own program.
    let alone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        attached(&bed) == own(&bed, port2)
    });
    assert!(alone, "the survivor still runs behind {:?}", attached(&bed));
    let before = hits(&bed, port2);
    assert_eq!(udp_get(addr2, "two"), get_reply("two", b"second"));
    assert_eq!(hits(&bed, port2), before + 1, "the survivor's kernel path, attached directly");
    // Restarted (empty: --no-persist), the first takes its port back and answers from its own kernel cache.
    bed.server = spawn(&bed.server_ns, &bed.veth.if_a, port1);
    assert!(ready(&bed, addr1), "the first instance did not restart");
    bed.client().set("one", b"again");
    let hot = (0..100).any(|_| {
        let h = hits(&bed, port1);
        assert_eq!(udp_get(addr1, "one"), get_reply("one", b"again"));
        hits(&bed, port1) > h
    });
    assert!(hot, "the restarted first instance got no kernel hits");
    let shared = attached(&bed);
    assert!(
        shared.is_some() && shared != own(&bed, port1) && shared != own(&bed, port2),
        "two instances again, but the hook runs {shared:?}, not the dispatcher"
    );
    // The last one out detaches the dispatcher.
    kv_tests::netns::stop(&mut bed.server);
    kv_tests::netns::stop(&mut second);
    let left = kv_tests::netns::xdp_prog_id(&bed.server_ns, &bed.veth.if_a).unwrap();
    assert_eq!(left, None, "an XDP program is still attached after both instances stopped");
}

/// A binary-protocol `get`/`getk` request (no extras, the key as body).
fn bin_get(opcode: u8, key: &[u8], opaque: u32) -> Vec<u8> {
    let mut p = vec![0x80, opcode];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&(key.len() as u32).to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(key);
    p
}

/// A `get`/`getk` hit's binary response, laid out by hand: header, flags, key (`getk`), value.
fn bin_hit(opcode: u8, opaque: u32, cas: u64, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    let key = key.unwrap_or_default();
    let mut r = vec![0x81, opcode];
    r.extend_from_slice(&(key.len() as u16).to_be_bytes());
    r.extend_from_slice(&[4, 0, 0, 0]);
    r.extend_from_slice(&((4 + key.len() + value.len()) as u32).to_be_bytes());
    r.extend_from_slice(&opaque.to_be_bytes());
    r.extend_from_slice(&cas.to_be_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(key);
    r.extend_from_slice(value);
    r
}

/// Binary `get`/`getk` over UDP: answered by user space until the key is admitted, then by the kernel
/// (`xdp_hits_binary` rises, in the COUNTERS map and in `stats`), with the same bytes either way; a reply
/// larger than the frame can grow to goes through TC. A quiet `getq` is left to user space.
#[test]
fn binary_gets_over_udp_are_answered_in_the_kernel() {
    let Some(bed) = XdpBed::start_or_skip("bin", &[]) else { return };
    let mut tcp = bed.client();
    let big: Vec<u8> = (0..600).map(|i| b'a' + (i % 26) as u8).collect();
    let mut items = Vec::new();
    for (key, value) in [(&b"bk"[..], &b"binary-value"[..]), (b"bk-big", &big[..])] {
        tcp.set(std::str::from_utf8(key).unwrap(), value);
        // The CAS the binary reply carries is the one `gets` reports.
        tcp.send(&[b"gets ", key, b"\r\n"].concat());
        let line = tcp.read_until(b"END\r\n");
        let line = String::from_utf8_lossy(&line[..line.iter().position(|&b| b == b'\r').unwrap()]).into_owned();
        let cas: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        items.push((key, value, cas));
    }
    let mut udp = Udp::new(&bed);
    let bin_before = bed.kernel_counter(Counter::BinHits);
    let mut opaque = 0x5000_0000u32;
    let mut answered = Vec::new();
    for &(key, value, cas) in &items {
        for opcode in [0x00u8, 0x0c] {
            let mut kernel = 0;
            for i in 0..200 {
                opaque += 1;
                let want = bin_hit(opcode, opaque, cas, (opcode == 0x0c).then_some(key), value);
                let before = bed.kernel_counter(Counter::BinHits);
                let (r, hit) = udp.request(&bin_get(opcode, key, opaque));
                assert_eq!(r.body, want, "reply {i} to opcode {opcode:#x} for {key:?} (kernel: {hit})");
                assert_eq!(r.datagrams, 1);
                assert_eq!(bed.kernel_counter(Counter::BinHits) > before, hit, "a kernel hit is a binary hit");
                kernel += hit as usize;
                if kernel >= 10 {
                    break;
                }
                if i >= 10 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            answered.push(kernel);
        }
    }
    let stats = xdp_stats(&bed);
    eprintln!("binary requests answered by the kernel (get, getk per key): {answered:?}; stats {stats:?}");
    assert!(answered.iter().all(|&n| n >= 10), "{NOT_ADMITTED}; {stats:?}");
    let bin_hits = bed.kernel_counter(Counter::BinHits) - bin_before;
    assert!(bin_hits >= 40, "{bin_hits} binary kernel hits");
    let reported = bed.stat("xdp_hits_binary").expect("`stats` has a `STAT xdp_hits_binary` line");
    assert!(reported >= bin_hits, "STAT xdp_hits_binary {reported} < kernel counter {bin_hits}");
    // getq: a hit is answered (quiet only hides misses), by user space.
    let (key, value, cas) = items[0];
    let (r, hit) = udp.request(&bin_get(0x09, key, 7));
    assert_eq!((r.body, hit), (bin_hit(0x09, 7, cas, None, value), false));
}
