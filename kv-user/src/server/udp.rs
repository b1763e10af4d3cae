//! UDP front end, memcached's framing: every datagram starts with an 8-byte header (request id,
//! sequence number, datagram count, reserved; big-endian u16s). A request must fit one datagram:
//! as memcached does, one announcing another datagram count than 1 is dropped without an answer, and
//! the sequence number and reserved field are not looked at. The reply is split into datagrams of
//! at most `UDP_MAX_PAYLOAD` bytes, each with its own header.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;

use bytes::BytesMut;
use kv_common::{FrameHeader, UDP_FRAME_HEADER_LEN, UDP_MAX_PAYLOAD};

use super::conn::Pipeline;
use super::mmsg::{Outgoing, RecvBatch, SendBatch, RECV_BATCH};
use super::Shared;
use crate::exec::Ctx;
use crate::protocol::reply;

/// The UDP socket, bound without SO_REUSEPORT or SO_REUSEADDR so that the port is this process's
/// alone: another process (a second kv-server, or anything of the same user setting SO_REUSEPORT)
/// gets `EADDRINUSE` instead of a share of the datagrams. The UDP threads all read this one socket, as
/// memcached's threads do: a reuseport group would spread the datagrams across per-thread sockets, but
/// Linux lets any socket of the same user join such a group, and the kernel then hands it part of the
/// traffic (SO_ATTACH_REUSEPORT_CBPF cannot keep it out: any member may replace the program). The
/// kernel queues a datagram once, and the thread it wakes serves it (see [`Threads`]).
pub fn bind(ip: IpAddr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    // Bursty clients (multigets, benchmarks) overrun the default buffer long before we fall behind.
    let _ = s.set_recv_buffer_size(4 << 20);
    // `::` takes IPv4 too, whatever net.ipv6.bindv6only says: the XDP program is told so
    // (kernel::loader's listen globals).
    if ip.is_ipv6() && ip.is_unspecified() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The UDP threads: `-t` of them, each blocking in `recvmmsg` on the one socket. A thread blocked in a
/// receive is an exclusive waiter in the kernel, so an arriving datagram wakes one idle thread, not all
/// (descriptors registered in every worker's epoll woke every idle worker per datagram); a woken thread
/// takes what else is queued with it, runs the batch, and answers it with `sendmmsg`.
pub struct Threads {
    sock: Arc<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
}

impl Threads {
    /// Starts `n` threads serving `sock`; each holds a clone of `done` until it returns. Threads already
    /// started stop again if a later one cannot start.
    pub fn start(
        sock: std::net::UdpSocket,
        n: usize,
        shared: &Shared,
        done: &tokio::sync::mpsc::Sender<()>,
    ) -> std::io::Result<Threads> {
        sock.set_nonblocking(false)?;
        let t = Threads { sock: Arc::new(sock), stop: Arc::new(AtomicBool::new(false)) };
        for i in 0..n {
            let (sock, stop, shared, done) = (t.sock.clone(), t.stop.clone(), shared.clone(), done.clone());
            std::thread::Builder::new().name(format!("kv-udp-{i}")).spawn(move || {
                serve(&sock, &shared, &stop);
                drop(done);
            })?;
        }
        Ok(t)
    }

    /// Tells the threads to return once their batch in hand is answered, and wakes those waiting.
    pub fn stop(&self) {
        self.stop.store(true, Release);
        // Shutting down reading wakes every thread blocked in a receive, and later receives return at once
        // (an unconnected socket reports ENOTCONN, but the shutdown takes effect).
        // SAFETY: shutdown on a descriptor this struct keeps open; no memory is passed.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RD) };
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Per-reply state of a batch: which slot it answers, and the record that must be durable first.
struct Reply {
    slot: usize,
    req_id: u16,
    seq: u64,
    /// What the datagram ran, to give each of its requests its own error if the log fails.
    pipeline: Pipeline,
}

/// One UDP thread's loop.
fn serve(sock: &std::net::UdpSocket, shared: &Shared, stop: &AtomicBool) {
    let fd = sock.as_raw_fd();
    let (mut rx, mut tx) = (RecvBatch::default(), SendBatch::default());
    let mut input = BytesMut::new();
    // One reply buffer per slot, so each reply starts at offset 0 as it would alone (its size limits
    // count only its own bytes) and goes out without a copy.
    let mut outs: Vec<BytesMut> = (0..RECV_BATCH).map(|_| BytesMut::new()).collect();
    let mut replies: Vec<Reply> = Vec::with_capacity(RECV_BATCH);
    let allow = shared.ctx.config.udp_allowlist();
    let stats = &shared.ctx.stats;
    let entry = shared.ctx.conns.get(fd);
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    while !stop.load(Acquire) {
        let n = match rx.recv(fd, libc::MSG_WAITFORONE) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::debug!("udp recv: {e}");
                }
                continue;
            }
        };
        if stop.load(Acquire) {
            return;
        }
        replies.clear();
        let mut read = 0;
        for (slot, out) in outs.iter_mut().enumerate().take(n) {
            read += rx.len_of(slot) as u64;
            // Amplification guard: a spoofed source outside the allowlist gets nothing back.
            if !rx.peer(slot).ip().is_some_and(|ip| crate::config::udp_allowed(&allow, ip)) {
                continue;
            }
            let Some(datagram) = rx.datagram(slot) else { continue };
            // None: no header, or a multi-datagram request: nothing to answer.
            if let Some(req) = handle(datagram, &shared.ctx, &mut input, out) {
                replies.push(Reply { slot, req_id: req.req_id, seq: req.seq, pipeline: req.pipeline });
            }
        }
        stats.bytes_read.fetch_add(read, Relaxed);
        if let Some(e) = &entry {
            e.touch();
        }
        // One wait covers every write of the batch; replies leave only once what they report is durable.
        let seq = replies.iter().map(|r| r.seq).max().unwrap_or(0);
        if seq > 0 && block_on(shared.durable(seq), &waker).is_err() {
            for r in replies.iter().filter(|r| r.seq > 0) {
                // Each request of the datagram gets its own reply: the failed writes (and what could have
                // seen them) their error, the others what they produced, as over TCP.
                block_on(r.pipeline.settle(&mut outs[r.slot], r.seq, shared), &waker);
            }
        }
        let datagrams = replies.iter().flat_map(|r| {
            let reply = &outs[r.slot][..];
            let to = rx.peer(r.slot);
            Frames::new(r.req_id, reply).map(move |(head, payload)| Outgoing { to, head, payload })
        });
        let sent = tx.send(fd, datagrams);
        stats.bytes_written.fetch_add(sent.bytes, Relaxed);
        // One huge multiget must not pin its reply's memory for the thread's lifetime.
        for out in outs.iter_mut().take(n).filter(|o| o.capacity() > OUT_KEEP) {
            *out = BytesMut::new();
        }
    }
}

