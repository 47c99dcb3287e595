//! Repetitions, summarised: median, min and max, with the samples kept for the report.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    /// The median of an even count is the mean of the middle two. `None` for no samples.
    pub fn of(samples: Vec<f64>) -> Option<Self> {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples,
        })
    }
}

/// The nearest-rank `q` quantile of `samples` (`q` in [0, 1]); 0 for none.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per-repetition ratios of `values` to `baseline` (paired by repetition: variants alternate,
/// so sample `i` of each was taken side by side and shares that moment's noise).
pub fn paired_ratios(values: &[f64], baseline: &[f64]) -> Vec<f64> {
    values
        .iter()
        .zip(baseline)
        .filter(|(_, b)| **b != 0.0)
        .map(|(v, b)| v / b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn median_of_odd_and_even_counts_and_extremes() {
        let s = Summary::of(vec![5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(s.samples, vec![5.0, 1.0, 3.0], "samples keep their order");
        let s = Summary::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Summary::of(Vec::new()).is_none());
    }

    #[test]
    fn ratios_pair_samples_by_repetition_and_skip_zero_baselines() {
        assert_eq!(
            paired_ratios(&[2.0, 9.0, 4.0], &[1.0, 3.0, 0.0]),
            vec![2.0, 3.0]
        );
    }
}
