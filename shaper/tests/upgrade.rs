//! Upgrading from the previous release under traffic, and going back: the previous release's
//! daemon (built from the commit in `release/previous`) runs a rule, a watch and a UDP flood at
//! twelve times the rule's rate, is killed with SIGKILL, and this build's daemon adopts its
//! pinned datapath; then this one is killed and the previous one adopts it again. Over the
//! whole run no more than rate × time + burst arrives, no `_total` series of a scrape goes
//! down, and `limit ls` shows the same rules with the same counters or more.
//!
//! Ignored by `cargo test`: it needs the previous release's binary, which `cargo xtask
//! upgrade-test` builds (cached by commit) and names in `SHAPER_PREVIOUS_BIN`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::UdpSocket,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    daemon::{self, Daemon},
    flood::{FLOOD_BOUND, Flood, LIMIT_ARGS, RATE},
    metrics::{self, Samples},
    netns::{InNamespace as _, VethPair, veth_pair},
    temp_dir::TempDir,
    traffic::WIRE,
};
use serde_json::Value;

/// A second port, watched (`shaper watch`) and sent a little traffic, so the watch switches and
/// the per-remote accounting are part of what is handed over.
const WATCHED_PORT: u16 = 7302;
/// How long each daemon runs the flood before it is killed.
const RUN: Duration = Duration::from_millis(1500);

/// The previous release's `shaper` binary and its commit, from `cargo xtask upgrade-test`.
struct Previous {
    binary: PathBuf,
    commit: String,
}

impl Previous {
    fn from_env() -> Self {
        let binary = std::env::var_os("SHAPER_PREVIOUS_BIN")
            .map(PathBuf::from)
            .expect("SHAPER_PREVIOUS_BIN names the previous release's binary: run `cargo xtask upgrade-test`");
        assert!(binary.is_file(), "{} is not a file", binary.display());
        let commit = std::env::var("SHAPER_PREVIOUS_COMMIT").unwrap_or_else(|_| "?".into());
        Self { binary, commit }
    }
}

/// `limit ls --json` through the daemon's own CLI: the rules by id.
fn rules(daemon: &Daemon) -> BTreeMap<u64, Value> {
    let json: Value =
        serde_json::from_str(&daemon.cli_ok(&["limit", "ls", "--json"])).expect("limit ls JSON");
    json["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| (rule["id"].as_u64().expect("rule id"), rule.clone()))
        .collect()
}

/// The rule's definition as `limit ls --json` shows it in every release since schema 1.
const DEFINITION: [&str; 7] = [
    "ports",
    "side",
    "dir",
    "proto",
    "rate_bps",
    "burst_bytes",
    "action",
];
/// Its counters, which must never go back.
const COUNTERS: [&str; 4] = [
    "passed_packets",
    "passed_bytes",
    "dropped_packets",
    "dropped_bytes",
];

/// The same rules, defined the same way, with counters that did not go back.
fn same_rules(what: &str, before: &BTreeMap<u64, Value>, after: &BTreeMap<u64, Value>) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: rule ids"
    );
    for (id, old) in before {
        let new = &after[id];
        for field in DEFINITION {
            assert_eq!(old[field], new[field], "{what}: rule {id}: {field}");
        }
        for field in COUNTERS {
            let (was, is) = (
                old[field].as_u64().expect(field),
                new[field].as_u64().expect(field),
            );
            println!("{what}: rule {id} {field} {was} -> {is}");
            assert!(
                is >= was,
                "{what}: rule {id}: {field} went back, {was} -> {is}"
            );
        }
    }
}

/// `shaper watch` (the list) through the daemon's own CLI.
fn watches(daemon: &Daemon) -> String {
    daemon.cli_ok(&["watch"])
}

/// A few datagrams to the watched port from side `b`.
fn touch_watched_port(pair: &VethPair) {
    let client = pair
        .b
        .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
    for _ in 0..50 {
        let _ = client.send_to(&[0u8; 200], (pair.a_addr, WATCHED_PORT));
    }
}

