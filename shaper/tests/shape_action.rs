//! The shape action on real traffic: the real daemon on a veth between two throwaway namespaces,
//! shape rules set with the real CLI, the HTB classes read back with `tc -j`, UDP and TCP sent
//! out of the daemon's namespace (egress on `a`'s veth, where the local port is the source port).
//!
//! Rates are compared in wire bytes, what HTB charges (`qdisc_pkt_len`): a datagram of `PAYLOAD`
//! bytes is `WIRE` bytes on the wire. Measured figures are printed (`--show-output`).

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use common::{
    daemon::Daemon,
    netns::{InNamespace as _, Namespace, VethPair},
    tcp_bulk::{self, Writer},
    traffic::{
        Receiver, WARMUP, WINDOW, WIRE, measured_rate, receiver, receiver_on, sender, sender_to,
        settled_count,
    },
};

const RATE: &str = "8mbit";
const RATE_BYTES_PER_SEC: f64 = 1_000_000.0;
/// Twice the rate, as the issue asks.
const OFFERED_BYTES_PER_SEC: u64 = 2_000_000;
/// UDP through a shape rule arrives within 2% of the rate.
const UDP_TOLERANCE: f64 = 0.02;

const PORT: u16 = 7201;
/// Where the UDP of the tests goes, in `b`.
const SINK: u16 = 7300;

/// `tc -j qdisc show dev IFACE root` in `ns`: the root qdisc as tc reports it.
/// The root qdisc of `iface` as `tc -j qdisc show` describes it, without HTB's
/// `direct_packets_stat`: that is a counter (packets through HTB's direct queue), which any
/// packet the stack sends meanwhile (an IPv6 router solicitation) moves, not a setting.
fn root_qdisc(ns: &Namespace, iface: &str) -> serde_json::Value {
    let json = ns.tc(&["-j", "qdisc", "show", "dev", iface, "root"]);
    let mut root: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("tc -j: {e}: {json}"));
    if let Some(qdiscs) = root.as_array_mut() {
        for qdisc in qdiscs {
            if let Some(options) = qdisc.get_mut("options").and_then(|o| o.as_object_mut()) {
                options.remove("direct_packets_stat");
            }
        }
    }
    root
}

/// The HTB classes of `iface` as `tc class show` prints them (this tc has no JSON for classes):
/// (classid, rate as tc spells it).
fn classes(ns: &Namespace, iface: &str) -> Vec<(String, String)> {
    ns.tc(&["class", "show", "dev", iface])
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |word: &str| words.iter().position(|w| *w == word);
            if words.get(1) != Some(&"htb") {
                return None;
            }
            let rate = words.get(at("rate")? + 1)?;
            Some((words.get(2)?.to_string(), rate.to_string()))
        })
        .collect()
}

/// UDP from `PORT` in `a` to a receiver in `b` at twice the rate for a warm-up and a window;
/// the receiver's rate over the window.
fn udp_out_of_a(pair: &VethPair) -> (f64, u64, Receiver) {
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
    (rate, sent, received)
}

