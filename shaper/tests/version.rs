//! `shaper --version` and `-V`: the crate version, the commit the binary was built from and the
//! aya version, each checked against its own source (git, the workspace manifest).

use std::process::Command;

const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");

fn version_line(flag: &str) -> String {
    let output = Command::new(SHAPER).arg(flag).output().expect("run shaper");
    assert!(output.status.success(), "shaper {flag}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 version")
}

/// The `(commit C, aya A, rustc R)` parts of the version line, by name.
fn part<'a>(line: &'a str, name: &str) -> &'a str {
    let inside = line
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("no (...) in {line:?}"));
    inside
        .split(", ")
        .find_map(|part| part.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

#[test]
fn short_and_long_flags_print_the_same_one_line() {
    let long = version_line("--version");
    assert_eq!(long, version_line("-V"));
    assert!(
        long.starts_with(&format!("shaper {} (", env!("CARGO_PKG_VERSION"))),
        "{long:?}"
    );
    assert_eq!(long.lines().count(), 1, "{long:?}");
}

#[test]
fn names_the_aya_version_the_workspace_pins() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .expect("read the workspace manifest");
    let manifest: toml::Table = toml::from_str(&manifest).expect("parse the workspace manifest");
    let pinned = manifest["workspace"]["dependencies"]["aya"]["version"]
        .as_str()
        .expect("aya's version requirement");
    // The workspace pins aya exactly (`=0.14.0`), so the requirement names the version.
    let pinned = pinned.strip_prefix('=').expect("an exact pin");
    assert_eq!(part(&version_line("--version"), "aya"), pinned);
}

#[test]
fn names_the_git_commit_it_was_built_from() {
    let line = version_line("--version");
    let commit = part(&line, "commit");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        // Built from this checkout: the commit is HEAD's, `-dirty` or not depending on edits
        // made before the build, which this test cannot see.
        Some(head) => assert!(
            commit == head || commit == format!("{head}-dirty"),
            "{commit:?} is not HEAD {head:?}"
        ),
        None => assert_eq!(commit, "unknown", "no git here, yet a commit: {line:?}"),
    }
}
