//! Reloading the config file, for real: the `shaper run` binary with `--config` on a veth
//! between throwaway namespaces, the file changed the three ways files change in the field (in
//! place, by rename, by a Kubernetes ConfigMap's `..data` symlink swap) under a UDP flood; a
//! broken file; SIGHUP; and how runtime `limit set` changes and the file relate.

mod common;

use std::{
    io::Write as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    daemon::Daemon,
    metrics::{Samples, scrape},
    netns::{VethPair, veth_pair},
    temp_dir::TempDir,
    traffic::{WIRE, receiver_on, sender_to},
};
use shaper::policy::{config_reload::Origin, rules_in_force::RuleView};

const PORT: u16 = 7411;
/// Before and after the reload: 250 kB/s and 1 MB/s.
const OLD_RATE: &str = "2mbit";
const NEW_RATE: &str = "8mbit";
const NEW_BYTES_PER_SEC: f64 = 1_000_000.0;
/// Offered: three times the new rate, so the bucket is empty when the rate changes.
const FLOOD: u64 = 3_000_000;
/// How soon a change of the file must be in force.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(2);

/// A config file with one UDP rule on [`PORT`] at `rate`.
fn config(rate: &str) -> String {
    format!("[[limit]]\nport = {PORT}\nproto = \"udp\"\nrate = \"{rate}\"\nburst = \"256KiB\"\n")
}

/// How the file is changed.
#[derive(Debug, Clone, Copy)]
enum Writer {
    /// Truncated and rewritten: same inode (`echo > file`, most configuration tools).
    InPlace,
    /// A new file renamed over the old one (vim, emacs, Ansible's `copy`).
    Rename,
    /// A Kubernetes ConfigMap volume: `shaper.toml -> ..data/shaper.toml`, `..data -> ..TS`;
    /// an update writes a new `..TS2` directory, points `..data_tmp` at it and renames
    /// `..data_tmp` over `..data` (kubelet's AtomicWriter).
    ConfigMap,
}

impl Writer {
    /// Lays out the first version of the file in `dir`; returns the path the daemon is given.
    fn create(self, dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("shaper.toml");
        match self {
            Self::InPlace | Self::Rename => std::fs::write(&path, text).expect("write config"),
            Self::ConfigMap => {
                let version = dir.join("..2026_11_28_00_00_00.1");
                std::fs::create_dir(&version).expect("version dir");
                std::fs::write(version.join("shaper.toml"), text).expect("write config");
                symlink("..2026_11_28_00_00_00.1", dir.join("..data")).expect("..data");
                symlink("..data/shaper.toml", &path).expect("shaper.toml symlink");
            }
        }
        path
    }

    fn update(self, dir: &Path, text: &str) {
        let path = dir.join("shaper.toml");
        match self {
            Self::InPlace => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .expect("open config");
                file.write_all(text.as_bytes()).expect("rewrite config");
            }
            Self::Rename => {
                let tmp = dir.join(".shaper.toml.swp");
                std::fs::write(&tmp, text).expect("write new config");
                std::fs::rename(&tmp, &path).expect("rename over config");
            }
            Self::ConfigMap => {
                let old = std::fs::read_link(dir.join("..data")).expect("..data");
                let version = format!("..2026_11_28_00_00_{:02}.2", std::process::id() % 60);
                std::fs::create_dir(dir.join(&version)).expect("version dir");
                std::fs::write(dir.join(&version).join("shaper.toml"), text).expect("write");
                symlink(&version, dir.join("..data_tmp")).expect("..data_tmp");
                std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
                std::fs::remove_dir_all(dir.join(old)).expect("remove the old version");
            }
        }
    }
}

fn rule_on(daemon: &Daemon, port: u16) -> Option<RuleView> {
    daemon
        .rules()
        .into_iter()
        .find(|rule| rule.ports.lo == port && rule.ports.hi == port)
}

