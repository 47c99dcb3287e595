//! A point-in-time copy of the counters, as `shaper stats` prints it (JSON schema version 1).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use shaper_common::reason;

use crate::{
    Direction,
    datapath::classifier::{Classifier, PROTOCOLS, Proto},
    telemetry::listening_sockets::Listener,
};

/// The JSON schema version of [`Snapshot`]; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub schema_version: u32,
    pub interfaces: Vec<InterfaceInfo>,
    /// Ports that have seen traffic, sorted by interface, direction, protocol, port.
    pub ports: Vec<PortStats>,
    /// Packets without a port, by reason; only reasons that have seen traffic.
    pub unclassified: Vec<UnclassifiedStats>,
    /// Local TCP sockets listening and UDP sockets bound, with their owners, in the daemon's
    /// network namespace.
    #[serde(default)]
    pub listening: Vec<Listener>,
}

impl Snapshot {
    /// Every counter of `classifier` that has seen traffic. `listening` is left empty: the
    /// daemon adds the sockets, which are not the datapath's.
    pub fn read(classifier: &Classifier) -> crate::telemetry::Result<Self> {
        let mut snapshot = Self {
            schema_version: SCHEMA_VERSION,
            interfaces: Vec::new(),
            ports: Vec::new(),
            unclassified: Vec::new(),
            listening: Vec::new(),
        };
        let counters = classifier.port_counters();
        for iface in classifier.current_interfaces() {
            let slot = iface.slot;
            snapshot.interfaces.push(InterfaceInfo {
                name: iface.name.clone(),
                ifindex: iface.ifindex,
                attach: iface.mode.map_or("none", |mode| mode.name()).to_owned(),
            });
            for direction in Direction::BOTH {
                for proto in PROTOCOLS {
                    counters.for_each_active(
                        slot,
                        direction.index(),
                        proto.index(),
                        |port, reading| {
                            snapshot.ports.push(PortStats {
                                iface: iface.name.clone(),
                                direction,
                                proto,
                                port,
                                packets: reading.seen.packets,
                                bytes: reading.seen.bytes,
                                dropped_packets: reading.dropped.packets,
                                dropped_bytes: reading.dropped.bytes,
                                would_drop_packets: reading.would_drop.packets,
                                would_drop_bytes: reading.would_drop.bytes,
                                rule: classifier.local_rule(slot, direction, proto.index(), port),
                                tcp: (proto == Proto::Tcp)
                                    .then(|| counters.tcp().counts(slot, direction.index(), port))
                                    .flatten(),
                            });
                        },
                    );
                }
                for (reason, reason_name) in reason::NAMES.iter().enumerate() {
                    let counter =
                        classifier.unclassified_counter(slot, direction, reason as u32)?;
                    if counter.packets != 0 {
                        snapshot.unclassified.push(UnclassifiedStats {
                            iface: iface.name.clone(),
                            direction,
                            reason: (*reason_name).to_owned(),
                            packets: counter.packets,
                            bytes: counter.bytes,
                        });
                    }
                }
            }
        }
        Ok(snapshot)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub ifindex: u32,
    /// `tcx` or `clsact`.
    pub attach: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortStats {
    pub iface: String,
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// The local port: destination on ingress, source on egress.
    pub port: u16,
    /// Everything the hook saw on this port, passed or not.
    pub packets: u64,
    pub bytes: u64,
    /// Dropped by a `drop` rule (included in `packets`/`bytes`).
    #[serde(default)]
    pub dropped_packets: u64,
    #[serde(default)]
    pub dropped_bytes: u64,
    /// Passed by an `observe` rule that `drop` would have dropped.
    #[serde(default)]
    pub would_drop_packets: u64,
    #[serde(default)]
    pub would_drop_bytes: u64,
    /// The id of the rule in force on this local port (as `shaper limit ls` lists it), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u16>,
    /// TCP connection counters and round trips (TCP rows that counted any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<crate::telemetry::tcp_counts::TcpCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnclassifiedStats {
    pub iface: String,
    /// `ingress` or `egress`.
    pub direction: Direction,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Snapshot {
    /// The counter of one port, if it has seen traffic.
    pub fn port(
        &self,
        iface: &str,
        direction: Direction,
        proto: Proto,
        port: u16,
    ) -> Option<&PortStats> {
        self.ports.iter().find(|p| {
            p.iface == iface && p.direction == direction && p.proto == proto && p.port == port
        })
    }

    /// The counter of one unclassified reason, if it has seen traffic.
    pub fn unclassified(
        &self,
        iface: &str,
        direction: Direction,
        reason: &str,
    ) -> Option<&UnclassifiedStats> {
        self.unclassified
            .iter()
            .find(|u| u.iface == iface && u.direction == direction && u.reason == reason)
    }

    /// The human-readable table of `shaper stats`.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for iface in &self.interfaces {
            let _ = writeln!(
                out,
                "interface {} (ifindex {}, {})",
                iface.name, iface.ifindex, iface.attach
            );
        }
        if self.ports.is_empty() {
            out.push_str("\nno port has seen traffic yet\n");
        } else {
            let _ = writeln!(
                out,
                "\n{:<16} {:<8} {:<5} {:>5} {:>14} {:>16} {:>12} {:>12}",
                "IFACE", "DIR", "PROTO", "PORT", "PACKETS", "BYTES", "DROPPED", "WOULD-DROP"
            );
            for p in &self.ports {
                let _ = writeln!(
                    out,
                    "{:<16} {:<8} {:<5} {:>5} {:>14} {:>16} {:>12} {:>12}",
                    p.iface,
                    p.direction,
                    p.proto,
                    p.port,
                    p.packets,
                    p.bytes,
                    p.dropped_packets,
                    p.would_drop_packets
                );
            }
        }
        if !self.unclassified.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<16} {:<8} {:<14} {:>14} {:>16}",
                "IFACE", "DIR", "UNCLASSIFIED", "PACKETS", "BYTES"
            );
            for u in &self.unclassified {
                let _ = writeln!(
                    out,
                    "{:<16} {:<8} {:<14} {:>14} {:>16}",
                    u.iface, u.direction, u.reason, u.packets, u.bytes
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            schema_version: SCHEMA_VERSION,
            interfaces: vec![InterfaceInfo {
                name: "eth0".into(),
                ifindex: 2,
                attach: "tcx".into(),
            }],
            ports: vec![PortStats {
                iface: "eth0".into(),
                direction: Direction::Ingress,
                proto: Proto::Tcp,
                port: 443,
                packets: 10,
                bytes: 15_000,
                dropped_packets: 2,
                dropped_bytes: 3_000,
                would_drop_packets: 0,
                would_drop_bytes: 0,
                rule: Some(4),
                tcp: None,
            }],
            unclassified: vec![UnclassifiedStats {
                iface: "eth0".into(),
                direction: Direction::Egress,
                reason: "non_ip".into(),
                packets: 1,
                bytes: 42,
            }],
            listening: vec![Listener {
                proto: Proto::Tcp,
                port: 443,
                process: "nginx".into(),
            }],
        }
    }

