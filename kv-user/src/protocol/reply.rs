//! memcached's reply literals, byte for byte (memcached 1.6 `proto_text.c`), in one place.
//!
//! Whole reply lines end in `\r\n`. The meta status codes ([`HD`], [`VA`], ...) do not: return flags
//! follow them on the same line, and the writer ends the line with [`CRLF`].

/// Line terminator.
pub const CRLF: &[u8] = b"\r\n";

// Classic command replies.
pub const STORED: &[u8] = b"STORED\r\n";
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
pub const EXISTS: &[u8] = b"EXISTS\r\n";
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
pub const DELETED: &[u8] = b"DELETED\r\n";
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
/// Ends a get/gat reply and every `stats` listing (the wire contract's, which the XDP program writes too).
pub use kv_common::END;
pub const OK: &[u8] = b"OK\r\n";
/// `stats reset`.
pub const RESET: &[u8] = b"RESET\r\n";
/// Unknown command (and wrong token counts).
pub const ERROR: &[u8] = b"ERROR\r\n";
// A get hit's `VALUE <key> <flags> <bytes>[ <cas>]\r\n` line: kv_common::ValueHeader.
/// Prefix of the `version` reply.
pub const VERSION: &[u8] = b"VERSION ";
/// Prefix of each `stats` line: `STAT <name> <value>\r\n`.
pub const STAT: &[u8] = b"STAT ";

// Meta status codes (no line end: flags follow).
/// Success without a value.
pub const HD: &[u8] = b"HD";
/// Success with a value: `VA <bytes> <flags>*\r\n<data>\r\n`.
pub const VA: &[u8] = b"VA ";
/// mg miss; also the answer to `me`.
pub const EN: &[u8] = b"EN";
/// md / ma / ms(C): not found.
pub const NF: &[u8] = b"NF";
/// ms: not stored.
pub const NS: &[u8] = b"NS";
/// CAS mismatch.
pub const EX: &[u8] = b"EX";
/// `mn`.
pub const MN: &[u8] = b"MN";

// CLIENT_ERROR: request line problems (classic commands).
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const DELETE_USAGE: &[u8] = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
pub const BAD_DELTA_ARGUMENT: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
pub const BAD_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
pub const BAD_DATA_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
/// incr/decr/ma on a value that is not a decimal number.
pub const NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";

// CLIENT_ERROR: meta flags.
/// Too many flags on `mg` (its wording differs from the other meta commands').
pub const MG_FLAGS_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags are too long\r\n";
/// Too many flags on `ms`, `md`, `ma`.
pub const FLAGS_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags too long\r\n";
pub const DUPLICATE_FLAG: &[u8] = b"CLIENT_ERROR duplicate flag\r\n";
pub const INVALID_FLAG: &[u8] = b"CLIENT_ERROR invalid flag\r\n";
/// Every flag problem of `md` and `ma`.
pub const INVALID_OR_DUPLICATE_FLAG: &[u8] = b"CLIENT_ERROR invalid or duplicate flag\r\n";
/// `b` on a key that is not base64.
pub const DECODE_KEY: &[u8] = b"CLIENT_ERROR error decoding key\r\n";
pub const BAD_TOKEN: &[u8] = b"CLIENT_ERROR bad token in command line format\r\n";
pub const M_TOKEN_LENGTH: &[u8] = b"CLIENT_ERROR incorrect length for M token\r\n";
pub const BAD_INITIAL_VALUE: &[u8] = b"CLIENT_ERROR invalid numeric initial value\r\n";
pub const BAD_DELTA_VALUE: &[u8] = b"CLIENT_ERROR invalid numeric delta value\r\n";
pub const OPAQUE_TOO_LONG: &[u8] = b"CLIENT_ERROR opaque token too long\r\n";
pub const MS_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ms M token\r\n";
pub const MA_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ma M token\r\n";

// Admin commands.
/// `shutdown` on a server started without `-A` / `--enable-shutdown`.
pub const SHUTDOWN_NOT_ENABLED: &[u8] = b"ERROR: shutdown not enabled\r\n";
pub const DETAIL_USAGE: &[u8] = b"CLIENT_ERROR usage: stats detail on|off|dump\r\n";
/// `stats cachedump` with fewer than two arguments.
pub const BAD_COMMAND_LINE: &[u8] = b"CLIENT_ERROR bad command line\r\n";
/// `stats cachedump` of a class past memcached's `MAX_NUMBER_OF_SLAB_CLASSES`.
pub const ILLEGAL_SLAB_ID: &[u8] = b"CLIENT_ERROR Illegal slab id\r\n";

// SERVER_ERROR and connection-level errors.
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
/// A multiget reply that cannot be buffered or framed.
pub const OUT_OF_MEMORY_STORE: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";
pub const OUT_OF_MEMORY_GET: &[u8] = b"SERVER_ERROR out of memory writing get response\r\n";
/// The journal write for the batch failed (kv-server only).
/// Sent to a connection refused over the connection limit (maxconns_fast).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"ERROR Too many open connections\r\n";

// Operator commands (memcached's process_lru_crawler_command, process_memlimit_command,
// process_slabs_command, process_shutdown_command).
pub const SHUTDOWN_MODE: &[u8] = b"CLIENT_ERROR invalid shutdown mode\r\n";
pub const CRAWLER_DISABLED: &[u8] = b"CLIENT_ERROR lru crawler disabled\r\n";
pub const CRAWLER_BADCLASS: &[u8] = b"BADCLASS invalid class id\r\n";
pub const CRAWLER_NOTSTARTED: &[u8] = b"NOTSTARTED no items to crawl\r\n";
/// `lru_crawler crawl hash`: only metadump walks the hash table.
pub const CRAWLER_UNKNOWN: &[u8] = b"ERROR an unknown error happened\r\n";
pub const CRAWLER_START_FAILED: &[u8] = b"ERROR failed to start lru crawler thread\r\n";
pub const CRAWLER_SLEEP: &[u8] = b"CLIENT_ERROR sleep must be one second or less\r\n";
pub const MEMLIMIT_TOO_SMALL: &[u8] = b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n";
pub const MEMLIMIT_NOT_BYTES: &[u8] = b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n";
pub const REASSIGN_NOSPARE: &[u8] = b"NOSPARE source class has no spare pages\r\n";
pub const REASSIGN_SAME: &[u8] = b"SAME src and dst class are identical\r\n";
pub const REASSIGN_BADCLASS: &[u8] = b"BADCLASS invalid src or dst class id\r\n";
/// Prefix of the `me` reply.
pub const ME: &[u8] = b"ME ";
