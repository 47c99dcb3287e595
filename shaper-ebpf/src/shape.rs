//! The shape action: the packets of a shape rule wait in the rule's HTB class instead of meeting
//! a bucket. The program only names the class; the HTB qdisc userspace installed as the
//! interface's root does the queueing and holds the rate.

use aya_ebpf::programs::TcContext;
use shaper_common::shape_class_id;

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
