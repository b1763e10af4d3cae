//! Loading, attaching and reading the eBPF side. The object is built by build.rs and embedded here.
//!
//! Dropping [`KernelPath`] detaches the program (aya owns the link) — the server keeps it alive for its
//! whole life and drops it on shutdown, including SIGINT/SIGTERM.

use anyhow::{Context as _, Result};
use aya::{
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
    Ebpf,
};
use kv_common::{Counter, COUNTER_SLOTS};

use crate::config::XdpMode as ModeArg;

/// The eBPF object file, as built for bpfel-unknown-none.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kv-ebpf"));

/// Name of the XDP entry point in kv-ebpf.
pub const XDP_PROGRAM: &str = "kv_xdp";

/// A loaded (and possibly attached) XDP program with its maps.
pub struct KernelPath {
    ebpf: Ebpf,
    pub iface: Option<String>,
}

impl KernelPath {
    /// Loads the program into the kernel without attaching it (enough for BPF_PROG_TEST_RUN).
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("loading the eBPF object into the kernel")?;
        program(&mut ebpf)?.load().context("verifying the XDP program")?;
        Ok(Self { ebpf, iface: None })
    }

    /// Loads and attaches to `iface`.
    pub fn attach(iface: &str, mode: ModeArg) -> Result<Self> {
        let mut path = Self::load()?;
        let flags = match mode {
            ModeArg::Native => XdpMode::Driver,
            ModeArg::Generic => XdpMode::Skb,
        };
        program(&mut path.ebpf)?
            .attach(iface, flags)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))?;
        path.iface = Some(iface.to_string());
        Ok(path)
    }

    /// The XDP program, for test runs.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// Sum over CPUs of one counter.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        let map = self.ebpf.map("COUNTERS").context("COUNTERS map missing")?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        debug_assert!((c as u32) < COUNTER_SLOTS);
        Ok(arr.get(&(c as u32), 0)?.iter().sum())
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf.program_mut(XDP_PROGRAM).context("XDP program missing from the object")?;
    Ok(prog.try_into()?)
}

/// Whether tests that need BPF must fail rather than skip (`KV_REQUIRE_BPF=1`, set by CI).
pub fn bpf_required() -> bool {
    std::env::var("KV_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::programs::{TestRun as _, TestRunOptions};

    /// Loads the real program and runs it on a packet through BPF_PROG_TEST_RUN.
    #[test]
    fn xdp_program_loads_and_passes() {
        let mut path = match KernelPath::load() {
            Ok(p) => p,
            Err(e) if !bpf_required() => {
                eprintln!("SKIP: cannot load BPF here ({e:#}); set KV_REQUIRE_BPF=1 to make this fail");
                return;
            }
            Err(e) => panic!("BPF required but loading failed: {e:#}"),
        };
        let pkt = [0u8; 64];
        let before = path.counter(Counter::Passed).unwrap();
        let res = path
            .program()
            .unwrap()
            .test_run(TestRunOptions { data_in: Some(&pkt), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(res.return_value, kv_common::xdp_action::XDP_PASS);
        assert_eq!(path.counter(Counter::Passed).unwrap(), before + 1);
    }
}
