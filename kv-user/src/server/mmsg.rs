//! Datagram batches for the UDP front end: `recvmmsg` and `sendmmsg` over arrays set up once per thread,
//! so a batch costs two system calls and a datagram in the steady state no allocation.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// Datagrams taken per `recvmmsg`. Large enough to amortize the call under load, small enough that a
/// thread preempted while holding a batch delays few requests.
pub const RECV_BATCH: usize = 32;
/// Bytes per receive slot: the largest UDP payload (65,507 bytes over IPv4) fits.
pub const SLOT: usize = 1 << 16;
/// Datagrams per `sendmmsg`.
pub const SEND_BATCH: usize = 64;

/// Receive slots: buffers, source addresses and the headers the kernel fills.
pub struct RecvBatch {
    /// `RECV_BATCH` slots of `SLOT` bytes; pages are only touched by the datagrams written to them.
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Slots filled by the last [`RecvBatch::recv`].
    len: usize,
}

fn zeroed<T: Copy>(n: usize) -> Box<[T]> {
    // SAFETY: only instantiated with C structs (sockaddr_storage, iovec, mmsghdr) for which all-zero bytes
    // are a valid value (null pointers, zero lengths).
    vec![unsafe { std::mem::zeroed::<T>() }; n].into_boxed_slice()
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0u8; RECV_BATCH * SLOT].into_boxed_slice(),
            names: zeroed(RECV_BATCH),
            iovs: zeroed(RECV_BATCH),
            hdrs: zeroed(RECV_BATCH),
            len: 0,
        }
    }
}

impl RecvBatch {
    /// One `recvmmsg` into every slot with `flags` (`MSG_WAITFORONE` on a blocking socket: wait for one
    /// datagram, then take what else is queued without waiting). Returns how many slots were filled.
    pub fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        self.len = 0;
        // Pointers are derived afresh for each call, after every access through the boxes.
        let (buf, names, iovs) = (self.bufs.as_mut_ptr(), self.names.as_mut_ptr(), self.iovs.as_mut_ptr());
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            // SAFETY: i < RECV_BATCH, the length of `iovs` and `names`; `bufs` holds RECV_BATCH * SLOT bytes.
            unsafe {
                *iovs.add(i) = libc::iovec { iov_base: buf.add(i * SLOT).cast(), iov_len: SLOT };
                h.msg_hdr.msg_iov = iovs.add(i);
                h.msg_hdr.msg_name = names.add(i).cast();
            }
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at one slot of SLOT bytes and one sockaddr_storage, all owned by
        // `self` and not otherwise accessed during the call (`&mut self`); vlen is the headers' count.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), RECV_BATCH as libc::c_uint, flags, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.len = n as usize;
        Ok(self.len)
    }

    /// Datagram `i` of the last call (the kernel's length; a datagram cut short is not returned).
    pub fn datagram(&self, i: usize) -> Option<&[u8]> {
        assert!(i < self.len);
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        Some(&self.bufs[i * SLOT..i * SLOT + (h.msg_len as usize).min(SLOT)])
    }

    /// Bytes datagram `i` carried, truncated or not.
    pub fn len_of(&self, i: usize) -> usize {
        assert!(i < self.len);
        self.hdrs[i].msg_len as usize
    }

    /// The source address of datagram `i`, as the kernel wrote it.
    pub fn peer(&self, i: usize) -> Peer<'_> {
        assert!(i < self.len);
        let len = self.hdrs[i].msg_hdr.msg_namelen.min(std::mem::size_of::<libc::sockaddr_storage>() as _);
        Peer { addr: &self.names[i], len }
    }
}

