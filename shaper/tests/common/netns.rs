//! The tests' side of `shaper_testbed::netns`: a veth pair per test, named after the test
//! process, and the namespace operations as calls that panic with the reason (a test that cannot
//! set up its sandbox fails right there). Everything is removed on drop, so a failing test leaves
//! nothing behind.

use shaper_testbed::netns::PairNames;
pub use shaper_testbed::netns::{Namespace, VethPair};

/// Namespaces `shaper-test-PID-TAG-a`/`-b` joined by `shPIDTAGa`/`shPIDTAGb`, 198.18.0.1 and
/// .2: `tag` (a few characters) keeps the pairs of one test binary apart, the pid those of
/// concurrent runs.
pub fn veth_pair(tag: &str) -> VethPair {
    let id = std::process::id() % 100_000;
    let (a, b) = (
        format!("shaper-test-{id}-{tag}-a"),
        format!("shaper-test-{id}-{tag}-b"),
    );
    let (a_if, b_if) = (format!("sh{id}{tag}a"), format!("sh{id}{tag}b"));
    let names = PairNames {
        a: &a,
        b: &b,
        a_if: &a_if,
        b_if: &b_if,
    };
    VethPair::create(names, 0).unwrap_or_else(|e| panic!("creating veth pair {tag}: {e}"))
}

/// Namespace operations that panic on failure.
pub trait InNamespace {
    /// Runs `f` on a thread inside the namespace.
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
    /// `ip -n NAME ARGS`; its stdout.
    fn ip_ok(&self, args: &[&str]) -> String;
    /// `tc ARGS` inside the namespace; its stdout.
    fn tc(&self, args: &[&str]) -> String;
}

impl InNamespace for Namespace {
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.enter(f).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip_ok(&self, args: &[&str]) -> String {
        self.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn tc(&self, args: &[&str]) -> String {
        self.run("tc", args).unwrap_or_else(|e| panic!("{e}"))
    }
}
