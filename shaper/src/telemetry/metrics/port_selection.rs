//! Which ports get a series of their own, and the `port="other"` series that sums the rest.
//!
//! A port gets its own series when it is *pinned* (a single-port rule names it, or a socket
//! listens on it) or when it is among the `top` other ports by bytes; every other port's traffic
//! is summed into one `other` series per (interface, direction, protocol). That bounds the
//! series count by design.
//!
//! Both kinds must stay monotonic while ports move between them, and no traffic may be lost or
//! counted twice. A port's own series is its kernel counter, which only grows; `other` is the
//! sum over the ports not shown plus an offset per group that moves with them. Between two
//! scrapes each port's traffic lands in exactly one series' increase: its own when it is shown
//! at both, otherwise `other` — a newly shown port's series starts at its whole counter (a new
//! series has no earlier sample for `rate()` to take an increase from), and a port no longer
//! shown has no sample at the second scrape. So promoting a port adds its counters at that
//! scrape to the offset, and demoting one subtracts its counters as of the previous scrape.
//! Hence `sum(rate(...))` over all of a family's series is the true total, and `other` grows
//! only by traffic. At the first scrape there is no earlier one: `other` starts as the sum of
//! the ports not shown.

use std::collections::HashMap;

use crate::datapath::mapped_arrays::PortReading;

/// One port's counters, as (interface slot, direction index, protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub slot: u32,
    pub direction: u32,
    pub proto: u32,
    pub port: u16,
}

impl PortKey {
    fn group(self) -> Group {
        Group {
            slot: self.slot,
            direction: self.direction,
            proto: self.proto,
        }
    }
}

/// The ports of one interface, direction and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    pub slot: u32,
    pub direction: u32,
    pub proto: u32,
}

/// The six counters of a port or of `other`: packets and bytes seen, dropped, would-drop.
pub type Totals = [u64; 6];

pub fn totals(reading: &PortReading) -> Totals {
    [
        reading.seen.packets,
        reading.seen.bytes,
        reading.dropped.packets,
        reading.dropped.bytes,
        reading.would_drop.packets,
        reading.would_drop.bytes,
    ]
}

/// The result of one scrape's selection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Ports with a series of their own, sorted.
    pub shown: Vec<(PortKey, Totals)>,
    /// `other` per group, sorted; only groups whose `other` has counted anything.
    pub other: Vec<(Group, Totals)>,
}

/// Remembers which ports were shown, and the `other` offsets, from scrape to scrape.
#[derive(Debug, Default)]
pub struct Selector {
    /// The ports shown at the last scrape, with their counters then.
    shown: HashMap<PortKey, Totals>,
    offsets: HashMap<Group, [i128; 6]>,
    started: bool,
}

impl Selector {
    /// Selects the series for one scrape. `active` holds every port that has seen a packet (each
    /// once), `pinned` says which ports always get a series, and `top` is how many of the rest,
    /// by bytes, get one too.
    pub fn select(
        &mut self,
        active: Vec<(PortKey, Totals)>,
        pinned: impl Fn(&PortKey) -> bool,
        top: usize,
    ) -> Selection {
        let (pinned_ports, mut others): (Vec<_>, Vec<_>) =
            active.into_iter().partition(|(key, _)| pinned(key));
        // Most bytes first; equal bytes in key order, so the choice is stable between scrapes.
        let by_bytes_desc =
            |a: &(PortKey, Totals), b: &(PortKey, Totals)| b.1[1].cmp(&a.1[1]).then(a.0.cmp(&b.0));
        if others.len() > top {
            // Linear-time partition; only the winners are sorted.
            others.select_nth_unstable_by(top, by_bytes_desc);
        }
        let rest = others.split_off(top.min(others.len()));

        let mut shown = pinned_ports;
        shown.extend(others);
        shown.sort_unstable_by_key(|(key, _)| *key);

        let now_shown: HashMap<PortKey, Totals> = shown.iter().copied().collect();
        for (key, totals) in &shown {
            if self.started && !self.shown.contains_key(key) {
                self.shift(key.group(), totals, 1);
            }
        }
        let mut sums: HashMap<Group, [i128; 6]> = HashMap::new();
        for (key, totals) in &rest {
            if let Some(then) = self.shown.get(key).copied() {
                self.shift(key.group(), &then, -1);
            }
            let sum = sums.entry(key.group()).or_default();
            for (s, &t) in sum.iter_mut().zip(totals) {
                *s += i128::from(t);
            }
        }
        self.shown = now_shown;
        self.started = true;

        let mut groups: Vec<Group> = self.offsets.keys().chain(sums.keys()).copied().collect();
        groups.sort_unstable();
        groups.dedup();
        let other = groups
            .into_iter()
            .filter_map(|group| {
                let offset = self.offsets.get(&group).copied().unwrap_or_default();
                let sum = sums.get(&group).copied().unwrap_or_default();
                let mut totals = [0u64; 6];
                for (i, total) in totals.iter_mut().enumerate() {
                    // Never negative: it is a sum of traffic.
                    *total = u64::try_from(sum[i] + offset[i]).unwrap_or(0);
                }
                (totals != [0; 6]).then_some((group, totals))
            })
            .collect();
        Selection { shown, other }
    }