/// A datagram's source address, borrowed from its slot.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    addr: &'a libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Peer<'_> {
    pub fn ip(&self) -> Option<IpAddr> {
        let size = |t: usize| self.len as usize >= t;
        match libc::c_int::from(self.addr.ss_family) {
            libc::AF_INET if size(std::mem::size_of::<libc::sockaddr_in>()) => {
                // SAFETY: sockaddr_storage is large enough and aligned for every address type, and the
                // kernel wrote a sockaddr_in here (family and length say so).
                let a = unsafe { &*(self.addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                Some(IpAddr::V4(Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes())))
            }
            libc::AF_INET6 if size(std::mem::size_of::<libc::sockaddr_in6>()) => {
                // SAFETY: as above, for a sockaddr_in6.
                let a = unsafe { &*(self.addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

/// One datagram to send: its destination, its 8-byte frame header and its payload.
pub struct Outgoing<'a> {
    pub to: Peer<'a>,
    pub head: [u8; 8],
    pub payload: &'a [u8],
}

/// What [`SendBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    /// Datagrams the kernel refused (each logged at debug level and skipped).
    pub failed: u64,
}

/// Send slots: each datagram is two iovecs, its header (copied here) and its payload (borrowed).
pub struct SendBatch {
    heads: Box<[[u8; 8]]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            heads: vec![[0; 8]; SEND_BATCH].into_boxed_slice(),
            iovs: zeroed(2 * SEND_BATCH),
            hdrs: zeroed(SEND_BATCH),
        }
    }
}

impl SendBatch {
    /// Sends everything `datagrams` yields, `SEND_BATCH` per `sendmmsg`, in order. On a blocking socket
    /// a full send buffer waits; a datagram the kernel refuses is skipped.
    pub fn send<'a>(&mut self, fd: RawFd, datagrams: impl IntoIterator<Item = Outgoing<'a>>) -> Sent {
        let mut sent = Sent::default();
        let mut it = datagrams.into_iter().peekable();
        while it.peek().is_some() {
            let mut n = 0;
            for d in it.by_ref().take(SEND_BATCH) {
                self.heads[n] = d.head;
                self.iovs[2 * n + 1] =
                    libc::iovec { iov_base: d.payload.as_ptr().cast_mut().cast(), iov_len: d.payload.len() };
                let h = &mut self.hdrs[n].msg_hdr;
                h.msg_name = (d.to.addr as *const libc::sockaddr_storage).cast_mut().cast();
                h.msg_namelen = d.to.len;
                n += 1;
            }
            let (heads, iovs) = (self.heads.as_mut_ptr(), self.iovs.as_mut_ptr());
            for (k, m) in self.hdrs[..n].iter_mut().enumerate() {
                // SAFETY: k < n <= SEND_BATCH; `iovs` has 2 * SEND_BATCH entries and `heads` SEND_BATCH.
                unsafe {
                    *iovs.add(2 * k) = libc::iovec { iov_base: heads.add(k).cast(), iov_len: 8 };
                    m.msg_hdr.msg_iov = iovs.add(2 * k);
                }
                m.msg_hdr.msg_iovlen = 2;
                m.msg_hdr.msg_control = std::ptr::null_mut();
                m.msg_hdr.msg_controllen = 0;
                m.msg_hdr.msg_flags = 0;
            }
            let mut done = 0;
            while done < n {
                // SAFETY: headers done..n point at this batch's headers (owned by `self`) and at payloads and
                // addresses borrowed for 'a, which outlives this call; the kernel only reads them.
                let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr().add(done), (n - done) as libc::c_uint, 0) };
                if r <= 0 {
                    let e = io::Error::last_os_error();
                    if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // The first datagram of the rest failed: skip it, keep the others.
                    log::debug!("udp send: {e}");
                    sent.failed += 1;
                    done += 1;
                    continue;
                }
                let r = r as usize;
                sent.datagrams += r as u64;
                sent.bytes += self.hdrs[done..done + r].iter().map(|m| u64::from(m.msg_len)).sum::<u64>();
                done += r;
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn batches_round_trip_with_their_sources() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(format!("hello {i}").as_bytes(), addr).unwrap();
        }
        clients[0].send_to(&vec![1u8; 65_000], addr).unwrap();
        let mut rx = RecvBatch::default();
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = rx.recv(server.as_raw_fd(), libc::MSG_WAITFORONE).unwrap();
            for i in 0..n {
                let ip = rx.peer(i).ip().unwrap();
                got.push((rx.datagram(i).unwrap().to_vec(), ip, rx.len_of(i)));
            }
        }
        assert_eq!(got[0].0, b"hello 0");
        assert_eq!(got[2].0, b"hello 2");
        assert_eq!(got[3].0.len(), 65_000);
        assert!(got.iter().all(|g| g.1 == IpAddr::V4(Ipv4Addr::LOCALHOST) && g.2 == g.0.len()));

        // Replies go back to where each datagram came from, more than one sendmmsg's worth.
        let n = rx.recv(server.as_raw_fd(), libc::MSG_DONTWAIT);
        assert_eq!(n.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8], addr).unwrap();
        }
        let mut n = 0;
        while n < 3 {
            n += rx.recv(server.as_raw_fd(), libc::MSG_WAITFORONE).unwrap();
        }
        let payload: &[u8] = &[7u8; 10];
        let out = (0..3).flat_map(|i| {
            let to = rx.peer(i);
            (0..SEND_BATCH as u8).map(move |k| Outgoing { to, head: [k; 8], payload: &payload[..k as usize % 10] })
        });
        let mut tx = SendBatch::default();
        let sent = tx.send(server.as_raw_fd(), out);
        assert_eq!(sent, Sent { datagrams: 3 * 64, bytes: 3 * (64 * 8 + 276), failed: 0 });
        let from = |i: usize| usize::from(rx.datagram(i).unwrap()[0]);
        for i in 0..3 {
            let c = &clients[from(i)];
            c.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            for k in 0..SEND_BATCH {
                let len = c.recv(&mut buf).unwrap();
                assert_eq!(len, 8 + k % 10);
                assert_eq!(buf[..8], [k as u8; 8]);
            }
        }
    }

    #[test]
    fn ipv6_sources() {
        let Ok(server) = UdpSocket::bind("[::1]:0") else { return }; // no IPv6 loopback here
        let client = UdpSocket::bind("[::1]:0").unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        client.send_to(b"six", server.local_addr().unwrap()).unwrap();
        let mut rx = RecvBatch::default();
        assert_eq!(rx.recv(server.as_raw_fd(), libc::MSG_WAITFORONE).unwrap(), 1);
        assert_eq!(rx.peer(0).ip(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        let out = [Outgoing { to: rx.peer(0), head: [6; 8], payload: b"!" }];
        assert_eq!(SendBatch::default().send(server.as_raw_fd(), out).datagrams, 1);
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf).unwrap(), 9);
    }

    /// A destination the kernel refuses costs that datagram only.
    #[test]
    fn a_refused_datagram_is_skipped() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        client.send_to(b"x", server.local_addr().unwrap()).unwrap();
        let mut rx = RecvBatch::default();
        assert_eq!(rx.recv(server.as_raw_fd(), libc::MSG_WAITFORONE).unwrap(), 1);
        let good = rx.peer(0);
        // An IPv6 destination on an IPv4 socket.
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut v6: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        v6.ss_family = libc::AF_INET6 as libc::sa_family_t;
        let bad = Peer { addr: &v6, len: std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t };
        let out = [good, bad, good].map(|to| Outgoing { to, head: [1; 8], payload: b"ok" });
        let sent = SendBatch::default().send(server.as_raw_fd(), out);
        assert_eq!(sent, Sent { datagrams: 2, bytes: 20, failed: 1 });
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf).unwrap(), 10);
        assert_eq!(client.recv(&mut buf).unwrap(), 10);
    }
}
