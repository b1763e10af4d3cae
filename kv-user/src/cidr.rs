//! IP prefixes (CIDR) for the UDP allowlist (`--udp-allow`).

use std::net::IpAddr;

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u32,
}

impl Cidr {
    pub const LOOPBACK: Cidr = Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 };
    pub const LOOPBACK6: Cidr = Cidr { addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), prefix: 128 };

    /// Whether `ip` is in the prefix; an IPv4-mapped IPv6 address (a dual-stack socket's view of an
    /// IPv4 client) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Parses `a.b.c.d/n` or `x:y::z/n` (a bare address: the whole address).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
    let addr: IpAddr = a.parse().map_err(|_| format!("invalid IP address in {s}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u32 = match p {
        Some(p) => p.parse().map_err(|_| format!("invalid prefix length in {s}"))?,
        None => max,
    };
    if prefix > max {
        return Err(format!("prefix length over {max} in {s}"));
    }
    Ok(Cidr { addr, prefix })
}

/// Whether UDP from `ip` may be answered under `allow` (from [`crate::config::Config::udp_allowlist`]).
pub fn udp_allowed(allow: &[Cidr], ip: std::net::IpAddr) -> bool {
    allow.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::Parser as _;

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
        // IPv6 prefixes, and IPv4 clients seen through a dual-stack socket.
        let allow = Config::parse_from(["kv-server", "--udp-allow", "fd00:77::/32", "--udp-allow", "10.0.0.0/8"])
            .udp_allowlist();
        assert!(udp_allowed(&allow, "fd00:77:1::5".parse().unwrap()));
        assert!(!udp_allowed(&allow, "fd00:78::5".parse().unwrap()));
        assert!(udp_allowed(&allow, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!udp_allowed(&allow, "::2".parse().unwrap()));
        assert_eq!(parse_cidr("fd00::1").unwrap().prefix, 128);
        assert!(parse_cidr("fd00::/129").is_err());
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(parse_cidr("::/0").unwrap().contains("fd00::1".parse().unwrap()));
    }
}
