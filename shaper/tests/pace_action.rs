//! The pace action: the departure times the real program writes (BPF_PROG_TEST_RUN, exact), and
//! the real daemon pacing UDP on a veth between two throwaway namespaces through the `fq` root it
//! installs — or, on a kernel without `sch_fq` (this build machine's), refusing the rule with
//! the reason. Which of the two a kernel must do is asked of `tc` itself first, so the test
//! never skips: it checks pacing where `fq` exists and the refusal where it does not. The VM
//! matrix runs it on Debian's kernels, which have `fq`.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use common::{
    daemon::Daemon,
    netns::{InNamespace as _, Namespace, VethPair},
    packet::*,
    traffic::{WARMUP, WINDOW, measured_rate, receiver, sender, settled_count},
};
use shaper::{
    Classifier, Direction,
    policy::rule_table::{
        Action, DirSel, Limit, PortRange, ProtoSel, RuleKey, RuleTable, SetOutcome, Side,
    },
};

/// TC_ACT_UNSPEC (pass on) and TC_ACT_SHOT.
const PASS: i32 = -1;
const DROP: i32 = 2;

/// struct __sk_buff (include/uapi/linux/bpf.h): 192 bytes, `tstamp` (u64) at offset 152.
const SKB_CONTEXT_LEN: usize = 192;
const SKB_TSTAMP: usize = 152;

/// 128 B/s: a 128-byte frame takes exactly one second, so departures are whole seconds apart
/// however slowly the runs go (a TCG guest's included), and the 10 s horizon (a 1,280-byte
/// queue) admits exactly 11 frames at once.
const TEST_RUN_RATE_BPS: u64 = 1024;
const FRAME_LEN: usize = 128;
const SECOND: u64 = 1_000_000_000;

/// A frame of `FRAME_LEN` bytes leaving from local port `port` (egress: the source port).
fn egress_frame(port: u16) -> Vec<u8> {
    let payload = vec![0u8; FRAME_LEN - ETH_HLEN - 20 - 8];
    let frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, &udp(port, 40000, &payload)),
    );
    assert_eq!(frame.len(), FRAME_LEN);
    frame
}

/// Runs `frame` through the egress program with `skb->tstamp` = `tstamp`: the verdict and the
/// `skb->tstamp` after the run.
fn run(classifier: &mut Classifier, frame: &[u8], tstamp: u64) -> (i32, u64) {
    let program = classifier.program_mut(Direction::Egress).expect("program");
    let mut context_in = vec![0u8; SKB_CONTEXT_LEN];
    context_in[SKB_TSTAMP..SKB_TSTAMP + 8].copy_from_slice(&tstamp.to_ne_bytes());
    let mut context_out = vec![0u8; SKB_CONTEXT_LEN];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&context_in);
    opts.ctx_out = Some(&mut context_out);
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let tstamp = u64::from_ne_bytes(
        context_out[SKB_TSTAMP..SKB_TSTAMP + 8]
            .try_into()
            .expect("8 bytes"),
    );
    (result.return_value as i32, tstamp)
}

