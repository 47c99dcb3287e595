//! The token bucket, shared by every CPU that sees a rule's packets, kept consistent with BPF
//! atomics alone (aya-ebpf has no `bpf_spin_lock`, and a lock would serialise the hot path).
//!
//! Two words of state: the tokens, and the time up to which refills have been credited. The two
//! steps never lose an update:
//! - refill: a CPU that moves `stamp_ns` forward with a compare-and-swap owns the interval
//!   between the old and the new stamp and credits it with an atomic add. Intervals claimed by
//!   different CPUs are disjoint, so time is credited exactly once; a CPU that loses the race
//!   skips the refill, because the winner's interval ends at (about) the same time.
//! - take: a compare-and-swap loop on the tokens, so two CPUs can never both spend the same
//!   tokens. The loop is bounded for the verifier; a packet that loses every attempt to other
//!   CPUs is treated as non-conforming, so contention can only under-shoot the rate, never
//!   overshoot it.
//!
//! LLVM selects BPF_CMPXCHG for 64-bit compare-and-swap even for the generic (v1) CPU bpf-linker
//! targets; the kernel verifies BPF_ATOMIC instructions since 5.12.
//!
//! The arithmetic itself lives in `shaper_common::bucket`, where host tests cover it.

use crate::atomic;
use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use shaper_common::{BucketState, RULE_FLAG_COARSE_CLOCK, RuleConfig, bucket};

/// Compare-and-swap attempts to take tokens. Each failed attempt means another CPU took tokens
/// in between, so with a handful of CPUs on one rule a few attempts always suffice.
const TAKE_ATTEMPTS: u32 = 8;

/// The time to charge a bucket of `config` at: the kernel's tick for a rule userspace marked
/// [`RULE_FLAG_COARSE_CLOCK`] (its fill time spans many ticks, so a tick's lag is a small part
/// of its burst; `shaper_common::bucket::coarse_clock_suffices` says what that saves and
/// costs), the precise clock otherwise. Both read CLOCK_MONOTONIC (kernel/bpf/helpers.c:
/// `ktime_get_mono_fast_ns()` and `ktime_get_coarse_ns()`), and the coarse one is never ahead
/// of the precise one, so a bucket whose rule changes clock never credits time twice: the
/// compare-and-swap in [`charge`] only moves its stamp forward.
#[inline(always)]
pub fn now(config: &RuleConfig) -> u64 {
    if config.flags & RULE_FLAG_COARSE_CLOCK != 0 {
        // SAFETY: a helper without arguments, in `bpf_base_func_proto` since Linux 5.11, so
        // allowed in tc programs.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: a helper without arguments, allowed in every program type.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// Charges `cost` nanobits to the bucket at `now` ([`now`]). The tokens left when the
/// packet conforms (an `--ecn` rule marks below a threshold of them); `None` when it does not,
/// and then it is not charged.
///
/// # Safety
///
/// `state` points to a live, aligned `BucketState` in a map value (from `get_ptr_mut`, say) that
/// outlives the call.
#[inline(always)]
pub unsafe fn charge(
    state: *mut BucketState,
    config: &RuleConfig,
    now: u64,
    cost: u64,
) -> Option<u64> {
    // SAFETY: the caller vouches for `state`; `&raw mut` takes the fields' addresses without
    // making references, which the other CPUs' concurrent writes would break.
    let (stamp_ptr, tokens_ptr) = unsafe { (&raw mut (*state).stamp_ns, &raw mut (*state).tokens) };

    // SAFETY: a live, aligned u64 (caller's contract). The BPF backend cannot select an atomic
    // load for the generic CPU ("Cannot select: AtomicLoad"), so a volatile load stands in: one
    // aligned 64-bit BPF load (LDX DW), which every JIT emits as a single load, so it sees whole
    // values of the other CPUs' atomic updates.
    let stamp = unsafe { core::ptr::read_volatile(stamp_ptr) };
    if now > stamp {
        // SAFETY: BPF_CMPXCHG on a live, aligned u64 (caller's contract).
        let (_, claimed) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                stamp_ptr, stamp, now,
            )
        };
        if claimed {
            let credit = bucket::refill(now - stamp, config.fill_ns, config.rate_bps);
            // SAFETY: a live, aligned u64 (caller's contract), which every CPU changes only by
            // atomic adds and compare-and-swaps.
            unsafe { atomic::add(tokens_ptr, credit) };
        }
    }

    for _ in 0..TAKE_ATTEMPTS {
        // SAFETY: a live, aligned u64 (caller's contract), loaded whole as `stamp` is above.
        let tokens = unsafe { core::ptr::read_volatile(tokens_ptr) };
        let Some(left) = bucket::take(tokens, config.burst_nanobits, cost) else {
            // Credits are added without a clamp; a successful take clamps, and so does a
            // refused one here, so tokens stay within a burst plus the credits of the packets
            // in flight even when no packet conforms for a long time (say, aggregates larger
            // than the burst). One attempt is enough: losing it means another CPU just wrote a
            // value that is itself clamped or about to be.
            if tokens > config.burst_nanobits {
                // SAFETY: BPF_CMPXCHG on a live, aligned u64 (caller's contract).
                unsafe {
                    atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                        tokens_ptr,
                        tokens,
                        config.burst_nanobits,
                    );
                }
            }
            return None;
        };
        // SAFETY: BPF_CMPXCHG on a live, aligned u64 (caller's contract).
        let (_, taken) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tokens_ptr, tokens, left,
            )
        };
        if taken {
            return Some(left);
        }
    }
    None
}
