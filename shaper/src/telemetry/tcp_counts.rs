//! TCP connection counters of one port as `shaper stats --json` and `shaper top` carry them,
//! and the round-trip quantiles `top` computes from two of them.

use serde::{Deserialize, Serialize};
use shaper_common::{RTT_FINITE_BUCKETS, rtt_bucket_bound_ns};

pub use crate::datapath::tcp_telemetry::TcpCounts;

/// A TCP row's connection rates over one `shaper top` interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpRates {
    /// Handshakes completed with this port as the server (SYN-ACKs), per second.
    pub new_connections_per_second: f64,
    /// Segments with RST, per second.
    pub resets_per_second: f64,
    /// Handshake round-trip quantiles of the interval's samples (bucket upper bounds), if any.
    pub handshake_rtt_p50_seconds: Option<f64>,
    pub handshake_rtt_p99_seconds: Option<f64>,
}

impl TcpRates {
    /// The rates between two readings; `per_second` turns a counter delta into a rate. A reading
    /// absent before, or larger before (a datapath made anew), counts from zero.
    pub fn between(
        before: Option<&TcpCounts>,
        after: &TcpCounts,
        per_second: impl Fn(u64) -> f64,
    ) -> Self {
        let before = before
            .filter(|b| b.synack <= after.synack && b.rst <= after.rst)
            .cloned()
            .unwrap_or_default();
        Self {
            new_connections_per_second: per_second(after.synack - before.synack),
            resets_per_second: per_second(after.rst - before.rst),
            handshake_rtt_p50_seconds: rtt_quantile(&before.rtt_buckets, &after.rtt_buckets, 0.5),
            handshake_rtt_p99_seconds: rtt_quantile(&before.rtt_buckets, &after.rtt_buckets, 0.99),
        }
    }
}

/// The `q` quantile (0 to 1) of the samples added between two readings of the bucket counts,
/// in seconds: the upper bound of the bucket it falls in, as Prometheus' `histogram_quantile`
/// without its interpolation. `None` with no new sample, or when it lies beyond the last bound.
pub fn rtt_quantile(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
    let delta: Vec<u64> = after
        .iter()
        .enumerate()
        .map(|(i, &now)| now.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect();
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in delta.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return (i < RTT_FINITE_BUCKETS).then(|| rtt_bucket_bound_ns(i) as f64 / 1e9);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_the_bounds_of_the_buckets_the_new_samples_fill() {
        let before = vec![5, 0, 0, 0];
        // 99 new samples in bucket 0 (<= 65.536 µs), 1 in bucket 3 (<= 524.288 µs).
        let after = vec![104, 0, 0, 1];
        assert_eq!(rtt_quantile(&before, &after, 0.5), Some(0.000065536));
        assert_eq!(rtt_quantile(&before, &after, 0.99), Some(0.000065536));
        assert_eq!(rtt_quantile(&before, &after, 1.0), Some(0.000524288));
        assert_eq!(rtt_quantile(&after, &after, 0.5), None);
    }
}
