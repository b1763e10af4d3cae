//! TCP front end: an acceptor handing connections to the worker threads, and one tokio task per
//! connection on its worker, which holds read and write buffers only while it has work (see `Conn`).

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::Pipeline;
use super::Shared;
use crate::conns::Entry;
use crate::protocol::reply;

/// Replies are flushed once they pass this size even mid-batch, bounding memory per connection.
const OUT_SOFT_LIMIT: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// memcached's `tcp_backlog` default.
const BACKLOG: i32 = 1024;

/// A bound TCP socket, not yet listening: with SO_REUSEADDR (a restart may bind while old connections
/// sit in TIME_WAIT; a port another process listens on is still refused) and without SO_REUSEPORT, so
/// no other socket can join it and take a share of the connections. Until [`listen`], connections are
/// refused, as they should be while the log is replayed.
pub fn bind(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Starts listening on a socket from [`bind`] (in a runtime, which it is registered with). Two
/// instances starting at once can both bind; the second one's `listen` fails with `EADDRINUSE`.
pub fn listen(s: socket2::Socket) -> std::io::Result<TcpListener> {
    s.listen(BACKLOG)?;
    TcpListener::from_std(s.into())
}

/// Accepts connections and hands them to the workers round-robin, as memcached's dispatcher does. A
/// worker that is gone is skipped from then on; the loop ends only on `stop`, or when no worker is
/// left to serve a connection (returned as an error, so the process exits rather than accept nothing).
pub async fn accept_loop(
    listener: TcpListener,
    shared: Shared,
    mut workers: Vec<UnboundedSender<std::net::TcpStream>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let max_conns = shared.ctx.config.max_connections;
    let mut next = 0usize;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let stats = &shared.ctx.stats;
        if stats.curr_connections.load(Relaxed) as usize >= max_conns {
            // memcached (maxconns_fast) answers and closes rather than leaving the client hanging.
            stats.rejected_connections.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let mut s = stream;
                let _ = s.write_all(reply::TOO_MANY_CONNECTIONS).await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or_else(|_| listener.local_addr().expect("a bound listener"));
        // Moves the socket from this runtime's epoll to the worker's (into_std deregisters it).
        let Ok(mut std_stream) = stream.into_std() else { continue };
        // Registered here, before a worker sees it: a reused descriptor's stale entry is replaced.
        shared.ctx.conns.connection(std_stream.as_raw_fd(), peer, local);
        stats.curr_connections.fetch_add(1, Relaxed);
        stats.total_connections.fetch_add(1, Relaxed);
        loop {
            if workers.is_empty() {
                stats.curr_connections.fetch_sub(1, Relaxed);
                if let Some(e) = shared.ctx.conns.get(std_stream.as_raw_fd()) {
                    shared.ctx.conns.remove(std_stream.as_raw_fd(), &e);
                }
                return if *stop.borrow() { Ok(()) } else { Err("every worker thread is gone") };
            }
            let i = next % workers.len();
            match workers[i].send(std_stream) {
                Ok(()) => {
                    next = i.wrapping_add(1);
                    break;
                }
                Err(back) => {
                    // Its thread has exited: at shutdown, or after a panic. Hand the connection on.
                    std_stream = back.0;
                    workers.swap_remove(i);
                    if !*stop.borrow() {
                        log::error!("a worker thread is gone; {} left", workers.len());
                    }
                }
            }
        }
    }
}

/// Serves one connection on the calling worker's runtime.
pub fn spawn_connection(stream: std::net::TcpStream, shared: &Shared) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let fd = stream.as_raw_fd();
        let entry = shared.ctx.conns.get(fd);
        match TcpStream::from_std(stream) {
            Ok(stream) => match handle(stream, &shared, entry.as_deref()).await {
                // Still a connection (and counted as one), waiting in the parking set without a task.
                Ok(Some(idle)) => match idle.into_std().and_then(super::park::park) {
                    Ok(()) => return,
                    Err(e) => log::warn!("parking a connection: {e}"),
                },
                Ok(None) => {}
                Err(e) => log::debug!("connection: {e}"),
            },
            Err(e) => log::warn!("registering a connection: {e}"),
        }
        shared.ctx.stats.curr_connections.fetch_sub(1, Relaxed);
        if let Some(e) = &entry {
            shared.ctx.conns.remove(fd, e);
        }
    });
}

/// A connection's working state: parser state and its input and output buffers. Only a connection in
/// the middle of something holds one; an idle one waits with nothing but its socket, and the state goes
/// back to this worker's pool (memcached likewise returns read buffers to its thread when idle).
struct Conn {
    pipeline: Pipeline,
    input: BytesMut,
    out: BytesMut,
}

impl Conn {
    fn idle(&self) -> bool {
        self.input.is_empty() && self.out.is_empty() && self.pipeline.idle()
    }
}

/// Pooled states keep at most this much buffer; one that grew (a large value or reply) is freed instead.
const POOLED_BUFFER_MAX: usize = 4 * READ_CHUNK;
/// Idle states kept per worker.
const POOL_MAX: usize = 256;

