//! Project tasks: `cargo xtask run` starts the server, `cargo xtask test` runs everything CI runs,
//! `cargo xtask bench` compares it with memcached (docs/bench.md).
//! All first install what a fresh machine lacks (rust-src for nightly, bpf-linker, test peers).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

#[cfg(feature = "bench")]
mod bench;
mod fuzz;
mod setup;

#[derive(Parser)]
#[command(about = "Build, run and test the kv cache server")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// The parts of `cargo xtask bench`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Part {
    Throughput,
    Memory,
    /// Start-up time with a large log, beside memcached's warm restart.
    Restart,
}

#[derive(Subcommand)]
enum Task {
    /// Build (release) and start the server on 127.0.0.1:11211 (TCP and UDP). Extra arguments go to the server.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install test peers, check formatting and lints, run every test (what CI runs).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the benchmark smoke test (`cargo xtask bench --quick`).
        #[arg(long)]
        no_bench: bool,
        /// The reliability suite's long form (KV_LONG=1): more crash rounds, packets and fuzzing time.
        #[arg(long)]
        long: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark memcached, kv-server (user space / XDP) and a bare XDP_TX reflector in network
    /// namespaces with kv-load; prints a table, writes results.json and a chart (root needed).
    Bench(BenchArgs),
    /// Run every cargo-fuzz target (fuzz/) for a bounded time on a copy of its seed corpus (nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

/// `cargo xtask bench`'s options.
#[derive(Args)]
struct BenchArgs {
    /// Short smoke run (about a minute): UDP GET, UDP ETC and TCP depth 1 only, 2 s windows; the memory rows
    /// at reduced sizes.
    #[arg(long)]
    quick: bool,
    /// Output directory (default: target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only the throughput rows, the memory rows (RSS per item, overfill, hit ratio, idle connections,
    /// stalled uploads) or the restart rows (start-up time with a large log); default all.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Many-core mode: CPUs (e.g. 0-3) for the servers, their threads (one per CPU) and their veth
    /// end's packet work; needs --client-cpus, a disjoint set.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Many-core mode: CPUs (e.g. 4-15) for kv-load (one thread per CPU) and its veth end.
    #[arg(long)]
    client_cpus: Option<String>,
    /// Only these throughput workloads (repeatable, e.g. `--workload udp-multiget-10`), of the full
    /// plan unless --quick; implies `--only throughput`.
    #[arg(long = "workload", value_name = "NAME")]
    workloads: Vec<String>,
    /// A/B against another build: every `kv-server(xdp)` row is also run with the kv-server in DIR (that
    /// build's target/release), as `kv-server(xdp,baseline)`, right after this build's.
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// Run each throughput workload's servers this many times in turn (which spreads a noisy machine's
    /// drift over every server alike) and report each server's median run by req/s, with every run's
    /// req/s and BPF ns/pkt in its notes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    repeat: u32,
    /// Value size in bytes of the throughput rows' keys (all but `etc`, which has its own sizes): 32 unless
    /// told; e.g. 100 for a 1-key hit with a 100-byte value.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    value_size: u32,
    /// Keys of the throughput rows (Zipf popularity over them): 10,000 unless told; e.g. 10 to measure
    /// a hit whose cache slot stays in the CPU's caches.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    keys: u32,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = std::env::set_current_dir(&root).map_err(anyhow::Error::from).and_then(|()| match cli.task {
        Task::Run { args } => run(&root, &args),
        Task::Test { no_lint, no_bench, long, args } => test(&root, no_lint, no_bench, long, &args),
        Task::Bench(a) => bench(&root, a),
        Task::Fuzz { seconds } => fuzz::run(&root, seconds).map(|runs| print_fuzz(&runs)),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_fuzz(runs: &[fuzz::FuzzRun]) {
    println!("{:<12} {:>12} {:>10} {:>8} {:>9}", "target", "executions", "exec/s", "seconds", "findings");
    for r in runs {
        let (execs, rate, secs) = (r.executions, r.execs_per_sec(), r.seconds);
        println!("{:<12} {execs:>12} {rate:>10.0} {secs:>8.1} {:>9}", r.target, r.findings.len());
    }
}

/// Seconds per fuzz target in `cargo xtask test` (short form) and `cargo xtask test --long`.
const FUZZ_SECONDS: (u64, u64) = (15, 600);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(root: &Path, args: &[String]) -> Result<()> {
    setup::ebpf_toolchain()?;
    cargo(&["build", "--release", "-p", "kv-user", "--bin", "kv-server"])?;
    let bin = root.join("target/release/kv-server");
    // exec-like: the server owns the terminal; Ctrl-C reaches it and it detaches XDP on the way out.
    let status = Command::new(&bin).args(args).status().with_context(|| format!("starting {}", bin.display()))?;
    exit_with(status)
}

fn test(root: &Path, no_lint: bool, no_bench: bool, long: bool, args: &[String]) -> Result<()> {
    setup::ebpf_toolchain()?;
    let python = setup::test_peers(root)?;
    if !no_lint {
        cargo(&["fmt", "--all", "--check"])?;
        // --all-features also lints the benchmark harness (xtask's `bench` feature).
        cargo(&["clippy", "--workspace", "--release", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
        // The eBPF programs for their real target (on the host they are empty binaries): nightly with
        // build-std, as kv-user's build script builds them (aya-build). A check links nothing, so it
        // needs rust-src but not bpf-linker. `rustup run`, as `+nightly` does not reach a cargo run by path.
        let ebpf_clippy = "run nightly cargo clippy -Z build-std=core --target bpfel-unknown-none --release \
                           -p kv-ebpf --lib --bins -- -D warnings";
        let status = Command::new("rustup")
            .args(ebpf_clippy.split_whitespace())
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .context("running clippy on kv-ebpf")?;
        if !status.success() {
            bail!("rustup {ebpf_clippy} failed");
        }
    }
    // One profile (release) for everything: the eBPF object is built once, and the end-to-end tests
    // measure the binary users run.
    cargo(&["build", "--release", "-p", "kv-user", "--bin", "kv-server"])?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--release", "--workspace", "--no-fail-fast"]).args(args);
    cmd.env("KV_SERVER_BIN", root.join("target/release/kv-server"));
    cmd.env("KV_PYTHON", &python);
    if long {
        cmd.env("KV_LONG", "1");
    }
    let mut counts = [0u64; 3];
    let workspace = count_tests(cmd, &mut counts)?;
    // The benchmark harness's own unit tests, in a build of their own: its feature would otherwise reach the
    // kv-server binary the end-to-end tests run.
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--release", "-p", "xtask", "--features", "bench", "--no-fail-fast"]).args(args);
    let harness = count_tests(cmd, &mut counts)?;
    let status = if workspace.success() { harness } else { workspace };
    let [passed, failed, ignored] = counts;
    // The fuzzing suite's short (or long) form: a finding fails the run.
    let fuzzed = if status.success() {
        let secs = if long { FUZZ_SECONDS.1 } else { FUZZ_SECONDS.0 };
        match fuzz::run(root, secs) {
            Ok(runs) => {
                print_fuzz(&runs);
                Ok(())
            }
            Err(e) => Err(e),
        }
    } else {
        Ok(())
    };
    // The benchmark's quick form as a smoke test: it must run end to end; its numbers are printed, not
    // asserted (they depend on the machine).
    let smoke = if status.success() && fuzzed.is_ok() && !no_bench {
        let mut cmd = bench_command(true);
        cmd.arg("--out").arg(root.join("target/bench-smoke"));
        cmd.status().context("running the benchmark smoke test")?.success()
    } else {
        true
    };
    // Last, so it is the closing line of the run.
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("tests failed");
    }
    fuzzed.context("fuzzing")?;
    if !smoke {
        bail!("benchmark smoke test (cargo xtask bench --quick) failed");
    }
    Ok(())
}

/// Runs a `cargo test` command, echoing its output and adding its per-binary results to `counts` (passed,
/// failed, ignored), for one closing line.
fn count_tests(mut cmd: Command, counts: &mut [u64; 3]) -> Result<ExitStatus> {
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            for (n, word) in counts.iter_mut().zip([" passed", " failed", " ignored"]) {
                *n += count(word);
            }
        }
    }
    Ok(child.wait()?)
}

/// xtask itself, rebuilt in release with the `bench` feature, running `bench [--quick]`.
fn bench_command(quick: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "--quiet", "--release", "-p", "xtask", "--features", "bench", "--", "bench"]);
    if quick {
        cmd.arg("--quick");
    }
    cmd
}

