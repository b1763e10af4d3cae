//! kv-load internals: a memcached-protocol load generator (UDP with sendmmsg/recvmmsg, pipelined TCP), closed loop
//! (peak throughput) and open loop (latency at an offered rate, measured from intended send times).

pub mod ceiling;
pub mod etc;
pub mod keys;
pub mod proto;
pub mod sched;
pub mod sys;
pub mod tcp;
pub mod udp;
pub mod zipf;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::keys::KeySpace;
use crate::proto::Outcome;
use crate::zipf::{Rng, Zipf};

/// A request not answered within this long is counted as a timeout and its slot reused (UDP).
pub const TIMEOUT_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Closed,
    Open,
}

/// Everything a load thread needs (shared read-only).
#[derive(Clone, Debug)]
pub struct Config {
    pub server: SocketAddr,
    pub mode: Mode,
    /// Total offered rate (open loop).
    pub rate: f64,
    pub threads: usize,
    pub conns: usize,
    pub depth: usize,
    pub zipf: Arc<Zipf>,
    /// Key text and value size per key index.
    pub keys: Arc<KeySpace>,
    /// Value bytes of the longest value: a set of `n` bytes sends the first `n`.
    pub value: Arc<Vec<u8>>,
    pub get_ratio: f64,
    pub multiget: usize,
    pub seed: u64,
    /// Sets of longer values are sent as gets of the same key instead (UDP: a request must fit one datagram).
    pub max_set_value: usize,
}

impl Config {
    /// Prepares the calling load thread (precise timer wake-ups for the open-loop schedule) and returns
    /// the number of streams (connections or sockets) over all threads.
    pub fn start_thread(&self) -> u64 {
        if self.mode == Mode::Open {
            crate::sys::set_min_timer_slack();
        }
        (self.threads * self.conns) as u64
    }
}

/// Run clock: all times are nanoseconds since `base`.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub base: Instant,
    /// Completions before this (warm-up) are not counted.
    pub measure_ns: u64,
    /// The run stops here.
    pub end_ns: u64,
}

impl Timing {
    pub fn in_window(&self, t_ns: u64) -> bool {
        t_ns >= self.measure_ns && t_ns < self.end_ns
    }

    /// The time now, or None once the run is over (its end reached, or a stop requested).
    pub fn tick(&self, shared: &Shared) -> Option<u64> {
        let now = crate::sys::now_ns(self.base);
        (now < self.end_ns && !shared.stop.load(std::sync::atomic::Ordering::Relaxed)).then_some(now)
    }
}

/// Live counters for the progress line, and a stop flag.
#[derive(Debug, Default)]
pub struct Shared {
    /// Completions so far, warm-up included.
    pub completed: AtomicU64,
    /// Timeouts inside the measurement window.
    pub timeouts: AtomicU64,
    pub stop: AtomicBool,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// Per-thread results, merged at the end.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency in microseconds.
    pub hist: Histogram<u64>,
    /// Open loop: how far behind its intended time each request was actually sent, in microseconds (diagnostic: a
    /// generator that cannot keep up shows here, not as lower latency).
    pub lag: Histogram<u64>,
    pub requests: u64,
    /// Keys asked for or written by the counted requests (a multiget of K counts K).
    pub keys: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub misses: u64,
    pub hits: u64,
    pub other: u64,
    /// Diagnostics (stderr only): datagrams that matched no outstanding request, send errors.
    pub stray: u64,
    pub send_errors: u64,
    /// Sets turned into gets because their value was over `Config::max_set_value`.
    pub oversize_sets: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_histogram(),
            lag: new_histogram(),
            requests: 0,
            keys: 0,
            timeouts: 0,
            errors: 0,
            misses: 0,
            hits: 0,
            other: 0,
            stray: 0,
            send_errors: 0,
            oversize_sets: 0,
        }
    }
}

