//! Builds kv-ebpf for the BPF target (nightly + rust-src + bpf-linker) and leaves its objects in OUT_DIR,
//! where src/bpf.rs embeds them: `kv-ebpf` (the cache's XDP program) and `kv-reflect` (the benchmark's
//! reflector), one per binary of the package. `cargo xtask run|test` install the toolchain pieces first.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let dir = |name: &str| {
        let p = packages.iter().find(|p| p.name.as_str() == name).ok_or_else(|| anyhow!("{name} package not found"))?;
        let dir = p.manifest_path.parent().ok_or_else(|| anyhow!("{name} manifest has no parent"))?;
        anyhow::Ok(dir.to_string())
    };
    let root_dir = dir("kv-ebpf")?;
    // aya-build watches kv-ebpf's folder; the programs also compile kv-common into themselves.
    println!("cargo:rerun-if-changed={}", dir("kv-common")?);
    aya_build::build_ebpf(
        [aya_build::Package { name: "kv-ebpf", root_dir: &root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
