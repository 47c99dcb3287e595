//! `/healthz` and `/readyz` for real: the daemon attached to a veth between throwaway
//! namespaces, probed over HTTP inside its namespace, then its datapath damaged behind its back
//! (a filter deleted, a rule cleared in the pinned map) and probed again.

mod common;

use aya::maps::{Array, MapData};
use common::{
    daemon::Daemon,
    metrics::{DAEMON_ADDR, Response, get},
    netns::InNamespace as _,
};
use shaper::datapath::pins::PinDir;
use shaper_common::{RuleConfig, maps};

fn probe(pair: &common::netns::VethPair, path: &str) -> Response {
    get(&pair.a, DAEMON_ADDR, path, None)
}

#[test]
fn ready_until_a_hook_loses_its_program_or_a_rule_its_limit_and_live_throughout() {
    let pair = common::test_veth_pair!();
    let iface = pair.a_if.as_str();
    let daemon = Daemon::start(&pair.a, "hz", &["--iface", iface, "--attach", "clsact"]);
    daemon.cli_ok(&["limit", "set", "9090", "--rate", "10mbit"]);
    let rule = daemon.rules()[0].id;

    let live = probe(&pair, "/healthz");
    assert_eq!((live.status, live.body.as_str()), (200, "ok: serving\n"));
    let ready = probe(&pair, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ok: 1 interface(s) attached, 1 rule(s) installed\n")
    );

    // A rule whose limit is gone from the kernel's map is enforced by no one.
    let pins = pair
        .a
        .within(|| PinDir::for_current_netns(&daemon.pin_base))
        .expect("the daemon's pin directory");
    let map = MapData::from_pin(pins.map(maps::RULES)).expect("open the pinned rule map");
    let mut rules: Array<MapData, RuleConfig> = Array::try_from(aya::maps::Map::Array(map))
        .expect("the rule map is an array of RuleConfig");
    let installed = rules.get(&u32::from(rule), 0).expect("read the rule");
    assert_ne!(installed.rate_bps, 0);
    rules
        .set(u32::from(rule), RuleConfig::default(), 0)
        .expect("clear the rule");
    let ready = probe(&pair, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (
            503,
            format!("rule {rule}: not in the kernel's rule map\n").as_str()
        )
    );
    rules
        .set(u32::from(rule), installed, 0)
        .expect("restore it");
    assert_eq!(probe(&pair, "/readyz").status, 200);

    // Deleting the ingress filter leaves ingress unshaped: not ready, still live.
    pair.a.tc(&["filter", "del", "dev", iface, "ingress"]);
    let ready = probe(&pair, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, format!("{iface} ingress: not attached\n").as_str())
    );
    assert_eq!(probe(&pair, "/healthz").status, 200);
    // The qdisc takes the egress filter with it: both named.
    pair.a.tc(&["qdisc", "del", "dev", iface, "clsact"]);
    let ready = probe(&pair, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (
            503,
            format!("{iface} ingress: not attached\n{iface} egress: not attached\n").as_str()
        )
    );
    daemon.stop_ok();
}

#[test]
fn a_tcx_daemon_is_ready_with_no_rules() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &["--attach", "tcx"]);
    let ready = probe(&pair, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ok: 1 interface(s) attached, 0 rule(s) installed\n")
    );
    daemon.stop_ok();
}
