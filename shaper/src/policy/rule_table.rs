//! Limit rules as the operator names them, and how overlapping rules resolve into the rule index
//! the classifier reads. Pure logic: nothing here touches the kernel.
//!
//! # Precedence
//! A packet is governed by at most one rule. The rule on its local port is looked up first; only
//! if there is none, the rule on its remote port (`--remote`). Among rules on the same side that
//! match a packet, the most specific wins, compared in this order:
//! 1. the narrower port range (a single port beats any range containing it);
//! 2. a rule for one interface beats a rule for all;
//! 3. a rule for one direction beats `both`;
//! 4. a rule for one protocol beats `any`;
//! 5. between equally wide overlapping ranges, the one starting at the lower port.
//!
//! A rule's identity is its key (ports, side, direction, protocol, interface): setting the same
//! key again replaces the limit in place, keeping the rule's id, bucket and counters.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
    fmt,
};

use serde::{Deserialize, Serialize};
use shaper_common::{MAX_RULES, NO_RULE, PORTS, RULE_INDEX_ROWS_PER_IFACE, bucket, rule_index_row};

use crate::policy::rates_and_sizes;

pub use crate::types::{
    keywords::{Action, DirSel, ProtoSel, Side, TraceVerdicts},
    ports::{PORT_FORMS, PortRange, PortRangeError, UNPLACED},
};

/// What identifies a rule: setting a rule with the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleKey {
    pub ports: PortRange,
    #[serde(default)]
    pub side: Side,
    #[serde(default)]
    pub dir: DirSel,
    #[serde(default)]
    pub proto: ProtoSel,
    /// One interface, or `None` for every interface the daemon is attached to.
    #[serde(default)]
    pub iface: Option<String>,
}

impl RuleKey {
    /// The key of a rule on local `ports` in both directions, for both protocols, on every
    /// interface: what `shaper limit set PORTS` means without options.
    pub fn local(ports: PortRange) -> Self {
        Self {
            ports,
            side: Side::Local,
            dir: DirSel::Both,
            proto: ProtoSel::Any,
            iface: None,
        }
    }

    /// The key of an `unplaced` rule: the packets of `dir` on `iface` (every interface if
    /// `None`) that no port could be found for.
    pub fn unplaced(dir: DirSel, iface: Option<String>) -> Self {
        Self {
            ports: PortRange::ALL,
            side: Side::Unplaced,
            dir,
            proto: ProtoSel::Any,
            iface,
        }
    }

    /// What the key names in place of its ports: `9090`, `8000-8099` or `unplaced`.
    pub fn target(&self) -> String {
        if self.side == Side::Unplaced {
            crate::types::ports::UNPLACED.to_owned()
        } else {
            self.ports.to_string()
        }
    }

    /// Orders keys by precedence: the rule that wins a port it shares with another sorts first.
    fn precedence(&self, other: &Self) -> Ordering {
        self.ports
            .width()
            .cmp(&other.ports.width())
            .then(other.iface.is_some().cmp(&self.iface.is_some()))
            .then((other.dir != DirSel::Both).cmp(&(self.dir != DirSel::Both)))
            .then((other.proto != ProtoSel::Any).cmp(&(self.proto != ProtoSel::Any)))
            .then(self.ports.lo.cmp(&other.ports.lo))
    }
}

impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.side == Side::Unplaced {
            return write!(
                f,
                "unplaced dir {} iface {}",
                self.dir,
                self.iface.as_deref().unwrap_or("all"),
            );
        }
        write!(
            f,
            "{} {}port{} dir {} proto {} iface {}",
            self.ports,
            if self.side == Side::Remote {
                "remote "
            } else {
                ""
            },
            if self.ports.width() > 0 { "s" } else { "" },
            self.dir,
            self.proto,
            self.iface.as_deref().unwrap_or("all"),
        )
    }
}

/// A rule as the operator asks for it (CLI, config file, control request): the burst is
/// optional and nothing is validated against the interfaces yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub key: RuleKey,
    pub rate_bps: u64,
    #[serde(default)]
    pub burst_bytes: Option<u64>,
    #[serde(default)]
    pub action: Action,
    /// `--ecn` (drop rules only): mark CE while the bucket holds less than half the burst.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ecn: bool,
    /// `--per-remote` (drop and observe rules): a bucket per remote address instead of one for
    /// the rule, so one sender cannot drain it for the others.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_remote: bool,
    /// `--queue` (shape rules only): the class's queue in bytes; `None` for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
}

