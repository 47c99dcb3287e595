//! shaper's tc classifier: one program per hook direction, sharing the maps below.
//!
//! Every packet is parsed to (L4 protocol, ports) by [`parse`], counted by [`count`] and, when a
//! rule governs its port, policed by [`limit`] with the token bucket of [`bucket`] (one per
//! remote address for a `--per-remote` rule, [`remote_buckets`]) or, for a
//! shape rule, put into the rule's HTB class by [`shape`]. The programs fail open: whatever
//! cannot be parsed, or has no rule, passes untouched; only a packet its rule's bucket has no
//! tokens for is dropped. They alter a packet in two ways only: the HTB class of a shape rule's
//! packet (`skb->priority`), the departure time of a pace rule's (`skb->tstamp`), and the CE mark of an `--ecn` rule ([`ecn`]).
#![no_std]
#![no_main]
#![expect(
    internal_features,
    reason = "core_intrinsics: atomic adds and compare-and-swap on shared state, which core's \
              atomics lack on the BPF target; see the atomic and bucket modules"
)]
#![feature(core_intrinsics)]

mod atomic;
mod bucket;
mod count;
mod ecn;
mod fragments;
mod limit;
mod pace;
mod parse;
mod rare_log;
mod remote_buckets;
mod shape;
mod talkers;
mod tcp_events;
mod trace;
mod unplaced;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use shaper_common::{
    BucketState, Counter, DIR_EGRESS, DIR_INGRESS, DIRECT_IFINDEXES, DIRECTIONS, MAX_IFACES,
    MAX_RULES, PORT_COUNTERS_PER_IFACE, PortCounter, PortVerdicts, RULE_INDEX_ROWS_PER_IFACE,
    RuleConfig, RuleCounters, RuleIndexRow, UNCLASSIFIED_ENTRIES,
};

/// Per-port counters of every attached interface, shared by all CPUs and updated with atomic
/// adds: 16 bytes per (interface, direction, protocol, port), whatever the CPU count. Userspace
/// sizes it for the interfaces it attaches and reads it through mmap (hence `BPF_F_MMAPABLE`),
/// so a full scan costs no syscall per entry.
#[map]
static PORT_COUNTERS: Array<PortCounter> =
    Array::with_max_entries(PORT_COUNTERS_PER_IFACE, BPF_F_MMAPABLE);

/// Packets without ports, by (interface, direction, reason). Few entries, so per-CPU and
/// lock-free.
#[map]
static UNCLASSIFIED: PerCpuArray<Counter> = PerCpuArray::with_max_entries(UNCLASSIFIED_ENTRIES, 0);

/// ifindex -> interface slot, filled by userspace before it attaches. One program serves every
/// interface, so the slot is looked up per packet rather than baked in at load time; see
/// [`count::shaper_iface_slot`] for which of the two maps below a packet reads.
#[map]
static IFACE_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

/// ifindex -> slot + 1 (0: none) for small ifindexes, written beside `IFACE_SLOTS`.
#[map]
static IFACE_SLOT_BY_IFINDEX: Array<u32> = Array::with_max_entries(DIRECT_IFINDEXES, 0);

/// Dropped and would-drop counters per port, indexed like `PORT_COUNTERS` and sized with it.
#[map]
static PORT_VERDICTS: Array<PortVerdicts> =
    Array::with_max_entries(PORT_COUNTERS_PER_IFACE, BPF_F_MMAPABLE);

/// Per (interface, direction, protocol, side): the rule id governing each port. Userspace paints
/// it through mmap, with overlapping rules already resolved, so the program does two lookups
/// and no search however many rules there are.
#[map]
static RULE_INDEX: Array<RuleIndexRow> =
    Array::with_max_entries(RULE_INDEX_ROWS_PER_IFACE, BPF_F_MMAPABLE);

/// Rate, burst and action of each rule id.
#[map]
static RULES: Array<RuleConfig> = Array::with_max_entries(MAX_RULES, 0);

/// Token-bucket state per (rule, direction).
#[map]
static BUCKETS: Array<BucketState> = Array::with_max_entries(MAX_RULES * DIRECTIONS, 0);

/// Passed, dropped and would-drop counters per (rule, direction); read by userspace via mmap.
#[map]
static RULE_COUNTERS: Array<RuleCounters> =
    Array::with_max_entries(MAX_RULES * DIRECTIONS, BPF_F_MMAPABLE);

/// Per interface slot: the ifindex of the IFB device the slot's ingress shape rules queue on,
/// 0 while it has none (see [`shape`]). Written by userspace when it creates or removes one.
#[map]
static SHAPE_IFB: Array<u32> = Array::with_max_entries(MAX_IFACES, 0);

/// `TC_ACT_UNSPEC` hands the packet on unchanged: for tcx it is `TCX_NEXT` (run the next program,
/// pass if none; include/uapi/linux/bpf.h `enum tcx_action_base`), for a direct-action cls_bpf
/// filter it continues with the next filter. Either way shaper composes with other programs.
const PASS: i32 = TC_ACT_UNSPEC;
/// `TC_ACT_SHOT` frees the packet; for tcx it is `TCX_DROP`. On egress the sending socket sees
/// NET_XMIT_DROP (TCP then treats it as local congestion, tcp_enter_cwr()).
const DROP: i32 = TC_ACT_SHOT;

#[classifier]
pub fn shaper_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, DIR_INGRESS)
}

#[classifier]
pub fn shaper_egress(ctx: TcContext) -> i32 {
    shape::clear_stale(&ctx);
    handle(&ctx, DIR_EGRESS)
}

#[inline(always)]
fn handle(ctx: &TcContext, direction: u32) -> i32 {
    let packet = match count::observe(ctx, direction) {
        count::Observed::Port(packet) => packet,
        count::Observed::Unplaced {
            slot,
            bytes,
            segments,
        } => {
            return unplaced::police(slot, direction, bytes, segments);
        }
        count::Observed::Elsewhere => return PASS,
    };
    let verdict = limit::apply(ctx, &packet, direction);
    talkers::account(ctx, &packet, direction, &verdict);
    verdict.action()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here, so it is never taken at run time.
    loop {}
}

/// "Dual MIT/GPL" is GPL-compatible for the kernel (include/linux/license.h).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
