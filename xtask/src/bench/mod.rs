//! `cargo xtask bench`: memcached vs kv-server (user space only, and with its XDP GET path) vs a bare
//! XDP_TX reflector, each in its own network namespace behind a veth pair, driven by `kv-load` from a
//! second namespace. Prints a table and writes results.json and a chart. Method: docs/bench.md.
//!
//! Layout: this file sets up (root check, builds, output directory, testbed) and hands over; `workloads`
//! says what is measured, `run` measures it (one server and workload at a time), `servers` starts and
//! queries the servers under test, `procs` watches child processes, `bed` is the namespace testbed,
//! `repeat` reduces `--repeat`'s rounds to each server's median and `report` writes the table,
//! results.json and the chart. `memory` measures and reports the memory rows (RSS per item, overfilling
//! `-m`, hit ratio, idle connections, stalled uploads); `restart` the start-up times (kv-server replaying
//! its log, memcached's warm restart).

mod bed;
mod cpus;
mod memory;
mod procs;
mod repeat;
mod report;
mod restart;
mod run;
mod servers;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use bed::Bed;
use procs::INTERRUPTED;
use workloads::Server;

/// Port of every server (TCP and UDP), inside the private server namespace.
const PORT: u16 = 11211;
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub struct Opts {
    pub quick: bool,
    pub out: Option<PathBuf>,
    /// Run only the throughput rows or only the memory rows (default both).
    pub only: Option<Part>,
    /// Many-core mode: CPU lists (`0-3,6`) for the servers and for kv-load, both or neither.
    pub server_cpus: Option<String>,
    pub client_cpus: Option<String>,
    /// Only these throughput workloads (empty: all of the plan).
    pub workloads: Vec<String>,
    /// Another build's target/release: its kv-server also runs every `kv-server(xdp)` row.
    pub baseline: Option<PathBuf>,
    /// Rounds of each throughput workload; each server's median round is reported.
    pub repeat: u32,
    /// Value size of the throughput rows but `etc` (`--value-size`).
    pub value_size: u32,
    /// Keys of the throughput rows (`--keys`).
    pub keys: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Throughput,
    Memory,
    Restart,
}

impl Opts {
    fn runs(&self, part: Part) -> bool {
        match self.only {
            Some(p) => p == part,
            None => self.workloads.is_empty() || part == Part::Throughput,
        }
    }
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
    /// Many-core mode's CPU sets (None: the default, 2 shared cores and THREADS everywhere).
    pin: Option<cpus::Pinning>,
    rows: Vec<Row>,
    memory: memory::Results,
    restart: Vec<restart::Cell>,
    /// (workload, which servers are left out and why).
    skips: Vec<(String, String)>,
}

pub fn run(root: &Path, opts: Opts) -> Result<()> {
    let started = Instant::now();
    let pin = cpus::Pinning::from_flags(opts.server_cpus.as_deref(), opts.client_cpus.as_deref(), &cpus::available())?;
    // SAFETY: geteuid has no preconditions.
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
    let bed = Bed::create(pin.as_ref()).context("creating the namespaces")?;
    if let Some(p) = &pin {
        eprintln!(
            "bench: many-core mode: servers on CPUs {} ({} threads), kv-load on CPUs {} ({} threads)",
            cpus::format_list(&p.server),
            p.server.len(),
            cpus::format_list(&p.client),
            p.client.len()
        );
    }
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
        pin,
        rows: Vec::new(),
        memory: Default::default(),
        restart: Vec::new(),
        skips: Vec::new(),
    };
    let mut result = Ok(());
    if ctx.opts.runs(Part::Throughput) {
        result = ctx.run_all();
    }
    if result.is_ok() && ctx.opts.runs(Part::Memory) {
        result = ctx.run_memory();
    }
    if result.is_ok() && ctx.opts.runs(Part::Restart) {
        result = ctx.run_restart();
    }
    let restart_written = restart::report(&ctx.out, &ctx.restart);
    // Whatever happened, report what was measured.
    let mut m = machine();
    if let Some(p) = &ctx.pin {
        m["server_cpus"] = json!(cpus::format_list(&p.server));
        m["client_cpus"] = json!(cpus::format_list(&p.client));
    }
    let written = report::write(&ctx.out, &ctx.rows, &ctx.memory, &ctx.skips, &m, ctx.opts.quick, FONT);
    let cleanup = ctx.bed.server_ns.name.clone();
    drop(ctx);
    let left = kv_netns::ip(&["netns", "list"]);
    if left.is_ok_and(|l| l.contains(&cleanup)) {
        eprintln!("bench: warning: namespace {cleanup} still exists");
    }
    result?;
    written?;
    restart_written?;
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

impl Ctx {
    /// Worker threads of every server: one per server CPU in many-core mode.
    fn server_threads(&self) -> u32 {
        self.pin.as_ref().map_or(workloads::THREADS, |p| p.server.len() as u32)
    }

    /// kv-load threads for a workload planned with `THREADS`: one per client CPU in many-core mode.
    fn client_threads(&self) -> u32 {
        self.pin.as_ref().map_or(workloads::THREADS, |p| p.client.len() as u32)
    }

    /// Many-core mode: the veth NAPI kthreads (threaded once XDP is on an end) pinned to their side's CPUs.
    /// Called after each server start, since an XDP attach or detach recreates the server end's NAPI.
    fn pin_network(&self) {
        let Some(p) = &self.pin else { return };
        for (ns, iface, set) in
            [(&self.bed.server_ns, bed::SERVER_IF, &p.server), (&self.bed.client_ns, bed::CLIENT_IF, &p.client)]
        {
            if cpus::set_threaded(ns, iface) {
                cpus::pin_napi_threads(iface, set);
            }
        }
    }
}

fn build(root: &Path) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "-p", "kv-user", "--bin", "kv-server"]);
    if root.join("bench/Cargo.toml").is_file() {
        cmd.args(["-p", "kv-bench", "--bin", "kv-load", "--bin", "tcp-ceiling"]);
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
