//! The classifier loaded (not attached) with rules in force, for the tests that run the real
//! object on hand-made frames under BPF_PROG_TEST_RUN: `limits.set(...)` writes the maps the
//! program reads, exactly as the daemon does.

use std::{
    ops::{Deref, DerefMut},
    path::PathBuf,
    sync::MutexGuard,
};

use shaper::{
    Classifier,
    policy::PolicyError,
    policy::rule_actor::Actor,
    policy::rule_table::RuleSpec,
    policy::rules_in_force::{Limits, RuleView},
};

use super::{shared::Shared, temp_dir::TempDir};

pub struct LimitsFixture {
    pub classifier: Classifier,
    pub limits: Limits,
    /// The state file the rules are saved to.
    pub state: PathBuf,
    dir: TempDir,
}

impl LimitsFixture {
    /// Loads the classifier with `interfaces` registered (one slot each) and starts with no
    /// rules; `tag` names its state directory. Must run in the namespace of the interfaces.
    pub fn load(tag: &str, interfaces: &[&str]) -> Self {
        let mut classifier =
            Classifier::load(interfaces.len() as u32).expect("load and verify the classifier");
        for name in interfaces {
            classifier.register(name).expect("register an interface");
        }
        let dir = TempDir::new(&format!("limits-{tag}"));
        let state = dir.state_file();
        let limits = Limits::start(&mut classifier, Vec::new(), &state).expect("start limits");
        Self {
            classifier,
            limits,
            state,
            dir,
        }
    }

    /// Sets `spec` as a control request from this process would (see [`test_actor`]): the rule
    /// as `limit ls` shows it. A refusal fails the test with `what`.
    pub fn set(&mut self, spec: RuleSpec, what: &str) -> RuleView {
        self.limits
            .set(&mut self.classifier, spec, test_actor())
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .0
    }

    /// Rule `id` as `limit ls` shows it now (its counters read from the maps).
    pub fn rule(&self, id: u16) -> RuleView {
        self.limits
            .list(&self.classifier)
            .into_iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("rule {id} is not listed"))
    }

    /// Removes every rule in force. Nothing of them carries over to a rule set afterwards: it
    /// gets an id not used since (they are handed out round-robin), its buckets full and its
    /// counters zeroed.
    pub fn remove_all(&mut self) -> Result<(), PolicyError> {
        for rule in self.limits.rules() {
            self.limits.remove(&mut self.classifier, &rule.key)?;
        }
        Ok(())
    }
}

/// The [`LimitsFixture`] on `lo` that the tests of a binary share (see [`Shared`]), lent to one
/// test: it starts with no rules and removes them all when dropped, even when the test fails.
/// Rule counters and buckets start afresh with each new rule; the port counters hold what every
/// earlier test counted, so a test reads them as a difference. Deref it once
/// (`let s = &mut *shared;`) to borrow its classifier and limits apart.
pub struct SharedLimits(MutexGuard<'static, LimitsFixture>);

impl SharedLimits {
    /// After the root gate (`None`: skipped), the binary's fixture, loaded by the first test that
    /// asks for it, on whichever thread. Its users stay in the namespace the test process
    /// started in, where `lo` was registered and where `set` reads `lo`'s largest aggregate;
    /// BPF_PROG_TEST_RUN runs a frame on the calling thread's loopback, index 1 in any
    /// namespace, so any of the harness's threads can run frames through it.
    pub fn on_lo(test: &str) -> Option<Self> {
        static FIXTURE: Shared<LimitsFixture> = Shared::new();
        if !super::require_root(test) {
            return None;
        }
        let mut fixture = FIXTURE.lock(|| LimitsFixture::load("shared", &["lo"]));
        // A static is never dropped, so its state directory is made for each test and removed
        // after it, as a test's own `TempDir` is.
        std::fs::create_dir_all(fixture.dir.path()).expect("create the state directory");
        // Rules left by a test whose drop could not remove them.
        fixture
            .remove_all()
            .unwrap_or_else(|e| panic!("{test}: removing the rules left behind: {e}"));
        Some(Self(fixture))
    }
}

impl Deref for SharedLimits {
    type Target = LimitsFixture;

    fn deref(&self) -> &LimitsFixture {
        &self.0
    }
}

impl DerefMut for SharedLimits {
    fn deref_mut(&mut self) -> &mut LimitsFixture {
        &mut self.0
    }
}

impl Drop for SharedLimits {
    /// Runs while the test unwinds too, so it reports rather than panics (a panic here would
    /// abort the whole binary); the next test removes whatever is left.
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_all() {
            eprintln!("removing the test's rules: {e}");
        }
        let _ = std::fs::remove_dir_all(self.0.dir.path());
    }
}

/// Who the tests' rules are set by, as a control request from this process would record it.
pub fn test_actor() -> Actor {
    Actor::now(Some(0), Some("root".into()), None, None)
}
