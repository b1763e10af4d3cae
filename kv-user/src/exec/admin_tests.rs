//! Operator commands run end to end through the parser and executor on a store with a manual clock.

use std::sync::Arc;

use bytes::BytesMut;
use clap::Parser;

use super::*;
use crate::protocol::{parse, Limits, Parsed};
use crate::record::NoJournal;
use crate::store::{ManualClock, StoreOptions};

const T0: u64 = 1_700_000_000;

fn ctx(args: &[&str]) -> (Ctx, Arc<ManualClock>) {
    let config = Config::parse_from(["kv-server"].iter().chain(args));
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::with_clock(StoreOptions::from(&config), Arc::new(NoJournal), clock.clone());
    (Ctx::new(Arc::new(store), Arc::new(Stats::new()), Arc::new(config)), clock)
}

/// Parses and runs one request (resuming a split reply as a connection would); returns the reply.
fn run(ctx: &Ctx, req: &str) -> String {
    run_split(ctx, req, usize::MAX).0
}

/// [`run`] with replies cut after `stop_at` bytes; also returns how many pieces the reply took.
fn run_split(ctx: &Ctx, req: &str, stop_at: usize) -> (String, usize) {
    let (mut all, mut from, mut pieces) = (Vec::new(), 0, 0);
    loop {
        let mut out = BytesMut::new();
        match parse(req.as_bytes(), &Limits::default()) {
            Parsed::Command { cmd, .. } => {
                let (_, resume) = execute_from(&cmd, from, ctx, &mut out, stop_at);
                all.extend_from_slice(&out);
                pieces += 1;
                match resume {
                    Some(at) => from = at,
                    None => return (String::from_utf8(all).unwrap(), pieces),
                }
            }
            Parsed::Error { reply, .. } => return (String::from_utf8(reply.to_vec()).unwrap(), 1),
            other => panic!("{req:?}: {other:?}"),
        }
    }
}

#[test]
fn me_reports_metadata_without_touching() {
    let (c, clock) = ctx(&[]);
    assert_eq!(run(&c, "set foo 0 0 3\r\nbar\r\n"), "STORED\r\n");
    assert_eq!(run(&c, "set e 5 100 1\r\nx\r\n"), "STORED\r\n");
    clock.advance(3);
    // Sizes and classes as memcached 1.6.18 reported them for the same items.
    assert_eq!(run(&c, "me foo\r\n"), "ME foo exp=-1 la=3 cas=1 fetch=no cls=1 size=65\r\n");
    assert_eq!(run(&c, "me e\r\n"), "ME e exp=97 la=3 cas=2 fetch=no cls=1 size=65\r\n");
    assert_eq!(run(&c, "me foo\r\n"), "ME foo exp=-1 la=3 cas=1 fetch=no cls=1 size=65\r\n", "me is no access");
    run(&c, "get foo\r\n");
    clock.advance(2);
    assert_eq!(run(&c, "me foo\r\n"), "ME foo exp=-1 la=2 cas=1 fetch=yes cls=1 size=65\r\n");
    assert_eq!(run(&c, "me Zm9v b\r\n"), "ME Zm9v exp=-1 la=2 cas=1 fetch=yes cls=1 size=65\r\n");
    assert_eq!(run(&c, "me nokey\r\n"), "EN\r\n");
    assert_eq!(run(&c, "me\r\n"), "CLIENT_ERROR bad command line format\r\n");
    let big = "x".repeat(200);
    run(&c, &format!("set big 0 0 200\r\n{big}\r\n"));
    assert!(run(&c, "me big\r\n").ends_with(" cls=6 size=262\r\n"));
    clock.advance(100);
    assert_eq!(run(&c, "me e\r\n"), "EN\r\n", "expired");
}

