//! UDP load: per thread `conns` connected non-blocking sockets, each with a window of `depth` outstanding request
//! ids; batched with sendmmsg/recvmmsg, woken by ppoll.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::proto::{self, Reassembly, UDP_HDR};
use crate::sched::Schedule;
use crate::sys::{now_ns, ppoll};
use crate::{Config, Mode, ReqGen, Shared, Stats, Timing, TIMEOUT_NS};

/// Largest request payload in one datagram: the IPv4 UDP maximum less memcached's frame header.
pub const MAX_REQUEST: usize = 65_507 - UDP_HDR;
/// Largest window per socket: at least 4 bits of generation stay in each 16-bit request id.
pub const MAX_DEPTH: usize = 4096;
/// Datagrams per recvmmsg call and bytes kept of each (the header and the start of the payload are all we read).
const RECV_BATCH: usize = 64;
const RECV_BUF: usize = 4096;
/// How often outstanding requests are checked for timeouts.
const TIMEOUT_SCAN_NS: u64 = 10_000_000;
/// Longest sleep in ppoll.
const MAX_WAIT_NS: u64 = 10_000_000;
/// Closed loop: windows open gradually over this long at the start, rather than as one burst of every window. (A
/// server that queues every in-flight request in one socket buffer still drops what does not fit: memcached's
/// default 208 KiB holds roughly 230 small requests, fewer than 4 x 64; those requests time out after 1 s.)
const RAMP_NS: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    id: u16,
    busy: bool,
    is_get: bool,
    nkeys: u32,
    intended_ns: u64,
    sent_ns: u64,
    re: Reassembly,
}

/// Request-id allocation for one socket's window: id = generation << bits | slot, so ids of outstanding requests
/// never collide and a late reply to an earlier use of the slot is recognised as stale.
#[derive(Clone, Debug)]
pub struct IdWindow {
    bits: u32,
    gens: Vec<u16>,
    free: Vec<u32>,
}

impl IdWindow {
    pub fn new(depth: usize) -> Self {
        assert!((1..=MAX_DEPTH).contains(&depth));
        let bits = if depth <= 1 { 0 } else { usize::BITS - (depth - 1).leading_zeros() };
        IdWindow { bits, gens: vec![0; depth], free: (0..depth as u32).rev().collect() }
    }

    /// Take a free slot and give it a fresh id.
    pub fn alloc(&mut self) -> Option<(usize, u16)> {
        let slot = self.free.pop()? as usize;
        let gen_mask = (1u32 << (16 - self.bits)) - 1;
        let g = (self.gens[slot] as u32 + 1) & gen_mask;
        self.gens[slot] = g as u16;
        Some((slot, ((g << self.bits) | slot as u32) as u16))
    }

    pub fn release(&mut self, slot: usize) {
        self.free.push(slot as u32);
    }

    /// Slot an id belongs to (the caller checks it is the slot's current id).
    pub fn slot_of(&self, id: u16) -> usize {
        (id as usize) & ((1usize << self.bits) - 1)
    }

    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

struct Sock {
    sock: UdpSocket,
    slots: Vec<Slot>,
    ids: IdWindow,
    sched: Option<Schedule>,
    gen: ReqGen,
}

pub fn connect(server: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(bind)?;
    s.connect(server)?;
    Ok(s)
}

/// Check the server answers on UDP: any datagram carrying our request id counts (so a reflector passes too).
pub fn probe(server: SocketAddr) -> Result<()> {
    let s = connect(server).with_context(|| format!("UDP socket to {server}"))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut req = Vec::new();
    proto::write_udp_header(&mut req, 0x7eed);
    req.extend_from_slice(b"get key:0\r\n");
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        match s.send(&req) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                bail!("server unreachable: nothing listens on UDP {server} (connection refused)")
            }
            Err(e) => bail!("server unreachable: UDP send to {server}: {e}"),
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) => {
                    if proto::parse_udp_header(&buf[..n]).is_some_and(|h| h.id == 0x7eed) {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    bail!("server unreachable: nothing listens on UDP {server} (connection refused)")
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(e) => bail!("server unreachable: UDP receive from {server}: {e}"),
            }
        }
    }
    bail!("server unreachable: no UDP reply from {server} within 2 s")
}

