//! 1b. Per-packet cost of a shape rule (issue 15) and a pace rule (issue 29).
//!
//!     Shape: BPF_PROG_TEST_RUN of the shaper's ingress
//!     program (the rule redirects to its IFB device: TC_ACT_REDIRECT) and egress program (the
//!     rule writes the class into `skb->priority` and passes), each beside an unlimited port in
//!     the same direction. A shape rule makes shaper create an HTB root (egress) and an IFB device
//!     (ingress) on the interface it is registered on, and test-run packets arrive on the
//!     loopback device of the caller's namespace (net/bpf/test_run.c, `bpf_prog_test_run_skb`
//!     uses `current->nsproxy->net_ns->loopback_dev`): so all of it runs on a thread inside a
//!     throwaway namespace, whose `lo` gets the HTB root and which takes the IFB device with it
//!     when it is deleted. The host's `lo` is never touched.
//!
//!     Pace: the egress program with a pace rule (it moves the rule's clock with a
//!     compare-and-swap and writes `skb->tstamp`) beside an unlimited port, on a classifier of
//!     its own whose maps get the rule the way the daemon writes it (`write_rule`, the rule
//!     index) but without the `fq` root the daemon would install first: BPF_PROG_TEST_RUN never
//!     reaches a qdisc, and the build machine's kernel has no `fq`.

use anyhow::{Context as _, bail};
use shaper::{
    Classifier, Direction,
    policy::rule_table::{Action, Limit, PortRange, RuleKey, RuleSpec, RuleTable, SetOutcome},
    policy::rules_in_force::Limits,
};
use shaper_common::bucket::{MAX_BURST_BYTES, MAX_RATE_BPS};

use super::{
    Context, alternate,
    per_packet::{PASS, PORT_FREE, test_run},
};
use crate::{packets, report::Figure, sys::Namespace, sys::TempDir};

/// The port of the shape rule, and of the pace rule.
const PORT_SHAPE: u16 = 7005;
const PORT_PACE: u16 = 7006;
/// What BPF_PROG_TEST_RUN returns for a redirected packet (TC_ACT_REDIRECT).
const REDIRECT: u32 = 7;

struct Variant {
    name: &'static str,
    dir: Direction,
    port: u16,
    verdict: u32,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "ingress_unlimited",
        dir: Direction::Ingress,
        port: PORT_FREE,
        verdict: PASS,
    },
    Variant {
        name: "ingress_shape",
        dir: Direction::Ingress,
        port: PORT_SHAPE,
        verdict: REDIRECT,
    },
    Variant {
        name: "egress_unlimited",
        dir: Direction::Egress,
        port: PORT_FREE,
        verdict: PASS,
    },
    Variant {
        name: "egress_shape",
        dir: Direction::Egress,
        port: PORT_SHAPE,
        verdict: PASS,
    },
];

/// A 64-byte IPv4 UDP frame whose local port is `port`: the destination on ingress, the source
/// on egress (offsets: 14 Ethernet + 20 IPv4, then source and destination port).
fn frame(dir: Direction, port: u16) -> Vec<u8> {
    let mut frame = packets::ipv4_udp_64(port);
    if let Direction::Egress = dir {
        let (src, dst) = (34..36, 36..38);
        let (s, d) = (frame[src.clone()].to_vec(), frame[dst.clone()].to_vec());
        frame[src].copy_from_slice(&d);
        frame[dst].copy_from_slice(&s);
    }
    frame
}

