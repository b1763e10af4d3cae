//! kv-load: load generator for memcached-compatible servers (UDP and TCP, closed and open loop).
//! See bench/README.md for the flags, the output and the limits.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use kv_bench::keys::KeySpace;
use kv_bench::sys::{now_ns, raise_nofile};
use kv_bench::zipf::Zipf;
use kv_bench::{tcp, udp, value_bytes, Config, Mode, ReqGen, Shared, Stats, Timing};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    /// `key:<i>` keys, every value `--value-size` bytes, gets only unless `--get-ratio`.
    Fixed,
    /// Facebook's ETC pool (SIGMETRICS'12): per-key sizes drawn from (seed, key), GET:SET 30:1.
    Etc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Closed,
    Open,
}

/// Load generator for memcached-compatible servers: UDP (sendmmsg/recvmmsg, memcached framing) or pipelined TCP,
/// closed loop (peak throughput) or open loop (latency at a fixed offered rate, from intended send times).
#[derive(Parser, Debug)]
#[command(name = "kv-load", version)]
struct Args {
    /// Server address, IP:PORT (UDP and TCP use the same port; the preload always uses TCP).
    #[arg(long)]
    server: String,
    #[arg(long, value_enum, default_value = "udp")]
    proto: Proto,
    #[arg(long, value_enum, default_value = "closed")]
    mode: ModeArg,
    /// Offered rate in requests/s, total over all threads and connections (open loop; required there).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per thread: TCP connections, or UDP sockets.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Requests in flight per connection/socket (default 64 for UDP, 1 for TCP).
    #[arg(long)]
    depth: Option<usize>,
    /// Key and value sizes: `fixed` (`key:<i>`, `--value-size`) or `etc` (Facebook's ETC pool, sizes per key).
    #[arg(long, value_enum, default_value = "fixed")]
    workload: WorkloadArg,
    /// Number of distinct keys (key:0 .. key:N-1 for the fixed workload).
    #[arg(long, default_value_t = 10000)]
    keys: u64,
    /// Zipf exponent of key popularity (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// Value size in bytes for sets and the preload (fixed workload; default 32).
    #[arg(long)]
    value_size: Option<usize>,
    /// Fraction of requests that are gets; the rest are sets (default 1.0; 30/31 for `--workload etc`).
    #[arg(long)]
    get_ratio: Option<f64>,
    /// Keys per get.
    #[arg(long, default_value_t = 1)]
    multiget: usize,
    /// Before the run, set every key once over TCP (pipelined).
    #[arg(long)]
    preload: bool,
    /// Preload and exit.
    #[arg(long)]
    preload_only: bool,
    /// Extra idle TCP connections opened before the run and held until the end.
    #[arg(long, default_value_t = 0)]
    idle_conns: usize,
    /// Print exactly one JSON object on stdout at the end (everything else goes to stderr).
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Serialize, Debug)]
struct Report {
    proto: &'static str,
    mode: &'static str,
    workload: &'static str,
    get_ratio: f64,
    /// Mean key and value bytes over the keys, the longest value, and the means over requests (each key weighted by
    /// its popularity).
    key_size_mean: f64,
    value_size_mean: f64,
    value_size_max: u32,
    req_key_size_mean: f64,
    req_value_size_mean: f64,
    /// Sets sent as gets because they did not fit one UDP datagram.
    oversize_sets: u64,
    threads: usize,
    conns: usize,
    depth: usize,
    duration_s: f64,
    requests: u64,
    rps: f64,
    keys_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    timeouts: u64,
    errors: u64,
    misses: u64,
    hits: u64,
    other: u64,
    idle_conns_opened: usize,
    offered_rps: Option<f64>,
}

