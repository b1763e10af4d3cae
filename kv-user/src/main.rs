//! kv-server: start-up (config, recovery, kernel path), serving, and clean shutdown.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use kv_user::{bpf::KernelPath, config::Config, server};

fn main() -> Result<()> {
    let cfg = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(match cfg.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }))
    .init();
    let cfg = Arc::new(cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;

    let shared = server::start(cfg.clone())?;
    let kernel = attach_kernel_path(&cfg);
    let result = runtime.block_on(server::serve(cfg.clone(), shared.clone()));
    // Detach XDP before anything else: from here on the kernel must not answer for a dying store.
    drop(kernel);
    if let Some(log) = &shared.log {
        log.close();
    }
    result
}

/// Loads and attaches the XDP program unless disabled; without BPF privileges the server still runs.
fn attach_kernel_path(cfg: &Config) -> Option<KernelPath> {
    if cfg.no_bpf {
        log::info!("BPF disabled (--no-bpf): serving everything from user space");
        return None;
    }
    let opts = kv_user::bpf::KernelOpts { port: cfg.udp_port, ..Default::default() };
    match KernelPath::attach(&cfg.iface, cfg.xdp_mode, opts) {
        Ok(k) => {
            log::info!("XDP program attached to {} ({:?} mode)", cfg.iface, cfg.xdp_mode);
            Some(k)
        }
        Err(e) => {
            log::warn!("BPF unavailable ({e:#}): serving everything from user space");
            None
        }
    }
}
