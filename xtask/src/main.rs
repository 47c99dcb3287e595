//! Jobs cargo cannot do by itself: `cargo xtask bootstrap | run | test | fuzz | bench | demo |
//! fuzz-inputs | check-deploy | dist | vm | upgrade-test | book | docs`.

mod book;
mod bootstrap;
mod check_deploy;
mod container;
mod deb;
mod demo;
mod dist;
mod fuzz_inputs;
mod kubernetes;
mod upgrade_test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "shaper's build, run and test jobs")]
struct Cli {
    #[command(subcommand)]
    command: Job,
}

#[derive(Debug, Subcommand)]
enum Job {
    /// Install what the eBPF build needs: the rust-src component and a bpf-linker built against
    /// this rustc's LLVM (cached; a second run costs nothing).
    Bootstrap,
    /// Bootstrap, build the release binary and run `shaper run ARGS` (default: attach to the
    /// interface of the default route).
    Run {
        /// Arguments for `shaper run`, e.g. `-- --iface eth0`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap and run every test: unit tests and the privileged kernel tests (root needed;
    /// with CI=true a privileged test that cannot run fails instead of skipping).
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- classify`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap and run the differential fuzzer of the classifier (root needed): seeded random
    /// frames through the real object with BPF_PROG_TEST_RUN, each checked against etherparse.
    /// Prints frames/s and every disagreement with its seed and frame in hex, minimised.
    Fuzz {
        /// Frames to run (the default takes about 4 s in a release build).
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// The seed (decimal or 0x-hex); by default one from the clock, printed first.
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
    },
    /// Bootstrap, build in release and run the benchmarks (root needed): prints a table and
    /// writes report.json under the target directory's bench/. About 19 minutes; `--quick` about 3.
    Bench {
        /// Shorter windows and one accuracy rate: proves the bench works, figures are rough.
        #[arg(long)]
        quick: bool,
        /// After a full run, write its figures into the book's figures page
        /// (docs/src/contributing/figures.md, between its bench-figures markers; with
        /// `--scenario rtt`, its table into docs/src/guide/shaping.md). A quick run's figures
        /// are too rough for the book: refused with --quick.
        #[arg(long, conflicts_with = "quick")]
        update_docs: bool,
        /// `rtt`: instead of the build machine's scenarios, the round-trip scenario (every action
        /// at 1, 20 and 80 ms, issue 29) in a guest of the VM test bed, whose kernel has netem,
        /// fq and BBR: about 45 minutes, `--quick` (one cell per action at 20 ms) about 3. The
        /// report goes to the target directory's bench/rtt/.
        #[arg(long, value_parser = ["rtt"])]
        scenario: Option<String>,
        /// With `--scenario rtt --update-docs`: write the table of this earlier run's
        /// report.json (e.g. target/bench/rtt/report.json) instead of running again: a full run
        /// takes three quarters of an hour.
        #[arg(
            long,
            value_name = "REPORT",
            requires = "update_docs",
            requires = "scenario"
        )]
        from_report: Option<PathBuf>,
        /// Extra arguments for `shaper-bench`, e.g. `-- --only per-packet,contention`; with
        /// `--scenario rtt`, e.g. `-- --rtt-filter rtt80ms/upload` (some of its runs).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A one-minute tour (root needed): two throwaway network namespaces, the daemon on one
    /// end, UDP traffic to ports 8080 and 9090, `shaper top`, and after 10 s a 4 Mbit/s limit
    /// on 9090. Everything is removed afterwards.
    Demo {
        /// No TUI: measure both ports before and after the limit with `shaper top --once
        /// --json`, print the table and fail unless 9090 holds the limit (±10%) and 8080 keeps
        /// its rate.
        #[arg(long)]
        ci: bool,
        /// End after this many seconds if `q` did not end it first.
        #[arg(
            long,
            value_name = "SECS",
            default_value_t = 120,
            value_parser = clap::value_parser!(u64).range(demo::MIN_DURATION_SECS..=MAX_DEMO_SECS),
        )]
        duration: u64,
    },
    /// Fuzz every parser of the daemon's outside input (rates and sizes, the config file,
    /// control requests, netlink replies, the state file) with cargo-fuzz, installed into the
    /// cache on first use. Fails on a panic, a sanitizer report, or an input that allocates
    /// 64 MiB at once; the failing input is saved under the target directory's fuzz/artifacts/.
    FuzzInputs {
        /// How long each target runs.
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u64,
        /// Unoptimized build: builds in less than half the time, runs several times slower
        /// (what CI runs, for a few seconds per target).
        #[arg(long)]
        dev: bool,
        /// Only these targets (`cargo fuzz list` in fuzz/); default all.
        targets: Vec<String>,
    },
    /// Check the deployment files: the systemd unit with `systemd-analyze verify` (a warning
    /// fails) and `systemd-analyze security` (fails above the exposure threshold), the
    /// Kubernetes manifests rendered with `kubectl kustomize` and validated with
    /// kubernetes-validate.
    CheckDeploy,
    /// Run the kernel tests on the kernels edge nodes run (root needed): each Debian suite's
    /// cloud kernel (bullseye 5.10, bookworm 6.1, trixie 6.12, sid) booted under QEMU with a
    /// Debian 12 userland and systemd as PID 1. Prints the kernel x feature table and writes it
    /// under the target directory's vm/. The first run fetches the kernels and builds the root
    /// file system (a few minutes; cached); each kernel then takes a few minutes.
    Vm {
        /// Only these kernels (5.10, 6.1, 6.12, newest, or a codename); repeatable.
        #[arg(long = "kernel", value_name = "KERNEL", conflicts_with = "all")]
        kernels: Vec<String>,
        /// Every kernel of the test bed (what runs without --kernel too).
        #[arg(long)]
        all: bool,
        /// Write the table into the book's docs/src/guide/prerequisites.md (between its
        /// kernel-matrix markers).
        #[arg(long = "update-docs", alias = "update-readme")]
        update_docs: bool,
        /// Minutes one guest may take, boot to power-off.
        #[arg(long, value_name = "MIN", default_value_t = 20)]
        timeout: u64,
        /// Only the features whose names contain this (e.g. `verify`, `shape`); repeatable.
        /// The table then shows the rest as not run. With --package, only the guests whose
        /// scenario names contain it (`package`, the package and the image; `upgrade`).
        #[arg(long, value_name = "TEXT")]
        only: Vec<String>,
        /// Instead of the matrix: build the .deb and run it under the guest's systemd on
        /// Debian 12's kernel (install, the real socket, reload, restart under a flood, stop,
        /// purge, `systemd-analyze security`), then the image under its podman; then, in a
        /// second guest on sid's kernel, install the previous release's .deb and upgrade it to
        /// this one under a flood.
        #[arg(long, conflicts_with_all = ["kernels", "update_docs"])]
        package: bool,
        /// Only fetch every kernel of the test bed and build the root file system into the
        /// cache, then stop: no tests built, nothing booted. What CI starts first, beside the
        /// build, so the matrix later finds both ready.
        #[arg(long, conflicts_with_all = ["kernels", "only", "update_docs", "package"])]
        prepare: bool,
    },
    /// Upgrade under traffic from the previous release and back (root needed): that release's
    /// daemon (its binary built from `git archive COMMIT`, cached by commit) runs a limit, a
    /// watch and a UDP flood at 12x the limit, is killed, and this tree's daemon adopts its
    /// pinned datapath; then this one is killed and the previous one adopts it again. Fails if
    /// more than rate x time + burst arrives, a `_total` series goes down, or a rule changes.
    UpgradeTest {
        /// The commit to upgrade from (needs the history); default the one in release/previous.
        #[arg(long, value_name = "COMMIT")]
        from: Option<String>,
        /// Instead of the test: only build the previous release's Debian package with that
        /// release's own `cargo xtask dist` (cached by commit), which `vm --package` installs
        /// and then upgrades to this tree's. What CI runs beside the kernel matrix.
        #[arg(long, conflicts_with_all = ["from", "args"])]
        prepare_deb: bool,
        /// Extra arguments for the test binary, e.g. `-- tcx`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the book in docs/ with mdBook (installed into the cache on first use) into the
    /// target directory's book/, and check every relative link of it and of README.md: the file
    /// must exist and a #fragment must name one of its headings.
    Book,
    /// Rewrite the book's generated command reference (docs/src/reference/commands.md) from the
    /// CLI's clap definition (`shaper-docs --markdown`).
    Docs,
    /// Build what an edge node installs without a toolchain, under the target directory's
    /// dist/: the static musl binary, shaper-VERSION-x86_64-linux.tar.gz (binary, man pages,
    /// completions, unit, example config, README and the book's Markdown, licences) and the
    /// Debian package (checked with lintian).
    Dist {
        /// Skip the Debian package.
        #[arg(long)]
        no_deb: bool,
        /// Also build the container image with podman and check it holds the tested binary.
        #[arg(long)]
        image: bool,
    },
}

