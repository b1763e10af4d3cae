//! The classic text protocol, command by command, with exact replies (checked against memcached
//! 1.6.18: `KV_TEST_PEER=memcached cargo test --release -p kv-tests`).

use std::io::Read as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_tests::{Client, Server};

/// `gets key` for a hit: returns (flags, value, cas).
fn gets(c: &mut Client, key: &str) -> (u32, Vec<u8>, u64) {
    c.send(format!("gets {key}\r\n").as_bytes());
    let header = c.line();
    let parts: Vec<&str> = header.trim_end().split(' ').collect();
    assert_eq!(parts.len(), 5, "gets header {header:?}");
    assert_eq!((parts[0], parts[1]), ("VALUE", key));
    let len: usize = parts[3].parse().unwrap();
    let mut v = c.read_n(len + 2);
    assert_eq!(&v[len..], b"\r\n");
    v.truncate(len);
    assert_eq!(c.line(), "END\r\n");
    (parts[2].parse().unwrap(), v, parts[4].parse().unwrap())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Polls `get key` until it misses; panics if it is still there after `limit`.
fn wait_gone(c: &mut Client, key: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while c.get(key).is_some() {
        assert!(t0.elapsed() < limit, "{key} still present after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

#[test]
fn get_single_multi_and_miss() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"get nothing\r\n", b"END\r\n");
    c.expect(b"set g1 5 0 3\r\none\r\n", b"STORED\r\n");
    c.expect(b"set g2 0 0 3\r\ntwo\r\n", b"STORED\r\n");
    c.expect(b"get g1\r\n", b"VALUE g1 5 3\r\none\r\nEND\r\n");
    // Misses are skipped; a key asked twice is returned twice, in request order.
    c.expect(
        b"get g2 nothing g1 g2\r\n",
        b"VALUE g2 0 3\r\ntwo\r\nVALUE g1 5 3\r\none\r\nVALUE g2 0 3\r\ntwo\r\nEND\r\n",
    );
    c.expect(b"get nothing other\r\n", b"END\r\n");
    // `get` with no key is an unknown command to memcached.
    c.expect(b"get\r\n", b"ERROR\r\n");
    let (_, _, cas1) = gets(&mut c, "g1");
    let (_, _, cas2) = gets(&mut c, "g2");
    let want = format!("VALUE g1 5 3 {cas1}\r\none\r\nVALUE g2 0 3 {cas2}\r\ntwo\r\nEND\r\n");
    c.expect(b"gets g1 miss g2\r\n", want.as_bytes());
}

#[test]
fn storage_commands() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"add st 1 0 1\r\na\r\n", b"STORED\r\n");
    c.expect(b"add st 2 0 1\r\nb\r\n", b"NOT_STORED\r\n");
    c.expect(b"get st\r\n", b"VALUE st 1 1\r\na\r\nEND\r\n");
    c.expect(b"replace st 3 0 2\r\ncc\r\n", b"STORED\r\n");
    c.expect(b"replace st_missing 3 0 2\r\ncc\r\n", b"NOT_STORED\r\n");
    c.expect(b"get st_missing\r\n", b"END\r\n");
    // append/prepend keep the flags of the stored item and ignore the ones given.
    c.expect(b"append st 9 0 3\r\nEND\r\n", b"STORED\r\n");
    c.expect(b"prepend st 9 0 3\r\nBEG\r\n", b"STORED\r\n");
    c.expect(b"get st\r\n", b"VALUE st 3 8\r\nBEGccEND\r\nEND\r\n");
    c.expect(b"append st_missing 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    c.expect(b"prepend st_missing 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    c.expect(b"get st_missing\r\n", b"END\r\n");
    c.expect(b"set st 4 0 0\r\n\r\n", b"STORED\r\n");
    c.expect(b"get st\r\n", b"VALUE st 4 0\r\n\r\nEND\r\n");
}

#[test]
fn cas_semantics() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("ca", b"1");
    c.set("cb", b"1");
    let (_, _, a1) = gets(&mut c, "ca");
    let (_, _, b1) = gets(&mut c, "cb");
    assert_ne!(a1, b1, "cas values are unique across items");
    // A read does not change the cas.
    assert_eq!(gets(&mut c, "ca").2, a1);
    c.expect(b"append ca 0 0 1\r\n2\r\n", b"STORED\r\n");
    let (_, v, a2) = gets(&mut c, "ca");
    assert_eq!(v, b"12");
    assert_ne!(a2, a1, "append changes the cas");
    assert_ne!(a2, b1);
    c.expect(format!("cas ca 0 0 1 {a1}\r\nx\r\n").as_bytes(), b"EXISTS\r\n");
    c.expect(b"get ca\r\n", b"VALUE ca 0 2\r\n12\r\nEND\r\n");
    c.expect(format!("cas ca 7 0 1 {a2}\r\ny\r\n").as_bytes(), b"STORED\r\n");
    let (f, v, a3) = gets(&mut c, "ca");
    assert_eq!((f, v.as_slice()), (7, &b"y"[..]));
    assert!(a3 != a2 && a3 != a1 && a3 != b1);
    // The same cas twice: the second one lost the race.
    c.expect(format!("cas ca 0 0 1 {a2}\r\nz\r\n").as_bytes(), b"EXISTS\r\n");
    c.expect(b"cas nokey 0 0 1 1\r\nz\r\n", b"NOT_FOUND\r\n");
    c.expect(b"get nokey\r\n", b"END\r\n");
    // incr and set change it too.
    c.set("cn", b"5");
    let (_, _, n1) = gets(&mut c, "cn");
    c.expect(b"incr cn 1\r\n", b"6\r\n");
    let (_, _, n2) = gets(&mut c, "cn");
    assert_ne!(n1, n2);
    c.set("cn", b"5");
    assert_ne!(gets(&mut c, "cn").2, n2);
    // touch does not.
    let (_, _, n3) = gets(&mut c, "cn");
    c.expect(b"touch cn 100\r\n", b"TOUCHED\r\n");
    assert_eq!(gets(&mut c, "cn").2, n3);
}