/// What one daemon handed to the next, read just before it was killed.
struct Handover {
    samples: Samples,
    rules: BTreeMap<u64, Value>,
}

impl Handover {
    fn read(pair: &VethPair, daemon: &Daemon) -> Self {
        touch_watched_port(pair);
        std::thread::sleep(Duration::from_millis(200));
        Self {
            samples: metrics::scrape(&pair.a).1,
            rules: rules(daemon),
        }
    }

    /// The metrics this daemon exported.
    fn exported(&self) -> BTreeSet<String> {
        self.samples
            .keys()
            .map(|series| metrics::metric_name(series).to_owned())
            .collect()
    }

    /// Checks `next` (a daemon that has adopted the datapath) against what was handed over;
    /// `exported` names the metrics `next`'s release exports.
    fn check(
        &self,
        what: &str,
        pair: &VethPair,
        next: &Daemon,
        exported: Option<&BTreeSet<String>>,
    ) -> Self {
        assert!(
            next.log().contains("adopting the datapath"),
            "{what}: {}",
            next.log()
        );
        let now = Self::read(pair, next);
        let exported = exported.cloned().unwrap_or_else(|| now.exported());
        // On the way back, the metrics added since the previous release are not compared.
        let compared = metrics::counters_continue(what, &self.samples, &now.samples, |name| {
            exported.contains(name)
        });
        assert!(compared > 5, "{what}: {:#?}", self.samples);
        same_rules(what, &self.rules, &now.rules);
        let listed = watches(next);
        assert!(
            listed.contains(&WATCHED_PORT.to_string()),
            "{what}: the watch is gone:\n{listed}"
        );
        now
    }
}

/// previous release → this build → previous release, each handover a SIGKILL under the flood.
fn upgrade_and_back(mode: &str, tag: &str) {
    let previous = Previous::from_env();
    let pair = veth_pair(tag);
    let state = TempDir::new(tag);
    let args = ["--iface", pair.a_if.as_str(), "--attach", mode];
    let start_previous = |n: u32| {
        Daemon::start_program(
            &previous.binary,
            &pair.a,
            &format!("{tag}{n}"),
            &args,
            &state.state_file(),
        )
    };

    let old = start_previous(1);
    old.cli_ok(&LIMIT_ARGS);
    old.cli_ok(&["watch", &WATCHED_PORT.to_string()]);
    let flood = Flood::start(&pair, FLOOD_BOUND);
    std::thread::sleep(RUN);
    let handed = Handover::read(&pair, &old);
    let previous_metrics = handed.exported();
    old.kill9();

    let upgrade = format!("{mode}: {} -> this build", previous.commit);
    let started = Instant::now();
    let new = Daemon::start_with_state(&pair.a, &format!("{tag}2"), &args, &state.state_file());
    println!(
        "{upgrade}: the new daemon answered {} ms after it was started",
        started.elapsed().as_millis()
    );
    // The maps added since the previous release, which the new daemon created beside its pins.
    for line in new
        .log()
        .lines()
        .filter(|l| l.contains("map(s) of this build"))
    {
        println!("{upgrade}: {line}");
    }
    std::thread::sleep(RUN);
    // Every metric of the previous release is still exported, and none of its series goes back.
    let handed = handed.check(&upgrade, &pair, &new, None);
    new.kill9();

    let downgrade = format!("{mode}: this build -> {}", previous.commit);
    let back = start_previous(3);
    std::thread::sleep(RUN);
    // The metrics added since go; every one the previous release has continues.
    handed.check(&downgrade, &pair, &back, Some(&previous_metrics));

    let beyond = flood.finish(&format!("{mode}: upgrade and downgrade under the flood"));
    println!("{mode}: {beyond:.0} B beyond rate x time + burst over the whole run");
    let log = back.stop_ok();
    assert!(!log.contains("panicked"), "{log}");
}

