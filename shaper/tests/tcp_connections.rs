//! Real TCP connections through the veth, counted by the daemon's program and read back from
//! `/metrics`: handshakes, closes, refusals and round trips, exactly.

mod common;

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    daemon::Daemon,
    metrics::{Samples, get, samples, series},
    netns::{InNamespace as _, VethPair, veth_pair},
};

const CONNECTIONS: u64 = 20;
const OPEN_PORT: u16 = 8443;
const CLOSED_PORT: u16 = 8999;

fn scrape(pair: &VethPair) -> (String, Samples) {
    let addr: SocketAddr = "127.0.0.1:19350".parse().unwrap();
    let response = get(&pair.a, addr, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let parsed = samples(&response.body);
    (response.body, parsed)
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples.get(&series(name, labels)).copied().unwrap_or(0.0)
}

#[test]
fn real_connections_count_each_handshake_close_and_refusal_exactly() {
    if !common::require_root("real_connections_count_each_handshake_close_and_refusal_exactly") {
        return;
    }
    let pair = veth_pair("tc");
    let daemon = Daemon::start(&pair.a, "tc", &["--iface", &pair.a_if]);
    let listener = pair
        .a
        .within(|| TcpListener::bind((pair.a_addr, OPEN_PORT)).expect("bind"));
    let server = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            // Accepted and closed at once: the server's FIN, no data, so no RST.
            let (stream, _) = listener.accept().expect("accept");
            drop(stream);
        }
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
    server.join().expect("server thread");
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
    let mut got = scrape(&pair);
    for _ in 0..50 {
        if value(&got.1, "shaper_tcp_fin_total", &on("egress", open)) >= n
            && value(&got.1, "shaper_tcp_fin_total", &on("ingress", open)) >= n
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        got = scrape(&pair);
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
        body.lines().filter(|l| l.contains("shaper_tcp")).collect::<Vec<_>>().join("\n")
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
    assert_eq!(value(&got, "shaper_tcp_handshake_samples_lost_total", &[]), 0.0);
    if let Some(promtool) = common::tool("promtool") {
        let (ok, text) = promtool_check(&promtool, &body);
        assert!(ok, "promtool check metrics:\n{text}\n{body}");
    }
    drop(daemon);
}

fn promtool_check(promtool: &Path, body: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
