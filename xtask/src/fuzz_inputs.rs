//! `cargo xtask fuzz-inputs`: every fuzz target of `fuzz/` (the daemon's parsers of outside
//! input) run by cargo-fuzz and libFuzzer for a while, from the seeds in `fuzz/seeds/`.
//!
//! - **cargo-fuzz** is installed once into the cache (`cargo install --locked`, beside
//!   bpf-linker), keyed by its version.
//! - **Toolchain**: the stable one, with `RUSTC_BOOTSTRAP=1` for the `-Z sanitizer` flags
//!   cargo-fuzz passes; no nightly needed. The build has `--cfg fuzzing`, under which shaper's
//!   build script skips the BPF object, so bpf-linker is not needed either.
//! - **Limits**: an input that allocates 64 MiB at once, makes the process use 1 GiB, or takes 10 s
//!   is a failure, as is a panic (each target's assertions) or an AddressSanitizer report.
//! - **Files**: the seeds are only read; what libFuzzer finds is kept in the target directory
//!   (`fuzz/corpus/TARGET`, reused by the next run) and a failing input is saved under
//!   `fuzz/artifacts/TARGET/`, with the log in `fuzz/logs/TARGET.log`. The targets are built in
//!   `fuzz/build/`, apart from every other build.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{bootstrap::cached_tool, cargo, check, target_dir, workspace_root};

/// The cargo-fuzz release this project runs with; known to build with rustc 1.95.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// libFuzzer's limits, each a failure when an input crosses it (see the module comment).
const LIBFUZZER_LIMITS: [&str; 4] = [
    "-malloc_limit_mb=64",
    "-rss_limit_mb=1024",
    "-timeout=10",
    // Requests are at most 64 KiB, but the parsers' branches are all reached by small inputs,
    // which the fuzzer mutates much faster.
    "-max_len=8192",
];

pub struct Options {
    pub seconds: u64,
    /// Unoptimized build: builds in under half the time, runs several times slower.
    pub dev: bool,
    /// Only these targets; all when empty.
    pub targets: Vec<String>,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    passed: bool,
    /// libFuzzer's last status ("cov: ... exec/s: ... rss: ..."), if it printed one.
    summary: String,
    executions: Option<u64>,
    log: PathBuf,
    artifacts: PathBuf,
    /// The fuzz binary and the input it failed on, from the log.
    reproduce: Option<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let bin = cached_tool("cargo-fuzz", CARGO_FUZZ_VERSION, &[], "about a minute")?;
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let work = target_dir()?.join("fuzz");
    // A target directory of its own: cargo counts RUSTC_BOOTSTRAP in its fingerprints, so in
    // the shared one every fuzz build and every ordinary build would rebuild the other's build
    // scripts and proc-macros.
    let build_dir = work.join("build");
    // `cargo fuzz SUBCOMMAND`, with the build flags when it builds (build, run).
    let cargo_fuzz = |subcommand: &str, builds: bool| {
        let mut cmd = cargo();
        cmd.env("PATH", &path)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", subcommand]);
        if builds {
            cmd.arg("--target-dir").arg(&build_dir);
        }
        if builds && options.dev {
            cmd.arg("--dev");
        } else if builds {
            // One codegen unit (cargo-fuzz's default) takes far longer to build.
            cmd.args(["--release", "--codegen-units", "16"]);
        }
        cmd
    };

    let targets = if options.targets.is_empty() {
        let output = cargo_fuzz("list", false)
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo fuzz list")?;
        if !output.status.success() {
            bail!("cargo fuzz list failed: {}", output.status);
        }
        String::from_utf8(output.stdout)?
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    } else {
        options.targets.clone()
    };

    let started = Instant::now();
    if options.targets.is_empty() {
        check(&mut cargo_fuzz("build", true))?;
    } else {
        for target in &targets {
            check(cargo_fuzz("build", true).arg(target))?;
        }
    }
    eprintln!("xtask: fuzz targets built in {:.0?}", started.elapsed());

    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(target, &work, options.seconds, &cargo_fuzz)?);
    }

    eprintln!("\nxtask: fuzz-inputs, {} s per target", options.seconds);
    for outcome in &outcomes {
        let executions = outcome.executions.map_or("?".to_owned(), |n| n.to_string());
        eprintln!(
            "  {:<16} {:<6} {:>10} executions  {}",
            outcome.target,
            if outcome.passed { "ok" } else { "FAILED" },
            executions,
            outcome.summary
        );
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
    for outcome in &failed {
        eprintln!(
            "\n{} failed; log: {}",
            outcome.target,
            outcome.log.display()
        );
        match &outcome.reproduce {
            Some(command) => eprintln!("reproduce (runs the saved input once):\n  {command}"),
            None => eprintln!("inputs are saved in {}", outcome.artifacts.display()),
        }
    }
    if !failed.is_empty() {
        bail!("{} of {} fuzz targets failed", failed.len(), outcomes.len());
    }
    Ok(())
}

/// Runs `target` for `seconds` from its seeds and the corpus earlier runs left in `work`.
fn run_target(
    target: &str,
    work: &Path,
    seconds: u64,
    cargo_fuzz: &dyn Fn(&str, bool) -> Command,
) -> anyhow::Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let logs = work.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = workspace_root().join("fuzz/seeds").join(target);
    let log = logs.join(format!("{target}.log"));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log.display()
    );
    let mut artifact_prefix = artifacts.clone().into_os_string();
    artifact_prefix.push("/");
    let mut cmd = cargo_fuzz("run", true);
    cmd.arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(LIBFUZZER_LIMITS)
        .arg({
            let mut arg = std::ffi::OsString::from("-artifact_prefix=");
            arg.push(&artifact_prefix);
            arg
        })
        .arg("-print_final_stats=1")
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let status = cmd
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;

    let text = fs::read_to_string(&log).unwrap_or_default();
    let summary = text
        .lines()
        .rfind(|line| line.contains(" DONE ") || line.contains("cov: "))
        .and_then(|line| line.find("cov: ").map(|at| line[at..].trim().to_owned()))
        .unwrap_or_default();
    let executions = text
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok());
    if !status.success() {
        // The end of libFuzzer's report names the failure and the input it saved.
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  | {line}");
        }
    }
    // cargo-fuzz logs "Running `BINARY ARGS`", libFuzzer "Test unit written to FILE".
    let binary = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Running `"))
        .and_then(|rest| rest.split_whitespace().next());
    let unit = text.lines().find_map(|line| {
        line.split_once("Test unit written to ")
            .map(|(_, file)| file.trim())
    });
    let reproduce = binary
        .zip(unit)
        .map(|(binary, unit)| format!("(cd {} && {binary} {unit})", workspace_root().display()));
    Ok(Outcome {
        target: target.to_owned(),
        passed: status.success(),
        reproduce,
        summary,
        executions,
        log,
        artifacts,
    })
}
