//! `/metrics` for real: the daemon attached to a veth between throwaway namespaces, scraped over
//! HTTP inside its namespace, checked by `promtool` and by a real Prometheus server; and the
//! full 65,536-port scrape on the real classifier driven with BPF_PROG_TEST_RUN.
//!
//! UDP datagrams of `PAYLOAD` bytes make `WIRE`-byte frames, and the namespaces carry no other
//! UDP, so per-port counters are exact and asserted exactly.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::test_run;
use common::{
    daemon::Daemon,
    metrics::{DAEMON_ADDR, Samples, get, label, samples, scrape, series},
    netns::{InNamespace as _, VethPair},
    packet::*,
    prometheus::Prometheus,
    temp_dir::TempDir,
    traffic::{PAYLOAD, WIRE, sender},
};
use shaper::{
    Classifier, Direction,
    policy::rules_in_force::Limits,
    telemetry::metrics::{Exporter, Format, Inventory, selection_file_beside},
};

/// Sends `count` datagrams from namespace `b` to `port` on `a`, one at a time.
fn send(pair: &VethPair, port: u16, count: u64) {
    let socket = pair
        .b
        .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
    let payload = [0u8; PAYLOAD];
    for _ in 0..count {
        socket.send_to(&payload, (pair.a_addr, port)).expect("send");
    }
}

/// The test process's own name as the kernel keeps it (`comm`), which the daemon reports as
/// the owner of the sockets this test binds.
fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read comm")
        .trim_end()
        .to_owned()
}

#[test]
fn a_scrape_counts_exactly_and_passes_promtool() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    daemon.cli_ok(&["limit", "set", "9311", "--rate", "10mbit", "--proto", "udp"]);
    daemon.cli_ok(&[
        "limit",
        "set",
        "30000-30010",
        "--rate",
        "1MB/s",
        "--action",
        "observe",
    ]);
    let _listener = pair
        .a
        .within(|| UdpSocket::bind((pair.a_addr, 9311)).expect("bind"));
    send(&pair, 9311, 50);
    daemon.settled();

    let response = get(&pair.a, DAEMON_ADDR, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = response.body;
    let got = samples(&body);
    let iface = pair.a_if.as_str();
    let port = [
        ("iface", iface),
        ("direction", "ingress"),
        ("proto", "udp"),
        ("port", "9311"),
    ];
    assert_eq!(got[&series("shaper_packets_total", &port)], 50.0, "{body}");
    assert_eq!(
        got[&series("shaper_bytes_total", &port)],
        (50 * WIRE) as f64
    );
    assert_eq!(got[&series("shaper_dropped_packets_total", &port)], 0.0);
    assert_eq!(got[&series("shaper_would_drop_bytes_total", &port)], 0.0);

    let rules = daemon.rules();
    for (ports, proto, action, rate) in [
        ("9311", "udp", "drop", 1_250_000.0),
        ("30000-30010", "any", "observe", 1_000_000.0),
    ] {
        let labels = [
            ("iface", "any"),
            ("direction", "both"),
            ("proto", proto),
            ("ports", ports),
            ("side", "local"),
            ("action", action),
        ];
        let burst = rules
            .iter()
            .find(|r| r.ports.to_string() == ports)
            .expect("rule")
            .burst_bytes;
        assert_eq!(
            got[&series("shaper_limit_rate_bytes_per_second", &labels)],
            rate
        );
        assert_eq!(
            got[&series("shaper_limit_burst_bytes", &labels)],
            burst as f64
        );
    }

    let comm = own_comm();
    let listening = [
        ("proto", "udp"),
        ("port", "9311"),
        ("process", comm.as_str()),
        ("scope", "198.18.0.1"),
    ];
    assert_eq!(
        got.get(&series("shaper_port_listening", &listening)),
        Some(&1.0),
        "{body}"
    );
    for direction in ["ingress", "egress"] {
        let labels = [("iface", iface), ("direction", direction), ("mode", "tcx")];
        assert_eq!(got[&series("shaper_program_attached", &labels)], 1.0);
    }
    // Every reason has a series, traffic or not, so a rate() over it never starts absent.
    let unclassified = got
        .keys()
        .filter(|s| s.starts_with("shaper_unclassified_packets_total{"))
        .count();
    assert_eq!(unclassified, 2 * shaper_common::reason::COUNT as usize);
    assert!(
        got.keys()
            .any(|s| s.starts_with("shaper_build_info{version="))
    );
    assert!(got.contains_key("shaper_scrape_duration_seconds"));

    if common::metrics::promtool_check(&body) {
        println!("promtool check metrics: ok ({} series)", got.len());
    }

    // Prometheus asks for OpenMetrics first; it gets it, terminated by # EOF.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let response = get(&pair.a, DAEMON_ADDR, "/metrics", Some(prometheus_accept));
    assert_eq!(
        response.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(response.body.ends_with("# EOF\n"), "{}", response.body);
    assert!(response.body.contains("# TYPE shaper_bytes counter\n"));
    assert_eq!(get(&pair.a, DAEMON_ADDR, "/nothing", None).status, 404);

    daemon.stop_ok();
}

/// Runs `program args` with `input` on stdin; returns success and stdout+stderr.
#[test]
fn a_filter_deleted_behind_the_daemons_back_shows_as_detached() {
    let pair = common::test_veth_pair!();
    let iface = pair.a_if.as_str();
    let daemon = Daemon::start(&pair.a, "mc", &["--iface", iface, "--attach", "clsact"]);
    let attached = |got: &Samples, direction| {
        let labels = [
            ("iface", iface),
            ("direction", direction),
            ("mode", "clsact"),
        ];
        got[&series("shaper_program_attached", &labels)]
    };
    let got = scrape(&pair.a).1;
    assert_eq!(
        (attached(&got, "ingress"), attached(&got, "egress")),
        (1.0, 1.0)
    );
    pair.a.tc(&["filter", "del", "dev", iface, "ingress"]);
    let got = scrape(&pair.a).1;
    assert_eq!(
        (attached(&got, "ingress"), attached(&got, "egress")),
        (0.0, 1.0)
    );
    // Removing the qdisc takes the other filter with it.
    pair.a.tc(&["qdisc", "del", "dev", iface, "clsact"]);
    let got = scrape(&pair.a).1;
    assert_eq!(
        (attached(&got, "ingress"), attached(&got, "egress")),
        (0.0, 0.0)
    );
    // Stopping is not an error for what someone else removed already.
    let log = daemon.stop_ok();
    assert!(log.contains("already detached by someone else"), "{log}");
}

/// Per-port series and `other` of (iface, ingress, udp) in one scrape: bytes by port label.
fn udp_ingress_bytes(got: &Samples, iface: &str) -> BTreeMap<String, f64> {
    got.iter()
        .filter(|(s, _)| s.starts_with("shaper_bytes_total{"))
        .filter(|(s, _)| {
            label(s, "iface") == Some(iface)
                && label(s, "direction") == Some("ingress")
                && label(s, "proto") == Some("udp")
        })
        .map(|(s, v)| (label(s, "port").expect("port").to_owned(), *v))
        .collect()
}

/// One step of the churn test: a CLI change, then datagrams per port, then the ports expected to
/// have their own series.
struct Phase {
    change: Option<&'static [&'static str]>,
    traffic: &'static [(u16, u64)],
    shown: &'static [&'static str],
}

