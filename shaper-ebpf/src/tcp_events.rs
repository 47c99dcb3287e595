//! TCP connection telemetry: SYN, SYN-ACK, RST and FIN counters per port, probes of closed
//! ports, and handshake round trips.
//!
//! Counted once per skb. A SYN or SYN-ACK is always a single segment (the kernel never builds a
//! GSO aggregate of a handshake segment). A FIN or RST is on one wire segment of its skb too:
//! segmentation leaves FIN (and PSH) only on the last segment (`tcp_gso_segment()`,
//! net/ipv4/tcp_offload.c: `th->fin = th->psh = 0` for all but the last), and GRO never merges a
//! segment with FIN, RST or SYN into an aggregate (`tcp_gro_receive()`: those flags set `flush`).
//!
//! Handshakes in flight are tracked in `HANDSHAKES`, an LRU hash keyed by the 4-tuple:
//! - ingress SYN to a local port: `SYN_RECEIVED`; our egress SYN-ACK then starts the clock
//!   (`SYNACK_SENT`) and the client's ingress ACK stops it: a client-side sample for the port.
//!   An egress RST instead means nothing listens there: a probe of the port.
//! - egress SYN: `SYN_SENT`, clock started; the server's ingress SYN-ACK stops it: a server-side
//!   sample for the remote port.
//! - A retransmitted SYN-ACK (or SYN) marks the handshake: the reply cannot tell which copy it
//!   answers, so no sample is taken (counted as discarded).
//!
//! The cost on the common path (a segment without SYN, RST or FIN) is one flags test, and on
//! ingress an ACK also reads its port's `pending` count: the LRU is looked up only while that
//! port has a handshake waiting for its ACK. Whoever removes a `SYNACK_SENT` entry takes it out
//! of `pending`, exactly once: the ACK, a RST, or userspace giving up on a handshake whose ACK
//! never came. The entries the LRU evicts are taken out by userspace, which finds a port's
//! `pending` above its entries in the LRU (`shaper::datapath::tcp_telemetry::PendingRepair`).

use crate::{atomic::add, parse, parse::Flow};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
    programs::TcContext,
};
use core::mem::offset_of;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use shaper_common::{
    DIR_EGRESS, DIR_INGRESS, HANDSHAKE_ENTRIES, Handshake, HandshakeKey, HandshakeStats, PROTO_TCP,
    REMOTE_ENTRIES, RTT_BUCKETS, RTT_HISTOGRAMS_PER_IFACE, RTT_SIDE_CLIENT, RTT_SIDE_SERVER,
    RemoteKey, RttHistogram, TCP_EVENTS_PER_IFACE, TcpEvents, flags, handshake, rtt_bucket,
    rtt_index, tcp_events_index,
};

/// Per (interface, direction, port) event counters; sized at load time like `PORT_COUNTERS`
/// and read by userspace through mmap.
#[map]
static TCP_EVENTS: Array<TcpEvents> = Array::with_max_entries(TCP_EVENTS_PER_IFACE, BPF_F_MMAPABLE);

/// Handshakes in flight (see the module comment). Fixed size, whatever the interfaces.
#[map]
static HANDSHAKES: LruHashMap<HandshakeKey, Handshake> =
    LruHashMap::with_max_entries(HANDSHAKE_ENTRIES, 0);

/// Handshake round-trip histograms per (interface, side, port); sized at load time.
#[map]
static HANDSHAKE_RTT: Array<RttHistogram> =
    Array::with_max_entries(RTT_HISTOGRAMS_PER_IFACE, BPF_F_MMAPABLE);

/// The remotes each local port accepted handshakes from, for `shaper exposure`; the value is
/// the last SYN-ACK's `bpf_ktime_get_ns()`.
#[map]
static REMOTES: LruHashMap<RemoteKey, u64> = LruHashMap::with_max_entries(REMOTE_ENTRIES, 0);

/// Totals of the handshake tracker, from which userspace counts the samples the LRU lost.
#[map]
static HANDSHAKE_STATS: Array<HandshakeStats> = Array::with_max_entries(1, 0);

