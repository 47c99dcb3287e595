//! 6. Shaping against policing and the classic tools (issue 15): through a veth, at each rate of
//!    the plan, TCP with one and four streams and UDP at twice the rate, on the daemon side's
//!    ingress (uploads from b into a) and egress (downloads from a to b), limited by the shaper
//!    as a policer (`drop`, default burst), as a policer with `--ecn`, by the `shape` action, and
//!    by a hand-written HTB class with a `u32` filter on the port (on a second veth pair without
//!    the daemon, so its `tc` qdiscs never meet the shaper's). Each TCP run reports goodput /
//!    rate, the sender's retransmitted / sent segments (/proc/net/snmp of its namespace) and
//!    the smoothed round trip it sees (`ss -tin`), next to the same traffic on a port without a
//!    limit in the same repetition.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Context, Plan};
use crate::{
    classic_htb::{ClassicHtb, Hook},
    daemon::Daemon,
    report::Figure,
    sys::{self, VethPair, check_interrupt, sleep_until},
    tcp_stats::{Segments, smoothed_rtts_ms},
    traffic::{TcpSink, TcpSources, udp_sink, udp_source},
};

/// The limited port, and the port without a limit whose round trip is the baseline.
const PORT: u16 = 5401;
const FREE_PORT: u16 = 5402;

/// UDP payload: a 1500-byte IP packet, a 1514-byte frame (what the shaper and HTB charge).
const UDP_PAYLOAD: usize = 1472;
const UDP_FRAME_BYTES: f64 = 1514.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limiter {
    Unlimited,
    Policer,
    PolicerEcn,
    Shape,
    ClassicHtb,
}

impl Limiter {
    const ALL: [Self; 5] = [
        Self::Unlimited,
        Self::Policer,
        Self::PolicerEcn,
        Self::Shape,
        Self::ClassicHtb,
    ];
    /// `--quick`: without the ECN policer.
    const QUICK: [Self; 4] = [
        Self::Unlimited,
        Self::Policer,
        Self::Shape,
        Self::ClassicHtb,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Unlimited => "unlimited",
            Self::Policer => "shaper_drop",
            Self::PolicerEcn => "shaper_drop_ecn",
            Self::Shape => "shaper_shape",
            Self::ClassicHtb => "tc_htb_u32",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Unlimited => FREE_PORT,
            _ => PORT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Tcp(usize),
    UdpTwiceTheRate,
}

impl Traffic {
    fn name(self) -> String {
        match self {
            Self::Tcp(1) => "tcp_1_stream".into(),
            Self::Tcp(n) => format!("tcp_{n}_streams"),
            Self::UdpTwiceTheRate => "udp_2x".into(),
        }
    }

    /// Which limiters a traffic meets: UDP carries no ECN and needs no baseline.
    fn limiters(self, plan: &Plan) -> Vec<Limiter> {
        let all: &[Limiter] = if plan.shaping_all_limiters {
            &Limiter::ALL
        } else {
            &Limiter::QUICK
        };
        all.iter()
            .copied()
            .filter(|l| {
                self != Self::UdpTwiceTheRate
                    || !matches!(l, Limiter::Unlimited | Limiter::PolicerEcn)
            })
            .collect()
    }
}

/// One run's figures: goodput (TCP payload; UDP frame bytes) / rate, and for TCP the sender's
/// retransmitted / sent segments and its mean smoothed round trip (ms).
#[derive(Debug, Clone, Copy)]
struct Run {
    ratio: f64,
    retrans: f64,
    rtt_ms: f64,
}

/// The two veth pairs: the daemon's and the hand-written HTB's.
struct Pairs<'a> {
    daemon: &'a Daemon,
    shaper: &'a VethPair,
    classic: &'a VethPair,
}

/// A limit in force for one run; removed on drop.
enum Installed<'a> {
    Nothing,
    Shaper(&'a Daemon, Dir),
    Classic(
        #[expect(dead_code, reason = "held for its Drop, which removes the qdiscs")] ClassicHtb<'a>,
    ),
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if let Self::Shaper(daemon, dir) = self {
            let _ = daemon.cli(&["limit", "rm", &PORT.to_string(), "--dir", dir.name()]);
        }
    }
}

