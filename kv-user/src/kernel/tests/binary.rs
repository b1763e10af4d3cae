//! The XDP program on binary-protocol requests (BPF_PROG_TEST_RUN): `get`/`getk` hits answered with
//! the response user space sends, header by header; everything else passed untouched. Also the
//! user-space reference the differential tests and the fuzzer compare binary replies with.

use bytes::BytesMut;
use kv_common::{BIN_OP_GET, BIN_OP_GETK};

use super::*;
use crate::exec::Ctx;

const GETQ: u8 = 0x09;
const GETKQ: u8 = 0x0d;
const NOOP: u8 = 0x0a;
const SET: u8 = 0x01;

/// A binary request: header (magic, opcode, lengths, opaque, CAS, and data type and vbucket as given),
/// extras, key, value.
pub(crate) fn bin_request(opcode: u8, key: &[u8], extras: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let mut p = vec![0x80, opcode];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

/// What the UDP server answers to this datagram text, frames joined (`server::udp::handle`, the code
/// `serve` runs: binary or text, as the first byte says).
pub(crate) fn udp_reply(ctx: &Ctx, text: &[u8]) -> Vec<u8> {
    let datagram =
        [&kv_common::FrameHeader { request_id: 0, seq: 0, total: 1, reserved: 0 }.to_bytes()[..], text].concat();
    let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
    crate::server::udp::handle(&datagram, ctx, &mut input, &mut out).expect("a single-datagram request");
    out.to_vec()
}

/// A get/getk hit's response, laid out by hand from memcached's `protocol_binary.h` (not with the
/// formatter under test).
fn hit_response(opcode: u8, opaque: u32, cas: u64, flags: u32, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    let key = key.unwrap_or_default();
    let mut r = vec![0x81, opcode];
    r.extend_from_slice(&(key.len() as u16).to_be_bytes());
    r.extend_from_slice(&[4, 0, 0, 0]);
    r.extend_from_slice(&((4 + key.len() + value.len()) as u32).to_be_bytes());
    r.extend_from_slice(&opaque.to_be_bytes());
    r.extend_from_slice(&cas.to_be_bytes());
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(value);
    r
}

#[test]
fn binary_get_and_getk_hits() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"foo", 0xdead_beef, 0x0102_0304_0506_0708, b"bar", 0);
    let req = packet(PORT, 0xbeef, 0, 1, &bin_request(BIN_OP_GET, b"foo", b"", b"", 0x1122_3344));
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    let want = hit_response(BIN_OP_GET, 0x1122_3344, 0x0102_0304_0506_0708, 0xdead_beef, None, b"bar");
    assert_eq!(reply_text(&req, &out), want);
    let req = packet(PORT, 7, 0, 1, &bin_request(BIN_OP_GETK, b"foo", b"", b"", 42));
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    let want = hit_response(BIN_OP_GETK, 42, 0x0102_0304_0506_0708, 0xdead_beef, Some(b"foo"), b"bar");
    assert_eq!(reply_text(&req, &out), want);
    // Data type, vbucket and CAS of a get are not looked at (by the user-space parser either).
    let mut odd = bin_request(BIN_OP_GET, b"foo", b"", b"", 5);
    odd[5] = 1;
    odd[6..8].copy_from_slice(&[0x12, 0x34]);
    odd[16..24].copy_from_slice(&99u64.to_be_bytes());
    let req = packet(PORT, 8, 0, 1, &odd);
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), hit_response(BIN_OP_GET, 5, 0x0102_0304_0506_0708, 0xdead_beef, None, b"bar"));
    // Empty values, 250-byte keys, a large value with the key echoed.
    let long_key = vec![b'L'; 250];
    put(&mut path, &long_key, 0, 1, b"", 0);
    let big = vec![b'v'; kv_common::XDP_REPLY_MAX - 28 - 250 - 8];
    put(&mut path, b"big", 3, 4, &big, 0);
    for (opcode, key, value, flags, cas) in [
        (BIN_OP_GETK, &long_key[..], &b""[..], 0, 1),
        (BIN_OP_GET, &long_key[..], b"", 0, 1),
        (BIN_OP_GETK, b"big", &big[..], 3, 4),
    ] {
        let req = packet(PORT, 9, 0, 1, &bin_request(opcode, key, b"", b"", 1));
        let (action, out) = run(&mut path, &req);
        assert_eq!(action, XDP_TX, "key of {} bytes", key.len());
        let echo = (opcode == BIN_OP_GETK).then_some(key);
        assert_eq!(reply_text(&req, &out), hit_response(opcode, 1, cas, flags, echo, value));
    }
    assert_eq!(path.counter(Counter::BinHits).unwrap(), 6);
    assert_eq!(path.counter(Counter::Hits).unwrap(), 6);
    assert_eq!(path.counter(Counter::HitKeys).unwrap(), 6);
    // A text get of the same slot is unchanged.
    let req = packet(PORT, 10, 0, 1, b"get foo\r\n");
    let (action, out) = run(&mut path, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), format!("VALUE foo {} 3\r\nbar\r\nEND\r\n", 0xdead_beef_u32).as_bytes());
    assert_eq!(path.counter(Counter::BinHits).unwrap(), 6, "text hits are not binary hits");
}

