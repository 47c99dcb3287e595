//! Top talkers: the real daemon on a veth pair, three remote addresses sending known UDP
//! amounts to a watched port; and the real classifier under BPF_PROG_TEST_RUN filling the
//! talkers' LRU past its size.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use common::test_run;
use common::{
    daemon::Daemon,
    metrics::{get, samples, series},
    netns::{InNamespace as _, VethPair},
    packet::*,
    temp_dir::TempDir,
    top_port::{extra_addresses, rows, settled, top_port},
};
use shaper::{
    Classifier, Direction,
    datapath::watched_ports::{self, WatchSpec},
    policy::rule_table::DirSel,
};
use shaper_common::MAX_TALKERS;

/// Ethernet + IPv4 + UDP headers: a datagram of `payload` bytes is this much more on the wire.
const HEADERS: u64 = 14 + 20 + 8;

/// Sends `count` datagrams of `payload` bytes from `from` (in namespace b) to `port` on a,
/// paced so that no socket buffer drops one before the hook sees it.
fn send(pair: &VethPair, from: Ipv4Addr, port: u16, count: u32, payload: usize, pause: bool) {
    let to = SocketAddr::from((pair.a_addr, port));
    pair.b.within(|| {
        let socket = UdpSocket::bind((from, 0)).expect("bind");
        let data = vec![0x5a; payload];
        for _ in 0..count {
            socket.send_to(&data, to).expect("send");
            if pause {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
}

#[test]
fn top_port_lists_exactly_the_three_remotes_with_their_packets_and_bytes() {
    let pair = common::test_veth_pair!();
    let state = TempDir::new("tk");
    let daemon =
        Daemon::start_with_state(&pair.a, "tk", &["--iface", &pair.a_if], &state.state_file());
    let remotes = extra_addresses(&pair, 3);
    let port = 7001u16;
    let listed = daemon.cli_ok(&["watch", "7001", "--dir", "ingress"]);
    assert!(listed.contains("port 7001 dir ingress"), "{listed}");
    // Another port, not watched, gets traffic too: it must not show up anywhere.
    send(&pair, remotes[0], 7002, 5, 100, true);
    let counts = [10u32, 20, 30];
    let payload = 100usize;
    for (addr, count) in remotes.iter().zip(counts) {
        send(&pair, *addr, port, count, payload, true);
    }
    let view = settled(&daemon, port, 60);
    assert_eq!(view["schema"], 1);
    assert_eq!(view["port"], 7001);
    let expected: Vec<_> = remotes
        .iter()
        .zip(counts)
        .map(|(addr, count)| {
            (
                addr.to_string(),
                u64::from(count),
                u64::from(count) * (HEADERS + payload as u64),
                0,
            )
        })
        .collect();
    assert_eq!(rows(&view), expected, "{view:#}");
    assert!(
        top_port(&daemon, 7002)["remotes"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "an unwatched port was accounted"
    );

    // Grouped by /24, the three are one row with all their traffic.
    let out = daemon.cli_ok(&[
        "top",
        "--port",
        "7001",
        "--group",
        "/24",
        "--once",
        "--json",
        "--interval",
        "0.1",
    ]);
    let grouped: serde_json::Value = serde_json::from_str(&out).expect("grouped JSON");
    assert_eq!(
        rows(&grouped),
        [("198.18.0.0/24".to_owned(), 60, 60 * (HEADERS + 100), 0)]
    );
    assert_eq!(grouped["remotes"][0]["addresses"], 3);

    // Unwatched, the port's remotes stay as they were (no more counting) and the list is empty.
    assert!(
        daemon
            .cli_ok(&["unwatch", "7001", "--dir", "ingress"])
            .contains("no ports watched")
    );
    send(&pair, remotes[0], port, 7, payload, true);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rows(&top_port(&daemon, port)), expected);
    // The watch list survives a restart of the daemon: saved beside the state file.
    daemon.cli_ok(&["watch", "7001-7003"]);
    daemon.stop_ok();
    let daemon = Daemon::start_with_state(
        &pair.a,
        "tk2",
        &["--iface", &pair.a_if],
        &state.state_file(),
    );
    assert!(
        daemon
            .cli_ok(&["watch"])
            .contains("port 7001-7003 dir both")
    );
}

#[test]
fn drops_are_attributed_to_the_remote_that_sent_beyond_the_limit() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let remotes = extra_addresses(&pair, 2);
    let (polite, flood) = (remotes[0], remotes[1]);
    let port = 7011u16;
    daemon.cli_ok(&["watch", "7011"]);
    // 8 kbit/s: after the burst (the smallest the daemon allows), next to nothing passes.
    daemon.cli_ok(&["limit", "set", "7011", "--rate", "8kbit", "--proto", "udp"]);
    let burst = daemon.rules()[0].burst_bytes;
    send(&pair, polite, port, 10, 1000, true);
    // Twice the burst from the other remote, back to back.
    let datagrams = (2 * burst / (HEADERS + 1400) + 1) as u32;
    send(&pair, flood, port, datagrams, 1400, false);
    let view = settled(&daemon, port, 10 + u64::from(datagrams));
    let rows = rows(&view);
    assert_eq!(rows.len(), 2, "{view:#}");
    let polite_row = rows
        .iter()
        .find(|r| r.0 == polite.to_string())
        .expect("polite");
    let flood_row = rows
        .iter()
        .find(|r| r.0 == flood.to_string())
        .expect("flood");
    assert_eq!((polite_row.1, polite_row.3), (10, 0), "{view:#}");
    assert_eq!(flood_row.1, u64::from(datagrams), "{view:#}");
    assert!(flood_row.3 > 0, "{view:#}");
    // Exactly the port's drops, all of them the flood's.
    let stats = daemon.stats();
    let port_stats = stats
        .ports
        .iter()
        .find(|p| p.port == port && p.direction == Direction::Ingress)
        .expect("port stats");
    assert_eq!(port_stats.dropped_packets, flood_row.3);
    assert_eq!(port_stats.packets, polite_row.1 + flood_row.1);
}

/// A UDP frame from `source` to port `port`, as BPF_PROG_TEST_RUN delivers it on loopback.
fn frame_from(source: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, &udp(40000, port, &[7; 18])),
    );
    frame[26..30].copy_from_slice(&source.octets());
    frame
}

fn run(classifier: &mut Classifier, frame: &[u8]) {
    test_run::passes(classifier, Direction::Ingress, frame);
}

#[test]
fn lru_filled_past_its_size_counts_evictions_and_keeps_exact_totals() {
    common::root_or_skip!();
    let mut classifier = test_run::on_loopback();
    let watch = WatchSpec {
        ports: "9".parse().expect("port"),
        dir: DirSel::Ingress,
        iface: None,
    };
    assert_eq!(
        watched_ports::paint(&classifier, &[watch]),
        2,
        "udp and tcp cells"
    );
    let sources = MAX_TALKERS + 2_000;
    let source = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i);
    for i in 0..sources {
        run(&mut classifier, &frame_from(source(i), 9));
    }
    // The last 100 remotes send twice more: the most recent, they are never evicted.
    for _ in 0..2 {
        for i in sources - 100..sources {
            run(&mut classifier, &frame_from(source(i), 9));
        }
    }
    // An unwatched port: no entry, no insert.
    run(&mut classifier, &frame_from(source(0), 10));
    let frame_len = frame_from(source(0), 9).len() as u64;

    let reading = watched_ports::read(&classifier, None).expect("read talkers");
    assert_eq!(
        reading.inserted,
        u64::from(sources),
        "one insert per remote"
    );
    assert_eq!(reading.live, reading.talkers.len() as u64);
    assert!(reading.live <= u64::from(MAX_TALKERS));
    assert_eq!(reading.evicted, reading.inserted - reading.live);
    assert!(reading.evicted >= 2_000, "{} evicted", reading.evicted);
    for talker in &reading.talkers {
        assert_eq!(talker.port, 9);
        let IpAddr::V4(addr) = talker.remote else {
            panic!("{talker:?}")
        };
        let i = u32::from(addr) - u32::from(source(0));
        let expected = if i >= sources - 100 { 3 } else { 1 };
        assert_eq!(talker.packets, expected, "{talker:?}");
        assert_eq!(talker.bytes, expected * frame_len, "{talker:?}");
    }
    let recent = reading.talkers.iter().filter(|t| t.packets == 3).count();
    assert_eq!(recent, 100, "the most recent remotes are all kept");
}

