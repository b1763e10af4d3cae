//! The memory rows (issue 11), memcached and kv-server (user space) side by side: RSS per item, RSS after
//! overfilling `-m`, hit ratio at equal `-m`, RSS per idle connection, and RSS under stalled uploads.
//! Each server listens on loopback inside the server namespace, started fresh for each measurement; the
//! client (`client`) runs on a thread in that namespace. `report` writes the tables, JSON and chart.
//! Method: docs/bench.md, "Memory".

pub mod client;
pub mod report;

use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use kv_bench::zipf::{Rng, Zipf};

use super::procs::{self, check_interrupted, Proc};
use super::workloads::{args, Server, THREADS, ZIPF};
use super::{Ctx, PORT};

const SERVERS: [Server; 2] = [Server::Memcached, Server::KvNoBpf];
const ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT));
/// Value size of the overfill and hit-ratio runs.
const SMALL: usize = 32;
/// Connections the client loads over (one per server thread).
const CONNS: u64 = THREADS as u64;
/// The stalled-upload attack: connections, announced value size, bytes sent before stalling, `-m`.
const STALL: (usize, usize, usize, u64) = (500, 1_040_000, 1_039_000, 64);
/// Gets per round trip of the cache-aside client.
const HIT_DEPTH: usize = 64;

/// Sizes of the memory rows: the full run's, or `--quick`'s (a smoke run).
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Items loaded for RSS per item, once per value size.
    pub items: u64,
    pub value_sizes: Vec<usize>,
    /// Overfill runs: (`-m`, sets of 32-byte values, all distinct keys).
    pub overfill: Vec<(u64, u64)>,
    pub hit: HitPlan,
    /// Idle connections held.
    pub idle: usize,
}

/// Hit ratio at equal memory: `-m`, key space (~10x what fits), gets per connection (the first half
/// warms the cache, the second half is counted).
#[derive(Debug, PartialEq)]
pub struct HitPlan {
    pub m: u64,
    pub keys: u64,
    pub gets: u64,
}

pub fn plan(quick: bool) -> Plan {
    if quick {
        return Plan {
            items: 100_000,
            value_sizes: vec![32, 512],
            overfill: vec![(64, 1_000_000)],
            hit: HitPlan { m: 8, keys: 800_000, gets: 500_000 },
            idle: 2_000,
        };
    }
    Plan {
        items: 1_000_000,
        value_sizes: vec![32, 512],
        overfill: vec![(64, 2_000_000), (1024, 20_000_000)],
        hit: HitPlan { m: 64, keys: 6_400_000, gets: 3_000_000 },
        idle: 10_000,
    }
}

/// The RSS bound for `-m` megabytes: 1.1 × m + 16 MB.
pub fn bound_mb(m: u64) -> f64 {
    1.1 * m as f64 + 16.0
}

/// RSS growth from loading `items` values of `value_size` bytes into an empty server (`-m 4096`).
#[derive(Debug, Clone)]
pub struct Items {
    pub server: Server,
    pub value_size: usize,
    pub items: u64,
    pub curr_items: u64,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
}

/// A server's state after `sets` distinct 32-byte sets into `-m m`.
#[derive(Debug, Clone)]
pub struct Overfill {
    pub server: Server,
    pub m: u64,
    pub sets: u64,
    pub rss_kb: u64,
    pub peak_kb: u64,
    pub curr_items: u64,
    pub evictions: u64,
    /// Reply lines other than the batches' `VERSION` (errors to noreply sets).
    pub errors: u64,
}

/// A cache-aside client's hit ratio (second half of its gets) at `-m m` over `keys` Zipf keys.
#[derive(Debug, Clone)]
pub struct Hit {
    pub server: Server,
    pub m: u64,
    pub keys: u64,
    /// Gets sent in all (warm-up included).
    pub gets: u64,
    pub count: client::HitCount,
    pub curr_items: u64,
    pub evictions: u64,
}

/// RSS growth from `conns` idle connections.
#[derive(Debug, Clone)]
pub struct Idle {
    pub server: Server,
    pub conns: usize,
    pub rss_before_kb: u64,
    /// Right after they are all open.
    pub rss_open_kb: u64,
    /// After they have been idle for [`IDLE_FOR`] (kv-server parks a connection that never spoke after 2 s).
    pub rss_after_kb: u64,
}

/// How long the idle connections stay silent before RSS is read again.
pub const IDLE_FOR: Duration = Duration::from_secs(3);

