//! 7. Real round trips (issue 29): every action, and the tools an operator would pick instead,
//!    at round trips of 1, 20 and 80 ms (and 80 ms with 1% loss), TCP uploads through the
//!    daemon side's ingress and downloads through its egress, one and four streams, CUBIC and
//!    BBR. Needs `netem` (and `fq` for `pace`), which the build machine's kernel lacks: it runs
//!    in the VM test bed (`cargo xtask bench --scenario rtt`), on sid's newest kernel.
//!
//! The delay is `netem` on the peer's end of the veth (the daemon side's root qdisc belongs to
//! the limiter under test: HTB for `shape`, `fq` for `pace`), the whole round trip at once: the
//! data of an upload, the ACKs of a download wait there. The loss run drops 1% of what the peer
//! sends: an upload's data, a download's ACKs.
//!
//! Per run: goodput / rate (TCP payload over the window), the sender's retransmitted / sent
//! segments, the smoothed round trip its sockets report (`ss -tin`, sampled every 200 ms over
//! the window: p50 and p99), Jain's fairness index of the streams' goodputs, and the guest's
//! CPU busy share over the window (an emulated CPU that is saturated distorts every figure).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Context, Plan};
use crate::{
    classic_htb::{ClassicHtb, Hook},
    daemon::Daemon,
    nft::NftLimit,
    report::Figure,
    stats::percentile,
    sys::{self, Namespace, VethPair, check_interrupt, sleep_until},
    tcp_stats::{Segments, smoothed_rtts_ms},
    traffic::{TcpSink, TcpSources},
};

const PORT: u16 = 5501;
const FREE_PORT: u16 = 5502;
/// The rate of every limit: 8 Mbit/s, the rate of the first look.
pub const RATE_BYTES: u64 = 1_000_000;
/// How often the sender's round trips are sampled within a window.
const RTT_SAMPLE: Duration = Duration::from_millis(200);

/// What limits the port in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    Unlimited,
    Drop,
    DropEcn,
    Shape,
    Pace,
    NftLimit,
    ClassicHtb,
}

impl Limiter {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unlimited => "unlimited",
            Self::Drop => "shaper_drop",
            Self::DropEcn => "shaper_drop_ecn",
            Self::Shape => "shaper_shape",
            Self::Pace => "shaper_pace",
            Self::NftLimit => "nft_limit",
            Self::ClassicHtb => "tc_htb_u32",
        }
    }

    /// The limiters of a direction: `pace` is egress-only, the nftables policer sits at the
    /// input hook (uploads).
    pub fn of(dir: Dir) -> &'static [Self] {
        match dir {
            Dir::Upload => &[
                Self::Unlimited,
                Self::Drop,
                Self::DropEcn,
                Self::Shape,
                Self::NftLimit,
                Self::ClassicHtb,
            ],
            Dir::Download => &[
                Self::Unlimited,
                Self::Drop,
                Self::DropEcn,
                Self::Shape,
                Self::Pace,
                Self::ClassicHtb,
            ],
        }
    }
}

/// Uploads cross the daemon side's ingress, downloads its egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Upload,
    Download,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Download => "download",
        }
    }

    fn shaper_dir(self) -> &'static str {
        match self {
            Self::Upload => "ingress",
            Self::Download => "egress",
        }
    }
}

/// The path between the two ends: a round trip, and a loss rate on the peer's side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Path {
    pub rtt_ms: u32,
    pub loss_percent: f64,
}

impl Path {
    fn name(&self) -> String {
        if self.loss_percent > 0.0 {
            format!("rtt{}ms_loss{}pct", self.rtt_ms, self.loss_percent)
        } else {
            format!("rtt{}ms", self.rtt_ms)
        }
    }
}

/// One kind of TCP traffic: streams and congestion control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flows {
    pub streams: usize,
    pub cc: &'static str,
}

/// One cell of the matrix: the runs of every limiter under one path, direction and traffic.
#[derive(Debug, Clone)]
pub struct Cell {
    pub path: Path,
    pub dir: Dir,
    pub flows: Flows,
    pub limiters: Vec<Limiter>,
}

