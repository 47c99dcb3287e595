//! `cargo xtask bench --scenario rtt`: the bench's round-trip scenario (shaper-bench's
//! `scenario/rtt.rs`) in a guest of the VM test bed, whose Debian kernel has the `netem`, `fq`
//! and BBR the build machine's lacks. The release `shaper` and `shaper-bench` run in the guest
//! as they are (its userland is Debian 12's, as the build machine's); the report comes back to
//! the target directory's `bench/rtt/`.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use super::{guest, image::RootFs, kernels::Kernel};

/// Boots `kernel` with the two binaries and runs the scenario (`--quick`: one cell per action);
/// copies `report.json` and `report.md` into `report_dir` and prints the table.
pub fn run(
    kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    binaries: (&Path, &Path),
    quick: bool,
    timeout: Duration,
    report_dir: &Path,
) -> anyhow::Result<()> {
    let work = out_dir.join("rtt").join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (shaper, bench) = binaries;
    fs::copy(shaper, work.join("shaper"))
        .with_context(|| format!("copying {}", shaper.display()))?;
    fs::copy(bench, work.join("shaper-bench"))
        .with_context(|| format!("copying {}", bench.display()))?;
    let quick_arg = if quick { " --quick" } else { "" };
    let script = format!(
        "#!/bin/bash\n\
         # The scenario's qdiscs and congestion control, loaded up front so a missing module\n\
         # fails here, by name, rather than as a refused rule.\n\
         set -e\n\
         modprobe -a sch_netem sch_fq tcp_bbr\n\
         cd /vm\n\
         ./shaper-bench --shaper /vm/shaper --only rtt{quick_arg} --out /vm/out/report.json\n"
    );
    let run = work.join("run");
    fs::write(&run, script)?;
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755))?;
    eprintln!(
        "xtask bench: the rtt scenario{} in a guest on {}",
        if quick { " (--quick)" } else { "" },
        kernel.release
    );
    let outcome = guest::Boot {
        kernel,
        root,
        work: &work,
        results: &out_dir.join("rtt").join("results"),
        timeout,
    }
    .run()?;
    fs::create_dir_all(report_dir)?;
    for name in ["report.json", "report.md"] {
        let from = outcome.out.join(name);
        if from.is_file() {
            fs::copy(&from, report_dir.join(name))?;
        }
    }
    let log = fs::read_to_string(outcome.out.join("run.log")).unwrap_or_default();
    // shaper-bench's table and its per-scenario lines.
    println!("{log}");
    if outcome.exit_code != Some(0) {
        bail!(
            "the rtt scenario failed in the guest (exit {:?}, {:.0} s); its log is above, the \
             console in {}",
            outcome.exit_code,
            outcome.took.as_secs_f64(),
            outcome.console.display()
        );
    }
    eprintln!(
        "xtask bench: rtt done in {:.0} s; report in {}",
        outcome.took.as_secs_f64(),
        report_dir.join("report.md").display()
    );
    Ok(())
}