/// The longest `cargo xtask demo --duration`: the demo is a tour, not a service.
const MAX_DEMO_SECS: u64 = 3600;

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Job::Bootstrap => bootstrap::run().map(|_| ()),
        Job::Run { args } => run(args),
        Job::Test { args } => test(args),
        Job::Fuzz { frames, seed } => fuzz(frames, seed),
        Job::Bench {
            quick,
            update_docs,
            scenario,
            from_report,
            args,
        } => match from_report {
            Some(report) => vm::rtt_table_into_docs(&report),
            None => bench(quick, update_docs, scenario.as_deref(), args),
        },
        Job::Demo { ci, duration } => demo::run(&demo::Options {
            ci,
            duration: Duration::from_secs(duration),
        }),
        Job::FuzzInputs {
            seconds,
            dev,
            targets,
        } => fuzz_inputs::run(&fuzz_inputs::Options {
            seconds,
            dev,
            targets,
        }),
        Job::CheckDeploy => check_deploy::run(),
        Job::UpgradeTest {
            prepare_deb: true, ..
        } => upgrade_test::previous_deb().map(|(commit, deb)| {
            eprintln!("xtask: the package of {commit}: {}", deb.display());
        }),
        Job::UpgradeTest { from, args, .. } => {
            upgrade_test::run(&upgrade_test::Options { from, args })
        }
        Job::Book => book::run(),
        Job::Docs => book::generate(),
        Job::Dist { no_deb, image } => dist::run(&dist::Options { no_deb, image }),
        Job::Vm {
            kernels,
            all: _,
            update_docs,
            timeout,
            only,
            package,
            prepare,
        } => vm::run(&vm::Options {
            kernels,
            update_docs,
            timeout: Duration::from_secs(timeout * 60),
            only,
            package,
            prepare,
        }),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, `build.target-dir` of a config file, or
