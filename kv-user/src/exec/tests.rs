use std::sync::Arc;

use bytes::BytesMut;
use clap::Parser;

use super::*;
use crate::protocol::command::{ArithCmd, GatCmd, Keys, MetaFlags, SetMode, StatsCmd, StoreCmd, TouchCmd};
use crate::record::NoJournal;
use crate::store::{ManualClock, StoreOptions};

const T0: u64 = 1_700_000_000;

struct T {
    ctx: Ctx,
    clock: Arc<ManualClock>,
}

fn t() -> T {
    let config = Config::parse_from(["kv-server"]);
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::with_clock(StoreOptions::from(&config), Arc::new(NoJournal), clock.clone());
    T { ctx: Ctx::new(Arc::new(store), Arc::new(Stats::new()), Arc::new(config)), clock }
}

impl T {
    fn run(&self, cmd: Command<'_>) -> String {
        let mut out = BytesMut::new();
        execute(&canonical_order(cmd), &self.ctx, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn set(&self, key: &str, val: &str) -> String {
        self.run(store_cmd(SetMode::Set, key, val, 0, false))
    }

    fn get(&self, keys: &str) -> String {
        self.run(Command::Get { keys: Keys { raw: keys.as_bytes() }, cas: false })
    }

    fn stat(&self, name: &str) -> String {
        let all = self.run(Command::Stats(StatsCmd::General));
        let prefix = format!("STAT {name} ");
        all.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    /// Parses `line` (CRLF appended) and runs it, or returns the parser's error reply.
    fn wire(&self, line: &str) -> String {
        let line = format!("{line}\r\n");
        match crate::protocol::parse(line.as_bytes(), &crate::protocol::Limits::default()) {
            crate::protocol::Parsed::Command { cmd, .. } => self.run(cmd),
            crate::protocol::Parsed::Error { reply, .. } => String::from_utf8(reply.to_vec()).unwrap(),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn mg(&self, key: &str, flags: MetaFlags<'_>) -> String {
        self.run(Command::MetaGet { key: key.as_bytes(), flags })
    }
}

/// Hand-built meta flags have no request order; give them the order c f h k l O s t (the parser records
/// the client's actual order, covered by `meta_flags_echo_request_order`).
fn canonical_order(mut cmd: Command<'_>) -> Command<'_> {
    let Some(f) = cmd.meta_flags_mut() else { return cmd };
    if f.ret_count == 0 {
        let on = [
            (b'c', f.return_cas),
            (b'f', f.return_flags),
            (b'h', f.return_hit),
            (b'k', f.return_key),
            (b'l', f.return_last_access),
            (b'O', f.opaque.is_some()),
            (b's', f.return_size),
            (b't', f.return_ttl),
        ];
        for (letter, _) in on.iter().filter(|(_, set)| *set) {
            f.ret_order[f.ret_count as usize] = *letter;
            f.ret_count += 1;
        }
    }
    cmd
}

#[test]
fn meta_flags_echo_request_order() {
    let t = t();
    t.set("k", "hello");
    let parsed = |line: &'static [u8]| match crate::protocol::parse(line, &crate::protocol::Limits::default()) {
        crate::protocol::Parsed::Command { cmd, .. } => cmd,
        other => panic!("{other:?}"),
    };
    let mut out = BytesMut::new();
    execute(&parsed(b"mg k s t v f k O9\r\n"), &t.ctx, &mut out);
    assert_eq!(&out[..], b"VA 5 s5 t-1 f5 kk O9\r\nhello\r\n");
}

fn store_cmd<'a>(mode: SetMode, key: &'a str, val: &'a str, cas: u64, noreply: bool) -> Command<'a> {
    Command::Store(StoreCmd {
        mode,
        key: key.as_bytes(),
        flags: 5,
        exptime: 0,
        cas_unique: cas,
        data: val.as_bytes(),
        noreply,
    })
}

fn cas_of(t: &T, key: &str) -> u64 {
    t.ctx.store.get(key.as_bytes()).unwrap().cas
}

#[test]
fn get_set_replies() {
    let t = t();
    assert_eq!(t.get("a"), "END\r\n");
    assert_eq!(t.set("a", "hello"), "STORED\r\n");
    assert_eq!(t.set("b", ""), "STORED\r\n");
    assert_eq!(t.get("a b c"), "VALUE a 5 5\r\nhello\r\nVALUE b 5 0\r\n\r\nEND\r\n");
    let cas = cas_of(&t, "a");
    assert_eq!(
        t.run(Command::Get { keys: Keys { raw: b"a" }, cas: true }),
        format!("VALUE a 5 5 {cas}\r\nhello\r\nEND\r\n")
    );
    assert_eq!(t.stat("cmd_get"), "5");
    assert_eq!(t.stat("get_hits"), "3");
    assert_eq!(t.stat("get_misses"), "2");
    assert_eq!(t.stat("cmd_set"), "2");
    assert_eq!(t.stat("curr_items"), "2");
}

#[test]
fn storage_modes() {
    let t = t();
    assert_eq!(t.run(store_cmd(SetMode::Add, "k", "1", 0, false)), "STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Add, "k", "1", 0, false)), "NOT_STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Replace, "x", "1", 0, false)), "NOT_STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Replace, "k", "2", 0, false)), "STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Append, "k", "3", 0, false)), "STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Prepend, "k", "1", 0, false)), "STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Append, "x", "1", 0, false)), "NOT_STORED\r\n");
    assert_eq!(t.get("k"), "VALUE k 5 3\r\n123\r\nEND\r\n");
    let cas = cas_of(&t, "k");
    assert_eq!(t.run(store_cmd(SetMode::Cas, "k", "9", cas + 1, false)), "EXISTS\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Cas, "k", "9", cas, false)), "STORED\r\n");
    assert_eq!(t.run(store_cmd(SetMode::Cas, "x", "9", cas, false)), "NOT_FOUND\r\n");
    assert_eq!((t.stat("cas_hits"), t.stat("cas_badval"), t.stat("cas_misses")), ("1".into(), "1".into(), "1".into()));
}

