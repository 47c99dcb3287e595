//! Real TCP connections through the veth, counted by the daemon's program and read back from
//! `/metrics`: handshakes, closes, refusals and round trips, exactly.

mod common;

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    daemon::Daemon,
    metrics::{Samples, scrape, series},
    netns::InNamespace as _,
};

const CONNECTIONS: u64 = 20;
const OPEN_PORT: u16 = 8443;
const CLOSED_PORT: u16 = 8999;
const LOOPBACK_PORT: u16 = 8444;
/// A port whose SYNs a firewall drops: nothing answers them.
const FIREWALLED_PORT: u16 = 8998;
const FIREWALLED_ATTEMPTS: u64 = 5;

/// The sample of `name` with `labels` (in exposition order), 0 when absent (a family writes a
/// port's series only once it counted something); a series without labels must be present.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    if labels.is_empty() {
        return *samples
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
    }
    samples.get(&series(name, labels)).copied().unwrap_or(0.0)
}

#[test]
fn real_connections_count_each_handshake_close_and_refusal_exactly() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    // The service on every address; a second one on loopback only, which nothing outside
    // reaches.
    let listener = pair
        .a
        .within(|| TcpListener::bind(("0.0.0.0", OPEN_PORT)).expect("bind"));
    let _loopback = pair
        .a
        .within(|| TcpListener::bind(("127.0.0.1", LOOPBACK_PORT)).expect("bind loopback"));
    let server = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            // Accepted and closed at once: the server's FIN, no data, so no RST.
            let (stream, _) = listener.accept().expect("accept");
            drop(stream);
        }
        // Still listening when the test scrapes.
        listener
    });
    pair.b.within(|| {
        for _ in 0..CONNECTIONS {
            let stream = TcpStream::connect_timeout(
                &SocketAddr::new(pair.a_addr.into(), OPEN_PORT),
                Duration::from_secs(5),
            )
            .expect("connect to the open port");
            drop(stream);
        }
        for _ in 0..CONNECTIONS {
            let refused = TcpStream::connect_timeout(
                &SocketAddr::new(pair.a_addr.into(), CLOSED_PORT),
                Duration::from_secs(5),
            )
            .expect_err("nothing listens on the closed port");
            assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        }
    });
    // SYNs dropped by nftables behind the hook: one each, as the client gives up before its
    // first retransmission (1 s, TCP_TIMEOUT_INIT).
    for rule in [
        "add table inet firewall",
        "add chain inet firewall in { type filter hook input priority 0; }",
        &format!("add rule inet firewall in tcp dport {FIREWALLED_PORT} drop"),
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        pair.a
            .run("nft", &args)
            .expect("nft in the daemon's namespace");
    }
    pair.b.within(|| {
        for _ in 0..FIREWALLED_ATTEMPTS {
            let dropped = TcpStream::connect_timeout(
                &SocketAddr::new(pair.a_addr.into(), FIREWALLED_PORT),
                Duration::from_millis(300),
            )
            .expect_err("the firewall drops the SYN");
            assert_eq!(dropped.kind(), ErrorKind::TimedOut);
        }
    });
    let _listener = server.join().expect("server thread");
    daemon.settled();

    let iface = pair.a_if.as_str();
    let open = OPEN_PORT.to_string();
    let closed = CLOSED_PORT.to_string();
    let on = |direction: &'static str, port: &'static str| {
        [("iface", iface), ("direction", direction), ("port", port)]
    };
    let open: &'static str = open.leak();
    let closed: &'static str = closed.leak();
    let n = CONNECTIONS as f64;
    // The closes are the last packets; wait (bounded) until both FINs of every connection passed.
    let mut got = scrape(&pair.a);
    for _ in 0..50 {
        if value(&got.1, "shaper_tcp_fin_total", &on("egress", open)) >= n
            && value(&got.1, "shaper_tcp_fin_total", &on("ingress", open)) >= n
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        got = scrape(&pair.a);
    }
    let (body, got) = got;
    for (name, direction, port, expected) in [
        ("shaper_tcp_syn_total", "ingress", open, n),
        ("shaper_tcp_synack_total", "egress", open, n),
        ("shaper_tcp_fin_total", "ingress", open, n),
        ("shaper_tcp_fin_total", "egress", open, n),
        ("shaper_tcp_rst_total", "ingress", open, 0.0),
        ("shaper_tcp_rst_total", "egress", open, 0.0),
        ("shaper_tcp_syn_total", "egress", open, 0.0),
        ("shaper_tcp_synack_total", "ingress", open, 0.0),
        ("shaper_tcp_syn_total", "ingress", closed, n),
        ("shaper_tcp_rst_total", "egress", closed, n),
        ("shaper_tcp_synack_total", "egress", closed, 0.0),
    ] {
        assert_eq!(
            value(&got, name, &on(direction, port)),
            expected,
            "{name} {direction} {port}\n{body}"
        );
    }
    let probes = |port| [("iface", iface), ("port", port)];
    assert_eq!(value(&got, "shaper_tcp_probes_total", &probes(closed)), n);
    assert_eq!(value(&got, "shaper_tcp_probes_total", &probes(open)), 0.0);
    let rtt = [("iface", iface), ("port", open), ("side", "client")];
    assert_eq!(
        value(&got, "shaper_tcp_handshake_rtt_seconds_count", &rtt),
        n,
        "every handshake completed once, none retransmitted on the veth\n{}",
        body.lines()
            .filter(|l| l.contains("shaper_tcp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // prometheus-client writes `le` first.
    let inf = [
        ("le", "+Inf"),
        ("iface", iface),
        ("port", open),
        ("side", "client"),
    ];
    assert_eq!(
        value(&got, "shaper_tcp_handshake_rtt_seconds_bucket", &inf),
        n,
        "{}",
        body.lines()
            .filter(|l| l.contains("rtt_seconds"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        value(&got, "shaper_tcp_handshake_samples_lost_total", &[]),
        0.0
    );
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
    for (port, scope) in [(OPEN_PORT, "any"), (LOOPBACK_PORT, "loopback")] {
        let port = port.to_string();
        let labels = [
            ("proto", "tcp"),
            ("port", port.as_str()),
            ("process", comm.trim_end()),
            ("scope", scope),
        ];
        assert_eq!(value(&got, "shaper_port_listening", &labels), 1.0, "{body}");
    }
    common::metrics::promtool_check(&body);

    // The reached 0.0.0.0 listener comes before the loopback ones (ours and the metrics
    // endpoint's), and the probed closed ports are listed: refused, and unanswered.
    let report: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["exposure", "--json"])).expect("exposure JSON");
    assert_eq!(report["schema_version"], 1, "{report:#}");
    let listening = report["listening"].as_array().expect("listening");
    let position = |port: u16| {
        listening
            .iter()
            .position(|l| l["port"] == port && l["proto"] == "tcp")
            .unwrap_or_else(|| panic!("tcp/{port} missing: {report:#}"))
    };
    let open_entry = &listening[position(OPEN_PORT)];
    assert_eq!(open_entry["scope"], "any", "{report:#}");
    assert_eq!(open_entry["accepted"], CONNECTIONS, "{report:#}");
    assert_eq!(open_entry["remotes"], 1, "{report:#}");
    assert_eq!(open_entry["from_outside"], true, "{report:#}");
    assert_eq!(open_entry["rule"], false, "{report:#}");
    assert_eq!(listening[position(LOOPBACK_PORT)]["scope"], "loopback");
    assert!(position(OPEN_PORT) < position(LOOPBACK_PORT), "{report:#}");
    assert!(position(OPEN_PORT) < position(19350), "{report:#}");
    assert_eq!(
        report["probed_closed"],
        serde_json::json!([
            { "iface": iface, "port": CLOSED_PORT, "probes": CONNECTIONS, "unanswered": 0 },
            {
                "iface": iface,
                "port": FIREWALLED_PORT,
                "probes": 0,
                "unanswered": FIREWALLED_ATTEMPTS
            }
        ]),
        "{report:#}"
    );
    let table = daemon.cli_ok(&["exposure"]);
    assert!(table.contains("probed closed ports"), "{table}");
    drop(daemon);
}

/// A hand-driven client (scapy, in namespace `b`): for each source port, SYN, the server's
/// SYN-ACK, then the ACK after `ACK_DELAY_MS`; and one handshake whose SYN-ACK the client lets
/// the server retransmit (after its 1 s initial RTO, `TCP_TIMEOUT_INIT`) before it ACKs. The
/// client's own kernel would answer the unexpected SYN-ACK with a RST; an nftables rule drops
/// its RSTs.
const SCAPY_CLIENT: &str = r#"
import sys, time
from scapy.all import IP, TCP, conf, sniff
conf.verb = 0
server, port, delay_ms, ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# One socket for every send: scapy opens one per send() otherwise, which takes milliseconds.
l3 = conf.L3socket()
def synack(sport):
    syn = IP(dst=server) / TCP(sport=sport, dport=port, flags="S", seq=1000)
    answer = l3.sr1(syn, timeout=5)
    assert answer is not None and answer[TCP].flags == "SA", answer
    return answer
def ack(sport, answer):
    return IP(dst=server) / TCP(sport=sport, dport=port, flags="A", seq=1001, ack=answer[TCP].seq + 1)
for sport in map(int, ports.split(",")):
    answer = synack(sport)
    packet = ack(sport, answer)
    # The delay counts from the SYN-ACK's arrival (its capture time), not from when sr1
    # returned it.
    time.sleep(max(0.0, float(answer.time) + delay_ms / 1000 - time.time()))
    l3.send(packet)
sport = int(sys.argv[5])
answer = synack(sport)
again = sniff(iface=sys.argv[6], timeout=5, count=1,
              lfilter=lambda p: TCP in p and p[TCP].dport == sport and p[TCP].flags == "SA")
assert again, "the server did not retransmit its SYN-ACK"
l3.send(ack(sport, answer))
print("done")
"#;

/// Whether Debian's python3 has scapy (`python3-scapy`, which .ci/run installs); outside CI its
/// absence skips the test.
fn scapy() -> bool {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", "import scapy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        found || !in_ci,
        "python3-scapy not found, and CI=true forbids skipping (.ci/run installs it)"
    );
    if !found {
        eprintln!("skipping: /usr/bin/python3 has no scapy (apt-get install python3-scapy)");
    }
    found
}

const ACK_DELAY_MS: u64 = 50;

#[test]
fn a_delayed_ack_lands_in_the_bucket_of_its_delay_and_a_retransmitted_synack_in_none() {
    common::root_or_skip!();
    if !scapy() {
        return;
    }
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    // Listens, never accepts: the handshakes complete into its backlog.
    let _listener = pair
        .a
        .within(|| TcpListener::bind((pair.a_addr, OPEN_PORT)).expect("bind"));
    for rule in [
        "add table inet scapy",
        "add chain inet scapy out { type filter hook output priority 0; }",
        "add rule inet scapy out tcp flags rst drop",
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        pair.b
            .run("nft", &args)
            .expect("nft in the client namespace");
    }
    let delayed = ["41000", "41001", "41002"];
    let output = pair
        .b
        .command("/usr/bin/python3")
        .args([
            "-c",
            SCAPY_CLIENT,
            &pair.a_addr.to_string(),
            &OPEN_PORT.to_string(),
            &ACK_DELAY_MS.to_string(),
            &delayed.join(","),
            "41003",
            &pair.b_if,
        ])
        .output()
        .expect("run the scapy client");
    assert!(
        output.status.success(),
        "scapy client: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    daemon.settled();
    let (body, got) = scrape(&pair.a);
    let iface = pair.a_if.as_str();
    let open = OPEN_PORT.to_string();
    let labels = [
        ("iface", iface),
        ("port", open.as_str()),
        ("side", "client"),
    ];
    let n = delayed.len() as f64;
    assert_eq!(
        value(&got, "shaper_tcp_handshake_rtt_seconds_count", &labels),
        n,
        "the retransmitted handshake gave no sample\n{body}"
    );
    let bucket = |le: &str| {
        let mut with_le = vec![("le", le)];
        with_le.extend_from_slice(&labels);
        value(&got, "shaper_tcp_handshake_rtt_seconds_bucket", &with_le)
    };
    // 50 ms lies in (2^25 ns, 2^26 ns] = (33.6 ms, 67.1 ms].
    assert_eq!(bucket("0.033554432"), 0.0, "{body}");
    assert_eq!(bucket("0.067108864"), n, "{body}");
    let sum = value(&got, "shaper_tcp_handshake_rtt_seconds_sum", &labels);
    assert!(sum >= n * 0.050, "{sum}");
    assert_eq!(
        value(&got, "shaper_tcp_handshakes_discarded_total", &[]),
        1.0,
        "{body}"
    );
    // Four SYNs, and five SYN-ACKs with the retransmitted one.
    let on = |direction| {
        [
            ("iface", iface),
            ("direction", direction),
            ("port", open.as_str()),
        ]
    };
    assert_eq!(value(&got, "shaper_tcp_syn_total", &on("ingress")), 4.0);
    assert_eq!(value(&got, "shaper_tcp_synack_total", &on("egress")), 5.0);
    drop(daemon);
}

#[test]
fn top_shows_new_connections_resets_and_handshake_quantiles_of_its_interval() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let listener = pair
        .a
        .within(|| TcpListener::bind(("0.0.0.0", OPEN_PORT)).expect("bind"));
    let connect = |port: u16| {
        pair.b.within(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(pair.a_addr.into(), port),
                Duration::from_secs(5),
            )
        })
    };
    // Traffic before the interval is not in it.
    drop(connect(OPEN_PORT).expect("connect"));
    let json = std::thread::scope(|scope| {
        let top = scope.spawn(|| daemon.cli_ok(&["top", "--once", "--json", "--interval", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..CONNECTIONS {
            drop(connect(OPEN_PORT).expect("connect"));
            assert!(connect(CLOSED_PORT).is_err());
        }
        top.join().expect("top")
    });
    drop(listener);
    let view: serde_json::Value = serde_json::from_str(&json).expect("top JSON");
    let seconds = view["interval_seconds"].as_f64().expect("interval");
    let row = |direction: &str, port: u16| {
        view["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["direction"] == direction && r["proto"] == "tcp" && r["port"] == port)
            .unwrap_or_else(|| panic!("{direction} tcp/{port} missing: {view:#}"))
            .clone()
    };
    let accepted = row("egress", OPEN_PORT);
    let per_interval =
        |value: &serde_json::Value| (value.as_f64().expect("rate") * seconds).round();
    assert_eq!(
        per_interval(&accepted["tcp"]["new_connections_per_second"]),
        CONNECTIONS as f64,
        "{view:#}"
    );
    assert_eq!(per_interval(&accepted["tcp"]["resets_per_second"]), 0.0);
    let refused = row("egress", CLOSED_PORT);
    assert_eq!(
        per_interval(&refused["tcp"]["resets_per_second"]),
        CONNECTIONS as f64,
        "{view:#}"
    );
    // The client-side round trips of the interval, on the veth: well under a millisecond.
    let client = &row("ingress", OPEN_PORT)["tcp"];
    let p50 = client["handshake_rtt_p50_seconds"].as_f64().expect("p50");
    let p99 = client["handshake_rtt_p99_seconds"].as_f64().expect("p99");
    assert!(p50 <= p99 && p99 <= 0.016777216, "{view:#}");
    drop(daemon);
}