/// RSS while stalled uploads hang and after they close.
#[derive(Debug, Clone)]
pub struct Stall {
    pub server: Server,
    pub conns: usize,
    pub m: u64,
    /// Value bytes the server took in, connections that sent all they meant to, and connections the
    /// server closed.
    pub sent: u64,
    pub complete: usize,
    pub closed: usize,
    pub rss_before_kb: u64,
    pub rss_hang_kb: u64,
    pub peak_kb: u64,
    pub rss_closed_kb: u64,
}

#[derive(Debug, Default)]
pub struct Results {
    pub items: Vec<Items>,
    pub overfill: Vec<Overfill>,
    pub hit: Vec<Hit>,
    pub idle: Vec<Idle>,
    pub stall: Vec<Stall>,
}

impl Ctx {
    pub(super) fn run_memory(&mut self) -> Result<()> {
        let started = Instant::now();
        let p = plan(self.opts.quick);
        // This process holds the idle connections and the stalled uploads.
        kv_bench::sys::raise_nofile(p.idle as u64 + STALL.0 as u64 + 100);
        let total = SERVERS.len() * (p.value_sizes.len() + p.overfill.len() + 3);
        eprintln!("bench: memory: {total} runs, servers on 127.0.0.1:{PORT} in {}", self.bed.server_ns.name);
        let mut step = 0;
        let mut head = |server: Server, what: &str| {
            step += 1;
            format!("[memory {step}/{total}] {} {what}", server.label())
        };
        for &size in &p.value_sizes {
            for s in SERVERS {
                let h = head(s, &format!("rss-per-item {size} B"));
                self.memory.items.push(self.mem_items(&h, s, p.items, size).context(h)?);
            }
        }
        for &(m, sets) in &p.overfill {
            for s in SERVERS {
                let h = head(s, &format!("overfill -m {m}"));
                self.memory.overfill.push(self.mem_overfill(&h, s, m, sets).context(h)?);
            }
        }
        let seqs = sequences(&p.hit);
        for s in SERVERS {
            let h = head(s, &format!("hit-ratio -m {}", p.hit.m));
            self.memory.hit.push(self.mem_hit(&h, s, &p.hit, &seqs).context(h)?);
        }
        for s in SERVERS {
            let h = head(s, &format!("idle-conns {}", p.idle));
            self.memory.idle.push(self.mem_idle(&h, s, p.idle).context(h)?);
        }
        for s in SERVERS {
            let h = head(s, &format!("stalled-uploads {}", STALL.0));
            self.memory.stall.push(self.mem_stall(&h, s).context(h)?);
        }
        eprintln!("bench: memory rows took {:.0} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    fn mem_items(&self, head: &str, server: Server, n: u64, size: usize) -> Result<Items> {
        let started = Instant::now();
        let (_p, pid) = self.mem_server(server, 4096, None, &tag(server, &format!("items-{size}")))?;
        let rss_before_kb = settled_rss(pid)?;
        let errors = self.fill(head, n, size)?;
        let curr_items = self.stat("curr_items")?;
        let rss_after_kb = settled_rss(pid)?;
        let r = Items { server, value_size: size, items: n, curr_items, rss_before_kb, rss_after_kb };
        let per = report::bytes_per_item(&r);
        let note =
            if curr_items != n { format!(" (holds {curr_items} of {n}, {errors} errors)") } else { String::new() };
        done(head, started, &format!("{per:.0} B/item, {:.0} items/MB{note}", report::per_mb(per)));
        Ok(r)
    }

    fn mem_overfill(&self, head: &str, server: Server, m: u64, sets: u64) -> Result<Overfill> {
        let started = Instant::now();
        let (_p, pid) = self.mem_server(server, m, None, &tag(server, &format!("overfill-{m}")))?;
        let errors = self.fill(head, sets, SMALL)?;
        let rss_kb = settled_rss(pid)?;
        let (curr_items, evictions) = (self.stat("curr_items")?, self.stat("evictions")?);
        let peak_kb = procs::status_kb(pid, "VmHWM:").unwrap_or(rss_kb);
        let bound = bound_mb(m);
        let verdict = if rss_kb as f64 / 1024.0 <= bound { "within" } else { "over" };
        done(
            head,
            started,
            &format!(
                "RSS {:.1} MB ({verdict} {bound:.1}), {curr_items} items, {evictions} evictions",
                rss_kb as f64 / 1024.0
            ),
        );
        Ok(Overfill { server, m, sets, rss_kb, peak_kb, curr_items, evictions, errors })
    }

    fn mem_hit(&self, head: &str, server: Server, h: &HitPlan, seqs: &[Vec<u32>]) -> Result<Hit> {
        let started = Instant::now();
        let (_p, _pid) = self.mem_server(server, h.m, None, &tag(server, "hit-ratio"))?;
        let value = kv_bench::value_bytes(SMALL);
        let total = seqs.iter().map(|s| s.len() as u64).sum();
        let counts = with_progress(head, total, |done| {
            self.in_ns(|| {
                std::thread::scope(|sc| {
                    let hs: Vec<_> = seqs
                        .iter()
                        .map(|seq| sc.spawn(|| client::cache_aside(ADDR, seq, seq.len() / 2, &value, HIT_DEPTH, done)))
                        .collect();
                    hs.into_iter().map(|t| t.join().expect("cache-aside thread panicked")).collect::<Result<Vec<_>>>()
                })
            })
        })?;
        let mut count = client::HitCount::default();
        for c in counts {
            (count.gets, count.hits, count.errors) =
                (count.gets + c.gets, count.hits + c.hits, count.errors + c.errors);
        }
        let (curr_items, evictions) = (self.stat("curr_items")?, self.stat("evictions")?);
        let ratio = count.hits as f64 / count.gets.max(1) as f64;
        done(head, started, &format!("hit ratio {:.1}% ({curr_items} items held at the end)", 100.0 * ratio));
        Ok(Hit { server, m: h.m, keys: h.keys, gets: total, count, curr_items, evictions })
    }

    fn mem_idle(&self, head: &str, server: Server, n: usize) -> Result<Idle> {
        let started = Instant::now();
        let (_p, pid) = self.mem_server(server, 64, Some(self.conn_limit), &tag(server, "idle"))?;
        let rss_before_kb = settled_rss(pid)?;
        let conns = self.in_ns(|| client::open_idle(ADDR, n))?;
        self.wait_stat(head, "curr_connections", |c| c >= n as u64)?;
        let rss_open_kb = settled_rss(pid)?;
        std::thread::sleep(IDLE_FOR);
        let rss_after_kb = settled_rss(pid)?;
        kv_bench::tcp::close_abortively(conns);
        let r = Idle { server, conns: n, rss_before_kb, rss_open_kb, rss_after_kb };
        done(head, started, &format!("{:.0} B of RSS per idle connection", report::bytes_per_conn(&r)));
        Ok(r)
    }

    fn mem_stall(&self, head: &str, server: Server) -> Result<Stall> {
        let started = Instant::now();
        let (n, announce, send, m) = STALL;
        let (mut p, pid) = self.mem_server(server, m, None, &tag(server, "stall"))?;
        let rss_before_kb = settled_rss(pid)?;
        let st = self.in_ns(|| client::stall(ADDR, n, announce, send))?;
        let rss_hang_kb = settled_rss(pid)?;
        let peak_kb = procs::status_kb(pid, "VmHWM:").unwrap_or(rss_hang_kb);
        drop(st.conns);
        // Wait until the server has seen the connections go (a few may stay counted: listeners, ours).
        self.wait_stat(head, "curr_connections", |c| c < 50)?;
        let rss_closed_kb = settled_rss(pid)?;
        if !p.alive() {
            bail!("the server died (see {})", self.logs.display());
        }
        let r = Stall {
            server,
            conns: n,
            m,
            sent: st.sent,
            complete: st.complete,
            closed: st.closed,
            rss_before_kb,
            rss_hang_kb,
            peak_kb,
            rss_closed_kb,
        };
        let mb = |kb: u64| kb as f64 / 1024.0;
        done(
            head,
            started,
            &format!(
                "RSS {:.1} MB hanging (peak {:.1}), {:.1} MB after close; bound {:.1}",
                mb(rss_hang_kb),
                mb(peak_kb),
                mb(rss_closed_kb),
                bound_mb(m)
            ),
        );
        Ok(r)
    }

    /// Starts `server` on loopback with `-t 2 -m <m>` (and `-c` if given); returns it and its pid.
    fn mem_server(&self, server: Server, m: u64, conns: Option<u64>, tag: &str) -> Result<(Proc, u32)> {
        check_interrupted()?;
        let (port, threads, m) = (PORT.to_string(), THREADS.to_string(), m.to_string());
        let mut a = args(&["-l", "127.0.0.1", "-p", &port, "-U", "0", "-t", &threads, "-m", &m]);
        if let Some(c) = conns {
            a.extend(args(&["-c", &c.to_string()]));
        }
        let bin = if server == Server::Memcached {
            a.splice(0..0, args(&["-u", "root"]));
            PathBuf::from("memcached")
        } else {
            a.extend(args(&["--no-bpf", "--no-persist"]));
            self.release.join("kv-server")
        };
        let ready = || self.in_ns(|| client::request(ADDR, b"version\r\n", b"\r\n")).is_ok();
        let p = self.spawn_server(server, &bin, &a, tag, ready)?;
        let pid = p.pid();
        Ok((p, pid))
    }

    /// Runs `f` on a thread in the server namespace, where the servers' loopback is.
    fn in_ns<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.bed.server_ns.try_run(f)
    }

