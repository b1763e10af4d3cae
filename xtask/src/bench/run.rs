//! The run loop: every workload of the plan against each of its servers, one at a time: start the
//! server (or attach the reflector), preload, run kv-load in the client namespace while sampling the
//! server, and turn what came back into a [`Row`].

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::bed::{SERVER_IF, SERVER_IP};
use super::cpus::pin_command;
use super::procs::{self, check_interrupted, ns_command, tail, Proc, Sample, INTERRUPTED};
use super::workloads::{args, plan_for, Proto, Server, Workload, ZIPF};
use super::{repeat, Ctx, Row, PORT};

impl Row {
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
}

impl Ctx {
    pub(super) fn run_all(&mut self) -> Result<()> {
        let mut plan = plan_for(self.opts.quick, self.client_threads());
        let wanted = &self.opts.workloads;
        if let Some(w) = wanted.iter().find(|w| !plan.iter().any(|p| p.name == w.as_str())) {
            let names: Vec<&str> = plan.iter().map(|p| p.name).collect();
            bail!("--workload {w}: not in this plan (one of: {})", names.join(", "));
        }
        if !wanted.is_empty() {
            plan.retain(|p| wanted.iter().any(|w| w == p.name));
        }
        if let Some(dir) = &self.opts.baseline {
            if !dir.join("kv-server").is_file() {
                bail!("--baseline {}: no kv-server there (give another build's target/release)", dir.display());
            }
            for w in &mut plan {
                if let Some(i) = w.servers.iter().position(|&s| s == Server::KvXdp) {
                    w.servers.insert(i + 1, Server::KvXdpBaseline);
                }
            }
        }
        let rounds = self.opts.repeat.max(1);
        let total = plan.iter().map(|w| w.servers.len()).sum::<usize>() * rounds as usize;
        let mut step = 0;
        eprintln!(
            "bench: {} runs of {} s (+{} s warm-up), {} keys of {}-byte values, servers in {}, kv-load in {}; logs in {}",
            total,
            self.duration,
            self.warmup,
            self.opts.keys,
            self.opts.value_size,
            self.bed.server_ns.name,
            self.bed.client_ns.name,
            self.logs.display()
        );
        for w in &plan {
            if !w.skip_note.is_empty() {
                eprintln!("bench: {}: not run for {}", w.name, w.skip_note);
                self.skips.push((w.name.to_string(), w.skip_note.to_string()));
            }
            let first = self.rows.len();
            for (round, &server) in (1..=rounds).flat_map(|r| w.servers.iter().map(move |s| (r, s))) {
                step += 1;
                check_interrupted()?;
                let of = if rounds > 1 { format!(" (round {round}/{rounds})") } else { String::new() };
                let head = format!("[bench {step}/{total}] {} {}{of}", server.label(), w.name);
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
            if rounds > 1 {
                let runs = self.rows.split_off(first);
                for row in repeat::medians(runs, &w.servers) {
                    eprintln!("[bench] {} {}: {}", row.server.label(), w.name, row.note);
                    self.rows.push(row);
                }
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
            ("--keys", self.opts.keys.to_string()),
            if w.etc { ("--workload", "etc".to_string()) } else { ("--value-size", self.opts.value_size.to_string()) },
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

    fn run_one(&mut self, head: &str, server: Server, w: &Workload) -> Result<Row> {
        let mut extra_args = Vec::new();
        if w.idle > 0 {
            let need = w.idle as u64 + 1_100;
            if self.conn_limit < need {
                return Ok(Row::skipped(
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
                return Ok(Row::skipped(server, w, "no memcached udp-get peak to take half of".into()));
            };
            extra_args.extend(args(&["--rate", &format!("{:.0}", mc.rps / 2.0)]));
        }
        let tag = format!("{}-{}", server.label().replace(['(', ')', ','], "_"), w.name);
        let mut tmp = None;
        let (mut proc, reflector) = match server {
            Server::Reflector => {
                let r = self
                    .bed
                    .server_ns
                    .try_run(|| {
                        kv_user::kernel::bench::attach_reflector(SERVER_IF, kv_user::kernel::XdpMode::Native, PORT)
                    })
                    .context("attaching the reflector to the server veth")?;
                self.pin_network();
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
        if w.preload && !matches!(server, Server::Reflector | Server::TcpCeiling) {
            // The same key space as the run (ETC: same seed, so the same keys and sizes).
            let mut a = self.common_args(&Workload { etc: w.etc, ..Workload::new(w.name, Proto::Tcp, &[], &[]) }, 1);
            a.retain(|x| x != "--json");
            a.push("--preload-only".into());
            self.kv_load(&format!("{tag}-preload"), &a, None, Duration::from_secs(120), head, false)?;
        }
        let stats_before = if server.is_kv_xdp() || server == Server::KvFsync { self.server_stats() } else { None };
        let mut a = self.common_args(w, self.duration);
        a.extend(extra_args.iter().cloned());
        let limit = Duration::from_secs((self.duration + self.warmup) as u64 + 60 + w.idle as u64 / 500);
        let (load, samples) = self.kv_load(&tag, &a, pid, limit, head, true)?;
        let load = load.context("kv-load printed no JSON")?;
        let mut row = Row::skipped(server, w, String::new());
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
            // GET packets: all but the sets (and other commands), which pass as not_get.
            let gets = pkts - d("xdp_pass_not_get");
            row.extra.insert("xdp_get_packets".into(), json!(gets));
            for k in after.keys().filter(|k| k.starts_with("xdp_pass_")) {
                row.extra.insert(k.clone(), json!(d(k)));
            }
            if pkts > 0.0 && w.proto == Proto::Udp {
                let mut note = format!("XDP answered {:.0}% of {pkts:.0} packets", 100.0 * hits / pkts);
                if gets > 0.0 && w.has_sets() {
                    let share = hits / gets;
                    row.extra.insert("xdp_get_share".into(), json!(share));
                    note.push_str(&format!(" ({:.0}% of the GETs)", 100.0 * share));
                }
                notes.push(note);
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
                None if server.is_kv_xdp() => self.bed.server_xdp_prog_id()?,
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
        if (server.is_kv_xdp() || matches!(server, Server::Reflector | Server::KvFsync)) && w.proto == Proto::Udp {
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
        let mut cmd = ns_command(&self.bed.client_ns, &self.kv_load, a, &log)?;
        if let Some(p) = &self.pin {
            pin_command(&mut cmd, &p.client);
        }
        let child = cmd.spawn().context("starting kv-load")?;
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
