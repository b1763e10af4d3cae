//! `cargo xtask fuzz`: the short form of the fuzzing suite. Builds the cargo-fuzz targets in `fuzz/`
//! (nightly, AddressSanitizer, debug assertions), runs each for a bounded time on a fresh copy of its
//! checked-in seed corpus, and reports libFuzzer's execution counts. A crash fails the run and names
//! the input that triggered it.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

/// The cargo-fuzz release known to work with the nightly that also builds the eBPF object.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// An input running longer than this counts as a finding (a hang), not as slow progress.
const INPUT_TIMEOUT_SECS: u64 = 10;

/// One target's run.
#[derive(Debug, Clone)]
pub struct FuzzRun {
    pub target: String,
    /// Inputs executed, as libFuzzer counts them.
    pub executions: u64,
    /// Inputs that crashed, leaked or hung (libFuzzer's artifacts); empty on success.
    pub findings: Vec<PathBuf>,
    /// What went wrong: the panic message or the sanitizer's/libFuzzer's error line.
    pub reason: Option<String>,
    /// Wall time of the run, start-up included.
    pub seconds: f64,
}

impl FuzzRun {
    pub fn execs_per_sec(&self) -> f64 {
        self.executions as f64 / self.seconds.max(1e-3)
    }
}

/// Installs cargo-fuzz if missing, builds every target and runs each for `seconds_per_target`.
/// Fails after running all targets if any of them found something.
pub fn run(root: &Path, seconds_per_target: u64) -> Result<Vec<FuzzRun>> {
    crate::setup::ebpf_toolchain()?; // kv-user's build script builds the eBPF object with nightly
    install_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    let started = Instant::now();
    cargo_fuzz(root, &["build"]).status().context("cargo fuzz build").and_then(|s| {
        if !s.success() {
            bail!("cargo fuzz build failed");
        }
        Ok(())
    })?;
    eprintln!("xtask: fuzz targets built in {:.0} s", started.elapsed().as_secs_f64());

    let list = cargo_fuzz(root, &["list"]).stderr(Stdio::inherit()).output().context("cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout).split_whitespace().map(str::to_string).collect();
    if !list.status.success() || targets.is_empty() {
        bail!("cargo fuzz list found no targets");
    }

    // Fuzzing adds inputs to the corpus it is given: hand it a copy, so the checked-in seeds stay small.
    let work = target_dir(root).join("fuzz");
    let mut runs = Vec::new();
    for target in &targets {
        let seeds = fuzz_dir.join("corpus").join(target);
        let corpus = work.join("corpus").join(target);
        copy_dir(&seeds, &corpus).with_context(|| format!("copying the {target} seed corpus"))?;
        let log = work.join(format!("{target}.log"));
        let run = run_target(root, target, &corpus, &log, seconds_per_target)?;
        eprintln!(
            "xtask: fuzz {target}: {} executions in {:.0} s ({:.0}/s), {} finding(s); log {}",
            run.executions,
            run.seconds,
            run.execs_per_sec(),
            run.findings.len(),
            log.display()
        );
        runs.push(run);
    }

    let failed: Vec<&FuzzRun> = runs.iter().filter(|r| !r.findings.is_empty()).collect();
    if !failed.is_empty() {
        let mut msg = String::from("fuzzing found crashes:");
        for r in failed {
            if let Some(reason) = &r.reason {
                msg += &format!("\n  {}: {reason}", r.target);
            }
            for f in &r.findings {
                msg += &format!(
                    "\n  {}: {} (reproduce: cargo +nightly fuzz run {} {})",
                    r.target,
                    f.display(),
                    r.target,
                    f.display()
                );
            }
        }
        bail!(msg);
    }
    Ok(runs)
}

/// `cargo +nightly fuzz <args>` from the workspace root (cargo-fuzz finds `fuzz/` there).
fn cargo_fuzz(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"]).args(args).current_dir(root);
    cmd
}

fn install_cargo_fuzz() -> Result<()> {
    let have = Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    let status = Command::new(env!("CARGO"))
        .args(["install", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"), "--locked"])
        .status()
        .context("cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("installing cargo-fuzz {CARGO_FUZZ_VERSION} failed");
    }
    Ok(())
}

/// Where cargo (and so cargo-fuzz) puts its output: `CARGO_TARGET_DIR` or `target/`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Replaces `dst` with a copy of the files in `src`.
fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        fs::remove_dir_all(dst)?;
    }
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), dst.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn run_target(root: &Path, target: &str, corpus: &Path, log: &Path, seconds: u64) -> Result<FuzzRun> {
    let corpus_arg = corpus.to_string_lossy();
    let args = [
        "run".to_string(),
        target.to_string(),
        corpus_arg.into_owned(),
        "--".to_string(),
        format!("-max_total_time={seconds}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        "-print_final_stats=1".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    // libFuzzer reports on stderr; keep all of it in the log and read the numbers from it.
    let mut child = cargo_fuzz(root, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let mut out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut stats = Stats::default();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
        stats.line(&line);
    }
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let mut findings: Vec<PathBuf> = stats.artifacts.into_iter().map(|p| root.join(p)).collect();
    if !status.success() && findings.is_empty() {
        // Died without writing an input (e.g. the build or the harness itself failed): still a failure.
        bail!("cargo fuzz run {target} failed ({status}) without an artifact; see {}", log.display());
    }
    findings.dedup();
    let executions = match stats.executions {
        Some(n) => n,
        None if !findings.is_empty() => 0, // crashed on a seed, before the first progress line
        None => bail!("no execution count in libFuzzer's output; see {}", log.display()),
    };
    Ok(FuzzRun { target: target.to_string(), executions, findings, reason: stats.reason, seconds })
}

/// The numbers in libFuzzer's output.
#[derive(Default)]
struct Stats {
    executions: Option<u64>,
    artifacts: Vec<String>,
    reason: Option<String>,
    /// The previous line was a Rust panic's header; its message follows.
    panic_header: Option<String>,
}

impl Stats {
    fn line(&mut self, line: &str) {
        if let Some(header) = self.panic_header.take() {
            self.reason.get_or_insert(format!("{header}: {}", line.trim()));
        }
        if let Some((_, at)) = line.split_once("panicked at ") {
            self.panic_header = Some(format!("panicked at {}", at.trim_end_matches(':')));
        } else if line.starts_with("==") && line.contains("ERROR:") {
            self.reason.get_or_insert(line.to_string());
        }
        // Final stats win over progress lines; progress lines ("#1234\tpulse ...") cover a crash.
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = n.trim().parse().ok().or(self.executions);
        } else if let Some(n) = line.strip_prefix("Done ").and_then(|r| r.split(' ').next()) {
            self.executions = n.parse().ok().or(self.executions);
        } else if let Some(n) = line.strip_prefix('#').and_then(|r| r.split(|c: char| c.is_whitespace()).next()) {
            if let Ok(n) = n.parse::<u64>() {
                self.executions = Some(self.executions.unwrap_or(0).max(n));
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.artifacts.push(path.trim().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let mut s = Stats::default();
        for l in [
            "#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb",
            "#524288\tpulse  cov: 10 ft: 10 corp: 1/1b lim: 4 exec/s: 262144 rss: 30Mb",
            "Done 650442 runs in 11 second(s)",
            "stat::number_of_executed_units: 650443",
        ] {
            s.line(l);
        }
        assert_eq!(s.executions, Some(650_443));
        assert!(s.artifacts.is_empty());
        assert_eq!(s.reason, None);

        let mut s = Stats::default();
        s.line("#1000\tNEW    cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb");
        s.line("thread '<unnamed>' (32127) panicked at fuzz_targets/parse.rs:91:13:");
        s.line("get without keys");
        s.line("==32127== ERROR: libFuzzer: deadly signal");
        s.line("artifact_prefix='/r/fuzz/artifacts/parse/'; Test unit written to /r/fuzz/artifacts/parse/crash-66a0");
        assert_eq!(s.executions, Some(1000));
        assert_eq!(s.artifacts, ["/r/fuzz/artifacts/parse/crash-66a0"]);
        assert_eq!(s.reason.as_deref(), Some("panicked at fuzz_targets/parse.rs:91:13: get without keys"));
    }
}
