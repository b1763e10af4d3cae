//! `cargo xtask bench`: memcached vs kv-server (user space only, and with its XDP GET path) vs a bare
//! XDP_TX reflector, each in its own network namespace behind a veth pair, driven by `kv-load` from a
//! second namespace. Prints a table and writes results.json and a chart. Method: docs/bench.md.

mod netns;
mod procs;
mod report;

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use netns::{Bed, SERVER_IF, SERVER_IP, SUBNET};
use procs::{check_interrupted, ns_command, Proc, Sample, INTERRUPTED};

/// Port of every server (TCP and UDP), inside the private server namespace.
const PORT: u16 = 11211;
const KEYS: u32 = 10_000;
const VALUE_SIZE: u32 = 32;
const THREADS: u32 = 2;
/// kv-load's default key popularity (a few hot keys, a long tail).
const ZIPF: f64 = 0.99;
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Memcached,
    KvNoBpf,
    KvXdp,
    /// kv-server with XDP and persistence on (`--fsync everysec`), for the SET workload.
    KvFsync,
    /// The same without XDP: on a veth, an attached XDP program makes the driver copy every TCP packet
    /// into a page of its own, a cost a real NIC does not have and memcached's row does not pay.
    KvNoBpfFsync,
    Reflector,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::Memcached => "memcached",
            Server::KvNoBpf => "kv-server(no-bpf)",
            Server::KvXdp => "kv-server(xdp)",
            Server::KvFsync => "kv-server(xdp,fsync)",
            Server::KvNoBpfFsync => "kv-server(no-bpf,fsync)",
            Server::Reflector => "reflector(xdp_tx)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

