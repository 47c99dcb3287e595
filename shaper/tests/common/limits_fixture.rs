//! The classifier loaded (not attached) with rules in force, for the tests that run the real
//! object on hand-made frames under BPF_PROG_TEST_RUN: `limits.set(...)` writes the maps the
//! program reads, exactly as the daemon does.

use std::path::PathBuf;

use shaper::{
    Classifier,
    policy::rule_actor::Actor,
    policy::rule_table::RuleSpec,
    policy::rules_in_force::{Limits, RuleView},
};

use super::temp_dir::TempDir;

pub struct LimitsFixture {
    pub classifier: Classifier,
    pub limits: Limits,
    /// The state file the rules are saved to.
    pub state: PathBuf,
    _dir: TempDir,
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
            _dir: dir,
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

    /// On `lo` of the test's own namespace, after the root gate (`None`: skipped).
    pub fn on_lo(test: &str) -> Option<Self> {
        super::require_root(test).then(|| Self::load(test, &["lo"]))
    }
}

/// Who the tests' rules are set by, as a control request from this process would record it.
pub fn test_actor() -> Actor {
    Actor::now(Some(0), Some("root".into()), None, None)
}
