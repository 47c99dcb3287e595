//! `cargo xtask check-deploy`: the deployment files under `deploy/` checked by the tools that
//! will read them — systemd for the unit; kubectl and kubernetes-validate for the manifests.

use std::{fs, process::Command};

use anyhow::{Context as _, bail};

use crate::{bootstrap, cargo, check, target_dir, workspace_root};

/// The unit, relative to the workspace root.
pub const UNIT: &str = "deploy/systemd/shaper.service";

/// Where the unit says the binary is, as installed by the package.
pub const INSTALLED_BINARY: &str = "/usr/sbin/shaper";

/// `systemd-analyze security`'s overall exposure for the unit, in tenths, must not exceed this.
/// The unit scores 2.6 (systemd 252); the margin admits a newer systemd weighing a setting a
/// little differently, not a weakened unit. The guide's *Install* (docs/src/guide/install.md) explains what the rest is.
const EXPOSURE_THRESHOLD_TENTHS: u32 = 28;

pub fn run() -> anyhow::Result<()> {
    systemd_unit()?;
    crate::kubernetes::check_manifests()?;
    Ok(())
}

fn systemd_unit() -> anyhow::Result<()> {
    bootstrap::run()?;
    check(cargo().args(["build", "--package", "shaper"]))?;
    let binary = target_dir()?.join("debug/shaper");
    let unit = fs::read_to_string(workspace_root().join(UNIT)).context(UNIT)?;
    if !unit.contains(INSTALLED_BINARY) {
        bail!("{UNIT} no longer runs {INSTALLED_BINARY}");
    }
    // `systemd-analyze verify` checks that ExecStart's binary exists and is executable, and
    // CI machines do not have shaper installed: verify a copy of the unit whose ExecStart names
    // the binary just built instead (the only change; `--root` would need a whole tree).
    let dir = target_dir()?.join("check-deploy");
    fs::create_dir_all(&dir)?;
    let copy = dir.join("shaper.service");
    fs::write(
        &copy,
        unit.replace(INSTALLED_BINARY, &binary.to_string_lossy()),
    )?;

    // Warnings (an unknown key, a bad value, a deprecated setting) exit 0, so any output is a
    // failure. `--man=no`: the Documentation= man pages are installed by the package, not here.
    eprintln!("xtask: systemd-analyze verify {UNIT}");
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .context("running systemd-analyze (Debian package `systemd`)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    if !verified.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify {UNIT}: {}\n{said}", verified.status);
    }

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={EXPOSURE_THRESHOLD_TENTHS}"))
        .arg(&copy)
        .output()
        .context("running systemd-analyze security")?;
    let report = String::from_utf8_lossy(&security.stdout);
    let overall = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or("no overall exposure level in the report");
    eprintln!("xtask: {}", overall.trim_start_matches('→').trim());
    if !security.status.success() {
        bail!(
            "{UNIT}: exposure above {}.{} ({})\n{report}",
            EXPOSURE_THRESHOLD_TENTHS / 10,
            EXPOSURE_THRESHOLD_TENTHS % 10,
            security.status
        );
    }
    Ok(())
}