/// The cells of a plan. The full plan: every path, both directions, CUBIC with one and four
/// streams, BBR with one, every limiter. `--quick` (what CI runs): one cell per action at 20 ms
/// (`shape` both ways), one CUBIC stream, with the unlimited baseline of each direction.
pub fn cells(plan: &Plan) -> Vec<Cell> {
    if plan.quick {
        let path = Path {
            rtt_ms: 20,
            loss_percent: 0.0,
        };
        let flows = Flows {
            streams: 1,
            cc: "cubic",
        };
        return vec![
            Cell {
                path,
                dir: Dir::Upload,
                flows,
                // Ingress shape too: its queue (fq_codel) differs from egress's.
                limiters: vec![
                    Limiter::Unlimited,
                    Limiter::Drop,
                    Limiter::DropEcn,
                    Limiter::Shape,
                ],
            },
            Cell {
                path,
                dir: Dir::Download,
                flows,
                limiters: vec![Limiter::Unlimited, Limiter::Shape, Limiter::Pace],
            },
        ];
    }
    let paths = [
        Path {
            rtt_ms: 1,
            loss_percent: 0.0,
        },
        Path {
            rtt_ms: 20,
            loss_percent: 0.0,
        },
        Path {
            rtt_ms: 80,
            loss_percent: 0.0,
        },
        Path {
            rtt_ms: 80,
            loss_percent: 1.0,
        },
    ];
    let flows = [
        Flows {
            streams: 1,
            cc: "cubic",
        },
        Flows {
            streams: 4,
            cc: "cubic",
        },
        Flows {
            streams: 1,
            cc: "bbr",
        },
    ];
    let mut cells = Vec::new();
    for path in paths {
        for dir in [Dir::Upload, Dir::Download] {
            for flows in flows {
                cells.push(Cell {
                    path,
                    dir,
                    flows,
                    limiters: Limiter::of(dir).to_vec(),
                });
            }
        }
    }
    cells
}

/// Jain's fairness index of `shares`: 1 when all are equal, 1/n when one has everything.
pub fn jain(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (shares.len() as f64 * squares)
}

/// One run's figures.
#[derive(Debug, Clone)]
struct Run {
    ratio: f64,
    retrans: f64,
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
    fairness: f64,
    cpu_busy: f64,
}

/// The guest's CPU time counters (/proc/stat's first line): busy and total jiffies.
fn cpu_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The two veth pairs with their paths: the daemon's, and the hand-written tools' (so their
/// `tc` qdiscs and nftables rules never meet the shaper's).
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
    Nft(#[expect(dead_code, reason = "held for its Drop, which removes the table")] NftLimit<'a>),
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if let Self::Shaper(daemon, dir) = self {
            let _ = daemon.cli(&["limit", "rm", &PORT.to_string(), "--dir", dir.shaper_dir()]);
        }
    }
}

fn install<'a>(
    limiter: Limiter,
    dir: Dir,
    pairs: &Pairs<'a>,
    queue: u64,
    burst: u64,
) -> anyhow::Result<Installed<'a>> {
    let port = PORT.to_string();
    let rate_arg = format!("{RATE_BYTES}B/s");
    let mut args = vec![
        "limit",
        "set",
        &port,
        "--rate",
        &rate_arg,
        "--dir",
        dir.shaper_dir(),
    ];
    match limiter {
        Limiter::Unlimited => return Ok(Installed::Nothing),
        Limiter::ClassicHtb => {
            let hook = match dir {
                Dir::Upload => Hook::Ingress,
                Dir::Download => Hook::Egress,
            };
            let pair = pairs.classic;
            return Ok(Installed::Classic(ClassicHtb::install(
                &pair.a, &pair.a_if, hook, PORT, RATE_BYTES, queue,
            )?));
        }
        Limiter::NftLimit => {
            return Ok(Installed::Nft(NftLimit::install(
                &pairs.classic.a,
                PORT,
                RATE_BYTES,
                burst,
            )?));
        }
        Limiter::Drop => {}
        Limiter::DropEcn => args.push("--ecn"),
        Limiter::Shape => args.extend(["--action", "shape"]),
        Limiter::Pace => args.extend(["--action", "pace"]),
    }
    pairs.daemon.cli(&args)?;
    Ok(Installed::Shaper(pairs.daemon, dir))
}

