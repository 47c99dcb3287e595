//! The real `shaper run` attached to a veth between two throwaway namespaces, with real UDP and
//! TCP traffic, once with tcx and once with clsact.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::{
    daemon::Daemon,
    netns::{InNamespace as _, Namespace, VethPair, veth_pair},
};
use shaper::{
    Direction,
    control::{self, Request, Response},
    daemon::{Daemon as LibraryDaemon, Flags},
    datapath::classifier::Proto,
    telemetry::{counter_snapshot::Snapshot, metrics::MetricsAddr},
};

const DATAGRAMS: u64 = 200;
const DATAGRAM_PAYLOAD: usize = 100;
/// Ethernet + IPv4 + UDP headers.
const UDP_FRAME_OVERHEAD: u64 = 14 + 20 + 8;
/// Ethernet + IPv4 + TCP without options (timestamps are off in the test namespaces).
const TCP_SEGMENT_OVERHEAD: u64 = 14 + 20 + 20;
/// At most the SYN's (or SYN-ACK's) option bytes come on top of the plain headers.
const TCP_OPTION_SLACK: u64 = 40;
const TCP_PAYLOAD: usize = 8 << 20;
/// MSS on a 1500-byte MTU without TCP options.
const MSS: u64 = 1460;

const PORT_UDP_IN: u16 = 7001;
const PORT_UDP_OUT_LOCAL: u16 = 7002;
const PORT_UDP_OUT_REMOTE: u16 = 7003;
const PORT_TCP: u16 = 7004;

#[test]
fn counts_real_udp_and_tcp_exactly_with_tcx() {
    common::root_or_skip!();
    counts_real_traffic("tcx", "t");
}

#[test]
fn counts_real_udp_and_tcp_exactly_with_clsact() {
    common::root_or_skip!();
    counts_real_traffic("clsact", "c");
}