/// `target/` of the workspace. Asked of cargo itself (`cargo metadata`), as every cargo tool
/// does, so the binaries xtask runs are the ones cargo just built wherever it put them.
fn target_dir() -> anyhow::Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", output.status);
    }
    let metadata: Metadata =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata's output")?;
    Ok(metadata.target_directory)
}

/// A binary of this workspace built with `--release`.
fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    Ok(target_dir()?.join("release").join(name))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn check(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    bootstrap::run()?;
    check(cargo().args(["build", "--release", "--package", "shaper"]))?;
    let binary = release_binary("shaper")?;
    let mut cmd = Command::new(&binary);
    cmd.arg("run").args(&args);
    eprintln!("xtask: {} run {}", binary.display(), args.join(" "));
    // Let the daemon own SIGINT/SIGTERM handling; report its own exit status.
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn test(args: Vec<String>) -> anyhow::Result<()> {
    bootstrap::run()?;
    // Default members only: the no_std eBPF crate cannot build for the host (the build script
    // of `shaper` builds it for the BPF target). Kernel tests share kernel state (interface
    // names, the interface locks), so they run one at a time; the traffic tests print what they
    // measured (achieved/configured rates), which `--show-output` keeps in the log.
    let (cargo_args, test_args): (Vec<String>, Vec<String>) =
        match args.iter().position(|a| a == "--") {
            Some(split) => (args[..split].to_vec(), args[split + 1..].to_vec()),
            None => (args, Vec::new()),
        };
    check(
        cargo()
            .arg("test")
            .args(&cargo_args)
            .arg("--")
            .arg("--test-threads=1")
            .arg("--show-output")
            .args(&test_args),
    )
}

/// The fuzzer is one of shaper's integration tests (`shaper/tests/classify_fuzz.rs`, an ignored
/// test that reads its frames and seed from the environment), so that it reaches the library
/// and the tests' packet helpers without xtask depending on `shaper` (see `bench`), and
/// etherparse stays a dev-dependency. Built in release: the reference parser is then no
/// slower than the syscall per frame.
fn fuzz(frames: u64, seed: Option<u64>) -> anyhow::Result<()> {
    bootstrap::run()?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64)
    });
    eprintln!("xtask: fuzz: {frames} frames, seed {seed:#x} (`--seed {seed:#x}` repeats them)");
    check(
        cargo()
            .args([
                "test",
                "--release",
                "--package",
                "shaper",
                "--test",
                "classify_fuzz",
                "--",
                "--ignored",
                "--exact",
                "fuzz_as_asked_by_xtask",
                "--nocapture",
            ])
            .env("SHAPER_FUZZ_FRAMES", frames.to_string())
            .env("SHAPER_FUZZ_SEED", format!("{seed:#x}")),
    )
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e} (a decimal or 0x-hex 64-bit number)"))
}