thread_local! {
    // Boxed: a task holds its state as one pointer, and the box itself is what is reused.
    #[allow(clippy::vec_box)]
    static POOL: std::cell::RefCell<Vec<Box<Conn>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_conn(item_size_max: usize) -> Box<Conn> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
        Box::new(Conn { pipeline: Pipeline::new(item_size_max), input: BytesMut::new(), out: BytesMut::new() })
    })
}

fn give_conn(mut c: Box<Conn>) {
    for b in [&mut c.input, &mut c.out] {
        // Reclaims the whole allocation into view (nothing is left in it), so its size can be judged.
        b.reserve(READ_CHUNK);
        if b.capacity() > POOLED_BUFFER_MAX {
            *b = BytesMut::new();
        }
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(c);
        }
    });
}

/// Serves the connection until it closes (`None`), or returns it once it has been idle for
/// [`PARK_AFTER`](super::park::PARK_AFTER), to be parked.
async fn handle(mut stream: TcpStream, shared: &Shared, entry: Option<&Entry>) -> std::io::Result<Option<TcpStream>> {
    use super::park::PARK_AFTER;
    let ctx: &Arc<_> = &shared.ctx;
    let mut conn: Option<Box<Conn>> = None;
    // One timer for the connection's life, registered once; input only sets `heard`. When the timer
    // fires, a connection that heard nothing for a whole period parks, any other starts a new period:
    // it parks after 2 to 4 s of silence. (A timer per wait for input cost a timer-wheel insert and
    // removal per request, and a clock read per input costs a system call on some virtual machines.)
    let mut heard = false;
    let park_timer = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(park_timer);
    loop {
        if conn.as_ref().is_some_and(|c| c.idle()) {
            give_conn(conn.take().expect("checked"));
        }
        let c = match &mut conn {
            Some(c) => c,
            None => {
                tokio::select! {
                    biased;
                    r = stream.readable() => r?,
                    _ = &mut park_timer => {
                        if !heard {
                            return Ok(Some(stream));
                        }
                        heard = false;
                        park_timer.as_mut().reset(Instant::now() + PARK_AFTER);
                        continue;
                    }
                }
                conn.insert(take_conn(ctx.config.item_size_max))
            }
        };
        if c.input.capacity() - c.input.len() < READ_CHUNK / 4 {
            c.input.reserve(READ_CHUNK);
        }
        // No shutdown select here: a watch receiver per read would take the channel's waiter lock twice
        // per request, shared by every connection. At shutdown the runtime drops these tasks; everything
        // they acknowledged is already in the log.
        let n = stream.read_buf(&mut c.input).await?;
        if n == 0 {
            return Ok(None);
        }
        ctx.stats.bytes_read.fetch_add(n as u64, Relaxed);
        heard = true;
        if let Some(e) = entry {
            e.command();
        }
        loop {
            let batch = c.pipeline.run(&mut c.input, ctx, &mut c.out, OUT_SOFT_LIMIT);
            if batch.seq > 0 {
                // Acknowledge only what is durable (noreply writes too, before we read on: ordering for the
                // next request); a failed write's reply becomes an error, the others stay.
                c.pipeline.settle(&mut c.out, batch.seq, shared).await;
            }
            if !c.out.is_empty() {
                stream.write_all(&c.out).await?;
                ctx.stats.bytes_written.fetch_add(c.out.len() as u64, Relaxed);
                c.out.clear();
            }
            if batch.close {
                return Ok(None);
            }
            if !batch.more {
                break;
            }
        }
        if let Some(e) = entry {
            // A complete command line left waiting is a storage command waiting for its data.
            e.wait(!c.pipeline.idle() || c.input.contains(&b'\n'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that is gone is skipped (the acceptor returned, and every later connection was
    /// refused); with none left the loop ends with an error instead of accepting for nobody.
    #[test]
    fn acceptor_skips_dead_workers() {
        use clap::Parser as _;
        let config = Arc::new(crate::config::Config::parse_from(["kv-server", "--no-persist"]));
        let store = crate::store::Store::new((&*config).into(), Arc::new(crate::record::NoJournal));
        let ctx = crate::exec::Ctx::new(Arc::new(store), Arc::new(crate::stats::Stats::new()), config);
        let shared = Shared { ctx: Arc::new(ctx), log: None };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = listen(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            let (dead, _) = tokio::sync::mpsc::unbounded_channel();
            let (live, mut conns) = tokio::sync::mpsc::unbounded_channel();
            let (stop_tx, stop) = watch::channel(false);
            let acceptor = tokio::spawn(accept_loop(listener, shared.clone(), vec![dead, live], stop));
            for _ in 0..3 {
                let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
                conns.recv().await.expect("handed to the live worker");
            }
            drop(conns);
            let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
            assert_eq!(acceptor.await.unwrap(), Err("every worker thread is gone"));
            assert_eq!(shared.ctx.stats.curr_connections.load(Relaxed), 3);
            drop(stop_tx);
        });
    }
}
