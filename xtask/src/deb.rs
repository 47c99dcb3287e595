//! The Debian package, assembled by hand and built with `dpkg-deb` (no cargo-deb to install):
//! the files of the tarball in their Debian places, the maintainer scripts of
//! `deploy/debian/`, and a lintian run that fails on any error.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    check,
    dist::{Built, VERSION, source_date_epoch},
    workspace_root,
};

/// The Debian revision of the one package built from each upstream version.
const REVISION: &str = "1";

/// Who the package names as its maintainer.
const MAINTAINER: &str = "shaper maintainers <shaper-maintainers@users.noreply.github.com>";

pub fn build(built: &Built) -> anyhow::Result<PathBuf> {
    let version = format!("{VERSION}-{REVISION}");
    let root = built.dist.join(format!("deb/shaper_{version}_amd64"));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let tree = &built.tree;
    let deploy = workspace_root().join("deploy/debian");

    install(&built.binary, &root.join("usr/sbin/shaper"), 0o755)?;
    install(
        &tree.join("shaper.service"),
        &root.join("lib/systemd/system/shaper.service"),
        0o644,
    )?;
    install(
        &tree.join("shaper.toml"),
        &root.join("etc/shaper/shaper.toml"),
        0o644,
    )?;
    install(
        &deploy.join("sysusers.conf"),
        &root.join("usr/lib/sysusers.d/shaper.conf"),
        0o644,
    )?;
    fs::create_dir_all(root.join("var/lib/shaper"))?;
    for page in fs::read_dir(tree.join("man8"))? {
        let page = page?.path();
        let name = page
            .file_name()
            .context("a man page without a name")?
            .to_string_lossy()
            .into_owned();
        gzip(&page, &root.join(format!("usr/share/man/man8/{name}.gz")))?;
    }
    for (from, to) in [
        (
            "shaper.bash",
            "usr/share/bash-completion/completions/shaper",
        ),
        ("_shaper", "usr/share/zsh/vendor-completions/_shaper"),
        (
            "shaper.fish",
            "usr/share/fish/vendor_completions.d/shaper.fish",
        ),
    ] {
        install(&tree.join("completions").join(from), &root.join(to), 0o644)?;
    }
    let doc = root.join("usr/share/doc/shaper");
    install(&deploy.join("copyright"), &doc.join("copyright"), 0o644)?;
    let changelog = built.dist.join("deb/changelog.Debian");
    fs::write(&changelog, debian_changelog(&version)?)?;
    gzip(&changelog, &doc.join("changelog.Debian.gz"))?;
    install_documentation(&workspace_root(), &doc)?;

    let control = root.join("DEBIAN");
    fs::create_dir_all(&control)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(&deploy.join(script), &control.join(script), 0o755)?;
    }
    // dpkg keeps an administrator's edits of a conffile across upgrades and removals.
    fs::write(control.join("conffiles"), "/etc/shaper/shaper.toml\n")?;
    fs::write(control.join("md5sums"), md5sums(&root)?)?;
    fs::write(
        control.join("control"),
        control_file(&version, installed_size_kib(&root)?),
    )?;

    let deb = built.dist.join(format!("shaper_{version}_amd64.deb"));
    check(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", source_date_epoch().to_string()),
    )?;
    lintian(&deb)?;
    installs_into_a_throwaway_root(&deb)?;
    eprintln!("xtask: {}", deb.display());
    Ok(deb)
}

fn control_file(version: &str, installed_kib: u64) -> String {
    format!(
        "Package: shaper\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://github.com/shaper-maintainers/shaper\n\
         Description: eBPF per-port traffic shaper and observer\n \
         shaper attaches an eBPF classifier to the tc hooks of network interfaces,\n \
         counts every packet per port and polices per-port (or port range) rate\n \
         limits with token buckets in the kernel. The datapath stays pinned across\n \
         service restarts and upgrades, so traffic is never left unshaped.\n \
         .\n \
         It exports Prometheus metrics, serves health probes, and comes with a\n \
         live terminal view (shaper top). The binary is static and embeds the\n \
         eBPF object; Linux 6.1 or newer is required.\n"
    )
}