/// The steps of this build's start, each named by the line its log writes there, at which the
/// upgrading daemon is killed in turn: before it creates the maps added since the previous
/// release (the line precedes the creation, so the kill lands during or just after it), with
/// one program verified and the other not, with both loaded but the rules not yet written and
/// nothing swapped, and just after the swap, before it serves.
const START_STEPS: [&str; 4] = [
    "map(s) of this build",
    "shaper_ingress: loaded in",
    "adopting the datapath",
    "took over ingress and egress",
];

/// An upgrade whose new daemon is killed at each step of its start in turn, under the flood;
/// the next start finishes it. The hooks always hold a program, the port stays policed while
/// nothing runs, and the finished upgrade has every rule, watch and counter.
fn upgrade_killed_at_each_step(mode: &str, tag: &str) {
    let previous = Previous::from_env();
    let pair = veth_pair(tag);
    let state = TempDir::new(tag);
    let args = ["--iface", pair.a_if.as_str(), "--attach", mode];
    let old = Daemon::start_program(
        &previous.binary,
        &pair.a,
        &format!("{tag}0"),
        &args,
        &state.state_file(),
    );
    let pin_base = old.pin_base.clone();
    old.cli_ok(&LIMIT_ARGS);
    old.cli_ok(&["watch", &WATCHED_PORT.to_string()]);
    let flood = Flood::start(&pair, FLOOD_BOUND);
    std::thread::sleep(RUN);
    let handed = Handover::read(&pair, &old);
    old.kill9();

    for (n, step) in START_STEPS.iter().enumerate() {
        let log = Daemon::killed_at_step(
            Path::new(daemon::SHAPER),
            &pair.a,
            &format!("{tag}{}", n + 1),
            &args,
            &state.state_file(),
            step,
        );
        let killed = Instant::now();
        let programs = daemon::program_ids(&daemon::status(&pair, &pin_base));
        let at_kill = flood.receiver.count();
        std::thread::sleep(Duration::from_millis(700));
        let gap = killed.elapsed().as_secs_f64();
        let rate = ((flood.receiver.count() - at_kill) * WIRE) as f64 / gap;
        let last = log.lines().last().unwrap_or_default();
        println!(
            "{mode}: killed after {step:?}: programs {programs:?} on the hooks; {rate:.0} B/s \
             arrived in the {gap:.2} s after (limit {RATE}); its last line: {last}"
        );
        assert!(
            rate <= RATE * 1.1,
            "{mode}: {rate} B/s arrived after a start killed after {step:?}: unpoliced"
        );
    }
    let what = format!(
        "{mode}: {} -> this build, after {} killed starts",
        previous.commit,
        START_STEPS.len()
    );
    let new = Daemon::start_with_state(
        &pair.a,
        &format!("{tag}{}", START_STEPS.len() + 1),
        &args,
        &state.state_file(),
    );
    std::thread::sleep(RUN);
    handed.check(&what, &pair, &new, None);
    let beyond = flood.finish(&format!("{mode}: an upgrade killed at every step"));
    println!("{mode}: {beyond:.0} B beyond rate x time + burst over the whole run");
    new.stop_ok();
}

#[test]
#[ignore = "needs the previous release's binary: run by `cargo xtask upgrade-test`"]
fn an_upgrade_killed_at_each_step_of_its_start_keeps_the_port_policed_tcx() {
    common::root_or_skip!();
    upgrade_killed_at_each_step("tcx", "ft");
}

#[test]
#[ignore = "needs the previous release's binary: run by `cargo xtask upgrade-test`"]
fn an_upgrade_killed_at_each_step_of_its_start_keeps_the_port_policed_clsact() {
    common::root_or_skip!();
    upgrade_killed_at_each_step("clsact", "fc");
}

#[test]
#[ignore = "needs the previous release's binary: run by `cargo xtask upgrade-test`"]
fn the_previous_release_hands_its_datapath_to_this_one_and_back_tcx() {
    common::root_or_skip!();
    upgrade_and_back("tcx", "ut");
}

#[test]
#[ignore = "needs the previous release's binary: run by `cargo xtask upgrade-test`"]
fn the_previous_release_hands_its_datapath_to_this_one_and_back_clsact() {
    common::root_or_skip!();
    upgrade_and_back("clsact", "uc");
}
