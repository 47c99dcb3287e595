//! The book's reference pages that are made from the code, or checked against it, are current:
//! the command reference is what `shaper-docs --markdown` writes from the CLI's clap definition,
//! and the metrics reference lists exactly the families the metrics module serves. Unprivileged.

use std::{collections::BTreeSet, path::Path, process::Command};

#[test]
fn the_command_reference_is_what_the_cli_definition_generates() {
    let output = Command::new(env!("CARGO_BIN_EXE_shaper-docs"))
        .arg("--markdown")
        .output()
        .expect("run shaper-docs --markdown");
    assert!(output.status.success(), "shaper-docs --markdown failed");
    let generated = String::from_utf8(output.stdout).expect("UTF-8");
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/reference/commands.md");
    let checked_in = std::fs::read_to_string(&page).expect("read docs/src/reference/commands.md");
    assert!(
        checked_in == generated,
        "docs/src/reference/commands.md is stale: the CLI's options changed. Regenerate it with \
         `cargo xtask docs` and commit the result"
    );
}

#[test]
fn the_metrics_reference_lists_exactly_the_families_served() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry/metrics");
    let mut served = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("read the metrics module") {
        let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("a source file");
        // Every family is named by a string literal `"shaper_…"` (counters without `_total`,
        // which the encoder adds).
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("shaper_")
                && piece
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                served.insert(piece.to_owned());
            }
        }
    }
    assert!(served.len() >= 20, "found only {served:?}");

    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/reference/metrics.md");
    let page = std::fs::read_to_string(&page).expect("read docs/src/reference/metrics.md");
    // The first column of the table: one or more `name` in backticks.
    let mut listed = BTreeSet::new();
    for row in page.lines().filter(|l| l.starts_with("| `shaper_")) {
        let first = row.split('|').nth(1).expect("a first column");
        for name in first.split('`').skip(1).step_by(2) {
            listed.insert(name.strip_suffix("_total").unwrap_or(name).to_owned());
        }
    }
    let missing: Vec<_> = served.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/src/reference/metrics.md is stale: families served but not listed {missing:?}, \
         listed but not served {extra:?} (the table is kept by hand from \
         shaper/src/telemetry/metrics/)"
    );
}
