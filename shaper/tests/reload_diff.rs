//! What a reload does to each rule, exactly, in the real classifier driven with
//! BPF_PROG_TEST_RUN: [`Limits::reload`], the daemon's own path (validation, state file, map
//! writes). At 128 B/s the test's own duration refills nothing measurable, so a bucket's state
//! shows as an exact count of packets that pass.

mod common;

use common::packet::*;
use common::temp_dir::TempDir;
use common::test_run;
use shaper::{
    Classifier, Direction,
    policy::{
        config_reload::{Origin, ReloadSummary},
        rule_actor::Actor,
        rule_table::{Action, PortRange, RuleKey, RuleSpec},
        rules_in_force::{Limits, RuleView},
    },
};

/// TC_ACT_UNSPEC (pass on) and TC_ACT_SHOT.
const PASS: i32 = -1;
const DROP: i32 = 2;
const BURST: u64 = 192 * 1024;
const FRAME_LEN: usize = 128;
const PACKETS_PER_BURST: u64 = BURST / FRAME_LEN as u64;

fn spec(port: u16, rate_bps: u64) -> RuleSpec {
    RuleSpec {
        key: RuleKey::local(PortRange::single(port)),
        rate_bps,
        burst_bytes: Some(BURST),
        action: Action::Drop,
        ecn: false,
        per_remote: false,
        queue_bytes: None,
    }
}

fn frame_to(port: u16) -> Vec<u8> {
    let payload = vec![0u8; FRAME_LEN - ETH_HLEN - 20 - 8];
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, &udp(40000, port, &payload)),
    )
}

fn verdict(classifier: &mut Classifier, port: u16) -> i32 {
    let frame = frame_to(port);
    test_run::run(classifier, Direction::Ingress, &frame, None)
}

/// How many packets to `port` pass before the first that does not (at most a burst and a few).
fn passes(classifier: &mut Classifier, port: u16) -> u64 {
    for passed in 0..PACKETS_PER_BURST + 10 {
        if verdict(classifier, port) != PASS {
            return passed;
        }
    }
    PACKETS_PER_BURST + 10
}

fn rule(limits: &Limits, classifier: &Classifier, port: u16) -> Option<RuleView> {
    limits
        .list(classifier)
        .into_iter()
        .find(|rule| rule.ports.lo == port)
}

#[test]
fn a_reload_keeps_unchanged_rules_replaces_changed_in_place_removes_and_adds() {
    common::root_or_skip!();
    let dir = TempDir::new("reload-diff");
    let state = dir.0.join("state.json");
    let mut classifier = Classifier::load(1).expect("load the classifier");
    classifier.register("lo").expect("register lo");
    let file = vec![spec(9001, 1024), spec(9002, 1024), spec(9003, 1024)];
    let mut limits = Limits::start(&mut classifier, file, &state).expect("start");
    let actor = Actor::now(
        Some(1000),
        Some("alice".into()),
        Some(4242),
        Some("shaper".into()),
    );
    limits
        .set(&mut classifier, spec(9004, 1024), actor.clone())
        .expect("a runtime rule");
    // Empty the buckets of the rules that stay: a burst passes, then a drop.
    for port in [9001, 9002, 9004] {
        assert_eq!(passes(&mut classifier, port), PACKETS_PER_BURST);
    }
    let before: Vec<RuleView> = [9001, 9002, 9004]
        .map(|port| rule(&limits, &classifier, port).expect("rule"))
        .into();
    assert!(before.iter().all(|r| r.dropped_packets == 1));

    let summary = limits
        .reload(
            &mut classifier,
            vec![spec(9001, 1024), spec(9002, 2048), spec(9005, 1024)],
        )
        .expect("reload");
    assert_eq!(
        summary,
        ReloadSummary {
            added: 1,
            changed: 1,
            removed: 1,
            unchanged: 1
        }
    );
    assert!(limits.reload_status().successful);

    // Unchanged and changed: same id, same counters, the empty bucket kept (the next packet is
    // dropped, where a fresh bucket would pass a burst).
    for (old, rate) in before.iter().zip([1024, 2048, 1024]) {
        let now = rule(&limits, &classifier, old.ports.lo).expect("rule kept");
        assert_eq!(now.id, old.id);
        assert_eq!(now.rate_bps, rate);
        assert_eq!(
            (now.passed_packets, now.dropped_packets),
            (old.passed_packets, old.dropped_packets)
        );
        assert_eq!(verdict(&mut classifier, old.ports.lo), DROP, "{now:?}");
        let origin = if old.ports.lo == 9004 {
            Origin::Runtime
        } else {
            Origin::Config
        };
        assert_eq!(now.origin, origin);
    }
    // Removed: no rule, the port passes unpoliced. Added: a fresh bucket, zero counters.
    assert!(rule(&limits, &classifier, 9003).is_none());
    assert_eq!(passes(&mut classifier, 9003), PACKETS_PER_BURST + 10);
    let added = rule(&limits, &classifier, 9005).expect("added");
    assert_eq!((added.passed_packets, added.origin), (0, Origin::Config));
    assert_eq!(passes(&mut classifier, 9005), PACKETS_PER_BURST);

    // A file with one bad rule changes nothing, and says so.
    let in_force = limits.list(&classifier);
    let saved = std::fs::read(&state).expect("state");
    let bad = RuleSpec {
        burst_bytes: Some(1024),
        ..spec(9006, 1024)
    };
    let refused = limits
        .reload(&mut classifier, vec![spec(9001, 4096), bad])
        .expect_err("a burst below the minimum");
    assert!(
        shaper::error::chain(&refused).contains("config rule 9006"),
        "{}",
        shaper::error::chain(&refused)
    );
    assert!(!limits.reload_status().successful);
    let after: Vec<(u16, u64)> = limits
        .list(&classifier)
        .iter()
        .map(|r| (r.id, r.rate_bps))
        .collect();
    assert_eq!(
        after,
        in_force
            .iter()
            .map(|r| (r.id, r.rate_bps))
            .collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read(&state).expect("state"), saved);
    assert_eq!(
        verdict(&mut classifier, 9001),
        DROP,
        "the old limit's bucket"
    );

    limits
        .reload(&mut classifier, vec![spec(9001, 1024)])
        .expect("a good file again");
    assert!(limits.reload_status().successful);
    let ports: Vec<(u16, Origin)> = limits
        .list(&classifier)
        .iter()
        .map(|r| (r.ports.lo, r.origin))
        .collect();
    assert_eq!(ports, [(9001, Origin::Config), (9004, Origin::Runtime)]);

    // Who set the runtime rule survives the reloads and a restart from the state file; the
    // config rule has no actor.
    let actors = |limits: &Limits, classifier: &Classifier| -> Vec<(u16, Option<Actor>)> {
        limits
            .list(classifier)
            .into_iter()
            .map(|r| (r.ports.lo, r.set_by))
            .collect()
    };
    let expected = vec![(9001, None), (9004, Some(actor))];
    assert_eq!(actors(&limits, &classifier), expected);
    drop(limits);
    let restarted =
        Limits::start(&mut classifier, vec![spec(9001, 1024)], &state).expect("restart");
    assert_eq!(actors(&restarted, &classifier), expected);
}
