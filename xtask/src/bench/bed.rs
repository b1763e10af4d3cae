//! The testbed: a server namespace and a client namespace joined by one veth pair (kv-netns, the same
//! harness as the end-to-end tests), with the pass-through XDP program on the client's veth that native
//! XDP_TX replies need to arrive (/work/shared/TOOLCHAIN.md). Dropping [`Bed`] detaches the client
//! program and deletes both namespaces (and with them the pair).

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

/// Dropped in field order: the client's XDP program, the pair, then the namespaces (client first).
pub struct Bed {
    _client_xdp: Reflector,
    _veth: Option<VethPair>,
    pub client_ns: Netns,
    pub server_ns: Netns,
}

impl Bed {
    /// With `pin` (many-core mode), the pair has one queue per CPU of the larger side, and each end's
    /// receive work (RPS) and NAPI kthreads are on its side's CPUs.
    pub fn create(pin: Option<&Pinning>) -> Result<Bed> {
        let pid = std::process::id();
        let server_ns = Netns::named(format!("kvb-s-{pid}"))?;
        let client_ns = Netns::named(format!("kvb-c-{pid}"))?;
        let (s_cidr, c_cidr) = (format!("{SERVER_IP}/24"), format!("{CLIENT_IP}/24"));
        let veth = match pin {
            None => Some(VethPair::with_names((SERVER_IF, CLIENT_IF), &server_ns, &client_ns, &s_cidr, &c_cidr)?),
            Some(p) => {
                // kv-netns makes single-queue pairs; one queue per CPU lets the packet work spread. Deleting
                // the namespaces deletes this pair.
                let q = p.server.len().max(p.client.len()).to_string();
                let (sn, cn) = (server_ns.name.as_str(), client_ns.name.as_str());
                let qs = ["numtxqueues", &q, "numrxqueues", &q];
                let mut a = vec!["link", "add", SERVER_IF];
                a.extend(qs);
                a.extend(["netns", sn, "type", "veth", "peer", "name", CLIENT_IF]);
                a.extend(qs);
                a.extend(["netns", cn]);
                kv_netns::ip(&a)?;
                server_ns.ip(&["addr", "add", &s_cidr, "dev", SERVER_IF])?;
                client_ns.ip(&["addr", "add", &c_cidr, "dev", CLIENT_IF])?;
                server_ns.ip(&["link", "set", SERVER_IF, "up"])?;
                client_ns.ip(&["link", "set", CLIENT_IF, "up"])?;
                set_rps(&server_ns, SERVER_IF, &p.server)?;
                set_rps(&client_ns, CLIENT_IF, &p.client)?;
                None
            }
        };
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