/// One workload: kv-load flags beyond the common ones, and which servers it applies to.
struct Workload {
    name: &'static str,
    proto: Proto,
    /// kv-load threads (its --conns is per thread).
    threads: u32,
    args: Vec<String>,
    /// Load the key set over TCP before the run (GET workloads).
    preload: bool,
    servers: Vec<Server>,
    /// Why the servers left out are left out.
    skip_note: &'static str,
    /// Open loop at half of memcached's peak on `udp-get`.
    open_half_mc: bool,
    /// Idle connections held during the run (C10K).
    idle: u32,
    /// Also measure the XDP program's own run time (separate short run, BPF statistics on).
    bpf_stats: bool,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn plan(quick: bool) -> Vec<Workload> {
    use Server::*;
    let all = vec![Memcached, KvNoBpf, KvXdp, Reflector];
    let real = vec![Memcached, KvNoBpf, KvXdp];
    let no_reflector = "reflector: only echoes, meaningful for UDP GET only";
    let w = |name, proto, a: &[&str], servers: &Vec<Server>| Workload {
        name,
        proto,
        threads: THREADS,
        args: args(a),
        preload: true,
        servers: servers.clone(),
        skip_note: "",
        open_half_mc: false,
        idle: 0,
        bpf_stats: false,
    };
    // kv-load's --conns is per thread: 2 threads x 4 UDP sockets x 64 requests in flight.
    let udp = ["--conns", "4", "--depth", "64"];
    let cat = |a: &[&'static str], b: &[&'static str]| -> Vec<&'static str> { a.iter().chain(b).copied().collect() };
    let mut udp_get = w("udp-get", Proto::Udp, &cat(&udp, &["--get-ratio", "1"]), &all);
    udp_get.bpf_stats = true;
    let tcp_d1 =
        Workload { skip_note: no_reflector, ..w("tcp-depth-1", Proto::Tcp, &["--conns", "2", "--depth", "1"], &real) };
    if quick {
        return vec![udp_get, tcp_d1];
    }
    let mut v = vec![udp_get];
    for (name, extra) in [
        ("udp-get90-set10", &["--get-ratio", "0.9"][..]),
        ("udp-multiget-10", &["--get-ratio", "1", "--multiget", "10"][..]),
    ] {
        v.push(Workload { skip_note: no_reflector, ..w(name, Proto::Udp, &cat(&udp, extra), &real) });
    }
    v.push(tcp_d1);
    // Connection counts are totals: threads x per-thread conns.
    for (name, threads, a) in [
        ("tcp-depth-16", 2, &["--conns", "2", "--depth", "16"][..]),
        ("tcp-conns-1", 1, &["--conns", "1", "--depth", "1"][..]),
        ("tcp-conns-50", 2, &["--conns", "25", "--depth", "1"][..]),
        ("tcp-conns-1000", 2, &["--conns", "500", "--depth", "1"][..]),
    ] {
        v.push(Workload { skip_note: no_reflector, threads, ..w(name, Proto::Tcp, a, &real) });
    }
    v.push(Workload {
        preload: false,
        skip_note: "kv-server: measured with persistence on (no-bpf,fsync and xdp,fsync); reflector: no SETs",
        ..w(
            "tcp-set-100",
            Proto::Tcp,
            &["--conns", "2", "--depth", "1", "--get-ratio", "0"],
            &vec![Memcached, KvNoBpfFsync, KvFsync],
        )
    });
    v.push(Workload {
        open_half_mc: true,
        ..w("udp-get-open-half-mc", Proto::Udp, &cat(&udp, &["--get-ratio", "1", "--mode", "open"]), &all)
    });
    for idle in [10_000, 50_000] {
        let name = if idle == 10_000 { "tcp-c10k-idle-10k" } else { "tcp-c10k-idle-50k" };
        v.push(Workload {
            idle,
            skip_note: no_reflector,
            ..w(name, Proto::Tcp, &["--conns", "25", "--depth", "1"], &real)
        });
    }
    v
}

pub struct Opts {
    pub quick: bool,
    pub out: Option<PathBuf>,
}

/// One measured (or skipped) cell.
pub struct Row {
    pub server: Server,
    pub workload: String,
    /// kv-load's JSON, None when skipped.
    pub load: Option<Value>,
    pub rps: f64,
    pub server_cpu_us: Option<f64>,
    pub all_cpu_us: Option<f64>,
    pub rss_mb: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    pub extra: serde_json::Map<String, Value>,
    pub note: String,
}

impl Row {
    fn get(&self, k: &str) -> Option<f64> {
        self.load.as_ref()?.get(k)?.as_f64()
    }
}

struct Ctx {
    opts: Opts,
    release: PathBuf,
    kv_load: PathBuf,
    out: PathBuf,
    logs: PathBuf,
    duration: u32,
    warmup: u32,
    conn_limit: u64,
    bed: Bed,
    rows: Vec<Row>,
    /// (workload, which servers are left out and why).
    skips: Vec<(String, String)>,
}

pub fn run(root: &Path, opts: Opts) -> Result<()> {
    let started = Instant::now();
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, XDP)");
    }
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            // Second Ctrl-C: give up at once (children die with us; namespaces may be left).
            std::process::exit(130);
        }
        eprintln!("\nbench: interrupted, cleaning up (Ctrl-C again to abort at once)");
    })
    .context("installing the SIGINT handler")?;
    // This binary runs from <target>/release/.
    let release = std::env::current_exe()?.parent().context("no exe dir")?.to_path_buf();
    build(root)?;
    let kv_load = match std::env::var_os("KV_LOAD_BIN") {
        Some(p) => PathBuf::from(p),
        None => release.join("kv-load"),
    };
    if !kv_load.is_file() {
        bail!(
            "{} is missing: the load generator (package kv-bench, binary kv-load) is not in this workspace yet. \
             Build it (`cargo build --release -p kv-bench`) or point KV_LOAD_BIN at a compatible binary.",
            kv_load.display()
        );
    }
    install_missing()?;
    let out = opts.out.clone().unwrap_or_else(|| release.parent().unwrap_or(&release).join("bench"));
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let (duration, warmup) = if opts.quick { (2, 1) } else { (5, 1) };
    let hard = procs::nofile_hard();
    let conn_limit = 60_000.min(hard.saturating_sub(500));
    let bed = Bed::create().context("creating the namespaces")?;
    let mut ctx = Ctx {
        opts,
        release,
        kv_load,
        out,
        logs,
        duration,
        warmup,
        conn_limit,
        bed,
        rows: Vec::new(),
        skips: Vec::new(),
    };
    let result = ctx.run_all();
    // Whatever happened, report what was measured.
    let written = report::write(&ctx.out, &ctx.rows, &ctx.skips, &machine(), ctx.opts.quick, FONT);
    let cleanup = ctx.bed.server_ns.clone();
    drop(ctx);
    let left =
        Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if left.is_ok_and(|l| l.contains(&cleanup)) {
        eprintln!("bench: warning: namespace {cleanup} still exists");
    }
    result?;
    written?;
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "-p", "kv-user", "--bin", "kv-server"]);
    if root.join("bench/Cargo.toml").is_file() {
        cmd.args(["-p", "kv-bench", "--bin", "kv-load"]);
    } else {
        eprintln!("bench: no bench/ crate (kv-bench) in this workspace; using an existing kv-load if there is one");
    }
    let st = cmd.current_dir(root).status().context("running cargo build")?;
    if !st.success() {
        bail!("cargo build of the servers under test failed");
    }
    Ok(())
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// memcached, iproute2 and a TTF font for the chart, from Debian's packages when missing.
fn install_missing() -> Result<()> {
    let mut pkgs = Vec::new();
    if !on_path("memcached") {
        pkgs.push("memcached");
    }
    if !on_path("ip") {
        pkgs.push("iproute2");
    }
    if !Path::new(FONT).is_file() {
        pkgs.push("fonts-dejavu-core");
    }
    if pkgs.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {pkgs:?}");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    ok(Command::new("apt-get").args(["update", "-qq"]));
    if !ok(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(&pkgs)) {
        bail!("apt-get install {pkgs:?} failed");
    }
    Ok(())
}

