//! shaper's tc classifier: one program per hook direction, sharing the maps below.
//!
//! Every packet is parsed to (L4 protocol, ports) by [`parse`] and counted by [`count`]. The
//! programs never alter a packet and fail open: whatever cannot be parsed passes untouched and is
//! counted under its reason.
#![no_std]
#![no_main]
// Atomic adds on shared counters; see count::add_shared.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod count;
mod parse;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use shaper_common::{
    Counter, DIR_EGRESS, DIR_INGRESS, MAX_IFACES, PORT_COUNTERS_PER_IFACE, PortCounter,
    UNCLASSIFIED_ENTRIES,
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
/// interface, so the slot is looked up per packet rather than baked in at load time.
#[map]
static IFACE_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

/// `TC_ACT_UNSPEC` hands the packet on unchanged: for tcx it is `TCX_NEXT` (run the next program,
/// pass if none; include/uapi/linux/bpf.h `enum tcx_action_base`), for a direct-action cls_bpf
/// filter it continues with the next filter. Either way shaper composes with other programs.
const PASS: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn shaper_ingress(ctx: TcContext) -> i32 {
    count::observe(&ctx, DIR_INGRESS);
    PASS
}

#[classifier]
pub fn shaper_egress(ctx: TcContext) -> i32 {
    count::observe(&ctx, DIR_EGRESS);
    PASS
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