/// Kernel ns/packet of each variant, measured inside the current thread's namespace.
fn measure(reps: usize, repeat: u32) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut classifier = Classifier::load(1).context("loading the shaper")?;
    classifier.register("lo")?;
    let dir = TempDir::new("per-packet-shape")?;
    let mut limits = Limits::start(&mut classifier, Vec::new(), &dir.path().join("state.json"))?;
    // The fastest rate the shaper takes: the class never holds a packet back, and the program
    // takes its full shape path (lookup, class in skb->priority or redirect, counters).
    limits.set(
        &mut classifier,
        RuleSpec {
            key: RuleKey::local(PortRange::single(PORT_SHAPE)),
            rate_bps: MAX_RATE_BPS,
            burst_bytes: Some(MAX_BURST_BYTES),
            action: Action::Shape,
            ecn: false,
            per_remote: false,
            queue_bytes: None,
        },
        super::per_packet::bench_actor(),
    )?;
    let indices: Vec<usize> = (0..VARIANTS.len()).collect();
    let samples = alternate(reps, &indices, |&i| {
        let v = &VARIANTS[i];
        let program = classifier.program_mut(v.dir)?;
        let (verdict, kernel, _) = test_run(program, &frame(v.dir, v.port), repeat)?;
        if verdict != v.verdict {
            bail!(
                "shape/{}: verdict {verdict}, expected {}",
                v.name,
                v.verdict
            );
        }
        Ok(kernel)
    })?;
    drop(limits);
    Ok(samples)
}

/// Kernel ns/packet of the egress program for an unlimited port and a pace rule's port,
/// alternated. The rate is the largest a rule may have, so 64 bytes take under a nanosecond
/// and the clock never runs ahead: every packet takes the scheduling path (a read and a
/// compare-and-swap of the clock, the stamp) and passes.
fn measure_pace(reps: usize, repeat: u32) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut classifier = Classifier::load(1).context("loading the shaper")?;
    classifier.register("lo")?;
    let limit = Limit {
        rate_bps: MAX_RATE_BPS,
        burst_bytes: 0,
        action: Action::Pace,
        ecn: false,
        per_remote: false,
        queue_bytes: 1 << 20,
    };
    let mut table = RuleTable::new();
    let key = RuleKey {
        dir: shaper::policy::rule_table::DirSel::Egress,
        ..RuleKey::local(PortRange::single(PORT_PACE))
    };
    let SetOutcome::Added(id) = table.set(key, limit)? else {
        bail!("a new table replaced a rule");
    };
    classifier.write_rule(id, &limit.config(), true)?;
    classifier.paint_rule_index(&table.resolve(&classifier.interface_names()));
    alternate(reps, &[PORT_FREE, PORT_PACE], |&port| {
        let program = classifier.program_mut(Direction::Egress)?;
        let (verdict, kernel, _) = test_run(program, &frame(Direction::Egress, port), repeat)?;
        if verdict != PASS {
            bail!("pace/{port}: verdict {verdict}, expected {PASS}");
        }
        Ok(kernel)
    })
}

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let ns = Namespace::create("shb-pps")?;
    let (reps, repeat) = (cx.plan.test_run_reps, cx.plan.test_run_repeat);
    let samples = ns.enter(|| measure(reps, repeat))??;
    let paced = ns.enter(|| measure_pace(reps, repeat))??;
    cx.add(
        Figure::new(
            "per_packet",
            "ipv4_udp_64B/egress_pace",
            "ns/packet",
            paced[1].clone(),
        )?
        .detail("repeat", repeat)
        .ratio_to("ipv4_udp_64B/egress_unlimited (pace's run)", &paced[0]),
    );
    for (i, v) in VARIANTS.iter().enumerate() {
        let mut figure = Figure::new(
            "per_packet",
            format!("ipv4_udp_64B/{}", v.name),
            "ns/packet",
            samples[i].clone(),
        )?
        .detail("repeat", repeat);
        if v.port == PORT_SHAPE {
            let base = i - 1;
            figure = figure.ratio_to(
                &format!("ipv4_udp_64B/{}", VARIANTS[base].name),
                &samples[base],
            );
        }
        cx.add(figure);
    }
    cx.note(
        "per_packet: the shape rule's figures (ipv4_udp_64B/{ingress,egress}_{unlimited,shape}) \
         come from a second shaper loaded in a throwaway namespace, whose lo takes the HTB root \
         and IFB device a shape rule needs; ratios are to the unlimited port in the same \
         direction. ipv4_udp_64B/egress_pace: a pace rule at the largest rate on a third \
         shaper whose maps get the rule directly (BPF_PROG_TEST_RUN never reaches the fq root \
         the daemon would install, which this kernel lacks), beside an unlimited port of the \
         same run",
    );
    Ok(())
}