#[test]
fn noreply_suppresses_everything() {
    let t = t();
    assert_eq!(t.run(store_cmd(SetMode::Set, "k", "v", 0, true)), "");
    assert_eq!(t.run(store_cmd(SetMode::Add, "k", "v", 0, true)), "");
    assert_eq!(t.run(Command::Arith(ArithCmd { key: b"k", incr: true, delta: 1, noreply: true })), "");
    assert_eq!(t.run(Command::Delete { key: b"k", noreply: true }), "");
    assert_eq!(t.run(Command::Delete { key: b"k", noreply: true }), "");
    assert_eq!(t.run(Command::Touch(TouchCmd { key: b"k", exptime: 1, noreply: true })), "");
    assert_eq!(t.run(Command::FlushAll { delay: 0, noreply: true }), "");
    assert_eq!(t.run(Command::Verbosity { level: 1, noreply: true }), "");
    let mut out = BytesMut::new();
    reject_too_large_noreply(b"k", true, &t.ctx, &mut out);
    assert!(out.is_empty());
}

#[test]
fn delete_touch_gat() {
    let t = t();
    assert_eq!(t.run(Command::Delete { key: b"k", noreply: false }), "NOT_FOUND\r\n");
    t.set("k", "v");
    assert_eq!(t.run(Command::Touch(TouchCmd { key: b"k", exptime: 10, noreply: false })), "TOUCHED\r\n");
    assert_eq!(t.run(Command::Touch(TouchCmd { key: b"z", exptime: 10, noreply: false })), "NOT_FOUND\r\n");
    assert_eq!(
        t.run(Command::Gat(GatCmd { exptime: 100, keys: Keys { raw: b"k z" }, cas: false })),
        "VALUE k 5 1\r\nv\r\nEND\r\n"
    );
    let cas = cas_of(&t, "k");
    assert_eq!(
        t.run(Command::Gat(GatCmd { exptime: 100, keys: Keys { raw: b"k" }, cas: true })),
        format!("VALUE k 5 1 {cas}\r\nv\r\nEND\r\n")
    );
    t.clock.advance(50);
    assert_eq!(t.get("k"), "VALUE k 5 1\r\nv\r\nEND\r\n");
    assert_eq!(t.run(Command::Delete { key: b"k", noreply: false }), "DELETED\r\n");
    assert_eq!(t.stat("touch_hits"), "3");
    assert_eq!(t.stat("touch_misses"), "2");
    assert_eq!(t.stat("cmd_touch"), "5");
    assert_eq!(t.stat("delete_hits"), "1");
    assert_eq!(t.stat("delete_misses"), "1");
}

