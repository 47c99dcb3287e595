//! Limits: find the rule that governs a packet, ask its bucket, count the verdict.

use crate::{
    BUCKETS, DROP, PASS, PORT_VERDICTS, RULE_COUNTERS, RULE_INDEX, RULES, atomic::add_counter,
    bucket, count, ecn, pace, remote_buckets, shape,
};
use aya_ebpf::programs::TcContext;
use shaper_common::{
    ACTION_DROP, ACTION_OBSERVE, ACTION_PACE, ACTION_SHAPE, DIR_EGRESS, MAX_RULES, NO_RULE,
    RULE_FLAG_ECN, RULE_FLAG_PER_REMOTE, RuleConfig, RuleCounters, SIDE_LOCAL, SIDE_REMOTE,
    VERDICT_DROP, VERDICT_PASS, VERDICT_WOULD_DROP, bucket::cost, bucket_index, ecn_threshold,
    rule_index_row,
};

pub enum Verdict {
    Pass,
    Drop,
    /// Passed by an `observe` rule that would have dropped it.
    WouldDrop,
    /// To the IFB device with this ifindex: an ingress shape rule's packet.
    Redirect(u32),
}

impl Verdict {
    /// What the hook returns for the packet.
    #[inline(always)]
    pub fn action(self) -> i32 {
        match self {
            Self::Pass | Self::WouldDrop => PASS,
            Self::Drop => DROP,
            Self::Redirect(ifindex) => shape::redirect(ifindex),
        }
    }

    /// The verdict as talkers and the trace report it (`shaper_common::VERDICT_*`): a shape
    /// rule's redirect is a pass, its queue decides later.
    #[inline(always)]
    pub fn code(&self) -> u8 {
        match self {
            Self::Pass | Self::Redirect(_) => VERDICT_PASS,
            Self::Drop => VERDICT_DROP,
            Self::WouldDrop => VERDICT_WOULD_DROP,
        }
    }

    /// The verdict of a [`code`](Self::code), as the out-of-line talkers and trace get it back.
    #[inline(always)]
    pub fn from_code(code: u8) -> Self {
        match code {
            VERDICT_DROP => Self::Drop,
            VERDICT_WOULD_DROP => Self::WouldDrop,
            _ => Self::Pass,
        }
    }
}

/// The verdict for a counted packet. Userspace resolves overlapping rules into the rule index,
/// so the program only looks up the winner: the local port's rule, else the remote port's.
#[inline(always)]
pub fn apply(ctx: &TcContext, packet: &count::Packet, direction: u32) -> Verdict {
    let Some(rule) = rule_of(packet, direction) else {
        return Verdict::Pass;
    };
    // One copy per packet, so its checks and its bucket use the same limit. Userspace rewrites a
    // limit with a plain map update (not atomic against this copy): a packet racing a change
    // can mix old and new fields once, which at worst grants or withholds one burst; the take
    // clamps to the burst either way.
    let Some(&config) = RULES.get(rule as u32) else {
        return Verdict::Pass;
    };
    // A rule id userspace is still writing (or has just removed) has no rate yet: pass.
    if config.rate_bps == 0 {
        return Verdict::Pass;
    }
    let index = bucket_index(rule as u32, direction);
    let (Some(state), Some(counters)) =
        (BUCKETS.get_ptr_mut(index), RULE_COUNTERS.get_ptr_mut(index))
    else {
        return Verdict::Pass;
    };
    if config.action == ACTION_SHAPE {
        // The rule's HTB class holds the rate and its queue does the dropping; its bucket is
        // not used. On ingress the class is on the interface's IFB device; without one (not
        // made yet, or already removed) the packet passes unshaped.
        let verdict = if direction == DIR_EGRESS {
            shape::classify(ctx, rule as u32);
            Verdict::Pass
        } else {
            match shape::ifb_of(packet.slot) {
                Some(ifb) => {
                    shape::classify(ctx, rule as u32);
                    Verdict::Redirect(ifb)
                }
                None => Verdict::Pass,
            }
        };
        // SAFETY: `counters` is a live `RULE_COUNTERS` element (from `get_ptr_mut` above);
        // `&raw mut` takes its field's address without making a reference.
        unsafe { add_counter(&raw mut (*counters).passed, packet.segments, packet.bytes) };
        return verdict;
    }
    if config.action == ACTION_PACE {
        // Only egress has a root qdisc to wait in; userspace makes pace rules egress-only, and
        // a packet a pace rule meets on ingress (none should) passes unpaced.
        if direction != DIR_EGRESS {
            return Verdict::Pass;
        }
        // SAFETY: the precise clock: a departure is a nanosecond time, not a tick's.
        let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        // SAFETY: `state` is a live `BUCKETS` element (from `get_ptr_mut` above), whose clock
        // the pace module keeps.
        let scheduled = unsafe { pace::schedule(ctx, state, &config, now, packet.bytes) };
        // SAFETY: `counters` is a live `RULE_COUNTERS` element, found like `state`.
        return unsafe {
            settle(
                ctx,
                &config,
                scheduled.then_some(0),
                counters,
                packet.counter_index,
                packet.segments,
                packet.bytes,
            )
        };
    }
    if config.flags & RULE_FLAG_PER_REMOTE != 0 {
        return remote_buckets::police(ctx, packet, rule, direction);
    }
    let now = bucket::now(&config);
    // SAFETY: `state` comes from `get_ptr_mut` above: a non-null pointer to a `BUCKETS` element
    // (index checked by the lookup), which lives as long as the map.
    let charged = unsafe { bucket::charge(state, &config, now, cost(packet.bytes)) };
    // SAFETY: `counters` is a live `RULE_COUNTERS` element, found like `state`.
    unsafe {
        settle(
            ctx,
            &config,
            charged,
            counters,
            packet.counter_index,
            packet.segments,
            packet.bytes,
        )
    }
}

