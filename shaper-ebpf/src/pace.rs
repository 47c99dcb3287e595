//! The pace action: Earliest Departure Time. The program stamps each packet of a pace rule with
//! the time it may leave (`skb->tstamp`), spaced at the rule's rate by the rule's clock
//! (`shaper_common::pace`); the `fq` qdisc userspace installed as the interface's root holds
//! the packet until then (net/sched/sch_fq.c `fq_enqueue` takes `skb->tstamp` as the packet's
//! `time_to_send`). No lock, no class: each CPU moves the rule's clock with a compare-and-swap,
//! and `fq` (one per transmit queue under `mq`) does the waiting.
//!
//! The egress hook runs in `__dev_queue_xmit` (net/core/dev.c) before the root qdisc's enqueue,
//! and a tc program's write of `__sk_buff.tstamp` at egress stores the value as it is
//! (net/core/filter.c `bpf_convert_tstamp_write` clears the delivery-time bit only at ingress),
//! so `fq` sees the departure this module chose.

use aya_ebpf::programs::TcContext;
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use shaper_common::{BucketState, RuleConfig, pace};

/// Compare-and-swap attempts on the clock; as for the bucket's take, each failure means another
/// CPU scheduled a packet in between, and a packet that loses every attempt is refused (the
/// rate is never exceeded).
const SCHEDULE_ATTEMPTS: u32 = 8;

/// Schedules a packet of `bytes` on the clock in `state` at `now` (`bpf_ktime_get_ns()`) and
/// writes its departure into `skb->tstamp`: `true` when it departs within the rule's horizon
/// (`config.fill_ns`), `false` when it would wait longer and must be dropped.
///
/// # Safety
///
/// `state` points to a live, aligned `BucketState` in a map value (from `get_ptr_mut`) that
/// outlives the call.
#[inline(always)]
pub unsafe fn schedule(
    ctx: &TcContext,
    state: *mut BucketState,
    config: &RuleConfig,
    now: u64,
    bytes: u64,
) -> bool {
    let transmit = pace::transmit_ns(bytes, config.rate_bps);
    // SAFETY: the caller vouches for `state`; `&raw mut` takes the field's address without
    // making a reference, which the other CPUs' concurrent writes would break.
    let clock_ptr = unsafe { &raw mut (*state).stamp_ns };
    for _ in 0..SCHEDULE_ATTEMPTS {
        // SAFETY: a live, aligned u64 (caller's contract), loaded whole by one 64-bit load, as
        // the bucket loads its stamp (see `bucket::charge`).
        let clock = unsafe { core::ptr::read_volatile(clock_ptr) };
        let Some((departure, next)) = pace::schedule(clock, now, config.fill_ns, transmit) else {
            return false;
        };
        // SAFETY: BPF_CMPXCHG on a live, aligned u64 (caller's contract).
        let (_, scheduled) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                clock_ptr, clock, next,
            )
        };
        if scheduled {
            set_departure(ctx, departure, now, config.fill_ns);
            return true;
        }
    }
    false
}

/// Writes `departure` into `skb->tstamp`, unless the packet already asks to leave later: TCP
/// stamps its own packets with its pacing time (net/ipv4/tcp_output.c, `tcp_wstamp_ns`), which
/// must not be brought forward. A stamp further ahead than the horizon is not a departure time
/// (a receive timestamp on the realtime clock, say) and is overwritten.
#[inline(always)]
fn set_departure(ctx: &TcContext, departure: u64, now: u64, horizon_ns: u64) {
    // SAFETY: `tstamp` is readable and writable in a SCHEDULED_CLS program's context
    // (net/core/filter.c `tc_cls_act_is_valid_access`), which the verifier checks against the
    // context's layout; `skb` is this run's context.
    unsafe {
        let stamp = (*ctx.skb.skb).tstamp;
        if stamp < departure || stamp - now > horizon_ns {
            (*ctx.skb.skb).tstamp = departure;
        }
    }
}
