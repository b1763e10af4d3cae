//! The XDP program on IPv6 datagrams (BPF_PROG_TEST_RUN): answered like IPv4 ones, with a valid UDP
//! checksum (mandatory over IPv6); extension headers, other addresses and sources outside the allowlist
//! are passed untouched.

use super::*;

/// The test client's address (in fd00:0:0:77::/64, which the tests allow) and the server's.
pub(crate) const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 2];
const DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 1];

/// Lets the test client's /64 use UDP.
pub(crate) fn allow_client(path: &mut KernelPath) {
    path.allow(std::net::Ipv6Addr::from(SRC).into(), 64).unwrap();
}

/// [`packet6_id`] with request id 0x6666.
fn packet6(nh: u8, src: [u8; 16], text: &[u8]) -> Vec<u8> {
    packet6_id(nh, src, 0x6666, text)
}

/// Ethernet + IPv6 (next header `nh`) + UDP (with its checksum) + frame header + `text`.
pub(crate) fn packet6_id(nh: u8, src: [u8; 16], req_id: u16, text: &[u8]) -> Vec<u8> {
    let udp_len = 8 + 8 + text.len();
    let mut p = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x86, 0xdd];
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[nh, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&DST);
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&kv_common::FrameHeader { request_id: req_id, seq: 0, total: 1, reserved: 0 }.to_bytes());
    p.extend_from_slice(text);
    let c = udp6_checksum(&p);
    p[60..62].copy_from_slice(&c.to_be_bytes());
    p
}

/// The UDP checksum of an IPv6 frame (checksum field taken as 0) over its UDP length.
pub(crate) fn udp6_checksum(f: &[u8]) -> u16 {
    let len = (u16::from_be_bytes([f[58], f[59]]) as usize).clamp(8, f.len() - 54);
    let udp = &f[54..54 + len];
    let mut words: Vec<u32> = Vec::new();
    let mut pseudo = f[22..54].to_vec();
    pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    let mut data = udp.to_vec();
    data[6..8].copy_from_slice(&[0, 0]);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    for b in [pseudo, data] {
        words.extend(b.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32));
    }
    let mut sum: u64 = words.iter().map(|&w| w as u64).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// Like [`reply_text6`], reporting the first wrong header field instead of panicking (for the fuzzer).
pub(crate) fn try_reply_text6(req: &[u8], reply: &[u8]) -> Result<Vec<u8>, String> {
    if req.len() < 70 || reply.len() < 70 {
        return Err(format!("request of {} bytes, reply of {} bytes", req.len(), reply.len()));
    }
    let be = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]) as usize;
    let checks: [(&str, bool); 13] = [
        ("eth addresses swapped", reply[0..6] == req[6..12] && reply[6..12] == req[0..6]),
        ("ethertype IPv6", reply[12..14] == [0x86, 0xdd]),
        ("version 6", reply[14] >> 4 == 6),
        ("payload length", be(reply, 18) == reply.len() - 54),
        ("next header UDP", reply[20] == 17),
        ("ip src = request dst", reply[22..38] == req[38..54]),
        ("ip dst = request src", reply[38..54] == req[22..38]),
        ("ports swapped", reply[54..56] == req[56..58] && reply[56..58] == req[54..56]),
        ("UDP length", be(reply, 58) == reply.len() - 54),
        ("UDP checksum", be(reply, 60) == udp6_checksum(reply) as usize),
        ("request id echoed", reply[62..64] == req[62..64]),
        ("seq 0 of 1", reply[64..70] == [0, 0, 0, 1, 0, 0]),
        ("ip addresses swapped", reply[22..54] != req[22..54] || req[22..38] == req[38..54]),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(format!("IPv6 reply header: {what}")),
        None => Ok(reply[70..].to_vec()),
    }
}

/// Checks an IPv6 reply's headers against the request and returns its text.
fn reply_text6(req: &[u8], reply: &[u8]) -> Vec<u8> {
    assert_eq!(&reply[0..6], &req[6..12], "eth dst = request src");
    assert_eq!(&reply[6..12], &req[0..6], "eth src = request dst");
    assert_eq!(&reply[12..14], &[0x86, 0xdd], "ethertype IPv6");
    assert_eq!(reply[14] >> 4, 6, "version 6");
    assert_eq!(u16::from_be_bytes([reply[18], reply[19]]) as usize, reply.len() - 54, "payload length");
    assert_eq!(reply[20], 17, "next header UDP");
    assert_eq!(&reply[22..38], &req[38..54], "ip src = request dst");
    assert_eq!(&reply[38..54], &req[22..38], "ip dst = request src");
    assert_eq!(&reply[54..56], &req[56..58], "sport = request dport");
    assert_eq!(&reply[56..58], &req[54..56], "dport = request sport");
    assert_eq!(u16::from_be_bytes([reply[58], reply[59]]) as usize, reply.len() - 54, "UDP length");
    assert_eq!(u16::from_be_bytes([reply[60], reply[61]]), udp6_checksum(reply), "UDP checksum");
    assert_eq!(&reply[62..64], &req[62..64], "request id echoed");
    assert_eq!(&reply[64..70], &[0, 0, 0, 1, 0, 0], "seq 0 of 1");
    reply[70..].to_vec()
}

