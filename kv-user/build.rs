//! Builds kv-ebpf for the BPF target (nightly + rust-src + bpf-linker) and leaves the object in OUT_DIR,
//! where src/bpf.rs embeds it. `cargo xtask run|test` install the toolchain pieces first.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "kv-ebpf")
        .ok_or_else(|| anyhow!("kv-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("kv-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "kv-ebpf", root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
