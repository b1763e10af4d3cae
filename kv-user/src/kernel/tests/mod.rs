//! The XDP program run on crafted packets through BPF_PROG_TEST_RUN: no interface needed.

use super::*;
use aya::programs::{TestRun as _, TestRunOptions};
use kv_common::xdp_action::{XDP_PASS, XDP_TX};
use kv_common::{CacheKey, Counter};

const PORT: u16 = 11211;

fn load() -> Option<KernelPath> {
    load_with(1024)
}

/// Loads the program with a cache of `cache_entries` slots, allowing the test source 10.0.0.2; None
/// (skip) when BPF is unavailable and not required.
pub(crate) fn load_with(cache_entries: u32) -> Option<KernelPath> {
    match KernelPath::load(KernelOpts { port: PORT, cache_entries, log: false, ..Default::default() }) {
        Ok(mut p) => {
            // Test packets come from 10.0.0.2.
            p.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
            Some(p)
        }
        Err(e) if !bpf_required() => {
            eprintln!("SKIP: cannot load BPF here ({e:#}); set KV_REQUIRE_BPF=1 to make this fail");
            None
        }
        Err(e) => panic!("BPF required but loading failed: {e:#}"),
    }
}

/// Ethernet + IPv4 + UDP + memcached frame header + `text`.
pub(crate) fn packet(dport: u16, req_id: u16, seq: u16, total: u16, text: &[u8]) -> Vec<u8> {
    let udp_len = 8 + 8 + text.len();
    let ip_len = 20 + udp_len;
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&kv_common::FrameHeader { request_id: req_id, seq, total, reserved: 0 }.to_bytes());
    p.extend_from_slice(text);
    p
}

pub(crate) fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(crate) fn run(path: &mut KernelPath, pkt: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let res = path
        .program()
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

fn put(path: &mut KernelPath, key: &[u8], flags: u32, cas: u64, value: &[u8], expire_ns: u64) {
    let e = cache_entry(key, flags, cas, value, expire_ns, 0).expect("fits");
    path.cache_handle().unwrap().insert(key, &e).unwrap();
}

/// Like [`reply_text`], but reports the first wrong header field instead of panicking (fuzzing counts
/// mismatches and goes on).
pub(crate) fn try_reply_text(req: &[u8], reply: &[u8]) -> Result<Vec<u8>, String> {
    if req.len() < 50 || reply.len() < 50 {
        return Err(format!("request of {} bytes, reply of {} bytes", req.len(), reply.len()));
    }
    let be = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]) as usize;
    let checks: [(&str, bool); 15] = [
        ("eth dst = request src", reply[0..6] == req[6..12]),
        ("eth src = request dst", reply[6..12] == req[0..6]),
        ("ethertype IPv4", reply[12..14] == [0x08, 0x00]),
        ("IPv4 without options", reply[14] == 0x45),
        ("valid IPv4 header checksum", ip_checksum(&reply[14..34]) == 0),
        ("IP total length", be(reply, 16) == reply.len() - 14),
        ("not a fragment, UDP", be(reply, 20) & 0x3fff == 0 && reply[23] == 17),
        ("TOS 0, ID 0, don't fragment, TTL 64", reply[15] == 0 && reply[18..23] == [0, 0, 0x40, 0, 64]),
        ("ip src = request dst", reply[26..30] == req[30..34]),
        ("ip dst = request src", reply[30..34] == req[26..30]),
        ("ports swapped", reply[34..36] == req[36..38] && reply[36..38] == req[34..36]),
        ("UDP length", be(reply, 38) == reply.len() - 34),
        ("UDP checksum none", reply[40..42] == [0, 0]),
        ("request id echoed", reply[42..44] == req[42..44]),
        ("seq 0 of 1", reply[44..50] == [0, 0, 0, 1, 0, 0]),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(format!("reply header: {what}")),
        None => Ok(reply[50..].to_vec()),
    }
}

