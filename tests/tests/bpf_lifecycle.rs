//! The XDP program is attached when the server starts with BPF enabled and detached when it exits,
//! on SIGTERM and on SIGKILL. Runs inside a network namespace of its own (its `lo`), so it neither
//! touches the host's interfaces nor collides with other tests.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kv_tests::netns::Netns;
use kv_user::kernel::bpf_required;

/// Whether an XDP program is attached to the namespace's lo (`ip link` shows `xdpgeneric`/`prog/xdp`).
fn xdp_attached(ns: &Netns) -> bool {
    ns.ip(&["link", "show", "lo"]).expect("ip link show lo").contains("xdp")
}

fn wait_for(ns: &Netns, attached: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if xdp_attached(ns) == attached {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn start_in(ns: &Netns) -> std::process::Child {
    ns.command(kv_tests::server_bin())
        .args(["-l", "127.0.0.1", "--iface", "lo", "--xdp-mode", "generic", "--no-persist"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kv-server in the namespace")
}

fn lifecycle(tag: &str, signal: i32) {
    kv_tests::kv_only!();
    let Ok(ns) = Netns::create(tag) else {
        assert!(!bpf_required(), "KV_REQUIRE_BPF=1 but network namespaces are unavailable (need root and iproute2)");
        eprintln!("SKIP: cannot create a network namespace (not root?)");
        return;
    };
    assert!(!xdp_attached(&ns), "fresh namespace has no XDP program");
    let mut child = start_in(&ns);
    if !wait_for(&ns, true, Duration::from_secs(20)) {
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
    assert!(wait_for(&ns, false, Duration::from_secs(5)), "XDP still attached after the server exited ({signal})");
}

#[test]
fn xdp_attached_on_start_and_detached_on_sigterm() {
    lifecycle("term", libc::SIGTERM);
}

#[test]
fn xdp_detached_when_the_server_is_killed() {
    lifecycle("kill", libc::SIGKILL);
}
