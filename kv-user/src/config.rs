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
    fn defaults_match_memcached() {
        let c = Config::parse_from(["kv-server"]);
        assert_eq!((c.port, c.udp_port, c.memory_limit_mb, c.max_connections), (11211, 11211, 64, 1024));
        assert_eq!(c.item_size_max, 1 << 20);
    }
}