    /// `key:0 .. key:<n-1>` with `size`-byte values, over `CONNS` connections; returns error replies.
    fn fill(&self, head: &str, n: u64, size: usize) -> Result<u64> {
        let value = kv_bench::value_bytes(size);
        with_progress(head, n, |done| self.in_ns(|| client::fill(ADDR, n, &value, CONNS, done)))
    }

    fn stat(&self, key: &str) -> Result<u64> {
        let s = self.in_ns(|| client::stats(ADDR))?;
        s.get(key).copied().with_context(|| format!("the server's stats have no {key}"))
    }

    /// Polls `stats` until `key` satisfies `ok`; after 10 s says so and goes on (the RSS reading that
    /// follows is still worth having).
    fn wait_stat(&self, head: &str, key: &str, ok: impl Fn(u64) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.stat(key)?;
            if ok(v) {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!("{head}: warning: stats {key} still {v} after 10 s; reading RSS anyway");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tag(server: Server, what: &str) -> String {
    format!("mem-{}-{what}", server.label().replace(['(', ')', ','], "_"))
}

/// The cache-aside clients' key sequences, one per connection (seeded, the same for every server).
fn sequences(h: &HitPlan) -> Vec<Vec<u32>> {
    let zipf = Zipf::new(h.keys, ZIPF);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..CONNS)
            .map(|c| {
                let zipf = &zipf;
                s.spawn(move || {
                    let mut rng = Rng::new(1 + c);
                    (0..h.gets).map(|_| zipf.sample(&mut rng) as u32).collect()
                })
            })
            .collect();
        hs.into_iter().map(|t| t.join().expect("sampler panicked")).collect()
    })
}