/// What the machine is, for the report.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?");
    let mem_kb = read("/proc/meminfo").lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model.trim(),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "mem_gb": mem_kb.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "memcached": Command::new("memcached").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
    })
}

impl Ctx {
    fn run_all(&mut self) -> Result<()> {
        let plan = plan(self.opts.quick);
        let total: usize = plan.iter().map(|w| w.servers.len()).sum();
        let mut step = 0;
        eprintln!(
            "bench: {} runs of {} s (+{} s warm-up), servers in {}, kv-load in {}; logs in {}",
            total,
            self.duration,
            self.warmup,
            self.bed.server_ns,
            self.bed.client_ns,
            self.logs.display()
        );
        for w in &plan {
            if !w.skip_note.is_empty() {
                eprintln!("bench: {}: not run for {}", w.name, w.skip_note);
                self.skips.push((w.name.to_string(), w.skip_note.to_string()));
            }
            for &server in &w.servers {
                step += 1;
                check_interrupted()?;
                let head = format!("[bench {step}/{total}] {} {}", server.label(), w.name);
                let row = self.run_one(&head, server, w)?;
                let msg = match &row.load {
                    Some(_) => format!(
                        "{:.0} req/s, p99 {:.0} us{}",
                        row.rps,
                        row.get("p99_us").unwrap_or(f64::NAN),
                        if row.note.is_empty() { String::new() } else { format!(" ({})", row.note) }
                    ),
                    None => format!("skipped: {}", row.note),
                };
                eprintln!("{head} ... {msg}");
                self.rows.push(row);
            }
        }
        Ok(())
    }

    fn common_args(&self, w: &Workload, duration: u32) -> Vec<String> {
        let mut a = args(&["--server", &format!("{SERVER_IP}:{PORT}")]);
        a.extend(args(&["--proto", if w.proto == Proto::Udp { "udp" } else { "tcp" }]));
        for (k, v) in [
            ("--threads", w.threads.to_string()),
            ("--duration", duration.to_string()),
            ("--warmup", self.warmup.to_string()),
            ("--keys", KEYS.to_string()),
            ("--value-size", VALUE_SIZE.to_string()),
            ("--zipf", ZIPF.to_string()),
            ("--seed", "1".to_string()),
        ] {
            a.push(k.to_string());
            a.push(v);
        }
        a.extend(w.args.iter().cloned());
        a.push("--json".into());
        a
    }

    fn skipped(server: Server, w: &Workload, note: String) -> Row {
        Row {
            server,
            workload: w.name.to_string(),
            load: None,
            rps: 0.0,
            server_cpu_us: None,
            all_cpu_us: None,
            rss_mb: None,
            rss_peak_mb: None,
            extra: Default::default(),
            note,
        }
    }

