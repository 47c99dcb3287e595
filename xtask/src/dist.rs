//! `cargo xtask dist`: what an edge node installs without a toolchain, built into the target
//! directory's `dist/`:
//!
//! - the **static binary** (`x86_64-unknown-linux-musl`, the eBPF object embedded as in every
//!   build), checked with `ldd`;
//! - the **tarball** `shaper-VERSION-x86_64-linux.tar.gz`: the binary, one man page per
//!   (sub)command, bash/zsh/fish completions, the systemd unit, the example config, README, the
//!   book's Markdown (`docs/src` as `doc/`, readable as it is) and licences;
//! - the **Debian package** (see [`crate::deb`]), checked with lintian;
//! - the **container image** (see [`crate::container`]), when `--image` asks for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{bootstrap, cargo, check, check_deploy, target_dir, workspace_root};

/// The static target: musl's libc is linked in, so the binary runs on any distribution.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The workspace version (xtask shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `dist` built, for the package and image steps and the tests.
pub struct Built {
    /// The static binary, stripped: the one file the tarball, the package and the image ship.
    pub binary: PathBuf,
    /// The unpacked tarball tree (`shaper-VERSION-x86_64-linux/`).
    pub tree: PathBuf,
    /// `target/dist/`.
    pub dist: PathBuf,
}

pub struct Options {
    /// Skip the Debian package.
    pub no_deb: bool,
    /// Build the container image with podman too.
    pub image: bool,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let built = tarball()?;
    if !options.no_deb {
        crate::deb::build(&built)?;
    }
    if options.image {
        crate::container::build(&built)?;
    }
    eprintln!(
        "xtask: dist done in {:.0} s, in {}",
        started.elapsed().as_secs_f64(),
        built.dist.display()
    );
    Ok(())
}

/// Builds the static binary and the tarball.
pub fn tarball() -> anyhow::Result<Built> {
    bootstrap::run()?;
    // Cheap when installed; rustup is how the toolchain got here (TOOLCHAIN.md).
    check(Command::new("rustup").args(["target", "add", TARGET]))?;
    check(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "shaper",
        "--bin",
        "shaper",
        "--bin",
        "shaper-docs",
        "--target",
        TARGET,
    ]))?;
    let release = target_dir()?.join(TARGET).join("release");
    check_static(&release.join("shaper"))?;

    let dist = target_dir()?.join("dist");
    let name = format!("shaper-{VERSION}-x86_64-linux");
    let tree = dist.join(&name);
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    fs::create_dir_all(&tree)?;
    let binary = tree.join("shaper");
    // Symbols and debug info are two thirds of the file; the embedded eBPF object is data in
    // .rodata, which strip leaves alone (its own symbols, which `set_global` needs, are inside).
    check(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&binary)
            .arg(release.join("shaper")),
    )?;
    // The man pages and completions come from the clap command compiled into the binary.
    check(Command::new(release.join("shaper-docs")).arg(&tree))?;
    let root = workspace_root();
    for (from, to) in [
        (check_deploy::UNIT, "shaper.service"),
        ("shaper.toml", "shaper.toml"),
        ("README.md", "README.md"),
        ("CHANGELOG.md", "CHANGELOG.md"),
        ("LICENSE-MIT", "LICENSE-MIT"),
        ("LICENSE-APACHE", "LICENSE-APACHE"),
    ] {
        copy(&root.join(from), &tree.join(to))?;
    }
    copy_markdown_tree(&root.join("docs/src"), &tree.join("doc"))?;

    let tarball = dist.join(format!("{name}.tar.gz"));
    // Sorted names, root-owned entries and one fixed time (the commit's, when there is one):
    // the same tree gives the same archive listing.
    let mtime = source_date_epoch();
    check(
        Command::new("tar")
            .arg("--create")
            .arg("--gzip")
            .arg("--file")
            .arg(&tarball)
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .arg(format!("--mtime=@{mtime}"))
            .arg("--directory")
            .arg(&dist)
            .arg(&name),
    )?;
    eprintln!("xtask: {}", tarball.display());
    Ok(Built { binary, tree, dist })
}

/// Fails unless `ldd` calls `binary` static (glibc's ldd says "not a dynamic executable" for
/// a static binary and "statically linked" for a static PIE).
fn check_static(binary: &Path) -> anyhow::Result<()> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !(said.contains("statically linked") || said.contains("not a dynamic executable")) {
        bail!("{} is not static; ldd says:\n{said}", binary.display());
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The `.md` files under `from`, at the same relative paths under `to`: the book's chapters link
/// to each other relatively, so the copy reads as the source does.
fn copy_markdown_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        if path.is_dir() {
            copy_markdown_tree(&path, &to.join(name))?;
        } else if path.extension().is_some_and(|e| e == "md") {
            copy(&path, &to.join(name))?;
        }
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` if set (the reproducible-builds convention), else the time of the
/// commit checked out, else 0.
pub fn source_date_epoch() -> u64 {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        return epoch;
    }
    Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(0)
}
