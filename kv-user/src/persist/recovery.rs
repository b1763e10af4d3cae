//! Start-up: opening (or creating) the log file, replaying it, and repairing a torn or corrupt tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

use super::format::{decode, file_header, Decoded, FILE_HEADER_LEN, FORMAT_VERSION, MAGIC};
use super::{copy_range, sync_dir, Paths, IO_CHUNK, LOG_FILE};
use crate::record::Record;

/// What start-up found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records replayed.
    pub records: u64,
    /// Size of the log file after recovery (header included).
    pub bytes: u64,
    /// Bytes cut off the end (a torn or corrupt tail).
    pub dropped_bytes: u64,
    /// Why they were cut, with the offset; `None` if the log was intact.
    pub dropped_reason: Option<String>,
}

/// A torn tail longer than this is treated like corruption (a copy is kept): one torn batch is rarely this big,
/// and a flipped length field can make a mid-file record look torn.
const SUSPICIOUS_TORN_BYTES: u64 = 64 << 10;

/// Opens the log for reading and appending (O_APPEND: every batch lands at the end whatever happened to the
/// offset), creating an empty one if there is none. Removes a compaction file left over by a crash.
pub(super) fn open_log_file(paths: &Paths) -> anyhow::Result<File> {
    if paths.tmp.exists() {
        log::warn!("removing {} left by an interrupted compaction", paths.tmp.display());
        fs::remove_file(&paths.tmp).with_context(|| format!("cannot remove {}", paths.tmp.display()))?;
    }
    if !paths.log.exists() {
        create_log(paths).with_context(|| format!("cannot create {}", paths.log.display()))?;
    }
    open_append(&paths.log)
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new().read(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// Replays the log in `file` (from [`open_log_file`]) into `apply` and cuts a torn or corrupt tail. Returns
/// the report, and the file to append to instead of `file` if the log had to be created again.
pub(super) fn replay(
    paths: &Paths,
    file: &File,
    apply: &mut dyn FnMut(&Record<'_>),
) -> anyhow::Result<(Recovery, Option<File>)> {
    let path = &paths.log;
    let file_len = file.metadata()?.len();
    let mut recovery = Recovery::default();
    let mut replaced = None;
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).with_context(|| format!("cannot read {}", path.display()))?;
    if !check_header(&mut reader, path)? {
        log::warn!("{}: torn file header ({file_len} bytes), starting an empty log", path.display());
        create_log(paths)?;
        replaced = Some(open_append(path)?);
        recovery.dropped_bytes = file_len;
        recovery.dropped_reason = Some(format!("torn file header ({file_len} bytes)"));
    } else {
        let s = scan(&mut reader, apply).with_context(|| format!("cannot read {}", path.display()))?;
        recovery.records = s.records;
        if let Some((reason, corrupt)) = s.stop {
            let (dropped, reason) = repair_tail(paths, file, file_len, s.valid_end, reason, corrupt)?;
            recovery.dropped_bytes = dropped;
            recovery.dropped_reason = Some(reason);
        }
    }
    recovery.bytes = replaced.as_ref().unwrap_or(file).metadata()?.len();
    Ok((recovery, replaced))
}

/// Creates an empty log (header only) atomically: a crash leaves either no log or a valid one.
fn create_log(paths: &Paths) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&paths.tmp)?;
    f.write_all(&file_header())?;
    f.sync_all()?;
    fs::rename(&paths.tmp, &paths.log)?;
    sync_dir(&paths.dir)
}

/// Checks the file header. `Ok(false)` means the file is a torn prefix of a header (crash during creation).
fn check_header(file: &mut impl Read, path: &Path) -> anyhow::Result<bool> {
    let mut h = Vec::with_capacity(FILE_HEADER_LEN);
    file.take(FILE_HEADER_LEN as u64).read_to_end(&mut h)?;
    let want = file_header();
    if h.len() < FILE_HEADER_LEN && want.starts_with(&h) {
        return Ok(false);
    }
    if h.len() < FILE_HEADER_LEN || h[..8] != MAGIC {
        bail!("{} is not a kv log file (bad magic); refusing to touch it", path.display());
    }
    if h[8..12] != want[8..12] {
        let v = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        bail!("{} has log format version {v}, this server reads version {FORMAT_VERSION}", path.display());
    }
    if h[12..] != want[12..] {
        bail!("{}: file header checksum mismatch; refusing to touch it", path.display());
    }
    Ok(true)
}

