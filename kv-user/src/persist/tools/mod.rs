//! `kv-server log <verb> --data-dir DIR`: tools over the append-only log, for an operator: `verify`, `dump`,
//! `stats` (read-only) and `truncate` (repair by hand). They read the log with the server's own decoder
//! (`format`, `walk`), so they accept exactly what start-up would replay.
//!
//! Exit status: 0 when the log is sound (every byte of it is whole records), 1 when it is damaged (a bad
//! header, a torn or corrupt record: reported with its offset), 2 when the tool could not do its job (no log,
//! a newer format, an I/O error, a bad argument, a server holding the directory for `truncate`); 141 when
//! stdout was closed early (`dump | head`).
//!
//! Locking: the read-only verbs take no lock, so they can look at a running server's log; they read the file as
//! it was when opened (a batch being written at that moment reads as a torn tail). `truncate` takes the
//! directory lock like a server and refuses to run while one holds it.

mod inspect;
mod truncate;
mod when;

pub use when::{format_stamp, parse_time};

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use super::format::{parse_header, HeaderError, Version, FILE_HEADER_LEN};
use super::walk::{End, Walk};
use super::LOG_FILE;

/// The server's `--help` points here.
pub const SERVER_HELP: &str =
    "Log tools: kv-server log <verify|dump|stats|truncate> --data-dir DIR (see kv-server log --help)";

const SOUND: i32 = 0;
const DAMAGED: i32 = 1;
const FAILED: i32 = 2;
/// What a shell reports for a process killed by SIGPIPE; Rust ignores the signal, so it is said explicitly.
const BROKEN_PIPE: i32 = 141;

/// Inspect and repair the kv-server append-only log.
#[derive(Debug, Parser)]
#[command(
    name = "kv-server log",
    after_help = "Exit status: 0 the log is sound, 1 it is damaged (the first bad offset is reported), 2 the tool \
                  could not run.\nRead-only verbs work on a running server's log; truncate refuses while a server \
                  holds the directory."
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Read every record and check its CRC; report the first bad one (offset and why).
    Verify(Source),
    /// Print the records, one per line (text, or JSON with --json), with their offsets and times.
    Dump(inspect::DumpArgs),
    /// Count records, operations, keys, live keys and bytes; show the time span.
    Stats(inspect::StatsArgs),
    /// Cut the log at a record boundary; the bytes cut off are kept in a file beside it.
    Truncate(truncate::TruncateArgs),
}

/// The log a read-only verb reads: the data directory's, or a kept one (`--file`).
#[derive(Debug, Args)]
struct Source {
    /// The server's data directory.
    #[arg(long = "data-dir", value_name = "DIR", default_value = "kv-data")]
    data_dir: PathBuf,
    /// Read this log file instead of DIR/kv.log: a former log kept as history (kv.log.hist-*), or one a
    /// --recover-to set aside (kv.log.undone-*/kv.log). A relative path is taken from DIR.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

impl Source {
    fn open(&self) -> anyhow::Result<LogFile> {
        match &self.file {
            Some(f) => LogFile::open_path(self.data_dir.join(f)),
            None => LogFile::open(&self.data_dir),
        }
    }
}

/// Runs `kv-server log ...`; `args` is the whole command line (program name, `log`, verb, ...). Returns the exit
/// status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = std::iter::once(OsString::from("kv-server log")).chain(args.into_iter().skip(2));
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { FAILED } else { SOUND };
        }
    };
    let res = match &cli.verb {
        Verb::Verify(a) => inspect::verify(a),
        Verb::Dump(a) => inspect::dump(a),
        Verb::Stats(a) => inspect::stats(a),
        Verb::Truncate(a) => truncate::truncate(a),
    };
    match res {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => BROKEN_PIPE,
        Err(e) => {
            eprintln!("kv-server log: {e:#}");
            if e.is::<Damaged>() {
                DAMAGED
            } else {
                FAILED
            }
        }
    }
}

/// The log cannot be read past its header: damage, not a failure of the tool.
#[derive(Debug)]
struct Damaged(String);

impl fmt::Display for Damaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// The log of a data directory, opened for reading, its header checked.
struct LogFile {
    path: PathBuf,
    file: File,
    /// Its length when opened: a running server may append, the tools look at what was there.
    len: u64,
    version: Version,
}

impl LogFile {
    fn open(dir: &Path) -> anyhow::Result<LogFile> {
        LogFile::open_path(dir.join(LOG_FILE))
    }

    fn open_path(path: PathBuf) -> anyhow::Result<LogFile> {
        let mut file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut h = Vec::with_capacity(FILE_HEADER_LEN);
        (&mut file).take(FILE_HEADER_LEN as u64).read_to_end(&mut h)?;
        let version = match parse_header(&h) {
            Ok(v) => v,
            Err(e @ HeaderError::Unsupported(_)) => anyhow::bail!("{}: {e}", path.display()),
            Err(e) => return Err(Damaged(format!("{}: {e}", path.display())).into()),
        };
        Ok(LogFile { path, file, len, version })
    }

    /// Its records from the first, up to the length it had when opened.
    fn walk(&self) -> io::Result<Walk<io::Take<&File>>> {
        let mut f = &self.file;
        f.seek(SeekFrom::Start(FILE_HEADER_LEN as u64))?;
        Ok(Walk::new(f.take(self.len - FILE_HEADER_LEN as u64), self.version))
    }
}

/// What is wrong at the end of a walk, for people; `None` for a sound log.
fn damage(end: Option<End>, at: u64) -> Option<String> {
    match end? {
        End::Clean => None,
        End::Torn { bytes } => {
            Some(format!("the file ends inside the record at offset {at} ({bytes} bytes of it): a torn write"))
        }
        End::Corrupt(why) => Some(format!("bad record at offset {at}: {why}")),
    }
}
