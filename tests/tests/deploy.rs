//! The deployment artefacts in deploy/: the config file and flag precedence end to end, and the systemd
//! unit's capability set — the real binary, run as an unprivileged uid with exactly the unit's
//! `AmbientCapabilities=`, attaches XDP (sufficient), and without any one of them falls back to user
//! space (each is necessary). systemd itself is not needed: `setpriv` sets up the same credentials.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{chown, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::netns::{udp_request_retry, unavailable, Netns};
use kv_tests::{kv_only, run_with_timeout, server_bin, Client, Server};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(rel)
}

fn stats_of(c: &mut Client, cmd: &[u8]) -> HashMap<String, String> {
    c.send(cmd);
    let text = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn config_file_then_flags() {
    kv_only!();
    let dir = tempfile::tempdir().unwrap();
    // The checked-in default file with three keys changed.
    let text = std::fs::read_to_string(repo_file("deploy/kv-server.toml")).unwrap();
    let text = text
        .replace("memory-limit = 64", "memory-limit = 32")
        .replace("conn-limit = 1024", "conn-limit = 500")
        .replace("threads = 4", "threads = 3");
    let cfg = dir.path().join("kv.toml");
    std::fs::write(&cfg, text).unwrap();
    // The harness passes -l/-p/-U/--data-dir/--no-bpf on the command line; --threads overrides the file.
    let s = Server::start(&["--config", cfg.to_str().unwrap(), "--threads", "2"]);
    let st = stats_of(&mut s.client(), b"stats settings\r\n");
    assert_eq!(st["maxbytes"], (32u64 << 20).to_string(), "memory-limit from the file");
    assert_eq!(st["maxconns"], "500", "conn-limit from the file");
    assert_eq!(st["num_threads"], "2", "--threads overrides the file's 3");
    assert_eq!(st["tcpport"], s.port.to_string(), "-p overrides the file's 11211");

    // --print-config with no flags is the embedded default, which is what the checked-in file says.
    let (st0, defaults, _) =
        run_with_timeout(Command::new(server_bin()).arg("--print-config"), Duration::from_secs(10));
    assert!(st0.success());
    let mut from_file = Command::new(server_bin());
    from_file.args(["--print-config", "--config"]).arg(repo_file("deploy/kv-server.toml"));
    let (st1, printed, _) = run_with_timeout(&mut from_file, Duration::from_secs(10));
    assert!(st1.success());
    assert_eq!(printed, defaults);
    assert!(defaults.contains("memory-limit = 64\n") && defaults.contains("udp-allow = []\n"), "{defaults}");

    // A misspelt key: refused at start with the key and the file named, non-zero exit.
    std::fs::write(&cfg, "port = 11299\nmemory-limt = 32\n").unwrap();
    let (st, _, err) = run_with_timeout(Command::new(server_bin()).arg("--config").arg(&cfg), Duration::from_secs(10));
    assert_eq!(st.code(), Some(2), "stderr: {err}");
    assert!(err.contains("memory-limt") && err.contains(cfg.to_str().unwrap()), "{err}");
    // A wrong type likewise.
    std::fs::write(&cfg, "no-bpf = 1\n").unwrap();
    let (st, _, err) = run_with_timeout(Command::new(server_bin()).arg("--config").arg(&cfg), Duration::from_secs(10));
    assert!(!st.success() && err.contains("no-bpf") && err.contains(cfg.to_str().unwrap()), "{err}");
}

/// The unit's `AmbientCapabilities=` as setpriv names (`bpf`, `net_admin`, ...); the bounding set must
/// be the same set.
fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(repo_file("deploy/kv-server.service")).unwrap();
    let line = |key: &str| -> Vec<String> {
        let l = unit.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in the unit"));
        let mut caps: Vec<String> =
            l.split_whitespace().map(|c| c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase()).collect();
        caps.sort();
        caps
    };
    let ambient = line("AmbientCapabilities=");
    assert_eq!(ambient, line("CapabilityBoundingSet="), "ambient and bounding sets differ");
    assert!(unit.lines().any(|l| l == "NoNewPrivileges=yes"));
    assert!(!unit.contains("\nPrivateNetwork="), "PrivateNetwork would hide the host's interfaces");
    ambient
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "net_admin" => 12,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("add capability {other} to cap_bit"),
    }
}

const NOBODY: u32 = 65534;
const PORT: u16 = 11211;

