//! Types and constants shared by the eBPF classifier and userspace.
//!
//! Everything here is `#[repr(C)]` with explicit layout and no implicit padding, so the kernel
//! and userspace read the same bytes; sizes are pinned at compile time.
#![no_std]

use core::mem::size_of;

/// Map names, as userspace finds them in the loaded object.
pub mod maps {
    /// `ARRAY` of [`PortCounter`](crate::PortCounter), indexed by [`port_counter_index`](crate::port_counter_index).
    pub const PORT_COUNTERS: &str = "PORT_COUNTERS";
    /// `PERCPU_ARRAY` of [`Counter`](crate::Counter), indexed by [`unclassified_index`](crate::unclassified_index).
    pub const UNCLASSIFIED: &str = "UNCLASSIFIED";
    /// `HASH` from ifindex (`u32`) to interface slot (`u32`).
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
}

/// Program names (the `#[classifier]` functions), one per hook direction.
pub mod programs {
    pub const INGRESS: &str = "shaper_ingress";
    pub const EGRESS: &str = "shaper_egress";
}

/// Hook direction. The local port is the destination port on ingress and the source port on
/// egress: the port of the service on this host.
pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;
pub const DIRECTIONS: u32 = 2;

/// L4 protocols that have ports and therefore per-port counters.
pub const PROTO_TCP: u32 = 0;
pub const PROTO_UDP: u32 = 1;
pub const PROTOS: u32 = 2;

pub const PORTS: u32 = 1 << 16;

/// Port counters one attached interface owns: every port, both protocols, both directions.
pub const PORT_COUNTERS_PER_IFACE: u32 = DIRECTIONS * PROTOS * PORTS;

/// Upper bound on interfaces one daemon attaches to (slots in `IFACE_SLOTS`). The counter map is
/// sized at load time for the interfaces actually attached, so this costs nothing until used.
pub const MAX_IFACES: u32 = 64;

/// Why a packet has no port. Every packet the classifier sees is counted exactly once: under a
/// port or under one of these reasons.
pub mod reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...), after up to two VLAN tags.
    pub const NON_IP: u32 = 0;
    /// The packet ends inside a header the classifier needs.
    pub const TRUNCATED: u32 = 1;
    /// A header is inconsistent: IP version mismatch, IPv4 IHL < 5, TCP data offset < 5.
    pub const MALFORMED: u32 = 2;
    /// A non-first fragment: it carries no L4 header, so it has no ports.
    pub const FRAGMENT: u32 = 3;
    /// ICMP or ICMPv6.
    pub const ICMP: u32 = 4;
    /// Any other L4 protocol (SCTP, GRE, ESP, IPv6 "no next header", ...).
    pub const OTHER_L4: u32 = 5;
    /// More IPv6 extension headers than the classifier walks (a bounded loop).
    pub const IPV6_EXT_LIMIT: u32 = 6;
    pub const COUNT: u32 = 7;

    /// Stable names, used in `shaper stats` output and metrics labels.
    pub const NAMES: [&str; COUNT as usize] = [
        "non_ip",
        "truncated",
        "malformed",
        "fragment",
        "icmp",
        "other_l4",
        "ipv6_ext_limit",
    ];
}

/// IPv6 extension headers walked before giving up with [`reason::IPV6_EXT_LIMIT`].
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;

/// Packets and bytes. Bytes are wire bytes including the L2 header (no preamble or FCS); a GSO
/// aggregate counts as its segments, each with its own copy of the headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Per-port counter; the same layout as [`Counter`], named for the map it lives in.
pub type PortCounter = Counter;

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

/// Index of the counter of (interface slot, direction, protocol, local port) in `PORT_COUNTERS`.
#[inline(always)]
pub const fn port_counter_index(slot: u32, direction: u32, proto: u32, port: u16) -> u32 {
    ((slot * DIRECTIONS + direction) * PROTOS + proto) * PORTS + port as u32
}

/// Index of the counter of (interface slot, direction, reason) in `UNCLASSIFIED`.
#[inline(always)]
pub const fn unclassified_index(slot: u32, direction: u32, reason: u32) -> u32 {
    (slot * DIRECTIONS + direction) * reason::COUNT + reason
}

/// Entries `UNCLASSIFIED` needs for `MAX_IFACES` interfaces.
pub const UNCLASSIFIED_ENTRIES: u32 = MAX_IFACES * DIRECTIONS * reason::COUNT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_counter_indices_are_dense_and_disjoint() {
        assert_eq!(port_counter_index(0, DIR_INGRESS, PROTO_TCP, 0), 0);
        assert_eq!(
            port_counter_index(0, DIR_EGRESS, PROTO_UDP, u16::MAX),
            PORT_COUNTERS_PER_IFACE - 1
        );
        assert_eq!(
            port_counter_index(1, DIR_INGRESS, PROTO_TCP, 0),
            PORT_COUNTERS_PER_IFACE
        );
        assert_eq!(
            port_counter_index(MAX_IFACES - 1, DIR_EGRESS, PROTO_UDP, u16::MAX),
            MAX_IFACES * PORT_COUNTERS_PER_IFACE - 1
        );
    }

    #[test]
    fn unclassified_indices_cover_the_map_exactly() {
        assert_eq!(unclassified_index(0, DIR_INGRESS, 0), 0);
        assert_eq!(
            unclassified_index(MAX_IFACES - 1, DIR_EGRESS, reason::COUNT - 1),
            UNCLASSIFIED_ENTRIES - 1
        );
    }
}
