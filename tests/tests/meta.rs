//! The meta protocol (mg/ms/md/ma/mn), with memcached 1.6.18's exact replies. Return flags come
//! back in the order they were requested; `q` hides the "uninteresting" status (EN for mg, HD for
//! ms/md/ma) but not NF/NS/EX.

use kv_tests::{Client, Server};

/// The cas of `key` through `mg key c`.
fn cas_of(c: &mut Client, key: &str) -> u64 {
    c.send(format!("mg {key} c\r\n").as_bytes());
    let l = c.line();
    let t = l.trim_end().strip_prefix("HD c").unwrap_or_else(|| panic!("mg c reply {l:?}"));
    t.parse().unwrap()
}

#[test]
fn mg_flags_in_request_order() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"set m1 123 0 5\r\nhello\r\n", b"STORED\r\n");
    let cas = cas_of(&mut c, "m1");
    c.expect(b"mg m1\r\n", b"HD\r\n");
    c.expect(b"mg m1 v\r\n", b"VA 5\r\nhello\r\n");
    c.expect(b"mg m1 v f t s k c O123 q\r\n", format!("VA 5 f123 t-1 s5 km1 c{cas} O123\r\nhello\r\n").as_bytes());
    c.expect(b"mg m1 k v c f\r\n", format!("VA 5 km1 c{cas} f123\r\nhello\r\n").as_bytes());
    c.expect(b"mg m1 s v\r\n", b"VA 5 s5\r\nhello\r\n");
    c.expect(b"mg m1 k\r\n", b"HD km1\r\n");
    c.expect(b"mg m1 Oopaque k\r\n", b"HD Oopaque km1\r\n");
}

#[test]
fn mg_miss_and_quiet_mode() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"mg miss v\r\n", b"EN\r\n");
    // On a miss only k and O are echoed.
    c.expect(b"mg miss k O9 v s\r\n", b"EN kmiss O9\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
    // Quiet: a miss sends nothing, a hit is sent as usual; mn flushes the batch.
    c.expect(b"mg miss v q\r\nmn\r\n", b"MN\r\n");
    c.expect(b"mg miss v q k O9\r\nmn\r\n", b"MN\r\n");
    c.set("hit", b"yes");
    c.expect(b"mg hit v q\r\nmg miss v q\r\nmg hit q k\r\nmn\r\n", b"VA 3\r\nyes\r\nHD khit\r\nMN\r\n");
    c.expect(b"mg\r\n", b"ERROR\r\n");
}

#[test]
fn ms_flags_and_ttl() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"ms m2 3 T100 F7\r\nabc\r\n", b"HD\r\n");
    c.expect(b"get m2\r\n", b"VALUE m2 7 3\r\nabc\r\nEND\r\n");
    c.send(b"mg m2 t f v\r\n");
    let l = c.line();
    assert!(l == "VA 3 t100 f7\r\n" || l == "VA 3 t99 f7\r\n", "{l:?}");
    assert_eq!(c.read_n(5), b"abc\r\n");
    c.expect(b"ms m2 2 F4294967295 T0\r\nhi\r\n", b"HD\r\n");
    c.expect(b"mg m2 f t v\r\n", b"VA 2 f4294967295 t-1\r\nhi\r\n");
    // A negative TTL stores an already-expired item.
    c.expect(b"ms m2 2 T-1\r\nhi\r\n", b"HD\r\n");
    c.expect(b"mg m2 v\r\n", b"EN\r\n");
    // Return flags on ms: k, O, c (the new cas), in request order.
    c.expect(b"ms m3 2 k O55\r\nhi\r\n", b"HD km3 O55\r\n");
    c.send(b"ms m3 2 c\r\nho\r\n");
    let l = c.line();
    let cas: u64 = l.trim_end().strip_prefix("HD c").unwrap_or_else(|| panic!("{l:?}")).parse().unwrap();
    assert_eq!(cas_of(&mut c, "m3"), cas);
    // Quiet: HD is hidden, NS is not.
    c.expect(b"ms m3 2 q\r\nhu\r\nms m3 2 ME q\r\nhu\r\nmn\r\n", b"NS\r\nMN\r\n");
    c.expect(b"mg m3 v\r\n", b"VA 2\r\nhu\r\n");
    // Binary data with \r\n inside.
    c.expect(b"ms m4 4\r\n\r\n\r\n\r\n", b"HD\r\n");
    c.expect(b"mg m4 v\r\n", b"VA 4\r\n\r\n\r\n\r\n");
}

