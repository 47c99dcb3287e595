//! 5. Control plane, through the real daemon and CLI: how soon a changed rate holds after
//!    `shaper limit set` returns; `limit set`/`rm` latency with one rule and with 65,535 rules in
//!    place; the daemon's resident memory; its BPF map memory as the kernel reports it; a
//!    `/metrics` scrape with every port active in both directions.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use shaper_testbed::traffic::HEADERS;

use super::{Context, alternate};
use crate::{
    daemon::Daemon,
    report::Figure,
    sys::{self, VethPair, sleep_until},
    traffic::{udp_sink, udp_source},
};

/// The port of the rate-change runs (and the one port the 65,535-rule daemon leaves free).
const PORT: u16 = 5401;
/// The port whose rule the latency runs replace, remove and add back.
const RULE_PORT: u16 = 1000;

/// Rate-change runs: 1000-byte frames offered at 10 MB/s, limited to 4 then 1 MB/s and back.
const FRAME: usize = 1000;
const OFFERED: u64 = 10_000_000;
const HIGH: u64 = 4_000_000;
const LOW: u64 = 1_000_000;
/// How long each rate is held before the next change; the part after a change that is searched
/// for the moment the new rate holds.
const HOLD: Duration = Duration::from_millis(500);
const SEARCH: Duration = Duration::from_millis(250);
/// Windows the received rate is judged in.
const WINDOW: Duration = Duration::from_millis(10);

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let pair = sys::veth_pair(2)?;
    let small = Daemon::start(&cx.shaper, &pair.a, &pair.a_if, "control-one", None)?;
    rate_change(cx, &pair, &small)?;

    let mut config = String::with_capacity(40 * 65536);
    for port in (0..=u16::MAX).filter(|&p| p != PORT) {
        let _ = writeln!(config, "[[limit]]\nport = {port}\nrate = \"1gbit\"");
    }
    // On b's end of the veth: two daemons may run at once, each on its own interface.
    let large = Daemon::start(
        &cx.shaper,
        &pair.b,
        &pair.b_if,
        "control-65535",
        Some(&config),
    )?;
    cx.add(Figure::new(
        "control",
        "daemon_start_with_65535_config_rules",
        "s",
        vec![large.start_time.as_secs_f64()],
    )?);
    latency(cx, &small, &large)?;
    // Memory first: the scrape's own allocations would show in the RSS figure.
    memory(cx, &small, &large)?;
    drop(large);
    metrics_scrape(cx, &pair, &small)?;
    Ok(())
}

/// Where every daemon serves metrics by default, inside its own namespace.
const METRICS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    19350,
));

