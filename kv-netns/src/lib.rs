//! Network namespaces and veth pairs, for the end-to-end tests (tests/src/netns.rs) and the benchmark
//! (`cargo xtask bench`): creating and deleting namespaces and veth pairs through iproute2, addressing,
//! running commands and threads inside a namespace, and cleaning up on drop (also when a test panics).
//!
//! Facts this relies on:
//! - `setns(CLONE_NEWNET)` only moves the calling thread, and a socket (or an XDP attachment) stays in
//!   the namespace it was made in: [`Netns::run`] does its work on a short-lived thread that entered
//!   the namespace, and what it returns can then be used from any thread;
//! - deleting a namespace deletes the interfaces in it, a veth pair with it.
//!
//! Callers only ever address namespaces they created, with 10.x addresses.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A pair unique per call within this process: (pid, n).
pub fn unique() -> (u32, u32) {
    (std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// `ip <args>` (iproute2): its stdout on success, an error with its stderr otherwise.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace with `lo` up, deleted on drop (with every interface in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `kvt-<tag>-<pid>-<n>`, a name unique within this process and among concurrent
    /// processes. Names stay within 15 bytes where possible (they are only file names under
    /// /var/run/netns, so longer is fine too).
    pub fn create(tag: &str) -> Result<Netns> {
        let (pid, n) = unique();
        Netns::named(format!("kvt-{tag}-{pid}-{n}"))
    }

    /// Creates the namespace `name` (which must not exist yet).
    pub fn named(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> <args>`; stdout on success.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the child's pid
    /// is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sets `key` to `value` with sysctl inside the namespace (for per-namespace settings such as
    /// `net.core.somaxconn`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let st = self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")])
            .stdout(Stdio::null())
            .status()
            .context("running sysctl")?;
        if !st.success() {
            bail!("sysctl {key}={value} in {} failed", self.name);
        }
        Ok(())
    }

    /// Runs `f` on a thread that entered this namespace and returns its result; panics if the namespace
    /// cannot be entered (and propagates `f`'s panics).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    /// [`Self::run`] for a fallible `f`; failing to enter the namespace is an error too.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        enter(&self.name, f)?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// Runs `f` on a dedicated thread that first did `setns(CLONE_NEWNET)` into namespace `name`; sockets
/// `f` creates live in that namespace (and stay there when handed back to other threads). Panics if
/// the namespace cannot be entered; `f`'s panics propagate.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    enter(name, f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`in_netns`] with failing to enter the namespace as an error.
fn enter<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {name}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The XDP program id attached to `iface` in `ns`, from `ip -d link show` (`prog/xdp id N`).
pub fn xdp_prog_id(ns: &Netns, iface: &str) -> Result<Option<u32>> {
    let out = ns.ip(&["-d", "link", "show", iface])?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "prog/xdp" && words.next() == Some("id") {
            return Ok(words.next().and_then(|id| id.parse().ok()));
        }
    }
    Ok(None)
}

/// A veth pair with one end in each namespace, addressed and up. Dropping it deletes the pair (for a
/// pair whose namespaces outlive it; deleting either namespace deletes the pair too).
pub struct VethPair {
    /// Interface name in namespace a / b.
    pub if_a: String,
    pub if_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    ns_a: String,
}

impl VethPair {
    /// [`Self::with_names`] with the ends named `veth-s` (in `ns_a`) and `veth-c` (in `ns_b`).
    pub fn new(ns_a: &Netns, ns_b: &Netns, addr_a: &str, addr_b: &str) -> Result<VethPair> {
        VethPair::with_names(("veth-s", "veth-c"), ns_a, ns_b, addr_a, addr_b)
    }

    /// A pair whose ends are named `names.0` in `ns_a` and `names.1` in `ns_b`, addressed `addr_a` and
    /// `addr_b` in CIDR form ("10.77.N.1/24"). The interfaces are created directly inside the
    /// namespaces, never in the host's.
    pub fn with_names(
        (if_a, if_b): (&str, &str),
        ns_a: &Netns,
        ns_b: &Netns,
        addr_a: &str,
        addr_b: &str,
    ) -> Result<VethPair> {
        Self::with_queues((if_a, if_b), ns_a, ns_b, addr_a, addr_b, 1)
    }

    /// As [`VethPair::with_names`], with `queues` transmit and receive queues on each end (with an XDP
    /// program attached, a veth has a ring and a NAPI poll per receive queue).
    pub fn with_queues(
        (if_a, if_b): (&str, &str),
        ns_a: &Netns,
        ns_b: &Netns,
        addr_a: &str,
        addr_b: &str,
        queues: usize,
    ) -> Result<VethPair> {
        let q = queues.max(1).to_string();
        let qs = ["numtxqueues", q.as_str(), "numrxqueues", q.as_str()];
        let mut a = vec!["link", "add", if_a];
        a.extend(qs);
        a.extend(["netns", &ns_a.name, "type", "veth", "peer", "name", if_b]);
        a.extend(qs);
        a.extend(["netns", &ns_b.name]);
        ip(&a)?;
        let pair = VethPair {
            addr_a: parse_cidr(addr_a)?,
            addr_b: parse_cidr(addr_b)?,
            if_a: if_a.to_string(),
            if_b: if_b.to_string(),
            ns_a: ns_a.name.clone(),
        };
        ns_a.ip(&["addr", "add", addr_a, "dev", if_a])?;
        ns_b.ip(&["addr", "add", addr_b, "dev", if_b])?;
        ns_a.ip(&["link", "set", if_a, "up"])?;
        ns_b.ip(&["link", "set", if_b, "up"])?;
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["-n", &self.ns_a, "link", "del", &self.if_a]).stderr(Stdio::null()).status();
    }
}

fn parse_cidr(s: &str) -> Result<Ipv4Addr> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse().with_context(|| format!("bad address {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        assert_eq!(parse_cidr("10.77.3.1/24").unwrap(), Ipv4Addr::new(10, 77, 3, 1));
        assert_eq!(parse_cidr("10.88.0.2").unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        assert!(parse_cidr("nope/24").is_err());
    }

    #[test]
    fn unique_counts_up() {
        let (pid, a) = unique();
        let (_, b) = unique();
        assert_eq!(pid, std::process::id());
        assert!(b > a);
    }
}

/// Needs root (skips otherwise): two namespaces joined by a veth pair carry a TCP connection, and
/// everything is gone after the drops.
#[cfg(test)]
mod root_tests {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddrV4, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn veth_between_namespaces() {
        // SAFETY: no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root");
            return;
        }
        let (a, b) = (Netns::create("nt-a").unwrap(), Netns::create("nt-b").unwrap());
        let subnet = unique().1 % 250 + 1;
        let veth = VethPair::new(&a, &b, &format!("10.79.{subnet}.1/24"), &format!("10.79.{subnet}.2/24")).unwrap();
        assert_eq!(xdp_prog_id(&a, &veth.if_a).unwrap(), None);
        let to = SocketAddrV4::new(veth.addr_a, 7);
        let listener = a.run(move || TcpListener::bind(to).unwrap());
        let mut client = b.try_run(move || Ok(TcpStream::connect(to)?)).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(veth.addr_b));
        client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        a.sysctl("net.core.somaxconn", "4096").unwrap();
        assert!(b.command("true").status().unwrap().success());
        let names = (a.name.clone(), b.name.clone());
        drop((client, server, listener, veth, a, b));
        let list = ip(&["netns", "list"]).unwrap();
        assert!(!list.contains(&names.0) && !list.contains(&names.1), "left behind: {list}");
        assert!(Netns { name: "kvt-missing".into() }.try_run(|| Ok(())).is_err());
    }
}