#[test]
fn udp_at_twice_the_rate_through_an_egress_shape_rule_arrives_at_the_rate_and_the_root_comes_back()
{
    common::root_or_skip!();
    let pair = common::test_veth_pair!();
    let before = root_qdisc(&pair.a, &pair.a_if);
    let daemon = Daemon::on(&pair, &[]);
    let port = PORT.to_string();
    daemon.cli_ok(&[
        "limit", "set", &port, "--rate", RATE, "--dir", "egress", "--proto", "udp", "--action",
        "shape",
    ]);
    let rule = daemon.rules()[0].clone();
    assert_eq!(
        classes(&pair.a, &pair.a_if),
        [(format!("5348:{:x}", rule.id), "8Mbit".to_owned())]
    );
    assert_eq!(root_qdisc(&pair.a, &pair.a_if)[0]["kind"], "htb");

    let (rate, sent, received) = udp_out_of_a(&pair);
    let ratio = rate / RATE_BYTES_PER_SEC;
    let rule = daemon.rules()[0].clone();
    let backlog_at_end = (rule.backlog_packets, rule.backlog_bytes);
    assert!(
        rule.backlog_bytes <= rule.queue_bytes,
        "the queue holds at most its limit"
    );
    // The queue drains at the rate: at most 131 ms for this one.
    thread::sleep(Duration::from_millis(500));
    let rule = daemon.rules()[0].clone();
    println!(
        "udp at 2x through an egress shape rule of {RATE}: {rate:.0} B/s, ratio {ratio:.4}; \
         {sent} datagrams accepted by the socket, {} received; rule: passed {}, queued {}, \
         dropped (queue overflow) {}, queue {} B, backlog when the sender stopped {} packets \
         / {} B",
        received.count(),
        rule.passed_packets,
        rule.queued_packets,
        rule.dropped_packets,
        rule.queue_bytes,
        backlog_at_end.0,
        backlog_at_end.1
    );
    assert!(
        (ratio - 1.0).abs() <= UDP_TOLERANCE,
        "shaped UDP at {ratio:.4} of the rate, outside ±{UDP_TOLERANCE}"
    );
    // Every datagram the classifier passed went through the class (the backlog has drained by
    // now) or overflowed its queue.
    assert_eq!((rule.backlog_packets, rule.backlog_bytes), (0, 0));
    assert_eq!(
        rule.passed_packets,
        rule.queued_packets + rule.dropped_packets
    );
    assert_eq!(settled_count(&received), rule.queued_packets);
    let listed = daemon.cli_ok(&["limit", "ls"]);
    assert!(
        listed.contains(&format!(
            "rule {} shape: queued {} packets",
            rule.id, rule.queued_packets
        )),
        "{listed}"
    );

    daemon.cli_ok(&["limit", "rm", &port, "--dir", "egress", "--proto", "udp"]);
    assert_eq!(
        root_qdisc(&pair.a, &pair.a_if),
        before,
        "the root qdisc is the one before the first shape rule"
    );
    assert!(classes(&pair.a, &pair.a_if).is_empty());
    daemon.stop_ok();
}

#[test]
fn replacing_a_shape_rule_under_traffic_changes_its_class_and_stopping_the_daemon_restores_the_root()
 {
    common::root_or_skip!();
    let pair = common::test_veth_pair!();
    let before = root_qdisc(&pair.a, &pair.a_if);
    let daemon = Daemon::on(&pair, &[]);
    let port = PORT.to_string();
    let set = |rate: &str| {
        daemon.cli_ok(&[
            "limit", "set", &port, "--rate", rate, "--dir", "egress", "--action", "shape",
        ])
    };
    set("4mbit");
    let id = daemon.rules()[0].id;
    let class = format!("5348:{id:x}");
    assert_eq!(
        classes(&pair.a, &pair.a_if),
        [(class.clone(), "4Mbit".to_owned())]
    );

    // Traffic at 2 MB/s while the rule is replaced twice.
    let received = receiver(
        pair.b
            .within(|| UdpSocket::bind((pair.b_addr, SINK)).expect("bind")),
    );
    let to = SocketAddr::from((pair.b_addr, SINK));
    let sending = sender(
        pair.a
            .within(|| UdpSocket::bind((pair.a_addr, PORT)).expect("bind")),
        to,
        OFFERED_BYTES_PER_SEC,
        Duration::from_secs(8),
    );
    let window = |what: &str, expected: f64| {
        thread::sleep(Duration::from_secs(1));
        let (first, t0) = (received.count(), Instant::now());
        thread::sleep(Duration::from_secs(2));
        let rate = ((received.count() - first) * WIRE) as f64 / t0.elapsed().as_secs_f64();
        println!("{what}: {rate:.0} B/s, ratio {:.4}", rate / expected);
        assert!(
            (rate / expected - 1.0).abs() <= 0.05,
            "{what}: {rate:.0} B/s against {expected:.0}"
        );
    };
    window("shape 4mbit", 500_000.0);
    let output = set("12mbit");
    assert!(output.contains("replaced"), "{output}");
    assert_eq!(daemon.rules()[0].id, id, "the rule keeps its id and class");
    assert_eq!(classes(&pair.a, &pair.a_if), [(class, "12Mbit".to_owned())]);
    window("shape replaced by 12mbit", 1_500_000.0);
    drop(sending.wait());

    let log = daemon.stop_ok();
    assert_eq!(
        root_qdisc(&pair.a, &pair.a_if),
        before,
        "stopping the daemon put the root qdisc back:\n{log}"
    );
}

