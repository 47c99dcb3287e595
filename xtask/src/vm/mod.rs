//! `cargo xtask vm`: shaper's kernel tests on the kernels edge nodes run, each Debian suite's
//! cloud kernel booted under QEMU with a Debian 12 userland and systemd as PID 1.
//!
//! - [`kernels`] fetches each suite's kernel package from Debian's archive;
//! - [`image`] makes the root file system (debootstrap, cached) with each kernel's modules and
//!   initrd;
//! - [`guest`] boots one kernel with a work disk and brings its results back;
//! - [`matrix`] says which tests prove which feature and makes the kernel × feature table.
//!
//! The tests are the ones the build machine runs (`cargo test` binaries, copied to the work
//! disk with the `shaper` binary at the path they were built to find it), with CI=true so a
//! test that cannot run fails instead of skipping.

mod guest;
mod image;
mod kernels;
mod matrix;
mod package;
pub mod rtt;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{bootstrap, cargo, check, target_dir};
use kernels::Suite;
use matrix::{FEATURES, KernelResult};

pub struct Options {
    /// Kernels by version line or codename; empty: every kernel of the test bed.
    pub kernels: Vec<String>,
    /// Write the table into the book's supported-kernels page between its markers.
    pub update_docs: bool,
    /// How long one guest may take, boot to power-off.
    pub timeout: Duration,
    /// Only the features whose names contain one of these; empty: all.
    pub only: Vec<String>,
    /// Instead of the matrix: the .deb under systemd on Debian 12's kernel.
    pub package: bool,
    /// Only fill the cache (every kernel, the root file system's tree) and stop.
    pub prepare: bool,
}

/// The book's page that holds the table (between its `kernel-matrix` markers) (the operator guide's *Supported kernels*).
const KERNELS_PAGE: &str = "docs/src/guide/prerequisites.md";

pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    check_tools()?;
    let suites: Vec<Suite> = if options.package {
        // Debian 12's kernel for the package and the image; sid's newest for the upgrade from
        // the previous release, whose program the verifiers of Debian 12 and 13 refuse.
        vec![kernels::suite("bookworm")?, kernels::suite("sid")?]
    } else if options.kernels.is_empty() {
        kernels::SUITES.to_vec()
    } else {
        options
            .kernels
            .iter()
            .map(|k| kernels::suite(k))
            .collect::<anyhow::Result<_>>()?
    };
    let cache = bootstrap::cache_root()
        .ok_or_else(|| anyhow!("no cache directory: set HOME or SHAPER_CACHE_DIR"))?
        .join("vm");
    if options.prepare {
        let _lock = lock_cache(&cache)?;
        let kernels = fetch_kernels(&cache, &suites, started)?;
        image::prepare_tree(&cache, &kernels)?;
        eprintln!(
            "xtask vm: [{:.0}s] kernels and root file system cached in {}",
            started.elapsed().as_secs_f64(),
            cache.display()
        );
        return Ok(());
    }
    bootstrap::run()?;
    let binaries = build_tests()?;
    eprintln!(
        "xtask vm: [{:.0}s] tests built",
        started.elapsed().as_secs_f64()
    );

    let lock = lock_cache(&cache)?;
    let kernels = fetch_kernels(&cache, &suites, started)?;
    let out_dir = target_dir()?.join("vm");
    let root = image::prepare(&cache, &kernels, &out_dir.join("root.img"))?;
    drop(lock);
    eprintln!(
        "xtask vm: [{:.0}s] root file system ready",
        started.elapsed().as_secs_f64()
    );

    if options.package {
        return package::run(
            &kernels[0],
            &kernels[1],
            &root,
            &out_dir,
            options.timeout,
            &options.only,
        );
    }

    let mut results = Vec::new();
    for kernel in &kernels {
        let below_floor = kernel.suite.codename == "bullseye";
        let work = out_dir.join(kernel.suite.label).join("work");
        prepare_work(&work, &binaries, kernel, below_floor, &options.only)?;
        eprintln!(
            "xtask vm: [{:.0}s] booting {} ({}, {})",
            started.elapsed().as_secs_f64(),
            kernel.release,
            kernel.suite.release,
            kernel.package_version
        );
        let outcome = guest::Boot {
            kernel,
            root: &root,
            work: &work,
            results: &out_dir.join(kernel.suite.label).join("results"),
            timeout: options.timeout,
        }
        .run()?;
        let (runs, verifier) = matrix::read_guest_results(&outcome.out)?;
        let result = KernelResult {
            label: kernel.suite.label.into(),
            release: kernel.release.clone(),
            package_version: kernel.package_version.clone(),
            below_floor,
            boot_and_run_secs: outcome.took.as_secs_f64(),
            runs,
            verifier,
        };
        eprintln!(
            "xtask vm: [{:.0}s] {}: {} tests, {} failed, {:.0} s in the guest",
            started.elapsed().as_secs_f64(),
            kernel.release,
            result.runs.len(),
            result.failures().len(),
            outcome.took.as_secs_f64()
        );
        for failure in result.failures() {
            let log = outcome
                .out
                .join("tests")
                .join(log_name(&failure.binary, &failure.name));
            let text = fs::read_to_string(&log).unwrap_or_default();
            eprintln!(
                "--- {} {} {} failed (exit {}); the end of {} (backtrace frames left out):\n{}",
                kernel.release,
                failure.binary,
                failure.name,
                failure.exit_code,
                log.display(),
                without_backtrace_frames(&text, 60)
            );
        }
        if outcome.exit_code != Some(0) && result.failures().is_empty() {
            eprintln!(
                "--- {}: the guest's run exited {:?}; its log ends:\n{}",
                kernel.release,
                outcome.exit_code,
                outcome.tail(40)
            );
        }
        results.push(result);
    }

    let date = utc_date()?;
    let table = matrix::table(&results, &date);
    println!("\n{table}");
    fs::write(out_dir.join("report.md"), &table)?;
    fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    if options.update_docs {
        crate::book::replace_generated(KERNELS_PAGE, "kernel-matrix", &table)?;
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.failures()
                .into_iter()
                .map(move |f| format!("{} {}::{}", r.release, f.binary, f.name))
        })
        .collect();
    let incomplete: Vec<&str> = results
        .iter()
        .filter(|r| {
            FEATURES
                .iter()
                .any(|f| matches!(r.cell(f), matrix::Cell::NotRun("not run")))
        })
        .map(|r| r.release.as_str())
        .collect();
    eprintln!(
        "xtask vm: done in {:.0} s; report in {}",
        started.elapsed().as_secs_f64(),
        out_dir.join("report.md").display()
    );
    if !failed.is_empty() {
        bail!("failed in the guests: {}", failed.join(", "));
    }
    if !incomplete.is_empty() && options.only.is_empty() {
        bail!("tests did not run on {}", incomplete.join(", "));
    }
    Ok(())
}

/// `cargo xtask bench --scenario rtt`: the bench's round-trip scenario in a guest on sid's
/// newest kernel (netem, fq and BBR; ingress shape rules need 6.5).
pub fn rtt_bench(bench: &rtt::Bench<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    check_tools()?;
    let cache = bootstrap::cache_root()
        .ok_or_else(|| anyhow!("no cache directory: set HOME or SHAPER_CACHE_DIR"))?
        .join("vm");
    let lock = lock_cache(&cache)?;
    let kernels = fetch_kernels(&cache, &[kernels::suite("sid")?], started)?;
    let out_dir = target_dir()?.join("vm");
    let root = image::prepare(&cache, &kernels, &out_dir.join("root.img"))?;
    drop(lock);
    // The full plan is about 45 minutes of runs in the guest.
    let timeout = Duration::from_secs(if bench.quick { 15 * 60 } else { 90 * 60 });
    rtt::run(&kernels[0], &root, &out_dir, timeout, bench)
}

/// Writes the rtt scenario's table (from its `report.json`) into the book's shaping page,
/// between its `rtt-table` markers.
pub fn rtt_table_into_docs(report: &Path) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text)?;
    crate::book::replace_generated(rtt::TABLE_PAGE, "rtt-table", &rtt::table(&report)?)
}