    fn run_one(&mut self, head: &str, server: Server, w: &Workload) -> Result<Row> {
        let mut extra_args = Vec::new();
        if w.idle > 0 {
            let need = w.idle as u64 + 1_100;
            if self.conn_limit < need {
                return Ok(Self::skipped(
                    server,
                    w,
                    format!(
                        "needs {need} fds per process; RLIMIT_NOFILE hard limit is {} here and cannot be raised (no CAP_SYS_RESOURCE)",
                        procs::nofile_hard()
                    ),
                ));
            }
            extra_args.extend(args(&["--idle-conns", &w.idle.to_string()]));
        }
        if w.open_half_mc {
            let mc =
                self.rows.iter().find(|r| r.server == Server::Memcached && r.workload == "udp-get" && r.load.is_some());
            let Some(mc) = mc else {
                return Ok(Self::skipped(server, w, "no memcached udp-get peak to take half of".into()));
            };
            extra_args.extend(args(&["--rate", &format!("{:.0}", mc.rps / 2.0)]));
        }
        let tag = format!("{}-{}", server.label().replace(['(', ')', ','], "_"), w.name);
        let mut tmp = None;
        let (mut proc, reflector) = match server {
            Server::Reflector => {
                let r = netns::in_netns(&self.bed.server_ns, || {
                    kv_user::kernel::bench::attach_reflector(SERVER_IF, kv_user::kernel::XdpMode::Native, PORT)
                })
                .context("attaching the reflector to the server veth")?;
                (None, Some(r))
            }
            _ => {
                if matches!(server, Server::KvFsync | Server::KvNoBpfFsync) {
                    tmp = Some(TempDir::new(&self.out, &tag)?);
                }
                let p = self.start_server(server, &tag, tmp.as_ref().map(|t| t.0.as_path()))?;
                (Some(p), None)
            }
        };
        let pid = proc.as_ref().map(Proc::pid);
        if w.preload && server != Server::Reflector {
            let mut a = self.common_args(&Workload { proto: Proto::Tcp, args: vec![], ..shallow(w) }, 1);
            a.retain(|x| x != "--json");
            a.push("--preload-only".into());
            self.kv_load(&format!("{tag}-preload"), &a, None, Duration::from_secs(120), head, false)?;
        }
        let stats_before = if matches!(server, Server::KvXdp | Server::KvFsync) { self.server_stats() } else { None };
        let mut a = self.common_args(w, self.duration);
        a.extend(extra_args.iter().cloned());
        let limit = Duration::from_secs((self.duration + self.warmup) as u64 + 60 + w.idle as u64 / 500);
        let (load, samples) = self.kv_load(&tag, &a, pid, limit, head, true)?;
        let load = load.context("kv-load printed no JSON")?;
        let mut row = Self::skipped(server, w, String::new());
        row.rps = load.get("rps").and_then(Value::as_f64).unwrap_or(0.0);
        let requests = load.get("requests").and_then(Value::as_f64).unwrap_or(0.0);
        let errors = load.get("errors").and_then(Value::as_f64).unwrap_or(0.0);
        let timeouts = load.get("timeouts").and_then(Value::as_f64).unwrap_or(0.0);
        let mut notes = Vec::new();
        if requests == 0.0 {
            bail!("{head}: kv-load completed no requests (is the server answering?)");
        }
        if errors > 0.0 {
            notes.push(format!("{errors:.0} errors"));
        }
        if timeouts > 0.0 {
            notes.push(format!("{timeouts:.0} timeouts"));
        }
        // The measured window is the last `duration` seconds before kv-load exited.
        let (cpu, all) = window_cpu(&samples, self.duration as f64, row.rps);
        row.server_cpu_us = cpu;
        row.all_cpu_us = all;
        if let Some(pid) = pid {
            row.rss_mb = procs::rss_kb(pid).map(|k| k as f64 / 1024.0);
            row.rss_peak_mb = samples.iter().filter_map(|s| s.rss_kb).max().map(|k| k as f64 / 1024.0);
            if !proc.as_mut().is_some_and(Proc::alive) {
                bail!("{head}: the server died during the run (see {})", self.logs.display());
            }
        }
        if let (Some(before), Some(after)) = (stats_before, self.server_stats()) {
            let d = |k: &str| after.get(k).copied().unwrap_or(0) as f64 - before.get(k).copied().unwrap_or(0) as f64;
            let (hits, pkts) = (d("xdp_hits"), d("xdp_packets"));
            row.extra.insert("xdp_hits".into(), json!(hits));
            row.extra.insert("xdp_packets".into(), json!(pkts));
            if pkts > 0.0 && w.proto == Proto::Udp {
                notes.push(format!("XDP answered {:.0}% of {pkts:.0} packets", 100.0 * hits / pkts));
                // Why the rest went to user space: every pass reason above 2% of the packets.
                let mut reasons: Vec<(String, f64)> = after
                    .keys()
                    .filter(|k| k.starts_with("xdp_pass_"))
                    .map(|k| (k.trim_start_matches("xdp_pass_").to_string(), d(k)))
                    .filter(|(_, n)| *n > 0.02 * pkts)
                    .collect();
                reasons.sort_by(|a, b| b.1.total_cmp(&a.1));
                if !reasons.is_empty() {
                    let list: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{r} {:.0}%", 100.0 * n / pkts)).collect();
                    notes.push(format!("passed: {}", list.join(", ")));
                }
            }
        }
        if w.bpf_stats {
            let id = match &reflector {
                Some(r) => Some(r.prog_id()?),
                None if server == Server::KvXdp => self.bed.server_xdp_prog_id()?,
                None => None,
            };
            if let Some(id) = id {
                let ns = self.bpf_stats_run(head, &tag, w, id)?;
                row.extra.insert("bpf_ns_per_run".into(), json!(ns));
                if let Some(ns) = ns {
                    notes.push(format!("BPF {ns:.0} ns/pkt (separate run, stats on)"));
                }
            }
        }
        if matches!(server, Server::Reflector | Server::KvXdp | Server::KvFsync) && w.proto == Proto::Udp {
            notes.push("XDP CPU is charged to the client on veth".into());
        }
        row.load = Some(load);
        row.note = notes.join("; ");
        drop(reflector);
        if let Some(mut p) = proc.take() {
            p.stop();
        }
        drop(tmp);
        Ok(row)
    }