/// Checks the reply frame's headers against the request and returns the reply text.
pub(crate) fn reply_text(req: &[u8], reply: &[u8]) -> Vec<u8> {
    assert_eq!(&reply[0..6], &req[6..12], "eth dst = request src");
    assert_eq!(&reply[6..12], &req[0..6], "eth src = request dst");
    assert_eq!(&reply[12..14], &[0x08, 0x00]);
    let ip = &reply[14..34];
    assert_eq!(ip_checksum(ip), 0, "valid IPv4 header checksum");
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, reply.len() - 14, "IP total length");
    assert_eq!(&ip[12..16], &req[30..34], "ip src = request dst");
    assert_eq!(&ip[16..20], &req[26..30], "ip dst = request src");
    let udp = &reply[34..42];
    assert_eq!(&udp[0..2], &req[36..38], "sport = request dport");
    assert_eq!(&udp[2..4], &req[34..36], "dport = request sport");
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, reply.len() - 34, "UDP length");
    assert_eq!(&udp[6..8], &[0, 0], "UDP checksum none");
    assert_eq!(&reply[42..44], &req[42..44], "request id echoed");
    assert_eq!(&reply[44..50], &[0, 0, 0, 1, 0, 0], "seq 0 of 1");
    reply[50..].to_vec()
}

#[track_caller]
fn assert_pass_untouched(path: &mut KernelPath, pkt: &[u8]) {
    let (action, out) = run(path, pkt);
    assert_eq!(action, XDP_PASS, "packet {:?}", String::from_utf8_lossy(pkt));
    assert_eq!(out, pkt, "passed packets are not modified");
}

#[test]
fn program_loads_and_counts() {
    let Some(mut path) = load() else { return };
    let before = path.counter(Counter::Seen).unwrap();
    assert_pass_untouched(&mut path, &[0u8; 64]);
    assert_eq!(path.counter(Counter::Seen).unwrap(), before + 1);
}

