//! Installs what the build and the tests need on a fresh machine, skipping whatever is already there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// The bpf-linker release known to build against the nightly's LLVM 22 on this machine kind.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests drive: memcached (peer), memccapable (conformance checker), ip (netns tests),
/// nutcracker (twemproxy scale-out test).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("memcached", "memcached"),
    ("memccapable", "libmemcached-tools"),
    ("ip", "iproute2"),
    ("nutcracker", "nutcracker"),
];
const PYMEMCACHE: &str = "pymemcache==4.0.0";

/// nightly + rust-src + bpf-linker, needed by kv-user's build script to build kv-ebpf.
pub fn ebpf_toolchain() -> Result<()> {
    let installed = output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
        .context("rustup is needed (nightly toolchain for the eBPF build)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly");
        run("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }
    if output("bpf-linker", &["--version"]).is_ok_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM");
    // bpf-linker's default LLVM feature wants a system LLVM that Debian 12 lacks; link it against the
    // libLLVM that ships inside the nightly toolchain instead. Its RUNPATH points at this prefix, so the
    // prefix lives outside any checkout.
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let major = lib.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or("").to_string();
    let home = std::env::var("HOME").context("HOME not set")?;
    let prefix = PathBuf::from(home).join(".local/share/kv-bpf-llvm");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&lib), &link)?;
    }
    let status = Command::new(env!("CARGO"))
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .status()?;
    if !status.success() {
        bail!("installing bpf-linker failed");
    }
    Ok(())
}

/// Debian packages and a Python venv with pymemcache, for the end-to-end tests. Returns the venv's python.
pub fn test_peers(root: &Path) -> Result<PathBuf> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().filter(|(bin, _)| !on_path(bin)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing Debian packages {missing:?}");
        run("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        run("apt-get", &args)?;
    }
    // A venv inside target/ (ignored, removed by `cargo clean`) so the system Python is left alone.
    let venv = root.join("target/py");
    let python = venv.join("bin/python");
    if !python.exists() {
        run("python3", &["-m", "venv", &venv.to_string_lossy()])?;
    }
    let have = Command::new(&python)
        .args(["-c", "import pymemcache"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("xtask: installing {PYMEMCACHE}");
        let status = Command::new(&python).args(["-m", "pip", "install", "-q", PYMEMCACHE]).status()?;
        if !status.success() {
            bail!("pip install {PYMEMCACHE} failed");
        }
    }
    Ok(python)
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false)
}

fn output(prog: &str, args: &[&str]) -> Result<String> {
    let out =
        Command::new(prog).args(args).stderr(Stdio::null()).output().with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(prog).args(args).status().with_context(|| format!("running {prog}"))?;
    if !status.success() {
        bail!("{prog} {} failed", args.join(" "));
    }
    Ok(())
}