#[test]
fn binary_requests_it_does_not_handle_pass_untouched() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"hit", 1, 2, b"value", 0);
    put(&mut path, b"old", 0, 1, b"v", 1); // deadline long past on the monotonic clock
    let get = bin_request(BIN_OP_GET, b"hit", b"", b"", 1);
    let mut not_get: Vec<Vec<u8>> = vec![
        bin_request(GETQ, b"hit", b"", b"", 1),
        bin_request(GETKQ, b"hit", b"", b"", 1),
        bin_request(NOOP, b"", b"", b"", 1),
        bin_request(SET, b"hit", &[0; 8], b"v", 1),
        bin_request(0x1d, b"hit", &[0; 4], b"", 1), // gat
        bin_request(BIN_OP_GET, b"hit", &[0; 4], b"", 1),
        bin_request(BIN_OP_GET, b"hit", b"", b"x", 1), // a body longer than the key
        bin_request(BIN_OP_GET, b"", b"", b"", 1),
        bin_request(BIN_OP_GET, &[b'k'; 251], b"", b"", 1),
        [&get[..], &get[..]].concat(), // two requests in one datagram
        [&get[..], b"\0"].concat(),
    ];
    let mut lie = get.clone();
    lie[3] = 4; // key length past the datagram
    not_get.push(lie);
    let mut lie = get.clone();
    lie[8..12].copy_from_slice(&2u32.to_be_bytes()); // body shorter than the key
    not_get.push(lie);
    let mut lie = get.clone();
    lie[8..12].copy_from_slice(&(u32::MAX).to_be_bytes());
    not_get.push(lie);
    for (i, text) in not_get.iter().enumerate() {
        let before = path.counter(Counter::PassNotGet).unwrap();
        assert_pass_untouched(&mut path, &packet(PORT, i as u16, 0, 1, text));
        assert_eq!(path.counter(Counter::PassNotGet).unwrap(), before + 1, "request {i}: {text:02x?}");
    }
    // Truncated anywhere.
    for n in 1..get.len() {
        assert_pass_untouched(&mut path, &packet(PORT, 1, 0, 1, &get[..n]));
    }
    assert_pass_untouched(&mut path, &packet(PORT, 1, 0, 1, &bin_request(BIN_OP_GETK, b"nothere", b"", b"", 1)));
    assert_eq!(path.counter(Counter::PassMiss).unwrap(), 1);
    assert_pass_untouched(&mut path, &packet(PORT, 1, 0, 1, &bin_request(BIN_OP_GET, b"old", b"", b"", 1)));
    assert_eq!(path.counter(Counter::PassExpired).unwrap(), 1);
    // A multi-datagram request (user space drops it).
    assert_pass_untouched(&mut path, &packet(PORT, 1, 0, 2, &get));
    // A reply over one datagram: user space splits it.
    let long_key = vec![b'L'; 250];
    // The slot holds it (`VALUE <key> 0 1115`, 263 bytes, then the value), the reply with the key does
    // not fit (28 + 250 + 1115 > 1392).
    put(&mut path, &long_key, 0, 1, &vec![b'v'; 1115], 0);
    assert_pass_untouched(&mut path, &packet(PORT, 1, 0, 1, &bin_request(BIN_OP_GETK, &long_key, b"", b"", 1)));
    assert_eq!(path.counter(Counter::PassTooBig).unwrap(), 1);
    // The same key without the echo fits.
    let req = packet(PORT, 1, 0, 1, &bin_request(BIN_OP_GET, &long_key, b"", b"", 1));
    assert_eq!(run(&mut path, &req).0, XDP_TX);
    // flush_all kills binary hits as text ones.
    let handle = path.cache_handle().unwrap();
    handle.flush().unwrap();
    assert_pass_untouched(&mut path, &packet(PORT, 1, 0, 1, &get));
    assert_eq!(path.counter(Counter::PassFlushed).unwrap(), 1);
    assert_eq!(path.counter(Counter::BinHits).unwrap(), 1);
}

