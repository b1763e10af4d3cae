//! Command execution: runs one parsed [`Command`] against the store and appends memcached's exact reply
//! bytes to the connection's output buffer. One module per command family.
//!
//! Replies are built with `extend_from_slice` and `itoa` only: a GET hit costs a refcount on the value and
//! the growth of `out`, nothing else.

mod admin;
#[cfg(test)]
mod admin_tests;
mod arith;
mod binary;
mod get;
mod meta;
mod misc;
mod stats;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use bytes::BytesMut;

pub use admin::AdminState;
pub use binary::{execute_binary, reject_too_large as reject_too_large_binary};

use crate::config::Config;
use crate::protocol::command::Command;
use crate::protocol::reply as r;
use crate::stats::{bump, Settings, Sources, Stats};
use crate::store::Store;

/// Reported by `version` and `stats`.
pub const VERSION: &str = "1.6.38-kv";

/// Everything a command needs; cheap to clone (one per connection is fine).
#[derive(Clone)]
pub struct Ctx {
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub config: Arc<Config>,
    /// Set by `verbosity`, shown in `stats settings`; starts at `-v` count.
    pub verbosity: Arc<AtomicU32>,
    /// Extra `STAT` lines (the kernel path's counters), when the kernel path is up.
    pub extra_stats: Option<Arc<dyn crate::stats::Source>>,
    /// Operator settings (`-A`, the crawler switches).
    pub admin: Arc<AdminState>,
    /// The log, for its health in `stats` (None with `--no-persist`).
    pub log: Option<Arc<crate::persist::Log>>,
    /// The open sockets, for `stats conns` (the network layer keeps it).
    pub conns: Arc<crate::conns::Registry>,
}

impl Ctx {
    pub fn new(store: Arc<Store>, stats: Arc<Stats>, config: Arc<Config>) -> Ctx {
        let verbosity = Arc::new(AtomicU32::new(u32::from(config.verbose)));
        let admin = Arc::new(AdminState::new(config.enable_shutdown));
        Ctx { store, stats, config, verbosity, extra_stats: None, admin, log: None, conns: Default::default() }
    }

    /// The context with `extra` adding `stats` lines (set before the context is shared).
    pub fn with_extra_stats(mut self, extra: Arc<dyn crate::stats::Source>) -> Ctx {
        self.extra_stats = Some(extra);
        self
    }

    /// The context with the log's health in `stats` (set before the context is shared).
    pub fn with_log(mut self, log: Arc<crate::persist::Log>) -> Ctx {
        self.log = Some(log);
        self
    }

    /// What the general `stats` numbers (and `/metrics`) are read from, as of now.
    pub fn stat_sources(&self) -> Sources<'_> {
        Sources {
            counters: &self.stats,
            store: self.store.stats(),
            settings: Settings {
                max_connections: self.config.max_connections as u64,
                threads: self.config.threads as u64,
                limit_maxbytes: self.store.limit_maxbytes(),
            },
            log: self.log.as_deref().map(|l| l as &dyn crate::stats::Source),
            extra: self.extra_stats.as_deref(),
        }
    }
}

/// What the connection must do after writing the reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Highest journal sequence number this command produced (0 if none): the caller awaits its
    /// durability before sending the reply.
    pub seq: u64,
    /// `quit`: close the connection after flushing `out`.
    pub close: bool,
}

impl Outcome {
    fn seq(seq: u64) -> Outcome {
        Outcome { seq, close: false }
    }
}

/// Executes one command, appending the reply (possibly nothing, for noreply/quiet) to `out`.
pub fn execute(cmd: &Command<'_>, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    execute_from(cmd, 0, ctx, out, usize::MAX).0
}

/// [`execute`], except that a multi-key get/gat starts at byte `from` of its keys and stops before a
/// key once `out` holds `stop_at` bytes, returning the offset to resume from (see [`get::get`]).
/// Other commands run whole and return None.
pub fn execute_from(
    cmd: &Command<'_>,
    from: usize,
    ctx: &Ctx,
    out: &mut BytesMut,
    stop_at: usize,
) -> (Outcome, Option<usize>) {
    let span = get::Span { from, stop_at };
    let o = match *cmd {
        Command::Get { keys, cas } => return get::get(keys, cas, span, ctx, out),
        Command::Gat(ref gat) => return get::gat(gat, span, ctx, out),
        Command::Store(ref store) => storage::store(store, ctx, out),
        Command::Delete { key, noreply } => storage::delete(key, noreply, ctx, out),
        Command::Arith(ref arith) => arith::arith(arith, ctx, out),
        Command::Touch(ref touch) => get::touch(touch, ctx, out),
        Command::FlushAll { delay, noreply } => misc::flush_all(delay, noreply, ctx, out),
        Command::Version => misc::version(out),
        Command::Verbosity { level, noreply } => misc::verbosity(level, noreply, ctx, out),
        Command::Stats(cmd) => stats::stats(cmd, ctx, out),
        Command::Quit => Outcome { seq: 0, close: true },
        Command::MetaGet { key, flags } => meta::mg(key, &flags, ctx, out),
        Command::MetaSet { key, data, flags } => meta::ms(key, data, &flags, ctx, out),
        Command::MetaDelete { key, flags } => meta::md(key, &flags, ctx, out),
        Command::MetaArith { key, flags } => meta::ma(key, &flags, ctx, out),
        Command::MetaNoop => meta::code_only(r::MN, ctx, out),
        Command::MetaDebug { key, base64 } => admin::me(key, base64, ctx, out),
        Command::LruCrawler(c) => return admin::lru_crawler(c, from, stop_at, ctx, out),
        Command::CacheMemlimit { mb, noreply } => admin::cache_memlimit(mb, noreply, ctx, out),
        Command::Slabs { reply } => {
            out.extend_from_slice(reply);
            Outcome::default()
        }
        Command::Shutdown(mode) => admin::shutdown(mode, ctx, out),
    };
    (o, None)
}

/// For a storage command the parser refused as too large: memcached replies
/// `SERVER_ERROR object too large for cache` and removes the old item (so stale data doesn't linger).
pub fn reject_too_large(key: &[u8], ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    reject_too_large_noreply(key, false, ctx, out)
}

/// [`reject_too_large`] for a text command with `noreply`, which suppresses even this error in memcached.
pub fn reject_too_large_noreply(key: &[u8], noreply: bool, ctx: &Ctx, out: &mut BytesMut) -> Outcome {
    ctx.stats.detail.record_set(key);
    bump(&ctx.stats.store_too_large, 1);
    reply(out, noreply, r::TOO_LARGE);
    Outcome::seq(ctx.store.remove(key))
}

pub(crate) fn put_u64(out: &mut BytesMut, n: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
}

pub(crate) fn put_i64(out: &mut BytesMut, n: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
}

/// Appends the reply line (with its CRLF) unless the reply is suppressed.
pub(crate) fn reply(out: &mut BytesMut, noreply: bool, line: &[u8]) {
    if !noreply {
        out.extend_from_slice(line);
    }
}