/// A rule's limit, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub rate_bps: u64,
    pub burst_bytes: u64,
    pub action: Action,
    /// See [`RuleSpec::ecn`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ecn: bool,
    /// See [`RuleSpec::per_remote`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_remote: bool,
    /// A shape rule's queue in bytes (0 for other actions).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queue_bytes: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Limit {
    /// The classifier's view of this limit, on this kernel (whose tick decides
    /// [`RULE_FLAG_COARSE_CLOCK`](shaper_common::RULE_FLAG_COARSE_CLOCK)).
    pub fn config(&self) -> shaper_common::RuleConfig {
        self.config_with_tick(crate::datapath::ktime::tick_ns())
    }

    /// [`config`](Self::config) on a kernel whose tick is `tick_ns`.
    pub fn config_with_tick(&self, tick_ns: u64) -> shaper_common::RuleConfig {
        if self.action == Action::Pace {
            // No bucket: the clock in its place needs the precise time (a departure is set to
            // the nanosecond) and the horizon, which takes the fill time's field.
            return shaper_common::RuleConfig {
                rate_bps: self.rate_bps,
                burst_nanobits: 0,
                fill_ns: shaper_common::pace::horizon_ns(self.queue_bytes, self.rate_bps),
                action: self.action.code(),
                flags: 0,
            };
        }
        let burst_nanobits = self.burst_bytes * bucket::NANOBITS_PER_BYTE;
        let fill_ns = bucket::fill_ns(burst_nanobits, self.rate_bps);
        shaper_common::RuleConfig {
            rate_bps: self.rate_bps,
            burst_nanobits,
            fill_ns,
            action: self.action.code(),
            flags: if self.ecn {
                shaper_common::RULE_FLAG_ECN
            } else {
                0
            } | if self.per_remote {
                shaper_common::RULE_FLAG_PER_REMOTE
            } else {
                0
            } | if bucket::coarse_clock_suffices(fill_ns, tick_ns) {
                shaper_common::RULE_FLAG_COARSE_CLOCK
            } else {
                0
            },
        }
    }
}

/// How long the default burst lets the rate run ahead. A policer's drops can leave TCP waiting
/// for its retransmission timer (at least 200 ms, TCP_RTO_MIN) — and a locally generated
/// stream dropped on egress always waits for a timer, because the drop is reported to the
/// socket (NET_XMIT_DROP) instead of looking like loss. Tokens that arrive while the bucket is
/// full are lost, so a bucket holding less than that wait's worth of rate caps TCP well below
/// the rate: measured through a veth at 20 Mbit/s, 100 ms of burst gave 37% of the rate as
/// goodput on egress, 300 ms gave 96% (the most possible is 96.4%, the rest is headers).
pub const DEFAULT_BURST_MS: u64 = 300;

/// The smallest burst a rule may have where the largest aggregate the hooks see is `aggregate`
/// bytes: three times it. A GSO aggregate is charged its wire bytes, one set of headers per
/// segment, and a bucket smaller than that could never pass it (TCP would stall). The worst case
/// is the smallest MSS Linux sends, 48 bytes (net.ipv4.tcp_min_snd_mss): a 64 KiB aggregate is
/// then 1,366 segments, each with 86 bytes of Ethernet, IPv6 and TCP headers — 183 KB on the
/// wire, 2.8 times the aggregate.
pub fn min_burst(aggregate: u64) -> u64 {
    3 * aggregate
}

/// The burst used when none is given: `DEFAULT_BURST_MS` of the rate, at least [`min_burst`],
/// at most the largest burst a rule may have.
pub fn default_burst(rate_bps: u64, aggregate: u64) -> u64 {
    let of_rate = (rate_bps / 8).saturating_mul(DEFAULT_BURST_MS) / 1000;
    of_rate
        .max(min_burst(aggregate))
        .min(bucket::MAX_BURST_BYTES)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate: must be above zero")]
    RateZero,
    #[error("rate {value}: above the largest rate a rule may have, {max}")]
    RateTooHigh { value: String, max: String },
    #[error("burst {value}: above the largest burst a rule may have, {max}")]
    BurstTooLarge { value: String, max: String },
    #[error(
        "burst {value}: below the minimum {min} for this rule: the hooks can see aggregates \
         (GSO/GRO) of {aggregate} bytes{on}, charged with one set of headers per segment, and a \
         bucket smaller than three times that could never pass one; give a burst of {min} or \
         more, or none for the default"
    )]
    BurstTooSmall {
        value: String,
        min: String,
        aggregate: u64,
        on: String,
    },
    #[error("at most {} rules can exist at once", MAX_RULES - 1)]
    TooManyRules,
    #[error("interface '{iface}' is not one the daemon is attached to (attached: {attached})")]
    NotAttached { iface: String, attached: String },
}