#[test]
fn single_key_hit() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"foo", 5, 77, b"bar", 0);
    let req = packet(PORT, 0xbeef, 0, 1, b"get foo\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), b"VALUE foo 5 3\r\nbar\r\nEND\r\n");
    assert_eq!(path.counter(Counter::Hits).unwrap(), 1);
    // memcached looks only at the datagram count: a sequence number other than 0 is served too, and
    // the reply is numbered 0 of 1 (reply_text checks).
    let req = packet(PORT, 0xbeef, 3, 1, b"get foo\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), b"VALUE foo 5 3\r\nbar\r\nEND\r\n");
}

/// A reply copied straight from the slot into the packet is only sent if the slot's sequence number did
/// not move meanwhile; otherwise the request is restored byte for byte and passed. `test_tear` makes the
/// program take that path on every direct reply.
#[test]
fn torn_direct_reply_restores_the_request() {
    let Some(_) = load() else { return };
    let mut path =
        KernelPath::load(KernelOpts { port: PORT, cache_entries: 1024, test_tear: true, ..Default::default() })
            .unwrap();
    path.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
    put(&mut path, b"foo", 5, 77, b"bar", 0);
    put(&mut path, b"big", 0, 78, &[b'v'; 200], 0);
    for (i, text) in [&b"get foo\r\n"[..], b"get big\r\n"].iter().enumerate() {
        let before = path.counter(Counter::PassTorn).unwrap();
        assert_pass_untouched(&mut path, &packet(PORT, i as u16, 0, 1, text));
        assert_eq!(path.counter(Counter::PassTorn).unwrap(), before + 1, "direct path taken and undone");
    }
    // Paths that copy through scratch (gets, several keys) are not affected by the switch.
    let req = packet(PORT, 7, 0, 1, b"gets foo\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), b"VALUE foo 5 3 77\r\nbar\r\nEND\r\n");
    assert_eq!(path.counter(Counter::Hits).unwrap(), 1);
}

/// The program answers only what the stack would deliver to the server's socket: a valid IPv4 header
/// checksum, and the listening address when the server is bound to one.
#[test]
fn bad_ip_checksum_and_other_addresses_pass() {
    let Some(_) = load() else { return };
    let listen = std::net::Ipv4Addr::new(10, 0, 0, 1);
    let mut path = KernelPath::load(KernelOpts {
        port: PORT,
        cache_entries: 1024,
        listen: Some(listen.into()),
        ..Default::default()
    })
    .unwrap();
    path.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
    put(&mut path, b"foo", 0, 1, b"bar", 0);
    let req = packet(PORT, 1, 0, 1, b"get foo\r\n");
    assert_eq!(run(&mut path, &req).0, XDP_TX, "to the listening address");
    let mut bad = req.clone();
    bad[24] ^= 0x40;
    assert_pass_untouched(&mut path, &bad);
    assert_eq!(path.counter(Counter::PassMalformed).unwrap(), 1);
    // Another destination, with a valid checksum.
    let mut other = req.clone();
    other[33] = 9;
    let sum = ip_checksum(&[&other[14..24], &[0, 0], &other[26..34]].concat());
    other[24..26].copy_from_slice(&sum.to_be_bytes());
    assert_pass_untouched(&mut path, &other);
    assert_eq!(path.counter(Counter::PassOtherPort).unwrap(), 1);
}

#[test]
fn gets_returns_cas_and_multi_key_hits() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"a", 0, 18446744073709551615, b"1", 0);
    put(&mut path, b"bb", 4294967295, 2, &[b'x'; 100], 0);
    let req = packet(PORT, 1, 0, 1, b"gets a bb\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    let mut want = b"VALUE a 0 1 18446744073709551615\r\n1\r\nVALUE bb 4294967295 100 2\r\n".to_vec();
    want.extend_from_slice(&[b'x'; 100]);
    want.extend_from_slice(b"\r\nEND\r\n");
    assert_eq!(reply_text(&req, &out), want);
    let req = packet(PORT, 2, 0, 1, b"get bb a bb\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    let text = reply_text(&req, &out);
    assert!(text.starts_with(b"VALUE bb 4294967295 100\r\n"));
    assert!(text.ends_with(
        b"\r\nVALUE a 0 1\r\n1\r\nVALUE bb 4294967295 100\r\n"
            .iter()
            .chain(&[b'x'; 100])
            .chain(b"\r\nEND\r\n")
            .copied()
            .collect::<Vec<_>>()
            .as_slice()
    ));
}

#[test]
fn misses_expiry_and_unhandled_requests_pass_untouched() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"hit", 0, 1, b"v", 0);
    put(&mut path, b"old", 0, 1, b"v", 1); // deadline long past on the monotonic clock
    put(&mut path, b"big", 0, 1, &[b'z'; 1300], 0);
    for text in [
        &b"get nothere\r\n"[..],
        b"get hit nothere\r\n", // partial miss: user space answers the whole request
        b"get old\r\n",
        b"get big big\r\n", // would not fit one datagram
        b"set hit 0 0 1\r\nv\r\n",
        b"get  hit\r\n",
        b"get hit \r\n",
        b"get hit\n",
        b"get hit\r\nget hit\r\n",
        b"GET hit\r\n",
        b"get hi\x01t\r\n",
        b"get a b c d e f g h hit\r\n", // more keys than the XDP path takes
    ] {
        assert_pass_untouched(&mut path, &packet(PORT, 3, 0, 1, text));
    }
    assert_pass_untouched(&mut path, &packet(PORT + 1, 3, 0, 1, b"get hit\r\n"));
    assert_pass_untouched(&mut path, &packet(PORT, 3, 0, 2, b"get hit\r\n"));
    assert_pass_untouched(&mut path, &packet(PORT, 3, 1, 2, b"get hit\r\n"));
    let long_key = vec![b'k'; 251];
    assert_pass_untouched(&mut path, &packet(PORT, 3, 0, 1, &[b"get ", &long_key[..], b"\r\n"].concat()));
    assert!(path.counter(Counter::PassMiss).unwrap() >= 2);
    assert_eq!(path.counter(Counter::PassExpired).unwrap(), 1);
    assert_eq!(path.counter(Counter::Hits).unwrap(), 0);
}