#[test]
fn delete() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("dk", b"v");
    c.expect(b"delete dk\r\n", b"DELETED\r\n");
    c.expect(b"get dk\r\n", b"END\r\n");
    c.expect(b"delete dk\r\n", b"NOT_FOUND\r\n");
    // memcached still accepts a legacy time argument of 0, but nothing else.
    c.set("dk", b"v");
    c.expect(b"delete dk 0\r\n", b"DELETED\r\n");
    c.expect(b"delete dk 5\r\n", b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
}

#[test]
fn incr_decr() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("n", b"9");
    c.expect(b"incr n 1\r\n", b"10\r\n");
    c.expect(b"get n\r\n", b"VALUE n 0 2\r\n10\r\nEND\r\n");
    c.expect(b"incr n 18446744073709551600\r\n", b"18446744073709551610\r\n");
    c.expect(b"decr n 18446744073709551609\r\n", b"1\r\n");
    c.expect(b"decr n 5\r\n", b"0\r\n");
    c.expect(b"decr n 1\r\n", b"0\r\n");
    c.expect(b"incr missing 1\r\n", b"NOT_FOUND\r\n");
    c.expect(b"decr missing 1\r\n", b"NOT_FOUND\r\n");
    c.expect(b"get missing\r\n", b"END\r\n");
    // 64-bit wrap-around on incr.
    c.set("w", b"18446744073709551615");
    c.expect(b"incr w 1\r\n", b"0\r\n");
    // memcached rewrites a shorter result in place, space-padded to the old length; a server
    // that stores the bare number is just as valid for clients (they parse with strtoull).
    c.send(b"get w\r\n");
    let reply = c.read_until(b"END\r\n");
    assert!(
        reply == b"VALUE w 0 1\r\n0\r\nEND\r\n" || reply == b"VALUE w 0 20\r\n0                   \r\nEND\r\n",
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    c.expect(b"incr w 5\r\n", b"5\r\n");
    c.set("w", b"18446744073709551615");
    c.expect(b"incr w 18446744073709551615\r\n", b"18446744073709551614\r\n");
    // Non-numeric values and bad deltas.
    c.set("s", b"abc");
    c.expect(b"incr s 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    c.expect(b"decr s 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    c.set("s", b"");
    c.expect(b"incr s 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    c.expect(b"incr n abc\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n");
    c.expect(b"incr n -1\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n");
    c.expect(b"decr n 18446744073709551616\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n");
    c.expect(b"incr n\r\n", b"ERROR\r\n");
    // The connection is still fine.
    c.expect(b"incr n 2\r\n", b"2\r\n");
}

#[test]
fn touch_gat_gats() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"set t1 3 0 2\r\nv1\r\n", b"STORED\r\n");
    c.set("t2", b"v2");
    c.expect(b"touch t1 100\r\n", b"TOUCHED\r\n");
    c.expect(b"touch nokey 100\r\n", b"NOT_FOUND\r\n");
    c.expect(b"gat 100 t1 nokey t2\r\n", b"VALUE t1 3 2\r\nv1\r\nVALUE t2 0 2\r\nv2\r\nEND\r\n");
    c.expect(b"gat 100 nokey\r\n", b"END\r\n");
    let (_, _, cas) = gets(&mut c, "t1");
    let want = format!("VALUE t1 3 2 {cas}\r\nv1\r\nEND\r\n");
    c.expect(b"gats 0 t1\r\n", want.as_bytes());
    // A negative exptime through touch / gat expires the item (gat still returns it once).
    c.expect(b"touch t1 -1\r\n", b"TOUCHED\r\n");
    c.expect(b"get t1\r\n", b"END\r\n");
    c.expect(b"gat -1 t2\r\n", b"VALUE t2 0 2\r\nv2\r\nEND\r\n");
    c.expect(b"get t2\r\n", b"END\r\n");
    // gat/touch with a 1 s exptime: the item goes away.
    c.set("t3", b"v3");
    c.expect(b"gat 1 t3\r\n", b"VALUE t3 0 2\r\nv3\r\nEND\r\n");
    wait_gone(&mut c, "t3", Duration::from_secs(4));
}