impl Stats {
    /// Count one completed request if it completed inside the measurement window.
    pub fn record(
        &mut self,
        timing: &Timing,
        outcome: Outcome,
        is_get: bool,
        nkeys: u32,
        intended_ns: u64,
        done_ns: u64,
    ) {
        if !timing.in_window(done_ns) {
            return;
        }
        self.requests += 1;
        self.keys += nkeys as u64;
        let us = (done_ns.saturating_sub(intended_ns) / 1000).max(1);
        self.hist.saturating_record(us);
        match (outcome, is_get) {
            (Outcome::Error, _) => self.errors += 1,
            (Outcome::Hit, true) => self.hits += 1,
            (Outcome::Miss, true) => self.misses += 1,
            (Outcome::Stored, false) => {}
            _ => self.other += 1,
        }
    }

    /// Open loop: note a request sent at `sent_ns` that was intended for `intended_ns`.
    pub fn record_lag(&mut self, timing: &Timing, intended_ns: u64, sent_ns: u64) {
        if timing.in_window(sent_ns) {
            self.lag.saturating_record(sent_ns.saturating_sub(intended_ns) / 1000);
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.lag.add(&o.lag).expect("same histogram bounds");
        self.requests += o.requests;
        self.keys += o.keys;
        self.timeouts += o.timeouts;
        self.errors += o.errors;
        self.misses += o.misses;
        self.hits += o.hits;
        self.other += o.other;
        self.stray += o.stray;
        self.send_errors += o.send_errors;
        self.oversize_sets += o.oversize_sets;
    }
}

/// Draws operations and keys and writes request bytes.
#[derive(Clone, Debug)]
pub struct ReqGen {
    rng: Rng,
    zipf: Arc<Zipf>,
    keys: Arc<KeySpace>,
    value: Arc<Vec<u8>>,
    get_ratio: f64,
    multiget: usize,
    max_set_value: usize,
    ranks: Vec<u64>,
    /// Sets sent as gets (value over `max_set_value`).
    pub oversize_sets: u64,
}

impl ReqGen {
    pub fn new(cfg: &Config, stream_seed: u64) -> Self {
        ReqGen {
            rng: Rng::new(cfg.seed ^ stream_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            zipf: cfg.zipf.clone(),
            keys: cfg.keys.clone(),
            value: cfg.value.clone(),
            get_ratio: cfg.get_ratio,
            multiget: cfg.multiget,
            max_set_value: cfg.max_set_value,
            ranks: Vec::with_capacity(cfg.multiget),
            oversize_sets: 0,
        }
    }

    /// Append one request to `out`; returns (is_get, keys in it).
    pub fn next(&mut self, out: &mut Vec<u8>) -> (bool, u32) {
        let is_get = self.get_ratio >= 1.0 || self.rng.next_f64() < self.get_ratio;
        if !is_get {
            let r = self.zipf.sample(&mut self.rng);
            let len = self.keys.value_len(r);
            if len <= self.max_set_value {
                proto::build_set_in(out, &self.keys, r, &self.value[..len]);
                return (false, 1);
            }
            self.oversize_sets += 1;
            proto::build_get_in(out, &self.keys, &[r]);
            return (true, 1);
        }
        self.ranks.clear();
        for _ in 0..self.multiget {
            let r = self.zipf.sample(&mut self.rng);
            self.ranks.push(r);
        }
        proto::build_get_in(out, &self.keys, &self.ranks);
        (true, self.multiget as u32)
    }

    /// Largest request this generator can produce, in bytes.
    pub fn max_request_len(keys: &KeySpace, multiget: usize, max_set_value: usize) -> usize {
        let key = keys.max_key_len();
        let get = proto::get_len(key, multiget);
        // Longer sets go out as single-key gets, which the multiget bound covers.
        let set = proto::set_len(key, keys.max_value_len().min(max_set_value));
        get.max(set)
    }
}

pub fn value_bytes(size: usize) -> Vec<u8> {
    (0..size).map(proto::value_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(get_ratio: f64, multiget: usize) -> Config {
        Config {
            server: "127.0.0.1:1".parse().unwrap(),
            mode: Mode::Closed,
            rate: 0.0,
            threads: 1,
            conns: 1,
            depth: 1,
            zipf: Arc::new(Zipf::new(1000, 0.99)),
            keys: Arc::new(KeySpace::fixed(1000, 100)),
            value: Arc::new(value_bytes(100)),
            get_ratio,
            multiget,
            seed: 1,
            max_set_value: usize::MAX,
        }
    }

    #[test]
    fn reqgen_mix_and_max_len() {
        let c = cfg(0.9, 3);
        let mut g = ReqGen::new(&c, 0);
        let max = ReqGen::max_request_len(&c.keys, 3, usize::MAX);
        let mut gets = 0;
        for _ in 0..10_000 {
            let mut out = Vec::new();
            let (is_get, n) = g.next(&mut out);
            assert!(out.len() <= max, "{} > {max}", out.len());
            if is_get {
                gets += 1;
                assert_eq!(n, 3);
                assert!(out.starts_with(b"get key:"));
            } else {
                assert!(out.starts_with(b"set key:"));
            }
        }
        assert!((8_700..9_300).contains(&gets), "{gets}");
        // The worst case is reached exactly.
        let mut out = Vec::new();
        proto::build_set(&mut out, 999, &c.value);
        assert_eq!(out.len(), max);
    }

    #[test]
    fn etc_sets_write_each_keys_own_size_and_oversize_sets_become_gets() {
        let mut c = cfg(0.5, 1);
        let ks = KeySpace::etc(1000, 7);
        c.value = Arc::new(value_bytes(ks.max_value_len()));
        c.keys = Arc::new(ks.clone());
        let limit = 200;
        c.max_set_value = limit;
        let mut g = ReqGen::new(&c, 3);
        let max = ReqGen::max_request_len(&ks, 1, limit);
        let (mut sets, mut gets) = (0, 0);
        for _ in 0..5_000 {
            let mut out = Vec::new();
            let (is_get, n) = g.next(&mut out);
            assert_eq!(n, 1);
            assert!(out.len() <= max);
            let line_end = out.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = std::str::from_utf8(&out[..line_end]).unwrap();
            let f: Vec<&str> = line.split(' ').collect();
            let i = (0..1000).find(|&i| {
                let mut k = Vec::new();
                ks.write_key(&mut k, i);
                k == f[1].as_bytes()
            });
            let i = i.expect("a key of the key space");
            if is_get {
                gets += 1;
                assert_eq!(f[0], "get");
            } else {
                sets += 1;
                assert_eq!(f[0], "set");
                let len: usize = f[4].parse().unwrap();
                assert_eq!(len, ks.value_len(i));
                assert!(len <= limit);
                assert_eq!(out.len(), line_end + 2 + len + 2);
            }
        }
        assert!(sets > 1_000 && gets > 2_000, "{sets} {gets}");
        assert!(g.oversize_sets > 0 && g.oversize_sets + sets + gets >= 5_000);
    }

    #[test]
    fn record_counts_only_inside_window() {
        let t = Timing { base: Instant::now(), measure_ns: 1000, end_ns: 2000 };
        let mut s = Stats::default();
        s.record(&t, Outcome::Hit, true, 1, 0, 999);
        s.record(&t, Outcome::Hit, true, 2, 0, 1000);
        s.record(&t, Outcome::Miss, true, 1, 0, 1500);
        s.record(&t, Outcome::Stored, false, 1, 0, 1500);
        s.record(&t, Outcome::Error, false, 1, 0, 1500);
        s.record(&t, Outcome::Other, true, 1, 0, 1999);
        s.record(&t, Outcome::Hit, true, 1, 0, 2000);
        assert_eq!((s.requests, s.keys, s.hits, s.misses, s.errors, s.other), (5, 6, 1, 1, 1, 1));
    }
}