    #[test]
    fn json_field_names_are_the_documented_schema() {
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["interfaces"][0]["attach"], "tcx");
        let port = &json["ports"][0];
        for key in [
            "iface",
            "direction",
            "proto",
            "port",
            "packets",
            "bytes",
            "dropped_packets",
            "dropped_bytes",
            "would_drop_packets",
            "would_drop_bytes",
            "rule",
        ] {
            assert!(port.get(key).is_some(), "ports[] lacks {key}");
        }
        let listening = &json["listening"][0];
        for key in ["proto", "port", "process"] {
            assert!(listening.get(key).is_some(), "listening[] lacks {key}");
        }
        let reason = &json["unclassified"][0];
        for key in ["iface", "direction", "reason", "packets", "bytes"] {
            assert!(reason.get(key).is_some(), "unclassified[] lacks {key}");
        }
    }

    /// `shaper stats --json` and the control protocol carry this JSON; it must not change.
    #[test]
    fn ports_reasons_and_listeners_serialize_to_the_documented_json() {
        let s = sample();
        let json = serde_json::to_string(&(&s.ports, &s.unclassified, &s.listening)).unwrap();
        assert_eq!(
            json,
            r#"[[{"iface":"eth0","direction":"ingress","proto":"tcp","port":443,"packets":10,"bytes":15000,"dropped_packets":2,"dropped_bytes":3000,"would_drop_packets":0,"would_drop_bytes":0,"rule":4}],[{"iface":"eth0","direction":"egress","reason":"non_ip","packets":1,"bytes":42}],[{"proto":"tcp","port":443,"process":"nginx"}]]"#
        );
        let back: (Vec<PortStats>, Vec<UnclassifiedStats>, Vec<Listener>) =
            serde_json::from_str(&json).unwrap();
        assert_eq!(back, (s.ports, s.unclassified, s.listening));
    }

    #[test]
    fn table_lists_ports_and_reasons() {
        let table = sample().to_table();
        assert!(table.contains("interface eth0 (ifindex 2, tcx)"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["eth0", "ingress", "tcp", "443", "10", "15000", "2", "0"]),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["eth0", "egress", "non_ip", "1", "42"]),
            "{table}"
        );
    }

    #[test]
    fn lookup_finds_one_port() {
        let s = sample();
        assert_eq!(
            s.port("eth0", Direction::Ingress, Proto::Tcp, 443)
                .map(|p| p.packets),
            Some(10)
        );
        assert!(s.port("eth0", Direction::Egress, Proto::Tcp, 443).is_none());
    }
}