/// Counts a TCP segment's events and follows its handshake. The common segment (no SYN, RST or
/// FIN, and on ingress no handshake of its port waiting for an ACK) costs a flags test and at
/// most one array read here; everything else runs in [`segment_events`].
#[inline(always)]
pub fn observe(
    ctx: &TcContext,
    slot: u32,
    direction: u32,
    flow: &Flow,
    local_port: u16,
    remote_port: u16,
) {
    let tcp_flags = flow.tcp_flags;
    if tcp_flags & (flags::SYN | flags::RST | flags::FIN) == 0 {
        if direction != DIR_INGRESS || tcp_flags & flags::ACK == 0 {
            return;
        }
        let Some(events) = TCP_EVENTS.get_ptr(tcp_events_index(slot, DIR_INGRESS, local_port))
        else {
            return;
        };
        // SAFETY: a live array element; other CPUs add to it atomically, and a stale read only
        // skips or adds one lookup.
        if unsafe { (&raw const (*events).pending).read_volatile() } == 0 {
            return;
        }
    }
    // Packed into scalars: a subprogram takes at most five arguments, all in registers.
    let ports = (remote_port as u64) << 16 | local_port as u64;
    let segment = (flow.ip_offset as u64) << 32
        | (flow.ipv6 as u64) << 24
        | (direction as u64) << 16
        | (slot as u64 & 0xff) << 8
        | tcp_flags as u64;
    if tcp_flags & flags::SYN != 0 {
        if tcp_flags & flags::ACK == 0 {
            if direction == DIR_INGRESS {
                on_syn_received(ctx, ports, segment);
            } else {
                on_syn_sent(ctx, ports, segment);
            }
        } else if direction == DIR_EGRESS {
            on_synack_sent(ctx, ports, segment);
        } else {
            on_synack_received(ctx, ports, segment);
        }
    } else if tcp_flags & (flags::RST | flags::FIN) != 0 {
        on_close(ctx, ports, segment);
    } else {
        // An ingress ACK while its port has a handshake waiting (checked above).
        on_client_ack(ctx, ports, segment);
    }
}

// The paths below are subprograms, not inlined: the verifier limits a program's stack and that
// of the subprograms it calls to 512 bytes together (kernel/bpf/verifier.c,
// `check_max_stack_depth`). They read the packet only through helpers that take the context
// (`key`): were they to read it in place, the compiler would pass them `data`/`data_end`
// instead of the context, and the verifier refuses arithmetic on a packet pointer passed so. Inlined, their keys and values sat in the hook's own frame beside
// those of the watched-port subprogram (`talkers::watched`), over the limit; as siblings, each
// call chain holds the hook's frame and one of them.

/// A client's SYN to a local port. Split by direction, like the SYN-ACK, so each frame holds one
/// branch of [`syn`].
#[inline(never)]
fn on_syn_received(ctx: &TcContext, ports: u64, segment: u64) {
    let (slot, _, flow, local_port, remote_port) = unpack(ports, segment);
    syn(ctx, slot, DIR_INGRESS, &flow, local_port, remote_port);
}

/// Our SYN to a server.
#[inline(never)]
fn on_syn_sent(ctx: &TcContext, ports: u64, segment: u64) {
    let (slot, _, flow, local_port, remote_port) = unpack(ports, segment);
    syn(ctx, slot, DIR_EGRESS, &flow, local_port, remote_port);
}

/// Our SYN-ACK. Split by direction, with the direction a constant, so each subprogram's frame
/// holds only its own branch of [`synack`].
#[inline(never)]
fn on_synack_sent(ctx: &TcContext, ports: u64, segment: u64) {
    let (slot, _, flow, local_port, remote_port) = unpack(ports, segment);
    synack(ctx, slot, DIR_EGRESS, &flow, local_port, remote_port);
}

/// A server's SYN-ACK to our SYN.
#[inline(never)]
fn on_synack_received(ctx: &TcContext, ports: u64, segment: u64) {
    let (slot, _, flow, local_port, remote_port) = unpack(ports, segment);
    synack(ctx, slot, DIR_INGRESS, &flow, local_port, remote_port);
}

