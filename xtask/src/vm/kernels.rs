//! The guest kernels: each supported Debian suite's `linux-image-cloud-amd64`, fetched with apt
//! from Debian's archive and unpacked (never installed) into the cache.
//!
//! Each suite gets its own apt state (sources list, package lists, archive cache) under the
//! cache, so nothing of the build machine's apt configuration is read or changed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::check;

/// A Debian suite whose cloud kernel the test bed boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suite {
    /// The suite's codename, as apt and debootstrap name it.
    pub codename: &'static str,
    /// What an operator calls the suite's kernel: its version line.
    pub label: &'static str,
    /// The distribution release that ships it, for the book's kernel table.
    pub release: &'static str,
}

/// Every suite the test bed knows, oldest first. bullseye's 5.10 is below the floor: it is
/// booted to prove that `shaper run` refuses it cleanly.
pub const SUITES: [Suite; 4] = [
    Suite {
        codename: "bullseye",
        label: "5.10",
        release: "Debian 11",
    },
    Suite {
        codename: "bookworm",
        label: "6.1",
        release: "Debian 12",
    },
    Suite {
        codename: "trixie",
        label: "6.12",
        release: "Debian 13",
    },
    Suite {
        codename: "sid",
        label: "newest",
        release: "Debian sid",
    },
];

pub fn suite(name: &str) -> anyhow::Result<Suite> {
    SUITES
        .iter()
        .find(|s| s.codename == name || s.label == name)
        .copied()
        .with_context(|| {
            let known: Vec<String> = SUITES
                .iter()
                .map(|s| format!("{} ({})", s.label, s.codename))
                .collect();
            format!(
                "no kernel {name:?} in the test bed; known: {}",
                known.join(", ")
            )
        })
}

/// The Debian archive every suite comes from (the mirror the build machines reach).
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// A kernel unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub suite: Suite,
    /// The kernel release (`uname -r`), e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `6.1.176-1`.
    pub package_version: String,
    /// The unpacked packages: `boot/` or `usr/lib/modules/RELEASE/` hold vmlinuz, and
    /// `lib/modules/RELEASE` or `usr/lib/modules/RELEASE` the modules.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> anyhow::Result<PathBuf> {
        // Before trixie's successor the image is `boot/vmlinuz-RELEASE`; sid's split packages
        // keep it beside the modules.
        let candidates = [
            self.root
                .join("boot")
                .join(format!("vmlinuz-{}", self.release)),
            self.modules_dir()?.join("vmlinuz"),
        ];
        candidates
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no vmlinuz in {}", self.root.display()))
    }

    pub fn modules_dir(&self) -> anyhow::Result<PathBuf> {
        ["lib/modules", "usr/lib/modules"]
            .into_iter()
            .map(|dir| self.root.join(dir).join(&self.release))
            .find(|p| p.is_dir())
            .with_context(|| format!("no modules of {} in {}", self.release, self.root.display()))
    }

    /// The kernel's build configuration (`/boot/config-RELEASE`), which mkinitramfs consults
    /// when it is there; sid's split packages carry none.
    pub fn config(&self) -> Option<PathBuf> {
        let boot = self
            .root
            .join("boot")
            .join(format!("config-{}", self.release));
        let beside_modules = self.modules_dir().ok().map(|m| m.join("config"));
        [Some(boot), beside_modules]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
    }
}

/// The apt state of one suite under `cache`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(cache: &Path, suite: Suite) -> anyhow::Result<Self> {
        let dir = cache.join("apt").join(suite.codename);
        for sub in ["lists/partial", "archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // The keyring of Debian's archive (package debian-archive-keyring, on every Debian
        // system) signs every suite, sid included.
        fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {} main\n",
                suite.codename
            ),
        )?;
        Ok(Self { dir })
    }

    fn options(&self, cmd: &mut Command) {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        cmd.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", d("sources.list")))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", d("lists")))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.dir.display()))
            .arg("-o")
            .arg(format!("Dir::Cache::archives={}", d("archives")))
            // `apt-get download` writes to the working directory as `_apt` when it can; the
            // cache belongs to root, so download as root without the warning.
            .args(["-o", "APT::Sandbox::User=root", "-q"]);
    }

    fn get(&self) -> Command {
        let mut cmd = Command::new("apt-get");
        self.options(&mut cmd);
        cmd
    }

    fn cache(&self) -> Command {
        let mut cmd = Command::new("apt-cache");
        self.options(&mut cmd);
        cmd
    }

    /// The packages `package` depends on directly, by name.
    fn depends(&self, package: &str) -> anyhow::Result<Vec<String>> {
        let output = self
            .cache()
            .args(["depends", "--no-recommends", "--no-suggests", package])
            .output()
            .context("running apt-cache depends")?;
        if !output.status.success() {
            bail!(
                "apt-cache depends {package}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(parse_depends(&String::from_utf8_lossy(&output.stdout)))
    }

    fn version(&self, package: &str) -> anyhow::Result<String> {
        let output = self
            .cache()
            .args(["show", "--no-all-versions", package])
            .output()
            .context("running apt-cache show")?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache show {package}: no version"))
    }
}

/// `apt-cache depends` output: the names after `Depends:` (alternatives and virtual packages,
/// in `<...>`, are skipped: the kernel packages depend on their parts plainly).
fn parse_depends(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_start_matches([' ', '|']).strip_prefix("Depends: "))
        .filter(|name| !name.starts_with('<'))
        .map(str::to_owned)
        .collect()
}