/// Polls `limit ls` until the rule on `port` has `rate_bps`; returns how long that took.
fn wait_for_rate(daemon: &Daemon, port: u16, rate_bps: u64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if rule_on(daemon, port).is_some_and(|rule| rule.rate_bps == rate_bps) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the rule on {port} is not at {rate_bps} bit/s {within:?} after the change: {:?}\n{}",
            rule_on(daemon, port),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The file changed by `writer` under a flood: the new rate is in force within 2 s, the rule
/// keeps its id and counters, and its bucket (empty under the flood) is kept, not refilled: in
/// the next 1.5 s what arrives is the new rate's worth, without a second burst.
fn reload_under_flood(writer: Writer, tag: &str) {
    let pair = veth_pair(tag);
    let dir = TempDir::new(tag);
    let path = writer.create(&dir.0, &config(OLD_RATE));
    let path_arg = path.to_string_lossy().into_owned();
    let daemon = Daemon::start(
        &pair.a,
        tag,
        &["--iface", &pair.a_if, "--config", &path_arg],
    );
    let before = rule_on(&daemon, PORT).expect("the config's rule");
    assert_eq!(before.origin, Origin::Config);

    let received = receiver_on(&pair, PORT);
    let flood = sender_to(&pair, PORT, FLOOD, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    let counted = rule_on(&daemon, PORT).expect("rule");
    assert!(
        counted.passed_packets > 0 && counted.dropped_packets > 0,
        "the flood is policed before the reload: {counted:?}"
    );

    writer.update(&dir.0, &config(NEW_RATE));
    let took = wait_for_rate(&daemon, PORT, 8_000_000, IN_FORCE_WITHIN);
    let at = received.count();
    let window = Instant::now();
    let after = rule_on(&daemon, PORT).expect("rule");
    std::thread::sleep(Duration::from_millis(1500));
    let arrived = ((received.count() - at) * WIRE) as f64;
    let rate = arrived / window.elapsed().as_secs_f64();
    drop(flood);
    println!(
        "{writer:?}: in force after {} ms; then {rate:.0} B/s arrived (new rate {NEW_BYTES_PER_SEC} \
         B/s); rule {} passed {} -> {} packets",
        took.as_millis(),
        after.id,
        counted.passed_packets,
        after.passed_packets
    );
    assert_eq!(after.id, before.id, "the rule keeps its id");
    assert_eq!(after.origin, Origin::Config);
    assert!(
        after.passed_packets >= counted.passed_packets
            && after.dropped_packets >= counted.dropped_packets,
        "counters kept: {counted:?} -> {after:?}"
    );
    // A refilled bucket would add 256 KiB (0.17 of 1.5 s at the new rate) on top.
    assert!(
        (NEW_BYTES_PER_SEC * 0.85..=NEW_BYTES_PER_SEC * 1.08).contains(&rate),
        "{writer:?}: {rate:.0} B/s arrived after the reload, not the new rate \
         {NEW_BYTES_PER_SEC} B/s"
    );
    let log = daemon.log();
    assert!(
        log.contains("(the file changed): 0 rule(s) added, 1 changed, 0 removed, 0 unchanged"),
        "{log}"
    );
    daemon.stop_ok();
}

#[test]
fn a_config_rewritten_in_place_changes_the_rate_within_2s_keeping_counters() {
    common::root_or_skip!();
    reload_under_flood(Writer::InPlace, "ri");
}

#[test]
fn a_config_replaced_by_rename_changes_the_rate_within_2s_keeping_counters() {
    common::root_or_skip!();
    reload_under_flood(Writer::Rename, "rr");
}

#[test]
fn a_configmap_data_symlink_swap_changes_the_rate_within_2s_keeping_counters() {
    common::root_or_skip!();
    reload_under_flood(Writer::ConfigMap, "rc");
}

const SUCCESSFUL: &str = "shaper_config_last_reload_successful";
const SUCCESS_TIME: &str = "shaper_config_last_reload_success_timestamp_seconds";

/// Polls the metrics until `successful` has `value`.
fn wait_for_gauge(pair: &VethPair, value: f64, daemon: &Daemon) -> (Samples, String) {
    let start = Instant::now();
    loop {
        let (body, got) = scrape(&pair.a);
        if got.get(SUCCESSFUL) == Some(&value) {
            return (got, body);
        }
        assert!(
            start.elapsed() < IN_FORCE_WITHIN,
            "{SUCCESSFUL} is not {value}: {body}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A config that does not validate changes nothing, says why in the log (file, rule, field) and
/// flips the gauge to 0; the next good one flips it back with a newer success time.
#[test]
fn a_broken_config_changes_nothing_and_flips_the_reload_gauge() {
    let pair = common::test_veth_pair!();
    let dir = TempDir::new("rb");
    let path = Writer::Rename.create(&dir.0, &config(OLD_RATE));
    let path_arg = path.to_string_lossy().into_owned();
    let daemon = Daemon::start(
        &pair.a,
        "rb",
        &["--iface", &pair.a_if, "--config", &path_arg],
    );
    let (body, got) = scrape(&pair.a);
    assert_eq!(got.get(SUCCESSFUL), Some(&1.0), "{body}");
    let started = got[SUCCESS_TIME];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now).contains(&started),
        "the start-up load counts as a success: {started} (now {now})"
    );
    common::metrics::promtool_check(&body);
    let before = daemon.rules();

    // A burst below the minimum for the veth's 64 KiB aggregates: parses, but does not validate.
    Writer::Rename.update(
        &dir.0,
        &format!(
            "{}\n[[limit]]\nport = 7412\nrate = \"1mbit\"\nburst = \"1KiB\"\n",
            config(NEW_RATE)
        ),
    );
    let (got, body) = wait_for_gauge(&pair, 0.0, &daemon);
    assert_eq!(got[SUCCESS_TIME].to_bits(), started.to_bits(), "{body}");
    common::metrics::promtool_check(&body);
    assert_eq!(daemon.rules().len(), 1);
    assert_eq!(
        daemon.rules()[0].rate_bps,
        before[0].rate_bps,
        "nothing changed"
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "reload of {} (the file changed) refused, the rules in force stay: config rule 7412",
            path.display()
        )) && log.contains("burst"),
        "{log}"
    );

    for line in log.lines().filter(|line| line.contains("refused")) {
        println!("{line}");
    }
    // A syntax error names the file and field too.
    Writer::Rename.update(&dir.0, "[[limit]]\nport = 7411\nrate = \"fast\"\n");
    std::thread::sleep(Duration::from_millis(1000));
    let log = daemon.log();
    assert!(
        log.contains(&format!("{}: limit #1 (port 7411): rate", path.display())),
        "{log}"
    );
    assert_eq!(scrape(&pair.a).1.get(SUCCESSFUL), Some(&0.0));
    for line in log.lines().filter(|line| line.contains("refused")).skip(1) {
        println!("{line}");
    }

    std::thread::sleep(Duration::from_millis(1100));
    // A good file with a setting a reload does not change: the rules apply, the setting is
    // named in the log as not applied.
    Writer::Rename.update(
        &dir.0,
        &format!("metrics_top_ports = 5\n{}", config(NEW_RATE)),
    );
    let (got, body) = wait_for_gauge(&pair, 1.0, &daemon);
    assert!(
        daemon.log().contains(
            "`metrics_top_ports` changed from (not set) to 5: not applied; it takes effect at the \
             next start"
        ),
        "{}",
        daemon.log()
    );
    assert!(got[SUCCESS_TIME] > started + 1.0, "{body}");
    wait_for_rate(&daemon, PORT, 8_000_000, IN_FORCE_WITHIN);
    assert_eq!(daemon.rules()[0].id, before[0].id);
    daemon.stop_ok();
}

fn sighup(daemon: &Daemon) {
    // SAFETY: kill(2) touches no memory of ours; the daemon is our unreaped child, so its pid is
    // its own.
    let sent = unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP");
}

fn origins(daemon: &Daemon) -> Vec<(u16, u64, Origin)> {
    let mut rules: Vec<_> = daemon
        .rules()
        .into_iter()
        .map(|rule| (rule.ports.lo, rule.rate_bps, rule.origin))
        .collect();
    rules.sort_unstable_by_key(|&(port, ..)| port);
    rules
}

/// The file is the source of truth for the rules it names: a reload puts a file rule changed at
/// runtime back, removes what the file no longer names, and leaves runtime rules alone; SIGHUP
/// reloads an unchanged file; `limit ls` shows each rule's origin, and a restart keeps it.
#[test]
fn runtime_changes_and_the_file_after_reloads_sighup_and_a_restart() {
    let pair = common::test_veth_pair!();
    let dir = TempDir::new("rt");
    let two_rules =
        "[[limit]]\nport = 7421\nrate = \"1mbit\"\n\n[[limit]]\nport = 7422\nrate = \"2mbit\"\n";
    let path = Writer::InPlace.create(&dir.0, two_rules);
    let path_arg = path.to_string_lossy().into_owned();
    let state = dir.0.join("state.json");
    let args = ["--iface", pair.a_if.as_str(), "--config", &path_arg];
    let daemon = Daemon::start_with_state(&pair.a, "rt1", &args, &state);
    let ids: Vec<u16> = daemon.rules().iter().map(|r| r.id).collect();

    daemon.cli_ok(&["limit", "set", "7421", "--rate", "3mbit"]);
    daemon.cli_ok(&["limit", "set", "7423", "--rate", "4mbit"]);
    assert_eq!(
        origins(&daemon),
        [
            (7421, 3_000_000, Origin::Runtime),
            (7422, 2_000_000, Origin::Config),
            (7423, 4_000_000, Origin::Runtime),
        ]
    );
    let listing = daemon.cli_ok(&["limit", "ls"]);
    assert!(
        listing
            .lines()
            .next()
            .unwrap_or("")
            .ends_with(" ORIGIN  SET-BY       SET-AT"),
        "{listing}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["limit", "ls", "--json"])).expect("JSON");
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["rules"][0]["origin"], "runtime", "{json}");
    assert_eq!(json["rules"][1]["origin"], "config", "{json}");

    // SIGHUP with the file unchanged: the file's 7421 is back; the runtime 7423 stays.
    sighup(&daemon);
    wait_for_rate(&daemon, 7421, 1_000_000, IN_FORCE_WITHIN);
    assert_eq!(
        origins(&daemon),
        [
            (7421, 1_000_000, Origin::Config),
            (7422, 2_000_000, Origin::Config),
            (7423, 4_000_000, Origin::Runtime),
        ]
    );
    assert!(
        daemon
            .log()
            .contains("(SIGHUP): 0 rule(s) added, 1 changed, 0 removed, 1 unchanged"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        daemon.rules()[..2].iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "file rules keep their ids"
    );

    // The file drops 7422 and names 7423: 7422 goes, 7423 becomes the file's.
    daemon.cli_ok(&["limit", "set", "7421", "--rate", "3mbit"]);
    Writer::InPlace.update(
        &dir.0,
        "[[limit]]\nport = 7421\nrate = \"1mbit\"\n\n[[limit]]\nport = 7423\nrate = \"5mbit\"\n",
    );
    wait_for_rate(&daemon, 7423, 5_000_000, IN_FORCE_WITHIN);
    assert_eq!(
        origins(&daemon),
        [
            (7421, 1_000_000, Origin::Config),
            (7423, 5_000_000, Origin::Config),
        ]
    );
    // A runtime rule, and a runtime `limit rm` of a file rule, survive a restart.
    daemon.cli_ok(&["limit", "set", "7424", "--rate", "6mbit"]);
    daemon.cli_ok(&["limit", "rm", "7423"]);
    let before = origins(&daemon);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let again = Daemon::start_with_state(&pair.a, "rt2", &args, &state);
    assert_eq!(origins(&again), before);
    assert_eq!(
        before,
        [
            (7421, 1_000_000, Origin::Config),
            (7424, 6_000_000, Origin::Runtime),
        ]
    );
    // The removed file rule comes back at the next reload.
    sighup(&again);
    wait_for_rate(&again, 7423, 5_000_000, IN_FORCE_WITHIN);
    again.stop_ok();
}

/// `systemctl reload` right after `systemctl start` (the unit is `Type=exec`: started once
/// exec'd) sends SIGHUP while the daemon still loads, seconds under an emulated CPU. Its default
/// action ends the process; the daemon claims it first thing, and serves it as a reload.
#[test]
fn sighup_while_the_daemon_starts_does_not_end_it() {
    let pair = common::test_veth_pair!();
    // From 100 ms on: past the process's own start-up, within the programs' load.
    let daemon = Daemon::on_hung_up_while_starting(&pair, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(300));
    daemon.cli_ok(&["limit", "ls"]);
    assert!(
        daemon.log().contains("SIGHUP"),
        "the hang-ups were served as reloads:\n{}",
        daemon.log()
    );
}