#[test]
fn flush_all() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("f1", b"a");
    c.set("f2", b"b");
    c.expect(b"flush_all\r\n", b"OK\r\n");
    c.expect(b"get f1 f2\r\n", b"END\r\n");
    // Writes after the flush are kept.
    c.set("f1", b"c");
    c.expect(b"get f1\r\n", b"VALUE f1 0 1\r\nc\r\nEND\r\n");
    c.expect(b"flush_all 0\r\n", b"OK\r\n");
    c.expect(b"get f1\r\n", b"END\r\n");
}

#[test]
fn flush_all_delayed() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("fd", b"a");
    c.expect(b"flush_all 2\r\n", b"OK\r\n");
    // Still there right after; gone within the delay (memcached's clock has 1 s granularity, so
    // it may go a little before 2 s).
    c.expect(b"get fd\r\n", b"VALUE fd 0 1\r\na\r\nEND\r\n");
    wait_gone(&mut c, "fd", Duration::from_secs(4));
}

#[test]
fn version_verbosity_stats() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.send(b"version\r\n");
    let v = c.line();
    assert!(v.starts_with("VERSION ") && v.len() > "VERSION \r\n".len(), "{v:?}");
    c.assert_silent(Duration::from_millis(30));
    c.expect(b"verbosity 1\r\n", b"OK\r\n");
    c.expect(b"verbosity 0\r\n", b"OK\r\n");
    c.set("sk", b"v");
    c.expect(b"get sk\r\n", b"VALUE sk 0 1\r\nv\r\nEND\r\n");
    c.send(b"stats\r\n");
    let stats = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    for l in stats.lines() {
        assert!(l == "END" || l.starts_with("STAT "), "stats line {l:?}");
    }
    for want in [
        "STAT pid ",
        "STAT uptime ",
        "STAT curr_items ",
        "STAT get_hits ",
        "STAT get_misses ",
        "STAT curr_connections ",
    ] {
        assert!(stats.contains(want), "{want:?} missing from {stats}");
    }
    assert!(stats.contains("STAT curr_items 1\r\n"), "{stats}");
    assert!(stats.contains("STAT get_hits 1\r\n"), "{stats}");
    assert!(stats.contains(&format!("STAT pid {}\r\n", s.child.id())), "{stats}");
    c.assert_silent(Duration::from_millis(30));
    c.send(b"stats settings\r\n");
    let settings = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    assert!(settings.contains("STAT maxbytes "), "{settings}");
    assert!(settings.contains("STAT item_size_max "), "{settings}");
    c.assert_silent(Duration::from_millis(30));
}

#[test]
fn stats_settings_reflect_flags() {
    let s = Server::start(&["-m", "32", "-I", "512k"]);
    let mut c = s.client();
    c.send(b"stats settings\r\n");
    let settings = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    assert!(settings.contains("STAT maxbytes 33554432\r\n"), "{settings}");
    assert!(settings.contains("STAT item_size_max 524288\r\n"), "{settings}");
}

#[test]
fn quit_closes() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("q", b"v");
    c.send(b"quit\r\n");
    let mut rest = Vec::new();
    c.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.stream.read_to_end(&mut rest).expect("EOF after quit");
    assert!(rest.is_empty(), "bytes after quit: {:?}", String::from_utf8_lossy(&rest));
    // The rest of the server is unaffected.
    s.client().expect(b"get q\r\n", b"VALUE q 0 1\r\nv\r\nEND\r\n");
}

