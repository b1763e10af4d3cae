//! Parsed requests. Everything borrows from the connection's read buffer: parsing allocates nothing.

pub use kv_common::SetMode;

/// `set`, `add`, `replace`, `append`, `prepend`, `cas`: `<cmd> <key> <flags> <exptime> <bytes>
/// [<cas unique>] [noreply]\r\n<data>\r\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCmd<'a> {
    pub mode: SetMode,
    pub key: &'a [u8],
    /// Client flags, stored with the item.
    pub flags: u32,
    pub exptime: i64,
    /// Only for `SetMode::Cas`.
    pub cas_unique: u64,
    pub data: &'a [u8],
    pub noreply: bool,
}

/// `incr` / `decr`: `<cmd> <key> <delta> [noreply]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArithCmd<'a> {
    pub key: &'a [u8],
    /// `incr` (true) or `decr`.
    pub incr: bool,
    pub delta: u64,
    pub noreply: bool,
}

/// `touch <key> <exptime> [noreply]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchCmd<'a> {
    pub key: &'a [u8],
    pub exptime: i64,
    pub noreply: bool,
}

/// `gat` / `gats`: `<cmd> <exptime> <key>*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatCmd<'a> {
    pub exptime: i64,
    pub keys: Keys<'a>,
    /// `gats`: the reply carries each item's CAS.
    pub cas: bool,
}

/// Keys of a multi-key command, iterated without allocating (space-separated tokens of the request line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    /// The rest of the line after the command name (and after the exptime for gat/gats), already validated.
    pub raw: &'a [u8],
}

impl<'a> Keys<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.raw.split(|b| *b == b' ').filter(|k| !k.is_empty())
    }

    /// The keys from byte `from` of `raw` on, each with its start offset (to resume a multiget there).
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
        let raw = self.raw;
        let mut pos = from.min(raw.len());
        std::iter::from_fn(move || {
            pos += raw[pos..].iter().take_while(|&&b| b == b' ').count();
            if pos >= raw.len() {
                return None;
            }
            let start = pos;
            pos += raw[pos..].iter().position(|&b| b == b' ').unwrap_or(raw.len() - pos);
            Some((start, &raw[start..pos]))
        })
    }
}

/// Meta command flags (doc/protocol.txt, "Meta Commands"). Flags that carry a token keep it as raw bytes
/// or as the parsed number; unknown flags are a parse error (`CLIENT_ERROR invalid flag`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaFlags<'a> {
    pub base64_key: bool,          // b
    pub return_cas: bool,          // c
    pub return_flags: bool,        // f
    pub return_hit: bool,          // h
    pub return_key: bool,          // k
    pub return_last_access: bool,  // l
    pub opaque: Option<&'a [u8]>,  // O<token>
    pub quiet: bool,               // q
    pub return_size: bool,         // s
    pub return_ttl: bool,          // t
    pub return_value: bool,        // v
    pub no_lru_bump: bool,         // u
    pub explicit_cas: Option<u64>, // E<cas>: use this CAS value for the new item
    pub compare_cas: Option<u64>,  // C<cas>: compare-and-swap
    pub vivify_ttl: Option<i64>,   // N<ttl>: autovivify on miss with this TTL
    pub set_ttl: Option<i64>,      // T<ttl>: update/set TTL
    pub client_flags: Option<u32>, // F<flags> (ms)
    pub invalidate: bool,          // I: md marks stale instead of deleting; ms with I + stale CAS
    pub mode: Option<u8>,          // M<mode>: ms E A P R S, ma I + D -
    pub delta: Option<u64>,        // D<n> (ma)
    pub initial: Option<u64>,      // J<n> (ma, initial value on autovivify)
    pub recache_ttl: Option<i64>,  // R<ttl> (mg)
    /// The return flags among c f h k l O s t, in request order: memcached echoes them in that order.
    pub ret_order: [u8; 8],
    pub ret_count: u8,
    pub remove_value: bool, // x (md): empty the value but keep the item
}