/// The bench is its own crate (`shaper-bench`, which depends on `shaper`), so that xtask never
/// depends on `shaper`: that would need bpf-linker before `bootstrap` could build it.
fn bench(
    quick: bool,
    update_docs: bool,
    scenario: Option<&str>,
    args: Vec<String>,
) -> anyhow::Result<()> {
    if update_docs && args.iter().any(|a| a.starts_with("--only")) {
        bail!("--update-docs takes a whole run's figures; drop --only");
    }
    bootstrap::run()?;
    check(cargo().args([
        "build",
        "--release",
        "--package",
        "shaper",
        "--package",
        "shaper-bench",
    ]))?;
    if scenario == Some("rtt") {
        let report_dir = target_dir()?.join("bench/rtt");
        vm::rtt_bench(&vm::rtt::Bench {
            shaper: &release_binary("shaper")?,
            bench: &release_binary("shaper-bench")?,
            quick,
            args: &args,
            report_dir: &report_dir,
        })?;
        if update_docs {
            vm::rtt_table_into_docs(&report_dir.join("report.json"))?;
        }
        return Ok(());
    }
    let mut cmd = Command::new(release_binary("shaper-bench")?);
    cmd.current_dir(workspace_root())
        .arg("--shaper")
        .arg(release_binary("shaper")?)
        .arg("--out")
        .arg(target_dir()?.join("bench/report.json"));
    if quick {
        cmd.arg("--quick");
    }
    // The previous release's object, for the per-packet comparison: built by the upgrade test's
    // build of that release (cached by commit; `.ci/run` has built it by now). A clone without
    // that commit (a shallow one) runs the bench without the comparison, and says so.
    match upgrade_test::previous_object() {
        Ok((commit, object)) => {
            cmd.arg("--previous-object")
                .arg(object)
                .arg("--previous-commit")
                .arg(commit);
        }
        Err(e) => eprintln!(
            "xtask bench: without the previous release's object (per_packet's \
             previous_release_* figures): {e:#}"
        ),
    }
    check(cmd.args(&args))?;
    if update_docs {
        // shaper-bench writes the Markdown beside the JSON.
        let section = std::fs::read_to_string(target_dir()?.join("bench/report.md"))
            .context("reading the run's report.md")?;
        book::replace_generated(FIGURES_PAGE, "bench-figures", &section)?;
    }
    Ok(())
}

/// The book's page whose `bench-figures` section `bench --update-docs` writes.
const FIGURES_PAGE: &str = "docs/src/contributing/figures.md";