/// VmRSS once it has stopped moving (two reads 250 ms apart within 256 kB; 5 s at most): freed
/// memory and background work (memcached's hash table expansion) land before the reading.
fn settled_rss(pid: u32) -> Result<u64> {
    let read = || procs::rss_kb(pid).context("the server is gone");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = read()?;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = read()?;
        if now.abs_diff(last) <= 256 || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Runs `f` with a counter it advances (out of `total`); on a terminal, shows the percentage meanwhile.
fn with_progress<T>(head: &str, total: u64, f: impl FnOnce(&AtomicU64) -> Result<T>) -> Result<T> {
    let (done, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let tty = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        if tty {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let pct = 100.0 * done.load(Ordering::Relaxed) as f64 / total.max(1) as f64;
                    eprint!("\r\x1b[K{head} ... {pct:.0}%");
                    std::thread::sleep(Duration::from_millis(250));
                }
                eprint!("\r\x1b[K");
            });
        }
        let r = f(&done);
        stop.store(true, Ordering::Relaxed);
        r
    })
}

/// The closing progress line of a step, with how long it took.
fn done(head: &str, started: Instant, msg: &str) {
    eprintln!("{head} ... {msg} [{:.1} s]", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_overfill_and_bound() {
        let full = plan(false);
        // The cases: 1M items, -m 64 with 2M sets, -m 1024 overfilled.
        assert_eq!((full.items, full.overfill[0]), (1_000_000, (64, 2_000_000)));
        assert_eq!(full.overfill[1].0, 1024);
        // ~10x more keys than fit (about 100 bytes an item) at each -m.
        for h in [&full.hit, &plan(true).hit] {
            assert_eq!(h.keys, h.m * 100_000);
        }
        assert!((bound_mb(64) - 86.4).abs() < 1e-9);
    }
}