#[test]
fn metadump_lists_live_items_by_class() {
    let (c, clock) = ctx(&[]);
    run(&c, "set a/b 0 0 1\r\nx\r\n");
    run(&c, "set plain 7 100 1\r\nx\r\n");
    run(&c, &format!("set big 0 0 200\r\n{}\r\n", "y".repeat(200)));
    run(&c, "set gone 0 1 1\r\nx\r\n");
    clock.advance(2);
    let dump = run(&c, "lru_crawler metadump all\r\n");
    assert!(dump.ends_with("END\r\n"), "{dump}");
    let mut lines: Vec<&str> = dump.trim_end_matches("END\r\n").split_terminator('\n').collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("key=a%2Fb exp=-1 la={T0} cas=1 fetch=no cls=1 size=63 flags=0"),
            format!("key=big exp=-1 la={T0} cas=3 fetch=no cls=6 size=262 flags=0"),
            format!("key=plain exp={} la={T0} cas=2 fetch=no cls=1 size=69 flags=7", T0 + 100),
        ]
    );
    assert_eq!(run(&c, "lru_crawler metadump hash\r\n").lines().count(), 4);
    let only6 = run(&c, "lru_crawler metadump 6\r\n");
    assert!(only6.starts_with("key=big ") && only6.lines().count() == 2, "{only6}");
    assert_eq!(run(&c, "lru_crawler metadump 2,3\r\n"), "END\r\n");
    for bad in ["0", "64", "x", "1,x", "-1"] {
        assert_eq!(run(&c, &format!("lru_crawler metadump {bad}\r\n")), "BADCLASS invalid class id\r\n", "{bad}");
    }
    assert_eq!(run(&c, "lru_crawler metadump ,\r\n"), "NOTSTARTED no items to crawl\r\n");
}

#[test]
fn metadump_resumes_shard_by_shard() {
    let (c, _) = ctx(&[]);
    for i in 0..500 {
        run(&c, &format!("set key{i} 0 0 1\r\nx\r\n"));
    }
    let (dump, pieces) = run_split(&c, "lru_crawler metadump all\r\n", 1000);
    assert!(pieces > 1, "split into {pieces}");
    let mut keys: Vec<&str> = dump.lines().filter_map(|l| l.strip_prefix("key=")?.split(' ').next()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 500);
    assert_eq!(dump.matches("END\r\n").count(), 1);
}

#[test]
fn crawler_switches() {
    let (c, clock) = ctx(&[]);
    run(&c, "set short 0 1 1\r\nx\r\n");
    clock.advance(5);
    assert_eq!(run(&c, "lru_crawler crawl all\r\n"), "OK\r\n");
    assert_eq!(c.store.len(), 0, "crawl reclaimed the expired item");
    assert_eq!(run(&c, "lru_crawler crawl 5\r\n"), "OK\r\n");
    assert_eq!(run(&c, "lru_crawler crawl hash\r\n"), "ERROR an unknown error happened\r\n");
    assert_eq!(run(&c, "lru_crawler crawl 99\r\n"), "BADCLASS invalid class id\r\n");
    assert_eq!(run(&c, "lru_crawler enable\r\n"), "ERROR failed to start lru crawler thread\r\n");
    assert_eq!(run(&c, "lru_crawler disable\r\n"), "OK\r\n");
    assert_eq!(run(&c, "lru_crawler disable\r\n"), "OK\r\n");
    assert_eq!(run(&c, "lru_crawler metadump all\r\n"), "CLIENT_ERROR lru crawler disabled\r\n");
    assert_eq!(run(&c, "lru_crawler crawl x\r\n"), "CLIENT_ERROR lru crawler disabled\r\n");
    assert!(run(&c, "stats settings\r\n").contains("STAT lru_crawler no\r\n"));
    assert_eq!(run(&c, "lru_crawler enable\r\n"), "OK\r\n");
    assert!(run(&c, "stats settings\r\n").contains("STAT lru_crawler yes\r\n"));
    assert_eq!(run(&c, "lru_crawler tocrawl 10\r\n"), "OK\r\n");
    assert_eq!(run(&c, "lru_crawler sleep 100\r\n"), "OK\r\n");
}

#[test]
fn memlimit_grows_and_shrinks() {
    let (c, _) = ctx(&["-m", "64"]);
    let v = "v".repeat(10_000);
    for i in 0..5000 {
        run(&c, &format!("set k{i} 0 0 {}\r\n{v}\r\n", v.len()));
    }
    assert!(c.store.memory_used() > 40 << 20);
    assert_eq!(run(&c, "cache_memlimit 100\r\n"), "OK\r\n");
    assert_eq!(c.store.limit_maxbytes(), 100 << 20);
    assert!(run(&c, "stats settings\r\n").contains("STAT maxbytes 104857600\r\n"));
    assert_eq!(run(&c, "cache_memlimit 8\r\n"), "OK\r\n");
    assert!(c.store.memory_used() <= 8 << 20, "evicted down to the new limit: {}", c.store.memory_used());
    assert!(!c.store.is_empty() && c.store.len() < 1000, "{} items left", c.store.len());
    assert!(run(&c, "stats\r\n").contains("STAT limit_maxbytes 8388608\r\n"));
    assert_eq!(run(&c, "cache_memlimit 7\r\n"), "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n");
    assert_eq!(run(&c, "cache_memlimit 16 noreply\r\n"), "");
    assert_eq!(c.store.limit_maxbytes(), 16 << 20);
}