/// Fetches and unpacks the newest cloud kernel of `suite`, or returns the one already unpacked.
/// Updating the package lists costs a few seconds; without the archive, the newest kernel
/// already in the cache is used.
pub fn fetch(cache: &Path, suite: Suite) -> anyhow::Result<Kernel> {
    let apt = Apt::new(cache, suite)?;
    let updated = apt
        .get()
        .arg("update")
        .output()
        .context("running apt-get update")?;
    if !updated.status.success() {
        if let Some(kernel) = newest_cached(cache, suite)? {
            eprintln!(
                "xtask vm: the {} package lists could not be updated ({}); using the cached {}",
                suite.codename,
                String::from_utf8_lossy(&updated.stderr).trim(),
                kernel.release
            );
            return Ok(kernel);
        }
        bail!(
            "apt-get update for {}: {}",
            suite.codename,
            String::from_utf8_lossy(&updated.stderr).trim()
        );
    }
    // linux-image-cloud-amd64 is a metapackage naming the suite's current kernel package.
    let image = apt
        .depends("linux-image-cloud-amd64")?
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .context("linux-image-cloud-amd64 names no linux-image package")?;
    let release = image
        .strip_prefix("linux-image-")
        .unwrap_or(&image)
        .to_owned();
    let package_version = apt.version(&image)?;
    let root = cache.join("kernels").join(&release);
    let kernel = Kernel {
        suite,
        release: release.clone(),
        package_version,
        root,
    };
    if kernel.root.join(".complete").is_file() {
        return Ok(kernel);
    }
    // sid's image package is empty: the kernel is in linux-binary-RELEASE, the modules in
    // linux-modules-RELEASE and the build configuration (which mkinitramfs reads) in
    // linux-base-RELEASE.
    let parts = ["binary", "modules", "base"].map(|part| format!("linux-{part}-{release}"));
    let mut packages = vec![image.clone()];
    packages.extend(
        apt.depends(&image)?
            .into_iter()
            .filter(|d| parts.contains(d)),
    );
    eprintln!(
        "xtask vm: fetching {} ({})",
        packages.join(" "),
        suite.codename
    );
    let downloads = apt.dir.join("archives");
    check(
        apt.get()
            .current_dir(&downloads)
            .arg("download")
            .args(&packages),
    )?;
    let _ = fs::remove_dir_all(&kernel.root);
    fs::create_dir_all(&kernel.root)?;
    for package in &packages {
        let deb = fs::read_dir(&downloads)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("{package}: downloaded, but no .deb found"))?;
        check(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&kernel.root),
        )?;
        fs::remove_file(&deb)?;
    }
    kernel.vmlinuz()?;
    fs::write(
        kernel.root.join(".complete"),
        format!("{}\n", kernel.package_version),
    )?;
    Ok(kernel)
}

/// The newest complete kernel of `suite` in the cache (by directory name order).
fn newest_cached(cache: &Path, suite: Suite) -> anyhow::Result<Option<Kernel>> {
    let dir = cache.join("kernels");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut found: Vec<Kernel> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(".complete").is_file())
        .filter_map(|e| {
            let release = e.file_name().to_string_lossy().into_owned();
            let version = fs::read_to_string(e.path().join(".complete")).ok()?;
            belongs_to(&release, suite).then(|| Kernel {
                suite,
                release,
                package_version: version.trim().to_owned(),
                root: e.path(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.release.cmp(&b.release));
    Ok(found.pop())
}

/// Whether a kernel release string is of `suite`'s version line.
fn belongs_to(release: &str, suite: Suite) -> bool {
    match suite.codename {
        "sid" => !SUITES
            .iter()
            .filter(|s| s.codename != "sid")
            .any(|s| release.starts_with(&format!("{}.", s.label))),
        _ => release.starts_with(&format!("{}.", suite.label)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_reads_plain_names_and_skips_virtual_ones() {
        let text = "linux-image-7.2.13+deb14-cloud-amd64\n  PreDepends: linux-base\n \
                    |Depends: dracut\n  Depends: <linux-initramfs-tool>\n    dracut\n  \
                    Depends: linux-binary-7.2.13+deb14-cloud-amd64\n  Breaks: initramfs-tools\n";
        assert_eq!(
            parse_depends(text),
            ["dracut", "linux-binary-7.2.13+deb14-cloud-amd64"]
        );
    }

    #[test]
    fn a_release_belongs_to_its_suite_and_sid_takes_what_no_other_does() {
        let bookworm = suite("bookworm").unwrap();
        let sid = suite("sid").unwrap();
        assert!(belongs_to("6.1.0-50-cloud-amd64", bookworm));
        assert!(!belongs_to("6.12.117+deb13-cloud-amd64", bookworm));
        assert!(belongs_to("7.2.13+deb14-cloud-amd64", sid));
        assert!(!belongs_to("6.12.117+deb13-cloud-amd64", sid));
    }

    #[test]
    fn suites_are_found_by_codename_or_version() {
        assert_eq!(suite("6.1").unwrap().codename, "bookworm");
        assert_eq!(suite("trixie").unwrap().label, "6.12");
        assert!(suite("4.19").is_err());
    }
}
