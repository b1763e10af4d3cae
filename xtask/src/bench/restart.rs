//! The restart rows: how long kv-server takes from exec until it answers a `get` of a stored key, with a
//! log of three records per live item (each key set three times) and with a compacted one (one record per
//! item), under fsync always and everysec; beside memcached's warm restart (`-e` on tmpfs, SIGUSR1 to stop).
//!
//! Runs on loopback in this namespace (no XDP: start-up is what is measured). The logs are written directly
//! with kv-user's encoder (loading them through the server would take minutes at 10M items); memcached is
//! loaded over TCP. Page cache warm: the logs were just written, and memcached's file is in RAM anyway.

use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use kv_user::persist::{encode, file_header, Version};
use kv_user::record::Record;

use super::procs::{check_interrupted, tail, Proc};
use super::Ctx;

/// Value size of every item, as the issue asks.
const VALUE_LEN: usize = 32;
/// Records per live item in the uncompacted log.
const ROUNDS: u64 = 3;
/// Starts per cell; the median is reported.
const REPS: usize = 3;
/// Longest start-up waited for.
const LIMIT: Duration = Duration::from_secs(120);
/// Memory limit (MB) for both servers: room for 10M small items.
const MEMORY_MB: &str = "4096";
/// memcached's memory file (tmpfs, as its docs require).
const MEMCACHED_FILE: &str = "/dev/shm/kv-bench-restart.mem";

/// One measured cell: a server setup at a size, with every start's time.
pub struct Cell {
    pub items: u64,
    pub setup: String,
    pub log_records: u64,
    pub log_mb: f64,
    pub starts_s: Vec<f64>,
    pub note: String,
}