#[test]
fn malformed_truncated_fragmented_and_foreign_packets_pass() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"k", 0, 1, b"v", 0);
    let good = packet(PORT, 9, 0, 1, b"get k\r\n");
    // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header (EINVAL).
    for n in 14..good.len() {
        assert_pass_untouched(&mut path, &good[..n]);
    }
    let mut frag = good.clone();
    frag[14 + 6] |= 0x20; // more fragments
    assert_pass_untouched(&mut path, &frag);
    let mut off = good.clone();
    off[14 + 7] = 1; // fragment offset
    assert_pass_untouched(&mut path, &off);
    let mut tcp = good.clone();
    tcp[14 + 9] = 6;
    assert_pass_untouched(&mut path, &tcp);
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut bad_v6 = good.clone();
    bad_v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_pass_untouched(&mut path, &arp);
    assert_pass_untouched(&mut path, &bad_v6);
    // IPv4 with options (IHL 6): same text, headers 4 bytes longer.
    let mut opts = good[..34].to_vec();
    opts[14] = 0x46;
    opts.extend_from_slice(&[1, 1, 1, 0]);
    opts.extend_from_slice(&good[34..]);
    assert_pass_untouched(&mut path, &opts);
    let mut badlen = good.clone();
    badlen[38] += 1; // UDP length disagrees with IP length
    assert_pass_untouched(&mut path, &badlen);
    // Untouched request is still answered.
    assert_eq!(run(&mut path, &good).0, XDP_TX);
}

/// The exact reply user space would send for `keys` (get: without CAS), from the same formatter.
fn expected(path_items: &[(&[u8], u32, u64, &[u8])], cas: bool) -> Vec<u8> {
    let mut want = Vec::new();
    for &(key, flags, c, value) in path_items {
        let h = kv_common::ValueHeader::new(key, flags, value.len(), cas.then_some(c)).unwrap();
        want.extend_from_slice(h.as_bytes());
        want.extend_from_slice(value);
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(b"END\r\n");
    want
}

#[test]
fn key_of_exactly_250_bytes_hits() {
    let Some(mut path) = load() else { return };
    let key: Vec<u8> = (0..kv_common::MAX_KEY_LEN).map(|i| b'!' + (i % 90) as u8).collect();
    assert_eq!(key.len(), 250);
    put(&mut path, &key, 3, 99, b"long-key value", 0);
    // A 249-byte prefix of it is another key: must miss, not match by prefix.
    for (verb, cas) in [(&b"get "[..], false), (b"gets ", true)] {
        let req = packet(PORT, 7, 0, 1, &[verb, &key[..], b"\r\n"].concat());
        let (action, out) = run(&mut path, &req);
        assert_eq!(action, XDP_TX);
        assert_eq!(reply_text(&req, &out), expected(&[(&key, 3, 99, b"long-key value")], cas));
    }
    assert_pass_untouched(&mut path, &packet(PORT, 7, 0, 1, &[b"get ", &key[..249], b"\r\n"].concat()));
    assert_eq!(path.counter(Counter::Hits).unwrap(), 2);
    assert_eq!(path.counter(Counter::PassMiss).unwrap(), 1);
}

#[test]
fn twenty_four_keys_hit_and_a_reply_over_one_datagram_passes() {
    let Some(mut path) = load() else { return };
    let keys: Vec<Vec<u8>> = (0..24).map(|i| format!("key{i}").into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..keys.len()).map(|i| vec![b'a' + i as u8; 2 * i + 1]).collect();
    for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
        put(&mut path, k, i as u32, 1000 + i as u64, v, 0);
    }
    let items: Vec<(&[u8], u32, u64, &[u8])> =
        keys.iter().zip(&values).enumerate().map(|(i, (k, v))| (&k[..], i as u32, 1000 + i as u64, &v[..])).collect();
    let list = keys.join(&b' ');
    for (verb, cas) in [(&b"get "[..], false), (b"gets ", true)] {
        let req = packet(PORT, 8, 0, 1, &[verb, &list[..], b"\r\n"].concat());
        let (action, out) = run(&mut path, &req);
        assert_eq!(action, XDP_TX);
        assert_eq!(reply_text(&req, &out), expected(&items, cas));
    }
    assert_eq!(path.counter(Counter::HitKeys).unwrap(), 48);
    // The same keys three times over: every key hits, but the reply needs more than one datagram.
    let thrice = [&list[..], &list[..], &list[..]].join(&b' ');
    assert_pass_untouched(&mut path, &packet(PORT, 8, 0, 1, &[b"get ", &thrice[..], b"\r\n"].concat()));
    assert_eq!(path.counter(Counter::PassTooBig).unwrap(), 1);
}