#[test]
fn incr_decr_replies() {
    let t = t();
    let arith = |incr, delta| t.run(Command::Arith(ArithCmd { key: b"n", incr, delta, noreply: false }));
    assert_eq!(arith(true, 1), "NOT_FOUND\r\n");
    t.set("n", "10");
    assert_eq!(arith(true, 5), "15\r\n");
    assert_eq!(arith(false, 6), "9\r\n");
    assert_eq!(t.get("n"), "VALUE n 5 2\r\n9 \r\nEND\r\n");
    assert_eq!(arith(false, 100), "0\r\n");
    t.set("n", "18446744073709551615");
    assert_eq!(arith(true, 2), "1\r\n");
    t.set("n", "abc");
    assert_eq!(arith(true, 1), "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    assert_eq!(t.stat("incr_hits"), "2");
    assert_eq!(t.stat("incr_misses"), "1");
    assert_eq!(t.stat("decr_hits"), "2");
}

#[test]
fn misc_commands() {
    let t = t();
    assert_eq!(t.run(Command::Version), format!("VERSION {VERSION}\r\n"));
    assert!(VERSION.starts_with("1.6."));
    assert_eq!(t.run(Command::Verbosity { level: 2, noreply: false }), "OK\r\n");
    t.set("k", "v");
    assert_eq!(t.run(Command::FlushAll { delay: 0, noreply: false }), "OK\r\n");
    assert_eq!(t.get("k"), "END\r\n");
    assert_eq!(t.stat("cmd_flush"), "1");
    let mut out = BytesMut::new();
    let o = execute(&Command::Quit, &t.ctx, &mut out);
    assert!(o.close && out.is_empty());
    assert_eq!(t.run(Command::MetaNoop), "MN\r\n");
    assert_eq!(t.run(Command::MetaDebug { key: b"k", base64: false }), "EN\r\n");
}

#[test]
fn too_large_rejection() {
    let t = t();
    t.set("k", "old");
    let mut out = BytesMut::new();
    reject_too_large(b"k", &t.ctx, &mut out);
    assert_eq!(&out[..], b"SERVER_ERROR object too large for cache\r\n");
    assert_eq!(t.get("k"), "END\r\n");
    // Oversized for the store itself (the parser let it through).
    t.set("k", "old");
    let big = "x".repeat(1 << 20);
    assert_eq!(t.set("k", &big), "SERVER_ERROR object too large for cache\r\n");
    assert_eq!(t.get("k"), "END\r\n");
    assert_eq!(t.stat("store_too_large"), "2");
}

#[test]
fn stats_output() {
    let t = t();
    let all = t.run(Command::Stats(StatsCmd::General));
    assert!(all.ends_with("END\r\n"));
    for name in [
        "pid",
        "uptime",
        "time",
        "version",
        "pointer_size",
        "rusage_user",
        "rusage_system",
        "max_connections",
        "curr_connections",
        "total_connections",
        "rejected_connections",
        "connection_structures",
        "cmd_get",
        "cmd_set",
        "cmd_flush",
        "cmd_touch",
        "cmd_meta",
        "get_hits",
        "get_misses",
        "get_expired",
        "get_flushed",
        "delete_misses",
        "delete_hits",
        "incr_misses",
        "incr_hits",
        "decr_misses",
        "decr_hits",
        "cas_misses",
        "cas_hits",
        "cas_badval",
        "touch_hits",
        "touch_misses",
        "bytes_read",
        "bytes_written",
        "limit_maxbytes",
        "threads",
        "conn_yields",
        "bytes",
        "curr_items",
        "total_items",
        "evictions",
        "reclaimed",
        "expired_unfetched",
        "evicted_unfetched",
    ] {
        assert!(all.contains(&format!("STAT {name} ")), "missing {name}");
    }
    assert!(all.lines().all(|l| l == "END" || l.starts_with("STAT ")));
    assert_eq!(t.stat("limit_maxbytes"), (64u64 << 20).to_string());
    assert_eq!(t.stat("time"), T0.to_string());
    t.ctx.stats.bytes_read.fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(t.stat("bytes_read"), "7");

    let s = t.run(Command::Stats(StatsCmd::Settings));
    for l in [
        "STAT maxbytes 67108864\r\n",
        "STAT maxconns 1024\r\n",
        "STAT tcpport 11211\r\n",
        "STAT evictions on\r\n",
        "STAT item_size_max 1048576\r\n",
        "STAT cas_enabled yes\r\n",
        "STAT num_threads 4\r\n",
    ] {
        assert!(s.contains(l), "settings missing {l:?}");
    }
    t.run(Command::Verbosity { level: 3, noreply: false });
    assert!(t.run(Command::Stats(StatsCmd::Settings)).contains("STAT verbosity 3\r\n"));
    t.set("k", "v");
    assert!(t.run(Command::Stats(StatsCmd::Items)).contains("STAT items:1:number 1\r\n"));
    assert!(t.run(Command::Stats(StatsCmd::Slabs)).ends_with("END\r\n"));
    t.get("k");
    assert_eq!(t.run(Command::Stats(StatsCmd::Reset)), "RESET\r\n");
    assert_eq!(t.stat("cmd_get"), "0");
    assert_eq!(t.stat("total_items"), "0");
    assert_eq!(t.stat("curr_items"), "1");
}

/// What memcached 1.6.38 answers to the admin commands, byte for byte (the end-to-end test
/// `admin_commands_as_memcached` checks the same against a running memcached).
#[test]
fn admin_commands() {
    let t = t();
    for (req, want) in [
        ("shutdown", "ERROR: shutdown not enabled\r\n"),
        ("shutdown graceful", "ERROR: shutdown not enabled\r\n"),
        ("stats bogus", "ERROR\r\n"),
        ("stats detail", "CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
        ("stats detail x", "CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
        ("stats detail dump", "END\r\n"),
        ("stats cachedump", "CLIENT_ERROR bad command line\r\n"),
        ("stats cachedump 1", "CLIENT_ERROR bad command line\r\n"),
        ("stats cachedump x 0", "CLIENT_ERROR bad command line format\r\n"),
        ("stats cachedump 64 x", "CLIENT_ERROR bad command line format\r\n"),
        ("stats cachedump 64 0", "CLIENT_ERROR Illegal slab id\r\n"),
        ("stats cachedump 2 0", "END\r\n"),
        ("stats sizes x", "STAT sizes_status disabled\r\nEND\r\n"),
        ("stats reset x", "RESET\r\n"),
        ("stats detail on", "OK\r\n"),
    ] {
        assert_eq!(t.wire(req), want, "{req}");
    }
    assert!(t.wire("stats settings x").contains("STAT detail_enabled yes\r\n"));
    assert!(t.wire("stats items x").ends_with("END\r\n"));
    t.set("a:1", "v");
    t.get("a:1 a:2 b");
    t.wire("delete a:2");
    assert_eq!(t.wire("stats detail dump"), "PREFIX a get 2 hit 1 set 1 del 1\r\nEND\r\n");
    assert_eq!(t.wire("stats detail off"), "OK\r\n");
    t.get("a:1");
    assert_eq!(t.wire("stats detail dump"), "PREFIX a get 2 hit 1 set 1 del 1\r\nEND\r\n");
    t.wire("stats reset");
    assert_eq!(t.wire("stats detail dump"), "END\r\n");
    assert!(t.wire("stats settings").contains("STAT detail_enabled no\r\n"));
    t.run(store_cmd(SetMode::Set, "b", "12345", 0, false));
    t.wire("set c 0 100 1\r\nx");
    let dump = t.wire("stats cachedump 1 0");
    let mut lines: Vec<&str> = dump.split_inclusive("\r\n").collect();
    assert_eq!(lines.pop(), Some("END\r\n"));
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["ITEM a:1 [1 b; 0 s]\r\n", "ITEM b [5 b; 0 s]\r\n", &format!("ITEM c [1 b; {} s]\r\n", T0 + 100)]
    );
    assert_eq!(t.wire("stats cachedump 1 2").lines().count(), 3, "limit");
}

#[test]
fn meta_get() {
    let t = t();
    let f = MetaFlags::default;
    assert_eq!(t.mg("k", f()), "EN\r\n");
    assert_eq!(t.mg("k", MetaFlags { quiet: true, ..f() }), "");
    assert_eq!(t.mg("k", MetaFlags { opaque: Some(b"42"), return_key: true, ..f() }), "EN kk O42\r\n");
    t.set("k", "hello");
    assert_eq!(t.mg("k", f()), "HD\r\n");
    assert_eq!(t.mg("k", MetaFlags { return_value: true, ..f() }), "VA 5\r\nhello\r\n");
    assert_eq!(t.mg("k", MetaFlags { return_value: true, quiet: true, ..f() }), "VA 5\r\nhello\r\n");
    let cas = cas_of(&t, "k");
    assert_eq!(
        t.mg(
            "k",
            MetaFlags {
                return_value: true,
                return_cas: true,
                return_flags: true,
                return_key: true,
                opaque: Some(b"op"),
                return_size: true,
                return_ttl: true,
                ..f()
            }
        ),
        format!("VA 5 c{cas} f5 kk Oop s5 t-1\r\nhello\r\n")
    );
    // C matching the current CAS drops the value.
    assert_eq!(t.mg("k", MetaFlags { return_value: true, compare_cas: Some(cas), ..f() }), "HD\r\n");
    // T updates the TTL; t reports it.
    assert_eq!(t.mg("k", MetaFlags { set_ttl: Some(100), return_ttl: true, ..f() }), "HD t100\r\n");
    // h and l report the state before this access.
    t.set("h", "v");
    t.clock.advance(3);
    assert_eq!(t.mg("h", MetaFlags { return_hit: true, return_last_access: true, ..f() }), "HD h0 l3\r\n");
    assert_eq!(t.mg("h", MetaFlags { return_hit: true, return_last_access: true, ..f() }), "HD h1 l0\r\n");
    // u: no bump, so still "not hit" afterwards.
    t.set("u", "v");
    assert_eq!(t.mg("u", MetaFlags { no_lru_bump: true, return_hit: true, ..f() }), "HD h0\r\n");
    assert_eq!(t.mg("u", MetaFlags { return_hit: true, ..f() }), "HD h0\r\n");
    assert_eq!(t.mg("k", MetaFlags { opaque: Some(&[b'x'; 33]), ..f() }), "CLIENT_ERROR opaque token too long\r\n");
}

#[test]
fn meta_get_vivify_and_stale() {
    let t = t();
    let f = MetaFlags::default;
    let viv = MetaFlags { vivify_ttl: Some(30), return_value: true, return_ttl: true, ..f() };
    assert_eq!(t.mg("v", viv), "VA 0 t30 W\r\n\r\n");
    assert_eq!(t.mg("v", viv), "VA 0 t30 Z\r\n\r\n");
    t.set("s", "data");
    assert_eq!(t.run(Command::MetaDelete { key: b"s", flags: MetaFlags { invalidate: true, ..f() } }), "HD\r\n");
    assert_eq!(t.mg("s", MetaFlags { return_value: true, ..f() }), "VA 4 X W\r\ndata\r\n");
    assert_eq!(t.mg("s", MetaFlags { return_value: true, ..f() }), "VA 4 Z X\r\ndata\r\n");
    // R: remaining TTL below the token wins once.
    t.run(Command::Store(StoreCmd {
        mode: SetMode::Set,
        key: b"r",
        flags: 0,
        exptime: 10,
        cas_unique: 0,
        data: b"v",
        noreply: false,
    }));
    assert_eq!(t.mg("r", MetaFlags { recache_ttl: Some(30), ..f() }), "HD W\r\n");
    assert_eq!(t.mg("r", MetaFlags { recache_ttl: Some(30), ..f() }), "HD Z\r\n");
}

#[test]
fn meta_base64_keys() {
    let t = t();
    let f = MetaFlags::default;
    // "Zm9v" = "foo"
    let fl = MetaFlags { base64_key: true, return_key: true, ..f() };
    assert_eq!(t.run(Command::MetaSet { key: b"Zm9v", data: b"bar", flags: fl }), "HD kZm9v b\r\n");
    assert_eq!(t.get("foo"), "VALUE foo 0 3\r\nbar\r\nEND\r\n");
    assert_eq!(t.mg("Zm9v", MetaFlags { return_value: true, ..fl }), "VA 3 kZm9v b\r\nbar\r\n");
    assert_eq!(t.mg("!!!", fl), "CLIENT_ERROR error decoding key\r\n");
    // The parser's decoder, memcached's rules: bytes outside the alphabet are skipped, a padded group
    // ends the key, and the echo is the decoded key encoded again.
    assert_eq!(t.mg("Zm!9v", MetaFlags { return_value: true, ..fl }), "VA 3 kZm9v b\r\nbar\r\n");
    assert_eq!(t.mg("Zm8=Zm9v", fl), "EN kZm8= b\r\n");
    assert_eq!(t.mg("Zm9=", fl), "EN kZm8= b\r\n");
    assert_eq!(t.run(Command::MetaDelete { key: b"Zm9v!", flags: fl }), "HD kZm9v b\r\n");
    assert_eq!(t.get("foo"), "END\r\n");
    t.set("n", "5");
    let ma = MetaFlags { return_value: true, ..fl };
    assert_eq!(t.run(Command::MetaArith { key: b"b!g==", flags: ma }), "VA 1 kbg== b\r\n6\r\n");
    // ma reports a key that does not decode as a flag error.
    assert_eq!(t.run(Command::MetaArith { key: b"bg=", flags: ma }), "CLIENT_ERROR invalid or duplicate flag\r\n");
}

#[test]
fn meta_set() {
    let t = t();
    let f = MetaFlags::default;
    let ms = |key: &'static str, data: &'static str, flags| {
        t.run(Command::MetaSet { key: key.as_bytes(), data: data.as_bytes(), flags })
    };
    assert_eq!(ms("k", "v", f()), "HD\r\n");
    assert_eq!(ms("k", "v", MetaFlags { quiet: true, ..f() }), "");
    assert_eq!(ms("k", "v2", MetaFlags { client_flags: Some(9), set_ttl: Some(60), ..f() }), "HD\r\n");
    assert_eq!(t.mg("k", MetaFlags { return_flags: true, return_ttl: true, ..f() }), "HD f9 t60\r\n");
    let cas = cas_of(&t, "k");
    assert_eq!(ms("k", "x", MetaFlags { compare_cas: Some(cas + 1), ..f() }), "EX\r\n");
    assert_eq!(ms("k", "x", MetaFlags { compare_cas: Some(cas + 1), quiet: true, ..f() }), "EX\r\n");
    assert_eq!(ms("zz", "x", MetaFlags { compare_cas: Some(cas), ..f() }), "NF\r\n");
    let out = ms("k", "x", MetaFlags { compare_cas: Some(cas), return_cas: true, ..f() });
    let new = cas_of(&t, "k");
    assert_eq!(out, format!("HD c{new}\r\n"));
    assert_eq!(ms("k", "y", MetaFlags { mode: Some(b'E'), ..f() }), "NS\r\n");
    assert_eq!(ms("a", "1", MetaFlags { mode: Some(b'E'), ..f() }), "HD\r\n");
    assert_eq!(ms("a", "2", MetaFlags { mode: Some(b'A'), return_size: true, ..f() }), "HD s2\r\n");
    assert_eq!(ms("a", "0", MetaFlags { mode: Some(b'P'), ..f() }), "HD\r\n");
    assert_eq!(t.get("a"), "VALUE a 0 3\r\n012\r\nEND\r\n");
    assert_eq!(ms("b", "1", MetaFlags { mode: Some(b'A'), ..f() }), "NS\r\n");
    assert_eq!(ms("b", "1", MetaFlags { mode: Some(b'A'), vivify_ttl: Some(0), ..f() }), "HD\r\n");
    assert_eq!(ms("c", "1", MetaFlags { mode: Some(b'R'), ..f() }), "NS\r\n");
    assert_eq!(ms("a", "r", MetaFlags { mode: Some(b'R'), ..f() }), "HD\r\n");
    assert_eq!(ms("a", "r", MetaFlags { mode: Some(b'X'), ..f() }), "CLIENT_ERROR invalid mode for ms M token\r\n");
    assert_eq!(ms("e", "v", MetaFlags { explicit_cas: Some(777), ..f() }), "HD\r\n");
    assert_eq!(cas_of(&t, "e"), 777);
    // I + C: an older CAS is accepted but marks the item stale.
    assert_eq!(ms("e", "w", MetaFlags { compare_cas: Some(5), invalidate: true, ..f() }), "HD\r\n");
    assert_eq!(t.mg("e", MetaFlags { return_value: true, ..f() }), "VA 1 X W\r\nw\r\n");
    assert_eq!(ms("k", "v", MetaFlags { opaque: Some(b"1"), return_key: true, ..f() }), "HD kk O1\r\n");
    let big = "x".repeat(1 << 20);
    assert_eq!(
        t.run(Command::MetaSet { key: b"k", data: big.as_bytes(), flags: MetaFlags { quiet: true, ..f() } }),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(t.get("k"), "END\r\n");
}

#[test]
fn meta_delete() {
    let t = t();
    let f = MetaFlags::default;
    let md = |key: &'static str, flags| t.run(Command::MetaDelete { key: key.as_bytes(), flags });
    assert_eq!(md("k", f()), "NF\r\n");
    assert_eq!(md("k", MetaFlags { quiet: true, ..f() }), "NF\r\n");
    t.set("k", "v");
    let cas = cas_of(&t, "k");
    assert_eq!(md("k", MetaFlags { compare_cas: Some(cas + 1), ..f() }), "EX\r\n");
    assert_eq!(
        md("k", MetaFlags { compare_cas: Some(cas), opaque: Some(b"9"), return_key: true, ..f() }),
        "HD kk O9\r\n"
    );
    assert_eq!(t.get("k"), "END\r\n");
    t.set("k", "v");
    assert_eq!(md("k", MetaFlags { quiet: true, ..f() }), "");
    t.set("s", "v");
    assert_eq!(md("s", MetaFlags { invalidate: true, set_ttl: Some(30), ..f() }), "HD\r\n");
    assert_eq!(t.mg("s", MetaFlags { return_ttl: true, ..f() }), "HD t30 X W\r\n");
}

#[test]
fn meta_arith() {
    let t = t();
    let f = MetaFlags::default;
    let ma = |flags| t.run(Command::MetaArith { key: b"n", flags });
    assert_eq!(ma(f()), "NF\r\n");
    assert_eq!(ma(MetaFlags { quiet: true, ..f() }), "NF\r\n");
    assert_eq!(ma(MetaFlags { vivify_ttl: Some(0), initial: Some(10), return_value: true, ..f() }), "VA 2\r\n10\r\n");
    assert_eq!(ma(f()), "HD\r\n");
    assert_eq!(ma(MetaFlags { return_value: true, delta: Some(9), ..f() }), "VA 2\r\n20\r\n");
    assert_eq!(ma(MetaFlags { return_value: true, mode: Some(b'D'), delta: Some(15), ..f() }), "VA 1\r\n5\r\n");
    assert_eq!(ma(MetaFlags { return_value: true, mode: Some(b'-'), delta: Some(15), ..f() }), "VA 1\r\n0\r\n");
    assert_eq!(ma(MetaFlags { mode: Some(b'+'), quiet: true, ..f() }), "");
    let cas = cas_of(&t, "n");
    assert_eq!(ma(MetaFlags { compare_cas: Some(cas + 1), ..f() }), "EX\r\n");
    let out = ma(MetaFlags { compare_cas: Some(cas), return_cas: true, return_ttl: true, set_ttl: Some(50), ..f() });
    assert_eq!(out, format!("HD c{} t50\r\n", cas_of(&t, "n")));
    assert_eq!(ma(MetaFlags { mode: Some(b'x'), ..f() }), "CLIENT_ERROR invalid mode for ma M token\r\n");
    assert_eq!(ma(MetaFlags { opaque: Some(b"o"), return_key: true, ..f() }), "HD kn Oo\r\n");
    t.set("n", "text");
    assert_eq!(ma(f()), "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    assert_eq!(t.stat("cmd_meta"), "13");
}

#[test]
fn execute_reports_journal_seq() {
    use crate::record::{Journal, Record};
    use std::sync::atomic::{AtomicU64, Ordering};
    struct Count(AtomicU64);
    impl Journal for Count {
        fn record(&self, _: &Record<'_>) -> u64 {
            self.0.fetch_add(1, Ordering::Relaxed) + 1
        }
    }
    let config = Config::parse_from(["kv-server"]);
    let store = Store::new(StoreOptions::from(&config), Arc::new(Count(AtomicU64::new(0))));
    let ctx = Ctx::new(Arc::new(store), Arc::new(Stats::new()), Arc::new(config));
    let mut out = BytesMut::new();
    assert_eq!(execute(&store_cmd(SetMode::Set, "k", "v", 0, false), &ctx, &mut out).seq, 1);
    assert_eq!(execute(&Command::Get { keys: Keys { raw: b"k" }, cas: false }, &ctx, &mut out).seq, 0);
    assert_eq!(
        execute(&Command::Gat(GatCmd { exptime: 5, keys: Keys { raw: b"k k" }, cas: false }), &ctx, &mut out).seq,
        3
    );
    assert_eq!(execute(&Command::Delete { key: b"k", noreply: false }, &ctx, &mut out).seq, 4);
    assert_eq!(execute(&Command::FlushAll { delay: 0, noreply: false }, &ctx, &mut out).seq, 5);
}