#[inline(never)]
fn on_client_ack(ctx: &TcContext, ports: u64, segment: u64) {
    let (slot, _, flow, local_port, remote_port) = unpack(ports, segment);
    client_ack(ctx, slot, &flow, local_port, remote_port);
}

/// A FIN or RST (a segment may carry both).
#[inline(never)]
fn on_close(ctx: &TcContext, ports: u64, segment: u64) {
    let (slot, direction, flow, local_port, remote_port) = unpack(ports, segment);
    let Some(events) = TCP_EVENTS.get_ptr_mut(tcp_events_index(slot, direction, local_port)) else {
        return;
    };
    if flow.tcp_flags & flags::FIN != 0 {
        // SAFETY: `events` is a live array element (non-null, index checked by the lookup).
        unsafe { add(&raw mut (*events).fin, 1) };
    }
    if flow.tcp_flags & flags::RST != 0 {
        // SAFETY: as above.
        unsafe { add(&raw mut (*events).rst, 1) };
        reset(ctx, slot, direction, &flow, local_port, remote_port);
    }
}

/// The subprograms' arguments as `observe` packed them: (slot, direction, the parts of the
/// flow the tracker reads, local port, remote port).
#[inline(always)]
fn unpack(ports: u64, segment: u64) -> (u32, u32, Flow, u16, u16) {
    let flow = Flow {
        proto: PROTO_TCP,
        src_port: 0,
        dst_port: 0,
        header_len: 0,
        tcp_flags: segment as u8,
        ip_offset: (segment >> 32) as u32,
        ipv6: (segment >> 24) & 1 != 0,
    };
    (
        ((segment >> 8) & 0xff) as u32,
        ((segment >> 16) & 0xff) as u32,
        flow,
        ports as u16,
        (ports >> 16) as u16,
    )
}

// `key` copies both addresses at once: the destination follows the source in both headers.
const _: () = assert!(offset_of!(Ipv4Hdr, dst_addr) == offset_of!(Ipv4Hdr, src_addr) + 4);
const _: () = assert!(offset_of!(Ipv6Hdr, dst_addr) == offset_of!(Ipv6Hdr, src_addr) + 16);

#[inline(always)]
fn syn(ctx: &TcContext, slot: u32, direction: u32, flow: &Flow, local_port: u16, remote_port: u16) {
    // Under the server's port: ours on ingress, the remote one on egress.
    let port = if direction == DIR_INGRESS {
        local_port
    } else {
        remote_port
    };
    if let Some(events) = TCP_EVENTS.get_ptr_mut(tcp_events_index(slot, direction, port)) {
        // SAFETY: a live array element (index checked by the lookup).
        unsafe { add(&raw mut (*events).syn, 1) };
    }
    let Some(key) = key(ctx, slot, direction, flow, local_port, remote_port) else {
        return;
    };
    if let Some(entry) = HANDSHAKES.get_ptr_mut(key) {
        // SAFETY: a value of the LRU map, valid for this program run (RCU); fields are plain
        // integers, and a racing writer of the same handshake can only make one sample wrong.
        unsafe {
            if direction == DIR_EGRESS && (*entry).state == handshake::SYN_SENT {
                (*entry).flags |= handshake::RETRANSMITTED;
            }
        }
        return;
    }
    let entry = if direction == DIR_INGRESS {
        Handshake {
            stamp_ns: 0,
            state: handshake::SYN_RECEIVED,
            flags: 0,
        }
    } else {
        stats(offset_of!(HandshakeStats, timed));
        Handshake {
            // SAFETY: a helper without arguments or preconditions.
            stamp_ns: unsafe { bpf_ktime_get_ns() },
            state: handshake::SYN_SENT,
            flags: 0,
        }
    };
    // A full LRU evicts its least recently used entry; an error here (out of memory) only
    // loses this handshake's telemetry.
    let _ = HANDSHAKES.insert(key, entry, 0);
}