/// A `/metrics` scrape of a daemon whose interface has seen every port 1-65535 in both
/// directions, for TCP and UDP (262,140 active port counters; port 0 cannot be sent to from a
/// socket): the HTTP wall time seen by the scraper, and the daemon's own
/// `shaper_scrape_duration_seconds`. `_serving` is the daemon on `a` (default top 100, two
/// single-port rules), borrowed so that it runs for the whole measurement.
fn metrics_scrape(cx: &mut Context, pair: &VethPair, _serving: &Daemon) -> anyhow::Result<()> {
    let lit = Instant::now();
    light_every_port(pair)?;
    cx.note(format!(
        "control: lighting every port (UDP and TCP, both directions) took {:.1} s",
        lit.elapsed().as_secs_f64()
    ));
    // Let the last packets and their answers land.
    std::thread::sleep(Duration::from_millis(500));

    let mut wall = Vec::new();
    let mut server = Vec::new();
    let mut series = 0usize;
    let mut packets = 0.0f64;
    let mut size = 0usize;
    for _ in 0..cx.plan.reps {
        crate::sys::check_interrupt()?;
        let (took, body) = pair.a.enter(scrape_once)??;
        wall.push(took.as_secs_f64() * 1e3);
        let own = sample_value(&body, "shaper_scrape_duration_seconds")
            .context("no shaper_scrape_duration_seconds in the scrape")?;
        server.push(own * 1e3);
        series = body
            .lines()
            .filter(|l| l.starts_with("shaper_packets_total{"))
            .count();
        packets = body
            .lines()
            .filter(|l| l.starts_with("shaper_packets_total{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        size = body.len();
    }
    cx.add(
        Figure::new(
            "control",
            "metrics_scrape_262140_active_ports/http_wall",
            "ms",
            wall,
        )?
        .target("well under a second", false, None, Some(1000.0))
        .detail("port_series_per_family", series)
        .detail("packets_accounted", packets)
        .detail("exposition_bytes", size),
    );
    cx.add(Figure::new(
        "control",
        "metrics_scrape_262140_active_ports/daemon_side",
        "ms",
        server,
    )?);
    Ok(())
}

/// One packet to or from every port 1-65535 on `a`'s address, each direction, UDP and TCP: UDP
/// datagrams from `b` to each port (ingress) and from each port of `a` to `b` (egress); a TCP
/// connection attempt from `b` to each port, which `a` refuses with a RST from that port.
fn light_every_port(pair: &VethPair) -> anyhow::Result<()> {
    let (a_addr, b_addr) = (pair.a_addr, pair.b_addr);
    pair.b.enter(|| -> anyhow::Result<()> {
        let socket = UdpSocket::bind((b_addr, 0))?;
        for port in 1..=u16::MAX {
            // A full socket buffer drops a datagram; pace by retrying once after a pause.
            if socket.send_to(&[0u8; 18], (a_addr, port)).is_err() {
                std::thread::sleep(Duration::from_millis(1));
                let _ = socket.send_to(&[0u8; 18], (a_addr, port));
            }
        }
        for port in 1..=u16::MAX {
            let to = SocketAddr::from((a_addr, port));
            // Refused at once (a RST from `port`); a timeout only guards a lost SYN.
            let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200));
        }
        Ok(())
    })??;
    pair.a.enter(|| -> anyhow::Result<()> {
        for port in 1..=u16::MAX {
            // A port in use on `a` (the metrics listener is TCP) is simply skipped.
            if let Ok(socket) = UdpSocket::bind((a_addr, port)) {
                let _ = socket.send_to(&[0u8; 18], (b_addr, 9));
            }
        }
        Ok(())
    })??;
    Ok(())
}

/// `GET /metrics` over HTTP/1.0 (the text format); the wall time and the body.
fn scrape_once() -> anyhow::Result<(Duration, String)> {
    use std::io::{Read as _, Write as _};
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect_timeout(&METRICS, Duration::from_secs(5))
        .context("connecting to the daemon's /metrics")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let took = started.elapsed();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP head in the /metrics response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Ok((took, body.to_owned()))
}

