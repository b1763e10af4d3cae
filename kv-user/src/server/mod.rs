//! Network front ends: TCP connections and the UDP sockets, both feeding `protocol::parse` into
//! `exec::execute`, the worker threads, and signals and clean shutdown. main.rs builds what they serve.

mod conn;
mod park;
mod tcp;
pub mod udp;

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use crate::config::Config;
use crate::exec::Ctx;
use crate::persist::Log;

pub use conn::Pipeline;

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
            // Boxed: only a write that must wait pays for the waiting state, so the state of every
            // (idle) connection task stays small.
            (Some(log), s) if s > 0 => match log.durable_now(s) {
                Some(r) => r,
                None => Box::pin(log.wait_durable(s)).await,
            },
            _ => Ok(()),
        }
    }
}

/// Runs the server until `shutdown` completes (see [`shutdown_signals`]).
///
/// memcached's thread model: `cfg.threads` worker threads, each running its own single-threaded
/// runtime with its own epoll, its own SO_REUSEPORT UDP socket, and the TCP connections handed to it
/// round-robin by the acceptor (the caller's runtime). A connection never moves between threads, so a
/// request wakes exactly one thread; with one shared work-stealing runtime, every readable socket also
/// woke an idle worker (futex and eventfd writes), which cost more than the request itself at depth 1.
pub async fn serve(cfg: Arc<Config>, shared: Shared, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = if cfg.port != 0 {
        let l = tokio::net::TcpListener::bind((cfg.listen, cfg.port))
            .await
            .with_context(|| format!("binding TCP {}:{}", cfg.listen, cfg.port))?;
        log::info!("listening on tcp://{}", l.local_addr()?);
        Some(l)
    } else {
        None
    };
    let metrics = match cfg.metrics_addr {
        Some(a) => {
            let l =
                tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding the metrics endpoint {a}"))?;
            log::info!("metrics on http://{}/metrics", l.local_addr()?);
            Some(tokio::spawn(crate::metrics::serve(l, shared.ctx.clone(), stop_rx.clone())))
        }
        None => None,
    };
    let n = cfg.threads.max(1);
    let mut udp_sockets: Vec<Option<std::net::UdpSocket>> = if cfg.udp_port != 0 {
        let s = udp::bind(cfg.listen, cfg.udp_port, n)
            .with_context(|| format!("binding UDP {}:{}", cfg.listen, cfg.udp_port))?;
        log::info!("listening on udp://{}:{} ({} sockets)", cfg.listen, cfg.udp_port, s.len());
        s.into_iter().map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut conns = Vec::with_capacity(n);
    for (i, udp) in udp_sockets.iter_mut().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        conns.push(tx);
        let w =
            Worker { conns: rx, udp: udp.take(), shared: shared.clone(), stop: stop_rx.clone(), done: done_tx.clone() };
        std::thread::Builder::new()
            .name(format!("kv-worker-{i}"))
            .spawn(move || w.run())
            .context("starting a worker thread")?;
    }
    drop(done_tx);
    let acceptor = listener.map(|l| tokio::spawn(tcp::accept_loop(l, shared.clone(), conns, stop_rx.clone())));
    shutdown.await;
    log::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(a) = acceptor {
        let _ = a.await;
    }
    if let Some(m) = metrics {
        let _ = m.await;
    }
    // Workers finish the batch in hand; don't wait forever for a stuck peer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async { while done_rx.recv().await.is_some() {} })
        .await;
    Ok(())
}

/// One worker thread: a current-thread runtime serving the connections handed to it and its UDP socket.
struct Worker {
    conns: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    udp: Option<std::net::UdpSocket>,
    shared: Shared,
    stop: watch::Receiver<bool>,
    /// Dropped when the thread is done, which is what `serve` waits for.
    done: tokio::sync::mpsc::Sender<()>,
}

impl Worker {
    fn run(self) {
        let Worker { mut conns, udp, shared, mut stop, done } = self;
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("worker runtime: {e}");
                return;
            }
        };
        rt.block_on(async {
            if let Some(s) = udp {
                match tokio::net::UdpSocket::from_std(s) {
                    Ok(s) => {
                        tokio::spawn(udp::serve(s, shared.clone(), stop.clone()));
                    }
                    Err(e) => log::error!("udp socket: {e}"),
                }
            }
            let parking = match park::Parking::install() {
                Ok(p) => p,
                Err(e) => {
                    log::error!("worker parking set: {e}");
                    return;
                }
            };
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
            // Let the UDP task see the stop and finish its datagram.
            tokio::task::yield_now().await;
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
