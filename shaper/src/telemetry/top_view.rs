//! The model behind `shaper top`: two samples of the daemon's counters make one view of rates.
//!
//! Rates are counter deltas divided by the real time between the two samples, measured here
//! (each sample is stamped half-way through its request to the daemon), never by the interval
//! asked for: a slow reply or a busy machine stretches the interval, not the rates.

use std::{collections::HashMap, time::Instant};

use serde::{Deserialize, Serialize};

use crate::{
    Direction,
    datapath::classifier::Proto,
    policy::rule_table::{Action, PortRange},
    policy::rules_in_force::RuleView,
    telemetry::counter_snapshot::Snapshot,
};

/// The JSON schema version of [`View`] (`shaper top --once --json`).
pub const SCHEMA_VERSION: u32 = 1;

/// One sample: the counters, the rules and when they were read.
#[derive(Debug, Clone)]
pub struct Sample {
    pub taken: Instant,
    pub snapshot: Snapshot,
    pub rules: Vec<RuleView>,
}

/// What `shaper top` shows for one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub schema_version: u32,
    /// Seconds between the two samples.
    pub interval_seconds: f64,
    /// Every port of every interface together.
    pub totals: Totals,
    /// Packets without a port, every reason together.
    pub unclassified: Unclassified,
    /// One row per (interface, direction, protocol, port) with traffic in the interval, busiest
    /// first.
    pub rows: Vec<Row>,
}

/// Sums over every port; the fields mean what they mean in a [`Row`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub bytes_per_second: f64,
    pub bits_per_second: f64,
    pub packets_per_second: f64,
    pub seen_bytes_per_second: f64,
    pub seen_packets_per_second: f64,
    pub dropped_packets_per_second: f64,
    pub would_drop_packets_per_second: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unclassified {
    pub bytes_per_second: f64,
    pub packets_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub iface: String,
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// The local port.
    pub port: u16,
    /// What passed the hook (seen minus dropped), in wire bytes (whole frames, as the tc hook
    /// sees them): under a drop rule, what the limit lets through.
    pub bytes_per_second: f64,
    pub bits_per_second: f64,
    pub packets_per_second: f64,
    /// Everything the hook saw, dropped packets included: the offered load.
    pub seen_bytes_per_second: f64,
    pub seen_packets_per_second: f64,
    pub dropped_packets_per_second: f64,
    pub would_drop_packets_per_second: f64,
    /// The rule in force on this port, if any.
    pub rule: Option<RuleInForce>,
    /// The processes listening on this port (comma-separated), if any.
    pub process: Option<String>,
    /// TCP rows that counted connection events: new connections, resets and handshake round
    /// trips in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<crate::telemetry::tcp_counts::TcpRates>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleInForce {
    pub id: u16,
    /// `9090` or `8000-8099`.
    pub ports: PortRange,
    pub rate_bps: u64,
    pub burst_bytes: u64,
    /// `drop` or `observe`.
    pub action: Action,
    /// How full this direction's bucket is, 0.0 (empty: the rate applies) to 1.0 (a whole burst
    /// could pass at once).
    pub bucket_fill: f64,
    /// A shape rule's queue delay now, in milliseconds: its backlog over its rate (every
    /// interface's queue together). Absent for other actions, whose bucket is the figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_delay_ms: Option<f64>,
}

