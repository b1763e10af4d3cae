//! Structured logs: levels, text or JSON (`--log-format`), and the one start-up line that says what is
//! attached where, in which XDP mode, and what the kernel cache holds.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kv_tests::netns::{bpf_required, Netns};
use kv_tests::{free_port, kv_only, server_bin};

/// Kills the server when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stderr piped; returns the child and a channel of its stderr lines.
fn spawn_logging(mut cmd: std::process::Command) -> (Kill, mpsc::Receiver<String>) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Kill(child), rx)
}

/// Lines until one satisfies `done` (included), or the deadline.
fn lines_until(rx: &mpsc::Receiver<String>, limit: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let stop = done(&l);
                out.push(l);
                if stop {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

#[test]
fn json_lines_carry_the_startup_fields() {
    kv_only!();
    let ns = match Netns::create("log") {
        Ok(ns) => ns,
        Err(e) if !bpf_required() => return eprintln!("SKIP: no network namespaces here ({e:#})"),
        Err(e) => panic!("creating a namespace: {e:#}"),
    };
    let port = free_port().to_string();
    let mut cmd = ns.command(server_bin());
    cmd.args(["-l", "127.0.0.1", "-p", &port, "-U", &port, "--no-persist", "--iface", "lo"]);
    cmd.args(["--xdp-mode", "generic", "--kcache-entries", "1000", "--log-format", "json"]);
    let (_server, rx) = spawn_logging(cmd);
    // The kernel path is set up before the listeners start.
    let lines = lines_until(&rx, Duration::from_secs(20), |l| l.contains("listening on tcp"));
    let events: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string() && e["message"].is_string(), "{e}");
    }
    assert!(events.iter().any(|e| e["level"] == "INFO" && e["message"].as_str().unwrap().contains("listening on tcp")));
    let Some(up) = events.iter().find(|e| e["message"].as_str().unwrap().contains("XDP attached")) else {
        assert!(!bpf_required(), "no XDP start-up line under KV_REQUIRE_BPF=1: {lines:?}");
        return eprintln!("SKIP: BPF unavailable here: {lines:?}");
    };
    assert_eq!(up["level"], "INFO");
    assert_eq!(up["iface"], "lo");
    assert_eq!(up["xdp_mode"], "Generic");
    assert_eq!(up["udp_port"].as_u64(), Some(port.parse().unwrap()));
    // 1000 requested: rounded up to a power of two.
    assert_eq!(up["cache_slots"].as_u64(), Some(1024));
    assert_eq!(up["admit_hits"].as_u64(), Some(2));
}

#[test]
fn text_lines_have_levels_and_verbosity_adds_debug() {
    kv_only!();
    let run = |extra: &[&str]| {
        let port = free_port().to_string();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(server_bin());
        cmd.args(["-l", "127.0.0.1", "-p", &port, "-U", "0", "--no-bpf", "--data-dir"]).arg(dir.path()).args(extra);
        // The level comes from -v unless RUST_LOG says otherwise.
        cmd.env_remove("RUST_LOG");
        let (_server, rx) = spawn_logging(cmd);
        lines_until(&rx, Duration::from_secs(20), |l| l.contains("listening on tcp"))
    };
    let quiet = run(&[]);
    assert!(quiet.iter().any(|l| l.contains(" INFO ") && l.contains("listening on tcp")), "{quiet:?}");
    assert!(!quiet.iter().any(|l| l.contains("DEBUG")), "debug lines at the default level: {quiet:?}");
    let verbose = run(&["-v"]);
    assert!(verbose.iter().any(|l| l.contains("DEBUG")), "-v shows debug lines: {verbose:?}");
}