#[test]
fn exptime_forms() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let now = unix_now();
    c.expect(b"set rel 0 100 1\r\nr\r\n", b"STORED\r\n");
    c.expect(b"set neg 0 -1 1\r\nn\r\n", b"STORED\r\n");
    c.expect(format!("set past 0 {} 1\r\np\r\n", now - 100).as_bytes(), b"STORED\r\n");
    c.expect(format!("set fut 0 {} 1\r\nf\r\n", now + 100).as_bytes(), b"STORED\r\n");
    let set_at = unix_now();
    c.expect(b"set short 0 1 1\r\ns\r\n", b"STORED\r\n");
    c.expect(b"get rel neg past fut\r\n", b"VALUE rel 0 1\r\nr\r\nVALUE fut 0 1\r\nf\r\nEND\r\n");
    // add over an expired item succeeds.
    c.expect(b"add neg 0 0 1\r\nN\r\n", b"STORED\r\n");
    c.expect(b"get neg\r\n", b"VALUE neg 0 1\r\nN\r\nEND\r\n");
    // Clocks tick in whole seconds (memcached's too): exptime 1 lives until the next second starts, so it
    // can go within a millisecond of the set, but never within the second it was set in (memcached's
    // seconds count from its start, not Unix seconds, so only the limit is checked there).
    let gone_after = wait_gone(&mut c, "short", Duration::from_secs(4));
    if !kv_tests::targets_memcached() {
        assert!(unix_now() > set_at, "exptime 1 expired within the second it was set in ({gone_after:?})");
    }
    c.expect(b"get rel fut\r\n", b"VALUE rel 0 1\r\nr\r\nVALUE fut 0 1\r\nf\r\nEND\r\n");
}

#[test]
fn flags_32_bit() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(b"set fl 4294967295 0 1\r\nx\r\n", b"STORED\r\n");
    c.expect(b"get fl\r\n", b"VALUE fl 4294967295 1\r\nx\r\nEND\r\n");
    c.expect(b"set fl 0 0 1\r\nx\r\n", b"STORED\r\n");
    c.expect(b"get fl\r\n", b"VALUE fl 0 1\r\nx\r\nEND\r\n");
    // (memcached 1.6.18 silently truncates 4294967296 to 0, so flags beyond 32 bits go untested.)
    c.expect(b"set fl -1 0 1\r\n", b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"get fl\r\n", b"VALUE fl 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn binary_values() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let mut value: Vec<u8> = (0..=255u8).collect();
    value.extend_from_slice(b"\r\nEND\r\n\r\nVALUE x 0 1\r\n\0");
    c.set("bin", &value);
    assert_eq!(c.get("bin").unwrap(), value);
    let mut want = format!("VALUE bin 0 {}\r\n", value.len()).into_bytes();
    want.extend_from_slice(&value);
    want.extend_from_slice(b"\r\nEND\r\n");
    c.expect(b"get bin\r\n", &want);
    c.expect(b"set crlf 0 0 2\r\n\r\n\r\n", b"STORED\r\n");
    c.expect(b"get crlf\r\n", b"VALUE crlf 0 2\r\n\r\n\r\nEND\r\n");
}

#[test]
fn key_length_limit() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let k250 = "k".repeat(250);
    let k251 = "k".repeat(251);
    c.set(&k250, b"ok");
    c.expect(format!("get {k250}\r\n").as_bytes(), format!("VALUE {k250} 0 2\r\nok\r\nEND\r\n").as_bytes());
    // Too long: rejected on the command line; memcached does not swallow a data block here.
    c.expect(format!("set {k251} 0 0 2\r\n").as_bytes(), b"CLIENT_ERROR bad command line format\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
    for cmd in ["get", "delete"] {
        c.expect(format!("{cmd} {k251}\r\n").as_bytes(), b"CLIENT_ERROR bad command line format\r\n");
    }
    c.expect(format!("incr {k251} 1\r\n").as_bytes(), b"CLIENT_ERROR bad command line format\r\n");
    c.expect(format!("touch {k251} 1\r\n").as_bytes(), b"CLIENT_ERROR bad command line format\r\n");
    c.expect(format!("get {k250}\r\n").as_bytes(), format!("VALUE {k250} 0 2\r\nok\r\nEND\r\n").as_bytes());
}
