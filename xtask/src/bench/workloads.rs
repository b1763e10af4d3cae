//! What the benchmark measures: the servers under test and the workloads (kv-load's settings per run,
//! and which servers each applies to).

/// kv-load's threads (both cores) for every run (the key count is `--keys`, the value size `--value-size`).
pub const THREADS: u32 = 2;
/// kv-load's default key popularity (a few hot keys, a long tail).
pub const ZIPF: f64 = 0.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Memcached,
    KvNoBpf,
    KvXdp,
    /// `--baseline`: kv-server with XDP, another build's binary (A/B runs).
    KvXdpBaseline,
    /// kv-server with XDP and persistence on (`--fsync everysec`), for the SET workload.
    KvFsync,
    /// The same without XDP: on a veth, an attached XDP program makes the driver copy every TCP packet
    /// into a page of its own, a cost a real NIC does not have and memcached's row does not pay.
    KvNoBpfFsync,
    Reflector,
    /// tcp-ceiling (kv-bench): one fixed reply per `get` line from user space, no store: the most a TCP
    /// server can do on this path, as the reflector is for UDP.
    TcpCeiling,
}

impl Server {
    /// kv-server serving UDP GET hits from XDP, without persistence (either build of an A/B run).
    pub fn is_kv_xdp(self) -> bool {
        matches!(self, Server::KvXdp | Server::KvXdpBaseline)
    }

