//! The binary protocol over TCP and UDP: opaque and CAS echo, quiet forms, error statuses and texts,
//! and hostile input. Every expectation also holds against memcached 1.6 (`KV_TEST_PEER=memcached`).

use std::time::Duration;

use kv_tests::{targets_memcached, udp_request, Client, Server};

const GET: u8 = 0x00;
const SET: u8 = 0x01;
const ADD: u8 = 0x02;
const REPLACE: u8 = 0x03;
const DELETE: u8 = 0x04;
const INCREMENT: u8 = 0x05;
const DECREMENT: u8 = 0x06;
const FLUSH: u8 = 0x08;
const GETQ: u8 = 0x09;
const NOOP: u8 = 0x0a;
const VERSION: u8 = 0x0b;
const GETK: u8 = 0x0c;
const GETKQ: u8 = 0x0d;
const APPEND: u8 = 0x0e;
const STAT: u8 = 0x10;
const SETQ: u8 = 0x11;
const ADDQ: u8 = 0x12;
const DELETEQ: u8 = 0x14;
const INCREMENTQ: u8 = 0x15;
const QUITQ: u8 = 0x17;
const TOUCH: u8 = 0x1c;
const GAT: u8 = 0x1d;
const SASL_LIST_MECHS: u8 = 0x20;

/// A request packet with the body length its parts add up to.
fn req(opcode: u8, key: &[u8], extras: &[u8], value: &[u8], opaque: u32, cas: u64) -> Vec<u8> {
    let body = (extras.len() + key.len() + value.len()) as u32;
    raw(opcode, key.len() as u16, extras.len() as u8, body, opaque, cas, &[extras, key, value].concat())
}

/// A request header with arbitrary (possibly lying) lengths, followed by `rest`.
fn raw(opcode: u8, keylen: u16, extlen: u8, bodylen: u32, opaque: u32, cas: u64, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, opcode];
    p.extend_from_slice(&keylen.to_be_bytes());
    p.extend_from_slice(&[extlen, 0, 0, 0]);
    p.extend_from_slice(&bodylen.to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&cas.to_be_bytes());
    p.extend_from_slice(rest);
    p
}

fn set_extras(flags: u32, exptime: u32) -> Vec<u8> {
    [flags.to_be_bytes(), exptime.to_be_bytes()].concat()
}

