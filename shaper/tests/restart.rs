//! The datapath outlives the daemon: the real `shaper run` on a veth between two namespaces,
//! killed with SIGKILL under a UDP flood, left alone, restarted, upgraded in place, and taken
//! down with `shaper down`. Rules stay enforced with no daemon, counters never go back, and
//! nothing is left behind afterwards.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    daemon::{self, Daemon},
    flood::{FLOOD_BOUND, Flood, LIMIT_ARGS, PORT, RATE},
    metrics,
    netns::{InNamespace as _, veth_pair},
    temp_dir::TempDir,
    traffic::WIRE,
};
use serde_json::Value;
use shaper::{
    Direction,
    datapath::{classifier::Proto, pins::PinDir},
    telemetry::counter_snapshot::{PortStats, Snapshot},
};

fn udp_port(snapshot: &Snapshot, iface: &str) -> PortStats {
    snapshot
        .port(iface, Direction::Ingress, Proto::Udp, PORT)
        .cloned()
        .unwrap_or_else(|| panic!("no counters for udp/{PORT}: {snapshot:#?}"))
}

fn set_limit(daemon: &Daemon) {
    daemon.cli_ok(&LIMIT_ARGS);
}

/// kill -9 under a flood, 3 s with no daemon, then a new daemon: the port is policed
/// throughout and every counter continues from where it was.
fn crash_and_restart(mode: &str, tag: &str) {
    let pair = veth_pair(tag);
    let state = TempDir::new(tag);
    let args = ["--iface", pair.a_if.as_str(), "--attach", mode];
    let first = Daemon::start_with_state(&pair.a, &format!("{tag}1"), &args, &state.state_file());
    let pin_base = first.pin_base.clone();
    set_limit(&first);
    // Bounded; `finish` stops it once the new daemon has policed it for a while.
    let flood = Flood::start(&pair, FLOOD_BOUND);
    std::thread::sleep(Duration::from_millis(1500));
    let before = udp_port(&first.stats(), &pair.a_if);
    let rule_before = first.rules()[0].clone();
    first.kill9();
    let killed_at = Instant::now();

    // No daemon: the pinned datapath keeps policing.
    let at_kill = flood.receiver.count();
    let status_gap = daemon::status(&pair, &pin_base);
    assert_eq!(status_gap["daemon_pid"], Value::Null, "{status_gap}");
    assert_eq!(status_gap["interfaces"][0]["mode"], mode, "{status_gap}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(killed_at.elapsed()));
    let gap = killed_at.elapsed().as_secs_f64();
    let gap_rate = ((flood.receiver.count() - at_kill) * WIRE) as f64 / gap;
    println!("{mode}: {gap:.2} s without a daemon: {gap_rate:.0} B/s arrived (limit {RATE})");
    assert!(
        gap_rate <= RATE * 1.1,
        "{mode}: {gap_rate} B/s arrived with no daemon: unpoliced"
    );

    let restart = Instant::now();
    let second = Daemon::start_with_state(&pair.a, &format!("{tag}2"), &args, &state.state_file());
    println!(
        "{mode}: the new daemon answered {} ms after it was started",
        restart.elapsed().as_millis()
    );
    let after = udp_port(&second.stats(), &pair.a_if);
    let rule_after = second.rules()[0].clone();
    println!(
        "{mode}: port {PORT} packets {} -> {}, bytes {} -> {}, dropped {} -> {}",
        before.packets,
        after.packets,
        before.bytes,
        after.bytes,
        before.dropped_packets,
        after.dropped_packets
    );
    assert!(after.packets >= before.packets && after.bytes >= before.bytes);
    assert!(after.dropped_packets >= before.dropped_packets);
    assert_eq!(rule_after.id, rule_before.id);
    assert!(rule_after.passed_packets >= rule_before.passed_packets);
    assert!(rule_after.dropped_packets >= rule_before.dropped_packets);
    assert!(
        second.log().contains("adopting the datapath"),
        "{}",
        second.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    flood.finish(&format!("kill -9 ({mode})"));
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        daemon::status(&pair, &pin_base)["pinned"],
        false,
        "a plain stop unpins"
    );
}

#[test]
fn a_killed_daemon_leaves_its_port_policed_and_the_next_one_continues_its_counters_tcx() {
    common::root_or_skip!();
    crash_and_restart("tcx", "kt");
}

#[test]
fn a_killed_daemon_leaves_its_port_policed_and_the_next_one_continues_its_counters_clsact() {
    common::root_or_skip!();
    crash_and_restart("clsact", "kc");
}

/// The service's restart (or an upgrade): the old daemon stops with `--persist`, a new one
/// loads its own programs and swaps them in behind the pinned links; the program ids change,
/// the counters and the limit carry on, and the flood stays policed.
#[test]
fn a_persistent_daemon_is_replaced_in_place_under_traffic() {
    let pair = common::test_veth_pair!();
    let state = TempDir::new("up");
    let args = ["--iface", pair.a_if.as_str(), "--persist"];
    let old = Daemon::start_with_state(&pair.a, "up1", &args, &state.state_file());
    let pin_base = old.pin_base.clone();
    set_limit(&old);
    let flood = Flood::start(&pair, FLOOD_BOUND);
    std::thread::sleep(Duration::from_millis(1500));
    let old_programs = daemon::program_ids(&daemon::status(&pair, &pin_base));
    let before = udp_port(&old.stats(), &pair.a_if);
    let (exit, log) = old.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("stays attached and pinned"), "{log}");
    let new = Daemon::start_with_state(&pair.a, "up2", &args, &state.state_file());
    let new_status = daemon::status(&pair, &pin_base);
    let new_programs = daemon::program_ids(&new_status);
    println!("upgrade: programs {old_programs:?} -> {new_programs:?}");
    assert!(
        old_programs.iter().all(|id| !new_programs.contains(id)),
        "{new_status}"
    );
    assert_eq!(
        new_status["daemon_pid"].as_str(),
        Some(new.pid().to_string().as_str())
    );
    let after = udp_port(&new.stats(), &pair.a_if);
    assert!(after.packets >= before.packets && after.bytes >= before.bytes);
    std::thread::sleep(Duration::from_millis(1500));
    flood.finish("persist restart");
    // Without --persist a stop takes everything down; this one persists, so `down` does.
    drop(new);
    assert_eq!(daemon::status(&pair, &pin_base)["pinned"], false);
}

