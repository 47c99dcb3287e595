//! TCP connection telemetry: handshake, reset and close counters per port, the in-flight
//! handshakes the classifier tracks, and the handshake round-trip histograms.
//!
//! Which port an event counts under: a SYN under its destination port and a SYN-ACK under its
//! source port — the server's port either way, so a service's port on ingress and a backend's
//! port for the connections this host opens (egress SYN, ingress SYN-ACK). RST and FIN, which
//! either end sends, count under the local port, like the packet counters.

use core::mem::size_of;

use crate::{DIRECTIONS, PORTS};

/// TCP header flag bits (RFC 9293 section 3.1, byte 13 of the header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Per (interface, direction, port) TCP event counters, shared by all CPUs (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvents {
    /// Connection attempts: SYN without ACK, under the destination port.
    pub syn: u64,
    /// Accepted handshakes: SYN with ACK, under the source port.
    pub synack: u64,
    /// Segments with RST, under the local port.
    pub rst: u64,
    /// Segments with FIN, under the local port.
    pub fin: u64,
    /// Ingress row only: SYNs to this local port answered by a RST (nothing listens).
    pub probes: u64,
    /// Ingress row only: handshakes of this local port waiting for the peer's ACK (a SYN-ACK
    /// sent, tracked in `HANDSHAKES`). The program looks the ACKs of a port up only while this
    /// is not zero; an entry the LRU evicts leaves it raised (more lookups, never a wrong sample).
    pub pending: u64,
}
const _: () = assert!(size_of::<TcpEvents>() == 48);

// SAFETY: repr(C) of six u64, no padding (size asserted above), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TcpEvents {}

/// TCP event rows one attached interface owns: every port, both directions.
pub const TCP_EVENTS_PER_IFACE: u32 = DIRECTIONS * PORTS;

#[inline(always)]
pub const fn tcp_events_index(slot: u32, direction: u32, port: u16) -> u32 {
    (slot * DIRECTIONS + direction) * PORTS + port as u32
}

/// Handshakes tracked at once, over all interfaces: an LRU hash, so a flood of SYNs that are
/// never completed evicts the oldest entries instead of filling it for good.
pub const HANDSHAKE_ENTRIES: u32 = 16_384;

/// The side of a handshake round trip: measured for a local port (our SYN-ACK to the client's
/// ACK: the client's round trip) or for a connection this host opened (our SYN to the server's
/// SYN-ACK: the server's).
pub const RTT_SIDE_CLIENT: u32 = 0;
pub const RTT_SIDE_SERVER: u32 = 1;
pub const RTT_SIDES: u32 = 2;

/// One in-flight handshake, keyed from this host's point of view. IPv4 addresses are stored as
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so the key has one layout for both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HandshakeKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// Interface slot: the same 4-tuple on two interfaces is two handshakes.
    pub slot: u32,
}
const _: () = assert!(size_of::<HandshakeKey>() == 40);

/// A handshake's state: [`handshake::SYN_RECEIVED`] and so on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshake {
    /// `bpf_ktime_get_ns()` of the segment the round trip is timed from.
    pub stamp_ns: u64,
    pub state: u32,
    /// [`handshake::RETRANSMITTED`] once the timed segment was sent again.
    pub flags: u32,
}
const _: () = assert!(size_of::<Handshake>() == 16);

// SAFETY: repr(C) of two [u8; 16], two u16 and a u32: no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for HandshakeKey {}
// SAFETY: repr(C) of a u64 and two u32, no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Handshake {}

pub mod handshake {
    /// A SYN came in; no SYN-ACK went out yet.
    pub const SYN_RECEIVED: u32 = 1;
    /// Our SYN-ACK went out; the client's ACK completes the client-side sample.
    pub const SYNACK_SENT: u32 = 2;
    /// Our SYN went out; the server's SYN-ACK completes the server-side sample.
    pub const SYN_SENT: u32 = 3;
    /// The timed segment (SYN-ACK or SYN) was retransmitted: the reply cannot say which copy it
    /// answers, so the handshake gives no sample.
    pub const RETRANSMITTED: u32 = 1;
}

