//! The testbed: a server namespace and a client namespace joined by one veth pair of several queues
//! (kv-netns, the same harness as the end-to-end tests), with the pass-through XDP program on the client's
//! veth that native XDP_TX replies need to arrive (/work/shared/TOOLCHAIN.md). Dropping [`Bed`] detaches
//! the client program and deletes both namespaces (and with them the pair).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use kv_netns::{Netns, VethPair};
use kv_user::kernel::bench::Reflector;
use kv_user::kernel::XdpMode;

use super::cpus::{set_rps, Pinning};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The prefix the servers allow UDP from.
pub const SUBNET: &str = "10.88.0.0/24";
pub const SERVER_IF: &str = "kvb-s";
pub const CLIENT_IF: &str = "kvb-c";

/// Queues per veth end in the default mode. With an XDP program attached, a veth queues arriving frames
/// in a ring of 256 per queue in front of its NAPI poll, where without one they go to the CPU's backlog
/// (`netdev_max_backlog`, 1,000): with one queue the XDP rows would drop bursts (kv-load keeps up to 512
/// requests in flight) that the user-space rows absorb. Four rings hold about what the backlog does.
/// kv-load's sockets spread over the queues; each queue's poll runs on the CPU that sent to it, as before.
const DEFAULT_QUEUES: usize = 4;

/// Dropped in field order: the client's XDP program, the pair, then the namespaces (client first).
pub struct Bed {
    _client_xdp: Reflector,
    _veth: VethPair,
    pub client_ns: Netns,
    pub server_ns: Netns,
}

impl Bed {
    /// Each end gets [`DEFAULT_QUEUES`] queues, or with `pin` (many-core mode) one per CPU of the larger
    /// side if that is more, with each end's receive work (RPS) and NAPI kthreads on its side's CPUs.
    pub fn create(pin: Option<&Pinning>) -> Result<Bed> {
        let pid = std::process::id();
        let server_ns = Netns::named(format!("kvb-s-{pid}"))?;
        let client_ns = Netns::named(format!("kvb-c-{pid}"))?;
        let (s_cidr, c_cidr) = (format!("{SERVER_IP}/24"), format!("{CLIENT_IP}/24"));
        let queues = pin.map_or(0, |p| p.server.len().max(p.client.len())).max(DEFAULT_QUEUES);
        let veth = VethPair::with_queues((SERVER_IF, CLIENT_IF), &server_ns, &client_ns, &s_cidr, &c_cidr, queues)?;
        if let Some(p) = pin {
            set_rps(&server_ns, SERVER_IF, &p.server)?;
            set_rps(&client_ns, CLIENT_IF, &p.client)?;
        }
        // Room for many connections: a wide ephemeral port range on the client, deep accept queues on
        // the server (both are per-namespace settings).
        client_ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        server_ns.sysctl("net.core.somaxconn", "65535")?;
        server_ns.sysctl("net.ipv4.tcp_max_syn_backlog", "65535")?;
        // Port 0: the reflector program passes every packet; it only has to exist on the peer.
        let client_xdp = client_ns
            .try_run(|| kv_user::kernel::bench::attach_reflector(CLIENT_IF, XdpMode::Native, 0))
            .context("attaching the pass-through XDP program to the client veth")?;
        Ok(Bed { _client_xdp: client_xdp, _veth: veth, client_ns, server_ns })
    }

    /// The XDP program id attached to the server veth, from `ip -d link show`.
    pub fn server_xdp_prog_id(&self) -> Result<Option<u32>> {
        kv_netns::xdp_prog_id(&self.server_ns, SERVER_IF)
    }
}
