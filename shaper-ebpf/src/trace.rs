//! Live trace: one event per packet of a traced port (`shaper trace`), through a BPF ring
//! buffer, bounded in rate.
//!
//! A port is traced while its `WATCHED` cell has [`WATCH_TRACE`] set; the daemon sets it for the
//! life of one control connection. Untraced ports pay nothing beyond the `WATCHED` byte the
//! talkers already read. Each CPU may send `per_cpu_per_second` events per one-second window;
//! beyond that, and whenever the ring buffer is full (`bpf_ringbuf_reserve` returns NULL,
//! kernel/bpf/ringbuf.c `__bpf_ringbuf_reserve`), the event is counted in `TRACE_LOST` instead,
//! so a flooded port costs userspace a bounded rate and never stalls the hook.
//!
//! The rule id and the bucket's fill are looked up again here rather than passed out of
//! `limit`: only traced packets pay for it, and the policer stays as it is.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use shaper_common::{
    DIR_INGRESS, NO_BUCKET_BYTES, NO_RULE, RULE_FLAG_PER_REMOTE, TRACE_RING_BYTES, TraceBudget,
    TraceConfig, TraceEvent, WATCH_TRACE, bucket::NANOBITS_PER_BYTE, bucket_index, trace_lost,
};

use crate::{
    BUCKETS, RULES, count,
    limit::{self, Verdict},
    parse,
};

#[map]
static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

#[map]
static TRACE_CONFIG: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map]
static TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(trace_lost::COUNT, 0);

const WINDOW_NS: u64 = 1_000_000_000;

/// Sends the packet's event if its `WATCHED` cell (`cell`) has the trace bit and its verdict is
/// one the trace asked for.
#[inline(always)]
pub fn record(
    ctx: &TcContext,
    packet: &count::Packet,
    direction: u32,
    verdict: &Verdict,
    cell: u8,
) {
    if cell & WATCH_TRACE == 0 {
        return;
    }
    let Some(config) = TRACE_CONFIG.get(0) else {
        return;
    };
    let verdict = verdict.code();
    if config.verdicts & (1 << verdict) == 0 {
        return;
    }
    // SAFETY: a helper without arguments, allowed in every program type.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(budget) = TRACE_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's copy of the single per-CPU element; tc programs run with migration
    // disabled, so nothing else writes it meanwhile.
    unsafe {
        if now.wrapping_sub((*budget).window_ns) >= WINDOW_NS {
            (*budget).window_ns = now;
            (*budget).sent = 0;
        }
        if (*budget).sent >= u64::from(config.per_cpu_per_second) {
            lost(trace_lost::OVER_RATE);
            return;
        }
        (*budget).sent += 1;
    }
    let Some(mut entry) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        lost(trace_lost::RING_FULL);
        return;
    };
    let remote = parse::address(ctx, direction == DIR_INGRESS).unwrap_or_default();
    let (rule, bucket_bytes) = rule_and_fill(packet, direction);
    entry.write(TraceEvent {
        time_ns: now,
        bytes: packet.bytes,
        bucket_bytes,
        remote,
        slot: packet.slot,
        segments: packet.segments as u32,
        local_port: packet.local_port,
        remote_port: packet.remote_port,
        rule,
        direction: direction as u8,
        proto: packet.proto as u8,
        verdict,
        _pad: [0; 7],
    });
    entry.submit(0);
}

#[inline(always)]
fn lost(reason: u32) {
    if let Some(count) = TRACE_LOST.get_ptr_mut(reason) {
        // SAFETY: this CPU's copy of a per-CPU element; no other writer on this CPU meanwhile.
        unsafe { *count += 1 };
    }
}

/// The rule the limiter found ([`limit::rule_of`], as `limit::apply` looks it up), and the
/// bytes its bucket holds, clamped to the burst as a take would see them; [`NO_BUCKET_BYTES`]
/// for a `--per-remote` rule. Looking its remote's bucket up here too made the call chain to
/// this function need more than the 512 bytes of stack the verifier allows (6.1: "combined
/// stack size of 3 calls is 544").
#[inline(always)]
fn rule_and_fill(packet: &count::Packet, direction: u32) -> (u16, u64) {
    let Some(rule) = limit::rule_of(packet, direction) else {
        return (NO_RULE, 0);
    };
    let (Some(config), Some(bucket)) = (
        RULES.get(rule as u32),
        BUCKETS.get(bucket_index(rule as u32, direction)),
    ) else {
        return (rule, 0);
    };
    if config.flags & RULE_FLAG_PER_REMOTE != 0 {
        return (rule, NO_BUCKET_BYTES);
    }
    let tokens = if bucket.tokens < config.burst_nanobits {
        bucket.tokens
    } else {
        config.burst_nanobits
    };
    (rule, tokens / NANOBITS_PER_BYTE)
}
