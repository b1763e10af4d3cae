//! tcp-ceiling: answers every `get` line with one fixed reply, from user space, as cheaply as TCP allows: one
//! epoll loop per thread, one read and one write per wake-up, no allocation per request. The benchmark's TCP
//! ceiling (what the kernel's TCP stack leaves for a server at a given depth); see bench/README.md.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kv_bench::ceiling::{reply, LineState};

/// Fixed-reply TCP responder (the TCP analogue of the XDP_TX reflector).
#[derive(Parser, Debug)]
#[command(name = "tcp-ceiling", version)]
struct Args {
    /// Address to listen on, IP:PORT.
    #[arg(long)]
    listen: String,
    /// Worker threads (one epoll loop each); connections are handed out round-robin.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Key length of the reply's `VALUE` line.
    #[arg(long, default_value_t = 8)]
    key_len: usize,
    /// Value bytes in the reply.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp-ceiling: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    if args.threads == 0 || args.key_len == 0 || args.key_len > kv_common::MAX_KEY_LEN {
        bail!("--threads must be at least 1 and --key-len 1 to {}", kv_common::MAX_KEY_LEN);
    }
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("binding {}", args.listen))?;
    let get_reply: Arc<[u8]> = reply(args.key_len, args.value_size).into();
    let mut epolls = Vec::with_capacity(args.threads);
    for t in 0..args.threads {
        // SAFETY: plain syscall; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        epolls.push(ep);
        let r = get_reply.clone();
        std::thread::Builder::new().name(format!("ceiling-{t}")).spawn(move || worker(ep, &r))?;
    }
    eprintln!(
        "tcp-ceiling: listening on {} with {} threads, {}-byte reply",
        args.listen,
        args.threads,
        get_reply.len()
    );
    // Accept here and hand each connection to the next worker's epoll (epoll_ctl is safe across threads), as
    // memcached's and kv-server's acceptors do: every connection has one thread.
    let mut next = 0;
    loop {
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => {
                continue
            }
            Err(e) => return Err(e).context("accept"),
        };
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let fd = stream.into_raw_fd();
        if let Err(e) = ctl(epolls[next], libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32) {
            // SAFETY: fd came from into_raw_fd just above and was not registered: we still own it.
            drop(unsafe { TcpStream::from_raw_fd(fd) });
            return Err(e).context("epoll_ctl add");
        }
        next = (next + 1) % epolls.len();
    }
}

fn ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: fd as u64 };
    // SAFETY: ep and fd are open descriptors; ev lives across the call.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Conn {
    stream: TcpStream,
    line: LineState,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// Registered for EPOLLOUT (a write found the socket full): nothing is read until `out` drains.
    waiting: bool,
}

/// One thread's event loop. Connections are indexed by descriptor number.
fn worker(ep: RawFd, get_reply: &[u8]) {
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: events is a valid array of its length; ep is this thread's epoll descriptor.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            continue; // EINTR
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            let slot = fd as usize;
            if conns.len() <= slot {
                conns.resize_with(slot + 1, || None);
            }
            let conn = conns[slot].get_or_insert_with(|| Conn {
                // SAFETY: the acceptor gave up this descriptor (into_raw_fd) and registered it with this epoll only,
                // so this worker is its one owner from its first event on; it is closed by dropping the Conn.
                stream: unsafe { TcpStream::from_raw_fd(fd) },
                line: LineState::default(),
                out: Vec::with_capacity(4096),
                sent: 0,
                waiting: false,
            });
            if !serve(conn, ep, &mut buf, get_reply) {
                // Closing the descriptor removes it from the epoll set.
                conns[slot] = None;
            }
        }
    }
}

/// Handles one readiness event; false when the connection is done.
fn serve(c: &mut Conn, ep: RawFd, buf: &mut [u8], get_reply: &[u8]) -> bool {
    if c.waiting {
        return flush(c, ep);
    }
    let n = match (&c.stream).read(buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => return true,
        Err(_) => return false,
    };
    let open = c.line.feed(&buf[..n], get_reply, &mut c.out);
    open && (c.out.is_empty() || flush(c, ep))
}

/// Writes what is pending; on a full socket buffer waits for EPOLLOUT instead of EPOLLIN until it drains.
fn flush(c: &mut Conn, ep: RawFd) -> bool {
    let fd = c.stream.as_raw_fd();
    while c.sent < c.out.len() {
        match (&c.stream).write(&c.out[c.sent..]) {
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !c.waiting {
                    c.waiting = true;
                    return ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32).is_ok();
                }
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.out.clear();
    c.sent = 0;
    if c.waiting {
        c.waiting = false;
        return ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32).is_ok();
    }
    true
}
