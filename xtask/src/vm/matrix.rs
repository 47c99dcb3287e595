//! The kernel matrix: which of shaper's own kernel tests prove each feature, run unchanged in
//! the guest, and the kernel × feature table made from what they did.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// A feature and the tests (binary, exact test name; an empty name runs the whole binary) that
/// prove it.
pub struct Feature {
    pub name: &'static str,
    pub tests: &'static [(&'static str, &'static str)],
    /// Only on kernels with tcx (Linux >= 6.6).
    pub needs_tcx: bool,
}

/// Every feature the matrix shows, in the table's order. Each test is one the build machine runs
/// too; the guest adds only the kernel.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "load and verify (processed instructions, load time)",
        tests: &[(
            "kernel_support",
            "both_programs_verify_and_report_what_the_verifier_processed",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "the floor: start, or refuse naming the missing feature",
        tests: &[(
            "kernel_support",
            "below_the_floor_the_start_is_refused_at_once_naming_the_kernel_and_the_missing_feature",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "parse and count (BPF_PROG_TEST_RUN, crafted frames)",
        tests: &[("classify", "")],
        needs_tcx: false,
    },
    Feature {
        name: "attach with clsact, count real UDP and TCP",
        tests: &[("namespaces", "counts_real_udp_and_tcp_exactly_with_clsact")],
        needs_tcx: false,
    },
    Feature {
        name: "attach with tcx, count real UDP and TCP",
        tests: &[("namespaces", "counts_real_udp_and_tcp_exactly_with_tcx")],
        needs_tcx: true,
    },
    Feature {
        name: "token buckets: drop and observe (BPF_PROG_TEST_RUN)",
        tests: &[("limits", "")],
        needs_tcx: false,
    },
    Feature {
        name: "unplaced packets charged to an unplaced rule (BPF_PROG_TEST_RUN)",
        tests: &[(
            "fragments",
            "without_an_unplaced_rule_packets_without_ports_pass_and_with_one_they_are_charged",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "--per-remote: a bucket per remote address (BPF_PROG_TEST_RUN)",
        tests: &[(
            "per_remote",
            "each_remote_drains_a_bucket_of_its_own_in_exact_frames",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "a drop rule holds its rate on a veth",
        tests: &[(
            "shaping",
            "udp_at_five_times_the_limit_is_held_to_the_rate_and_an_unlimited_port_is_untouched",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "ECN marks, HTB class in skb->priority (BPF_PROG_TEST_RUN)",
        tests: &[("packet_marks", "")],
        needs_tcx: false,
    },
    Feature {
        name: "shape egress (HTB)",
        tests: &[(
            "shape_action",
            "udp_at_twice_the_rate_through_an_egress_shape_rule_arrives_at_the_rate_and_the_root_comes_back",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "shape ingress (IFB + HTB, fq_codel with ECN; before 6.5 refused)",
        tests: &[
            (
                "shape_action",
                "udp_at_twice_the_rate_through_an_ingress_shape_rule_arrives_at_the_rate_once_counted",
            ),
            (
                "shape_action",
                "an_ecn_upload_through_an_ingress_shape_rule_is_marked_by_fq_codel_not_dropped",
            ),
        ],
        needs_tcx: false,
    },
    Feature {
        name: "pace: departure times in skb->tstamp (BPF_PROG_TEST_RUN)",
        tests: &[(
            "pace_action",
            "departures_are_spaced_at_the_rate_a_later_stamp_is_kept_and_beyond_the_horizon_drops",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "pace egress (EDT + fq; mq + fq per queue)",
        tests: &[
            (
                "pace_action",
                "udp_at_twice_the_rate_through_an_egress_pace_rule_arrives_at_the_rate_and_the_root_comes_back",
            ),
            (
                "pace_action",
                "on_a_multi_queue_device_each_transmit_queue_gets_an_fq_under_shapers_mq",
            ),
            (
                "pace_action",
                "a_saved_pace_rule_comes_back_with_its_fq_root_and_without_fq_it_is_skipped_not_fatal",
            ),
        ],
        needs_tcx: false,
    },
    Feature {
        name: "watch: per-remote talkers",
        tests: &[(
            "talkers",
            "top_port_lists_exactly_the_three_remotes_with_their_packets_and_bytes",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "trace (ring buffer)",
        tests: &[(
            "trace",
            "trace_count_prints_exactly_that_many_events_of_the_port_and_none_of_another",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "TCP telemetry: handshakes, closes, resets (BPF_PROG_TEST_RUN)",
        tests: &[("tcp_handshakes", "")],
        needs_tcx: false,
    },
    Feature {
        name: "kill -9, a new daemon adopts the pins (clsact)",
        tests: &[(
            "restart",
            "a_killed_daemon_leaves_its_port_policed_and_the_next_one_continues_its_counters_clsact",
        )],
        needs_tcx: false,
    },
    Feature {
        name: "kill -9, a new daemon adopts the pins (tcx)",
        tests: &[(
            "restart",
            "a_killed_daemon_leaves_its_port_policed_and_the_next_one_continues_its_counters_tcx",
        )],
        needs_tcx: true,
    },
    Feature {
        name: "shaper down leaves nothing behind",
        tests: &[(
            "restart",
            "shaper_down_leaves_nothing_behind_and_a_later_run_starts_clean",
        )],
        needs_tcx: false,
    },
];

/// The features a kernel below the floor is checked for: only the refusal.
pub const BELOW_FLOOR: &[&str] = &["the floor: start, or refuse naming the missing feature"];

/// Whether a kernel release (`uname -r`) has tcx: Linux >= 6.6.
pub fn has_tcx(release: &str) -> bool {
    let mut parts = release.split(['.', '-', '+']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 6)
}

/// One test run in the guest, as the guest's script recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestRun {
    pub binary: String,
    pub name: String,
    pub exit_code: i32,
    pub millis: u64,
}

/// What one kernel did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelResult {
    pub label: String,
    pub release: String,
    pub package_version: String,
    pub below_floor: bool,
    pub boot_and_run_secs: f64,
    pub runs: Vec<TestRun>,
    /// The `verifier-stats:` lines of the load test, as JSON objects.
    pub verifier: Vec<serde_json::Value>,
}

/// A feature's cell for one kernel.
pub enum Cell {
    Pass { millis: u64 },
    Fail,
    NotRun(&'static str),
}

impl KernelResult {
    pub fn cell(&self, feature: &Feature) -> Cell {
        if self.below_floor && !BELOW_FLOOR.contains(&feature.name) {
            return Cell::NotRun("refused at start");
        }
        if feature.needs_tcx && !has_tcx(&self.release) {
            return Cell::NotRun("no tcx before 6.6: clsact");
        }
        let runs: Vec<&TestRun> = feature
            .tests
            .iter()
            .filter_map(|(binary, name)| {
                self.runs
                    .iter()
                    .find(|r| r.binary == *binary && r.name == *name)
            })
            .collect();
        if runs.len() < feature.tests.len() {
            return Cell::NotRun("not run");
        }
        if runs.iter().all(|r| r.exit_code == 0) {
            Cell::Pass {
                millis: runs.iter().map(|r| r.millis).sum(),
            }
        } else {
            Cell::Fail
        }
    }

    pub fn failures(&self) -> Vec<&TestRun> {
        self.runs.iter().filter(|r| r.exit_code != 0).collect()
    }

    fn verifier_summary(&self) -> String {
        if self.verifier.is_empty() {
            return "—".into();
        }
        self.verifier
            .iter()
            .map(|v| {
                let program = v["program"]
                    .as_str()
                    .unwrap_or("?")
                    .trim_start_matches("shaper_");
                let insns = v["verified_insns"]
                    .as_u64()
                    .map_or("?".into(), |n| n.to_string());
                let jit = v["jited_bytes"]
                    .as_u64()
                    .map_or(String::new(), |n| format!(", {n} B JIT"));
                let ms = v["load_ms"].as_f64().unwrap_or(0.0);
                format!("{program}: {insns} insns{jit}, {ms:.0} ms")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The markdown table: one row per feature, one column per kernel, then the verifier's figures.
pub fn table(results: &[KernelResult], date: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generated by `cargo xtask vm --all` on {date} (Debian cloud kernels under QEMU/TCG, a \
         Debian 12 userland with systemd as PID 1; times are the guest's, emulated).\n"
    );
    let _ = write!(out, "| feature |");
    for r in results {
        let _ = write!(out, " {} ({}) |", r.label, r.release);
    }
    let _ = write!(out, "\n| --- |");
    for _ in results {
        let _ = write!(out, " --- |");
    }
    out.push('\n');
    for feature in FEATURES {
        let _ = write!(out, "| {} |", feature.name);
        for r in results {
            let cell = match r.cell(feature) {
                Cell::Pass { millis } => format!("pass ({:.1} s)", millis as f64 / 1000.0),
                Cell::Fail => "**FAIL**".into(),
                Cell::NotRun(why) => format!("— ({why})"),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    let _ = write!(out, "| verifier: processed instructions, load time |");
    for r in results {
        let _ = write!(out, " {} |", r.verifier_summary());
    }
    let _ = write!(out, "\n| boot, tests and power-off |");
    for r in results {
        let _ = write!(out, " {:.0} s |", r.boot_and_run_secs);
    }
    out.push('\n');
    out
}

/// Reads the guest's `results.tsv` (binary, test, exit code, milliseconds) and the verifier
/// lines of its test logs.
pub fn read_guest_results(out: &Path) -> anyhow::Result<(Vec<TestRun>, Vec<serde_json::Value>)> {
    let tsv = fs::read_to_string(out.join("results.tsv"))
        .with_context(|| format!("reading {}", out.join("results.tsv").display()))?;
    let mut runs = Vec::new();
    for line in tsv.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let [binary, name, code, millis] = fields[..] {
            runs.push(TestRun {
                binary: binary.into(),
                name: name.into(),
                exit_code: code.parse().unwrap_or(-1),
                millis: millis.parse().unwrap_or(0),
            });
        }
    }
    let mut verifier = Vec::new();
    let logs = out.join("tests");
    let mut by_name = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(&logs) {
        for entry in entries.filter_map(Result::ok) {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                // The test harness prints the test's name on the same line as its first output.
                if let Some((_, json)) = line.split_once("verifier-stats: ")
                    && let Ok(value) = serde_json::from_str::<serde_json::Value>(json)
                {
                    let key = value["program"].as_str().unwrap_or("").to_owned();
                    by_name.insert(key, value);
                }
            }
        }
    }
    verifier.extend(by_name.into_values());
    Ok((runs, verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcx_is_there_from_6_6() {
        assert!(!has_tcx("6.1.0-50-cloud-amd64"));
        assert!(!has_tcx("5.10.0-32-cloud-amd64"));
        assert!(has_tcx("6.12.117+deb13-cloud-amd64"));
        assert!(has_tcx("7.2.13+deb14-cloud-amd64"));
    }

    #[test]
    fn a_cell_passes_only_when_its_tests_ran_and_passed() {
        let shape = FEATURES
            .iter()
            .find(|f| f.name == "shape egress (HTB)")
            .unwrap();
        let mut result = KernelResult {
            label: "6.1".into(),
            release: "6.1.0-50-cloud-amd64".into(),
            package_version: "6.1.176-1".into(),
            below_floor: false,
            boot_and_run_secs: 60.0,
            runs: Vec::new(),
            verifier: Vec::new(),
        };
        assert!(matches!(result.cell(shape), Cell::NotRun("not run")));
        result.runs.push(TestRun {
            binary: shape.tests[0].0.into(),
            name: shape.tests[0].1.into(),
            exit_code: 0,
            millis: 1000,
        });
        assert!(matches!(result.cell(shape), Cell::Pass { millis: 1000 }));
        result.runs[0].exit_code = 101;
        assert!(matches!(result.cell(shape), Cell::Fail));
        assert_eq!(result.failures().len(), 1);
        let tcx = FEATURES.iter().find(|f| f.needs_tcx).unwrap();
        assert!(matches!(result.cell(tcx), Cell::NotRun(_)));
    }
}
