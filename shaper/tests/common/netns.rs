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
    pair_of(tag, tag)
}

/// A veth pair for the test `test`: its namespaces carry the whole name
/// (`shaper-test-PID-TEST-a`/`-b`); the interfaces, whose names the kernel caps at 15 bytes
/// (IFNAMSIZ 16 with the NUL), carry three base-36 digits of a hash of it, the same on every
/// run, so a test binary's tests keep apart as with [`veth_pair`]'s tags.
pub fn veth_pair_named(test: &str) -> VethPair {
    pair_of(test, &interface_tag(test))
}

/// A namespace for the test `test` alone (`shaper-test-PID-TEST`), with only its loopback.
pub fn namespace_named(test: &str) -> Namespace {
    let id = std::process::id() % 100_000;
    Namespace::create(&format!("shaper-test-{id}-{test}"))
        .unwrap_or_else(|e| panic!("creating the namespace of {test}: {e}"))
}

fn pair_of(name: &str, tag: &str) -> VethPair {
    let id = std::process::id() % 100_000;
    let (a, b) = (
        format!("shaper-test-{id}-{name}-a"),
        format!("shaper-test-{id}-{name}-b"),
    );
    let (a_if, b_if) = (format!("sh{id}{tag}a"), format!("sh{id}{tag}b"));
    let names = PairNames {
        a: &a,
        b: &b,
        a_if: &a_if,
        b_if: &b_if,
    };
    VethPair::create(names, 0).unwrap_or_else(|e| panic!("creating the veth pair {name}: {e}"))
}

/// Three base-36 digits of FNV-1a over `name`: stable across runs and Rust versions, unlike
/// `DefaultHasher`.
fn interface_tag(name: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..3)
        .map(|i| char::from(digits[(hash / 36u32.pow(i) % 36) as usize]))
        .collect()
}

/// Namespace operations that panic on failure.
pub trait InNamespace {
    /// Runs `f` on a thread inside the namespace.
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
    /// `ip -n NAME ARGS`; its stdout.
    fn ip_ok(&self, args: &[&str]) -> String;
    /// `tc ARGS` inside the namespace; its stdout.
    fn tc(&self, args: &[&str]) -> String;
    /// Whether this kernel can make a `kind` qdisc (`fq`, `fq_codel`), asked of `tc` on the
    /// device `iface` of the namespace, whose root is put back at once. The kernel loads the
    /// qdisc's module itself if it is one.
    fn kernel_has_qdisc(&self, iface: &str, kind: &str) -> bool;
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

    fn kernel_has_qdisc(&self, iface: &str, kind: &str) -> bool {
        let made = self
            .run(
                "tc",
                &["qdisc", "add", "dev", iface, "root", "handle", "9:", kind],
            )
            .is_ok();
        if made {
            self.tc(&["qdisc", "del", "dev", iface, "root"]);
        }
        made
    }
}
