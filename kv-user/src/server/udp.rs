//! UDP front end, memcached's framing: every datagram starts with an 8-byte header (request id,
//! sequence number, datagram count, reserved; big-endian u16s). A request must fit one datagram;
//! the reply is split into datagrams of at most `UDP_MAX_PAYLOAD` bytes, each with its own header.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;

use bytes::{BufMut as _, BytesMut};
use kv_common::{UDP_FRAME_HEADER_LEN, UDP_MAX_PAYLOAD};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::conn::Pipeline;
use super::Shared;

/// One SO_REUSEPORT socket per worker thread, so the kernel spreads datagrams across them.
/// Plain std sockets: each is registered with the runtime of the worker that serves it.
pub fn bind(ip: IpAddr, port: u16, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        // Bursty clients (multigets, benchmarks) overrun the default buffer long before we fall behind.
        let _ = s.set_recv_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        out.push(s.into());
    }
    Ok(out)
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
        if n < UDP_FRAME_HEADER_LEN {
            continue; // no header to answer to
        }
        let header = &buf[..UDP_FRAME_HEADER_LEN];
        let req_id = u16::from_be_bytes([header[0], header[1]]);
        let seq = u16::from_be_bytes([header[2], header[3]]);
        let total = u16::from_be_bytes([header[4], header[5]]);
        out.clear();
        if seq != 0 || total != 1 {
            out.extend_from_slice(b"SERVER_ERROR multi-packet request not supported\r\n");
        } else {
            input.clear();
            input.extend_from_slice(&buf[UDP_FRAME_HEADER_LEN..n]);
            let mut pipeline = Pipeline::new(shared.ctx.config.item_size_max);
            let batch = pipeline.run(&mut input, &shared.ctx, &mut out, usize::MAX);
            if let Err(e) = shared.durable(batch.seq).await {
                log::error!("log write failed: {e}");
                out.clear();
                out.extend_from_slice(b"SERVER_ERROR failed to persist\r\n");
            }
        }
        send_reply(&sock, peer, req_id, &out, &mut frame, &shared).await;
    }
}

/// Splits `reply` into framed datagrams. Nothing is sent for an empty reply (noreply).
pub async fn send_reply(
    sock: &UdpSocket,
    peer: SocketAddr,
    req_id: u16,
    reply: &[u8],
    frame: &mut BytesMut,
    shared: &Shared,
) {
    const CHUNK: usize = UDP_MAX_PAYLOAD - UDP_FRAME_HEADER_LEN;
    if reply.is_empty() {
        return;
    }
    let count = reply.len().div_ceil(CHUNK);
    let Ok(total) = u16::try_from(count) else {
        // More than 65535 datagrams cannot be numbered; memcached errors out the same way.
        let mut f = BytesMut::new();
        put_header(&mut f, req_id, 0, 1);
        f.extend_from_slice(b"SERVER_ERROR out of memory writing get response\r\n");
        let _ = sock.send_to(&f, peer).await;
        return;
    };
    for (i, chunk) in reply.chunks(CHUNK).enumerate() {
        frame.clear();
        put_header(frame, req_id, i as u16, total);
        frame.extend_from_slice(chunk);
        match sock.send_to(frame, peer).await {
            Ok(n) => {
                shared.ctx.stats.bytes_written.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                log::debug!("udp send to {peer}: {e}");
                return;
            }
        }
    }
}

fn put_header(f: &mut BytesMut, req_id: u16, seq: u16, total: u16) {
    f.put_u16(req_id);
    f.put_u16(seq);
    f.put_u16(total);
    f.put_u16(0);
}