#[test]
fn ms_modes() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"ms k 2 MS\r\nhi\r\n", b"HD\r\n");
    c.expect(b"ms k 2 ME\r\nhi\r\n", b"NS\r\n"); // add: exists
    c.expect(b"ms k2 2 ME\r\nhi\r\n", b"HD\r\n"); // add: new
    c.expect(b"ms k2 2 MA\r\nzz\r\n", b"HD\r\n"); // append
    c.expect(b"ms k2 2 MP\r\naa\r\n", b"HD\r\n"); // prepend
    c.expect(b"mg k2 v\r\n", b"VA 6\r\naahizz\r\n");
    c.expect(b"ms none 2 MA\r\nqq\r\n", b"NS\r\n");
    c.expect(b"ms none 2 MP\r\nqq\r\n", b"NS\r\n");
    c.expect(b"ms none 2 MR\r\nzz\r\n", b"NS\r\n"); // replace: missing
    c.expect(b"mg none v\r\n", b"EN\r\n");
    c.expect(b"ms k2 2 MR\r\nyy\r\n", b"HD\r\n");
    c.expect(b"mg k2 v\r\n", b"VA 2\r\nyy\r\n");
    c.expect(b"ms k2 2 MZ\r\nhi\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n");
    c.expect(b"mg k2 v\r\n", b"VA 2\r\nyy\r\n");
}

#[test]
fn ms_compare_and_swap() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"ms k 2\r\nv1\r\n", b"HD\r\n");
    let cas = cas_of(&mut c, "k");
    c.expect(format!("ms k 2 C{}\r\nxx\r\n", cas + 1).as_bytes(), b"EX\r\n");
    c.expect(b"ms nokey 2 C1\r\nxx\r\n", b"NF\r\n");
    c.expect(b"mg k v\r\n", b"VA 2\r\nv1\r\n");
    c.expect(format!("ms k 2 C{cas}\r\nv2\r\n").as_bytes(), b"HD\r\n");
    c.expect(b"mg k v\r\n", b"VA 2\r\nv2\r\n");
    assert_ne!(cas_of(&mut c, "k"), cas);
    // The old cas is stale now; quiet mode still reports EX.
    c.expect(format!("ms k 2 C{cas} q\r\nv3\r\nmn\r\n").as_bytes(), b"EX\r\nMN\r\n");
    // The classic gets sees the same cas as mg c.
    let now = cas_of(&mut c, "k");
    c.expect(b"gets k\r\n", format!("VALUE k 0 2 {now}\r\nv2\r\nEND\r\n").as_bytes());
}

#[test]
fn md_delete() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"ms d1 1\r\nx\r\n", b"HD\r\n");
    c.expect(b"md d1\r\n", b"HD\r\n");
    c.expect(b"md d1\r\n", b"NF\r\n");
    c.expect(b"mg d1 v\r\n", b"EN\r\n");
    // q hides HD but not NF.
    c.expect(b"md d1 q\r\nmn\r\n", b"NF\r\nMN\r\n");
    c.expect(b"ms d1 1\r\nx\r\n", b"HD\r\n");
    c.expect(b"md d1 q\r\nmn\r\n", b"MN\r\n");
    c.expect(b"md d1 k O5\r\n", b"NF kd1 O5\r\n");
    c.expect(b"ms d1 1\r\nx\r\n", b"HD\r\n");
    c.expect(b"md d1 k O5\r\n", b"HD kd1 O5\r\n");
    // With a cas: a mismatch is EX, a match deletes.
    c.expect(b"ms d2 1\r\nx\r\n", b"HD\r\n");
    let cas = cas_of(&mut c, "d2");
    c.expect(format!("md d2 C{}\r\n", cas + 1).as_bytes(), b"EX\r\n");
    c.expect(format!("md d2 C{cas}\r\n").as_bytes(), b"HD\r\n");
    c.expect(b"mg d2\r\n", b"EN\r\n");
}

