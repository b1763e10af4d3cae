//! Network front ends: TCP connections and the UDP sockets, both feeding `protocol::parse` into
//! `exec::execute`, the worker threads, and signals and clean shutdown. main.rs builds what they serve.

mod conn;
mod mmsg;
mod park;
mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use crate::config::Config;
use crate::exec::Ctx;
use crate::persist::Log;

pub use conn::Pipeline;
pub use park::release_parked_memory;

/// Everything a front end needs to serve a request.
#[derive(Clone)]
pub struct Shared {
    pub ctx: Arc<Ctx>,
    /// None with `--no-persist`.
    pub log: Option<Arc<Log>>,
}

impl Shared {
    /// Waits until the journal record `seq` is as durable as `--fsync` promises. 0 means nothing was logged.
    pub async fn durable(&self, seq: u64) -> std::io::Result<()> {
        match (&self.log, seq) {
            // Not boxed: a write would pay an allocation, and idle connections park without a task.
            (Some(log), s) if s > 0 => log.wait_durable(s).await,
            _ => Ok(()),
        }
    }
}

/// The sockets, bound before anything else starts: a second instance on the same ports stops here,
/// before it attaches XDP or opens the log. The TCP ones listen only once [`serve`] starts, so clients
/// are refused during recovery; UDP requests wait in the socket's buffer meanwhile.
pub struct Listeners {
    tcp: Option<(SocketAddr, socket2::Socket)>,
    udp: Option<std::net::UdpSocket>,
    metrics: Option<(SocketAddr, socket2::Socket)>,
}

/// Binds the TCP and UDP ports (0: off) and the metrics endpoint. A port another process holds is
/// refused with a message that says so.
pub fn bind(cfg: &Config) -> Result<Listeners> {
    let tcp_at = |a: SocketAddr, what| tcp::bind(a).map(|s| (a, s)).map_err(|e| bind_error(e, what, a));
    let tcp = (cfg.port != 0).then(|| tcp_at(SocketAddr::new(cfg.listen, cfg.port), "TCP")).transpose()?;
    let udp_addr = SocketAddr::new(cfg.listen, cfg.udp_port);
    let udp =
        (cfg.udp_port != 0).then(|| udp::bind(cfg.listen, cfg.udp_port).map_err(|e| bind_error(e, "UDP", udp_addr)));
    let udp = udp.transpose()?;
    let metrics = cfg.metrics_addr.map(|a| tcp_at(a, "the metrics endpoint on")).transpose()?;
    Ok(Listeners { tcp, udp, metrics })
}

fn bind_error(e: std::io::Error, what: &str, addr: SocketAddr) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!("{what} {addr}: address in use (is another kv-server or memcached running on it?)")
    } else {
        anyhow::Error::new(e).context(format!("binding {what} {addr}"))
    }
}

