//! Builds an eBPF crate of this workspace for the BPF target with aya-build, leaving one object
//! per `[[bin]]` in OUT_DIR. Shared by the build scripts of `shaper` (the classifier) and
//! `shaper-bench` (its benchmark-only programs), so both find bpf-linker the same way.

use std::{env, path::PathBuf, process::Command};

use aya_build::{Package, Toolchain};

use crate::bpf_linker::{BOOTSTRAP_COMMAND, LinkerKey, linker_root};

/// Builds the package `name` found at `dir` (relative to the calling crate's manifest).
pub fn build(name: &str, dir: &str) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SHAPER_CACHE_DIR");
    println!("cargo:rerun-if-env-changed=PATH");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc).arg("-vV").output()?;
    let key = LinkerKey::from_rustc_verbose_version(&String::from_utf8_lossy(&version.stdout))
        .ok_or_else(|| {
            anyhow::anyhow!("cannot read the commit and LLVM version from `{rustc} -vV`")
        })?;

    // Prefer the linker built for exactly this rustc; else any bpf-linker on PATH.
    let mut path = env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    let cached = linker_root(&key).map(|root| root.join("bin"));
    match cached.filter(|bin| bin.join("bpf-linker").is_file()) {
        Some(bin) => {
            println!(
                "cargo:rerun-if-changed={}",
                bin.join("bpf-linker").display()
            );
            path.insert(0, bin);
        }
        None if path.iter().any(|dir| dir.join("bpf-linker").is_file()) => {}
        None => anyhow::bail!(
            "bpf-linker (LLVM >= {}) was not found in the shaper cache or on PATH; \
             run `{BOOTSTRAP_COMMAND}` once to build it against this rustc's LLVM",
            key.llvm_major
        ),
    }

    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    // SAFETY: the build script is single-threaded; the variables only reach the child cargo that
    // aya-build spawns. RUSTC_BOOTSTRAP lets that stable toolchain use `-Z build-std=core`, which
    // the tier-3 BPF target needs; scoping it here keeps the host crates' builds untouched.
    unsafe {
        env::set_var("PATH", env::join_paths(path)?);
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join(dir);
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