/// The changelog dpkg and lintian expect in every binary package; one entry per build, dated
/// like the tarball.
fn debian_changelog(version: &str) -> anyhow::Result<String> {
    let date = Command::new("date")
        .arg("-R")
        .arg("-u")
        .arg("-d")
        .arg(format!("@{}", source_date_epoch()))
        .output()
        .context("running date")?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_owned();
    Ok(format!(
        "shaper ({version}) unstable; urgency=medium\n\n  \
         * Upstream release {VERSION}, built by `cargo xtask dist`.\n\n \
         -- {MAINTAINER}  {date}\n"
    ))
}

/// Lintian's verdict: any error fails; warnings are printed (the guide's *Install*, docs/src/guide/install.md, says why each
/// warning kept is acceptable).
fn lintian(deb: &Path) -> anyhow::Result<()> {
    let output = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian (Debian package `lintian`)")?;
    let said = String::from_utf8_lossy(&output.stdout);
    for line in said.lines() {
        eprintln!("lintian: {line}");
    }
    if said.lines().any(|line| line.starts_with("E:")) {
        bail!("lintian found errors in {}", deb.display());
    }
    if !output.status.success() && said.trim().is_empty() {
        bail!(
            "lintian failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Unpacks the package into an empty directory and runs its binary: the file dpkg would
/// install is the static, working one.
fn installs_into_a_throwaway_root(deb: &Path) -> anyhow::Result<()> {
    let root = deb.with_extension("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    check(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let output = Command::new(root.join("usr/sbin/shaper"))
        .arg("--version")
        .output()
        .context("running the package's /usr/sbin/shaper")?;
    let said = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !said.starts_with(&format!("shaper {VERSION} ")) {
        bail!("the package's shaper --version: {}: {said}", output.status);
    }
    eprintln!("xtask: the package's /usr/sbin/shaper: {}", said.trim());
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// README.md and the book's Markdown (`docs/src` as `book/`, as the tarball's `doc/`) under
/// /usr/share/doc/shaper, where an operator without the web looks first; each file over 4 kB
/// `gzip -9n`'d as Debian Policy 12.3 asks (`zless` reads it), the others as they are.
fn install_documentation(workspace: &Path, doc: &Path) -> anyhow::Result<()> {
    let book = workspace.join("docs/src");
    let mut pages = Vec::new();
    walk(&book, &mut pages)?;
    pages.retain(|page| page.extension().is_some_and(|e| e == "md"));
    let mut placed = vec![(workspace.join("README.md"), doc.join("README.md"))];
    for page in pages {
        let relative = page.strip_prefix(&book)?.to_path_buf();
        placed.push((page, doc.join("book").join(relative)));
    }
    for (from, to) in placed {
        if fs::metadata(&from)?.len() > 4096 {
            let mut compressed = to.into_os_string();
            compressed.push(".gz");
            gzip(&from, Path::new(&compressed))?;
        } else {
            install(&from, &to, 0o644)?;
        }
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n`: no name or time stamp in the header (Debian policy 12.3, and reproducible).
fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    let output = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(from)
        .output()
        .context("running gzip")?;
    if !output.status.success() {
        bail!("gzip {}: {}", from.display(), output.status);
    }
    fs::write(to, output.stdout)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Every file under `root` but DEBIAN/, as `md5sum` prints it with paths relative to `root`.
fn md5sums(root: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.retain(|file| !file.starts_with(root.join("DEBIAN")));
    files.sort();
    let mut sums = String::new();
    for file in files {
        let output = Command::new("md5sum")
            .arg(&file)
            .output()
            .context("running md5sum")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let sum = text.split_whitespace().next().context("md5sum output")?;
        let relative = file.strip_prefix(root)?;
        writeln!(sums, "{sum}  {}", relative.display())?;
    }
    Ok(sums)
}

fn installed_size_kib(root: &Path) -> anyhow::Result<u64> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    let mut bytes = 0;
    for file in files {
        if !file.starts_with(root.join("DEBIAN")) {
            bytes += fs::metadata(&file)?.len().div_ceil(1024) * 1024;
        }
    }
    Ok(bytes.div_ceil(1024))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
