//! The metric families of shape rules (their HTB class: what went through the queue, what
//! waits in it) and pace rules (their schedule, the same figures), of `--ecn` rules (what they marked) and of `--per-remote` rules (the remotes
//! they hold a bucket for), one series per rule.

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::policy::{rule_table::Action, rules_in_force::RuleView};

/// The labels of a rule's series, the same as the limit families'.
fn labels(rule: &RuleView) -> [(&'static str, String); 7] {
    [
        ("rule", rule.id.to_string()),
        (
            "iface",
            rule.iface.clone().unwrap_or_else(|| "any".to_owned()),
        ),
        ("direction", rule.dir.name().to_owned()),
        ("proto", rule.proto.name().to_owned()),
        ("ports", rule.ports.to_string()),
        ("side", rule.side.name().to_owned()),
        ("action", rule.action.name().to_owned()),
    ]
}

pub fn encode(rules: &[RuleView], encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let shaped: Vec<&RuleView> = rules
        .iter()
        .filter(|r| matches!(r.action, Action::Shape | Action::Pace))
        .collect();
    for (name, help, value) in [
        (
            "shaper_rule_queued_packets",
            "Packets a shape rule's HTB classes sent after queueing them (every interface), or a pace rule sent at their departure times.",
            (|r: &RuleView| r.queued_packets) as fn(&RuleView) -> u64,
        ),
        (
            "shaper_rule_queued_bytes",
            "Bytes a shape rule's HTB classes sent after queueing them (every interface), or a pace rule sent at their departure times.",
            |r: &RuleView| r.queued_bytes,
        ),
        (
            "shaper_rule_queue_dropped_packets",
            "Packets a shape rule's queue had no room for, or a pace rule scheduled beyond its horizon: its overflow.",
            |r: &RuleView| r.dropped_packets,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for rule in &shaped {
            ConstCounter::new(value(rule)).encode(family.encode_family(&labels(rule))?)?;
        }
    }
    for (name, help, value) in [
        (
            "shaper_rule_backlog_bytes",
            "Bytes waiting in a shape rule's queues now, or scheduled ahead on a pace rule's clock.",
            (|r: &RuleView| r.backlog_bytes) as fn(&RuleView) -> u64,
        ),
        (
            "shaper_rule_backlog_packets",
            "Packets waiting in a shape rule's queues now (0 for a pace rule, which counts bytes).",
            |r: &RuleView| r.backlog_packets,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for rule in &shaped {
            ConstGauge::new(i64::try_from(value(rule)).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels(rule))?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "shaper_ecn_marked_packets",
        "Packets an --ecn rule, or a shape rule's fq_codel queue, marked CE (Congestion \
         Experienced) instead of dropping them.",
        None,
        MetricType::Counter,
    )?;
    for rule in rules.iter().filter(|r| r.ecn || r.action == Action::Shape) {
        ConstCounter::new(rule.marked_packets).encode(family.encode_family(&labels(rule))?)?;
    }
    let mut family = encoder.encode_descriptor(
        "shaper_rule_remote_buckets",
        "Remote addresses a --per-remote rule holds a token bucket for now (both directions).",
        None,
        MetricType::Gauge,
    )?;
    for rule in rules.iter().filter(|r| r.per_remote) {
        ConstGauge::new(i64::try_from(rule.remote_buckets).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels(rule))?)?;
    }
    Ok(())
}