/// `md <key> x` (memcached >= 1.6.27): the value goes, the item stays, as an empty item with the flags
/// of `F` and the TTL of `T` (0 and never without them) and the same CAS (or `E`'s); with `I` it is also
/// marked stale, with a new CAS. memcached before 1.6.27 rejects `x`: the test is skipped there.
#[test]
fn md_x_removes_the_value_and_keeps_the_item() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"set k 77 100 5\r\nhello\r\n", b"STORED\r\n");
    c.send(b"md k x\r\n");
    let l = c.line();
    if kv_tests::targets_memcached() && l == "CLIENT_ERROR invalid or duplicate flag\r\n" {
        eprintln!("SKIP: this memcached predates md x (1.6.27)");
        return;
    }
    assert_eq!(l, "HD\r\n");
    let cas = cas_of(&mut c, "k");
    c.expect(b"mg k v f t s\r\n", b"VA 0 f0 t-1 s0\r\n\r\n");
    c.expect(b"get k\r\n", b"VALUE k 0 0\r\n\r\nEND\r\n");
    // F and T give the tombstone its flags and TTL; q hides HD; k and O are echoed.
    c.expect(b"set k 77 100 5\r\nhello\r\n", b"STORED\r\n");
    let cas = (cas, cas_of(&mut c, "k"));
    c.expect(b"md k x q F5 T30\r\nmn\r\n", b"MN\r\n");
    c.send(b"mg k v f t c\r\n");
    let l = c.line();
    assert!(l == format!("VA 0 f5 t30 c{}\r\n", cas.1) || l == format!("VA 0 f5 t29 c{}\r\n", cas.1), "{l:?}");
    assert_eq!(c.read_n(2), b"\r\n");
    c.expect(b"md k x k O9\r\n", b"HD kk O9\r\n");
    assert!(cas.1 > cas.0);
    // C must match; a missing key is NF.
    c.expect(format!("md k x C{}\r\n", cas.1 + 1).as_bytes(), b"EX\r\n");
    c.expect(format!("md k x C{}\r\n", cas.1).as_bytes(), b"HD\r\n");
    c.expect(b"md nokey x\r\n", b"NF\r\n");
    // E sets the CAS; I marks the tombstone stale (X; the next reader wins the recache token, W) and
    // gives it a new CAS.
    c.expect(b"md k x E999\r\n", b"HD\r\n");
    c.expect(b"mg k c v\r\n", b"VA 0 c999\r\n\r\n");
    c.expect(b"set k 1 0 2\r\nhi\r\n", b"STORED\r\n");
    let before = cas_of(&mut c, "k");
    c.expect(b"md k x I T40\r\n", b"HD\r\n");
    c.send(b"mg k v f c\r\n");
    let l = c.line();
    let rest = l.strip_prefix("VA 0 f0 c").and_then(|r| r.strip_suffix(" X W\r\n")).unwrap_or_else(|| panic!("{l:?}"));
    assert!(rest.parse::<u64>().unwrap() > before, "{l:?}");
    assert_eq!(c.read_n(2), b"\r\n");
    // Counted as delete hits (not with I) and misses, as memcached counts them.
    c.send(b"stats\r\n");
    let stats = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    for line in ["STAT delete_hits 5\r\n", "STAT delete_misses 2\r\n"] {
        assert!(stats.contains(line), "{line:?} not in {stats}");
    }
}