    fn shift(&mut self, group: Group, totals: &Totals, sign: i128) {
        let offset = self.offsets.entry(group).or_default();
        for (o, &t) in offset.iter_mut().zip(totals) {
            *o += sign * i128::from(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> PortKey {
        PortKey {
            slot: 0,
            direction: 0,
            proto: 0,
            port,
        }
    }

    fn bytes(b: u64) -> Totals {
        [b / 100, b, 0, 0, 0, 0]
    }

    fn shown_ports(selection: &Selection) -> Vec<u16> {
        selection.shown.iter().map(|(k, _)| k.port).collect()
    }

    fn other_bytes(selection: &Selection) -> u64 {
        selection.other.first().map_or(0, |(_, t)| t[1])
    }

    #[test]
    fn pinned_and_top_ports_are_shown_and_the_rest_summed() {
        let mut selector = Selector::default();
        let active = vec![
            (key(22), bytes(100)),
            (key(80), bytes(9_000)),
            (key(81), bytes(8_000)),
            (key(82), bytes(700)),
            (key(83), bytes(600)),
        ];
        let selection = selector.select(active, |k| k.port == 22, 2);
        assert_eq!(shown_ports(&selection), [22, 80, 81]);
        assert_eq!(other_bytes(&selection), 1_300);
        assert_eq!(selection.other[0].1[0], 13);
    }

    #[test]
    fn nothing_left_over_means_no_other_series() {
        let mut selector = Selector::default();
        let selection = selector.select(vec![(key(80), bytes(10))], |_| false, 5);
        assert_eq!(shown_ports(&selection), [80]);
        assert!(selection.other.is_empty());
    }

    #[test]
    fn other_stays_monotonic_when_ports_change_places() {
        let mut selector = Selector::default();
        // Scrape 1: 80 is top, 81 in other.
        let s1 = selector.select(
            vec![(key(80), bytes(1_000)), (key(81), bytes(500))],
            |_| false,
            1,
        );
        assert_eq!(shown_ports(&s1), [80]);
        assert_eq!(other_bytes(&s1), 500);
        // Scrape 2: 81 overtakes 80 (81 +1000, 80 +100): 81 promoted, 80 demoted. Both
        // changed places, so both increases go to other: 81's series starts at 1500 and 80's
        // has no sample now.
        let s2 = selector.select(
            vec![(key(80), bytes(1_100)), (key(81), bytes(1_500))],
            |_| false,
            1,
        );
        assert_eq!(shown_ports(&s2), [81]);
        assert_eq!(other_bytes(&s2), 1_600);
        // Scrape 3: 80 sends 50 more while in other.
        let s3 = selector.select(
            vec![(key(80), bytes(1_150)), (key(81), bytes(1_600))],
            |_| false,
            1,
        );
        assert_eq!(other_bytes(&s3), 1_650);
        // Scrape 4: 80 becomes pinned (a rule names it): back to its own series; its 50 since
        // scrape 3 still land in other.
        let s4 = selector.select(
            vec![(key(80), bytes(1_200)), (key(81), bytes(1_700))],
            |k| k.port == 80,
            1,
        );
        assert_eq!(shown_ports(&s4), [80, 81]);
        assert_eq!(other_bytes(&s4), 1_700);
    }

    #[test]
    fn churn_never_makes_any_series_fall() {
        // Deterministic pseudo-random traffic over 40 ports, top 5, 200 scrapes.
        let mut selector = Selector::default();
        let mut counters = [0u64; 40];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut last_other = 0u64;
        let mut last_shown: HashMap<u16, u64> = HashMap::new();
        let mut churn = 0;
        let mut previous: Vec<u16> = Vec::new();
        // The model: between scrapes a port's traffic goes to other unless the port is shown at
        // both.
        let mut expected_other = 0u64;
        let mut previous_counters = counters;
        let mut previous_shown: Vec<usize> = Vec::new();
        for scrape in 0..200 {
            for counter in counters.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *counter += state % 1_000;
            }
            let active = counters
                .iter()
                .enumerate()
                .map(|(port, &b)| (key(port as u16), bytes(b)))
                .collect();
            let selection = selector.select(active, |k| k.port == 7, 5);
            let shown: Vec<usize> = selection
                .shown
                .iter()
                .map(|(k, _)| usize::from(k.port))
                .collect();
            if scrape == 0 {
                expected_other = (0..counters.len())
                    .filter(|p| !shown.contains(p))
                    .map(|p| counters[p])
                    .sum();
            } else {
                expected_other += (0..counters.len())
                    .filter(|p| !(shown.contains(p) && previous_shown.contains(p)))
                    .map(|p| counters[p] - previous_counters[p])
                    .sum::<u64>();
            }
            previous_shown = shown;
            previous_counters = counters;
            let other = other_bytes(&selection);
            assert_eq!(other, expected_other, "scrape {scrape}");
            assert!(other >= last_other, "other fell: {last_other} -> {other}");
            last_other = other;
            for (k, t) in &selection.shown {
                let before = last_shown.insert(k.port, t[1]).unwrap_or(0);
                assert!(t[1] >= before);
            }
            let now = shown_ports(&selection);
            assert_eq!(now.len(), 6);
            if now != previous {
                churn += 1;
            }
            previous = now;
        }
        assert!(
            churn > 10,
            "the test must actually move ports around ({churn})"
        );
    }

    #[test]
    fn groups_are_kept_apart() {
        let mut selector = Selector::default();
        let egress = PortKey {
            direction: 1,
            ..key(80)
        };
        let selection = selector.select(
            vec![(key(80), bytes(10)), (egress, bytes(20))],
            |_| false,
            0,
        );
        assert_eq!(selection.other.len(), 2);
        assert_eq!(selection.other[0].1[1], 10);
        assert_eq!(selection.other[1].1[1], 20);
    }
}