fn counts_real_traffic(mode: &str, tag: &str) {
    let pair = veth_pair(tag);
    let daemon = Daemon::start(&pair.a, tag, &["--iface", &pair.a_if, "--attach", mode]);
    assert_eq!(daemon.stats().interfaces[0].attach, mode);
    assert_attached(&pair, mode);

    send_udp(&pair);
    let expected_bytes = DATAGRAMS * (DATAGRAM_PAYLOAD as u64 + UDP_FRAME_OVERHEAD);
    let stats = daemon.wait_for(Duration::from_secs(5), |s| {
        udp(s, &pair.a_if, Direction::Ingress, PORT_UDP_IN).0 >= DATAGRAMS
            && udp(s, &pair.a_if, Direction::Egress, PORT_UDP_OUT_LOCAL).0 >= DATAGRAMS
    });
    assert_eq!(
        udp(&stats, &pair.a_if, Direction::Ingress, PORT_UDP_IN),
        (DATAGRAMS, expected_bytes),
        "{stats:#?}"
    );
    assert_eq!(
        udp(&stats, &pair.a_if, Direction::Egress, PORT_UDP_OUT_LOCAL),
        (DATAGRAMS, expected_bytes),
        "{stats:#?}"
    );
    // The remote port of egress traffic is not a local port.
    assert_eq!(
        udp(&stats, &pair.a_if, Direction::Egress, PORT_UDP_OUT_REMOTE),
        (0, 0)
    );

    let skbs_sent_by_b = tx_packets(&pair.b, &pair.b_if);
    let retransmitted = retransmitted_segments(&pair.b);
    let sack_causes = receiver_sack_causes(&pair.a);
    tcp_transfer(&pair);
    let skbs_sent_by_b = tx_packets(&pair.b, &pair.b_if) - skbs_sent_by_b;
    let retransmitted = retransmitted_segments(&pair.b) - retransmitted;
    let sack_causes = receiver_sack_causes(&pair.a) - sack_causes;
    let stats = daemon.settled();
    let (packets, bytes) = tcp(&stats, &pair.a_if, Direction::Ingress, PORT_TCP);
    let min_segments = (TCP_PAYLOAD as u64).div_ceil(MSS);
    eprintln!(
        "{mode}: TCP {TCP_PAYLOAD} B in {packets} segments, {bytes} wire bytes; veth carried {skbs_sent_by_b} skbs"
    );
    assert!(
        packets >= min_segments,
        "{packets} packets for {min_segments}+ segments: GSO aggregates counted as one?"
    );
    assert!(
        packets > skbs_sent_by_b,
        "the veth carried {skbs_sent_by_b} skbs for {packets} segments: no GSO aggregate was exercised"
    );
    // Every segment carries its own headers on the wire, so bytes are exact up to SYN options,
    // and up to the payload of segments the sender put on the wire twice: a loaded machine can
    // overflow the veth's backlog and make TCP retransmit, and the hook rightly counts each copy.
    // The sender's own count (TcpRetransSegs) bounds that payload; with none, the check is exact.
    let headers = bytes - TCP_PAYLOAD as u64;
    let resent_payload = retransmitted * MSS;
    assert!(
        (packets * TCP_SEGMENT_OVERHEAD
            ..=packets * TCP_SEGMENT_OVERHEAD + TCP_OPTION_SLACK + resent_payload)
            .contains(&headers),
        "{headers} header bytes for {packets} segments ({retransmitted} retransmitted)"
    );
    if retransmitted > 0 {
        eprintln!("{mode}: the sender retransmitted {retransmitted} segments");
    }
    let (acks, ack_bytes) = tcp(&stats, &pair.a_if, Direction::Egress, PORT_TCP);
    assert!(
        acks >= 2,
        "the receiver's ACKs leave through egress with the service's port"
    );
    // After a loss or a reordering the receiver's ACKs carry SACK blocks (RFC 2018, D-SACK RFC
    // 2883), up to 40 option bytes each, until the hole is filled: how many cannot be known from
    // outside, so when the sender retransmitted or the receiver queued a segment out of order
    // or got a duplicate, only the upper bound widens (seen on a VM with emulated CPUs: one
    // retransmitted segment, 48 option bytes over 32 ACKs; and here under a loaded CI run:
    // none retransmitted, 48 option bytes over 33 ACKs).
    let sack_slack = if retransmitted > 0 || sack_causes > 0 {
        acks * TCP_OPTION_SLACK
    } else {
        0
    };
    assert!(
        (acks * TCP_SEGMENT_OVERHEAD..=acks * TCP_SEGMENT_OVERHEAD + TCP_OPTION_SLACK + sack_slack)
            .contains(&ack_bytes),
        "{ack_bytes} bytes for {acks} pure ACKs ({retransmitted} segments retransmitted, \
         {sack_causes} out-of-order or duplicate at the receiver)"
    );

    let (status, log) = daemon.stop();
    assert!(status.success(), "shaper run exited with {status}:\n{log}");
    assert_nothing_attached(&pair, mode);
}

/// (packets, bytes) of one port; (0, 0) if it has seen no traffic.
fn counter(s: &Snapshot, iface: &str, direction: Direction, proto: Proto, port: u16) -> (u64, u64) {
    s.port(iface, direction, proto, port)
        .map_or((0, 0), |p| (p.packets, p.bytes))
}

fn udp(s: &Snapshot, iface: &str, direction: Direction, port: u16) -> (u64, u64) {
    counter(s, iface, direction, Proto::Udp, port)
}

fn tcp(s: &Snapshot, iface: &str, direction: Direction, port: u16) -> (u64, u64) {
    counter(s, iface, direction, Proto::Tcp, port)
}

/// DATAGRAMS datagrams into `a` (to PORT_UDP_IN) and out of `a` (from PORT_UDP_OUT_LOCAL).
fn send_udp(pair: &VethPair) {
    let a_in = SocketAddr::from((pair.a_addr, PORT_UDP_IN));
    let b_in = SocketAddr::from((pair.b_addr, PORT_UDP_OUT_REMOTE));
    // Receivers exist so no ICMP port-unreachable muddies the picture.
    let _receiver_a = pair.a.within(|| UdpSocket::bind(a_in).expect("bind in a"));
    let _receiver_b = pair.b.within(|| UdpSocket::bind(b_in).expect("bind in b"));
    let sender_b = pair
        .b
        .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind in b"));
    let sender_a = pair
        .a
        .within(|| UdpSocket::bind((pair.a_addr, PORT_UDP_OUT_LOCAL)).expect("bind in a"));
    let payload = [0x5a; DATAGRAM_PAYLOAD];
    for _ in 0..DATAGRAMS {
        sender_b.send_to(&payload, a_in).expect("send into a");
        sender_a.send_to(&payload, b_in).expect("send out of a");
    }
}

