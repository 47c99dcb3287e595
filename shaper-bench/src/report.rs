//! The report: every figure with its repetitions, its ratio to the scenario's baseline and the
//! target it is read against; printed as a table and written as JSON (schema below, versioned).

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde::Serialize;

use crate::stats::{Summary, paired_ratios};

/// Bumped when a field changes meaning or disappears; fields are only ever added otherwise.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub quick: bool,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix_s: u64,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
    pub machine: Machine,
    pub figures: Vec<Figure>,
    /// How this run differs from the full plan, and how figures are to be read.
    pub notes: Vec<String>,
    /// Figures the issue asks for that this run could not take, with the reason.
    pub not_measured: Vec<NotMeasured>,
    /// Scenarios that failed (the bench is broken, or the machine lacks something).
    pub errors: Vec<ScenarioError>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    /// `/proc/sys/net/core/bpf_jit_enable` during the run.
    pub bpf_jit_enable: String,
}

#[derive(Debug, Serialize)]
pub struct NotMeasured {
    pub scenario: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct ScenarioError {
    pub scenario: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub unit: String,
    pub value: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Scenario-specific context (offered rates, byte accounting, per-runner figures, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// The figure divided by a baseline figure, repetition by repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub to: String,
    pub value: Summary,
}

/// What the issue aims for. Reported, never enforced: `met` compares the median.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    /// `ratio` or `value`: which median the bounds apply to.
    pub on: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    pub met: bool,
}

impl Figure {
    pub fn new(
        scenario: &str,
        name: impl Into<String>,
        unit: &str,
        samples: Vec<f64>,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let value = Summary::of(samples)
            .with_context(|| format!("{scenario}/{name}: no samples were taken"))?;
        Ok(Self {
            scenario: scenario.to_owned(),
            name,
            unit: unit.to_owned(),
            value,
            ratio: None,
            target: None,
            detail: serde_json::Map::new(),
        })
    }

    pub fn ratio_to(mut self, to: &str, baseline: &[f64]) -> Self {
        self.ratio = Summary::of(paired_ratios(&self.value.samples, baseline)).map(|value| Ratio {
            to: to.to_owned(),
            value,
        });
        self
    }

    /// A target on the median ratio (`on_ratio`) or the median value, within `[min, max]`.
    pub fn target(
        mut self,
        text: &str,
        on_ratio: bool,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Self {
        let median = if on_ratio {
            self.ratio.as_ref().map(|r| r.value.median)
        } else {
            Some(self.value.median)
        };
        let met =
            median.is_some_and(|m| min.is_none_or(|lo| m >= lo) && max.is_none_or(|hi| m <= hi));
        self.target = Some(Target {
            text: text.to_owned(),
            on: if on_ratio { "ratio" } else { "value" },
            min,
            max,
            met,
        });
        self
    }

    pub fn detail(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(value) = serde_json::to_value(value) {
            self.detail.insert(key.to_owned(), value);
        }
        self
    }
}

impl Report {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The run as a Markdown section for the book's figures page (`cargo xtask bench
    /// --update-docs`): when and where it ran, then one row per figure with its spread, its
    /// ratio and its target, then what was not measured, what failed and the run's notes.
    pub fn markdown(&self) -> String {
        let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.started_unix_s);
        let m = &self.machine;
        let mut out = format!(
            "Generated by `cargo xtask bench{}` from the run that started {} (UTC), {:.0} s: \
             {} CPU(s) ({}), Linux {}, bpf_jit_enable {}. Each cell is the median of the \
             repetitions with the smallest and largest beside it.\n\n\
             | scenario | figure | median | [min – max] | unit | ratio (median) | target |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
            if self.quick { " --quick" } else { "" },
            humantime::format_rfc3339_seconds(started),
            self.wall_s,
            m.cpus,
            m.cpu_model,
            m.kernel,
            m.bpf_jit_enable,
        );
        for f in &self.figures {
            let ratio = f.ratio.as_ref().map_or(String::new(), |r| {
                format!("{}× {}", num(r.value.median), short(&r.to))
            });
            let target = f.target.as_ref().map_or(String::new(), |t| {
                format!(
                    "{} {}",
                    t.text,
                    if t.met { "(met)" } else { "(**MISSED**)" }
                )
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | [{} – {}] | {} | {} | {} |",
                cell(&f.scenario),
                cell(&f.name),
                num(f.value.median),
                num(f.value.min),
                num(f.value.max),
                cell(&f.unit),
                cell(&ratio),
                cell(&target),
            );
        }
        let mut list = |title: &str, items: Vec<String>| {
            if !items.is_empty() {
                let _ = writeln!(out, "\n{title}\n");
                for item in items {
                    let _ = writeln!(out, "- {item}");
                }
            }
        };
        list(
            "Not measured:",
            self.not_measured
                .iter()
                .map(|n| format!("{}: {}: {}", n.scenario, n.name, n.reason))
                .collect(),
        );
        list(
            "Failed:",
            self.errors
                .iter()
                .map(|e| format!("{}: {}", e.scenario, e.error))
                .collect(),
        );
        list("Notes of the run:", self.notes.clone());
        out
    }

