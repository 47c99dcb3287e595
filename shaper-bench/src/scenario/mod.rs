//! The five scenarios of issue 5. Each alternates its variants (A B A B ...) over the plan's
//! repetitions, so slow drifts of a busy machine hit every variant alike, and adds figures to
//! the report.

pub mod accuracy;
pub mod contention;
pub mod control;
pub mod path;
pub mod per_packet;
pub mod per_packet_shape;
pub mod rtt;
pub mod shaping;

use std::{path::PathBuf, time::Duration};

use crate::report::{Figure, NotMeasured};

/// How long and how often: the full plan, or `--quick`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Repetitions of every variant (at least 5).
    pub reps: usize,
    /// Repetitions of the per-packet and contention scenarios, which are cheap.
    pub test_run_reps: usize,
    /// BPF_PROG_TEST_RUN `repeat`.
    pub test_run_repeat: u32,
    /// iperf3 run length of the path scenario, seconds.
    pub path_secs: u32,
    /// Rates of the accuracy scenario, bytes per second.
    pub accuracy_rates: Vec<u64>,
    /// Accuracy runs: the start of each run that is not measured, then the measured window.
    /// TCP needs seconds: a new connection first overruns the full bucket and waits out
    /// retransmission timeouts (200 ms, then backed off). A window of T seconds reads up to
    /// burst/(rate × T) above the rate (a bucket full at its start, empty at its end): about
    /// 10% with the default burst in the full plan's 3 s, 30% in `--quick`'s 1 s.
    pub udp_warmup: Duration,
    pub udp_window: Duration,
    pub tcp_warmup: Duration,
    pub tcp_window: Duration,
    /// The shaping scenario: rates (bytes per second), TCP stream counts, whether UDP at twice
    /// the rate and the policer + ECN run too, and each run's unmeasured start and window.
    pub shaping_rates: Vec<u64>,
    pub shaping_streams: Vec<usize>,
    pub shaping_all_limiters: bool,
    pub shaping_reps: usize,
    pub shaping_warmup: Duration,
    pub shaping_window: Duration,
    /// The round-trip scenario (see [`rtt::cells`] for its cells): repetitions, and each run's
    /// unmeasured start (slow start at 80 ms takes about half a second) and window.
    pub rtt_reps: usize,
    pub rtt_warmup: Duration,
    pub rtt_window: Duration,
    /// Only the rtt runs whose names contain one of these (empty: all).
    pub rtt_filter: Vec<String>,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                reps: 5,
                test_run_reps: 5,
                test_run_repeat: 1_000_000,
                path_secs: 1,
                accuracy_rates: vec![10_000_000],
                udp_warmup: Duration::from_millis(400),
                udp_window: Duration::from_millis(800),
                tcp_warmup: Duration::from_millis(1500),
                tcp_window: Duration::from_secs(1),
                shaping_rates: vec![10_000_000],
                shaping_streams: vec![1],
                shaping_all_limiters: false,
                shaping_reps: 1,
                shaping_warmup: Duration::from_secs(1),
                shaping_window: Duration::from_secs(2),
                rtt_reps: 1,
                rtt_warmup: Duration::from_secs(2),
                rtt_window: Duration::from_secs(4),
                rtt_filter: Vec::new(),
            }
        } else {
            Self {
                quick,
                reps: 5,
                test_run_reps: 11,
                test_run_repeat: 1_000_000,
                path_secs: 2,
                accuracy_rates: vec![1_000_000, 10_000_000, 100_000_000],
                // nftables' bucket starts with a second of rate: at 100 MB/s one sender offers
                // only about twice the rate, so that second takes about a second to spend.
                udp_warmup: Duration::from_millis(1500),
                udp_window: Duration::from_millis(1500),
                tcp_warmup: Duration::from_secs(2),
                tcp_window: Duration::from_secs(3),
                // 52 runs a repetition: two repetitions keep the scenario near 8 minutes.
                shaping_rates: vec![10_000_000, 100_000_000],
                shaping_streams: vec![1, 4],
                shaping_all_limiters: true,
                shaping_reps: 2,
                shaping_warmup: Duration::from_millis(1500),
                shaping_window: Duration::from_millis(2500),
                // 156 runs a repetition, about 22 minutes in the VM.
                rtt_reps: 2,
                rtt_warmup: Duration::from_secs(2),
                rtt_window: Duration::from_secs(6),
                rtt_filter: Vec::new(),
            }
        }
    }
}

/// What a scenario gets: the plan, the release `shaper` binary, and where its results go.
pub struct Context {
    pub plan: Plan,
    pub shaper: PathBuf,
    /// The previous release's eBPF object and its commit, if given.
    pub previous: Option<(PathBuf, String)>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    pub not_measured: Vec<NotMeasured>,
}

impl Context {
    pub fn add(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

/// Runs `variants` in turn, `reps` times (A B C A B C ...); returns each variant's samples.
pub fn alternate<V>(
    reps: usize,
    variants: &[V],
    mut measure: impl FnMut(&V) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::with_capacity(reps); variants.len()];
    for _ in 0..reps {
        for (variant, out) in variants.iter().zip(&mut samples) {
            crate::sys::check_interrupt()?;
            out.push(measure(variant)?);
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_alternate_within_each_repetition() {
        let mut order = Vec::new();
        let samples = alternate(3, &['a', 'b'], |v| {
            order.push(*v);
            Ok(order.len() as f64)
        })
        .unwrap();
        assert_eq!(order, ['a', 'b', 'a', 'b', 'a', 'b']);
        assert_eq!(samples, vec![vec![1.0, 3.0, 5.0], vec![2.0, 4.0, 6.0]]);
    }

    #[test]
    fn every_plan_repeats_each_variant_at_least_five_times() {
        for quick in [true, false] {
            let plan = Plan::new(quick);
            assert!(plan.reps >= 5 && plan.test_run_reps >= 5);
            assert!(plan.test_run_repeat >= 1_000_000);
        }
        assert_eq!(Plan::new(false).accuracy_rates.len(), 3);
    }
}