/// The value of an unlabelled sample `name` in a text exposition.
fn sample_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// How soon a new rate holds after `limit set` returns, lowering (4 -> 1 MB/s) and raising
/// (1 -> 4 MB/s) the rate of a rule whose bucket is empty (offered load is 10 MB/s), so the
/// change shows at once in the received rate, with no burst to spend first.
fn rate_change(cx: &mut Context, pair: &VethPair, daemon: &Daemon) -> anyhow::Result<()> {
    let to = SocketAddr::from((pair.a_addr, PORT));
    let sink = udp_sink(pair.a.enter(|| UdpSocket::bind(to))??, true)?;
    let from = pair.b.enter(|| UdpSocket::bind((pair.b_addr, 0)))??;
    let port = PORT.to_string();
    let aggregate = u64::from(
        pair.a
            .enter(|| shaper::datapath::interfaces::max_aggregate_bytes(&pair.a_if))??,
    );
    let burst = format!("{}B", shaper::policy::rule_table::min_burst(aggregate));
    let set = |rate: u64| {
        daemon.cli(&[
            "limit",
            "set",
            &port,
            "--rate",
            &format!("{rate}B/s"),
            "--burst",
            &burst,
        ])
    };
    set(HIGH)?;
    let source = udp_source(from, to, FRAME - HEADERS, OFFERED)?;
    sleep_until(Instant::now() + HOLD)?;

    let mut changes = Vec::new();
    let mut cli = [Vec::new(), Vec::new()];
    alternate(cx.plan.reps, &[(0usize, LOW), (1, HIGH)], |&(i, rate)| {
        let took = set(rate)?;
        let returned = Instant::now();
        cli[i].push(took.as_secs_f64() * 1e3);
        changes.push((i, rate, returned));
        sleep_until(returned + HOLD)?;
        Ok(0.0)
    })?;
    source.finish()?;
    let arrivals = sink.finish()?.arrivals;
    let _ = daemon.cli(&["limit", "rm", &port]);

    let mut holds = [Vec::new(), Vec::new()];
    for &(i, rate, returned) in &changes {
        holds[i].push(holds_after(&arrivals, returned, rate as f64, i == 1).as_secs_f64() * 1e3);
    }
    for (i, name) in [
        "rate_holds_after_return/lower_4_to_1MB/s",
        "rate_holds_after_return/raise_1_to_4MB/s",
    ]
    .iter()
    .enumerate()
    {
        cx.add(
            Figure::new("control", *name, "ms", holds[i].clone())?
                .detail("limit_set_cli_ms", &cli[i])
                .detail("judged_in_windows_ms", WINDOW.as_millis() as u64),
        );
    }
    cx.note(format!(
        "control: rate changes on a rule with an empty bucket (UDP offered at 10 MB/s); a change \
         holds from the first {} ms window after which no window starting in the next {} ms is \
         more than 30% off the new rate; arrival times are the receiver's, so its scheduling adds \
         to them",
        WINDOW.as_millis(),
        SEARCH.as_millis()
    ));
    Ok(())
}

/// The time from `returned` until every `WINDOW` starting at a datagram's arrival (up to
/// `SEARCH` later) carries the new rate: not more than 30% above it (plus two datagrams of
/// jitter) after lowering, not less than 30% below it after raising. Zero when it held from the
/// first datagram after `returned`.
fn holds_after(arrivals: &[Instant], returned: Instant, rate: f64, raised: bool) -> Duration {
    let per_window = rate * WINDOW.as_secs_f64() / FRAME as f64;
    let first = arrivals.partition_point(|&t| t < returned);
    let end = returned + SEARCH;
    let mut held_from = returned;
    for k in first..arrivals.len() {
        let start = arrivals[k];
        if start >= end {
            break;
        }
        let count = arrivals[k..].partition_point(|&t| t < start + WINDOW) as f64;
        let off = if raised {
            count < 0.7 * per_window
        } else {
            count > 1.3 * per_window + 2.0
        };
        if off {
            held_from = arrivals.get(k + 1).copied().unwrap_or(end);
        }
    }
    held_from.saturating_duration_since(returned)
}

/// `limit set` (replacing a rule's rate), `limit rm` and `limit set` (adding it back), timed as
/// the CLI's wall time, against a daemon with one rule and one with 65,535.
fn latency(cx: &mut Context, small: &Daemon, large: &Daemon) -> anyhow::Result<()> {
    let port = RULE_PORT.to_string();
    small.cli(&["limit", "set", &port, "--rate", "1gbit"])?;
    let daemons = [small, large];
    let mut rm = [Vec::new(), Vec::new()];
    let mut add = [Vec::new(), Vec::new()];
    let mut flip = false;
    let replace = alternate(cx.plan.reps, &[0usize, 1], |&i| {
        let daemon = daemons[i];
        flip = !flip;
        let rate = if flip { "2gbit" } else { "1gbit" };
        let replace = daemon.cli(&["limit", "set", &port, "--rate", rate])?;
        rm[i].push(daemon.cli(&["limit", "rm", &port])?.as_secs_f64() * 1e3);
        add[i].push(
            daemon
                .cli(&["limit", "set", &port, "--rate", rate])?
                .as_secs_f64()
                * 1e3,
        );
        Ok(replace.as_secs_f64() * 1e3)
    })?;
    for (op, samples) in [
        ("limit_set_replace", &replace),
        ("limit_rm", &rm.to_vec()),
        ("limit_set_add", &add.to_vec()),
    ] {
        let one = format!("{op}/1_rule");
        cx.add(Figure::new("control", &one, "ms", samples[0].clone())?);
        cx.add(
            Figure::new(
                "control",
                format!("{op}/65535_rules"),
                "ms",
                samples[1].clone(),
            )?
            .ratio_to(&one, &samples[0]),
        );
    }
    cx.note(
        "control: limit latencies are the CLI's wall time, process start to exit (the daemon \
         rewrites its state file, with every rule, on each change)",
    );
    Ok(())
}

