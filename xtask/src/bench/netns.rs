//! The testbed: a server namespace and a client namespace joined by one veth pair, with the
//! pass-through XDP program on the client's veth that native XDP_TX replies need to arrive
//! (/work/shared/TOOLCHAIN.md). Same approach as tests/src/netns.rs, reduced to what the benchmark uses.
//! Dropping [`Bed`] detaches the client program and deletes both namespaces (and with them the pair).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use kv_user::kernel::bench::Reflector;
use kv_user::kernel::XdpMode;

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The prefix the servers allow UDP from.
pub const SUBNET: &str = "10.88.0.0/24";
pub const SERVER_IF: &str = "kvb-s";
pub const CLIENT_IF: &str = "kvb-c";

pub struct Bed {
    pub server_ns: String,
    pub client_ns: String,
    client_xdp: Option<Reflector>,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Bed {
    pub fn create() -> Result<Bed> {
        let pid = std::process::id();
        let mut bed = Bed {
            server_ns: format!("kvb-s-{pid}"),
            client_ns: format!("kvb-c-{pid}"),
            client_xdp: None,
            created: Vec::new(),
        };
        for ns in [bed.server_ns.clone(), bed.client_ns.clone()] {
            ip(&["netns", "add", &ns])?;
            bed.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (s, c) = (bed.server_ns.clone(), bed.client_ns.clone());
        ip(&["link", "add", SERVER_IF, "netns", &s, "type", "veth", "peer", "name", CLIENT_IF, "netns", &c])?;
        ip(&["-n", &s, "addr", "add", &format!("{SERVER_IP}/24"), "dev", SERVER_IF])?;
        ip(&["-n", &c, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", CLIENT_IF])?;
        ip(&["-n", &s, "link", "set", SERVER_IF, "up"])?;
        ip(&["-n", &c, "link", "set", CLIENT_IF, "up"])?;
        // Room for many connections: a wide ephemeral port range on the client, deep accept queues on
        // the server (both are per-namespace settings).
        bed.sysctl(&c, "net.ipv4.ip_local_port_range", "1024 65000")?;
        bed.sysctl(&s, "net.core.somaxconn", "65535")?;
        bed.sysctl(&s, "net.ipv4.tcp_max_syn_backlog", "65535")?;
        // Port 0: the reflector program passes every packet; it only has to exist on the peer.
        let xdp = in_netns(&c, || kv_user::kernel::bench::attach_reflector(CLIENT_IF, XdpMode::Native, 0))
            .context("attaching the pass-through XDP program to the client veth")?;
        bed.client_xdp = Some(xdp);
        Ok(bed)
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let st = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-q", "-w", &format!("{key}={value}")])
            .stdout(Stdio::null())
            .status()
            .context("running sysctl")?;
        if !st.success() {
            bail!("sysctl {key}={value} in {ns} failed");
        }
        Ok(())
    }

    /// The XDP program id attached to the server veth, from `ip -d link show`.
    pub fn server_xdp_prog_id(&self) -> Result<Option<u32>> {
        let out = ip(&["-n", &self.server_ns, "-d", "link", "show", SERVER_IF])?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "prog/xdp" && words.next() == Some("id") {
                return Ok(words.next().and_then(|id| id.parse().ok()));
            }
        }
        Ok(None)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.client_xdp.take();
        for ns in self.created.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Runs `f` on a thread that entered namespace `name` (`setns` moves only the calling thread; sockets
/// and XDP attachments made there stay in that namespace).
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {name}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