/// The ports of (iface, ingress, udp) in the selection saved beside the state file `state`.
fn saved_udp_ingress_ports(state: &Path, iface: &str) -> Vec<String> {
    let path = selection_file_beside(state);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let saved: serde_json::Value = serde_json::from_str(&text).expect("a JSON selection");
    assert_eq!(saved["version"], 1, "{text}");
    saved["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["iface"] == iface && g["direction"] == "ingress" && g["proto"] == "udp")
        .flat_map(|g| g["shown"].as_array().expect("shown").clone())
        .map(|port| port[0].to_string())
        .collect()
}

#[test]
fn counters_stay_monotonic_across_top_n_churn_and_rule_changes() {
    let pair = common::test_veth_pair!();
    let iface = pair.a_if.as_str();
    let state_dir = TempDir::new("mm-state");
    let state = state_dir.0.join("state.json");
    let daemon = Daemon::start_with_state(
        &pair.a,
        "mm",
        &["--iface", iface, "--metrics-top-ports", "2"],
        &state,
    );
    // Phases of (datagrams per port), then the rule change made before the next scrape.
    // Nothing listens on these ports, so only the top 2 by bytes and ruled ports are shown.
    let phases = [
        Phase {
            change: None,
            traffic: &[(9401, 30), (9402, 20), (9403, 10), (9404, 5)],
            shown: &["9401", "9402"],
        },
        // 9403 and 9404 overtake 9401 and 9402.
        Phase {
            change: None,
            traffic: &[(9403, 100), (9404, 60)],
            shown: &["9403", "9404"],
        },
        // A rule pins 9401; 9402 climbs back into the top 2.
        Phase {
            change: Some(&["limit", "set", "9401", "--rate", "100mbit"]),
            traffic: &[(9402, 200)],
            shown: &["9401", "9402", "9403"],
        },
        // The rule goes: 9401 falls back into other (with some traffic of its own on the way);
        // 9405 arrives on top.
        Phase {
            change: Some(&["limit", "rm", "9401"]),
            traffic: &[(9405, 500), (9401, 7)],
            shown: &["9402", "9405"],
        },
    ];
    let mut previous_samples = Samples::new();
    let mut previous: BTreeMap<String, f64> = BTreeMap::new();
    for (
        phase,
        Phase {
            change,
            traffic,
            shown: expected,
        },
    ) in phases.into_iter().enumerate()
    {
        if let Some(change) = change {
            daemon.cli_ok(change);
        }
        for &(port, count) in traffic {
            send(&pair, port, count);
        }
        daemon.settled();
        let got = scrape(&pair.a).1;
        for (series, value) in &previous_samples {
            if series.contains("_total{")
                && let Some(now) = got.get(series)
            {
                assert!(
                    now >= value,
                    "phase {phase}: {series} fell {value} -> {now}"
                );
            }
        }
        let bytes = udp_ingress_bytes(&got, iface);
        let shown: Vec<&str> = bytes
            .keys()
            .map(String::as_str)
            .filter(|p| *p != "other")
            .collect();
        assert_eq!(shown, expected, "phase {phase}: {bytes:?}");
        // `other` grows by exactly the traffic, during this phase, of the ports not shown at both
        // scrapes: so every datagram is in exactly one series' increase.
        let other_now = bytes.get("other").copied().unwrap_or(0.0);
        let other_before = previous.get("other").copied().unwrap_or(0.0);
        let grew: u64 = traffic
            .iter()
            .filter(|(port, _)| {
                let port = port.to_string();
                !(previous.contains_key(&port) && bytes.contains_key(&port))
            })
            .map(|(_, count)| count * WIRE)
            .sum();
        let expected_other = if phase == 0 {
            // First scrape: everything not shown.
            (15 * WIRE) as f64
        } else {
            other_before + grew as f64
        };
        assert_eq!(other_now, expected_other, "phase {phase}: {bytes:?}");
        // The selection a restarted daemon would resume is the one this scrape showed.
        assert_eq!(
            saved_udp_ingress_ports(&state, iface),
            expected,
            "phase {phase}"
        );
        println!("phase {phase}: udp ingress bytes by series {bytes:?}");
        previous = bytes;
        previous_samples = got;
    }
    daemon.stop_ok();
}

#[test]
fn a_real_prometheus_scrapes_rates_and_limits() {
    common::root_or_skip!();
    let Some(binary) = common::tool("prometheus") else {
        return;
    };
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    daemon.cli_ok(&[
        "limit", "set", "9321", "--rate", "100mbit", "--action", "observe",
    ]);
    let prometheus = Prometheus::start(&pair.a, &binary, DAEMON_ADDR, "mp");

    // Background traffic to 9321: 100 kB/s, for at most 60 s, until the test is done.
    let started = Instant::now();
    let sender = {
        let socket = pair
            .b
            .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
        let to = SocketAddr::from((pair.a_addr, 9321));
        sender(socket, to, 100_000, Duration::from_secs(60))
    };

    let rate_query = "rate(shaper_bytes_total{port=\"9321\",direction=\"ingress\"}[5s]) > 0";
    let limit_query = "shaper_limit_rate_bytes_per_second{ports=\"9321\"}";
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut rates = Vec::new();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        // Until Prometheus is up, its port refuses: keep polling.
        let Some(result) = prometheus.query(&pair.a, rate_query) else {
            continue;
        };
        rates = result;
        if !rates.is_empty() {
            break;
        }
    }
    let sent_rate =
        (sender.finish().expect("sender") * WIRE) as f64 / started.elapsed().as_secs_f64();
    assert!(
        !rates.is_empty(),
        "Prometheus never saw traffic on 9321:\n{}",
        prometheus.log()
    );
    let rate: f64 = rates[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("rate value");
    println!("Prometheus: {rate_query} = {rate:.0} B/s (sent {sent_rate:.0} B/s on average)");
    let limits = prometheus
        .query(&pair.a, limit_query)
        .expect("Prometheus answers");
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert_eq!(limits[0]["value"][1], "12500000", "{limits:?}");
    assert_eq!(limits[0]["metric"]["action"], "observe");
    let burst = prometheus
        .query(&pair.a, "shaper_limit_burst_bytes{ports=\"9321\"}")
        .expect("Prometheus answers");
    assert_eq!(burst.len(), 1, "{burst:?}");
    // The guide's example queries (docs/src/guide/scraping.md) run (`query` asserts the API's "success") and the
    // per-port throughput one finds the traffic.
    let examples = guide_queries();
    assert!(examples.len() >= 4, "{examples:?}");
    for promql in &examples {
        let result = prometheus
            .query(&pair.a, promql)
            .expect("Prometheus answers");
        println!("example query {promql}: {} series", result.len());
    }
    assert!(
        !prometheus
            .query(&pair.a, &examples[0])
            .expect("Prometheus answers")
            .is_empty()
    );
    drop(prometheus);
    daemon.stop_ok();
}

/// The guide's page with the example queries and alert rules.
const SCRAPING_PAGE: &str = include_str!("../../docs/src/guide/scraping.md");
const ALERTS: &str = include_str!("../../examples/prometheus/shaper-alerts.yml");

/// The queries of the scraping page's ```promql block, one per line, comments left out.
fn guide_queries() -> Vec<String> {
    let block = SCRAPING_PAGE
        .split("```promql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a promql block in docs/src/guide/scraping.md");
    block
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_guide_shows_the_alert_rules_and_promtool_accepts_them() {
    assert!(
        SCRAPING_PAGE.contains(&format!("```yaml\n{ALERTS}```")),
        "docs/src/guide/scraping.md and examples/prometheus/shaper-alerts.yml differ"
    );
    if let Some(promtool) = common::tool("promtool") {
        let rules = std::env::temp_dir().join(format!("shaper-alerts-{}.yml", std::process::id()));
        std::fs::write(&rules, ALERTS).expect("write rules");
        let output = Command::new(promtool)
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .expect("run promtool");
        let _ = std::fs::remove_file(&rules);
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn a_scrape_of_all_65536_ports_in_both_directions_is_exact() {
    common::root_or_skip!();
    let mut classifier = Classifier::load(1).expect("load the classifier");
    classifier.register("lo").expect("register lo");
    let state = std::env::temp_dir()
        .join(format!("shaper-test-scrape-{}", std::process::id()))
        .join("state.json");
    let limits = Limits::start(&mut classifier, Vec::new(), &state).expect("limits");

    // One frame per (direction, protocol, port), the local port being `port`: the destination
    // on ingress, the source on egress.
    let started = Instant::now();
    let mut frames = 0u64;
    let mut bytes = 0u64;
    for direction in Direction::BOTH {
        for is_tcp in [false, true] {
            for port in 0..=u16::MAX {
                let (src, dst) = match direction {
                    Direction::Ingress => (40_000, port),
                    Direction::Egress => (port, 40_000),
                };
                let l4 = if is_tcp {
                    ipv4(IPPROTO_TCP, &tcp(src, dst, &[]))
                } else {
                    ipv4(IPPROTO_UDP, &udp(src, dst, &[0; 18]))
                };
                let frame = ethernet(&[], ETH_P_IP, &l4);
                test_run::run(&mut classifier, direction, &frame, None);
                frames += 1;
                bytes += frame.len() as u64;
            }
        }
    }
    println!(
        "ran {frames} frames through the classifier in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let exporter = Exporter::new(classifier.port_counters(), 100);
    let mut timings = Vec::new();
    let mut body = String::new();
    for _ in 0..3 {
        let started = Instant::now();
        let inventory = Inventory::gather(&classifier, &limits).expect("inventory");
        body = exporter.render(inventory, started, Format::PrometheusText);
        timings.push(started.elapsed());
    }
    println!(
        "scrape of {frames} active port counters: first {:.1} ms, then {:.1} ms and {:.1} ms \
         ({} bytes of exposition)",
        timings[0].as_secs_f64() * 1e3,
        timings[1].as_secs_f64() * 1e3,
        timings[2].as_secs_f64() * 1e3,
        body.len()
    );

    // Nothing lost, nothing counted twice: over the shown ports and `other`, every frame once.
    let got = samples(&body);
    let sum = |name: &str| -> f64 {
        got.iter()
            .filter(|(s, _)| s.starts_with(&format!("{name}{{")) && label(s, "iface") == Some("lo"))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(sum("shaper_packets_total"), frames as f64);
    assert_eq!(sum("shaper_bytes_total"), bytes as f64);
    let ports: BTreeSet<(String, String, String)> = got
        .keys()
        .filter(|s| s.starts_with("shaper_packets_total{"))
        .map(|s| {
            (
                label(s, "direction").unwrap_or_default().to_owned(),
                label(s, "proto").unwrap_or_default().to_owned(),
                label(s, "port").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let own: Vec<_> = ports.iter().filter(|(_, _, p)| p != "other").collect();
    // The top 100, plus the ports something listens on in this namespace.
    assert!(own.len() >= 100, "{} ports shown", own.len());
    assert!(own.len() < 100 + 4 * 1024, "{} ports shown", own.len());
    assert_eq!(
        ports.len() - own.len(),
        4,
        "one other per direction and protocol"
    );
    drop(limits);
    let _ = std::fs::remove_dir_all(state.parent().expect("dir"));
}
