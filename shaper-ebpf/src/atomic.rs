//! The one atomic add of the programs, for every counter more than one CPU updates (port and
//! rule counters, talkers, TCP events, the buckets' refills).
//!
//! BPF atomic adds (BPF_ATOMIC | BPF_ADD, verified since Linux 5.12) never lose an update. The
//! BPF target spec says `atomic-cas: false`, so core's `AtomicU64::fetch_add` does not exist
//! there; the intrinsic lowers to the same instruction. The eBPF crate is built with
//! RUSTC_BOOTSTRAP already (for `-Z build-std`), which also admits `core_intrinsics`.

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use shaper_common::Counter;

/// Adds `delta` to the u64 at `target`. Relaxed: each counter is independent of every other,
/// and userspace reads them as they are.
///
/// # Safety
///
/// `target` points to a live, aligned u64 in a map value (from `get_ptr_mut`, say) that
/// outlives the call, and every other write to it is an atomic add too.
#[inline(always)]
pub unsafe fn add(target: *mut u64, delta: u64) {
    // SAFETY: the caller vouches for `target`.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, delta) };
}

/// Adds a packet count and a byte count to `counter`; the two fields are independent, so no
/// ordering between them is needed.
///
/// # Safety
///
/// `counter` points to a live, aligned `Counter` in a map value that outlives the call, whose
/// fields are only ever written by atomic adds.
#[inline(always)]
pub unsafe fn add_counter(counter: *mut Counter, packets: u64, bytes: u64) {
    // SAFETY: the caller vouches for `counter`; `&raw mut` takes the fields' addresses without
    // making references.
    unsafe {
        add(&raw mut (*counter).packets, packets);
        add(&raw mut (*counter).bytes, bytes);
    }
}
