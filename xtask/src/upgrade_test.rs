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

/// The previous release's `shaper`, from the cache or built now.
fn previous_binary(commit: &str) -> anyhow::Result<PathBuf> {
    let cache = bootstrap::cache_root()
        .context("no cache directory: set HOME or SHAPER_CACHE_DIR")?
        .join("previous-release")
        .join(commit);
    let cached = cache.join("shaper");
    if cached.is_file() {
        return Ok(cached);
    }
    let work = target_dir()?.join("previous-release");
    let source = work.join("src").join(commit);
    extract(commit, &source)?;
    eprintln!("xtask: building shaper at {commit}");
    // Its own target directory: cargo names the artifacts of path packages relative to the
    // workspace root, so the same crates of two trees would share files in one directory and
    // judge freshness by mtime alone. The extracted files carry the extraction's mtime (`tar
    // -m`), newer than anything built before, so a later commit extracted here rebuilds too.
    check(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&source)
            .args([
                "build",
                "--locked",
                "--package",
                "shaper",
                "--bin",
                "shaper",
            ])
            .env("CARGO_TARGET_DIR", work.join("target"))
            // `shaper --version` of that build names its commit (no .git in an archive).
            .env("SHAPER_GIT_COMMIT", commit),
    )?;
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // Copied under a temporary name and renamed, so an interrupted copy is never taken for a
    // cached binary.
    let partial = cache.join("shaper.partial");
    fs::copy(work.join("target/debug/shaper"), &partial)
        .with_context(|| format!("copying the built binary into {}", cache.display()))?;
    fs::rename(&partial, &cached)?;
    fs::remove_dir_all(&source).ok();
    Ok(cached)
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