/// kv-server as uid/gid 65534 with `caps` (ambient, inheritable and bounding: what systemd sets up for
/// the unit), in a fresh namespace, with generic XDP on its lo, configured by a file.
struct Unprivileged {
    child: Child,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Unprivileged {
    fn start(tag: &str, caps: &[String]) -> Option<Unprivileged> {
        if unsafe { libc::geteuid() } != 0 {
            unavailable("switching uid and creating namespaces needs root");
            return None;
        }
        let ns = match Netns::create(tag) {
            Ok(ns) => ns,
            Err(e) => {
                unavailable(&format!("no network namespace: {e:#}"));
                return None;
            }
        };
        // The build tree may not be reachable for uid 65534: a world-readable copy of the binary.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("kv-server");
        std::fs::copy(server_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
        let cfg = dir.path().join("kv-server.toml");
        std::fs::write(
            &cfg,
            format!(
                "port = {PORT}\nudp-port = {PORT}\nlisten = \"127.0.0.1\"\niface = \"lo\"\nxdp-mode = \"generic\"\n\
                 kcache-admit-hits = 1\ndata-dir = \"{}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let set = |prefix: &str| {
            let mut s = format!("{prefix}=-all");
            for c in caps {
                s.push_str(&format!(",+{c}"));
            }
            s
        };
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = ns
            .command("setpriv")
            .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
            .args([set("--inh-caps"), set("--ambient-caps"), set("--bounding-set"), "--no-new-privs".into()])
            .arg(&bin)
            .arg("--config")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning setpriv kv-server");
        let mut u = Unprivileged { child, ns, dir };
        u.wait_ready();
        Some(u)
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], PORT))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("kv-server exited at start ({st}): {}", self.log());
            }
            // A `stats` reply, not just a connect: the server attaches XDP (or gives up) before it serves.
            if self.ns.run(|| TcpStream::connect_timeout(&Self::addr(), Duration::from_millis(200)).is_ok()) {
                stats_of(&mut self.client(), b"stats\r\n");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kv-server did not come up: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn client(&self) -> Client {
        self.ns.run(|| Client::connect(Self::addr()))
    }

    fn udp(&self) -> UdpSocket {
        self.ns.run(|| UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    /// (real uid, effective capability mask) of the running server, from /proc.
    fn creds(&self) -> (u32, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string();
        let uid = field("Uid:").split_whitespace().next().unwrap().parse().unwrap();
        (uid, u64::from_str_radix(&field("CapEff:"), 16).unwrap())
    }

    fn xdp_on_lo(&self) -> bool {
        self.ns.ip(&["link", "show", "lo"]).unwrap().contains("xdp")
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn unit_capabilities_suffice_for_xdp() {
    kv_only!();
    let caps = unit_caps();
    let Some(u) = Unprivileged::start("cap", &caps) else { return };
    let (uid, eff) = u.creds();
    assert_eq!(uid, NOBODY);
    assert_eq!(eff, caps.iter().map(|c| 1u64 << cap_bit(c)).sum::<u64>(), "exactly the unit's capabilities");
    assert!(u.log().contains("XDP attached to lo"), "log: {}", u.log());
    assert!(u.xdp_on_lo(), "no XDP program on the namespace's lo");

    let mut c = u.client();
    c.set("deploy-key", b"hello");
    let sock = u.udp();
    let want = b"VALUE deploy-key 0 5\r\nhello\r\nEND\r\n";
    let before = stats_of(&mut c, b"stats\r\n")["xdp_hits"].parse::<u64>().unwrap();
    // kcache-admit-hits = 1: the first UDP get is a user-space hit that admits the key, later ones the kernel answers.
    let mut hits = before;
    for id in 1..=20u16 {
        assert_eq!(udp_request_retry(&sock, Unprivileged::addr(), id, b"get deploy-key\r\n").body, want);
        hits = stats_of(&mut c, b"stats\r\n")["xdp_hits"].parse().unwrap();
        if hits > before {
            break;
        }
    }
    assert!(hits > before, "xdp_hits did not move: the kernel never answered");
    // The append-only log went to the data dir as uid 65534.
    assert!(std::fs::read_dir(u.dir.path().join("data")).unwrap().next().is_some(), "empty data dir");
}

#[test]
fn without_the_capabilities_it_falls_back_to_user_space() {
    kv_only!();
    let Some(u) = Unprivileged::start("nocap", &[]) else { return };
    assert_eq!(u.creds(), (NOBODY, 0));
    assert!(u.log().contains("BPF unavailable"), "log: {}", u.log());
    assert!(!u.xdp_on_lo(), "an XDP program attached without capabilities");
    let mut c = u.client();
    c.set("deploy-key", b"hello");
    assert_eq!(c.get("deploy-key").as_deref(), Some(&b"hello"[..]));
    let reply = udp_request_retry(&u.udp(), Unprivileged::addr(), 1, b"get deploy-key\r\n");
    assert_eq!(reply.body, b"VALUE deploy-key 0 5\r\nhello\r\nEND\r\n");
    assert!(!stats_of(&mut c, b"stats\r\n").contains_key("xdp_hits"), "kernel stats without a kernel path");
}

#[test]
fn each_unit_capability_is_needed() {
    kv_only!();
    let caps = unit_caps();
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        let Some(u) = Unprivileged::start(&format!("no-{drop}"), &fewer) else { return };
        assert!(u.log().contains("BPF unavailable"), "without {drop}: log: {}", u.log());
        assert!(!u.xdp_on_lo(), "XDP attached without {drop}");
    }
}