impl Cell {
    pub fn median(&self) -> Option<f64> {
        let mut v = self.starts_s.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    pub fn json(&self) -> Value {
        json!({
            "items": self.items, "setup": self.setup, "log_records": self.log_records, "log_mb": self.log_mb,
            "starts_s": self.starts_s, "median_s": self.median(), "note": self.note,
        })
    }
}

fn key(i: u64) -> String {
    format!("key:{i:010}")
}

fn value(i: u64, round: u64) -> [u8; VALUE_LEN] {
    let mut v = [b'a' + (round % 26) as u8; VALUE_LEN];
    v[..10].copy_from_slice(format!("{:010}", i % 10_000_000_000).as_bytes());
    v
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes `dir/kv.log`: `rounds` sets of every key, the last round's value the live one. Returns its size.
fn write_log(dir: &Path, items: u64, rounds: u64) -> Result<u64> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let path = dir.join("kv.log");
    let mut out = BufWriter::with_capacity(4 << 20, std::fs::File::create(&path)?);
    out.write_all(&file_header(Version::CURRENT))?;
    let time = now_s();
    let stamp0 = time.saturating_sub(3600) * 1_000_000_000;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut cas = 0;
    for round in 0..rounds {
        for i in 0..items {
            cas += 1;
            let (k, v) = (key(i), value(i, round));
            let rec = Record::Set { key: k.as_bytes(), flags: 0, exptime: 0, cas, time, value: &v };
            encode(&rec, stamp0 + cas, &mut buf)?;
            if buf.len() > 60 << 10 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        check_interrupted()?;
    }
    out.write_all(&buf)?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(f.metadata()?.len())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Sends `req` and reads until the reply ends with `end` (or the limit passes).
fn ask(c: &mut TcpStream, req: &[u8], end: &[u8]) -> Result<Vec<u8>> {
    c.write_all(req)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = c.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed");
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

/// Starts `cmd` and waits until a `get` of `probe` returns its value: the seconds from spawn to that reply.
/// The listening socket may be bound before the data is loaded, so a connection alone proves nothing.
fn time_start(mut cmd: Command, port: u16, probe: &str, log: &Path, name: &str) -> Result<(f64, Proc)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let t = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let mut p = Proc { child, name: name.into() };
    let req = format!("get {probe}\r\n");
    loop {
        check_interrupted()?;
        if !p.alive() {
            bail!("{name} exited at start; its output ({}):\n{}", log.display(), tail(log));
        }
        if t.elapsed() > LIMIT {
            bail!("{name} did not answer within {LIMIT:?}; its output ({}):\n{}", log.display(), tail(log));
        }
        if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            c.set_read_timeout(Some(LIMIT))?;
            if let Ok(r) = ask(&mut c, req.as_bytes(), b"END\r\n") {
                if r.starts_with(b"VALUE ") {
                    return Ok((t.elapsed().as_secs_f64(), p));
                }
                bail!("{name} answered `get {probe}` without the value: {}", String::from_utf8_lossy(&r));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn curr_items(port: u16) -> Result<u64> {
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let r = String::from_utf8_lossy(&ask(&mut c, b"stats\r\n", b"END\r\n")?).into_owned();
    r.lines().find_map(|l| l.strip_prefix("STAT curr_items ")?.trim().parse().ok()).context("no curr_items in stats")
}

fn log_file(logs: &Path, tag: &str) -> Result<(PathBuf, Stdio, Stdio)> {
    let path = logs.join(format!("{tag}.server.log"));
    let f = std::fs::File::create(&path)?;
    Ok((path, Stdio::from(f.try_clone()?), Stdio::from(f)))
}

impl Ctx {
    pub(super) fn run_restart(&mut self) -> Result<()> {
        let sizes: &[u64] = if self.opts.quick { &[100_000] } else { &[1_000_000, 10_000_000] };
        let dir = self.out.join("restart-data");
        for &items in sizes {
            for (rounds, label) in [(ROUNDS, "log 3x"), (1, "compacted")] {
                eprintln!("bench: restart: writing a {label} log of {items} items ({} records)", items * rounds);
                let bytes = write_log(&dir, items, rounds)?;
                for fsync in ["always", "everysec"] {
                    let setup = format!("kv-server, {label}, fsync {fsync}");
                    let cell = self.kv_restarts(&dir, items, &setup, fsync)?;
                    self.restart.push(Cell { log_records: items * rounds, log_mb: bytes as f64 / 1e6, ..cell });
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            self.restart.push(self.memcached_restarts(items)?);
        }
        Ok(())
    }

    fn kv_restarts(&self, dir: &Path, items: u64, setup: &str, fsync: &str) -> Result<Cell> {
        let probe = key(items - 1);
        let mut starts = Vec::new();
        let mut note = String::new();
        for rep in 0..REPS {
            let port = free_port()?;
            let tag = format!("restart-kv-{items}-{}-{rep}", setup.replace([' ', ','], ""));
            let (log, out, err) = log_file(&self.logs, &tag)?;
            let mut cmd = Command::new(self.release.join("kv-server"));
            cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", MEMORY_MB, "--no-bpf"]);
            cmd.args(["--fsync", fsync, "--history", "0", "--data-dir"]).arg(dir);
            // The uncompacted log must stay so for the next start: no start-up compaction.
            cmd.args(["--compact-min-size", "1000g"]).stdout(out).stderr(err);
            let (s, mut p) = time_start(cmd, port, &probe, &log, "kv-server")?;
            if rep == 0 {
                let live = curr_items(port)?;
                if live != items {
                    note = format!("{live} of {items} items live after the start");
                }
            }
            p.stop();
            eprintln!("bench: restart: {items} items, {setup}: serving after {s:.3} s");
            starts.push(s);
        }
        Ok(Cell { items, setup: setup.into(), log_records: 0, log_mb: 0.0, starts_s: starts, note })
    }

    fn memcached_command(&self, port: u16, tag: &str) -> Result<(Command, PathBuf)> {
        let (log, out, err) = log_file(&self.logs, tag)?;
        let mut cmd = Command::new("memcached");
        cmd.args(["-u", "root", "-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-t", "2"]);
        cmd.args(["-m", MEMORY_MB, "-e", MEMCACHED_FILE]).stdout(out).stderr(err);
        Ok((cmd, log))
    }

    /// Loads memcached (started on an empty memory file), then stops it with SIGUSR1 and times each start.
    fn memcached_restarts(&self, items: u64) -> Result<Cell> {
        let setup = "memcached -e (tmpfs), warm restart".to_string();
        for f in [MEMCACHED_FILE.to_string(), format!("{MEMCACHED_FILE}.meta")] {
            let _ = std::fs::remove_file(f);
        }
        let port = free_port()?;
        let (cmd, log) = self.memcached_command(port, &format!("restart-memcached-{items}-load"))?;
        let mut p = spawn_waiting(cmd, port, &log)?;
        eprintln!("bench: restart: loading memcached with {items} items");
        load_memcached(port, items)?;
        let live = curr_items(port)?;
        let note = if live != items { format!("{live} of {items} items live after loading") } else { String::new() };
        stop_usr1(&mut p)?;
        let probe = key(items - 1);
        let mut starts = Vec::new();
        for rep in 0..REPS {
            let port = free_port()?;
            let (cmd, log) = self.memcached_command(port, &format!("restart-memcached-{items}-{rep}"))?;
            let (s, mut p) = time_start(cmd, port, &probe, &log, "memcached")?;
            stop_usr1(&mut p)?;
            eprintln!("bench: restart: {items} items, {setup}: serving after {s:.3} s");
            starts.push(s);
        }
        for f in [MEMCACHED_FILE.to_string(), format!("{MEMCACHED_FILE}.meta")] {
            let _ = std::fs::remove_file(f);
        }
        Ok(Cell { items, setup, log_records: 0, log_mb: 0.0, starts_s: starts, note })
    }
}

fn spawn_waiting(mut cmd: Command, port: u16, log: &Path) -> Result<Proc> {
    let child = cmd.spawn().context("starting memcached")?;
    let mut p = Proc { child, name: "memcached".into() };
    let t = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if !p.alive() || t.elapsed() > LIMIT {
            bail!("memcached did not start; its output ({}):\n{}", log.display(), tail(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(p)
}

/// SIGUSR1 makes memcached save its state to the memory file and exit; waits for that.
fn stop_usr1(p: &mut Proc) -> Result<()> {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
    let t = Instant::now();
    while p.alive() {
        if t.elapsed() > LIMIT {
            bail!("memcached did not exit within {LIMIT:?} of SIGUSR1");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // memcached refuses a restart within the second it stopped in (it takes that for a clock gone back).
    let into = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    std::thread::sleep(Duration::from_millis(1010 - u64::from(into)));
    Ok(())
}

/// Every key once with its last round's value (what the kv-server logs end with), pipelined with noreply; a
/// final `version` waits until all are in.
fn load_memcached(port: u16, items: u64) -> Result<()> {
    let c = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let mut w = BufWriter::with_capacity(1 << 20, c.try_clone()?);
    for i in 0..items {
        w.write_all(format!("set {} 0 0 {VALUE_LEN} noreply\r\n", key(i)).as_bytes())?;
        w.write_all(&value(i, ROUNDS - 1))?;
        w.write_all(b"\r\n")?;
        if i % 1_000_000 == 999_999 {
            check_interrupted()?;
            eprintln!("bench: restart: memcached: {} of {items} items sent", i + 1);
        }
    }
    w.flush()?;
    let mut c = c;
    c.set_read_timeout(Some(LIMIT))?;
    let r = ask(&mut c, b"version\r\n", b"\r\n")?;
    if !r.starts_with(b"VERSION") {
        bail!("memcached refused the load: {}", String::from_utf8_lossy(&r));
    }
    Ok(())
}

/// Prints the restart table and writes `restart.json` (nothing when the part did not run).
pub fn report(out: &Path, cells: &[Cell]) -> Result<()> {
    if cells.is_empty() {
        return Ok(());
    }
    println!("\nrestart: seconds from exec until a `get` is answered (median of {REPS} starts)");
    println!("{:>10}  {:<40} {:>12} {:>9} {:>8}  starts", "items", "setup", "log records", "log MB", "median");
    for c in cells {
        let starts: Vec<String> = c.starts_s.iter().map(|s| format!("{s:.3}")).collect();
        let (recs, mb) = if c.log_records > 0 {
            (c.log_records.to_string(), format!("{:.0}", c.log_mb))
        } else {
            ("-".into(), "-".into())
        };
        let med = c.median().map_or("-".into(), |m| format!("{m:.3}"));
        println!("{:>10}  {:<40} {recs:>12} {mb:>9} {med:>8}  {} {}", c.items, c.setup, starts.join(" "), c.note);
    }
    let path = out.join("restart.json");
    let v: Vec<Value> = cells.iter().map(Cell::json).collect();
    std::fs::write(&path, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", path.display()))
}
