//! The real classifier under BPF_PROG_TEST_RUN: loaded (verified, not attached) with `lo`
//! registered, since the kernel runs a test packet as if it arrived on the namespace's loopback
//! (net/bpf/test_run.c `bpf_prog_test_run_skb` sets `skb->dev` to it).

use std::sync::MutexGuard;

use aya::programs::{TestRun as _, TestRunOptions};
use shaper::{Classifier, Direction};

use super::shared::Shared;

/// TC_ACT_UNSPEC: the packet goes on untouched (the next program runs, or it passes).
pub const PASS: i32 = -1;

/// `classifier_test!(NAME, CLASSIFIER, |c| { ... })`: a privileged test that runs its body on
/// the classifier CLASSIFIER gives (a fresh one, or one the binary shares between its tests).
#[allow(unused_macros, reason = "not every test binary uses it")]
macro_rules! classifier_test {
    ($name:ident, $classifier:expr, $body:expr) => {
        #[test]
        fn $name() {
            $crate::common::root_or_skip!();
            let mut classifier = $classifier;
            let body: fn(&mut ::shaper::Classifier) = $body;
            body(&mut classifier);
        }
    };
}
#[allow(unused_imports, reason = "not every test binary uses it")]
pub(crate) use classifier_test;

/// Loads the classifier with one interface slot, given to `lo`.
pub fn on_loopback() -> Classifier {
    let mut classifier = Classifier::load(1).expect("load and verify the classifier");
    classifier.register("lo").expect("register lo");
    classifier
}

/// [`on_loopback`] loaded once per test binary and lent to one test at a time (see
/// [`Shared`]): what a test counts stays in the maps for the next, so each test reads what its
/// own frames changed, on ports or flows no other test of its binary uses.
pub fn shared_on_loopback() -> MutexGuard<'static, Classifier> {
    static CLASSIFIER: Shared<Classifier> = Shared::new();
    CLASSIFIER.lock(on_loopback)
}

/// Runs `frame` (with `ctx` as its `__sk_buff`, if given) through the program of `direction`:
/// the program's return value.
pub fn run(
    classifier: &mut Classifier,
    direction: Direction,
    frame: &[u8],
    ctx: Option<&[u8]>,
) -> i32 {
    let program = classifier.program_mut(direction).expect("program");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = ctx;
    program
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .return_value as i32
}

/// [`run`] for a frame the classifier must pass untouched (no rule governs it).
pub fn passes(classifier: &mut Classifier, direction: Direction, frame: &[u8]) {
    assert_eq!(
        run(classifier, direction, frame, None),
        PASS,
        "the classifier passes this frame untouched"
    );
}
