//! ECN marking for `drop` rules with `--ecn`: a bucket running low tells an ECN-capable sender to
//! slow down with a CE mark rather than with a loss.

use aya_ebpf::{helpers::bpf_skb_ecn_set_ce, programs::TcContext};

/// Marks the packet Congestion Experienced if it is ECN-capable; true when it was marked.
///
/// `bpf_skb_ecn_set_ce` (net/core/filter.c, since Linux 5.1) calls `INET_ECN_set_ce`
/// (include/net/inet_ecn.h), which sets CE only on an ECT(0) or ECT(1) IPv4 or IPv6 packet,
/// leaves Not-ECT and CE packets alone, and fixes the IPv4 header checksum itself. It returns
/// 1 when it changed the packet, 0 otherwise.
#[inline(always)]
pub fn mark(ctx: &TcContext) -> bool {
    // SAFETY: the helper takes the program's own `__sk_buff` context, which the kernel passed to
    // this run; it is allowed for SCHED_CLS programs (`tc_cls_act_func_proto`).
    unsafe { bpf_skb_ecn_set_ce(ctx.skb.skb) == 1 }
}