/// Validates a rate and an optional burst into a [`Limit`]. `aggregate` is the largest
/// aggregate the rule's interfaces can see, `iface_note` names where it comes from.
pub fn make_limit(
    rate_bps: u64,
    burst_bytes: Option<u64>,
    action: Action,
    aggregate: u64,
    iface_note: &str,
) -> Result<Limit, LimitError> {
    if rate_bps == 0 {
        return Err(LimitError::RateZero);
    }
    if rate_bps > bucket::MAX_RATE_BPS {
        return Err(LimitError::RateTooHigh {
            value: rates_and_sizes::format_rate(rate_bps),
            max: rates_and_sizes::format_rate(bucket::MAX_RATE_BPS),
        });
    }
    let burst_bytes = match burst_bytes {
        None => default_burst(rate_bps, aggregate),
        Some(burst) if burst > bucket::MAX_BURST_BYTES => {
            return Err(LimitError::BurstTooLarge {
                value: rates_and_sizes::format_size(burst),
                max: rates_and_sizes::format_size(bucket::MAX_BURST_BYTES),
            });
        }
        Some(burst) if burst < min_burst(aggregate) => {
            return Err(LimitError::BurstTooSmall {
                value: rates_and_sizes::format_size(burst),
                min: rates_and_sizes::format_size(min_burst(aggregate)),
                aggregate,
                on: iface_note.to_owned(),
            });
        }
        Some(burst) => burst,
    };
    Ok(Limit {
        rate_bps,
        burst_bytes,
        action,
        ecn: false,
        per_remote: false,
        queue_bytes: 0,
    })
}

/// A rule in force: its id (which names its bucket and counters in the classifier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: u16,
    pub key: RuleKey,
    pub limit: Limit,
}

/// The rules in force, by id.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    rules: BTreeMap<u16, Rule>,
    /// The id of each rule by key. With up to 65,535 rules a scan per lookup would make
    /// restoring or installing a full table quadratic (billions of key comparisons).
    ids: HashMap<RuleKey, u16>,
    /// Ids are handed out round-robin, so a removed rule's id (and its counters, which a packet
    /// in flight may still touch) is not reused at once.
    next_id: u16,
}

/// The outcome of [`RuleTable::set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// A new rule with a fresh id: its bucket and counters must be reset before use.
    Added(u16),
    /// An existing rule's limit replaced; id, bucket and counters kept.
    Replaced(u16),
}

