//! Builds an eBPF crate of this workspace for the BPF target with aya-build, leaving one object
//! per `[[bin]]` in OUT_DIR. Shared by the build scripts of `shaper` (the classifier) and
//! `shaper-bench` (its benchmark-only programs), so both find bpf-linker the same way.
//!
//! Every profile, target and feature set of the host crate has its own OUT_DIR, and aya-build
//! builds `core` and the eBPF crate afresh in each (about a minute): a test build, a release
//! build, the static musl build and each clippy pass would build the same object again. The
//! objects are therefore kept in the shaper cache directory under a hash of everything they are
//! built from (see [`inputs_key`]) and copied from there when nothing changed.

use std::{
    env, fs,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

use aya_build::{Package, Toolchain};

use crate::bpf_linker::{BOOTSTRAP_COMMAND, LinkerKey, linker_root};

/// Builds the package `name` found at `dir` (relative to the calling crate's manifest).
/// `objects` are the `[[bin]]` names of the package: the files it leaves in OUT_DIR.
pub fn build(name: &str, dir: &str, objects: &[&str]) -> anyhow::Result<()> {
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
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let ebpf_dir = manifest_dir.join(dir);
    let common_dir = manifest_dir.join("../shaper-common");
    let lock_file = manifest_dir.join("../Cargo.lock");
    // The eBPF crate depends on shaper-common: a change there must rebuild the object too.
    for input in [&ebpf_dir, &common_dir, &lock_file] {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    let key = inputs_key(
        &[&ebpf_dir, &common_dir, &lock_file],
        &[&version.stdout, toolchain.as_bytes(), name.as_bytes()],
    )?;
    let cached = crate::bpf_linker::cache_root()
        .map(|root| root.join("ebpf-objects").join(format!("{name}-{key:016x}")));
    if let Some(cached) = &cached
        && objects.iter().all(|object| cached.join(object).is_file())
    {
        for object in objects {
            fs::copy(cached.join(object), out_dir.join(object))?;
        }
        return Ok(());
    }

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
    )?;
    // A cache that cannot be written only costs the next build its minute.
    if let Some(cached) = cached {
        let _ = store(&out_dir, &cached, objects);
    }
    Ok(())
}

/// A hash of every file under `paths` (name and contents, in a fixed order; `target`
/// directories skipped) and of `extra` (the rustc version, the toolchain, the package).
/// DefaultHasher's keys are fixed, so the same inputs give the same key in every build this
/// rustc runs, and the rustc version is part of the key.
fn inputs_key(paths: &[&Path], extra: &[&[u8]]) -> anyhow::Result<u64> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        file.hash(&mut hasher);
        fs::read(file)?.hash(&mut hasher);
    }
    extra.hash(&mut hasher);
    Ok(hasher.finish())
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let entry_path = entry.path();
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "target" {
                collect_files(&entry_path, files)?;
            }
        } else {
            files.push(entry_path);
        }
    }
    Ok(())
}

/// Copies the built objects into the cache entry `cached`, through a temporary directory renamed
/// into place, so a concurrent build never finds half an entry.
fn store(out_dir: &Path, cached: &Path, objects: &[&str]) -> anyhow::Result<()> {
    let parent = cached
        .parent()
        .ok_or_else(|| anyhow::anyhow!("cache entry without a parent"))?;
    fs::create_dir_all(parent)?;
    let staging = parent.join(format!(".staging-{}", std::process::id()));
    fs::create_dir_all(&staging)?;
    for object in objects {
        fs::copy(out_dir.join(object), staging.join(object))?;
    }
    if fs::rename(&staging, cached).is_err() {
        // Another build stored the same entry first.
        fs::remove_dir_all(&staging)?;
    }
    prune(parent, cached)
}

/// Entries of the same package kept besides the newest: enough for switching between a few
/// branches, bounded however often the sources change (an entry is about 1 MiB).
const KEPT_ENTRIES: usize = 8;

/// Removes the package's oldest cache entries beyond [`KEPT_ENTRIES`].
fn prune(parent: &Path, newest: &Path) -> anyhow::Result<()> {
    let Some(prefix) = newest
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.rsplit_once('-'))
        .map(|(package, _)| format!("{package}-"))
    else {
        return Ok(());
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_entry = name
            .strip_prefix(&prefix)
            .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_entry {
            entries.push((entry.metadata()?.modified()?, entry.path()));
        }
    }
    entries.sort();
    let excess = entries.len().saturating_sub(KEPT_ENTRIES);
    for (_, path) in entries.into_iter().take(excess) {
        fs::remove_dir_all(path)?;
    }
    Ok(())
}
