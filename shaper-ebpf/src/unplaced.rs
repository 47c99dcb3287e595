//! The `unplaced` rule: packets no port could be found for, charged to a rule of their own.
//!
//! A packet whose ports the parse cannot place (a later fragment whose first was not seen, an
//! IPv6 chain over the walk's limit, headers cut or out of reach) has nothing to look up in
//! the rule index. Without an `unplaced` rule it passes, as every portless packet does; with
//! one, for its interface and direction, it is charged to that rule's bucket and counters like
//! any port's packet, so such packets cannot be used to get around the limits.
//!
//! A subprogram, not inlined: only those packets reach it, and the common path's code and
//! verification stay as they were. It takes no context: a drop or observe rule needs none.

use aya_ebpf::{macros::map, maps::Array};
use shaper_common::{
    ACTION_DROP, ACTION_OBSERVE, DIRECTIONS, MAX_IFACES, MAX_RULES, NO_RULE, bucket::cost,
    bucket_index, reason, unplaced_index,
};

use crate::{BUCKETS, DROP, PASS, RULE_COUNTERS, RULES, atomic::add_counter, bucket};

/// Per (interface slot, direction): the id of the `unplaced` rule in force, 0 for none. Written
/// by userspace with the rule index, overlapping rules already resolved.
#[map]
static UNPLACED_RULES: Array<u32> = Array::with_max_entries(MAX_IFACES * DIRECTIONS, 0);

/// Whether a packet counted under `reason` is one an `unplaced` rule governs: a packet that
/// may well have ports, which the parse could not find. Non-IP, ICMP, other L4 protocols and
/// malformed headers have none to find (and the kernel drops malformed ones itself).
#[inline(always)]
pub fn governs(reason: u32) -> bool {
    reason == reason::FRAGMENT || reason == reason::IPV6_EXT_LIMIT || reason == reason::TRUNCATED
}

/// The verdict for an unplaced packet of `bytes` wire bytes in `segments` segments.
#[inline(never)]
pub fn police(slot: u32, direction: u32, bytes: u64, segments: u64) -> i32 {
    let Some(&rule) = UNPLACED_RULES.get(unplaced_index(slot, direction)) else {
        return PASS;
    };
    if rule == NO_RULE as u32 || rule >= MAX_RULES {
        return PASS;
    }
    // One copy, as in `limit::apply`: its checks and its bucket use the same limit.
    let Some(&config) = RULES.get(rule) else {
        return PASS;
    };
    if config.rate_bps == 0 {
        return PASS;
    }
    let index = bucket_index(rule, direction);
    let (Some(state), Some(counters)) =
        (BUCKETS.get_ptr_mut(index), RULE_COUNTERS.get_ptr_mut(index))
    else {
        return PASS;
    };
    let now = bucket::now(&config);
    // SAFETY: `state` is a live `BUCKETS` element from `get_ptr_mut` above.
    if unsafe { bucket::charge(state, &config, now, cost(bytes)) }.is_some() {
        // SAFETY: a field of the live `RULE_COUNTERS` element found above.
        unsafe { add_counter(&raw mut (*counters).passed, segments, bytes) };
        return PASS;
    }
    match config.action {
        ACTION_DROP => {
            // SAFETY: as above, another field.
            unsafe { add_counter(&raw mut (*counters).dropped, segments, bytes) };
            DROP
        }
        ACTION_OBSERVE => {
            // SAFETY: as above, another field.
            unsafe { add_counter(&raw mut (*counters).would_drop, segments, bytes) };
            PASS
        }
        // Userspace refuses other actions for `unplaced`.
        _ => PASS,
    }
}