/// The rates between `before` and `after`. A port absent from `before` counts from zero.
pub fn view(before: &Sample, after: &Sample) -> View {
    let seconds = after
        .taken
        .saturating_duration_since(before.taken)
        .as_secs_f64();
    let per_second = |delta: u64| {
        if seconds > 0.0 {
            delta as f64 / seconds
        } else {
            0.0
        }
    };
    let earlier: HashMap<
        (&str, Direction, Proto, u16),
        &crate::telemetry::counter_snapshot::PortStats,
    > = before
        .snapshot
        .ports
        .iter()
        .map(|p| ((p.iface.as_str(), p.direction, p.proto, p.port), p))
        .collect();
    let rules: HashMap<u16, &RuleView> = after.rules.iter().map(|r| (r.id, r)).collect();
    let mut processes: HashMap<(Proto, u16), Vec<&str>> = HashMap::new();
    for listener in &after.snapshot.listening {
        let names = processes
            .entry((listener.proto, listener.port))
            .or_default();
        if !names.contains(&listener.process.as_str()) {
            names.push(&listener.process);
        }
    }

    let mut totals = Totals::default();
    let mut rows = Vec::new();
    for now in &after.snapshot.ports {
        let key = (now.iface.as_str(), now.direction, now.proto, now.port);
        let then = earlier.get(&key);
        // Counters only grow while a daemon runs; a smaller value means a restarted daemon,
        // whose counters started again from zero.
        let delta = |now: u64, then: Option<u64>| match then {
            Some(then) if then <= now => now - then,
            _ => now,
        };
        let seen_packets = delta(now.packets, then.map(|t| t.packets));
        if seen_packets == 0 {
            continue;
        }
        let seen_bytes = delta(now.bytes, then.map(|t| t.bytes));
        let dropped_packets = delta(now.dropped_packets, then.map(|t| t.dropped_packets));
        let dropped_bytes = delta(now.dropped_bytes, then.map(|t| t.dropped_bytes));
        let bytes = per_second(seen_bytes.saturating_sub(dropped_bytes));
        let row = Row {
            iface: now.iface.clone(),
            direction: now.direction,
            proto: now.proto,
            port: now.port,
            bytes_per_second: bytes,
            bits_per_second: bytes * 8.0,
            packets_per_second: per_second(seen_packets.saturating_sub(dropped_packets)),
            seen_bytes_per_second: per_second(seen_bytes),
            seen_packets_per_second: per_second(seen_packets),
            dropped_packets_per_second: per_second(dropped_packets),
            would_drop_packets_per_second: per_second(delta(
                now.would_drop_packets,
                then.map(|t| t.would_drop_packets),
            )),
            rule: now
                .rule
                .and_then(|id| rules.get(&id))
                .map(|rule| rule_in_force(rule, now.direction)),
            process: processes
                .get(&(now.proto, now.port))
                .map(|names| names.join(",")),
            tcp: now.tcp.as_ref().map(|counts| {
                crate::telemetry::tcp_counts::TcpRates::between(
                    then.and_then(|t| t.tcp.as_ref()),
                    counts,
                    per_second,
                )
            }),
        };
        totals.bytes_per_second += row.bytes_per_second;
        totals.packets_per_second += row.packets_per_second;
        totals.seen_bytes_per_second += row.seen_bytes_per_second;
        totals.seen_packets_per_second += row.seen_packets_per_second;
        totals.dropped_packets_per_second += row.dropped_packets_per_second;
        totals.would_drop_packets_per_second += row.would_drop_packets_per_second;
        rows.push(row);
    }
    totals.bits_per_second = totals.bytes_per_second * 8.0;

    let mut unclassified = Unclassified::default();
    for now in &after.snapshot.unclassified {
        let then = before.snapshot.unclassified.iter().find(|u| {
            u.iface == now.iface && u.direction == now.direction && u.reason == now.reason
        });
        let (packets, bytes) = match then {
            Some(t) if t.packets <= now.packets && t.bytes <= now.bytes => {
                (now.packets - t.packets, now.bytes - t.bytes)
            }
            _ => (now.packets, now.bytes),
        };
        unclassified.packets_per_second += per_second(packets);
        unclassified.bytes_per_second += per_second(bytes);
    }

    let mut view = View {
        schema_version: SCHEMA_VERSION,
        interval_seconds: seconds,
        totals,
        unclassified,
        rows,
    };
    sort(&mut view.rows, Column::Rate, true);
    view
}

fn rule_in_force(rule: &RuleView, direction: Direction) -> RuleInForce {
    let bucket = match direction {
        Direction::Ingress => rule.ingress_bucket_bytes,
        Direction::Egress => rule.egress_bucket_bytes,
    };
    RuleInForce {
        id: rule.id,
        ports: rule.ports,
        rate_bps: rule.rate_bps,
        burst_bytes: rule.burst_bytes,
        action: rule.action,
        bucket_fill: if rule.burst_bytes == 0 {
            0.0
        } else {
            (bucket as f64 / rule.burst_bytes as f64).min(1.0)
        },
        queue_delay_ms: (matches!(rule.action, Action::Shape | Action::Pace) && rule.rate_bps > 0)
            .then(|| rule.backlog_bytes as f64 * 8000.0 / rule.rate_bps as f64),
    }
}

/// The columns of the view, in display order; each can be sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Iface,
    Direction,
    Proto,
    Port,
    Rate,
    Packets,
    Drops,
    WouldDrops,
    /// TCP: new connections per second.
    Conns,
    /// TCP: resets per second.
    Resets,
    /// TCP: handshake round trip p50/p99.
    Rtt,
    Rule,
    Bucket,
    Process,
}

