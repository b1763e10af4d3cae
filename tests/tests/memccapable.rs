//! libmemcached's conformance checker, ASCII and binary protocols: all 27 tests of each pass on
//! memcached 1.6.18.

use std::process::Command;
use std::time::Duration;

use kv_tests::{run_with_timeout, Server};

/// Runs memccapable with `flag` (`-a` or `-b`) and checks that all 27 tests named `prefix` pass.
fn memccapable(flag: &str, prefix: &str) {
    let s = Server::start(&[]);
    let bin = std::env::var("KV_MEMCCAPABLE").unwrap_or_else(|_| "memccapable".to_string());
    let (st, out, err) = run_with_timeout(
        Command::new(&bin).args(["-h", "127.0.0.1", "-p", &s.port.to_string(), flag, "-t", "5"]),
        Duration::from_secs(60),
    );
    assert!(st.success(), "memccapable exited with {st}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("All tests passed"), "stdout:\n{out}\nstderr:\n{err}");
    let passed = out.lines().filter(|l| l.starts_with(prefix) && l.ends_with("[pass]")).count();
    assert_eq!(passed, 27, "stdout:\n{out}");
}

#[test]
fn memccapable_ascii() {
    memccapable("-a", "ascii ");
}

#[test]
fn memccapable_binary() {
    memccapable("-b", "binary ");
}