/// A map pinned under the datapath's name with another layout (another version's, say) is
/// refused, never reused: the daemon stops with the map named and `shaper down` as the fix.
#[test]
fn a_pinned_map_with_another_layout_is_refused() {
    common::root_or_skip!();
    let Some(bpftool) = common::tool("bpftool") else {
        return;
    };
    let pair = common::test_veth_pair!();
    let pin_base = daemon::pin_base();
    let pins = pair
        .a
        .within(|| PinDir::for_current_netns(&pin_base).expect("pin dir"));
    let maps = pins.map("RULES");
    std::fs::create_dir_all(maps.parent().expect("maps dir")).expect("create the maps dir");
    // RULES is an array of 32-byte values; this one holds 24-byte values.
    let created = Command::new(&bpftool)
        .args(["map", "create"])
        .arg(&maps)
        .args([
            "type", "array", "key", "4", "value", "24", "entries", "65536", "name", "RULES",
        ])
        .output()
        .expect("bpftool");
    assert!(created.status.success(), "{created:?}");
    // A directory of its own: the daemon refuses a state directory others may write (/tmp).
    let dir = std::env::temp_dir().join(format!("shaper-test-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("test dir");
    let refused = pair
        .a
        .command(daemon::SHAPER)
        .arg("--socket")
        .arg(dir.join("shaper.sock"))
        .args(["run", "--iface"])
        .arg(&pair.a_if)
        .arg("--pin-dir")
        .arg(&pin_base)
        .arg("--state")
        .arg(dir.join("state.json"))
        .output()
        .expect("run the daemon");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    println!("{stderr}");
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("RULES") && stderr.contains("value size 24") && stderr.contains("32"),
        "{stderr}"
    );
    assert!(stderr.contains("shaper down"), "{stderr}");
    assert!(maps.exists(), "the foreign map is left alone");
    // Nothing attached.
    let links = Command::new(&bpftool)
        .args(["link", "show"])
        .output()
        .expect("bpftool link show");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("ifindex {}", {
            pair.a
                .within(|| shaper::datapath::interfaces::index(&pair.a_if).expect("ifindex"))
        })) || !String::from_utf8_lossy(&links.stdout).contains("tcx"),
        "nothing attached"
    );
    daemon::down(&pair.a.name, &pin_base);
    assert!(!maps.exists(), "shaper down removed it");
}

