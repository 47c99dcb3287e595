//! The Grafana dashboard of `examples/grafana/shaper.json` against a real Prometheus scraping a
//! real daemon: every panel's query must return data, so a renamed metric or label breaks this
//! test rather than a dashboard.
//!
//! Traffic for every panel: UDP over a drop rule and an observe rule (drops, would-drops,
//! closeness to the limit), TCP connections to a port listening on 0.0.0.0 (throughput, new
//! connections, round trips, an exposed listener) and to a closed port (refusals).

mod common;

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::{daemon::Daemon, netns::InNamespace as _, prometheus::Prometheus, traffic::sender};

const DASHBOARD: &str = include_str!("../../examples/grafana/shaper.json");

/// Grafana's variables as a query runs outside Grafana: a rate window that holds a few 1 s
/// scrapes, and every interface.
fn outside_grafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("$iface", ".*")
}

/// Every panel's queries, and the template variables' queries, from the dashboard JSON.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title").to_owned();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((title.clone(), outside_grafana(expr)));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(definition) = variable["definition"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's: the metric must exist.
            let metric = definition
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .expect("metric");
            queries.push((format!("variable {}", variable["name"]), metric.to_owned()));
        }
    }
    queries
}

#[test]
fn the_dashboard_has_every_panel_the_issue_asks_for() {
    let titles: Vec<String> = dashboard_queries().into_iter().map(|(t, _)| t).collect();
    for wanted in [
        "Throughput",
        "Drops",
        "limit",
        "connections",
        "round trip",
        "Listening",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "{wanted}: {titles:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .any(|p| p["type"] == "heatmap"),
        "the round trips as a heatmap"
    );
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    common::root_or_skip!();
    let Some(binary) = common::tool("prometheus") else {
        return;
    };
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    for (port, action) in [("9321", "drop"), ("9322", "observe")] {
        daemon.cli_ok(&[
            "limit", "set", port, "--rate", "100kbit", "--proto", "udp", "--action", action,
        ]);
    }
    let _udp: Vec<UdpSocket> = [9321, 9322]
        .into_iter()
        .map(|port| {
            pair.a
                .within(|| UdpSocket::bind((pair.a_addr, port)).expect("bind"))
        })
        .collect();
    let listener = pair
        .a
        .within(|| TcpListener::bind(("0.0.0.0", 8443)).expect("bind"));
    listener.set_nonblocking(true).expect("nonblocking");
    let prometheus = Prometheus::start(&pair.a, &binary, "127.0.0.1:19350".parse().unwrap(), "gd");

    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let queries = dashboard_queries();
    let empty = thread::scope(|scope| {
        // UDP at 400 kbit/s against 100 kbit/s rules, for at most 60 s.
        let senders: Vec<_> = [9321u16, 9322]
            .into_iter()
            .map(|port| {
                let socket = pair
                    .b
                    .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
                sender(
                    socket,
                    SocketAddr::from((pair.a_addr, port)),
                    50_000,
                    Duration::from_secs(60),
                )
            })
            .collect();
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        scope.spawn(|| {
            pair.b.within(|| {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for port in [8443, 8999] {
                        let _ = TcpStream::connect_timeout(
                            &SocketAddr::new(pair.a_addr.into(), port),
                            Duration::from_secs(1),
                        );
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            });
        });
        let mut empty: Vec<(String, String)> = queries.clone();
        while Instant::now() < deadline - Duration::from_secs(10) && !empty.is_empty() {
            thread::sleep(Duration::from_secs(1));
            let mut still = Vec::new();
            for (title, promql) in empty {
                match prometheus.query(&pair.a, &promql) {
                    Some(result) if !result.is_empty() => {
                        println!("{title}: {promql}: {} series", result.len());
                    }
                    _ => still.push((title, promql)),
                }
            }
            empty = still;
        }
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            sender.finish().expect("sender");
        }
        empty
    });
    assert!(
        empty.is_empty(),
        "panel queries without data: {empty:#?}\n{}",
        prometheus.log()
    );
    drop(prometheus);
    daemon.stop_ok();
}
