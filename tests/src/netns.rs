//! Network-namespace harness for the XDP end-to-end tests: a server namespace and a client namespace
//! joined by a veth pair, `kv-server` running in the server namespace with native XDP on its veth, and
//! sockets created inside the client namespace. The namespaces, the pair and entering a namespace come
//! from kv-netns (re-exported here); this adds the XDP testbed on top.
//!
//! Facts this relies on (see /work/shared/TOOLCHAIN.md):
//! - native XDP_TX replies on a veth reach the peer only if the *peer* veth has an XDP program too, so
//!   the client's veth gets the project's own program, specialised for a port nobody uses (it passes
//!   everything);
//! - `setns(CLONE_NEWNET)` only moves the calling thread, and a socket stays in the namespace it was
//!   created in: sockets are created on a short-lived thread that entered the client namespace
//!   ([`Netns::run`]) and are then used from any thread.
//!
//! Everything is cleaned up by Drop guards (also when a test panics): the server is killed first, then
//! the client's XDP program detached, then both namespaces deleted (which deletes the veth pair).
//! Traffic only ever goes to 10.77.N.x addresses inside these namespaces.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, Map, MapData, MapInfo};
use kv_common::{CacheEntry, CacheKey, Counter, FrameHeader, UDP_FRAME_HEADER_LEN};
use kv_user::kernel::XdpMode;
use kv_user::kernel::{KernelCounters, KernelOpts, KernelPath};

use crate::Client;

/// Namespaces, veth pairs and running things inside a namespace: the workspace's one harness (kv-netns).
pub use kv_netns::{in_netns, xdp_prog_id, Netns, VethPair};
/// Whether tests that need BPF and namespaces must fail rather than skip (`KV_REQUIRE_BPF=1`).
pub use kv_user::kernel::bpf_required;

/// Port the server listens on inside its namespace (TCP and UDP): the namespace is private, so a fixed
/// port cannot collide with anything.
pub const PORT: u16 = 11211;

/// The `kv_xdp` program serving UDP `port` on `iface` in `ns`: behind the interface's shared dispatcher,
/// or attached directly.
pub fn instance_prog_id(ns: &Netns, iface: &str, port: u16) -> Result<u32> {
    let name = iface.to_string();
    if let Ok(Some(id)) = ns.run(move || kv_user::kernel::served_by(&name, port)) {
        return Ok(id);
    }
    xdp_prog_id(ns, iface)?.context("the server runs but has no XDP program on its veth (attach failed: no BPF?)")
}

/// Why a testbed could not be set up: the test fails under `KV_REQUIRE_BPF=1`, else it skips.
#[track_caller]
pub fn unavailable(why: &str) {
    assert!(!bpf_required(), "KV_REQUIRE_BPF=1 but {why}");
    eprintln!("SKIP: {why}");
}

/// Server namespace + client namespace + veth pair + `kv-server` with native XDP on its veth + the
/// client veth's XDP program. Torn down in a safe order on drop.
pub struct XdpBed {
    pub server: Child,
    /// The server's address (10.77.N.1:PORT), reachable from the client namespace.
    pub addr: SocketAddr,
    /// Its IPv6 address (fd77:0:0:N::1, port PORT) when started with [`XdpBed::start_ipv6`].
    pub addr6: Option<SocketAddr>,
    pub veth: VethPair,
    /// The client veth's XDP program (needed for XDP_TX replies to arrive); detached on drop.
    client_xdp: Option<KernelPath>,
    pub server_ns: Netns,
    pub client_ns: Netns,
    /// Id of the server's XDP program (global, usable from any namespace).
    pub prog_id: u32,
    /// Ids of its COUNTERS and CACHE maps.
    counters_id: u32,
    cache_id: u32,
}

impl XdpBed {
    /// Sets everything up; on failure returns why (the caller passes it to [`unavailable`]).
    pub fn start(tag: &str, extra: &[&str]) -> Result<XdpBed> {
        XdpBed::start_with(tag, extra, false)
    }

    /// As [`Self::start`], with IPv6 addresses on the veth too (fd77:0:0:N::1 and ::2) and the server
    /// listening on `::` (both families), its UDP open to fd77::/16.
    pub fn start_ipv6(tag: &str, extra: &[&str]) -> Result<XdpBed> {
        XdpBed::start_with(tag, extra, true)
    }

