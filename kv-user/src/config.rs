//! Command-line configuration. Flag names follow memcached's where memcached has one.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// When the append-only log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncPolicy {
    /// fsync before every reply to a write (group commit: concurrent writers share one fsync).
    Always,
    /// fsync in the background once a second.
    Everysec,
    /// Leave it to the OS.
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpMode {
    Native,
    Generic,
}

/// memcached-compatible key-value cache with an in-kernel (XDP) GET path.
#[derive(Debug, Clone, Parser)]
#[command(name = "kv-server", version, about)]
pub struct Config {
    /// TCP port to listen on (0 = off).
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    pub port: u16,
    /// UDP port to listen on (0 = off).
    #[arg(short = 'U', long = "udp-port", default_value_t = 11211)]
    pub udp_port: u16,
    /// Interface address to listen on.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// Item memory in megabytes.
    #[arg(short = 'm', long = "memory-limit", default_value_t = 64)]
    pub memory_limit_mb: u64,
    /// Max simultaneous connections.
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    pub max_connections: usize,
    /// Number of worker threads.
    #[arg(short = 't', long = "threads", default_value_t = 4)]
    pub threads: usize,
    /// Max item size (e.g. 1m, 512k, 2097152). Minimum 1k, maximum 1g.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size)]
    pub item_size_max: usize,
    /// Verbosity (-v, -vv).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Directory for the append-only log.
    #[arg(long = "data-dir", default_value = "kv-data")]
    pub data_dir: PathBuf,
    /// When to fsync the log.
    #[arg(long = "fsync", value_enum, default_value_t = FsyncPolicy::Everysec)]
    pub fsync: FsyncPolicy,
    /// Keep everything in memory only.
    #[arg(long = "no-persist")]
    pub no_persist: bool,
    /// Do not load the XDP program; serve everything from user space.
    #[arg(long = "no-bpf")]
    pub no_bpf: bool,
    /// Interface to attach the XDP program to.
    #[arg(long = "iface", default_value = "lo")]
    pub iface: String,
    /// XDP attach mode (lo only supports generic).
    #[arg(long = "xdp-mode", value_enum, default_value_t = XdpMode::Generic)]
    pub xdp_mode: XdpMode,
    /// Slots of the kernel cache (direct-mapped by key hash, rounded up to a power of two; about 1.7 KB each).
    #[arg(long = "kcache-entries", default_value_t = 16384)]
    pub kcache_entries: u32,
    /// Largest value the kernel answers for; larger ones are served by user space.
    /// The default keeps a 1-key reply within a 1500-byte MTU.
    #[arg(long = "kcache-value-max", default_value_t = 1024)]
    pub kcache_value_max: usize,
    /// User-space GET hits on an item before it is admitted to the kernel cache.
    #[arg(long = "kcache-admit-hits", default_value_t = 2)]
    pub kcache_admit_hits: u32,
    /// IPv4 source prefixes (CIDR) whose UDP requests are answered, by the kernel and by user space
    /// (amplification guard). Loopback (127.0.0.0/8, ::1) is always allowed. Repeatable.
    #[arg(long = "udp-allow", value_parser = parse_cidr)]
    pub udp_allow: Vec<Cidr>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9150). Off by default.
    #[arg(long = "metrics-addr", value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::Ipv4Addr,
    pub prefix: u32,
}

impl Cidr {
    pub const LOOPBACK: Cidr = Cidr { addr: std::net::Ipv4Addr::new(127, 0, 0, 0), prefix: 8 };

    pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// Parses `a.b.c.d/n` (or a bare address, /32).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = s.split_once('/').unwrap_or((s, "32"));
    let addr: std::net::Ipv4Addr = a.parse().map_err(|_| format!("invalid IPv4 address in {s}"))?;
    let prefix: u32 = p.parse().map_err(|_| format!("invalid prefix length in {s}"))?;
    if prefix > 32 {
        return Err(format!("prefix length over 32 in {s}"));
    }
    Ok(Cidr { addr, prefix })
}

impl Config {
    /// The UDP allowlist: loopback plus `--udp-allow`.
    pub fn udp_allowlist(&self) -> Vec<Cidr> {
        std::iter::once(Cidr::LOOPBACK).chain(self.udp_allow.iter().copied()).collect()
    }
}

/// Whether UDP from `ip` may be answered under `allow` (from [`Config::udp_allowlist`]).
pub fn udp_allowed(allow: &[Cidr], ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => allow.iter().any(|c| c.contains(v4)),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| allow.iter().any(|c| c.contains(v4)))
        }
    }
}

/// Parses memcached-style sizes: plain bytes or with a k/m/g suffix.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1usize << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|_| format!("invalid size: {s}"))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("size too large: {s}"))?;
    if !(1024..=(1 << 30)).contains(&bytes) {
        return Err(format!("item size must be between 1k and 1g, got {s}"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        assert!(parse_size("12").is_err());
        assert!(parse_size("2g").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert_eq!(parse_cidr("10.0.0.7").unwrap().prefix, 32);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
        let allow = Config::parse_from(["kv-server", "--udp-allow", "10.77.0.0/16"]).udp_allowlist();
        assert!(udp_allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(udp_allowed(&allow, "::1".parse().unwrap()));
        assert!(udp_allowed(&allow, "10.77.3.2".parse().unwrap()));
        assert!(!udp_allowed(&allow, "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn defaults_match_memcached() {
        let c = Config::parse_from(["kv-server"]);
        assert_eq!((c.port, c.udp_port, c.memory_limit_mb, c.max_connections), (11211, 11211, 64, 1024));
        assert_eq!(c.item_size_max, 1 << 20);
    }
}
