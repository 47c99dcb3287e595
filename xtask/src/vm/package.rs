//! `cargo xtask vm --package`: the Debian package under the guest's real systemd and then the
//! container image under the guest's podman with the DaemonSet's privileges, on Debian 12's own
//! kernel; then, in a second guest on sid's newest kernel, the previous release's package
//! upgraded to this one under a flood. The steps are in `scenarios/package.sh`,
//! `scenarios/image.sh` and `scenarios/upgrade.sh` (their shared parts in `scenarios/lib.sh`),
//! run by each guest's `run`; this side builds the packages and the image, boots the guests and
//! reports each step.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use super::{guest, image::RootFs, kernels::Kernel, matrix};

const PACKAGE: &str = include_str!("scenarios/package.sh");
const IMAGE: &str = include_str!("scenarios/image.sh");
const LIB: &str = include_str!("scenarios/lib.sh");
const FLOOD: &str = include_str!("scenarios/udp_flood.py");
const UPGRADE: &str = include_str!("scenarios/upgrade.sh");
/// The guest's entry point: the image scenario starts from the node the package scenario left
/// (its network, the package purged).
const RUN: &str = "#!/bin/bash\n/vm/package.sh && /vm/image.sh\n";
/// The second guest's entry point (see `scenarios/upgrade.sh` for why another kernel).
const UPGRADE_RUN: &str = "#!/bin/bash\n/vm/upgrade.sh\n";

/// Boots `kernel` with the package built from this tree and runs the scenario, then boots
/// `upgrade_kernel` and upgrades the previous release's package to this one under a flood;
/// fails on the first step that fails, with its log. With `only` given, only the guests whose
/// names (`package`, `upgrade`) contain one of its strings.
pub fn run(
    kernel: &Kernel,
    upgrade_kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    timeout: Duration,
    only: &[String],
) -> anyhow::Result<()> {
    let wanted = |guest: &str| only.is_empty() || only.iter().any(|o| guest.contains(o.as_str()));
    let built = crate::dist::tarball()?;
    let deb = crate::deb::build(&built)?;
    if wanted("package") {
        let image = crate::container::build(&built)?;
        package_guest(kernel, root, out_dir, timeout, &deb, &image)?;
    }
    if wanted("upgrade") {
        upgrade_guest(upgrade_kernel, root, out_dir, timeout, &deb)?;
    }
    Ok(())
}

/// The package's life cycle, then the image, on `kernel`.
fn package_guest(
    kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    timeout: Duration,
    deb: &Path,
    image: &Path,
) -> anyhow::Result<()> {
    let manifests = crate::workspace_root().join("deploy/kubernetes");
    let daemonset = pod_privileges(&fs::read_to_string(manifests.join("daemonset.yaml"))?)?;
    let work = fresh_work(out_dir, "package")?;
    fs::copy(deb, work.join("shaper.deb")).with_context(|| format!("copying {}", deb.display()))?;
    fs::copy(image, work.join("shaper.oci.tar"))
        .with_context(|| format!("copying {}", image.display()))?;
    fs::copy(
        manifests.join("configmap.yaml"),
        work.join("configmap.yaml"),
    )?;
    fs::copy(
        crate::workspace_root().join("deploy/seccomp/shaper-profile.py"),
        work.join("shaper-profile.py"),
    )?;
    write_scripts(
        &work,
        &[
            ("run", RUN),
            ("package.sh", PACKAGE),
            ("image.sh", IMAGE),
            ("daemonset.env", daemonset.as_str()),
        ],
    )?;
    eprintln!(
        "xtask vm: the package {} under systemd and the image {} under podman on {}",
        deb.display(),
        image.display(),
        kernel.release
    );
    let outcome = boot(kernel, root, out_dir, "package", &work, timeout)?;
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

    Ok(())
}

