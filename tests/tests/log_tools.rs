//! `kv-server log <verb>` (kv-server only): verify, dump, stats and truncate through the real binary, on sound,
//! torn and bit-flipped logs, beside a running server and after it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kv_tests::{kv_only, run_with_timeout, server_bin, Server};
use serde_json::Value;

/// Runs `kv-server log <args> --data-dir dir`; returns (exit status, stdout, stderr).
fn tool(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(server_bin());
    cmd.arg("log").args(args).arg("--data-dir").arg(dir);
    let (st, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    (st.code().unwrap_or(-1), out, err)
}

/// `dump --json` (plus `extra`): the records and the exit status.
fn dump(dir: &Path, extra: &[&str]) -> (Vec<Value>, i32) {
    let (code, out, err) = tool(dir, &[&["dump", "--json"], extra].concat());
    let recs = out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    assert!(code == 0 || !err.is_empty(), "exit {code} without a word on stderr");
    (recs, code)
}

fn offsets(recs: &[Value]) -> Vec<u64> {
    recs.iter().map(|r| r["offset"].as_u64().unwrap()).collect()
}

fn log_path(s: &Server) -> std::path::PathBuf {
    s.data_dir.join("kv.log")
}

#[test]
fn sound_log_beside_a_running_server() {
    kv_only!();
    let mut s = Server::start(&["--fsync", "always"]);
    let mut c = s.client();
    for i in 0..10 {
        c.set(&format!("k{i}"), format!("v{i}").as_bytes());
    }
    c.expect(b"delete k3\r\n", b"DELETED\r\n");
    c.expect(b"touch k4 1000\r\n", b"TOUCHED\r\n");
    let dir = s.data_dir.clone();

    // Read-only verbs run beside the server; truncate does not.
    let (code, out, _) = tool(&dir, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sound: format version 2, 12 records"), "{out}");
    let (code, _, err) = tool(&dir, &["truncate", "--at", "16"]);
    assert_eq!(code, 2);
    assert!(err.contains("in use by another server"), "{err}");

    let (code, text, _) = tool(&dir, &["dump"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    assert!(lines[0].starts_with("16 20") && lines[0].contains(" set key=k0 flags=0 "), "{}", lines[0]);
    assert!(lines[10].ends_with(" delete key=k3"), "{}", lines[10]);
    assert!(lines[11].contains(" touch key=k4 exptime="), "{}", lines[11]);

    let (recs, code) = dump(&dir, &[]);
    assert_eq!(code, 0);
    assert_eq!(recs.len(), 12);
    assert!(offsets(&recs).windows(2).all(|w| w[0] < w[1]));
    let stamps: Vec<u64> = recs.iter().map(|r| r["logged_ns"].as_u64().unwrap()).collect();
    assert!(stamps[0] > 1_700_000_000_000_000_000 && stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert_eq!(recs[1]["op"], "set");
    assert_eq!(recs[1]["value_len"], 2);
    let (k3, _) = dump(&dir, &["--key", "k3"]);
    assert_eq!(k3.iter().map(|r| r["op"].as_str().unwrap()).collect::<Vec<_>>(), ["set", "delete"]);

    let (code, out, _) = tool(&dir, &["stats"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12: set 10, touch 1, delete 1, flush_all 0"), "{out}");
    assert!(out.contains("10 seen, 9 live now"), "{out}");
    let (code, out, _) = tool(&dir, &["stats", "--json"]);
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((st["records"].as_u64(), st["live_keys"].as_u64()), (Some(12), Some(9)));
    assert_eq!(st["damage"], Value::Null);
    assert_eq!(s.terminate(), Some(0));
}

/// Two batches a second apart: the time filters separate them, and truncate --at a time rolls the second back.
#[test]
fn time_filters_and_rolling_back_to_a_moment() {
    kv_only!();
    let mut s = Server::start(&["--fsync", "always"]);
    let mut c = s.client();
    c.set("early", b"1");
    std::thread::sleep(Duration::from_millis(1100));
    c.set("late", b"2");
    c.set("early", b"changed");
    let dir = s.data_dir.clone();
    let (recs, _) = dump(&dir, &[]);
    assert_eq!(recs.len(), 3);
    let first = &recs[0];
    let first_ns = first["logged_ns"].as_u64().unwrap();
    let late_at = recs[1]["logged"].as_str().unwrap().to_string();
    assert!(recs[1]["logged_ns"].as_u64().unwrap() >= first_ns + 1_000_000_000);

    let (since, code) = dump(&dir, &["--since", &late_at]);
    assert_eq!((since.len(), code), (2, 0));
    let secs = format!("{}.{:09}", first_ns / 1_000_000_000, first_ns % 1_000_000_000);
    let (until, _) = dump(&dir, &["--until", &secs]);
    assert_eq!(until, recs[..1]);
    let (none, _) = dump(&dir, &["--key", "late", "--until", &secs]);
    assert!(none.is_empty());
    let (code, _, err) = tool(&dir, &["dump", "--since", "last tuesday"]);
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");

    s.kill9();
    let (code, out, _) = tool(&dir, &["truncate", "--at", first["logged"].as_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kept 1 records; removed 2 records"), "{out}");
    s.crash_and_restart();
    let mut c = s.client();
    assert_eq!(c.get("early").as_deref(), Some(&b"1"[..]));
    assert_eq!(c.get("late"), None);
}

/// Sets `n` keys, kills the server, and returns it with the records as `dump` saw them and the log's bytes.
fn killed_after(n: usize) -> (Server, Vec<Value>, Vec<u8>) {
    let mut s = Server::start(&["--fsync", "always"]);
    let mut c = s.client();
    for i in 0..n {
        c.set(&format!("t{i}"), format!("value {i}").as_bytes());
    }
    s.kill9();
    let (recs, code) = dump(&s.data_dir, &[]);
    assert_eq!((recs.len(), code), (n, 0));
    let bytes = std::fs::read(log_path(&s)).unwrap();
    (s, recs, bytes)
}

/// The files truncate left beside the log.
fn cut_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("kv.log.cut-"))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_log_is_reported_and_cut_by_hand() {
    kv_only!();
    let (mut s, recs, bytes) = killed_after(20);
    let dir = s.data_dir.clone();
    let torn = bytes.len() - 3;
    std::fs::write(log_path(&s), &bytes[..torn]).unwrap();
    let last = offsets(&recs)[19];

    let (code, out, _) = tool(&dir, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("ends inside the record at offset {last}")) && out.contains("torn"), "{out}");
    let (got, code) = dump(&dir, &[]);
    assert_eq!((got.len(), code), (19, 1));
    assert_eq!(got, recs[..19]);
    let (code, out, _) = tool(&dir, &["stats"]);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("{last} in whole records")), "{out}");

    let (code, _, err) = tool(&dir, &["truncate", "--at", &(last + 1).to_string()]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = tool(&dir, &["truncate", "--at", &last.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("removed 0 records and {} damaged bytes", torn as u64 - last)), "{out}");
    let kept = cut_files(&dir);
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes[last as usize..torn]);
    assert_eq!(tool(&dir, &["verify"]).0, 0);
    s.crash_and_restart();
    let mut c = s.client();
    assert_eq!(c.get("t18").as_deref(), Some(&b"value 18"[..]));
    assert_eq!(c.get("t19"), None);
}

#[test]
fn bit_flipped_log_is_reported_and_cut_at_the_bad_record() {
    kv_only!();
    let (s, recs, mut bytes) = killed_after(20);
    let dir = s.data_dir.clone();
    let off = offsets(&recs);
    bytes[off[10] as usize + 12] ^= 0x08;
    std::fs::write(log_path(&s), &bytes).unwrap();

    let (code, out, _) = tool(&dir, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("bad record at offset {}: crc mismatch", off[10])), "{out}");
    assert!(out.contains("the 10 records before it are sound"), "{out}");
    let (got, code) = dump(&dir, &[]);
    assert_eq!((got, code), (recs[..10].to_vec(), 1));

    // Not a boundary, or a boundary inside the damage: refused, nothing changed.
    for at in [off[3] + 1, off[12]] {
        let (code, _, err) = tool(&dir, &["truncate", "--at", &at.to_string()]);
        assert_eq!(code, 2, "{at}: {err}");
    }
    let (code, _, err) = tool(&dir, &["truncate", "--at", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("file header"), "{err}");
    assert_eq!(std::fs::read(log_path(&s)).unwrap(), bytes);
    assert!(cut_files(&dir).is_empty());

    let (code, out, _) = tool(&dir, &["truncate", "--at", &off[10].to_string()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(&cut_files(&dir)[0]).unwrap(), bytes[off[10] as usize..]);
    let (code, out, _) = tool(&dir, &["verify"]);
    assert_eq!(code, 0);
    assert!(out.contains("10 records"), "{out}");
}

#[test]
fn old_format_log_is_read_by_the_tools_and_upgraded_by_the_server() {
    kv_only!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let v1 = include_bytes!("../../kv-user/src/persist/tests/fixtures/v1.log");
    std::fs::write(dir.join("kv.log"), v1).unwrap();
    let (code, out, _) = tool(&dir, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("format version 1") && out.contains("20 records"), "{out}");
    let (recs, _) = dump(&dir, &[]);
    assert_eq!(recs.len(), 20);
    assert!(recs.iter().all(|r| r["logged"].is_null() && r["logged_ns"] == 0));

    let mut s = Server::start_in(&dir, &["--fsync", "always"]);
    s.client().set("new", b"after upgrade");
    assert_eq!(s.terminate(), Some(0));
    let (code, out, _) = tool(&dir, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("format version 2, 21 records"), "{out}");
    let (after, _) = dump(&dir, &[]);
    let strip = |r: &Value| {
        let mut r = r.clone();
        r.as_object_mut().unwrap().remove("offset");
        r
    };
    assert_eq!(after[..20].iter().map(strip).collect::<Vec<_>>(), recs.iter().map(strip).collect::<Vec<_>>());
    assert!(after[20]["logged_ns"].as_u64().unwrap() > 0);
}

#[test]
fn bad_input_gets_a_clear_error_and_status() {
    kv_only!();
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = tool(&tmp.path().join("none"), &["verify"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot open"), "{err}");
    std::fs::write(tmp.path().join("kv.log"), b"this is not a log file").unwrap();
    let (code, _, err) = tool(tmp.path(), &["stats"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a kv log"), "{err}");
    let (code, _, err) = tool(tmp.path(), &["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand"), "{err}");
}
