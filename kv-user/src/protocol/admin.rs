//! Operator commands: `lru_crawler`, `cache_memlimit`, `slabs`, `shutdown`. Token counts and replies
//! follow memcached 1.6.38's `process_lru_crawler_command`, `process_memlimit_command`,
//! `process_slabs_command` and `process_shutdown_command`; numbers are parsed strictly, as elsewhere
//! (so `cache_memlimit +64` or `4294967296` is `ERROR` where memcached's `strtoul` accepted or wrapped).

use super::command::{Command, Crawler, ShutdownMode};
use super::parse::{error, parse_i32, parse_u32, Parsed, Tokens};
use super::reply as r;

fn command(cmd: Command<'_>, consumed: usize) -> Parsed<'_> {
    Parsed::Command { cmd, consumed }
}

/// memcached's `set_noreply_maybe` + `out_string`: noreply hides every reply of the command.
fn reply_nr(noreply: bool, reply: &'static [u8]) -> &'static [u8] {
    if noreply {
        b""
    } else {
        reply
    }
}

pub(super) fn lru_crawler<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let (sub, arg) = (toks.get(1), toks.get(2));
    let cmd = match (toks.count(), sub) {
        (4, b"crawl") => Crawler::Crawl(arg),
        (4, b"metadump") => Crawler::Metadump(arg),
        (4, b"tocrawl") => match parse_u32(arg) {
            Some(n) => Crawler::Tocrawl(n),
            None => return error(r::BAD_FORMAT, consumed),
        },
        (4, b"sleep") => match parse_u32(arg) {
            Some(us) if us > 1_000_000 => return error(r::CRAWLER_SLEEP, consumed),
            Some(us) => Crawler::Sleep(us),
            None => return error(r::BAD_FORMAT, consumed),
        },
        (3, b"enable") => Crawler::Enable,
        (3, b"disable") => Crawler::Disable,
        _ => return error(r::ERROR, consumed),
    };
    command(Command::LruCrawler(cmd), consumed)
}

pub(super) fn cache_memlimit<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    if toks.count() != 3 && toks.count() != 4 {
        return error(r::ERROR, consumed);
    }
    let noreply = toks.noreply();
    let reply = match parse_u32(toks.get(1)) {
        None => r::ERROR,
        Some(mb) if mb < 8 => r::MEMLIMIT_TOO_SMALL,
        Some(mb) if mb > 1_000_000_000 => r::MEMLIMIT_NOT_BYTES,
        Some(mb) => return command(Command::CacheMemlimit { mb, noreply }, consumed),
    };
    error(reply_nr(noreply, reply), consumed)
}

/// memcached's `power_largest` with the default class table.
const LARGEST_CLASS: i32 = crate::store::CLASSES.end as i32 - 1;

pub(super) fn slabs<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let reply = match (toks.count(), toks.get(1)) {
        (5, b"reassign") => match (parse_i32(toks.get(2)), parse_i32(toks.get(3))) {
            (Some(src), Some(dst)) if src == dst => r::REASSIGN_SAME,
            // -1 asks memcached to pick a source with spare pages: there is none here.
            (Some(src), Some(dst)) if !(0..=LARGEST_CLASS).contains(&src) || !(0..=LARGEST_CLASS).contains(&dst) => {
                r::REASSIGN_BADCLASS
            }
            (Some(_), Some(_)) => r::REASSIGN_NOSPARE,
            _ => r::BAD_FORMAT,
        },
        (n, b"automove") if n >= 4 => {
            let reply = match toks.get(2) {
                b"ratio" | b"freeratio" if n >= 5 && parse_ratio(toks.get(3)) => r::OK,
                b"ratio" | b"freeratio" => r::ERROR,
                b"window" if n >= 5 && parse_u32(toks.get(3)).is_some() => r::OK,
                b"window" => r::BAD_FORMAT,
                level => match parse_u32(level) {
                    Some(0..=2) => r::OK,
                    Some(_) => r::ERROR,
                    None => r::BAD_FORMAT,
                },
            };
            reply_nr(toks.noreply(), reply)
        }
        _ => r::ERROR,
    };
    command(Command::Slabs { reply }, consumed)
}

/// memcached's `safe_strtod`: a whole token that is a floating-point number.
fn parse_ratio(t: &[u8]) -> bool {
    std::str::from_utf8(t).is_ok_and(|s| s.parse::<f64>().is_ok())
}

pub(super) fn shutdown<'a>(toks: &Tokens<'a>, consumed: usize) -> Parsed<'a> {
    let mode = match (toks.count(), toks.get(1)) {
        (2, _) => ShutdownMode::Now,
        (3, b"graceful") => ShutdownMode::Graceful,
        _ => ShutdownMode::Invalid,
    };
    command(Command::Shutdown(mode), consumed)
}