fn arith_extras(delta: u64, initial: u64, exptime: u32) -> Vec<u8> {
    [&delta.to_be_bytes()[..], &initial.to_be_bytes(), &exptime.to_be_bytes()].concat()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Resp {
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Resp {
    /// The expected response, CAS aside (it differs between servers).
    fn of(opcode: u8, status: u16, opaque: u32, extras: &[u8], key: &[u8], value: &[u8]) -> Resp {
        Resp { opcode, status, opaque, cas: 0, extras: extras.into(), key: key.into(), value: value.into() }
    }

    fn without_cas(mut self) -> Resp {
        self.cas = 0;
        self
    }
}

fn decode(b: &[u8]) -> (Resp, usize) {
    assert!(b.len() >= 24, "short response {b:?}");
    assert_eq!(b[0], 0x81, "response magic in {b:?}");
    let keylen = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let extlen = usize::from(b[4]);
    let body = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
    assert!(b.len() >= 24 + body, "response body cut short: {b:?}");
    let r = Resp {
        opcode: b[1],
        status: u16::from_be_bytes([b[6], b[7]]),
        opaque: u32::from_be_bytes(b[12..16].try_into().unwrap()),
        cas: u64::from_be_bytes(b[16..24].try_into().unwrap()),
        extras: b[24..24 + extlen].to_vec(),
        key: b[24 + extlen..24 + extlen + keylen].to_vec(),
        value: b[24 + extlen + keylen..24 + body].to_vec(),
    };
    (r, 24 + body)
}

fn read(c: &mut Client) -> Resp {
    let head = c.read_n(24);
    let body = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
    let rest = c.read_n(body);
    decode(&[head, rest].concat()).0
}

/// Sends `packet` and returns the one response, asserting nothing else follows.
fn call(c: &mut Client, packet: &[u8]) -> Resp {
    c.send(packet);
    let r = read(c);
    c.assert_silent(Duration::from_millis(30));
    r
}

fn set(c: &mut Client, key: &[u8], value: &[u8], flags: u32) -> u64 {
    let r = call(c, &req(SET, key, &set_extras(flags, 0), value, 1, 0));
    assert_eq!(r.status, 0, "{r:?}");
    assert_ne!(r.cas, 0, "a stored item's CAS");
    r.cas
}

#[test]
fn opaque_and_cas_are_echoed() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let r = call(&mut c, &req(SET, b"k", &set_extras(0xdeadbeef, 0), b"hello", 0x01020304, 0));
    assert_eq!(r.clone().without_cas(), Resp::of(SET, 0, 0x01020304, b"", b"", b""));
    let cas = r.cas;
    let got = call(&mut c, &req(GET, b"k", b"", b"", 7, 0));
    assert_eq!(got.cas, cas, "get returns the set's CAS");
    assert_eq!(got.without_cas(), Resp::of(GET, 0, 7, &0xdeadbeef_u32.to_be_bytes(), b"", b"hello"));
    let got = call(&mut c, &req(GETK, b"k", b"", b"", 8, 0));
    assert_eq!(got.without_cas(), Resp::of(GETK, 0, 8, &0xdeadbeef_u32.to_be_bytes(), b"k", b"hello"));

    // A set carrying a CAS is a compare-and-swap: a stale one is refused, the current one wins.
    let stale = call(&mut c, &req(SET, b"k", &set_extras(0, 0), b"x", 9, cas + 1000));
    assert_eq!(stale, Resp::of(SET, 0x02, 9, b"", b"", b"Data exists for key."));
    let won = call(&mut c, &req(SET, b"k", &set_extras(0, 0), b"new", 10, cas));
    assert_eq!((won.status, won.opaque), (0, 10));
    assert!(won.cas != 0 && won.cas != cas, "a new CAS");
    let missing = call(&mut c, &req(REPLACE, b"nope", &set_extras(0, 0), b"x", 11, 5));
    assert_eq!(missing, Resp::of(REPLACE, 0x01, 11, b"", b"", b"Not found"));
    // delete with a CAS: only the current one removes the item.
    let stale = call(&mut c, &req(DELETE, b"k", b"", b"", 12, cas));
    assert_eq!(stale, Resp::of(DELETE, 0x02, 12, b"", b"", b"Data exists for key."));
    let deleted = call(&mut c, &req(DELETE, b"k", b"", b"", 13, won.cas));
    assert_eq!(deleted, Resp::of(DELETE, 0, 13, b"", b"", b""));
    // touch and gat answer the item's CAS and flags; touch leaves out the value.
    let cas = set(&mut c, b"t", b"tv", 3);
    let t = call(&mut c, &req(TOUCH, b"t", &100u32.to_be_bytes(), b"", 14, 0));
    assert_eq!((t.cas, t.without_cas()), (cas, Resp::of(TOUCH, 0, 14, &3u32.to_be_bytes(), b"", b"")));
    let g = call(&mut c, &req(GAT, b"t", &100u32.to_be_bytes(), b"", 15, 0));
    assert_eq!((g.cas, g.without_cas()), (cas, Resp::of(GAT, 0, 15, &3u32.to_be_bytes(), b"", b"tv")));
}

#[test]
fn quiet_forms_hide_success_and_misses_but_not_errors() {
    let s = Server::start(&[]);
    let mut c = s.client();
    set(&mut c, b"have", b"v", 0);
    let mut batch = Vec::new();
    batch.extend(req(GETQ, b"miss", b"", b"", 1, 0)); // miss: silent
    batch.extend(req(GETKQ, b"miss", b"", b"", 2, 0)); // miss: silent
    batch.extend(req(SETQ, b"q", &set_extras(0, 0), b"qv", 3, 0)); // stored: silent
    batch.extend(req(ADDQ, b"have", &set_extras(0, 0), b"x", 4, 0)); // refused: answered
    batch.extend(req(DELETEQ, b"gone", b"", b"", 5, 0)); // not found: answered
    batch.extend(req(INCREMENTQ, b"cnt", &arith_extras(1, 5, 0), b"", 6, 0)); // created: silent
    batch.extend(req(GETKQ, b"q", b"", b"", 7, 0)); // hit: answered
    batch.extend(req(NOOP, b"", b"", b"", 8, 0)); // answered, ends the batch
    c.send(&batch);
    assert_eq!(read(&mut c), Resp::of(ADDQ, 0x02, 4, b"", b"", b"Data exists for key."));
    assert_eq!(read(&mut c), Resp::of(DELETEQ, 0x01, 5, b"", b"", b"Not found"));
    assert_eq!(read(&mut c).without_cas(), Resp::of(GETKQ, 0, 7, &[0; 4], b"q", b"qv"));
    assert_eq!(read(&mut c), Resp::of(NOOP, 0, 8, b"", b"", b""));
    c.assert_silent(Duration::from_millis(50));
    // The quiet increment created its counter with the initial value.
    assert_eq!(call(&mut c, &req(GET, b"cnt", b"", b"", 9, 0)).value, b"5");
    // quitq closes without a word.
    c.send(&req(QUITQ, b"", b"", b"", 10, 0));
    assert!(c.closed());
}

#[test]
fn error_statuses_and_texts_are_memcacheds() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let e = |op, status, opaque, text: &[u8]| Resp::of(op, status, opaque, b"", b"", text);
    assert_eq!(call(&mut c, &req(GET, b"none", b"", b"", 1, 0)), e(GET, 0x01, 1, b"Not found"));
    // getk's miss carries the key instead of a text.
    assert_eq!(call(&mut c, &req(GETK, b"none", b"", b"", 2, 0)), Resp::of(GETK, 0x01, 2, b"", b"none", b""));
    set(&mut c, b"a", b"1", 0);
    assert_eq!(call(&mut c, &req(ADD, b"a", &set_extras(0, 0), b"2", 3, 0)), e(ADD, 0x02, 3, b"Data exists for key."));
    assert_eq!(call(&mut c, &req(REPLACE, b"z", &set_extras(0, 0), b"2", 4, 0)), e(REPLACE, 0x01, 4, b"Not found"));
    assert_eq!(call(&mut c, &req(APPEND, b"z", b"", b"2", 5, 0)), e(APPEND, 0x05, 5, b"Not stored."));
    assert_eq!(call(&mut c, &req(APPEND, b"a", b"", b"2", 6, 0)).status, 0);
    assert_eq!(call(&mut c, &req(GET, b"a", b"", b"", 7, 0)).value, b"12");
    set(&mut c, b"word", b"abc", 0);
    let nan = call(&mut c, &req(INCREMENT, b"word", &arith_extras(1, 0, 0), b"", 8, 0));
    assert_eq!(nan, e(INCREMENT, 0x06, 8, b"Non-numeric server-side value for incr or decr"));
    // An expiration of all ones: no counter is created on a miss.
    let miss = call(&mut c, &req(DECREMENT, b"nocnt", &arith_extras(1, 9, u32::MAX), b"", 9, 0));
    assert_eq!(miss, e(DECREMENT, 0x01, 9, b"Not found"));
    let made = call(&mut c, &req(INCREMENT, b"cnt", &arith_extras(3, 10, 0), b"", 10, 0));
    assert_eq!(made.without_cas(), Resp::of(INCREMENT, 0, 10, b"", b"", &10u64.to_be_bytes()));
    let inc = call(&mut c, &req(INCREMENT, b"cnt", &arith_extras(3, 10, 0), b"", 11, 0));
    assert_eq!(inc.without_cas(), Resp::of(INCREMENT, 0, 11, b"", b"", &13u64.to_be_bytes()));
    let dec = call(&mut c, &req(DECREMENT, b"cnt", &arith_extras(20, 0, 0), b"", 12, 0));
    assert_eq!(dec.value, 0u64.to_be_bytes(), "decrement stops at zero");
    // Unknown opcodes and SASL (no SASL support) are unknown commands; the connection goes on.
    assert_eq!(call(&mut c, &req(0x50, b"", b"", b"", 13, 0)), e(0x50, 0x81, 13, b"Unknown command"));
    let sasl = call(&mut c, &req(SASL_LIST_MECHS, b"", b"", b"", 14, 0));
    assert_eq!(sasl, e(SASL_LIST_MECHS, 0x81, 14, b"Unknown command"));
    // Too large for -I: refused, its value discarded, and the old item is gone.
    set(&mut c, b"big", b"old", 0);
    let huge = vec![b'x'; 1024 * 1024];
    assert_eq!(call(&mut c, &req(SET, b"big", &set_extras(0, 0), &huge, 15, 0)), e(SET, 0x03, 15, b"Too large."));
    assert_eq!(call(&mut c, &req(GET, b"big", b"", b"", 16, 0)), e(GET, 0x01, 16, b"Not found"));
    // version, stat, flush.
    let v = call(&mut c, &req(VERSION, b"", b"", b"", 17, 0));
    assert!(v.status == 0 && v.opaque == 17 && v.value.starts_with(b"1.6."), "{v:?}");
    c.send(&req(STAT, b"", b"", b"", 18, 0));
    let mut names = Vec::new();
    loop {
        let r = read(&mut c);
        assert_eq!((r.opcode, r.status, r.opaque), (STAT, 0, 18));
        if r.key.is_empty() {
            assert!(r.value.is_empty());
            break;
        }
        names.push(String::from_utf8(r.key).unwrap());
    }
    assert!(names.iter().any(|n| n == "pid") && names.iter().any(|n| n == "cmd_get"), "{names:?}");
    assert_eq!(call(&mut c, &req(STAT, b"bogus", b"", b"", 19, 0)), e(STAT, 0x01, 19, b"Not found"));
    assert_eq!(call(&mut c, &req(FLUSH, b"", b"", b"", 20, 0)), e(FLUSH, 0, 20, b""));
    assert_eq!(call(&mut c, &req(GET, b"a", b"", b"", 21, 0)), e(GET, 0x01, 21, b"Not found"));
    // Malformed: extras on a get are invalid arguments, and memcached closes the connection.
    assert_eq!(call_then_closed(&mut c, &req(GET, b"a", b"xxxx", b"", 22, 0)), e(GET, 0x04, 22, b"Invalid arguments"));
}

