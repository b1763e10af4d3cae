//! `truncate`: cutting the log at a record boundary by hand, keeping what is cut off.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use super::when::{format_stamp, parse_time};
use super::{damage, LogFile, SOUND};
use crate::persist::format::FILE_HEADER_LEN;
use crate::persist::lock::DirLock;
use crate::persist::{copy_range, sync_dir, LOG_FILE};

#[derive(Debug, Args)]
pub(super) struct TruncateArgs {
    /// The server's data directory.
    #[arg(long = "data-dir", value_name = "DIR", default_value = "kv-data")]
    data_dir: PathBuf,
    /// Where to cut. A plain number is a byte offset, which must start a record (or end the last whole one).
    /// Anything else is a time (RFC 3339, or @UNIX_SECONDS): the log keeps the records logged up to it.
    #[arg(long, value_name = "OFFSET|TIME", value_parser = parse_cut)]
    at: Cut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Offset(u64),
    /// Unix nanoseconds.
    Time(u64),
}

fn parse_cut(s: &str) -> Result<Cut, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Cut::Offset).map_err(|_| format!("offset {s} is too large"));
    }
    parse_time(s).map(Cut::Time)
}

/// Cuts the log at the boundary `args.at` names, after copying the bytes past it to
/// `kv.log.cut-<unix time>-at-<offset>` (appending that file to the log undoes the cut). Takes the directory
/// lock, so it never runs beside a server.
pub(super) fn truncate(args: &TruncateArgs) -> anyhow::Result<i32> {
    let dir = &args.data_dir;
    if !dir.join(LOG_FILE).is_file() {
        bail!("no log in {} ({LOG_FILE} missing)", dir.display());
    }
    let _lock = DirLock::acquire(dir).context("truncate needs the data directory to itself")?;
    let log = LogFile::open(dir)?;
    let mut walk = log.walk()?;
    // The cut, and the first record it removes (its offset and stamp), if any.
    let mut cut = None;
    let (mut kept, mut removed) = (0u64, 0u64);
    while let Some((at, e, len)) = walk.next()? {
        let end = at + len as u64;
        if cut.is_none() {
            match args.at {
                Cut::Offset(o) if o == at => cut = Some((at, Some(e.stamp_ns))),
                Cut::Offset(o) if o > at && o < end => bail!(
                    "offset {o} is inside the record at {at} ({len} bytes): cut at a record boundary, such as {at} \
                     or {end} (`kv-server log dump` lists them)"
                ),
                Cut::Time(t) if e.stamp_ns > t => cut = Some((at, Some(e.stamp_ns))),
                _ => {}
            }
        }
        if cut.is_some() {
            removed += 1;
        } else {
            kept += 1;
        }
    }
    let valid_end = walk.offset();
    let problem = damage(walk.end(), valid_end);
    let (cut, first_removed) = match (cut, args.at) {
        (Some(c), _) => c,
        (None, Cut::Offset(o)) if o == valid_end => (o, None),
        (None, Cut::Offset(o)) if o < FILE_HEADER_LEN as u64 => {
            bail!("offset {o} is inside the file header: the first record starts at {FILE_HEADER_LEN}")
        }
        (None, Cut::Offset(o)) => bail!(
            "offset {o} is past the last whole record, which ends at {valid_end}{}",
            problem.as_ref().map_or(String::new(), |p| format!(" ({p})"))
        ),
        // Every whole record was logged by then: only damage, if any, goes.
        (None, Cut::Time(_)) => (valid_end, None),
    };
    let name = log.path.display();
    if cut == log.len {
        writeln!(io::stdout(), "{name}: nothing to cut: the log ends at offset {cut} ({kept} records)")?;
        return Ok(SOUND);
    }
    let dropped = log.len - cut;
    let why = match (first_removed, &problem) {
        (Some(ns), _) => format!(
            "before the record logged at {}",
            format_stamp(ns).unwrap_or_else(|| "an unknown time (from a version 1 log)".into())
        ),
        (None, Some(p)) => format!("where the damage starts: {p}"),
        (None, None) => unreachable!("a sound log ends on a record boundary"),
    };
    let (keep, mut out) = backup_file(dir, cut).context("cannot keep the bytes to cut; nothing was cut")?;
    let saved = copy_range(&log.file, cut, log.len, &mut out).and(out.sync_all());
    saved.with_context(|| format!("cannot keep the bytes to cut in {}; nothing was cut", keep.display()))?;
    let f = OpenOptions::new().write(true).open(&log.path)?;
    f.set_len(cut).and_then(|()| f.sync_all()).with_context(|| format!("cannot truncate {name}"))?;
    sync_dir(dir)?;
    let damaged = problem.map_or(String::new(), |_| format!(" and {} damaged bytes", log.len - valid_end));
    writeln!(
        io::stdout(),
        "{name}: cut at offset {cut}, {why}: kept {kept} records; removed {removed} records{damaged} ({dropped} bytes), \
         saved in {} (to undo before a server appends: cat that file >> {LOG_FILE})",
        keep.display()
    )?;
    Ok(SOUND)
}

/// A new file for the bytes cut at `cut`: `kv.log.cut-<unix time>-at-<cut>`, with a suffix if that exists (two
/// cuts in one second), never overwriting an earlier copy.
fn backup_file(dir: &Path, cut: u64) -> io::Result<(PathBuf, File)> {
    let base = format!("{LOG_FILE}.cut-{}-at-{cut}", crate::clock::unix_now());
    for n in 0..1000 {
        let path = dir.join(if n == 0 { base.clone() } else { format!("{base}.{n}") });
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{base}.* all exist")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_number_is_an_offset_anything_else_a_time() {
        assert_eq!(parse_cut("1234"), Ok(Cut::Offset(1234)));
        assert_eq!(parse_cut("@1748779200"), Ok(Cut::Time(1_748_779_200_000_000_000)));
        assert_eq!(parse_cut("2025-06-01T12:00:00Z"), Ok(Cut::Time(1_748_779_200_000_000_000)));
        assert!(parse_cut("").is_err());
        assert!(parse_cut("99999999999999999999999").is_err());
        assert!(parse_cut("soon").is_err());
    }
}
