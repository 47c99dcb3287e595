//! The guest's root filesystem: Debian 12 (bookworm) from debootstrap, with systemd as PID 1,
//! the tools the kernel tests drive, every test-bed kernel's modules and an initrd per kernel.
//!
//! debootstrap runs once per package list (its output is cached under a key made from that
//! list); the kernels' modules, the initrds and the guest's own files are added to that tree
//! and the ext4 image is made from it on every run (about a second).

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::kernels::{Kernel, MIRROR};
use crate::check;

/// What the guest needs beyond debootstrap's minimal base: systemd as init, the module
/// loader, `ip`/`tc`, `mount`, and the tools the kernel tests drive (python3 with scapy for
/// hand-made TCP, nft for the handshake tests' drops, bpftool for the pinned-layout test,
/// sysctl). initramfs-tools makes each kernel's initrd inside the tree. podman (with crun,
/// conmon and containers-common, its dependencies; no recommends) runs the container image in
/// the package scenario; containers-common needs a `container-network-stack`, which debootstrap
/// does not choose by itself: netavark, the smaller one (the scenario uses the host's network).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "procps",
    "python3-minimal",
    "python3-scapy",
    "nftables",
    "bpftool",
    "initramfs-tools",
    "podman",
    "netavark",
];

/// The suite of the guest's userland: the build machines' own, so binaries built here run there.
const SUITE: &str = "bookworm";

/// The unit that runs the work disk's `run` and powers the guest off: the test bed's only
/// "login".
const RUNNER_UNIT: &str = "\
[Unit]
Description=shaper test bed: run what the work disk holds, then power off
After=local-fs.target systemd-modules-load.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/shaper-vm-run
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// Mounts the work disk (the second virtio disk), runs its `run` with the output kept on the
/// disk, saves the journal beside it and powers off. The host reads the disk afterwards.
const RUNNER: &str = "\
#!/bin/bash
set -u
mkdir -p /vm
if ! mount /dev/vdb /vm; then
  echo 'shaper-vm: no work disk at /dev/vdb'
  systemctl --no-block poweroff
  exit 1
fi
mkdir -p /vm/out
/vm/run > /vm/out/run.log 2>&1
echo $? > /vm/out/exit-code
journalctl -b --no-pager > /vm/out/journal.txt 2>&1
sync
umount /vm
systemctl --no-block poweroff
";

/// A root filesystem ready to boot: the image and each kernel's initrd.
pub struct RootFs {
    pub image: PathBuf,
    tree: PathBuf,
}

impl RootFs {
    pub fn initrd(&self, kernel: &Kernel) -> PathBuf {
        self.tree
            .join("boot")
            .join(format!("initrd.img-{}", kernel.release))
    }
}

/// Builds (or reuses) the tree in the cache and adds `kernels` and the guest files to it.
pub fn prepare_tree(cache: &Path, kernels: &[Kernel]) -> anyhow::Result<PathBuf> {
    let tree = cache.join(format!(
        "rootfs-{SUITE}-{:016x}",
        fnv1a(PACKAGES.join(",").as_bytes())
    ));
    if !tree.join(".complete").is_file() {
        debootstrap(&tree)?;
    }
    for kernel in kernels {
        add_kernel(&tree, kernel)?;
    }
    configure(&tree)?;
    Ok(tree)
}

/// [`prepare_tree`], then the image of the tree written to `image`.
pub fn prepare(cache: &Path, kernels: &[Kernel], image: &Path) -> anyhow::Result<RootFs> {
    let tree = prepare_tree(cache, kernels)?;
    let started = Instant::now();
    if let Some(dir) = image.parent() {
        fs::create_dir_all(dir)?;
    }
    // mkfs.ext4 -d copies the tree into a new file system without mounting anything.
    check(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "shaper-root", "-d"])
            .arg(&tree)
            .arg(image)
            .arg("3G"),
    )?;
    eprintln!(
        "xtask vm: root image {} in {:.1} s",
        image.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(RootFs {
        image: image.to_owned(),
        tree,
    })
}