#[test]
fn departures_are_spaced_at_the_rate_a_later_stamp_is_kept_and_beyond_the_horizon_drops() {
    common::root_or_skip!();
    // A classifier of its own on `lo`: the rule is written into its maps the way the daemon
    // writes it (`write_rule`, the rule index), without the `fq` root the daemon would install
    // first, which BPF_PROG_TEST_RUN never reaches (and this machine's kernel lacks).
    let mut classifier = common::test_run::on_loopback();
    let port = 9190;
    let limit = Limit {
        rate_bps: TEST_RUN_RATE_BPS,
        burst_bytes: 0,
        action: Action::Pace,
        ecn: false,
        per_remote: false,
        queue_bytes: 10 * FRAME_LEN as u64,
    };
    let config = limit.config();
    assert_eq!((config.fill_ns, config.burst_nanobits), (10 * SECOND, 0));
    let key = RuleKey {
        ports: PortRange::single(port),
        side: Side::Local,
        dir: DirSel::Egress,
        proto: ProtoSel::Udp,
        iface: None,
    };
    let mut table = RuleTable::new();
    let SetOutcome::Added(id) = table.set(key, limit).expect("a valid rule") else {
        panic!("a new rule");
    };
    classifier
        .write_rule(id, &config, true)
        .expect("write the rule");
    classifier.paint_rule_index(&table.resolve(&classifier.interface_names()));
    let frame = egress_frame(port);

    // The first frame already asks to leave half a second from now (as TCP stamps its own
    // pacing time): its departure is kept, not brought forward.
    let before = shaper::datapath::ktime::monotonic_ns();
    let tcp_stamp = before + SECOND / 2;
    assert_eq!(run(&mut classifier, &frame, tcp_stamp), (PASS, tcp_stamp));
    let after = shaper::datapath::ktime::monotonic_ns();
    // The second: one transmission time after the first's scheduled departure, which was the
    // time of the run (the clock was idle).
    let (verdict, second) = run(&mut classifier, &frame, 0);
    assert_eq!(verdict, PASS);
    let first = second - SECOND;
    assert!(
        (before..=after).contains(&first),
        "the first departure {first} is the time of its run, within [{before}, {after}]"
    );
    // The third carries a stamp far beyond the horizon (a receive timestamp of the realtime
    // clock, say): not a departure, overwritten.
    let realtime_like = before + 100 * SECOND;
    assert_eq!(
        run(&mut classifier, &frame, realtime_like),
        (PASS, first + 2 * SECOND)
    );
    // Up to the horizon, 10 s ahead: frames 3..=10 leave a second apart.
    for k in 3..=10 {
        assert_eq!(
            run(&mut classifier, &frame, 0),
            (PASS, first + k * SECOND),
            "frame {k}"
        );
    }
    // The 12th would leave 11 s after the first: beyond the horizon, dropped, untouched; so is
    // the next (the clock did not move).
    for _ in 0..2 {
        assert_eq!(run(&mut classifier, &frame, 0), (DROP, 0));
    }
    let counters = classifier.rule_counters(id, Direction::Egress);
    assert_eq!((counters.passed.packets, counters.dropped.packets), (11, 2));
    assert_eq!(counters.passed.bytes, 11 * FRAME_LEN as u64);
    let clock = classifier
        .bucket(id, Direction::Egress)
        .expect("bucket")
        .stamp_ns;
    assert_eq!(
        clock,
        first + 11 * SECOND,
        "the clock is where the 11th frame ends"
    );
    // Another port's frame is not paced: its stamp stays as it came.
    assert_eq!(run(&mut classifier, &egress_frame(port + 1), 7), (PASS, 7));
    // The rule becomes a drop rule: the clock 11 s ahead is not tokens; its bucket starts full,
    // stamped now, and the same frame passes at once, unstamped.
    let drop = Limit {
        action: Action::Drop,
        burst_bytes: 4 * FRAME_LEN as u64,
        queue_bytes: 0,
        ..limit
    };
    classifier
        .write_rule(id, &drop.config(), false)
        .expect("replace the rule");
    let bucket = classifier.bucket(id, Direction::Egress).expect("bucket");
    assert!(bucket.stamp_ns <= shaper::datapath::ktime::monotonic_ns());
    assert_eq!(bucket.tokens, drop.config().burst_nanobits);
    assert_eq!(run(&mut classifier, &frame, 0), (PASS, 0));
    println!(
        "pace at 128 B/s: 11 frames stamped a second apart from the run's time, the 12th and \
         13th dropped beyond the 10 s horizon"
    );
}

const RATE: &str = "8mbit";
const RATE_BYTES_PER_SEC: f64 = 1_000_000.0;
/// Twice the rate.
const OFFERED_BYTES_PER_SEC: u64 = 2_000_000;
/// UDP through a pace rule arrives within 2% of the rate (as through a shape rule: the guests'
/// emulated CPUs make the window's edges noisy).
const UDP_TOLERANCE: f64 = 0.02;
const PORT: u16 = 7211;
const SINK: u16 = 7310;

/// `tc -j qdisc show dev IFACE root` in `ns`.
fn root_qdisc(ns: &Namespace, iface: &str) -> serde_json::Value {
    let json = ns.tc(&["-j", "qdisc", "show", "dev", iface, "root"]);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("tc -j: {e}: {json}"))
}