#[test]
fn reply_that_exactly_fits_is_sent_one_byte_more_passes() {
    let Some(mut path) = load() else { return };
    let get_len = |key: &[u8], n: usize| {
        let e = cache_entry(key, 0, 1, &vec![b'v'; n], 0, 0).unwrap();
        e.total_len as usize
    };
    let a = vec![b'A'; 1000];
    // Value size of `b` that makes `VALUE a ..` + `VALUE b ..` + `END\r\n` exactly one datagram's text.
    let room = kv_common::XDP_REPLY_MAX - 5 - get_len(b"a", a.len());
    let n = (0..room).find(|&n| get_len(b"b", n) == room).expect("some size fits exactly");
    put(&mut path, b"a", 0, 1, &a, 0);
    put(&mut path, b"b", 0, 1, &vec![b'B'; n], 0);
    let req = packet(PORT, 5, 0, 1, b"get a b\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    let text = reply_text(&req, &out);
    assert_eq!(text.len(), kv_common::XDP_REPLY_MAX);
    assert_eq!(out.len(), 14 + 20 + 8 + kv_common::UDP_MAX_PAYLOAD);
    assert_eq!(text, expected(&[(b"a", 0, 1, &a), (b"b", 0, 1, &vec![b'B'; n])], false));
    put(&mut path, b"b", 0, 1, &vec![b'B'; n + 1], 0);
    assert_pass_untouched(&mut path, &req);
    assert_eq!(path.counter(Counter::PassTooBig).unwrap(), 1);
    assert_eq!(path.counter(Counter::Hits).unwrap(), 1);
}

#[test]
fn counters_per_reason() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"k", 0, 1, b"v", 0);
    put(&mut path, b"old", 0, 1, b"v", 1);
    put(&mut path, b"big", 0, 1, &[b'z'; 1000], 0);
    let good = packet(PORT, 1, 0, 1, b"get k k\r\n");
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut bad_v6 = good.clone();
    bad_v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut frag = good.clone();
    frag[14 + 6] |= 0x20;
    let mut tcp = good.clone();
    tcp[14 + 9] = 6;
    let cases: Vec<(Vec<u8>, Counter)> = vec![
        (arp, Counter::PassNotIpv4),
        (bad_v6, Counter::PassMalformed),
        (frag, Counter::PassIpOptionsOrFragment),
        (tcp, Counter::PassNotUdp),
        (packet(PORT + 1, 1, 0, 1, b"get k\r\n"), Counter::PassOtherPort),
        (packet(PORT, 1, 0, 2, b"get k\r\n"), Counter::PassMalformed),
        (packet(PORT, 1, 0, 1, b"delete k\r\n"), Counter::PassNotGet),
        (packet(PORT, 1, 0, 1, b"get k nope\r\n"), Counter::PassMiss),
        (packet(PORT, 1, 0, 1, b"get old\r\n"), Counter::PassExpired),
        (packet(PORT, 1, 0, 1, b"get big big\r\n"), Counter::PassTooBig),
    ];
    let all = kv_common::COUNTERS.map(|(c, _)| c);
    for (pkt, reason) in &cases {
        let before = all.map(|c| path.counter(c).unwrap());
        assert_pass_untouched(&mut path, pkt);
        for (i, c) in all.iter().enumerate() {
            let want = before[i] + u64::from(*c == Counter::Seen || c == reason);
            assert_eq!(path.counter(*c).unwrap(), want, "{c:?} after a packet passed for {reason:?}");
        }
    }
    let before = all.map(|c| path.counter(c).unwrap());
    assert_eq!(run(&mut path, &good).0, XDP_TX);
    for (i, c) in all.iter().enumerate() {
        let delta = match c {
            Counter::Seen | Counter::Hits => 1,
            Counter::HitKeys => 2,
            _ => 0,
        };
        assert_eq!(path.counter(*c).unwrap(), before[i] + delta, "{c:?} after a hit");
    }
}

