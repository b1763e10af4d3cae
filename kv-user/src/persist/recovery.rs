//! Start-up: opening (or creating) the log file, replaying it, and repairing a torn or corrupt tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

use super::format::{encode, file_header, parse_header, HeaderError, Version, FILE_HEADER_LEN};
use super::walk::{End, Walk};
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
    /// The format version the log had, if it was an older one, rewritten in the current format.
    pub upgraded_from: Option<u32>,
    /// The latest record stamp found (unix ns; 0 if none): new stamps never go below it.
    pub last_stamp_ns: u64,
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

/// Replays the log in `file` (from [`open_log_file`]) into `apply` and cuts a torn or corrupt tail; an older
/// format's log is rewritten in the current one as it is replayed. Returns the report, and the file to append
/// to instead of `file` if the log was created again or rewritten.
pub(super) fn replay(
    paths: &Paths,
    file: &File,
    apply: &mut dyn FnMut(&Record<'_>),
) -> anyhow::Result<(Recovery, Option<File>)> {
    let path = &paths.log;
    let file_len = file.metadata()?.len();
    let mut recovery = Recovery::default();
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(version) = check_header(&mut reader, path)? else {
        log::warn!("{}: torn file header ({file_len} bytes), starting an empty log", path.display());
        create_log(paths)?;
        let replaced = open_append(path)?;
        recovery.bytes = replaced.metadata()?.len();
        recovery.dropped_bytes = file_len;
        recovery.dropped_reason = Some(format!("torn file header ({file_len} bytes)"));
        return Ok((recovery, Some(replaced)));
    };
    let mut upgrade = None;
    if version != Version::CURRENT {
        upgrade = Some(Upgrade::start(paths).with_context(|| format!("cannot upgrade {}", path.display()))?);
    }
    let mut walk = Walk::new(reader, version);
    let read_err = || format!("cannot read {}", path.display());
    while let Some((_, entry, _)) = walk.next().with_context(read_err)? {
        apply(&entry.rec);
        recovery.records += 1;
        recovery.last_stamp_ns = recovery.last_stamp_ns.max(entry.stamp_ns);
        if let Some(u) = &mut upgrade {
            u.add(&entry.rec).with_context(|| format!("cannot upgrade {}", path.display()))?;
        }
    }
    let (valid_end, end) = (walk.offset(), walk.end());
    let stop = match end {
        None | Some(End::Clean) => None,
        Some(End::Torn { bytes }) => Some((format!("torn record at offset {valid_end} ({bytes} bytes)"), false)),
        Some(End::Corrupt(why)) => Some((format!("corrupt record at offset {valid_end}: {why}"), true)),
    };
    if let Some((reason, corrupt)) = stop {
        let (dropped, reason) = repair_tail(paths, file, file_len, valid_end, reason, corrupt)?;
        recovery.dropped_bytes = dropped;
        recovery.dropped_reason = Some(reason);
    }
    let replaced = match upgrade {
        Some(u) => {
            let f = u.finish(paths).with_context(|| format!("cannot upgrade {}", path.display()))?;
            log::info!(
                "{}: rewrote the log from format version {} to {} ({} records; their time is unknown: stamped 0)",
                path.display(),
                version.number(),
                Version::CURRENT.number(),
                recovery.records
            );
            recovery.upgraded_from = Some(version.number());
            Some(f)
        }
        None => None,
    };
    recovery.bytes = replaced.as_ref().unwrap_or(file).metadata()?.len();
    Ok((recovery, replaced))
}

/// Rewrites an older format's log in the current one while it is replayed: records are re-encoded with stamp 0
/// (their time is unknown) into the compaction file, which replaces the log only once complete and synced, so a
/// crash at any point leaves the old log or the new one, whole.
struct Upgrade {
    out: BufWriter<File>,
    scratch: Vec<u8>,
}

impl Upgrade {
    fn start(paths: &Paths) -> io::Result<Upgrade> {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&paths.tmp)?;
        let mut out = BufWriter::with_capacity(IO_CHUNK, f);
        out.write_all(&file_header(Version::CURRENT))?;
        Ok(Upgrade { out, scratch: Vec::new() })
    }

    fn add(&mut self, rec: &Record<'_>) -> io::Result<()> {
        self.scratch.clear();
        // The old format held it, so the current one can: the limits are the same.
        encode(rec, 0, &mut self.scratch).map_err(io::Error::other)?;
        self.out.write_all(&self.scratch)
    }

    fn finish(self, paths: &Paths) -> io::Result<File> {
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&paths.tmp, &paths.log)?;
        sync_dir(&paths.dir)?;
        OpenOptions::new().read(true).append(true).open(&paths.log)
    }
}

/// Creates an empty log (header only) atomically: a crash leaves either no log or a valid one.
fn create_log(paths: &Paths) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&paths.tmp)?;
    f.write_all(&file_header(Version::CURRENT))?;
    f.sync_all()?;
    fs::rename(&paths.tmp, &paths.log)?;
    sync_dir(&paths.dir)
}

/// Reads the file header: the log's version, or `None` for a torn prefix of a header (crash during creation).
fn check_header(file: &mut impl Read, path: &Path) -> anyhow::Result<Option<Version>> {
    let mut h = Vec::with_capacity(FILE_HEADER_LEN);
    file.take(FILE_HEADER_LEN as u64).read_to_end(&mut h)?;
    match parse_header(&h) {
        Ok(v) => Ok(Some(v)),
        Err(HeaderError::Torn) => Ok(None),
        Err(e) => bail!("{}: {e}; refusing to touch it", path.display()),
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
        // The copy's name made durable (its directory fsynced) before the bytes are cut from the log.
        let saved = File::create(&keep)
            .and_then(|mut out| copy_range(file, valid_end, file_len, &mut out).and(out.sync_all()))
            .and_then(|()| sync_dir(&paths.dir));
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
