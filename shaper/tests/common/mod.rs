//! Helpers shared by the kernel tests: the root gate, hand-made packets, throwaway namespaces.
#![allow(
    dead_code,
    reason = "each test binary compiles its own copy of these helpers and uses a different part \
              of them; `expect` would fail in a binary that happens to use them all"
)]

pub mod daemon;
pub mod flood;
pub mod limits_fixture;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod shared;
pub mod tcp_bulk;
pub mod temp_dir;
pub mod test_run;
pub mod top_port;
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

/// The name of the function this is expanded in: the type name of an item declared inside a
/// function is that function's path followed by the item's name (`std::any::type_name`).
#[allow(unused_macros, reason = "not every test binary uses it")]
macro_rules! function_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}
#[allow(unused_imports, reason = "not every test binary uses it")]
pub(crate) use function_name;

/// The start of a kernel test, with the test's name written once (its `fn` line), as ripgrep's
/// `rgtest!` does for its tests: returns from the test when it must skip ([`require_root`]).
#[allow(unused_macros, reason = "not every test binary uses it")]
macro_rules! root_or_skip {
    () => {
        if !$crate::common::require_root($crate::common::function_name!()) {
            return;
        }
    };
}
#[allow(unused_imports, reason = "not every test binary uses it")]
pub(crate) use root_or_skip;

/// [`root_or_skip!`], then a veth pair whose namespaces carry the test's name
/// (`shaper-test-PID-TEST-a`/`-b`, what `ip netns` shows while it runs):
/// `let pair = common::test_veth_pair!();`.
#[allow(unused_macros, reason = "not every test binary uses it")]
macro_rules! test_veth_pair {
    () => {{
        $crate::common::root_or_skip!();
        $crate::common::netns::veth_pair_named($crate::common::function_name!())
    }};
}
#[allow(unused_imports, reason = "not every test binary uses it")]
pub(crate) use test_veth_pair;

/// [`root_or_skip!`], then a namespace of the test's own, named after it, with only its
/// loopback: `let ns = common::test_namespace!();`.
#[allow(unused_macros, reason = "not every test binary uses it")]
macro_rules! test_namespace {
    () => {{
        $crate::common::root_or_skip!();
        $crate::common::netns::namespace_named($crate::common::function_name!())
    }};
}
#[allow(unused_imports, reason = "not every test binary uses it")]
pub(crate) use test_namespace;

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