/// Prints (does not assert) the verifier's work and the kernel-measured run time of the program. Run with
/// `cargo test --release -p kv-user --lib bpf::tests::timing -- --nocapture --test-threads=1`.
///
/// BPF_PROG_TEST_RUN repeats a program on the same buffer without restoring it, so with `repeat` only the
/// first run of a hit sees the request (the rest see the reply, which goes to another port and passes).
/// The hit is therefore timed as the mean of many single runs on a fresh copy; the kernel's timer still
/// brackets just the program, not the syscall.
#[test]
fn timing() {
    let Some(mut path) = load() else { return };
    let info = path.program().unwrap().info().unwrap();
    println!(
        "verifier: {:?} insns processed; program {:?} insns, {:?} bytes jitted",
        info.verified_instruction_count(),
        info.size_translated().map(|b| b / 8),
        info.size_jitted()
    );
    put(&mut path, b"key:000001", 0, 1, &[b'x'; 100], 0);
    let hit = packet(PORT, 1, 0, 1, b"get key:000001\r\n");
    let mut tcp = hit.clone();
    tcp[14 + 9] = 6;
    const N: u32 = 100_000;
    let repeated = |path: &mut KernelPath, pkt: &[u8]| {
        let mut out = vec![0u8; 4096];
        let opts = TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), repeat: N, ..Default::default() };
        path.program().unwrap().test_run(opts).unwrap().duration
    };
    let single_mean = |path: &mut KernelPath, pkt: &[u8], want: u32| {
        let mut total = std::time::Duration::ZERO;
        for _ in 0..N {
            let mut out = vec![0u8; 4096];
            let opts = TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ..Default::default() };
            let r = path.program().unwrap().test_run(opts).unwrap();
            assert_eq!(r.return_value, want);
            total += r.duration;
        }
        total / N
    };
    println!("timing: non-UDP pass, repeat {N}: {:?} per run", repeated(&mut path, &tcp));
    println!("timing: non-UDP pass, mean of {N} single runs: {:?}", single_mean(&mut path, &tcp, XDP_PASS));
    // A miss of the same length passes untouched, so `repeat` is valid for it: parse, scan and lookup only.
    let miss = packet(PORT, 1, 0, 1, b"get key:000002\r\n");
    println!("timing: 1-key GET miss, repeat {N}: {:?} per run", repeated(&mut path, &miss));
    println!("timing: 1-key GET miss, mean of {N} single runs: {:?}", single_mean(&mut path, &miss, XDP_PASS));
    // The hit path copies the reply with one helper call: its cost grows with the bytes copied, not per
    // byte of program (single runs include the test-run syscall: compare with the non-UDP line).
    for size in [1usize, 100, 400, 1000] {
        let key = format!("size:{size:04}");
        put(&mut path, key.as_bytes(), 0, 1, &vec![b'x'; size], 0);
        let pkt = packet(PORT, 1, 0, 1, format!("get {key}\r\n").as_bytes());
        println!(
            "timing: 1-key GET hit ({size}-byte value), mean of {N} single runs: {:?}",
            single_mean(&mut path, &pkt, XDP_TX)
        );
    }
    println!("timing: 1-key GET hit, repeat {N} (only run 1 is a hit): {:?} per run", repeated(&mut path, &hit));
    // Ten keys: the key scan, lookups and appends. With the last key a miss the frame passes untouched, so
    // `repeat` is valid; with 1-byte values the reply fits the test run's headroom.
    let keys: Vec<String> = (0..10).map(|i| format!("multi:{i:04}")).collect();
    for k in &keys {
        put(&mut path, k.as_bytes(), 0, 1, b"x", 0);
    }
    let hit10 = packet(PORT, 1, 0, 1, format!("get {}\r\n", keys.join(" ")).as_bytes());
    let miss10 = packet(PORT, 1, 0, 1, format!("get {} multi:none\r\n", keys[..9].join(" ")).as_bytes());
    println!("timing: 10-key GET, last key a miss, repeat {N}: {:?} per run", repeated(&mut path, &miss10));
    println!(
        "timing: 10-key GET hit (1-byte values), mean of {N} single runs: {:?}",
        single_mean(&mut path, &hit10, XDP_TX)
    );
}

