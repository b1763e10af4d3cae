//! The read-only verbs: `verify`, `dump`, `stats`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;
use serde_json::{json, Map, Value};

use super::when::{format_stamp, parse_time};
use super::{damage, LogFile, Source, DAMAGED, SOUND};
use crate::persist::format::{Entry, Version};
use crate::record::Record;

/// `verify`: walks the whole log; prints one line saying it is sound, or where and why it is not.
pub(super) fn verify(src: &Source) -> anyhow::Result<i32> {
    let log = src.open()?;
    let mut walk = log.walk()?;
    let (mut records, mut span) = (0u64, Span::default());
    while let Some((_, e, _)) = walk.next()? {
        records += 1;
        span.add(e.stamp_ns);
    }
    let at = walk.offset();
    let name = log.path.display();
    let v = log.version.number();
    match damage(walk.end(), at) {
        None => {
            let note = version_note(log.version);
            writeln!(
                io::stdout(),
                "{name}: sound: format version {v}{note}, {records} records, {} bytes, {}",
                log.len,
                span.describe()
            )?;
            Ok(SOUND)
        }
        Some(why) => {
            writeln!(
                io::stdout(),
                "{name}: DAMAGED: {why}; the {records} records before it are sound (format version {v}, up to offset \
                 {at}); {} bytes from there on cannot be trusted (`kv-server log truncate --at {at}` cuts them off; \
                 a server cuts them at start-up)",
                log.len - at
            )?;
            Ok(DAMAGED)
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct DumpArgs {
    #[command(flatten)]
    src: Source,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Only the records of this key (and every flush_all, which affects it too).
    #[arg(long, value_name = "K")]
    key: Option<OsString>,
    /// Only records logged at or after T (RFC 3339, or unix seconds). Excludes records of unknown time.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    since: Option<u64>,
    /// Only records logged at or before T (RFC 3339, or unix seconds).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    until: Option<u64>,
}

impl DumpArgs {
    fn wants(&self, e: &Entry<'_>) -> bool {
        let key_ok = match (&self.key, key_of(&e.rec)) {
            (Some(want), Some(k)) => want.as_bytes() == k,
            _ => true,
        };
        key_ok && self.since.is_none_or(|t| e.stamp_ns >= t) && self.until.is_none_or(|t| e.stamp_ns <= t)
    }
}

/// `dump`: one line per record that passes the filters; the walk's damage, if any, goes to stderr.
pub(super) fn dump(args: &DumpArgs) -> anyhow::Result<i32> {
    let log = args.src.open()?;
    let mut walk = log.walk()?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    while let Some((at, e, _)) = walk.next()? {
        if !args.wants(&e) {
            continue;
        }
        if args.json {
            let mut obj = Map::new();
            obj.insert("offset".into(), json!(at));
            obj.insert("logged_ns".into(), json!(e.stamp_ns));
            obj.insert("logged".into(), format_stamp(e.stamp_ns).map_or(Value::Null, Value::String));
            for (k, v) in fields(&e.rec) {
                obj.insert(k.into(), v);
            }
            serde_json::to_writer(&mut out, &obj)?;
            writeln!(out)?;
        } else {
            let when = format_stamp(e.stamp_ns).unwrap_or_else(|| "-".into());
            write!(out, "{at} {when}")?;
            for (k, v) in fields(&e.rec) {
                match v {
                    Value::String(s) if k == "op" => write!(out, " {s}")?,
                    Value::String(s) => write!(out, " {k}={s}")?,
                    v => write!(out, " {k}={v}")?,
                }
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    finish(&log, walk.end(), walk.offset())
}

/// Says on stderr where a walk hit damage; the exit status.
fn finish(log: &LogFile, end: Option<crate::persist::walk::End>, at: u64) -> anyhow::Result<i32> {
    match damage(end, at) {
        None => Ok(SOUND),
        Some(why) => {
            eprintln!("{}: DAMAGED: {why}; nothing after it was read", log.path.display());
            Ok(DAMAGED)
        }
    }
}

fn key_of<'a>(rec: &Record<'a>) -> Option<&'a [u8]> {
    match *rec {
        Record::Set { key, .. } | Record::Touch { key, .. } | Record::Delete { key } => Some(key),
        Record::FlushAll { .. } => None,
    }
}

/// A key as text: printable ASCII as is, anything else escaped (`\xNN`), so a line stays one line.
fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// The record's operation and fields, named as in the format (values are not printed, only their length).
fn fields(rec: &Record<'_>) -> Vec<(&'static str, Value)> {
    match *rec {
        Record::Set { key, flags, exptime, cas, time, value } => vec![
            ("op", json!("set")),
            ("key", json!(show_key(key))),
            ("flags", json!(flags)),
            ("exptime", json!(exptime)),
            ("cas", json!(cas)),
            ("time", json!(time)),
            ("value_len", json!(value.len())),
        ],
        Record::Touch { key, exptime, cas } => {
            vec![
                ("op", json!("touch")),
                ("key", json!(show_key(key))),
                ("exptime", json!(exptime)),
                ("cas", json!(cas)),
            ]
        }
        Record::Delete { key } => vec![("op", json!("delete")), ("key", json!(show_key(key)))],
        Record::FlushAll { at, max_cas } => {
            vec![("op", json!("flush_all")), ("at", json!(at)), ("max_cas", json!(max_cas))]
        }
    }
}

/// The first and last known stamps of a log, and how many records have none.
#[derive(Debug, Default)]
struct Span {
    first: Option<u64>,
    last: u64,
    unknown: u64,
}

impl Span {
    fn add(&mut self, ns: u64) {
        if ns == 0 {
            self.unknown += 1;
        } else {
            self.first.get_or_insert(ns);
            self.last = self.last.max(ns);
        }
    }

    fn describe(&self) -> String {
        let mut s = match self.first {
            Some(f) => format!(
                "logged from {} to {}",
                format_stamp(f).unwrap_or_default(),
                format_stamp(self.last).unwrap_or_default()
            ),
            None => "no stamped records".to_string(),
        };
        if self.unknown > 0 {
            s += &format!(" ({} records of unknown time, from a version 1 log)", self.unknown);
        }
        s
    }
}

#[derive(Debug, Args)]
pub(super) struct StatsArgs {
    #[command(flatten)]
    src: Source,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The state of one key while folding the log, as replay would leave it.
struct Live {
    cas: u64,
    time: u64,
    exptime: u64,
    /// Bytes of its last Set record: what a compaction would write for it.
    bytes: u64,
}

/// `stats`: counts over the whole log, and the keys a start-up now would bring back.
pub(super) fn stats(args: &StatsArgs) -> anyhow::Result<i32> {
    let log = args.src.open()?;
    let mut walk = log.walk()?;
    let (mut ops, mut span) = ([0u64; 4], Span::default());
    let mut keys: HashMap<Vec<u8>, Option<Live>> = HashMap::new();
    let mut flush_at = 0;
    let now = crate::clock::unix_now();
    while let Some((_, e, len)) = walk.next()? {
        span.add(e.stamp_ns);
        // The store's apply (store/replay.rs), minus memory limits.
        match e.rec {
            Record::Set { key, cas, time, exptime, .. } => {
                ops[0] += 1;
                keys.insert(key.to_vec(), Some(Live { cas, time, exptime, bytes: len as u64 }));
            }
            Record::Touch { key, exptime, cas } => {
                ops[1] += 1;
                if let Some(Some(l)) = keys.get_mut(key) {
                    (l.exptime, l.cas) = (exptime, cas);
                }
            }
            Record::Delete { key } => {
                ops[2] += 1;
                keys.insert(key.to_vec(), None);
            }
            Record::FlushAll { at, max_cas } => {
                ops[3] += 1;
                flush_at = at;
                for l in keys.values_mut() {
                    if l.as_ref().is_some_and(|l| l.cas <= max_cas || (at <= now && l.time < at)) {
                        *l = None;
                    }
                }
            }
        }
    }
    let dead =
        |l: &Live| (l.exptime != 0 && l.exptime <= now) || (flush_at != 0 && flush_at <= now && l.time < flush_at);
    let live: Vec<&Live> = keys.values().flatten().filter(|l| !dead(l)).collect();
    let live_bytes: u64 = live.iter().map(|l| l.bytes).sum();
    let records: u64 = ops.iter().sum();
    let at = walk.offset();
    let problem = damage(walk.end(), at);
    let v = log.version.number();
    if args.json {
        let obj = json!({
            "log": log.path.display().to_string(),
            "format_version": v,
            "file_bytes": log.len,
            "valid_bytes": at,
            "records": records,
            "ops": {"set": ops[0], "touch": ops[1], "delete": ops[2], "flush_all": ops[3]},
            "keys": keys.len(),
            "live_keys": live.len(),
            "live_bytes": live_bytes,
            "first_logged_ns": span.first,
            "last_logged_ns": span.first.map(|_| span.last),
            "unknown_time_records": span.unknown,
            "damage": problem,
        });
        writeln!(io::stdout(), "{obj}")?;
    } else {
        let (name, (set, touch, delete, flush)) = (log.path.display(), (ops[0], ops[1], ops[2], ops[3]));
        let (seen, live_keys, status) = (keys.len(), live.len(), problem.as_deref().unwrap_or("sound"));
        let text = format!(
            "log:      {name} (format version {v})\n\
             bytes:    {} in the file, {at} in whole records\n\
             records:  {records}: set {set}, touch {touch}, delete {delete}, flush_all {flush}\n\
             keys:     {seen} seen, {live_keys} live now ({live_bytes} bytes of records to keep)\n\
             time:     {}\n\
             status:   {status}\n",
            log.len,
            span.describe()
        );
        // Not println!: it panics when stdout is gone (`| head`); an error here ends the tool with 141.
        io::stdout().write_all(text.as_bytes())?;
    }
    Ok(if problem.is_some() { DAMAGED } else { SOUND })
}

/// What a tool line adds for a log of `v`.
fn version_note(v: Version) -> &'static str {
    match v {
        Version::V1 => " (no stamps; a server rewrites it as version 2 at start-up)",
        Version::V2 => "",
    }
}