#[test]
fn shaper_down_after_a_persistent_daemon_removes_the_htb_root() {
    let pair = common::test_veth_pair!();
    let before = root_qdisc(&pair.a, &pair.a_if);
    let daemon = Daemon::on(&pair, &["--persist"]);
    let pin_base = daemon.pin_base.clone();
    daemon.cli_ok(&[
        "limit", "set", "7202", "--rate", RATE, "--dir", "egress", "--action", "shape",
    ]);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        root_qdisc(&pair.a, &pair.a_if)[0]["kind"],
        "htb",
        "--persist leaves the shaping in force"
    );
    let output = Daemon::in_netns(
        &pair.a.name,
        &["down", "--pin-dir", &pin_base.to_string_lossy()],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(root_qdisc(&pair.a, &pair.a_if), before);
    common::daemon::down(&pair.a.name, &pin_base);
}

#[test]
fn a_tcp_download_through_an_egress_shape_rule_reaches_the_rate_without_retransmissions() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    drop_then_shape(&daemon, &pair, [7203, 7204], Writer::ServiceInA);
    daemon.stop_ok();
}

/// A TCP stream (written by `writer`: egress rules for a download, ingress ones for an upload)
/// through a drop rule on `ports[0]`, then a shape rule on `ports[1]`, both at `RATE`: prints
/// both, and holds the shaped one to the rate with under 1% of its segments retransmitted.
fn drop_then_shape(daemon: &Daemon, pair: &VethPair, ports: [u16; 2], writer: Writer) {
    let (dir, what) = match writer {
        Writer::ServiceInA => ("egress", "tcp download"),
        Writer::ClientInB => ("ingress", "tcp upload"),
    };
    let mut shaped = None;
    for (port, action) in ports.into_iter().zip(["drop", "shape"]) {
        let port_text = port.to_string();
        let mut args = vec![
            "limit", "set", &port_text, "--rate", RATE, "--dir", dir, "--proto", "tcp",
        ];
        if action == "shape" {
            args.extend(["--action", "shape"]);
        }
        daemon.cli_ok(&args);
        let bulk = tcp_bulk::stream(pair, port, writer);
        let ratio = bulk.goodput / RATE_BYTES_PER_SEC;
        println!(
            "{what}, {dir} {action} {RATE}: goodput/rate {ratio:.4}, sender retransmitted {} of \
             {} segments ({:.3}%)",
            bulk.retransmitted,
            bulk.sent,
            bulk.retransmitted_share() * 100.0
        );
        shaped = Some((ratio, bulk.retransmitted_share()));
    }
    let (shape_ratio, shape_retrans) = shaped.expect("the shape rule's stream");
    assert!(shape_ratio <= 1.02, "shaped goodput above the rate");
    assert!(
        shape_ratio >= 0.90,
        "shaped goodput only {shape_ratio:.4} of the rate"
    );
    assert!(
        shape_retrans < 0.01,
        "shaping made the sender retransmit {:.3}% of its segments",
        shape_retrans * 100.0
    );
}

/// Whether the IFB device of `iface` exists in `ns`.
fn ifb_exists(ns: &Namespace, iface: &str) -> Option<String> {
    // `ip -o link show dev IFACE` starts with "INDEX: ".
    let line = ns.ip_ok(&["-o", "link", "show", "dev", iface]);
    let ifindex: u32 = line
        .split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {line}"));
    let name = format!("shp-{ifindex}");
    ns.ip(&["link", "show", "dev", &name]).ok().map(|_| name)
}

