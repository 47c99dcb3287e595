//! The container image (`Containerfile`, FROM scratch): built with podman from the tarball's
//! tree, checked to hold exactly the binary `dist` built and tested as its entrypoint, saved as
//! an OCI archive under `dist/`, and removed from podman's store again. Nothing is pulled
//! (FROM scratch) and nothing is run (these machines cannot run containers).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    check,
    dist::{Built, VERSION},
    workspace_root,
};

/// Where the binary sits in the image, and so its entrypoint.
const IMAGE_BINARY: &str = "/usr/sbin/shaper";

/// Builds, checks and saves the image; returns the OCI archive's path.
pub fn build(built: &Built) -> anyhow::Result<PathBuf> {
    // The pid keeps two builds on one machine apart; the tag users see is set on loading.
    let tag = format!(
        "localhost/shaper-dist-check:{VERSION}-{}",
        std::process::id()
    );
    check(
        Command::new("podman")
            .args(["build", "--quiet", "--pull=never", "--file"])
            .arg(workspace_root().join("Containerfile"))
            .arg("--tag")
            .arg(&tag)
            .arg(&built.tree),
    )?;
    let checked = check_image(&tag, built);
    let saved = checked.and_then(|()| {
        let archive = built
            .dist
            .join(format!("shaper-{VERSION}-x86_64-linux.oci.tar"));
        let _ = std::fs::remove_file(&archive);
        check(
            Command::new("podman")
                .args(["save", "--quiet", "--format", "oci-archive", "--output"])
                .arg(&archive)
                .arg(&tag),
        )?;
        eprintln!("xtask: {} (podman load -i ...)", archive.display());
        Ok(archive)
    });
    let removed = podman(&["rmi", "--force", &tag]);
    let archive = saved?;
    removed?;
    Ok(archive)
}

/// The image's entrypoint is [`IMAGE_BINARY`] and that file is byte for byte the binary the
/// tarball holds (the one the dist tests run).
fn check_image(tag: &str, built: &Built) -> anyhow::Result<()> {
    let entrypoint = podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        tag,
    ])?;
    if entrypoint.trim() != format!("[\"{IMAGE_BINARY}\"]") {
        bail!("{tag}: entrypoint {entrypoint}, not {IMAGE_BINARY}");
    }
    // A created container is never started: `podman cp` reads its filesystem.
    let container = podman(&["create", tag])?.trim().to_owned();
    let copy = built.dist.join("image-binary");
    let copied = podman(&[
        "cp",
        &format!("{container}:{IMAGE_BINARY}"),
        &copy.to_string_lossy(),
    ]);
    let removed = podman(&["rm", "--force", &container]);
    copied?;
    removed?;
    let (in_image, tested) = (sha256(&copy)?, sha256(&built.binary)?);
    std::fs::remove_file(&copy)?;
    if in_image != tested {
        bail!(
            "{tag}: {IMAGE_BINARY} has sha256 {in_image}, the tested binary {tested} ({})",
            built.binary.display()
        );
    }
    eprintln!("xtask: image entrypoint {IMAGE_BINARY}, sha256 {tested} (the tested binary)");
    Ok(())
}

fn podman(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("podman")
        .args(args)
        .output()
        .context("running podman (Debian package `podman`)")?;
    if !output.status.success() {
        bail!(
            "podman {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn sha256(file: &Path) -> anyhow::Result<String> {
    let output = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum {}", file.display()))
}
