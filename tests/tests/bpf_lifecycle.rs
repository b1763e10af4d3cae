//! The XDP program is attached when the server starts with BPF enabled and detached when it exits,
//! on SIGTERM and on SIGKILL. Runs inside a network namespace of its own (its `lo`), so it neither
//! touches the host's interfaces nor collides with other tests.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bpf_required() -> bool {
    std::env::var("KV_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Option<Netns> {
        let name = format!("kvt-{tag}-{}", std::process::id());
        let ok =
            Command::new("ip").args(["netns", "add", &name]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Netns(name);
        assert!(ns.ip(&["link", "set", "lo", "up"]).1, "bringing lo up in {}", ns.0);
        Some(ns)
    }

    fn ip(&self, args: &[&str]) -> (String, bool) {
        let out = Command::new("ip").arg("-n").arg(&self.0).args(args).output().expect("running ip");
        (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.success())
    }

    /// Whether an XDP program is attached to the namespace's lo (`ip link` shows `xdpgeneric`/`prog/xdp`).
    fn xdp_attached(&self) -> bool {
        let (out, ok) = self.ip(&["link", "show", "lo"]);
        assert!(ok);
        out.contains("xdp")
    }

    fn wait_for(&self, attached: bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.xdp_attached() == attached {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn start_in(ns: &Netns) -> std::process::Child {
    // `ip netns exec` execs the server, so the child's pid is the server's.
    Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(kv_tests::server_bin())
        .args(["-l", "127.0.0.1", "--iface", "lo", "--xdp-mode", "generic", "--no-persist"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kv-server in the namespace")
}

fn lifecycle(tag: &str, signal: i32) {
    kv_tests::kv_only!();
    let Some(ns) = Netns::create(tag) else {
        assert!(!bpf_required(), "KV_REQUIRE_BPF=1 but network namespaces are unavailable (need root and iproute2)");
        eprintln!("SKIP: cannot create a network namespace (not root?)");
        return;
    };
    assert!(!ns.xdp_attached(), "fresh namespace has no XDP program");
    let mut child = start_in(&ns);
    if !ns.wait_for(true, Duration::from_secs(20)) {
        let _ = child.kill();
        let _ = child.wait();
        assert!(!bpf_required(), "KV_REQUIRE_BPF=1 but the server did not attach XDP to lo within 20 s");
        eprintln!("SKIP: XDP did not attach (no BPF privileges?)");
        return;
    }
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().expect("waiting for the server");
    if signal == libc::SIGTERM {
        assert!(status.success(), "clean exit on SIGTERM, got {status:?}");
    }
    assert!(ns.wait_for(false, Duration::from_secs(5)), "XDP still attached after the server exited ({signal})");
}

#[test]
fn xdp_attached_on_start_and_detached_on_sigterm() {
    lifecycle("term", libc::SIGTERM);
}

#[test]
fn xdp_detached_when_the_server_is_killed() {
    lifecycle("kill", libc::SIGKILL);
}
