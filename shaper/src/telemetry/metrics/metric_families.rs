//! The metric families, their names, labels and help, written with prometheus-client.
//!
//! Names and labels are the interface operators build dashboards and alerts on: see the
//! metrics reference (docs/src/reference/metrics.md, checked by tests/docs.rs) before changing any.

use std::time::Instant;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use shaper_common::{DIR_INGRESS, reason};

use super::{Format, Scrape, port_selection::Totals, tcp_families, text_formats};
use crate::datapath::classifier::PROTOCOLS;

/// The port counter families: (name, help, index into [`Totals`]).
const PORT_FAMILIES: [(&str, &str, usize); 6] = [
    (
        "shaper_packets",
        "Packets the tc hook saw on a local port, passed or not.",
        0,
    ),
    (
        "shaper_bytes",
        "Bytes the tc hook saw on a local port (whole frames, link-layer header included).",
        1,
    ),
    (
        "shaper_dropped_packets",
        "Packets a drop rule dropped (included in shaper_packets_total).",
        2,
    ),
    (
        "shaper_dropped_bytes",
        "Bytes a drop rule dropped (included in shaper_bytes_total).",
        3,
    ),
    (
        "shaper_would_drop_packets",
        "Packets an observe rule passed that a drop rule would have dropped.",
        4,
    ),
    (
        "shaper_would_drop_bytes",
        "Bytes an observe rule passed that a drop rule would have dropped.",
        5,
    ),
];

/// Encodes one scrape in `format`.
pub fn encode(scrape: Scrape, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(scrape)));
    let mut openmetrics = String::new();
    // Writing into a String cannot fail, and no label value here is unencodable.
    if prometheus_client::encoding::text::encode(&mut openmetrics, &registry).is_err() {
        log::error!("encoding the metrics failed");
    }
    match format {
        Format::OpenMetrics => openmetrics,
        Format::PrometheusText => text_formats::to_prometheus_text(&openmetrics),
    }
}

#[derive(Debug)]
struct ScrapeCollector(Scrape);

/// One per-port series' labels and counters: a shown port, or a group's `other`.
struct PortSeries<'a> {
    iface: &'a str,
    direction: &'static str,
    proto: &'static str,
    port: String,
    totals: &'a Totals,
}

fn direction_name(direction: u32) -> &'static str {
    if direction == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