/// Sends `packet`, reads its one response, and asserts the server then closes the connection.
fn call_then_closed(c: &mut Client, packet: &[u8]) -> Resp {
    c.send(packet);
    let r = read(c);
    assert!(c.closed(), "closed after {r:?}");
    r
}

#[test]
fn binary_over_udp() {
    let s = Server::start(&[]);
    let one = |id, packet: &[u8]| decode(&udp_request(s.addr(), id, packet));
    let (r, n) = one(1, &req(SET, b"u", &set_extras(5, 0), b"udp!", 0xabcdef, 0));
    assert_eq!((r.clone().without_cas(), n), (Resp::of(SET, 0, 0xabcdef, b"", b"", b""), 24));
    let (got, _) = one(2, &req(GETK, b"u", b"", b"", 2, 0));
    assert_eq!((got.cas, got.without_cas()), (r.cas, Resp::of(GETK, 0, 2, &5u32.to_be_bytes(), b"u", b"udp!")));
    let (miss, _) = one(3, &req(GET, b"nope", b"", b"", 3, 0));
    assert_eq!(miss, Resp::of(GET, 0x01, 3, b"", b"", b"Not found"));
    // Each datagram picks its protocol: text still works from the same server.
    assert_eq!(udp_request(s.addr(), 5, b"get u\r\n"), b"VALUE u 5 4\r\nudp!\r\nEND\r\n");
    // And what UDP stored, TCP sees.
    let mut c = s.client();
    assert_eq!(call(&mut c, &req(GET, b"u", b"", b"", 6, 0)).value, b"udp!");
}

