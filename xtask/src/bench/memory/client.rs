//! The memory rows' client: the memcached text protocol over TCP with std sockets. Every function runs on
//! a thread inside the server namespace (its sockets, and those of the threads it starts, live there).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use kv_bench::proto::{self, Outcome};
use kv_bench::tcp::ReadBuf;

use crate::bench::procs::check_interrupted;

/// Sets per `version` round trip when filling: the round trip keeps the writer at most a batch or two
/// ahead of the server and its reply proves every set before it was applied.
const FILL_BATCH: u64 = 1_000;
/// How long a reply may take: an overfilling server may be busy evicting.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok(s)
}

/// One request on a fresh connection; the reply is read until it ends with `end`.
pub fn request(addr: SocketAddr, req: &[u8], end: &[u8]) -> Result<String> {
    let mut c = connect(addr)?;
    c.write_all(req)?;
    reply_until(&mut c, end)
}

/// Reads a reply until it ends with `end`.
pub fn reply_until(c: &mut TcpStream, end: &[u8]) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !buf.ends_with(end) {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the reply ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The server's numeric `stats`.
pub fn stats(addr: SocketAddr) -> Result<HashMap<String, u64>> {
    let text = request(addr, b"stats\r\n", b"END\r\n")?;
    Ok(parse_stats(&text))
}

fn parse_stats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// `set key:<k> 0 0 <len> noreply` with the value.
fn push_set_noreply(out: &mut Vec<u8>, key: u64, value: &[u8]) {
    out.extend_from_slice(b"set ");
    proto::write_key(out, key);
    out.extend_from_slice(format!(" 0 0 {} noreply\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Sets `key:0 .. key:<keys-1>` once each with `noreply`, over `conns` connections (key k on connection
/// k % conns). Returns when the server has applied all of them; the result is how many reply lines were
/// not the closing `VERSION` of a batch (error replies). `done` counts the keys sent, for progress.
pub fn fill(addr: SocketAddr, keys: u64, value: &[u8], conns: u64, done: &AtomicU64) -> Result<u64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|c| s.spawn(move || fill_one(addr, (c..keys).step_by(conns as usize), value, done)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("fill thread panicked")).sum()
    })
}

/// One connection of [`fill`]: a writer (this thread) and a reader counting the batches' `VERSION` replies.
fn fill_one(addr: SocketAddr, keys: impl Iterator<Item = u64>, value: &[u8], done: &AtomicU64) -> Result<u64> {
    let mut w = connect(addr)?;
    let r = BufReader::new(w.try_clone()?);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let reader = s.spawn(move || read_versions(r, rx));
        let mut buf = Vec::new();
        let mut n = 0;
        for k in keys {
            push_set_noreply(&mut buf, k, value);
            n += 1;
            if n % FILL_BATCH == 0 {
                check_interrupted()?;
                end_batch(&mut w, &mut buf, &tx)?;
                done.fetch_add(FILL_BATCH, Ordering::Relaxed);
            }
        }
        end_batch(&mut w, &mut buf, &tx)?;
        done.fetch_add(n % FILL_BATCH, Ordering::Relaxed);
        drop(tx);
        reader.join().expect("reader panicked")
    })
}

fn end_batch(w: &mut TcpStream, buf: &mut Vec<u8>, tx: &std::sync::mpsc::Sender<()>) -> Result<()> {
    buf.extend_from_slice(b"version\r\n");
    w.write_all(buf).context("writing sets")?;
    buf.clear();
    // The reader stops early only on an error, which its join reports.
    let _ = tx.send(());
    Ok(())
}

/// Reads one `VERSION` line per batch announced on `batches`; counts every other line.
fn read_versions(mut r: BufReader<TcpStream>, batches: std::sync::mpsc::Receiver<()>) -> Result<u64> {
    let (mut other, mut line) = (0, String::new());
    for () in batches {
        loop {
            line.clear();
            if r.read_line(&mut line).context("reading the fill's replies")? == 0 {
                bail!("the server closed the connection during the fill");
            }
            if line.starts_with("VERSION") {
                break;
            }
            other += 1;
        }
    }
    Ok(other)
}

/// What a cache-aside client saw (measured part only).
#[derive(Debug, Default, Clone, Copy)]
pub struct HitCount {
    pub gets: u64,
    pub hits: u64,
    /// Error replies to gets or sets, over the whole run.
    pub errors: u64,
}

