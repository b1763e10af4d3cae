//! Resource hygiene: the server's file descriptors return to their resting count after connection
//! churn, restarts leave nothing behind, and a server with XDP attached leaves no BPF program, map or
//! XDP attachment behind when it exits on SIGTERM or dies on SIGKILL, restart after restart.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use kv_tests::netns::{unavailable, xdp_prog_id, XdpBed};
use kv_tests::{long_or, Client, Server};

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("listing /proc/<pid>/fd").count()
}

/// Polls until `pid` has `want` descriptors or fewer (closes are asynchronous); returns the last count.
fn settle_fds(pid: u32, want: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = fd_count(pid);
        if n <= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fds_return_to_rest_after_connection_churn() {
    let s = Server::start(&["-c", "64"]);
    let pid = s.child.id();
    // At rest: no client connected (the harness's readiness probe is closed by now).
    let rest = settle_fds(pid, 0, Duration::from_millis(300));
    let total = long_or(1000, 20_000);
    let mut rejected = 0;
    let t0 = Instant::now();
    let mut i = 0;
    while i < total {
        // Batches of 80 open at once: over -c 64, so some are refused and closed by the server.
        let batch: Vec<Client> = (0..80.min(total - i)).map(|_| s.client()).collect();
        // Refusals are sent right away; give them a moment so most are read before we write.
        std::thread::sleep(Duration::from_millis(30));
        for (j, mut c) in batch.into_iter().enumerate() {
            c.stream.set_nonblocking(true).unwrap();
            let mut b = [0u8; 64];
            let early = c.stream.read(&mut b);
            c.stream.set_nonblocking(false).unwrap();
            let reply = match early {
                Ok(n) => b[..n].to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // A late refusal can still come: then the write or read may see the reset.
                    let _ = c.stream.write_all(b"mn\r\n");
                    let n = c.stream.read(&mut b).unwrap_or(0);
                    b[..n].to_vec()
                }
                Err(e) => panic!("connection {}: {e}", i + j),
            };
            match &reply[..] {
                b"MN\r\n" => {}
                b"ERROR Too many open connections\r\n" | b"" => {
                    rejected += 1;
                    continue;
                }
                other => panic!("connection {}: {:?}", i + j, String::from_utf8_lossy(other)),
            }
            // Leave by FIN, by RST, or half-way through a value.
            match j % 3 {
                0 => drop(c),
                1 => c.reset(),
                _ => c.send(b"set k 0 0 10\r\nabc"),
            }
        }
        i += 80;
    }
    let during = fd_count(pid);
    let after = settle_fds(pid, rest, Duration::from_secs(5));
    eprintln!(
        "server fds: {rest} at rest, {during} right after {total} connections ({rejected} refused) in {:?}, {after} once settled",
        t0.elapsed()
    );
    assert!(rejected > 0, "the -c 64 limit was never hit");
    assert_eq!(after, rest, "descriptors leaked after {total} connections");
    // And the server is fine.
    s.client().expect(b"mn\r\n", b"MN\r\n");
}

/// A persisting server killed and restarted on the same data directory rests at the same descriptor
/// count every time.
#[test]
fn crash_restart_cycles_leave_no_descriptors() {
    kv_tests::kv_only!(); // restarts on a data directory
    let mut s = Server::start(&[]);
    let mut c = s.client();
    c.set("persisted", b"v");
    drop(c);
    let rest = settle_fds(s.child.id(), 0, Duration::from_millis(300));
    let cycles = long_or(5, 50);
    for cycle in 0..cycles {
        s.crash_and_restart();
        let mut c = s.client();
        assert_eq!(c.get("persisted").as_deref(), Some(&b"v"[..]), "cycle {cycle}");
        c.set(&format!("c{cycle}"), b"x");
        drop(c);
        let n = settle_fds(s.child.id(), rest, Duration::from_secs(2));
        assert_eq!(n, rest, "cycle {cycle}: the restarted server rests at {n} descriptors, the first at {rest}");
    }
    assert_eq!(s.terminate(), Some(0));
    eprintln!("{cycles} crash-restarts: the server rests at {rest} fds each time");
}

/// BPF objects some process holds a descriptor to, read from /proc/<pid>/fdinfo.
#[derive(Debug, Default, PartialEq, Eq)]
struct BpfFds {
    progs: BTreeSet<u32>,
    maps: BTreeSet<u32>,
}

fn bpf_fds(pid: u32) -> BpfFds {
    let mut out = BpfFds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return out };
    for e in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else { continue };
        for l in info.lines() {
            if let Some(id) = l.strip_prefix("prog_id:") {
                out.progs.insert(id.trim().parse().unwrap());
            } else if let Some(id) = l.strip_prefix("map_id:") {
                out.maps.insert(id.trim().parse().unwrap());
            }
        }
    }
    out
}

/// Ids of every loaded program named `kv_xdp` and every map named `CACHE`, system-wide. Reported only:
/// other processes on the machine (other test runs) load and unload their own at any time, so the
/// assertions use the ids the server and this process held.
fn loaded_kv_objects() -> (BTreeSet<u32>, BTreeSet<u32>) {
    let progs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("kv_xdp"))
        .map(|p| p.id())
        .collect();
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("CACHE"))
        .map(|m| m.id())
        .collect();
    (progs, maps)
}

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;

