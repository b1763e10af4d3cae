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

fn without_order(mut cmd: Command<'_>) -> Command<'_> {
    if let Some(f) = cmd.meta_flags_mut() {
        f.ret_order = [0; 8];
        f.ret_count = 0;
    }
    cmd
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

fn store<'a>(mode: SetMode, key: &'a [u8], data: &'a [u8]) -> Command<'a> {
    Command::Store(StoreCmd { mode, key, flags: 0, exptime: 0, cas_unique: 0, data, noreply: false })
}

fn mf<'a>() -> MetaFlags<'a> {
    MetaFlags::default()
}

const ERROR: &[u8] = b"ERROR\r\n";
const DETAIL_USAGE: &[u8] = b"CLIENT_ERROR usage: stats detail on|off|dump\r\n";
const BAD_COMMAND_LINE: &[u8] = b"CLIENT_ERROR bad command line\r\n";
const ILLEGAL_SLAB_ID: &[u8] = b"CLIENT_ERROR Illegal slab id\r\n";
const BAD: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
const EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
const DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
const CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
const USAGE: &[u8] = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";

fn valid_cases() -> Vec<(&'static [u8], Command<'static>)> {
    use Command::*;
    use SetMode::*;
    vec![
        (b"get foo\r\n", Get { keys: keys(b"foo"), cas: false }),
        (b"get foo\n", Get { keys: keys(b"foo"), cas: false }),
        (b"get a b  c\r\n", Get { keys: keys(b"a b  c"), cas: false }),
        (b"  get   a  \r\n", Get { keys: keys(b"a"), cas: false }),
        (b"bget a\r\n", Get { keys: keys(b"a"), cas: false }),
        (b"gets a b\r\n", Get { keys: keys(b"a b"), cas: true }),
        (b"gat 10 a b\r\n", Gat(GatCmd { exptime: 10, keys: keys(b"a b"), cas: false })),
        (b"gats -1 a\r\n", Gat(GatCmd { exptime: -1, keys: keys(b"a"), cas: true })),
        // memcached answers a key-less gat with just END.
        (b"gat 10\r\n", Gat(GatCmd { exptime: 10, keys: keys(b""), cas: false })),
        (b"set k 0 0 5\r\nhello\r\n", store(Set, b"k", b"hello")),
        (b"set k 0 0 0\r\n\r\n", store(Set, b"k", b"")),
        (b"add k 0 0 1\r\nx\r\n", store(Add, b"k", b"x")),
        (b"replace k 0 0 1\r\nx\r\n", store(Replace, b"k", b"x")),
        (b"append k 0 0 1\r\nx\r\n", store(Append, b"k", b"x")),
        (b"prepend k 0 0 1\r\nx\r\n", store(Prepend, b"k", b"x")),
        (
            b"set k 4294967295 -1 2 noreply\r\nab\r\n",
            Store(StoreCmd {
                mode: Set,
                key: b"k",
                flags: u32::MAX,
                exptime: -1,
                cas_unique: 0,
                data: b"ab",
                noreply: true,
            }),
        ),
        // A 6th token that is not noreply is ignored, as in memcached.
        (b"set k 0 0 1 junk\r\nx\r\n", store(Set, b"k", b"x")),
        (
            b"cas k 3 100 2 18446744073709551615\r\nab\r\n",
            Store(StoreCmd {
                mode: Cas,
                key: b"k",
                flags: 3,
                exptime: 100,
                cas_unique: u64::MAX,
                data: b"ab",
                noreply: false,
            }),
        ),
        (
            b"cas k 0 0 1 7 noreply\r\nx\r\n",
            Store(StoreCmd { mode: Cas, key: b"k", flags: 0, exptime: 0, cas_unique: 7, data: b"x", noreply: true }),
        ),
        // Data blocks may hold \r\n and any byte; the line may end in a bare \n.
        (b"set k 0 0 4\r\n\r\n\r\n\r\n", store(Set, b"k", b"\r\n\r\n")),
        (b"set k 0 0 3\n\0\xff\n\r\n", store(Set, b"k", b"\0\xff\n")),
        (b"delete k\r\n", Delete { key: b"k", noreply: false }),
        (b"delete k 0\r\n", Delete { key: b"k", noreply: false }),
        (b"delete k noreply\r\n", Delete { key: b"k", noreply: true }),
        (b"delete k 0 noreply\r\n", Delete { key: b"k", noreply: true }),
        (b"incr k 1\r\n", Arith(ArithCmd { key: b"k", incr: true, delta: 1, noreply: false })),
        (
            b"decr k 18446744073709551615 noreply\r\n",
            Arith(ArithCmd { key: b"k", incr: false, delta: u64::MAX, noreply: true }),
        ),
        (b"incr k 5 junk\r\n", Arith(ArithCmd { key: b"k", incr: true, delta: 5, noreply: false })),
        (b"touch k 10\r\n", Touch(TouchCmd { key: b"k", exptime: 10, noreply: false })),
        (b"touch k -1 noreply\r\n", Touch(TouchCmd { key: b"k", exptime: -1, noreply: true })),
        (b"flush_all\r\n", FlushAll { delay: 0, noreply: false }),
        (b"flush_all noreply\r\n", FlushAll { delay: 0, noreply: true }),
        (b"flush_all 10\r\n", FlushAll { delay: 10, noreply: false }),
        (b"flush_all 10 noreply\r\n", FlushAll { delay: 10, noreply: true }),
        (b"flush_all -5 x\r\n", FlushAll { delay: -5, noreply: false }),
        (b"version\r\n", Version),
        (b"version extra\r\n", Version),
        (b"verbosity 1\r\n", Verbosity { level: 1, noreply: false }),
        (b"verbosity 4294967295 noreply\r\n", Verbosity { level: u32::MAX, noreply: true }),
        (b"stats\r\n", Stats(StatsCmd::General)),
        (b"stats   \r\n", Stats(StatsCmd::General)),
        (b"stats items\r\n", Stats(StatsCmd::Items)),
        (b"stats  items x y\r\n", Stats(StatsCmd::Items)),
        (b"stats reset now\r\n", Stats(StatsCmd::Reset)),
        (b"stats detail on \r\n", Stats(StatsCmd::Detail(Detail::On))),
        (b"stats detail dump x\r\n", Stats(StatsCmd::Detail(Detail::Dump))),
        (b"stats cachedump 1 0\r\n", Stats(StatsCmd::CacheDump { class: 1, limit: 0 })),
        (b"stats cachedump 63 4294967295 x\r\n", Stats(StatsCmd::CacheDump { class: 63, limit: u32::MAX })),
        (b"quit\r\n", Quit),
        (b"mn\r\n", MetaNoop),
        (b"mn junk\r\n", MetaNoop),
        (b"me k\r\n", MetaDebug { key: b"k", base64: false }),
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
            assert!(p(&buf[..k]).is_incomplete(), "{:?} cut at {k}", String::from_utf8_lossy(buf));
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
    assert!(p(&all[off..]).is_incomplete());
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
        (b"stats nothing\r\n", ERROR),
        (b"stats detail\r\n", DETAIL_USAGE),
        (b"stats cachedump 1\r\n", BAD_COMMAND_LINE),
        (b"stats cachedump 1 -1\r\n", BAD),
        (b"stats cachedump 64 1\r\n", ILLEGAL_SLAB_ID),
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
            assert!(p(&buf[..k]).is_incomplete());
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

mod admin;
mod limits;