    /// A short extra run with the kernel's BPF run-time statistics on: the program's ns per run.
    fn bpf_stats_run(&self, head: &str, tag: &str, w: &Workload, prog_id: u32) -> Result<Option<f64>> {
        let fd = kv_user::kernel::bench::enable_run_stats()?;
        let before = kv_user::kernel::bench::program_stats_by_id(prog_id)?.context("program vanished")?;
        let a = self.common_args(w, 2);
        self.kv_load(
            &format!("{tag}-bpfstats"),
            &a,
            None,
            Duration::from_secs(60),
            &format!("{head} (bpf stats)"),
            true,
        )?;
        let after = kv_user::kernel::bench::program_stats_by_id(prog_id)?.context("program vanished")?;
        drop(fd);
        let runs = after.run_cnt.saturating_sub(before.run_cnt);
        Ok((runs > 0).then(|| after.run_time_ns.saturating_sub(before.run_time_ns) as f64 / runs as f64))
    }

    fn start_server(&self, server: Server, tag: &str, data_dir: Option<&Path>) -> Result<Proc> {
        let (port, threads, conns) = (PORT.to_string(), THREADS.to_string(), self.conn_limit.to_string());
        let ip = SERVER_IP.to_string();
        let (bin, a): (PathBuf, Vec<String>) = match server {
            Server::Memcached => (
                PathBuf::from("memcached"),
                args(&["-u", "root", "-l", &ip, "-p", &port, "-U", &port, "-t", &threads, "-m", "1024", "-c", &conns]),
            ),
            _ => {
                let mut a = args(&["-l", &ip, "-p", &port, "-U", &port, "-t", &threads, "-m", "1024", "-c", &conns]);
                a.extend(args(&["--udp-allow", SUBNET]));
                match server {
                    Server::KvNoBpf => a.extend(args(&["--no-bpf", "--no-persist"])),
                    Server::KvXdp => a.extend(args(&["--iface", SERVER_IF, "--xdp-mode", "native", "--no-persist"])),
                    _ => {
                        let dir = data_dir.context("data dir")?.to_string_lossy().into_owned();
                        if server == Server::KvNoBpfFsync {
                            a.push("--no-bpf".into());
                        } else {
                            a.extend(args(&["--iface", SERVER_IF, "--xdp-mode", "native"]));
                        }
                        a.extend(args(&["--fsync", "everysec", "--data-dir", &dir]));
                    }
                }
                (self.release.join("kv-server"), a)
            }
        };
        let bin = if bin.is_absolute() { bin } else { which(&bin)? };
        let log = self.logs.join(format!("{tag}.server.log"));
        let child = ns_command(&self.bed.server_ns, &bin, &a, &log)?.spawn().context("starting the server")?;
        let mut p = Proc { child, name: server.label().to_string() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check_interrupted()?;
            if !p.alive() {
                bail!("{} exited at start; its output: {}\n{}", server.label(), log.display(), tail(&log));
            }
            if self.version_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not answer within 20 s; its output: {}\n{}", server.label(), log.display(), tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(server, Server::KvXdp | Server::KvFsync) && self.bed.server_xdp_prog_id()?.is_none() {
            bail!("{} runs but has no XDP program on {SERVER_IF}; its output:\n{}", server.label(), tail(&log));
        }
        Ok(p)
    }

    /// `version` over TCP from the client namespace.
    fn version_ok(&self) -> bool {
        self.tcp_request(b"version\r\n", b"\r\n").is_some_and(|r| r.starts_with("VERSION"))
    }

