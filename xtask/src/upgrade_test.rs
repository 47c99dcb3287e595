//! `cargo xtask upgrade-test [--from COMMIT]`: the previous release's daemon hands its pinned
//! datapath to this build's under a flood, and this build's hands it back
//! (`shaper/tests/upgrade.rs`, an ignored test that reads the previous binary from the
//! environment, as the fuzzer reads its frames).
//!
//! The previous release's binary is built from `git archive COMMIT` with that commit's own
//! Cargo.lock and cached by commit, so a second run costs only the test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{bootstrap, cargo, check, target_dir, workspace_root};

/// The file naming the previous release's commit, relative to the workspace root.
pub const PREVIOUS_RELEASE_FILE: &str = "release/previous";

pub struct Options {
    /// The commit to upgrade from; default the one in [`PREVIOUS_RELEASE_FILE`].
    pub from: Option<String>,
    /// Extra arguments for the test binary, e.g. `tcx`.
    pub args: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    bootstrap::run()?;
    let wanted = match &options.from {
        Some(commit) => commit.clone(),
        None => previous_release()?,
    };
    let commit = resolve(&wanted)?;
    let binary = previous_binary(&commit)?;
    eprintln!("xtask: upgrade-test from {commit} ({})", binary.display());
    check(
        cargo()
            .args([
                "test",
                "--package",
                "shaper",
                "--test",
                "upgrade",
                "--",
                "--ignored",
                "--test-threads=1",
                "--show-output",
            ])
            .args(&options.args)
            .env("SHAPER_PREVIOUS_BIN", &binary)
            .env("SHAPER_PREVIOUS_COMMIT", &commit),
    )
}

/// The commit [`PREVIOUS_RELEASE_FILE`] names: its first line that is neither empty nor a
/// `#` comment.
fn previous_release() -> anyhow::Result<String> {
    let path = workspace_root().join(PREVIOUS_RELEASE_FILE);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .with_context(|| format!("{} names no commit", path.display()))
}

/// The full hash of `commit`, which must be in this clone's history.
fn resolve(commit: &str) -> anyhow::Result<String> {
    let output = git()
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{commit}^{{commit}}"))
        .output()
        .context("running git rev-parse (the upgrade test needs git and the history)")?;
    if !output.status.success() {
        bail!(
            "{commit} is not a commit of this clone; a shallow clone lacks the previous release \
             (`git fetch --unshallow`), and a source tarball has no history to build it from"
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Where the previous release's builds are cached: by commit, under the cache directory.
fn cache_dir(commit: &str) -> anyhow::Result<PathBuf> {
    Ok(bootstrap::cache_root()
        .context("no cache directory: set HOME or SHAPER_CACHE_DIR")?
        .join("previous-release")
        .join(commit))
}

/// The previous release's `shaper` (a debug build), from the cache or built now.
fn previous_binary(commit: &str) -> anyhow::Result<PathBuf> {
    Ok(previous_build(commit)?.0)
}

/// The previous release's `shaper` and the eBPF object its build embedded, from the cache or
/// built now (one build gives both).
fn previous_build(commit: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cache = cache_dir(commit)?;
    let (binary, object) = (cache.join("shaper"), cache.join("shaper-ebpf.o"));
    if !binary.is_file() || !object.is_file() {
        let built = in_previous_tree(
            commit,
            &[
                "build",
                "--locked",
                "--package",
                "shaper",
                "--bin",
                "shaper",
            ],
        )?;
        cache_copy(&embedded_object(&built.join("debug/build"))?, &object)?;
        cache_copy(&built.join("debug/shaper"), &binary)?;
    }
    Ok((binary, object))
}

/// The eBPF object the build in `build_dir` (a profile's `build/`) embedded: `shaper`'s build
/// script leaves it in its OUT_DIR as `shaper` (`ebpf::build` of shaper/build.rs). The newest,
/// should the directory hold the outputs of more than one build script run.
fn embedded_object(build_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in
        fs::read_dir(build_dir).with_context(|| format!("reading {}", build_dir.display()))?
    {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("shaper-") {
            continue;
        }
        let object = entry.path().join("out/shaper");
        if let Ok(modified) = object.metadata().and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            newest = Some((modified, object));
        }
    }
    newest
        .map(|(_, object)| object)
        .with_context(|| format!("no shaper-*/out/shaper under {}", build_dir.display()))
}

/// The previous release's commit and the eBPF object of its build (see [`previous_build`]),
/// for the bench's per-packet comparison.
pub fn previous_object() -> anyhow::Result<(String, PathBuf)> {
    let commit = resolve(&previous_release()?)?;
    let (_, object) = previous_build(&commit)?;
    Ok((commit, object))
}

/// The previous release's Debian package, built by that release's own `cargo xtask dist` (its
/// static musl binary, its unit and maintainer scripts), from the cache or built now.
pub fn previous_deb() -> anyhow::Result<(String, PathBuf)> {
    let commit = resolve(&previous_release()?)?;
    let cache = cache_dir(&commit)?;
    if let Some(deb) = find_deb(&cache)? {
        return Ok((commit, deb));
    }
    let built = in_previous_tree(&commit, &["xtask", "dist"])?;
    let deb = find_deb(&built.join("dist"))?
        .with_context(|| format!("{commit}'s `cargo xtask dist` made no .deb"))?;
    let cached = cache.join(deb.file_name().context("the package's name")?);
    cache_copy(&deb, &cached)?;
    Ok((commit, cached))
}

/// The one `shaper_*.deb` in `dir`, if any.
fn find_deb(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("shaper_") && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Copies `from` into the cache as `to`: under a temporary name, then renamed, so an
/// interrupted copy is never taken for a cached build.
fn cache_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let dir = to.parent().context("a cache path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = to.with_extension("partial");
    fs::copy(from, &partial)
        .with_context(|| format!("copying {} into the cache", from.display()))?;
    fs::rename(&partial, to)?;
    Ok(())
}

/// Runs `cargo ARGS` in the source tree of `commit` (extracted afresh) and returns the target
/// directory it built into.
fn in_previous_tree(commit: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let work = target_dir()?.join("previous-release");
    // A directory per run, so two runs (the test's binary, the package) never share one.
    let source = work
        .join("src")
        .join(format!("{commit}-{}", std::process::id()));
    extract(commit, &source)?;
    let target = work.join("target");
    eprintln!("xtask: cargo {} at {commit}", args.join(" "));
    // Its own target directory: cargo names the artifacts of path packages relative to the
    // workspace root, so the same crates of two trees would share files in one directory and
    // judge freshness by mtime alone. The extracted files carry the extraction's mtime (`tar
    // -m`), newer than anything built before, so a later commit extracted here rebuilds too.
    check(
        cargo()
            .current_dir(&source)
            .args(args)
            .env("CARGO_TARGET_DIR", &target)
            // `shaper --version` of that build names its commit (no .git in an archive).
            .env("SHAPER_GIT_COMMIT", commit),
    )?;
    fs::remove_dir_all(&source).ok();
    Ok(target)
}

/// `git archive COMMIT | tar -x -m -C DIR` into an empty `dir`.
fn extract(commit: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut archive = git()
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive's output")?;
    check(
        Command::new("tar")
            .args(["-x", "-m", "-C"])
            .arg(dir)
            .stdin(stdout),
    )?;
    let status = archive.wait()?;
    if !status.success() {
        bail!("git archive {commit} failed: {status}");
    }
    Ok(())
}

fn git() -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(workspace_root());
    cmd
}