#[test]
fn flush_generation_and_allowlist() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"g", 0, 1, b"v", 0);
    let req = packet(PORT, 5, 0, 1, b"get g\r\n");
    assert_eq!(run(&mut path, &req).0, XDP_TX);
    // A source outside the allowlist is left to user space (which ignores it).
    let mut foreign = req.clone();
    foreign[26..30].copy_from_slice(&[192, 0, 2, 1]);
    let sum = ip_checksum(&[&foreign[14..24], &[0, 0], &foreign[26..34]].concat());
    foreign[24..26].copy_from_slice(&sum.to_be_bytes());
    assert_pass_untouched(&mut path, &foreign);
    assert_eq!(path.counter(Counter::PassNotAllowed).unwrap(), 1);
    // flush_all: one generation bump kills every entry.
    let handle = path.cache_handle().unwrap();
    handle.flush().unwrap();
    assert_pass_untouched(&mut path, &req);
    assert_eq!(path.counter(Counter::PassFlushed).unwrap(), 1);
    // Entries of the new generation are served again.
    let e = cache_entry(b"g", 0, 2, b"w", 0, handle.gen()).unwrap();
    handle.insert(b"g", &e).unwrap();
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), b"VALUE g 0 1\r\nw\r\nEND\r\n");
    // replace() only touches cached keys; remove() reports whether there was one.
    assert!(!handle.replace(b"absent", &e).unwrap());
    assert!(!handle.remove(b"absent").unwrap());
    assert!(handle.remove(b"g").unwrap());
    // A removed key's slot keeps an odd sequence number and loses its tag: the kernel never reads it.
    let miss = path.counter(Counter::PassMiss).unwrap();
    assert_pass_untouched(&mut path, &req);
    assert_eq!(path.counter(Counter::PassMiss).unwrap(), miss + 1);
}

