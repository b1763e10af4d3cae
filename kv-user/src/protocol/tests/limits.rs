//! Limits and framing: key and line lengths, too-large values, data blocks, line endings, and random
//! input.

use super::*;

#[test]
fn key_length_boundary() {
    let k250 = "a".repeat(250);
    let k251 = "a".repeat(251);
    let ok = |line: String| {
        let buf = line.into_bytes();
        assert!(matches!(p(&buf), Parsed::Command { .. }), "{:?}", String::from_utf8_lossy(&buf));
    };
    let bad = |line: String| {
        let buf = line.into_bytes();
        let line_len = buf.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(err(&buf), plain(BAD, line_len), "{:?}", String::from_utf8_lossy(&buf));
    };
    for (k, good) in [(&k250, true), (&k251, false)] {
        let check = |l: String| if good { ok(l) } else { bad(l) };
        check(format!("get {k}\r\n"));
        check(format!("get a {k} b\r\n"));
        check(format!("gets {k}\r\n"));
        check(format!("gat 1 {k}\r\n"));
        check(format!("set {k} 0 0 1\r\nx\r\n"));
        check(format!("cas {k} 0 0 1 1\r\nx\r\n"));
        check(format!("delete {k}\r\n"));
        check(format!("incr {k} 1\r\n"));
        check(format!("touch {k} 1\r\n"));
        check(format!("mg {k} v\r\n"));
        check(format!("ms {k} 1\r\nx\r\n"));
        check(format!("md {k}\r\n"));
        check(format!("ma {k}\r\n"));
        check(format!("me {k}\r\n"));
    }
    // A too-long key in a storage command does not swallow the data block.
    let line = format!("set {k251} 0 0 1\r\n");
    let mut buf = line.clone().into_bytes();
    buf.extend_from_slice(b"x\r\n");
    assert_eq!(err(&buf), plain(BAD, line.len()));
    // noreply also silences it.
    let buf = format!("set {k251} 0 0 1 noreply\r\nx\r\n").into_bytes();
    assert_eq!(err(&buf).reply, b"");
    // The 250-byte limit is on the encoded form of a base64 key.
    let b64 = "QUFB".repeat(63);
    assert_eq!(err(format!("mg {b64} b\r\n").as_bytes()).reply, BAD);
}

