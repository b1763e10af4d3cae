//! TCP load: per thread `conns` non-blocking connections, each pipelining up to `depth` requests (write a batch,
//! read replies, refill), woken by ppoll. Also the pipelined preload and the idle connections.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::keys::KeySpace;
use crate::proto::{self, Outcome};
use crate::sched::Schedule;
use crate::sys::{now_ns, ppoll};
use crate::{Config, Mode, ReqGen, Shared, Stats, Timing};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;
const MAX_WAIT_NS: u64 = 10_000_000;

pub fn connect(server: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT)
        .with_context(|| format!("server unreachable: cannot connect to TCP {server}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A read buffer holding unparsed reply bytes in `buf[start..end]`; grows only to fit one reply plus a read chunk.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf { buf: vec![0; 2 * READ_CHUNK], start: 0, end: 0 }
    }
}

impl ReadBuf {
    /// Read once from `r`; Ok(0) means end of stream.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < READ_CHUNK {
                self.buf.resize(self.end + 2 * READ_CHUNK, 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Pop the next complete reply, if any.
    pub fn next_reply(&mut self) -> Result<Option<Outcome>> {
        match proto::parse_tcp_reply(&self.buf[self.start..self.end]) {
            Ok(Some((len, outcome))) => {
                self.start += len;
                Ok(Some(outcome))
            }
            Ok(None) => Ok(None),
            Err(e) => bail!("cannot frame TCP reply: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    intended_ns: u64,
    is_get: bool,
    nkeys: u32,
}

struct Conn {
    stream: TcpStream,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: ReadBuf,
    inflight: VecDeque<Pending>,
    sched: Option<Schedule>,
    gen: ReqGen,
    dead: bool,
}

/// Run one TCP load thread until `timing.end_ns` (or `shared.stop`).
pub fn run(cfg: &Config, thread: usize, timing: &Timing, shared: &Shared) -> Result<Stats> {
    let streams = cfg.start_thread();
    let mut conns = Vec::with_capacity(cfg.conns);
    for c in 0..cfg.conns {
        let stream = connect(cfg.server)?;
        stream.set_nonblocking(true)?;
        let k = (thread * cfg.conns + c) as u64;
        conns.push(Conn {
            stream,
            wbuf: Vec::with_capacity(cfg.depth * 64),
            wpos: 0,
            rbuf: ReadBuf::default(),
            inflight: VecDeque::with_capacity(cfg.depth),
            sched: (cfg.mode == Mode::Open).then(|| Schedule::new(0, cfg.rate, k, streams)),
            gen: ReqGen::new(cfg, k),
            dead: false,
        });
    }
    let mut pollfds: Vec<libc::pollfd> =
        conns.iter().map(|c| libc::pollfd { fd: c.stream.as_raw_fd(), events: 0, revents: 0 }).collect();
    let mut stats = Stats::default();
    let mut completed = 0u64;
    let mut reported = 0u64;

    while let Some(now) = timing.tick(shared) {
        let mut wake = timing.end_ns.min(now + MAX_WAIT_NS);
        for (i, c) in conns.iter_mut().enumerate() {
            pollfds[i].events = 0;
            pollfds[i].revents = 0;
            if c.dead {
                pollfds[i].fd = -1;
                continue;
            }
            // Refill the pipeline: closed loop up to depth, open loop what is due (window permitting).
            while c.inflight.len() < cfg.depth {
                let intended = match &c.sched {
                    Some(sc) if !sc.due(now) => break,
                    Some(sc) => sc.next_at(),
                    None => now,
                };
                let (is_get, nkeys) = c.gen.next(&mut c.wbuf);
                if c.sched.is_some() {
                    stats.record_lag(timing, intended, now);
                }
                c.inflight.push_back(Pending { intended_ns: intended, is_get, nkeys });
                if let Some(sc) = &mut c.sched {
                    sc.next += 1;
                }
            }
            if let Some(sc) = &c.sched {
                if c.inflight.len() < cfg.depth {
                    wake = wake.min(sc.next_at());
                }
            }
            if c.wpos < c.wbuf.len() {
                match (&c.stream).write(&c.wbuf[c.wpos..]) {
                    Ok(n) => c.wpos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        eprintln!("[kv-load] TCP connection lost on write: {e}");
                        c.dead = true;
                        pollfds[i].fd = -1;
                        continue;
                    }
                }
                if c.wpos == c.wbuf.len() {
                    c.wbuf.clear();
                    c.wpos = 0;
                }
            }
            pollfds[i].events = libc::POLLIN | if c.wpos < c.wbuf.len() { libc::POLLOUT } else { 0 };
        }
        if conns.iter().all(|c| c.dead) {
            bail!("all TCP connections to {} were lost", cfg.server);
        }
        let now = now_ns(timing.base);
        ppoll(&mut pollfds, wake.saturating_sub(now))?;
        for (i, c) in conns.iter_mut().enumerate() {
            if c.dead || pollfds[i].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) == 0 {
                continue;
            }
            match c.rbuf.fill(&mut &c.stream) {
                Ok(0) => {
                    eprintln!(
                        "[kv-load] TCP connection closed by the server ({} requests in flight)",
                        c.inflight.len()
                    );
                    c.dead = true;
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    eprintln!("[kv-load] TCP connection lost on read: {e}");
                    c.dead = true;
                    continue;
                }
            }
            let now = now_ns(timing.base);
            loop {
                match c.rbuf.next_reply() {
                    Ok(Some(outcome)) => {
                        let Some(p) = c.inflight.pop_front() else {
                            eprintln!("[kv-load] unsolicited TCP reply; dropping the connection");
                            c.dead = true;
                            break;
                        };
                        stats.record(timing, outcome, p.is_get, p.nkeys, p.intended_ns, now);
                        completed += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("[kv-load] {e:#}; dropping the connection");
                        c.dead = true;
                        break;
                    }
                }
            }
        }
        if completed != reported {
            shared.completed.fetch_add(completed - reported, Ordering::Relaxed);
            reported = completed;
        }
    }
    stats.oversize_sets = conns.iter().map(|c| c.gen.oversize_sets).sum();
    Ok(stats)
}

/// Result of a preload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Preload {
    pub keys: u64,
    pub errors: u64,
    pub other: u64,
    pub secs: f64,
}

/// Set every key of `keys` once, with its own value size (a prefix of `value`), over one TCP connection, `batch`
/// sets in flight at a time.
pub fn preload(server: SocketAddr, keys: &KeySpace, value: &[u8], batch: usize) -> Result<Preload> {
    let start = Instant::now();
    let mut s = connect(server)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rbuf = ReadBuf::default();
    let mut wbuf = Vec::new();
    let mut res = Preload::default();
    let mut next = 0u64;
    let n = keys.n();
    while next < n {
        wbuf.clear();
        let end = (next + batch as u64).min(n);
        for k in next..end {
            proto::build_set_in(&mut wbuf, keys, k, &value[..keys.value_len(k)]);
        }
        s.write_all(&wbuf).context("preload: write")?;
        let mut want = end - next;
        while want > 0 {
            match rbuf.next_reply()? {
                Some(o) => {
                    want -= 1;
                    match o {
                        Outcome::Stored => res.keys += 1,
                        Outcome::Error => res.errors += 1,
                        _ => res.other += 1,
                    }
                }
                None => {
                    if rbuf.fill(&mut s).context("preload: read")? == 0 {
                        bail!("preload: server closed the connection");
                    }
                }
            }
        }
        next = end;
    }
    res.secs = start.elapsed().as_secs_f64();
    Ok(res)
}

/// Open up to `n` idle TCP connections (sequentially) and return them. Stops at the first connection that cannot
/// be made (e.g. out of file descriptors or local ports) and says why on stderr.
pub fn open_idle(server: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    let mut last_report = Instant::now();
    while held.len() < n {
        let mut tries = 0;
        let r = loop {
            match TcpStream::connect_timeout(&server, CONNECT_TIMEOUT) {
                Err(e) if e.kind() == io::ErrorKind::TimedOut && tries < 2 => tries += 1,
                r => break r,
            }
        };
        match r {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("[kv-load] idle connections: stopped at {} of {n}: {e}", held.len());
                break;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("[kv-load] idle connections: {} of {n} open", held.len());
            last_report = Instant::now();
        }
    }
    held
}

/// Close held connections with a reset (SO_LINGER 0) so that tens of thousands of them do not sit in TIME_WAIT
/// holding local ports after the run.
pub fn close_abortively(held: Vec<TcpStream>) {
    let lin = libc::linger { l_onoff: 1, l_linger: 0 };
    for s in held {
        // SAFETY: setsockopt on an fd owned by `s` with a correctly sized linger struct.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &lin as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// How many of the held connections the server has not closed (non-blocking peek: 0 bytes = closed).
pub fn count_alive(held: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    held.iter()
        .filter(|s| {
            // SAFETY: recv into a local buffer with MSG_PEEK | MSG_DONTWAIT; the fd is owned by `s`.
            let r = unsafe {
                libc::recv(s.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
            };
            // -1/EAGAIN: open and silent. >0: the server said something (e.g. a "too many connections" error)
            // and may have closed after it; treat as not idle-alive only if it is an EOF.
            !(r == 0 || (r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out its bytes in small pieces.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn readbuf_frames_a_pipelined_stream_read_in_pieces() {
        let mut stream = Vec::new();
        let big = vec![b'x'; 200_000];
        for i in 0..20 {
            stream.extend_from_slice(b"STORED\r\n");
            stream.extend_from_slice(format!("VALUE key:{i} 0 {}\r\n", big.len()).as_bytes());
            stream.extend_from_slice(&big);
            stream.extend_from_slice(b"\r\nEND\r\nEND\r\n");
        }
        for chunk in [1usize, 7, 4096, 1 << 20] {
            let mut src = Trickle(&stream, chunk);
            let mut rb = ReadBuf::default();
            let mut got = Vec::new();
            while got.len() < 60 {
                match rb.next_reply().unwrap() {
                    Some(o) => got.push(o),
                    None => assert!(rb.fill(&mut src).unwrap() > 0, "stream ended early"),
                }
            }
            for t in got.chunks(3) {
                assert_eq!(t, [Outcome::Stored, Outcome::Hit, Outcome::Miss]);
            }
            assert!(rb.buf.len() <= big.len() + 4 * READ_CHUNK, "buffer stays bounded: {}", rb.buf.len());
        }
    }
}