/// The previous release's package upgraded to `deb` under a flood, on `kernel`.
fn upgrade_guest(
    kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    timeout: Duration,
    deb: &Path,
) -> anyhow::Result<()> {
    // Built by the previous release's own xtask (cached; CI builds it beside the matrix).
    let (previous_commit, previous_deb) = crate::upgrade_test::previous_deb()?;
    let work = fresh_work(out_dir, "upgrade")?;
    fs::copy(deb, work.join("shaper.deb")).with_context(|| format!("copying {}", deb.display()))?;
    fs::copy(&previous_deb, work.join("shaper-previous.deb"))
        .with_context(|| format!("copying {}", previous_deb.display()))?;
    fs::write(work.join("previous-commit"), &previous_commit)?;
    write_scripts(&work, &[("run", UPGRADE_RUN), ("upgrade.sh", UPGRADE)])?;
    eprintln!(
        "xtask vm: the package of {previous_commit} upgraded to {} under systemd on {}",
        deb.display(),
        kernel.release
    );
    boot(kernel, root, out_dir, "upgrade", &work, timeout)?;
    Ok(())
}

/// An empty work directory for one guest, `OUT/NAME/work`.
fn fresh_work(out_dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let work = out_dir.join(name).join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    Ok(work)
}

/// Writes the guest's scripts (the given ones, lib.sh and the flood) executable into `work`.
fn write_scripts(work: &Path, scripts: &[(&str, &str)]) -> anyhow::Result<()> {
    for (name, text) in scripts
        .iter()
        .chain(&[("lib.sh", LIB), ("udp_flood.py", FLOOD)])
    {
        let path = work.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Boots `kernel` on `work`, prints each step of its scenario, and fails on the first failed
/// step with its log (or on a guest that ran none, with the end of its console).
fn boot(
    kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    name: &str,
    work: &Path,
    timeout: Duration,
) -> anyhow::Result<guest::Outcome> {
    let outcome = guest::Boot {
        kernel,
        root,
        work,
        results: &out_dir.join(name).join("results"),
        timeout,
    }
    .run()?;
    let (steps, _) = matrix::read_guest_results(&outcome.out)?;
    for step in &steps {
        eprintln!(
            "xtask vm: {:<8} {:<22} {} ({:.1} s)",
            step.binary,
            step.name,
            if step.exit_code == 0 { "ok" } else { "FAILED" },
            step.millis as f64 / 1000.0
        );
    }
    if let Some(failed) = steps.iter().find(|s| s.exit_code != 0) {
        let log = outcome
            .out
            .join("tests")
            .join(format!("{}-{}.log", failed.binary, failed.name));
        bail!(
            "{} scenario: step {} failed; {}:\n{}",
            failed.binary,
            failed.name,
            log.display(),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    if outcome.exit_code != Some(0) || steps.is_empty() {
        bail!(
            "{name} scenario: the guest's run exited {:?}; its log ends:\n{}",
            outcome.exit_code,
            outcome.tail(40)
        );
    }
    Ok(outcome)
}

/// Capability numbers (linux/capability.h) of the capabilities a pod may be given here.
const CAPABILITIES: &[(&str, u32)] = &[("NET_ADMIN", 12), ("PERFMON", 38), ("BPF", 39)];

/// The settings of the DaemonSet's pod that `scenarios/image.sh` reproduces with podman's flags,
/// each as the manifest must spell it; the capabilities are read from it. A manifest that says
/// something else fails here, so the scenario cannot silently test another pod than the one
/// shipped. Returns `daemonset.env` for the guest: CAPS (podman's `--cap-add`) and CAP_MASK
/// (the `CapBnd` line of /proc/PID/status the daemon must show).
fn pod_privileges(manifest: &str) -> anyhow::Result<String> {
    if !manifest
        .lines()
        .any(|line| line.trim() == "hostNetwork: true")
    {
        bail!(
            "deploy/kubernetes/daemonset.yaml no longer says `hostNetwork: true`: \
             update xtask/src/vm/scenarios/image.sh, which runs the image as the manifest says"
        );
    }
    // The daemon's container alone: the pod has others (the metrics proxy) with settings of
    // their own, which must not stand in for the daemon's.
    let container = container_block(manifest, "shaper")
        .context("deploy/kubernetes/daemonset.yaml: no container named shaper")?;
    const EXPECTED: &[&str] = &[
        "runAsUser: 0",
        "runAsGroup: 0",
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "drop: [ALL]",
        "type: RuntimeDefault",
        "mountPropagation: HostToContainer",
        "mountPath: /sys/fs/bpf",
        "memory: 256Mi",
        "- --persist",
    ];
    let lines: Vec<&str> = container.iter().map(|line| line.trim()).collect();
    for expected in EXPECTED {
        if !lines.contains(expected) {
            bail!(
                "deploy/kubernetes/daemonset.yaml no longer says `{expected}`: \
                 update xtask/src/vm/scenarios/image.sh, which runs the image as the manifest says"
            );
        }
    }
    let added = lines
        .iter()
        .find_map(|line| line.strip_prefix("add: [")?.strip_suffix(']'))
        .context("deploy/kubernetes/daemonset.yaml: no `add: [...]` capabilities line")?;
    let mut caps = Vec::new();
    let mut mask = 0u64;
    for name in added.split(',').map(str::trim) {
        let (_, number) = CAPABILITIES
            .iter()
            .find(|(known, _)| *known == name)
            .with_context(|| {
                format!("daemonset.yaml adds capability {name}, unknown to xtask vm")
            })?;
        caps.push(format!("CAP_{name}"));
        mask |= 1 << number;
    }
    Ok(format!("CAPS={}\nCAP_MASK={mask:016x}\n", caps.join(",")))
}

/// The lines of the container `name` of a manifest: from its `- name: NAME` item to the next
/// line indented as little or less (the next container, or the end of the list).
fn container_block<'a>(manifest: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut lines = manifest.lines();
    let start = lines.find(|line| line.trim() == format!("- name: {name}"))?;
    let depth = indent(start);
    let mut block = vec![start];
    block.extend(
        lines
            .take_while(|line| line.trim().is_empty() || indent(line) > depth)
            .filter(|line| !line.trim().is_empty()),
    );
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_daemonset_gives_the_scenario_its_privileges() {
        let manifest =
            fs::read_to_string(crate::workspace_root().join("deploy/kubernetes/daemonset.yaml"))
                .unwrap();
        assert_eq!(
            pod_privileges(&manifest).unwrap(),
            "CAPS=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN\nCAP_MASK=000000c000001000\n"
        );
    }

    /// The daemon's container with `settings`, then a sidecar with the hardening lines the
    /// daemon's must have.
    fn pod(settings: &str) -> String {
        let indented: String = settings.lines().map(|l| format!("      {l}\n")).collect();
        format!(
            "spec:\n  hostNetwork: true\n  containers:\n    - name: shaper\n{indented}\
             \x20   - name: sidecar\n      allowPrivilegeEscalation: false\n      \
             readOnlyRootFilesystem: true\n      drop: [ALL]\n      type: RuntimeDefault\n"
        )
    }

    const DAEMON: &str = "runAsUser: 0\nrunAsGroup: 0\nprivileged: false\n\
        allowPrivilegeEscalation: false\nreadOnlyRootFilesystem: true\ndrop: [ALL]\n\
        type: RuntimeDefault\nmountPropagation: HostToContainer\n\
        mountPath: /sys/fs/bpf\nmemory: 256Mi\n- --persist\nadd: [BPF, NET_ADMIN]\n";

    #[test]
    fn a_changed_pod_is_refused() {
        let manifest = "hostNetwork: false\n";
        let error = pod_privileges(manifest).unwrap_err().to_string();
        assert!(error.contains("hostNetwork: true"), "{error}");
        assert_eq!(
            pod_privileges(&pod(DAEMON)).unwrap(),
            "CAPS=CAP_BPF,CAP_NET_ADMIN\nCAP_MASK=0000008000001000\n"
        );
        let unknown = pod(&DAEMON.replace("NET_ADMIN", "SYS_ADMIN"));
        let error = pod_privileges(&unknown).unwrap_err().to_string();
        assert!(error.contains("SYS_ADMIN"), "{error}");
        // A hardening line only the sidecar keeps does not count for the daemon.
        let escalating = pod(&DAEMON.replace(
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
        ));
        let error = pod_privileges(&escalating).unwrap_err().to_string();
        assert!(error.contains("allowPrivilegeEscalation: false"), "{error}");
    }
}