impl Column {
    pub const ALL: [Self; 14] = [
        Self::Iface,
        Self::Direction,
        Self::Proto,
        Self::Port,
        Self::Rate,
        Self::Packets,
        Self::Drops,
        Self::WouldDrops,
        Self::Conns,
        Self::Resets,
        Self::Rtt,
        Self::Rule,
        Self::Bucket,
        Self::Process,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Iface => "IFACE",
            Self::Direction => "DIR",
            Self::Proto => "PROTO",
            Self::Port => "PORT",
            Self::Rate => "RATE",
            Self::Packets => "PKT/S",
            Self::Drops => "DROP/S",
            Self::WouldDrops => "WDROP/S",
            Self::Conns => "CONN/S",
            Self::Resets => "RST/S",
            Self::Rtt => "RTT p50/p99",
            Self::Rule => "RULE",
            Self::Bucket => "BUCKET",
            Self::Process => "PROCESS",
        }
    }

    /// The next column in display order, wrapping around.
    pub fn next(self) -> Self {
        let at = Self::ALL.iter().position(|&c| c == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    pub fn previous(self) -> Self {
        let at = Self::ALL.iter().position(|&c| c == self).unwrap_or(0);
        Self::ALL[(at + Self::ALL.len() - 1) % Self::ALL.len()]
    }

    /// Numbers are right-aligned in tables.
    pub fn right_aligned(self) -> bool {
        matches!(
            self,
            Self::Port
                | Self::Rate
                | Self::Packets
                | Self::Drops
                | Self::WouldDrops
                | Self::Conns
                | Self::Resets
                | Self::Rtt
                | Self::Bucket
        )
    }

    /// Whether a fresh sort on this column starts with the largest value (numbers) or the
    /// smallest (names).
    pub fn descending_first(self) -> bool {
        matches!(
            self,
            Self::Rate
                | Self::Packets
                | Self::Drops
                | Self::WouldDrops
                | Self::Conns
                | Self::Resets
                | Self::Rtt
                | Self::Rule
                | Self::Bucket
        )
    }
}

/// Sorts rows on `column`; ties keep the (interface, direction, protocol, port) order. Directions
/// and protocols sort by name, as the operator reads them.
pub fn sort(rows: &mut [Row], column: Column, descending: bool) {
    let identity = |r: &Row| (r.iface.clone(), r.direction.name(), r.proto.name(), r.port);
    rows.sort_by(|a, b| {
        let ordering = match column {
            Column::Iface => a.iface.cmp(&b.iface),
            Column::Direction => a.direction.name().cmp(b.direction.name()),
            Column::Proto => a.proto.name().cmp(b.proto.name()),
            Column::Port => a.port.cmp(&b.port),
            Column::Rate => a.bytes_per_second.total_cmp(&b.bytes_per_second),
            Column::Packets => a.packets_per_second.total_cmp(&b.packets_per_second),
            Column::Drops => a
                .dropped_packets_per_second
                .total_cmp(&b.dropped_packets_per_second),
            Column::WouldDrops => a
                .would_drop_packets_per_second
                .total_cmp(&b.would_drop_packets_per_second),
            Column::Conns | Column::Resets | Column::Rtt => {
                tcp_value(a, column).total_cmp(&tcp_value(b, column))
            }
            Column::Rule => rule_rate(a).cmp(&rule_rate(b)),
            Column::Bucket => bucket_fill(a).total_cmp(&bucket_fill(b)),
            Column::Process => a.process.cmp(&b.process),
        };
        let ordering = if descending {
            ordering.reverse()
        } else {
            ordering
        };
        ordering.then_with(|| identity(a).cmp(&identity(b)))
    });
}

/// The value a TCP column sorts on; -1 for rows without TCP counters (and RTTs without a
/// sample), so they sort after zero.
fn tcp_value(row: &Row, column: Column) -> f64 {
    row.tcp.as_ref().map_or(-1.0, |t| match column {
        Column::Conns => t.new_connections_per_second,
        Column::Resets => t.resets_per_second,
        _ => t.handshake_rtt_p99_seconds.unwrap_or(-1.0),
    })
}

fn rule_rate(row: &Row) -> Option<u64> {
    row.rule.as_ref().map(|r| r.rate_bps)
}

fn bucket_fill(row: &Row) -> f64 {
    row.rule.as_ref().map_or(-1.0, |r| r.bucket_fill)
}

/// Whether `row` matches a filter typed by the operator: a port number matches that port
/// exactly; any other text matches an interface or process name containing it. Empty matches
/// everything.
pub fn matches(row: &Row, filter: &str) -> bool {
    let filter = filter.trim();
    if filter.is_empty() {
        return true;
    }
    if let Ok(port) = filter.parse::<u16>() {
        return row.port == port;
    }
    row.iface.contains(filter) || row.process.as_deref().is_some_and(|p| p.contains(filter))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        policy::rule_table::{DirSel, ProtoSel, Side},
        telemetry::counter_snapshot::{
            PortStats, SCHEMA_VERSION as STATS_SCHEMA, UnclassifiedStats,
        },
        telemetry::listening_sockets::Listener,
    };

    fn port(port: u16, packets: u64, bytes: u64, rule: Option<u16>) -> PortStats {
        PortStats {
            iface: "eth0".into(),
            direction: Direction::Ingress,
            proto: Proto::Udp,
            port,
            packets,
            bytes,
            dropped_packets: packets / 2,
            dropped_bytes: bytes / 2,
            would_drop_packets: 0,
            would_drop_bytes: 0,
            rule,
            tcp: None,
        }
    }

    fn sample(at: Instant, ports: Vec<PortStats>, unclassified: u64) -> Sample {
        Sample {
            taken: at,
            snapshot: Snapshot {
                schema_version: STATS_SCHEMA,
                interfaces: Vec::new(),
                ports,
                unclassified: vec![UnclassifiedStats {
                    iface: "eth0".into(),
                    direction: Direction::Ingress,
                    reason: "icmp".into(),
                    packets: unclassified,
                    bytes: unclassified * 100,
                }],
                listening: vec![
                    Listener {
                        proto: Proto::Udp,
                        port: 9090,
                        process: "nginx".into(),
                    },
                    Listener {
                        proto: Proto::Udp,
                        port: 9090,
                        process: "worker".into(),
                    },
                ],
            },
            rules: vec![RuleView {
                id: 3,
                ports: PortRange::single(9090),
                side: Side::Local,
                dir: DirSel::Both,
                proto: ProtoSel::Any,
                iface: None,
                rate_bps: 8_000_000,
                rate: "8mbit".into(),
                burst_bytes: 300_000,
                burst: "300KB".into(),
                action: Action::Drop,
                passed_packets: 0,
                passed_bytes: 0,
                dropped_packets: 0,
                dropped_bytes: 0,
                would_drop_packets: 0,
                would_drop_bytes: 0,
                ingress_bucket_bytes: 75_000,
                egress_bucket_bytes: 300_000,
                origin: crate::policy::config_reload::Origin::Config,
                ecn: false,
                per_remote: false,
                remote_buckets: 0,
                marked_packets: 0,
                marked_bytes: 0,
                queue_bytes: 0,
                queued_packets: 0,
                queued_bytes: 0,
                backlog_packets: 0,
                backlog_bytes: 0,
                set_by: None,
            }],
        }
    }

    #[test]
    fn rates_are_deltas_over_the_real_elapsed_time() {
        let t0 = Instant::now();
        let before = sample(
            t0,
            vec![port(9090, 100, 100_000, Some(3)), port(22, 5, 500, None)],
            10,
        );
        // 2.5 s later, not the "1 s" anybody asked for.
        let after = sample(
            t0 + Duration::from_millis(2500),
            vec![
                port(9090, 600, 600_000, Some(3)),
                port(22, 5, 500, None),
                port(53, 25, 2_500, None),
            ],
            20,
        );
        let view = view(&before, &after);
        assert_eq!(view.interval_seconds, 2.5);
        // Port 22 did nothing: no row. Busiest first.
        let ports: Vec<u16> = view.rows.iter().map(|r| r.port).collect();
        assert_eq!(ports, [9090, 53]);
        // Half of everything is dropped in these samples: 200 kB/s seen, 100 kB/s passed.
        let top = &view.rows[0];
        assert_eq!(top.seen_bytes_per_second, 200_000.0);
        assert_eq!(top.bytes_per_second, 100_000.0);
        assert_eq!(top.bits_per_second, 800_000.0);
        assert_eq!(top.seen_packets_per_second, 200.0);
        assert_eq!(top.packets_per_second, 100.0);
        assert_eq!(top.dropped_packets_per_second, 100.0);
        assert_eq!(top.process.as_deref(), Some("nginx,worker"));
        let rule = top.rule.as_ref().expect("rule");
        assert_eq!((rule.id, rule.bucket_fill), (3, 0.25));
        // A port first seen in `after` counts from zero.
        assert_eq!(view.rows[1].seen_packets_per_second, 10.0);
        assert_eq!(view.totals.seen_bytes_per_second, 201_000.0);
        assert_eq!(view.totals.bytes_per_second, 100_500.0);
        assert_eq!(view.unclassified.packets_per_second, 4.0);
    }

    /// The schema promises `bits_per_second` = 8 × `bytes_per_second`. Both are written as the
    /// shortest decimal that reads back as the same `f64`, and ×8 is exact in binary, so a
    /// reader that parses correctly rounded (serde_json's `float_roundtrip`, Python's `float`)
    /// finds them equal to the last bit. serde_json's default parser is off by one ulp on
    /// some such strings, which is what this test catches.
    #[test]
    fn bits_are_eight_times_bytes_after_a_json_round_trip() {
        let t0 = Instant::now();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed >> 20
        };
        for _ in 0..2_000 {
            let before = sample(t0, vec![port(9090, 0, 0, None)], 0);
            let packets = 1 + next() % 1_000_000;
            let bytes = packets * (64 + next() % 1_450);
            let interval = Duration::from_nanos(1_000_000 + next() % 10_000_000_000);
            let after = sample(t0 + interval, vec![port(9090, packets, bytes, None)], 0);
            let json = serde_json::to_string(&view(&before, &after)).expect("serialize");
            let parsed: serde_json::Value = serde_json::from_str(&json).expect("parse");
            for object in [&parsed["rows"][0], &parsed["totals"]] {
                let bytes = object["bytes_per_second"].as_f64().expect("bytes");
                let bits = object["bits_per_second"].as_f64().expect("bits");
                assert_eq!(bits, bytes * 8.0, "{json}");
            }
        }
    }

    /// `shaper top --once --json` prints this JSON; it must not change.
    #[test]
    fn a_row_serializes_to_the_documented_json() {
        let row = Row {
            iface: "eth0".into(),
            direction: Direction::Egress,
            proto: Proto::Tcp,
            port: 9090,
            bytes_per_second: 1.5,
            bits_per_second: 12.0,
            packets_per_second: 2.0,
            seen_bytes_per_second: 3.0,
            seen_packets_per_second: 4.0,
            dropped_packets_per_second: 0.5,
            would_drop_packets_per_second: 0.0,
            rule: Some(RuleInForce {
                id: 3,
                ports: PortRange { lo: 9000, hi: 9099 },
                rate_bps: 8_000_000,
                burst_bytes: 300_000,
                action: Action::Observe,
                bucket_fill: 0.25,
                queue_delay_ms: None,
            }),
            process: Some("nginx".into()),
            tcp: None,
        };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(
            json,
            r#"{"iface":"eth0","direction":"egress","proto":"tcp","port":9090,"bytes_per_second":1.5,"bits_per_second":12.0,"packets_per_second":2.0,"seen_bytes_per_second":3.0,"seen_packets_per_second":4.0,"dropped_packets_per_second":0.5,"would_drop_packets_per_second":0.0,"rule":{"id":3,"ports":"9000-9099","rate_bps":8000000,"burst_bytes":300000,"action":"observe","bucket_fill":0.25},"process":"nginx"}"#
        );
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
    }

    #[test]
    fn a_restarted_daemon_counts_from_zero_not_negative() {
        let t0 = Instant::now();
        let before = sample(t0, vec![port(80, 1_000, 1_000_000, None)], 0);
        let after = sample(
            t0 + Duration::from_secs(1),
            vec![port(80, 10, 1_000, None)],
            0,
        );
        let view = view(&before, &after);
        assert_eq!(view.rows[0].seen_packets_per_second, 10.0);
    }

    #[test]
    fn sorting_and_filtering() {
        let t0 = Instant::now();
        let before = sample(t0, Vec::new(), 0);
        let after = sample(
            t0 + Duration::from_secs(1),
            vec![
                port(9090, 1, 50, Some(3)),
                port(80, 2, 900, None),
                port(443, 3, 300, None),
            ],
            0,
        );
        let mut rows = view(&before, &after).rows;
        let ports = |rows: &[Row]| rows.iter().map(|r| r.port).collect::<Vec<_>>();
        assert_eq!(ports(&rows), [80, 443, 9090]);
        sort(&mut rows, Column::Port, false);
        assert_eq!(ports(&rows), [80, 443, 9090]);
        sort(&mut rows, Column::Packets, true);
        assert_eq!(ports(&rows), [443, 80, 9090]);
        sort(&mut rows, Column::Rule, true);
        assert_eq!(ports(&rows)[0], 9090);
        assert!(matches(&rows[0], "9090") && !matches(&rows[0], "909"));
        assert!(matches(&rows[0], "ngin") && matches(&rows[0], "eth"));
        assert!(!matches(&rows[1], "nginx"));
        assert!(matches(&rows[1], " "));
        assert_eq!(Column::Process.next(), Column::Iface);
        assert_eq!(Column::Iface.previous(), Column::Process);
    }
}
