use super::*;

const LIM: Limits = Limits { item_size_max: 1024 * 1024 };

/// Parses, dropping the recorded order of return flags so table entries can be written as plain
/// struct literals (`meta_return_flags_keep_request_order` covers the order).
fn p(buf: &[u8]) -> Parsed<'_> {
    match parse(buf, &LIM) {
        Parsed::Command { cmd, consumed } => Parsed::Command { cmd: without_order(cmd), consumed },
        other => other,
    }
}

fn without_order(cmd: Command<'_>) -> Command<'_> {
    fn strip(mut f: MetaFlags<'_>) -> MetaFlags<'_> {
        f.ret_order = [0; 8];
        f.ret_count = 0;
        f
    }
    match cmd {
        Command::MetaGet { key, flags } => Command::MetaGet { key, flags: strip(flags) },
        Command::MetaSet { key, data, flags } => Command::MetaSet { key, data, flags: strip(flags) },
        Command::MetaDelete { key, flags } => Command::MetaDelete { key, flags: strip(flags) },
        Command::MetaArith { key, flags } => Command::MetaArith { key, flags: strip(flags) },
        other => other,
    }
}

#[test]
fn meta_return_flags_keep_request_order() {
    match parse(b"mg k t v O1 q c k s f h l\r\n", &LIM) {
        Parsed::Command { cmd: Command::MetaGet { flags, .. }, .. } => {
            assert_eq!(&flags.ret_order[..flags.ret_count as usize], b"tOcksfhl");
        }
        other => panic!("{other:?}"),
    }
}

/// Asserts `buf` is exactly one command and returns it.
fn cmd(buf: &[u8]) -> Command<'_> {
    match p(buf) {
        Parsed::Command { cmd, consumed } => {
            assert_eq!(consumed, buf.len(), "consumed for {:?}", String::from_utf8_lossy(buf));
            cmd
        }
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Err<'a> {
    reply: &'static [u8],
    consumed: usize,
    swallow: usize,
    close: bool,
    key: Option<&'a [u8]>,
}

fn err_with(buf: &[u8], lim: Limits) -> Err<'_> {
    match parse(buf, &lim) {
        Parsed::Error { reply, consumed, swallow, close, too_large_key } => {
            Err { reply, consumed, swallow, close, key: too_large_key }
        }
        other => panic!("{:?}: expected error, got {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn err(buf: &[u8]) -> Err<'_> {
    err_with(buf, LIM)
}

/// A plain error reply for a one-line request.
fn plain(reply: &'static [u8], consumed: usize) -> Err<'static> {
    Err { reply, consumed, swallow: 0, close: false, key: None }
}

fn keys(raw: &[u8]) -> Keys<'_> {
    Keys { raw }
}

fn store<'a>(mode: StoreMode, key: &'a [u8], data: &'a [u8]) -> Command<'a> {
    Command::Store { mode, key, flags: 0, exptime: 0, cas_unique: 0, data, noreply: false }
}

fn mf<'a>() -> MetaFlags<'a> {
    MetaFlags::default()
}

const ERROR: &[u8] = b"ERROR\r\n";
const BAD: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
const EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
const DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
const CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
const USAGE: &[u8] = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";

fn valid_cases() -> Vec<(&'static [u8], Command<'static>)> {
    use Command::*;
    use StoreMode::*;
    vec![
        (b"get foo\r\n", Get { keys: keys(b"foo"), cas: false }),
        (b"get foo\n", Get { keys: keys(b"foo"), cas: false }),
        (b"get a b  c\r\n", Get { keys: keys(b"a b  c"), cas: false }),
        (b"  get   a  \r\n", Get { keys: keys(b"a"), cas: false }),
        (b"bget a\r\n", Get { keys: keys(b"a"), cas: false }),
        (b"gets a b\r\n", Get { keys: keys(b"a b"), cas: true }),
        (b"gat 10 a b\r\n", Gat { exptime: 10, keys: keys(b"a b"), cas: false }),
        (b"gats -1 a\r\n", Gat { exptime: -1, keys: keys(b"a"), cas: true }),
        // memcached answers a key-less gat with just END.
        (b"gat 10\r\n", Gat { exptime: 10, keys: keys(b""), cas: false }),
        (b"set k 0 0 5\r\nhello\r\n", store(Set, b"k", b"hello")),
        (b"set k 0 0 0\r\n\r\n", store(Set, b"k", b"")),
        (b"add k 0 0 1\r\nx\r\n", store(Add, b"k", b"x")),
        (b"replace k 0 0 1\r\nx\r\n", store(Replace, b"k", b"x")),
        (b"append k 0 0 1\r\nx\r\n", store(Append, b"k", b"x")),
        (b"prepend k 0 0 1\r\nx\r\n", store(Prepend, b"k", b"x")),
        (
            b"set k 4294967295 -1 2 noreply\r\nab\r\n",
            Store { mode: Set, key: b"k", flags: u32::MAX, exptime: -1, cas_unique: 0, data: b"ab", noreply: true },
        ),
        // A 6th token that is not noreply is ignored, as in memcached.
        (b"set k 0 0 1 junk\r\nx\r\n", store(Set, b"k", b"x")),
        (
            b"cas k 3 100 2 18446744073709551615\r\nab\r\n",
            Store { mode: Cas, key: b"k", flags: 3, exptime: 100, cas_unique: u64::MAX, data: b"ab", noreply: false },
        ),
        (
            b"cas k 0 0 1 7 noreply\r\nx\r\n",
            Store { mode: Cas, key: b"k", flags: 0, exptime: 0, cas_unique: 7, data: b"x", noreply: true },
        ),
        // Data blocks may hold \r\n and any byte; the line may end in a bare \n.
        (b"set k 0 0 4\r\n\r\n\r\n\r\n", store(Set, b"k", b"\r\n\r\n")),
        (b"set k 0 0 3\n\0\xff\n\r\n", store(Set, b"k", b"\0\xff\n")),
        (b"delete k\r\n", Delete { key: b"k", noreply: false }),
        (b"delete k 0\r\n", Delete { key: b"k", noreply: false }),
        (b"delete k noreply\r\n", Delete { key: b"k", noreply: true }),
        (b"delete k 0 noreply\r\n", Delete { key: b"k", noreply: true }),
        (b"incr k 1\r\n", Arith { key: b"k", incr: true, delta: 1, noreply: false }),
        (b"decr k 18446744073709551615 noreply\r\n", Arith { key: b"k", incr: false, delta: u64::MAX, noreply: true }),
        (b"incr k 5 junk\r\n", Arith { key: b"k", incr: true, delta: 5, noreply: false }),
        (b"touch k 10\r\n", Touch { key: b"k", exptime: 10, noreply: false }),
        (b"touch k -1 noreply\r\n", Touch { key: b"k", exptime: -1, noreply: true }),
        (b"flush_all\r\n", FlushAll { delay: 0, noreply: false }),
        (b"flush_all noreply\r\n", FlushAll { delay: 0, noreply: true }),
        (b"flush_all 10\r\n", FlushAll { delay: 10, noreply: false }),
        (b"flush_all 10 noreply\r\n", FlushAll { delay: 10, noreply: true }),
        (b"flush_all -5 x\r\n", FlushAll { delay: -5, noreply: false }),
        (b"version\r\n", Version),
        (b"version extra\r\n", Version),
        (b"verbosity 1\r\n", Verbosity { level: 1, noreply: false }),
        (b"verbosity 4294967295 noreply\r\n", Verbosity { level: u32::MAX, noreply: true }),
        (b"stats\r\n", Stats { arg: None }),
        (b"stats   \r\n", Stats { arg: None }),
        (b"stats items\r\n", Stats { arg: Some(b"items") }),
        (b"stats detail on \r\n", Stats { arg: Some(b"detail on") }),
        (b"quit\r\n", Quit),
        (b"mn\r\n", MetaNoop),
        (b"mn junk\r\n", MetaNoop),
        (b"me k\r\n", MetaDebug { key: b"k" }),
        (b"mg k\r\n", MetaGet { key: b"k", flags: mf() }),
        (
            b"mg k v f t c s k O123 q\r\n",
            MetaGet {
                key: b"k",
                flags: MetaFlags {
                    return_value: true,
                    return_flags: true,
                    return_ttl: true,
                    return_cas: true,
                    return_size: true,
                    return_key: true,
                    opaque: Some(b"123"),
                    quiet: true,
                    ..mf()
                },
            },
        ),
        (
            b"mg k h l u E5 N30 R-1 T0\r\n",
            MetaGet {
                key: b"k",
                flags: MetaFlags {
                    return_hit: true,
                    return_last_access: true,
                    no_lru_bump: true,
                    explicit_cas: Some(5),
                    vivify_ttl: Some(30),
                    recache_ttl: Some(-1),
                    set_ttl: Some(0),
                    ..mf()
                },
            },
        ),
        // Proxy hints are accepted and ignored; only a flag's first byte counts.
        (b"mg k P L vxyz\r\n", MetaGet { key: b"k", flags: MetaFlags { return_value: true, ..mf() } }),
        (
            b"mg Zm9v b v\r\n",
            MetaGet { key: b"Zm9v", flags: MetaFlags { base64_key: true, return_value: true, ..mf() } },
        ),
        (
            b"ms Zm9v 2 T60 F5 C9 E10 I MS c k s O1 q b\r\nhi\r\n",
            MetaSet {
                key: b"Zm9v",
                data: b"hi",
                flags: MetaFlags {
                    set_ttl: Some(60),
                    client_flags: Some(5),
                    compare_cas: Some(9),
                    explicit_cas: Some(10),
                    invalidate: true,
                    mode: Some(b'S'),
                    return_cas: true,
                    return_key: true,
                    return_size: true,
                    opaque: Some(b"1"),
                    quiet: true,
                    base64_key: true,
                    ..mf()
                },
            },
        ),
        (b"ms k 0\r\n\r\n", MetaSet { key: b"k", data: b"", flags: mf() }),
        (
            b"ms k 2 MA N10\r\n\r\n\r\n",
            MetaSet { key: b"k", data: b"\r\n", flags: MetaFlags { mode: Some(b'A'), vivify_ttl: Some(10), ..mf() } },
        ),
        (
            b"md k q I T30 C3 x k O9\r\n",
            MetaDelete {
                key: b"k",
                flags: MetaFlags {
                    quiet: true,
                    invalidate: true,
                    set_ttl: Some(30),
                    compare_cas: Some(3),
                    remove_value: true,
                    return_key: true,
                    opaque: Some(b"9"),
                    ..mf()
                },
            },
        ),
        (
            b"ma k MD D18446744073709551615 J7 N0 v t c\r\n",
            MetaArith {
                key: b"k",
                flags: MetaFlags {
                    mode: Some(b'D'),
                    delta: Some(u64::MAX),
                    initial: Some(7),
                    vivify_ttl: Some(0),
                    return_value: true,
                    return_ttl: true,
                    return_cas: true,
                    ..mf()
                },
            },
        ),
        (b"ma k M+\r\n", MetaArith { key: b"k", flags: MetaFlags { mode: Some(b'+'), ..mf() } }),
        (b"ma k M-\r\n", MetaArith { key: b"k", flags: MetaFlags { mode: Some(b'-'), ..mf() } }),
        (b"ma k MI\r\n", MetaArith { key: b"k", flags: MetaFlags { mode: Some(b'I'), ..mf() } }),
    ]
}

#[test]
fn valid_commands() {
    for (buf, want) in valid_cases() {
        assert_eq!(cmd(buf), want, "{:?}", String::from_utf8_lossy(buf));
    }
}

#[test]
fn every_split_point_is_incomplete_then_same_command() {
    for (buf, want) in valid_cases() {
        for k in 0..buf.len() {
            assert_eq!(p(&buf[..k]), Parsed::Incomplete, "{:?} cut at {k}", String::from_utf8_lossy(buf));
        }
        // Trailing bytes of a following request do not change the result.
        let mut more = buf.to_vec();
        more.extend_from_slice(b"get x");
        assert_eq!(p(&more), Parsed::Command { cmd: want, consumed: buf.len() });
    }
}

#[test]
fn pipelined_buffer_is_consumed_exactly() {
    let cases = valid_cases();
    let mut all = Vec::new();
    for (buf, _) in &cases {
        all.extend_from_slice(buf);
    }
    let mut off = 0;
    for (buf, want) in &cases {
        match p(&all[off..]) {
            Parsed::Command { cmd, consumed } => {
                assert_eq!(cmd, *want);
                assert_eq!(consumed, buf.len());
                off += consumed;
            }
            other => panic!("at {off}: {other:?}"),
        }
    }
    assert_eq!(off, all.len());
    assert_eq!(p(&all[off..]), Parsed::Incomplete);
}

#[test]
fn pipelined_errors_resume_at_the_right_place() {
    // Bad line: memcached does not know the length, so the data is read as a command.
    let buf = b"set k 0 0 x\r\nhello\r\nget k\r\n";
    assert_eq!(err(buf), plain(BAD, 13));
    assert_eq!(err(&buf[13..]), plain(ERROR, 7));
    assert_eq!(cmd(&buf[20..]), Command::Get { keys: keys(b"k"), cas: false });
    // Bad data chunk: the whole block is consumed.
    let buf = b"set k 0 0 3\r\nhelloget k\r\n";
    assert_eq!(err(buf), plain(CHUNK, 18));
    assert_eq!(cmd(&buf[18..]), Command::Get { keys: keys(b"k"), cas: false });
}

fn error_cases() -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        // Unknown / malformed commands.
        (b"\r\n", ERROR),
        (b"\n", ERROR),
        (b"   \r\n", ERROR),
        (b"g\r\n", ERROR),
        (b"foo\r\n", ERROR),
        (b"GET k\r\n", ERROR),
        (b"getx k\r\n", ERROR),
        (b"mx k\r\n", ERROR),
        (b"m\r\n", ERROR),
        (b"shutdown\r\n", ERROR),
        (b"set\tk 0 0 1\r\n", ERROR),
        // Wrong token counts (memcached's WANT_TOKENS).
        (b"get\r\n", ERROR),
        (b"gets   \r\n", ERROR),
        (b"gat\r\n", ERROR),
        (b"set k 0 0\r\n", ERROR),
        (b"set k 0 0 1 noreply x\r\n", ERROR),
        (b"cas k 0 0 1\r\n", ERROR),
        (b"cas k 0 0 1 2 noreply x\r\n", ERROR),
        (b"delete\r\n", ERROR),
        (b"delete a b c d\r\n", ERROR),
        (b"incr k\r\n", ERROR),
        (b"incr k 1 noreply x\r\n", ERROR),
        (b"touch k\r\n", ERROR),
        (b"flush_all 1 2 3\r\n", ERROR),
        (b"verbosity\r\n", ERROR),
        (b"verbosity 1 2 3\r\n", ERROR),
        (b"mg\r\n", ERROR),
        (b"ms\r\n", ERROR),
        (b"md\r\n", ERROR),
        (b"ma\r\n", ERROR),
        // Bad numbers.
        (b"set k x 0 1\r\n", BAD),
        (b"set k -1 0 1\r\n", BAD),
        (b"set k 4294967296 0 1\r\n", BAD),
        (b"set k 0 x 1\r\n", BAD),
        (b"set k 0 2147483648 1\r\n", BAD),
        (b"set k 0 0 -1\r\n", BAD),
        (b"set k 0 0 +1\r\n", BAD),
        (b"set k 0 0 1x\r\n", BAD),
        (b"set k 0 0 2147483647\r\n", BAD),
        (b"set k 0 0 99999999999\r\n", BAD),
        (b"cas k 0 0 1 x\r\n", BAD),
        (b"cas k 0 0 1 -1\r\n", BAD),
        (b"cas k 0 0 1 18446744073709551616\r\n", BAD),
        (b"incr k x\r\n", DELTA),
        (b"incr k -1\r\n", DELTA),
        (b"decr k 18446744073709551616\r\n", DELTA),
        (b"touch k x\r\n", EXPTIME),
        (b"touch k 2147483648\r\n", EXPTIME),
        (b"gat x k\r\n", EXPTIME),
        (b"gats 1.5 k\r\n", EXPTIME),
        (b"flush_all x\r\n", EXPTIME),
        (b"verbosity x\r\n", BAD),
        (b"verbosity -1\r\n", BAD),
        (b"verbosity 4294967296\r\n", BAD),
        // delete accepts only a 0 hold time.
        (b"delete k 1\r\n", USAGE),
        (b"delete k x\r\n", USAGE),
        (b"delete k noreply 0\r\n", USAGE),
        (b"delete k 0 0\r\n", USAGE),
        // Meta.
        (b"me\r\n", BAD),
        (b"me k b\r\n", BAD),
        (b"ms k\r\n", BAD),
        (b"ms k x\r\n", BAD),
        (b"ms k -1\r\n", BAD),
        (b"ms k 2147483647\r\n", BAD),
        (b"mg k z\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"mg k v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"mg k v vx\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"mg k \x7f\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"mg k \xc3\xa9\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"mg k Tx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k T\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k N2147483648\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k R-\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k E-1\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k C18446744073709551616\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k Fx\r\n", BAD),
        (b"mg k F4294967296\r\n", BAD),
        // Token errors: the last message wins; F has none of its own.
        (b"mg k Tx Fx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"mg k Tx Dx\r\n", b"CLIENT_ERROR invalid numeric delta value\r\n"),
        (b"mg k Jx\r\n", b"CLIENT_ERROR invalid numeric initial value\r\n"),
        (b"mg k MEE\r\n", b"CLIENT_ERROR incorrect length for M token\r\n"),
        (b"mg k M\r\n", b"CLIENT_ERROR incorrect length for M token\r\n"),
        // A bad token before an unknown flag: the unknown flag stops the scan.
        (b"mg k Tx z\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"mg %%% b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
        (b"mg abc b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
        (b"mg A=== b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
        (b"md k z\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
        (b"md k q q\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
        (b"ma k Dx\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
        (b"ma k MS\r\n", b"CLIENT_ERROR invalid mode for ma M token\r\n"),
        (b"ma k Mi\r\n", b"CLIENT_ERROR invalid mode for ma M token\r\n"),
        (b"mg k O12345678901234567890123456789012\r\n", b"CLIENT_ERROR opaque token too long\r\n"),
        (b"md k O12345678901234567890123456789012\r\n", b"CLIENT_ERROR opaque token too long\r\n"),
        (b"ma k O12345678901234567890123456789012\r\n", b"CLIENT_ERROR opaque token too long\r\n"),
        (b"mg k 1 2 3 4 5 6 7 8 9 A B G H K Q S U\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"mg k v f t c s k O h l u q E1 N1 R1 T1 C1 I x\r\n", b"CLIENT_ERROR options flags are too long\r\n"),
        (b"md k v f t c s k O h l u q E1 N1 R1 T1 C1 I x\r\n", b"CLIENT_ERROR options flags too long\r\n"),
        (b"ma k v f t c s k O h l u q E1 N1 R1 T1 C1 I x\r\n", b"CLIENT_ERROR options flags too long\r\n"),
        (b"ms k 1 v f t c s k O h l u q E1 N1 R1 T1 C1 I\r\n", b"CLIENT_ERROR options flags too long\r\n"),
    ]
}

#[test]
fn error_replies() {
    for (buf, reply) in error_cases() {
        assert_eq!(err(buf), plain(reply, buf.len()), "{:?}", String::from_utf8_lossy(buf));
        // Errors are decided on the line alone: every shorter prefix is incomplete.
        for k in 0..buf.len() {
            assert_eq!(p(&buf[..k]), Parsed::Incomplete);
        }
    }
}

#[test]
fn seventeen_meta_flags_are_fine() {
    let f = MetaFlags {
        return_value: true,
        return_flags: true,
        return_ttl: true,
        return_cas: true,
        return_size: true,
        return_key: true,
        opaque: Some(b""),
        return_hit: true,
        return_last_access: true,
        no_lru_bump: true,
        quiet: true,
        explicit_cas: Some(1),
        vivify_ttl: Some(1),
        recache_ttl: Some(1),
        set_ttl: Some(1),
        compare_cas: Some(1),
        invalidate: true,
        ..mf()
    };
    assert_eq!(cmd(b"mg k v f t c s k O h l u q E1 N1 R1 T1 C1 I\r\n"), Command::MetaGet { key: b"k", flags: f });
    // 32 bytes of O token (with the O) is the most memcached copies back.
    let o31 = b"mg k O1234567890123456789012345678901\r\n";
    assert!(matches!(cmd(o31), Command::MetaGet { .. }));
}

#[test]
fn noreply_suppresses_classic_error_replies() {
    let silent = |buf: &'static [u8]| plain(b"", buf.len());
    for buf in [
        &b"set k x 0 1 noreply\r\n"[..],
        b"set k 0 0 noreply\r\n",
        b"cas k 0 0 1 noreply\r\n",
        b"incr k x noreply\r\n",
        b"touch k x noreply\r\n",
        b"delete k 5 noreply\r\n",
        b"flush_all noreply noreply\r\n",
        b"verbosity noreply\r\n",
        b"verbosity x noreply\r\n",
    ] {
        assert_eq!(err(buf), silent(buf), "{:?}", String::from_utf8_lossy(buf));
    }
    // Token-count errors and get errors are never suppressed.
    assert_eq!(err(b"set k noreply\r\n"), plain(ERROR, 15));
    assert_eq!(err(b"gat x noreply\r\n"), plain(EXPTIME, 15));
    // Bad data chunk: silent for set noreply, always reported for ms (even with q).
    assert_eq!(err(b"set k 0 0 1 noreply\r\nxyz"), plain(b"", 24));
    assert_eq!(err(b"ms k 1 q\r\nxyz"), plain(CHUNK, 13));
}

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
    assert_eq!(parse(fits, &lim), Parsed::Incomplete);
    let line = b"set k 0 0 965\r\n";
    assert_eq!(
        err_with(line, lim),
        Err { reply: TOO_LARGE, consumed: line.len(), swallow: 967, close: false, key: Some(b"k") }
    );
    // Non-zero flags take 4 more bytes.
    let line = b"set k 1 0 961\r\n";
    assert_eq!(err_with(line, lim).swallow, 963);
    assert_eq!(parse(b"set k 1 0 960\r\n", &lim), Parsed::Incomplete);
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
    assert_eq!(parse(b"ms Zm9v 962 b\r\n", &lim), Parsed::Incomplete);
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
    assert_eq!(p(b"set k 0 0 3\r\nab\r"), Parsed::Incomplete);
}

#[test]
fn short_block_with_crlf_inside_is_incomplete() {
    assert_eq!(p(b"set k 0 0 3\r\nab\r\n"), Parsed::Incomplete);
    assert_eq!(err(b"set k 0 0 3\r\nab\r\nx"), plain(CHUNK, 18));
    assert_eq!(cmd(b"set k 0 0 3\r\nab\r\r\n"), store(StoreMode::Set, b"k", b"ab\r"));
}

#[test]
fn line_without_newline_is_bounded() {
    let close = |reply: &'static [u8], n: usize| Err { reply, consumed: n, swallow: 0, close: true, key: None };
    let junk = vec![b'x'; 2048];
    assert_eq!(p(&junk), Parsed::Incomplete);
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
        assert_eq!(p(&get), Parsed::Incomplete);
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
    assert_eq!(parse(&get, &lim), Parsed::Incomplete);
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
    assert_eq!(err(b"shutdown HTTP/1.1\r\n"), plain(ERROR, 19));
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
        Command::Store {
            mode: StoreMode::Set,
            key: b"k",
            flags: 1,
            exptime: 2,
            cas_unique: 0,
            data: b"abc",
            noreply: false,
        }
    );
    // Leading zeros are fine.
    assert!(matches!(cmd(b"incr k 0000000000000000000000001\r\n"), Command::Arith { delta: 1, .. }));
}

#[test]
fn base64_keys() {
    let mut out = [0u8; 187];
    assert_eq!(base64_decode(b"Zm9v", &mut out), Some(3));
    assert_eq!(&out[..3], b"foo");
    assert_eq!(base64_decode(b"Zm8=", &mut out), Some(2));
    assert_eq!(&out[..2], b"fo");
    assert_eq!(base64_decode(b"Zg==", &mut out), Some(1));
    assert_eq!(&out[..1], b"f");
    assert_eq!(base64_decode(b"AAEC/w==", &mut out), Some(4));
    assert_eq!(&out[..4], &[0, 1, 2, 255]);
    // memcached skips bytes outside the alphabet and stops after a padded group.
    assert_eq!(base64_decode(b"Zm\x01 9v", &mut out), Some(3));
    assert_eq!(base64_decode(b"Zg==Zm9v", &mut out), Some(1));
    assert_eq!(base64_decode(b"Zm9", &mut out), None);
    assert_eq!(base64_decode(b"", &mut out), None);
    assert_eq!(base64_decode(b"Z===", &mut out), None);
    assert_eq!(base64_decode(b"Zm9v", &mut out[..2]), None);
    let full = "QUFB".repeat(62) + "QQ==";
    assert_eq!(base64_decode(full.as_bytes(), &mut out), Some(187));
    assert!(out[..187].iter().all(|&b| b == b'A'));
    // The parser returns the encoded key.
    assert!(matches!(cmd(b"md Zm9v b\r\n"), Command::MetaDelete { key: b"Zm9v", flags } if flags.base64_key));
    assert!(matches!(cmd(b"me Zm9v b\r\n"), Command::MetaDebug { key: b"Zm9v" }));
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
        Parsed::Incomplete => {
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
                Parsed::Incomplete => break,
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
            Command::Store { data: d, flags, .. } => assert_eq!((d, flags), (&data[..], 9)),
            Command::MetaSet { data: d, flags, .. } => {
                assert_eq!((d, flags.client_flags), (&data[..], Some(9)))
            }
            other => panic!("{other:?}"),
        }
        for k in 0..buf.len() {
            assert_eq!(p(&buf[..k]), Parsed::Incomplete);
        }
    }
}