/// Handshake tracking totals, over all interfaces (one shared element, atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    /// Handshakes timed: a SYN-ACK sent after a tracked SYN, or a SYN sent.
    pub timed: u64,
    /// Samples recorded in `HANDSHAKE_RTT`.
    pub measured: u64,
    /// Timed handshakes that ended without a sample: retransmitted, or reset.
    pub discarded: u64,
    pub _reserved: u64,
}
const _: () = assert!(size_of::<HandshakeStats>() == 32);

// SAFETY: repr(C) of four u64, no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for HandshakeStats {}

/// (local port, remote address) pairs remembered for `shaper exposure`: the remote of every
/// handshake a local port accepted, the most recent ones when there are more.
pub const REMOTE_ENTRIES: u32 = 32_768;

/// A remote address a local port accepted a handshake from (sent it a SYN-ACK).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RemoteKey {
    pub slot: u32,
    pub local_port: u16,
    pub _pad: u16,
    /// IPv4 as IPv4-mapped IPv6, like [`HandshakeKey`].
    pub remote_addr: [u8; 16],
}
const _: () = assert!(size_of::<RemoteKey>() == 24);

// SAFETY: repr(C) of a u32, two u16 and a [u8; 16]: no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for RemoteKey {}

/// Histogram buckets: upper bounds 2^16 ns (65.5 µs) doubling to 2^32 ns (4.29 s), then +Inf.
/// Powers of two of nanoseconds make the bucket a bit length, with no division in the program,
/// and each bound an exact decimal number of seconds.
pub const RTT_FIRST_BOUND_LOG2_NS: u32 = 16;
pub const RTT_FINITE_BUCKETS: usize = 17;
pub const RTT_BUCKETS: usize = RTT_FINITE_BUCKETS + 1;

/// One port's handshake round trips on one side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttHistogram {
    /// Non-cumulative counts: `buckets[i]` holds samples in (bound(i-1), bound(i)].
    pub buckets: [u64; RTT_BUCKETS],
    pub sum_ns: u64,
    pub _reserved: u64,
}
const _: () = assert!(size_of::<RttHistogram>() == 160);

// SAFETY: repr(C) of twenty u64, no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for RttHistogram {}

pub const RTT_HISTOGRAMS_PER_IFACE: u32 = RTT_SIDES * PORTS;

#[inline(always)]
pub const fn rtt_index(slot: u32, side: u32, port: u16) -> u32 {
    (slot * RTT_SIDES + side) * PORTS + port as u32
}

/// The upper bound of bucket `i` in nanoseconds (`u64::MAX` for the last, +Inf).
pub const fn rtt_bucket_bound_ns(i: usize) -> u64 {
    if i >= RTT_FINITE_BUCKETS {
        u64::MAX
    } else {
        1 << (RTT_FIRST_BOUND_LOG2_NS as usize + i)
    }
}

/// The bucket of a round trip of `ns` nanoseconds: the first whose bound is >= `ns`. Unrolled
/// compares rather than a leading-zeros count, which the BPF backend has no instruction for.
#[inline(always)]
pub const fn rtt_bucket(ns: u64) -> usize {
    let mut i = 0;
    while i < RTT_FINITE_BUCKETS {
        if ns <= 1 << (RTT_FIRST_BOUND_LOG2_NS as usize + i) {
            return i;
        }
        i += 1;
    }
    RTT_FINITE_BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_bounds_and_fifty_ms_lands_below_67_ms() {
        assert_eq!(rtt_bucket(0), 0);
        assert_eq!(rtt_bucket(65_536), 0);
        assert_eq!(rtt_bucket(65_537), 1);
        assert_eq!(rtt_bucket(1 << 32), RTT_FINITE_BUCKETS - 1);
        assert_eq!(rtt_bucket((1 << 32) + 1), RTT_FINITE_BUCKETS);
        let fifty_ms = rtt_bucket(50_000_000);
        assert_eq!(rtt_bucket_bound_ns(fifty_ms), 1 << 26);
        assert!(rtt_bucket_bound_ns(fifty_ms - 1) < 50_000_000);
    }

    #[test]
    fn tcp_event_and_rtt_indices_are_dense() {
        assert_eq!(
            tcp_events_index(0, crate::DIR_EGRESS, u16::MAX),
            TCP_EVENTS_PER_IFACE - 1
        );
        assert_eq!(rtt_index(1, RTT_SIDE_CLIENT, 0), RTT_HISTOGRAMS_PER_IFACE);
    }
}