/// Plain xtask has no dependency on kv-user (whose build needs the eBPF toolchain this very binary
/// installs), so it sets the toolchain up and re-runs itself, in release, with the `bench` feature.
#[cfg(not(feature = "bench"))]
fn bench(_root: &Path, a: BenchArgs) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    setup::ebpf_toolchain()?;
    let mut cmd = bench_command(a.quick);
    // Paths relative to where the user ran cargo, not to the workspace root this process moved to.
    let from_user = |p: PathBuf| {
        if p.is_absolute() {
            p
        } else {
            std::env::var_os("PWD").map(PathBuf::from).unwrap_or_default().join(p)
        }
    };
    if let Some(out) = a.out {
        cmd.arg("--out").arg(from_user(out));
    }
    if let Some(p) = a.only {
        let part = match p {
            Part::Throughput => "throughput",
            Part::Memory => "memory",
            Part::Restart => "restart",
        };
        cmd.args(["--only", part]);
    }
    for (flag, list) in [("--server-cpus", a.server_cpus), ("--client-cpus", a.client_cpus)] {
        if let Some(list) = list {
            cmd.args([flag, &list]);
        }
    }
    for w in a.workloads {
        cmd.args(["--workload", &w]);
    }
    if let Some(dir) = a.baseline {
        cmd.arg("--baseline").arg(from_user(dir));
    }
    cmd.args(["--repeat", &a.repeat.to_string()]);
    cmd.args(["--value-size", &a.value_size.to_string()]);
    cmd.args(["--keys", &a.keys.to_string()]);
    // exec: Ctrl-C then reaches the benchmark itself, which cleans up.
    Err(cmd.exec()).context("running the benchmark")
}

#[cfg(feature = "bench")]
fn bench(root: &Path, a: BenchArgs) -> Result<()> {
    let only = a.only.map(|p| match p {
        Part::Throughput => bench::Part::Throughput,
        Part::Memory => bench::Part::Memory,
        Part::Restart => bench::Part::Restart,
    });
    let opts = bench::Opts {
        quick: a.quick,
        out: a.out,
        only,
        server_cpus: a.server_cpus,
        client_cpus: a.client_cpus,
        workloads: a.workloads,
        baseline: a.baseline,
        repeat: a.repeat,
        value_size: a.value_size,
        keys: a.keys,
    };
    bench::run(root, opts)
}

fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO")).args(args).status().with_context(|| format!("cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn exit_with(status: ExitStatus) -> Result<()> {
    std::process::exit(status.code().unwrap_or(1));
}