    fn start_with(tag: &str, extra: &[&str], ipv6: bool) -> Result<XdpBed> {
        if crate::targets_memcached() {
            bail!("the XDP path is kv-server only");
        }
        if unsafe { libc::geteuid() } != 0 {
            bail!("network namespaces and XDP need root");
        }
        let server_ns = Netns::create(&format!("{tag}-s")).context("creating the server namespace")?;
        let client_ns = Netns::create(&format!("{tag}-c")).context("creating the client namespace")?;
        let (pid, n) = kv_netns::unique();
        let subnet = (pid.wrapping_mul(31).wrapping_add(n)) % 250 + 1;
        let veth =
            VethPair::new(&server_ns, &client_ns, &format!("10.77.{subnet}.1/24"), &format!("10.77.{subnet}.2/24"))
                .context("creating the veth pair")?;
        let addr6 = if ipv6 {
            // No duplicate address detection: the addresses are usable at once, and nothing else is here.
            let (a, b) = (format!("fd77:0:0:{subnet:x}::1"), format!("fd77:0:0:{subnet:x}::2"));
            server_ns.ip(&["-6", "addr", "add", &format!("{a}/64"), "dev", &veth.if_a, "nodad"])?;
            client_ns.ip(&["-6", "addr", "add", &format!("{b}/64"), "dev", &veth.if_b, "nodad"])?;
            Some(SocketAddr::new(a.parse()?, PORT))
        } else {
            None
        };
        let client_if = veth.if_b.clone();
        let client_xdp = client_ns
            .run(move || {
                // Port 1: nothing is served there, so this program passes every packet; it only has to exist.
                KernelPath::attach(&client_if, XdpMode::Native, KernelOpts { port: 1, ..Default::default() })
            })
            .context("attaching the pass-through XDP program to the client veth")?;
        let addr = SocketAddr::V4(SocketAddrV4::new(veth.addr_a, PORT));
        let log = std::env::var_os("KV_TEST_LOG").is_some();
        let port = PORT.to_string();
        let server = server_ns
            .command(crate::server_bin())
            .args(["-l", &if ipv6 { "::".to_string() } else { veth.addr_a.to_string() }])
            .args(["-p", &port, "-U", &port, "--iface", &veth.if_a])
            .args(["--xdp-mode", "native", "--no-persist"])
            // The client's prefix may use UDP unless the test sets its own allowlist.
            .args(if extra.contains(&"--udp-allow") { &[][..] } else { &["--udp-allow", "10.77.0.0/16"][..] })
            .args(if ipv6 { &["--udp-allow", "fd77::/16"][..] } else { &[][..] })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .context("spawning kv-server in the namespace")?;
        let mut bed = XdpBed {
            server,
            addr,
            addr6,
            veth,
            client_xdp: Some(client_xdp),
            server_ns,
            client_ns,
            prog_id: 0,
            counters_id: 0,
            cache_id: 0,
        };
        bed.wait_ready()?;
        // The server attaches XDP before it serves, so by now it is attached or it never will be.
        bed.prog_id = instance_prog_id(&bed.server_ns, &bed.veth.if_a, PORT)?;
        bed.counters_id = bed.map_id("COUNTERS")?;
        bed.cache_id = bed.map_id("CACHE")?;
        Ok(bed)
    }