#[test]
fn ma_arithmetic() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"ma c1\r\n", b"NF\r\n");
    c.expect(b"ma c1 q\r\nmn\r\n", b"NF\r\nMN\r\n");
    // N autovivifies with J as the initial value (the delta is not applied on creation).
    c.expect(b"ma c1 N0 J13\r\n", b"HD\r\n");
    c.expect(b"mg c1 v\r\n", b"VA 2\r\n13\r\n");
    c.expect(b"ma c1\r\n", b"HD\r\n");
    c.expect(b"ma c1 v\r\n", b"VA 2\r\n15\r\n");
    c.expect(b"ma c1 D10 v\r\n", b"VA 2\r\n25\r\n");
    c.expect(b"ma c1 MD D100 v\r\n", b"VA 1\r\n0\r\n"); // decrement floors at 0
    let cas = cas_of(&mut c, "c1");
    c.expect(b"ma c1 MI D5 v t k\r\n", b"VA 1 t-1 kc1\r\n5\r\n");
    assert_ne!(cas_of(&mut c, "c1"), cas);
    c.expect(b"ma c1 q\r\nmn\r\n", b"MN\r\n");
    c.expect(b"mg c1 v\r\n", b"VA 1\r\n6\r\n");
    c.expect(b"ma c2 N0 J13 v\r\n", b"VA 2\r\n13\r\n");
    c.expect(b"ma c3 N0 J13 MD v\r\n", b"VA 2\r\n13\r\n");
    c.expect(b"ma c4 N0 v\r\n", b"VA 1\r\n0\r\n");
    // 64-bit wrap on increment.
    c.expect(b"ms c5 20\r\n18446744073709551615\r\n", b"HD\r\n");
    c.expect(b"ma c5 v\r\n", b"VA 1\r\n0\r\n");
    c.expect(b"ms c6 3\r\nabc\r\n", b"HD\r\n");
    c.expect(b"ma c6\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    c.expect(b"ma c1 Dabc\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
}

#[test]
fn base64_keys() {
    let s = Server::start(&[]);
    let mut c = s.client();
    // "Zm9v" is base64 for "foo": the same item as the plain key.
    c.expect(b"ms Zm9v 2 b\r\nhi\r\n", b"HD\r\n");
    c.expect(b"mg foo v\r\n", b"VA 2\r\nhi\r\n");
    c.expect(b"get foo\r\n", b"VALUE foo 0 2\r\nhi\r\nEND\r\n");
    // k returns the key still encoded, and b is appended to the flags.
    c.expect(b"mg Zm9v b v k\r\n", b"VA 2 kZm9v b\r\nhi\r\n");
    c.expect(b"mg Zm9v b k\r\n", b"HD kZm9v b\r\n");
    c.expect(b"ms Zm9v 2 b k\r\nho\r\n", b"HD kZm9v b\r\n");
    c.expect(b"mg !!! b v\r\n", b"CLIENT_ERROR error decoding key\r\n");
    // A binary key (bytes 0x00 0xff) only reachable through base64.
    c.expect(b"ms AP8= 1 b\r\nz\r\n", b"HD\r\n");
    c.expect(b"mg AP8= b v\r\n", b"VA 1\r\nz\r\n");
    c.expect(b"md Zm9v b\r\n", b"HD\r\n");
    c.expect(b"mg foo v\r\n", b"EN\r\n");
}

