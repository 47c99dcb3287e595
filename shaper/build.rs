//! Builds the eBPF object (crate `shaper-ebpf`) for the BPF target and leaves it in OUT_DIR,
//! where `src/datapath/classifier/mod.rs` embeds it; records the rustc version for
//! `shaper_build_info` and the git commit and aya version for `shaper --version`.

#[path = "build/bpf_linker.rs"]
mod bpf_linker;
#[path = "build/ebpf.rs"]
mod ebpf;
#[path = "build/version.rs"]
mod version;

use std::{env, process::Command};

fn main() -> anyhow::Result<()> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc).arg("-V").output()?;
    // "rustc 1.95.0 (59807616e 2026-04-14)" -> "1.95.0".
    let rustc_version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_owned();
    println!("cargo:rustc-env=SHAPER_RUSTC_VERSION={rustc_version}");
    version::emit(std::path::Path::new(&env::var("CARGO_MANIFEST_DIR")?))?;
    // `cargo fuzz` builds with `--cfg fuzzing`, which cargo passes to the build script as
    // CARGO_CFG_FUZZING. The fuzz targets (fuzz/) only parse and never load the classifier: an
    // empty object spares them bpf-linker and a second BPF build for the sanitized target.
    if env::var_os("CARGO_CFG_FUZZING").is_some() {
        let object = std::path::Path::new(&env::var("OUT_DIR")?).join("shaper");
        std::fs::write(object, [])?;
        return Ok(());
    }
    ebpf::build("shaper-ebpf", "../shaper-ebpf", &["shaper"])
}