    /// [`Self::start`], or None after [`unavailable`] (which panics under `KV_REQUIRE_BPF=1`).
    #[track_caller]
    pub fn start_or_skip(tag: &str, extra: &[&str]) -> Option<XdpBed> {
        if crate::targets_memcached() {
            eprintln!("SKIP: kv-server only (the XDP path)");
            return None;
        }
        match XdpBed::start(tag, extra) {
            Ok(b) => Some(b),
            Err(e) => {
                unavailable(&format!("no XDP testbed: {e:#}"));
                None
            }
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = self.server.id();
        let addr = self.addr;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.server.try_wait() {
                bail!("kv-server exited at start ({st}); rerun with KV_TEST_LOG=1 to see why");
            }
            let got = self.client_ns.run(|| {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                c.write_all(b"stats\r\n").ok()?;
                let text = read_stats(&mut c).ok()?;
                text.get("pid").and_then(|p| p.parse::<u32>().ok())
            });
            if got == Some(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("kv-server in {} did not answer on {addr} within 20 s", self.server_ns.name)
    }

    /// A TCP client connected from the client namespace.
    pub fn client(&self) -> Client {
        let addr = self.addr;
        self.client_ns.run(move || Client::connect(addr))
    }

    /// A UDP socket in the client namespace (bound to an ephemeral port on the client's address).
    pub fn udp_socket(&self) -> UdpSocket {
        let local = SocketAddr::V4(SocketAddrV4::new(self.veth.addr_b, 0));
        self.client_ns.run(move || UdpSocket::bind(local).expect("binding a UDP socket in the client namespace"))
    }

    /// A UDP socket in the client namespace on its IPv6 address ([`Self::start_ipv6`] beds only).
    pub fn udp_socket6(&self) -> UdpSocket {
        let server = self.addr6.expect("an IPv6 testbed");
        let local = match server.ip() {
            std::net::IpAddr::V6(a) => {
                let mut o = a.octets();
                o[15] = 2;
                SocketAddr::new(std::net::Ipv6Addr::from(o).into(), 0)
            }
            v4 => SocketAddr::new(v4, 0),
        };
        self.client_ns.run(move || UdpSocket::bind(local).expect("binding an IPv6 UDP socket in the client namespace"))
    }

    /// `stats` over a fresh TCP connection from the client namespace, as name → value.
    pub fn stats(&self) -> HashMap<String, String> {
        let mut c = self.client();
        c.send(b"stats\r\n");
        read_stats(&mut c.stream).expect("reading stats")
    }

    /// One numeric `STAT` line, None if the server does not report it.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().get(name).map(|v| v.parse().unwrap_or_else(|_| panic!("STAT {name} {v:?} is not a number")))
    }

    /// One counter of the server's XDP program, read straight from its `COUNTERS` map (the kernel's own
    /// truth, independent of what `stats` reports).
    pub fn kernel_counter(&self, c: Counter) -> u64 {
        let map = MapData::from_id(self.counters_id).expect("opening the server's COUNTERS map");
        KernelCounters::from_map(map).expect("COUNTERS is a per-CPU array").get(c)
    }

    /// Kernel hits so far (requests answered with XDP_TX).
    pub fn kernel_hits(&self) -> u64 {
        self.kernel_counter(Counter::Hits)
    }

    /// Writes an entry into the server's kernel cache behind its back (harness self-test only: proves
    /// that kernel replies reach the client namespace, whatever user space admits). The slot's sequence
    /// number is set even, as a completed write leaves it.
    pub fn kernel_cache_insert(&self, key: &[u8], flags: u32, cas: u64, value: &[u8]) -> Result<()> {
        let mut cache: Array<MapData, CacheEntry> = Array::try_from(open_map(self.cache_id)?)?;
        let mut seqs: Array<MapData, u64> = Array::try_from(open_map(self.map_id("SEQS")?)?)?;
        let hash = CacheKey::new(key).context("bad key")?.hash();
        let idx = hash as u32 & (cache.len() - 1);
        let e = kv_user::kernel::cache_entry(key, flags, cas, value, 0, 0).context("entry too big")?;
        let seq = seqs.get(&idx, 0)?;
        seqs.set(idx, seq | 1, 0)?;
        cache.set(idx, e, 0)?;
        seqs.set(idx, kv_common::seq_word(kv_common::slot_tag(hash), (seq | 1) + 1), 0)?;
        Ok(())
    }

    /// Makes the slot of an entry inserted with [`Self::kernel_cache_insert`] unreadable.
    pub fn kernel_cache_remove(&self, key: &[u8]) -> Result<()> {
        let mut seqs: Array<MapData, u64> = Array::try_from(open_map(self.map_id("SEQS")?)?)?;
        let idx = CacheKey::new(key).context("bad key")?.hash() as u32 & (seqs.len() - 1);
        let seq = seqs.get(&idx, 0)?;
        seqs.set(idx, seq & !0xffff_ffff | (seq + 1) & 0xffff_ffff | 1, 0)?;
        Ok(())
    }

    fn map_id(&self, name: &str) -> Result<u32> {
        let prog = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == self.prog_id)
            .with_context(|| format!("XDP program {} not loaded", self.prog_id))?;
        for id in prog.map_ids()?.context("map ids unavailable")? {
            if MapInfo::from_id(id)?.name_as_str() == Some(name) {
                return Ok(id);
            }
        }
        bail!("program {} has no map {name}", self.prog_id)
    }

    /// Whether the server process is still running.
    pub fn server_alive(&mut self) -> bool {
        matches!(self.server.try_wait(), Ok(None))
    }
}

impl Drop for XdpBed {
    fn drop(&mut self) {
        stop(&mut self.server);
        self.client_xdp.take();
        // Then the fields: veth (deleted), namespaces (deleted).
    }
}

