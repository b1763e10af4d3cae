//! Many-core mode (`--server-cpus`, `--client-cpus`): the servers and their half of the veth's packet work on one
//! CPU set, kv-load and its half on a disjoint one, each sized to its set (after /work/shared/many-core-run.sh).
//!
//! What is pinned: server processes and kv-load (sched_setaffinity before exec, inherited through `ip netns exec`);
//! each veth end's receive work (RPS: `rps_cpus` of every rx queue); the veth NAPI kthreads, made threaded where the
//! kernel allows it (only while an XDP program is attached to that end) and pinned to their side's CPUs.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use kv_netns::Netns;

/// Disjoint CPU sets for the server side and the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    pub server: Vec<usize>,
    pub client: Vec<usize>,
}

impl Pinning {
    /// From the two flags; both or neither. `available`: the CPUs this process may run on.
    pub fn from_flags(server: Option<&str>, client: Option<&str>, available: &[usize]) -> Result<Option<Pinning>> {
        let (server, client) = match (server, client) {
            (None, None) => return Ok(None),
            (Some(s), Some(c)) => (s, c),
            _ => bail!("--server-cpus and --client-cpus go together: give both, or neither for the default mode"),
        };
        let server = parse_list(server).context("--server-cpus")?;
        let client = parse_list(client).context("--client-cpus")?;
        for (flag, set) in [("--server-cpus", &server), ("--client-cpus", &client)] {
            let missing: Vec<usize> = set.iter().copied().filter(|c| !available.contains(c)).collect();
            if !missing.is_empty() {
                bail!(
                    "{flag}: CPU {} not available here (this process may use CPUs {})",
                    format_list(&missing),
                    format_list(available)
                );
            }
        }
        let both: Vec<usize> = server.iter().copied().filter(|c| client.contains(c)).collect();
        if !both.is_empty() {
            bail!("--server-cpus and --client-cpus overlap on CPU {}: the sets must be disjoint", format_list(&both));
        }
        Ok(Some(Pinning { server, client }))
    }
}

/// `0-3,6,8-9` → [0, 1, 2, 3, 6, 8, 9] (sorted, without duplicates).
pub fn parse_list(s: &str) -> Result<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim) {
        let num = |x: &str| x.trim().parse::<usize>().with_context(|| format!("bad CPU number {x:?} in {s:?}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    bail!("bad CPU range {part:?} in {s:?} (start after end)");
                }
                v.extend(a..=b);
            }
            None if part.is_empty() => bail!("empty CPU list item in {s:?} (want e.g. 0-3,6)"),
            None => v.push(num(part)?),
        }
    }
    v.sort_unstable();
    v.dedup();
    if v.len() > 4096 {
        bail!("CPU list {s:?} too long");
    }
    Ok(v)
}

/// [0, 1, 2, 3, 6] → `0-3,6`.
pub fn format_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if j > i { format!("{}-{}", cpus[i], cpus[j]) } else { cpus[i].to_string() });
        i = j + 1;
    }
    out.join(",")
}

/// The sysfs CPU mask (`rps_cpus`): hex, 32-bit groups separated by commas, most significant first.
pub fn mask_hex(cpus: &[usize]) -> String {
    let groups = cpus.iter().max().map_or(1, |m| m / 32 + 1);
    let mut words = vec![0u32; groups];
    for &c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    words.iter().rev().map(|w| format!("{w:08x}")).collect::<Vec<_>>().join(",")
}

/// The CPUs this process may run on.
pub fn available() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set for indexes below its capacity (CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: the CPUs were checked against the available ones, all below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Makes `cmd`'s process (and what it execs) run on `cpus` only.
pub fn pin_command(cmd: &mut Command, cpus: &[usize]) {
    let set = cpu_set(cpus);
    // SAFETY: sched_setaffinity is async-signal-safe and `set` is a plain copied value.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Pins every thread named `napi/<iface>-<id>` to `cpus`; returns how many.
pub fn pin_napi_threads(iface: &str, cpus: &[usize]) -> usize {
    let prefix = format!("napi/{iface}-");
    let set = cpu_set(cpus);
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            // SAFETY: sched_setaffinity on a kernel thread's pid with a valid set; failure is only counted.
            if unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0 {
                n += 1;
            }
        }
    }
    n
}

/// Runs `script` with `sh -c` inside `ns` (sysfs under `ip netns exec` shows the namespace's interfaces).
pub fn ns_sh(ns: &Netns, script: &str) -> Result<()> {
    let st = ns.command("sh").args(["-c", script]).stderr(Stdio::null()).status().context("running sh")?;
    if !st.success() {
        bail!("in {}: `{script}` failed", ns.name);
    }
    Ok(())
}

/// RPS for every rx queue of `iface` in `ns`: its receive processing runs on `cpus`.
pub fn set_rps(ns: &Netns, iface: &str, cpus: &[usize]) -> Result<()> {
    let m = mask_hex(cpus);
    ns_sh(ns, &format!("for q in /sys/class/net/{iface}/queues/rx-*; do echo {m} > $q/rps_cpus || exit 1; done"))
}

/// Threaded NAPI for `iface` (the kernel refuses it on a veth without an XDP program); true if on.
pub fn set_threaded(ns: &Netns, iface: &str) -> bool {
    ns_sh(ns, &format!("echo 1 > /sys/class/net/{iface}/threaded")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_format() {
        assert_eq!(parse_list("0-3").unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse_list("4-15").unwrap().len(), 12);
        assert_eq!(parse_list("6, 0-2,1,9").unwrap(), [0, 1, 2, 6, 9]);
        assert_eq!(parse_list("0").unwrap(), [0]);
        for bad in ["", "a", "3-1", "1,,2", "-1", "1-", "0-99999"] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_list(&[5]), "5");
    }

    #[test]
    fn masks() {
        assert_eq!(mask_hex(&[0, 1, 2, 3]), "0000000f");
        assert_eq!(mask_hex(&[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]), "0000fff0");
        assert_eq!(mask_hex(&[1, 33]), "00000002,00000002");
    }

    #[test]
    fn flags_validate() {
        let avail: Vec<usize> = (0..16).collect();
        let p = Pinning::from_flags(Some("0-3"), Some("4-15"), &avail).unwrap().unwrap();
        assert_eq!((p.server.len(), p.client.len()), (4, 12));
        assert_eq!(Pinning::from_flags(None, None, &avail).unwrap(), None);
        let err = |s: Option<&str>, c: Option<&str>, a: &[usize]| {
            format!("{:#}", Pinning::from_flags(s, c, a).expect_err("refused"))
        };
        assert!(err(Some("0-3"), None, &avail).contains("go together"));
        assert!(err(None, Some("1"), &avail).contains("go together"));
        assert!(err(Some("0-3"), Some("3-5"), &avail).contains("overlap on CPU 3"));
        let e = err(Some("0"), Some("1-2"), &[0, 1]);
        assert!(e.contains("--client-cpus: CPU 2 not available") && e.contains("may use CPUs 0-1"), "{e}");
        assert!(err(Some("x"), Some("1"), &avail).contains("--server-cpus"));
        assert!(!available().is_empty());
    }
}
