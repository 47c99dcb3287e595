//! `--per-remote` rules: a token bucket per remote address instead of one per rule, so a sender
//! that floods a port (or picks another source port) drains only its own bucket.
//!
//! The buckets live in `REMOTE_BUCKETS`, one shared LRU hash for every rule and direction: a
//! remote's first packet inserts a full bucket (stamped now), later packets charge it with the
//! same atomics as a rule's shared bucket ([`crate::bucket`]). When the map is full the least
//! recently used bucket makes room; its remote starts full again if it comes back. That is the
//! price of a bounded map, and the reason evictions are counted: evicted = inserted − forgotten
//! − live, exactly as for talkers (userspace counts the buckets it deletes, "forgotten", when a
//! rule is removed or loses `--per-remote`).
//!
//! Reached only by packets of a `--per-remote` rule, through a subprogram, so every other packet
//! pays one flag test for it.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use shaper_common::{
    BucketState, DIR_INGRESS, MAX_REMOTE_BUCKETS, RemoteBucketKey, VERDICT_PASS, bucket::cost,
    bucket_index, remote_bucket_stat,
};

use crate::{
    BUCKETS, RULE_COUNTERS, RULES, bucket, count,
    limit::{self, Verdict},
    parse,
};

#[map]
static REMOTE_BUCKETS: LruHashMap<RemoteBucketKey, BucketState> =
    LruHashMap::with_max_entries(MAX_REMOTE_BUCKETS, 0);

/// Per CPU, indexed by [`remote_bucket_stat`]: see the module documentation.
#[map]
static REMOTE_BUCKET_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(remote_bucket_stat::COUNT, 0);

/// The verdict on `packet`, which `rule` (a `--per-remote` drop or observe rule) governs in
/// `direction`: its remote's bucket is charged, then the rule's and port's counters as for any
/// rule ([`limit::settle`]).
#[inline(always)]
pub fn police(ctx: &TcContext, packet: &count::Packet, rule: u16, direction: u32) -> Verdict {
    // Packed into scalars, as for talkers: a subprogram takes at most five arguments in
    // registers, and a pointer to `packet` would keep it in memory on the common path.
    let segments = if packet.segments < u32::MAX as u64 {
        packet.segments
    } else {
        u32::MAX as u64
    };
    let what = (packet.counter_index as u64) << 32 | (rule as u64) << 8 | direction as u64;
    Verdict::from_code(charge_and_count(ctx, what, segments, packet.bytes))
}

/// The part of [`police`] only `--per-remote` rules reach, returning the verdict's code. Not
/// inlined, and called as the last step of the rule's policing, so what the program keeps live
/// across the call is the verdict alone: a call from the middle of `limit::apply`, with the
/// bucket's result still to be used, made the verifier walk the ingress program 2.5 times
/// longer (6.18: 187,248 → 461,921 instructions; from here: 228,568).
#[inline(never)]
fn charge_and_count(ctx: &TcContext, what: u64, segments: u64, bytes: u64) -> u8 {
    let counter_index = (what >> 32) as u32;
    let rule = (what >> 8) as u16;
    let direction = (what & 0xff) as u32;
    // The caller read this rule's limit a moment ago; read it again rather than pass a
    // pointer, which the common path would have to keep on its stack.
    let Some(&config) = RULES.get(rule as u32) else {
        return VERDICT_PASS;
    };
    let index = bucket_index(rule as u32, direction);
    let (Some(shared), Some(counters)) =
        (BUCKETS.get_ptr_mut(index), RULE_COUNTERS.get_ptr_mut(index))
    else {
        return VERDICT_PASS;
    };
    let now = bucket::now(&config);
    // The rule's shared bucket stands in when no remote bucket can be had (the address
    // unreadable, or the map refusing both the insert and the lookup after it), so the rule
    // still holds.
    let state = remote_bucket(ctx, rule, direction, config.burst_nanobits, now).unwrap_or(shared);
    // SAFETY: `state` points to a live map value: a `BUCKETS` element, or the value of an LRU
    // hash element. Should the latter be evicted and recycled under this charge (another CPU
    // inserting into a full map), the charge lands in the recycled element: the cost of an
    // LRU, bounded to one packet.
    let charged = unsafe { bucket::charge(state, &config, now, cost(bytes)) };
    // SAFETY: `counters` is a live `RULE_COUNTERS` element from `get_ptr_mut` above.
    unsafe {
        limit::settle(
            ctx,
            &config,
            charged,
            counters,
            counter_index,
            segments,
            bytes,
        )
    }
    .code()
}

/// The bucket of the packet's remote under `rule` in `direction`, inserted full if it has none.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, each call copies the key again: 7% more instructions for the verifier \
              (6.18's ingress: 228,568 → 244,580)"
)]
fn remote_bucket(
    ctx: &TcContext,
    rule: u16,
    direction: u32,
    burst_nanobits: u64,
    now: u64,
) -> Option<*mut BucketState> {
    // The remote is the source of what arrives and the destination of what leaves.
    let addr = parse::address(ctx, direction == DIR_INGRESS)?;
    let key = RemoteBucketKey {
        addr,
        rule,
        direction: direction as u8,
        _pad: 0,
    };
    if let Some(state) = REMOTE_BUCKETS.get_ptr_mut(&key) {
        return Some(state);
    }
    // A remote new to this rule (or evicted since) starts with a full bucket, as a new rule
    // does. NOEXIST: a CPU that loses the race to insert the same key charges the winner's
    // bucket instead of resetting it.
    let full = BucketState::full(burst_nanobits, now);
    if REMOTE_BUCKETS
        .insert(&key, &full, BPF_NOEXIST.into())
        .is_ok()
        && let Some(inserted) = REMOTE_BUCKET_STATS.get_ptr_mut(remote_bucket_stat::INSERTED)
    {
        // SAFETY: this CPU's copy of a per-CPU element; tc programs run with migration
        // disabled, so no other writer races this add.
        unsafe { *inserted += 1 };
    }
    REMOTE_BUCKETS.get_ptr_mut(&key)
}