/// A cache-aside client on one connection: `get` each key of `seq` (rank r is `key:r`), `depth` gets per
/// round trip, and `set` every key that missed (sent ahead of the next round's gets). Gets from
/// index `measure_from` on are counted. `done` counts the gets answered, for progress.
pub fn cache_aside(
    addr: SocketAddr,
    seq: &[u32],
    measure_from: usize,
    value: &[u8],
    depth: usize,
    done: &AtomicU64,
) -> Result<HitCount> {
    let mut c = connect(addr)?;
    let (mut rbuf, mut wbuf) = (ReadBuf::default(), Vec::new());
    let (mut missed, mut count) = (Vec::new(), HitCount::default());
    for (round, chunk) in seq.chunks(depth).enumerate() {
        if round % 1024 == 0 {
            check_interrupted()?;
        }
        wbuf.clear();
        for &k in &missed {
            proto::build_set(&mut wbuf, k as u64, value);
        }
        for &k in chunk {
            proto::build_get(&mut wbuf, &[k as u64]);
        }
        c.write_all(&wbuf).context("cache-aside: write")?;
        for _ in 0..missed.len() {
            if next_reply(&mut rbuf, &mut c)? != Outcome::Stored {
                count.errors += 1;
            }
        }
        missed.clear();
        let measured = round * depth >= measure_from;
        for &k in chunk {
            let o = next_reply(&mut rbuf, &mut c)?;
            match o {
                Outcome::Hit => count.hits += measured as u64,
                Outcome::Miss => missed.push(k),
                _ => count.errors += 1,
            }
            count.gets += measured as u64;
        }
        done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(count)
}

fn next_reply(rbuf: &mut ReadBuf, c: &mut TcpStream) -> Result<Outcome> {
    loop {
        if let Some(o) = rbuf.next_reply()? {
            return Ok(o);
        }
        if rbuf.fill(c).context("cache-aside: read")? == 0 {
            bail!("the server closed the connection");
        }
    }
}

/// `n` connections that send nothing; fails at the first that cannot be made. Paced by the server's
/// `curr_connections`: connections made faster than a server accepts overflow its accept queue (kv-server
/// listens with a backlog of 128), and each dropped handshake then costs a 1 s SYN retransmission.
pub fn open_idle(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    const STEP: usize = 32;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(TcpStream::connect(addr).with_context(|| format!("idle connection {i} of {n}"))?);
        if conns.len() % STEP == 0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while stats(addr)?.get("curr_connections").copied().unwrap_or(u64::MAX) + (STEP as u64) < i as u64
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    Ok(conns)
}

/// Connections that each announced a large `set` and sent most of its value, then stalled.
pub struct Stalled {
    pub conns: Vec<TcpStream>,
    /// Value bytes the server accepted (the rest was left in flight when it stopped reading).
    pub sent: u64,
    /// Connections that got their whole part out.
    pub complete: usize,
    /// Connections the server closed or reset (a defence, not a failure).
    pub closed: usize,
}

/// `n` connections, each `set s<i> 0 0 <announce>` followed by `send` bytes of the value, written
/// round-robin without blocking so a server that stops reading cannot stall the harness: gives up on
/// what is left after 3 s without progress. A connection the server closes counts as done.
pub fn stall(addr: SocketAddr, n: usize, announce: usize, send: usize) -> Result<Stalled> {
    let body = vec![b'x'; send];
    let mut conns = Vec::with_capacity(n);
    let mut pos = vec![0usize; n];
    let mut closed = vec![false; n];
    let mut heads = Vec::with_capacity(n);
    for i in 0..n {
        let c = connect(addr)?;
        c.set_nonblocking(true)?;
        conns.push(c);
        heads.push(format!("set s{i} 0 0 {announce}\r\n").into_bytes());
    }
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_secs(3) {
        let mut pending = false;
        for (i, c) in conns.iter_mut().enumerate() {
            let (h, total) = (heads[i].len(), heads[i].len() + send);
            if pos[i] == total || closed[i] {
                continue;
            }
            pending = true;
            let chunk = if pos[i] < h { &heads[i][pos[i]..] } else { &body[pos[i] - h..] };
            match c.write(&chunk[..chunk.len().min(256 << 10)]) {
                Ok(k) => {
                    pos[i] += k;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => closed[i] = true,
                Err(e) => bail!("stalled upload {i}: {e}"),
            }
        }
        if !pending {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let sent = pos.iter().zip(&heads).map(|(p, h)| p.saturating_sub(h.len()) as u64).sum();
    let complete = pos.iter().zip(&heads).filter(|(p, h)| **p == h.len() + send).count();
    let closed = closed.iter().filter(|c| **c).count();
    Ok(Stalled { conns, sent, complete, closed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines() {
        let s = parse_stats("STAT pid 7\r\nSTAT version 1.6.18\r\nSTAT curr_items 12\r\nEND\r\n");
        assert_eq!((s.get("pid"), s.get("curr_items"), s.get("version")), (Some(&7), Some(&12), None));
    }

    #[test]
    fn set_noreply_wire_form() {
        let mut out = Vec::new();
        push_set_noreply(&mut out, 42, b"abc");
        assert_eq!(out, b"set key:42 0 0 3 noreply\r\nabc\r\n");
    }
}