/// Resident memory of both daemons, and the memory of their BPF maps as the kernel reports it
/// (`bpftool map show`, `bytes_memlock`), next to the formula of docs/src/contributing/architecture.md.
fn memory(cx: &mut Context, small: &Daemon, large: &Daemon) -> anyhow::Result<()> {
    for (name, daemon) in [("1_rule", small), ("65535_rules", large)] {
        let rss = daemon.rss_bytes()? as f64 / (1 << 20) as f64;
        cx.add(Figure::new(
            "control",
            format!("daemon_rss/{name}"),
            "MiB",
            vec![rss],
        )?);
    }
    let maps = small.maps()?;
    let ids: Vec<u32> = maps.iter().map(|&(id, _)| id).collect();
    let listed: serde_json::Value = serde_json::from_str(
        &sys::run(std::process::Command::new("bpftool").args(["map", "show", "-j"]))
            .context("bpftool map show (apt-get install bpftool)")?,
    )?;
    let mut per_map = serde_json::Map::new();
    let mut total = 0u64;
    for map in listed.as_array().into_iter().flatten() {
        let id = map
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as u32;
        if !ids.contains(&id) {
            continue;
        }
        let bytes = map
            .get("bytes_memlock")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        total += bytes;
        let name = map
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        per_map.insert(name.to_owned(), bytes.into());
    }
    let fdinfo_total: u64 = maps.iter().map(|&(_, memlock)| memlock).sum();
    // Per-CPU maps hold a value for every *possible* CPU, which may be more than are online.
    let possible = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("{path}: {e}"))?;
    let expected = shaper::datapath::classifier::map_memory_bytes(1, possible as u32);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    cx.add(
        Figure::new(
            "control",
            "bpf_map_memory/one_interface",
            "MiB",
            vec![mib(total)],
        )?
        .detail("bpftool_bytes_memlock_per_map", per_map)
        .detail("fdinfo_memlock_total_bytes", fdinfo_total)
        .detail("readme_formula_values_bytes", expected),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrivals(start: Instant, gaps_us: &[(u64, usize)]) -> Vec<Instant> {
        let mut t = start;
        let mut out = Vec::new();
        for &(gap, n) in gaps_us {
            for _ in 0..n {
                t += Duration::from_micros(gap);
                out.push(t);
            }
        }
        out
    }

    #[test]
    fn a_rate_that_drops_at_once_holds_from_the_return() {
        let t0 = Instant::now();
        // 4 datagrams/ms for 100 ms, then 1/ms: the change happened at 100 ms.
        let a = arrivals(t0, &[(250, 400), (1000, 400)]);
        let returned = t0 + Duration::from_millis(100);
        assert_eq!(holds_after(&a, returned, LOW as f64, false), Duration::ZERO);
        // Returning 20 ms before the change shows (about) those 20 ms.
        let early = holds_after(&a, t0 + Duration::from_millis(80), LOW as f64, false);
        assert!(
            early >= Duration::from_millis(15) && early <= Duration::from_millis(21),
            "{early:?}"
        );
    }

    #[test]
    fn a_raised_rate_holds_once_windows_carry_it() {
        let t0 = Instant::now();
        let a = arrivals(t0, &[(1000, 100), (250, 1600)]);
        let late = holds_after(&a, t0 + Duration::from_millis(80), HIGH as f64, true);
        assert!(
            late >= Duration::from_millis(15) && late <= Duration::from_millis(21),
            "{late:?}"
        );
        assert_eq!(
            holds_after(&a, t0 + Duration::from_millis(101), HIGH as f64, true),
            Duration::ZERO
        );
    }
}