    pub fn label(self) -> &'static str {
        match self {
            Server::Memcached => "memcached",
            Server::KvNoBpf => "kv-server(no-bpf)",
            Server::KvXdp => "kv-server(xdp)",
            Server::KvXdpBaseline => "kv-server(xdp,baseline)",
            Server::KvFsync => "kv-server(xdp,fsync)",
            Server::KvNoBpfFsync => "kv-server(no-bpf,fsync)",
            Server::Reflector => "reflector(xdp_tx)",
            Server::TcpCeiling => "tcp-ceiling",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

/// One workload: kv-load flags beyond the common ones, and which servers it applies to.
pub struct Workload {
    pub name: &'static str,
    pub proto: Proto,
    /// kv-load threads (its --conns is per thread).
    pub threads: u32,
    pub args: Vec<String>,
    /// Load the key set over TCP before the run (GET workloads).
    pub preload: bool,
    pub servers: Vec<Server>,
    /// Why the servers left out are left out.
    pub skip_note: &'static str,
    /// Open loop at half of memcached's peak on `udp-get`.
    pub open_half_mc: bool,
    /// Idle connections held during the run (C10K).
    pub idle: u32,
    /// Also measure the XDP program's own run time (separate short run, BPF statistics on).
    pub bpf_stats: bool,
    /// kv-load's `--workload etc` (per-key ETC sizes, GET:SET 30:1) instead of `--value-size`.
    pub etc: bool,
    /// TCP connections in all (threads x per-thread `--conns`) that the workload is named after.
    pub total_conns: Option<u32>,
}

impl Workload {
    /// A closed-loop run of `THREADS` threads with `a` as extra kv-load flags, preloaded, nothing else.
    pub fn new(name: &'static str, proto: Proto, a: &[&str], servers: &[Server]) -> Workload {
        Workload {
            name,
            proto,
            threads: THREADS,
            args: args(a),
            preload: true,
            servers: servers.to_vec(),
            skip_note: "",
            open_half_mc: false,
            idle: 0,
            bpf_stats: false,
            etc: false,
            total_conns: None,
        }
    }
}

impl Workload {
    /// Some requests are sets (which XDP passes as `not_get`): ETC, or a `--get-ratio` below 1.
    pub fn has_sets(&self) -> bool {
        self.etc || self.args.windows(2).any(|a| a[0] == "--get-ratio" && a[1].parse::<f64>().is_ok_and(|r| r < 1.0))
    }
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The default plan: `THREADS` kv-load threads.
#[cfg(test)]
pub fn plan(quick: bool) -> Vec<Workload> {
    plan_for(quick, THREADS)
}

/// The plan with `threads` kv-load threads where the default has `THREADS` (many-core mode: one per client
/// CPU; per-thread connections and sockets stay, so the load grows with the threads). Workloads named by a
/// connection total keep that total: the most threads, up to `threads`, that divide it evenly.
pub fn plan_for(quick: bool, threads: u32) -> Vec<Workload> {
    let mut v = default_plan(quick);
    for w in &mut v {
        if let Some(total) = w.total_conns {
            let t = (1..=threads.min(total)).rev().find(|t| total % t == 0).unwrap_or(1);
            w.threads = t;
            w.args = conns_args(&w.args, total / t);
        } else if w.threads == THREADS {
            w.threads = threads;
        }
    }
    v
}

/// `args` with its `--conns` value replaced.
fn conns_args(a: &[String], conns: u32) -> Vec<String> {
    let mut a = a.to_vec();
    if let Some(i) = a.iter().position(|x| x == "--conns") {
        a[i + 1] = conns.to_string();
    }
    a
}

fn default_plan(quick: bool) -> Vec<Workload> {
    use Server::*;
    let all = [Memcached, KvNoBpf, KvXdp, Reflector];
    let real = [Memcached, KvNoBpf, KvXdp];
    let no_reflector = "reflector: only echoes, meaningful for UDP GET only";
    let w = Workload::new;
    // kv-load's --conns is per thread: 2 threads x 4 UDP sockets x 64 requests in flight.
    let udp = ["--conns", "4", "--depth", "64"];
    let cat = |a: &[&'static str], b: &[&'static str]| -> Vec<&'static str> { a.iter().chain(b).copied().collect() };
    let mut udp_get = w("udp-get", Proto::Udp, &cat(&udp, &["--get-ratio", "1"]), &all);
    udp_get.bpf_stats = true;
    // TCP GET at depth 1 and 16 also against the fixed-reply ceiling.
    let tcp_ceiling = [Memcached, KvNoBpf, KvXdp, TcpCeiling];
    let tcp_d1 = Workload {
        skip_note: no_reflector,
        ..w("tcp-depth-1", Proto::Tcp, &["--conns", "2", "--depth", "1"], &tcp_ceiling)
    };
    // Facebook's ETC pool: per-key sizes (values 0 B to ~50 KB here), GET:SET 30:1.
    let udp_etc = Workload { etc: true, skip_note: no_reflector, ..w("udp-etc", Proto::Udp, &udp, &real) };
    if quick {
        return vec![udp_get, udp_etc, tcp_d1];
    }
    let mut v = vec![udp_get];
    for (name, extra) in [
        ("udp-get90-set10", &["--get-ratio", "0.9"][..]),
        ("udp-multiget-10", &["--get-ratio", "1", "--multiget", "10"][..]),
    ] {
        // The multiget's XDP time per packet too: it parses, looks up and assembles ten keys.
        let bpf_stats = name == "udp-multiget-10";
        v.push(Workload { skip_note: no_reflector, bpf_stats, ..w(name, Proto::Udp, &cat(&udp, extra), &real) });
    }
    v.push(udp_etc);
    v.push(tcp_d1);
    v.push(Workload {
        skip_note: no_reflector,
        ..w("tcp-depth-16", Proto::Tcp, &["--conns", "2", "--depth", "16"], &tcp_ceiling)
    });
    // Connection counts are totals: threads x per-thread conns.
    for (name, threads, a) in [
        ("tcp-conns-1", 1, &["--conns", "1", "--depth", "1"][..]),
        ("tcp-conns-50", 2, &["--conns", "25", "--depth", "1"][..]),
        ("tcp-conns-1000", 2, &["--conns", "500", "--depth", "1"][..]),
    ] {
        let total_conns = Some(threads * a[1].parse::<u32>().expect("a number"));
        v.push(Workload { skip_note: no_reflector, threads, total_conns, ..w(name, Proto::Tcp, a, &real) });
    }
    v.push(Workload {
        preload: false,
        skip_note: "kv-server: measured with persistence on (no-bpf,fsync and xdp,fsync); reflector: no SETs",
        ..w(
            "tcp-set-100",
            Proto::Tcp,
            &["--conns", "2", "--depth", "1", "--get-ratio", "0"],
            &[Memcached, KvNoBpfFsync, KvFsync],
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
            total_conns: Some(50),
            ..w(name, Proto::Tcp, &["--conns", "25", "--depth", "1"], &real)
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan as (name, servers, threads, preload): what `--quick` and the full run measure.
    fn shape(p: &[Workload]) -> Vec<(&str, usize, u32, bool)> {
        p.iter().map(|w| (w.name, w.servers.len(), w.threads, w.preload)).collect()
    }

    #[test]
    fn plans() {
        use Server::*;
        let real = [Memcached, KvNoBpf, KvXdp];
        assert_eq!(shape(&plan(true)), [("udp-get", 4, 2, true), ("udp-etc", 3, 2, true), ("tcp-depth-1", 4, 2, true)]);
        let full = plan(false);
        assert_eq!(
            shape(&full),
            [
                ("udp-get", 4, 2, true),
                ("udp-get90-set10", 3, 2, true),
                ("udp-multiget-10", 3, 2, true),
                ("udp-etc", 3, 2, true),
                ("tcp-depth-1", 4, 2, true),
                ("tcp-depth-16", 4, 2, true),
                ("tcp-conns-1", 3, 1, true),
                ("tcp-conns-50", 3, 2, true),
                ("tcp-conns-1000", 3, 2, true),
                ("tcp-set-100", 3, 2, false),
                ("udp-get-open-half-mc", 4, 2, true),
                ("tcp-c10k-idle-10k", 3, 2, true),
                ("tcp-c10k-idle-50k", 3, 2, true),
            ]
        );
        let set = full.iter().find(|w| w.name == "tcp-set-100").unwrap();
        assert_eq!(set.servers, [Server::Memcached, Server::KvNoBpfFsync, Server::KvFsync]);
        assert_eq!(
            full.iter().filter(|w| w.bpf_stats).map(|w| w.name).collect::<Vec<_>>(),
            ["udp-get", "udp-multiget-10"]
        );
        let etc: Vec<&Workload> = full.iter().filter(|w| w.etc).collect();
        assert_eq!(etc.len(), 1);
        assert_eq!((etc[0].name, etc[0].proto, &etc[0].servers[..]), ("udp-etc", Proto::Udp, &real[..]));
        assert!(!etc[0].args.iter().any(|a| a == "--get-ratio"), "ETC's own 30:1 mix");
        let ceiling: Vec<&str> =
            full.iter().filter(|w| w.servers.contains(&Server::TcpCeiling)).map(|w| w.name).collect();
        assert_eq!(ceiling, ["tcp-depth-1", "tcp-depth-16"]);
        // Many-core: threads follow the client CPUs; the connection totals stay.
        let conns = |w: &Workload| {
            w.threads * w.args[w.args.iter().position(|a| a == "--conns").unwrap() + 1].parse::<u32>().unwrap()
        };
        for (threads, w) in [(12, plan_for(false, 12)), (2, plan_for(false, 2)), (1, plan_for(false, 1))] {
            for (a, b) in w.iter().zip(&full) {
                assert_eq!(a.name, b.name);
                match b.total_conns {
                    Some(total) => assert_eq!(conns(a), total, "{} at {threads} threads", a.name),
                    None => assert_eq!(a.threads, threads, "{}", a.name),
                }
            }
            let t: Vec<u32> = w.iter().filter(|w| w.total_conns.is_some()).map(|w| w.threads).collect();
            assert_eq!(
                t,
                match threads {
                    12 => [1, 10, 10, 10, 10],
                    2 => [1, 2, 2, 2, 2],
                    _ => [1, 1, 1, 1, 1],
                }
            );
        }
        let with_sets: Vec<&str> = full.iter().filter(|w| w.has_sets()).map(|w| w.name).collect();
        assert_eq!(with_sets, ["udp-get90-set10", "udp-etc", "tcp-set-100"]);
        assert_eq!(full.iter().filter(|w| w.idle > 0).map(|w| w.idle).collect::<Vec<_>>(), [10_000, 50_000]);
    }
}