fn debootstrap(tree: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let partial = tree.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(tree);
    eprintln!(
        "xtask vm: debootstrap {SUITE} into {} (a few minutes, once)",
        tree.display()
    );
    let log = tree.with_extension("log");
    let output = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&partial)
        .arg(MIRROR)
        .output()
        .context("running debootstrap (Debian package debootstrap)")?;
    fs::write(
        &log,
        [output.stdout.as_slice(), output.stderr.as_slice()].concat(),
    )?;
    if !output.status.success() {
        bail!(
            "debootstrap failed ({}); its log is {}",
            output.status,
            log.display()
        );
    }
    fs::rename(&partial, tree)?;
    fs::write(tree.join(".complete"), PACKAGES.join("\n"))?;
    eprintln!(
        "xtask vm: debootstrap took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies the kernel's modules into the tree and makes its initrd there. The cloud kernels
/// build virtio_blk as a module, so the root disk needs the initrd.
fn add_kernel(tree: &Path, kernel: &Kernel) -> anyhow::Result<()> {
    let initrd = tree
        .join("boot")
        .join(format!("initrd.img-{}", kernel.release));
    if initrd.is_file() {
        return Ok(());
    }
    let modules = tree.join("usr/lib/modules").join(&kernel.release);
    let _ = fs::remove_dir_all(&modules);
    fs::create_dir_all(tree.join("usr/lib/modules"))?;
    check(
        Command::new("cp")
            .arg("-a")
            .arg(kernel.modules_dir()?)
            .arg(&modules),
    )?;
    if let Some(config) = kernel.config() {
        fs::copy(
            config,
            tree.join("boot").join(format!("config-{}", kernel.release)),
        )?;
    }
    check(
        Command::new("chroot")
            .arg(tree)
            .args(["depmod", &kernel.release]),
    )?;
    // Made under a temporary name: mkinitramfs creates its output before it can fail, and an
    // empty initrd must not pass for a finished one next time.
    let partial = format!("/boot/initrd.img-{}.partial", kernel.release);
    let output = Command::new("chroot")
        .arg(tree)
        .args(["mkinitramfs", "-o", &partial])
        .arg(&kernel.release)
        .output()
        .context("running mkinitramfs in the guest tree")?;
    if !output.status.success() {
        bail!(
            "mkinitramfs {}: {}",
            kernel.release,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(tree.join(partial.trim_start_matches('/')), &initrd)?;
    Ok(())
}

/// The guest's own files: the runner and its unit, no gettys (a getty on the serial console
/// hangs it up under the runner's output), no timers, a hostname.
fn configure(tree: &Path) -> anyhow::Result<()> {
    let units = tree.join("etc/systemd/system");
    fs::write(units.join("shaper-vm.service"), RUNNER_UNIT)?;
    let runner = tree.join("usr/local/sbin/shaper-vm-run");
    fs::write(&runner, RUNNER)?;
    fs::set_permissions(&runner, fs::Permissions::from_mode(0o755))?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    relink(
        "/etc/systemd/system/shaper-vm.service",
        &wants.join("shaper-vm.service"),
    )?;
    // podman's API socket and service and its boot-time jobs (auto-update, restarting
    // containers) start at every boot and take the emulated CPUs from the tests: a Go binary
    // under TCG. The image scenario runs the podman command, which needs none of them.
    for unit in [
        "serial-getty@ttyS0.service",
        "getty@tty1.service",
        "podman.socket",
        "podman.service",
        "podman-auto-update.service",
        "podman-auto-update.timer",
        "podman-restart.service",
        "podman-clean-transient.service",
    ] {
        relink("/dev/null", &units.join(unit))?;
    }
    // apt, fstrim and e2scrub timers would only compete with the tests for the emulated CPUs.
    let _ = fs::remove_dir_all(units.join("timers.target.wants"));
    fs::write(tree.join("etc/hostname"), "shaper-vm\n")?;
    Ok(())
}

fn relink(target: &str, link: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(link);
    symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

/// 64-bit FNV-1a: a cache key that stays the same across Rust releases (std's hasher need not).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