#[test]
fn udp_at_twice_the_rate_through_an_ingress_shape_rule_arrives_at_the_rate_once_counted() {
    let pair = common::test_veth_pair!();
    let before = root_qdisc(&pair.a, &pair.a_if);
    let daemon = Daemon::on(&pair, &[]);
    let port = PORT.to_string();
    if !shaper::datapath::kernel_support::redirect_to_ifb_delivers() {
        // Before Linux 6.5 the IFB would drop every redirected packet: the rule is refused, and
        // nothing is set up for it.
        let output = daemon.cli(&[
            "limit", "set", &port, "--rate", RATE, "--dir", "ingress", "--proto", "udp",
            "--action", "shape",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!(
            "refused on {}: {stderr}",
            shaper::datapath::kernel_support::release()
        );
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("needs Linux >= 6.5"), "{stderr}");
        assert!(daemon.rules().is_empty());
        assert_eq!(ifb_exists(&pair.a, &pair.a_if), None);
        return;
    }
    daemon.cli_ok(&[
        "limit", "set", &port, "--rate", RATE, "--dir", "ingress", "--proto", "udp", "--action",
        "shape",
    ]);
    let ifb = ifb_exists(&pair.a, &pair.a_if).expect("the IFB device exists");
    let id = daemon.rules()[0].id;
    assert_eq!(
        classes(&pair.a, &ifb),
        [(format!("5348:{id:x}"), "8Mbit".to_owned())]
    );
    assert_eq!(root_qdisc(&pair.a, &pair.a_if), before, "egress untouched");

    let received = receiver_on(&pair, PORT);
    let start = Instant::now();
    let sending = sender_to(
        &pair,
        PORT,
        OFFERED_BYTES_PER_SEC,
        WARMUP + WINDOW + Duration::from_millis(200),
    );
    let rate = measured_rate(&received, start);
    let sent = sending.wait().expect("sender");
    thread::sleep(Duration::from_millis(500));
    let rule = daemon.rules()[0].clone();
    let stats = daemon.settled();
    let seen = stats
        .port(
            &pair.a_if,
            shaper::Direction::Ingress,
            shaper::datapath::classifier::Proto::Udp,
            PORT,
        )
        .map_or(0, |p| p.packets);
    let ratio = rate / RATE_BYTES_PER_SEC;
    println!(
        "udp at 2x through an ingress shape rule of {RATE}: {rate:.0} B/s, ratio {ratio:.4}; \
         sent {sent}, the hook counted {seen}, received {}; rule: passed {}, queued {}, \
         dropped (queue overflow) {}",
        received.count(),
        rule.passed_packets,
        rule.queued_packets,
        rule.dropped_packets
    );
    assert!(
        (ratio - 1.0).abs() <= UDP_TOLERANCE,
        "shaped UDP at {ratio:.4} of the rate, outside ±{UDP_TOLERANCE}"
    );
    // Counted once: the packets IFB re-injects do not meet the ingress hook again.
    assert_eq!(seen, sent, "the hook counted each datagram once");
    assert_eq!(rule.passed_packets, sent);
    assert_eq!(
        rule.passed_packets,
        rule.queued_packets + rule.dropped_packets
    );
    assert_eq!(settled_count(&received), rule.queued_packets);
    // The same figures in the metrics: one series per rule.
    let response = common::metrics::get(
        &pair.a,
        "127.0.0.1:19350".parse().expect("address"),
        "/metrics",
        None,
    );
    let samples = common::metrics::samples(&response.body);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(series, _)| {
                series.starts_with(&format!("{name}{{"))
                    && common::metrics::label(series, "ports") == Some(&port)
            })
            .map(|(_, &value)| value)
            .unwrap_or_else(|| panic!("no {name} for port {port}:\n{}", response.body))
    };
    assert_eq!(
        value("shaper_rule_queued_packets_total"),
        rule.queued_packets as f64
    );
    assert_eq!(value("shaper_rule_backlog_bytes"), 0.0);
    assert_eq!(
        value("shaper_rule_queue_dropped_packets_total"),
        rule.dropped_packets as f64
    );
    // The sender is held back rather than its datagrams dropped: a queued skb stays charged to
    // the sending socket (veth does not orphan it), so its buffer fills and sends are refused.

    daemon.cli_ok(&["limit", "rm", &port, "--dir", "ingress", "--proto", "udp"]);
    assert_eq!(
        ifb_exists(&pair.a, &pair.a_if),
        None,
        "the IFB device went with the rule"
    );
    daemon.stop_ok();
}