#[test]
fn udp_at_twice_the_rate_through_an_egress_pace_rule_arrives_at_the_rate_and_the_root_comes_back() {
    common::root_or_skip!();
    let pair = common::test_veth_pair!();
    let before = root_qdisc(&pair.a, &pair.a_if);
    let has_fq = pair.a.kernel_has_qdisc(&pair.a_if, "fq");
    let daemon = Daemon::on(&pair, &[]);
    let port = PORT.to_string();
    let set = [
        "limit", "set", &port, "--rate", RATE, "--dir", "egress", "--proto", "udp", "--action",
        "pace",
    ];
    if !has_fq {
        let refused = daemon.cli(&set);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "a pace rule without fq is refused"
        );
        assert!(
            stderr.contains("needs the `fq` qdisc (sch_fq) as the root of")
                && stderr.contains(&pair.a_if),
            "{stderr}"
        );
        assert!(
            daemon.rules().is_empty(),
            "the refused rule is not in force"
        );
        assert_eq!(
            root_qdisc(&pair.a, &pair.a_if),
            before,
            "the root is untouched"
        );
        daemon.stop_ok();
        println!(
            "this kernel has no fq (tc could not add one): the pace rule was refused: {stderr}"
        );
        return;
    }
    daemon.cli_ok(&set);
    let root = root_qdisc(&pair.a, &pair.a_if);
    assert_eq!(
        (root[0]["kind"].as_str(), root[0]["handle"].as_str()),
        (Some("fq"), Some("5350:")),
        "{root}"
    );

    let received = receiver(
        pair.b
            .within(|| UdpSocket::bind((pair.b_addr, SINK)).expect("bind")),
    );
    let to = SocketAddr::from((pair.b_addr, SINK));
    let start = Instant::now();
    let sending = sender(
        pair.a
            .within(|| UdpSocket::bind((pair.a_addr, PORT)).expect("bind")),
        to,
        OFFERED_BYTES_PER_SEC,
        WARMUP + WINDOW + Duration::from_millis(200),
    );
    let rate = measured_rate(&received, start);
    let sent = sending.wait().expect("sender");
    let ratio = rate / RATE_BYTES_PER_SEC;
    let rule = daemon.rules()[0].clone();
    assert!(
        rule.backlog_bytes <= rule.queue_bytes,
        "scheduled at most a queue ahead"
    );
    let backlog_at_end = rule.backlog_bytes;
    // What is scheduled leaves within the horizon (0.5 s for the default queue here).
    thread::sleep(Duration::from_millis(800));
    let rule = daemon.rules()[0].clone();
    println!(
        "udp at 2x through an egress pace rule of {RATE}: {rate:.0} B/s, ratio {ratio:.4}; {sent} \
         datagrams accepted by the socket, {} received; rule: passed {}, dropped beyond the \
         horizon {}, queue {} B, scheduled ahead when the sender stopped {} B",
        received.count(),
        rule.passed_packets,
        rule.dropped_packets,
        rule.queue_bytes,
        backlog_at_end,
    );
    assert!(
        (ratio - 1.0).abs() <= UDP_TOLERANCE,
        "paced UDP at {ratio:.4} of the rate, outside ±{UDP_TOLERANCE}"
    );
    assert_eq!(rule.backlog_bytes, 0, "nothing is scheduled ahead any more");
    // Every datagram the program passed left at its time; fq dropped none.
    assert_eq!(settled_count(&received), rule.passed_packets);
    assert_eq!(rule.queued_packets, rule.passed_packets);
    let listed = daemon.cli_ok(&["limit", "ls"]);
    assert!(
        listed.contains(&format!(
            "rule {} pace: sent {} packets",
            rule.id, rule.passed_packets
        )),
        "{listed}"
    );
    assert_eq!((rule.action, rule.burst_bytes), (Action::Pace, 0));

    daemon.cli_ok(&["limit", "rm", &port, "--dir", "egress", "--proto", "udp"]);
    assert_eq!(
        root_qdisc(&pair.a, &pair.a_if),
        before,
        "the root qdisc is the one before the first pace rule"
    );
    daemon.stop_ok();
}

