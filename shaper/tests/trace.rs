//! `shaper trace` against the real daemon on a veth pair with real UDP streams: exact counts
//! of well-formed events of the traced port only, nothing left switched on however the trace
//! ends, and a flood costing lost events rather than a stalled daemon.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    daemon::{Daemon, SHAPER},
    netns::{InNamespace as _, VethPair},
    traffic::{Sender, WIRE, sender},
};

/// UDP from b to `port` on a at `per_second` datagrams of `WIRE` bytes, for at most a minute.
fn stream(pair: &VethPair, port: u16, per_second: u64) -> Sender {
    let socket = pair
        .b
        .within(|| UdpSocket::bind((pair.b_addr, 0)).expect("bind"));
    let to = SocketAddr::from((pair.a_addr, port));
    sender(socket, to, per_second * WIRE, Duration::from_secs(60))
}

/// A running `shaper trace`, killed on drop.
struct Trace(Child);

impl Trace {
    fn start(daemon: &Daemon, args: &[&str]) -> Self {
        let child = Command::new(SHAPER)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shaper trace");
        Self(child)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) touches no memory of ours; the child is not reaped until `wait`.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// Waits at most `timeout` for the exit; returns (success, stdout lines, stderr).
    fn finish(mut self, timeout: Duration) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        // Read on a thread, so a full pipe never blocks the trace; nothing if the test took
        // stdout itself.
        let stdout = self.0.stdout.take();
        let lines = std::thread::spawn(move || {
            stdout.map_or_else(Vec::new, |stdout| {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<_>>()
            })
        });
        let status = loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "shaper trace still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut err) = self.0.stderr.take() {
            use std::io::Read as _;
            let _ = err.read_to_string(&mut stderr);
        }
        (
            status.success(),
            lines.join().expect("stdout reader"),
            stderr,
        )
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most 5 s) for the daemon to log that trace `session` is off.
fn switched_off(daemon: &Daemon, session: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains(&format!("trace {session} off")) {
        assert!(
            Instant::now() < deadline,
            "trace {session} still on:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (over the rate, ring full) from the CLI's last "events lost" line, (0, 0) without one.
fn lost(stderr: &str) -> (u64, u64) {
    let Some(line) = stderr.lines().rev().find(|l| l.contains("events lost")) else {
        return (0, 0);
    };
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // "N events lost (A over the rate of R per CPU per second, B with the ring buffer full)"
    assert_eq!(numbers.len(), 4, "{line}");
    assert_eq!(numbers[0], numbers[1] + numbers[3], "{line}");
    (numbers[1], numbers[3])
}

#[test]
fn trace_count_prints_exactly_that_many_events_of_the_port_and_none_of_another() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let _traced = stream(&pair, 7001, 300);
    let _other = stream(&pair, 7002, 300);
    let trace = Trace::start(&daemon, &["7001", "--count", "100", "--json"]);
    let (ok, lines, stderr) = trace.finish(Duration::from_secs(30));
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 100, "{stderr}");
    let mut last_time = 0;
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(event["local_port"], 7001, "{line}");
        assert_eq!(event["direction"], "ingress", "{line}");
        assert_eq!(event["proto"], "udp", "{line}");
        assert_eq!(event["iface"], pair.a_if.as_str(), "{line}");
        assert_eq!(event["remote"], pair.b_addr.to_string(), "{line}");
        assert!(
            event["remote_port"].as_u64().is_some_and(|p| p > 0),
            "{line}"
        );
        assert_eq!(event["bytes"], WIRE, "{line}");
        assert_eq!(event["segments"], 1, "{line}");
        assert_eq!(event["verdict"], "pass", "{line}");
        assert!(event["rule"].is_null(), "{line}");
        let time = event["time_unix_ns"].as_u64().expect("time");
        assert!(time >= last_time, "{line}");
        last_time = time;
    }
    // Ended by --count: switched off, and the next trace is accepted.
    switched_off(&daemon, 1);
    let (ok, lines, stderr) =
        Trace::start(&daemon, &["7001", "--count", "3"]).finish(Duration::from_secs(30));
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 3);
    assert!(lines[0].contains(" ingress udp 7001 <- "), "{}", lines[0]);
    switched_off(&daemon, 2);
}