#[test]
fn a_tcp_upload_through_an_ingress_shape_rule_reaches_the_rate_with_few_retransmissions() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    drop_then_shape(&daemon, &pair, [7205, 7206], Writer::ClientInB);
    daemon.stop_ok();
    assert_eq!(
        ifb_exists(&pair.a, &pair.a_if),
        None,
        "stopping the daemon removed the IFB"
    );
}

/// The queue under an ingress shape rule's class (on the IFB device): its kind and, for
/// fq_codel, whether it marks ECN, as `tc -j qdisc show` reports them.
fn ingress_queue(ns: &Namespace, ifb: &str, rule: u16) -> (String, bool) {
    let json = ns.tc(&["-j", "qdisc", "show", "dev", ifb]);
    let qdiscs: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("tc -j: {e}: {json}"));
    let parent = format!("5348:{rule:x}");
    let leaf = qdiscs
        .as_array()
        .and_then(|all| all.iter().find(|q| q["parent"] == parent.as_str()))
        .unwrap_or_else(|| panic!("no queue under {parent}: {json}"));
    (
        leaf["kind"].as_str().unwrap_or_default().to_owned(),
        leaf["options"]["ecn"] == true,
    )
}

/// An ECN sender's upload through an ingress shape rule: where the kernel has `fq_codel`, the
/// rule's queue is one with ECN, which tells the remote sender to slow down by marks, so nothing
/// is dropped and nothing retransmitted; without it, a bfifo, and the daemon says so.
#[test]
fn an_ecn_upload_through_an_ingress_shape_rule_is_marked_by_fq_codel_not_dropped() {
    let pair = common::test_veth_pair!();
    if !shaper::datapath::kernel_support::redirect_to_ifb_delivers() {
        println!("ingress shape rules are refused before Linux 6.5 (tested above)");
        return;
    }
    pair.b
        .sysctl("net.ipv4.tcp_ecn=1")
        .unwrap_or_else(|e| panic!("{e}"));
    let has_codel = pair.a.kernel_has_qdisc(&pair.a_if, "fq_codel");
    let daemon = Daemon::on(&pair, &[]);
    let port = 7211u16;
    let port_text = port.to_string();
    daemon.cli_ok(&[
        "limit", "set", &port_text, "--rate", RATE, "--dir", "ingress", "--proto", "tcp",
        "--action", "shape",
    ]);
    let ifb = ifb_exists(&pair.a, &pair.a_if).expect("the IFB device exists");
    let id = daemon.rules()[0].id;
    let (kind, ecn) = ingress_queue(&pair.a, &ifb, id);
    let bulk = tcp_bulk::stream(&pair, port, Writer::ClientInB);
    let rule = daemon.rules()[0].clone();
    let ratio = bulk.goodput / RATE_BYTES_PER_SEC;
    println!(
        "ecn tcp upload through an ingress shape rule of {RATE} ({kind}, ecn {ecn}): \
         goodput/rate {ratio:.4}, sender retransmitted {} of {} segments; rule queued {}, \
         marked {}, dropped {}",
        bulk.retransmitted,
        bulk.sent,
        rule.queued_packets,
        rule.marked_packets,
        rule.dropped_packets
    );
    assert!(ratio <= 1.05, "shaped goodput above the rate");
    assert!(ratio >= 0.90, "shaped goodput only {ratio:.4} of the rate");
    if has_codel {
        assert_eq!((kind.as_str(), ecn), ("fq_codel", true));
        assert!(rule.marked_packets > 0, "fq_codel marked nothing");
        assert_eq!(
            rule.dropped_packets, 0,
            "an ECN sender's packets are marked, not dropped"
        );
        assert_eq!(
            bulk.retransmitted, 0,
            "nothing dropped, nothing retransmitted"
        );
    } else {
        assert_eq!(kind, "bfifo");
        assert_eq!(rule.marked_packets, 0, "a bfifo marks nothing");
        assert!(
            daemon.log().contains("no fq_codel qdisc"),
            "the fallback is said:\n{}",
            daemon.log()
        );
    }
    daemon.stop_ok();
}

