//! What `shaper --version` prints besides the crate version: the git commit the binary was built
//! from and the aya version it links, both found at build time so they cannot drift from the
//! source the way a hand-written constant would.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Sets `SHAPER_GIT_COMMIT` and `SHAPER_AYA_VERSION` for the crate being compiled.
pub fn emit(manifest_dir: &Path) -> anyhow::Result<()> {
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the shaper crate has no parent directory"))?;
    println!("cargo:rerun-if-env-changed=SHAPER_GIT_COMMIT");
    let commit = git_commit(workspace)
        .or_else(|| env::var("SHAPER_GIT_COMMIT").ok().filter(|c| !c.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SHAPER_GIT_COMMIT={commit}");

    let lock = workspace.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let aya = locked_version(&lock, "aya").unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SHAPER_AYA_VERSION={aya}");
    Ok(())
}

/// The short hash of HEAD, with `-dirty` when tracked files differ from it; `None` without git
/// or outside a checkout of this workspace (a source tarball unpacked inside some other
/// repository must not report that repository's commit).
fn git_commit(workspace: &Path) -> Option<String> {
    let toplevel = PathBuf::from(git(workspace, &["rev-parse", "--show-toplevel"])?);
    if toplevel.canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    // A commit moves HEAD's reflog, staging rewrites the index; an edit to a source file reruns
    // this script through the src/ watch below. Edits elsewhere in the tree (another crate) are
    // noticed at shaper's next rebuild.
    for file in ["HEAD", "logs/HEAD", "index"] {
        if let Some(path) = git(workspace, &["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={}", workspace.join(path).display());
        }
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("shaper/src").display()
    );
    let hash = git(workspace, &["rev-parse", "--short", "HEAD"])?;
    let status = git(
        workspace,
        &["status", "--porcelain", "--untracked-files=no"],
    )?;
    Some(if status.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// `git ARGS` run in `dir`, trimmed stdout; `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The version of `package` that Cargo.lock resolved. One version of aya is linked (the
/// workspace pins it exactly), so the first entry of that name is the one.
fn locked_version(lock: &Path, package: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Lock {
        package: Vec<Locked>,
    }
    #[derive(serde::Deserialize)]
    struct Locked {
        name: String,
        version: String,
    }
    let text = std::fs::read_to_string(lock).ok()?;
    let lock: Lock = toml::from_str(&text).ok()?;
    lock.package
        .into_iter()
        .find(|locked| locked.name == package)
        .map(|locked| locked.version)
}
