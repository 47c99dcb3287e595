//! Helpers shared by the kernel tests: the root gate, hand-made packets, throwaway namespaces.
#![allow(
    dead_code,
    reason = "each test binary compiles its own copy of these helpers and uses a different part \
              of them; `expect` would fail in a binary that happens to use them all"
)]

pub mod daemon;
pub mod limits_fixture;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod tcp_bulk;
pub mod temp_dir;
pub mod test_run;
pub mod traffic;

/// Kernel tests need root. Outside CI they skip with a message; with CI=true a skip would hide a
/// broken pipeline, so it fails instead.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!in_ci, "{test}: needs root, and CI=true forbids skipping");
    eprintln!("skipping {test}: needs root (BPF_PROG_LOAD, network namespaces)");
    false
}

/// A tool the tests drive (`promtool`, `prometheus`, `bpftool`: Debian packages that .ci/run
/// installs). Outside CI a machine without it skips that part; with CI=true its absence fails.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        found.is_some() || !in_ci,
        "{name} not found, and CI=true forbids skipping (.ci/run installs it)"
    );
    if found.is_none() {
        eprintln!("skipping the {name} part: {name} is not installed");
    }
    found
}