/// Truncated headers, lying lengths, huge extras and keys, bad magic mid-stream: an error or a close,
/// never a hang, a crash or lost data.
#[test]
fn hostile_binary_input() {
    let s = Server::start(&[]);
    let mut keeper = s.client();
    set(&mut keeper, b"precious", b"data", 42);
    let e = |op, status, opaque, text: &[u8]| Resp::of(op, status, opaque, b"", b"", text);

    // Key and extras longer than the body: unknown command, then close.
    let mut c = s.client();
    let lie = raw(GET, 4, 0, 2, 1, 0, b"abcd");
    assert_eq!(call_then_closed(&mut c, &lie), e(GET, 0x81, 1, b"Unknown command"));
    // A key over 250 bytes: invalid arguments, then close.
    let mut c = s.client();
    let long = req(GET, &[b'k'; 300], b"", b"", 2, 0);
    assert_eq!(call_then_closed(&mut c, &long), e(GET, 0x04, 2, b"Invalid arguments"));
    // The largest extras length on a get.
    let mut c = s.client();
    let ext = raw(GET, 1, 255, 256, 3, 0, &[b'e'; 256]);
    assert_eq!(call_then_closed(&mut c, &ext), e(GET, 0x04, 3, b"Invalid arguments"));
    // A 4 GiB body: refused at once. memcached 1.6.18 calls it too large and then discards 4 GiB (the
    // connection is lost either way); later releases, and this server, answer invalid arguments and close.
    let mut c = s.client();
    let huge = raw(SET, 1, 8, u32::MAX, 4, 0, &[0; 9]);
    if targets_memcached() {
        assert_eq!(call(&mut c, &huge), e(SET, 0x03, 4, b"Too large."));
    } else {
        assert_eq!(call_then_closed(&mut c, &huge), e(SET, 0x04, 4, b"Invalid arguments"));
    }
    // Bad magic after a good request: the good one is answered, then the connection closes.
    let mut c = s.client();
    let mut bad = req(NOOP, b"", b"", b"", 5, 0);
    bad.extend(raw(NOOP, 0, 0, 0, 6, 0, b""));
    bad[24] = 0x42;
    assert_eq!(call_then_closed(&mut c, &bad), e(NOOP, 0, 5, b""));
    // Text on a binary connection is bad magic too (once a header's worth of it is in).
    let mut c = s.client();
    let mut mixed = req(NOOP, b"", b"", b"", 7, 0);
    mixed.extend_from_slice(b"get precious\r\nget precious\r\n");
    assert_eq!(call_then_closed(&mut c, &mixed), e(NOOP, 0, 7, b""));
    // A truncated header, and a set whose body never comes: nothing to answer; the client leaves.
    for partial in [&req(NOOP, b"", b"", b"", 8, 0)[..10], &raw(SET, 1, 8, 1000, 9, 0, b"12345678k")[..]] {
        let mut c = s.client();
        c.send(partial);
        c.assert_silent(Duration::from_millis(200));
    }
    // The server still serves, and nothing was lost.
    let got = call(&mut keeper, &req(GET, b"precious", b"", b"", 10, 0));
    assert_eq!(got.without_cas(), Resp::of(GET, 0, 10, &42u32.to_be_bytes(), b"", b"data"));
    let mut text = s.client();
    text.expect(b"get precious\r\n", b"VALUE precious 42 4\r\ndata\r\nEND\r\n");
}