#[test]
fn class_stats() {
    let (c, _) = ctx(&[]);
    run(&c, "set a 0 0 1\r\nx\r\n");
    run(&c, "set b 0 0 1\r\nx\r\n");
    run(&c, &format!("set big 0 0 200\r\n{}\r\n", "y".repeat(200)));
    let items = run(&c, "stats items\r\n");
    assert!(items.contains("STAT items:1:number 2\r\n") && items.contains("STAT items:6:number 1\r\n"), "{items}");
    let slabs = run(&c, "stats slabs\r\n");
    for line in ["STAT 1:chunk_size 96\r\n", "STAT 1:chunks_per_page 10922\r\n", "STAT 1:total_pages 1\r\n"] {
        assert!(slabs.contains(line), "{line} in {slabs}");
    }
    assert!(slabs.contains("STAT 6:used_chunks 1\r\n") && slabs.contains("STAT active_slabs 2\r\n"), "{slabs}");
    run(&c, "delete big\r\n");
    assert!(!run(&c, "stats items\r\n").contains("items:6:"));
    assert_eq!(run(&c, "stats cachedump 1 0\r\n").lines().filter(|l| l.starts_with("ITEM ")).count(), 2);
    assert_eq!(run(&c, "stats cachedump 6 0\r\n"), "END\r\n");
}

#[test]
fn shutdown_needs_enabling() {
    let (c, _) = ctx(&[]);
    assert_eq!(run(&c, "shutdown\r\n"), "ERROR: shutdown not enabled\r\n");
    assert_eq!(run(&c, "shutdown graceful\r\n"), "ERROR: shutdown not enabled\r\n");
    assert!(run(&c, "stats settings\r\n").contains("STAT shutdown_command no\r\n"));
    let (c, _) = ctx(&["-A"]);
    // Enabled: a bad mode is still refused (the real shutdown is the end-to-end test's).
    assert_eq!(run(&c, "shutdown now\r\n"), "CLIENT_ERROR invalid shutdown mode\r\n");
    assert!(run(&c, "stats settings\r\n").contains("STAT shutdown_command yes\r\n"));
}

/// `STAT <name> <u64>` lines of a `stats` reply.
fn stat_map(reply: &str) -> std::collections::HashMap<String, u64> {
    let line =
        |l: &str| Some((l.strip_prefix("STAT ")?.split_once(' ')?.0.to_string(), l.rsplit(' ').next()?.parse().ok()?));
    reply.lines().filter_map(line).collect()
}

#[test]
fn evictions_are_counted_per_class() {
    let (c, _) = ctx(&["-m", "8"]);
    let (small, large) = ("s".repeat(10), "L".repeat(10_000));
    for i in 0..3000 {
        run(&c, &format!("set s{i} 0 0 {}\r\n{small}\r\n", small.len()));
        run(&c, &format!("set l{i} 0 0 {}\r\n{large}\r\n", large.len()));
    }
    let (items, total) = (stat_map(&run(&c, "stats items\r\n")), stat_map(&run(&c, "stats\r\n")));
    let per_class = |name: &str| -> Vec<(String, u64)> {
        let mut v: Vec<_> =
            items.iter().filter(|(k, _)| k.ends_with(&format!(":{name}"))).map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    };
    let evicted = per_class("evicted");
    assert!(total["evictions"] > 0);
    assert_eq!(evicted.iter().map(|(_, v)| v).sum::<u64>(), total["evictions"], "{evicted:?}");
    // Both sizes were evicted (segments hold both), each counted in its own class.
    assert!(evicted.iter().filter(|(_, v)| *v > 0).count() >= 2, "{evicted:?}");
    let unfetched: u64 = per_class("evicted_unfetched").iter().map(|(_, v)| v).sum();
    assert_eq!(unfetched, total["evicted_unfetched"]);
    run(&c, "stats reset\r\n");
    let after = stat_map(&run(&c, "stats items\r\n"));
    let zeroed = |k: &String| k.ends_with(":evicted") || k.ends_with(":evicted_unfetched") || k.ends_with(":reclaimed");
    assert!(after.iter().filter(|(k, _)| zeroed(k)).all(|(_, v)| *v == 0), "{after:?}");
    assert!(after.keys().any(|k| k.ends_with(":number")), "live items are still listed");
}