/// Stops a server as an operator would (SIGTERM: it detaches and leaves the interface's dispatcher),
/// killing it if it has not exited within 5 s.
pub fn stop(server: &mut Child) {
    // SAFETY: signalling a child this test started and has not reaped.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(server.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Counter `c` of the `kv_xdp` program `prog_id` (summed over CPUs).
pub fn program_counter(prog_id: u32, c: Counter) -> Result<u64> {
    let prog = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == prog_id)
        .with_context(|| format!("program {prog_id} not loaded"))?;
    for id in prog.map_ids()?.context("map ids unavailable")? {
        if MapInfo::from_id(id)?.name_as_str() == Some("COUNTERS") {
            return Ok(KernelCounters::from_map(MapData::from_id(id)?)?.get(c));
        }
    }
    bail!("program {prog_id} has no COUNTERS map")
}

fn open_map(id: u32) -> Result<Map> {
    Ok(Map::from_map_data(MapData::from_id(id)?)?)
}

/// Reads a `stats` reply (up to `END\r\n`) into name → value.
pub(crate) fn read_stats(s: &mut TcpStream) -> std::io::Result<HashMap<String, String>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"END\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// One memcached UDP request datagram: 8-byte frame header (id, seq 0, count 1, reserved) + payload.
pub fn udp_frame(req_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(UDP_FRAME_HEADER_LEN + payload.len());
    pkt.extend_from_slice(&FrameHeader { request_id: req_id, seq: 0, total: 1, reserved: 0 }.to_bytes());
    pkt.extend_from_slice(payload);
    pkt
}

/// A reassembled UDP reply and how many datagrams it came in.
#[derive(Debug)]
pub struct UdpReply {
    pub body: Vec<u8>,
    pub datagrams: usize,
}

/// Sends one request and collects its reply; datagrams with another request id (late replies to earlier
/// requests) are skipped. None if the whole reply did not arrive within `timeout` (UDP may lose it).
/// Panics on malformed frames.
pub fn try_udp_request(
    sock: &UdpSocket,
    to: SocketAddr,
    req_id: u16,
    payload: &[u8],
    timeout: Duration,
) -> Option<UdpReply> {
    sock.send_to(&udp_frame(req_id, payload), to).expect("sending a UDP request");
    let deadline = Instant::now() + timeout;
    let mut parts = UdpParts::default();
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(e) => panic!("receiving a UDP reply: {e}"),
        };
        if UdpParts::request_id(&buf[..n]) != req_id {
            continue;
        }
        if let Some(body) = parts.add(&buf[..n]) {
            return Some(UdpReply { body, datagrams: parts.datagrams() });
        }
    }
}

/// The datagrams of one UDP reply, reassembled in sequence order (memcached's framing: an 8-byte
/// header of request id, sequence number, datagram count and 2 reserved bytes, then the payload).
#[derive(Default)]
pub struct UdpParts(Vec<Option<Vec<u8>>>);

impl UdpParts {
    /// The request id a reply datagram answers; panics if its size cannot be a reply frame's.
    pub fn request_id(datagram: &[u8]) -> u16 {
        let n = datagram.len();
        assert!((8..=1400).contains(&n), "datagram of {n} bytes");
        FrameHeader::parse(datagram).expect("a frame header").request_id
    }

    /// Adds one datagram (panics on a malformed frame); the whole reply once every datagram arrived.
    pub fn add(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
        let h = FrameHeader::parse(datagram).expect("a frame header");
        let (seq, total) = (h.seq as usize, h.total as usize);
        assert_eq!(h.reserved, 0, "reserved bytes");
        assert!(seq < total, "sequence {seq} of {total}");
        if self.0.is_empty() {
            self.0.resize(total, None);
        }
        assert_eq!(self.0.len(), total, "consistent datagram count");
        self.0[seq] = Some(datagram[UDP_FRAME_HEADER_LEN..].to_vec());
        self.0.iter().all(Option::is_some).then(|| self.0.iter().flatten().flatten().copied().collect())
    }

    /// How many datagrams the reply has (0 before the first).
    pub fn datagrams(&self) -> usize {
        self.0.len()
    }
}

/// [`try_udp_request`] with up to 5 attempts of 1 s each; panics if every attempt is lost.
#[track_caller]
pub fn udp_request_retry(sock: &UdpSocket, to: SocketAddr, req_id: u16, payload: &[u8]) -> UdpReply {
    for _ in 0..5 {
        if let Some(r) = try_udp_request(sock, to, req_id, payload, Duration::from_secs(1)) {
            return r;
        }
    }
    panic!("no UDP reply to {:?} after 5 attempts", String::from_utf8_lossy(payload));
}