#[test]
fn many_get_keys_beyond_max_tokens() {
    let mut line = b"get".to_vec();
    for i in 0..100 {
        line.extend_from_slice(format!(" key{i}").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    match cmd(&line) {
        Command::Get { keys, cas: false } => {
            let v: Vec<_> = keys.iter().collect();
            assert_eq!(v.len(), 100);
            assert_eq!(v[99], b"key99");
        }
        other => panic!("{other:?}"),
    }
    // A too-long key after the 23rd token is still caught.
    let mut line = b"gets".to_vec();
    for i in 0..40 {
        line.extend_from_slice(format!(" key{i}").as_bytes());
    }
    line.extend_from_slice(format!(" {}\r\n", "x".repeat(251)).as_bytes());
    assert_eq!(err(&line), plain(BAD, line.len()));
    // Other commands with more than 23 tokens are ERROR, as in memcached.
    let long = format!("set k 0 0 1{}\r\n", " x".repeat(30));
    assert_eq!(err(long.as_bytes()), plain(ERROR, long.len()));
}

#[test]
fn too_large_values() {
    let lim = Limits { item_size_max: 1024 };
    // 48 header + (1 key + 1) + 8 cas + (964 + 2) data = 1024.
    let fits = b"set k 0 0 964\r\n";
    assert!(parse(fits, &lim).is_incomplete());
    let line = b"set k 0 0 965\r\n";
    assert_eq!(
        err_with(line, lim),
        Err { reply: TOO_LARGE, consumed: line.len(), swallow: 967, close: false, key: Some(b"k") }
    );
    // Non-zero flags take 4 more bytes.
    let line = b"set k 1 0 961\r\n";
    assert_eq!(err_with(line, lim).swallow, 963);
    assert!(parse(b"set k 1 0 960\r\n", &lim).is_incomplete());
    // Only set removes the old item; noreply silences the reply but not the swallow.
    for (line, key) in [
        (&b"add k 0 0 2000\r\n"[..], None),
        (b"replace k 0 0 2000\r\n", None),
        (b"append k 0 0 2000\r\n", None),
        (b"prepend k 0 0 2000\r\n", None),
        (b"cas k 0 0 2000 1\r\n", None),
        (b"set k 0 0 2000\r\n", Some(&b"k"[..])),
    ] {
        assert_eq!(
            err_with(line, lim),
            Err { reply: TOO_LARGE, consumed: line.len(), swallow: 2002, close: false, key }
        );
    }
    let line = b"set k 0 0 2000 noreply\r\n";
    assert_eq!(
        err_with(line, lim),
        Err { reply: b"", consumed: line.len(), swallow: 2002, close: false, key: Some(b"k") }
    );
    // ms: any mode removes the old item; the reply is always sent.
    let line = b"ms k 2000 MA q\r\n";
    assert_eq!(
        err_with(line, lim),
        Err { reply: TOO_LARGE, consumed: line.len(), swallow: 2002, close: false, key: Some(b"k") }
    );
    // A base64 key is measured decoded (3 bytes here) but not reported for removal.
    assert!(parse(b"ms Zm9v 962 b\r\n", &lim).is_incomplete());
    let line = b"ms Zm9v 963 b\r\n";
    assert_eq!(
        err_with(line, lim),
        Err { reply: TOO_LARGE, consumed: line.len(), swallow: 965, close: false, key: None }
    );
    // Default limit: 1 MiB minus overhead.
    let max = 1024 * 1024 - 48 - 2 - 8 - 2;
    let mut buf = format!("set k 0 0 {max}\r\n").into_bytes();
    let head = buf.len();
    buf.resize(head + max, b'v');
    buf.extend_from_slice(b"\r\n");
    assert!(matches!(p(&buf), Parsed::Command { consumed, .. } if consumed == buf.len()));
    let line = format!("set k 0 0 {}\r\n", max + 1);
    assert_eq!(err(line.as_bytes()).reply, TOO_LARGE);
}

#[test]
fn ms_errors_swallow_the_data_block() {
    let sw = |buf: &'static [u8], reply: &'static [u8], swallow: usize| {
        assert_eq!(
            err(buf),
            Err { reply, consumed: buf.len(), swallow, close: false, key: None },
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    };
    sw(b"ms k 5 z\r\n", b"CLIENT_ERROR invalid flag\r\n", 7);
    sw(b"ms k 5 T1 T2\r\n", b"CLIENT_ERROR duplicate flag\r\n", 7);
    sw(b"ms k 0 Tx\r\n", b"CLIENT_ERROR bad token in command line format\r\n", 2);
    sw(b"ms k 5 Fx\r\n", BAD, 7);
    sw(b"ms k 5 MX\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n", 7);
    sw(b"ms k 5 Me\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n", 7);
    sw(b"ms k 5 O12345678901234567890123456789012\r\n", b"CLIENT_ERROR opaque token too long\r\n", 7);
    // Mode is checked before the opaque length, as in memcached.
    sw(b"ms k 5 O12345678901234567890123456789012 MX\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n", 7);
    sw(b"ms %%% 5 b\r\n", b"CLIENT_ERROR error decoding key\r\n", 7);
    for m in [b'E', b'A', b'P', b'R', b'S'] {
        let buf = [&b"ms k 1 M"[..], &[m], b"\r\nx\r\n"].concat();
        assert!(matches!(p(&buf), Parsed::Command { cmd: Command::MetaSet { .. }, .. }));
    }
}

#[test]
fn bad_data_chunk() {
    // Wrong terminator, terminator too late, bare \n: all consume line + bytes + 2.
    assert_eq!(err(b"set k 0 0 3\r\nabcde"), plain(CHUNK, 18));
    assert_eq!(err(b"set k 0 0 3\r\nabc\n\n"), plain(CHUNK, 18));
    assert_eq!(err(b"ms k 3\r\nabcde"), plain(CHUNK, 13));
    // Not enough bytes for the block yet: incomplete, even if a \r\n is already there.
    assert!(p(b"set k 0 0 3\r\nab\r").is_incomplete());
}

#[test]
fn short_block_with_crlf_inside_is_incomplete() {
    assert!(p(b"set k 0 0 3\r\nab\r\n").is_incomplete());
    assert_eq!(err(b"set k 0 0 3\r\nab\r\nx"), plain(CHUNK, 18));
    assert_eq!(cmd(b"set k 0 0 3\r\nab\r\r\n"), store(SetMode::Set, b"k", b"ab\r"));
}

#[test]
fn line_without_newline_is_bounded() {
    let close = |reply: &'static [u8], n: usize| Err { reply, consumed: n, swallow: 0, close: true, key: None };
    let junk = vec![b'x'; 2048];
    assert!(p(&junk).is_incomplete());
    let junk = vec![b'x'; 2049];
    assert_eq!(err(&junk), close(b"", 2049));
    let mut set = b"set k 0 0 1 ".to_vec();
    set.resize(4000, b'1');
    assert_eq!(err(&set), close(b"", 4000));
    let mut gat = b"gat 1 ".to_vec();
    gat.resize(4000, b'k');
    assert_eq!(err(&gat), close(b"", 4000));
    // A long multiget may grow up to max(item_size_max, 2048) bytes.
    for prefix in [&b"get "[..], b"gets ", b"  get "] {
        let mut get = prefix.to_vec();
        while get.len() < 100_000 {
            get.extend_from_slice(b"somekey ");
        }
        assert!(p(&get).is_incomplete());
        get.extend_from_slice(b"last\r\n");
        match p(&get) {
            Parsed::Command { cmd: Command::Get { keys, .. }, consumed } => {
                assert_eq!(consumed, get.len());
                assert_eq!(keys.iter().last(), Some(&b"last"[..]));
            }
            other => panic!("{other:?}"),
        }
    }
    let lim = Limits { item_size_max: 4096 };
    let mut get = b"get ".to_vec();
    get.resize(4096, b'k');
    assert!(parse(&get, &lim).is_incomplete());
    get.push(b'k');
    assert_eq!(err_with(&get, lim), close(b"CLIENT_ERROR line too long\r\n", 4097));
    // More than 100 leading spaces: not treated as a multiget.
    let mut get = vec![b' '; 101];
    get.extend_from_slice(b"get ");
    get.resize(3000, b'k');
    assert_eq!(err(&get), close(b"", 3000));
    // A long line that does have its newline is processed.
    let line = format!("set k 0 0 {}\r\n", "1".repeat(3000));
    assert_eq!(err(line.as_bytes()), plain(BAD, line.len()));
}

#[test]
fn http_request_closes() {
    let buf = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(err(buf), Err { reply: b"", consumed: 16, swallow: 0, close: true, key: None });
    assert!(err(b"POST /x HTTP/1.0\n").close);
    // Commands in memcached's first-letter dispatch never reach the HTTP check.
    assert_eq!(cmd(b"get / HTTP/1.1\r\n"), Command::Get { keys: keys(b"/ HTTP/1.1"), cas: false });
    assert!(!err(b"delete / HTTP/1.1\r\n").close);
    // `shutdown` is dispatched before the HTTP check: it is answered (by the executor).
    assert_eq!(cmd(b"shutdown HTTP/1.1\r\n"), Command::Shutdown(crate::protocol::command::ShutdownMode::Invalid));
}

#[test]
fn line_ending_details() {
    // Only one \r is stripped; a second one belongs to the last token.
    assert_eq!(cmd(b"get k\r\r\n"), Command::Get { keys: keys(b"k\r"), cas: false });
    // Control bytes other than space are key bytes (memcached does not check them).
    assert_eq!(cmd(b"get a\tb\x01\r\n"), Command::Get { keys: keys(b"a\tb\x01"), cas: false });
    // memcached's tokenizer stops at NUL.
    assert_eq!(cmd(b"get a\0b c\r\n"), Command::Get { keys: keys(b"a"), cas: false });
    assert_eq!(err(b"set\0 k 0 0 1\r\n"), plain(ERROR, 14));
    // Leading and repeated spaces.
    assert_eq!(
        cmd(b"  set   k  1   2  3  \r\nabc\r\n"),
        Command::Store(StoreCmd {
            mode: SetMode::Set,
            key: b"k",
            flags: 1,
            exptime: 2,
            cas_unique: 0,
            data: b"abc",
            noreply: false,
        })
    );
    // Leading zeros are fine.
    assert!(matches!(cmd(b"incr k 0000000000000000000000001\r\n"), Command::Arith(ArithCmd { delta: 1, .. })));
}

#[test]
fn base64_keys() {
    // The parser returns the encoded key.
    assert!(matches!(cmd(b"md Zm9v b\r\n"), Command::MetaDelete { key: b"Zm9v", flags } if flags.base64_key));
    assert!(matches!(cmd(b"me Zm9v b\r\n"), Command::MetaDebug { key: b"Zm9v", base64: true }));
}

#[test]
fn item_size_accounting() {
    let lim = Limits { item_size_max: 100 };
    // 48 + (10 + 1) + 8 + (31 + 2) = 100
    assert!(item_size_ok(10, 0, 31, &lim));
    assert!(!item_size_ok(10, 0, 32, &lim));
    assert!(!item_size_ok(10, 1, 31, &lim));
    assert!(!item_size_ok(usize::MAX, 0, usize::MAX, &lim));
    assert_eq!(Limits::default().item_size_max, 1 << 20);
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn check_invariants(buf: &[u8], lim: &Limits) {
    match parse(buf, lim) {
        Parsed::Command { consumed, .. } => assert!(consumed >= 1 && consumed <= buf.len()),
        Parsed::Error { consumed, reply, close, .. } => {
            assert!(consumed >= 1 && consumed <= buf.len());
            assert!(reply.is_empty() || reply.ends_with(b"\r\n"));
            assert!(close || !reply.is_empty() || buf.windows(7).any(|w| w == b"noreply"));
        }
        Parsed::Incomplete | Parsed::Partial { .. } => {
            // Never waits for more than the line or block limit.
            assert!(buf.len() <= lim.item_size_max.max(MAX_LINE_NO_NEWLINE) + 4096);
        }
    }
}

#[test]
fn random_input_never_panics() {
    const WORDS: &[&[u8]] = &[
        b"get",
        b"gets",
        b"gat",
        b"gats",
        b"set",
        b"add",
        b"replace",
        b"append",
        b"prepend",
        b"cas",
        b"delete",
        b"incr",
        b"decr",
        b"touch",
        b"flush_all",
        b"version",
        b"verbosity",
        b"stats",
        b"quit",
        b"mg",
        b"ms",
        b"md",
        b"ma",
        b"mn",
        b"me",
        b"noreply",
        b"0",
        b"1",
        b"-1",
        b"5",
        b"250",
        b"4294967296",
        b"18446744073709551616",
        b"k",
        b"v",
        b"b",
        b"q",
        b"T",
        b"N5",
        b"MS",
        b"O",
        b"Zm9v",
        b"HTTP/1.1",
        b" ",
        b"  ",
        b"\r\n",
        b"\n",
        b"\r",
        b"\0",
        b"\t",
        b"\xff",
    ];
    let lims = [Limits { item_size_max: 64 }, Limits { item_size_max: 1024 }, LIM];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::new();
    for round in 0..200_000 {
        buf.clear();
        let n = rng.below(24);
        for _ in 0..n {
            if rng.below(4) == 0 {
                buf.push(rng.next() as u8);
            } else {
                buf.extend_from_slice(WORDS[rng.below(WORDS.len())]);
                if rng.below(2) == 0 {
                    buf.push(b' ');
                }
            }
        }
        let lim = &lims[round % lims.len()];
        check_invariants(&buf, lim);
        // Walk the buffer as a connection would, so every request boundary is exercised.
        let mut off = 0;
        while off < buf.len() {
            match parse(&buf[off..], lim) {
                Parsed::Command { consumed, .. } => off += consumed,
                Parsed::Error { consumed, swallow, close, .. } => {
                    if close {
                        break;
                    }
                    off += consumed + swallow;
                }
                Parsed::Incomplete | Parsed::Partial { .. } => break,
            }
        }
    }
    // Long random lines, with and without newlines.
    for _ in 0..200 {
        let len = 2000 + rng.below(6000);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8 | 0x20).collect();
        check_invariants(&bytes, &lims[1]);
        let mut get = b"get ".to_vec();
        get.extend_from_slice(&bytes);
        check_invariants(&get, &lims[1]);
    }
}

#[test]
fn data_block_with_every_byte_value() {
    let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    for head in [&b"set k 9 0 512\r\n"[..], b"ms k 512 F9\r\n"] {
        let mut buf = head.to_vec();
        buf.extend_from_slice(&data);
        buf.extend_from_slice(b"\r\n");
        match cmd(&buf) {
            Command::Store(StoreCmd { data: d, flags, .. }) => assert_eq!((d, flags), (&data[..], 9)),
            Command::MetaSet { data: d, flags, .. } => {
                assert_eq!((d, flags.client_flags), (&data[..], Some(9)))
            }
            other => panic!("{other:?}"),
        }
        for k in 0..buf.len() {
            assert!(p(&buf[..k]).is_incomplete());
        }
    }
}

/// A storage command whose data has not all arrived says how long the whole request will be.
#[test]
fn a_partial_value_announces_its_length() {
    let lim = Limits::default();
    assert_eq!(parse(b"set k 1 0 960\r\nabc", &lim), Parsed::Partial { total: 15 + 962, noreply: false });
    assert_eq!(parse(b"set k 1 0 5 noreply\r\n", &lim), Parsed::Partial { total: 21 + 7, noreply: true });
    assert_eq!(parse(b"ms k 5 T0\r\nab", &lim), Parsed::Partial { total: 11 + 7, noreply: false });
    assert_eq!(parse(b"set k 1 0 5", &lim), Parsed::Incomplete);
}