fn fetch_kernels(
    cache: &Path,
    suites: &[Suite],
    started: Instant,
) -> anyhow::Result<Vec<kernels::Kernel>> {
    let kernels = suites
        .iter()
        .map(|&suite| kernels::fetch(cache, suite))
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "xtask vm: [{:.0}s] kernels ready",
        started.elapsed().as_secs_f64()
    );
    Ok(kernels)
}

/// Holds the cache's lock while kernels are fetched and the root tree is built: two runs at once
/// (CI's `--prepare` in the background and a matrix run) would otherwise debootstrap into the
/// same tree. The second waits for the first and then finds everything ready. The lock is
/// released when the file closes, also when the holder is killed.
fn lock_cache(cache: &Path) -> anyhow::Result<fs::File> {
    fs::create_dir_all(cache)?;
    let path = cache.join(".lock");
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!(
            "xtask vm: waiting for another run holding {} (fetching kernels or building the root file system)",
            path.display()
        );
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("objcopy", "binutils"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
    ]
    .into_iter()
    .filter(|(tool, _)| which(tool).is_none())
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        bail!(
            "the VM test bed needs these Debian packages: {} (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The test binaries and the `shaper` binary they start, as cargo built them.
struct Binaries {
    tests: BTreeMap<String, PathBuf>,
    shaper: PathBuf,
}

fn build_tests() -> anyhow::Result<Binaries> {
    let output = cargo()
        .args([
            "test",
            "--no-run",
            "--package",
            "shaper",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("cargo test --no-run failed: {}", output.status);
    }
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(executable)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            tests.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    // The binary the tests were built to start (CARGO_BIN_EXE_shaper): cargo's copy in the
    // profile directory, not the one under deps/.
    let shaper = target_dir()?.join("debug").join("shaper");
    if !shaper.is_file() {
        bail!("cargo test built no {}", shaper.display());
    }
    Ok(Binaries { tests, shaper })
}

/// The last `lines` lines of a test's log without the frames of its backtraces: the guest sets
/// RUST_BACKTRACE=1, and a panic's 40-odd frames (`N: function` and `at file:line` lines) would
/// otherwise push its message and the log before it out of the excerpt CI shows. The whole log
/// stays in the guest's output directory.
fn without_backtrace_frames(text: &str, lines: usize) -> String {
    let mut kept = Vec::new();
    let mut in_backtrace = false;
    for line in text.lines() {
        if line == "stack backtrace:" {
            in_backtrace = true;
            kept.push("stack backtrace: (frames left out)");
            continue;
        }
        if in_backtrace {
            let frame = line.trim_start();
            let is_frame = frame.starts_with("at ")
                || frame
                    .split_once(": ")
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_frame {
                continue;
            }
            in_backtrace = false;
        }
        kept.push(line);
    }
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

fn log_name(binary: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{binary}.log")
    } else {
        format!("{binary}-{name}.log")
    }
}

/// The work disk's contents: the binaries (debug info stripped: a tenth of the size) and `run`,
/// which runs each test of the plan with a time limit and records it in `out/results.tsv`.
fn prepare_work(
    work: &Path,
    binaries: &Binaries,
    kernel: &kernels::Kernel,
    below_floor: bool,
    only: &[String],
) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(work);
    let bin = work.join("bin");
    fs::create_dir_all(&bin)?;
    let plan: Vec<(&str, &str)> = FEATURES
        .iter()
        .filter(|f| !below_floor || matrix::BELOW_FLOOR.contains(&f.name))
        .filter(|f| !f.needs_tcx || matrix::has_tcx(&kernel.release))
        .filter(|f| only.is_empty() || only.iter().any(|o| f.name.contains(o.as_str())))
        .flat_map(|f| f.tests.iter().copied())
        .collect();
    let needed: std::collections::BTreeSet<&str> = plan.iter().map(|(binary, _)| *binary).collect();
    let strip = |from: &Path, to: &Path| {
        check(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(from)
                .arg(to),
        )
    };
    strip(&binaries.shaper, &bin.join("shaper"))?;
    for binary in &needed {
        let path = binaries
            .tests
            .get(*binary)
            .with_context(|| format!("cargo built no test binary {binary}"))?;
        strip(path, &bin.join(binary))?;
    }
    let mut script = String::from(
        "#!/bin/bash\n\
         # Written by `cargo xtask vm`: runs the kernel tests of the matrix on this kernel.\n\
         set -u\n\
         export CI=true HOME=/root RUST_BACKTRACE=1\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         cd /vm\n\
         mkdir -p out/tests\n\
         : > out/results.tsv\n\
         uname -r > out/uname\n",
    );
    // The tests start `shaper` at the path cargo built it to (CARGO_BIN_EXE_shaper).
    let shaper = binaries.shaper.display().to_string();
    let _ = writeln!(
        script,
        "mkdir -p {dir:?}\nln -sf /vm/bin/shaper {shaper:?}",
        dir = binaries
            .shaper
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string(),
    );
    // A whole binary is one of the BPF_PROG_TEST_RUN files (classify, limits, packet_marks,
    // tcp_handshakes): each loads its own maps and programs (once, shared by its tests, but for
    // two tests that need a fresh classifier) and runs frames on loopback, so two run at once on
    // the guest's two vCPUs (QEMU's multi-threaded TCG gives each vCPU a host thread); creating
    // the maps and verifying is most of such a binary's time under TCG, about 5 s a load. A single test shares the kernel (interface names, the datapath lock, the pins,
    // traffic timing) with whatever else runs, so it runs alone.
    script.push_str(
        "run_test() {\n\
         \x20 local binary=$1 name=$2 log=$3 start\n\
         \x20 start=$(date +%s%N)\n\
         \x20 if [ -n \"$name\" ]; then\n\
         \x20   timeout --kill-after=10 600 \"bin/$binary\" --exact \"$name\" --test-threads=1 --nocapture > \"out/tests/$log\" 2>&1\n\
         \x20 else\n\
         \x20   timeout --kill-after=10 600 \"bin/$binary\" --test-threads=2 --nocapture > \"out/tests/$log\" 2>&1\n\
         \x20 fi\n\
         \x20 local code=$?\n\
         \x20 printf '%s\\t%s\\t%s\\t%s\\n' \"$binary\" \"$name\" \"$code\" $(( ($(date +%s%N) - start) / 1000000 )) >> out/results.tsv\n\
         \x20 echo \"$binary $name: exit $code\"\n\
         }\n",
    );
    for (binary, name) in &plan {
        let _ = writeln!(
            script,
            "run_test {binary} {name:?} {:?}",
            log_name(binary, name)
        );
    }
    let run = work.join("run");
    fs::write(&run, script)?;
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn utc_date() -> anyhow::Result<String> {
    let output = Command::new("date").args(["-u", "+%Y-%m-%d"]).output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::without_backtrace_frames;

    #[test]
    fn a_failure_excerpt_keeps_the_panic_message_and_drops_the_frames() {
        let log = "running 1 test\n\
                   thread 'main' panicked at shaper/tests/shaping.rs:120:5:\n\
                   udp single sender: achieved/configured = 0.8000, outside ±0.05\n\
                   stack backtrace:\n\
                   \x20  0: rust_begin_unwind\n\
                   \x20            at /rustc/x/library/std/src/panicking.rs:665:5\n\
                   \x20 12: main\n\
                   note: Some details are omitted\n\
                   test udp ... FAILED\n";
        let excerpt = without_backtrace_frames(log, 60);
        assert_eq!(
            excerpt,
            "running 1 test\n\
             thread 'main' panicked at shaper/tests/shaping.rs:120:5:\n\
             udp single sender: achieved/configured = 0.8000, outside ±0.05\n\
             stack backtrace: (frames left out)\n\
             note: Some details are omitted\n\
             test udp ... FAILED"
        );
        assert_eq!(
            without_backtrace_frames(log, 2),
            "note: Some details are omitted\ntest udp ... FAILED"
        );
    }
}
