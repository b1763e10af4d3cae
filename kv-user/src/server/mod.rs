//! Network front ends: TCP connections and the UDP socket, both feeding `protocol::parse` into
//! `exec::execute`, and the process lifecycle (start-up, recovery, signals, clean shutdown).

mod conn;
mod tcp;
mod udp;

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
            (Some(log), s) if s > 0 => log.wait_durable(s).await,
            _ => Ok(()),
        }
    }
}

/// Runs the server until `shutdown` completes (see [`shutdown_signals`]).
pub async fn serve(cfg: Arc<Config>, shared: Shared, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if cfg.port != 0 {
        let listener = tokio::net::TcpListener::bind((cfg.listen, cfg.port))
            .await
            .with_context(|| format!("binding TCP {}:{}", cfg.listen, cfg.port))?;
        log::info!("listening on tcp://{}", listener.local_addr()?);
        tasks.spawn(tcp::accept_loop(listener, shared.clone(), stop_rx.clone()));
    }
    if cfg.udp_port != 0 {
        let sockets = udp::bind(cfg.listen, cfg.udp_port, cfg.threads)
            .with_context(|| format!("binding UDP {}:{}", cfg.listen, cfg.udp_port))?;
        log::info!("listening on udp://{}:{} ({} sockets)", cfg.listen, cfg.udp_port, sockets.len());
        for s in sockets {
            tasks.spawn(udp::serve(s, shared.clone(), stop_rx.clone()));
        }
    }
    shutdown.await;
    log::info!("shutting down");
    let _ = stop_tx.send(true);
    // Front ends finish the batch in hand; don't wait forever for a stuck peer.
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(2), async { while tasks.join_next().await.is_some() {} })
            .await;
    Ok(())
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

/// Builds the store, replays the log into it and wires the journal; returns what the front ends share.
pub fn start(cfg: Arc<Config>) -> Result<Shared> {
    use crate::record::Journal;
    use std::sync::OnceLock;

    /// The store needs its journal at construction, but the log can only be opened (and replayed into
    /// the store) afterwards; replay itself is never journaled.
    struct Deferred(OnceLock<Arc<Log>>);
    impl Journal for Deferred {
        fn record(&self, rec: &crate::record::Record<'_>) -> u64 {
            self.0.get().map_or(0, |l| l.record(rec))
        }
    }

    let journal = Arc::new(Deferred(OnceLock::new()));
    let store = Arc::new(crate::store::Store::new(crate::store::StoreOptions::from_config(&cfg), journal.clone()));
    let log = if cfg.no_persist {
        log::info!("persistence disabled (--no-persist)");
        None
    } else {
        let t = std::time::Instant::now();
        let (log, rec) = crate::persist::open(&cfg.data_dir, cfg.fsync, &mut |r| store.apply(r))
            .with_context(|| format!("opening the log in {}", cfg.data_dir.display()))?;
        log::info!(
            "recovered {} records ({} bytes) from {} in {:?}; {} items live",
            rec.records,
            rec.bytes,
            cfg.data_dir.display(),
            t.elapsed(),
            store.stats().curr_items
        );
        if let Some(reason) = &rec.dropped_reason {
            log::warn!("dropped {} bytes at the log tail: {reason}", rec.dropped_bytes);
        }
        let _ = journal.0.set(log.clone());
        log.start_compactor(store.clone()).context("starting the log compactor")?;
        Some(log)
    };
    let stats = Arc::new(crate::stats::Stats::new());
    let ctx = Arc::new(Ctx::new(store, stats, cfg));
    Ok(Shared { ctx, log })
}