    /// The table: one line per figure, grouped by scenario, each next to its target.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>21} {:<9} {:>17}  target",
            "figure", "median", "[min – max]", "unit", "ratio (median)"
        );
        let mut scenario = "";
        for f in &self.figures {
            if f.scenario != scenario {
                scenario = &f.scenario;
                let _ = writeln!(out, "-- {scenario}");
            }
            let ratio = f.ratio.as_ref().map_or(String::new(), |r| {
                format!("{}× {}", num(r.value.median), short(&r.to))
            });
            let target = f.target.as_ref().map_or(String::new(), |t| {
                format!("{} {}", t.text, if t.met { "(met)" } else { "(MISSED)" })
            });
            let _ = writeln!(
                out,
                "{:<44} {:>10} {:>21} {:<9} {:>17}  {target}",
                f.name,
                num(f.value.median),
                format!("[{} – {}]", num(f.value.min), num(f.value.max)),
                f.unit,
                ratio,
            );
        }
        for m in &self.not_measured {
            let _ = writeln!(
                out,
                "-- {}: {} not measured: {}",
                m.scenario, m.name, m.reason
            );
        }
        for e in &self.errors {
            let _ = writeln!(out, "-- {} FAILED: {}", e.scenario, e.error);
        }
        out
    }
}

/// `text` as one Markdown table cell: a `|` would end the cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The baseline's name without its scenario prefix, short enough for the ratio column.
fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Three significant digits, no exponent.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_compare_the_median_of_the_ratio_or_the_value() {
        let f = Figure::new("s", "x", "ns", vec![10.0, 30.0, 20.0])
            .unwrap()
            .ratio_to("s/floor", &[10.0, 10.0, 10.0]);
        assert_eq!(f.ratio.as_ref().unwrap().value.median, 2.0);
        assert!(
            f.clone()
                .target("<= 3x", true, None, Some(3.0))
                .target
                .unwrap()
                .met
        );
        assert!(
            !f.clone()
                .target("<= 1.5x", true, None, Some(1.5))
                .target
                .unwrap()
                .met
        );
        assert!(
            f.clone()
                .target("10..25", false, Some(10.0), Some(25.0))
                .target
                .unwrap()
                .met
        );
        assert!(
            !f.target(">= 21", false, Some(21.0), None)
                .target
                .unwrap()
                .met
        );
    }

    #[test]
    fn the_markdown_names_the_run_and_gives_each_figure_a_row() {
        let figure = Figure::new("per-packet", "ipv4 | udp", "ns", vec![60.0, 64.0, 70.0])
            .unwrap()
            .ratio_to("per-packet/floor", &[25.0, 25.0, 25.0])
            .target("<= 1.8x", true, None, Some(1.8));
        let report = Report {
            schema_version: SCHEMA_VERSION,
            quick: false,
            started_unix_s: 1_796_563_800,
            wall_s: 684.2,
            machine: Machine {
                kernel: "6.18.0".into(),
                cpus: 2,
                cpu_model: "Intel(R) Xeon(R) Processor".into(),
                bpf_jit_enable: "1".into(),
            },
            figures: vec![figure],
            notes: vec!["a note".into()],
            not_measured: Vec::new(),
            errors: Vec::new(),
        };
        let text = report.markdown();
        assert!(
            text.starts_with(
                "Generated by `cargo xtask bench` from the run that started \
                 2026-12-06T13:30:00Z (UTC), 684 s: 2 CPU(s) (Intel(R) Xeon(R) Processor), Linux \
                 6.18.0, bpf_jit_enable 1."
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| per-packet | ipv4 \\| udp | 64.00 | [60.00 – 70.00] | ns | 2.560× floor | \
                 <= 1.8x (**MISSED**) |\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("Notes of the run:\n\n- a note\n"), "{text}");
    }

    #[test]
    fn a_figure_without_samples_is_an_error_and_numbers_keep_three_digits() {
        assert!(Figure::new("s", "x", "ns", Vec::new()).is_err());
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(0.98765), "0.988");
        assert_eq!(num(123456.7), "123457");
    }
}
