//! 4. Rate accuracy at each rate of the plan: the shaper and nftables with the same rate and
//!    burst B (the smallest burst the shaper accepts on the veth: three times its largest
//!    aggregate), and the shaper with its default burst, on the same port of the same veth.
//!    UDP offered at 10x the rate (received/configured) and TCP with one and four streams
//!    (goodput/configured). Traffic flows from namespace b into a, policed on a's ingress
//!    (the shaper's tc hook, nftables' input hook).

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use super::{Context, Plan, alternate};
use crate::{
    daemon::Daemon,
    nft::NftLimit,
    report::Figure,
    sys::{self, VethPair, sleep_until},
    traffic::{TcpSink, TcpSources, udp_sink, udp_source},
};

const PORT: u16 = 5301;

/// UDP payload of the accuracy runs: a 1500-byte IP packet, a 1514-byte frame.
const UDP_PAYLOAD: usize = 1472;
/// What the shaper charges a datagram: the frame at tc (skb->len, Ethernet header included).
const UDP_FRAME_BYTES: f64 = 1514.0;
/// What nftables charges it: the IP packet at the input hook (skb->len there).
const UDP_IP_BYTES: f64 = 1500.0;

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(usize)]
enum Limiter {
    ShaperBurstB,
    NftBurstB,
    ShaperDefault,
}

impl Limiter {
    const ALL: [Self; 3] = [Self::ShaperBurstB, Self::NftBurstB, Self::ShaperDefault];

    fn name(self) -> &'static str {
        match self {
            Self::ShaperBurstB => "shaper_burst_B",
            Self::NftBurstB => "nftables_burst_B",
            Self::ShaperDefault => "shaper_default_burst",
        }
    }

    /// Bytes this limiter charges one accuracy datagram.
    fn udp_bytes(self) -> f64 {
        match self {
            Self::NftBurstB => UDP_IP_BYTES,
            _ => UDP_FRAME_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Traffic {
    Udp,
    Tcp(usize),
}

impl Traffic {
    fn name(self) -> String {
        match self {
            Self::Udp => "udp_10x".into(),
            Self::Tcp(1) => "tcp_1_stream".into(),
            Self::Tcp(n) => format!("tcp_{n}_streams"),
        }
    }
}

/// What the issue aims for: the shaper's UDP within 2% of the rate, its TCP goodput at the
/// default burst within 90%..102%. nftables and the shaper at burst B are there to compare with.
fn target(traffic: Traffic, limiter: Limiter) -> Option<(&'static str, f64, f64)> {
    match (traffic, limiter) {
        (_, Limiter::NftBurstB) | (Traffic::Tcp(_), Limiter::ShaperBurstB) => None,
        (Traffic::Udp, _) => Some(("within 2% of rate", 0.98, 1.02)),
        (Traffic::Tcp(_), Limiter::ShaperDefault) => Some(("90%..102% of rate", 0.90, 1.02)),
    }
}

/// The bytes a figure counts.
fn accounting(traffic: Traffic, limiter: Limiter) -> &'static str {
    match (traffic, limiter) {
        (Traffic::Tcp(_), _) => "goodput: TCP payload bytes",
        (Traffic::Udp, Limiter::NftBurstB) => "IP bytes (1500 per datagram)",
        (Traffic::Udp, _) => "frame bytes (1514 per datagram)",
    }
}

/// A limit in force for one run; removed on drop.
enum Installed<'a> {
    Shaper(&'a Daemon),
    Nft(#[expect(dead_code, reason = "held for its Drop, which removes the rule")] NftLimit<'a>),
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if let Self::Shaper(daemon) = self {
            let _ = daemon.cli(&["limit", "rm", &PORT.to_string()]);
        }
    }
}

fn install<'a>(
    limiter: Limiter,
    daemon: &'a Daemon,
    pair: &'a VethPair,
    rate: u64,
    burst: u64,
) -> anyhow::Result<Installed<'a>> {
    let port = PORT.to_string();
    let rate_arg = format!("{rate}B/s");
    let burst_arg = format!("{burst}B");
    Ok(match limiter {
        Limiter::ShaperBurstB => {
            daemon.cli(&[
                "limit", "set", &port, "--rate", &rate_arg, "--burst", &burst_arg,
            ])?;
            Installed::Shaper(daemon)
        }
        Limiter::ShaperDefault => {
            daemon.cli(&["limit", "set", &port, "--rate", &rate_arg])?;
            Installed::Shaper(daemon)
        }
        Limiter::NftBurstB => Installed::Nft(NftLimit::install(&pair.a, PORT, rate, burst)?),
    })
}

/// UDP at 10x `rate` (in frame bytes): datagrams per second received in the window after the
/// warm-up, and frame bytes per second offered.
fn udp(pair: &VethPair, rate: u64, plan: &Plan) -> anyhow::Result<(f64, f64)> {
    let to = SocketAddr::from((pair.a_addr, PORT));
    let sink = udp_sink(pair.a.enter(|| UdpSocket::bind(to))??, false)?;
    let from = pair.b.enter(|| UdpSocket::bind((pair.b_addr, 0)))??;
    let source = udp_source(from, to, UDP_PAYLOAD, 10 * rate)?;
    let received = window(plan.udp_warmup, plan.udp_window, || sink.count() as f64)?;
    let offered = source.offered_bytes_per_sec();
    source.finish()?;
    sink.finish()?;
    Ok((received, offered))
}

