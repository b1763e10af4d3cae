//! Operator commands: token counts, numbers and the replies the parser settles (checked against
//! memcached 1.6.18 where it agrees with 1.6.38).

use super::*;
use crate::protocol::command::{Crawler, ShutdownMode};

/// The reply of a command the parser settles, whether as an error or as `Slabs`.
fn settled(buf: &[u8]) -> &'static [u8] {
    match parse(buf, &LIM) {
        Parsed::Command { cmd: Command::Slabs { reply }, .. } => reply,
        Parsed::Error { reply, consumed, swallow: 0, close: false, too_large_key: None } if consumed == buf.len() => {
            reply
        }
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

#[test]
fn lru_crawler() {
    assert_eq!(cmd(b"lru_crawler metadump all\r\n"), Command::LruCrawler(Crawler::Metadump(b"all")));
    assert_eq!(cmd(b"lru_crawler crawl 1,2\r\n"), Command::LruCrawler(Crawler::Crawl(b"1,2")));
    assert_eq!(cmd(b"lru_crawler tocrawl 10\r\n"), Command::LruCrawler(Crawler::Tocrawl(10)));
    assert_eq!(cmd(b"lru_crawler sleep 1000000\r\n"), Command::LruCrawler(Crawler::Sleep(1_000_000)));
    assert_eq!(cmd(b"lru_crawler enable\r\n"), Command::LruCrawler(Crawler::Enable));
    assert_eq!(cmd(b"lru_crawler disable\r\n"), Command::LruCrawler(Crawler::Disable));
    assert_eq!(settled(b"lru_crawler sleep 1000001\r\n"), reply::CRAWLER_SLEEP);
    assert_eq!(settled(b"lru_crawler sleep x\r\n"), reply::BAD_FORMAT);
    assert_eq!(settled(b"lru_crawler tocrawl -1\r\n"), reply::BAD_FORMAT);
    for bad in
        [&b"lru_crawler\r\n"[..], b"lru_crawler metadump\r\n", b"lru_crawler bogus\r\n", b"lru_crawler a b c\r\n"]
    {
        assert_eq!(settled(bad), reply::ERROR, "{}", String::from_utf8_lossy(bad));
    }
    // mgdump is 1.6.38's; 1.6.18 (the peer here) does not know it.
    assert_eq!(settled(b"lru_crawler mgdump all\r\n"), reply::ERROR);
}

#[test]
fn cache_memlimit() {
    assert_eq!(cmd(b"cache_memlimit 100\r\n"), Command::CacheMemlimit { mb: 100, noreply: false });
    assert_eq!(cmd(b"cache_memlimit 8 noreply\r\n"), Command::CacheMemlimit { mb: 8, noreply: true });
    assert_eq!(cmd(b"cache_memlimit 64 x\r\n"), Command::CacheMemlimit { mb: 64, noreply: false });
    assert_eq!(settled(b"cache_memlimit 7\r\n"), reply::MEMLIMIT_TOO_SMALL);
    assert_eq!(settled(b"cache_memlimit 1000000001\r\n"), reply::MEMLIMIT_NOT_BYTES);
    for bad in
        [&b"cache_memlimit\r\n"[..], b"cache_memlimit abc\r\n", b"cache_memlimit -5\r\n", b"cache_memlimit 1 2 3\r\n"]
    {
        assert_eq!(settled(bad), reply::ERROR, "{}", String::from_utf8_lossy(bad));
    }
    // Strict numbers: no sign, no wrap past u32.
    assert_eq!(settled(b"cache_memlimit +64\r\n"), reply::ERROR);
    assert_eq!(settled(b"cache_memlimit 4294967296\r\n"), reply::ERROR);
    assert_eq!(settled(b"cache_memlimit abc noreply\r\n"), b"");
    assert_eq!(settled(b"cache_memlimit 7 noreply\r\n"), b"");
}

#[test]
fn slabs() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"slabs automove invalid\r\n", reply::BAD_FORMAT),
        (b"slabs automove 0\r\n", reply::OK),
        (b"slabs automove 2\r\n", reply::OK),
        (b"slabs automove 3\r\n", reply::ERROR),
        (b"slabs automove\r\n", reply::ERROR),
        (b"slabs automove ratio 0.5\r\n", reply::OK),
        (b"slabs automove ratio\r\n", reply::ERROR),
        (b"slabs automove ratio x 1\r\n", reply::ERROR),
        (b"slabs automove freeratio 0.1 x\r\n", reply::OK),
        (b"slabs automove window 30 x\r\n", reply::OK),
        (b"slabs automove window x y\r\n", reply::BAD_FORMAT),
        (b"slabs automove 1 noreply\r\n", b""),
        (b"slabs automove 9 noreply\r\n", b""),
        (b"slabs reassign 1 2\r\n", reply::REASSIGN_NOSPARE),
        (b"slabs reassign 0 2\r\n", reply::REASSIGN_NOSPARE),
        (b"slabs reassign 1 1\r\n", reply::REASSIGN_SAME),
        (b"slabs reassign -1 2\r\n", reply::REASSIGN_BADCLASS),
        (b"slabs reassign 1 40\r\n", reply::REASSIGN_BADCLASS),
        (b"slabs reassign x 2\r\n", reply::BAD_FORMAT),
        (b"slabs reassign 1\r\n", reply::ERROR),
        (b"slabs reassign 1 2 3\r\n", reply::ERROR),
        (b"slabs\r\n", reply::ERROR),
        (b"slabs bogus\r\n", reply::ERROR),
    ];
    for &(req, want) in cases {
        assert_eq!(settled(req), want, "{}", String::from_utf8_lossy(req));
    }
}

#[test]
fn shutdown_and_me() {
    assert_eq!(cmd(b"shutdown\r\n"), Command::Shutdown(ShutdownMode::Now));
    assert_eq!(cmd(b"shutdown graceful\r\n"), Command::Shutdown(ShutdownMode::Graceful));
    assert_eq!(cmd(b"shutdown now\r\n"), Command::Shutdown(ShutdownMode::Invalid));
    assert_eq!(cmd(b"shutdown graceful x\r\n"), Command::Shutdown(ShutdownMode::Invalid));
    assert_eq!(cmd(b"me k x y\r\n"), Command::MetaDebug { key: b"k", base64: false });
    assert_eq!(settled(b"me\r\n"), reply::BAD_FORMAT);
    assert_eq!(settled(b"me foo b\r\n"), reply::BAD_FORMAT);
}