impl RuleTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn find(&self, key: &RuleKey) -> Option<&Rule> {
        self.ids.get(key).and_then(|id| self.rules.get(id))
    }

    /// Adds a rule, or replaces the limit of the rule with the same key.
    pub fn set(&mut self, key: RuleKey, limit: Limit) -> Result<SetOutcome, LimitError> {
        if let Some(rule) = self.ids.get(&key).and_then(|id| self.rules.get_mut(id)) {
            rule.limit = limit;
            return Ok(SetOutcome::Replaced(rule.id));
        }
        let id = self.free_id().ok_or(LimitError::TooManyRules)?;
        self.ids.insert(key.clone(), id);
        self.rules.insert(id, Rule { id, key, limit });
        Ok(SetOutcome::Added(id))
    }

    /// Restores a rule with the id it had (from the state file). False if the id is taken.
    pub fn restore(&mut self, rule: Rule) -> bool {
        if rule.id == NO_RULE
            || u32::from(rule.id) >= MAX_RULES
            || self.rules.contains_key(&rule.id)
            || self.ids.contains_key(&rule.key)
        {
            return false;
        }
        self.next_id = self.next_id.max(rule.id);
        self.ids.insert(rule.key.clone(), rule.id);
        self.rules.insert(rule.id, rule);
        true
    }

    pub fn remove(&mut self, key: &RuleKey) -> Option<Rule> {
        let id = self.ids.remove(key)?;
        self.rules.remove(&id)
    }

    fn free_id(&mut self) -> Option<u16> {
        let max = (MAX_RULES - 1) as u16;
        for step in 1..=max {
            let id = ((u32::from(self.next_id) + u32::from(step) - 1) % u32::from(max) + 1) as u16;
            if !self.rules.contains_key(&id) {
                self.next_id = id;
                return Some(id);
            }
        }
        None
    }

    /// The rule index for interfaces `ifaces` (in slot order): for every (slot, direction,
    /// protocol, side) row, the winning rule id of each port, [`NO_RULE`] where none applies.
    /// Rules for an interface not in `ifaces` are ignored.
    pub fn resolve(&self, ifaces: &[String]) -> Vec<u16> {
        let mut index = vec![NO_RULE; ifaces.len() * (RULE_INDEX_ROWS_PER_IFACE * PORTS) as usize];
        let mut by_precedence: Vec<&Rule> = self.rules.values().collect();
        // Paint the weakest first, so each port ends up with its strongest rule.
        by_precedence.sort_by(|a, b| b.key.precedence(&a.key));
        for rule in by_precedence {
            let Some(side) = rule.key.side.index() else {
                continue;
            };
            for (slot, name) in ifaces.iter().enumerate() {
                if rule.key.iface.as_ref().is_some_and(|iface| iface != name) {
                    continue;
                }
                for &direction in rule.key.dir.directions() {
                    for &proto in rule.key.proto.protos() {
                        let row = rule_index_row(slot as u32, direction, proto, side);
                        let start = row as usize * PORTS as usize;
                        let ports = rule.key.ports;
                        index[start + ports.lo as usize..=start + ports.hi as usize].fill(rule.id);
                    }
                }
            }
        }
        index
    }

    /// The `unplaced` rule of every (interface slot, direction) of `ifaces`, indexed by
    /// [`unplaced_index`](shaper_common::unplaced_index): [`NO_RULE`] where none applies. One
    /// for an interface beats one for all, one for a direction beats `both`.
    pub fn resolve_unplaced(&self, ifaces: &[String]) -> Vec<u16> {
        let mut index = vec![NO_RULE; ifaces.len() * shaper_common::DIRECTIONS as usize];
        let mut by_precedence: Vec<&Rule> = self
            .rules
            .values()
            .filter(|rule| rule.key.side == Side::Unplaced)
            .collect();
        by_precedence.sort_by(|a, b| b.key.precedence(&a.key));
        for rule in by_precedence {
            for (slot, name) in ifaces.iter().enumerate() {
                if rule.key.iface.as_ref().is_some_and(|iface| iface != name) {
                    continue;
                }
                for &direction in rule.key.dir.directions() {
                    index[shaper_common::unplaced_index(slot as u32, direction) as usize] = rule.id;
                }
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use shaper_common::{DIR_EGRESS, DIR_INGRESS, PROTO_TCP, PROTO_UDP, SIDE_LOCAL, SIDE_REMOTE};

    use super::*;

    fn key(ports: &str) -> RuleKey {
        RuleKey::local(ports.parse().unwrap())
    }

    fn limit(rate_bps: u64) -> Limit {
        Limit {
            rate_bps,
            burst_bytes: 1 << 20,
            action: Action::Drop,
            ecn: false,
            per_remote: false,
            queue_bytes: 0,
        }
    }

    fn winner(index: &[u16], slot: u32, direction: u32, proto: u32, side: u32, port: u16) -> u16 {
        index
            [rule_index_row(slot, direction, proto, side) as usize * PORTS as usize + port as usize]
    }

    fn ifaces(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Views, the control protocol and the state file spell each keyword as its word.
    #[test]
    fn keywords_serialize_as_their_words() {
        fn check<T: FromStr<Err = String> + Serialize>(words: &[&str]) {
            for word in words {
                let value: T = word.parse().unwrap();
                assert_eq!(
                    serde_json::to_string(&value).unwrap(),
                    format!("\"{word}\"")
                );
            }
        }
        check::<DirSel>(DirSel::WORDS);
        check::<ProtoSel>(ProtoSel::WORDS);
        check::<Action>(Action::WORDS);
        check::<Side>(Side::WORDS);
    }

    #[test]
    fn port_ranges_parse_single_ports_and_inclusive_ranges() {
        assert_eq!(
            "9090".parse::<PortRange>().unwrap(),
            PortRange::single(9090)
        );
        assert_eq!(
            "8000-8099".parse::<PortRange>().unwrap(),
            PortRange { lo: 8000, hi: 8099 }
        );
        assert_eq!("0-65535".parse::<PortRange>().unwrap().width(), 65535);
        for bad in [
            "",
            "65536",
            "-1",
            "9090-9090",
            "10-5",
            "a",
            "1-2-3",
            "80,443",
            "+80",
            " - ",
        ] {
            let err = bad.parse::<PortRange>().unwrap_err();
            assert!(err.to_string().contains("accepted"), "{bad}: {err}");
        }
        assert_eq!(PortRange { lo: 1, hi: 2 }.to_string(), "1-2");
    }

    #[test]
    fn a_single_port_rule_wins_over_a_range_that_contains_it() {
        let mut table = RuleTable::new();
        let SetOutcome::Added(range) = table.set(key("9000-9999"), limit(1000)).unwrap() else {
            panic!()
        };
        let SetOutcome::Added(single) = table.set(key("9090"), limit(2000)).unwrap() else {
            panic!()
        };
        let index = table.resolve(&ifaces(&["eth0"]));
        assert_eq!(
            winner(&index, 0, DIR_INGRESS, PROTO_TCP, SIDE_LOCAL, 9090),
            single
        );
        assert_eq!(
            winner(&index, 0, DIR_EGRESS, PROTO_UDP, SIDE_LOCAL, 9091),
            range
        );
        assert_eq!(
            winner(&index, 0, DIR_EGRESS, PROTO_UDP, SIDE_LOCAL, 9999),
            range
        );
        assert_eq!(
            winner(&index, 0, DIR_EGRESS, PROTO_UDP, SIDE_LOCAL, 10000),
            NO_RULE
        );
        assert_eq!(
            winner(&index, 0, DIR_EGRESS, PROTO_UDP, SIDE_REMOTE, 9090),
            NO_RULE
        );
    }

    #[test]
    fn unplaced_rules_stay_out_of_the_port_index_and_the_specific_one_wins_its_cells() {
        let mut table = RuleTable::new();
        let SetOutcome::Added(everywhere) = table
            .set(RuleKey::unplaced(DirSel::Both, None), limit(1))
            .unwrap()
        else {
            panic!("a new rule")
        };
        let SetOutcome::Added(eth1_ingress) = table
            .set(
                RuleKey::unplaced(DirSel::Ingress, Some("eth1".into())),
                limit(2),
            )
            .unwrap()
        else {
            panic!("a new rule")
        };
        let names = ifaces(&["eth0", "eth1"]);
        assert!(
            table.resolve(&names).iter().all(|&id| id == NO_RULE),
            "no port is governed by an unplaced rule"
        );
        let cell = |slot, direction| shaper_common::unplaced_index(slot, direction) as usize;
        let unplaced = table.resolve_unplaced(&names);
        assert_eq!(unplaced[cell(0, DIR_INGRESS)], everywhere);
        assert_eq!(unplaced[cell(0, DIR_EGRESS)], everywhere);
        assert_eq!(unplaced[cell(1, DIR_INGRESS)], eth1_ingress);
        assert_eq!(unplaced[cell(1, DIR_EGRESS)], everywhere);
        assert_eq!(
            RuleKey::unplaced(DirSel::Ingress, None).to_string(),
            "unplaced dir ingress iface all"
        );
    }

    #[test]
    fn the_narrower_of_two_overlapping_ranges_wins_and_equal_widths_go_to_the_lower() {
        let mut table = RuleTable::new();
        table.set(key("1000-2000"), limit(1)).unwrap();
        table.set(key("1500-1600"), limit(2)).unwrap();
        table.set(key("1550-1650"), limit(3)).unwrap();
        let index = table.resolve(&ifaces(&["eth0"]));
        let rate_at = |port| {
            let id = winner(&index, 0, DIR_INGRESS, PROTO_UDP, SIDE_LOCAL, port);
            table.rules().find(|r| r.id == id).unwrap().limit.rate_bps
        };
        assert_eq!(rate_at(1000), 1);
        assert_eq!(rate_at(1500), 2);
        assert_eq!(rate_at(1575), 2);
        assert_eq!(rate_at(1620), 3);
        assert_eq!(rate_at(1700), 1);
    }

    #[test]
    fn interface_direction_and_protocol_specific_rules_beat_general_ones_on_the_same_port() {
        let mut table = RuleTable::new();
        table.set(key("53"), limit(1)).unwrap();
        table
            .set(
                RuleKey {
                    proto: ProtoSel::Udp,
                    ..key("53")
                },
                limit(2),
            )
            .unwrap();
        table
            .set(
                RuleKey {
                    dir: DirSel::Egress,
                    ..key("53")
                },
                limit(3),
            )
            .unwrap();
        table
            .set(
                RuleKey {
                    iface: Some("eth1".into()),
                    ..key("53")
                },
                limit(4),
            )
            .unwrap();
        let index = table.resolve(&ifaces(&["eth0", "eth1"]));
        let rate_at = |slot, direction, proto| {
            let id = winner(&index, slot, direction, proto, SIDE_LOCAL, 53);
            table.rules().find(|r| r.id == id).unwrap().limit.rate_bps
        };
        assert_eq!(rate_at(0, DIR_INGRESS, PROTO_TCP), 1);
        assert_eq!(rate_at(0, DIR_INGRESS, PROTO_UDP), 2);
        assert_eq!(
            rate_at(0, DIR_EGRESS, PROTO_UDP),
            3,
            "direction ranks above protocol"
        );
        assert_eq!(
            rate_at(1, DIR_INGRESS, PROTO_UDP),
            4,
            "interface ranks above both"
        );
    }

    #[test]
    fn a_single_port_beats_a_range_even_when_the_range_is_more_specific_otherwise() {
        let mut table = RuleTable::new();
        table
            .set(
                RuleKey {
                    iface: Some("eth0".into()),
                    dir: DirSel::Ingress,
                    proto: ProtoSel::Tcp,
                    ..key("9000-9100")
                },
                limit(1),
            )
            .unwrap();
        let SetOutcome::Added(single) = table.set(key("9090"), limit(2)).unwrap() else {
            panic!()
        };
        let index = table.resolve(&ifaces(&["eth0"]));
        assert_eq!(
            winner(&index, 0, DIR_INGRESS, PROTO_TCP, SIDE_LOCAL, 9090),
            single
        );
    }

    #[test]
    fn setting_the_same_key_again_replaces_the_limit_and_keeps_the_id() {
        let mut table = RuleTable::new();
        let SetOutcome::Added(id) = table.set(key("9090"), limit(1)).unwrap() else {
            panic!()
        };
        assert_eq!(
            table.set(key("9090"), limit(2)).unwrap(),
            SetOutcome::Replaced(id)
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.find(&key("9090")).unwrap().limit.rate_bps, 2);
        // A different direction is a different rule.
        let other = table
            .set(
                RuleKey {
                    dir: DirSel::Egress,
                    ..key("9090")
                },
                limit(3),
            )
            .unwrap();
        assert!(matches!(other, SetOutcome::Added(o) if o != id));
    }

    #[test]
    fn removed_ids_are_not_reused_at_once() {
        let mut table = RuleTable::new();
        let SetOutcome::Added(first) = table.set(key("1"), limit(1)).unwrap() else {
            panic!()
        };
        table.remove(&key("1")).unwrap();
        let SetOutcome::Added(second) = table.set(key("1"), limit(1)).unwrap() else {
            panic!()
        };
        assert_ne!(first, second);
        assert!(table.remove(&key("2")).is_none());
    }

    #[test]
    fn the_table_holds_at_most_max_rules_minus_one() {
        let mut table = RuleTable::new();
        // One rule on every port but the last: 65,535 rules, every id taken.
        for port in 0..(MAX_RULES - 1) as u16 {
            table.set(key(&port.to_string()), limit(1)).unwrap();
        }
        assert_eq!(table.len(), (MAX_RULES - 1) as usize);
        assert_eq!(
            table.set(key("65535"), limit(1)),
            Err(LimitError::TooManyRules)
        );
        // Replacing still works when full.
        assert!(table.set(key("5"), limit(2)).is_ok());
        // Removing one rule makes room for exactly one more, under the freed id.
        let freed = table.remove(&key("7")).unwrap().id;
        assert_eq!(
            table.set(key("65535"), limit(1)),
            Ok(SetOutcome::Added(freed))
        );
        assert_eq!(table.find(&key("65535")).unwrap().id, freed);
        assert!(table.find(&key("7")).is_none());
        assert_eq!(table.set(key("7"), limit(1)), Err(LimitError::TooManyRules));
    }

    #[test]
    fn rules_for_other_interfaces_and_remote_rules_land_in_their_own_rows() {
        let mut table = RuleTable::new();
        let SetOutcome::Added(id) = table
            .set(
                RuleKey {
                    side: Side::Remote,
                    iface: Some("eth1".into()),
                    ..key("443")
                },
                limit(1),
            )
            .unwrap()
        else {
            panic!()
        };
        let index = table.resolve(&ifaces(&["eth0", "eth1"]));
        assert_eq!(
            winner(&index, 0, DIR_EGRESS, PROTO_TCP, SIDE_REMOTE, 443),
            NO_RULE
        );
        assert_eq!(
            winner(&index, 1, DIR_EGRESS, PROTO_TCP, SIDE_REMOTE, 443),
            id
        );
        assert_eq!(
            winner(&index, 1, DIR_EGRESS, PROTO_TCP, SIDE_LOCAL, 443),
            NO_RULE
        );
        assert_eq!(index.iter().filter(|&&cell| cell != NO_RULE).count(), 4);
    }

    #[test]
    fn default_burst_is_300_ms_of_rate_but_never_below_the_minimum() {
        let aggregate = 65536;
        assert_eq!(default_burst(1_000_000, aggregate), 196_608);
        assert_eq!(default_burst(10_000_000, aggregate), 375_000);
        assert_eq!(default_burst(1_000_000_000, aggregate), 37_500_000);
        assert_eq!(
            default_burst(bucket::MAX_RATE_BPS, aggregate),
            bucket::MAX_BURST_BYTES
        );
        // BIG TCP: 512 KiB aggregates need a 1.5 MiB bucket.
        assert_eq!(default_burst(1_000_000, 512 * 1024), 1536 * 1024);
    }

    #[test]
    fn an_explicit_burst_below_the_minimum_or_above_the_maximum_is_refused() {
        let err =
            make_limit(10_000_000, Some(64 * 1024), Action::Drop, 65536, " on eth0").unwrap_err();
        assert!(matches!(err, LimitError::BurstTooSmall { .. }));
        let text = err.to_string();
        assert!(
            text.contains("64KiB") && text.contains("192KiB") && text.contains("eth0"),
            "{text}"
        );
        assert!(matches!(
            make_limit(10_000_000, Some(2 << 30), Action::Drop, 65536, ""),
            Err(LimitError::BurstTooLarge { .. })
        ));
        assert!(matches!(
            make_limit(bucket::MAX_RATE_BPS + 1, None, Action::Drop, 65536, ""),
            Err(LimitError::RateTooHigh { .. })
        ));
        let ok = make_limit(10_000_000, Some(256 * 1024), Action::Observe, 65536, "").unwrap();
        assert_eq!(ok.burst_bytes, 256 * 1024);
        assert_eq!(
            ok.config().burst_nanobits,
            256 * 1024 * bucket::NANOBITS_PER_BYTE
        );
        assert_eq!(ok.config().action, shaper_common::ACTION_OBSERVE);
    }

    #[test]
    fn a_default_burst_uses_the_coarse_clock_and_a_short_fill_time_the_precise_one() {
        const TICK_250_HZ: u64 = 4_000_000;
        let coarse = |limit: Limit, tick| {
            limit.config_with_tick(tick).flags & shaper_common::RULE_FLAG_COARSE_CLOCK != 0
        };
        // 10 Mbit/s with the default burst (300 ms of the rate, 375 KB): 75 ticks.
        let default = make_limit(10_000_000, None, Action::Drop, 65536, "").unwrap();
        assert!(coarse(default, TICK_250_HZ));
        // Other flags are untouched by it.
        assert_eq!(
            default.config_with_tick(TICK_250_HZ).flags,
            shaper_common::RULE_FLAG_COARSE_CLOCK
        );
        // The smallest burst at 10 Gbit/s fills in 157 µs: the precise clock.
        let short = make_limit(10_000_000_000, Some(192 * 1024), Action::Drop, 65536, "").unwrap();
        assert!(!coarse(short, TICK_250_HZ));
        // A kernel that does not report its tick: the precise clock.
        assert!(!coarse(default, 0));
    }
}
