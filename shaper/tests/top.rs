//! `shaper top` against the real daemon in a namespace with real UDP traffic: driven in tmux
//! (keys sent with send-keys, the screen read with capture-pane), and its `--once --json` sample
//! checked against a stream of known rate.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{
    daemon::Daemon,
    netns::{InNamespace as _, VethPair},
    traffic::{Sender, WIRE, receiver_on, sender},
};

/// UDP from namespace `b` to `port` on `a` at `per_second` datagrams of `WIRE` bytes, for at
/// most two minutes; it stops when dropped.
fn stream(pair: &VethPair, port: u16, per_second: u64) -> Sender {
    let socket = pair
        .b
        .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
    let to = SocketAddr::from((pair.a_addr, port));
    sender(socket, to, per_second * WIRE, Duration::from_secs(120))
}

/// `tmux`, which `.ci/run` installs; outside CI a machine without it skips the test.
fn tmux_available() -> bool {
    let found = Command::new("tmux").arg("-V").output().is_ok();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        found || !in_ci,
        "tmux not found, and CI=true forbids skipping"
    );
    if !found {
        eprintln!("skipping: tmux is not installed");
    }
    found
}

/// A tmux session running a plain shell, killed on drop.
struct Tmux {
    session: String,
}

impl Tmux {
    fn start(session: &str, width: u16, height: u16) -> Self {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", session])
            .output();
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", session])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args(["bash", "--norc", "--noprofile"])
            .env("PS1", "$ ")
            .status()
            .expect("tmux new-session");
        assert!(status.success());
        Self {
            session: session.to_owned(),
        }
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls the screen until `done` holds (at most `timeout`); returns the last screen.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if done(&screen) || Instant::now() >= deadline {
                return screen;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .output();
    }
}

/// Whether `line` is the table row of UDP port `port` (not, say, the status line naming it).
fn is_row(line: &str, port: u16) -> bool {
    let cells: Vec<&str> = line.split_whitespace().collect();
    cells.contains(&"udp") && cells.contains(&port.to_string().as_str())
}

/// The table row of `port` on a screen.
fn row_with(screen: &str, port: u16) -> Option<&str> {
    screen.lines().find(|line| is_row(line, port))
}

/// The `ports` that have a row, in screen order.
fn order(screen: &str, ports: &[u16]) -> Vec<u16> {
    let mut found: Vec<(usize, u16)> = ports
        .iter()
        .filter_map(|&port| {
            screen
                .lines()
                .position(|line| is_row(line, port))
                .map(|at| (at, port))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, port)| port).collect()
}

#[test]
fn top_in_tmux_shows_the_traffic_sorts_filters_and_quits_cleanly() {
    common::root_or_skip!();
    if !tmux_available() {
        return;
    }
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    // Two ports, the higher port the louder: rate order and port order differ.
    let (quiet, loud) = (7301u16, 7302u16);
    let _quiet = stream(&pair, quiet, 100);
    let _loud = stream(&pair, loud, 400);

    let tmux = Tmux::start(&format!("shaper-top-{}", std::process::id()), 80, 24);
    let command = format!(
        "{} --socket {} top; echo top-exited=$?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'",
        common::daemon::SHAPER,
        daemon.socket.display()
    );
    tmux.keys(&[&command, "Enter"]);
    let screen = tmux.wait_for(Duration::from_secs(10), |s| {
        row_with(s, quiet).is_some() && row_with(s, loud).is_some()
    });
    let loud_row =
        row_with(&screen, loud).unwrap_or_else(|| panic!("no row for {loud}:\n{screen}"));
    // 400 datagrams/s of 1000 bytes: about 3.2 Mbit/s, shown with an SI prefix.
    assert!(loud_row.contains("Mb/s"), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    // Busiest first by default.
    assert_eq!(order(&screen, &[quiet, loud]), [loud, quiet], "{screen}");

    // `S` sorts on the previous column (PORT, ascending): the quiet, lower port comes first.
    tmux.keys(&["S"]);
    let screen = tmux.wait_for(Duration::from_secs(5), |s| s.contains("sorted by PORT asc"));
    assert_eq!(order(&screen, &[quiet, loud]), [quiet, loud], "{screen}");
    // `r` reverses it.
    tmux.keys(&["r"]);
    let screen = tmux.wait_for(Duration::from_secs(5), |s| {
        s.contains("sorted by PORT desc")
    });
    assert_eq!(order(&screen, &[quiet, loud]), [loud, quiet], "{screen}");

    // `/` filters on a port number: only that port's row remains.
    tmux.keys(&["/", &quiet.to_string(), "Enter"]);
    let screen = tmux.wait_for(Duration::from_secs(5), |s| {
        s.contains(&format!("filter: {quiet}")) && row_with(s, loud).is_none()
    });
    assert!(row_with(&screen, quiet).is_some(), "{screen}");
    assert!(row_with(&screen, loud).is_none(), "{screen}");
    // `b` shows bytes.
    tmux.keys(&["b"]);
    let screen = tmux.wait_for(Duration::from_secs(5), |s| {
        row_with(s, quiet).is_some_and(|row| row.contains("B/s"))
    });
    assert!(
        row_with(&screen, quiet).is_some_and(|r| r.contains("KB/s")),
        "{screen}"
    );

    // `q` quits with status 0, leaves the alternate screen and gives back a cooked terminal.
    tmux.keys(&["q"]);
    // (The command line itself, echoed above, contains both markers, hence whole-line matches.)
    let exited = |s: &str| {
        s.lines()
            .find_map(|l| l.trim().strip_prefix("top-exited="))
            .filter(|code| !code.is_empty() && code.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned)
    };
    let cooked = |s: &str| {
        s.lines()
            .any(|l| l.trim() == "icanon" || l.trim() == "-icanon")
    };
    let after = tmux.wait_for(Duration::from_secs(5), |s| exited(s).is_some() && cooked(s));
    assert_eq!(exited(&after).as_deref(), Some("0"), "{after}");
    assert!(
        after.lines().any(|l| l.trim() == "icanon"),
        "raw mode left on:\n{after}"
    );
    assert!(
        !after.contains("sorted by"),
        "the TUI is still on screen:\n{after}"
    );

    daemon.stop_ok();
}

#[test]
fn once_json_follows_the_schema_and_measures_a_known_stream_within_ten_percent() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    daemon.cli_ok(&[
        "limit", "set", "7401", "--rate", "100mbit", "--action", "observe",
    ]);
    // The receiving socket is the listener top must name; it counts what arrives, which with
    // an observe rule is everything sent.
    let receiver = receiver_on(&pair, 7401);
    let _stream = stream(&pair, 7401, 500);
    thread::sleep(Duration::from_millis(500));

    let (received_before, started) = (receiver.count(), Instant::now());
    let output = daemon.cli_ok(&["top", "--once", "--json", "--interval", "2"]);
    let sent_rate =
        ((receiver.count() - received_before) * WIRE) as f64 / started.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_str(&output).expect("JSON");

    assert_eq!(json["schema_version"], 1);
    let interval = json["interval_seconds"].as_f64().expect("interval_seconds");
    assert!((1.9..3.0).contains(&interval), "{interval}");
    for key in [
        "bytes_per_second",
        "bits_per_second",
        "packets_per_second",
        "seen_bytes_per_second",
        "seen_packets_per_second",
        "dropped_packets_per_second",
        "would_drop_packets_per_second",
    ] {
        assert!(json["totals"][key].is_f64(), "totals.{key}: {json}");
    }
    for key in ["bytes_per_second", "packets_per_second"] {
        assert!(json["unclassified"][key].is_f64(), "unclassified.{key}");
    }
    let rows = json["rows"].as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["port"] == 7401 && r["direction"] == "ingress")
        .unwrap_or_else(|| panic!("no row for 7401: {json}"));
    assert_eq!(row["iface"], pair.a_if.as_str());
    assert_eq!(row["proto"], "udp");
    let rule = &row["rule"];
    assert_eq!(rule["ports"], "7401");
    assert_eq!(rule["rate_bps"], 100_000_000);
    assert_eq!(rule["action"], "observe");
    assert!(rule["burst_bytes"].is_u64() && rule["id"].is_u64());
    let fill = rule["bucket_fill"].as_f64().expect("bucket_fill");
    assert!((0.0..=1.0).contains(&fill), "{fill}");
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
    assert_eq!(row["process"], comm.trim_end());

    let measured = row["bytes_per_second"].as_f64().expect("bytes_per_second");
    assert_eq!(row["bits_per_second"].as_f64(), Some(measured * 8.0));
    assert_eq!(
        row["seen_bytes_per_second"].as_f64(),
        Some(measured),
        "nothing dropped"
    );
    let ratio = measured / sent_rate;
    println!(
        "top --once --json: {measured:.0} B/s measured, {sent_rate:.0} B/s sent, ratio {ratio:.4}"
    );
    assert!(
        (ratio - 1.0).abs() <= 0.10,
        "measured {measured} vs sent {sent_rate}"
    );

    // Not a terminal and not --json: the same sample as a plain table.
    let table = daemon.cli_ok(&["top", "--once", "--interval", "0.5"]);
    assert!(table.starts_with("passed "), "{table}");
    assert!(
        table.contains("PORT") && row_with(&table, 7401).is_some(),
        "{table}"
    );
    daemon.stop_ok();
}