#[test]
fn binary_get_over_ipv6() {
    let Some(mut path) = load() else { return };
    super::ipv6::allow_client(&mut path);
    // Odd and even lengths: the UDP checksum covers every byte.
    for (i, value) in [&b"v"[..], b"vv", b"vvv", b"vvvv", &[7u8; 901]].iter().enumerate() {
        let key = format!("k6-{i}");
        put(&mut path, key.as_bytes(), i as u32, 100 + i as u64, value, 0);
        for opcode in [BIN_OP_GET, BIN_OP_GETK] {
            let text = bin_request(opcode, key.as_bytes(), b"", b"", 0xabc0 + i as u32);
            let req = super::ipv6::packet6_id(17, super::ipv6::SRC, 0x6000 + i as u16, &text);
            let (action, out) = run(&mut path, &req);
            assert_eq!(action, XDP_TX, "{key}");
            let echo = (opcode == BIN_OP_GETK).then_some(key.as_bytes());
            let want = hit_response(opcode, 0xabc0 + i as u32, 100 + i as u64, i as u32, echo, value);
            assert_eq!(super::ipv6::try_reply_text6(&req, &out).unwrap(), want, "{key}");
        }
    }
    assert_eq!(path.counter(Counter::BinHits).unwrap(), 10);
    assert_eq!(path.counter(Counter::Ipv6Hits).unwrap(), 10);
}

/// The cost of a binary get hit, as `timing` measures the text path (print only).
#[test]
fn binary_timing() {
    let Some(mut path) = load() else { return };
    put(&mut path, b"key:000001", 0, 1, &[b'x'; 100], 0);
    const N: u32 = 100_000;
    for (what, text) in [
        ("binary get", bin_request(BIN_OP_GET, b"key:000001", b"", b"", 1)),
        ("binary getk", bin_request(BIN_OP_GETK, b"key:000001", b"", b"", 1)),
        ("text get", b"get key:000001\r\n".to_vec()),
    ] {
        let pkt = packet(PORT, 1, 0, 1, &text);
        let mut total = std::time::Duration::ZERO;
        for _ in 0..N {
            let mut out = vec![0u8; 4096];
            let opts = TestRunOptions { data_in: Some(&pkt), data_out: Some(&mut out), ..Default::default() };
            let r = path.program().unwrap().test_run(opts).unwrap();
            assert_eq!(r.return_value, XDP_TX);
            total += r.duration;
        }
        println!("timing: 1-key {what} hit (100-byte value), mean of {N} single runs: {:?}", total / N);
    }
}