#[derive(Serialize, Debug)]
struct PreloadReport {
    workload: &'static str,
    key_size_mean: f64,
    value_size_mean: f64,
    preloaded: u64,
    preload_s: f64,
    errors: u64,
    other: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn resolve(server: &str) -> Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("bad --server {server:?} (want IP:PORT)"))?
        .next()
        .with_context(|| format!("--server {server:?} resolves to nothing"))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn run(args: Args) -> Result<()> {
    let server = resolve(&args.server)?;
    let mode = match args.mode {
        ModeArg::Closed => Mode::Closed,
        ModeArg::Open => Mode::Open,
    };
    let depth = args.depth.unwrap_or(if args.proto == Proto::Udp { 64 } else { 1 });
    if args.threads == 0 || args.conns == 0 || depth == 0 {
        bail!("--threads, --conns and --depth must be at least 1");
    }
    if args.proto == Proto::Udp && depth > udp::MAX_DEPTH {
        bail!("--depth must be at most {} for UDP (request ids are 16 bits)", udp::MAX_DEPTH);
    }
    if args.keys == 0 || args.multiget == 0 {
        bail!("--keys and --multiget must be at least 1");
    }
    if !(args.zipf >= 0.0 && args.zipf.is_finite()) {
        bail!("--zipf must be >= 0");
    }
    let etc = args.workload == WorkloadArg::Etc;
    if etc && args.value_size.is_some() {
        bail!("--value-size does not apply to --workload etc (each key has its own size)");
    }
    let get_ratio = args.get_ratio.unwrap_or(if etc { kv_bench::etc::GET_RATIO } else { 1.0 });
    if !(0.0..=1.0).contains(&get_ratio) {
        bail!("--get-ratio must be in [0, 1]");
    }
    let valid_times = args.duration > 0.0 && args.duration.is_finite() && args.warmup >= 0.0 && args.warmup.is_finite();
    if !valid_times {
        bail!("--duration must be > 0 and --warmup >= 0");
    }
    let rate = match (mode, args.rate) {
        (Mode::Open, Some(r)) if r > 0.0 && r.is_finite() => r,
        (Mode::Open, _) => bail!("--mode open needs --rate REQS_PER_SEC > 0"),
        (Mode::Closed, Some(r)) => {
            eprintln!("[kv-load] note: --rate {r} is ignored in closed loop (use --mode open)");
            0.0
        }
        (Mode::Closed, None) => 0.0,
    };
    let keys = if etc {
        KeySpace::etc(args.keys, args.seed)
    } else {
        KeySpace::fixed(args.keys, args.value_size.unwrap_or(32) as u32)
    };
    let zipf = Zipf::new(args.keys, args.zipf);
    let sizes = keys.sizes(&zipf);
    // ETC over UDP: the rare set whose value does not fit a datagram goes out as a get of its key (counted as
    // oversize_sets); a fixed value size that does not fit is an error.
    let max_set_value = if etc && args.proto == Proto::Udp {
        let key = keys.max_key_len();
        udp::MAX_REQUEST - (kv_bench::proto::set_len(key, udp::MAX_REQUEST) - udp::MAX_REQUEST)
    } else {
        usize::MAX
    };
    let max_req = ReqGen::max_request_len(&keys, args.multiget, max_set_value);
    if args.proto == Proto::Udp && max_req > udp::MAX_REQUEST {
        bail!("a request of up to {max_req} bytes does not fit in one UDP datagram; use smaller values or --proto tcp");
    }
    let workload = if etc { "etc" } else { "fixed" };
    if etc {
        eprintln!(
            "[kv-load] etc: {} keys, key bytes mean {:.1}, value bytes mean {:.1} (max {}); per request (Zipf {}): \
             key {:.1}, value {:.1}; get ratio {:.4}",
            args.keys,
            sizes.key_mean,
            sizes.value_mean,
            sizes.value_max,
            args.zipf,
            sizes.req_key_mean,
            sizes.req_value_mean,
            get_ratio
        );
    }

    let want_fds = (args.idle_conns + args.threads * args.conns + 256) as u64;
    let nofile = raise_nofile(want_fds);
    if want_fds - 200 > nofile {
        eprintln!("[kv-load] note: open-file limit is {nofile}; not all {} idle connections can open", args.idle_conns);
    }

    // Fail early and clearly if nobody answers.
    if args.proto == Proto::Tcp || args.preload || args.preload_only {
        drop(tcp::connect(server)?);
    }
    if args.proto == Proto::Udp && !args.preload_only {
        udp::probe(server)?;
    }

    let value = Arc::new(value_bytes(keys.max_value_len()));
    if args.preload || args.preload_only {
        let p = tcp::preload(server, &keys, &value, 256)?;
        eprintln!(
            "[kv-load] preload: {} keys stored in {:.2} s ({} errors, {} other replies)",
            p.keys, p.secs, p.errors, p.other
        );
        if p.errors > 0 {
            eprintln!("[kv-load] warning: {} preload sets failed (server out of memory or item too large?)", p.errors);
        }
        if args.preload_only {
            if args.json {
                let r = PreloadReport {
                    workload,
                    key_size_mean: round1(sizes.key_mean),
                    value_size_mean: round1(sizes.value_mean),
                    preloaded: p.keys,
                    preload_s: (p.secs * 1000.0).round() / 1000.0,
                    errors: p.errors,
                    other: p.other,
                };
                println!("{}", serde_json::to_string(&r)?);
            }
            return Ok(());
        }
    }

    let idle = if args.idle_conns > 0 {
        let t = Instant::now();
        let held = tcp::open_idle(server, args.idle_conns);
        eprintln!(
            "[kv-load] idle connections: {} of {} opened in {:.2} s",
            held.len(),
            args.idle_conns,
            t.elapsed().as_secs_f64()
        );
        held
    } else {
        Vec::new()
    };

    let cfg = Arc::new(Config {
        server,
        mode,
        rate,
        threads: args.threads,
        conns: args.conns,
        depth,
        zipf: Arc::new(zipf),
        keys: Arc::new(keys),
        value,
        get_ratio,
        multiget: args.multiget,
        seed: args.seed,
        max_set_value,
    });
    let base = Instant::now();
    let measure_ns = (args.warmup * 1e9) as u64;
    let timing = Timing { base, measure_ns, end_ns: measure_ns + (args.duration * 1e9) as u64 };
    let shared = Arc::new(Shared::default());

    let mut handles = Vec::with_capacity(args.threads);
    for t in 0..args.threads {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        let proto = args.proto;
        let h = std::thread::Builder::new().name(format!("kv-load-{t}")).spawn(move || {
            let r = match proto {
                Proto::Udp => udp::run(&cfg, t, &timing, &shared),
                Proto::Tcp => tcp::run(&cfg, t, &timing, &shared),
            };
            if r.is_err() {
                shared.stop.store(true, Ordering::Relaxed);
            }
            r
        })?;
        handles.push(h);
    }

    progress(&args, &timing, &shared);

    let mut total = Stats::default();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => total.merge(&s),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a load thread panicked")),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let idle_opened = idle.len();
    let alive = tcp::count_alive(&idle);
    if !idle.is_empty() && alive < idle.len() {
        eprintln!("[kv-load] note: the server closed {} of the {} idle connections", idle.len() - alive, idle.len());
    }
    tcp::close_abortively(idle);

    let secs = args.duration;
    let h = &total.hist;
    let (p50, p99, p999, max) = if total.requests > 0 {
        (h.value_at_quantile(0.50), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max())
    } else {
        (0, 0, 0, 0)
    };
    let report = Report {
        proto: if args.proto == Proto::Udp { "udp" } else { "tcp" },
        mode: if mode == Mode::Open { "open" } else { "closed" },
        workload,
        get_ratio,
        key_size_mean: round1(sizes.key_mean),
        value_size_mean: round1(sizes.value_mean),
        value_size_max: sizes.value_max,
        req_key_size_mean: round1(sizes.req_key_mean),
        req_value_size_mean: round1(sizes.req_value_mean),
        oversize_sets: total.oversize_sets,
        threads: args.threads,
        conns: args.conns,
        depth,
        duration_s: secs,
        requests: total.requests,
        rps: round1(total.requests as f64 / secs),
        keys_per_s: round1(total.keys as f64 / secs),
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
        max_us: max,
        timeouts: total.timeouts,
        errors: total.errors,
        misses: total.misses,
        hits: total.hits,
        other: total.other,
        idle_conns_opened: idle_opened,
        offered_rps: (mode == Mode::Open).then_some(rate),
    };
    let human = format!(
        "[kv-load] {} {} {}x{}x{}: {} requests in {:.1} s = {:.0} req/s ({:.0} keys/s); latency us p50 {} p99 {} \
         p99.9 {} max {}; hits {} misses {} other {} errors {} timeouts {}{}",
        report.proto,
        report.mode,
        report.threads,
        report.conns,
        report.depth,
        report.requests,
        secs,
        report.rps,
        report.keys_per_s,
        p50,
        p99,
        p999,
        max,
        report.hits,
        report.misses,
        report.other,
        report.errors,
        report.timeouts,
        report.offered_rps.map(|r| format!("; offered {r:.0} req/s")).unwrap_or_default(),
    );
    if mode == Mode::Open && !total.lag.is_empty() {
        let l = &total.lag;
        eprintln!(
            "[kv-load] open loop: sends behind schedule (us) p50 {} p99 {} max {}",
            l.value_at_quantile(0.5),
            l.value_at_quantile(0.99),
            l.max()
        );
    }
    if total.stray > 0 || total.send_errors > 0 {
        eprintln!("[kv-load] diagnostics: {} stray/late datagrams, {} send errors", total.stray, total.send_errors);
    }
    if args.json {
        eprintln!("{human}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{human}");
    }
    Ok(())
}

