//! 2. Contention: two runners pinned to two different CPUs (the first two this process may run
//!    on) test-run the same frame through the same rule at the same moment (sharing its bucket
//!    and counters), against one runner alone.

use std::sync::Barrier;

use anyhow::{Context as _, bail};
use aya::programs::SchedClassifier;

use super::{
    Context, alternate,
    per_packet::{PASS, PORT_FREE, PORT_PASS, Subject, test_run},
};
use shaper_testbed::cpus;

use crate::{packets, report::Figure};

/// Runs `frame` on each of `cpus` at once (one pinned runner each); ns per packet of each
/// runner.
fn runners(
    program: &SchedClassifier,
    frame: &[u8],
    repeat: u32,
    cpus: &[usize],
) -> anyhow::Result<Vec<f64>> {
    let start = Barrier::new(cpus.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let start = &start;
                scope.spawn(move || -> anyhow::Result<f64> {
                    cpus::pin_current_thread(cpu)
                        .with_context(|| format!("pinning a runner to CPU {cpu}"))?;
                    start.wait();
                    let (verdict, ns, _) = test_run(program, frame, repeat)?;
                    if verdict != PASS {
                        bail!("runner on CPU {cpu}: verdict {verdict}, expected pass");
                    }
                    Ok(ns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("runner panicked"))?)
            .collect()
    })
}

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let allowed = cpus::allowed().context("reading this process's CPU affinity")?;
    let [first, second, ..] = allowed[..] else {
        cx.not_measured.push(crate::report::NotMeasured {
            scenario: "contention".into(),
            name: "all".into(),
            reason: format!("needs two CPUs, this process may run on {allowed:?} only"),
        });
        return Ok(());
    };
    let mut subject = Subject::load()?;
    let program = subject.program()?;
    let repeat = cx.plan.test_run_repeat;
    // The limited path is the one with shared state worth contending for (bucket
    // compare-and-swaps); the unlimited path, shared counters only, is shown alongside.
    for (path, port, target) in [
        ("limited_pass", PORT_PASS, true),
        ("unlimited", PORT_FREE, false),
    ] {
        let frame = packets::ipv4_udp_64(port);
        let mut per_runner: Vec<Vec<f64>> = Vec::new();
        let samples = alternate(cx.plan.test_run_reps, &[1usize, 2], |&count| {
            let ns = runners(program, &frame, repeat, &[first, second][..count])?;
            if count == 2 {
                per_runner.push(ns.clone());
            }
            Ok(ns.iter().sum::<f64>() / ns.len() as f64)
        })?;
        let one = format!("{path}/one_cpu");
        cx.add(Figure::new(
            "contention",
            &one,
            "ns/packet",
            samples[0].clone(),
        )?);
        let mut two = Figure::new(
            "contention",
            format!("{path}/two_cpus_same_rule"),
            "ns/packet",
            samples[1].clone(),
        )?
        .ratio_to(&one, &samples[0])
        .detail("per_runner_ns", &per_runner)
        .detail("repeat_per_runner", repeat);
        if target {
            two = two.target("< 2x one CPU", true, None, Some(2.0));
        }
        cx.add(two);
    }
    cx.note("contention: 64-byte IPv4 UDP; the two-CPU figure is the mean of the two runners' ns/packet");
    Ok(())
}