fn install<'a>(
    limiter: Limiter,
    dir: Dir,
    pairs: &Pairs<'a>,
    rate: u64,
    queue: u64,
) -> anyhow::Result<Installed<'a>> {
    let port = PORT.to_string();
    let rate_arg = format!("{rate}B/s");
    let mut args = vec![
        "limit",
        "set",
        &port,
        "--rate",
        &rate_arg,
        "--dir",
        dir.name(),
    ];
    match limiter {
        Limiter::Unlimited => return Ok(Installed::Nothing),
        Limiter::ClassicHtb => {
            let hook = match dir {
                Dir::Ingress => Hook::Ingress,
                Dir::Egress => Hook::Egress,
            };
            let pair = pairs.classic;
            return Ok(Installed::Classic(ClassicHtb::install(
                &pair.a, &pair.a_if, hook, PORT, rate, queue,
            )?));
        }
        Limiter::Policer => {}
        Limiter::PolicerEcn => args.push("--ecn"),
        Limiter::Shape => args.extend(["--action", "shape"]),
    }
    pairs.daemon.cli(&args)?;
    Ok(Installed::Shaper(pairs.daemon, dir))
}

/// TCP from b to `port` of a (ingress) or from `port` of a to b (egress), `streams` connections.
fn tcp(
    pair: &VethPair,
    dir: Dir,
    port: u16,
    streams: usize,
    rate: u64,
    plan: &Plan,
) -> anyhow::Result<Run> {
    let to = SocketAddr::from((pair.a_addr, port));
    let listener = pair.a.enter(|| TcpListener::bind(to))??;
    let clients = pair.b.enter(|| {
        (0..streams)
            .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    // The connections are established (in the listener's backlog): accept does not wait.
    let servers = (0..streams)
        .map(|_| listener.accept().map(|(s, _)| s))
        .collect::<std::io::Result<Vec<_>>>()?;
    let (sender_ns, senders, receivers) = match dir {
        Dir::Ingress => (&pair.b, clients, servers),
        Dir::Egress => (&pair.a, servers, clients),
    };
    let sink = TcpSink::from_streams(receivers);
    let sources = TcpSources::start(senders)?;
    let start = Instant::now();
    sleep_until(start + plan.shaping_warmup)?;
    let (segments0, bytes0, t0) = (Segments::read(sender_ns)?, sink.bytes(), Instant::now());
    sleep_until(t0 + plan.shaping_window)?;
    let (bytes1, t1) = (sink.bytes(), Instant::now());
    let segments1 = Segments::read(sender_ns)?;
    let rtts = smoothed_rtts_ms(sender_ns, port)?;
    sources.stop();
    sink.stop();
    if rtts.is_empty() {
        anyhow::bail!("ss shows no established TCP socket on port {port}");
    }
    let rtt_ms = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok(Run {
        ratio: (bytes1 - bytes0) as f64 / (t1 - t0).as_secs_f64() / rate as f64,
        retrans: segments0.retrans_share_until(segments1),
        rtt_ms,
    })
}

/// UDP at twice `rate` (frame bytes) from b to `port` of a (ingress) or from `port` of a to b
/// (egress): frame bytes received per second in the window / rate.
fn udp(pair: &VethPair, dir: Dir, port: u16, rate: u64, plan: &Plan) -> anyhow::Result<Run> {
    let (from_ns, from_addr, to_ns, to_addr) = match dir {
        Dir::Ingress => (&pair.b, (pair.b_addr, 0), &pair.a, pair.a_addr),
        Dir::Egress => (&pair.a, (pair.a_addr, port), &pair.b, pair.b_addr),
    };
    let to = SocketAddr::from((to_addr, port));
    let sink = udp_sink(to_ns.enter(|| UdpSocket::bind(to))??, false)?;
    let from = from_ns.enter(|| UdpSocket::bind(from_addr))??;
    let source = udp_source(from, to, UDP_PAYLOAD, 2 * rate)?;
    let start = Instant::now();
    sleep_until(start + plan.shaping_warmup)?;
    let (c0, t0) = (sink.count(), Instant::now());
    sleep_until(t0 + plan.shaping_window)?;
    let (c1, t1) = (sink.count(), Instant::now());
    source.finish()?;
    sink.finish()?;
    Ok(Run {
        ratio: (c1 - c0) as f64 * UDP_FRAME_BYTES / (t1 - t0).as_secs_f64() / rate as f64,
        retrans: 0.0,
        rtt_ms: 0.0,
    })
}

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let plan = cx.plan.clone();
    let shaper_pair = sys::veth_pair(3)?;
    let classic_pair = sys::veth_pair(4)?;
    // Linux's default tcp_ecn=2 only accepts ECN; every sender here asks for it, so the policer
    // with and without --ecn meet the same senders.
    for pair in [&shaper_pair, &classic_pair] {
        pair.a.sysctl("net.ipv4.tcp_ecn=1")?;
        pair.b.sysctl("net.ipv4.tcp_ecn=1")?;
    }
    let daemon = Daemon::start(
        &cx.shaper,
        &shaper_pair.a,
        &shaper_pair.a_if,
        "shaping",
        None,
    )?;
    let aggregate = u64::from(
        shaper_pair
            .a
            .enter(|| shaper::datapath::interfaces::max_aggregate_bytes(&shaper_pair.a_if))??,
    );
    let pairs = Pairs {
        daemon: &daemon,
        shaper: &shaper_pair,
        classic: &classic_pair,
    };
    let mut traffics: Vec<Traffic> = plan
        .shaping_streams
        .iter()
        .map(|&n| Traffic::Tcp(n))
        .collect();
    if plan.shaping_all_limiters {
        traffics.push(Traffic::UdpTwiceTheRate);
    }
    for &rate in &plan.shaping_rates {
        let queue = shaper::policy::action_options::default_queue(rate * 8, aggregate);
        let queue_ms = queue as f64 * 1000.0 / rate as f64;
        let rate_name = format!("{}MB/s", rate / 1_000_000);
        for dir in [Dir::Ingress, Dir::Egress] {
            for &traffic in &traffics {
                let limiters = traffic.limiters(&plan);
                let mut runs = vec![Vec::new(); limiters.len()];
                for _ in 0..plan.shaping_reps {
                    for (limiter, out) in limiters.iter().zip(&mut runs) {
                        check_interrupt()?;
                        let _limit = install(*limiter, dir, &pairs, rate, queue)?;
                        let pair = match limiter {
                            Limiter::ClassicHtb => pairs.classic,
                            _ => pairs.shaper,
                        };
                        let run = match traffic {
                            Traffic::Tcp(streams) => {
                                tcp(pair, dir, limiter.port(), streams, rate, &plan)
                            }
                            Traffic::UdpTwiceTheRate => udp(pair, dir, limiter.port(), rate, &plan),
                        }
                        .with_context(|| {
                            format!(
                                "{rate_name} {} {} {}",
                                dir.name(),
                                traffic.name(),
                                limiter.name()
                            )
                        })?;
                        out.push(run);
                    }
                }
                add_figures(
                    cx,
                    &format!("{rate_name}/{}/{}", dir.name(), traffic.name()),
                    traffic,
                    &limiters,
                    &runs,
                    queue,
                    queue_ms,
                )?;
            }
        }
    }
    cx.note(format!(
        "shaping: goodput/rate counts TCP payload (timestamps off: at most 1460/1514 = 0.964 of \
         the rate, which the shaper and HTB charge in frame bytes) and UDP frame bytes; retrans = \
         the sender's TcpRetransSegs/OutSegs over the window; rtt_added_ms = the sender's \
         smoothed RTT (ss -tin) minus that of the same traffic to an unlimited port in the same \
         repetition; shape and tc_htb_u32 queue {:?} ms of the rate (the shaper's default \
         queue; the hand-written class gets a bfifo of the same bytes, on a second veth pair \
         without the daemon, through ifb + act_mirred on ingress); senders use \
         net.ipv4.tcp_ecn=1; {} repetition(s), warm-up {:?}, window {:?}",
        shaper::policy::action_options::DEFAULT_QUEUE_MS,
        plan.shaping_reps,
        plan.shaping_warmup,
        plan.shaping_window
    ));
    cx.note(
        "shaping: on a veth the round trip is ~50 us, and a TCP sender cannot slow below about \
         two segments per round trip (hundreds of Mbit/s here) however many CE marks it gets: \
         the --ecn policer's bucket still empties and drops, so ECN can hardly cut \
         retransmissions at these rates; it pays off where a round trip carries a few segments \
         of the rate",
    );
    if plan.quick {
        cx.note(
            "shaping: --quick measures 10 MB/s, one TCP stream, without the --ecn policer and UDP",
        );
    }
    Ok(())
}

/// The figures of one (rate, direction, traffic) cell, each limiter beside the others.
fn add_figures(
    cx: &mut Context,
    cell: &str,
    traffic: Traffic,
    limiters: &[Limiter],
    runs: &[Vec<Run>],
    queue: u64,
    queue_ms: f64,
) -> anyhow::Result<()> {
    let samples = |limiter: Limiter, f: fn(&Run) -> f64| -> Option<Vec<f64>> {
        let at = limiters.iter().position(|l| *l == limiter)?;
        Some(runs[at].iter().map(f).collect())
    };
    let baseline_rtt = samples(Limiter::Unlimited, |r| r.rtt_ms);
    let classic_ratio = samples(Limiter::ClassicHtb, |r| r.ratio);
    let classic_retrans = samples(Limiter::ClassicHtb, |r| r.retrans);
    let policer_retrans = samples(Limiter::Policer, |r| r.retrans);
    let is_tcp = matches!(traffic, Traffic::Tcp(_));
    for (limiter, runs) in limiters.iter().zip(runs) {
        let name = format!("{cell}/{}", limiter.name());
        let ratios: Vec<f64> = runs.iter().map(|r| r.ratio).collect();
        let mut goodput = Figure::new("shaping", &name, "x rate", ratios)?;
        if matches!(limiter, Limiter::Shape | Limiter::ClassicHtb) {
            goodput = goodput.detail("queue_bytes", queue);
        }
        if *limiter == Limiter::Shape {
            if let Some(classic) = &classic_ratio {
                goodput =
                    goodput.ratio_to(&format!("{cell}/{}", Limiter::ClassicHtb.name()), classic);
            }
            goodput = if is_tcp {
                goodput.target(">= 0.95 of the rate", false, Some(0.95), None)
            } else {
                goodput.target("within 2% of the rate", false, Some(0.98), Some(1.02))
            };
        }
        cx.add(goodput);
        if !is_tcp {
            continue;
        }
        let rtts: Vec<f64> = runs.iter().map(|r| r.rtt_ms).collect();
        if *limiter == Limiter::Unlimited {
            cx.add(Figure::new("shaping", format!("{name}/rtt"), "ms", rtts)?);
            continue;
        }
        let retrans: Vec<f64> = runs.iter().map(|r| r.retrans).collect();
        let mut figure = Figure::new("shaping", format!("{name}/retrans"), "retx/sent", retrans)?;
        figure = match limiter {
            Limiter::Shape => {
                let figure = figure.target("< 0.1% of segments sent", false, None, Some(0.001));
                match &classic_retrans {
                    Some(classic) => figure.detail("tc_htb_u32_retrans", classic),
                    None => figure,
                }
            }
            Limiter::PolicerEcn => match &policer_retrans {
                Some(policer) => figure
                    .ratio_to(
                        &format!("{cell}/{}/retrans", Limiter::Policer.name()),
                        policer,
                    )
                    .target(">= 10x fewer than the plain policer", true, None, Some(0.1)),
                None => figure,
            },
            _ => figure,
        };
        cx.add(figure);
        if let Some(baseline) = &baseline_rtt {
            let added: Vec<f64> = rtts.iter().zip(baseline).map(|(r, b)| r - b).collect();
            let mut figure = Figure::new("shaping", format!("{name}/rtt_added"), "ms", added)?
                .detail("rtt_ms", &rtts);
            if *limiter == Limiter::Shape {
                figure = figure.target(
                    &format!("at most the queue bound, {queue_ms:.0} ms"),
                    false,
                    None,
                    Some(queue_ms),
                );
            }
            cx.add(figure);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_meets_neither_the_unlimited_baseline_nor_the_ecn_policer() {
        let full = Plan::new(false);
        assert_eq!(
            Traffic::UdpTwiceTheRate.limiters(&full),
            [Limiter::Policer, Limiter::Shape, Limiter::ClassicHtb]
        );
        assert_eq!(Traffic::Tcp(4).limiters(&full), Limiter::ALL);
    }

    #[test]
    fn quick_keeps_the_scenario_short() {
        let quick = Plan::new(true);
        assert_eq!(Traffic::Tcp(1).limiters(&quick), Limiter::QUICK);
        assert_eq!(quick.shaping_rates.len(), 1);
        assert_eq!(quick.shaping_streams, [1]);
        // Four limiters, two directions, one repetition of warm-up + window.
        let runs = 4 * 2 * quick.shaping_reps as u32;
        assert!((quick.shaping_warmup + quick.shaping_window) * runs <= Duration::from_secs(30));
    }
}
