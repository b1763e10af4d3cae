//! kv-server: the composition root. Builds the kernel path, the store, the log and the stats from the
//! configuration, wires them together once, serves, and shuts down cleanly.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use kv_user::config::Config;
use kv_user::exec::Ctx;
use kv_user::kernel::{Kernel, KernelOptions};
use kv_user::persist::{Log, LogOptions};
use kv_user::record::{Journal, NoJournal};
use kv_user::server::{self, Shared};
use kv_user::stats::Stats;
use kv_user::store::{Replayer, Store, StoreOptions};

fn main() -> Result<()> {
    // `kv-server log <verb>`: the log tools, not a server. No server flag is a bare word, so this takes nothing
    // from the server's command line.
    if std::env::args_os().nth(1).is_some_and(|a| a == "log") {
        std::process::exit(kv_user::persist::tools::main(std::env::args_os()));
    }
    fixed_mmap_threshold();
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
    for w in cfg.warnings() {
        log::warn!("{w}");
    }
    tracing::debug!("effective configuration:\n{}", cfg.to_toml());
    if let Some(path) = &cfg.config {
        log::info!("configuration file: {}", path.display());
    }
    let cfg = Arc::new(cfg);
    // The ports first: a second instance on them stops here, before it touches XDP or the log.
    let listeners = server::bind(&cfg)?;
    // The acceptor, signals and shutdown; requests are served by server::serve's worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    // Signal handlers before the XDP attach, so a SIGTERM right after start still shuts down cleanly.
    let shutdown = runtime.block_on(async { server::shutdown_signals() }).context("installing signal handlers")?;
    let kernel = start_kernel_path(&cfg);
    let shared = build(cfg.clone(), kernel.as_ref())?;
    let result = runtime.block_on(server::serve(cfg.clone(), listeners, shared.clone(), shutdown));
    // Detach XDP before anything else: from here on the kernel must not answer for a dying store.
    drop(kernel);
    if let Some(log) = &shared.log {
        log.close();
    }
    result
}

/// The store (observed by the kernel path when it is up), the log it journals to and replays from, and
/// the command context over both.
fn build(cfg: Arc<Config>, kernel: Option<&Kernel>) -> Result<Shared> {
    // The store journals into the log from the start; replay (`store.apply`) is neither journaled nor
    // observed, and the kernel cache starts empty.
    let ctx = || format!("opening the log in {}", cfg.data_dir.display());
    let log = if cfg.no_persist { None } else { Some(Log::open(&LogOptions::from(&*cfg)).with_context(ctx)?) };
    let journal: Arc<dyn Journal> = match &log {
        Some(log) => log.clone(),
        None => Arc::new(NoJournal),
    };
    let mut store = Store::new(StoreOptions::from(&*cfg), journal);
    if let Some(k) = kernel {
        store = store.observed_by(k.sync.clone());
    }
    let store = Arc::new(store);
    if let Some(log) = &log {
        if let Some(to) = cfg.recover_to {
            let rewind = log.rewind(to).context("--recover-to")?;
            match rewind.outcome {
                kv_user::persist::RewindOutcome::Rewound { .. } => log::warn!("{rewind}"),
                _ => log::info!("{rewind}"),
            }
        }
        log.set_history(std::time::Duration::from_secs(cfg.history_secs)).context("trimming the log history")?;
        log.set_compaction_min_bytes(cfg.compact_min_size);
        let t = std::time::Instant::now();
        // Replay on every core: the server is not serving yet, so nothing else wants them.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rec = std::thread::scope(|s| {
            let mut replay = Replayer::new(&store, s, workers);
            let rec = log.recover(&mut |r| replay.apply(r));
            replay.finish();
            rec
        })
        .with_context(ctx)?;
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
        log.start_compactor(store.clone()).context("starting the log compactor")?;
        log.start_repair(store.clone()).context("starting the log repairer")?;
    } else {
        log::info!("persistence disabled (--no-persist)");
    }
    start_housekeeping(&store).context("starting the housekeeping thread")?;
    let mut ctx = Ctx::new(store, Arc::new(Stats::new()), cfg);
    if let Some(k) = kernel {
        ctx = ctx.with_extra_stats(k.stats.clone());
    }
    if let Some(log) = &log {
        ctx = ctx.with_log(log.clone());
    }
    Ok(Shared { ctx: Arc::new(ctx), log })
}

/// Once a second: reclaims wholly expired segments in every shard (see `Store::reclaim_expired`), so
/// their memory is reused even when no write reaches their shard, and gives back the memory of tasks
/// that parked connections left (`server::release_parked_memory`). Ends when the store is dropped.
fn start_housekeeping(store: &Arc<Store>) -> std::io::Result<()> {
    let store = Arc::downgrade(store);
    std::thread::Builder::new().name("kv-housekeeping".into()).spawn(move || {
        while let Some(s) = store.upgrade() {
            s.reclaim_expired();
            drop(s);
            server::release_parked_memory();
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    })?;
    Ok(())
}

/// Large buffers (a value being received, a long reply) are mapped and unmapped, never kept on the
/// heap: a fixed threshold turns off glibc's adaptive one, which after the first free of a big buffer
/// would serve the next ones from a heap it never gives back, leaving RSS above what `-m` accounts for.
fn fixed_mmap_threshold() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
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

/// Loads and attaches the XDP program, with an empty cache. Without BPF privileges (or with `--no-bpf`)
/// the server runs in user space only.
fn start_kernel_path(cfg: &Config) -> Option<Kernel> {
    if cfg.no_bpf {
        log::info!("BPF disabled (--no-bpf): serving everything from user space");
        return None;
    }
    match Kernel::start(&KernelOptions::from(cfg)) {
        Ok(k) => {
            let slots = kv_user::kernel::slots_for(cfg.kcache_entries);
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
            if let Some(why) = &k.path.unshared {
                log::warn!(
                    "XDP attached to {} directly, not behind the shared dispatcher ({why}): another kv-server \
                     on this interface will not get the kernel path; to share it, run as root (CAP_SYS_ADMIN)",
                    cfg.iface
                );
            }
            if let Some(why) = &k.path.tc_missing {
                log::warn!(
                    "TC program not attached to {} ({why}): UDP GET hits whose reply needs more room than the \
                     XDP frame has (on a veth: longer than the request by more than 256 bytes) are answered \
                     from user space; a kernel with tcx (6.6+) and CAP_NET_ADMIN are needed",
                    cfg.iface
                );
            }
            Some(k)
        }
        Err(e) => {
            log::warn!("BPF unavailable ({e:#}): serving everything from user space");
            None
        }
    }
}