/// One request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// get / gets
    Get {
        keys: Keys<'a>,
        cas: bool,
    },
    /// gat / gats
    Gat(GatCmd<'a>),
    /// set / add / replace / append / prepend / cas
    Store(StoreCmd<'a>),
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    /// incr / decr
    Arith(ArithCmd<'a>),
    Touch(TouchCmd<'a>),
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Version,
    Verbosity {
        level: u32,
        noreply: bool,
    },
    /// `stats [<subcommand> ...]`.
    Stats(StatsCmd),
    Quit,
    /// mg <key> <flags>*
    MetaGet {
        key: &'a [u8],
        flags: MetaFlags<'a>,
    },
    /// ms <key> <datalen> <flags>*\r\n<data>\r\n
    MetaSet {
        key: &'a [u8],
        data: &'a [u8],
        flags: MetaFlags<'a>,
    },
    /// md <key> <flags>*
    MetaDelete {
        key: &'a [u8],
        flags: MetaFlags<'a>,
    },
    /// ma <key> <flags>*
    MetaArith {
        key: &'a [u8],
        flags: MetaFlags<'a>,
    },
    /// mn
    MetaNoop,
    /// `me <key> [b]` (debug): the item's metadata. `base64`: the key is base64 (already validated).
    MetaDebug {
        key: &'a [u8],
        base64: bool,
    },
    /// `lru_crawler <subcommand> ...`.
    LruCrawler(Crawler<'a>),
    /// `cache_memlimit <megabytes> [noreply]`, already range-checked (8 ..= 1e9).
    CacheMemlimit {
        mb: u32,
        noreply: bool,
    },
    /// `slabs reassign|automove ...`: the store has no slab pages to move, so the parser settles the
    /// reply (possibly empty, for noreply) and the command changes nothing.
    Slabs {
        reply: &'static [u8],
    },
    /// `shutdown [graceful]`; whether it is allowed is the executor's call (`-A`).
    Shutdown(ShutdownMode),
}

/// `lru_crawler` subcommands. Class lists stay raw: memcached checks that the crawler is enabled
/// before it parses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crawler<'a> {
    /// `crawl <all|hash|c1,c2,...>`
    Crawl(&'a [u8]),
    /// `metadump <all|hash|c1,c2,...>`
    Metadump(&'a [u8]),
    Tocrawl(u32),
    /// Microseconds, at most one second.
    Sleep(u32),
    Enable,
    Disable,
}

/// How `shutdown` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    Now,
    Graceful,
    /// Any other argument: `CLIENT_ERROR invalid shutdown mode` once shutdown is enabled.
    Invalid,
}

impl Command<'_> {
    /// A meta command (its quiet mode hides successes, never errors).
    pub fn is_meta(&self) -> bool {
        matches!(
            self,
            Command::MetaGet { .. }
                | Command::MetaSet { .. }
                | Command::MetaDelete { .. }
                | Command::MetaArith { .. }
                | Command::MetaNoop
                | Command::MetaDebug { .. }
        )
    }
}

/// Which `stats` listing: memcached's `process_stat` picks it by the first argument alone and ignores
/// the rest, except that `detail` and `cachedump` read theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsCmd {
    /// `stats` alone.
    General,
    Reset,
    Settings,
    Items,
    Slabs,
    Sizes,
    Conns,
    Extstore,
    /// `stats detail on|off|dump`: per-prefix counters.
    Detail(Detail),
    /// `stats cachedump <class> <limit>`: keys of one size class (0 = no limit).
    CacheDump {
        class: u32,
        limit: u32,
    },
}

/// `stats detail` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    On,
    Off,
    Dump,
}

impl<'a> Command<'a> {
    /// The flags of a meta command that has them (mg, ms, md, ma).
    pub fn meta_flags_mut(&mut self) -> Option<&mut MetaFlags<'a>> {
        match self {
            Command::MetaGet { flags, .. }
            | Command::MetaSet { flags, .. }
            | Command::MetaDelete { flags, .. }
            | Command::MetaArith { flags, .. } => Some(flags),
            _ => None,
        }
    }
}