#[test]
fn dir_both_shapes_each_way_and_a_root_somebody_added_is_never_replaced() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    daemon.cli_ok(&[
        "limit", "set", "7207", "--rate", RATE, "--action", "shape", "--queue", "1MiB",
    ]);
    let id = daemon.rules()[0].id;
    let class = (format!("5348:{id:x}"), "8Mbit".to_owned());
    let ifb = ifb_exists(&pair.a, &pair.a_if).expect("the IFB device of the ingress direction");
    assert_eq!(
        classes(&pair.a, &pair.a_if),
        std::slice::from_ref(&class),
        "egress"
    );
    assert_eq!(classes(&pair.a, &ifb), [class], "ingress");
    let queues = pair.a.tc(&["qdisc", "show", "dev", &pair.a_if]);
    assert!(
        queues.contains("bfifo") && queues.contains("limit 1Mb"),
        "{queues}"
    );
    daemon.cli_ok(&["limit", "rm", "7207"]);
    assert_eq!(ifb_exists(&pair.a, &pair.a_if), None);

    // Somebody's own root: a shape rule would replace it, so it is refused and nothing changes.
    pair.a.tc(&[
        "qdisc", "add", "dev", &pair.a_if, "root", "handle", "1:", "htb",
    ]);
    let before = root_qdisc(&pair.a, &pair.a_if);
    let refused = daemon.cli(&[
        "limit", "set", "7208", "--rate", RATE, "--dir", "egress", "--action", "shape",
    ]);
    let said = String::from_utf8_lossy(&refused.stderr);
    println!("{said}");
    assert!(!refused.status.success());
    assert!(
        said.contains("has the root qdisc htb 1:") && said.contains("tc qdisc del dev"),
        "{said}"
    );
    assert!(daemon.rules().is_empty());
    assert_eq!(root_qdisc(&pair.a, &pair.a_if), before);
    daemon.stop_ok();
    assert_eq!(
        root_qdisc(&pair.a, &pair.a_if),
        before,
        "stopping left it alone"
    );
}

/// The figures of an `--ecn` policer beside a plain one, for the same TCP upload. Only the marks
/// are asserted: on a veth the round trip is ~50 µs, and a sender cannot go slower than about
/// two segments per round trip (hundreds of Mbit/s here) however many marks it gets, so at
/// 8 Mbit/s the bucket still empties and drops. ECN pays off where the round trip is long
/// enough for the rate to be a few segments per round trip.
#[test]
fn an_ecn_policer_marks_a_tcp_upload_of_an_ecn_sender() {
    let pair = common::test_veth_pair!();
    // Linux's default tcp_ecn=2 only accepts ECN; the sender asks for it with 1.
    pair.b
        .sysctl("net.ipv4.tcp_ecn=1")
        .unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::on(&pair, &[]);
    let mut figures = Vec::new();
    for (port, ecn) in [(7209u16, false), (7210, true)] {
        let port_text = port.to_string();
        let mut args = vec![
            "limit", "set", &port_text, "--rate", RATE, "--dir", "ingress", "--proto", "tcp",
        ];
        if ecn {
            args.push("--ecn");
        }
        daemon.cli_ok(&args);
        let bulk = tcp_bulk::stream(&pair, port, Writer::ClientInB);
        let rule = daemon
            .rules()
            .into_iter()
            .find(|r| r.ports.lo == port)
            .expect("rule");
        let ratio = bulk.goodput / RATE_BYTES_PER_SEC;
        let share = bulk.retransmitted_share();
        println!(
            "tcp upload, ingress drop{} {RATE}: goodput/rate {ratio:.4}, sender retransmitted \
             {} of {} segments ({:.3}%); rule dropped {} packets, marked {}",
            if ecn { " --ecn" } else { "" },
            bulk.retransmitted,
            bulk.sent,
            share * 100.0,
            rule.dropped_packets,
            rule.marked_packets
        );
        figures.push((share, rule.marked_packets));
    }
    let ((_, unmarked), (_, marked)) = (figures[0], figures[1]);
    assert_eq!(unmarked, 0, "a rule without --ecn marks nothing");
    assert!(marked > 0, "the --ecn rule marked nothing");
    daemon.stop_ok();
}