#[inline(always)]
fn synack(
    ctx: &TcContext,
    slot: u32,
    direction: u32,
    flow: &Flow,
    local_port: u16,
    remote_port: u16,
) {
    let port = if direction == DIR_EGRESS {
        local_port
    } else {
        remote_port
    };
    if let Some(events) = TCP_EVENTS.get_ptr_mut(tcp_events_index(slot, direction, port)) {
        // SAFETY: a live array element (index checked by the lookup).
        unsafe { add(&raw mut (*events).synack, 1) };
    }
    let Some(key) = key(ctx, slot, direction, flow, local_port, remote_port) else {
        return;
    };
    if direction == DIR_EGRESS {
        let remote = RemoteKey {
            slot,
            local_port,
            _pad: 0,
            remote_addr: key.remote_addr,
        };
        // SAFETY: a helper without arguments or preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // Full, the LRU forgets the pair seen longest ago; only `exposure`'s count suffers.
        let _ = REMOTES.insert(remote, now, 0);
    }
    let Some(entry) = HANDSHAKES.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: `now` from a helper without preconditions; `entry` a value of the LRU map, valid
    // for this run (see `syn`).
    unsafe {
        let now = bpf_ktime_get_ns();
        let state = (*entry).state;
        if direction == DIR_EGRESS {
            if state == handshake::SYN_RECEIVED {
                (*entry).stamp_ns = now;
                (*entry).state = handshake::SYNACK_SENT;
                pending(slot, local_port, 1);
                stats(offset_of!(HandshakeStats, timed));
            } else if state == handshake::SYNACK_SENT {
                (*entry).flags |= handshake::RETRANSMITTED;
            }
        } else if state == handshake::SYN_SENT {
            finish(
                &key,
                (*entry).flags,
                slot,
                RTT_SIDE_SERVER,
                remote_port,
                now.wrapping_sub((*entry).stamp_ns),
            );
        }
    }
}

/// An ingress ACK: the client's reply to our SYN-ACK if its handshake is pending.
#[inline(always)]
fn client_ack(ctx: &TcContext, slot: u32, flow: &Flow, local_port: u16, remote_port: u16) {
    let Some(key) = key(ctx, slot, DIR_INGRESS, flow, local_port, remote_port) else {
        return;
    };
    let Some(entry) = HANDSHAKES.get_ptr(key) else {
        return;
    };
    // SAFETY: a value of the LRU map, valid for this run (see `syn`).
    let (state, entry_flags, stamp) =
        unsafe { ((*entry).state, (*entry).flags, (*entry).stamp_ns) };
    if state != handshake::SYNACK_SENT {
        return;
    }
    // Removed first: a duplicate ACK on another CPU, or userspace dropping the entry as stale,
    // then finds nothing, so `pending` goes down once.
    if HANDSHAKES.remove(key).is_err() {
        return;
    }
    pending(slot, local_port, u64::MAX);
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    record(
        entry_flags,
        slot,
        RTT_SIDE_CLIENT,
        local_port,
        now.wrapping_sub(stamp),
    );
}

/// A RST ends the handshake: in reply to a SYN we received, it is a probe of a closed port.
#[inline(always)]
fn reset(
    ctx: &TcContext,
    slot: u32,
    direction: u32,
    flow: &Flow,
    local_port: u16,
    remote_port: u16,
) {
    let Some(key) = key(ctx, slot, direction, flow, local_port, remote_port) else {
        return;
    };
    let Some(entry) = HANDSHAKES.get_ptr(key) else {
        return;
    };
    // SAFETY: a value of the LRU map, valid for this run (see `syn`).
    let state = unsafe { (*entry).state };
    if state == handshake::SYN_RECEIVED {
        if direction == DIR_EGRESS
            && let Some(events) =
                TCP_EVENTS.get_ptr_mut(tcp_events_index(slot, DIR_INGRESS, local_port))
        {
            // SAFETY: a live array element (index checked by the lookup).
            unsafe { add(&raw mut (*events).probes, 1) };
        }
        let _ = HANDSHAKES.remove(key);
    } else if HANDSHAKES.remove(key).is_ok() {
        // Only the one who removes the entry counts its end (see `client_ack`).
        if state == handshake::SYNACK_SENT {
            pending(slot, local_port, u64::MAX);
        }
        stats(offset_of!(HandshakeStats, discarded));
    }
}