#[test]
fn keys_sharing_all_their_slots_displace_the_oldest() {
    let Some(mut path) = load() else { return };
    let slots = crate::kernel::slots_for(1024);
    // A key's four candidate slots: its two pairs (ordered, so keys with the same set compare equal).
    let set = |k: &[u8]| {
        let (a, b) = kv_common::slot_pairs(CacheKey::new(k).unwrap().hash(), slots - 1);
        (a.min(b), a.max(b))
    };
    let first = (0..).map(|i| format!("a{i}").into_bytes()).find(|k| set(k).0 != set(k).1).unwrap();
    let same: Vec<Vec<u8>> =
        (1..).map(|i| format!("b{i}").into_bytes()).filter(|k| set(k) == set(&first)).take(4).collect();
    let mut keys = vec![first];
    keys.extend(same);
    let get = |k: &[u8], id: u16| packet(PORT, id, 0, 1, &[b"get ", k, b"\r\n"].concat());
    for (i, k) in keys[..4].iter().enumerate() {
        put(&mut path, k, 0, i as u64 + 1, &[b'A' + i as u8], 0);
    }
    // All four slots are used.
    for (i, k) in keys[..4].iter().enumerate() {
        assert_eq!(run(&mut path, &get(k, i as u16)).0, XDP_TX, "key {i}");
    }
    // A fifth key takes the slot written longest ago (the first key's), which becomes a miss.
    put(&mut path, &keys[4], 0, 5, b"E", 0);
    let misses = path.counter(Counter::PassMiss).unwrap();
    assert_pass_untouched(&mut path, &get(&keys[0], 9));
    assert_eq!(path.counter(Counter::PassMiss).unwrap(), misses + 1);
    for (i, k) in keys.iter().enumerate().skip(1) {
        let req = get(k, 10 + i as u16);
        let (action, out) = run(&mut path, &req);
        assert_eq!(action, XDP_TX);
        let v = [b'A' + i as u8];
        assert_eq!(reply_text(&req, &out), [b"VALUE ", &k[..], b" 0 1\r\n", &v, b"\r\nEND\r\n"].concat());
    }
    let h = path.cache_handle().unwrap();
    assert!(!h.contains(&keys[0]) && keys[1..].iter().all(|k| h.contains(k)));
}

#[test]
fn every_admitted_key_is_found() {
    let mut path =
        KernelPath::load(KernelOpts { port: PORT, cache_entries: 16384, log: false, ..Default::default() }).unwrap();
    path.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
    let h = path.cache_handle().unwrap();
    // The benchmark's load: 10,000 keys in 16,384 slots. Each key's value names it, so a key served from
    // a slot it was moved to (one cuckoo step) is checked byte for byte.
    let keys: Vec<Vec<u8>> = (0..10000).map(|i| format!("key:{i}").into_bytes()).collect();
    let value = |k: &[u8]| [k, b"-value"].concat();
    for k in &keys {
        h.insert(k, &cache_entry(k, 0, 1 + k.len() as u64 * 37, &value(k), 0, h.gen()).unwrap()).unwrap();
    }
    // Four candidate slots per key and one cuckoo step: ~0.1% of keys are left out (~2% without the
    // step, ~14% with a single two-way set); more means the hash crowds slots.
    let absent = keys.iter().filter(|k| !h.contains(k)).count();
    assert!(absent <= keys.len() / 200, "{absent} of {} inserted keys displaced: the hash crowds slots", keys.len());
    let mut lost = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let found = h.contains(k);
        let req = packet(PORT, i as u16, 0, 1, &[b"get ", &k[..], b"\r\n"].concat());
        let (action, out) = run(&mut path, &req);
        if found && action != XDP_TX {
            lost.push(String::from_utf8_lossy(k).into_owned());
        }
        if action == XDP_TX {
            let v = value(k);
            let want = [b"VALUE ", &k[..], format!(" 0 {}\r\n", v.len()).as_bytes(), &v, b"\r\nEND\r\n"].concat();
            assert_eq!(reply_text(&req, &out), want, "reply for {}", String::from_utf8_lossy(k));
        }
    }
    assert!(lost.is_empty(), "{} cached keys missed by XDP, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
}

mod binary;
mod differential;
mod dispatch;
mod fuzz;
mod ipv6;