/// TCP with `streams` connections: goodput (payload bytes per second) in the window.
fn tcp(pair: &VethPair, streams: usize, plan: &Plan) -> anyhow::Result<f64> {
    let to = SocketAddr::from((pair.a_addr, PORT));
    let sink = TcpSink::start(pair.a.enter(|| TcpListener::bind(to))??, streams)?;
    let conns = pair.b.enter(|| {
        (0..streams)
            .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let sources = TcpSources::start(conns)?;
    let goodput = window(plan.tcp_warmup, plan.tcp_window, || sink.bytes() as f64)?;
    sources.stop();
    sink.stop();
    Ok(goodput)
}

/// How fast `counter` grows per second between `warmup` and `warmup + length` from now.
fn window(warmup: Duration, length: Duration, counter: impl Fn() -> f64) -> anyhow::Result<f64> {
    let start = Instant::now();
    sleep_until(start + warmup)?;
    let (c0, t0) = (counter(), Instant::now());
    sleep_until(t0 + length)?;
    let (c1, t1) = (counter(), Instant::now());
    Ok((c1 - c0) / (t1 - t0).as_secs_f64())
}

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let plan = cx.plan.clone();
    let pair = sys::veth_pair(1)?;
    let daemon = Daemon::start(&cx.shaper, &pair.a, &pair.a_if, "accuracy", None)?;
    let aggregate = u64::from(
        pair.a
            .enter(|| shaper::datapath::interfaces::max_aggregate_bytes(&pair.a_if))??,
    );
    let burst = shaper::policy::rule_table::min_burst(aggregate);

    for &rate in &plan.accuracy_rates {
        let default_burst = shaper::policy::rule_table::default_burst(rate * 8, aggregate);
        let rate_name = format!("{}MB/s", rate / 1_000_000);
        for traffic in [Traffic::Udp, Traffic::Tcp(1), Traffic::Tcp(4)] {
            let mut offered = [Vec::new(), Vec::new(), Vec::new()];
            let samples = alternate(plan.reps, &Limiter::ALL, |&limiter| {
                let _limit = install(limiter, &daemon, &pair, rate, burst)?;
                Ok(match traffic {
                    Traffic::Udp => {
                        let (received, offered_rate) = udp(&pair, rate, &plan)?;
                        offered[limiter as usize].push(offered_rate / 1e6);
                        received * limiter.udp_bytes() / rate as f64
                    }
                    Traffic::Tcp(streams) => tcp(&pair, streams, &plan)? / rate as f64,
                })
            })?;
            for (i, limiter) in Limiter::ALL.iter().enumerate() {
                let name = format!("{rate_name}/{}/{}", traffic.name(), limiter.name());
                let burst = match limiter {
                    Limiter::ShaperDefault => default_burst,
                    _ => burst,
                };
                let mut figure = Figure::new("accuracy", name, "x rate", samples[i].clone())?
                    .detail("burst_bytes", burst)
                    .detail("accounting", accounting(traffic, *limiter));
                if let Traffic::Udp = traffic {
                    figure = figure.detail("offered_MB_per_s_frame_bytes", &offered[i]);
                }
                if let Some((text, min, max)) = target(traffic, *limiter) {
                    figure = figure.target(text, false, Some(min), Some(max));
                }
                cx.add(figure);
            }
            if let Traffic::Udp = traffic {
                let all = offered.concat();
                let median = crate::stats::Summary::of(all).map_or(0.0, |s| s.median);
                if median < 9.5 * rate as f64 / 1e6 {
                    cx.note(format!(
                        "accuracy {rate_name}: UDP offered {median:.0} MB/s (frame bytes, median), less \
                         than the 10x asked for: one sender thread's limit on this machine. \
                         nftables' bucket starts with a second of rate plus the burst, which takes \
                         rate/(offered - rate) seconds to spend: what it has not spent by the end of \
                         the warm-up shows as received above the rate"
                    ));
                }
            }
        }
    }
    cx.note(format!(
        "accuracy: B = {burst} bytes (3 x the veth's {aggregate}-byte aggregates, the smallest burst \
         the shaper accepts there), for the shaper and nftables alike; UDP received/configured in \
         each limiter's own accounting (shaper: 1514-byte frames, nftables: 1500-byte IP packets); \
         TCP goodput/configured (payload only: at most 1460/1514 = 0.964 under the shaper's frame \
         accounting); warm-up {:?} (UDP) / {:?} (TCP) excluded, windows {:?} / {:?}",
        plan.udp_warmup, plan.tcp_warmup, plan.udp_window, plan.tcp_window
    ));
    if plan.quick {
        cx.note("accuracy: --quick measures 10 MB/s only; the full run adds 1 and 100 MB/s");
    }
    Ok(())
}
