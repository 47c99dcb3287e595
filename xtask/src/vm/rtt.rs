//! `cargo xtask bench --scenario rtt`: the bench's round-trip scenario (shaper-bench's
//! `scenario/rtt.rs`) in a guest of the VM test bed, whose Debian kernel has the `netem`, `fq`
//! and BBR the build machine's lacks. The release `shaper` and `shaper-bench` run in the guest
//! as they are (its userland is Debian 12's, as the build machine's); the report comes back to
//! the target directory's `bench/rtt/`.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use super::{guest, image::RootFs, kernels::Kernel};

/// What to run: the release binaries, `--quick` (one cell per action), arguments for the
/// guest's `shaper-bench`, and where the report goes.
pub struct Bench<'a> {
    pub shaper: &'a Path,
    pub bench: &'a Path,
    pub quick: bool,
    pub args: &'a [String],
    pub report_dir: &'a Path,
}

/// Boots `kernel` with the two binaries and runs the scenario; copies `report.json` and
/// `report.md` into the report directory and prints the table.
pub fn run(
    kernel: &Kernel,
    root: &RootFs,
    out_dir: &Path,
    timeout: Duration,
    bench: &Bench<'_>,
) -> anyhow::Result<()> {
    let Bench {
        shaper,
        bench: bench_binary,
        quick,
        args,
        report_dir,
    } = *bench;
    let work = out_dir.join("rtt").join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    fs::copy(shaper, work.join("shaper"))
        .with_context(|| format!("copying {}", shaper.display()))?;
    fs::copy(bench_binary, work.join("shaper-bench"))
        .with_context(|| format!("copying {}", bench_binary.display()))?;
    let mut extra = String::new();
    if quick {
        extra.push_str(" --quick");
    }
    for arg in args {
        if arg.contains('\'') {
            bail!("an argument for the guest's shaper-bench with a quote: {arg}");
        }
        extra.push_str(&format!(" '{arg}'"));
    }
    let script = format!(
        "#!/bin/bash\n\
         # The scenario's qdiscs and congestion control, loaded up front so a missing module\n\
         # fails here, by name, rather than as a refused rule.\n\
         set -e\n\
         modprobe -a sch_netem sch_fq sch_fq_codel tcp_bbr\n\
         cd /vm\n\
         ./shaper-bench --shaper /vm/shaper --only rtt{extra} --out /vm/out/report.json\n"
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

/// The book's page whose `rtt-table` section `bench --scenario rtt --update-docs` writes.
pub const TABLE_PAGE: &str = "docs/src/guide/shaping.md";

/// The limiters in the table's column order, with their headings.
const COLUMNS: [(&str, &str); 7] = [
    ("unlimited", "unlimited"),
    ("shaper_drop", "`drop`"),
    ("shaper_drop_ecn", "`drop --ecn`"),
    ("shaper_shape", "`shape`"),
    ("shaper_pace", "`pace`"),
    ("tc_htb_u32", "tc HTB"),
    ("nft_limit", "nft `limit`"),
];

/// The median of a figure's detail `key` (a list of samples).
fn detail_median(figure: &serde_json::Value, key: &str) -> Option<f64> {
    let mut samples: Vec<f64> = figure["detail"][key]
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(samples[n / 2]),
        _ => Some((samples[n / 2 - 1] + samples[n / 2]) / 2.0),
    }
}

/// The rtt scenario's report (`report.json`) as Markdown: a table per path, a row per direction
/// and traffic, a column per limiter; each cell the medians of goodput / rate, retransmitted
/// segments and the sender's smoothed RTT (p50 / p99), and for four streams Jain's fairness.
pub fn table(report: &serde_json::Value) -> anyhow::Result<String> {
    let figures = report["figures"]
        .as_array()
        .context("report.json without figures")?;
    let by_name = |name: &str| figures.iter().find(|f| f["name"] == name);
    let median = |name: &str| by_name(name).and_then(|f| f["value"]["median"].as_f64());
    // Cells in the report's order: path/direction/traffic, each once.
    let mut rows: Vec<String> = Vec::new();
    for figure in figures.iter().filter(|f| f["scenario"] == "rtt") {
        let name = figure["name"].as_str().unwrap_or_default();
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() == 4 {
            let row = parts[..3].join("/");
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        bail!("report.json holds no rtt figures");
    }
    let mut out = String::new();
    let mut path = "";
    for row in &rows {
        let (row_path, rest) = row.split_once('/').unwrap_or((row, ""));
        if row_path != path {
            path = row_path;
            out.push_str(&format!(
                "\n**{}** — goodput / rate · retransmitted · RTT p50/p99 (ms)\n\n| | {} |\n|{}\n",
                path.replace("rtt", "RTT ")
                    .replace("_loss", ", loss ")
                    .replace("pct", "%"),
                COLUMNS.map(|(_, heading)| heading).join(" | "),
                " --- |".repeat(COLUMNS.len() + 1)
            ));
        }
        let mut cells = Vec::new();
        for (limiter, _) in COLUMNS {
            let name = format!("{row}/{limiter}");
            let Some(figure) = by_name(&name) else {
                cells.push("—".to_owned());
                continue;
            };
            let goodput = figure["value"]["median"].as_f64().unwrap_or(f64::NAN);
            let retrans = median(&format!("{name}/retrans"));
            let (p50, p99) = (
                detail_median(figure, "rtt_p50_ms"),
                detail_median(figure, "rtt_p99_ms"),
            );
            let mut cell = format!("{goodput:.3}");
            if let Some(retrans) = retrans {
                cell.push_str(&format!(" · {:.2}%", retrans * 100.0));
            }
            if let (Some(p50), Some(p99)) = (p50, p99) {
                cell.push_str(&format!(" · {p50:.0}/{p99:.0}"));
            }
            if let Some(fairness) = median(&format!("{name}/fairness")) {
                cell.push_str(&format!(" · J {fairness:.2}"));
            }
            cells.push(cell);
        }
        out.push_str(&format!(
            "| {} | {} |\n",
            rest.replace('/', " "),
            cells.join(" | ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_cell_and_a_dash_where_a_limiter_did_not_run() {
        let figure = |name: &str, median: f64| {
            serde_json::json!({
                "scenario": "rtt", "name": name, "value": {"median": median},
                "detail": {"rtt_p50_ms": [20.0, 22.0], "rtt_p99_ms": [30.0]}
            })
        };
        let report = serde_json::json!({"figures": [
            figure("rtt20ms/upload/cubic_1/shaper_drop", 0.957),
            figure("rtt20ms/upload/cubic_1/shaper_drop/retrans", 0.022),
            figure("rtt20ms/download/cubic_4/shaper_pace", 0.965),
            figure("rtt20ms/download/cubic_4/shaper_pace/fairness", 0.99),
        ]});
        let text = table(&report).unwrap();
        assert!(text.contains("**RTT 20ms**"), "{text}");
        assert!(
            text.contains("| upload cubic_1 | — | 0.957 · 2.20% · 21/30 | — |"),
            "{text}"
        );
        assert!(text.contains("0.965 · 21/30 · J 0.99"), "{text}");
        assert!(table(&serde_json::json!({"figures": []})).is_err());
    }
}