/// TCP_PAYLOAD bytes from `b` to a listener on `a`, bounded by socket timeouts.
fn tcp_transfer(pair: &VethPair) {
    let addr = SocketAddr::from((pair.a_addr, PORT_TCP));
    let listener = pair
        .a
        .within(|| TcpListener::bind(addr).expect("listen in a"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut received = Vec::with_capacity(TCP_PAYLOAD);
        conn.read_to_end(&mut received).expect("read");
        received.len()
    });
    let mut client = pair.b.within(|| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect from b")
    });
    client
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    client.write_all(&vec![0xa5; TCP_PAYLOAD]).expect("send");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert_eq!(server.join().expect("server"), TCP_PAYLOAD);
}

/// skbs the interface has transmitted (one per GSO aggregate, not per segment).
/// The namespace's `TcpRetransSegs` (RFC 4022 tcpRetransSegs, /proc/net/snmp).
fn retransmitted_segments(ns: &Namespace) -> u64 {
    shaper_testbed::tcp_segments::Segments::read(ns)
        .unwrap_or_else(|e| panic!("{e}"))
        .retransmitted
}

/// What makes a receiver put SACK blocks on its ACKs, counted in `ns`'s /proc/net/netstat:
/// segments queued out of order (TCPOFOQueue) and duplicates reported (TCPDSACKOldSent,
/// TCPDSACKOfoSent). Read through /proc/thread-self, whose net/ is the namespace of the thread
/// `within` moved.
fn receiver_sack_causes(ns: &Namespace) -> u64 {
    let netstat = ns.within(|| {
        std::fs::read_to_string("/proc/thread-self/net/netstat").expect("/proc/net/netstat")
    });
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().expect("TcpExt names"),
        lines.next().expect("TcpExt values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| matches!(*name, "TCPOFOQueue" | "TCPDSACKOldSent" | "TCPDSACKOfoSent"))
        .map(|(_, value)| value.parse::<u64>().expect("a counter"))
        .sum()
}

fn tx_packets(ns: &Namespace, dev: &str) -> u64 {
    let out = ns.ip_ok(&["-j", "-s", "link", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    json[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

/// Names of the tcx programs on the ingress and egress hooks of `a_if`.
fn tcx_programs(pair: &VethPair) -> [Vec<String>; 2] {
    // A kernel without tcx (before 6.6) refuses the query (EINVAL) and has none attached.
    if shaper::AttachMode::auto() != shaper::AttachMode::Tcx {
        return [Vec::new(), Vec::new()];
    }
    let iface = pair.a_if.clone();
    pair.a.within(|| {
        [TcAttachType::Ingress, TcAttachType::Egress].map(|hook| {
            let (_, programs) = SchedClassifier::query_tcx(&iface, hook).expect("query tcx");
            programs
                .iter()
                .map(|p| p.name_as_str().unwrap_or_default().to_owned())
                .collect()
        })
    })
}

/// The programs sit where `mode` puts them, and nowhere else.
fn assert_attached(pair: &VethPair, mode: &str) {
    let iface = &pair.a_if;
    let tcx = tcx_programs(pair);
    let filters = [
        pair.a.tc(&["filter", "show", "dev", iface, "ingress"]),
        pair.a.tc(&["filter", "show", "dev", iface, "egress"]),
    ];
    if mode == "tcx" {
        assert_eq!(
            tcx,
            [
                vec!["shaper_ingress".to_owned()],
                vec!["shaper_egress".to_owned()]
            ]
        );
        assert!(filters.iter().all(String::is_empty), "{filters:?}");
    } else {
        assert_eq!(tcx, [Vec::<String>::new(), Vec::new()]);
        assert!(
            filters[0].contains("shaper_ingress") && filters[1].contains("shaper_egress"),
            "{filters:?}"
        );
    }
}

fn assert_nothing_attached(pair: &VethPair, mode: &str) {
    let iface = pair.a_if.clone();
    let tcx = tcx_programs(pair);
    assert_eq!(
        tcx,
        [Vec::<String>::new(), Vec::new()],
        "tcx programs left on {iface} after {mode} run"
    );
    let qdiscs = pair.a.tc(&["qdisc", "show", "dev", &iface]);
    assert!(
        !qdiscs.contains("clsact"),
        "clsact qdisc left on {iface} after {mode} run:\n{qdiscs}"
    );
}

#[test]
fn refuses_a_second_daemon_on_the_same_interface() {
    let pair = common::test_veth_pair!();
    let first = Daemon::on(&pair, &[]);
    let second = pair
        .a
        .command(common::daemon::SHAPER)
        .args([
            "--socket",
            "/tmp/shaper-test-second.sock",
            "run",
            "--iface",
            &pair.a_if,
        ])
        .output()
        .expect("run second daemon");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second daemon attached:\n{stderr}"
    );
    assert!(stderr.contains("already attached to"), "{stderr}");
    assert!(stderr.contains("pid"), "{stderr}");
    first.stop_ok();
}

#[test]
fn without_iface_uses_the_default_route_interface() {
    let pair = common::test_veth_pair!();
    pair.a.ip_ok(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.0.2",
        "dev",
        &pair.a_if,
    ]);
    let daemon = Daemon::start(&pair.a, "r", &[]);
    assert_eq!(daemon.stats().interfaces[0].name, pair.a_if);
    let log = daemon.stop_ok();
    assert!(log.contains("default route"), "{log}");
}

#[test]
fn missing_interface_is_reported_with_the_fix() {
    common::root_or_skip!();
    let output = Command::new(common::daemon::SHAPER)
        .args([
            "--socket",
            "/tmp/shaper-test-missing.sock",
            "run",
            "--iface",
            "shaper-nosuch0",
        ])
        .output()
        .expect("run shaper");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("interface 'shaper-nosuch0' does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("ip -br link"), "{stderr}");
}

#[test]
fn clsact_filters_of_a_killed_daemon_are_replaced_by_the_next_one() {
    let pair = common::test_veth_pair!();
    let iface = pair.a_if.as_str();
    let clsact = ["--iface", iface, "--attach", "clsact"];
    // SIGKILL: no chance to detach; the filters stay, pinned for the next daemon.
    Daemon::start(&pair.a, "k1", &clsact).kill9();
    let filters = || pair.a.tc(&["filter", "show", "dev", iface, "ingress"]);
    let shaper_filters = || {
        filters()
            .lines()
            .filter(|l| l.contains("shaper_ingress"))
            .count()
    };
    assert_eq!(shaper_filters(), 1, "{}", filters());

    let second = Daemon::start(&pair.a, "k2", &clsact);
    assert_eq!(shaper_filters(), 1, "stale filter kept: {}", filters());
    let log = second.stop_ok();
    // The next daemon replaced the filter in place (same priority and handle) instead of
    // adding a second one.
    assert!(log.contains("took over ingress and egress"), "{log}");
    assert_eq!(filters(), "", "filters left after a clean stop");
}

/// The daemon as a library type, started without the binary: in a thread inside the
/// namespace, with the config's rule installed and answering on the control socket, until the
/// caller's shutdown future completes; then nothing is left attached and the socket is gone.
#[test]
fn the_library_daemon_starts_serves_and_stops_without_the_binary() {
    let pair = common::test_veth_pair!();
    let dir = std::env::temp_dir().join(format!("shaper-test-{}-lib", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let config = dir.join("shaper.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{}\"]\n[[limit]]\nport = 7100\nrate = \"8mbit\"\n",
            pair.a_if
        ),
    )
    .expect("write config");
    let socket = dir.join("shaper.sock");
    let flags = Flags {
        ifaces: Vec::new(),
        attach: None,
        config: Some(config),
        state: dir.join("state.json"),
        metrics_addr: Some(MetricsAddr::Off),
        metrics_top_ports: None,
        metrics_top_remotes: 0,
        metrics_max_connections: shaper::telemetry::metrics::DEFAULT_MAX_CONNECTIONS,
        bpf_log: 0,
        socket: socket.clone(),
        socket_group: None,
        owner_names: None,
        pin_dir: common::daemon::pin_base(),
        persist: false,
    };
    let stop = AtomicBool::new(false);
    let (stats, rules) = std::thread::scope(|scope| {
        let daemon = scope.spawn(|| {
            pair.a.within(|| {
                LibraryDaemon::start(flags)?.run_until(async {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok(())
                })
            })
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let stats = loop {
            match control::request(&socket, &Request::Stats) {
                Ok(Response::Stats(stats)) => break stats,
                _ if daemon.is_finished() || std::time::Instant::now() > deadline => {
                    stop.store(true, Ordering::Relaxed);
                    panic!("daemon never answered: {:?}", daemon.join());
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let rules = control::request(&socket, &Request::LimitLs).expect("limit ls");
        stop.store(true, Ordering::Relaxed);
        daemon
            .join()
            .expect("daemon thread")
            .expect("daemon ran and stopped");
        (stats, rules)
    });
    assert_eq!(stats.interfaces[0].name, pair.a_if);
    let Response::Rules { rules } = rules else {
        panic!("limit ls: {rules:?}");
    };
    assert_eq!(rules.len(), 1);
    assert_eq!(
        (rules[0].ports.to_string().as_str(), rules[0].rate_bps),
        ("7100", 8_000_000)
    );
    assert!(!socket.exists(), "control socket left behind");
    assert_nothing_attached(&pair, "library");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends COUNT copies of a frame (hex) on IFACE through a packet socket with a virtio-net
/// header whose `hdr_len` is 14. For a frame of a page or more, `packet_snd()` then puts only
/// those 14 bytes in the skb's linear area and the rest in page fragments
/// (`packet_alloc_skb()`, net/packet/af_packet.c), as a NIC driver that splits headers from
/// payload does: the classifier finds its IP header beyond the linear data.
const NON_LINEAR_SENDER: &str = r#"
import socket, struct, sys
iface, count, frame = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.bind((iface, 0))
vnet = struct.pack("<BBHHHH", 0, 0, 14, 0, 0, 0)
for _ in range(count):
    s.send(vnet + frame)
"#;

#[test]
fn a_udp_header_behind_long_ipv6_options_in_a_non_linear_skb_is_found() {
    use common::packet::{IPPROTO_DSTOPTS, IPPROTO_UDP, ipv6, ipv6_ext, udp};
    const PORT: u16 = 7050;
    const COUNT: u64 = 50;
    let pair = common::test_veth_pair!();
    for (ns, iface) in [(&pair.a, &pair.a_if), (&pair.b, &pair.b_if)] {
        ns.run("ip", &["link", "set", "dev", iface, "mtu", "9000"])
            .expect("raise the MTU");
    }
    let daemon = Daemon::on(&pair, &[]);
    // Eight Destination Options headers of 64 bytes: the UDP header starts at byte 566, past
    // the 256 bytes the classifier once pulled in.
    let mut chain = Vec::new();
    for n in 0..8 {
        let next = if n == 7 { IPPROTO_UDP } else { IPPROTO_DSTOPTS };
        chain.extend(ipv6_ext(next, 7));
    }
    chain.extend(udp(40000, PORT, &[0x5a; 4400]));
    let mut frame = vec![
        0x02, 0x00, 0xc6, 0x12, 0x00, 0x01, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02,
    ];
    frame.extend(0x86ddu16.to_be_bytes());
    frame.extend(ipv6(IPPROTO_DSTOPTS, &chain));
    assert!(
        frame.len() > 4096,
        "a page or more, so that the skb is not linear"
    );
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let output = pair
        .b
        .command("/usr/bin/python3")
        .args([
            "-c",
            NON_LINEAR_SENDER,
            &pair.b_if,
            &COUNT.to_string(),
            &hex,
        ])
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "packet socket sender: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats = daemon.wait_for(Duration::from_secs(10), |s| {
        s.port(&pair.a_if, Direction::Ingress, Proto::Udp, PORT)
            .is_some_and(|p| p.packets >= COUNT)
    });
    let port = stats
        .port(&pair.a_if, Direction::Ingress, Proto::Udp, PORT)
        .unwrap_or_else(|| panic!("nothing counted under udp/{PORT}: {stats:#?}"));
    assert_eq!(
        (port.packets, port.bytes),
        (COUNT, COUNT * frame.len() as u64),
        "every frame counted under its port, in its whole length"
    );
    // (The link's own IPv6 neighbour discovery may count as `icmp`.)
    assert!(
        !stats
            .unclassified
            .iter()
            .any(|u| u.iface == pair.a_if && u.reason == "truncated"),
        "nothing truncated: {:?}",
        stats.unclassified
    );
}