#[test]
fn a_trace_that_dies_or_loses_its_reader_leaves_nothing_switched_on() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let _traced = stream(&pair, 7011, 200);
    // Killed outright: the kernel closes its connection, and the daemon switches off.
    let mut trace = Trace::start(&daemon, &["7011"]);
    let mut first = String::new();
    BufReader::new(trace.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("first event");
    assert!(first.contains("7011"), "{first}");
    // A second trace is refused while one runs.
    let refused = daemon.cli(&["trace", "7011", "--count", "1"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("one trace at a time"),
        "{refused:?}"
    );
    trace.signal(libc::SIGKILL);
    drop(trace);
    switched_off(&daemon, 1);
    // The reader of its output goes away: it ends by itself (EPIPE), and switches off.
    let mut trace = Trace::start(&daemon, &["7011"]);
    drop(trace.0.stdout.take());
    let (ok, _, stderr) = trace.finish(Duration::from_secs(10));
    assert!(ok, "{stderr}");
    switched_off(&daemon, 2);
    // Ctrl-C.
    let mut trace = Trace::start(&daemon, &["7011"]);
    let mut first = String::new();
    BufReader::new(trace.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("first event");
    trace.signal(libc::SIGINT);
    let (ok, _, stderr) = trace.finish(Duration::from_secs(10));
    assert!(ok, "{stderr}");
    switched_off(&daemon, 3);
}

#[test]
fn a_flooded_trace_reports_lost_events_and_stalls_nothing() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let _flood = stream(&pair, 7021, 20_000);
    // Over the rate cap: 10 events per CPU per second of thousands of packets. 30 events take
    // more than one second's budget of any two CPUs, so the rest of that second is lost.
    let (ok, lines, stderr) = Trace::start(&daemon, &["7021", "--rate", "10", "--count", "30"])
        .finish(Duration::from_secs(30));
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 30);
    let (over_rate, _) = lost(&stderr);
    // How many depends on how fast the sender gets going on a busy machine; some, surely.
    assert!(over_rate > 0, "{stderr}");

    // A reader that stops reading (SIGSTOP): the ring buffer fills, the events are counted
    // as lost, and neither the daemon nor the datapath waits for it.
    let mut trace = Trace::start(&daemon, &["7021", "--rate", "1000000", "--json"]);
    let stdout = trace.0.stdout.take().expect("stdout");
    let drain =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).count());
    std::thread::sleep(Duration::from_millis(300));
    trace.signal(libc::SIGSTOP);
    let packets = |s: &shaper::telemetry::counter_snapshot::Snapshot| {
        s.ports
            .iter()
            .find(|p| p.port == 7021)
            .map_or(0, |p| p.packets)
    };
    let before = packets(&daemon.stats());
    // Stopped until the hook has seen twice what the ring buffer holds (each event takes its
    // 64 bytes behind an 8-byte header), the daemon answering all along.
    let ring_events = u64::from(shaper_common::TRACE_RING_BYTES) / 72;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = Instant::now();
        let seen = packets(&daemon.stats()) - before;
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "the daemon stalled"
        );
        if seen > 2 * ring_events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the datapath stalled: {seen} packets in 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    trace.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(1500));
    trace.signal(libc::SIGINT);
    let (ok, _, stderr) = trace.finish(Duration::from_secs(10));
    assert!(ok, "{stderr}");
    let (_, ring_full) = lost(&stderr);
    assert!(ring_full > 0, "{stderr}");
    assert!(drain.join().expect("drain") > 0);
    switched_off(&daemon, 2);
}