/// Runs the server until `shutdown` completes (see [`shutdown_signals`]).
///
/// memcached's thread model: `cfg.threads` worker threads, each running its own single-threaded
/// runtime with its own epoll and the TCP connections handed to it round-robin by the acceptor (the
/// caller's runtime); UDP is served by as many threads of its own (see [`udp::Threads`]). A connection never moves between threads,
/// so a request wakes exactly one thread; with one shared work-stealing runtime, every readable socket
/// also woke an idle worker (futex and eventfd writes), which cost more than the request itself at
/// depth 1. Every worker must start (its runtime, its parking set), and every UDP thread, or start-up
/// fails.
pub async fn serve(
    cfg: Arc<Config>,
    listeners: Listeners,
    shared: Shared,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let Listeners { tcp, udp, metrics } = listeners;
    let listener = match tcp {
        Some((a, s)) => {
            let l = tcp::listen(s).map_err(|e| bind_error(e, "TCP", a))?;
            log::info!("listening on tcp://{}", l.local_addr()?);
            shared.ctx.conns.listener(std::os::fd::AsRawFd::as_raw_fd(&l), l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let metrics = match metrics {
        Some((a, s)) => {
            let l = tcp::listen(s).map_err(|e| bind_error(e, "the metrics endpoint on", a))?;
            log::info!("metrics on http://{}/metrics", l.local_addr()?);
            Some(tokio::spawn(crate::metrics::serve(l, shared.ctx.clone(), stop_rx.clone())))
        }
        None => None,
    };
    let n = cfg.threads.max(1);
    if let Some(s) = &udp {
        log::info!("listening on udp://{} ({n} workers)", s.local_addr()?);
        shared.ctx.conns.udp(std::os::fd::AsRawFd::as_raw_fd(s), s.local_addr()?);
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(n);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut conns = Vec::with_capacity(n);
    let mut started = Ok(());
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (shared, stop, done, ready) = (shared.clone(), stop_rx.clone(), done_tx.clone(), ready_tx.clone());
        let w = Worker { conns: rx, shared, stop, done };
        let spawned = std::thread::Builder::new().name(format!("kv-worker-{i}")).spawn(move || w.run(i, ready));
        if let Err(e) = spawned {
            started = Err(anyhow::Error::new(e).context("starting its thread").context(format!("worker {i}")));
            break;
        }
        conns.push(tx);
    }
    drop(ready_tx);
    // Each started thread reports once, and drops its sender (so a thread that died first ends the
    // wait too). Blocking is fine: nothing else runs on this runtime before serving starts.
    for _ in 0..conns.len() {
        let report = ready_rx.recv().unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread died while starting")));
        if let (Err(e), true) = (report, started.is_ok()) {
            started = Err(e);
        }
    }
    if let Err(e) = started {
        let _ = stop_tx.send(true);
        return Err(e.context(format!("starting {n} worker threads")));
    }
    let udp = match udp.map(|s| udp::Threads::start(s, n, &shared, &done_tx)).transpose() {
        Ok(u) => u,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(anyhow::Error::new(e).context(format!("starting {n} UDP threads")));
        }
    };
    drop(done_tx);
    let mut acceptor = listener.map(|l| tokio::spawn(tcp::accept_loop(l, shared.clone(), conns, stop_rx.clone())));
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        // Only ends early when no worker is left to hand connections to (or it panicked).
        r = async { acceptor.as_mut().expect("guarded").await }, if acceptor.is_some() => {
            acceptor = None;
            match r {
                Ok(r) => r.map_err(|e| anyhow::anyhow!("{e}: stopping")),
                Err(e) => Err(anyhow::anyhow!("the TCP acceptor failed: {e}")),
            }
        }
    };
    log::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(u) = &udp {
        u.stop();
    }
    if let Some(a) = acceptor {
        let _ = a.await;
    }
    if let Some(m) = metrics {
        let _ = m.await;
    }
    // Workers finish the batch in hand; don't wait forever for a stuck peer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async { while done_rx.recv().await.is_some() {} })
        .await;
    result
}

/// One worker thread: a current-thread runtime serving the connections handed to it.
struct Worker {
    conns: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    shared: Shared,
    stop: watch::Receiver<bool>,
    /// Dropped when the thread is done, which is what `serve` waits for.
    done: tokio::sync::mpsc::Sender<()>,
}

impl Worker {
    /// Sets up the runtime and installs the parking set, reports the outcome on `ready` (and drops it),
    /// then serves.
    fn run(self, i: usize, ready: std::sync::mpsc::Sender<Result<()>>) {
        let Worker { mut conns, shared, mut stop, done } = self;
        let setup =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("its runtime").and_then(|rt| {
                let _in_rt = rt.enter();
                let parking = park::Parking::install().context("its parking set")?;
                Ok((rt, parking))
            });
        let (rt, parking) = match setup {
            Ok(x) => {
                let _ = ready.send(Ok(()));
                drop(ready);
                x
            }
            Err(e) => {
                let _ = ready.send(Err(e.context(format!("worker {i}"))));
                return;
            }
        };
        rt.block_on(async {
            let mut woken = Vec::new();
            loop {
                tokio::select! {
                    c = conns.recv() => match c {
                        Some(c) => tcp::spawn_connection(c, &shared),
                        None => break,
                    },
                    r = parking.woken(&mut woken) => match r {
                        Ok(()) => woken.drain(..).for_each(|c| tcp::spawn_connection(c, &shared)),
                        Err(e) => log::error!("parked connections: {e}"),
                    },
                    _ = stop.changed() => break,
                }
            }
        });
        // Dropping the runtime drops the connection tasks; what they acknowledged is already logged.
        drop(rt);
        drop(done);
    }
}

/// Completes on SIGINT or SIGTERM. Call it (inside the runtime) before anything that must be undone on
/// exit, such as attaching XDP: from then on these signals no longer kill the process outright.
pub fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
