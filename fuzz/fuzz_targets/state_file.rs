//! The state file (`/var/lib/shaper/state.json`) as the daemon reads it at start-up. Every file
//! is either refused with the state-file error, which names the file and says to move it away,
//! or read as rules that, written back as the daemon writes them, read back the same; restoring
//! them as the daemon does keeps the rule table consistent.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shaper::{
    fuzz::{parse_state_file, state_file_text},
    policy::{
        PolicyError,
        rule_table::{Rule, RuleTable, make_limit},
    },
};
use shaper_common::{MAX_RULES, NO_RULE};

const PATH: &str = "/var/lib/shaper/fuzz.json";

fuzz_target!(|data: &[u8]| {
    let path = Path::new(PATH);
    let (config_rules, rules) = match parse_state_file(data, path) {
        Ok(state) => state,
        Err(error) => {
            let message = shaper::error::chain(&error);
            assert!(matches!(error, PolicyError::State { .. }), "{message}");
            assert!(
                message.starts_with(&format!("state file {PATH}: ")),
                "{message}"
            );
            assert!(message.ends_with("move it away to start from the config file's rules"));
            return;
        }
    };
    let written = state_file_text(&config_rules, &rules).expect("rules serialize");
    let lines = written.split(|&b| b == b'\n').count();
    assert_eq!(
        lines,
        config_rules.len() + rules.len() + 8,
        "one rule per line"
    );
    match parse_state_file(&written, path) {
        Ok((config_again, rules_again)) => {
            assert_eq!(config_again, config_rules);
            assert_eq!(rules_again, rules);
        }
        Err(error) => panic!("the daemon cannot read what it wrote: {error}"),
    }

    // `Limits::restore`: each rule revalidated, a taken id or key skipped.
    let mut table = RuleTable::new();
    for rule in rules {
        let Ok(limit) = make_limit(
            rule.limit.rate_bps,
            Some(rule.limit.burst_bytes),
            rule.limit.action,
            65_536,
            "",
        ) else {
            continue;
        };
        let (id, key) = (rule.id, rule.key.clone());
        let fresh = table.find(&key).is_none() && table.rules().all(|r| r.id != id);
        let restored = table.restore(Rule { limit, ..rule });
        let valid = id != NO_RULE && u32::from(id) < MAX_RULES;
        assert_eq!(restored, fresh && valid, "rule {id} {key}");
        if restored {
            assert_eq!(table.find(&key).map(|r| r.id), Some(id));
        }
    }
});
