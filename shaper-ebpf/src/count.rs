//! Accounting: every packet lands in exactly one counter, a port's or an unclassified reason's.

use crate::{
    IFACE_SLOT_BY_IFINDEX, IFACE_SLOTS, PORT_COUNTERS, UNCLASSIFIED, atomic::add_counter, parse,
    tcp_events, unplaced,
};
use aya_ebpf::programs::TcContext;
use shaper_common::{
    DIR_INGRESS, DIRECT_IFINDEXES, MAX_IFACES, PROTO_TCP, port_counter_index, unclassified_index,
};

/// A packet with ports, as counted: what the limiter needs to find and charge its rule.
pub struct Packet {
    pub slot: u32,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u32,
    pub local_port: u16,
    pub remote_port: u16,
    /// Index of the local port's counters (`PORT_COUNTERS`, `PORT_VERDICTS`).
    pub counter_index: u32,
    pub segments: u64,
    /// Wire bytes of every segment.
    pub bytes: u64,
}

/// What counting found out about a packet.
pub enum Observed {
    /// It has ports, and may match a port's rule.
    Port(Packet),
    /// It may have ports, but the parse could not place it (see `unplaced`): an `unplaced`
    /// rule may govern it.
    Unplaced {
        slot: u32,
        bytes: u64,
        segments: u64,
    },
    /// No rule can govern it: no ports to find, or not an interface of this daemon.
    Elsewhere,
}

/// Counts the packet, and says what can govern it.
#[inline(always)]
pub fn observe(ctx: &TcContext, direction: u32) -> Observed {
    // SAFETY: `skb` is the `__sk_buff` context the kernel passed to this run; the verifier checked
    // this field read against the context's layout (`tc_cls_act_is_valid_access`).
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let slot = shaper_iface_slot(ifindex);
    if slot >= MAX_IFACES {
        // Not an interface this daemon registered (a race at attach time): pass, uncounted.
        return Observed::Elsewhere;
    }
    // A GSO/GRO aggregate is one skb for many wire packets; gso_segs is 0 for a plain skb.
    // SAFETY: a context field read, checked by the verifier like `ifindex` above.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    let segments = if gso_segs > 1 { gso_segs as u64 } else { 1 };
    let len = ctx.len() as u64;

    match parse::parse(ctx) {
        Ok(flow) => {
            let (local_port, remote_port) = if direction == DIR_INGRESS {
                (flow.dst_port, flow.src_port)
            } else {
                (flow.src_port, flow.dst_port)
            };
            // skb->len holds the headers once; every further segment repeats them on the wire.
            // This is qdisc_pkt_len_init()'s rule (net/core/dev.c). __sk_buff.wire_len is not
            // used because on ingress it is set before the L2 header is pushed back and without
            // the GSO correction (sch_handle_ingress() sets pkt_len = skb->len).
            let bytes = len + (segments - 1) * flow.header_len as u64;
            let counter_index = port_counter_index(slot, direction, flow.proto, local_port);
            if let Some(counter) = PORT_COUNTERS.get_ptr_mut(counter_index) {
                // SAFETY: `get_ptr_mut` returned a non-null pointer to an element of the array
                // (index checked by the lookup), which lives as long as the map, so past this run.
                unsafe { add_counter(counter, segments, bytes) };
            }
            if flow.proto == PROTO_TCP {
                tcp_events::observe(ctx, slot, direction, &flow, local_port, remote_port);
            }
            Observed::Port(Packet {
                slot,
                proto: flow.proto,
                local_port,
                remote_port,
                counter_index,
                segments,
                bytes,
            })
        }
        Err(reason) => {
            if let Some(counter) =
                UNCLASSIFIED.get_ptr_mut(unclassified_index(slot, direction, reason))
            {
                // SAFETY: `counter` is this CPU's copy of a per-CPU element (non-null, index
                // checked by the lookup). Only programs on this CPU write it, and tc programs run
                // with migration disabled, so a plain add races no other writer; userspace only
                // reads copies through the syscall.
                unsafe {
                    (*counter).packets += segments;
                    (*counter).bytes += len;
                }
            }
            if unplaced::governs(reason) {
                Observed::Unplaced {
                    slot,
                    bytes: len,
                    segments,
                }
            } else {
                Observed::Elsewhere
            }
        }
    }
}

/// The interface slot of `ifindex`, or `MAX_IFACES` if it has none: an array read for the usual
/// small ifindex, the hash (9–12 ns more per packet, measured) only above `DIRECT_IFINDEXES`.
///
/// A *global* function (exported: `linkage=global` in the object's BTF) on purpose. The verifier
/// checks a global function once, on its own, and at each call only the arguments; the caller
/// continues with the return value as an unknown scalar (`check_func_call()`,
/// kernel/bpf/verifier.c). A static function, or the same code inlined, is walked with the
/// caller's state, and its two lookups (array or hash) left two different states that never
/// pruned against each other: the verifier walked the whole rest of the program twice (6.18's
/// ingress 228,663 → 475,781 instructions, 6.1's 260,910 → 432,540).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shaper_iface_slot(ifindex: u32) -> u32 {
    if ifindex < DIRECT_IFINDEXES {
        return match IFACE_SLOT_BY_IFINDEX.get(ifindex) {
            Some(&stored) if stored > 0 => stored - 1,
            _ => MAX_IFACES,
        };
    }
    // SAFETY: aya's caveat is that a preallocated hash element may be recycled under a reader.
    // The value is a plain u32, copied at once and range-checked by the caller; a recycled
    // element can only hold another registered interface's slot for the instant of a
    // re-registration.
    match unsafe { IFACE_SLOTS.get(ifindex) } {
        Some(&slot) => slot,
        None => MAX_IFACES,
    }
}