/// Base64 keys that are not canonical base64, decoded as memcached 1.6.18 decodes them: bytes outside
/// the alphabet are skipped, `=` is zero bits wherever it stands and a group holding one ends the key,
/// trailing bits are ignored; a key is echoed (`k`) as its decoded bytes encoded again. Anything else
/// is refused before the command runs.
#[test]
fn base64_keys_decoded_as_memcached() {
    const EXCHANGES: &[(&str, &str)] = &[
        // Stored with `b`: memcached then echoes the key encoded on hits too.
        ("ms Zm9v 2 b\r\nhi\r\n", "HD\r\n"),
        // All "foo".
        ("mg Zm!9v b k v\r\n", "VA 2 kZm9v b\r\nhi\r\n"),
        ("mg Z.m9v b k v\r\n", "VA 2 kZm9v b\r\nhi\r\n"),
        ("mg Zm9v! b k v\r\n", "VA 2 kZm9v b\r\nhi\r\n"),
        // "fo", "fo", "f\0", "\x01\x99": all misses.
        ("mg Zm8=Zm9v b k v\r\n", "EN kZm8= b\r\n"),
        ("mg Zm9= b k v\r\n", "EN kZm8= b\r\n"),
        ("mg Zg=A b k v\r\n", "EN kZgA= b\r\n"),
        ("mg =Zm9 b k v\r\n", "EN kAZk= b\r\n"),
        // Not whole groups of four, nothing from the alphabet, three `=` in a group.
        ("mg Zm9v= b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg Zm9 b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg Zm9vZ b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg Zm9vYQ= b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg !!!! b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg !!! b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg Z=== b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        ("mg ==== b v\r\n", "CLIENT_ERROR error decoding key\r\n"),
        // q does not hide it, ms swallows its data block, md and ma call it a flag error, me a bad line.
        ("mg Zm9v= b q\r\nmn\r\n", "CLIENT_ERROR error decoding key\r\nMN\r\n"),
        ("ms Zm9 2 b\r\nho\r\nmn\r\n", "CLIENT_ERROR error decoding key\r\nMN\r\n"),
        ("md Zm9v= b\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("ma bg= b v\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("me Zm9 b\r\n", "CLIENT_ERROR bad command line format\r\n"),
        ("mg Zm9v b b v\r\n", "CLIENT_ERROR duplicate flag\r\n"),
        // The lenient forms name the same item for ms, md and ma.
        ("ms Zm!9v 2 b k\r\nho\r\n", "HD kZm9v b\r\n"),
        ("get foo\r\n", "VALUE foo 0 2\r\nho\r\nEND\r\n"),
        ("md Zm9v! b k\r\n", "HD kZm9v b\r\n"),
        ("get foo\r\n", "END\r\n"),
        ("md Zm9= b\r\n", "NF\r\n"),
        ("ms bg== 1 b\r\n5\r\n", "HD\r\n"),
        ("ma b!g== b v k\r\n", "VA 1 kbg== b\r\n6\r\n"),
        ("get n\r\n", "VALUE n 0 1\r\n6\r\nEND\r\n"),
    ];
    let s = Server::start(&[]);
    let mut c = s.client();
    for (req, reply) in EXCHANGES {
        c.expect(req.as_bytes(), reply.as_bytes());
    }
    // The 250-byte limit is on the encoded key: 248 bytes (186 decoded) are fine, 252 are not.
    let ok = "QUFB".repeat(62);
    c.expect(format!("ms {ok} 1 b k\r\nz\r\n").as_bytes(), format!("HD k{ok} b\r\n").as_bytes());
    c.expect(format!("mg {ok} b s v\r\n").as_bytes(), b"VA 1 s1\r\nz\r\n");
    let long = "QUFB".repeat(63);
    c.expect(format!("mg {long} b v\r\n").as_bytes(), b"CLIENT_ERROR bad command line format\r\n");
}

#[test]
fn mn_and_errors() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"mn\r\n", b"MN\r\n");
    c.expect(b"ms mm abc\r\nhi\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n");
    c.expect(b"ms mm\r\n", b"CLIENT_ERROR bad command line format\r\n");
    // An invalid flag after the length: the data block is swallowed.
    c.expect(b"ms mm 2 S2\r\nqq\r\nmn\r\n", b"CLIENT_ERROR invalid flag\r\nMN\r\n");
    c.expect(b"mg mm v\r\n", b"EN\r\n");
}