/// Outcome of scanning the records of a log.
struct Scan {
    records: u64,
    valid_end: u64,
    /// Reason and whether it was corruption (as opposed to a torn tail).
    stop: Option<(String, bool)>,
}

/// Replays records from `file` (positioned after the header), reading in chunks so memory stays bounded by the
/// largest record actually present.
fn scan(file: &mut impl Read, apply: &mut dyn FnMut(&Record<'_>)) -> io::Result<Scan> {
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0usize;
    let mut offset = FILE_HEADER_LEN as u64;
    let mut records = 0u64;
    let mut eof = false;
    loop {
        match decode(&buf[start..]) {
            Decoded::Ok(rec, n) => {
                apply(&rec);
                records += 1;
                start += n;
                offset += n as u64;
            }
            Decoded::Incomplete if !eof => {
                buf.drain(..start);
                start = 0;
                let have = buf.len();
                buf.resize(have + IO_CHUNK, 0);
                let n = loop {
                    match file.read(&mut buf[have..]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                buf.truncate(have + n);
                eof = n == 0;
            }
            Decoded::Incomplete => {
                let left = buf.len() - start;
                let stop = (left > 0).then(|| (format!("torn record at offset {offset} ({left} bytes)"), false));
                return Ok(Scan { records, valid_end: offset, stop });
            }
            Decoded::Corrupt(why) => {
                let stop = Some((format!("corrupt record at offset {offset}: {why}"), true));
                return Ok(Scan { records, valid_end: offset, stop });
            }
        }
    }
}

fn is_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut zero = true;
    let mut check = ZeroCheck(&mut zero);
    copy_range(file, from, to, &mut check)?;
    Ok(zero)
}

struct ZeroCheck<'a>(&'a mut bool);

impl Write for ZeroCheck<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        *self.0 &= b.iter().all(|&x| x == 0);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Cuts the log at `valid_end`, keeping a copy of suspicious bytes for the operator. Returns the number of bytes
/// dropped and the reason to report.
fn repair_tail(
    paths: &Paths,
    file: &File,
    file_len: u64,
    valid_end: u64,
    reason: String,
    corrupt: bool,
) -> anyhow::Result<(u64, String)> {
    let path = &paths.log;
    let dropped = file_len - valid_end;
    let ctx = || format!("cannot repair {}", path.display());
    let mut reason = reason;
    let mut keep_copy = corrupt || dropped > SUSPICIOUS_TORN_BYTES;
    // Preallocated or never-written pages after a crash: common and harmless.
    if keep_copy && is_zero(file, valid_end, file_len).with_context(ctx)? {
        reason = format!("zero-filled tail at offset {valid_end} ({dropped} bytes)");
        keep_copy = false;
    }
    if keep_copy {
        // Nothing after a bad record can be trusted (there is no resync marker), so acknowledged writes may be
        // lost here: say so loudly and keep the bytes.
        let keep = paths.dir.join(format!("{LOG_FILE}.dropped-{}-at-{valid_end}", crate::clock::unix_now()));
        let saved =
            File::create(&keep).and_then(|mut out| copy_range(file, valid_end, file_len, &mut out).and(out.sync_all()));
        let copy = match saved {
            Ok(()) => format!("copy kept in {}", keep.display()),
            Err(e) => format!("could not keep a copy: {e}"),
        };
        log::warn!(
            "{}: {reason}; DROPPING {dropped} bytes from offset {valid_end} to {file_len} ({copy})",
            path.display()
        );
    } else {
        log::warn!("{}: {reason}; truncating to {valid_end} (dropping {dropped} bytes)", path.display());
    }
    file.set_len(valid_end).with_context(ctx)?;
    file.sync_all().with_context(ctx)?;
    Ok((dropped, reason))
}