/// Wakes the thread that waits in [`block_on`].
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` on this thread, parked while it is pending: the journal's durability wait is the same future
/// the TCP connections await (woken by the log writer's notification), without a runtime here.
fn block_on<F: std::future::Future>(f: F, waker: &std::task::Waker) -> F::Output {
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Reply buffer capacity kept per slot between batches; a larger one is released after its reply is sent.
const OUT_KEEP: usize = 64 * 1024;

/// A request datagram after [`handle`]: whom to answer, and which journal record must be durable first.
pub struct Request {
    pub req_id: u16,
    /// Highest journal sequence number of the executed requests (0: nothing logged).
    pub seq: u64,
    /// Where each request's reply starts and which record it waits for ([`Pipeline::settle`]).
    pub pipeline: Pipeline,
}

/// Runs one request datagram: parses the frame header and executes the payload, leaving the reply
/// in `out` (empty for noreply). `input` is scratch space. None when there is nothing to answer: no
/// header, or a multi-datagram request (memcached 1.6 drops those silently too).
/// Pure apart from the store, so the fuzzer runs exactly what [`serve`] runs.
pub fn handle(datagram: &[u8], ctx: &Ctx, input: &mut BytesMut, out: &mut BytesMut) -> Option<Request> {
    let FrameHeader { request_id: req_id, total, .. } = FrameHeader::parse(datagram)?;
    if total != 1 {
        return None;
    }
    out.clear();
    input.clear();
    input.extend_from_slice(&datagram[UDP_FRAME_HEADER_LEN..]);
    let mut pipeline = Pipeline::new(ctx.config.item_size_max);
    let batch = pipeline.run(input, ctx, out, usize::MAX);
    Some(Request { req_id, seq: batch.seq, pipeline })
}

/// Splits a reply into framed datagrams of at most `UDP_MAX_PAYLOAD` bytes: each item is a datagram's
/// header and its part of the reply (borrowed, so a batch sends it without a copy). Nothing for an empty
/// reply (noreply).
pub struct Frames<'a> {
    req_id: u16,
    chunks: std::slice::Chunks<'a, u8>,
    seq: u16,
    /// None: more than 65535 datagrams, which cannot be numbered; one error datagram instead.
    total: Option<u16>,
    done: bool,
}

const CHUNK: usize = UDP_MAX_PAYLOAD - UDP_FRAME_HEADER_LEN;

impl<'a> Frames<'a> {
    pub fn new(req_id: u16, reply: &'a [u8]) -> Self {
        let total = u16::try_from(reply.len().div_ceil(CHUNK)).ok();
        Frames { req_id, chunks: reply.chunks(CHUNK), seq: 0, total, done: reply.is_empty() }
    }

    /// Writes the next datagram into `frame`; false when there are no more.
    pub fn next_into(&mut self, frame: &mut BytesMut) -> bool {
        let Some((head, payload)) = self.next() else { return false };
        frame.clear();
        frame.extend_from_slice(&head);
        frame.extend_from_slice(payload);
        true
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = ([u8; UDP_FRAME_HEADER_LEN], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let head = |seq, total| FrameHeader { request_id: self.req_id, seq, total, reserved: 0 }.to_bytes();
        let Some(total) = self.total else {
            // memcached errors out the same way.
            self.done = true;
            return Some((head(0, 1), reply::OUT_OF_MEMORY_GET));
        };
        let Some(chunk) = self.chunks.next() else {
            self.done = true;
            return None;
        };
        let h = head(self.seq, total);
        self.seq = self.seq.wrapping_add(1);
        Some((h, chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(req_id: u16, reply: &[u8]) -> Vec<Vec<u8>> {
        let mut f = Frames::new(req_id, reply);
        let mut frame = BytesMut::new();
        let mut out = Vec::new();
        while f.next_into(&mut frame) {
            out.push(frame.to_vec());
        }
        out
    }

    fn ctx() -> Ctx {
        use clap::Parser as _;
        let config = Arc::new(crate::config::Config::parse_from(["kv-server", "--no-persist"]));
        let store = crate::store::Store::new((&*config).into(), Arc::new(crate::record::NoJournal));
        Ctx::new(Arc::new(store), Arc::new(crate::stats::Stats::new()), config)
    }

    /// memcached 1.6.18 and 1.6.38 alike: only the datagram count is checked.
    #[test]
    fn frame_header_as_memcached() {
        let ctx = ctx();
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        let mut run = |seq: u16, total: u16, reserved: u16| {
            let mut d = FrameHeader { request_id: 7, seq, total, reserved }.to_bytes().to_vec();
            d.extend_from_slice(b"version\r\n");
            handle(&d, &ctx, &mut input, &mut out).map(|r| (r.req_id, out.starts_with(b"VERSION ")))
        };
        for (seq, reserved) in [(0, 0), (1, 0), (5, 0), (0, 7)] {
            assert_eq!(run(seq, 1, reserved), Some((7, true)), "seq {seq} reserved {reserved}");
        }
        for (seq, total) in [(0, 0), (0, 2), (1, 2), (0, 256)] {
            assert_eq!(run(seq, total, 0), None, "seq {seq} of {total}");
        }
    }

    #[test]
    fn reply_split_at_chunk_boundaries() {
        assert!(frames(1, b"").is_empty());
        for len in [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let reply: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let got = frames(0xabcd, &reply);
            assert_eq!(got.len(), len.div_ceil(CHUNK), "len {len}");
            let mut joined = Vec::new();
            for (i, d) in got.iter().enumerate() {
                assert!(d.len() <= UDP_MAX_PAYLOAD);
                let h: Vec<u16> = d[..8].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                assert_eq!(h, [0xabcd, i as u16, got.len() as u16, 0]);
                joined.extend_from_slice(&d[8..]);
            }
            assert_eq!(joined, reply);
        }
    }

    #[test]
    fn reply_too_many_datagrams_is_one_error() {
        let reply = vec![b'x'; CHUNK * 65536];
        let got = frames(9, &reply);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0][..8], &[0, 9, 0, 0, 0, 1, 0, 0]);
        assert!(got[0][8..].starts_with(b"SERVER_ERROR"));
        // The largest numberable reply is still sent in full.
        assert_eq!(frames(9, &reply[..CHUNK * 65535]).len(), 65535);
    }

    /// The threads answer batches of requests from several sources, each reply framed and sent back to its
    /// own source, and return promptly once stopped.
    #[test]
    fn threads_answer_batches_and_stop() {
        use std::net::UdpSocket;
        use std::time::{Duration, Instant};
        let shared = Shared { ctx: Arc::new(ctx()), log: None };
        let value = "v".repeat(3000);
        let mut p = Pipeline::new(1 << 20);
        let mut out = BytesMut::new();
        p.run(
            &mut BytesMut::from(format!("set k 0 0 3000\r\n{value}\r\n").as_bytes()),
            &shared.ctx,
            &mut out,
            usize::MAX,
        );
        assert_eq!(&out[..], b"STORED\r\n");
        let sock = bind("127.0.0.1".parse().unwrap(), 0).unwrap();
        let addr = sock.local_addr().unwrap();
        let (done, mut finished) = tokio::sync::mpsc::channel::<()>(1);
        let threads = Threads::start(sock, 2, &shared, &done).unwrap();
        drop(done);
        let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        // More requests than one receive batch takes, sent before any is read.
        let per = RECV_BATCH as u16;
        for (c, client) in clients.iter().enumerate() {
            client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            for i in 0..per {
                let id = c as u16 * 1000 + i;
                let body: &[u8] = if i % 2 == 0 { b"get k\r\n" } else { b"mn\r\n" };
                let mut d = FrameHeader { request_id: id, seq: 0, total: 1, reserved: 0 }.to_bytes().to_vec();
                d.extend_from_slice(body);
                client.send_to(&d, addr).unwrap();
            }
        }
        let want_get = format!("VALUE k 0 3000\r\n{value}\r\nEND\r\n");
        for (c, client) in clients.iter().enumerate() {
            let mut parts = std::collections::HashMap::<u16, Vec<(u16, Vec<u8>)>>::new();
            let mut buf = [0u8; 2048];
            let want_datagrams = per as usize / 2 * want_get.len().div_ceil(CHUNK) + per as usize / 2;
            for _ in 0..want_datagrams {
                let n = client.recv(&mut buf).unwrap();
                let h = FrameHeader::parse(&buf[..n]).unwrap();
                parts.entry(h.request_id).or_default().push((h.seq, buf[8..n].to_vec()));
            }
            assert_eq!(parts.len(), per as usize);
            for (id, mut p) in parts {
                assert_eq!(id / 1000, c as u16, "a reply went to another source");
                p.sort();
                let got: Vec<u8> = p.into_iter().flat_map(|(_, d)| d).collect();
                let want = if id % 2 == 0 { want_get.as_bytes() } else { b"MN\r\n" };
                assert_eq!(got, want, "request {id}");
            }
        }
        // Counted after sendmmsg returns, so possibly just after the client has read the last datagram.
        let stats = &shared.ctx.stats;
        let t = Instant::now();
        while stats.bytes_written.load(Relaxed) <= 3 * 16 * 3000 {
            assert!(t.elapsed() < Duration::from_secs(2), "bytes_written {}", stats.bytes_written.load(Relaxed));
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        threads.stop();
        while finished.try_recv() != Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) {
            assert!(t.elapsed() < Duration::from_secs(2), "UDP threads still running after stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
