//! A third-party client: pymemcache 4.0.0 drives the server through tests/py/pymemcache_check.py.
//! The interpreter is `KV_PYTHON` (set by `cargo xtask test` to a venv with pymemcache), else
//! `python3`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kv_tests::{run_with_timeout, Server};

#[test]
fn pymemcache_client() {
    let python = std::env::var("KV_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/pymemcache_check.py");
    let (st, _, err) =
        run_with_timeout(Command::new(&python).args(["-c", "import pymemcache"]), Duration::from_secs(30));
    assert!(
        st.success(),
        "pymemcache is not importable with {python} ({err}); set KV_PYTHON to a python that has it, e.g. \
         `python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pymemcache==4.0.0` and KV_PYTHON=/tmp/venv/bin/python"
    );
    let s = Server::start(&[]);
    let (st, out, err) =
        run_with_timeout(Command::new(&python).arg(&script).arg(s.port.to_string()), Duration::from_secs(30));
    assert!(st.success(), "{} exited with {st}\nstdout:\n{out}\nstderr:\n{err}", script.display());
    assert_eq!(out.lines().last(), Some("PYMEMCACHE OK"), "stdout:\n{out}\nstderr:\n{err}");
}