    fn tcp_request(&self, req: &[u8], end: &[u8]) -> Option<String> {
        let addr = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT));
        netns::in_netns(&self.bed.client_ns, || {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(req)?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            while !buf.ends_with(end) {
                let n = c.read(&mut chunk)?;
                if n == 0 {
                    bail!("closed");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        })
        .ok()
    }

    /// The server's numeric `stats`.
    fn server_stats(&self) -> Option<std::collections::HashMap<String, u64>> {
        let text = self.tcp_request(b"stats\r\n", b"END\r\n")?;
        Some(
            text.lines()
                .filter_map(|l| l.strip_prefix("STAT "))
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
                .collect(),
        )
    }

    /// Runs kv-load in the client namespace with a countdown; returns its JSON (if `json`) and the
    /// samples of `pid` taken meanwhile.
    fn kv_load(
        &self,
        tag: &str,
        a: &[String],
        pid: Option<u32>,
        limit: Duration,
        head: &str,
        json: bool,
    ) -> Result<(Option<Value>, Vec<Sample>)> {
        let log = self.logs.join(format!("{tag}.kv-load.log"));
        std::fs::write(self.logs.join(format!("{tag}.kv-load.args")), a.join(" "))?;
        let child = ns_command(&self.bed.client_ns, &self.kv_load, a, &log)?.spawn().context("starting kv-load")?;
        let mut p = Proc { child, name: "kv-load".into() };
        let tty = std::io::stderr().is_terminal();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let countdown = tty.then(|| {
            let (stop, head, total) = (stop.clone(), head.to_string(), self.duration + self.warmup);
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let left = total as i64 - t0.elapsed().as_secs() as i64;
                    eprint!("\r\x1b[K{head} ... {}", if left > 0 { format!("{left} s") } else { "finishing".into() });
                    std::thread::sleep(Duration::from_millis(250));
                }
                eprint!("\r\x1b[K");
            })
        });
        let res = procs::wait_sampling(&mut p, pid, limit);
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = countdown {
            let _ = t.join();
        }
        let (samples, out) = res.map_err(|e| {
            if INTERRUPTED.load(Ordering::Relaxed) {
                e
            } else {
                anyhow::anyhow!("{head}: {e:#}; kv-load's output ({}):\n{}", log.display(), tail(&log))
            }
        })?;
        if !json {
            return Ok((None, samples));
        }
        let v = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok().filter(Value::is_object))
            .with_context(|| format!("kv-load printed no JSON object on stdout (got {out:?})"))?;
        Ok((Some(v), samples))
    }
}

/// Server CPU and whole-machine CPU in microseconds per request over the last `window` seconds.
fn window_cpu(samples: &[Sample], window: f64, rps: f64) -> (Option<f64>, Option<f64>) {
    let Some(end) = samples.last() else { return (None, None) };
    let start_at = end.at.checked_sub(Duration::from_secs_f64(window)).unwrap_or(end.at);
    let Some(start) = samples.iter().find(|s| s.at >= start_at) else { return (None, None) };
    let secs = end.at.duration_since(start.at).as_secs_f64();
    if secs <= 0.0 || rps <= 0.0 {
        return (None, None);
    }
    let tick_us = 1e6 / procs::clk_tck();
    let reqs = rps * secs;
    // The process may have gone by the last sample: use the last one that has it.
    let proc_end = samples.iter().rev().find(|s| s.proc_ticks.is_some());
    let cpu = match (start.proc_ticks, proc_end) {
        (Some(a), Some(e)) if e.at > start.at => {
            let secs = e.at.duration_since(start.at).as_secs_f64();
            Some(e.proc_ticks.unwrap_or(a).saturating_sub(a) as f64 * tick_us / (rps * secs))
        }
        _ => None,
    };
    let all = end.busy_ticks.saturating_sub(start.busy_ticks) as f64 * tick_us / reqs;
    (cpu, Some(all))
}

/// A copy of the workload's shape without its servers (for the preload step).
fn shallow(w: &Workload) -> Workload {
    Workload {
        name: w.name,
        proto: w.proto,
        threads: THREADS,
        args: vec![],
        preload: false,
        servers: vec![],
        skip_note: "",
        open_half_mc: false,
        idle: 0,
        bpf_stats: false,
    }
}

fn which(bin: &Path) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .with_context(|| format!("{} not found on PATH", bin.display()))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A directory under the output directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(base: &Path, tag: &str) -> Result<TempDir> {
        let p = base.join(format!("tmp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
