//! kv-server: start-up (config, recovery, kernel path), serving, and clean shutdown.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use kv_user::{
    bpf::{KernelOpts, KernelPath},
    config::Config,
    kcache::{KernelStats, KernelSync},
    server,
};

fn main() -> Result<()> {
    let cfg = match Config::load_from(std::env::args_os()) {
        Ok(c) => c,
        Err(kv_user::config::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("kv-server: {e}");
            std::process::exit(2);
        }
    };
    if cfg.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    init_logging(&cfg);
    tracing::debug!("effective configuration:\n{}", cfg.to_toml());
    if let Some(path) = &cfg.config {
        log::info!("configuration file: {}", path.display());
    }
    let cfg = Arc::new(cfg);
    // The acceptor, signals and shutdown; requests are served by server::serve's worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;

    let shared = server::start(cfg.clone())?;
    // Signal handlers before the XDP attach, so a SIGTERM right after start still shuts down cleanly.
    let shutdown = runtime.block_on(async { server::shutdown_signals() }).context("installing signal handlers")?;
    let kernel = attach_kernel_path(&cfg, &shared.ctx);
    let result = runtime.block_on(server::serve(cfg.clone(), shared.clone(), shutdown));
    // Detach XDP before anything else: from here on the kernel must not answer for a dying store.
    drop(kernel);
    if let Some(log) = &shared.log {
        log.close();
    }
    result
}

/// tracing with levels, text or JSON; `RUST_LOG` overrides the level from `-v`. Records of the `log`
/// crate (the library's modules, aya-log's kernel records) are forwarded into it.
fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let level = match cfg.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only for a terminal: piped into a file or journald, escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cfg.log_format {
        kv_user::config::LogFormat::Text => fmt.init(),
        kv_user::config::LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

/// Loads and attaches the XDP program and starts keeping its cache coherent with the store. Without
/// BPF privileges (or with `--no-bpf`) the server runs in user space only.
fn attach_kernel_path(cfg: &Config, ctx: &kv_user::exec::Ctx) -> Option<KernelPath> {
    if cfg.no_bpf {
        log::info!("BPF disabled (--no-bpf): serving everything from user space");
        return None;
    }
    let listen = match cfg.listen {
        std::net::IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        _ => None,
    };
    let opts = KernelOpts {
        port: cfg.udp_port,
        cache_entries: cfg.kcache_entries,
        log: cfg.verbose >= 2,
        listen,
        ..Default::default()
    };
    let wire = || -> anyhow::Result<KernelPath> {
        let mut k = KernelPath::attach(&cfg.iface, cfg.xdp_mode, opts)?;
        for c in cfg.udp_allowlist() {
            k.allow(c.addr, c.prefix)?;
        }
        let sync = Arc::new(KernelSync::new(k.cache_handle()?, cfg.kcache_value_max, cfg.kcache_admit_hits));
        ctx.store.set_mirror(sync.clone());
        let _ = ctx.extra_stats.set(Arc::new(KernelStats { counters: k.counters_handle()?, sync }));
        Ok(k)
    };
    match wire() {
        Ok(k) => {
            let slots = kv_user::bpf::slots_for(cfg.kcache_entries);
            let cache_mb = (slots as usize * std::mem::size_of::<kv_common::CacheEntry>()) >> 20;
            // One line that says what is attached where and what the kernel answers; as fields too,
            // for JSON logs.
            tracing::info!(
                iface = %cfg.iface,
                xdp_mode = ?cfg.xdp_mode,
                udp_port = cfg.udp_port,
                cache_slots = slots,
                cache_mb,
                value_max = cfg.kcache_value_max,
                admit_hits = cfg.kcache_admit_hits,
                "XDP attached to {} ({:?} mode): UDP GET hits on port {} are answered in the kernel from a cache \
                 of {slots} slots ({cache_mb} MB), empty at start and filled with values up to {} bytes after {} \
                 user-space hits each",
                cfg.iface,
                cfg.xdp_mode,
                cfg.udp_port,
                cfg.kcache_value_max,
                cfg.kcache_admit_hits
            );
            Some(k)
        }
        Err(e) => {
            log::warn!("BPF unavailable ({e:#}): serving everything from user space");
            None
        }
    }
}