/// Whether the object `id` of a kind (`BPF_*_GET_NEXT_ID`) still exists, asked without opening it.
/// Opening by id matters for a program array: taking the first user reference of one whose last just
/// dropped, then closing it, makes the kernel queue its deferred clear a second time while the first is
/// pending, and the reference taken for that second one is never dropped (prog_array_map_clear), so
/// the observer would leak the array it watches.
fn id_exists(cmd: libc::c_long, id: u32) -> bool {
    // bpf_attr for *_GET_NEXT_ID: start_id (u32), next_id (u32, out).
    let mut attr = [id.wrapping_sub(1), 0u32];
    // SAFETY: an 8-byte attribute block the command reads and writes within.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    r == 0 && attr[1] == id
}

fn prog_loaded(id: u32) -> bool {
    id_exists(BPF_PROG_GET_NEXT_ID, id)
}

fn map_loaded(id: u32) -> bool {
    id_exists(BPF_MAP_GET_NEXT_ID, id)
}

/// Waits (the kernel frees objects after an RCU grace period) until none of `ids` is loaded.
fn gone(progs: &BTreeSet<u32>, maps: &BTreeSet<u32>, within: Duration) -> (Vec<u32>, Vec<u32>) {
    let deadline = Instant::now() + within;
    loop {
        let p: Vec<u32> = progs.iter().copied().filter(|&id| prog_loaded(id)).collect();
        let m: Vec<u32> = maps.iter().copied().filter(|&id| map_loaded(id)).collect();
        if (p.is_empty() && m.is_empty()) || Instant::now() > deadline {
            return (p, m);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One server life in the bed: checks it holds its XDP program and maps (CACHE among them) while it
/// serves, stops it with `signal`, and checks that everything it held is gone and nothing is attached.
fn one_life(bed: &mut XdpBed, signal: i32, label: &str) -> usize {
    let pid = bed.server.id();
    let held = bpf_fds(pid);
    let attached = xdp_prog_id(&bed.server_ns, &bed.veth.if_a).unwrap().expect("XDP attached while serving");
    assert!(held.progs.contains(&attached), "{label}: the server holds the attached program {attached}: {held:?}");
    let cache = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .find(|m| held.maps.contains(&m.id()) && m.name_as_str() == Some("CACHE"));
    assert!(cache.is_some(), "{label}: the server holds no CACHE map: {held:?}");
    bed.client().expect(b"mn\r\n", b"MN\r\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, signal) };
    let st = bed.server.wait().expect("waiting for the server");
    if signal == libc::SIGTERM {
        assert!(st.success(), "{label}: clean exit on SIGTERM, got {st}");
    }
    assert_eq!(xdp_prog_id(&bed.server_ns, &bed.veth.if_a).unwrap(), None, "{label}: XDP left attached");
    let (p, m) = gone(&held.progs, &held.maps, Duration::from_secs(5));
    assert!(p.is_empty() && m.is_empty(), "{label}: still loaded after exit: programs {p:?}, maps {m:?}");
    held.progs.len() + held.maps.len()
}

/// Restarts the server in the same namespaces (after the previous one is gone) and waits until it
/// serves with XDP attached again: a crashed server must not block its successor's attach.
fn restart(bed: &mut XdpBed) {
    let port = kv_tests::netns::PORT.to_string();
    bed.server = bed
        .server_ns
        .command(kv_tests::server_bin())
        .args(["-l", &bed.veth.addr_a.to_string(), "-p", &port, "-U", &port, "--iface", &bed.veth.if_a])
        .args(["--xdp-mode", "native", "--no-persist", "--udp-allow", "10.77.0.0/16"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("respawning kv-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = bed.addr;
    loop {
        assert!(bed.server_alive(), "the restarted server exited (XDP attach refused after a crash?)");
        let up = bed.client_ns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
        if up && xdp_prog_id(&bed.server_ns, &bed.veth.if_a).unwrap().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "the restarted server did not come up with XDP within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_bpf_objects_left_after_sigterm_or_sigkill() {
    kv_tests::kv_only!();
    if unsafe { libc::geteuid() } != 0 {
        unavailable("BPF object inspection needs root");
        return;
    }
    let me = std::process::id();
    let mine = bpf_fds(me);
    let (progs0, maps0) = loaded_kv_objects();
    let Some(mut bed) = XdpBed::start_or_skip("hyg", &[]) else { return };
    let (progs1, maps1) = loaded_kv_objects();
    let cycles = long_or(2, 10);
    let mut released = 0;
    for cycle in 0..cycles {
        for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
            released += one_life(&mut bed, signal, &format!("cycle {cycle}, {name}"));
            restart(&mut bed);
        }
    }
    let server_pid = bed.server.id();
    let last = bpf_fds(server_pid);
    drop(bed);
    // Dropping the bed also releases the test's own pass-through program on the client veth.
    let (p, m) = gone(&last.progs, &last.maps, Duration::from_secs(5));
    assert!(p.is_empty() && m.is_empty(), "after the bed: programs {p:?}, maps {m:?} still loaded");
    let now = bpf_fds(me);
    // The names say whose they are (still held by us, so opening them again is harmless).
    let names: Vec<Option<String>> = now
        .maps
        .iter()
        .map(|&id| aya::maps::MapInfo::from_id(id).ok().and_then(|i| i.name_as_str().map(String::from)))
        .collect();
    assert_eq!(now, mine, "the test process still holds BPF objects (maps {names:?})");
    let (progs2, maps2) = loaded_kv_objects();
    eprintln!(
        "{} server lives ({cycles} x SIGTERM + SIGKILL), {released} program/map descriptors released; system-wide \
         kv_xdp programs / CACHE maps: {}/{} before, {}/{} with the bed, {}/{} after",
        2 * cycles + 1,
        progs0.len(),
        maps0.len(),
        progs1.len(),
        maps1.len(),
        progs2.len(),
        maps2.len()
    );
}