fn proto_name(proto: u32) -> &'static str {
    PROTOCOLS
        .into_iter()
        .find(|p| p.index() == proto)
        .map_or("unknown", |p| p.name())
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scrape = &self.0;
        let iface_name = |slot: u32| {
            scrape
                .inventory
                .interfaces
                .iter()
                .find(|i| i.slot == slot)
                .map_or("unknown", |i| i.name.as_str())
        };

        // Per-port traffic: shown ports, then `other` per group.
        let ports: Vec<PortSeries> = scrape
            .selection
            .shown
            .iter()
            .map(|(key, totals)| PortSeries {
                iface: iface_name(key.slot),
                direction: direction_name(key.direction),
                proto: proto_name(key.proto),
                port: key.port.to_string(),
                totals,
            })
            .chain(
                scrape
                    .selection
                    .other
                    .iter()
                    .map(|(group, totals)| PortSeries {
                        iface: iface_name(group.slot),
                        direction: direction_name(group.direction),
                        proto: proto_name(group.proto),
                        port: "other".to_owned(),
                        totals,
                    }),
            )
            .collect();
        for (name, help, field) in PORT_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for series in &ports {
                let labels = [
                    ("iface", series.iface),
                    ("direction", series.direction),
                    ("proto", series.proto),
                    ("port", series.port.as_str()),
                ];
                ConstCounter::new(series.totals[field]).encode(family.encode_family(&labels)?)?;
            }
        }

        // Only with --metrics-top-remotes: otherwise the family is not even described.
        if !scrape.inventory.remotes.is_empty() {
            let mut family = encoder.encode_descriptor(
                "shaper_remote_bytes",
                "Bytes a remote address exchanged with a watched local port (the top N remotes by bytes, --metrics-top-remotes).",
                None,
                MetricType::Counter,
            )?;
            for series in &scrape.inventory.remotes {
                let port = series.port.to_string();
                let labels = [
                    ("port", port.as_str()),
                    ("remote", series.remote.as_str()),
                    ("direction", series.direction),
                ];
                ConstCounter::new(series.bytes).encode(family.encode_family(&labels)?)?;
            }
        }

        for (name, help, packets) in [
            (
                "shaper_unclassified_packets",
                "Packets without a port, by reason (non-ip, truncated, malformed, fragment, icmp, other-l4, ...).",
                true,
            ),
            (
                "shaper_unclassified_bytes",
                "Bytes of packets without a port, by reason.",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for &(slot, direction, reason, counter) in &scrape.inventory.unclassified {
                let labels = [
                    ("iface", iface_name(slot)),
                    ("direction", direction_name(direction)),
                    (
                        "reason",
                        reason::NAMES
                            .get(reason as usize)
                            .copied()
                            .unwrap_or("unknown"),
                    ),
                ];
                let value = if packets {
                    counter.packets
                } else {
                    counter.bytes
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        if let Some(fragments) = &scrape.inventory.fragments {
            for (name, help, value) in [
                (
                    "shaper_fragmented_datagrams_tracked",
                    "Fragmented datagrams whose first fragment's ports the classifier remembered for its later fragments.",
                    fragments.tracked,
                ),
                (
                    "shaper_fragments_placed",
                    "Later fragments counted and charged under their first fragment's port (the rest count as reason=fragment).",
                    fragments.placed,
                ),
                (
                    "shaper_fragmented_datagrams_evicted",
                    "Fragmented datagrams evicted from the tracker (an LRU) to make room: their later fragments count as reason=fragment.",
                    fragments.evicted,
                ),
            ] {
                let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(family)?;
            }
        }

        if let Some(buckets) = &scrape.inventory.remote_buckets {
            for (name, help, value) in [
                (
                    "shaper_remote_buckets_inserted",
                    "Token buckets --per-remote rules created, one per (rule, direction, remote address) met without one.",
                    buckets.inserted,
                ),
                (
                    "shaper_remote_buckets_evicted",
                    "Remote buckets evicted (an LRU) to make room: the remote starts with a full bucket if it comes back.",
                    buckets.evicted,
                ),
            ] {
                let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(family)?;
            }
        }

        for (name, help, field) in UNPLACED_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for rule in &scrape.inventory.unplaced_rules {
                let labels = [
                    ("iface", rule.iface.as_deref().unwrap_or("any")),
                    ("direction", rule.dir.name()),
                    ("action", rule.action.name()),
                ];
                ConstCounter::new(field(rule)).encode(family.encode_family(&labels)?)?;
            }
        }

        let rules: Vec<([(&str, String); 6], &crate::policy::rule_table::Rule)> = scrape
            .inventory
            .rules
            .iter()
            .map(|rule| {
                let key = &rule.key;
                (
                    [
                        (
                            "iface",
                            key.iface.clone().unwrap_or_else(|| "any".to_owned()),
                        ),
                        ("direction", key.dir.name().to_owned()),
                        ("proto", key.proto.name().to_owned()),
                        ("ports", key.target()),
                        ("side", key.side.name().to_owned()),
                        ("action", rule.limit.action.name().to_owned()),
                    ],
                    rule,
                )
            })
            .collect();
        let mut family = encoder.encode_descriptor(
            "shaper_limit_rate_bytes_per_second",
            "The rate a limit rule allows, in bytes per second (each direction has its own bucket).",
            None,
            MetricType::Gauge,
        )?;
        for (labels, rule) in &rules {
            let rate = rule.limit.rate_bps as f64 / 8.0;
            ConstGauge::new(rate).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "shaper_limit_burst_bytes",
            "The burst of a limit rule: the bytes its bucket holds when full.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, rule) in &rules {
            ConstGauge::new(rule.limit.burst_bytes).encode(family.encode_family(labels)?)?;
        }

        tcp_families::encode(
            &mut encoder,
            &scrape.tcp,
            scrape.inventory.handshakes.as_ref(),
            iface_name,
        )?;
        super::queueing_families::encode(&scrape.inventory.queueing_rules, &mut encoder)?;

        let mut family = encoder.encode_descriptor(
            "shaper_port_listening",
            "1 for each local port a TCP socket listens on or a UDP socket is bound to, with the owning process (comm) and the bind scope (loopback, any, or the address).",
            None,
            MetricType::Gauge,
        )?;
        for scoped in &scrape.listeners {
            let listener = &scoped.listener;
            let port = listener.port.to_string();
            let labels = [
                ("proto", listener.proto.name()),
                ("port", port.as_str()),
                ("process", listener.process.as_str()),
                ("scope", scoped.scope.as_str()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "shaper_program_attached",
            "1 while the shaper program is attached to the interface hook, as the kernel reports it; 0 when it is not.",
            None,
            MetricType::Gauge,
        )?;
        for iface in &scrape.inventory.interfaces {
            let mode = iface.mode.map_or("none", |m| m.name());
            for (direction, attached) in &iface.attached {
                let labels = [
                    ("iface", iface.name.as_str()),
                    ("direction", direction.name()),
                    ("mode", mode),
                ];
                ConstGauge::new(i64::from(*attached)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "shaper_build_info",
            "1, labelled with the shaper version and the rustc it was built with.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("rustc", env!("SHAPER_RUSTC_VERSION")),
        ];
        ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;

        // Prometheus's own names for the same facts, so alerts written for it read alike.
        let reload = scrape.inventory.config_reload;
        let family = encoder.encode_descriptor(
            "shaper_config_last_reload_successful",
            "1 if the last load of the config file (at start-up, on SIGHUP or on a change of the file) succeeded, 0 if it was refused.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(reload.successful)).encode(family)?;
        let family = encoder.encode_descriptor(
            "shaper_config_last_reload_success_timestamp_seconds",
            "Unix time of the last load of the config file that succeeded (start-up counts).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(reload.last_success_unix_seconds).encode(family)?;

        let mut family = encoder.encode_descriptor(
            "shaper_metrics_series",
            "Per-port series in this scrape: ports shown on their own, and other groups.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, count) in [
            ("port", scrape.selection.shown.len()),
            ("other", scrape.selection.other.len()),
        ] {
            ConstGauge::new(count as i64).encode(family.encode_family(&[("kind", kind)])?)?;
        }

        // Last, so it covers reading, selecting and encoding everything above.
        let family = encoder.encode_descriptor(
            "shaper_scrape_duration_seconds",
            "Time this scrape took to read the counters and write the families before this one.",
            None,
            MetricType::Gauge,
        )?;
        let seconds = Instant::now().duration_since(scrape.started).as_secs_f64();
        ConstGauge::new(seconds).encode(family)?;
        Ok(())
    }
}

/// The counters of `unplaced` rules: what they passed, dropped and would have dropped of the
/// packets no port was found for.
type UnplacedField = fn(&crate::policy::rules_in_force::RuleView) -> u64;
const UNPLACED_FAMILIES: [(&str, &str, UnplacedField); 6] = [
    (
        "shaper_unplaced_passed_packets",
        "Packets without a port that an unplaced rule passed (its rule's direction and interface).",
        |r| r.passed_packets,
    ),
    (
        "shaper_unplaced_passed_bytes",
        "Bytes of packets without a port that an unplaced rule passed.",
        |r| r.passed_bytes,
    ),
    (
        "shaper_unplaced_dropped_packets",
        "Packets without a port that an unplaced drop rule dropped.",
        |r| r.dropped_packets,
    ),
    (
        "shaper_unplaced_dropped_bytes",
        "Bytes of packets without a port that an unplaced drop rule dropped.",
        |r| r.dropped_bytes,
    ),
    (
        "shaper_unplaced_would_drop_packets",
        "Packets without a port that an unplaced observe rule would have dropped.",
        |r| r.would_drop_packets,
    ),
    (
        "shaper_unplaced_would_drop_bytes",
        "Bytes of packets without a port that an unplaced observe rule would have dropped.",
        |r| r.would_drop_bytes,
    ),
];