/// Print a progress line each second (warm-up seconds, then measured seconds) until the run ends.
fn progress(args: &Args, timing: &Timing, shared: &Shared) {
    let mut targets: Vec<(u64, bool)> =
        (1..).map(|j| j * 1_000_000_000).take_while(|&t| t < timing.measure_ns).map(|t| (t, true)).collect();
    targets.extend(
        (1..).map(|k| timing.measure_ns + k * 1_000_000_000).take_while(|&t| t <= timing.end_ns).map(|t| (t, false)),
    );
    let mut last_count = 0u64;
    let mut last_ns = 0u64;
    for (target, warm) in targets {
        let now = now_ns(timing.base);
        if target > now {
            std::thread::sleep(Duration::from_nanos(target - now));
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let now = now_ns(timing.base);
        let count = shared.completed.load(Ordering::Relaxed);
        let rps = (count - last_count) as f64 / ((now - last_ns).max(1) as f64 / 1e9);
        let timeouts = shared.timeouts.load(Ordering::Relaxed);
        if warm {
            eprintln!("[kv-load] warmup {:.0}/{}s {:.0} req/s", target as f64 / 1e9, args.warmup, rps);
        } else {
            let done = (target - timing.measure_ns) as f64 / 1e9;
            eprintln!("[kv-load] {:.0}/{}s {:.0} req/s (timeouts {})", done, args.duration, rps, timeouts);
        }
        last_count = count;
        last_ns = now;
    }
    let now = now_ns(timing.base);
    if timing.end_ns > now {
        std::thread::sleep(Duration::from_nanos(timing.end_ns - now));
    }
}