/// Scratch for one sendmmsg call: request bytes back to back, then one iovec/mmsghdr each.
struct SendBatch {
    arena: Vec<u8>,
    /// (slot, start, len) of each request in `arena`.
    reqs: Vec<(usize, usize, usize)>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

struct RecvBatch {
    bufs: Vec<u8>,
    /// Owns the iovecs `msgs` point at.
    _iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> Self {
        let mut bufs = vec![0u8; RECV_BATCH * RECV_BUF];
        let base = bufs.as_mut_ptr();
        // SAFETY: offsets stay inside `bufs`, whose heap allocation never moves (it is never resized).
        let mut iov: Vec<libc::iovec> = (0..RECV_BATCH)
            .map(|i| libc::iovec { iov_base: unsafe { base.add(i * RECV_BUF) } as *mut _, iov_len: RECV_BUF })
            .collect();
        let iov_base = iov.as_mut_ptr();
        let msgs = (0..RECV_BATCH)
            .map(|i| {
                // SAFETY: zeroed msghdr is valid (null name/control); iov entries outlive the struct.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = unsafe { iov_base.add(i) };
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        RecvBatch { bufs, _iov: iov, msgs }
    }
}

/// Run one UDP load thread until `timing.end_ns` (or `shared.stop`).
pub fn run(cfg: &Config, thread: usize, timing: &Timing, shared: &Shared) -> Result<Stats> {
    let streams = cfg.start_thread();
    let mut socks = Vec::with_capacity(cfg.conns);
    for c in 0..cfg.conns {
        let sock = connect(cfg.server).with_context(|| format!("UDP socket to {}", cfg.server))?;
        sock.set_nonblocking(true)?;
        let stream = (thread * cfg.conns + c) as u64;
        socks.push(Sock {
            sock,
            slots: vec![Slot::default(); cfg.depth],
            ids: IdWindow::new(cfg.depth),
            sched: (cfg.mode == Mode::Open).then(|| Schedule::new(0, cfg.rate, stream, streams)),
            gen: ReqGen::new(cfg, stream),
        });
    }
    let mut pollfds: Vec<libc::pollfd> =
        socks.iter().map(|s| libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut sb = SendBatch {
        arena: Vec::with_capacity(cfg.depth * 64),
        reqs: Vec::with_capacity(cfg.depth),
        iov: Vec::with_capacity(cfg.depth),
        msgs: Vec::with_capacity(cfg.depth),
    };
    let mut rb = RecvBatch::new();
    let mut stats = Stats::default();
    let mut next_scan = 0u64;
    let mut reported = 0u64;
    let mut completed = 0u64;
    while let Some(now) = timing.tick(shared) {
        // Send every request that is due (closed loop: fill the window).
        let mut send_blocked = false;
        for s in socks.iter_mut() {
            if send_due(s, &mut sb, now, timing, &mut stats)? {
                send_blocked = true;
            }
        }
        // Sleep until a reply arrives, the next intended send time, or the next timeout scan.
        let mut wake = timing.end_ns.min(next_scan.max(now + 1)).min(now + MAX_WAIT_NS);
        for s in &socks {
            if let Some(sc) = &s.sched {
                if s.ids.has_free() {
                    wake = wake.min(sc.next_at());
                }
            }
        }
        let now = now_ns(timing.base);
        let wait = if send_blocked || (cfg.mode == Mode::Closed && now < RAMP_NS) {
            wake.saturating_sub(now).min(50_000)
        } else {
            wake.saturating_sub(now)
        };
        for p in pollfds.iter_mut() {
            p.revents = 0;
        }
        let ready = ppoll(&mut pollfds, wait)?;
        if ready > 0 {
            for (i, s) in socks.iter_mut().enumerate() {
                if pollfds[i].revents != 0 {
                    completed += receive(s, &mut rb, timing, &mut stats)?;
                }
            }
        }
        let now = now_ns(timing.base);
        if now >= next_scan {
            next_scan = now + TIMEOUT_SCAN_NS;
            for s in socks.iter_mut() {
                for (i, slot) in s.slots.iter_mut().enumerate() {
                    if slot.busy && now.saturating_sub(slot.sent_ns) >= TIMEOUT_NS {
                        slot.busy = false;
                        s.ids.release(i);
                        if timing.in_window(now) {
                            stats.timeouts += 1;
                            shared.timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if completed != reported {
            shared.completed.fetch_add(completed - reported, Ordering::Relaxed);
            reported = completed;
        }
    }
    stats.oversize_sets = socks.iter().map(|s| s.gen.oversize_sets).sum();
    Ok(stats)
}

/// Build and send every due request of one socket in one sendmmsg batch. Returns true if the kernel refused part
/// of the batch for lack of buffer space (the caller backs off briefly).
fn send_due(s: &mut Sock, sb: &mut SendBatch, now: u64, timing: &Timing, stats: &mut Stats) -> Result<bool> {
    sb.arena.clear();
    sb.reqs.clear();
    let depth = s.slots.len();
    let limit = if s.sched.is_none() && now < RAMP_NS { (depth as u64 * now / RAMP_NS).max(1) as usize } else { depth };
    while s.ids.has_free() && depth - s.ids.free_count() < limit {
        let intended = match &s.sched {
            Some(sc) if !sc.due(now) => break,
            Some(sc) => sc.next_at(),
            None => now,
        };
        let (slot, id) = s.ids.alloc().expect("has free");
        let start = sb.arena.len();
        proto::write_udp_header(&mut sb.arena, id);
        let (is_get, nkeys) = s.gen.next(&mut sb.arena);
        sb.reqs.push((slot, start, sb.arena.len() - start));
        let sl = &mut s.slots[slot];
        *sl = Slot { id, busy: true, is_get, nkeys, intended_ns: intended, sent_ns: now, re: Reassembly::default() };
        if let Some(sc) = &mut s.sched {
            sc.next += 1;
        }
    }
    let n = sb.reqs.len();
    if n == 0 {
        return Ok(false);
    }
    sb.iov.clear();
    sb.msgs.clear();
    let base = sb.arena.as_mut_ptr();
    for &(_, start, len) in &sb.reqs {
        // SAFETY: start..start+len lies inside `arena`, which is not modified until the batch is sent.
        sb.iov.push(libc::iovec { iov_base: unsafe { base.add(start) } as *mut _, iov_len: len });
    }
    for i in 0..n {
        // SAFETY: zeroed mmsghdr is valid; the iovec lives in sb.iov (not resized below).
        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
        m.msg_hdr.msg_iov = unsafe { sb.iov.as_mut_ptr().add(i) };
        m.msg_hdr.msg_iovlen = 1;
        sb.msgs.push(m);
    }
    let fd = s.sock.as_raw_fd();
    let mut sent = 0usize;
    let mut blocked = false;
    while sent < n {
        // SAFETY: msgs[sent..n] are valid mmsghdrs pointing at live buffers.
        let r = unsafe { libc::sendmmsg(fd, sb.msgs.as_mut_ptr().add(sent), (n - sent) as u32, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {}
                // ICMP port unreachable from an earlier datagram, or similar: these requests time out or are
                // retried; count and go on.
                _ => stats.send_errors += 1,
            }
            blocked = true;
            break;
        }
        sent += r as usize;
    }
    if s.sched.is_some() {
        for &(slot, _, _) in &sb.reqs[..sent] {
            stats.record_lag(timing, s.slots[slot].intended_ns, now);
        }
    }
    // Unsent requests give their slots back; in open loop their intended times are reused next time.
    for &(slot, _, _) in sb.reqs[sent..].iter() {
        s.slots[slot].busy = false;
        s.ids.release(slot);
        if let Some(sc) = &mut s.sched {
            sc.next -= 1;
        }
    }
    Ok(blocked)
}

/// Drain a readable socket; returns the number of requests completed (warm-up included).
fn receive(s: &mut Sock, rb: &mut RecvBatch, timing: &Timing, stats: &mut Stats) -> Result<u64> {
    let fd = s.sock.as_raw_fd();
    let mut done = 0;
    loop {
        // SAFETY: msgs point at RECV_BATCH iovecs of RECV_BUF bytes each inside rb.bufs.
        let r = unsafe {
            libc::recvmmsg(fd, rb.msgs.as_mut_ptr(), RECV_BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR) => continue,
                Some(libc::ECONNREFUSED) => {
                    stats.send_errors += 1;
                    break;
                }
                _ => return Err(e).context("recvmmsg"),
            }
        }
        let n = r as usize;
        let now = now_ns(timing.base);
        for i in 0..n {
            let len = (rb.msgs[i].msg_len as usize).min(RECV_BUF);
            let truncated = rb.msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let d = &rb.bufs[i * RECV_BUF..i * RECV_BUF + len];
            let Some(h) = proto::parse_udp_header(d) else {
                stats.stray += 1;
                continue;
            };
            let idx = s.ids.slot_of(h.id);
            let Some(slot) = s.slots.get_mut(idx).filter(|sl| sl.busy && sl.id == h.id) else {
                stats.stray += 1;
                continue;
            };
            if slot.re.on_datagram(h, &d[UDP_HDR..], slot.is_get, truncated) {
                let outcome = slot.re.outcome.unwrap_or(proto::Outcome::Other);
                stats.record(timing, outcome, slot.is_get, slot.nkeys, slot.intended_ns, now);
                slot.busy = false;
                s.ids.release(idx);
                done += 1;
            }
        }
        if n < RECV_BATCH {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn window_ids_never_collide_and_map_back_to_slots() {
        for depth in [1usize, 2, 3, 64, 100, MAX_DEPTH] {
            let mut w = IdWindow::new(depth);
            let mut live = HashSet::new();
            let mut held = Vec::new();
            while let Some((slot, id)) = w.alloc() {
                assert_eq!(w.slot_of(id), slot);
                assert!(live.insert(id), "duplicate id {id} at depth {depth}");
                held.push((slot, id));
            }
            assert_eq!(held.len(), depth);
            // Reuse a slot: new id differs from its previous one, still maps back.
            let (slot, old) = held[0];
            w.release(slot);
            let (slot2, new) = w.alloc().unwrap();
            assert_eq!(slot2, slot);
            assert_ne!(new, old);
            assert_eq!(w.slot_of(new), slot);
        }
    }
}
