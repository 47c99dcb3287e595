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
//!
//! What a selector remembers between scrapes ([`Memory`]: the ports shown and their counters at
//! the last scrape, and the offsets) is all the next scrape needs, so a selector resumed from a
//! saved memory continues exactly as the one that saved it would have (`saved_selection.rs`
//! keeps it across daemon restarts).

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

/// The `other` offset of a group: what was added or taken away as ports moved in and out. It can
/// be negative (a demoted port takes away the traffic its own series counted), hence `i128`.
pub type Offset = [i128; 6];

/// What a selector remembers from one scrape to the next, in a form to save and resume from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The ports shown at the last scrape, with their counters then, sorted.
    pub shown: Vec<(PortKey, Totals)>,
    /// The offsets, sorted; a group whose offset is zero is left out (the same as none).
    pub offsets: Vec<(Group, Offset)>,
}

/// Remembers which ports were shown, and the `other` offsets, from scrape to scrape.
#[derive(Debug, Default)]
pub struct Selector {
    /// The ports shown at the last scrape, with their counters then.
    shown: HashMap<PortKey, Totals>,
    offsets: HashMap<Group, Offset>,
    started: bool,
    /// Counts the scrapes that changed what the selector remembers: one that saves the memory
    /// need not save it again until this moves.
    revision: u64,
}

impl Selector {
    /// A selector that continues from `memory`, as if it had made the scrape that left it.
    pub fn resume(memory: Memory) -> Self {
        Self {
            shown: memory.shown.into_iter().collect(),
            offsets: memory.offsets.into_iter().collect(),
            started: true,
            revision: 0,
        }
    }

    /// What the selector remembers now; `None` before its first scrape (there is nothing to
    /// continue from: a new selector starts `other` afresh anyway).
    pub fn memory(&self) -> Option<Memory> {
        if !self.started {
            return None;
        }
        let mut shown: Vec<(PortKey, Totals)> = self.shown.iter().map(|(k, t)| (*k, *t)).collect();
        shown.sort_unstable_by_key(|(key, _)| *key);
        let mut offsets: Vec<(Group, Offset)> = self
            .offsets
            .iter()
            .filter(|(_, offset)| **offset != [0; 6])
            .map(|(g, o)| (*g, *o))
            .collect();
        offsets.sort_unstable_by_key(|(group, _)| *group);
        Some(Memory { shown, offsets })
    }

    /// Moves on every scrape that changes [`memory`](Self::memory).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether a port shown at the last scrape is now missing from `active`, or has a counter
    /// lower than it had then: counters that went back mean the datapath under the selector
    /// started afresh, and so must `other`.
    pub fn counters_went_back(&self, active: &[(PortKey, Totals)]) -> bool {
        let mut found = 0;
        for (key, now) in active {
            if let Some(then) = self.shown.get(key) {
                if now.iter().zip(then).any(|(now, then)| now < then) {
                    return true;
                }
                found += 1;
            }
        }
        found < self.shown.len()
    }

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
        // The offsets move only when the shown ports do, so this covers them too.
        if !self.started || now_shown != self.shown {
            self.revision += 1;
        }
        for (key, totals) in &shown {
            if self.started && !self.shown.contains_key(key) {
                self.shift(key.group(), totals, 1);
            }
        }
        let mut sums: HashMap<Group, Offset> = HashMap::new();
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