/// Forgets the handshake and records its sample (unless the timed segment was retransmitted).
#[inline(always)]
fn finish(key: &HandshakeKey, entry_flags: u32, slot: u32, side: u32, port: u16, ns: u64) {
    // Removed first: a duplicate reply on another CPU then finds nothing and adds no sample.
    if HANDSHAKES.remove(key).is_err() {
        return;
    }
    record(entry_flags, slot, side, port, ns);
}

/// Records the sample of a handshake just removed from `HANDSHAKES`.
#[inline(always)]
fn record(entry_flags: u32, slot: u32, side: u32, port: u16, ns: u64) {
    if entry_flags & handshake::RETRANSMITTED != 0 {
        stats(offset_of!(HandshakeStats, discarded));
        return;
    }
    let Some(histogram) = HANDSHAKE_RTT.get_ptr_mut(rtt_index(slot, side, port)) else {
        return;
    };
    let bucket = rtt_bucket(ns);
    if bucket >= RTT_BUCKETS {
        return;
    }
    // SAFETY: a live array element (index checked by the lookup); `bucket` is below the
    // array's length, checked above for the verifier too.
    unsafe {
        add((&raw mut (*histogram).buckets).cast::<u64>().add(bucket), 1);
        add(&raw mut (*histogram).sum_ns, ns);
    }
    stats(offset_of!(HandshakeStats, measured));
}

/// Adds `delta` (`u64::MAX` to subtract one) to the ingress `pending` count of `port`.
#[inline(always)]
fn pending(slot: u32, port: u16, delta: u64) {
    if let Some(events) = TCP_EVENTS.get_ptr_mut(tcp_events_index(slot, DIR_INGRESS, port)) {
        // SAFETY: a live array element (index checked by the lookup).
        unsafe { add(&raw mut (*events).pending, delta) };
    }
}

/// Adds one to the shared tracker total at byte `offset` of [`HandshakeStats`] (an
/// `offset_of!` of one of its u64 fields).
#[inline(always)]
fn stats(offset: usize) {
    if let Some(totals) = HANDSHAKE_STATS.get_ptr_mut(0) {
        // SAFETY: the only element of the array, live as long as the map; `offset` is a u64
        // field's, so the pointer stays inside the value and aligned. No reference is made:
        // other CPUs add to the same fields.
        unsafe { add(totals.cast::<u8>().add(offset).cast::<u64>(), 1) };
    }
}

/// The handshake's key from this host's side: local and remote address and port.
#[inline(always)]
fn key(
    ctx: &TcContext,
    slot: u32,
    direction: u32,
    flow: &Flow,
    local_port: u16,
    remote_port: u16,
) -> Option<HandshakeKey> {
    let offset = flow.ip_offset as usize;
    // Copied with bpf_skb_load_bytes() rather than read in place: these run as subprograms, and
    // direct packet access would let the compiler pass them the packet pointers instead of the
    // context, which the verifier refuses to do arithmetic on (see the note above `on_syn_received`).
    // The source and destination addresses are adjacent in both headers: one copy takes both.
    let (src, dst) = if flow.ipv6 {
        let both = ctx
            .load::<[u8; 32]>(offset + offset_of!(Ipv6Hdr, src_addr))
            .ok()?;
        let (src, dst) = both.split_at(16);
        (src.try_into().ok()?, dst.try_into().ok()?)
    } else {
        let both = ctx
            .load::<[u8; 8]>(offset + offset_of!(Ipv4Hdr, src_addr))
            .ok()?;
        let (src, dst) = both.split_at(4);
        (
            parse::v4_mapped(src.try_into().ok()?),
            parse::v4_mapped(dst.try_into().ok()?),
        )
    };
    let (local_addr, remote_addr) = if direction == DIR_INGRESS {
        (dst, src)
    } else {
        (src, dst)
    };
    Some(HandshakeKey {
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        slot,
    })
}
