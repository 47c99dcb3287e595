//! One boot: QEMU under TCG with the root image (read-only: `snapshot=on` keeps it clean for the
//! next boot) and a work disk made from a host directory. The guest's runner executes the
//! disk's `run` and powers off; the host then copies the disk's `out/` back with debugfs, so
//! nothing is ever mounted on the host.
//!
//! TCG, not KVM: on these machines a guest hangs with `-enable-kvm`, and `-cpu host` aborts
//! (MSR 0x10a). Emulation is some ten times slower than the host, so timeouts are generous and
//! the tests that run in the guest tolerate timing as they do on the host.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{image::RootFs, kernels::Kernel};
use crate::check;

pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub root: &'a RootFs,
    /// Becomes the work disk: must hold an executable `run`.
    pub work: &'a Path,
    /// Where the guest's `out/` and the serial console's log land.
    pub results: &'a Path,
    /// The guest is killed after this long (its results up to then are lost).
    pub timeout: Duration,
}

/// What came back from a boot.
pub struct Outcome {
    /// `run`'s exit code, if the guest got as far as writing it.
    pub exit_code: Option<i32>,
    /// The guest's `out/` directory on the host.
    pub out: PathBuf,
    pub console: PathBuf,
    pub took: Duration,
}

impl Outcome {
    /// The guest's log to show with a failure: the end of `run`'s output, else the console's.
    pub fn tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.out.join("run.log"))
            .or_else(|_| fs::read_to_string(&self.console))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Boot<'_> {
    pub fn run(&self) -> anyhow::Result<Outcome> {
        let _ = fs::remove_dir_all(self.results);
        fs::create_dir_all(self.results)?;
        let disk = self.results.join("work.img");
        // Room for the outputs and the journal beside what the directory holds.
        let size_mib = dir_size(self.work)? / (1 << 20) + 512;
        check(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "shaper-work", "-d"])
                .arg(self.work)
                .arg(&disk)
                .arg(format!("{size_mib}M")),
        )?;
        let console = self.results.join("console.log");
        let started = Instant::now();
        let mut qemu = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max",
                "-smp",
                "2",
                "-m",
                "2048",
            ])
            .args([
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
                "-nic",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(self.kernel.vmlinuz()?)
            .arg("-initrd")
            .arg(self.root.initrd(self.kernel))
            // panic=-1 with -no-reboot: a guest kernel panic ends QEMU instead of hanging.
            .args(["-append", "root=/dev/vda rw console=ttyS0 panic=-1"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,snapshot=on",
                self.root.image.display()
            ))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()))
            .stdin(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
        let deadline = started + self.timeout;
        let status = loop {
            if let Some(status) = qemu.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = qemu.kill();
                let _ = qemu.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let took = started.elapsed();
        let out = self.results.join("out");
        // debugfs's rdump copies a directory out of the image as it is, without a mount.
        let dumped = Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump /out {}", self.results.display()))
            .arg(&disk)
            .output()
            .context("running debugfs (Debian package e2fsprogs)")?;
        let _ = fs::remove_file(&disk);
        let exit_code = fs::read_to_string(out.join("exit-code"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let outcome = Outcome {
            exit_code,
            out,
            console,
            took,
        };
        match status {
            None => bail!(
                "{}: the guest did not finish within {} s; its log ends:\n{}",
                self.kernel.release,
                self.timeout.as_secs(),
                outcome.tail(40)
            ),
            Some(status) if !status.success() => bail!(
                "{}: qemu failed ({status}); the console ends:\n{}",
                self.kernel.release,
                outcome.tail(40)
            ),
            Some(_) if !outcome.out.is_dir() => bail!(
                "{}: the guest left no results ({}); the console ends:\n{}",
                self.kernel.release,
                String::from_utf8_lossy(&dumped.stderr).trim(),
                outcome.tail(40)
            ),
            Some(_) => Ok(outcome),
        }
    }
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