#[test]
fn remote_series_only_when_asked_and_only_the_top_n() {
    let pair = common::test_veth_pair!();
    let addr: SocketAddr = "127.0.0.1:19350".parse().expect("addr");
    let scrape = |daemon_pair: &VethPair| {
        let response = get(&daemon_pair.a, addr, "/metrics", None);
        assert_eq!(response.status, 200, "{}", response.body);
        samples(&response.body)
    };
    let remotes = extra_addresses(&pair, 3);
    let port = 7021u16;
    {
        // Off by default: watched remotes make no series.
        let daemon = Daemon::on(&pair, &[]);
        daemon.cli_ok(&["watch", "7021"]);
        send(&pair, remotes[0], port, 5, 100, true);
        settled(&daemon, port, 5);
        assert!(
            !scrape(&pair)
                .keys()
                .any(|k| k.starts_with("shaper_remote_bytes")),
            "per-remote series without --metrics-top-remotes"
        );
    }
    let daemon = Daemon::start(
        &pair.a,
        "tm2",
        &["--iface", &pair.a_if, "--metrics-top-remotes", "2"],
    );
    daemon.cli_ok(&["watch", "7021", "--dir", "ingress"]);
    for (addr, count) in remotes.iter().zip([3u32, 20, 10]) {
        send(&pair, *addr, port, count, 100, true);
    }
    settled(&daemon, port, 33);
    let got = scrape(&pair);
    let remote_series: Vec<(&String, &f64)> = got
        .iter()
        .filter(|(k, _)| k.starts_with("shaper_remote_bytes_total"))
        .collect();
    assert_eq!(remote_series.len(), 2, "{remote_series:?}");
    for (addr, count) in [(remotes[1], 20u64), (remotes[2], 10)] {
        let key = series(
            "shaper_remote_bytes_total",
            &[
                ("port", "7021"),
                ("remote", &addr.to_string()),
                ("direction", "ingress"),
            ],
        );
        assert_eq!(
            got.get(&key).copied(),
            Some((count * (HEADERS + 100)) as f64),
            "{key} in {remote_series:?}"
        );
    }
}

#[test]
fn config_watches_are_in_force_from_the_start() {
    let pair = common::test_veth_pair!();
    let state = TempDir::new("tw");
    let config = state.0.join("shaper.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{}\"]\n[[watch]]\nport = \"7031-7032\"\ndir = \"ingress\"\n",
            pair.a_if
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let daemon =
        Daemon::start_with_state(&pair.a, "tw", &["--config", &config], &state.state_file());
    assert!(
        daemon
            .cli_ok(&["watch"])
            .contains("port 7031-7032 dir ingress")
    );
    let remote = extra_addresses(&pair, 1)[0];
    send(&pair, remote, 7032, 4, 100, true);
    let view = settled(&daemon, 7032, 4);
    assert_eq!(
        rows(&view),
        [(remote.to_string(), 4, 4 * (HEADERS + 100), 0)]
    );
}