    /// Deterministic pseudo-random traffic over 40 ports: each port's bytes at each scrape.
    fn churn(scrapes: usize) -> Vec<[u64; 40]> {
        let mut counters = [0u64; 40];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..scrapes)
            .map(|_| {
                for counter in counters.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *counter += state % 1_000;
                }
                counters
            })
            .collect()
    }

    #[test]
    fn churn_never_makes_any_series_fall() {
        // Top 5 of 40 ports, 200 scrapes.
        let mut selector = Selector::default();
        let mut last_other = 0u64;
        let mut last_shown: HashMap<u16, u64> = HashMap::new();
        let mut changes = 0;
        let mut previous: Vec<u16> = Vec::new();
        // The model: between scrapes a port's traffic goes to other unless the port is shown at
        // both.
        let mut expected_other = 0u64;
        let mut previous_counters = [0u64; 40];
        let mut previous_shown: Vec<usize> = Vec::new();
        for (scrape, counters) in churn(200).into_iter().enumerate() {
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
                changes += 1;
            }
            previous = now;
        }
        assert!(
            changes > 10,
            "the test must actually move ports around ({changes})"
        );
    }

    #[test]
    fn a_resumed_selector_continues_exactly_as_if_it_had_never_stopped() {
        // Two groups (ingress and egress), so offsets of several groups are carried over.
        let active = |counters: &[u64; 40]| -> Vec<(PortKey, Totals)> {
            counters
                .iter()
                .enumerate()
                .map(|(port, &b)| {
                    let key = PortKey {
                        direction: port as u32 % 2,
                        ..key(port as u16)
                    };
                    (key, bytes(b))
                })
                .collect()
        };
        let pinned = |k: &PortKey| k.port == 7;
        let scrapes = churn(200);
        let mut uninterrupted = Selector::default();
        let expected: Vec<Selection> = scrapes
            .iter()
            .map(|counters| uninterrupted.select(active(counters), pinned, 5))
            .collect();
        // Every series at every scrape equals the uninterrupted run's, which never falls
        // (`churn_never_makes_any_series_fall`): so nothing falls across the restart either.
        for stop in 1..scrapes.len() {
            let mut first = Selector::default();
            for counters in &scrapes[..stop] {
                first.select(active(counters), pinned, 5);
            }
            let memory = first.memory().expect("it has scraped");
            drop(first);
            let mut resumed = Selector::resume(memory);
            assert!(!resumed.counters_went_back(&active(&scrapes[stop])));
            for (scrape, counters) in scrapes.iter().enumerate().skip(stop) {
                let selection = resumed.select(active(counters), pinned, 5);
                assert_eq!(
                    selection, expected[scrape],
                    "stopped after {stop} scrapes; scrape {scrape} differs"
                );
            }
        }
        let offsets = uninterrupted.memory().expect("scraped").offsets;
        assert_eq!(offsets.len(), 2, "both groups have an offset: {offsets:?}");
    }

    #[test]
    fn memory_and_revision_follow_the_shown_ports() {
        let mut selector = Selector::default();
        assert_eq!(selector.memory(), None);
        let active = |a: u64, b: u64| vec![(key(80), bytes(a)), (key(81), bytes(b))];
        selector.select(active(1_000, 500), |_| false, 1);
        let first = selector.revision();
        let memory = selector.memory().expect("scraped");
        assert_eq!(memory.shown, [(key(80), bytes(1_000))]);
        assert!(memory.offsets.is_empty(), "no port moved yet");
        // Nothing moved: nothing new to remember.
        selector.select(active(1_000, 500), |_| false, 1);
        assert_eq!(selector.revision(), first);
        // 80's counters moved: its memory did too.
        selector.select(active(1_100, 500), |_| false, 1);
        assert!(selector.revision() > first);
        let second = selector.revision();
        // 81 overtakes 80: promoted at 2,000 bytes, demoted at its 1,100 of the last scrape.
        selector.select(active(1_100, 2_000), |_| false, 1);
        assert!(selector.revision() > second);
        let memory = selector.memory().expect("scraped");
        assert_eq!(memory.shown, [(key(81), bytes(2_000))]);
        let offset = memory.offsets[0].1;
        assert_eq!(offset[1], 2_000 - 1_100);
    }

    #[test]
    fn counters_below_the_remembered_ones_are_noticed() {
        let mut selector = Selector::default();
        selector.select(vec![(key(80), bytes(1_000))], |_| false, 1);
        let resumed = Selector::resume(selector.memory().expect("scraped"));
        assert!(!resumed.counters_went_back(&[(key(80), bytes(1_000))]));
        assert!(!resumed.counters_went_back(&[(key(80), bytes(5_000)), (key(81), bytes(1))]));
        assert!(resumed.counters_went_back(&[(key(80), bytes(999))]));
        // Not active at all: its counter is zero.
        assert!(resumed.counters_went_back(&[(key(81), bytes(1_000))]));
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