#[test]
fn ipv6_gets_are_answered_with_a_valid_udp_checksum() {
    let Some(mut path) = load() else { return };
    allow_client(&mut path);
    // Odd and even lengths, one key and many, get and gets: the checksum covers every byte.
    let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("k6-{i}").into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..keys.len()).map(|i| vec![b'a' + i as u8; 3 * i + 1]).collect();
    for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
        put(&mut path, k, i as u32, 500 + i as u64, v, 0);
    }
    let items: Vec<(&[u8], u32, u64, &[u8])> =
        keys.iter().zip(&values).enumerate().map(|(i, (k, v))| (&k[..], i as u32, 500 + i as u64, &v[..])).collect();
    for n in [1, 2, 5, 12] {
        for (verb, cas) in [(&b"get "[..], false), (b"gets ", true)] {
            let req = packet6(17, SRC, &[verb, &keys[..n].join(&b' ')[..], b"\r\n"].concat());
            let (action, out) = run(&mut path, &req);
            assert_eq!(action, XDP_TX, "{n} keys");
            assert_eq!(reply_text6(&req, &out), expected(&items[..n], cas), "{n} keys");
        }
    }
    assert_eq!(path.counter(Counter::Ipv6Hits).unwrap(), 8);
    assert_eq!(path.counter(Counter::Hits).unwrap(), 8);
    // A hop-by-hop options header (next header 0) before UDP: the stack's to interpret.
    assert_pass_untouched(&mut path, &packet6(0, SRC, b"get k6-1\r\n"));
    assert_eq!(path.counter(Counter::PassIpOptionsOrFragment).unwrap(), 1);
    // A source outside the allowlist.
    let mut other = SRC;
    other[0] = 0xfc;
    assert_pass_untouched(&mut path, &packet6(17, other, b"get k6-1\r\n"));
    assert_eq!(path.counter(Counter::PassNotAllowed).unwrap(), 1);
    // No UDP checksum: the stack drops it over IPv6, so the program must leave it to the stack.
    let mut none = packet6(17, SRC, b"get k6-1\r\n");
    none[60..62].copy_from_slice(&[0, 0]);
    assert_pass_untouched(&mut path, &none);
    assert_eq!(path.counter(Counter::PassMalformed).unwrap(), 1);
}

#[test]
fn ipv6_follows_the_listen_address() {
    let v4_only =
        KernelOpts { port: PORT, cache_entries: 1024, listen: Some("10.0.0.1".parse().unwrap()), ..Default::default() };
    let other6 = KernelOpts { listen: Some("fd00:0:0:77::9".parse().unwrap()), ..v4_only };
    let this6 = KernelOpts { listen: Some(std::net::Ipv6Addr::from(DST).into()), ..v4_only };
    let dual = KernelOpts { listen: Some("::".parse().unwrap()), ..v4_only };
    for (opts, answers) in [(v4_only, false), (other6, false), (this6, true), (dual, true)] {
        let mut path = match KernelPath::load(opts) {
            Ok(p) => p,
            Err(e) if !bpf_required() => return eprintln!("SKIP: cannot load BPF here ({e:#})"),
            Err(e) => panic!("BPF required but loading failed: {e:#}"),
        };
        path.allow(std::net::Ipv6Addr::from(SRC).into(), 128).unwrap();
        put(&mut path, b"k", 0, 1, b"v", 0);
        let req = packet6(17, SRC, b"get k\r\n");
        if answers {
            let (action, out) = run(&mut path, &req);
            assert_eq!(action, XDP_TX, "{:?}", opts.listen);
            assert_eq!(reply_text6(&req, &out), b"VALUE k 0 1\r\nv\r\nEND\r\n");
        } else {
            assert_pass_untouched(&mut path, &req);
            assert_eq!(path.counter(Counter::PassOtherPort).unwrap(), 1, "{:?}", opts.listen);
        }
    }
}