/// Puts `path` on the peer's end of `pair`: netem as its root qdisc, the whole round trip.
fn set_path(pair: &VethPair, path: &Path) -> anyhow::Result<()> {
    let delay = format!("{}ms", path.rtt_ms);
    let mut args = vec![
        "qdisc", "replace", "dev", &pair.b_if, "root", "netem", "limit", "100000", "delay", &delay,
    ];
    let loss = format!("{}%", path.loss_percent);
    if path.loss_percent > 0.0 {
        args.extend(["loss", &loss]);
    }
    pair.b.run("tc", &args).map(|_| ()).map_err(|e| {
        anyhow::Error::from(e).context(
            "adding netem on the peer (this kernel has no sch_netem: run the scenario in the VM \
             test bed, `cargo xtask bench --scenario rtt`)",
        )
    })
}

/// Sets the sender's congestion control in its namespace (`net.ipv4.tcp_congestion_control`
/// is per network namespace); BBR is a module on Debian's kernels, loaded on demand.
fn set_cc(ns: &Namespace, cc: &str) -> anyhow::Result<()> {
    if cc != "cubic" {
        let _ = sys::run(std::process::Command::new("modprobe").arg(format!("tcp_{cc}")));
    }
    ns.sysctl(&format!("net.ipv4.tcp_congestion_control={cc}"))
        .with_context(|| format!("{cc} congestion control"))
}

