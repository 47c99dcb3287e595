//! The shape action: the packets of a shape rule wait in the rule's HTB class instead of meeting
//! a bucket. The program only names the class; the HTB qdisc userspace installed as the
//! interface's root does the queueing and holds the rate.
//!
//! On ingress there is no qdisc to queue in, so the packet is also redirected to the IFB device
//! userspace made for the interface, whose HTB root holds the same classes. IFB hands the packet
//! back to the interface's receive path with `skb->tc_skip_classify` set (drivers/net/ifb.c
//! `ifb_ri_tasklet`), and `__netif_receive_skb_core` (net/core/dev.c) then skips the tc ingress
//! hook: the packet is counted, and meets this program, once.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use shaper_common::{SHAPE_HTB_MAJOR, shape_class_id};

use crate::SHAPE_IFB;

/// The IFB device of interface `slot`, if userspace made one.
#[inline(always)]
pub fn ifb_of(slot: u32) -> Option<u32> {
    SHAPE_IFB.get(slot).copied().filter(|&ifindex| ifindex != 0)
}

/// Sends the packet to the egress of IFB device `ifindex` (flags 0: its transmit path, where its
/// HTB root queues it). `bpf_redirect` returns TC_ACT_REDIRECT, or TC_ACT_SHOT for bad flags;
/// a device gone by then makes `skb_do_redirect` drop the packet.
#[inline(always)]
pub fn redirect(ifindex: u32) -> i32 {
    // SAFETY: a helper taking two integers, allowed for SCHED_CLS programs; the redirect itself
    // happens after the program returns (`skb_do_redirect`).
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Puts the packet into shape rule `rule`'s HTB class by writing `skb->priority`.
///
/// The tcx/clsact egress hook runs in `__dev_queue_xmit` (net/core/dev.c) before the packet is
/// enqueued on the root qdisc, and HTB's `htb_classify` (net/sched/sch_htb.c) takes
/// `skb->priority` as the class when its major is the qdisc's handle and it names a leaf class,
/// before any filter runs. A priority naming no class of the qdisc (a rule whose class is not
/// there yet, for one) falls through to HTB's default: its direct queue, which does not limit.
#[inline(always)]
pub fn classify(ctx: &TcContext, rule: u32) {
    // SAFETY: `skb` is the `__sk_buff` context of this run; `priority` is one of the fields a
    // SCHED_CLS program may write (net/core/filter.c `tc_cls_act_is_valid_access`), which the
    // verifier checks against the context's layout.
    unsafe { (*ctx.skb.skb).priority = shape_class_id(rule) };
}

/// Clears a class of shaper's left in `skb->priority` by an earlier hook: an ingress shape
/// rule's packet keeps its class through the IFB, and if it is forwarded, the egress HTB of the
/// interface it leaves by would otherwise queue it in the class of the same id. Called before
/// the egress verdict, which names the class again if a shape rule governs the packet here.
#[inline(always)]
pub fn clear_stale(ctx: &TcContext) {
    // SAFETY: `priority` is readable and writable in a SCHED_CLS program's context
    // (`tc_cls_act_is_valid_access`); `skb` is this run's context.
    unsafe {
        if (*ctx.skb.skb).priority >> 16 == SHAPE_HTB_MAJOR {
            (*ctx.skb.skb).priority = 0;
        }
    }
}
