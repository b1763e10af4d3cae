//! UDP front end, memcached's framing: every datagram starts with an 8-byte header (request id,
//! sequence number, datagram count, reserved; big-endian u16s). A request must fit one datagram:
//! as memcached does, one announcing another datagram count than 1 is dropped without an answer, and
//! the sequence number and reserved field are not looked at. The reply is split into datagrams of
//! at most `UDP_MAX_PAYLOAD` bytes, each with its own header.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use kv_common::{FrameHeader, UDP_FRAME_HEADER_LEN, UDP_MAX_PAYLOAD};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::conn::Pipeline;
use super::Shared;
use crate::exec::Ctx;
use crate::protocol::reply;

/// The UDP socket, bound without SO_REUSEPORT or SO_REUSEADDR so that the port is this process's
/// alone: another process (a second kv-server, or anything of the same user setting SO_REUSEPORT)
/// gets `EADDRINUSE` instead of a share of the datagrams. The workers serve it through `dup(2)`s of it,
/// as memcached's threads do: a reuseport group would spread the datagrams across the workers'
/// sockets, but Linux lets any socket of the same user join such a group, and the kernel then hands
/// it part of the traffic (SO_ATTACH_REUSEPORT_CBPF cannot keep it out: any member may replace the
/// program). Plain std socket: each copy is registered with the runtime of the worker serving it; the
/// kernel queues a datagram once, and whichever worker reads first serves it.
pub fn bind(ip: IpAddr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    // Bursty clients (multigets, benchmarks) overrun the default buffer long before we fall behind.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

pub async fn serve(sock: UdpSocket, shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut frame = BytesMut::with_capacity(UDP_MAX_PAYLOAD);
    let allow = shared.ctx.config.udp_allowlist();
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => { log::debug!("udp recv: {e}"); continue; }
            },
            _ = stop.changed() => return,
        };
        shared.ctx.stats.bytes_read.fetch_add(n as u64, Relaxed);
        // Amplification guard: a spoofed source outside the allowlist gets nothing back.
        if !crate::config::udp_allowed(&allow, peer.ip()) {
            continue;
        }
        let Some(req) = handle(&buf[..n], &shared.ctx, &mut input, &mut out) else {
            continue; // no header, or a multi-datagram request: nothing to answer
        };
        if let Err(e) = shared.durable(req.seq).await {
            log::error!("log write failed: {e}");
            out.clear();
            out.extend_from_slice(reply::FAILED_TO_PERSIST);
        }
        let mut frames = Frames::new(req.req_id, &out);
        while frames.next_into(&mut frame) {
            match sock.send_to(&frame, peer).await {
                Ok(n) => {
                    shared.ctx.stats.bytes_written.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    log::debug!("udp send to {peer}: {e}");
                    break;
                }
            }
        }
        // One huge multiget must not pin its reply's memory for the worker's lifetime.
        if out.capacity() > OUT_KEEP {
            out = BytesMut::with_capacity(64 * 1024);
        }
    }
}

/// Reply buffer capacity kept between datagrams; a larger one is released after its reply is sent.
const OUT_KEEP: usize = 1 << 20;

/// A request datagram after [`handle`]: whom to answer, and which journal record must be durable first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub req_id: u16,
    /// Highest journal sequence number of the executed requests (0: nothing logged).
    pub seq: u64,
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
    Some(Request { req_id, seq: batch.seq })
}

/// Splits a reply into framed datagrams of at most `UDP_MAX_PAYLOAD` bytes. Nothing for an empty
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
        if self.done {
            return false;
        }
        frame.clear();
        let Some(total) = self.total else {
            // memcached errors out the same way.
            self.done = true;
            put_header(frame, self.req_id, 0, 1);
            frame.extend_from_slice(reply::OUT_OF_MEMORY_GET);
            return true;
        };
        let Some(chunk) = self.chunks.next() else {
            self.done = true;
            return false;
        };
        put_header(frame, self.req_id, self.seq, total);
        frame.extend_from_slice(chunk);
        self.seq = self.seq.wrapping_add(1);
        true
    }
}

fn put_header(f: &mut BytesMut, request_id: u16, seq: u16, total: u16) {
    f.extend_from_slice(&FrameHeader { request_id, seq, total, reserved: 0 }.to_bytes());
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

    /// memcached 1.6.18 and 1.6.38 alike: only the datagram count is checked.
    #[test]
    fn frame_header_as_memcached() {
        use clap::Parser as _;
        let config = std::sync::Arc::new(crate::config::Config::parse_from(["kv-server", "--no-persist"]));
        let store = crate::store::Store::new((&*config).into(), std::sync::Arc::new(crate::record::NoJournal));
        let ctx = Ctx::new(std::sync::Arc::new(store), std::sync::Arc::new(crate::stats::Stats::new()), config);
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
}
