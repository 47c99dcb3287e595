//! `shaper-bench`: the measurements behind `cargo xtask bench` (issue 5). Run as root; prints a
//! table and writes the JSON report (schema in `report.rs` and docs/src/reference/json.md; the scenarios in docs/src/contributing/benchmarks.md
//! section). Every namespace, daemon, nftables table and file it makes is removed when it ends,
//! also on error or Ctrl-C.

mod classic_htb;
mod daemon;
mod floor;
mod nft;
mod packets;
mod previous;
mod report;
mod scenario;
mod stats;
mod sys;
mod tcp_stats;
mod traffic;

use std::{
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use report::{Machine, Report, ScenarioError};
use scenario::{Context, Plan};

#[derive(Debug, Parser)]
#[command(
    about = "shaper's benchmarks (issue 5): per-packet cost, contention, path overhead, \
                   rate accuracy against nftables, control plane"
)]
struct Args {
    /// Shorter windows and one accuracy rate (10 MB/s): proves the bench works, in about 3 minutes.
    #[arg(long)]
    quick: bool,
    /// The release `shaper` binary, for the daemon and CLI scenarios.
    #[arg(long, value_name = "PATH")]
    shaper: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, value_name = "PATH", default_value = "target/bench/report.json")]
    out: PathBuf,
    /// The previous release's eBPF object, for the per-packet scenario's comparison (`cargo
    /// xtask bench` passes the one of the commit in release/previous).
    #[arg(long, value_name = "PATH", requires = "previous_commit")]
    previous_object: Option<PathBuf>,
    /// The commit `--previous-object` was built from, for the report.
    #[arg(long, value_name = "COMMIT")]
    previous_commit: Option<String>,
    /// The rtt scenario: only the runs whose names (`rtt80ms/upload/cubic_1/shaper_drop_ecn`)
    /// contain one of these (comma-separated); default all. For a look at a few cells: a full
    /// run takes three quarters of an hour.
    #[arg(long, value_delimiter = ',')]
    rtt_filter: Vec<String>,
    /// Run only these scenarios (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    PerPacket,
    Contention,
    Path,
    Accuracy,
    Control,
    Shaping,
    Rtt,
}

impl Scenario {
    /// What runs without `--only`: every scenario the build machine's kernel can run. `rtt`
    /// needs `netem` and `fq` and runs only when named (in the VM test bed: `cargo xtask bench
    /// --scenario rtt`).
    const ALL: [Self; 6] = [
        Self::PerPacket,
        Self::Contention,
        Self::Path,
        Self::Accuracy,
        Self::Control,
        Self::Shaping,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::PerPacket => "per_packet",
            Self::Contention => "contention",
            Self::Path => "path",
            Self::Accuracy => "accuracy",
            Self::Control => "control",
            Self::Shaping => "shaping",
            Self::Rtt => "rtt",
        }
    }

    fn run(self, cx: &mut Context) -> anyhow::Result<()> {
        match self {
            Self::PerPacket => scenario::per_packet::run(cx),
            Self::Contention => scenario::contention::run(cx),
            Self::Path => scenario::path::run(cx),
            Self::Accuracy => scenario::accuracy::run(cx),
            Self::Control => scenario::control::run(cx),
            Self::Shaping => scenario::shaping::run(cx),
            Self::Rtt => scenario::rtt::run(cx),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench needs root (BPF programs, network namespaces, nftables)");
    }
    if !args.shaper.is_file() {
        bail!(
            "{} is not the shaper binary (build it with `cargo build --release`)",
            args.shaper.display()
        );
    }
    sys::catch_interrupts();
    let started = Instant::now();
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut cx = Context {
        plan: Plan {
            rtt_filter: args.rtt_filter.clone(),
            ..Plan::new(args.quick)
        },
        shaper: args.shaper.canonicalize()?,
        previous: args
            .previous_object
            .clone()
            .zip(args.previous_commit.clone()),
        figures: Vec::new(),
        notes: Vec::new(),
        not_measured: Vec::new(),
    };
    let mut errors = Vec::new();
    let selected = if args.only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.only.clone()
    };
    for scenario in selected {
        if sys::interrupted() {
            break;
        }
        let t = Instant::now();
        eprintln!("shaper-bench: {} ...", scenario.name());
        if let Err(e) = scenario.run(&mut cx) {
            eprintln!("shaper-bench: {} failed: {e:#}", scenario.name());
            errors.push(ScenarioError {
                scenario: scenario.name().into(),
                error: format!("{e:#}"),
            });
        }
        eprintln!(
            "shaper-bench: {} took {:.1} s",
            scenario.name(),
            t.elapsed().as_secs_f64()
        );
    }
    let report = Report {
        schema_version: report::SCHEMA_VERSION,
        quick: args.quick,
        started_unix_s,
        wall_s: started.elapsed().as_secs_f64(),
        machine: machine(),
        figures: cx.figures,
        notes: cx.notes,
        not_measured: cx.not_measured,
        errors,
    };
    print!("{}", report.table());
    report.write_json(&args.out)?;
    // Beside the JSON: the same run as the book's figures section (`cargo xtask bench
    // --update-docs` copies it there).
    let markdown = args.out.with_extension("md");
    std::fs::write(&markdown, report.markdown())
        .with_context(|| format!("writing {}", markdown.display()))?;
    println!("report: {} ({:.0} s)", args.out.display(), report.wall_s);
    if sys::interrupted() {
        bail!("interrupted");
    }
    if !report.errors.is_empty() {
        bail!("{} scenario(s) failed", report.errors.len());
    }
    Ok(())
}

fn machine() -> Machine {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    Machine {
        kernel: read("/proc/sys/kernel/osrelease"),
        cpus: sys::online_cpus(),
        cpu_model,
        bpf_jit_enable: read("/proc/sys/net/core/bpf_jit_enable"),
    }
}
