//! `cargo xtask vm --package`: the Debian package under the guest's real systemd, on Debian 12's
//! own kernel. The steps are in `scenarios/package.sh`, run as the guest's `run`; this side
//! builds the package, boots the guest and reports each step.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use super::{guest, image::RootFs, kernels::Kernel, matrix};

const SCENARIO: &str = include_str!("scenarios/package.sh");
const FLOOD: &str = include_str!("scenarios/udp_flood.py");

/// Boots `kernel` with the package built from this tree and runs the scenario; fails on the
/// first step that fails, with its log.
pub fn run(
    kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let built = crate::dist::tarball()?;
    let deb = crate::deb::build(&built)?;
    let work = out_dir.join("package").join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    fs::copy(&deb, work.join("shaper.deb"))
        .with_context(|| format!("copying {}", deb.display()))?;
    for (name, text) in [("run", SCENARIO), ("udp_flood.py", FLOOD)] {
        let path = work.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    eprintln!(
        "xtask vm: the package {} under systemd on {}",
        deb.display(),
        kernel.release
    );
    let outcome = guest::Boot {
        kernel,
        root,
        work: &work,
        results: &out_dir.join("package").join("results"),
        timeout,
    }
    .run()?;
    let (steps, _) = matrix::read_guest_results(&outcome.out)?;
    for step in &steps {
        eprintln!(
            "xtask vm: package: {:<22} {} ({:.1} s)",
            step.name,
            if step.exit_code == 0 { "ok" } else { "FAILED" },
            step.millis as f64 / 1000.0
        );
    }
    let security = outcome.out.join("tests/package-security.log");
    if let Ok(text) = fs::read_to_string(&security)
        && let Some(score) = text
            .lines()
            .rev()
            .find(|l| l.contains("Overall exposure level"))
    {
        eprintln!(
            "xtask vm: package: systemd-analyze security in the guest: {}",
            score.trim()
        );
    }
    if let Some(failed) = steps.iter().find(|s| s.exit_code != 0) {
        let log = outcome
            .out
            .join("tests")
            .join(format!("package-{}.log", failed.name));
        bail!(
            "package scenario: step {} failed; {}:\n{}",
            failed.name,
            log.display(),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    if outcome.exit_code != Some(0) || steps.is_empty() {
        bail!(
            "package scenario: the guest's run exited {:?}; its log ends:\n{}",
            outcome.exit_code,
            outcome.tail(40)
        );
    }
    Ok(())
}
