//! The TCP connection families: handshake, reset and close counters, probes of closed ports and
//! handshake round-trip histograms, for the same ports the traffic families show.
//!
//! Only shown ports get these series (no `other`): a port's series appear once it counted an
//! event, so a quiet port adds nothing to a scrape.

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter},
};
use shaper_common::{
    DIR_INGRESS, PROTO_TCP, RTT_FINITE_BUCKETS, RTT_SIDE_CLIENT, RTT_SIDE_SERVER, RttHistogram,
    TcpEvents, rtt_bucket_bound_ns,
};

use super::port_selection::Selection;
use crate::datapath::{mapped_arrays::PortCounters, tcp_telemetry::HandshakeTracking};

/// One shown TCP port's events and, when it has samples, its round trips.
#[derive(Debug, Clone)]
pub struct TcpSeries {
    pub slot: u32,
    pub direction: u32,
    pub port: u16,
    pub events: TcpEvents,
    /// Client-side round trips on an ingress row, server-side on an egress row.
    pub rtt: Option<RttHistogram>,
}

/// Reads the TCP telemetry of the shown TCP ports.
pub fn collect(counters: &PortCounters, selection: &Selection) -> Vec<TcpSeries> {
    let tcp = counters.tcp();
    selection
        .shown
        .iter()
        .filter(|(key, _)| key.proto == PROTO_TCP)
        .filter_map(|(key, _)| {
            let events = tcp.events(key.slot, key.direction, key.port);
            let side = if key.direction == DIR_INGRESS {
                RTT_SIDE_CLIENT
            } else {
                RTT_SIDE_SERVER
            };
            let rtt = tcp.histogram(key.slot, side, key.port);
            let rtt = (rtt.buckets.iter().any(|&b| b != 0)).then_some(rtt);
            let quiet = TcpEvents {
                pending: events.pending,
                ..TcpEvents::default()
            };
            (events != quiet || rtt.is_some()).then_some(TcpSeries {
                slot: key.slot,
                direction: key.direction,
                port: key.port,
                events,
                rtt,
            })
        })
        .collect()
}

/// Picks one counter of a port's events.
type EventField = fn(&TcpEvents) -> u64;

/// The counter families: (name without `_total`, help, field).
const EVENT_FAMILIES: [(&str, &str, EventField); 4] = [
    (
        "shaper_tcp_syn",
        "TCP connection attempts (SYN without ACK), under the destination port: a local service's on ingress, a remote server's on egress.",
        |e| e.syn,
    ),
    (
        "shaper_tcp_synack",
        "TCP handshakes accepted (SYN-ACK), under the source port: a local service's on egress, a remote server's on ingress.",
        |e| e.synack,
    ),
    (
        "shaper_tcp_rst",
        "TCP segments with RST, under the local port.",
        |e| e.rst,
    ),
    (
        "shaper_tcp_fin",
        "TCP segments with FIN (orderly closes), under the local port.",
        |e| e.fin,
    ),
];

/// Writes the TCP families; `iface_name` names an interface slot.
pub fn encode<'a>(
    encoder: &mut DescriptorEncoder,
    series: &[TcpSeries],
    tracking: Option<&HandshakeTracking>,
    iface_name: impl Fn(u32) -> &'a str,
) -> Result<(), std::fmt::Error> {
    let direction_name = |d: u32| {
        if d == DIR_INGRESS {
            "ingress"
        } else {
            "egress"
        }
    };
    for (name, help, field) in EVENT_FAMILIES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for s in series {
            let port = s.port.to_string();
            let labels = [
                ("iface", iface_name(s.slot)),
                ("direction", direction_name(s.direction)),
                ("port", port.as_str()),
            ];
            ConstCounter::new(field(&s.events)).encode(family.encode_family(&labels)?)?;
        }
    }

    let mut family = encoder.encode_descriptor(
        "shaper_tcp_probes",
        "SYNs to a local port that were answered by a RST: nothing listens there.",
        None,
        MetricType::Counter,
    )?;
    for s in series.iter().filter(|s| s.direction == DIR_INGRESS) {
        let port = s.port.to_string();
        let labels = [("iface", iface_name(s.slot)), ("port", port.as_str())];
        ConstCounter::new(s.events.probes).encode(family.encode_family(&labels)?)?;
    }

    let mut family = encoder.encode_descriptor(
        "shaper_tcp_handshake_rtt_seconds",
        "TCP handshake round trips: side=client from our SYN-ACK to the client's ACK (a local port), side=server from our SYN to the server's SYN-ACK (a remote port). Retransmitted handshakes are not sampled.",
        None,
        MetricType::Histogram,
    )?;
    for s in series {
        let Some(rtt) = &s.rtt else { continue };
        let port = s.port.to_string();
        let side = if s.direction == DIR_INGRESS {
            "client"
        } else {
            "server"
        };
        let labels = [
            ("iface", iface_name(s.slot)),
            ("port", port.as_str()),
            ("side", side),
        ];
        let buckets: Vec<(f64, u64)> = rtt
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let bound = if i < RTT_FINITE_BUCKETS {
                    rtt_bucket_bound_ns(i) as f64 / 1e9
                } else {
                    f64::INFINITY
                };
                (bound, count)
            })
            .collect();
        let count = rtt.buckets.iter().sum();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(rtt.sum_ns as f64 / 1e9, count, &buckets, None)?;
    }

    if let Some(tracking) = tracking {
        for (name, help, value) in [
            (
                "shaper_tcp_handshakes_discarded",
                "Timed TCP handshakes that gave no round-trip sample: retransmitted or reset.",
                tracking.discarded,
            ),
            (
                "shaper_tcp_handshake_samples_lost",
                "Timed TCP handshakes evicted from the tracker (an LRU) before their reply: round-trip samples lost.",
                tracking.lost,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
    }
    Ok(())
}