#[test]
fn pace_and_shape_rules_cannot_share_an_interface_and_a_pace_rule_is_egress_only() {
    common::root_or_skip!();
    let pair: VethPair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let refused = daemon.cli(&["limit", "set", "7212", "--rate", RATE, "--action", "pace"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("applies to egress only (--dir egress)"),
        "{stderr}"
    );
    let refused = daemon.cli(&[
        "limit", "set", "7212", "--rate", RATE, "--dir", "egress", "--action", "pace", "--burst",
        "1MiB",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not apply to a `pace` rule"),
        "{stderr}"
    );
    daemon.cli_ok(&[
        "limit", "set", "7213", "--rate", RATE, "--dir", "egress", "--action", "shape",
    ]);
    let refused = daemon.cli(&[
        "limit", "set", "7212", "--rate", RATE, "--dir", "egress", "--action", "pace",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("has shape rules, whose HTB is its root qdisc"),
        "{stderr}"
    );
    assert_eq!(root_qdisc(&pair.a, &pair.a_if)[0]["kind"], "htb");
    assert_eq!(daemon.rules().len(), 1);
    daemon.stop_ok();
}

#[test]
fn on_a_multi_queue_device_each_transmit_queue_gets_an_fq_under_shapers_mq() {
    let ns = common::test_namespace!();
    // A veth with four transmit queues, both ends in the test's namespace: its default root is
    // `noqueue` (veth has no queue of its own), and `mq` takes it (`netif_is_multiqueue`).
    ns.ip_ok(&[
        "link",
        "add",
        "mq0",
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "type",
        "veth",
        "peer",
        "name",
        "mq1",
    ]);
    ns.ip_ok(&["link", "set", "mq0", "up"]);
    ns.ip_ok(&["link", "set", "mq1", "up"]);
    let before = root_qdisc(&ns, "mq0");
    let has_fq = ns.kernel_has_qdisc("mq0", "fq");
    let daemon = Daemon::start(&ns, "pace-mq", &["--iface", "mq0"]);
    let set = [
        "limit", "set", "7214", "--rate", RATE, "--dir", "egress", "--action", "pace",
    ];
    if !has_fq {
        let refused = daemon.cli(&set);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("needs the `fq` qdisc"), "{stderr}");
        // The mq made before the first fq failed is gone again.
        assert_eq!(root_qdisc(&ns, "mq0"), before);
        daemon.stop_ok();
        return;
    }
    daemon.cli_ok(&set);
    let qdiscs: serde_json::Value =
        serde_json::from_str(&ns.tc(&["-j", "qdisc", "show", "dev", "mq0"])).expect("tc -j");
    let kinds: Vec<(String, String)> = qdiscs
        .as_array()
        .expect("a list")
        .iter()
        .map(|q| {
            (
                q["kind"].as_str().unwrap_or_default().to_owned(),
                q["parent"].as_str().unwrap_or("root").to_owned(),
            )
        })
        .collect();
    println!("mq0 with a pace rule: {kinds:?}");
    assert_eq!(kinds[0], ("mq".to_owned(), "root".to_owned()), "{qdiscs}");
    // Beside the clsact qdisc of the daemon's own hooks (where tcx is missing), an fq under
    // each of the four queues, in whatever order tc lists them.
    let mut under: Vec<&str> = kinds
        .iter()
        .filter(|(kind, _)| kind == "fq")
        .map(|(_, parent)| parent.as_str())
        .collect();
    under.sort_unstable();
    assert_eq!(under, ["5350:1", "5350:2", "5350:3", "5350:4"], "{qdiscs}");
    daemon.cli_ok(&["limit", "rm", "7214", "--dir", "egress"]);
    assert_eq!(root_qdisc(&ns, "mq0"), before, "the default root is back");
    daemon.stop_ok();
}

#[test]
fn a_saved_pace_rule_comes_back_with_its_fq_root_and_without_fq_it_is_skipped_not_fatal() {
    let pair = common::test_veth_pair!();
    let has_fq = pair.a.kernel_has_qdisc(&pair.a_if, "fq");
    let dir = std::env::temp_dir().join(format!(
        "shaper-test-{}-pace-saved-rules",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    let state = dir.join("state.json");
    let args = ["--iface", pair.a_if.as_str()];
    if has_fq {
        let daemon = Daemon::start_with_state(&pair.a, "pace-state", &args, &state);
        daemon.cli_ok(&[
            "limit", "set", "7215", "--rate", RATE, "--dir", "egress", "--action", "pace",
        ]);
        // Stopped without --persist: the fq root goes with the daemon.
        daemon.stop_ok();
        assert_ne!(root_qdisc(&pair.a, &pair.a_if)[0]["kind"], "fq");
    } else {
        // What a daemon on a kernel with fq saved.
        std::fs::write(
            &state,
            r#"{"version": 1, "config_rules": [], "rules": [{"id": 1, "key": {"ports": "7215",
            "side": "local", "dir": "egress", "proto": "any", "iface": null}, "limit":
            {"rate_bps": 8000000, "burst_bytes": 0, "action": "pace", "queue_bytes": 524288}}]}"#,
        )
        .expect("write the state file");
    }
    let daemon = Daemon::start_with_state(&pair.a, "pace-state-2", &args, &state);
    let rules = daemon.rules();
    if has_fq {
        assert_eq!(rules.len(), 1, "{rules:?}\n{}", daemon.log());
        assert_eq!(
            (rules[0].action, rules[0].queue_bytes),
            (Action::Pace, 524_288)
        );
        assert_eq!(root_qdisc(&pair.a, &pair.a_if)[0]["kind"], "fq");
    } else {
        assert!(rules.is_empty(), "the pace rule is skipped");
        let log = daemon.log();
        assert!(
            log.contains("rule 7215") && log.contains("skipped") && log.contains("sch_fq"),
            "{log}"
        );
    }
    daemon.stop_ok();
    let _ = std::fs::remove_dir_all(&dir);
}
