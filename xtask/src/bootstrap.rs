//! Makes a machine with only rustup's stable toolchain able to build the eBPF object.
//!
//! Nothing is downloaded but the rust-src component (rustup) and crates (crates.io).

#[path = "../../shaper/build/bpf_linker.rs"]
#[expect(
    dead_code,
    reason = "xtask is the bootstrap: it never points to BOOTSTRAP_COMMAND"
)]
mod bpf_linker;

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};
/// The cache every tool xtask installs goes under (bpf-linker here, the others by `cached_tool`).
pub use bpf_linker::cache_root;
use bpf_linker::{LinkerKey, linker_root};

use crate::check;

/// The bpf-linker release this project builds with; known to build with rustc 1.95 and LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Ensures rust-src and the matching bpf-linker; returns the directory holding `bpf-linker`.
pub fn run() -> anyhow::Result<PathBuf> {
    let sysroot = rustc_output(&["--print", "sysroot"])?;
    let sysroot = PathBuf::from(sysroot.trim());
    ensure_rust_src(&sysroot)?;

    let key = LinkerKey::from_rustc_verbose_version(&rustc_output(&["-vV"])?)
        .ok_or_else(|| anyhow!("cannot read the commit and LLVM version from `rustc -vV`"))?;
    let root = linker_root(&key)
        .ok_or_else(|| anyhow!("no cache directory: set HOME or SHAPER_CACHE_DIR"))?;
    let bin = root.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
    build_bpf_linker(&sysroot, &key, &root)?;
    Ok(bin)
}

fn rustc_output(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("rustc")
        .args(args)
        .output()
        .context("running rustc")?;
    if !output.status.success() {
        bail!(
            "rustc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// `-Z build-std=core` (the BPF target is tier 3, with no prebuilt core) compiles core from the
/// rust-src component.
fn ensure_rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing the rust-src component");
    check(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// Builds bpf-linker against rustc's own libLLVM, so no system LLVM (of a matching major) is
/// needed: a prefix directory whose lib/ links to the toolchain's library is all llvm-sys wants,
/// and the binary's RUNPATH points there.
fn build_bpf_linker(sysroot: &Path, key: &LinkerKey, root: &Path) -> anyhow::Result<()> {
    let lib_dir = sysroot.join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| {
            anyhow!(
                "{} has no libLLVM.so.*: this toolchain does not ship LLVM as a shared library; \
                 install LLVM {} development files and put a bpf-linker on PATH instead",
                lib_dir.display(),
                key.llvm_major
            )
        })?;
    let prefix = root.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let soname = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("bad library path"))?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {} into {} (about a minute)",
        key.llvm_major,
        root.display()
    );
    let started = Instant::now();
    check(
        cargo_install("bpf-linker", BPF_LINKER_VERSION, root)
            .arg("--no-default-features")
            .args(["--features", &format!("llvm-{}", key.llvm_major)])
            .env("LLVM_PREFIX", &prefix),
    )?;
    eprintln!("xtask: bpf-linker built in {:.0?}", started.elapsed());
    Ok(())
}

/// `cargo install KRATE --locked --version =VERSION --root ROOT`, run from `root` to keep the
/// install out of this workspace's target dir and config; the caller adds features and
/// environment.
fn cargo_install(krate: &str, version: &str, root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .args(["install", krate, "--locked"])
        .args(["--version", &format!("={version}")])
        .arg("--root")
        .arg(root)
        .current_dir(root);
    command
}

/// The `bin/` directory of tool `krate` at `version` (its binary named like the crate) in the
/// cache, `cargo install`ed there with `flags` first if it is not there yet; `takes` says how
/// long that is for the one who waits.
pub fn cached_tool(
    krate: &str,
    version: &str,
    flags: &[&str],
    takes: &str,
) -> anyhow::Result<PathBuf> {
    let root = cache_root()
        .ok_or_else(|| anyhow!("no cache directory: set HOME or SHAPER_CACHE_DIR"))?
        .join(krate)
        .join(version);
    let bin = root.join("bin");
    if bin.join(krate).is_file() {
        return Ok(bin);
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    eprintln!(
        "xtask: installing {krate} {version} into {} ({takes})",
        root.display()
    );
    let started = Instant::now();
    check(cargo_install(krate, version, &root).args(flags))?;
    eprintln!("xtask: {krate} installed in {:.0?}", started.elapsed());
    Ok(bin)
}