/// TCP from b to `port` of a (upload) or from `port` of a to b (download), `flows.streams`
/// connections with `flows.cc` on the sender.
fn tcp(pair: &VethPair, dir: Dir, port: u16, flows: Flows, plan: &Plan) -> anyhow::Result<Run> {
    let sender_ns = match dir {
        Dir::Upload => &pair.b,
        Dir::Download => &pair.a,
    };
    set_cc(sender_ns, flows.cc)?;
    let to = SocketAddr::from((pair.a_addr, port));
    let listener = pair.a.enter(|| TcpListener::bind(to))??;
    let clients = pair.b.enter(|| {
        (0..flows.streams)
            .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let servers = (0..flows.streams)
        .map(|_| listener.accept().map(|(s, _)| s))
        .collect::<std::io::Result<Vec<_>>>()?;
    let (senders, receivers) = match dir {
        Dir::Upload => (clients, servers),
        Dir::Download => (servers, clients),
    };
    // A sink per stream, for each stream's goodput.
    let sinks: Vec<TcpSink> = receivers
        .into_iter()
        .map(|stream| TcpSink::from_streams(vec![stream]))
        .collect();
    let sources = TcpSources::start(senders)?;
    let start = Instant::now();
    sleep_until(start + plan.rtt_warmup)?;
    let segments0 = Segments::read(sender_ns)?;
    let bytes0: Vec<u64> = sinks.iter().map(TcpSink::bytes).collect();
    let cpu0 = cpu_jiffies()?;
    let t0 = Instant::now();
    let mut rtts = Vec::new();
    while t0.elapsed() < plan.rtt_window {
        sleep_until(Instant::now() + RTT_SAMPLE)?;
        rtts.extend(smoothed_rtts_ms(sender_ns, port)?);
    }
    let bytes1: Vec<u64> = sinks.iter().map(TcpSink::bytes).collect();
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_jiffies()?;
    let segments1 = Segments::read(sender_ns)?;
    sources.stop();
    for sink in sinks {
        sink.stop();
    }
    set_cc(sender_ns, "cubic")?;
    if rtts.is_empty() {
        anyhow::bail!("ss shows no established TCP socket on port {port}");
    }
    let goodputs: Vec<f64> = bytes0
        .iter()
        .zip(&bytes1)
        .map(|(b0, b1)| (b1 - b0) as f64 / secs)
        .collect();
    Ok(Run {
        ratio: goodputs.iter().sum::<f64>() / RATE_BYTES as f64,
        retrans: segments0.retrans_share_until(segments1),
        rtt_p50_ms: percentile(&rtts, 0.5),
        rtt_p99_ms: percentile(&rtts, 0.99),
        fairness: jain(&goodputs),
        cpu_busy: (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64,
    })
}

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let plan = cx.plan.clone();
    let shaper_pair = sys::veth_pair(5)?;
    let classic_pair = sys::veth_pair(6)?;
    for pair in [&shaper_pair, &classic_pair] {
        // ECN-capable senders, so the --ecn policer and the plain one meet the same senders.
        pair.a.sysctl("net.ipv4.tcp_ecn=1")?;
        pair.b.sysctl("net.ipv4.tcp_ecn=1")?;
    }
    let daemon = Daemon::start(&cx.shaper, &shaper_pair.a, &shaper_pair.a_if, "rtt", None)?;
    let aggregate = u64::from(
        shaper_pair
            .a
            .enter(|| shaper::datapath::interfaces::max_aggregate_bytes(&shaper_pair.a_if))??,
    );
    let queue = shaper::policy::action_options::default_queue(RATE_BYTES * 8, aggregate);
    let burst = shaper::policy::rule_table::default_burst(RATE_BYTES * 8, aggregate);
    let pairs = Pairs {
        daemon: &daemon,
        shaper: &shaper_pair,
        classic: &classic_pair,
    };
    let mut current_path = None;
    for mut cell in cells(&plan) {
        let name = format!(
            "{}/{}/{}_{}",
            cell.path.name(),
            cell.dir.name(),
            cell.flows.cc,
            cell.flows.streams
        );
        let wanted = |limiter: &Limiter| {
            let run = format!("{name}/{}", limiter.name());
            plan.rtt_filter.is_empty() || plan.rtt_filter.iter().any(|f| run.contains(f.as_str()))
        };
        cell.limiters.retain(wanted);
        if cell.limiters.is_empty() {
            continue;
        }
        if current_path != Some(cell.path) {
            set_path(&shaper_pair, &cell.path)?;
            set_path(&classic_pair, &cell.path)?;
            current_path = Some(cell.path);
        }
        let mut runs = vec![Vec::new(); cell.limiters.len()];
        for _ in 0..plan.rtt_reps {
            for (limiter, out) in cell.limiters.iter().zip(&mut runs) {
                check_interrupt()?;
                let _limit = install(*limiter, cell.dir, &pairs, queue, burst)?;
                let pair = match limiter {
                    Limiter::ClassicHtb | Limiter::NftLimit => pairs.classic,
                    _ => pairs.shaper,
                };
                let port = match limiter {
                    Limiter::Unlimited => FREE_PORT,
                    _ => PORT,
                };
                let run = tcp(pair, cell.dir, port, cell.flows, &plan)
                    .with_context(|| format!("{name} {}", limiter.name()))?;
                out.push(run);
            }
        }
        add_figures(cx, &name, &cell, &runs)?;
    }
    cx.note(format!(
        "rtt: rate {} B/s (8 Mbit/s); netem on the peer's end of the veth holds the whole round \
         trip (and the loss: 1% of what the peer sends, an upload's data or a download's ACKs); \
         goodput = TCP payload / rate (timestamps off: at most 0.964); retrans = the sender's \
         TcpRetransSegs/OutSegs; rtt p50/p99 = the sender's smoothed RTT (ss -tin) sampled every \
         {} ms; fairness = Jain's index of the streams' goodputs; cpu = the machine's busy share \
         over the window; shape, pace and tc_htb_u32 queue {queue} B (shape's default), the \
         policers' burst is {burst} B (drop's default; nft_limit's too); {} repetition(s), \
         warm-up {:?}, window {:?}",
        RATE_BYTES,
        RTT_SAMPLE.as_millis(),
        plan.rtt_reps,
        plan.rtt_warmup,
        plan.rtt_window
    ));
    Ok(())
}

/// The figures of one cell, each limiter beside the others, with the targets: `shape`
/// and `pace` at >= 0.95 of the rate with < 0.1% retransmitted, `--ecn` retransmitting at most a
/// tenth of the plain policer's at 20 ms and more.
fn add_figures(
    cx: &mut Context,
    cell_name: &str,
    cell: &Cell,
    runs: &[Vec<Run>],
) -> anyhow::Result<()> {
    let of = |limiter: Limiter, f: fn(&Run) -> f64| -> Option<Vec<f64>> {
        let at = cell.limiters.iter().position(|l| *l == limiter)?;
        Some(runs[at].iter().map(f).collect())
    };
    let drop_retrans = of(Limiter::Drop, |r| r.retrans);
    let baseline_rtt = of(Limiter::Unlimited, |r| r.rtt_p50_ms);
    for (limiter, runs) in cell.limiters.iter().zip(runs) {
        let name = format!("{cell_name}/{}", limiter.name());
        let samples = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let queues = matches!(limiter, Limiter::Shape | Limiter::Pace);
        let mut goodput = Figure::new("rtt", &name, "x rate", samples(|r| r.ratio))?
            .detail("cpu_busy", samples(|r| r.cpu_busy))
            .detail("fairness", samples(|r| r.fairness))
            .detail("rtt_p50_ms", samples(|r| r.rtt_p50_ms))
            .detail("rtt_p99_ms", samples(|r| r.rtt_p99_ms));
        if let Some(baseline) = &baseline_rtt {
            goodput = goodput.detail("rtt_p50_unlimited_ms", baseline);
        }
        if queues && cell.path.loss_percent == 0.0 {
            goodput = goodput.target(">= 0.95 of the rate", false, Some(0.95), None);
        }
        cx.add(goodput);
        if *limiter == Limiter::Unlimited {
            continue;
        }
        let mut retrans = Figure::new(
            "rtt",
            format!("{name}/retrans"),
            "retx/sent",
            samples(|r| r.retrans),
        )?;
        if queues && cell.path.loss_percent == 0.0 {
            retrans = retrans.target("< 0.1% of segments sent", false, None, Some(0.001));
        }
        if *limiter == Limiter::DropEcn
            && let Some(plain) = &drop_retrans
        {
            retrans = retrans.ratio_to(
                &format!("{cell_name}/{}/retrans", Limiter::Drop.name()),
                plain,
            );
            if cell.path.rtt_ms >= 20 && cell.path.loss_percent == 0.0 {
                retrans =
                    retrans.target(">= 10x fewer than the plain policer", true, None, Some(0.1));
            }
        }
        cx.add(retrans);
        if cell.flows.streams > 1 {
            cx.add(Figure::new(
                "rtt",
                format!("{name}/fairness"),
                "jain",
                samples(|r| r.fairness),
            )?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() {
        assert!((jain(&[2.0, 2.0, 2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[4.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn quick_checks_one_cell_per_action_and_the_full_plan_every_limiter() {
        let quick = cells(&Plan::new(true));
        let actions: Vec<Limiter> = quick
            .iter()
            .flat_map(|c| c.limiters.iter().copied())
            .filter(|l| *l != Limiter::Unlimited)
            .collect();
        assert_eq!(
            actions,
            [
                Limiter::Drop,
                Limiter::DropEcn,
                Limiter::Shape,
                Limiter::Shape,
                Limiter::Pace
            ]
        );
        let full = cells(&Plan::new(false));
        assert_eq!(full.len(), 4 * 2 * 3);
        assert!(
            full.iter()
                .filter(|c| c.dir == Dir::Upload)
                .all(|c| !c.limiters.contains(&Limiter::Pace))
        );
    }
}
