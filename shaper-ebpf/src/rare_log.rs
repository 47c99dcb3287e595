//! aya-log lines for the program's rare paths: a header pulled in with `bpf_skb_pull_data`, an
//! IPv6 extension header chain longer than the walk.
//!
//! Off by default and switchable at run time: the level lives in the pinned `LOG_LEVEL` map,
//! which the daemon writes (`shaper run --bpf-log`, `shaper log-level`). aya-log's own
//! `AYA_LOG_LEVEL` is a global fixed at load time, so it stays at "everything" and this level
//! is checked first, before anything is formatted: off costs one array lookup, and only on
//! these paths, never on the common one.
//!
//! The third rare path the issue names, a rule id out of range, cannot be reached: rule ids
//! are `u16` cells and `MAX_RULES` is 65,536, so the limiter's check compiles away.

use aya_ebpf::{macros::map, maps::Array, programs::TcContext};
use aya_log_ebpf::debug;
use shaper_common::{MAX_IPV6_EXT_HEADERS, log_level};

#[map]
static LOG_LEVEL: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn enabled(level: u32) -> bool {
    LOG_LEVEL.get(0).is_some_and(|&set| level <= set)
}

/// Headers lay beyond the linear data of a non-linear skb and were pulled in.
#[inline(always)]
pub fn pulled(ctx: &TcContext, bytes: u32) {
    if enabled(log_level::DEBUG) {
        debug!(
            ctx,
            "headers beyond the linear data: pulled {} of {} bytes",
            bytes,
            ctx.len()
        );
    }
}

/// An IPv6 packet with more extension headers than the walk takes (`ipv6_ext_limit`).
#[inline(always)]
pub fn ipv6_chain_over_limit(ctx: &TcContext, next_header: u8) {
    if enabled(log_level::DEBUG) {
        debug!(
            ctx,
            "IPv6 extension header chain longer than {}: next header {} not walked",
            MAX_IPV6_EXT_HEADERS,
            next_header
        );
    }
}