/// The verdict on a packet its rule's bucket has been charged for (`charged`: the tokens left,
/// `None` if it did not conform; for a pace rule, `Some` when it was scheduled), counted in the rule's and the port's counters; an `--ecn`
/// rule's conforming packet is marked CE when the bucket runs low.
///
/// # Safety
///
/// `counters` points to a live `RULE_COUNTERS` element (from `get_ptr_mut`).
#[inline(always)]
pub unsafe fn settle(
    ctx: &TcContext,
    config: &RuleConfig,
    charged: Option<u64>,
    counters: *mut RuleCounters,
    counter_index: u32,
    segments: u64,
    bytes: u64,
) -> Verdict {
    if let Some(left) = charged {
        // SAFETY: the caller vouches for `counters`; `&raw mut` takes its field's address
        // without making a reference.
        unsafe { add_counter(&raw mut (*counters).passed, segments, bytes) };
        if config.flags & RULE_FLAG_ECN != 0
            && config.action == ACTION_DROP
            && left < ecn_threshold(config.burst_nanobits)
            && ecn::mark(ctx)
        {
            // SAFETY: the same live `RULE_COUNTERS` element, another field.
            unsafe { add_counter(&raw mut (*counters).marked, segments, bytes) };
        }
        return Verdict::Pass;
    }
    // The same two counters move for either action: the rule's and the port's.
    let port = PORT_VERDICTS.get_ptr_mut(counter_index);
    let (rule_counter, port_counter, verdict) = match config.action {
        // SAFETY: `counters` (the caller's contract) and `p` (from `get_ptr_mut`) are live
        // elements of `RULE_COUNTERS` and `PORT_VERDICTS`. `&raw mut` takes their fields'
        // addresses without making references. A pace rule drops what lies beyond its horizon.
        ACTION_DROP | ACTION_PACE => unsafe {
            (
                &raw mut (*counters).dropped,
                port.map(|p| &raw mut (*p).dropped),
                Verdict::Drop,
            )
        },
        // SAFETY: the same pointers as for ACTION_DROP, other fields.
        ACTION_OBSERVE => unsafe {
            (
                &raw mut (*counters).would_drop,
                port.map(|p| &raw mut (*p).would_drop),
                Verdict::WouldDrop,
            )
        },
        _ => return Verdict::Pass,
    };
    // SAFETY: a field of the live `RULE_COUNTERS` element.
    unsafe { add_counter(rule_counter, segments, bytes) };
    if let Some(port_counter) = port_counter {
        // SAFETY: a field of the live `PORT_VERDICTS` element found above.
        unsafe { add_counter(port_counter, segments, bytes) };
    }
    verdict
}

/// The id of the rule that governs `packet`: the local port's, else the remote port's; `None`
/// for none (or an id no rule can have).
#[inline(always)]
pub fn rule_of(packet: &count::Packet, direction: u32) -> Option<u16> {
    let mut rule = rule_for(packet, direction, SIDE_LOCAL, packet.local_port);
    if rule == NO_RULE {
        rule = rule_for(packet, direction, SIDE_REMOTE, packet.remote_port);
    }
    (rule != NO_RULE && (rule as u32) < MAX_RULES).then_some(rule)
}

#[inline(always)]
fn rule_for(packet: &count::Packet, direction: u32, side: u32, port: u16) -> u16 {
    match RULE_INDEX.get(rule_index_row(packet.slot, direction, packet.proto, side)) {
        Some(row) => row[port as usize],
        None => NO_RULE,
    }
}