/// `--persist` leaves the programs, the pins and the clsact qdisc; `shaper down` removes every
/// one of them and says so; a later `shaper run` starts clean.
#[test]
fn shaper_down_leaves_nothing_behind_and_a_later_run_starts_clean() {
    let pair = common::test_veth_pair!();
    let state = TempDir::new("dn");
    let args = [
        "--iface",
        pair.a_if.as_str(),
        "--attach",
        "clsact",
        "--persist",
    ];
    let first = Daemon::start_with_state(&pair.a, "dn1", &args, &state.state_file());
    let pin_base = first.pin_base.clone();
    let base = pin_base.to_string_lossy().into_owned();
    let (exit, log) = first.stop();
    assert!(exit.success(), "{log}");
    let filters = pair.a.tc(&["filter", "show", "dev", &pair.a_if, "ingress"]);
    assert!(filters.contains("shaper_ingress"), "{filters}");
    let running = daemon::status(&pair, &pin_base);
    assert_eq!(running["pinned"], true);
    assert_eq!(running["daemon_pid"], Value::Null);

    let down = Daemon::in_netns(&pair.a.name, &["down", "--pin-dir", &base]);
    let said = String::from_utf8_lossy(&down.stdout);
    println!("{said}");
    assert!(down.status.success(), "{down:?}");
    assert!(
        said.contains("detached clsact ingress, clsact egress")
            && said.contains("removed the clsact qdisc")
            && said.contains("removed the pinned maps"),
        "{said}"
    );
    let qdiscs = pair.a.tc(&["qdisc", "show", "dev", &pair.a_if]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    assert_eq!(daemon::status(&pair, &pin_base)["pinned"], false);
    let again = Daemon::in_netns(&pair.a.name, &["down", "--pin-dir", &base]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to remove"));

    let later = Daemon::start_with_state(
        &pair.a,
        "dn2",
        &["--iface", &pair.a_if],
        &state.state_file(),
    );
    assert!(!later.log().contains("adopting"), "{}", later.log());
    let (exit, log) = later.stop();
    assert!(exit.success(), "{log}");
}

/// A Prometheus scrape before a kill -9 and after the restart: no `_total` series decreases.
#[test]
fn no_counter_series_decreases_across_a_crash_and_restart() {
    let pair = common::test_veth_pair!();
    let state = TempDir::new("sr");
    let addr: SocketAddr = "127.0.0.1:19350".parse().expect("addr");
    // One port of series beyond the pinned ones, so two busy unlimited ports trade places and
    // `other` carries an offset when the daemon dies.
    let args = ["--iface", pair.a_if.as_str(), "--metrics-top-ports", "1"];
    let first = Daemon::start_with_state(&pair.a, "sr1", &args, &state.state_file());
    set_limit(&first);
    let flood = Flood::start(&pair, Duration::from_secs(3));
    let client = pair
        .b
        .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
    let send = |port: u16, datagrams: usize| {
        for _ in 0..datagrams {
            let _ = client.send_to(&[0u8; 100], (pair.a_addr, port));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    send(7310, 100);
    send(7311, 10);
    metrics::get(&pair.a, addr, "/metrics", None);
    send(7311, 200);
    std::thread::sleep(Duration::from_millis(1000));
    let before = metrics::samples(&metrics::get(&pair.a, addr, "/metrics", None).body);
    assert!(
        before
            .keys()
            .any(|series| series.contains("port=\"other\"")),
        "{before:#?}"
    );
    first.kill9();
    let second = Daemon::start_with_state(&pair.a, "sr2", &args, &state.state_file());
    let after = metrics::samples(&metrics::get(&pair.a, addr, "/metrics", None).body);
    drop(flood);
    let compared = metrics::counters_continue("scrape across a restart", &before, &after, |_| true);
    assert!(compared > 5, "{before:#?}");
    let (exit, log) = second.stop();
    assert!(exit.success(), "{log}");
}
