//! Child processes of the benchmark (servers and kv-load, each inside a namespace) and what /proc says
//! about them.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use kv_netns::Netns;

/// Set by the SIGINT handler; every wait loop checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The hard RLIMIT_NOFILE, which children may raise their soft limit to (raising the hard limit needs
/// CAP_SYS_RESOURCE, which this machine kind does not grant).
pub fn nofile_hard() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_max
}

/// `ip netns exec <ns> sh -c 'ulimit -n <hard>; exec "$0" "$@"' <program> <args>`: the child's pid is
/// the program's (every step execs). It gets its own process group (so a terminal's Ctrl-C reaches only
/// the harness, which then stops it in order) and dies with the harness (PR_SET_PDEATHSIG).
pub fn ns_command(ns: &Netns, program: &Path, args: &[String], log: &Path) -> Result<Command> {
    let mut cmd = ns.command("sh");
    cmd.args(["-c", &format!("ulimit -n {}; exec \"$0\" \"$@\"", nofile_hard())])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?))
        .process_group(0);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(cmd)
}

/// A child killed (SIGTERM, then SIGKILL after 3 s) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it gracefully (kv-server detaches XDP on SIGTERM).
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One sample of a process and of the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime of the process, in clock ticks.
    pub proc_ticks: Option<u64>,
    pub rss_kb: Option<u64>,
    /// Busy ticks over all CPUs (everything in /proc/stat's cpu line but idle and iowait).
    pub busy_ticks: u64,
}

pub fn clk_tck() -> f64 {
    // SAFETY: no arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn sample(pid: Option<u32>) -> Sample {
    Sample {
        at: Instant::now(),
        proc_ticks: pid.and_then(proc_ticks),
        rss_kb: pid.and_then(rss_kb),
        busy_ticks: busy_ticks().unwrap_or(0),
    }
}

fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// A kB field of /proc/PID/status (`VmRSS:`, `VmHWM:` for the peak RSS).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is already inside user)
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// Waits for `child` while sampling `pid` every 100 ms; kills it after `limit`. Returns the samples and
/// the child's stdout.
pub fn wait_sampling(child: &mut Proc, pid: Option<u32>, limit: Duration) -> Result<(Vec<Sample>, String)> {
    let start = Instant::now();
    let mut samples = vec![sample(pid)];
    let mut stdout = child.child.stdout.take().context("kv-load stdout")?;
    // Read stdout on a thread so a chatty child cannot block on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.child.try_wait()? {
            break st;
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            child.stop();
            bail!("interrupted");
        }
        if start.elapsed() > limit {
            child.stop();
            bail!("{} did not finish within {} s", child.name, limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
        samples.push(sample(pid));
    };
    samples.push(sample(pid));
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{} failed ({status})", child.name);
    }
    Ok((samples, out))
}

/// `bin` found on PATH.
pub fn which(bin: &Path) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .with_context(|| format!("{} not found on PATH", bin.display()))
}

/// The last 15 lines of a child's log, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
